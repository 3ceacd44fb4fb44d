"""The admin REST API (control plane) on the FastAPI mount: `/nx1/api/v1/admin/...`.

Authentication is Airflow's own API token, `Authorization: Bearer <JWT>` from Airflow's
`POST /auth/token`, checked by the api-server's own `resolve_user_from_token`. The token is
read from that header only, never from Airflow's cookie, so a page on another origin cannot
act for a logged-in browser; data API keys are refused (401). Authorization asks the auth
manager (`is_authorized_custom_view`) about the two resources the admin view uses
(`web.roles.RESOURCES`): GET on the data API's kind to read, PUT to change; a key with the
`run` scope is made or rotated only by a user it lets trigger the rule's DAG
(`web.roles.may_trigger_dag`). A data API is bound only to a real rule task
(`rule_tasks.find_rule_task`, see `core.control`). Every change
goes through `core.control`, so it is audited with the Airflow user and the client address.
Errors are problem+json through `core.serving.http.problem_for`.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from fastapi.responses import Response as FastAPIResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from airflow_nx1_connect.core import audit, control, engines, keys, snapshots
from airflow_nx1_connect.core.errors import (
    AdminAuthError,
    AdminForbidden,
    DataApiNotFound,
    KeyNotFound,
    Nx1Error,
    Problem,
    one_line,
)
from airflow_nx1_connect.core.serving import http
from airflow_nx1_connect.rule_tasks import find_rule_task
from airflow_nx1_connect.web import admin_models as am
from airflow_nx1_connect.web import models, roles

log = logging.getLogger(__name__)

PREFIX = "/admin"
SCHEME = "airflowToken"

_token = HTTPBearer(
    auto_error=False,
    scheme_name=SCHEME,
    description="Airflow's API token (a JWT from Airflow's POST /auth/token); not a data API key.",
)


class Caller:
    """The authenticated Airflow user and what they may read and change."""

    def __init__(self, user: Any, remote_addr: str | None) -> None:
        self.user = user
        self.name = str(user.get_name())
        self.actor = control.Actor(
            self.name, remote_addr, lambda dag_id: roles.may_trigger_dag(user, dag_id)
        )
        self.readable = roles.kinds_allowed(user, roles.ACTION_READ)
        self.editable = roles.kinds_allowed(user, roles.ACTION_EDIT) & self.readable
        if not self.readable:
            raise AdminForbidden(
                f"User {self.name!r} may not use NX1 Connect: it needs the nx1_ask or "
                "nx1_engineer role (or Admin); ask an Airflow administrator."
            )

    def check(self, kind: str, *, edit: bool, what: str) -> None:
        """AdminForbidden unless the user may read (or, with `edit`, change) that kind."""
        if kind not in (self.editable if edit else self.readable):
            verb = "manage" if edit else "see"
            raise AdminForbidden(
                f"User {self.name!r} may not {verb} {what}: it is an {kind} data API, which "
                f"needs the nx1_{kind} role (or Admin)."
            )


async def _caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_token)],
) -> Caller:
    if credentials is None:
        raise AdminAuthError("No Airflow API token was sent.")
    token = credentials.credentials
    if keys.looks_like_key(token):
        raise AdminAuthError("A data API key was sent; the admin API takes an Airflow token.")
    from airflow.api_fastapi.core_api.security import resolve_user_from_token
    from fastapi import HTTPException

    try:
        user = await resolve_user_from_token(token)
    except HTTPException:
        raise AdminAuthError("The Airflow API token is invalid or has expired.") from None
    except Exception as exc:  # e.g. no auth manager: this app runs outside the api-server
        log.warning("Could not check an Airflow API token: %s", one_line(exc))
        raise AdminAuthError("The Airflow API token cannot be checked by this server.") from None
    client = request.client.host if request.client else None
    return Caller(user, client)


CallerDep = Annotated[Caller, Depends(_caller)]


def _engine() -> Any:
    return engines.get_engine()


def _json(content: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(content, status, headers={"Cache-Control": "no-store"})


def _data_api(caller: Caller, name: str, *, edit: bool) -> snapshots.DataApi:
    api = snapshots.get_data_api(_engine(), name)
    caller.check(api.kind, edit=edit, what=f"data API {name!r}")
    return api


def _key(caller: Caller, key_id: str, *, edit: bool) -> keys.ApiKey:
    engine = _engine()
    key = keys.get_key(engine, key_id)
    try:
        api = snapshots.get_data_api(engine, key.data_api)
    except DataApiNotFound:  # deleted meanwhile with its keys
        raise KeyNotFound(f"No data API key has id {key_id!r}.") from None
    caller.check(api.kind, edit=edit, what=f"key {key_id}")
    return key


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "model": models.Problem}


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _problem(
        "A body or parameter that is not valid (the detail says which), e.g. a dag_id and "
        "task_id that name no rule task of that kind publishing to that name."
    ),
    401: _problem("No Airflow API token, an invalid or expired one, or a data API key."),
    403: _problem(
        "The user lacks the NX1 Connect permission for this data API's kind, or (a key with "
        "the run scope) Airflow's permission to trigger the rule's DAG."
    ),
    404: _problem("No such data API or key."),
    503: _problem("The snapshot store, or Airflow's metadata database, cannot be reached."),
}
_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: _problem("The name is taken, or the key is revoked.")
}


router = APIRouter(prefix=PREFIX, tags=["admin"], responses=_ERRORS)


# -- data APIs --------------------------------------------------------------------------


@router.get(
    "/data-apis",
    operation_id="adminListDataApis",
    summary="Data APIs the user may see",
    response_model=None,
    responses={200: {"model": list[am.AdminDataApi], "description": "Data APIs, by name."}},
)
def list_data_apis(caller: CallerDep) -> JSONResponse:
    """Data APIs of the kinds the user may see, as `nx1-connect apis list --json`."""
    engine = _engine()
    found = snapshots.list_data_apis(engine, kinds=sorted(caller.readable))
    return _json([control.data_api_dict(engine, api) for api in found])


@router.get(
    "/data-apis/{name}",
    operation_id="adminGetDataApi",
    summary="One data API",
    response_model=None,
    responses={200: {"model": am.AdminDataApi, "description": "The data API."}},
)
def get_data_api(name: str, caller: CallerDep) -> JSONResponse:
    """One data API, as in `apis list --json`."""
    return _json(control.data_api_dict(_engine(), _data_api(caller, name, edit=False)))


@router.post(
    "/data-apis",
    operation_id="adminCreateDataApi",
    summary="Create a data API ahead of its rule's first run, with a first key",
    status_code=201,
    response_model=None,
    responses={
        201: {"model": am.CreatedDataApi, "description": "The data API and its first key."},
        **_CONFLICT,
    },
)
def create_data_api(body: am.CreateDataApiBody, caller: CallerDep) -> JSONResponse:
    """Register the data API bound to the rule's DAG and task; its first key is shown once."""
    caller.check(body.kind, edit=True, what=f"data API {body.name!r}")
    engine = _engine()
    api, created = control.create_data_api(
        engine,
        name=body.name,
        kind=body.kind,
        dag_id=body.dag_id,
        task_id=body.task_id,
        description=body.description,
        key_days=body.key_days,
        rules=find_rule_task,
        actor=caller.actor,
    )
    key = {**control.key_dict(engine, created.key), "key": created.secret}
    return _json({**control.data_api_dict(engine, api), "key": key}, 201)


