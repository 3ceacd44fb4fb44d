"""Per-key rate limits of the data API, counted by the `limits` library.

A key's limit is requests per minute: its own `rate_limit`, or `[nx1_connect]
default_rate_limit` when it has none; 0 means no limit (and costs nothing). Counters live in
`[nx1_connect] rate_limit_storage`: `memory://` (per process, the default) or e.g.
`redis://127.0.0.1:6379/0`, shared by every server process using it.

The strategy is a fixed one-minute window per key (`limits`' `FixedWindowRateLimiter`): one
counter increment per request, and an exact `Retry-After` (the end of the window); a client
can at most send two windows' worth across a window boundary. Each key has its own counter,
so a key at its limit does not slow or refuse any other key; nothing waits.

The storage and limiter are built once per process and storage URL (the URL is read from the
settings on every request, so a changed option is seen at once). A storage that cannot be
reached refuses the request (503, `RateLimitUnavailable`) rather than serving unlimited.
"""

from __future__ import annotations

import math
import threading
import time

from limits import RateLimitItemPerMinute
from limits.errors import ConfigurationError
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from airflow_nx1_connect.core.errors import ConfigError, RateLimited, RateLimitUnavailable

#: The window, in seconds, of every limit (limits are requests per minute).
WINDOW_S = 60
_NAMESPACE = "nx1_connect"

_lock = threading.Lock()
_limiters: dict[str, FixedWindowRateLimiter] = {}
_items: dict[int, RateLimitItemPerMinute] = {}


def effective_limit(rate_limit: int | None, default_rate_limit: int) -> int:
    """Requests per minute for a key: its own limit, else the default; 0 = no limit."""
    return default_rate_limit if rate_limit is None else rate_limit


def limiter_for(storage_url: str) -> FixedWindowRateLimiter:
    """The process's limiter for `storage_url`, built on first use (thread-safe)."""
    limiter = _limiters.get(storage_url)
    if limiter is not None:
        return limiter
    with _lock:
        limiter = _limiters.get(storage_url)
        if limiter is None:
            try:
                storage = storage_from_string(storage_url)
            except (ConfigurationError, ValueError, ImportError) as exc:
                # Never echo the URL: it may hold a password.
                raise ConfigError(
                    "[nx1_connect] rate_limit_storage is not a storage the limits library "
                    f"knows ({type(exc).__name__}); use memory:// or redis://HOST:PORT/DB."
                ) from None
            limiter = _limiters[storage_url] = FixedWindowRateLimiter(storage)
    return limiter


def _item(limit: int) -> RateLimitItemPerMinute:
    item = _items.get(limit)
    if item is None:
        item = _items[limit] = RateLimitItemPerMinute(limit, namespace=_NAMESPACE)
    return item


def check(key_id: str, limit: int, storage_url: str) -> None:
    """Count one request of `key_id` against `limit` per minute (nothing when `limit` is 0).

    RateLimited (with the seconds until the window ends) when the key is over its limit;
    RateLimitUnavailable when the storage cannot be reached.
    """
    if limit <= 0:
        return
    limiter = limiter_for(storage_url)
    item = _item(limit)
    try:
        if limiter.hit(item, key_id):
            return
        stats = limiter.get_window_stats(item, key_id)
    except Exception as exc:  # a storage outage: redis.ConnectionError, TimeoutError, ...
        raise RateLimitUnavailable(type(exc).__name__) from None
    retry_after = max(1, math.ceil(stats.reset_time - time.time()))
    raise RateLimited(limit=limit, window=WINDOW_S, retry_after=retry_after)


def reset_limiters() -> None:
    """Forget the built limiters (tests; a storage is rebuilt on the next request)."""
    with _lock:
        _limiters.clear()
