"""core.snapshots: write lifecycle, types round-trip, write modes, retention, failure."""

from __future__ import annotations

import datetime as dt
import decimal
import threading

import psycopg
import pytest
import sqlalchemy as sa

from airflow_nx1_connect.core import reads, writer
from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.core.errors import RuleError, SnapshotNotFound


def _register(engine, name="sales", kind="engineer"):
    return snaps.register_data_api(engine, name=name, kind=kind, dag_id="d", task_id="t")


def _write(engine, rows, *, name="sales", columns=None, **kw):
    columns = columns or [snaps.Column("k", "INTEGER"), snaps.Column("v", "TEXT")]
    return writer.write_snapshot(engine, data_api=name, columns=columns, batches=[rows], **kw)


def _all_rows(engine, snap):
    cols = snaps.resolve_columns(snap, None)
    return [r for batch in reads.iter_rows(engine, snap, cols, batch_size=2) for r in batch]


def test_publish_moves_latest_and_values_round_trip(engine):
    _register(engine)
    columns = [
        snaps.Column("n", "INTEGER"),
        snaps.Column("t", "TEXT"),
        snaps.Column("d", "NUMERIC"),
        snaps.Column("b", "BOOLEAN"),
        snaps.Column("day", "DATE"),
        snaps.Column("ts", "TIMESTAMP"),
        snaps.Column("j", "JSON"),
        snaps.Column("r", "REAL"),
    ]
    rows = [
        (
            1,
            "Crème 'brûlée' \"x\"",
            decimal.Decimal("12.3400"),
            True,
            dt.date(2026, 1, 2),
            dt.datetime(2026, 1, 2, 3, 4, 5),
            {"a": [1, 2]},
            1.5,
        ),
        (None, None, None, None, None, None, None, None),
        (
            2**40,
            "日本",
            decimal.Decimal("-0.000001"),
            False,
            dt.date(1999, 12, 31),
            dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
            [1, "x"],
            -2.25,
        ),
    ]
    snap = _write(engine, rows, name="sales", columns=columns, run_id="r1")
    assert snap.status == "published" and snap.row_count == 3
    assert snaps.latest_snapshot(engine, "sales").id == snap.id
    assert _all_rows(engine, snap) == rows


def test_modes_append_and_merge(engine):
    _register(engine)
    _write(engine, [(1, "a"), (2, "b")])
    app = _write(engine, [(3, "c")], write_mode="append")
    assert _all_rows(engine, app) == [(1, "a"), (2, "b"), (3, "c")]
    merged = _write(engine, [(2, "B"), (4, "d")], write_mode="merge", merge_keys=["k"])
    assert _all_rows(engine, merged) == [(2, "B"), (4, "d"), (1, "a"), (3, "c")]
    over = _write(engine, [(9, "z")])
    assert _all_rows(engine, over) == [(9, "z")]


def test_failure_keeps_previous_latest_and_leaves_no_table(engine):
    _register(engine)
    good = _write(engine, [(1, "a")])

    def broken():
        yield [(2, "b")]
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError, match="source went away"):
        writer.write_snapshot(
            engine,
            data_api="sales",
            columns=[snaps.Column("k", "INTEGER"), snaps.Column("v", "TEXT")],
            batches=broken(),
        )
    assert snaps.latest_snapshot(engine, "sales").id == good.id
    failed = snaps.list_snapshots(engine, "sales", statuses=("failed",))
    assert len(failed) == 1 and "source went away" in failed[0].error
    assert failed[0].table_name not in sa.inspect(engine).get_table_names()


def test_retention_drops_old_tables(engine):
    _register(engine)
    made = [_write(engine, [(i, "x")], retention=2) for i in range(4)]
    kept = snaps.list_snapshots(engine, "sales")
    assert [s.id for s in kept] == [made[3].id, made[2].id]
    tables = set(sa.inspect(engine).get_table_names())
    assert {s.table_name for s in made[:2]}.isdisjoint(tables)
    with pytest.raises(SnapshotNotFound):
        snaps.get_snapshot(engine, "sales", made[0].id)


def test_name_owned_by_another_task_or_kind_fails(engine):
    _register(engine)
    with pytest.raises(RuleError, match="belongs to task"):
        snaps.register_data_api(engine, name="sales", kind="engineer", dag_id="d2", task_id="t")
    with pytest.raises(RuleError, match="engineer data API"):
        snaps.register_data_api(engine, name="sales", kind="ask", dag_id="d", task_id="t")


def test_concurrent_first_runs_register_one_data_api(engine):
    """First runs of one rule at once: one inserts the data API, the others find it (on
    PostgreSQL a clashing insert must not abort their transaction)."""
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def first_run() -> None:
        barrier.wait()
        try:
            snaps.register_data_api(engine, name="burst", kind="ask", dag_id="d", task_id="t")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first_run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert (snaps.get_data_api(engine, "burst").dag_id, len(snaps.list_data_apis(engine))) == (
        "d",
        1,
    )


