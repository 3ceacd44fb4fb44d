"""The data REST API as a Flask blueprint (Airflow serves it under `/pluginsv2`).

A thin adapter: every route hands the request to `core.serving` and sends back what it
returns, so this and the FastAPI app (`web.api`) answer alike. Every path under the
prefix is routed here (a catch-all included), and every method, so that unknown paths and
methods get the same problem+json answers as the FastAPI app instead of Flask's HTML.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request
from flask import Response as FlaskResponse
from werkzeug.exceptions import HTTPException

from airflow_nx1_connect.core.serving import router
from airflow_nx1_connect.web import links
from airflow_nx1_connect.web.runs import launcher

URL_PREFIX = "/nx1/api/v1"
#: Every method is routed here so that `serving` answers 405 the same way for both adapters.
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

bp = Blueprint("nx1_data_api", __name__, url_prefix=URL_PREFIX)


@bp.record_once
def _exempt_from_csrf(state: Any) -> None:
    """Keys travel in headers, never cookies: no CSRF token on POST .../runs (the FAB app
    that Airflow mounts at /pluginsv2 protects every POST with Flask-WTF otherwise)."""
    csrf = state.app.extensions.get("csrf")
    if csrf is not None:
        csrf.exempt(bp)


def _request() -> router.Request:
    path = request.script_root + request.path
    return router.Request(
        method=request.method,
        url_root=links.url_root(path),
        path=path,
        query=list(request.args.items(multi=True)),
        headers=dict(request.headers.items()),
    )


def _send(response: router.Response) -> FlaskResponse:
    return FlaskResponse(
        response.body,
        status=response.status,
        headers=response.headers,
        direct_passthrough=response.streaming,
    )


def _route(endpoint: str, **params: Any) -> FlaskResponse:
    # A `Prefer: wait` on a run waits here only when this blueprint is called without the
    # plugin's root middleware, which hands those requests to the FastAPI app (web.streams).
    response = router.handle(endpoint, _request(), launcher=launcher, **params)
    return _send(router.complete(response))


def _add(rule: str, endpoint: str) -> None:
    def view(**params: Any) -> FlaskResponse:
        return _route(endpoint, **params)

    bp.add_url_rule(
        rule,
        endpoint=endpoint,
        view_func=view,
        methods=_ALL_METHODS,
        provide_automatic_options=False,
    )


for _endpoint, _path in router.ROUTES.items():
    _add(_path.replace("{", "<").replace("}", ">"), _endpoint)


@bp.route("/", defaults={"rest": ""}, methods=_ALL_METHODS, provide_automatic_options=False)
@bp.route("/<path:rest>", methods=_ALL_METHODS, provide_automatic_options=False)
def not_found(rest: str) -> FlaskResponse:
    """Any other path under the prefix: the same problem+json 404 as the FastAPI app."""
    return _send(router.route_not_found(_request()))


@bp.errorhandler(Exception)
def _error(exc: Exception) -> FlaskResponse:
    """Anything raised in a route (e.g. Werkzeug's own 400s) as problem+json, never HTML."""
    if isinstance(exc, HTTPException) and exc.code is not None:
        return _send(router.http_error(_request(), exc.code, exc.description))
    return _send(router.error_response(exc))
