"""The snapshot store: schema (SQLAlchemy Core), engines, migrations.

Every table is prefixed `nx1_`. Snapshot rows live in one physical table per snapshot,
`nx1_snap_<snapshot id>`, created by `core.snapshots`; the tables here are the catalogue.
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url

from airflow_nx1_connect.core.errors import StoreUnavailable

#: Seconds a connection attempt to the store may take before the store counts as unreachable.
CONNECT_TIMEOUT_S = 3
#: Milliseconds SQLite waits on a locked database before giving up.
SQLITE_BUSY_TIMEOUT_MS = 10_000
#: Alembic's version table for this store (prefixed, so it never clashes with Airflow's).
VERSION_TABLE = "nx1_alembic_version"

KINDS = ("ask", "engineer")
SNAPSHOT_STATUSES = ("writing", "published", "failed")


def utcnow() -> dt.datetime:
    """Now, as an aware UTC datetime truncated to microseconds."""
    return dt.datetime.now(dt.UTC)


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
            value = value.replace(tzinfo=dt.UTC)
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


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
    sa.CheckConstraint("kind IN ('ask', 'engineer')", name="kind"),
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
    sa.Index("ix_nx1_api_keys_key_hash", "key_hash", unique=True),
    sa.Index("ix_nx1_api_keys_data_api", "data_api"),
)


# ---------------------------------------------------------------------------------------
# Engines
# ---------------------------------------------------------------------------------------

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
    finally:
        cur.close()


def create_store_engine(url: str) -> Engine:
    """A new engine for a store URL, with a bounded connect timeout.

    SQLite: WAL mode, a busy timeout and foreign keys on every connection (its folder is
    created if missing). PostgreSQL (`postgresql://` means psycopg 3): `connect_timeout`
    and pre-ping, so a dead server is seen in seconds, not minutes. `hide_parameters`
    keeps bound values out of SQL logs and exception texts.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {}
    if backend == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    elif backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
        kwargs["pool_pre_ping"] = True
        kwargs["pool_timeout"] = CONNECT_TIMEOUT_S
    # Bound values (key hashes, snapshot rows) never appear in SQL logs or error messages.
    engine = sa.create_engine(parsed, hide_parameters=True, **kwargs)
    if backend == "sqlite":
        event.listen(engine, "connect", _on_sqlite_connect)
    return engine


def get_engine(url: str | None = None) -> Engine:
    """The shared engine for `url` (default: the configured store), created on first use."""
    if url is None:
        from airflow_nx1_connect.core.settings import get_settings

        url = get_settings().sql_alchemy_conn
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = create_store_engine(url)
        return engine


def dispose_engines() -> None:
    """Close every cached engine (tests, and processes after fork)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def check_reachable(engine: Engine) -> None:
    """Raise `StoreUnavailable` unless a connection to the store can be opened now."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        raise StoreUnavailable(describe_store_error(engine, exc)) from None


def describe_store_error(engine: Engine, exc: BaseException) -> str:
    """One line about an unreachable store, naming it without its password."""
    where = engine.url.render_as_string(hide_password=True)
    first = str(getattr(exc, "orig", exc)).strip().splitlines()[0:1]
    return (
        f"The snapshot store {where} cannot be reached ({first[0] if first else 'no detail'}). "
        "Check that it is running and that [nx1_connect] sql_alchemy_conn is right."
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


def migrate(engine: Engine | None = None, revision: str = "head") -> None:
    """Create or upgrade the store to `revision`; safe to run again.

    Also tidies what killed runs left behind (see `core.snapshots.cleanup_abandoned`).
    """
    from alembic import command

    engine = engine or get_engine()
    check_reachable(engine)
    command.upgrade(_alembic_config(engine), revision)
    from airflow_nx1_connect.core import snapshots

    snapshots.cleanup_abandoned(engine)


def current_revision(engine: Engine) -> str | None:
    """The store's Alembic revision, or None when it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return ctx.get_current_revision()


def head_revision() -> str:
    """The newest revision shipped with this package."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config(sa.create_engine("sqlite://")))
    head = script.get_current_head()
    assert head is not None
    return head
