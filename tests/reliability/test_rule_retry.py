"""7 (rule runs). With the store unreachable a rule run fails clearly and Airflow retries it.

The store is PostgreSQL behind a loopback proxy that is cut before the run; the task has
retries=1. The first try fails with the "cannot be reached" message; the retry callback
restores the proxy; the second try publishes. A bad SQL, by contrast, is not retried.
"""

from __future__ import annotations

import pytest

from airflow_nx1_connect.core import snapshots as snaps
from tests.operators.conftest import SQLITE_CONN, make_dag, sqlite_source, ti_states
from tests.reliability import retry_hooks

__all__ = ["make_dag", "sqlite_source"]  # fixtures used from the operator tests

DAG = """
import datetime as dt
from airflow.sdk import DAG
from airflow_nx1_connect.operators import EngineerRuleOperator
from tests.reliability.retry_hooks import on_retry

with DAG("DAG_ID", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False) as dag:
    EngineerRuleOperator(
        task_id="rule", data_api="retry_rule", conn_id="CONN", sql=SQL,
        retries=1, retry_delay=dt.timedelta(seconds=1), on_retry_callback=on_retry,
    )
"""


@pytest.fixture
def cut_store(proxied_store, monkeypatch):
    engine, proxy = proxied_store
    monkeypatch.setenv(
        "AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN", engine.url.render_as_string(hide_password=False)
    )
    retry_hooks.ON_RETRY.clear()
    retry_hooks.SEEN.clear()
    yield engine, proxy
    retry_hooks.ON_RETRY.clear()


def test_store_outage_fails_the_try_and_the_retry_publishes(cut_store, make_dag, sqlite_source):
    engine, proxy = cut_store
    proxy.stop()
    retry_hooks.ON_RETRY.append(lambda: proxy.start("forward"))
    dag = make_dag(
        DAG.replace("CONN", SQLITE_CONN).replace(
            "SQL", repr("SELECT id, product FROM sales ORDER BY id")
        )
    )
    run = dag.test()
    assert ti_states(run) == {"rule": "success"}
    (ti,) = run.get_task_instances()
    assert ti.try_number == 2
    assert len(retry_hooks.SEEN) == 1 and "cannot be reached" in retry_hooks.SEEN[0]
    latest = snaps.latest_snapshot(engine, "retry_rule")
    assert latest.row_count == 4


def test_bad_sql_is_not_retried(cut_store, make_dag, sqlite_source):
    _engine, _proxy = cut_store
    dag = make_dag(DAG.replace("CONN", SQLITE_CONN).replace("SQL", repr("SELECT nope FROM sales")))
    run = dag.test()
    assert ti_states(run) == {"rule": "failed"}
    (ti,) = run.get_task_instances()
    assert ti.try_number == 1
    assert retry_hooks.SEEN == []
