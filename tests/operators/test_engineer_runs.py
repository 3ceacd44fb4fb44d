"""Engineer rules run by dag.test() from a SQLite source into both stores.

One DAG, three tasks (overwrite from a templated .sql file, append, merge), three runs
with the source changing in between and `snapshot_retention` = 2: checks each mode's
result exactly, retention, XCom metadata, the Asset event and the registration.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing

import sqlalchemy as sa

from airflow_nx1_connect.core import clock, store
from airflow_nx1_connect.core import snapshots as snaps
from tests.operators.conftest import latest_rows, query_sqlite, ti_states, xcom_value

DAG_SOURCE = """
import pendulum
from airflow.sdk import DAG
from airflow_nx1_connect.operators import EngineerRuleOperator

with DAG("DAG_ID", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
         template_searchpath=[{sql_dir!r}], params={{"table": "balances"}}) as dag:
    EngineerRuleOperator(task_id="ow", data_api="{prefix}_ow", conn_id="nx1_src_sqlite",
                         sql="balances.sql", description="overwrite")
    EngineerRuleOperator(task_id="ap", data_api="{prefix}_ap", conn_id="nx1_src_sqlite",
                         sql="SELECT account_id, amount, note FROM balances ORDER BY account_id",
                         write_mode="append")
    EngineerRuleOperator(task_id="mg", data_api="{prefix}_mg", conn_id="nx1_src_sqlite",
                         sql="SELECT account_id, amount, note FROM balances ORDER BY account_id;",
                         write_mode="merge", merge_keys=["account_id"])
"""

QUERY = "SELECT account_id, amount, note FROM balances ORDER BY account_id"


def _merge(new, previous):
    keys = {r[0] for r in new}
    return list(new) + [r for r in previous if r[0] not in keys]


def _source_change(path, statements):
    with closing(sqlite3.connect(path)) as conn, conn:
        for sql in statements:
            conn.execute(sql)


def test_three_runs_all_write_modes_retention_xcom_asset(
    engine, sqlite_source, make_dag, tmp_path, monkeypatch
):
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__SNAPSHOT_RETENTION", "2")
    sql_dir = tmp_path / "sql"
    sql_dir.mkdir()
    # Templated .sql file: Jinja params and a comment with a semicolon; in it.
    (sql_dir / "balances.sql").write_text(
        "-- balances; all accounts\n"
        "SELECT account_id, amount, note FROM {{ params.table }} ORDER BY account_id\n"
    )
    prefix = f"e{engine.dialect.name[:2]}"
    dag = make_dag(DAG_SOURCE.format(sql_dir=str(sql_dir), prefix=prefix))

    q1 = query_sqlite(sqlite_source, QUERY)
    run1 = dag.test()
    assert ti_states(run1) == {"ow": "success", "ap": "success", "mg": "success"}
    assert latest_rows(engine, f"{prefix}_ow") == q1
    assert latest_rows(engine, f"{prefix}_ap") == q1
    assert latest_rows(engine, f"{prefix}_mg") == q1

    _source_change(
        sqlite_source,
        [
            "UPDATE balances SET amount = 21.5, note = 'b''2' WHERE account_id = 'B'",
            "DELETE FROM balances WHERE account_id = 'C'",
            "INSERT INTO balances VALUES ('D', NULL, 'Crème')",
        ],
    )
    q2 = query_sqlite(sqlite_source, QUERY)
    run2 = dag.test()
    assert set(ti_states(run2).values()) == {"success"}
    assert latest_rows(engine, f"{prefix}_ow") == q2
    assert latest_rows(engine, f"{prefix}_ap") == q1 + q2
    merged2 = _merge(q2, q1)
    assert latest_rows(engine, f"{prefix}_mg") == merged2
    assert ("C", 30.25, None) in merged2  # kept from the previous snapshot

    _source_change(sqlite_source, ["INSERT INTO balances VALUES ('E', 1.0, 'e')"])
    q3 = query_sqlite(sqlite_source, QUERY)
    run3 = dag.test()
    assert set(ti_states(run3).values()) == {"success"}
    assert latest_rows(engine, f"{prefix}_ow") == q3
    assert latest_rows(engine, f"{prefix}_ap") == q1 + q2 + q3
    assert latest_rows(engine, f"{prefix}_mg") == _merge(q3, merged2)

    # Retention 2: two published snapshots per data API, older tables dropped.
    names = set(sa.inspect(engine).get_table_names())
    for task in ("ow", "ap", "mg"):
        kept = snaps.list_snapshots(engine, f"{prefix}_{task}")
        assert len(kept) == 2
        assert {s.run_id for s in kept} == {run2.run_id, run3.run_id}
        for s in kept:
            assert s.table_name in names
    snap_tables = {n for n in names if n.startswith(store.TABLE_PREFIX)}
    assert len(snap_tables) == 6

    # XCom holds metadata only.
    meta = xcom_value(run3, "ap")
    latest = snaps.latest_snapshot(engine, f"{prefix}_ap")
    assert meta == {
        "snapshot_id": latest.id,
        "data_api": f"{prefix}_ap",
        "row_count": len(q1 + q2 + q3),
        "columns": ["account_id", "amount", "note"],
        "column_types": ["TEXT", "REAL", "TEXT"],
        "published_at": clock.iso(latest.published_at),
        "run_id": run3.run_id,
        "data_interval_end": clock.iso(latest.data_interval_end),
    }

    # Registration on first run: kind, rule task, description, write mode.
    api = snaps.get_data_api(engine, f"{prefix}_mg")
    assert (api.kind, api.dag_id, api.task_id, api.write_mode, api.conn_id) == (
        "engineer",
        dag.dag_id,
        "mg",
        "merge",
        "nx1_src_sqlite",
    )

    # Each successful run emitted an event of the declared Asset nx1://<data_api>.
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = session.scalars(
            sa.select(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.name == f"nx1://{prefix}_ow", AssetEvent.source_dag_id == dag.dag_id)
        ).all()
    assert len(events) == 3


STEPS_DAG = """
import pendulum
from airflow.sdk import DAG
from airflow_nx1_connect.operators import EngineerRuleOperator

