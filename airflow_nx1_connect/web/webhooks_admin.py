"""Webhooks on the control plane (`/nx1/api/v1/admin/webhooks...`) and the api-server's
delivery loop.

Same authentication and errors as the rest of the admin API (`web.admin_api`): a user who may
read a data API's kind sees its webhooks and deliveries; one who may change it (manage its
keys) creates, deletes and tests them. Creating, deleting and testing are audited. The secret
is in the answer to the creation only.

`install` also gives the plugin's FastAPI app a lifespan: the api-server enters the lifespans of
the apps it mounts, so every api-server process starts a webhook delivery process of its own
(`core.webhooks.process`, unless `[nx1_connect] webhook_deliver_in_api_server` is False), and
stops it when it shuts down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, FastAPI, Query
from fastapi.responses import JSONResponse
from fastapi.responses import Response as FastAPIResponse
from pydantic import BaseModel, ConfigDict, Field

from airflow_nx1_connect.core import webhooks
from airflow_nx1_connect.core.settings import get_settings
from airflow_nx1_connect.core.snapshots import NAME_RE
from airflow_nx1_connect.web import admin_api
from airflow_nx1_connect.web.admin_api import Caller, CallerDep

log = logging.getLogger(__name__)


class CreateWebhookBody(BaseModel):
    """A webhook to create."""

    model_config = ConfigDict(extra="forbid")

    data_api: str = Field(pattern=NAME_RE.pattern, description="The data API whose events it gets.")
    url: str = Field(
        max_length=webhooks.MAX_URL_LENGTH, description="The receiver: an http(s) URL."
    )
    description: str | None = Field(default=None, max_length=webhooks.MAX_DESCRIPTION_LENGTH)


class AdminWebhook(BaseModel):
    """A webhook (never its secret)."""

    webhook_id: str
    data_api: str
    url: str
    description: str | None
    created_at: str


class CreatedWebhook(AdminWebhook):
    """A new webhook; `secret` (`whsec_...`) is shown this once."""

    secret: str


class Delivery(BaseModel):
    """One event's delivery to one webhook."""

    delivery_id: str
    event_id: str
    type: str
    at: str
    attempts: int
    status: str
    response_status: int | None
    error: str | None
    next_attempt_at: str | None
    last_attempt_at: str | None


router = APIRouter(prefix=admin_api.PREFIX, tags=["admin"], responses=admin_api._ERRORS)


def _webhook(caller: Caller, webhook_id: str, *, edit: bool) -> webhooks.Webhook:
    found = webhooks.get_webhook(admin_api._engine(), webhook_id)
    admin_api._data_api(caller, found.data_api, edit=edit)
    return found


@router.post(
    "/webhooks",
    operation_id="adminCreateWebhook",
    summary="Subscribe a URL to a data API's events",
    status_code=201,
    response_model=None,
    responses={201: {"model": CreatedWebhook, "description": "The webhook; `secret` once."}},
)
def create_webhook(body: CreateWebhookBody, caller: CallerDep) -> JSONResponse:
    """A `snapshot.published` event is pushed to `url` on every publish of the data API."""
    admin_api._data_api(caller, body.data_api, edit=True)
    created = webhooks.create_webhook_audited(
        admin_api._engine(),
        data_api=body.data_api,
        url=body.url,
        description=body.description,
        actor=caller.actor,
        allow_private=get_settings().webhook_allow_private_hosts,
    )
    return admin_api._json({**created.webhook.to_dict(), "secret": created.secret}, 201)


@router.get(
    "/webhooks",
    operation_id="adminListWebhooks",
    summary="Webhooks, newest first",
    response_model=None,
    responses={200: {"model": list[AdminWebhook], "description": "Webhooks, newest first."}},
)
def list_webhooks(
    caller: CallerDep,
    data_api: Annotated[str | None, Query(description="Only this data API's webhooks.")] = None,
) -> JSONResponse:
    """Webhooks of the data APIs the user may see."""
    if data_api is not None:
        admin_api._data_api(caller, data_api, edit=False)
    found = webhooks.list_webhooks(
        admin_api._engine(), data_api=data_api, kinds=sorted(caller.readable)
    )
    return admin_api._json([w.to_dict() for w in found])


