"""The data REST API as a FastAPI app (the plugin mounts it at `/nx1`).

A thin adapter over `core.serving`, like the Flask blueprint (`web.blueprint`): the same
requests get the same statuses, headers and bodies. Routes live under `/api/v1`, so
behind Airflow's api-server they answer at `/nx1/api/v1/...`, with the OpenAPI document
at `/nx1/api/v1/openapi.json` and interactive docs at `/nx1/api/v1/docs`.

Query parameters are read raw and validated by `core.serving` (not by FastAPI), so a bad
`start` is the same 400 problem+json on both adapters; they are described in the OpenAPI
document through `openapi_extra`. FastAPI's and Starlette's own errors (unknown path, wrong
method, validation) are turned into problem+json by the exception handlers below.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response as FastAPIResponse
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from airflow_nx1_connect.core.serving import router
from airflow_nx1_connect.core.settings import get_settings
from airflow_nx1_connect.web import admin_api, links, webhooks_admin
from airflow_nx1_connect.web import openapi_doc as doc
from airflow_nx1_connect.web.runs import launcher

API_PREFIX = "/api/v1"
OPENAPI_URL = f"{API_PREFIX}/openapi.json"


def _request(request: Request) -> router.Request:
    url = request.url
    return router.Request(
        method=request.method,
        url_root=links.url_root(url.path),
        path=url.path,
        query=list(request.query_params.multi_items()),
        headers=dict(request.headers.items()),
    )


def _send(response: router.Response) -> FastAPIResponse:
    headers = dict(response.headers)
    media_type = headers.pop("Content-Type", None)
    if response.streaming:
        assert not isinstance(response.body, bytes | bytearray)
        return StreamingResponse(
            response.body, status_code=response.status, headers=headers, media_type=media_type
        )
    assert isinstance(response.body, bytes | bytearray)
    return FastAPIResponse(
        bytes(response.body), status_code=response.status, headers=headers, media_type=media_type
    )


def _add_run_route(app: FastAPI, endpoint: str, view: Any) -> None:
    method, operation_id, summary = doc.RUN_ROUTES[endpoint]
    path = API_PREFIX + router.ROUTES[endpoint]
    app.add_api_route(
        path,
        view,
        methods=[method],
        operation_id=operation_id,
        summary=summary,
        response_class=FastAPIResponse,
        responses=doc.run_responses(endpoint),
        openapi_extra={"parameters": [doc.PREFER]},
    )
    # Every other method reaches core.serving too, which answers 405 (or a CORS preflight)
    # exactly as the Flask blueprint does, with this route's Allow.
    others = [
        m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS") if m != method
    ]
    if endpoint == "run":
        others.remove("HEAD")
        app.add_api_route(path, view, methods=["HEAD"], include_in_schema=False)
    app.add_api_route(path, view, methods=others, include_in_schema=False)


def _view(endpoint: str) -> Any:
    """The FastAPI view of one data API route: hands the request to `core.serving`."""
    if "{snapshot_id}" in router.ROUTES[endpoint]:

        def snapshot_view(request: Request, name: str, snapshot_id: str) -> FastAPIResponse:
            return _send(
                router.handle(endpoint, _request(request), name=name, snapshot_id=snapshot_id)
            )

        return snapshot_view
    if endpoint in doc.RUN_ROUTES:
        # Async: a `Prefer: wait` is awaited on the event loop (router.complete_async),
        # never in a worker thread that Airflow's own routes need too.
        async def answer(request: Request, **params: Any) -> FastAPIResponse:
            response = await run_in_threadpool(
                router.handle, endpoint, _request(request), launcher=launcher, **params
            )
            return _send(await router.complete_async(response))

        if "{run_id}" in router.ROUTES[endpoint]:

            async def run_view(request: Request, name: str, run_id: str) -> FastAPIResponse:
                return await answer(request, name=name, run_id=run_id)

            return run_view

        async def runs_view(request: Request, name: str) -> FastAPIResponse:
            return await answer(request, name=name)

        return runs_view

    def view(request: Request, name: str) -> FastAPIResponse:
        return _send(router.handle(endpoint, _request(request), name=name, launcher=launcher))

    return view


def _add_data_routes(app: FastAPI) -> None:
    """Every data API route of `router.ROUTES`, with its OpenAPI description."""
    summaries = {
        "data_api": ("getDataApi", "The data API: kind, description, latest snapshot, columns"),
        "latest": ("getLatestRows", "Rows of the latest published snapshot"),
        "snapshots": ("listSnapshots", "Retained published snapshots, newest first"),
        "snapshot": ("getSnapshotRows", "Rows of one retained snapshot (never changes)"),
        "changes": ("getChanges", "Rows inserted, updated and deleted between two snapshots"),
        "openapi": (
            "getDataApiOpenapi",
            "The OpenAPI 3.1 document of this data API alone, rows typed per column",
        ),
    }
    for endpoint, path in router.ROUTES.items():
        if endpoint in doc.RUN_ROUTES:
            _add_run_route(app, endpoint, _view(endpoint))
            continue
        operation_id, summary = summaries[endpoint]
        rows = endpoint in ("latest", "snapshot")
        view = _view(endpoint)
        app.add_api_route(
            API_PREFIX + path,
            view,
            methods=["GET"],
            operation_id=operation_id,
            summary=summary,
            description=doc.FILTERS_DESCRIPTION if rows else None,
            response_class=FastAPIResponse,
            responses=doc.changes_responses()
            if endpoint == "changes"
            else doc.rows_responses()
            if rows
            else doc.json_ok(doc.JSON_MODELS[endpoint], summary),
            openapi_extra={
                "parameters": doc.changes_parameters()
                if endpoint == "changes"
                else doc.rows_parameters()
                if rows
                else [doc.IF_NONE_MATCH]
            },
        )
        app.add_api_route(API_PREFIX + path, view, methods=["HEAD"], include_in_schema=False)
        # CORS preflights are answered (or refused) by core.serving, like on the blueprint.
        app.add_api_route(API_PREFIX + path, view, methods=["OPTIONS"], include_in_schema=False)


# ---------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------


def create_app() -> FastAPI:
    """A new FastAPI app serving the data REST API under /api/v1."""
    app = FastAPI(
        title="NX1 Connect data API",
        version="1",
        description=(
            "Read-only data APIs published by Airflow rules. Send the data API key in "
            "`Authorization: Bearer <key>` or `X-API-Key: <key>`, never in the URL. Errors "
            "are application/problem+json."
        ),
        openapi_url=OPENAPI_URL,
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        redirect_slashes=False,
    )

    _add_data_routes(app)

    # The control plane (admin REST API, Airflow token): /api/v1/admin/...
    admin_api.install(app, API_PREFIX)
    webhooks_admin.install(app, API_PREFIX)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> FastAPIResponse:
        detail = exc.detail if isinstance(exc.detail, str) else None
        return _send(router.http_error(_request(request), exc.status_code, detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> FastAPIResponse:
        return _send(router.bad_request("The request's parameters are not valid."))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> FastAPIResponse:
        return _send(router.error_response(exc))

    built_for: list[Any] = [None]

    def openapi() -> dict[str, Any]:
        settings = get_settings()
        if app.openapi_schema is None or built_for[0] != settings:
            app.openapi_schema = doc.document(app, settings, API_PREFIX)
            built_for[0] = settings
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


app = create_app()
