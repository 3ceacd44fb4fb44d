"""Where the data API's links start: Airflow's `[api] base_url`, or nothing (path-absolute).

`Link` and `data.next_url` (rows, changes) and a run's `status_url` / `Location` are built by
`core.serving` from `Request.url_root`. The adapters pass `url_root(path)`: a function that
reads `[api] base_url` through Airflow's configuration when a link is built (not per request,
not at import). Never from the request's `Host` (or `X-Forwarded-Host`) header: with a shared
cache in front, one answer to a forged Host would send every app paging to another host.

- `[api] base_url` set (`https://airflow.example.com`, maybe with a path such as `/airflow`):
  links are absolute URLs under it; a request path that already starts with that path (the
  api-server's root path) is not given it twice.
- Not set: links are path-absolute (`/nx1/api/v1/...` or `/pluginsv2/nx1/api/v1/...`, the
  mount the request came through), which every HTTP client resolves against the URL it asked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from urllib.parse import urlsplit

#: The environment variable that overrides `[api] base_url` (Airflow's rule).
_ENV = "AIRFLOW__API__BASE_URL"
#: (the variable's value, the resolved base URL) of the last lookup.
_cached: tuple[str | None, str] | None = None


def base_url() -> str:
    """Airflow's `[api] base_url` without its trailing slash ("" when not set).

    Asked of Airflow's configuration on first use, and again whenever
    `AIRFLOW__API__BASE_URL` changes; Airflow's own configuration object reads airflow.cfg
    once per process, so nothing else can change the answer. (A lookup costs tens of
    microseconds; a paged request builds a link every time.)
    """
    global _cached
    env = os.environ.get(_ENV)
    cached = _cached
    if cached is not None and cached[0] == env:
        return cached[1]
    from airflow.configuration import conf

    value = str(conf.get("api", "base_url", fallback="") or "").strip().rstrip("/")
    _cached = (env, value)
    return value


def url_root(path: str) -> Callable[[], str]:
    """The links' root for a request to `path` (the full path, with any mount), read on use."""

    def root() -> str:
        base = base_url()
        prefix = urlsplit(base).path
        if prefix and (path == prefix or path.startswith(prefix + "/")):
            return base[: -len(prefix)]
        return base

    return root
