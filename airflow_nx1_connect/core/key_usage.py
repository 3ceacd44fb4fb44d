"""Reading a key's usage: requests per day, as counted into `nx1_key_usage`.

The serving path counts requests in memory and flushes them per key and UTC day (see
`core.usage`); this module only reads those rows, for `keys list`, the admin view and the
admin REST API: `{"today": n, "last_7_days": n, "total": n}` per key (UTC days; the last 7
days include today).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from airflow_nx1_connect.core.clock import utcnow
from airflow_nx1_connect.core.store import key_usage

#: Keys per query (bound parameters stay well under every driver's limit).
_CHUNK = 500


def empty_usage() -> dict[str, int]:
    """The usage of a key never used."""
    return {"today": 0, "last_7_days": 0, "total": 0}


def usage_for(
    engine: Engine, key_ids: Iterable[str], *, now: dt.datetime | None = None
) -> dict[str, dict[str, int]]:
    """`{key_id: {"today", "last_7_days", "total"}}` for every id given (zeros if unused)."""
    ids = list(dict.fromkeys(key_ids))
    result = {key_id: empty_usage() for key_id in ids}
    today = (now or utcnow()).astimezone(dt.UTC).date()
    week_start = today - dt.timedelta(days=6)
    requests = key_usage.c.requests
    query = sa.select(
        key_usage.c.key_id,
        sa.func.sum(sa.case((key_usage.c.day == today, requests), else_=0)),
        sa.func.sum(sa.case((key_usage.c.day >= week_start, requests), else_=0)),
        sa.func.sum(requests),
    ).group_by(key_usage.c.key_id)
    with engine.connect() as conn:
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            for key_id, day, week, total in conn.execute(
                query.where(key_usage.c.key_id.in_(chunk))
            ):
                result[key_id] = {
                    "today": int(day or 0),
                    "last_7_days": int(week or 0),
                    "total": int(total or 0),
                }
    return result
