"""`nx1-connect webhooks ...`: webhook subscriptions, their deliveries, and the delivery loop.

Registered on the `nx1-connect` group by `airflow_nx1_connect.cli`. As there: stdout carries
only data (the new secret alone, a table, JSON), messages go to stderr, a user error exits 1
with one line. Creating, deleting and testing are audited as `cli:<os user>`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

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
from airflow_nx1_connect.core import engines


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send whatever is written to stdout (file descriptor 1) to stderr while inside, so that
    stdout carries only the data this command prints."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@click.group(cls=_Group)
def webhooks() -> None:
    """Push every publish of a data API to a URL (signed, retried): create, list, delete,
    test webhooks, see their deliveries, and run the delivery loop."""


@webhooks.command("create")
@click.option("--data-api", "data_api", required=True, metavar="NAME", help="The data API.")
@click.option("--url", required=True, metavar="URL", help="The receiver's http(s) URL.")
@click.option("--description", metavar="TEXT", help="What the webhook is for (optional).")
def webhooks_create(data_api: str, url: str, description: str | None) -> None:
    """Subscribe URL to the data API's events. stdout: the signing secret (whsec_...) alone,
    shown this once; the webhook id goes to stderr.

    Hosts that resolve to loopback, private, link-local or unspecified addresses are refused
    unless [nx1_connect] webhook_allow_private_hosts is True.
    """
    from airflow_nx1_connect.core import webhooks as core
    from airflow_nx1_connect.core.settings import get_settings

    with _stdout_to_stderr():  # Airflow's logging (e.g. its Fernet warning) writes to fd 1
        created = core.create_webhook_audited(
            _engine(),
            data_api=data_api,
            url=url,
            description=description,
            actor=_actor(),
            allow_private=get_settings().webhook_allow_private_hosts,
        )
    _note(
        f"Created webhook {created.webhook.id} for data API {data_api!r}. Its signing secret "
        "follows on stdout and is not shown again; give it to the receiver."
    )
    click.echo(created.secret)


@webhooks.command("list")
@click.option("--data-api", "data_api", metavar="NAME", help="Only this data API's webhooks.")
@json_option
def webhooks_list(data_api: str | None, as_json: bool) -> None:
    """List webhooks, newest first (never their secrets)."""
    from airflow_nx1_connect.core import snapshots
    from airflow_nx1_connect.core import webhooks as core

    engine = _engine()
    if data_api is not None:
        snapshots.get_data_api(engine, data_api)
    items = [w.to_dict() for w in core.list_webhooks(engine, data_api=data_api)]
    if as_json:
        _print_json(items)
        return
    if not items:
        _note("No webhooks. Create one with: nx1-connect webhooks create --data-api NAME --url URL")
        return
    _print_table(
        ["WEBHOOK ID", "DATA API", "URL", "DESCRIPTION", "CREATED"],
        [
            [i["webhook_id"], i["data_api"], i["url"], i["description"], i["created_at"]]
            for i in items
        ],
    )


@webhooks.command("delete")
@click.argument("webhook_id")
def webhooks_delete(webhook_id: str) -> None:
    """Delete webhook WEBHOOK_ID; its pending deliveries are never sent."""
    from airflow_nx1_connect.core import webhooks as core

    found = core.delete_webhook_audited(_engine(), webhook_id, actor=_actor())
    _note(f"Deleted webhook {found.id} ({found.url}) of data API {found.data_api!r}.")


@webhooks.command("test")
@click.argument("webhook_id")
def webhooks_test(webhook_id: str) -> None:
    """Queue a ping event to webhook WEBHOOK_ID (see it with `webhooks deliveries`)."""
    from airflow_nx1_connect.core import webhooks as core

    event_id = core.send_test_audited(_engine(), webhook_id, actor=_actor())
    _note(f"Queued ping event {event_id}; a running api-server or `webhooks deliver` sends it.")


@webhooks.command("deliveries")
@click.argument("webhook_id")
@click.option("--limit", metavar="N", help="At most N deliveries, newest first (default 100).")
@json_option
def webhooks_deliveries(webhook_id: str, limit: str | None, as_json: bool) -> None:
    """The deliveries of webhook WEBHOOK_ID, newest first: status, attempts, the last response
    status and error, the next attempt."""
    from airflow_nx1_connect.core import webhooks as core

    items = core.list_deliveries(_engine(), webhook_id, limit=limit)
    if as_json:
        _print_json(items)
        return
    if not items:
        _note("No deliveries yet: one is made on every publish of the data API, and by test.")
        return
    _print_table(
        ["DELIVERY ID", "EVENT", "TYPE", "AT", "STATUS", "ATTEMPTS", "HTTP", "NEXT", "ERROR"],
        [
            [
                i["delivery_id"],
                i["event_id"],
                i["type"],
                i["at"],
                i["status"],
                i["attempts"],
                i["response_status"],
                i["next_attempt_at"],
                i["error"],
            ]
            for i in items
        ],
    )


@webhooks.command("deliver")
@click.option("--once", is_flag=True, help="Deliver what is due now, then exit.")
def webhooks_deliver(once: bool) -> None:
    """Run the webhook delivery loop in this process (every api-server process starts a
    delivery process of its own too, unless [nx1_connect] webhook_deliver_in_api_server is
    False). Any number may run against one store: each attempt is made by one of them. Stops
    on SIGINT or SIGTERM."""
    from airflow_nx1_connect.core import store
    from airflow_nx1_connect.core.settings import get_settings
    from airflow_nx1_connect.core.webhooks import delivery

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    store.check_migrated(_engine())
    deliverer = delivery.Deliverer(engines.get_engine, get_settings)
    with _stdout_to_stderr():  # it prints no data: only log lines, on stderr
        attempts = deliverer.serve(once=once)
    _note(f"Webhook delivery stopped after {attempts} attempt(s).")
