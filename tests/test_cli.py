"""`nx1-connect` through its installed console script, on SQLite and PostgreSQL stores.

Every command of the contract, every user-error path with its exit code, `--json`
output, `--help` texts, and that neither a key nor its hash leaks into any output or log.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from click.testing import CliRunner

from airflow_nx1_connect import cli as cli_module
from airflow_nx1_connect.core import keys, store, writer
from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.core.errors import AuthError, Forbidden
from tests.helpers import KEY_LINE, RAN, nx1, ok, user_error


def _parallel(check, items) -> None:
    """Run independent CLI checks a few at a time (each is a separate process)."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        for future in [pool.submit(check, item) for item in items]:
            future.result()


@pytest.fixture
def sales(engine):
    """A data API `sales` with one published snapshot, and an empty one `ops`."""
    snaps.register_data_api(
        engine, name="sales", kind="ask", dag_id="shop", task_id="top", description="Top sellers"
    )
    writer.write_snapshot(
        engine,
        data_api="sales",
        columns=[snaps.Column("product", "TEXT"), snaps.Column("units", "INTEGER")],
        batches=[[("Espresso", 120), ("Bagel", 98)]],
        run_id="scheduled__1",
    )
    snaps.register_data_api(engine, name="ops", kind="engineer", dag_id="shop", task_id="ops")
    return engine


def _create(name: str = "sales", days: str = "30", *extra: str) -> tuple[str, str]:
    """Create a key through the CLI; return (secret, key id)."""
    res = ok("keys", "create", "--data-api", name, "--days", days, *extra)
    assert KEY_LINE.match(res.stdout), res.stdout[:12]
    key_id = re.search(r"Created key ([0-9a-f]{16}) ", res.stderr)
    assert key_id, res.stderr
    return res.stdout.strip(), key_id.group(1)


# ---------------------------------------------------------------------------------------
# db migrate
# ---------------------------------------------------------------------------------------


@pytest.mark.slow  # runs the console script many times
def test_db_migrate_creates_the_store_and_is_safe_to_repeat(store_env):
    # A store that was never migrated is reported as such.
    user_error("keys", "list", expect="Run: nx1-connect db migrate")
    for _ in range(2):
        res = ok("db", "migrate")
        assert res.stdout == ""
        assert f"at revision {store.head_revision()}" in res.stderr
        assert "postgres@" in res.stderr or "sqlite" in res.stderr
    assert json.loads(ok("keys", "list", "--json").stdout) == []
    assert json.loads(ok("apis", "list", "--json").stdout) == []


# ---------------------------------------------------------------------------------------
# keys
# ---------------------------------------------------------------------------------------


@pytest.mark.slow  # runs the console script many times
def test_key_lifecycle(sales):
    """create / list / extend / revoke / delete; no output but create's stdout has the key."""
    RAN.clear()
    secret, key_id = _create("sales", "30", "--description", "BI dashboard")
    # Another process (this test) accepts the key the CLI made.
    assert keys.verify_key(sales, secret, "sales").id == key_id

    listed = json.loads(ok("keys", "list", "--json").stdout)
    assert [k["key_id"] for k in listed] == [key_id]
    item = listed[0]
    assert item["prefix"] == secret[:12] and item["data_api"] == "sales"
    assert item["description"] == "BI dashboard" and item["status"] == "active"
    created = dt.datetime.fromisoformat(item["created"].replace("Z", "+00:00"))
    expires = dt.datetime.fromisoformat(item["expires"].replace("Z", "+00:00"))
    assert expires - created == dt.timedelta(days=30)
    assert item["last_used"] and item["created"].endswith("Z")

    table = ok("keys", "list", "--data-api", "sales").stdout.splitlines()
    assert table[0].split() == [
        "KEY", "ID", "PREFIX", "DATA", "API", "DESCRIPTION", "CREATED", "EXPIRES", "LAST",
        "USED", "STATUS", "SCOPES", "RATE", "LIMIT", "USAGE", "POLICY",
    ]  # fmt: skip
    assert table[1].split()[-2] == "0/0/0"  # requests today / last 7 days / in all
    assert table[1].split()[-1] == "-"  # no row filter, every column
    assert table[1].split()[:3] == [key_id, secret[:12], "sales"]
    assert table[1].index(secret[:12]) == table[0].index("PREFIX")  # aligned columns
    assert json.loads(ok("keys", "list", "--data-api", "ops", "--json").stdout) == []

    res = ok("keys", "extend", key_id, "--days", "5")
    assert res.stdout == "" and key_id in res.stderr
    assert keys.get_key(sales, key_id).expires_at == expires + dt.timedelta(days=5)

    res = ok("keys", "revoke", key_id)
    assert "revoked" in res.stderr
    with pytest.raises(AuthError) as info:  # refused at once by this other process
        keys.verify_key(sales, secret, "sales")
    assert info.value.reason == "revoked"
    assert json.loads(ok("keys", "list", "--json").stdout)[0]["status"] == "revoked"
    user_error("keys", "extend", key_id, "--days", "1", expect="revoked")

    ok("keys", "delete", key_id)
    assert json.loads(ok("keys", "list", "--json").stdout) == []
    user_error("keys", "delete", key_id, expect=f"No data API key has id '{key_id}'")

    assert RAN[0].stdout.strip() == secret and _leaks(RAN[0].stdout, secret)  # detector works
    rest = [RAN[0].stderr] + [text for res in RAN[1:] for text in (res.stdout, res.stderr)]
    assert len(rest) > 15 and _leaks("\n".join(rest), secret) == []


