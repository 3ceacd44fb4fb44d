"""Keep the README's "Push: webhooks" receiver honest: it runs as written, against a real push.

The README's ```python receiver is saved as a file and served by uvicorn with the secret of a
real webhook and a real data API key. `nx1-connect webhooks deliver --once` then pushes a
`ping` and a `snapshot.published` to it: the receiver verifies both with `standardwebhooks`,
fetches the change feed from a real server of the data API (it prints what it fetched), and
answers 2xx (delivered). A
push with a forged signature gets 400, and a retry of an event it has handled is answered
without fetching again. On both stores.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from airflow_nx1_connect.core import keys, webhooks, writer
from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.core.webhooks import tables
from tests.api_server import free_port
from tests.test_cli import ok
from tests.web.mounts import serve_both_mounts

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
API = "weekly_top_product"
COLS = [snaps.Column("product", "TEXT"), snaps.Column("units", "INTEGER")]


def receiver_code() -> str:
    """The first ```python block of the README's "Push: webhooks" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("\n## Push: webhooks\n") :]
    section = section[: section.index("\n## ", 1)]
    match = re.search(r"^```python\n(.*?)\n```$", section, re.DOTALL | re.MULTILINE)
    assert match, 'README.md: no ```python receiver in "Push: webhooks"'
    return match.group(1)


@pytest.fixture
def receiver(
    engine: Any, store_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """The data API served (both mounts), a webhook to the README's receiver, which runs."""
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__WEBHOOK_ALLOW_PRIVATE_HOSTS", "True")
    snaps.register_data_api(engine, name=API, kind="ask", dag_id="retail", task_id="top")
    first = writer.write_snapshot(
        engine, data_api=API, columns=COLS, batches=[[("Espresso", 120), ("Bagel", 98)]]
    )
    key = keys.create_key(engine, data_api=API, days=1).secret
    port = free_port()
    hook = webhooks.create_webhook(
        engine, data_api=API, url=f"http://127.0.0.1:{port}/nx1", allow_private=True
    )
    work = tmp_path / "receiver"
    work.mkdir()
    (work / "receiver.py").write_text(receiver_code() + "\n", encoding="utf-8")
    with serve_both_mounts(store_env, tmp_path / "data-api.log") as mounts:
        env = {
            **os.environ,
            "NX1_URL": mounts.root,
            "NX1_KEY": key,
            "NX1_WEBHOOK_SECRET": hook.secret,
        }
        log = (tmp_path / "receiver.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "receiver:app", "--port", str(port)],
            cwd=work,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                    break
                except httpx.TransportError:
                    assert proc.poll() is None, (tmp_path / "receiver.log").read_text()
                    assert time.monotonic() < deadline, "the README receiver did not start"
                    time.sleep(0.2)
            yield {
                "url": f"http://127.0.0.1:{port}/nx1",
                "hook": hook,
                "first": first,
                "log": tmp_path / "receiver.log",
            }
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()


def test_readme_receiver_verifies_dedupes_and_fetches(engine: Any, receiver: dict[str, Any]):
    hook = receiver["hook"]
    forged = httpx.post(
        receiver["url"],
        content=b'{"type": "ping", "timestamp": "2026-12-04T00:00:00Z", "data": {}}',
        headers={
            "webhook-id": "msg_forged",
            "webhook-timestamp": str(int(time.time())),
            "webhook-signature": "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "content-type": "application/json",
        },
        timeout=10,
    )
    assert forged.status_code == 400, forged.text

    ok("webhooks", "test", hook.webhook.id)
    second = writer.write_snapshot(
        engine, data_api=API, columns=COLS, batches=[[("Espresso", 131), ("Croissant", 97)]]
    )
    done = ok("webhooks", "deliver", "--once")
    assert "2 attempt(s)" in done.stderr, done.stderr
    rows = webhooks.list_deliveries(engine, hook.webhook.id)
    assert [(r["type"], r["status"], r["response_status"]) for r in rows] == [
        ("snapshot.published", "delivered", 200),
        ("ping", "delivered", 200),
    ], (rows, receiver["log"].read_text())
    # The receiver fetched the change feed from the first snapshot to the second, with the key.
    fetched = (
        f"fetched /nx1/api/v1/data-apis/{API}/changes"
        f"?since={receiver['first'].id}&to={second.id}: 200"
    )
    assert receiver["log"].read_text().count(fetched) == 1, receiver["log"].read_text()

    # A retry of the handled event (same webhook-id, signed afresh) is answered, not refetched.
    [published] = [r for r in rows if r["type"] == "snapshot.published"]
    with engine.connect() as conn:
        body = conn.execute(
            sa.select(tables.events.c.payload).where(tables.events.c.id == published["event_id"])
        ).scalar_one()
    stamp = int(time.time())
    again = httpx.post(
        receiver["url"],
        content=body.encode(),
        headers={
            "webhook-id": published["event_id"],
            "webhook-timestamp": str(stamp),
            "webhook-signature": webhooks.sign(
                hook.secret, published["event_id"], stamp, body.encode()
            ),
            "content-type": "application/json",
        },
        timeout=10,
    )
    assert again.status_code == 200 and again.json() == {"ok": True}
    time.sleep(0.5)
    assert receiver["log"].read_text().count(fetched) == 1, receiver["log"].read_text()
