"""`nx1-connect`: manage the snapshot store, data APIs and data API keys from the shell.

Built on click. stdout carries only data (a new key, a table, JSON); messages go to
stderr. User errors exit 1 with one line on stderr; never a traceback. Airflow is imported
only by `db migrate` (the FAB roles); `apis create` asks Airflow about the rule task in a
child process. The store is found through `core.settings`, so the commands start fast.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from airflow_nx1_connect.cli_support import (
    _actor,
    _engine,
    _Group,
    _note,
    _print_json,
    _print_table,
    json_option,
)
from airflow_nx1_connect.core import engines, key_options
from airflow_nx1_connect.core.clock import iso

days_option = click.option(
    "--days",
    required=True,
    metavar="N",
    help="Validity in whole days, from 1 to [nx1_connect] max_key_days (default 365).",
)


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="airflow-nx1-connect")
def cli() -> None:
    """NX1 Connect: scheduled SQL rules served as read-only data APIs.

    The snapshot store is [nx1_connect] sql_alchemy_conn (environment variable
    AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN); by default a SQLite file in AIRFLOW_HOME.

    Data (keys, tables, JSON) goes to stdout, messages to stderr. Exit code 0 on
    success, 1 on an error (one line on stderr), 2 on a usage error.
    """


@cli.group(cls=_Group)
def db() -> None:
    """Create or upgrade the snapshot store."""


def after_migrate(engine: Any) -> None:
    """Extra setup run by `db migrate` once the store is at the newest schema.

    The one place to add more idempotent setup steps. Only this command may import Airflow
    here; every other command stays Airflow-free (`apis create` asks Airflow about the rule
    task in a child process). It creates the admin view's FAB roles `nx1_ask` and `nx1_engineer`
    when Airflow uses the FAB auth manager (the api-server also creates them when it
    starts); a failure there is reported, not fatal, because the store is migrated by then.
    """
    try:
        from airflow.configuration import conf

        if "FabAuthManager" not in conf.get("core", "auth_manager", fallback=""):
            return  # roles are a FAB concept
        from airflow_nx1_connect.web.roles import ensure_roles

        ensure_roles()
    except Exception as exc:  # Airflow not set up yet: the api-server will create them
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        _note(
            f"Note: the nx1_ask / nx1_engineer roles were not created now ({first[:200]}); "
            "run `airflow db migrate` first, or let the api-server create them when it starts."
        )


@db.command("migrate")
def db_migrate() -> None:
    """Create or upgrade the snapshot store to the newest schema; safe to run again.

    Also removes snapshots left half-written by killed runs. With Airflow's FAB auth
    manager it also creates the roles nx1_ask and nx1_engineer.
    """
    import logging

    from airflow_nx1_connect.core import store, writer

    logging.getLogger("alembic").setLevel(logging.WARNING)  # one summary line instead
    engine = engines.get_engine()
    store.migrate(engine)
    removed = writer.cleanup_abandoned(engine)
    if removed:
        _note(f"Removed {removed} snapshot(s) left half-written by killed runs.")
    after_migrate(engine)
    where = engine.url.render_as_string(hide_password=True)
    _note(f"Snapshot store {where} is at revision {store.current_revision(engine)}.")


# -- apis -------------------------------------------------------------------------------


@cli.group(cls=_Group)
def apis() -> None:
    """Create, list and delete data APIs (a rule task's first run also creates one)."""


def _api_dict(engine: Any, api: Any) -> dict[str, Any]:
    from airflow_nx1_connect.core import control

    return control.data_api_dict(engine, api)


@apis.command("list")
@json_option
def apis_list(as_json: bool) -> None:
    """List data APIs: kind, rule task, latest snapshot and its row count."""
    from airflow_nx1_connect.core import snapshots

    engine = _engine()
    items = [_api_dict(engine, api) for api in snapshots.list_data_apis(engine)]
    if as_json:
        _print_json(items)
        return
    if not items:
        _note("No data APIs yet. A data API appears when its rule task first runs.")
        return
    _print_table(
        ["NAME", "KIND", "RULE TASK", "LATEST SNAPSHOT", "PUBLISHED", "ROWS"],
        [
            [
                i["name"],
                i["kind"],
                f"{i['dag_id']}.{i['task_id']}" if i["dag_id"] else None,
                (i["latest_snapshot"] or {}).get("id"),
                (i["latest_snapshot"] or {}).get("published_at"),
                (i["latest_snapshot"] or {}).get("row_count"),
            ]
            for i in items
        ],
    )


@apis.command("delete")
@click.argument("name")
def apis_delete(name: str) -> None:
    """Delete data API NAME with all its keys and snapshots (no confirmation asked).

    Its keys stop working at once. A rule task that runs again creates it anew.
    """
    from airflow_nx1_connect.core import control

    counts = control.delete_data_api(_engine(), name, actor=_actor())
    _note(
        f"Deleted data API {name!r} with {counts['keys']} key(s) and "
        f"{counts['snapshots']} snapshot(s)."
    )


@apis.command("create")
@click.argument("name")
@click.option(
    "--kind", required=True, type=click.Choice(["ask", "engineer"]), help="The rule's kind."
)
@click.option("--dag", "dag_id", required=True, metavar="DAG_ID", help="The rule's DAG.")
@click.option("--task", "task_id", required=True, metavar="TASK_ID", help="The rule's task.")
@click.option("--description", metavar="TEXT", help="What the data API serves (optional).")
@click.option(
    "--key-days",
    metavar="N",
    help="Validity of the first key in days (default 30, at most [nx1_connect] max_key_days).",
)
def apis_create(
    name: str,
    kind: str,
    dag_id: str,
    task_id: str,
    description: str | None,
    key_days: str | None,
) -> None:
    """Create data API NAME ahead of its rule's first run, with a first key.

    The data API is bound to task TASK_ID of DAG DAG_ID, which must be a rule task of that
    kind (AskRuleOperator or EngineerRuleOperator) with data_api=NAME, in Airflow's
    serialized DAGs or, before Airflow has parsed the DAG, in its DAG folder. That task's
    first run publishes into it (any other task using the name is refused). Until then
    reads answer 404. The first key alone goes to stdout, this once; everything else to
    stderr.
    """
    from airflow_nx1_connect.core import control
    from airflow_nx1_connect.rule_tasks import find_in_child

    _api, created = control.create_data_api(
        _engine(),
        name=name,
        kind=kind,
        dag_id=dag_id,
        task_id=task_id,
        description=description,
        key_days=key_days,
        rules=find_in_child,
        actor=_actor(),
    )
    click.echo(created.secret)
    k = created.key
    _note(
        f"Created {kind} data API {name!r} for task {task_id!r} of DAG {dag_id!r}, and key "
        f"{k.id} (prefix {k.prefix}), expires {iso(k.expires_at)}."
    )
    _note("Store the key now: it is not shown again.")


# -- keys -------------------------------------------------------------------------------


@cli.group(cls=_Group)
def keys() -> None:
    """Create and manage data API keys (each key reads one data API)."""


@keys.command("create")
@click.option("--data-api", "data_api", required=True, metavar="NAME", help="The data API.")
@days_option
@click.option("--description", metavar="TEXT", help="What the key is for (optional).")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(["run"]),
    help="Also let the key trigger the rule's runs (POST .../runs). Every key may read.",
)
@click.option(
    "--rate-limit",
    metavar="N",
    help="Requests per minute this key may make (0 = no limit; default: "
    "[nx1_connect] default_rate_limit).",
)
@click.option(
    "--where",
    "row_filter",
    multiple=True,
    metavar="TERM",
    help="Row filter: the key reads only rows matching TERM, <column>=<op>.<value> as in the "
    "API's where. parameters (e.g. 'region=eq.EU'); repeat to AND several.",
)
@click.option(
    "--columns",
    metavar="A,B",
    help="Column allowlist: the key sees only these columns (comma list; default: all).",
)
def keys_create(
    data_api: str,
    days: str,
    description: str | None,
    scopes: tuple[str, ...],
    rate_limit: str | None,
    row_filter: tuple[str, ...],
    columns: str | None,
) -> None:
    """Create a key for one data API and print it on stdout, this once.

    The key alone goes to stdout (e.g. KEY=$(nx1-connect keys create ...)); its id,
    prefix and expiry go to stderr. Only a hash is stored: the key cannot be shown again.
    With --where and --columns the key is held to those rows and columns in every answer
    (fixed now, kept by a rotation); they are checked against the data API's latest
    snapshot.
    """
    from airflow_nx1_connect.core import control

    created = control.create_key(
        _engine(),
        data_api=data_api,
        days=key_options.validate_days(days),
        description=description,
        scopes=scopes,
        rate_limit=key_options.validate_rate_limit(rate_limit),
        row_filter=row_filter,
        columns=columns,
        actor=_actor(),
    )
    click.echo(created.secret)
    k = created.key
    _note(
        f"Created key {k.id} (prefix {k.prefix}) for data API {k.data_api!r}, "
        f"expires {iso(k.expires_at)}."
    )
    _note("Store it now: it is not shown again.")


