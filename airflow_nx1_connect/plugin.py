"""The Airflow plugin: registers the web parts with the api-server.

Loaded by Airflow through the `airflow.plugins` entry point. Web modules are imported
lazily by the attributes below, so the scheduler and workers do not pay for them.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin


class _Lazy:
    """A plugin attribute computed on each access, so web modules load only where used."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        return self.factory()


def _flask_blueprints() -> list[Any]:
    from airflow_nx1_connect.web.blueprint import bp

    return [bp]


def _fastapi_apps() -> list[dict[str, Any]]:
    from airflow_nx1_connect.web.api import app

    return [{"app": app, "url_prefix": "/nx1", "name": "NX1 Connect data API"}]


def _fastapi_root_middlewares() -> list[dict[str, Any]]:
    from airflow_nx1_connect.web.misses import MountMisses
    from airflow_nx1_connect.web.streams import WholeSnapshotStreams

    return [
        {"middleware": WholeSnapshotStreams, "name": "NX1 Connect whole-snapshot streams"},
        {"middleware": MountMisses, "name": "NX1 Connect paths the /nx1 mount cannot match"},
    ]


def _appbuilder_views() -> list[dict[str, Any]]:
    from airflow_nx1_connect.web import webhooks_view
    from airflow_nx1_connect.web.admin import appbuilder_views

    return [*appbuilder_views(), *webhooks_view.appbuilder_views()]


class Nx1ConnectPlugin(AirflowPlugin):
    """NX1 Connect: data REST API (Flask + FastAPI) and the admin view."""

    name = "nx1_connect"
    # The data REST API: /pluginsv2/nx1/api/v1/... (Flask) and /nx1/api/v1/... (FastAPI).
    flask_blueprints = _Lazy(_flask_blueprints)  # type: ignore[assignment]
    fastapi_apps = _Lazy(_fastapi_apps)  # type: ignore[assignment]
    # Whole-snapshot streams under /pluginsv2/nx1/api/v1 answered without Starlette's
    # WSGI middleware, which buffers a WSGI body without bound (see web.streams); /nx1 and
    # paths holding a newline under the mounts answered by the data API (see web.misses).
    fastapi_root_middlewares = _Lazy(_fastapi_root_middlewares)  # type: ignore[assignment]
    # The admin view (FAB, served under /pluginsv2/nx1connect/) and its entry in the
    # Airflow 3 UI's navigation (a top-level sidebar item), shown inside the UI at
    # /plugin/nx1-connect.
    appbuilder_views = _Lazy(_appbuilder_views)  # type: ignore[assignment]
    external_views = [
        {
            "name": "NX1 Connect",
            "href": "/pluginsv2/nx1connect/",
            "destination": "nav",
            "url_route": "nx1-connect",
            "nav_top_level": True,
        }
    ]
