"""Webhook delivery by a real `airflow api-server --workers 2`, on both stores: a dead receiver
is retried, survives a restart of the api-server and is delivered after it; the two worker
processes POST each event once; a receiver that holds every POST for 30 s slows neither
publishes nor the data API's requests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook as Verifier

from airflow_nx1_connect.core import engines, keys, webhooks, writer
from airflow_nx1_connect.core import snapshots as snaps
from tests.api_server import api_server_env, free_port, migrate_airflow, running_api_server
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.slow

COLS = [snaps.Column("id", "INTEGER")]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An AIRFLOW_HOME with a migrated metadata database, shared by the module's servers."""
    folder = tmp_path_factory.mktemp("wh-home")
    migrate_airflow(api_server_env(folder, "sqlite://"))
    return folder


@pytest.fixture
def server_env(home: Path, engine: Any) -> Iterator[dict[str, str]]:
    env = api_server_env(
        home,
        str(engine.url.render_as_string(hide_password=False)),
        AIRFLOW__NX1_CONNECT__WEBHOOK_ALLOW_PRIVATE_HOSTS="True",
        AIRFLOW__NX1_CONNECT__WEBHOOK_RETRY_DELAYS="2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2",
    )
    yield env


def _publish(engine: Any, n: int = 1) -> snaps.Snapshot:
    return writer.write_snapshot(
        engine, data_api="sales", columns=COLS, batches=[[(i,) for i in range(n)]]
    )


def _delivery(engine: Any, webhook_id: str) -> dict[str, Any]:
    [row] = webhooks.list_deliveries(engine, webhook_id)
    return row


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_dead_receiver_then_restarted_api_server(engine: Any, server_env: dict[str, str], home):
    snaps.register_data_api(engine, name="sales", kind="ask", dag_id="d", task_id="t")
    port = free_port()
    hook = webhooks.create_webhook(
        engine, data_api="sales", url=f"http://127.0.0.1:{port}/hook", allow_private=True
    )
    with running_api_server(server_env, home, workers=2):
        snap = _publish(engine)
        _wait(
            lambda: _delivery(engine, hook.webhook.id)["attempts"] >= 2,
            30,
            "two failed attempts",
        )
        row = _delivery(engine, hook.webhook.id)
        assert row["status"] == "retrying" and "Connect" in row["error"]
    with Receiver(port=port) as receiver:
        time.sleep(4)  # no api-server: nothing is delivered
        assert receiver.posts == []
        with running_api_server(server_env, home, workers=2):
            [post] = receiver.wait_for(1, timeout=60)
            body = Verifier(hook.secret).verify(post["body"], post["headers"])
            assert body["data"]["snapshot"]["id"] == snap.id
            _wait(
                lambda: _delivery(engine, hook.webhook.id)["status"] == "delivered",
                20,
                "delivered",
            )
            # Two worker processes, 20 publishes: each event is POSTed once, each soon.
            started = time.monotonic()
            published = {_publish(engine).id for _ in range(20)}
            posts = receiver.wait_for(21, timeout=60)
            took = time.monotonic() - started
            time.sleep(3)
    ids = Counter(p["headers"]["webhook-id"] for p in receiver.posts)
    assert len(ids) == 21 and set(ids.values()) == {1}, ids
    seen = {Verifier(hook.secret).verify(p["body"], p["headers"])["data"]["snapshot"]["id"]
            for p in posts[1:]}  # fmt: skip
    assert seen == published and took < 30


def test_slow_receiver_never_delays_requests_or_publishes(
    engine: Any, server_env: dict[str, str], home: Path
) -> None:
    snaps.register_data_api(engine, name="sales", kind="ask", dag_id="d", task_id="t")
    key = keys.create_key(engine, data_api="sales", days=1).secret
    _publish(engine, 10)

    def publishes() -> float:
        started = time.monotonic()
        for _ in range(5):
            _publish(engine, 10)
        return time.monotonic() - started

    with running_api_server(server_env, home, workers=1) as (url, _log):
        latest = f"{url}/nx1/api/v1/data-apis/sales/latest"
        headers = {"Authorization": f"Bearer {key}"}
        httpx.get(latest, headers=headers, timeout=10)
        quiet = publishes()
        with Receiver(sleep_s=30) as sleeper:
            webhooks.create_webhook(engine, data_api="sales", url=sleeper.url, allow_private=True)
            busy = publishes()
            sleeper.wait_for(5, timeout=15)  # the api-server is inside those 5 POSTs now
            times = []
            for _ in range(20):
                started = time.monotonic()
                r = httpx.get(latest, headers=headers, timeout=10)
                times.append(time.monotonic() - started)
                assert r.status_code == 200
            assert max(times) < 1.0, times
            assert busy < max(3 * quiet, quiet + 1.0), (quiet, busy)
            health = httpx.get(f"{url}/api/v2/monitor/health", timeout=5)
            assert health.status_code == 200


def test_deliver_command_runs_apart(engine: Any, server_env: dict[str, str]) -> None:
    """`nx1-connect webhooks deliver --once` drains what is due (no api-server)."""
    snaps.register_data_api(engine, name="sales", kind="ask", dag_id="d", task_id="t")
    with Receiver() as receiver:
        hook = webhooks.create_webhook(
            engine, data_api="sales", url=receiver.url, allow_private=True
        )
        _publish(engine)
        _publish(engine)
        res = subprocess.run(
            [str(Path(sys.executable).parent / "nx1-connect"), "webhooks", "deliver", "--once"],
            env={**os.environ, **server_env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        assert res.stdout == ""
        assert len(receiver.wait_for(2)) == 2
    assert hook.secret not in res.stderr
    assert [d["status"] for d in webhooks.list_deliveries(engine, hook.webhook.id)] == [
        "delivered",
        "delivered",
    ]
    engines.dispose_engines()