@router.get(
    "/webhooks/{webhook_id}",
    operation_id="adminGetWebhook",
    summary="One webhook",
    response_model=None,
    responses={200: {"model": AdminWebhook, "description": "The webhook (never its secret)."}},
)
def get_webhook(webhook_id: str, caller: CallerDep) -> JSONResponse:
    """One webhook."""
    return admin_api._json(_webhook(caller, webhook_id, edit=False).to_dict())


@router.delete(
    "/webhooks/{webhook_id}",
    operation_id="adminDeleteWebhook",
    summary="Delete a webhook",
    status_code=204,
    response_class=FastAPIResponse,
    responses={204: {"description": "Deleted; its pending deliveries are never sent."}},
)
def delete_webhook(webhook_id: str, caller: CallerDep) -> FastAPIResponse:
    """Delete the webhook and its deliveries."""
    found = _webhook(caller, webhook_id, edit=True)
    webhooks.delete_webhook_audited(admin_api._engine(), found.id, actor=caller.actor)
    return FastAPIResponse(status_code=204)


@router.get(
    "/webhooks/{webhook_id}/deliveries",
    operation_id="adminListWebhookDeliveries",
    summary="The webhook's deliveries, newest first",
    response_model=None,
    responses={200: {"model": list[Delivery], "description": "Deliveries, newest first."}},
)
def list_deliveries(
    webhook_id: str,
    caller: CallerDep,
    limit: Annotated[
        int | None,
        Query(ge=1, le=webhooks.MAX_DELIVERIES, description="At most this many (100)."),
    ] = None,
) -> JSONResponse:
    """Each event's delivery: status, attempts, the last response status and error."""
    found = _webhook(caller, webhook_id, edit=False)
    return admin_api._json(webhooks.list_deliveries(admin_api._engine(), found.id, limit=limit))


@router.post(
    "/webhooks/{webhook_id}/test",
    operation_id="adminTestWebhook",
    summary="Send a ping event",
    status_code=202,
    response_model=None,
    responses={202: {"description": 'Queued: `{"event_id"}`; see the deliveries.'}},
)
def test_webhook(webhook_id: str, caller: CallerDep) -> JSONResponse:
    """Queue a `ping` event to the webhook; it is delivered like every event."""
    found = _webhook(caller, webhook_id, edit=True)
    event_id = webhooks.send_test_audited(admin_api._engine(), found.id, actor=caller.actor)
    return admin_api._json({"event_id": event_id, "webhook_id": found.id}, 202)


# -- the delivery loop ------------------------------------------------------------------


@asynccontextmanager
async def delivery_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Run a webhook delivery process beside the app while it is served (see the module
    docstring); a delivery process that dies is started again."""
    from airflow_nx1_connect.core.webhooks.process import RESTART_AFTER_S, DeliveryProcess

    child = None
    try:
        if get_settings().webhook_deliver_in_api_server:
            child = DeliveryProcess().start()
    except Exception as exc:  # a bad setting must not keep the api-server from starting
        log.warning("Webhook delivery is not started: %s", exc)

    async def watch(process: DeliveryProcess) -> None:
        while True:
            await asyncio.sleep(RESTART_AFTER_S)
            try:
                process.watch()
            except Exception as exc:
                log.warning("The webhook delivery process cannot be started: %s", exc)

    watcher = asyncio.create_task(watch(child)) if child is not None else None
    try:
        yield
    finally:
        if watcher is not None:
            watcher.cancel()
        if child is not None:
            await asyncio.to_thread(child.stop)


def install(app: FastAPI, api_prefix: str) -> None:
    """Add the webhook routes under `{api_prefix}/admin` (other methods on their paths: 405
    with `Allow`, as on the other admin paths) and the delivery loop's lifespan."""
    admin_api.include_with_405(app, router, api_prefix)
    app.router.lifespan_context = delivery_lifespan
