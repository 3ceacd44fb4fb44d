"""The snapshot store: schema (SQLAlchemy Core), migrations, identifiers; its engines are
`core.engines`.

Every table is prefixed `nx1_`. Snapshot rows live in one physical table per snapshot,
`nx1_snap_<snapshot id>`, created by `core.writer`; the tables here are the catalogue.
Migrating is the deployer's step (`nx1-connect db migrate`), as `airflow db migrate` is;
task runs only check the revision (`check_migrated`).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import functools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from airflow_nx1_connect.core.engines import check_reachable, get_engine
from airflow_nx1_connect.core.errors import StoreNotMigrated

#: Alembic's version table for this store (prefixed, so it never clashes with Airflow's).
VERSION_TABLE = "nx1_alembic_version"

KINDS = ("ask", "engineer")
SNAPSHOT_STATUSES = ("writing", "published", "failed")
#: Hidden row-number column of every snapshot table: 1..row_count in snapshot order.
ROW_COLUMN = "__nx1_row__"
#: Snapshot tables are `nx1_snap_<snapshot id>`.
TABLE_PREFIX = "nx1_snap_"
#: Rows per executemany / COPY chunk and per streamed read.
BATCH_SIZE = 10_000


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """A timestamp stored in UTC and always returned timezone-aware (UTC).

    SQLite has no time zones; PostgreSQL uses `timestamptz`. Naive input is taken as UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        value = value.astimezone(dt.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

data_apis = sa.Table(
    "nx1_data_apis",
    metadata,
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("question", sa.Text, nullable=True),
    sa.Column("dag_id", sa.String(250), nullable=True),
    sa.Column("task_id", sa.String(250), nullable=True),
    sa.Column("conn_id", sa.String(250), nullable=True),
    sa.Column("write_mode", sa.String(16), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # The published snapshot served as `latest`; moved only by a publish transaction.
    sa.Column("latest_snapshot_id", sa.String(32), nullable=True),
    # Columns identifying a row (change feed; merge keys of a merge rule), and columns the
    # rule asks to index; both as given by the rule's operator (JSON lists).
    sa.Column("key_columns", sa.JSON, nullable=True),
    sa.Column("index_columns", sa.JSON, nullable=True),
    # The last run that failed (its error, one line), cleared by every publish.
    sa.Column("last_failure_run_id", sa.String(250), nullable=True),
    sa.Column("last_failure_at", UTCDateTime, nullable=True),
    sa.Column("last_failure_detail", sa.Text, nullable=True),
    # A stable id, new for every data API ever made: one that takes a deleted one's name gets
    # another, so audit events (`nx1_audit.data_api_id`) stay with the data API they were for.
    sa.Column("api_id", sa.String(32), nullable=True, default=lambda: uuid.uuid4().hex),
    sa.CheckConstraint("kind IN ('ask', 'engineer')", name="kind"),
    sa.Index("ix_nx1_data_apis_api_id", "api_id", unique=True),
)

snapshots = sa.Table(
    "nx1_snapshots",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column(
        "data_api",
        sa.String(63),
        sa.ForeignKey("nx1_data_apis.name", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("run_id", sa.String(250), nullable=True),
    sa.Column("data_interval_end", UTCDateTime, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("row_count", sa.BigInteger, nullable=True),
    sa.Column("columns", sa.JSON, nullable=True),
    sa.Column("column_types", sa.JSON, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("published_at", UTCDateTime, nullable=True),
    sa.Column("table_name", sa.String(63), nullable=False, unique=True),
    sa.Column("error", sa.Text, nullable=True),
    # What this snapshot's table was written with: key columns, and indexed columns.
    sa.Column("key_columns", sa.JSON, nullable=True),
    sa.Column("indexed_columns", sa.JSON, nullable=True),
    sa.CheckConstraint("status IN ('writing', 'published', 'failed')", name="status"),
    sa.Index("ix_nx1_snapshots_api_status_published", "data_api", "status", "published_at"),
)

api_keys = sa.Table(
    "nx1_api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False),
    sa.Column(
        "data_api",
        sa.String(63),
        sa.ForeignKey("nx1_data_apis.name", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    sa.Column("last_used_at", UTCDateTime, nullable=True),
    # Comma list: "read" (every key) or "read,run".
    sa.Column("scopes", sa.String(64), nullable=False, server_default="read"),
    # Requests per minute; None = `[nx1_connect] default_rate_limit`, 0 = no limit.
    sa.Column("rate_limit", sa.Integer, nullable=True),
    # The key this one replaced by a rotation.
    sa.Column("rotated_from", sa.String(32), nullable=True),
    # Tenant-scoped keys (`core.policy`): the row filter's terms and the column allowlist,
    # JSON arrays; NULL: no filter / every column.
    sa.Column("row_filter", sa.Text, nullable=True),
    sa.Column("allowed_columns", sa.Text, nullable=True),
    sa.Index("ix_nx1_api_keys_key_hash", "key_hash", unique=True),
    sa.Index("ix_nx1_api_keys_data_api", "data_api"),
)

#: Requests per key per day, flushed from memory in batches (never a write per request).
key_usage = sa.Table(
    "nx1_key_usage",
    metadata,
    sa.Column(
        "key_id",
        sa.String(32),
        sa.ForeignKey("nx1_api_keys.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("requests", sa.BigInteger, nullable=False),
)

#: Every admin action: who, what, when, from where. Never a secret.
audit = sa.Table(
    "nx1_audit",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("actor", sa.String(250), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("data_api", sa.String(63), nullable=True),
    # `nx1_data_apis.api_id` of the data API the event was recorded for (no foreign key: the
    # event outlives it); None for events older than revision 0005 that no data API claims.
    sa.Column("data_api_id", sa.String(32), nullable=True),
    sa.Column("key_id", sa.String(32), nullable=True),
    sa.Column("remote_addr", sa.String(64), nullable=True),
    sa.Column("detail", sa.JSON, nullable=True),
    sa.Index("ix_nx1_audit_at", "at"),
    sa.Index("ix_nx1_audit_data_api_id", "data_api_id"),
)

#: Runs of a rule's DAG requested through the data API (`POST .../runs`).
run_requests = sa.Table(
    "nx1_run_requests",
    metadata,
    sa.Column("dag_id", sa.String(250), primary_key=True),
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column(
        "data_api",
        sa.String(63),
        sa.ForeignKey("nx1_data_apis.name", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("key_id", sa.String(32), nullable=True),
    sa.Column("requested_at", UTCDateTime, nullable=False),
    sa.Index("ix_nx1_run_requests_data_api", "data_api", "requested_at"),
)

#: Snapshots dropped by retention: the change feed answers 410 (not 404) for their ids.
retired_snapshots = sa.Table(
    "nx1_retired_snapshots",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column(
        "data_api",
        sa.String(63),
        sa.ForeignKey("nx1_data_apis.name", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("published_at", UTCDateTime, nullable=True),
    sa.Column("retired_at", UTCDateTime, nullable=False),
)


# ---------------------------------------------------------------------------------------
# Migrations
# ---------------------------------------------------------------------------------------


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "airflow_nx1_connect:migrations")
    cfg.attributes["engine"] = engine
    return cfg


#: A PostgreSQL advisory lock key held while migrating, so two `db migrate` runs queue.
_MIGRATE_LOCK_KEY = 0x6E7831_6D6967  # "nx1" "mig"


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """Serialise migrations of one store: a PostgreSQL advisory lock, or an flock on a
    file beside a SQLite database (in-memory databases need none)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATE_LOCK_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATE_LOCK_KEY})
                conn.commit()
        return
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    path = Path(database).expanduser()
    fd = os.open(path.with_name(path.name + ".nx1-migrate.lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def migrate(engine: Engine | None = None, revision: str = "head") -> None:
    """Create or upgrade the store to `revision`; safe to run again, and concurrently."""
    from alembic import command

    engine = engine or get_engine()
    check_reachable(engine)
    with _migration_lock(engine):
        command.upgrade(_alembic_config(engine), revision)


_version_table = sa.Table(
    VERSION_TABLE, sa.MetaData(), sa.Column("version_num", sa.String(32), primary_key=True)
)


def current_revision(engine: Engine) -> str | None:
    """The store's Alembic revision (one small query), or None when it was never migrated."""
    with engine.connect() as conn:
        try:
            return conn.execute(sa.select(_version_table.c.version_num)).scalar()
        except sa.exc.ProgrammingError:
            return None
        except sa.exc.OperationalError as exc:
            if "no such table" in str(exc.orig):
                return None
            raise


@functools.cache
def head_revision() -> str:
    """The newest revision shipped with this package (read once per process)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config(sa.create_engine("sqlite://")))
    head = script.get_current_head()
    assert head is not None
    return head


def check_migrated(engine: Engine) -> None:
    """Raise StoreNotMigrated unless the store is at this package's revision."""
    current = current_revision(engine)
    head = head_revision()
    if current != head:
        where = engine.url.render_as_string(hide_password=True)
        state = "was never migrated" if current is None else f"is at revision {current}"
        raise StoreNotMigrated(
            f"The snapshot store {where} {state}; this version of airflow-nx1-connect needs "
            f"{head}. Run: nx1-connect db migrate"
        )


def quote(bind: Engine | sa.Connection | None, name: str) -> str:
    """A safely quoted identifier, exactly the name the database sees (both stores take
    ANSI double quotes; a quote inside is doubled).

    Unlike SQLAlchemy's preparer for psycopg, a `%` is not doubled: the statements that
    use this text either run without parameters (DDL, COPY) or through `sa.text`, which
    escapes it itself. SQL sent to a `%s` driver with parameters doubles it there
    (`reads.keyset_sql`). A doubled `%` in DDL named a column `rate%%` for `rate%`.
    """
    return '"' + name.replace('"', '""') + '"'


def placeholder(dialect: sa.Dialect) -> str:
    """The bound-value marker of the dialect's driver, for plain SQL on its own cursor."""
    return "?" if dialect.paramstyle == "qmark" else "%s"


def drop_table(conn: sa.Connection, table: str) -> None:
    """Drop a snapshot table if it exists."""
    conn.execute(sa.text(f"DROP TABLE IF EXISTS {quote(conn, table)}"))


#: Rows deleted per SQLite transaction when a snapshot table is dropped.
DROP_CHUNK = 20_000
#: SQLite: a snapshot table set aside to be emptied and dropped (see `retire_table`).
TRASH_PREFIX = "nx1_trash_"


def retire_table(conn: sa.Connection, table: str) -> str | None:
    """Take a snapshot table out of service inside the caller's transaction.

    PostgreSQL: dropped at once (its DROP is quick). SQLite: renamed to `nx1_trash_...`
    (quick, and a read that started before sees "no such table", never a half-emptied
    table); returns the new name, for `empty_trash` after the commit. A DROP TABLE would
    free every page under SQLite's one write lock (1.4 s for 5 million rows here).
    """
    if conn.dialect.name != "sqlite":
        drop_table(conn, table)
        return None
    exists = conn.execute(
        sa.text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :t"), {"t": table}
    ).first()
    if exists is None:
        return None
    trash = TRASH_PREFIX + table.removeprefix(TABLE_PREFIX)
    conn.execute(sa.text(f"ALTER TABLE {quote(conn, table)} RENAME TO {quote(conn, trash)}"))
    return trash


def empty_trash(engine: Engine, tables: list[str] | None = None) -> None:
    """Drop SQLite trash tables (`tables`, or every one left by a process that died): the
    rows first, DROP_CHUNK per short transaction, then the empty table."""
    if engine.dialect.name != "sqlite":
        return
    if tables is None:
        with engine.connect() as conn:
            tables = list(
                conn.execute(
                    sa.text(
                        "SELECT name FROM sqlite_master "
                        "WHERE type = 'table' AND substr(name, 1, :n) = :p"
                    ),
                    {"n": len(TRASH_PREFIX), "p": TRASH_PREFIX},
                ).scalars()
            )
    for table in tables:
        name, row = quote(engine, table), quote(engine, ROW_COLUMN)
        with engine.connect() as conn:
            try:
                top = conn.execute(sa.text(f"SELECT MAX({row}) FROM {name}")).scalar() or 0
            except sa.exc.OperationalError as exc:
                if "no such table" in str(exc.orig):
                    continue
                raise
            conn.rollback()
            while top > 0:
                with conn.begin():
                    conn.execute(
                        sa.text(f"DELETE FROM {name} WHERE {row} > :lo"), {"lo": top - DROP_CHUNK}
                    )
                top -= DROP_CHUNK
            with conn.begin():
                drop_table(conn, table)
