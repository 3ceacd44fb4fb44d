"""Webhooks on both stores: subscriptions, the outbox in the publish transaction, delivery to a
real receiver on loopback (verified with the `standardwebhooks` library), retries with the same
webhook-id, private hosts, several deliverers, a deliverer killed mid-attempt."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from standardwebhooks import Webhook as Verifier

from airflow_nx1_connect.core import checks, webhooks, writer
from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.core.errors import ChecksFailed, ValidationError
from airflow_nx1_connect.core.settings import get_settings
from airflow_nx1_connect.core.webhooks import delivery
from airflow_nx1_connect.core.webhooks.tables import deliveries, events
from airflow_nx1_connect.core.webhooks.tables import webhooks as webhooks_table
from tests.webhook_receiver import Receiver

COLS = [snaps.Column("id", "INTEGER")]
NX1 = str(Path(sys.executable).parent / "nx1-connect")


@pytest.fixture
def api(engine: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The `sales` data API on the test's store; private hosts allowed (the receiver is on
    loopback); retries after 0 s and 0 s, then failed."""
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__WEBHOOK_ALLOW_PRIVATE_HOSTS", "True")
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__WEBHOOK_RETRY_DELAYS", "0,0")
    snaps.register_data_api(engine, name="sales", kind="ask", dag_id="d", task_id="t")
    return engine


def publish(engine: Any, *rows: int) -> snaps.Snapshot:
    return writer.write_snapshot(
        engine, data_api="sales", columns=COLS, batches=[[(r,) for r in rows or (1,)]]
    )


def drain(engine: Any) -> int:
    return asyncio.run(delivery.Deliverer(lambda: engine, get_settings).run(once=True))


def subscribe(engine: Any, url: str) -> webhooks.CreatedWebhook:
    return webhooks.create_webhook(engine, data_api="sales", url=url, allow_private=True)


def test_publish_is_pushed_signed_per_standard_webhooks(api):
    with Receiver() as receiver:
        hook = subscribe(api, receiver.url)
        assert hook.secret.startswith("whsec_")
        assert len(webhooks.secret_bytes(hook.secret)) >= 24
        first = publish(api, 1)
        second = publish(api, 1, 2)
        assert drain(api) == 2
        posts = receiver.wait_for(2)
    verifier = Verifier(hook.secret)
    bodies = []
    for post in posts:
        assert post["headers"]["Content-Type"] == "application/json"
        assert post["path"] == "/hook"
        bodies.append(verifier.verify(post["body"], post["headers"]))
        assert int(post["headers"]["webhook-timestamp"]) == pytest.approx(time.time(), abs=60)
    by_snapshot = {b["data"]["snapshot"]["id"]: b for b in bodies}
    one, two = by_snapshot[first.id], by_snapshot[second.id]
    assert one["type"] == "snapshot.published"
    assert one["data"] == {
        "data_api": "sales",
        "snapshot": first.summary(),
        "previous_snapshot_id": None,
        "latest_url": "/nx1/api/v1/data-apis/sales/latest",
        "changes_url": None,
    }
    assert two["data"]["previous_snapshot_id"] == first.id
    assert two["data"]["changes_url"] == (
        f"/nx1/api/v1/data-apis/sales/changes?since={first.id}&to={second.id}"
    )
    assert two["data"]["snapshot"]["row_count"] == 2
    assert two["timestamp"].endswith("Z")
    # A forged body or another secret does not verify.
    post = posts[0]
    with pytest.raises(Exception, match="signature"):
        verifier.verify(post["body"] + b" ", post["headers"])
    with pytest.raises(Exception, match="signature"):
        Verifier(webhooks.new_secret()).verify(post["body"], post["headers"])
    listed = webhooks.list_deliveries(api, hook.webhook.id)
    assert [d["status"] for d in listed] == ["delivered", "delivered"]
    assert all(d["attempts"] == 1 and d["response_status"] == 204 for d in listed)
    assert (
        listed[0]["event_id"] == posts[1]["headers"]["webhook-id"]
        or listed[0]["event_id"] == posts[0]["headers"]["webhook-id"]
    )


def test_base_url_makes_the_event_urls_absolute(api, monkeypatch):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/af/")
    with Receiver() as receiver:
        subscribe(api, receiver.url)
        snap = publish(api)
        drain(api)
        body = json.loads(receiver.wait_for(1)[0]["body"])
    assert body["data"]["latest_url"] == (
        "https://airflow.example.com/af/nx1/api/v1/data-apis/sales/latest"
    )
    assert body["data"]["snapshot"]["id"] == snap.id


