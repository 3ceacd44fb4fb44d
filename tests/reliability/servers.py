"""Real data REST API server processes for the reliability tests.

`fastapi`: uvicorn serving `airflow_nx1_connect.web.api:app`; `flask`: uvicorn serving a
Flask app with the blueprint through its WSGI interface. Both read the store from
`AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN`, as inside the Airflow api-server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.api_server import free_port

ROOT = Path(__file__).resolve().parents[2]
APPS = {
    "fastapi": ["tests.reliability.fastapi_app:app"],
    "flask": ["tests.reliability.flask_app:app", "--interface", "wsgi"],
}


@dataclass
class Server:
    """One server process and where to reach it."""

    kind: str
    port: int
    proc: subprocess.Popen
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/nx1/api/v1"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_server(kind: str, store_url: str, log_dir: Path) -> Server:
    """Start one server on a free port and wait until it answers HTTP."""
    port = free_port()
    log_path = log_dir / f"{kind}-{port}.log"
    env = {**os.environ, "AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN": store_url}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                *APPS[kind],
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "info",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(kind, port, proc, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} server exited: {server.log_text()[-2000:]}")
        try:
            httpx.get(f"{server.base}/data-apis/probe", timeout=2)
            return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{kind} server did not answer within 60 s")