@keys.command("list")
@click.option("--data-api", "data_api", metavar="NAME", help="Only the keys of this data API.")
@json_option
def keys_list(data_api: str | None, as_json: bool) -> None:
    """List keys: id, prefix, data API, description, created, expires, last used, status,
    scopes, rate limit (requests per minute; - = the default), usage (requests today /
    in the last 7 days / in all; UTC days, flushed by the servers every few seconds) and
    policy (the key's row filter and column allowlist; - = every row and column).

    Never shows a key or its hash.
    """
    from airflow_nx1_connect.core import control
    from airflow_nx1_connect.core import keys as core_keys

    engine = _engine()
    items = control.key_dicts(engine, core_keys.list_keys(engine, data_api=data_api))
    if as_json:
        _print_json(items)
        return
    if not items:
        _note("No keys. Create one with: nx1-connect keys create --data-api NAME --days N")
        return
    fields = ["key_id", "prefix", "data_api", "description", "created", "expires", "last_used"]
    _print_table(
        [f.replace("_", " ").upper() for f in fields]
        + ["STATUS", "SCOPES", "RATE LIMIT", "USAGE", "POLICY"],
        [
            [i[f] for f in fields]
            + [
                i["status"],
                ",".join(i["scopes"]),
                i["rate_limit"],
                _usage_cell(i["usage"]),
                _policy_cell(i),
            ]
            for i in items
        ],
    )


