"""The rule operators are common.sql operators: `BaseSQLOperator`'s hook lookup, with its
`hook_params`, `database` and `retry_on_failure`, templated as common.sql templates them.

Run with dag.test() on a real PostgreSQL source: a Connection naming a database that does
not exist and no search_path is fixed by the operator's (templated) `database` and
`hook_params`; a Connection whose hook is not a SQL hook, whose type has no hook, or whose
hook takes no such `hook_params`, fails at once without retries; a retryable source error is
retried unless `retry_on_failure=False`.
"""

from __future__ import annotations

import json
import os

import pytest

from airflow_nx1_connect.operators import AskRuleOperator, EngineerRuleOperator
from tests.operators.conftest import PG_CONN, latest_rows, pg_exec, ti_states

BARE_CONN = "nx1_src_pg_bare"

PARAMS_DAG = """
import datetime as dt
import pendulum
from airflow.sdk import DAG
from airflow_nx1_connect.operators import AskRuleOperator

with DAG("DAG_ID", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
         params={{"db": "{db}", "schema": "{schema}"}}) as dag:
    AskRuleOperator(
        task_id="ask", data_api="{name}", retries=1, retry_delay=dt.timedelta(seconds=1),
        conn_id="{{{{ dag_run.conf.get('conn', '{conn}') }}}}",
        database="{{{{ params.db }}}}",
        hook_params={{"options": "-csearch_path={{{{ params.schema }}}}"}},
        sql="{{{{ dag_run.conf.get('sql', 'SELECT id, label FROM items ORDER BY id') }}}}",
        retry_on_failure={retry_on_failure},
    )
"""


def _try_number(dag_run) -> int:
    (ti,) = dag_run.get_task_instances()
    return int(ti.try_number)


@pytest.fixture
def bare_pg_conn(pg_source, monkeypatch):
    """Connection `nx1_src_pg_bare`: the source's server, but a database that does not exist
    and no search_path (so only the operator's `database` and `hook_params` make it work)."""
    conn = json.loads(os.environ[f"AIRFLOW_CONN_{PG_CONN.upper()}"])
    bare = {**conn, "schema": "nx1_no_such_database", "extra": {}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{BARE_CONN.upper()}", json.dumps(bare))
    monkeypatch.setenv("AIRFLOW_CONN_NX1_SRC_FS", json.dumps({"conn_type": "fs"}))
    monkeypatch.setenv("AIRFLOW_CONN_NX1_SRC_ODD", json.dumps({"conn_type": "nx1_no_such_type"}))
    pg_exec(pg_source, "CREATE TABLE items (id int PRIMARY KEY, label text)")
    pg_exec(pg_source, "INSERT INTO items VALUES (1, 'one'), (2, 'two')")
    return pg_source, conn["schema"]


def test_database_and_hook_params_templated(engine, bare_pg_conn, make_dag, capfd):
    schema, db = bare_pg_conn
    name = f"csb_{engine.dialect.name[:2]}"
    dag = make_dag(
        PARAMS_DAG.format(name=name, db=db, schema=schema, conn=BARE_CONN, retry_on_failure=True)
    )
    run = dag.test()
    assert ti_states(run) == {"ask": "success"}
    assert latest_rows(engine, name) == [(1, "one"), (2, "two")]

    # A hook that takes no such hook_params (FSHook has no `options`): fails at once.
    capfd.readouterr()
    run = dag.test(run_conf={"conn": "nx1_src_fs"})
    text = "".join(capfd.readouterr())
    assert ti_states(run) == {"ask": "failed"} and _try_number(run) == 1
    assert "Connection 'nx1_src_fs': its hook does not accept an argument" in text
    assert "unexpected keyword argument 'options'" in text


CONN_DAG = """
import pendulum
from airflow.sdk import DAG
from airflow_nx1_connect.operators import EngineerRuleOperator

with DAG("DAG_ID", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    EngineerRuleOperator(task_id="rule", data_api="csb_conn", retries=2,
                         conn_id="{{ dag_run.conf['conn'] }}", sql="SELECT 1 AS one")
"""


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_connection_without_a_sql_hook_fails_at_once(engine, bare_pg_conn, make_dag, capfd):
    dag = make_dag(CONN_DAG)
    for conn_id, message in [
        ("nx1_src_fs", "You are trying to use `common-sql` with FSHook"),
        ("nx1_src_odd", 'Unknown hook type "nx1_no_such_type"'),
    ]:
        capfd.readouterr()
        run = dag.test(run_conf={"conn": conn_id})
        text = "".join(capfd.readouterr())
        assert ti_states(run) == {"rule": "failed"}, conn_id
        assert _try_number(run) == 1, conn_id
        assert f"Connection {conn_id!r} cannot run a rule: {message}" in text
        assert "Use a Connection of a SQL database" in text and "AirflowFailException" in text


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("retry_on_failure", [True, False])
def test_retry_on_failure(engine, bare_pg_conn, make_dag, capfd, retry_on_failure):
    """A server-side failure (the session is terminated: SQLSTATE 57P01) is retried, as
    common.sql's operators retry, unless `retry_on_failure=False`."""
    schema, db = bare_pg_conn
    dag = make_dag(
        PARAMS_DAG.format(
            name="csb_retry",
            db=db,
            schema=schema,
            conn=BARE_CONN,
            retry_on_failure=retry_on_failure,
        )
    )
    capfd.readouterr()
    run = dag.test(run_conf={"sql": "SELECT pg_terminate_backend(pg_backend_pid()) AS gone"})
    text = "".join(capfd.readouterr())
    assert ti_states(run) == {"ask": "failed"}
    assert "terminating connection due to administrator command" in text
    if retry_on_failure:
        assert _try_number(run) == 2 and "(retryable)" in text
    else:
        assert _try_number(run) == 1 and "(retry_on_failure=False)" in text


def test_common_sql_operator_arguments():
    from airflow.providers.common.sql.operators.sql import BaseSQLOperator

    op = EngineerRuleOperator(
        task_id="t",
        data_api="metrics",
        conn_id="bank",
        sql="SELECT 1",
        database="analytics",
        hook_params={"options": "-c statement_timeout=1000"},
        retry_on_failure=False,
    )
    assert isinstance(op, BaseSQLOperator)
    assert (op.conn_id, op.database, op.hook_params) == (
        "bank",
        "analytics",
        {"options": "-c statement_timeout=1000"},
    )
    assert op.retry_on_failure is False
    plain = AskRuleOperator(task_id="a", data_api="a", conn_id="retail", sql="SELECT 1")
    assert (plain.database, plain.hook_params, plain.retry_on_failure) == (None, {}, True)
    with pytest.raises(ValueError, match="hook_params must be a dict"):
        AskRuleOperator(task_id="a", data_api="a", conn_id="c", sql="SELECT 1", hook_params="x")
