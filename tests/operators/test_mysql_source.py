"""Rules on a real MariaDB (MySQL) source into both stores, through the MySQL provider's hook.

The Connection uses mysql-connector-python (`{"client": "mysql-connector-python"}`), the
client the locked environment installs. Each test makes its own tables (and function,
sequence) in the `test` database under a unique prefix and drops them afterwards.

Checked: every type round-trips exactly over several fetch batches (DECIMAL as the same
decimal text, naive DATETIME, TINYINT(1) published as INTEGER, utf8mb4 text, NULL); a bad
query fails the task without retry and with MariaDB's message; an Ask runs in a READ ONLY
session, so a write hidden in a SELECT is refused by the server; an Engineer rule runs
several statements on one connection and its own writes are committed only after the
publish; the published result is read with a streaming (unbuffered) cursor; and MySQL
driver errors are classified as the SQL's fault or as retryable.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.operators import sources
from airflow_nx1_connect.operators.rules import FETCH_SIZE
from tests.operators.conftest import MYSQL, MYSQL_CONN, latest_rows, my_connect, my_exec, ti_states

ROWS = 25_000


def _setup(p: str) -> None:
    """`{p}_things` (ROWS + 2 rows of every type), `{p}_audit`, a writing function and a
    sequence."""
    my_exec(
        f"""CREATE TABLE {p}_things (
            id BIGINT PRIMARY KEY,
            label VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
            amount DECIMAL(20, 6), ratio DOUBLE, flag TINYINT(1), day DATE,
            at DATETIME(6), at0 DATETIME, note TEXT CHARACTER SET utf8mb4,
            big INT UNSIGNED
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
        f"""INSERT INTO {p}_things
            SELECT seq, CONCAT('item ', seq), seq * 1.234567, seq / 7e0, seq % 2,
                   DATE '2026-01-01' + INTERVAL (seq % 400) DAY,
                   TIMESTAMP '2026-01-01 00:00:00' + INTERVAL (seq * 61500001) MICROSECOND,
                   TIMESTAMP '2026-01-01 00:00:00' + INTERVAL seq MINUTE,
                   REPEAT('n', seq % 5), seq * 1000
            FROM seq_1_to_{ROWS}""",
        # A TINYINT(1) is a byte, not a boolean: 5 and -1 fit in it.
        f"""INSERT INTO {p}_things VALUES
            (0, 'Crème ''brûlée'' "x" 日本 😀 \\t tab \\\\ back', -0.000001, 1e300, 5,
             '1000-01-01', '1000-01-01 00:00:00.000001', '9999-12-31 23:59:59',
             '🦀 utf8mb4 ✓', 4294967295),
            ({ROWS + 1}, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
            ({ROWS + 2}, '', 99999999999999.999999, -0.5, -1, '2026-02-28',
             '2026-02-28 23:59:59.999999', '2026-02-28 00:00:00', '', 0)""",
        f"CREATE TABLE {p}_audit (id INT AUTO_INCREMENT PRIMARY KEY, note TEXT) ENGINE=InnoDB",
        f"""CREATE FUNCTION {p}_bump() RETURNS INT MODIFIES SQL DATA
            BEGIN INSERT INTO {p}_audit (note) VALUES ('bumped'); RETURN 1; END""",
        f"CREATE SEQUENCE {p}_seq",
    )


ASK_DAG = """
import datetime as dt
import pendulum
from airflow.sdk import DAG
from airflow_nx1_connect.operators import AskRuleOperator

with DAG("DAG_ID", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    AskRuleOperator(
        task_id="ask", data_api="{name}", conn_id="nx1_src_mysql",
        retries=1, retry_delay=dt.timedelta(seconds=1),
        sql="{{{{ dag_run.conf.get('sql', 'SELECT * FROM {p}_things ORDER BY id') }}}}",
    )
"""


def _try_number(dag_run: Any) -> int:
    (ti,) = dag_run.get_task_instances()
    return int(ti.try_number)


