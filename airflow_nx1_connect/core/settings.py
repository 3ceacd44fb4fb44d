"""The `[nx1_connect]` configuration section, resolved by Airflow's rules, read when used.

Airflow's rules, in Airflow's order (`AirflowConfigParser.get`), for every reader (operator,
api-server, admin view, CLI):

1. the environment variable `AIRFLOW__NX1_CONNECT__<KEY>` (`$VAR` and `~` expanded);
2. for a sensitive option (`sql_alchemy_conn`, `rate_limit_storage`: marked so in the provider
   info), `AIRFLOW__NX1_CONNECT__<KEY>_CMD` (a command; its output is the value), then
   `AIRFLOW__NX1_CONNECT__<KEY>_SECRET` (a config key looked up in Airflow's configured
   secrets backend, `[secrets] backend`);
3. the `[nx1_connect]` section of airflow.cfg (`$AIRFLOW_CONFIG`, else
   `$AIRFLOW_HOME/airflow.cfg`);
4. for a sensitive option, `<key>_cmd`, then `<key>_secret` in that section;
5. the defaults in `OPTIONS` (the provider's defaults; `{AIRFLOW_HOME}` is filled in).

The core has no Airflow imports; this module has one, lazily, inside `_airflow_values`: when a
`_CMD`/`_SECRET` (environment) or `_cmd`/`_secret` (airflow.cfg) can decide an option, that
option is asked of Airflow's own `AirflowConfigParser` (reading the current airflow.cfg), so
commands, secrets backends and their precedence are exactly Airflow's. Otherwise only rules 1,
3 and 5 can apply, and this module applies them itself as Airflow's parser does (option names
case-sensitive, `%` interpolation, `$VAR`/`~` expansion): importing the package, the CLI and
the per-request path never pay seconds for importing Airflow. If Airflow cannot be imported,
an option that needs it is a `ConfigError`, never a silent fallback to the default.

Settings do not change under a running process: they are resolved once per process, on first
use, and kept (a `_cmd` runs once per process). `reset_settings()` forgets them (tests, or a
process that changed its environment on purpose).

Why not import Airflow for every option: `import airflow` costs seconds (16 s against 3.7 s for a
whole `nx1-connect keys list` on a loaded 2-core machine), which every CLI call would pay.
"""

from __future__ import annotations

import configparser
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from airflow_nx1_connect.core.errors import ConfigError

SECTION = "nx1_connect"

#: Option name -> (default as text, description). The provider info is built from this.
#: `{AIRFLOW_HOME}` in a default is filled in as Airflow does for provider defaults.
OPTIONS: dict[str, tuple[str, str]] = {
    "sql_alchemy_conn": (
        "sqlite:///{AIRFLOW_HOME}/nx1_connect.db",
        "SQLAlchemy URL of the snapshot store (empty also means the default, a SQLite file "
        "nx1_connect.db inside AIRFLOW_HOME). Use postgresql+psycopg://... in production. "
        "Sensitive: may be given as sql_alchemy_conn_cmd or sql_alchemy_conn_secret.",
    ),
    "snapshot_retention": ("5", "Published snapshots kept per data API; older ones are dropped."),
    "default_page_size": ("1000", "Rows per JSON page when a request gives no limit."),
    "max_page_size": ("10000", "Largest limit a request may ask for."),
    "max_key_days": ("365", "Longest validity, in days, of a data API key."),
    "cors_allowed_origins": (
        "",
        "Comma list of origins allowed to call the data API from a browser (CORS); "
        "* allows any. Empty: no CORS headers.",
    ),
    "default_rate_limit": (
        "0",
        "Requests per minute allowed to a data API key that sets no rate limit of its own; "
        "0 means no limit.",
    ),
    "read_timeout_s": (
        "30",
        "Seconds a data API read may take in the snapshot store (PostgreSQL statement and "
        "lock timeout, SQLite progress deadline); a read that exceeds it answers 503 with "
        "Retry-After.",
    ),
    "rate_limit_storage": (
        "memory://",
        "Where rate limit counters live: memory:// (per process) or e.g. "
        "redis://127.0.0.1:6379/0 to share them between processes. "
        "Sensitive: may be given as rate_limit_storage_cmd or rate_limit_storage_secret.",
    ),
    "csv_escape_formulas": (
        "False",
        "When True, CSV cells of TEXT columns that begin with =, +, -, @, a tab or a carriage "
        "return get a leading ' so that spreadsheets show them as text instead of running them "
        "as formulas. Turn it on when people open the CSV in Excel, LibreOffice or Google "
        "Sheets; leave it off (the default) for programs, which then get the data unchanged. "
        "Other formats never change.",
    ),
    "webhook_retry_delays": (
        "5,30,120,600,3600,21600",
        "Comma list of seconds to wait before each retry of a webhook delivery that failed "
        "(no 2xx within 10 s); after the last one the delivery is failed. Empty: no retries.",
    ),
    "webhook_allow_private_hosts": (
        "False",
        "When True, webhook URLs may point at loopback, private, link-local or unspecified "
        "addresses (e.g. a receiver on this machine). Off by default: such URLs are refused "
        "at creation and at delivery.",
    ),
    "webhook_history_days": (
        "30",
        "Days a finished webhook delivery (delivered or failed) and its event are kept for the "
        "deliveries page and listing; then a delivering process deletes them. Pending and "
        "retrying deliveries are kept until they finish.",
    ),
    "webhook_deliver_in_api_server": (
        "True",
        "When True, every api-server process starts a webhook delivery process of its own (a "
        "child at a lower CPU priority; they share the work). Set False when `nx1-connect "
        "webhooks deliver` runs apart.",
    ),
}

