"""7. Store outage: the PostgreSQL store cut off or blackholed is reported fast and recovered from.

The store is reached through a loopback proxy that the test cuts (connection refused) or
turns into a blackhole (accepts, never answers); the real server is never stopped.
"""

from __future__ import annotations

import time

import pytest

from airflow_nx1_connect.core import engines
from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.core.errors import StoreUnavailable


@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
def test_outage_is_reported_within_five_seconds_and_recovers(proxied_store, mode):
    engine, proxy = proxied_store
    assert snaps.latest_snapshot(engine, "alerts").row_count == 2
    if mode == "refuse":
        proxy.stop()
    else:
        proxy.start("blackhole")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        engines.check_reachable(engine)
    assert time.monotonic() - started < 5

    proxy.start("forward")
    # Same engine, no restart: the pool's pre-ping drops dead connections.
    assert snaps.latest_snapshot(engine, "alerts").row_count == 2


@pytest.mark.slow  # a real server process
@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
def test_api_answers_503_within_five_seconds_and_recovers_without_restart(
    proxied_store, mode, tmp_path
):
    import httpx

    from airflow_nx1_connect.core import keys
    from tests.reliability.servers import start_server

    engine, proxy = proxied_store
    made = keys.create_key(engine, data_api="alerts", days=1)
    server = start_server("fastapi", engine.url.render_as_string(hide_password=False), tmp_path)
    try:
        url = f"{server.base}/data-apis/alerts/latest"
        headers = {"Authorization": f"Bearer {made.secret}"}
        assert httpx.get(url, headers=headers, timeout=10).status_code == 200
        if mode == "refuse":
            proxy.stop()
        else:
            proxy.start("blackhole")
        for _ in range(2):  # the first request and the next one: both fast
            started = time.monotonic()
            r = httpx.get(url, headers=headers, timeout=30)
            assert time.monotonic() - started < 5
            assert r.status_code == 503
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["status"] == 503
        proxy.start("forward")
        deadline = time.monotonic() + 10
        while True:
            r = httpx.get(url, headers=headers, timeout=10)
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        assert r.json()["data"]["data"] == [[1], [2]]
        assert "Traceback" not in server.log_text()
    finally:
        server.stop()
