"""The "Webhooks" pages of the NX1 Connect admin view, under `/pluginsv2/nx1connect/webhooks/`.

A second Flask-AppBuilder view beside `web.admin.Nx1ConnectView`, with its checks and page
helpers (`guarded`: a logged-in user with `can_read` on a data API kind sees its webhooks and
their deliveries, with `can_edit` creates, tests and deletes them; POSTs carry a CSRF token).
Every change goes through the audited functions of `core.webhooks`. The secret is shown once,
on the page that answers the creation.
"""

from __future__ import annotations

from typing import Any

from flask import flash, g, redirect, request, url_for
from flask_appbuilder import BaseView, expose

from airflow_nx1_connect.core import webhooks as core
from airflow_nx1_connect.core.errors import DataApiNotFound, ValidationError
from airflow_nx1_connect.core.settings import get_settings
from airflow_nx1_connect.core.snapshots import DataApi, list_data_apis
from airflow_nx1_connect.web import roles
from airflow_nx1_connect.web.admin import TEMPLATES, Nx1ConnectView, _Refused, guarded

#: Deliveries shown on a webhook's page.
DELIVERY_ROWS = 100


class Nx1WebhooksView(BaseView):
    """Webhook subscriptions of the data APIs, and their recent deliveries."""

    route_base = "/nx1connect/webhooks"
    default_view = "webhooks"
    template_folder = str(TEMPLATES)
    base_permissions: list[str] = []

    # The admin view's helpers (login, permission and CSRF checks, pages, errors).
    _engine = staticmethod(Nx1ConnectView._engine)
    _login_url = staticmethod(Nx1ConnectView._login_url)
    _page = Nx1ConnectView._page
    _forbidden = Nx1ConnectView._forbidden
    _error = Nx1ConnectView._error
    _csrf_token = staticmethod(Nx1ConnectView._csrf_token)
    _check_csrf = Nx1ConnectView._check_csrf
    _data_api = Nx1ConnectView._data_api

    def _webhook(self, webhook_id: str, action: str) -> core.Webhook:
        try:
            found = core.get_webhook(self._engine(), webhook_id)
        except core.WebhookNotFound as exc:
            raise _Refused(self._error(404, "Unknown webhook", str(exc))) from None
        self._data_api(found.data_api, action)  # type: ignore[arg-type]
        return found

    def _manageable(self) -> list[DataApi]:
        return list_data_apis(self._engine(), kinds=sorted(g.nx1_edit))

    @expose("/")
    @guarded(roles.ACTION_READ)
    def webhooks(self) -> Any:
        """Webhooks of the data APIs the user may see, with their latest delivery."""
        engine = self._engine()
        name = request.args.get("data_api") or None
        if name is not None:
            self._data_api(name)  # type: ignore[arg-type]
        found = core.list_webhooks(engine, data_api=name, kinds=sorted(g.nx1_read))
        kinds = {a.name: a.kind for a in list_data_apis(engine, sorted(g.nx1_read))}
        last: dict[str, dict[str, Any] | None] = {}
        for w in found:
            newest = core.list_deliveries(engine, w.id, limit=1)
            last[w.id] = newest[0] if newest else None
        return self._page(
            "webhooks.html",
            nx1_tab="webhooks",
            webhooks=found,
            kinds=kinds,
            last=last,
            data_api=name,
        )

    @expose("/new", methods=["GET", "POST"])
    @guarded(roles.ACTION_EDIT)
    def create_webhook(self) -> Any:
        """The create form (GET); create the webhook and show its secret once (POST)."""
        form = {
            "data_api": request.values.get("data_api", ""),
            "url": request.form.get("url", ""),
            "description": request.form.get("description", ""),
        }
        errors: dict[str, str] = {}
        if request.method == "POST":
            name = form["data_api"].strip()
            if not name:
                errors["data_api"] = "Choose the data API whose publishes are pushed."
            else:
                try:
                    self._data_api(name, roles.ACTION_EDIT)  # type: ignore[arg-type]
                    created = core.create_webhook_audited(
                        self._engine(),
                        data_api=name,
                        url=form["url"],
                        description=form["description"] or None,
                        actor=g.nx1_actor,
                        allow_private=get_settings().webhook_allow_private_hosts,
                    )
                except _Refused as refused:
                    if refused.response.status_code != 404:
                        raise
                    errors["data_api"] = f"No data API is called {name!r}; choose one."
                except DataApiNotFound:
                    errors["data_api"] = f"Data API {name!r} was just deleted; choose another."
                except ValidationError as exc:
                    errors[exc.field or "url"] = str(exc)
                else:
                    response = self._page(
                        "webhook_created.html", 201, nx1_tab="webhooks", created=created
                    )
                    response.headers["Pragma"] = "no-cache"
                    return response
        return self._page(
            "webhook_form.html",
            400 if errors else 200,
            nx1_tab="webhooks",
            form=form,
            errors=errors,
            choices=self._manageable(),
        )

    @expose("/<webhook_id>/")
    @guarded(roles.ACTION_READ)
    def deliveries(self, webhook_id: str) -> Any:
        """A webhook's recent deliveries: status, attempts, response code, error, next try."""
        found = self._webhook(webhook_id, roles.ACTION_READ)
        rows = core.list_deliveries(self._engine(), found.id, limit=DELIVERY_ROWS)
        api = self._data_api(found.data_api)  # type: ignore[arg-type]
        return self._page(
            "webhook_deliveries.html",
            nx1_tab="webhooks",
            webhook=found,
            kind=api.kind,
            deliveries=rows,
            delays=get_settings().webhook_retry_delays,
            limit=DELIVERY_ROWS,
        )

    @expose("/<webhook_id>/test", methods=["POST"])
    @guarded(roles.ACTION_EDIT)
    def test_webhook(self, webhook_id: str) -> Any:
        """Queue a ping event to the webhook."""
        found = self._webhook(webhook_id, roles.ACTION_EDIT)
        event_id = core.send_test_audited(self._engine(), found.id, actor=g.nx1_actor)
        flash(f"Queued ping event {event_id} to {found.url}; it is sent within seconds.", "info")
        return redirect(url_for("Nx1WebhooksView.deliveries", webhook_id=found.id))

    @expose("/<webhook_id>/delete", methods=["POST"])
    @guarded(roles.ACTION_EDIT)
    def delete_webhook(self, webhook_id: str) -> Any:
        """Delete the webhook; its pending deliveries are never sent."""
        found = self._webhook(webhook_id, roles.ACTION_EDIT)
        try:
            core.delete_webhook_audited(self._engine(), found.id, actor=g.nx1_actor)
        except core.WebhookNotFound:
            pass
        flash(f"Deleted the webhook to {found.url} of {found.data_api}.", "info")
        return redirect(url_for("Nx1WebhooksView.webhooks"))


def appbuilder_views() -> list[dict[str, Any]]:
    """The view, registered beside the admin view (no menu entry of its own: the pages' tabs
    lead to it)."""
    return [{"view": Nx1WebhooksView()}]
