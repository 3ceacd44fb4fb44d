"""What is checked when a DAG is parsed (no database work): arguments, outlets, templating,
and the Ask read-only SQL guard."""

from __future__ import annotations

import pytest
from airflow.sdk import Asset

from airflow_nx1_connect.core.errors import RuleError
from airflow_nx1_connect.operators import AskRuleOperator, EngineerRuleOperator
from airflow_nx1_connect.operators.sources import is_rule_error
from airflow_nx1_connect.operators.sql_text import check_ask_sql, split_statements


def test_outlets_templating_and_keyword_only_arguments():
    op = AskRuleOperator(task_id="t", data_api="weekly_top_product", conn_id="retail", sql="x.sql")
    assert op.outlets == [Asset("nx1://weekly_top_product")]
    # common.sql's templated fields (conn_id, database, hook_params) as well as the SQL.
    assert AskRuleOperator.template_fields == ("sql", "conn_id", "database", "hook_params")
    assert ".sql" in AskRuleOperator.template_ext
    assert EngineerRuleOperator.template_fields == AskRuleOperator.template_fields

    other = Asset("s3://bucket/key")
    op = EngineerRuleOperator(
        task_id="t", data_api="metrics", conn_id="bank", sql="SELECT 1", outlets=[other]
    )
    assert op.outlets == [other, Asset("nx1://metrics")]
    op = EngineerRuleOperator(
        task_id="t",
        data_api="metrics",
        conn_id="bank",
        sql="SELECT 1",
        outlets=[Asset("nx1://metrics")],
        write_mode="merge",
        merge_keys="account_id",
    )
    assert op.outlets == [Asset("nx1://metrics")]
    assert op.merge_keys == ["account_id"]

    with pytest.raises(TypeError):
        AskRuleOperator("t", "weekly", "retail", "SELECT 1")  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"data_api": "Weekly-Top"}, "is not valid"),
        ({"data_api": "1abc"}, "is not valid"),
        ({"data_api": "a" * 64}, "is not valid"),
        ({"conn_id": ""}, "conn_id"),
        ({"sql": "  "}, "sql"),
        ({"write_mode": "upsert"}, "write_mode must be one of overwrite, append, merge"),
        ({"write_mode": "merge"}, "needs merge_keys"),
        ({"write_mode": "merge", "merge_keys": []}, "needs merge_keys"),
        ({"write_mode": "merge", "merge_keys": ["a", "a"]}, "twice"),
        ({"write_mode": "append", "merge_keys": ["a"]}, "only apply to write_mode='merge'"),
    ],
)
def test_engineer_arguments_rejected_at_parse_time(kwargs, message):
    args = {"task_id": "t", "data_api": "metrics", "conn_id": "bank", "sql": "SELECT 1"}
    with pytest.raises(ValueError, match=message):
        EngineerRuleOperator(**{**args, **kwargs})


def test_ask_has_no_write_mode():
    with pytest.raises(ValueError, match="AskRuleOperator has no write_mode"):
        AskRuleOperator(task_id="t", data_api="a", conn_id="c", sql="SELECT 1", write_mode="append")


def test_bad_write_mode_is_a_dag_import_error(tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    (tmp_path / "bad_rule.py").write_text(
        "import pendulum\n"
        "from airflow.sdk import DAG\n"
        "from airflow_nx1_connect.operators import EngineerRuleOperator\n"
        "with DAG('bad_rule', schedule=None, start_date=pendulum.datetime(2026, 1, 1)):\n"
        "    EngineerRuleOperator(task_id='t', data_api='m', conn_id='bank', sql='SELECT 1',\n"
        "                         write_mode='merge')\n"
    )
    bag = DagBag(dag_folder=str(tmp_path))
    assert not bag.dags
    [error] = bag.import_errors.values()
    assert "write_mode='merge' needs merge_keys" in error


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "select * from sales;",
        "  -- a comment; with a semicolon\nSELECT ';' AS semi, 'DROP TABLE x' AS s -- DELETE\n",
        "/* DELETE FROM t; */ WITH a AS (SELECT 1 AS x) SELECT x FROM a",
        "VALUES (1, 'a'), (2, 'b')",
        "(SELECT 1) UNION ALL (SELECT 2)",
        'SELECT "update", "delete" FROM "insert"',
        "SELECT replace(name, 'a', 'b') AS r FROM t; -- trailing comment",
        "SELECT t.set, t.update FROM t",
    ],
)
def test_ask_accepts_one_read_only_query(sql):
    assert check_ask_sql(sql).strip()


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("", "needs SQL"),
        ("-- only a comment", "0 statements"),
        ("SELECT 1; SELECT 2", "2 statements"),
        ("SELECT 1;; DELETE FROM t", "2 statements"),
        ("DELETE FROM sales", "starts with DELETE"),
        ("insert into t values (1)", "starts with INSERT"),
        ("UPDATE t SET a = 1", "starts with UPDATE"),
        ("DROP TABLE sales", "starts with DROP"),
        ("CREATE TABLE x AS SELECT 1", "starts with CREATE"),
        ("TRUNCATE sales", "starts with TRUNCATE"),
        ("PRAGMA writable_schema = 1", "starts with PRAGMA"),
        ("ATTACH DATABASE 'x.db' AS x", "starts with ATTACH"),
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "contains DELETE"),
        ("WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a", "contains INSERT"),
        ("SELECT * INTO new_table FROM t", "contains INTO"),
        ("SELECT * FROM t FOR UPDATE", "contains UPDATE"),
        ("EXPLAIN ANALYZE DELETE FROM t", "starts with EXPLAIN"),
        ("GRANT ALL ON t TO public", "starts with GRANT"),
    ],
)
def test_ask_refuses_anything_else(sql, why):
    with pytest.raises(RuleError, match=r"read-only query|needs SQL") as info:
        check_ask_sql(sql)
    assert why in str(info.value)


def test_engineer_statements_split_robustly():
    sql = """
        -- step 1; build
        CREATE TEMP TABLE t AS SELECT 'a;b' AS v;
        /* step 2; read */
        SELECT v FROM t;
    """
    assert split_statements(sql) == [
        "-- step 1; build\n        CREATE TEMP TABLE t AS SELECT 'a;b' AS v",
        "/* step 2; read */\n        SELECT v FROM t",
    ]


def test_source_errors_classified_by_sqlstate_or_driver():
    import sqlite3

    from psycopg import OperationalError, errors

    assert is_rule_error(errors.UndefinedTable("x"))  # 42P01
    assert is_rule_error(errors.DivisionByZero("x"))  # 22012
    assert is_rule_error(errors.ReadOnlySqlTransaction("x"))  # 25006
    assert not is_rule_error(errors.ConnectionFailure("x"))  # 08006: retry
    assert not is_rule_error(errors.AdminShutdown("x"))  # 57P01: retry
    assert not is_rule_error(OperationalError("server closed the connection"))
    with sqlite3.connect(":memory:") as conn:
        with pytest.raises(sqlite3.OperationalError) as info:
            conn.execute("SELECT * FROM nope")
    assert is_rule_error(info.value)
    # Python 3.10's sqlite3 errors have no sqlite_errorname: the message tells.
    assert is_rule_error(sqlite3.OperationalError("no such table: nope"))
    assert is_rule_error(sqlite3.OperationalError('near "SELEC": syntax error'))
    assert not is_rule_error(sqlite3.OperationalError("database is locked"))
    assert not is_rule_error(sqlite3.OperationalError("unable to open database file"))