def _policy_cell(item: dict[str, Any]) -> str:
    """A key's row filter and column allowlist in a few words ("-": none)."""
    parts = []
    if item.get("row_filter"):
        parts.append("where " + " and ".join(item["row_filter"]))
    if item.get("columns") is not None:
        parts.append("columns " + ",".join(item["columns"]))
    return "; ".join(parts) or "-"


def _usage_cell(usage: dict[str, int]) -> str:
    return f"{usage['today']}/{usage['last_7_days']}/{usage['total']}"


@keys.command("extend")
@click.argument("key_id")
@days_option
def keys_extend(key_id: str, days: str) -> None:
    """Move the expiry of key KEY_ID N days later (from now if it already expired)."""
    from airflow_nx1_connect.core import control

    key = control.extend_key(_engine(), key_id, days=days, actor=_actor())
    _note(f"Key {key.id} now expires {iso(key.expires_at)}.")


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke key KEY_ID: it is refused at once. The record stays for the audit trail."""
    from airflow_nx1_connect.core import control

    key = control.revoke_key(_engine(), key_id, actor=_actor())
    _note(f"Key {key.id} is revoked since {iso(key.revoked_at)}.")


@keys.command("delete")
@click.argument("key_id")
def keys_delete(key_id: str) -> None:
    """Delete key KEY_ID and its record: it is refused at once."""
    from airflow_nx1_connect.core import control

    control.delete_key(_engine(), key_id, actor=_actor())
    _note(f"Key {key_id} is deleted.")


@keys.command("rotate")
@click.argument("key_id")
@click.option(
    "--overlap-hours",
    metavar="H",
    help="Hours the old key stays valid next to the new one (default 24; 0 = ends now).",
)
def keys_rotate(key_id: str, overlap_hours: str | None) -> None:
    """Replace key KEY_ID with a new one and print the new key on stdout, this once.

    The new key reads the same data API with the same description, scopes and rate
    limit. The old key keeps working for the overlap, then is refused.
    """
    from airflow_nx1_connect.core import control

    created, old = control.rotate_key(
        _engine(), key_id, overlap_hours=overlap_hours, actor=_actor()
    )
    click.echo(created.secret)
    k = created.key
    _note(
        f"Created key {k.id} (prefix {k.prefix}) for data API {k.data_api!r}, expires "
        f"{iso(k.expires_at)}; key {old.id} stops working at {iso(old.expires_at)}."
    )
    _note("Store it now: it is not shown again.")


# -- audit ------------------------------------------------------------------------------


@cli.group(cls=_Group)
def audit() -> None:
    """The audit trail of admin actions (keys and data APIs created, changed, deleted)."""


@audit.command("list")
@click.option("--data-api", "data_api", metavar="NAME", help="Only events of this data API.")
@click.option("--key-id", "key_id", metavar="KEY_ID", help="Only events of this key.")
@click.option("--limit", metavar="N", help="At most N events, newest first (default 100).")
@json_option
def audit_list(data_api: str | None, key_id: str | None, limit: str | None, as_json: bool) -> None:
    """List admin actions, newest first: when, who, what, data API, key, from where.

    Who is the Airflow user (admin view, admin REST API) or cli:<os user>.
    """
    from airflow_nx1_connect.core import audit as core_audit

    events = core_audit.list_events(_engine(), data_api=data_api, key_id=key_id, limit=limit)
    items = [e.to_dict() for e in events]
    if as_json:
        _print_json(items)
        return
    if not items:
        _note("No audit events.")
        return
    fields = ["at", "actor", "action", "data_api", "key_id", "remote_addr"]
    _print_table(
        [f.replace("_", " ").upper() for f in fields], [[i[f] for f in fields] for i in items]
    )


# -- snapshots --------------------------------------------------------------------------


@cli.group(cls=_Group)
def snapshots() -> None:
    """Inspect the snapshots a data API serves."""


@snapshots.command("list")
@click.argument("name")
@json_option
def snapshots_list(name: str, as_json: bool) -> None:
    """List the retained published snapshots of data API NAME, newest first."""
    from airflow_nx1_connect.core import snapshots as core_snapshots

    engine = _engine()
    api = core_snapshots.get_data_api(engine, name)
    items = []
    for snap in core_snapshots.list_snapshots(engine, name):
        item = snap.summary()
        item["latest"] = snap.id == api.latest_snapshot_id
        item["columns"] = snap.columns
        items.append(item)
    if as_json:
        _print_json(items)
        return
    if not items:
        _note(f"Data API {name!r} has no published snapshot yet.")
        return
    _print_table(
        ["SNAPSHOT ID", "PUBLISHED", "ROWS", "RUN ID", "DATA INTERVAL END", "LATEST"],
        [
            [
                i["id"],
                i["published_at"],
                i["row_count"],
                i["run_id"],
                i["data_interval_end"],
                "yes" if i["latest"] else "",
            ]
            for i in items
        ],
    )


# Webhooks live in their own module (it imports the helpers above).
from airflow_nx1_connect.webhooks_cli import webhooks as _webhooks  # noqa: E402

cli.add_command(_webhooks)


def main() -> None:
    """Console-script entry point."""
    sys.exit(cli(standalone_mode=True))


if __name__ == "__main__":  # pragma: no cover
    main()
