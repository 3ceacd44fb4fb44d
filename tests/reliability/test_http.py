"""Isolation, revocation across processes, injection and oversized input, over real HTTP.

Two server processes (FastAPI under uvicorn, and the Flask blueprint under uvicorn's WSGI
interface) serve one store; every property is checked on both, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
import sqlalchemy as sa

from airflow_nx1_connect.core import keys
from airflow_nx1_connect.core.store import api_keys

pytestmark = pytest.mark.slow  # two real server processes per store

PATHS = ["{n}", "{n}/latest", "{n}/snapshots", "{n}/snapshots/{sid}"]


def _get(server, path, secret=None, **kw):
    headers = kw.pop("headers", {})
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    return httpx.get(f"{server.base}/data-apis/{path}", headers=headers, timeout=10, **kw)


def _cli(served, *args):
    env = {**os.environ, "AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN": served.url}
    return subprocess.run(
        [sys.executable, "-m", "airflow_nx1_connect.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_isolation_key_of_one_data_api_is_forbidden_everywhere_else(served):
    alpha = served.keys["alpha"].secret
    for server in served.servers:
        for path in PATHS:
            ok = _get(server, path.format(n="alpha", sid=served.snapshot_ids["alpha"]), alpha)
            assert ok.status_code == 200, (server.kind, path, ok.text)
            for name, sid in (
                ("beta", served.snapshot_ids["beta"]),
                ("nope", "0" * 32),
                ("Bad-Name", "x"),
            ):
                r = _get(server, path.format(n=name, sid=sid), alpha)
                assert r.status_code == 403, (server.kind, path, name, r.status_code)
                assert r.headers["content-type"].startswith("application/problem+json")


def test_expired_key_is_refused_at_the_boundary_second(served):
    made = keys.create_key(served.engine, data_api="alpha", days=1)
    served.secrets_seen.append(made.secret)
    expires = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=2)).replace(microsecond=0)
    with served.engine.begin() as conn:
        conn.execute(
            api_keys.update().where(api_keys.c.id == made.key.id).values(expires_at=expires)
        )
    for server in served.servers:
        assert _get(server, "alpha/latest?limit=1", made.secret).status_code == 200
    while dt.datetime.now(dt.timezone.utc) < expires:
        time.sleep(0.05)
    for server in served.servers:
        r = _get(server, "alpha/latest?limit=1", made.secret)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_revocation_through_the_cli_is_seen_by_every_process_at_once(served):
    made = keys.create_key(served.engine, data_api="beta", days=3)
    served.secrets_seen.append(made.secret)
    for server in served.servers:  # warm: each process has verified the key
        assert _get(server, "beta/latest?limit=5", made.secret).status_code == 200
    done = _cli(served, "keys", "revoke", made.key.id)
    assert done.returncode == 0, done.stderr
    for server in served.servers:
        r = _get(server, "beta/latest?limit=5", made.secret)
        assert r.status_code == 401, server.kind
        assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def _state(served):
    """Row counts of every table but nx1_key_usage: the servers flush request counts
    there in the background (the one write a read makes on purpose)."""
    with served.engine.connect() as conn:
        tables = [t for t in sorted(sa.inspect(conn).get_table_names()) if t != "nx1_key_usage"]
        counts = {t: conn.execute(sa.text(f'SELECT count(*) FROM "{t}"')).scalar() for t in tables}
    return counts


@pytest.mark.parametrize(
    ("path", "statuses"),
    [
        ("alpha/latest?columns=id;DROP TABLE nx1_api_keys", {400}),
        ('alpha/latest?columns=id"--', {400}),
        ("alpha/latest?columns=" + "id) UNION SELECT key_hash FROM nx1_api_keys--", {400}),
        ("alpha/latest?start=0;DELETE FROM nx1_snapshots", {400}),
        ("alpha/latest?limit=1 OR 1=1", {400}),
        ("alpha/latest?format=json';--", {400}),
        ("alpha/snapshots/1' OR '1'='1", {404}),
        ("alpha/snapshots/%27%3B%20DROP%20TABLE%20nx1_data_apis%3B--", {404}),
        ("alpha'%20OR%20'1'='1/latest", {403}),
        ("alpha%22%3B%20DROP%20TABLE%20nx1_snapshots%3B--/latest", {403}),
    ],
)
def test_sql_injection_attempts_are_refused_and_change_nothing(served, path, statuses):
    before = _state(served)
    for server in served.servers:
        r = _get(server, path, served.keys["alpha"].secret)
        assert r.status_code in statuses, (server.kind, path, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    assert _state(served) == before


def _raw_status(server, target: str, extra_headers: str = "", secret: str = "") -> int:
    """Send one HTTP/1.1 request over a plain socket (no client-side size limits)."""
    request = (
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {secret}\r\n"
        f"{extra_headers}Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before reading it all
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    status_line = data.split(b"\r\n", 1)[0].decode()
    assert status_line.startswith("HTTP/1.1 "), status_line
    return int(status_line.split()[1])


@pytest.mark.parametrize("where", ["header", "query"])
def test_ten_megabyte_header_or_query_gets_a_4xx(served, where):
    huge = "a" * (10 * 1024 * 1024)
    secret = served.keys["alpha"].secret
    for server in served.servers:
        path = "/nx1/api/v1/data-apis/alpha/latest"
        if where == "header":
            status = _raw_status(server, path, f"X-Padding: {huge}\r\n", secret)
        else:
            status = _raw_status(server, f"{path}?columns={huge}", "", secret)
        assert 400 <= status < 500, (server.kind, where, status)
        # The server is still healthy afterwards.
        assert _get(server, "alpha/latest?limit=1", served.keys["alpha"].secret).status_code == 200


def test_no_secret_hash_or_traceback_in_any_log(served):
    for server in served.servers:
        text = server.log_text()
        assert "Traceback" not in text, text[-3000:]
        for secret in served.secrets_seen:
            assert secret not in text
            assert secret[12:40] not in text
            assert hashlib.sha256(secret.encode()).hexdigest() not in text