def test_infer_columns_rejects_duplicates_and_empty_names():
    with pytest.raises(RuleError, match="'A' appears twice"):
        writer.infer_columns([("a", None), ("A", None)], [])
    with pytest.raises(RuleError, match="Column 2 of the result has no name"):
        writer.infer_columns([("a", None), ("", None)], [])
    cols = writer.infer_columns(
        [("a", None), ("b", 1700), ("c", None)], [(1, None, None), (2.5, None, None)], "postgresql"
    )
    assert [c.type for c in cols] == ["REAL", "NUMERIC", "TEXT"]


def test_key_and_index_columns_are_indexed_before_publish_and_recorded(engine):
    _register(engine)
    columns = [snaps.Column("k", "INTEGER"), snaps.Column("v", "TEXT"), snaps.Column("w", "REAL")]
    snap = _write(
        engine,
        [(1, "a", 1.0), (2, "b", 2.0)],
        columns=columns,
        key_columns=["k", "v"],
        index_columns=["w", "v"],
    )
    assert snap.key_columns == ["k", "v"]
    assert snap.indexed_columns == ["w", "v", "k"]  # every column that leads an index
    indexes = {tuple(ix["column_names"]) for ix in sa.inspect(engine).get_indexes(snap.table_name)}
    assert {("k", "v"), ("w",), ("v",)} <= indexes
    # The planner uses them: a filter on an index column is an index lookup.
    with engine.connect() as conn:
        sql = f'SELECT * FROM "{snap.table_name}" WHERE "w" = 2.0'
        if engine.dialect.name == "sqlite":
            plan = " ".join(str(r) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
            assert "USING INDEX" in plan
        else:
            conn.exec_driver_sql("SET enable_seqscan = off")
            plan = " ".join(str(r) for r in conn.exec_driver_sql("EXPLAIN " + sql))
            assert "Index" in plan

    with pytest.raises(RuleError, match="index_columns must be columns of the result"):
        _write(engine, [(1, "a", 1.0)], columns=columns, index_columns=["nope"])
    assert snaps.latest_snapshot(engine, "sales").id == snap.id


def test_merge_keys_are_the_key_columns(engine):
    _register(engine)
    snap = _write(engine, [(1, "a")], write_mode="merge", merge_keys=["k"])
    assert (snap.key_columns, snap.indexed_columns) == (["k"], ["k"])


def _same(a, b):
    """Equal, telling NaN, -0.0 and a Decimal's scale apart (repr of floats and Decimals)."""
    kinds = float | decimal.Decimal
    return [tuple(repr(v) if isinstance(v, kinds) else v for v in r) for r in a] == [
        tuple(repr(v) if isinstance(v, kinds) else v for v in r) for r in b
    ]


def test_tricky_text_and_numbers_round_trip(engine):
    _register(engine)
    columns = [
        snaps.Column("n", "INTEGER"),
        snaps.Column("t", "TEXT"),
        snaps.Column("d", "NUMERIC"),
        snaps.Column("r", "REAL"),
        snaps.Column("b", "BOOLEAN"),
        snaps.Column("day", "DATE"),
    ]
    rows = [
        (
            2**63 - 1,
            "tab\there\nnew\r\nline \\N back\\slash \\t 'q' \"dq\" ,;|",
            decimal.Decimal("123456789012345678901234567890.123456789"),
            1e-300,
            True,
            dt.date(1, 1, 1),
        ),
        (-(2**63), "", decimal.Decimal("-0.000001"), float("inf"), False, dt.date(9999, 12, 31)),
        (0, "\\", decimal.Decimal("12.3400"), float("-inf"), None, None),
        (None, "日本 🎉 é\u00a0\u2028", decimal.Decimal("0E-10"), 0.1, True, dt.date(2024, 2, 29)),
        (7, "\\N", decimal.Decimal("-5"), 1.7976931348623157e308, False, dt.date(2000, 1, 1)),
        (8, None, None, None, None, None),
    ]
    if engine.dialect.name == "postgresql":  # SQLite has no NaN REAL and no -0.0
        rows.append((9, "NULL", decimal.Decimal("NaN"), float("nan"), True, None))
        rows.append((10, " ", decimal.Decimal("Infinity"), -0.0, False, None))
    batches = [rows[:3], rows[3:]]
    snap = writer.write_snapshot(engine, data_api="sales", columns=columns, batches=batches)
    assert snap.row_count == len(rows)
    assert _same(_all_rows(engine, snap), rows)


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_postgres_values_of_another_type_are_parsed_as_their_text(engine):
    """A batch with a value binary COPY would take differently (a str in an INTEGER
    column, 'f' in a BOOLEAN one) goes as text, parsed by the server as always; the
    batches around it, and row order, are unaffected."""
    _register(engine)
    columns = [
        snaps.Column("n", "INTEGER"),
        snaps.Column("b", "BOOLEAN"),
        snaps.Column("day", "DATE"),
        snaps.Column("r", "REAL"),
        snaps.Column("d", "NUMERIC"),
    ]
    day = dt.date(2020, 1, 1)
    batches = [
        [(1, True, day, 1.5, decimal.Decimal("1.5")), (2, None, None, None, None)],
        [("42", "f", dt.datetime(2020, 1, 2, 10, 0), decimal.Decimal("2.25"), 7.5)],
        [(3, False, day, 3, 4)],
        [(4, "true", day, "0.5", "1e3")],
        [[5, True, day, 2.5, decimal.Decimal("-1")]],  # a list row, not a tuple
    ]
    snap = writer.write_snapshot(engine, data_api="sales", columns=columns, batches=batches)
    assert _all_rows(engine, snap) == [
        (1, True, day, 1.5, decimal.Decimal("1.5")),
        (2, None, None, None, None),
        (42, False, dt.date(2020, 1, 2), 2.25, decimal.Decimal("7.5")),
        (3, False, day, 3.0, decimal.Decimal(4)),
        (4, True, day, 0.5, decimal.Decimal("1000")),
        (5, True, day, 2.5, decimal.Decimal("-1")),
    ]
    # What the server rejects as text still fails the write (True is 't', not 1).
    with pytest.raises(psycopg.errors.InvalidTextRepresentation, match="bigint"):
        writer.write_snapshot(
            engine,
            data_api="sales",
            columns=columns,
            batches=[[(1, True, day, 1.0, 1)], [(True, True, day, 1.0, 1)]],
        )
    with pytest.raises(psycopg.errors.InvalidTextRepresentation, match="boolean"):
        writer.write_snapshot(
            engine, data_api="sales", columns=columns, batches=[[(1, 2, day, 1.0, 1)]]
        )
    # An int the store type cannot hold fails the write, naming the column and value.
    too_big = [[(1, True, day, 1.0, 1)] * 2, [(2**63, True, day, 1.0, 1)]]
    with pytest.raises(OverflowError, match="Column 'n', row 3: 9223372036854775808 is out"):
        writer.write_snapshot(engine, data_api="sales", columns=columns, batches=too_big)
    with pytest.raises(
        OverflowError, match=r"Column 'r', row 1: 1000+ is out of range for double precision"
    ):
        writer.write_snapshot(
            engine, data_api="sales", columns=columns, batches=[[(1, True, day, 10**400, 1)]]
        )
    assert snaps.latest_snapshot(engine, "sales").id == snap.id


def test_column_names_with_percent_and_quotes_work_everywhere(engine):
    """Names such as `rate%` or `a "b"` are the table's real column names on both stores
    (PostgreSQL DDL once doubled the %, making `rate%%`), and every read finds them:
    pages, filters, sorts, sorted streams, Arrow, the change feed."""
    from airflow_nx1_connect.core import arrow, changes

    _register(engine)
    names = ["rate%", 'a "b"', "x%%y", "Ünï code"]
    columns = [
        snaps.Column(names[0], "INTEGER"),
        snaps.Column(names[1], "TEXT"),
        snaps.Column(names[2], "REAL"),
        snaps.Column(names[3], "TEXT"),
    ]
    rows = [(i, f"t{i}", i / 2, None if i % 3 else "é") for i in range(1, 26)]
    first = _write(engine, rows, columns=columns, key_columns=["rate%"], index_columns=["x%%y"])
    table_columns = [c["name"] for c in sa.inspect(engine).get_columns(first.table_name)]
    assert table_columns[1:] == names
    cols = snaps.resolve_columns(first, None)
    assert reads.read_raw_rows(engine, first, cols, start=0, limit=3) == rows[:3]
    query = reads.RowsQuery(
        filters=(reads.Filter("rate%", "gt", ("5",)), reads.Filter("x%%y", "lt", ("10",))),
        sort=(reads.SortKey("rate%", True),),
    )
    expected = sorted((r for r in rows if r[0] > 5 and r[2] < 10), reverse=True)
    assert reads.read_query_rows(engine, first, cols, query, start=0, limit=100) == expected
    streamed = reads.iter_query_rows(engine, first, cols, query, batch_size=4)
    assert [r for batch in streamed for r in batch] == expected
    batches = list(arrow.iter_record_batches(engine, first, cols))
    assert batches[0].column(0).to_pylist() == [r[0] for r in rows]
    second = _write(engine, rows[1:], columns=columns, key_columns=["rate%"])
    span = changes.resolve(engine, "sales", first.id, second.id)
    feed = changes.read_changes(engine, span, changes.feed_columns(span), start=0, limit=10)
    assert feed == [("delete", *rows[0])]