def test_retries_keep_the_webhook_id_then_deliver(api):
    with Receiver(statuses=[500, 503, 200]) as receiver:
        hook = subscribe(api, receiver.url)
        publish(api)
        drain(api)
        posts = receiver.wait_for(3)
    assert len(posts) == 3
    assert len({p["headers"]["webhook-id"] for p in posts}) == 1
    verifier = Verifier(hook.secret)
    for post in posts:
        verifier.verify(post["body"], post["headers"])
    [row] = webhooks.list_deliveries(api, hook.webhook.id)
    assert row["status"] == "delivered" and row["attempts"] == 3
    assert row["response_status"] == 200 and row["error"] is None


def test_retries_run_out_then_failed(api):
    with Receiver(statuses=[500]) as receiver:
        hook = subscribe(api, receiver.url)
        publish(api)
        drain(api)
        assert len(receiver.wait_for(3)) == 3  # the first attempt and two retries
    [row] = webhooks.list_deliveries(api, hook.webhook.id)
    assert row["status"] == "failed" and row["attempts"] == 3 and row["next_attempt_at"] is None
    assert row["response_status"] == 500 and "500" in row["error"]
    assert len(receiver.posts) == 3


def test_a_retry_waits_for_its_delay(api, monkeypatch):
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__WEBHOOK_RETRY_DELAYS", "3600")
    with Receiver(statuses=[502]) as receiver:
        hook = subscribe(api, receiver.url)
        publish(api)
        drain(api)
        drain(api)  # nothing due: the retry is in an hour
        assert len(receiver.posts) == 1
    [row] = webhooks.list_deliveries(api, hook.webhook.id)
    assert row["status"] == "retrying" and row["attempts"] == 1 and row["response_status"] == 502
    due = dt.datetime.fromisoformat(row["next_attempt_at"].replace("Z", "+00:00"))
    last = dt.datetime.fromisoformat(row["last_attempt_at"].replace("Z", "+00:00"))
    assert (due - last).total_seconds() == pytest.approx(3600, abs=1)


def test_dead_receiver_is_retried(api):
    with Receiver() as receiver:
        dead_url = receiver.url
    hook = subscribe(api, dead_url)
    publish(api)
    drain(api)
    [row] = webhooks.list_deliveries(api, hook.webhook.id)
    assert row["status"] == "failed" and row["attempts"] == 3
    assert row["response_status"] is None and "Connect" in row["error"]


def test_no_redirect_is_followed(api):
    with Receiver(statuses=[307]) as receiver:
        hook = subscribe(api, receiver.url)
        publish(api)
        drain(api)
        assert len(receiver.posts) == 3  # each attempt once, never to a Location
    [row] = webhooks.list_deliveries(api, hook.webhook.id)
    assert row["status"] == "failed" and row["response_status"] == 307


def test_event_exists_only_if_the_snapshot_was_published(api):
    with Receiver() as receiver:
        subscribe(api, receiver.url)
        with pytest.raises(ChecksFailed):
            writer.write_snapshot(
                api,
                data_api="sales",
                columns=COLS,
                batches=[[(1,)]],
                checks=checks.parse({"min_rows": 5}),
            )
        with api.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(events)).scalar() == 0
        assert drain(api) == 0
        snap = publish(api)
        with api.connect() as conn:
            rows = conn.execute(sa.select(events.c.snapshot_id, events.c.type)).all()
        assert rows == [(snap.id, "snapshot.published")]


def test_publish_without_webhooks_records_nothing(api):
    publish(api)
    with api.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(events)).scalar() == 0


def test_ping_and_delete(api):
    with Receiver() as receiver:
        hook = subscribe(api, receiver.url)
        event_id = webhooks.send_test(api, hook.webhook.id)
        drain(api)
        [post] = receiver.wait_for(1)
    body = Verifier(hook.secret).verify(post["body"], post["headers"])
    assert post["headers"]["webhook-id"] == event_id
    assert body["type"] == "ping" and body["data"] == {"webhook_id": hook.webhook.id}
    assert set(body) == {"type", "timestamp", "data"}
    webhooks.delete_webhook(api, hook.webhook.id)
    with pytest.raises(webhooks.WebhookNotFound):
        webhooks.get_webhook(api, hook.webhook.id)
    with api.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(deliveries)).scalar() == 0


def test_deleting_the_data_api_deletes_its_webhooks(api):
    subscribe(api, "http://127.0.0.1:9/x")
    publish(api)
    snaps.delete_data_api(api, "sales")
    with api.connect() as conn:
        for table in (webhooks_table, events, deliveries):
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 0


