"""Small domain exceptions. Adapters map them to HTTP or exit codes in one place each."""

from __future__ import annotations


class Nx1Error(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(Nx1Error):
    """A `[nx1_connect]` option has a value that cannot be used."""


class StoreUnavailable(Nx1Error):
    """The snapshot store cannot be reached (connect failed or timed out)."""


class StoreNotMigrated(Nx1Error):
    """The snapshot store is not at this package's schema revision (run `db migrate`)."""


class NotFound(Nx1Error):
    """A named thing (data API, snapshot, key) does not exist."""


class DataApiNotFound(NotFound):
    """No data API has that name."""


class SnapshotNotFound(NotFound):
    """No retained published snapshot has that id, or none is published yet."""


class SnapshotGone(Nx1Error):
    """A snapshot that existed is no longer retained, or a change feed cannot span two
    snapshots (their columns differ); the app must resync from `latest` (public: 410)."""


class KeyNotFound(NotFound):
    """No data API key has that id."""


class ValidationError(Nx1Error):
    """Input from a user (request parameter, CLI option, form field) is not valid."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class RuleError(Nx1Error):
    """A rule cannot run as written (bad SQL for its kind, bad columns, name clash)."""


class ChecksFailed(RuleError):
    """A rule's publish checks failed on its staged snapshot; nothing was published."""


class LatestMoved(Nx1Error):
    """Another run moved the data API's latest snapshot while an append or merge run built
    on it (only writers that skip the build lock, e.g. an older version, can cause it);
    rerunning builds on the new latest."""


class AuthError(Nx1Error):
    """A data API key is missing, malformed, unknown, expired or revoked (public: 401).

    `reason` is for internal logs and tests only; it never contains the key.
    """

    def __init__(self, reason: str, *, missing: bool = False) -> None:
        super().__init__("A valid data API key is required.")
        self.reason = reason
        self.missing = missing


class Forbidden(Nx1Error):
    """A valid key was presented for another data API (public: 403)."""


class RateLimited(Nx1Error):
    """A data API key is over its requests per minute (public: 429 with `Retry-After`)."""

    def __init__(self, *, limit: int, window: int, retry_after: int) -> None:
        super().__init__(
            f"This key may make {limit} requests per {window} seconds and has made them; "
            f"retry after {retry_after} seconds, or ask the data API's owner for a higher "
            "rate limit."
        )
        self.limit = limit
        self.window = window
        self.retry_after = retry_after


class RateLimitUnavailable(Nx1Error):
    """The rate limit storage (`[nx1_connect] rate_limit_storage`) cannot be reached."""


class MissingScope(Forbidden):
    """A valid key of this data API lacks the scope the request needs, e.g. `run` (403)."""


class RunRefused(Nx1Error):
    """A run cannot be started: the rule's DAG is paused, missing or broken (public: 409)."""


class RunsUnavailable(Nx1Error):
    """Airflow (its metadata database) cannot be asked about runs or rule tasks right now
    (public: 503)."""


class Conflict(Nx1Error):
    """The request clashes with what exists (a data API name taken, a revoked key rotated)."""


class AdminAuthError(Nx1Error):
    """No valid Airflow API token on an admin REST API request (public: 401)."""


class AdminForbidden(Nx1Error):
    """The Airflow user lacks the NX1 Connect permission for this action (public: 403)."""