def test_keys_create_output_is_the_key_alone(sales):
    res = ok("keys", "create", "--data-api", "sales", "--days", "1")
    assert KEY_LINE.match(res.stdout)
    assert "not shown again" in res.stderr and res.stdout.strip() not in res.stderr
    secret = res.stdout.strip()
    assert keys.verify_key(sales, secret, "sales")
    assert secret[12:] not in ok("keys", "list").stdout


@pytest.mark.slow  # runs the console script many times
def test_user_errors_exit_1_with_one_line(sales):
    created = keys.create_key(sales, data_api="sales", days=1)
    kid = created.key.id
    unknown_key = "0123456789abcdef"
    cases = [
        (["keys", "create", "--data-api", "nope", "--days", "1"], "No data API is called 'nope'"),
        (["keys", "create", "--data-api", "sales", "--days", "0"], "from 1 to 365"),
        (["keys", "create", "--data-api", "sales", "--days=-1"], "from 1 to 365"),
        (["keys", "create", "--data-api", "sales", "--days", "366"], "from 1 to 365"),
        (["keys", "create", "--data-api", "sales", "--days", "abc"], "whole number of days"),
        (["keys", "create", "--data-api", "sales", "--days", "1.5"], "whole number of days"),
        (
            ["keys", "create", "--data-api", "sales", "--days", "1", "--description", "x" * 501],
            "at most 500",
        ),
        (["keys", "list", "--data-api", "nope"], "No data API is called 'nope'"),
        (["keys", "extend", unknown_key, "--days", "1"], f"No data API key has id '{unknown_key}'"),
        (["keys", "extend", kid, "--days", "0"], "from 1 to 365"),
        (["keys", "extend", kid, "--days", "366"], "from 1 to 365"),
        (["keys", "revoke", unknown_key], "No data API key has id"),
        (["keys", "delete", "not-a-key-id"], "No data API key has id"),
        (["apis", "delete", "nope"], "No data API is called 'nope'"),
        (["snapshots", "list", "nope"], "No data API is called 'nope'"),
    ]
    _parallel(lambda case: user_error(*case[0], expect=case[1]), cases)
    # Nothing was changed by the refused commands.
    assert [k.id for k in keys.list_keys(sales)] == [kid]
    assert keys.get_key(sales, kid) == created.key
    assert [a.name for a in snaps.list_data_apis(sales)] == ["ops", "sales"]


def test_max_key_days_is_read_from_the_configuration(sales):
    env = {"AIRFLOW__NX1_CONNECT__MAX_KEY_DAYS": "10"}
    user_error(
        "keys", "create", "--data-api", "sales", "--days", "11", expect="from 1 to 10", env=env
    )
    res = ok("keys", "create", "--data-api", "sales", "--days", "10", env=env)
    assert KEY_LINE.match(res.stdout)
    user_error(
        "keys", "list", expect="max_key_days must be a whole number",
        env={"AIRFLOW__NX1_CONNECT__MAX_KEY_DAYS": "ten"},
    )  # fmt: skip


def test_description_cannot_inject_terminal_controls(sales):
    _create("sales", "1", "--description", "a\x1b[31mred\tand\u202eflipped")
    table = ok("keys", "list").stdout
    assert "\x1b" not in table and "\u202e" not in table and "\t" not in table
    assert json.loads(ok("keys", "list", "--json").stdout)[0]["description"] == (
        "a\x1b[31mred\tand\u202eflipped"
    )