@router.delete(
    "/data-apis/{name}",
    operation_id="adminDeleteDataApi",
    summary="Delete a data API with its keys and snapshots",
    status_code=204,
    response_class=FastAPIResponse,
    responses={204: {"description": "Deleted."}},
)
def delete_data_api(name: str, caller: CallerDep) -> FastAPIResponse:
    """Delete the data API, its keys (refused at once) and its snapshots."""
    api = _data_api(caller, name, edit=True)
    control.delete_data_api(_engine(), api.name, actor=caller.actor)
    return FastAPIResponse(status_code=204)


# -- keys -------------------------------------------------------------------------------


@router.get(
    "/keys",
    operation_id="adminListKeys",
    summary="Keys, newest first",
    response_model=None,
    responses={200: {"model": list[am.AdminKey], "description": "Keys, newest first."}},
)
def list_keys(
    caller: CallerDep,
    data_api: Annotated[str | None, Query(description="Only this data API's keys.")] = None,
) -> JSONResponse:
    """Keys of the data APIs the user may see, as `keys list --json` plus `usage`."""
    engine = _engine()
    if data_api is not None:
        _data_api(caller, data_api, edit=False)
    found = keys.list_keys(engine, data_api=data_api, kinds=sorted(caller.readable))
    return _json(control.key_dicts(engine, found))