#: Options that Airflow treats as sensitive (hidden, masked in logs, `_cmd`/`_secret` allowed).
SENSITIVE: frozenset[str] = frozenset({"sql_alchemy_conn", "rate_limit_storage"})

_ENV_PREFIX = f"AIRFLOW__{SECTION.upper()}__"


def _env_name(option: str) -> str:
    return f"{_ENV_PREFIX}{option.upper()}"


def _expand(value: str) -> str:
    """`$VAR` and `~` expanded until nothing changes, as Airflow's `expand_env_var`."""
    while True:
        expanded = os.path.expanduser(os.path.expandvars(value))
        if expanded == value:
            return expanded
        value = expanded


def _airflow_home_text() -> str:
    return _expand(os.environ.get("AIRFLOW_HOME") or "~/airflow")


def airflow_home() -> Path:
    """The Airflow home folder (`$AIRFLOW_HOME`, default `~/airflow`)."""
    return Path(_airflow_home_text())


def _config_file() -> Path:
    explicit = os.environ.get("AIRFLOW_CONFIG")
    return Path(_expand(explicit)) if explicit else airflow_home() / "airflow.cfg"


def default_store_url() -> str:
    """The embedded default store: a SQLite file inside AIRFLOW_HOME."""
    return OPTIONS["sql_alchemy_conn"][0].format(AIRFLOW_HOME=_airflow_home_text())


def _default(option: str) -> str:
    return default_store_url() if option == "sql_alchemy_conn" else OPTIONS[option][0]


class _FileParser(configparser.ConfigParser):
    """Reads airflow.cfg as Airflow's parser does: `%` interpolation, case-kept option names."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def _read_config_file(path: Path) -> _FileParser | None:
    if not path.is_file():
        return None
    parser = _FileParser()
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read {path}: {exc}. Fix the file's syntax.") from None
    return parser


def _needs_airflow(option: str, file: _FileParser | None) -> bool:
    """Whether a `_CMD`/`_SECRET` or `_cmd`/`_secret` can decide `option` (rules 2 and 4)."""
    if option not in SENSITIVE:
        return False  # Airflow ignores them for an option that is not sensitive
    name = _env_name(option)
    if f"{name}_CMD" in os.environ or f"{name}_SECRET" in os.environ:
        return True
    if file is None or file.has_option(SECTION, option):
        return False
    return any(file.has_option(SECTION, f"{option}{suffix}") for suffix in ("_cmd", "_secret"))


def _airflow_values(path: Path, options: list[str]) -> dict[str, str]:
    """Ask Airflow's own parser, reading the current airflow.cfg, for `options`.

    The only Airflow import of the core, done here, lazily: Airflow runs the `_cmd`s and asks
    its configured secrets backend for the `_secret`s, exactly as for its own options.
    """
    names = ", ".join(options)
    try:
        from airflow.configuration import AirflowConfigParser, expand_env_var
    except ImportError:
        raise ConfigError(
            f"[{SECTION}] {names}: a _cmd or _secret is set, which only Airflow can resolve, "
            f"but Airflow cannot be imported. Set AIRFLOW__{SECTION.upper()}__<KEY> instead."
        ) from None
    try:
        parser = AirflowConfigParser()
        if path.is_file():
            parser.read(str(path))
        values: dict[str, str] = {}
        for option in options:
            value = parser.get(SECTION, option, fallback=None)
            airflow_default = parser.get_default_value(SECTION, option)
            if value is None or (
                airflow_default is not None and value == expand_env_var(str(airflow_default))
            ):
                # Airflow fills `{AIRFLOW_HOME}` in once, at its import; this is today's home.
                value = _default(option)
            values[option] = value
    except Exception as exc:  # a failing command, an unreachable secrets backend, ...
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ConfigError(f"[{SECTION}] {names}: Airflow could not resolve it: {detail}") from None
    return values


def _resolve() -> dict[str, str]:
    """Every option's text, by the rules in the module docstring."""
    path = _config_file()
    file = _read_config_file(path)
    values: dict[str, str] = {}
    for_airflow: list[str] = []
    for option in OPTIONS:
        name = _env_name(option)
        if name in os.environ:
            values[option] = _expand(os.environ[name])
        elif _needs_airflow(option, file):
            for_airflow.append(option)
        elif file is not None and file.has_option(SECTION, option):
            try:
                values[option] = _expand(file.get(SECTION, option))
            except configparser.Error as exc:
                raise ConfigError(
                    f"Cannot read [{SECTION}] {option} in {path}: {exc}. "
                    "Write a literal % as %%, as everywhere in airflow.cfg."
                ) from None
        else:
            values[option] = _default(option)
    if for_airflow:
        values.update(_airflow_values(path, for_airflow))
    return {option: value.strip() for option, value in values.items()}


