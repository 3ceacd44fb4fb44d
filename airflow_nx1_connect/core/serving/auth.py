"""Who is asking: the data API key, from a header only, checked against the store.

A key in the query string (a key-like parameter name, or a value that looks like a key)
is refused with 400 before anything else, without echoing or logging it. The key itself
is verified by `core.keys.verify_key` (401 / 403).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sqlalchemy as sa

from airflow_nx1_connect.core.errors import Problem
from airflow_nx1_connect.core.keys import KEY_CHARS, KEY_PREFIX, ApiKey, verify_key
from airflow_nx1_connect.core.serving.http import Request

#: Query parameter names (lower case, without `-` and `_`) that mean "a key is here".
KEY_PARAM_NAMES = frozenset(
    {
        "key",
        "apikey",
        "xapikey",
        "token",
        "accesstoken",
        "apitoken",
        "authtoken",
        "bearer",
        "auth",
        "authorization",
        "secret",
        "apisecret",
        "password",
    }
)
#: A whole key somewhere inside a parameter (e.g. after a comma in `columns`).
EMBEDDED_KEY = re.compile(rf"{KEY_PREFIX}{KEY_CHARS}{{32,}}")


def refuse_key_in_query(query: Sequence[tuple[str, str]]) -> None:
    for param, value in query:
        normalized = param.lower().replace("-", "").replace("_", "")
        if (
            normalized in KEY_PARAM_NAMES
            or param.startswith(KEY_PREFIX)
            or value.startswith(KEY_PREFIX)
            or EMBEDDED_KEY.search(value)
            or EMBEDDED_KEY.search(param)
        ):
            raise Problem(
                400,
                "key-in-query",
                "Key in the query string",
                "Never put a data API key in the URL: send it in an "
                "'Authorization: Bearer <key>' or 'X-API-Key: <key>' header, and revoke a "
                "key that was put in a URL.",
            )


def extract_key(request: Request) -> str | None:
    """The key from `Authorization: Bearer` or `X-API-Key`, or None when neither is given."""
    bearer: str | None = None
    authorization = request.header("authorization")
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            bearer = token.strip() or None
    header_key = (request.header("x-api-key") or "").strip() or None
    if bearer and header_key and bearer != header_key:
        raise Problem(
            400,
            "two-keys",
            "Two different keys",
            "Send one data API key, in either 'Authorization: Bearer' or 'X-API-Key'.",
        )
    return bearer or header_key


def authenticate(engine: sa.Engine, request: Request, name: str) -> ApiKey:
    """The request's key, verified for data API `name` (see `core.keys.verify_key`)."""
    return verify_key(engine, extract_key(request), name)
