"""Rules on a real PostgreSQL source (fresh schema) into both stores: every type round-trips
exactly over several fetch batches, errors carry PostgreSQL's message, Ask runs in a
read-only transaction, and an Engineer rule may run several statements."""

from __future__ import annotations

from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.operators.rules import FETCH_SIZE
from tests.operators.conftest import latest_rows, pg_exec, ti_states

ROWS = 25_000

PG_DAG = """
import pendulum
from airflow.sdk import DAG
from airflow_nx1_connect.operators import AskRuleOperator, EngineerRuleOperator

with DAG("DAG_ID", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    AskRuleOperator(
        task_id="ask", data_api="{name}_ask", conn_id="nx1_src_pg", retries=2,
        sql="{{{{ dag_run.conf.get('sql', 'SELECT * FROM things ORDER BY id') }}}}",
    )
    EngineerRuleOperator(
        task_id="eng", data_api="{name}_eng", conn_id="nx1_src_pg",
        sql=\"\"\"
            CREATE TEMP TABLE agg AS
                SELECT flag, count(*) AS n, sum(amount) AS total FROM things GROUP BY flag;
            -- the last statement's rows are published; a ';' in a comment is fine
            SELECT flag, n, total FROM agg ORDER BY flag NULLS FIRST;
        \"\"\",
    )
"""

SETUP = f"""
CREATE TABLE things (
    id bigint PRIMARY KEY, label text, amount numeric(12, 4), ratio double precision,
    flag boolean, day date, at timestamp, at_tz timestamptz, doc jsonb, small int
);
INSERT INTO things
SELECT g, 'item ' || g, g * 1.2345, g / 7.0, g % 2 = 0, date '2026-01-01' + g % 400,
       timestamp '2026-01-01 00:00:00' + g * interval '1 minute 1.5 second',
       timestamptz '2026-01-01 00:00:00+02' + g * interval '1 second',
       jsonb_build_object('g', g, 'tags', jsonb_build_array('a', g % 3)), g % 100
FROM generate_series(1, {ROWS}) AS g;
INSERT INTO things VALUES
    (0, 'Crème ''brûlée'' "x" 日本 \\t tab', -0.0001, 1e300, NULL, date '1999-12-31',
     NULL, NULL, '{{"a": [1, "x", null], "b": {{"c": 1.5}}}}', NULL),
    ({ROWS + 1}, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
CREATE SEQUENCE counter;
"""


def test_postgres_source_exact_results_errors_and_read_only(engine, pg_source, make_dag, capfd):
    pg_exec(pg_source, SETUP)
    expected = pg_exec(pg_source, "SELECT * FROM things ORDER BY id")
    assert len(expected) == ROWS + 2 > 2 * FETCH_SIZE
    name = f"pg_{engine.dialect.name[:2]}"
    dag = make_dag(PG_DAG.format(name=name))

    run1 = dag.test()
    assert ti_states(run1) == {"ask": "success", "eng": "success"}
    assert latest_rows(engine, f"{name}_ask") == expected
    snap = snaps.latest_snapshot(engine, f"{name}_ask")
    assert snap.column_types == [
        "INTEGER",
        "TEXT",
        "NUMERIC",
        "REAL",
        "BOOLEAN",
        "DATE",
        "TIMESTAMP",
        "TIMESTAMP",
        "JSON",
        "INTEGER",
    ]
    assert latest_rows(engine, f"{name}_eng") == pg_exec(
        pg_source,
        "SELECT flag, count(*), sum(amount) FROM things GROUP BY flag ORDER BY flag NULLS FIRST",
    )

    # PostgreSQL's own message; no retry; the previous snapshot stays latest.
    capfd.readouterr()
    run2 = dag.test(run_conf={"sql": "SELECT label FROM no_such_relation"})
    text = "".join(capfd.readouterr())
    assert ti_states(run2) == {"ask": "failed", "eng": "success"}
    assert 'relation "no_such_relation" does not exist' in text
    assert snaps.latest_snapshot(engine, f"{name}_ask").id == snap.id

    # An Ask runs in a READ ONLY transaction: a side effect the parser cannot see
    # (nextval in a SELECT) is refused by PostgreSQL itself.
    capfd.readouterr()
    run3 = dag.test(run_conf={"sql": "SELECT nextval('counter') AS n"})
    text = "".join(capfd.readouterr())
    assert ti_states(run3)["ask"] == "failed"
    assert "read-only transaction" in text
    assert pg_exec(pg_source, "SELECT last_value, is_called FROM counter") == [(1, False)]
    assert snaps.latest_snapshot(engine, f"{name}_ask").id == snap.id
    assert latest_rows(engine, f"{name}_ask") == expected
