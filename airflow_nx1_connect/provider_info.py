"""Provider metadata for Airflow's `apache_airflow_provider` entry point."""

from __future__ import annotations

from typing import Any

from airflow_nx1_connect import __version__
from airflow_nx1_connect.core.settings import OPTIONS, SECTION, SENSITIVE

_INTEGERS = {
    "snapshot_retention",
    "default_page_size",
    "max_page_size",
    "max_key_days",
    "default_rate_limit",
    "read_timeout_s",
    "webhook_history_days",
}
_EXAMPLES = {
    "sql_alchemy_conn": "postgresql+psycopg://user:pass@host:5432/nx1",
    "cors_allowed_origins": "https://app.example.com,https://admin.example.com",
    "default_rate_limit": "600",
    "rate_limit_storage": "redis://127.0.0.1:6379/0",
}
_BOOLEANS = {
    "csv_escape_formulas",
    "webhook_allow_private_hosts",
    "webhook_deliver_in_api_server",
}
_VERSION_ADDED = {
    "cors_allowed_origins": "0.2.0",
    "default_rate_limit": "0.2.0",
    "rate_limit_storage": "0.2.0",
    "read_timeout_s": "0.3.0",
    "csv_escape_formulas": "0.3.0",
    "webhook_retry_delays": "0.3.0",
    "webhook_allow_private_hosts": "0.3.0",
    "webhook_deliver_in_api_server": "0.3.0",
    "webhook_history_days": "0.3.0",
}


def get_provider_info() -> dict[str, Any]:
    """Describe the provider and its `[nx1_connect]` config section to Airflow."""
    options = {
        name: {
            "description": description,
            "version_added": _VERSION_ADDED.get(name, "0.1.0"),
            "type": "integer"
            if name in _INTEGERS
            else "boolean"
            if name in _BOOLEANS
            else "string",
            "example": _EXAMPLES.get(name),
            # Airflow fills `{AIRFLOW_HOME}` in, so `airflow config get-value` shows the URL.
            "default": default,
            **({"sensitive": True} if name in SENSITIVE else {}),
        }
        for name, (default, description) in OPTIONS.items()
    }
    return {
        "package-name": "airflow-nx1-connect",
        "name": "NX1 Connect",
        "description": "Scheduled SQL rules (Ask and Engineer) served as read-only data APIs.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "NX1 Connect",
                "external-doc-url": "https://github.com/nx1/airflow-nx1-connect",
                "tags": ["software"],
            }
        ],
        "operators": [
            {
                "integration-name": "NX1 Connect",
                "python-modules": ["airflow_nx1_connect.operators"],
            }
        ],
        "plugins": [
            {"name": "nx1_connect", "plugin-class": "airflow_nx1_connect.plugin.Nx1ConnectPlugin"}
        ],
        "config": {
            SECTION: {
                "description": "NX1 Connect: the snapshot store and the data REST API.",
                "options": options,
            }
        },
    }
