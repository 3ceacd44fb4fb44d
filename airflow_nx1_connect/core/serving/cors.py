"""CORS for the data API paths, per `[nx1_connect] cors_allowed_origins`.

Empty (the default): no CORS headers at all, browsers on other origins are refused.
A comma list of origins (`https://app.example.com`) or `*`: a preflight (`OPTIONS` with
`Origin` and `Access-Control-Request-Method`) from an allowed origin gets 204 with the
allowed methods and headers (`Authorization`, `X-API-Key`, ...), and every answer to an
allowed origin (errors included, so an app can read them) names the origin and exposes
`ETag`, `Link`, `Retry-After`, `X-NX1-Snapshot-Id` and `X-NX1-Published-At`. Keys travel
in headers, never cookies, so credentials are not allowed and `*` is safe.
"""

from __future__ import annotations

from collections.abc import Sequence

from airflow_nx1_connect.core.serving.http import ALLOWED_METHODS, Request, Response

ALLOW_HEADERS = (
    "Authorization",
    "X-API-Key",
    "Accept",
    "If-None-Match",
    "If-Modified-Since",
    "Prefer",
)
EXPOSE_HEADERS = (
    "ETag",
    "Link",
    "Retry-After",
    "X-NX1-Snapshot-Id",
    "X-NX1-Published-At",
    "Location",
    "Preference-Applied",
)
MAX_AGE_S = "600"


def allowed_origin(request: Request, origins: Sequence[str]) -> str | None:
    """The value of Access-Control-Allow-Origin for this request, or None (no CORS)."""
    origin = request.header("origin")
    if not origin or not origins:
        return None
    if "*" in origins:
        return "*"
    return origin if origin in origins else None


def is_preflight(request: Request) -> bool:
    """True for a CORS preflight request."""
    return (
        request.method == "OPTIONS"
        and request.header("origin") is not None
        and request.header("access-control-request-method") is not None
    )


def preflight(
    request: Request, origins: Sequence[str], methods: Sequence[str] = ALLOWED_METHODS
) -> Response | None:
    """The 204 answer to a preflight from an allowed origin (None: not allowed)."""
    origin = allowed_origin(request, origins)
    if origin is None:
        return None
    return Response(
        204,
        [
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Allow-Methods", ", ".join(methods)),
            ("Access-Control-Allow-Headers", ", ".join(ALLOW_HEADERS)),
            ("Access-Control-Max-Age", MAX_AGE_S),
            ("Vary", "Origin"),
        ],
        b"",
    )


def add_cors_headers(request: Request, response: Response, origins: Sequence[str]) -> None:
    """Add the CORS headers of an actual (non-preflight) answer to an allowed origin."""
    if origins and "*" not in origins:
        add_vary(response, "Origin")  # the answer depends on the Origin header
    origin = allowed_origin(request, origins)
    if origin is None:
        return
    response.headers.append(("Access-Control-Allow-Origin", origin))
    response.headers.append(("Access-Control-Expose-Headers", ", ".join(EXPOSE_HEADERS)))


def add_vary(response: Response, name: str) -> None:
    """Add `name` to the response's one Vary header."""
    for i, (key, value) in enumerate(response.headers):
        if key.lower() == "vary":
            response.headers[i] = (key, f"{value}, {name}")
            return
    response.headers.append(("Vary", name))