def test_secret_is_stored_encrypted_with_the_fernet_key(api, monkeypatch):
    from airflow.models.crypto import get_fernet
    from cryptography.fernet import Fernet

    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", Fernet.generate_key().decode())
    get_fernet.cache_clear()
    try:
        with Receiver() as receiver:
            hook = subscribe(api, receiver.url)
            with api.connect() as conn:
                stored, encrypted = conn.execute(
                    sa.select(webhooks_table.c.secret, webhooks_table.c.secret_encrypted)
                ).one()
            assert encrypted is True and hook.secret not in stored
            assert webhooks.secret_bytes(hook.secret).hex() not in stored
            webhooks.send_test(api, hook.webhook.id)
            drain(api)
            [post] = receiver.wait_for(1)
        Verifier(hook.secret).verify(post["body"], post["headers"])
    finally:
        get_fernet.cache_clear()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://localhost:8080/x",
        "https://10.1.2.3/x",
        "http://192.168.0.1/x",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x",
        "http://0.0.0.0/x",
        "http://[::ffff:127.0.0.1]/x",
    ],
)
def test_private_hosts_are_refused_at_creation(engine, url):
    snaps.register_data_api(engine, name="sales", kind="ask", dag_id="d", task_id="t")
    with pytest.raises(ValidationError, match="webhook_allow_private_hosts"):
        webhooks.create_webhook(engine, data_api="sales", url=url, allow_private=False)
    assert webhooks.list_webhooks(engine) == []


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/x", "example.com/x", "http://", "https://user:pw@example.com/x", ""],
)
def test_bad_urls_are_refused(engine, url):
    snaps.register_data_api(engine, name="sales", kind="ask", dag_id="d", task_id="t")
    with pytest.raises(ValidationError):
        webhooks.create_webhook(engine, data_api="sales", url=url, allow_private=True)


def test_private_host_is_refused_at_delivery(api, monkeypatch):
    with Receiver() as receiver:
        hook = subscribe(api, receiver.url)  # allowed then
        monkeypatch.setenv("AIRFLOW__NX1_CONNECT__WEBHOOK_ALLOW_PRIVATE_HOSTS", "False")
        publish(api)
        drain(api)
        assert receiver.posts == []
    [row] = webhooks.list_deliveries(api, hook.webhook.id)
    assert row["status"] == "failed" and "refused" in row["error"]
    assert "127.0.0.1" in row["error"]


