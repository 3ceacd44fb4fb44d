"""`[nx1_connect]` resolved as Airflow resolves its own sensitive options.

`sql_alchemy_conn` from a `_cmd` or a `_secret` (Airflow's local-filesystem secrets backend), set
in the environment or in airflow.cfg, reaches a real PostgreSQL store: through the installed
console script in a fresh AIRFLOW_HOME, and in-process. The plain rules (environment,
airflow.cfg, defaults), which the module applies without importing Airflow, are checked against
Airflow's own parser; `airflow config get-value` shows the resolved default.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_nx1_connect.core import engines, store
from airflow_nx1_connect.core import settings as settings_module
from airflow_nx1_connect.core.errors import ConfigError
from airflow_nx1_connect.core.settings import OPTIONS, SECTION, get_settings, reset_settings
from tests.conftest import drop_pg_schema, make_pg_schema, pg_admin_url

BIN = Path(sys.executable).parent
NX1 = str(BIN / "nx1-connect") if (BIN / "nx1-connect").exists() else shutil.which("nx1-connect")
AIRFLOW = str(BIN / "airflow") if (BIN / "airflow").exists() else shutil.which("airflow")
LOCAL_FS = "airflow.secrets.local_filesystem.LocalFilesystemBackend"
STORE_TABLES = {"nx1_data_apis", "nx1_snapshots", "nx1_api_keys", "nx1_alembic_version"}


@pytest.fixture
def clean_env(monkeypatch):
    """No `[nx1_connect]` or `[secrets]` variable of the session leaks into a test."""
    for key in list(os.environ):
        if key.startswith(("AIRFLOW__NX1_CONNECT__", "AIRFLOW__SECRETS__")):
            monkeypatch.delenv(key)
    monkeypatch.delenv("AIRFLOW_CONFIG", raising=False)
    yield
    engines.dispose_engines()


@pytest.fixture
def pg():
    """A fresh, empty PostgreSQL schema: (name, store URL whose search_path is it)."""
    schema, url = make_pg_schema()
    try:
        yield schema, url
    finally:
        engines.dispose_engines()
        drop_pg_schema(schema)


def tables_in(schema: str) -> set[str]:
    import psycopg

    with psycopg.connect(pg_admin_url(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
    return {row[0] for row in rows}


def subprocess_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment without any AIRFLOW_* variable, in a fresh AIRFLOW_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    home.mkdir(exist_ok=True)
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False", **extra)
    return env


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=240)
    assert res.returncode == 0, (args, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    return res


def write_configs(path: Path, **configs: str) -> Path:
    """A config file for LocalFilesystemBackend(configs_file_path=...)."""
    path.write_text(json.dumps(configs), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------
# Through the installed console script, in a fresh AIRFLOW_HOME
# ---------------------------------------------------------------------------------------


@pytest.mark.slow  # spawns processes
def test_cli_uses_the_store_of_an_environment_cmd(pg, tmp_path):
    """`AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN_CMD` is run, and its output is the store."""
    schema, url = pg
    home = tmp_path / "home"
    env = subprocess_env(home, AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN_CMD=f"echo {url}")
    res = run(NX1, "db", "migrate", env=env)
    assert "postgresql" in res.stderr and schema in res.stderr
    assert STORE_TABLES <= tables_in(schema)
    assert json.loads(run(NX1, "keys", "list", "--json", env=env).stdout) == []
    assert not (home / "nx1_connect.db").exists()  # not the silent SQLite fallback


@pytest.mark.slow  # spawns processes
def test_cli_uses_the_store_of_a_secret_in_airflow_cfg(pg, tmp_path):
    """`sql_alchemy_conn_secret` in airflow.cfg, looked up in the `[secrets]` backend there."""
    schema, url = pg
    home = tmp_path / "home"
    env = subprocess_env(home)
    configs = write_configs(tmp_path / "configs.json", nx1_store=url)
    (home / "airflow.cfg").write_text(
        f"[secrets]\nbackend = {LOCAL_FS}\n"
        f'backend_kwargs = {{"configs_file_path": "{configs}"}}\n\n'
        f"[{SECTION}]\nsql_alchemy_conn_secret = nx1_store\n",
        encoding="utf-8",
    )
    res = run(NX1, "db", "migrate", env=env)
    assert schema in res.stderr
    assert STORE_TABLES <= tables_in(schema)
    assert json.loads(run(NX1, "keys", "list", "--json", env=env).stdout) == []
    assert not (home / "nx1_connect.db").exists()


@pytest.mark.slow  # spawns processes
def test_airflow_config_get_value_shows_the_resolved_default(tmp_path):
    home = tmp_path / "home"
    res = run(AIRFLOW, "config", "get-value", SECTION, "sql_alchemy_conn", env=subprocess_env(home))
    assert res.stdout.strip() == f"sqlite:///{home}/nx1_connect.db"


@pytest.mark.slow  # spawns processes
def test_plain_values_do_not_import_airflow(tmp_path):
    """Environment and a plain airflow.cfg are read without importing Airflow (seconds)."""
    home = tmp_path / "home"
    env = subprocess_env(home, AIRFLOW__NX1_CONNECT__MAX_KEY_DAYS="30")
    (home / "airflow.cfg").write_text(f"[{SECTION}]\nmax_page_size = 20000\n", encoding="utf-8")
    code = (
        "import sys\n"
        "from airflow_nx1_connect.core.settings import get_settings\n"
        "s = get_settings()\n"
        "assert (s.max_key_days, s.max_page_size) == (30, 20000), s\n"
        f"assert s.sql_alchemy_conn == 'sqlite:///{home}/nx1_connect.db', s\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('airflow', 'flask', 'fastapi')]\n"
        "assert not bad, bad\n"
    )
    run(sys.executable, "-c", code, env=env)


# ---------------------------------------------------------------------------------------
# In-process: every source Airflow has, and its precedence
# ---------------------------------------------------------------------------------------


def migrated_schema_of(url: str, schema: str) -> None:
    """The configured store is `url`, and migrating it creates the tables in `schema`."""
    assert get_settings().sql_alchemy_conn == url
    store.migrate(engines.get_engine())
    assert STORE_TABLES <= tables_in(schema)


def test_environment_secret_with_the_local_filesystem_backend(clean_env, pg, tmp_path, monkeypatch):
    schema, url = pg
    configs = write_configs(tmp_path / "configs.json", nx1_store=url)
    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND", LOCAL_FS)
    monkeypatch.setenv(
        "AIRFLOW__SECRETS__BACKEND_KWARGS", json.dumps({"configs_file_path": str(configs)})
    )
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN_SECRET", "nx1_store")
    migrated_schema_of(url, schema)


def test_airflow_cfg_cmd(clean_env, pg, tmp_path, monkeypatch):
    """A `_cmd` in airflow.cfg; `%` is written `%%` there, as for every airflow.cfg value."""
    schema, url = pg
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    (tmp_path / "airflow.cfg").write_text(
        f"[{SECTION}]\nsql_alchemy_conn_cmd = echo {url.replace('%', '%%')}\n", encoding="utf-8"
    )
    migrated_schema_of(url, schema)


def test_precedence_is_airflows(clean_env, tmp_path, monkeypatch):
    """Env, env _CMD, env _SECRET, airflow.cfg, its _cmd, its _secret, defaults: in that order."""
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    configs = write_configs(
        tmp_path / "configs.json",
        env_secret="sqlite:///env-secret",
        file_secret="sqlite:///file-secret",
    )
    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND", LOCAL_FS)
    monkeypatch.setenv(
        "AIRFLOW__SECRETS__BACKEND_KWARGS", json.dumps({"configs_file_path": str(configs)})
    )
    cfg = tmp_path / "airflow.cfg"
    sources = [
        ("env", "AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN", "sqlite:///env"),
        ("env", "AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN_CMD", "echo sqlite:///env-cmd"),
        ("env", "AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN_SECRET", "env_secret"),
        ("file", "sql_alchemy_conn", "sqlite:///file"),
        ("file", "sql_alchemy_conn_cmd", "echo sqlite:///file-cmd"),
        ("file", "sql_alchemy_conn_secret", "file_secret"),
    ]
    expected = ["env", "env-cmd", "env-secret", "file", "file-cmd", "file-secret"]
    # All sources set; remove the winner each round and the next one must win.
    for kind, name, value in sources:
        if kind == "env":
            monkeypatch.setenv(name, value)
    file_lines = {name: value for kind, name, value in sources if kind == "file"}
    for (kind, name, _value), winner in zip(sources, expected, strict=True):
        cfg.write_text(f"[{SECTION}]\n" + "".join(f"{k} = {v}\n" for k, v in file_lines.items()))
        reset_settings()  # a changed airflow.cfg is read by a new process
        assert get_settings().sql_alchemy_conn == f"sqlite:///{winner}", name
        if kind == "env":
            monkeypatch.delenv(name)
        else:
            del file_lines[name]
    cfg.write_text(f"[{SECTION}]\n")
    reset_settings()
    assert get_settings().sql_alchemy_conn == f"sqlite:///{tmp_path / 'nx1_connect.db'}"


def test_rate_limit_storage_is_sensitive_too(clean_env, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.setenv(
        "AIRFLOW__NX1_CONNECT__RATE_LIMIT_STORAGE_CMD", "echo redis://:pw@127.0.0.1:6379/0"
    )
    assert get_settings().rate_limit_storage == "redis://:pw@127.0.0.1:6379/0"


def test_a_command_runs_once_per_process(clean_env, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    counter = tmp_path / "runs.txt"
    monkeypatch.setenv(
        "AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN_CMD",
        f"sh -c 'echo run >> {counter}; echo sqlite:///from-cmd.db'",
    )
    for _ in range(3):
        assert get_settings().sql_alchemy_conn == "sqlite:///from-cmd.db"
    assert counter.read_text().splitlines() == ["run"]
    reset_settings()  # what a new process does
    assert get_settings().sql_alchemy_conn == "sqlite:///from-cmd.db"
    assert counter.read_text().splitlines() == ["run", "run"]


def test_a_failing_command_is_a_config_error(clean_env, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN_CMD", "false")
    with pytest.raises(ConfigError, match=r"\[nx1_connect\] sql_alchemy_conn: Airflow could not"):
        get_settings()


def test_without_airflow_a_cmd_is_an_error_not_the_default(clean_env, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.setitem(sys.modules, "airflow.configuration", None)  # import fails
    assert get_settings().sql_alchemy_conn == f"sqlite:///{tmp_path / 'nx1_connect.db'}"
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN_CMD", "echo sqlite:///x.db")
    with pytest.raises(ConfigError, match="Airflow cannot be imported"):
        get_settings()


@pytest.mark.slow  # spawns processes
def test_airflow_treats_the_store_url_and_rate_limit_storage_as_sensitive(tmp_path):
    from airflow.configuration import AIRFLOW_HOME, AirflowConfigParser

    parser = AirflowConfigParser()
    assert {(SECTION, "sql_alchemy_conn"), (SECTION, "rate_limit_storage")} <= (
        parser.sensitive_config_values
    )
    assert (SECTION, "max_key_days") not in parser.sensitive_config_values
    assert parser.get_default_value(SECTION, "sql_alchemy_conn") == (
        f"sqlite:///{AIRFLOW_HOME}/nx1_connect.db"
    )


# ---------------------------------------------------------------------------------------
# The plain rules, applied without Airflow, agree with Airflow's own parser
# ---------------------------------------------------------------------------------------

PLAIN_CASES = {
    "values": f"[{SECTION}]\nmax_key_days = 30\ncors_allowed_origins = https://a.example\n",
    "percent": f"[{SECTION}]\nsql_alchemy_conn = postgresql://u:p%%40ss@h/db?x=%%3D\n",
    "interpolation": f"[{SECTION}]\nbase = 7\nsnapshot_retention = %(base)s\n",
    "env vars": f"[{SECTION}]\nsql_alchemy_conn = sqlite:///$NX1_TEST_DIR/${{NX1_TEST_DIR}}.db\n",
    "home": f"[{SECTION}]\nsql_alchemy_conn = sqlite:///~/nx1.db\n",
    "upper case name": f"[{SECTION}]\nMAX_KEY_DAYS = 3\n",
    "default section": f"[DEFAULT]\nmax_page_size = 20000\n[{SECTION}]\n",
    "empty": f"[{SECTION}]\nsql_alchemy_conn =\nrate_limit_storage =\n",
    "no section": "[core]\nload_examples = False\n",
    "value beats _cmd": f"[{SECTION}]\nsql_alchemy_conn = sqlite:///v\nsql_alchemy_conn_cmd = no\n",
    "not sensitive: no _cmd": f"[{SECTION}]\nmax_key_days_cmd = echo 7\n",
    "no file": None,
}


@pytest.mark.parametrize("case", PLAIN_CASES)
def test_plain_rules_agree_with_airflows_parser(case, clean_env, tmp_path, monkeypatch):
    from airflow.configuration import AirflowConfigParser

    cfg = tmp_path / "airflow.cfg"
    text = PLAIN_CASES[case]
    if text is not None:
        cfg.write_text(text, encoding="utf-8")
    monkeypatch.setenv("AIRFLOW_CONFIG", str(cfg))  # AIRFLOW_HOME stays Airflow's
    monkeypatch.setenv("NX1_TEST_DIR", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__DEFAULT_PAGE_SIZE", "${NX1_TEST_PAGE}")
    monkeypatch.setenv("NX1_TEST_PAGE", "500")
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__MAX_PAGE_SIZE_CMD", "echo 20000")  # not sensitive
    asked: list[list[str]] = []
    real = settings_module._airflow_values
    monkeypatch.setattr(
        settings_module,
        "_airflow_values",
        lambda path, opts: asked.append(opts) or real(path, opts),
    )
    ours = settings_module._resolve()
    assert asked == []  # decided without Airflow

    parser = AirflowConfigParser()
    if text is not None:
        parser.read(str(cfg))
    theirs = {option: parser.get(SECTION, option).strip() for option in OPTIONS}
    assert ours == theirs