with DAG("DAG_ID", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    EngineerRuleOperator(task_id="steps", data_api="{prefix}_steps", conn_id="nx1_src_sqlite",
                         sql='''
                             CREATE TEMP TABLE rich AS SELECT * FROM balances WHERE amount > 15;
                             INSERT INTO balances VALUES ('Z', 99.0, 'added by the rule');
                             SELECT account_id, amount FROM rich ORDER BY account_id;
                         ''')
    EngineerRuleOperator(task_id="no_rows", data_api="{prefix}_no_rows",
                         conn_id="nx1_src_sqlite",
                         sql="UPDATE balances SET amount = 0; UPDATE balances SET note = 'x'")
"""


def test_multi_statement_engineer_commits_only_after_publish(
    engine, sqlite_source, make_dag, capfd
):
    prefix = f"s{engine.dialect.name[:2]}"
    dag = make_dag(STEPS_DAG.format(prefix=prefix))
    capfd.readouterr()
    run = dag.test()
    text = "".join(capfd.readouterr())
    assert ti_states(run) == {"steps": "success", "no_rows": "failed"}
    assert latest_rows(engine, f"{prefix}_steps") == [("B", 20.0), ("C", 30.25)]
    # The published rule's own change is committed; the failed one's is rolled back.
    assert query_sqlite(sqlite_source, QUERY) == [
        ("A", 10.5, "a"),
        ("B", 20.0, "b"),
        ("C", 30.25, None),
        ("Z", 99.0, "added by the rule"),
    ]
    assert "last SQL statement returns no rows" in text
