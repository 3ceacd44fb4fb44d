"""Small domain exceptions, each carrying how it is answered over HTTP.

Every class says its `status`, `slug` (the problem type) and `title`; `detail()` is what a
client is told (the message, unless it is for the server's log only) and `headers()` any
header the answer needs. `core.serving.http.problem_for` turns any of them into one
problem+json response; the CLI prints the message with exit code 1. A status of 500 means
"not expected over HTTP": the client gets a generic answer and the log the traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

#: Seconds a client is asked to wait before retrying a 503.
RETRY_AFTER_S = "5"


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message` of any exception (a driver's own error for a
    SQLAlchemy one), for a log line."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class Nx1Error(Exception):
    """Base class of every error this package raises on purpose."""

    status = 500
    slug = "internal-error"
    title = "Internal error"
    #: What a client is told instead of the message, when the message is for the log only.
    public: str | None = None
    #: When set, answering this error over HTTP logs its message at this level.
    log_level: int | None = None

    def detail(self) -> str:
        """The problem's `detail`: what the client is told."""
        return self.public if self.public is not None else str(self)

    def headers(self) -> list[tuple[str, str]]:
        """Headers the HTTP answer carries (`Retry-After`, `WWW-Authenticate`, ...)."""
        return []

    def log_text(self) -> str:
        """The line logged (at `log_level`) when this error is answered over HTTP."""
        return one_line(self)


class Problem(Nx1Error):
    """An HTTP problem of the serving layer itself (414, 431, 405, ...), with its parts."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self._headers = list(headers)

    def headers(self) -> list[tuple[str, str]]:
        return self._headers


class _Unavailable(Nx1Error):
    """Something the server depends on failed: 503 with Retry-After, the cause logged."""

    status = 503
    log_level = logging.WARNING

    def headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", RETRY_AFTER_S)]


class _StoreDown(_Unavailable):
    slug = "store-unavailable"
    title = "Snapshot store unavailable"
    public = "The snapshot store cannot be reached right now; try again in a few seconds."


class StoreUnavailable(_StoreDown):
    """The snapshot store cannot be reached (connect failed or timed out)."""


class ConfigError(_StoreDown):
    """A `[nx1_connect]` option has a value that cannot be used (over HTTP: the store is
    unavailable; the log says which option)."""


class StoreNotMigrated(_StoreDown):
    """The snapshot store is not at this package's schema revision (run `db migrate`)."""


class NotFound(Nx1Error):
    """A named thing (data API, snapshot, key) does not exist."""

    status = 404
    slug = "not-found"
    title = "Not found"


class DataApiNotFound(NotFound):
    """No data API has that name."""


class SnapshotNotFound(NotFound):
    """No retained published snapshot has that id, or none is published yet."""


class SnapshotGone(Nx1Error):
    """A snapshot that existed is no longer retained, or a change feed cannot span two
    snapshots (their columns differ); the app must resync from `latest` (public: 410)."""

    status = 410
    slug = "snapshot-gone"
    title = "Snapshot no longer available"


class KeyNotFound(NotFound):
    """No data API key has that id."""


class ValidationError(Nx1Error):
    """Input from a user (request parameter, CLI option, form field) is not valid."""

    status = 400
    slug = "invalid-parameter"
    title = "Invalid request"

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

    status = 401

    def __init__(self, reason: str, *, missing: bool = False) -> None:
        super().__init__("A valid data API key is required.")
        self.reason = reason
        self.missing = missing
        if missing:
            self.slug, self.title = "missing-key", "Data API key required"
            self.public = (
                "Send the data API key in an 'Authorization: Bearer <key>' or "
                "'X-API-Key: <key>' header."
            )
        else:
            self.slug, self.title = "invalid-key", "Invalid data API key"
            self.public = (
                "The data API key is unknown, malformed, expired or revoked. Ask the data "
                "API's owner for a valid key."
            )
            self.log_level = logging.INFO

    def headers(self) -> list[tuple[str, str]]:
        challenge = "Bearer" if self.missing else 'Bearer error="invalid_token"'
        return [("WWW-Authenticate", challenge)]

    def log_text(self) -> str:
        return f"Data API key refused: {self.reason}"


class Forbidden(Nx1Error):
    """A valid key was presented for another data API (public: 403)."""

    status = 403
    slug = "forbidden"
    title = "Key not valid for this data API"
    public: str | None = (
        "This key belongs to another data API; each key reads exactly one data API."
    )


class MissingScope(Forbidden):
    """A valid key of this data API lacks the scope the request needs, e.g. `run` (403)."""

    slug = "missing-scope"
    title = "Key lacks the scope this request needs"
    public = None


class RateLimited(Nx1Error):
    """A data API key is over its requests per minute (public: 429 with `Retry-After`)."""

    status = 429
    slug = "rate-limited"
    title = "Too many requests"
    #: The name of the rate limit policy in the `RateLimit-Policy` / `RateLimit` fields.
    POLICY = "per-key"

    def __init__(self, *, limit: int, window: int, retry_after: int) -> None:
        super().__init__(
            f"This key may make {limit} requests per {window} seconds and has made them; "
            f"retry after {retry_after} seconds, or ask the data API's owner for a higher "
            "rate limit."
        )
        self.limit = limit
        self.window = window
        self.retry_after = retry_after

    def headers(self) -> list[tuple[str, str]]:
        """`Retry-After` and the IETF draft `RateLimit-Policy` / `RateLimit` fields."""
        return [
            ("Retry-After", str(self.retry_after)),
            ("RateLimit-Policy", f'"{self.POLICY}";q={self.limit};w={self.window}'),
            ("RateLimit", f'"{self.POLICY}";r=0;t={self.retry_after}'),
        ]


class RateLimitUnavailable(_Unavailable):
    """The rate limit storage (`[nx1_connect] rate_limit_storage`) cannot be reached."""

    slug = "rate-limit-unavailable"
    title = "Rate limit storage unavailable"
    public = (
        "The rate limit counters ([nx1_connect] rate_limit_storage) cannot be reached "
        "right now; try again in a few seconds."
    )

    def log_text(self) -> str:
        return f"Rate limit storage unavailable: {self}"


class RunRefused(Nx1Error):
    """A run cannot be started: the rule's DAG is paused, missing or broken (public: 409)."""

    status = 409
    slug = "run-refused"
    title = "The rule cannot run now"


class RunsUnavailable(_Unavailable):
    """Airflow (its metadata database) cannot be asked about runs or rule tasks right now
    (public: 503)."""

    slug = "runs-unavailable"
    title = "Airflow unavailable"
    public = "Airflow's metadata database cannot be reached right now; try again in a few seconds."


class Conflict(Nx1Error):
    """The request clashes with what exists (a data API name taken, a revoked key rotated)."""

    status = 409
    slug = "conflict"
    title = "Conflict"


class AdminAuthError(Nx1Error):
    """No valid Airflow API token on an admin REST API request (public: 401)."""

    status = 401
    slug = "missing-token"
    title = "Airflow API token required"

    def detail(self) -> str:
        return (
            f"{self} Get a token with POST /auth/token and send it in an "
            "'Authorization: Bearer <token>' header; data API keys are not accepted here."
        )

    def headers(self) -> list[tuple[str, str]]:
        return [("WWW-Authenticate", "Bearer")]


class AdminForbidden(Nx1Error):
    """The Airflow user lacks the NX1 Connect permission for this action (public: 403)."""

    status = 403
    slug = "forbidden"
    title = "Permission denied"
