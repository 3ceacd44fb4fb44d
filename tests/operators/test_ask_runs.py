"""Ask rules run by dag.test() from a SQLite source into both stores: exact results, a
failing SQL that keeps the previous snapshot, read-only refusals before the source is
touched, and a data API name owned by another task."""

from __future__ import annotations

from airflow_nx1_connect.core import engines
from airflow_nx1_connect.core import snapshots as snaps
from tests.operators.conftest import SALES, latest_rows, query_sqlite, ti_states

ASK_DAG = """
import pendulum
from airflow.sdk import DAG
from airflow_nx1_connect.operators import AskRuleOperator

with DAG("DAG_ID", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    AskRuleOperator(
        task_id="ask", data_api="{name}", conn_id="{conn_id}", retries=3,
        sql="{{{{ dag_run.conf.get('sql', 'SELECT * FROM sales ORDER BY id') }}}}",
        description="all sales", question="What sold?",
    )
"""


def test_results_failures_and_refusals(engine, sqlite_source, make_dag, capfd):
    name = f"ask_{engine.dialect.name[:2]}"
    dag = make_dag(ASK_DAG.format(name=name, conn_id="nx1_src_sqlite"))

    run1 = dag.test()
    assert ti_states(run1) == {"ask": "success"}
    assert latest_rows(engine, name) == SALES == query_sqlite(sqlite_source, "SELECT * FROM sales")
    first = snaps.latest_snapshot(engine, name)
    assert first.columns == ["id", "product", "units", "price", "sold_on", "note"]
    assert first.column_types == ["INTEGER", "TEXT", "INTEGER", "REAL", "TEXT", "TEXT"]
    api = snaps.get_data_api(engine, name)
    assert (api.kind, api.question, api.description) == ("ask", "What sold?", "all sales")

    # A SQL error: the task fails at once (no retry) with the database's own message,
    # and the previous snapshot stays the latest.
    capfd.readouterr()
    run2 = dag.test(run_conf={"sql": "SELECT product FROM no_such_table"})
    out = capfd.readouterr()
    assert ti_states(run2) == {"ask": "failed"}
    assert "no such table: no_such_table" in out.out + out.err
    assert "AirflowFailException" in out.out + out.err
    assert snaps.latest_snapshot(engine, name).id == first.id
    assert latest_rows(engine, name) == SALES

    # Not read-only: refused before the source is touched; the source is unchanged.
    for sql, why in [
        ("DELETE FROM sales", "DELETE"),
        ("DROP TABLE sales", "DROP"),
        ("SELECT 1; DELETE FROM sales", "2 statements"),
        ("WITH d AS (DELETE FROM sales RETURNING *) SELECT * FROM d", "DELETE"),
    ]:
        capfd.readouterr()
        run = dag.test(run_conf={"sql": sql})
        out = capfd.readouterr()
        assert ti_states(run) == {"ask": "failed"}, sql
        text = out.out + out.err
        assert "must be" in text and "read-only query" in text and why in text, sql
    assert query_sqlite(sqlite_source, "SELECT * FROM sales") == SALES
    assert snaps.latest_snapshot(engine, name).id == first.id
    published = snaps.list_snapshots(engine, name, statuses=("published", "writing"))
    assert [s.id for s in published] == [first.id]


def test_refusal_happens_before_the_connection_is_used(engine, make_dag, capfd, airflow_db):
    # The Connection does not even exist: the read-only check must fail first.
    dag = make_dag(ASK_DAG.format(name="ask_guard", conn_id="nx1_conn_that_does_not_exist"))
    capfd.readouterr()
    run = dag.test(run_conf={"sql": "CREATE TABLE x (a int)"})
    text = "".join(capfd.readouterr())
    assert ti_states(run) == {"ask": "failed"}
    assert "CREATE" in text and "read-only query" in text
    assert "nx1_conn_that_does_not_exist" not in text.split("read-only query", 1)[0][-2000:]
    assert "is not defined" not in text
    # And with a good query the same task reports the missing Connection clearly.
    capfd.readouterr()
    run = dag.test(run_conf={"sql": "SELECT 1 AS one"})
    text = "".join(capfd.readouterr())
    assert ti_states(run) == {"ask": "failed"}
    assert "Connection 'nx1_conn_that_does_not_exist' is not defined" in text


CLASH_DAG = """
import pendulum
from airflow.sdk import DAG
from airflow_nx1_connect.operators import AskRuleOperator, EngineerRuleOperator

with DAG("DAG_ID", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    owner = AskRuleOperator(task_id="owner", data_api="{name}", conn_id="nx1_src_sqlite",
                            sql="SELECT id FROM sales ORDER BY id")
    other = AskRuleOperator(task_id="other_task", data_api="{name}", conn_id="nx1_src_sqlite",
                            sql="SELECT product FROM sales")
    kind = EngineerRuleOperator(task_id="engineer", data_api="{name}",
                                conn_id="nx1_src_sqlite", sql="SELECT product FROM sales")
    owner >> [other, kind]
"""


def test_name_owned_by_another_task_or_kind_fails(engine, sqlite_source, make_dag, capfd):
    name = "clash_api"
    dag = make_dag(CLASH_DAG.format(name=name))
    capfd.readouterr()
    run = dag.test()
    text = "".join(capfd.readouterr())
    assert ti_states(run) == {"owner": "success", "other_task": "failed", "engineer": "failed"}
    assert f"Data API {name!r} belongs to task 'owner' of DAG {dag.dag_id!r}" in text
    assert f"Data API {name!r} is an ask data API" in text
    api = snaps.get_data_api(engine, name)
    assert (api.dag_id, api.task_id, api.kind) == (dag.dag_id, "owner", "ask")
    assert latest_rows(engine, name) == [(r[0],) for r in SALES]
    assert len(snaps.list_snapshots(engine, name)) == 1


def test_a_task_never_migrates_the_store_and_names_the_command(
    store_env, store_url, sqlite_source, make_dag, capfd
):
    """Migrating is the deployer's step: a task on a store behind this package's schema
    fails at once with one line naming `nx1-connect db migrate`, and leaves it untouched."""
    import sqlalchemy as sa

    from airflow_nx1_connect.core import store

    engine = engines.get_engine(store_url)
    dag = make_dag(ASK_DAG.format(name="never_migrated", conn_id="nx1_src_sqlite"))
    capfd.readouterr()
    run = dag.test()
    out = capfd.readouterr()
    text = out.out + out.err
    assert ti_states(run) == {"ask": "failed"}
    assert "was never migrated" in text and "Run: nx1-connect db migrate" in text
    assert "AirflowFailException" in text  # no retries: retrying cannot fix it
    assert store.current_revision(engine) is None
    assert [t for t in sa.inspect(engine).get_table_names() if t.startswith("nx1_")] == []

    # A store at an older revision is "behind" in the same way.
    store.migrate(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE nx1_alembic_version SET version_num = 'old_revision'"))
    capfd.readouterr()
    run = dag.test()
    text = "".join(capfd.readouterr())
    assert ti_states(run) == {"ask": "failed"}
    assert "is at revision old_revision" in text and "Run: nx1-connect db migrate" in text
    assert store.current_revision(engine) == "old_revision"
