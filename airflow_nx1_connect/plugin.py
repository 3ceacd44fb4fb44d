"""The Airflow plugin: registers the web parts with the api-server.

Loaded by Airflow through the `airflow.plugins` entry point. Web modules are imported
lazily by the attributes below, so the scheduler and workers do not pay for them.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin


class Nx1ConnectPlugin(AirflowPlugin):
    """NX1 Connect: data REST API (Flask + FastAPI) and the admin view."""

    name = "nx1_connect"
