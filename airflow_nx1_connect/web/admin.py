"""The "NX1 Connect" admin view: data APIs, snapshot previews and data API keys.

A Flask-AppBuilder view served by the api-server's `/pluginsv2` Flask app, at
`/pluginsv2/nx1connect/` (the data APIs list). Every request is checked on the server:

- anonymous users are sent to Airflow's login page;
- a logged-in user sees the data APIs, keys (with their usage) and audit events of the kinds
  on which they have `can_read`, and manages (creates data APIs ahead of their first run;
  creates, extends, rotates, revokes, deletes keys; deletes data APIs) those on which they
  have `can_edit` (see `airflow_nx1_connect.web.roles`); anyone else gets 403;
- a data API is created only for a real rule task of its kind (`core.control`); a key with
  the `run` scope is made or rotated only by a user whom Airflow lets trigger the rule's DAG
  (403 otherwise);
- every state change is a POST carrying a CSRF token in its form, checked here even if
  Flask-WTF's global CSRF protection were turned off (a missing or bad one: 400 with the
  error page), and goes through `core.control`, which records it in the audit trail with
  the logged-in user as its actor.

The pages have no FAB navigation bar: inside the Airflow 3 UI they are shown in a frame next
to Airflow's own sidebar (see `templates/nx1connect/base.html`).

Login: Airflow's login form (`/auth/login/`) stores the user in the FAB session. With the
default `[fab] session_backend = database` that session lives in Airflow's database, but the
`/pluginsv2` app is built without that session interface and so would not see the user.
When the view registers, it gives the `/pluginsv2` app the same session interface as the
login app (`database` or `securecookie`, whatever `[fab] session_backend` says), so a user
logged in through the normal form is logged in here too, with either backend.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from flask import Response, flash, g, make_response, redirect, request, url_for
from flask_appbuilder import BaseView, expose

from airflow_nx1_connect.core import audit as core_audit
from airflow_nx1_connect.core import control, engines, key_options, reads, types, usage
from airflow_nx1_connect.core import keys as core_keys
from airflow_nx1_connect.core import snapshots as core_snapshots
from airflow_nx1_connect.core.clock import utcnow
from airflow_nx1_connect.core.errors import (
    AdminForbidden,
    Conflict,
    DataApiNotFound,
    KeyNotFound,
    SnapshotNotFound,
    ValidationError,
)
from airflow_nx1_connect.core.settings import get_settings
from airflow_nx1_connect.rule_tasks import find_rule_task
from airflow_nx1_connect.web import roles
from airflow_nx1_connect.web.admin_support import (
    POLICY_OPS,
    _policy_form,
    _Refused,
    _setup_app,
    _terms,
    cell,
    guarded,
    relative,
    utc_text,
)

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
#: Rows shown in a snapshot preview.
PREVIEW_ROWS = 20
#: Audit events shown on the Audit page.
AUDIT_ROWS = 200


# ---------------------------------------------------------------------------------------
# The view
# ---------------------------------------------------------------------------------------


class Nx1ConnectView(BaseView):
    """NX1 Connect pages under `/pluginsv2/nx1connect/`."""

    route_base = "/nx1connect"
    default_view = "data_apis"
    template_folder = str(TEMPLATES)
    # Access is checked by `guarded` against the NX1 resources, not per view method.
    base_permissions: list[str] = []

    def create_blueprint(self, appbuilder: Any, endpoint: Any = None, static_folder: Any = None):
        """Register the pages, then share the login session and sync the roles on the app."""
        blueprint = super().create_blueprint(appbuilder, endpoint, static_folder)
        blueprint.record_once(lambda state: _setup_app(state.app, appbuilder))
        return blueprint

    # -- helpers -------------------------------------------------------------------------

    @staticmethod
    def _engine() -> Any:
        return engines.get_engine()

    @staticmethod
    def _login_url() -> str:
        from airflow.api_fastapi.app import get_auth_manager

        return get_auth_manager().get_url_login(next_url=request.url)

    def _page(self, template: str, http_status: int = 200, **context: Any) -> Response:
        now = utcnow()
        response = make_response(
            self.render_template(
                f"nx1connect/{template}",
                now=now,
                utc=utc_text,
                rel=lambda v: relative(v, now),
                cell=cell,
                nx1_csrf=self._csrf_token(),
                can_edit=lambda kind: kind in g.get("nx1_edit", set()),
                **context,
            ),
            http_status,
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    def _forbidden(self, message: str) -> Response:
        return self._error(403, "Access denied", message)

    def _error(self, status: int, title: str, detail: str) -> Response:
        return self._page("error.html", status, title=title, detail=detail)

    @staticmethod
    def _csrf_token() -> str:
        from flask_wtf.csrf import generate_csrf

        return generate_csrf()

    def _check_csrf(self) -> None:
        from flask_wtf.csrf import validate_csrf
        from wtforms import ValidationError as WTFValidationError

        try:
            validate_csrf(request.form.get("csrf_token"))
        except WTFValidationError as exc:
            raise _Refused(
                self._error(400, "Missing or invalid CSRF token", f"{exc} Reload the page.")
            ) from None

    def _data_api(self, name: str, action: str = roles.ACTION_READ) -> core_snapshots.DataApi:
        try:
            api = core_snapshots.get_data_api(self._engine(), name)
        except DataApiNotFound as exc:
            raise _Refused(self._error(404, "Unknown data API", str(exc))) from None
        allowed = g.nx1_edit if action == roles.ACTION_EDIT else g.nx1_read
        if api.kind not in allowed:
            raise _Refused(
                self._forbidden(
                    f"Data API {api.name!r} is an {api.kind} data API; managing it needs the "
                    f"nx1_{api.kind} role (or Admin)."
                )
            )
        return api

    def _key(self, key_id: str) -> core_keys.ApiKey:
        try:
            key = core_keys.get_key(self._engine(), key_id)
        except KeyNotFound as exc:
            raise _Refused(self._error(404, "Unknown key", str(exc))) from None
        self._data_api(key.data_api, roles.ACTION_EDIT)
        return key

    def _status(self, api: core_snapshots.DataApi, latest: Any) -> str:
        attempts = core_snapshots.list_snapshots(
            self._engine(), api.name, statuses=("writing", "failed")
        )
        newer = [
            s
            for s in attempts
            if latest is None or s.created_at > (latest.published_at or latest.created_at)
        ]
        newest = max(newer, key=lambda s: s.created_at, default=None)
        if newest is not None and newest.status == "writing":
            return "refreshing"
        if api.last_failure_at is not None or (newest is not None and newest.status == "failed"):
            return "last run failed"
        return "live" if latest is not None else "no snapshot yet"

    # -- data APIs -----------------------------------------------------------------------

    @expose("/")
    @guarded(roles.ACTION_READ)
    def data_apis(self) -> Any:
        """The data APIs the user may see, with their latest snapshot and active keys."""
        engine = self._engine()
        apis = core_snapshots.list_data_apis(engine, kinds=sorted(g.nx1_read))
        now = utcnow()
        active: dict[str, int] = {}
        for key in core_keys.list_keys(engine, kinds=sorted(g.nx1_read)):
            if key.status(now) == "active":
                active[key.data_api] = active.get(key.data_api, 0) + 1
        rows = []
        for api in apis:
            try:
                latest = core_snapshots.latest_snapshot(engine, api.name)
            except SnapshotNotFound:
                latest = None
            rows.append(
                {
                    "api": api,
                    "latest": latest,
                    "status": self._status(api, latest),
                    "active_keys": active.get(api.name, 0),
                }
            )
        return self._page("data_apis.html", rows=rows, kinds=sorted(g.nx1_read))

    @expose("/data-apis/<name>/")
    @guarded(roles.ACTION_READ)
    def data_api(self, name: str) -> Any:
        """One data API: details, the latest snapshot's first rows, retained snapshots."""
        api = self._data_api(name)
        engine = self._engine()
        try:
            latest = core_snapshots.latest_snapshot(engine, api.name)
        except SnapshotNotFound:
            latest = None
        columns: list[types.Column] = []
        rows: list[list[Any]] = []
        if latest is not None:
            columns = core_snapshots.resolve_columns(latest, None)
            try:
                raw = reads.read_raw_rows(engine, latest, columns, start=0, limit=PREVIEW_ROWS)
                rows = types.convert_rows(raw, types.converters(columns, "json"))
            except SnapshotNotFound:  # dropped by retention meanwhile
                latest = None
        snaps = core_snapshots.list_snapshots(engine, api.name)
        keys = core_keys.list_keys(engine, data_api=api.name)
        return self._page(
            "data_api.html",
            api=api,
            latest=latest,
            columns=columns,
            rows=rows,
            preview_rows=PREVIEW_ROWS,
            snapshots=snaps,
            keys=keys,
            api_status=self._status(api, latest),
        )

    @expose("/data-apis/<name>/delete", methods=["GET", "POST"])
    @guarded(roles.ACTION_EDIT)
    def delete_data_api(self, name: str) -> Any:
        """Ask for confirmation (GET), then delete the data API, its keys and snapshots."""
        api = self._data_api(name, roles.ACTION_EDIT)
        engine = self._engine()
        error = None
        if request.method == "POST":
            if request.form.get("confirm", "").strip() == api.name:
                control.delete_data_api(engine, api.name, actor=g.nx1_actor)
                flash(f"Deleted data API {api.name} with its keys and snapshots.", "info")
                return redirect(url_for("Nx1ConnectView.data_apis"))
            error = f"Type the data API's name, {api.name}, to confirm."
        return self._page(
            "delete_data_api.html",
            400 if error else 200,
            api=api,
            error=error,
            key_count=len(core_keys.list_keys(engine, data_api=api.name)),
            snapshot_count=len(core_snapshots.list_snapshots(engine, api.name)),
        )

    @expose("/data-apis/new", methods=["GET", "POST"])
    @guarded(roles.ACTION_EDIT)
    def create_data_api(self) -> Any:
        """The form (GET); register a data API ahead of its rule's first run, with its first
        key shown once (POST)."""
        max_days = get_settings().max_key_days
        kinds = sorted(g.nx1_edit)
        form = {
            field: request.form.get(field, "").strip()
            for field in ("name", "kind", "dag_id", "task_id", "description", "key_days")
        }
        if not form["kind"] and len(kinds) == 1:
            form["kind"] = kinds[0]
        if not form["key_days"]:
            form["key_days"] = str(min(control.DEFAULT_FIRST_KEY_DAYS, max_days))
        errors: dict[str, str] = {}
        if request.method == "POST":
            if form["kind"] not in kinds:
                errors["kind"] = (
                    f"Choose the kind: you may create {' or '.join(kinds)} data APIs."
                    if form["kind"] == "" or form["kind"] not in roles.RESOURCES
                    else f"Creating an {form['kind']} data API needs the nx1_{form['kind']} "
                    "role (or Admin)."
                )
            else:
                try:
                    api, created = control.create_data_api(
                        self._engine(),
                        name=form["name"],
                        kind=form["kind"],
                        dag_id=form["dag_id"],
                        task_id=form["task_id"],
                        description=form["description"] or None,
                        key_days=form["key_days"],
                        rules=find_rule_task,
                        actor=g.nx1_actor,
                    )
                except ValidationError as exc:
                    field = {"data_api": "name", "days": "key_days"}.get(
                        exc.field or "", exc.field or "name"
                    )
                    errors[field if field in form else "name"] = str(exc)
                except Conflict as exc:
                    errors["name"] = str(exc)
                else:
                    response = self._page("key_created.html", 201, created=created, new_api=api)
                    response.headers["Pragma"] = "no-cache"
                    return response
        return self._page(
            "data_api_form.html",
            400 if errors else 200,
            form=form,
            errors=errors,
            kinds=kinds,
            max_days=max_days,
        )

    # -- audit ---------------------------------------------------------------------------

    @expose("/audit")
    @guarded(roles.ACTION_READ)
    def audit(self) -> Any:
        """Admin actions on the data APIs of the kinds the user may see, newest first."""
        engine = self._engine()
        name = request.args.get("data_api") or None
        if name is not None:
            self._data_api(name)
        # A user who may see one kind sees the events of that kind's data APIs that exist
        # now, by identity: never those of a deleted data API, whatever name it had.
        admin = set(g.nx1_read) == set(roles.RESOURCES)
        events = core_audit.list_events(
            engine, data_api=name, kinds=None if admin else g.nx1_read, limit=AUDIT_ROWS
        )
        return self._page("audit.html", events=events, data_api=name, limit=AUDIT_ROWS)

    # -- keys ----------------------------------------------------------------------------

    @expose("/keys")
    @guarded(roles.ACTION_READ)
    def keys(self) -> Any:
        """Keys of the data APIs the user may see, newest first."""
        engine = self._engine()
        name = request.args.get("data_api") or None
        if name is not None:
            self._data_api(name)
        found = core_keys.list_keys(engine, data_api=name, kinds=sorted(g.nx1_read))
        kinds = {a.name: a.kind for a in core_snapshots.list_data_apis(engine, sorted(g.nx1_read))}
        counts = usage.usage_for_keys(engine, [k.id for k in found])
        return self._page(
            "keys.html",
            keys=found,
            kinds=kinds,
            data_api=name,
            usage=counts,
            overlap_hours=key_options.DEFAULT_OVERLAP_HOURS,
        )

    def _manageable(self) -> list[core_snapshots.DataApi]:
        return core_snapshots.list_data_apis(self._engine(), kinds=sorted(g.nx1_edit))

    @expose("/keys/new", methods=["GET", "POST"])
    @guarded(roles.ACTION_EDIT)
    def create_key(self) -> Any:
        """The create form (GET); create the key and show it once (POST)."""
        max_days = get_settings().max_key_days
        form = {
            "data_api": request.values.get("data_api", ""),
            "description": request.form.get("description", ""),
            "days": request.form.get("days", "30" if max_days >= 30 else str(max_days)),
            "may_run": "run" if request.form.get("may_run") else "",
            "rate_limit": request.form.get("rate_limit", ""),
            **_policy_form(),
        }
        errors: dict[str, str] = {}
        status = 200
        if request.method == "POST":
            try:
                created, errors = self._create(form)
            except AdminForbidden as exc:  # a run key, by a user who may not trigger the DAG
                created, errors, status = None, {"scopes": str(exc)}, 403
            if created is not None:
                response = self._page("key_created.html", 201, created=created)
                response.headers["Pragma"] = "no-cache"
                return response
        return self._page(
            "key_form.html",
            status if status != 200 else 400 if errors else 200,
            form=form,
            errors=errors,
            choices=self._manageable(),
            max_days=max_days,
            **self._policy_choices(form),
        )

    def _policy_choices(self, form: dict[str, Any]) -> dict[str, Any]:
        """The filter builder's and column checkboxes' choices: each manageable data API's
        latest columns (the form switches between them as the data API changes)."""
        engine = self._engine()
        by_api: dict[str, list[dict[str, str]]] = {}
        for api in self._manageable():
            try:
                latest = core_snapshots.latest_snapshot(engine, api.name)
            except SnapshotNotFound:
                by_api[api.name] = []
                continue
            by_api[api.name] = [
                {"name": n, "type": t}
                for n, t in zip(latest.columns, latest.column_types, strict=True)
            ]
        return {
            "columns_by_api": by_api,
            "policy_columns": by_api.get(str(form["data_api"]), []),
            "policy_ops": POLICY_OPS,
        }

    def _create(self, form: dict[str, Any]) -> tuple[core_keys.CreatedKey | None, dict[str, str]]:
        errors: dict[str, str] = {}
        name = form["data_api"].strip()
        if not name:
            errors["data_api"] = "Choose the data API this key may read."
        else:
            try:
                self._data_api(name, roles.ACTION_EDIT)
            except _Refused as refused:
                if refused.response.status_code != 404:
                    raise
                errors["data_api"] = f"No data API is called {name!r}; choose one from the list."
        try:
            key_options.validate_days(form["days"])
        except ValidationError as exc:
            errors["days"] = str(exc)
        try:
            key_options.validate_rate_limit(form["rate_limit"].strip())
        except ValidationError as exc:
            errors["rate_limit"] = str(exc)
        if len(form["description"].strip()) > key_options.MAX_DESCRIPTION_LENGTH:
            errors["description"] = (
                f"Keep the description to at most {key_options.MAX_DESCRIPTION_LENGTH} characters."
            )
        if errors:
            return None, errors
        try:
            created = control.create_key(
                self._engine(),
                data_api=name,
                days=key_options.validate_days(form["days"]),
                description=form["description"] or None,
                scopes=("read", "run") if form["may_run"] else ("read",),
                rate_limit=form["rate_limit"].strip() or None,
                row_filter=_terms(form["terms"]),
                columns=form["columns"] if form["limit_columns"] else None,
                actor=g.nx1_actor,
            )
        except DataApiNotFound:
            return None, {"data_api": f"Data API {name!r} was just deleted; choose another."}
        except ValidationError as exc:
            return None, {exc.field or "days": str(exc)}
        return created, {}

    @expose("/keys/<key_id>/extend", methods=["GET", "POST"])
    @guarded(roles.ACTION_EDIT)
    def extend_key(self, key_id: str) -> Any:
        """The extend form (GET); move the key's expiry N days later (POST)."""
        key = self._key(key_id)
        days = request.form.get("days", "30")
        error = None
        if request.method == "POST":
            try:
                updated = control.extend_key(
                    self._engine(), key.id, days=key_options.validate_days(days), actor=g.nx1_actor
                )
            except ValidationError as exc:
                error = str(exc)
            else:
                flash(
                    f"Key {updated.prefix}\u2026 now expires {utc_text(updated.expires_at)} "
                    f"({relative(updated.expires_at)}).",
                    "info",
                )
                return redirect(url_for("Nx1ConnectView.keys"))
        return self._page(
            "extend_key.html",
            400 if error else 200,
            key=key,
            days=days,
            error=error,
            max_days=get_settings().max_key_days,
        )

    @expose("/keys/<key_id>/rotate", methods=["POST"])
    @guarded(roles.ACTION_EDIT)
    def rotate_key(self, key_id: str) -> Any:
        """Make a new key like this one (shown once); the old one stays valid for the overlap."""
        key = self._key(key_id)
        try:
            created, old = control.rotate_key(
                self._engine(),
                key.id,
                overlap_hours=request.form.get("overlap_hours", "").strip() or None,
                actor=g.nx1_actor,
            )
        except (ValidationError, Conflict) as exc:
            return self._error(400, "The key was not rotated", str(exc))
        except KeyNotFound as exc:
            return self._error(404, "Unknown key", str(exc))
        response = self._page("key_created.html", 201, created=created, rotated=old)
        response.headers["Pragma"] = "no-cache"
        return response

    @expose("/keys/<key_id>/revoke", methods=["POST"])
    @guarded(roles.ACTION_EDIT)
    def revoke_key(self, key_id: str) -> Any:
        """Revoke a key now; every server refuses it at once."""
        key = self._key(key_id)
        control.revoke_key(self._engine(), key.id, actor=g.nx1_actor)
        flash(f"Revoked key {key.prefix}\u2026 of {key.data_api}.", "info")
        return redirect(url_for("Nx1ConnectView.keys"))

    @expose("/keys/<key_id>/delete", methods=["POST"])
    @guarded(roles.ACTION_EDIT)
    def delete_key(self, key_id: str) -> Any:
        """Delete a key's record; it stops working at once."""
        key = self._key(key_id)
        try:
            control.delete_key(self._engine(), key.id, actor=g.nx1_actor)
        except KeyNotFound:
            pass
        flash(f"Deleted key {key.prefix}\u2026 of {key.data_api}.", "info")
        return redirect(url_for("Nx1ConnectView.keys"))


@functools.cache
def appbuilder_views() -> list[dict[str, Any]]:
    """The plugin's `appbuilder_views`: one view, two menu entries in "NX1 Connect"."""
    view = Nx1ConnectView()
    return [
        {"name": "Data APIs", "category": roles.MENU_CATEGORY, "view": view},
        {
            "name": "API Keys",
            "category": roles.MENU_CATEGORY,
            "view": view,
            "href": "Nx1ConnectView.keys",
        },
    ]