def _whole_number(values: dict[str, str], option: str, minimum: int = 1) -> int:
    text = values[option]
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(
            f"[{SECTION}] {option} must be a whole number, got {text!r}; "
            f"set {_env_name(option)} to e.g. {OPTIONS[option][0]}."
        ) from None
    if value < minimum:
        raise ConfigError(f"[{SECTION}] {option} must be at least {minimum}, got {value}.")
    return value


_TRUE, _FALSE = ("true", "t", "1", "yes", "on"), ("false", "f", "0", "no", "off", "")


def _boolean(values: dict[str, str], option: str) -> bool:
    text = values[option].lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ConfigError(
        f"[{SECTION}] {option} must be True or False, got {values[option]!r}; "
        f"set {_env_name(option)} to True or False."
    )


def _seconds_list(values: dict[str, str], option: str) -> tuple[int, ...]:
    parts = [p.strip() for p in values[option].split(",") if p.strip()]
    if not all(p.isdigit() for p in parts):
        raise ConfigError(
            f"[{SECTION}] {option} must be a comma list of whole seconds, got "
            f"{values[option]!r}; set {_env_name(option)} to e.g. {OPTIONS[option][0]}."
        )
    return tuple(int(p) for p in parts)


@dataclass(frozen=True)
class Settings:
    """The resolved `[nx1_connect]` options."""

    sql_alchemy_conn: str
    snapshot_retention: int
    default_page_size: int
    max_page_size: int
    max_key_days: int
    cors_allowed_origins: tuple[str, ...] = ()
    default_rate_limit: int = 0
    rate_limit_storage: str = "memory://"
    read_timeout_s: int = 30
    csv_escape_formulas: bool = False
    webhook_retry_delays: tuple[int, ...] = (5, 30, 120, 600, 3600, 21600)
    webhook_allow_private_hosts: bool = False
    webhook_history_days: int = 30
    webhook_deliver_in_api_server: bool = True


def _settings(values: dict[str, str]) -> Settings:
    origins = (o.strip() for o in values["cors_allowed_origins"].split(","))
    settings = Settings(
        sql_alchemy_conn=values["sql_alchemy_conn"] or default_store_url(),
        snapshot_retention=_whole_number(values, "snapshot_retention"),
        default_page_size=_whole_number(values, "default_page_size"),
        max_page_size=_whole_number(values, "max_page_size"),
        max_key_days=_whole_number(values, "max_key_days"),
        cors_allowed_origins=tuple(dict.fromkeys(o for o in origins if o)),
        default_rate_limit=_whole_number(values, "default_rate_limit", minimum=0),
        rate_limit_storage=values["rate_limit_storage"] or OPTIONS["rate_limit_storage"][0],
        read_timeout_s=_whole_number(values, "read_timeout_s"),
        csv_escape_formulas=_boolean(values, "csv_escape_formulas"),
        webhook_retry_delays=_seconds_list(values, "webhook_retry_delays"),
        webhook_allow_private_hosts=_boolean(values, "webhook_allow_private_hosts"),
        webhook_history_days=_whole_number(values, "webhook_history_days"),
        webhook_deliver_in_api_server=_boolean(values, "webhook_deliver_in_api_server"),
    )
    if settings.default_page_size > settings.max_page_size:
        raise ConfigError(
            f"[{SECTION}] default_page_size ({settings.default_page_size}) must not exceed "
            f"max_page_size ({settings.max_page_size})."
        )
    return settings


_lock = threading.Lock()
_cached: Settings | None = None


def get_settings() -> Settings:
    """The resolved and validated options of this process: resolved on first use (never at
    import), then kept, as settings do not change under a running process."""
    global _cached
    settings = _cached
    if settings is None:
        with _lock:
            settings = _cached
            if settings is None:
                settings = _cached = _settings(_resolve())
    return settings


def reset_settings() -> None:
    """Forget the resolved options: the next `get_settings()` resolves them again."""
    global _cached
    with _lock:
        _cached = None
