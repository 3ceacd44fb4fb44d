"""A real uvicorn server with both mounts of the data API (`tests.web.clients_app`): the
FastAPI app under `/nx1` and the Flask blueprint under `/pluginsv2`, on a given store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.api_server import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Mounts:
    """The server's port and process, and where each mount's `{base}` is."""

    port: int
    proc: subprocess.Popen[bytes]

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def bases(self) -> dict[str, str]:
        """Mount -> `{base}` of the data API on it."""
        return {
            "fastapi": f"{self.root}/nx1/api/v1",
            "flask": f"{self.root}/pluginsv2/nx1/api/v1",
        }


@contextmanager
def serve_both_mounts(store_url: str, log_path: Path) -> Iterator[Mounts]:
    """Start the server on a free port, wait until it answers, stop it at the end."""
    port = free_port()
    env = {**os.environ, "AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN": store_url}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.web.clients_app:app", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    mounts = Mounts(port, proc)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the server did not answer within 120 s"
            try:
                httpx.get(f"{mounts.bases['fastapi']}/data-apis/probe", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        yield mounts
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