def _deliver_process(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [NX1, "webhooks", "deliver", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_two_delivering_processes_post_each_attempt_once(api, store_env):
    """Two hosts' worth of deliverers (processes) drain 200 deliveries: each event is POSTed
    exactly once."""
    env = dict(os.environ)
    with Receiver(sleep_s=0.2) as receiver:
        subscribe(api, receiver.url)
        subscribe(api, receiver.url + "2")
        for _ in range(100):
            webhooks.send_test(api, webhooks.list_webhooks(api)[0].id)
            webhooks.send_test(api, webhooks.list_webhooks(api)[1].id)
        procs = [_deliver_process(env, "--once") for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        posts = receiver.wait_for(200)
        time.sleep(0.5)
    counts = Counter(p["headers"]["webhook-id"] for p in posts)
    assert len(counts) == 200 and set(counts.values()) == {1}
    # Both processes took part.
    made = [int(err.rsplit("after ", 1)[1].split()[0]) for _out, err in outs]
    assert all(m > 0 for m in made), made
    with api.connect() as conn:
        statuses = conn.execute(
            sa.select(deliveries.c.status, sa.func.sum(deliveries.c.attempts)).group_by(
                deliveries.c.status
            )
        ).all()
    assert [(s, int(n)) for s, n in statuses] == [("delivered", sum(made))]


@pytest.mark.slow
def test_deliverer_killed_mid_attempt_is_delivered_later(api, store_env):
    """SIGKILL of a delivering process while the receiver holds its POST: the delivery is
    attempted again (same webhook-id) after the claim's lease, and delivered."""
    env = dict(os.environ)
    with Receiver(sleep_s=20) as receiver:
        hook = subscribe(api, receiver.url)
        publish(api)
        proc = _deliver_process(env)
        try:
            [first] = receiver.wait_for(1, timeout=60)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        [row] = webhooks.list_deliveries(api, hook.webhook.id)
        assert row["status"] == "pending" and row["attempts"] == 0
        receiver.sleep_s = 0
        started = time.monotonic()
        second = _deliver_process(env)
        try:
            posts = receiver.wait_for(2, timeout=delivery.LEASE_S + 30)
        finally:
            os.killpg(second.pid, signal.SIGTERM)
            second.wait(timeout=30)
        waited = time.monotonic() - started
    assert posts[1]["headers"]["webhook-id"] == first["headers"]["webhook-id"]
    Verifier(hook.secret).verify(posts[1]["body"], posts[1]["headers"])
    assert waited < delivery.LEASE_S + 30
    [row] = webhooks.list_deliveries(api, hook.webhook.id)
    assert row["status"] == "delivered" and row["attempts"] == 1


def test_slow_receiver_never_delays_a_publish(api):
    """A deliverer busy with a receiver that sleeps 30 s: publishes take as long as without."""

    def timed_publishes() -> float:
        started = time.monotonic()
        for i in range(5):
            publish(api, i)
        return time.monotonic() - started

    quiet = timed_publishes()
    with Receiver(sleep_s=30) as receiver:
        subscribe(api, receiver.url)
        deliverer = delivery.Deliverer(lambda: api, get_settings, poll_s=0.05)
        loop = threading.Thread(target=asyncio.run, args=(deliverer.run(),), daemon=True)
        loop.start()
        try:
            webhooks.send_test(api, webhooks.list_webhooks(api)[0].id)
            receiver.wait_for(1)
            busy = timed_publishes()
            receiver.wait_for(6, timeout=20)  # every publish's POST is held by the receiver
        finally:
            deliverer.stop()
            loop.join(timeout=3)
    assert busy < max(3 * quiet, quiet + 1.0), (quiet, busy)


def _gone(pid: int) -> bool:
    """The process has exited (a zombie not reaped yet counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in {"Z", "X"}
    except FileNotFoundError:
        return True


@pytest.mark.slow
def test_the_api_servers_delivery_process_delivers_niced_and_ends_with_its_parent(api):
    """`DeliveryProcess` (what each api-server process starts): the child delivers, runs at a
    lower CPU priority than its parent, is started again when it dies, and ends by itself
    within seconds of its parent being SIGKILLed."""
    from airflow_nx1_connect.core.webhooks import process

    code = (
        "import time\n"
        "from airflow_nx1_connect.core.webhooks.process import DeliveryProcess\n"
        "child = DeliveryProcess().start()\n"
        "print(child.proc.pid, flush=True)\n"
        "for _ in range(600):\n"
        "    time.sleep(1)\n"
        "    child.watch()\n"
        "    print(child.proc.pid, flush=True)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    assert parent.stdout is not None
    try:
        child = int(parent.stdout.readline())
        with Receiver() as receiver:
            hook = subscribe(api, receiver.url)
            webhooks.send_test(api, hook.webhook.id)
            [post] = receiver.wait_for(1, timeout=60)
        Verifier(hook.secret).verify(post["body"], post["headers"])
        mine = os.getpriority(os.PRIO_PROCESS, parent.pid)
        assert os.getpriority(os.PRIO_PROCESS, child) == min(mine + process.NICE, 19)

        os.kill(child, signal.SIGKILL)  # a dead child is started again
        deadline = time.monotonic() + process.RESTART_AFTER_S + 30
        while (again := int(parent.stdout.readline())) == child:
            assert time.monotonic() < deadline, "the delivery process was not restarted"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 15
        while not _gone(again):
            assert time.monotonic() < deadline, "the delivery process outlived its parent"
            time.sleep(0.2)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)


def test_history_older_than_webhook_history_days_is_deleted(api, monkeypatch):
    """Finished deliveries (delivered, failed) whose last attempt is older than
    `webhook_history_days`, and then their events, are deleted by a delivering process;
    pending and retrying ones, and recent ones, are kept whatever their age."""
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__WEBHOOK_HISTORY_DAYS", "7")
    hook = subscribe(api, "http://127.0.0.1:9/hook")
    now = dt.datetime.now(dt.timezone.utc)
    old, recent = now - dt.timedelta(days=8), now - dt.timedelta(days=6)
    made = {}
    for name, status, at in [
        ("old_delivered", "delivered", old),
        ("old_failed", "failed", old),
        ("old_pending", "pending", None),
        ("old_retrying", "retrying", old),
        ("recent_delivered", "delivered", recent),
    ]:
        event_id = webhooks.send_test(api, hook.webhook.id, now=old)
        with api.begin() as conn:
            conn.execute(
                deliveries.update()
                .where(deliveries.c.event_id == event_id)
                .values(
                    status=status,
                    last_attempt_at=at,
                    next_attempt_at=now + dt.timedelta(days=1)
                    if status in ("pending", "retrying")
                    else None,
                )
            )
        made[name] = event_id
    assert drain(api) == 0  # nothing is due; the first turn deletes the old history
    with api.connect() as conn:
        left = set(conn.execute(sa.select(events.c.id)).scalars())
        kept = set(conn.execute(sa.select(deliveries.c.event_id)).scalars())
    assert left == kept == {made[n] for n in ("old_pending", "old_retrying", "recent_delivered")}
    assert delivery.prune(api, now - dt.timedelta(days=7)) == (0, 0)
    assert delivery.prune(api, now) == (1, 1)  # the recent delivered one, then its event