@router.get(
    "/keys/{key_id}",
    operation_id="adminGetKey",
    summary="One key",
    response_model=None,
    responses={200: {"model": am.AdminKey, "description": "The key (never its secret)."}},
)
def get_key(key_id: str, caller: CallerDep) -> JSONResponse:
    """One key with its usage."""
    return _json(control.key_dict(_engine(), _key(caller, key_id, edit=False)))


@router.post(
    "/keys",
    operation_id="adminCreateKey",
    summary="Create a key",
    status_code=201,
    response_model=None,
    responses={201: {"model": am.CreatedKey, "description": "The key; `key` is shown once."}},
)
def create_key(body: am.CreateKeyBody, caller: CallerDep) -> JSONResponse:
    """Create a key for one data API; the secret is in `key`, this once."""
    _data_api(caller, body.data_api, edit=True)
    engine = _engine()
    created = control.create_key(
        engine,
        data_api=body.data_api,
        days=body.days,
        description=body.description,
        scopes=body.scopes,
        rate_limit=body.rate_limit,
        row_filter=body.row_filter,
        columns=body.columns,
        actor=caller.actor,
    )
    return _json({**control.key_dict(engine, created.key), "key": created.secret}, 201)


@router.post(
    "/keys/{key_id}/extend",
    operation_id="adminExtendKey",
    summary="Move a key's expiry later",
    response_model=None,
    responses={200: {"model": am.AdminKey, "description": "The key."}},
)
def extend_key(key_id: str, body: am.ExtendKeyBody, caller: CallerDep) -> JSONResponse:
    """Move the key's expiry `days` later (from now if it already expired)."""
    key = _key(caller, key_id, edit=True)
    engine = _engine()
    updated = control.extend_key(engine, key.id, days=body.days, actor=caller.actor)
    return _json(control.key_dict(engine, updated))


@router.post(
    "/keys/{key_id}/revoke",
    operation_id="adminRevokeKey",
    summary="Revoke a key now",
    response_model=None,
    responses={200: {"model": am.AdminKey, "description": "The key, revoked."}},
)
def revoke_key(key_id: str, caller: CallerDep) -> JSONResponse:
    """Revoke the key: every server refuses it at once."""
    key = _key(caller, key_id, edit=True)
    engine = _engine()
    return _json(control.key_dict(engine, control.revoke_key(engine, key.id, actor=caller.actor)))


@router.post(
    "/keys/{key_id}/rotate",
    operation_id="adminRotateKey",
    summary="Replace a key; the old one works for the overlap",
    status_code=201,
    response_model=None,
    responses={201: {"model": am.CreatedKey, "description": "The new key; `key` shown once."}},
)
def rotate_key(
    key_id: str,
    caller: CallerDep,
    body: Annotated[am.RotateKeyBody | None, Body()] = None,
) -> JSONResponse:
    """A new key with the same data API, description, scopes, rate limit, row filter and
    column allowlist; the old one expires after `overlap_hours` (default 24)."""
    key = _key(caller, key_id, edit=True)
    engine = _engine()
    created, _old = control.rotate_key(
        engine,
        key.id,
        overlap_hours=body.overlap_hours if body is not None else None,
        actor=caller.actor,
    )
    return _json({**control.key_dict(engine, created.key), "key": created.secret}, 201)


