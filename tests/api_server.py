"""Run a real `airflow api-server` for a test module (free port, health wait, clean stop),
and, for tests that need runs executed, the scheduler and the dag-processor beside it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"


def api_server_env(home: Path, store_url: str, **extra: str) -> dict[str, str]:
    """The environment of a test api-server: its own AIRFLOW_HOME, the FAB auth manager
    (the /pluginsv2 mount needs it), one worker, the snapshot store at `store_url`."""
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": FAB_AUTH_MANAGER,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN": store_url,
        **extra,
    }


def migrate_airflow(env: dict[str, str]) -> None:
    """`airflow db migrate` in `env`'s AIRFLOW_HOME (about 8 s)."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextmanager
def running_airflow_components(
    env: dict[str, str], home: Path, components: tuple[str, ...] = ("scheduler", "dag-processor")
) -> Iterator[dict[str, Path]]:
    """Start `airflow <component>` for each component; yield their log files; stop them after.

    Each runs in its own process group, stopped with SIGTERM (SIGKILL after 20 s).
    """
    procs: list[subprocess.Popen[bytes]] = []
    logs: dict[str, Path] = {}
    try:
        for component in components:
            logs[component] = home / f"{component}.log"
            with logs[component].open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "airflow", component],
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        yield logs
    finally:
        for proc in procs:
            _stop(proc)


@contextmanager
def running_api_server(
    env: dict[str, str], home: Path, *, workers: int | None = None, port: int | None = None
) -> Iterator[tuple[str, Path]]:
    """Start `airflow api-server` with `env`; yield (its URL, its log file); stop it after.

    `workers`, when given, is passed as `--workers`; `port` defaults to a free one. Waits
    up to 180 s for /api/v2/monitor/health; fails with the log's tail if the server exits
    or does not come up. The server runs in its own process group, stopped as a whole.
    """
    port = port or free_port()
    log = home / "api-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "airflow",
                "api-server",
                "--port",
                str(port),
                "--host",
                "127.0.0.1",
                *(["--workers", str(workers)] if workers else []),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"api-server exited:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"api-server not up in 180 s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield url, log
    finally:
        _stop(proc)