def test_mariadb_ask_exact_types_errors_and_read_only(engine, mysql_source, make_dag, capfd):
    p = mysql_source
    _setup(p)
    expected = my_exec(f"SELECT * FROM {p}_things ORDER BY id")
    assert len(expected) == ROWS + 3 > 2 * FETCH_SIZE
    name = f"my_{engine.dialect.name[:2]}_ask"
    dag = make_dag(ASK_DAG.format(name=name, p=p))

    run1 = dag.test()
    assert ti_states(run1) == {"ask": "success"}
    got = latest_rows(engine, name)
    assert got == expected
    # DECIMAL keeps its exact text (scale included), DATETIME stays naive to the microsecond.
    assert [None if r[2] is None else str(r[2]) for r in got] == [
        None if r[2] is None else str(r[2]) for r in expected
    ]
    assert got[0][2] == Decimal("-0.000001") and str(got[-1][2]) == "99999999999999.999999"
    assert got[0][6].isoformat() == "1000-01-01T00:00:00.000001" and got[0][6].tzinfo is None
    assert got[0][1] == "Crème 'brûlée' \"x\" 日本 😀 \t tab \\ back"
    assert got[0][8] == "🦀 utf8mb4 ✓"
    assert [r[4] for r in got[:3]] == [5, 1, 0]
    snap = snaps.latest_snapshot(engine, name)
    assert snap.column_types == [
        "INTEGER",  # BIGINT
        "TEXT",  # VARCHAR utf8mb4
        "NUMERIC",  # DECIMAL(20, 6)
        "REAL",  # DOUBLE
        "INTEGER",  # TINYINT(1): the drivers give ints, and it holds -128..127
        "DATE",
        "TIMESTAMP",  # DATETIME(6)
        "TIMESTAMP",  # DATETIME
        "TEXT",
        "INTEGER",  # INT UNSIGNED
    ]

    # Bad SQL: MariaDB's own message, no retry, the previous snapshot stays latest.
    for sql, message in [
        (f"SELECT label FROM {p}_no_such", f"Table 'test.{p}_no_such' doesn't exist"),
        (f"SELECT label FROM {p}_things WHERE", "You have an error in your SQL syntax"),
        (f"SELECT nope FROM {p}_things", "Unknown column 'nope'"),
    ]:
        capfd.readouterr()
        run = dag.test(run_conf={"sql": sql})
        text = "".join(capfd.readouterr())
        assert ti_states(run) == {"ask": "failed"}, sql
        assert _try_number(run) == 1, sql
        assert message in text, sql
        assert snaps.latest_snapshot(engine, name).id == snap.id

    # The session is READ ONLY: writes the parser cannot see (a stored function that
    # inserts, a sequence's NEXTVAL) are refused by MariaDB itself, and not retried.
    for sql in (f"SELECT {p}_bump() AS n", f"SELECT NEXTVAL({p}_seq) AS n"):
        capfd.readouterr()
        run = dag.test(run_conf={"sql": sql})
        text = "".join(capfd.readouterr())
        assert ti_states(run) == {"ask": "failed"}, sql
        assert _try_number(run) == 1, sql
        assert "Cannot execute statement in a READ ONLY transaction" in text, sql
    assert my_exec(f"SELECT COUNT(*) FROM {p}_audit") == [(0,)]
    assert my_exec(f"SELECT NEXTVAL({p}_seq)") == [(1,)]
    assert snaps.latest_snapshot(engine, name).id == snap.id
    assert latest_rows(engine, name) == expected

    # Columns NULL all through the first batch take their type from MySQL's type codes.
    nulls = f"SELECT amount, at, flag, big, label FROM {p}_things WHERE id = {ROWS + 1}"
    run = dag.test(run_conf={"sql": nulls})
    assert ti_states(run) == {"ask": "success"}
    assert latest_rows(engine, name) == [(None,) * 5]
    assert snaps.latest_snapshot(engine, name).column_types == [
        "NUMERIC",
        "TIMESTAMP",
        "INTEGER",
        "INTEGER",
        "TEXT",
    ]


ENGINEER_DAG = """
import pendulum
from airflow.sdk import DAG
from airflow_nx1_connect.operators import EngineerRuleOperator

with DAG("DAG_ID", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    EngineerRuleOperator(
        task_id="eng", data_api="{name}", conn_id="nx1_src_mysql",
        write_mode="merge", merge_keys=["flag"],
        sql=\"\"\"
            CREATE TEMPORARY TABLE agg AS
                SELECT flag, COUNT(*) AS n, SUM(amount) AS total
                FROM {p}_things GROUP BY flag;
            -- rows of a statement before the last are read and dropped; a ';' here is fine
            SELECT * FROM {p}_things;
            INSERT INTO {p}_audit (note) VALUES ('it\\\\'s; run {{{{ run_id }}}}');
            UPDATE {p}_things SET note = 'touched' WHERE id = 0;
            {{{{ dag_run.conf.get('last', 'SELECT flag, n, total FROM agg ORDER BY flag') }}}};
        \"\"\",
    )
"""