# ---------------------------------------------------------------------------------------
# apis and snapshots
# ---------------------------------------------------------------------------------------


@pytest.mark.slow  # runs the console script many times
def test_apis_and_snapshots_list(sales):
    items = json.loads(ok("apis", "list", "--json").stdout)
    assert [i["name"] for i in items] == ["ops", "sales"]
    sales_item = items[1]
    assert sales_item["kind"] == "ask" and sales_item["dag_id"] == "shop"
    assert sales_item["latest_snapshot"]["row_count"] == 2
    assert sales_item["latest_snapshot"]["run_id"] == "scheduled__1"
    assert items[0]["latest_snapshot"] is None
    table = ok("apis", "list").stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "KIND", "RULE"]
    assert table[2].split()[:3] == ["sales", "ask", "shop.top"]

    snapshot_items = json.loads(ok("snapshots", "list", "sales", "--json").stdout)
    latest = snaps.latest_snapshot(sales, "sales")
    assert [s["id"] for s in snapshot_items] == [latest.id]
    assert snapshot_items[0]["row_count"] == 2 and snapshot_items[0]["latest"] is True
    assert snapshot_items[0]["columns"] == ["product", "units"]
    assert latest.id in ok("snapshots", "list", "sales").stdout
    assert json.loads(ok("snapshots", "list", "ops", "--json").stdout) == []
    res = ok("snapshots", "list", "ops")
    assert res.stdout == "" and "no published snapshot" in res.stderr


@pytest.mark.slow  # runs the console script many times
def test_apis_delete_removes_keys_and_snapshots(sales):
    secret, _ = _create("sales", "1")
    other, other_id = _create("ops", "1")
    table = snaps.latest_snapshot(sales, "sales").table_name
    res = ok("apis", "delete", "sales")  # non-interactive, exactly as in the contract
    assert res.stdout == "" and "1 key(s) and 1 snapshot(s)" in res.stderr
    assert [i["name"] for i in json.loads(ok("apis", "list", "--json").stdout)] == ["ops"]
    assert [k["key_id"] for k in json.loads(ok("keys", "list", "--json").stdout)] == [other_id]
    with pytest.raises(AuthError):
        keys.verify_key(sales, secret, "sales")
    assert keys.verify_key(sales, other, "ops")
    import sqlalchemy as sa

    assert table not in sa.inspect(sales).get_table_names()
    user_error("snapshots", "list", "sales", expect="No data API is called 'sales'")


# ---------------------------------------------------------------------------------------
# Store problems, usage errors, help, startup
# ---------------------------------------------------------------------------------------


@pytest.mark.slow  # runs the console script many times
def test_unreachable_store_is_one_line(tmp_path):
    for url in ("postgresql://postgres@127.0.0.1:9/nx1", "sqlite:////proc/nx1-nope/store.db"):
        env = {"AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN": url}
        for args in (["keys", "list"], ["db", "migrate"], ["apis", "list", "--json"]):
            line = user_error(*args, expect="", env=env)
            assert "cannot be reached" in line or "Cannot open the snapshot store" in line


USAGE_ERRORS = [
    ["keys", "create", "--data-api", "sales"],
    ["keys", "create", "--days", "3"],
    ["keys", "frobnicate"],
    ["nope"],
    ["keys", "list", "--bogus"],
    ["keys", "extend", "0123456789abcdef"],
    ["snapshots", "list"],
    ["apis", "delete"],
]


def test_usage_errors_exit_2_without_traceback(tmp_path):
    env = {"AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 's.db'}"}

    def check(args):
        res = nx1(*args, env=env)
        assert res.returncode == 2 and res.stdout == "", args
        assert res.stderr.splitlines()[-1].startswith("Error: ") and "Traceback" not in res.stderr

    _parallel(check, USAGE_ERRORS)


COMMANDS = {
    (): "NX1 Connect",
    ("db",): "snapshot store",
    ("db", "migrate"): "safe to run again",
    ("apis",): "data APIs",
    ("apis", "list"): "--json",
    ("apis", "delete"): "keys and snapshots",
    ("keys",): "data API keys",
    ("keys", "create"): "--description",
    ("keys", "list"): "never shows a key",
    ("keys", "extend"): "max_key_days",
    ("keys", "revoke"): "refused at once",
    ("keys", "delete"): "KEY_ID",
    ("snapshots",): "snapshots",
    ("snapshots", "list"): "newest first",
}


