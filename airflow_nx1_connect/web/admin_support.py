"""Support of the NX1 Connect admin view (`web.admin`): text helpers for its templates,
the Airflow login session it shares with FAB, the `guarded` check every page runs through,
and the tenant policy part of the create-key form."""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from flask import abort, g, redirect, request
from flask.sessions import SessionInterface

from airflow_nx1_connect.core import control, engines, types
from airflow_nx1_connect.core.clock import iso, utcnow
from airflow_nx1_connect.core.errors import AdminForbidden, RunsUnavailable, StoreUnavailable
from airflow_nx1_connect.web import roles

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------
# Formatting helpers (also used by the templates)
# ---------------------------------------------------------------------------------------


def utc_text(value: dt.datetime | None) -> str:
    """`2026-01-31T12:00:00Z` (whole seconds), or an em dash for None."""
    return iso(value.replace(microsecond=0) if value else None) or "\u2014"


def relative(value: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """A human hint: "in 6 days", "3 hours ago", "just now" ("" for None)."""
    if value is None:
        return ""
    now = now or utcnow()
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    seconds = (value - now).total_seconds()
    future = seconds > 0
    seconds = abs(seconds)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = round(seconds / size)
            text = f"{count} {unit}{'s' if count != 1 else ''}"
            return f"in {text}" if future else f"{text} ago"
    return "in less than a minute" if future else "just now"


def cell(value: Any) -> str:
    """A value as the data API sends it in JSON (`core.types`), as preview text.

    Strings are shown without their JSON quotes; everything else is its JSON text, so a
    boolean is `true`, a NUMERIC its exact digits, a JSON column its JSON.
    """
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=types.json_default)


# ---------------------------------------------------------------------------------------
# App setup: shared login session, roles
# ---------------------------------------------------------------------------------------


def _setup_app(app: Any, appbuilder: Any) -> None:
    """Share the login session with Airflow's login app, and make sure the roles exist."""
    share_login_session(app)
    try:
        roles.sync_roles(appbuilder.sm)
    except Exception:  # a read-only metadata DB must not stop the api-server
        log.warning(
            "Could not create the NX1 Connect roles (nx1_ask, nx1_engineer); run "
            "`nx1-connect db migrate` with write access to Airflow's database.",
            exc_info=True,
        )


def share_login_session(app: Any) -> None:
    """Give the `/pluginsv2` Flask app the FAB session interface of Airflow's login app.

    Does nothing when the app already has a non-default session interface or when the
    auth manager is not the FAB one. The interface is built on the app's first request
    (see `_LoginSessionOnFirstUse`), so an app that installs its own afterwards, like the
    one of the `airflow users` commands, keeps it.
    """
    from flask.sessions import SecureCookieSessionInterface

    if type(app.session_interface) is not SecureCookieSessionInterface:
        return
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.providers.fab.auth_manager.fab_auth_manager import FabAuthManager

    if not isinstance(get_auth_manager(), FabAuthManager):
        return
    from airflow.providers.fab.www.extensions.init_session import init_session_max_lifetime

    app.session_interface = _LoginSessionOnFirstUse()
    init_session_max_lifetime(app)


