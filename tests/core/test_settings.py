"""`[nx1_connect]` settings: defaults, environment overrides, airflow.cfg, validation.

`_cmd`, `_secret` and the agreement with Airflow's own parser: test_settings_airflow.py.
"""

from __future__ import annotations

import os

import pytest

from airflow_nx1_connect.core.errors import ConfigError
from airflow_nx1_connect.core.settings import get_settings


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("AIRFLOW_CONFIG", raising=False)
    for key in list(os.environ):
        if key.startswith(("AIRFLOW__NX1_CONNECT__", "AIRFLOW__SECRETS__")):
            monkeypatch.delenv(key)
    return tmp_path


def test_defaults(home):
    s = get_settings()
    assert s.sql_alchemy_conn == f"sqlite:///{home / 'nx1_connect.db'}"
    assert (s.snapshot_retention, s.default_page_size, s.max_page_size, s.max_key_days) == (
        5,
        1000,
        10000,
        365,
    )
    assert (s.cors_allowed_origins, s.default_rate_limit, s.rate_limit_storage) == (
        (),
        0,
        "memory://",
    )


def test_empty_values_mean_the_defaults(home, monkeypatch):
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN", "")
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__RATE_LIMIT_STORAGE", " ")
    s = get_settings()
    assert s.sql_alchemy_conn == f"sqlite:///{home / 'nx1_connect.db'}"
    assert s.rate_limit_storage == "memory://"


def test_version_2_options(home, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW__NX1_CONNECT__CORS_ALLOWED_ORIGINS",
        " https://app.example.com , *,https://app.example.com,, ",
    )
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__DEFAULT_RATE_LIMIT", "600")
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__RATE_LIMIT_STORAGE", "redis://127.0.0.1:6379/0")
    s = get_settings()
    assert s.cors_allowed_origins == ("https://app.example.com", "*")
    assert (s.default_rate_limit, s.rate_limit_storage) == (600, "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__DEFAULT_RATE_LIMIT", "0")
    assert get_settings().default_rate_limit == 0


def test_environment_values_are_expanded_as_airflow_does(home, monkeypatch):
    """Airflow expands `$VAR` and `~` in AIRFLOW__<SECTION>__<KEY> values; so do we."""
    monkeypatch.setenv("NX1_TEST_STORE_DIR", str(home / "stores"))
    monkeypatch.setenv(
        "AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN", "sqlite:///$NX1_TEST_STORE_DIR/a.db"
    )
    assert get_settings().sql_alchemy_conn == f"sqlite:///{home / 'stores' / 'a.db'}"


def test_environment_overrides_are_read_when_used(home, monkeypatch):
    get_settings()
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__SNAPSHOT_RETENTION", "2")
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__MAX_KEY_DAYS", "30")
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN", "postgresql://x@h/db")
    s = get_settings()
    assert (s.snapshot_retention, s.max_key_days, s.sql_alchemy_conn) == (
        2,
        30,
        "postgresql://x@h/db",
    )


def test_airflow_cfg_is_read_and_environment_wins(home, monkeypatch):
    (home / "airflow.cfg").write_text("[nx1_connect]\ndefault_page_size = 50\nmax_page_size = 70\n")
    assert get_settings().default_page_size == 50
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__DEFAULT_PAGE_SIZE", "60")
    s = get_settings()
    assert (s.default_page_size, s.max_page_size) == (60, 70)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("SNAPSHOT_RETENTION", "zero", "whole number"),
        ("MAX_KEY_DAYS", "0", "at least 1"),
        ("DEFAULT_PAGE_SIZE", "20000", "must not exceed"),
        ("DEFAULT_RATE_LIMIT", "-1", "at least 0"),
        ("DEFAULT_RATE_LIMIT", "many", "whole number"),
    ],
)
def test_bad_values_say_what_to_do(home, monkeypatch, key, value, message):
    monkeypatch.setenv(f"AIRFLOW__NX1_CONNECT__{key}", value)
    with pytest.raises(ConfigError, match=message):
        get_settings()


def test_settings_are_kept_until_reset(home):
    """Resolved once per process: a changed airflow.cfg is seen after `reset_settings()` (what a
    new process does), not on every call."""
    from airflow_nx1_connect.core.settings import reset_settings

    assert get_settings().max_page_size == 10000
    assert get_settings() is get_settings()
    (home / "airflow.cfg").write_text("[nx1_connect]\nmax_page_size = 3000\n")
    assert get_settings().max_page_size == 10000
    reset_settings()
    assert get_settings().max_page_size == 3000