@router.delete(
    "/keys/{key_id}",
    operation_id="adminDeleteKey",
    summary="Delete a key",
    status_code=204,
    response_class=FastAPIResponse,
    responses={204: {"description": "Deleted."}},
)
def delete_key(key_id: str, caller: CallerDep) -> FastAPIResponse:
    """Delete the key's record; it stops working at once."""
    key = _key(caller, key_id, edit=True)
    control.delete_key(_engine(), key.id, actor=caller.actor)
    return FastAPIResponse(status_code=204)


# -- audit ------------------------------------------------------------------------------


@router.get(
    "/audit",
    operation_id="adminListAudit",
    summary="Audit events, newest first",
    response_model=None,
    responses={200: {"model": list[am.AuditEvent], "description": "Events, newest first."}},
)
def list_audit(
    caller: CallerDep,
    data_api: Annotated[str | None, Query(description="Only this data API's events.")] = None,
    key_id: Annotated[str | None, Query(description="Only this key's events.")] = None,
    limit: Annotated[
        int | None, Query(ge=1, le=audit.MAX_LIMIT, description="At most this many (100).")
    ] = None,
) -> JSONResponse:
    """Admin actions, newest first. A user who may see one kind sees the events of the data
    APIs of that kind that exist now (never those of a deleted data API, even when another
    has its name now); Admin (both kinds) sees all, deleted data APIs included."""
    engine = _engine()
    admin = caller.readable == set(roles.RESOURCES)
    if data_api is not None:
        try:
            _data_api(caller, data_api, edit=False)
        except DataApiNotFound:
            if not admin:
                raise
    events = audit.list_events(
        engine,
        data_api=data_api,
        key_id=key_id,
        kinds=None if admin else caller.readable,
        limit=limit,
    )
    return _json([e.to_dict() for e in events])


# -- wiring -----------------------------------------------------------------------------


def _problem_response(exc: BaseException) -> FastAPIResponse:
    response = http.problem_for(exc)
    assert isinstance(response.body, bytes)
    headers = dict(response.headers)
    media_type = headers.pop("Content-Type", None)
    return FastAPIResponse(
        response.body, status_code=response.status, headers=headers, media_type=media_type
    )


_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _method_not_allowed(allowed: list[str]) -> Any:
    def refuse(request: Request) -> FastAPIResponse:
        raise Problem(
            405,
            "method-not-allowed",
            "Method not allowed",
            f"{request.method} is not allowed here; use {' or '.join(allowed)}.",
            [("Allow", ", ".join(allowed))],
        )

    return refuse


def include_with_405(app: FastAPI, routes: APIRouter, api_prefix: str) -> None:
    """Add `routes` under `api_prefix`, and on each of their paths answer every other method
    with 405 and that path's own `Allow` header."""
    app.include_router(routes, prefix=api_prefix)
    allowed: dict[str, list[str]] = {}
    for route in routes.routes:
        path: Any = getattr(route, "path", "")
        allowed.setdefault(api_prefix + path, []).extend(getattr(route, "methods", ()) or ())
    for path, methods in allowed.items():
        others = [m for m in _METHODS if m not in methods]
        app.add_api_route(
            path, _method_not_allowed(sorted(methods)), methods=others, include_in_schema=False
        )


def install(app: FastAPI, api_prefix: str) -> None:
    """Add the admin routes under `{api_prefix}/admin` and map core errors to problem+json.

    Other methods on an admin path get 405 with that path's own `Allow` header.
    """
    include_with_405(app, router, api_prefix)

    @app.exception_handler(Nx1Error)
    async def _nx1_error(request: Request, exc: Nx1Error) -> FastAPIResponse:
        return _problem_response(exc)

    @app.exception_handler(sa.exc.SQLAlchemyError)
    async def _store_error(request: Request, exc: sa.exc.SQLAlchemyError) -> FastAPIResponse:
        return _problem_response(exc)