class _LoginSessionOnFirstUse(SessionInterface):
    """Installs Airflow's FAB session interface (`[fab] session_backend`) on first use.

    On the first request it replaces itself with the interface the login app uses, then
    delegates; later requests go straight to that interface.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._real: Any = None

    def _install(self, app: Any) -> Any:
        with self._lock:
            if self._real is None:
                from airflow.providers.fab.www.extensions.init_session import (
                    init_airflow_session_interface,
                )

                init_airflow_session_interface(app, app.extensions["sqlalchemy"])
                self._real = app.session_interface
        return self._real

    def open_session(self, app: Any, request: Any) -> Any:
        return self._install(app).open_session(app, request)

    def save_session(self, app: Any, session: Any, response: Any) -> None:
        return self._install(app).save_session(app, session, response)


# ---------------------------------------------------------------------------------------
# Access control
# ---------------------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, response: Any) -> None:
        super().__init__("refused")
        self.response = response


def _current_user() -> Any:
    from airflow.api_fastapi.app import get_auth_manager

    manager = get_auth_manager()
    getter = getattr(manager, "get_user", None)
    if getter is None:  # not the FAB auth manager: this Flask app knows no user
        return None
    return getter()


def _user_name(user: Any) -> str:
    getter = getattr(user, "get_name", None)
    return str(getter() if getter is not None else getattr(user, "username", "unknown"))


def guarded(action: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Require a logged-in user with `action` (`can_read`/`can_edit`) on some data API kind.

    Sets `g.nx1_read` / `g.nx1_edit` (the kinds the user may see / manage). POSTs must carry
    a valid CSRF token.
    """

    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            user = _current_user()
            if user is None or user.is_anonymous or not getattr(user, "is_active", True):
                if request.method == "POST":
                    abort(401)
                return redirect(self._login_url())
            g.nx1_actor = control.Actor(
                _user_name(user),
                request.remote_addr,
                lambda dag_id: roles.may_trigger_dag(user, dag_id),
            )
            g.nx1_read = roles.kinds_allowed(user, roles.ACTION_READ)
            g.nx1_edit = roles.kinds_allowed(user, roles.ACTION_EDIT) & g.nx1_read
            allowed = g.nx1_edit if action == roles.ACTION_EDIT else g.nx1_read
            if not allowed:
                return self._forbidden(
                    "You need the nx1_ask or nx1_engineer role (or Admin) to use NX1 Connect. "
                    "Ask an Airflow administrator to add it to your user."
                )
            try:
                if request.method == "POST":
                    self._check_csrf()
                return func(self, *args, **kwargs)
            except _Refused as refused:
                return refused.response
            except AdminForbidden as exc:
                return self._forbidden(str(exc))
            except StoreUnavailable as exc:
                return self._error(503, "The snapshot store is unavailable", str(exc))
            except RunsUnavailable:
                return self._error(
                    503,
                    "Airflow is unavailable",
                    "Airflow's metadata database cannot be reached right now; try again in a "
                    "few seconds.",
                )
            except sa.exc.OperationalError as exc:
                detail = engines.describe_store_error(self._engine(), exc)
                return self._error(503, "The snapshot store is unavailable", detail)

        return wrapper

    return decorator


#: The filter builder's operators (the `where.` grammar), with what each one means.
POLICY_OPS = [
    ("eq", "="),
    ("ne", "≠"),
    ("gt", ">"),
    ("gte", "≥"),
    ("lt", "<"),
    ("lte", "≤"),
    ("like", "like (* wildcard)"),
    ("in", "in (a,b,c)"),
    ("is", "is (null / not_null)"),
]
#: Rows the filter builder shows (more are added in the page as needed).
POLICY_ROWS = 3


def _policy_form() -> dict[str, Any]:
    """The create-key form's policy fields: filter terms (column, op, value rows) and the
    column allowlist (a checkbox turns it on, one checkbox per column)."""
    rows = [
        {"column": c.strip(), "op": o, "value": v}
        for c, o, v in zip(
            request.form.getlist("where_column"),
            request.form.getlist("where_op"),
            request.form.getlist("where_value"),
            strict=False,
        )
    ]
    filled = [r for r in rows if r["column"]]
    blank = {"column": "", "op": "eq", "value": ""}
    return {
        "terms": filled + [dict(blank) for _ in range(max(POLICY_ROWS - len(filled), 1))],
        "limit_columns": "1" if request.form.get("limit_columns") else "",
        "columns": request.form.getlist("columns"),
    }


def _terms(rows: list[dict[str, str]]) -> list[str]:
    """Filter builder rows as `<column>=<op>.<value>` terms (`in`: parentheses added when
    the value has none)."""
    terms = []
    for row in rows:
        if not row["column"]:
            continue
        value = row["value"]
        if row["op"] == "in" and not (value.startswith("(") and value.endswith(")")):
            value = f"({value})"
        terms.append(f"{row['column']}={row['op']}.{value}")
    return terms