def test_mariadb_engineer_statements_commit_only_after_publish(
    engine, mysql_source, make_dag, capfd
):
    p = mysql_source
    _setup(p)
    name = f"my_{engine.dialect.name[:2]}_eng"
    dag = make_dag(ENGINEER_DAG.format(name=name, p=p))
    aggregate = f"SELECT flag, COUNT(*), SUM(amount) FROM {p}_things GROUP BY flag ORDER BY flag"
    expected = my_exec(aggregate)

    run1 = dag.test()
    assert ti_states(run1) == {"eng": "success"}
    assert latest_rows(engine, name) == expected
    assert [str(r[2]) for r in latest_rows(engine, name) if r[2] is not None] == [
        str(r[2]) for r in expected if r[2] is not None
    ]
    assert snaps.latest_snapshot(engine, name).column_types == ["INTEGER", "INTEGER", "NUMERIC"]
    # The rule's own writes are committed once the snapshot is published.
    (audit,) = my_exec(f"SELECT note FROM {p}_audit")
    assert audit[0].startswith("it's; run ")
    assert my_exec(f"SELECT note FROM {p}_things WHERE id = 0") == [("touched",)]
    first = snaps.latest_snapshot(engine, name)

    # The last statement fails: every earlier write of the run is rolled back, nothing is
    # published, and the task is not retried.
    my_exec(f"UPDATE {p}_things SET note = 'before' WHERE id = 0")
    capfd.readouterr()
    run2 = dag.test(run_conf={"last": "SELECT flag, nope FROM agg"})
    text = "".join(capfd.readouterr())
    assert ti_states(run2) == {"eng": "failed"}
    assert "Unknown column 'nope'" in text
    assert my_exec(f"SELECT COUNT(*) FROM {p}_audit") == [(1,)]
    assert my_exec(f"SELECT note FROM {p}_things WHERE id = 0") == [("before",)]
    assert snaps.latest_snapshot(engine, name).id == first.id

    # A merge key missing from the result fails after the rows were read: rolled back too.
    capfd.readouterr()
    run3 = dag.test(run_conf={"last": "SELECT n, total FROM agg"})
    text = "".join(capfd.readouterr())
    assert ti_states(run3) == {"eng": "failed"}
    assert "flag" in text
    assert my_exec(f"SELECT COUNT(*) FROM {p}_audit") == [(1,)]

    # Merge: new rows for flag 0 and 1, the previous snapshot's other flags kept.
    my_exec(f"DELETE FROM {p}_things WHERE flag NOT IN (0, 1) OR flag IS NULL")
    run4 = dag.test()
    assert ti_states(run4) == {"eng": "success"}
    now = my_exec(aggregate)
    assert latest_rows(engine, name) == now + [r for r in expected if r[0] not in {0, 1}]
    assert my_exec(f"SELECT COUNT(*) FROM {p}_audit") == [(2,)]


def test_mariadb_result_is_streamed_not_buffered(mysql_source):
    """The published result comes off the socket as fetchmany asks (the rest stays with the
    server), and a run that fails half-way drops the rest instead of reading it."""
    from airflow.providers.mysql.hooks.mysql import MySqlHook

    hook = MySqlHook(mysql_conn_id=MYSQL_CONN)
    assert sources.dialect_of(hook) == "mysql"
    conn = hook.get_conn()
    try:
        cursor = sources.open_cursor(conn, False)
        assert "Buffered" not in type(cursor).__name__
        cursor.execute("SELECT seq, REPEAT('x', 100) FROM seq_1_to_2000000")
        first = sources.fetch_first(cursor)
        assert len(first) == FETCH_SIZE
        assert conn.unread_result is True  # 1,990,000 rows still to come
        batches = sources.batches(cursor, first)
        assert sum(len(b) for b, _ in zip(batches, range(3), strict=False)) == 3 * FETCH_SIZE
        # A failure now: rolling back must not read (and buffer) the remaining rows.
        sources.rollback(conn)
        assert not conn.is_connected()
    finally:
        conn.close()


def _raise(call: Any) -> BaseException:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("no error raised")


@pytest.mark.parametrize("driver", ["mysql-connector-python", "pymysql"])
def test_mysql_driver_errors_classified(mysql_source, driver):
    """SQL mistakes are rule errors (no retry); a lost connection is retryable. PyMySQL
    (like mysqlclient) carries no SQLSTATE and raises some of them as OperationalError."""
    p = mysql_source
    my_exec(f"CREATE TABLE {p}_t (id INT) ENGINE=InnoDB")

    def connect() -> Any:
        if driver == "pymysql":
            import pymysql

            return pymysql.connect(**MYSQL)
        return my_connect()

    def run(sql: str, read_only: bool = False) -> BaseException:
        conn = connect()
        try:
            cur = conn.cursor()
            if read_only:
                cur.execute("SET SESSION TRANSACTION READ ONLY")
            return _raise(lambda: cur.execute(sql))
        finally:
            conn.close()

    rule_errors = [
        run(f"SELEC id FROM {p}_t"),
        run(f"SELECT id FROM {p}_missing"),
        run(f"SELECT nope FROM {p}_t"),
        run(f"INSERT INTO {p}_t VALUES (1)", read_only=True),
        run("SELECT no_such_function_nx1()"),
        run(f"SELECT NEXTVAL({p}_no_such_seq)"),
    ]
    assert [sources.is_rule_error(e) for e in rule_errors] == [True] * 6, rule_errors

    # Killed by the server mid-session: an outage, retryable.
    victim = connect()
    try:
        cur = victim.cursor()
        cur.execute("SELECT CONNECTION_ID()")
        (conn_id,) = cur.fetchone()
        my_exec(f"KILL CONNECTION {int(conn_id)}")
        lost = _raise(lambda: victim.cursor().execute("SELECT 1"))
    finally:
        try:
            victim.close()
        except Exception:
            pass
    assert not sources.is_rule_error(lost), repr(lost)
