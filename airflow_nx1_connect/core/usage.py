"""Requests per data API key per day: counted in memory, flushed to `nx1_key_usage`.

`record` (once per admitted data API request) only adds one to an in-memory counter; it
never writes. When `FLUSH_EVERY_S` seconds have passed since the last flush, the next
`record` starts a background thread that adds the counts to the store in one transaction
(an upsert: `requests = requests + excluded.requests`), so a request never waits for that
write; the counts left at exit are flushed by an `atexit` hook. Several server processes
add to the same rows. A flush that fails keeps its counts for the next one; counts of a key
deleted in between are dropped.

`usage_for_keys` reads the totals (today, the last 7 days including today, all time; UTC
days), with this process's counts not yet flushed added in.
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from airflow_nx1_connect.core.clock import utcnow
from airflow_nx1_connect.core.store import api_keys, key_usage

log = logging.getLogger(__name__)

#: Seconds between two flushes of the in-memory counts (at most one write per interval).
FLUSH_EVERY_S = 5.0

_Counts = Counter[tuple[str, dt.date]]
_lock = threading.Lock()
_flush_lock = threading.Lock()
#: Pending counts per store (its URL: the data API's read engine and the admin side's
#: engine of one store share them), and an engine of that store to flush them with.
_pending: dict[str, _Counts] = {}
_flush_with: dict[str, Engine] = {}


def _store_key(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


_last_flush = time.monotonic()
_flusher: threading.Thread | None = None


def record(engine: Engine, key_id: str) -> None:
    """Count one request of `key_id` today (UTC); flushed later, in the background."""
    global _flusher, _last_flush
    day = utcnow().date()
    start: threading.Thread | None = None
    store = _store_key(engine)
    with _lock:
        counts = _pending.get(store)
        if counts is None:
            counts = _pending[store] = Counter()
            _flush_with.setdefault(store, engine)
        counts[(key_id, day)] += 1
        now = time.monotonic()
        if now - _last_flush >= FLUSH_EVERY_S and (_flusher is None or not _flusher.is_alive()):
            _last_flush = now
            start = _flusher = threading.Thread(target=flush, name="nx1-usage-flush", daemon=True)
    if start is not None:
        start.start()


def pending(engine: Engine) -> _Counts:
    """A copy of this process's counts for `engine` not yet flushed."""
    with _lock:
        return Counter(_pending.get(_store_key(engine), ()))


def flush(*, at_exit: bool = False) -> None:
    """Write every pending count to its store now (one transaction per store); never raises.

    A store that fails keeps its counts for the next flush (logged; at exit, at debug level).
    """
    with _flush_lock:
        with _lock:
            taken = {store: counts for store, counts in _pending.items() if counts}
            _pending.clear()
        for store, counts in taken.items():
            try:
                _write(_flush_with[store], counts)
            except Exception as exc:  # the store is down: keep the counts for the next flush
                log.log(
                    logging.DEBUG if at_exit else logging.WARNING,
                    "Could not flush data API key usage: %s",
                    type(exc).__name__,
                )
                with _lock:
                    _pending.setdefault(store, Counter()).update(counts)


def _upsert(engine: Engine, rows: list[dict[str, object]]) -> sa.Executable:
    dialect = engine.dialect.name
    if dialect not in ("sqlite", "postgresql"):
        raise NotImplementedError(f"Usage counting supports SQLite and PostgreSQL, not {dialect}")
    insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
    statement = insert(key_usage).values(rows)
    return statement.on_conflict_do_update(
        index_elements=[key_usage.c.key_id, key_usage.c.day],
        set_={"requests": key_usage.c.requests + statement.excluded.requests},
    )


def _write(engine: Engine, counts: _Counts) -> None:
    ids = sorted({key_id for key_id, _ in counts})
    with engine.begin() as conn:
        existing = set(
            conn.execute(sa.select(api_keys.c.id).where(api_keys.c.id.in_(ids))).scalars()
        )
        rows: list[dict[str, object]] = [
            {"key_id": key_id, "day": day, "requests": n}
            for (key_id, day), n in sorted(counts.items())
            if key_id in existing
        ]
        if rows:
            conn.execute(_upsert(engine, rows))


def usage_for_keys(
    engine: Engine, key_ids: Iterable[str], *, today: dt.date | None = None
) -> dict[str, dict[str, int]]:
    """`{key_id: {"today", "last_7_days", "total"}}` requests for each of `key_ids`.

    Keys never used get zeros; this process's counts not yet flushed are included.
    """
    ids = list(dict.fromkeys(key_ids))
    day = today or utcnow().date()
    week = day - dt.timedelta(days=6)
    result = {key_id: {"today": 0, "last_7_days": 0, "total": 0} for key_id in ids}
    if not ids:
        return result
    requests = key_usage.c.requests
    query = (
        sa.select(
            key_usage.c.key_id,
            sa.func.sum(sa.case((key_usage.c.day == day, requests), else_=0)),
            sa.func.sum(sa.case((key_usage.c.day.between(week, day), requests), else_=0)),
            sa.func.sum(requests),
        )
        .where(key_usage.c.key_id.in_(ids))
        .group_by(key_usage.c.key_id)
    )
    with engine.connect() as conn:
        for key_id, on_day, in_week, total in conn.execute(query):
            result[key_id] = {
                "today": int(on_day or 0),
                "last_7_days": int(in_week or 0),
                "total": int(total or 0),
            }
    for (key_id, counted_day), n in pending(engine).items():
        if key_id in result:
            usage = result[key_id]
            usage["total"] += n
            if counted_day == day:
                usage["today"] += n
            if week <= counted_day <= day:
                usage["last_7_days"] += n
    return result


atexit.register(flush, at_exit=True)
