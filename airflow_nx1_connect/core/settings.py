"""The `[nx1_connect]` configuration section, read when used, never at import.

Precedence, as in Airflow: the environment variable `AIRFLOW__NX1_CONNECT__<KEY>`, then
the `[nx1_connect]` section of `airflow.cfg` (`$AIRFLOW_CONFIG`, else
`$AIRFLOW_HOME/airflow.cfg`), then the defaults below. This module reads the file itself
so that the core never has to import Airflow.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from pathlib import Path

from airflow_nx1_connect.core.errors import ConfigError

SECTION = "nx1_connect"

#: Option name -> (default as text, description). The provider info is built from this.
OPTIONS: dict[str, tuple[str, str]] = {
    "sql_alchemy_conn": (
        "",
        "SQLAlchemy URL of the snapshot store. Empty means a SQLite file "
        "nx1_connect.db inside AIRFLOW_HOME. Use postgresql+psycopg://... in production.",
    ),
    "snapshot_retention": ("5", "Published snapshots kept per data API; older ones are dropped."),
    "default_page_size": ("1000", "Rows per JSON page when a request gives no limit."),
    "max_page_size": ("10000", "Largest limit a request may ask for."),
    "max_key_days": ("365", "Longest validity, in days, of a data API key."),
    "cors_allowed_origins": (
        "",
        "Comma-separated origins (e.g. https://app.example.com) whose browser pages may "
        "call the data API; * allows any; empty sends no CORS headers.",
    ),
}


def airflow_home() -> Path:
    """The Airflow home folder (`$AIRFLOW_HOME`, default `~/airflow`)."""
    return Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow").expanduser()


def _config_file() -> Path:
    explicit = os.environ.get("AIRFLOW_CONFIG")
    return Path(explicit).expanduser() if explicit else airflow_home() / "airflow.cfg"


def _raw(option: str) -> str:
    env = os.environ.get(f"AIRFLOW__{SECTION.upper()}__{option.upper()}")
    if env is not None:
        return env.strip()
    path = _config_file()
    if path.is_file():
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path, encoding="utf-8")
        except configparser.Error as exc:  # pragma: no cover - a broken airflow.cfg
            raise ConfigError(f"Cannot read {path}: {exc}. Fix the file's syntax.") from exc
        if parser.has_option(SECTION, option):
            return parser.get(SECTION, option).strip()
    return OPTIONS[option][0]


def _positive_int(option: str) -> int:
    text = _raw(option)
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(
            f"[{SECTION}] {option} must be a whole number, got {text!r}; "
            f"set AIRFLOW__{SECTION.upper()}__{option.upper()} to e.g. {OPTIONS[option][0]}."
        ) from None
    if value < 1:
        raise ConfigError(f"[{SECTION}] {option} must be at least 1, got {value}.")
    return value


@dataclass(frozen=True)
class Settings:
    """The resolved `[nx1_connect]` options."""

    sql_alchemy_conn: str
    snapshot_retention: int
    default_page_size: int
    max_page_size: int
    max_key_days: int
    cors_allowed_origins: tuple[str, ...] = ()


def _origins(option: str) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/") for o in _raw(option).split(",") if o.strip())


def default_store_url() -> str:
    """The embedded default store: a SQLite file inside AIRFLOW_HOME."""
    return f"sqlite:///{airflow_home() / 'nx1_connect.db'}"


def get_settings() -> Settings:
    """Read and validate `[nx1_connect]` now (environment, airflow.cfg, defaults)."""
    settings = Settings(
        sql_alchemy_conn=_raw("sql_alchemy_conn") or default_store_url(),
        snapshot_retention=_positive_int("snapshot_retention"),
        default_page_size=_positive_int("default_page_size"),
        max_page_size=_positive_int("max_page_size"),
        max_key_days=_positive_int("max_key_days"),
        cors_allowed_origins=_origins("cors_allowed_origins"),
    )
    if settings.default_page_size > settings.max_page_size:
        raise ConfigError(
            f"[{SECTION}] default_page_size ({settings.default_page_size}) must not exceed "
            f"max_page_size ({settings.max_page_size})."
        )
    return settings


_cached: tuple[tuple[object, ...], Settings] | None = None


def current_settings() -> Settings:
    """`get_settings()`, re-read only when its inputs change (for per-request callers).

    The inputs are the `AIRFLOW__NX1_CONNECT__*` variables, the config file's path and its
    modification time, so a changed environment or airflow.cfg is seen on the next call.
    """
    global _cached
    path = _config_file()
    try:
        mtime: int | None = path.stat().st_mtime_ns
    except OSError:
        mtime = None
    env = tuple(os.environ.get(f"AIRFLOW__{SECTION.upper()}__{o.upper()}") for o in OPTIONS)
    key = (env, str(path), mtime)
    cached = _cached
    if cached is not None and cached[0] == key:
        return cached[1]
    settings = get_settings()
    _cached = (key, settings)
    return settings
