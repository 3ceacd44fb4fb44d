"""Publish checks (`checks={...}`) run by dag.test() from a SQLite source into both stores.

The compliance example: an empty upstream must never blank the risk dashboard. A failing
check fails the task at once (AirflowFailException, no retry) naming each failed check and
its measured value; nothing is published, nothing stays in the store, `last_failure`
shows the run; the next good run publishes and clears it.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_nx1_connect.core import control
from airflow_nx1_connect.core import snapshots as snaps
from tests.operators.conftest import latest_rows, ti_states

DAG_SOURCE = """
import pendulum
from airflow.sdk import DAG
from airflow_nx1_connect.operators import EngineerRuleOperator

with DAG("DAG_ID", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    EngineerRuleOperator(
        task_id="risk", data_api="{name}", conn_id="nx1_src_sqlite",
        sql="SELECT account_id, amount, note FROM balances ORDER BY account_id",
        checks={checks!r},
    )
"""

CHECKS = {"min_rows": 1, "not_null": ["account_id"], "unique": ["account_id"], "max_row_change": 2}


def _source(path: Any, *statements: str) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        for sql in statements:
            conn.execute(sql)


def _snapshot_tables(engine: sa.Engine) -> list[str]:
    return sorted(t for t in sa.inspect(engine).get_table_names() if t.startswith("nx1_snap_"))


def _run_failing(dag: Any, capfd: pytest.CaptureFixture[str]) -> str:
    capfd.readouterr()
    run = dag.test()
    out = capfd.readouterr()
    assert ti_states(run) == {"risk": "failed"}
    return out.out + out.err


def test_failing_checks_publish_nothing_and_show_the_last_failure(
    engine, sqlite_source, make_dag, capfd
):
    name = f"risk_{engine.dialect.name[:2]}"
    dag = make_dag(DAG_SOURCE.format(name=name, checks=CHECKS))
    first = dag.test()
    assert ti_states(first) == {"risk": "success"}
    good = snaps.latest_snapshot(engine, name)
    served = latest_rows(engine, name)
    tables = _snapshot_tables(engine)
    api = control.data_api_dict(engine, snaps.get_data_api(engine, name))
    assert api["last_failure"] is None

    # The upstream is emptied: min_rows fails, the dashboard keeps yesterday's rows.
    _source(sqlite_source, "DELETE FROM balances")
    text = _run_failing(dag, capfd)
    assert "AirflowFailException" in text
    assert "min_rows: 0 rows, at least 1 required" in text
    assert snaps.latest_snapshot(engine, name).id == good.id
    assert latest_rows(engine, name) == served
    assert _snapshot_tables(engine) == tables, "nothing of the failed run stays"
    assert [
        s.id
        for s in snaps.list_snapshots(engine, name, statuses=("published", "writing", "failed"))
    ] == [good.id]
    failure = control.data_api_dict(engine, snaps.get_data_api(engine, name))["last_failure"]
    assert failure is not None and set(failure) == {"run_id", "at", "detail"}
    assert "min_rows: 0 rows" in failure["detail"]
    assert failure["run_id"] and failure["at"].endswith("Z")

    # Duplicate and NULL keys, and far more rows: every failed check is named, measured.
    rows = ", ".join(f"('K{i}', {i}, 'n')" for i in range(10))
    _source(sqlite_source, f"INSERT INTO balances VALUES {rows}, (NULL, 1, 'x')")
    _source(sqlite_source, "CREATE TABLE b2 AS SELECT * FROM balances")
    _source(sqlite_source, "INSERT INTO b2 SELECT * FROM balances WHERE account_id = 'K1'")
    _source(sqlite_source, "DROP TABLE balances", "ALTER TABLE b2 RENAME TO balances")
    text = _run_failing(dag, capfd)
    assert "not_null: NULL values: 1 in account_id" in text
    assert "unique: 1 duplicate rows" in text
    assert "max_row_change: 3 (3 rows before, 12 now; at most 2 allowed)" in text
    assert "min_rows" not in text.split("Publish checks failed", 1)[1].split("\n", 1)[0]
    assert snaps.latest_snapshot(engine, name).id == good.id
    assert _snapshot_tables(engine) == tables

    # A good run again: published, last_failure cleared.
    _source(sqlite_source, "DELETE FROM balances", "INSERT INTO balances VALUES ('Z', 1, NULL)")
    again = dag.test()
    assert ti_states(again) == {"risk": "success"}
    assert latest_rows(engine, name) == [("Z", 1.0, None)]
    assert control.data_api_dict(engine, snaps.get_data_api(engine, name))["last_failure"] is None


def test_checks_naming_a_column_the_result_lacks_fail_the_run(
    engine, sqlite_source, make_dag, capfd
):
    dag = make_dag(DAG_SOURCE.format(name="risk_cols", checks={"not_null": ["acount_id"]}))
    text = _run_failing(dag, capfd)
    assert "AirflowFailException" in text
    assert "checks name 'acount_id', which the result does not have" in text
    with pytest.raises(snaps.SnapshotNotFound):
        snaps.latest_snapshot(engine, "risk_cols")
    assert _snapshot_tables(engine) == []


@pytest.mark.parametrize(
    ("checks", "says"),
    [
        ({"min_row": 1}, "Unknown check 'min_row'"),
        ({"min_rows": "1"}, "min_rows is a whole number"),
        ({"min_rows": True}, "min_rows is a whole number"),
        ({"max_rows": -1}, "max_rows is a whole number"),
        ({"min_rows": 5, "max_rows": 2}, "min_rows (5) is above max_rows (2)"),
        ({"not_null": []}, "not_null is a list of result column names"),
        ({"unique": "id"}, None),
        ({"unique": ["a", "a"]}, "unique names a column twice"),
        ({"max_row_change": "half"}, "max_row_change is a fraction"),
        ({"max_row_change": -0.1}, "max_row_change is a fraction"),
        (["min_rows"], "checks must be a dict"),
    ],
)
def test_bad_checks_fail_when_the_dag_is_parsed(checks: Any, says: str | None) -> None:
    from airflow_nx1_connect.operators import AskRuleOperator, EngineerRuleOperator

    for cls in (AskRuleOperator, EngineerRuleOperator):
        make = lambda: cls(task_id="t", data_api="x", conn_id="c", sql="SELECT 1", checks=checks)  # noqa: E731
        if says is None:
            assert make().checks == checks
            continue
        with pytest.raises(ValueError, match=None) as raised:
            make()
        assert says in str(raised.value)