def test_help_on_every_command(tmp_path):
    env = {"AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN": "postgresql://postgres@127.0.0.1:9/none"}

    def check(item):
        command, expect = item
        res = ok(*command, "--help", env=env)  # no store needed for help
        assert expect.lower() in " ".join(res.stdout.split()).lower(), (command, res.stdout)

    _parallel(check, list(COMMANDS.items()))
    assert "--days N" in ok("keys", "create", "-h", env=env).stdout
    assert re.search(r"\d+\.\d+", ok("--version", env=env).stdout)


def test_the_cli_never_imports_airflow(engine):
    """Key, API and snapshot commands start fast: no Airflow, Flask or FastAPI import.

    (`db migrate` is left out: its `after_migrate` hook may set up Airflow roles.)
    """
    snaps.register_data_api(engine, name="sales", kind="ask")
    code = (
        "import sys\n"
        "from airflow_nx1_connect import cli\n"
        "for args in (['keys', 'list', '--json'], ['apis', 'list'],\n"
        "             ['snapshots', 'list', 'sales'],\n"
        "             ['keys', 'create', '--data-api', 'sales', '--days', '1']):\n"
        "    cli.cli(args, standalone_mode=False)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('airflow', 'flask', 'fastapi')]\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


# ---------------------------------------------------------------------------------------
# No leaks
# ---------------------------------------------------------------------------------------


def _leaks(text: str, secret: str) -> list[str]:
    digest = hashlib.sha256(secret.encode()).hexdigest()
    found = ["hash"] if digest.lower() in text.lower() else []
    body = secret[12:]
    found += [f"secret@{i}" for i in range(len(body) - 7) if body[i : i + 8] in text][:1]
    found += [f"hash@{i}" for i in range(len(digest) - 11) if digest[i : i + 12] in text][:1]
    return found


def test_no_secret_or_hash_in_logs_of_a_cli_cycle(sales, caplog):
    """The same cycle in-process, with every logger (SQLAlchemy's too) at DEBUG."""
    loggers = [logging.getLogger()] + [
        logging.getLogger(n) for n in [*logging.root.manager.loggerDict, "sqlalchemy.engine"]
    ]
    levels = {lg.name: lg.level for lg in loggers}
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    texts: list[str] = []
    try:
        res = runner.invoke(
            cli_module.cli, ["keys", "create", "--data-api", "sales", "--days", "2"]
        )
        assert res.exit_code == 0, res.output
        secret = res.stdout.strip()
        assert KEY_LINE.match(res.stdout)
        texts.append(res.stderr)
        key_id = keys.list_keys(sales)[0].id
        keys.verify_key(sales, secret, "sales")
        with pytest.raises(Forbidden):
            keys.verify_key(sales, secret, "ops")
        for args in (
            ["keys", "list"],
            ["keys", "list", "--json"],
            ["keys", "revoke", key_id],
            ["keys", "extend", key_id, "--days", "1"],  # refused: revoked
            ["keys", "delete", key_id],
        ):
            res = runner.invoke(cli_module.cli, args)
            texts += [res.stdout, res.stderr]
        with pytest.raises(AuthError):
            keys.verify_key(sales, secret, "sales")
    finally:
        for lg in loggers:
            lg.setLevel(levels[lg.name])
    logged = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert "sqlalchemy.engine" in logged and key_id in logged  # logging really was on
    assert _leaks("\n".join([logged, caplog.text, *texts]), secret) == []


@pytest.mark.slow  # runs the console script many times
def test_keys_carry_scopes_and_rate_limits(sales):
    secret, key_id = _create("sales", "30", "--scope", "run", "--rate-limit", "120")
    _plain_secret, plain_id = _create("sales", "30")
    items = {i["key_id"]: i for i in json.loads(ok("keys", "list", "--json").stdout)}
    assert (items[key_id]["scopes"], items[key_id]["rate_limit"]) == (["read", "run"], 120)
    assert (items[plain_id]["scopes"], items[plain_id]["rate_limit"]) == (["read"], None)
    table = ok("keys", "list").stdout
    assert "SCOPES" in table and "read,run" in table and "RATE LIMIT" in table
    record = keys.verify_key(sales, secret, "sales")
    assert (record.scopes, record.rate_limit) == (("read", "run"), 120)
    user_error(
        "keys",
        "create",
        "--data-api",
        "sales",
        "--days",
        "1",
        "--rate-limit",
        "-1",
        expect="rate limit must be a whole number",
    )
    res = nx1("keys", "create", "--data-api", "sales", "--days", "1", "--scope", "write")
    assert res.returncode == 2 and "Invalid value for '--scope'" in res.stderr
