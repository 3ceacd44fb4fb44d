"""A real distributed Airflow deployment on this machine, for the distributed-run test.

`Deployment` is what every process shares: a fresh PostgreSQL database (Airflow's metadata,
the Celery result backend, and the snapshot store in its schema `nx1`), a Redis database of its
own as the Celery broker, an AIRFLOW_HOME, a DAGs folder and the environment of every Airflow
process (the settings of docs/production.md). `Processes` starts Airflow's long-running
processes (scheduler, dag-processor, `airflow celery worker`), each in its own process group
with its own log, and stops every one of them, even when a test fails.

The settings differ from docs/production.md's only where a test needs them to: free ports, a low
`[scheduler] task_instance_heartbeat_timeout` (a killed worker's task is retried within
seconds, not minutes), `[scheduler] use_job_schedule = False` (only triggered runs) and a
long `[dag_processor] min_file_process_interval` (less CPU on a small shared machine).
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.api_server import free_port
from tests.conftest import PG_URL

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
REDIS_URL = os.environ.get("NX1_TEST_REDIS", "redis://127.0.0.1:6379/13")
STORE_SCHEMA = "nx1"


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    """Poll `check` until it returns something truthy (returned); fail after `timeout` s."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        value = check()
        if value:
            print(f"[dist] {what}: {time.monotonic() - started:.1f} s", file=sys.stderr)
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def _db_url(name: str, driver: str = "postgresql") -> str:
    from sqlalchemy.engine import make_url

    url = make_url(PG_URL).set(drivername=driver, database=name)
    return url.render_as_string(hide_password=False)


@dataclass
class Deployment:
    """The shared parts of one distributed deployment; see `deployment()`."""

    home: Path
    dags: Path
    database: str
    api_port: int
    env: dict[str, str]
    logs: Path = field(init=False)

    def __post_init__(self) -> None:
        self.logs = self.home / "process-logs"
        self.logs.mkdir(exist_ok=True)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def metadata_url(self) -> str:
        """The metadata database for psycopg (the test's own queries)."""
        return _db_url(self.database)

    @property
    def store_url(self) -> str:
        return self.env["AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN"]

    def run(self, *argv: str, timeout: float = 240) -> str:
        """Run a command (`airflow ...`, `nx1-connect ...`) with the deployment's environment;
        return its stdout; fail with its output unless it exits 0."""
        argv0 = str(BIN / argv[0]) if (BIN / argv[0]).exists() else argv[0]
        done = subprocess.run(
            [argv0, *argv[1:]],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {done.returncode}:\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
            )
        return done.stdout

    def run_all(self, *commands: tuple[str, ...], timeout: float = 240) -> list[str]:
        """Run several commands at once (each as `run`); their stdouts in order."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(commands)) as pool:
            futures = [pool.submit(self.run, *c, timeout=timeout) for c in commands]
            return [f.result() for f in futures]

    def meta(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Rows of a query on Airflow's metadata database."""
        import psycopg

        with psycopg.connect(self.metadata_url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def store(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Rows of a query on the snapshot store (its schema)."""
        import psycopg

        with psycopg.connect(self.metadata_url, autocommit=True) as conn:
            conn.execute(f"SET search_path TO {STORE_SCHEMA}")
            return conn.execute(sql, params).fetchall()


def settings(
    home: Path, dags: Path, database: str, api_port: int, extra: dict[str, str]
) -> dict[str, str]:
    """The environment of every Airflow process of the deployment."""
    base = f"http://127.0.0.1:{api_port}"
    settings = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
        ),
        # The same secrets on every process (tasks call the api-server's execution API).
        "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": _db_url(database, "postgresql+psycopg"),
        "AIRFLOW__CELERY__BROKER_URL": REDIS_URL,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + _db_url(database, "postgresql+psycopg"),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
        "AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN": (
            f"{_db_url(database)}?options=-csearch_path%3D{STORE_SCHEMA}"
        ),
        # Free ports for everything that listens.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port()),
        # Test-only: a killed worker's task is noticed within seconds, not minutes; only
        # triggered runs; DAG files (which do not change) are not parsed again every 30 s.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
    }
    settings.update(extra)
    # Nothing from the caller's Airflow setup leaks in (the test session has its own home).
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("AIRFLOW_") or k.startswith("AIRFLOW__"))
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    env.update(settings)
    return env


def _flush_redis() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    finally:
        client.close()


@contextmanager
def deployment(
    tmp: Path,
    dag_files: dict[str, Path | str],
    extra_env: dict[str, str] | None = None,
    migrate: tuple[tuple[str, ...], ...] = (
        ("airflow", "db", "migrate"),
        ("nx1-connect", "db", "migrate"),
    ),
) -> Iterator[Deployment]:
    """A fresh database and broker, AIRFLOW_HOME, DAGs folder and environment; all removed after.

    `dag_files` maps a file name in the DAGs folder to a file to copy (or a folder to copy,
    such as an example DAG's `sql/`) or to a DAG's source text. Migrates Airflow's metadata
    database (`airflow db migrate`) and the snapshot store (`nx1-connect db migrate`) at once,
    as a deployer does before starting any process.
    """
    import psycopg

    home = tmp / "airflow-home"
    dags = tmp / "dags"
    home.mkdir()
    dags.mkdir()
    for name, source in dag_files.items():
        if isinstance(source, Path) and source.is_dir():
            shutil.copytree(source, dags / name)
        elif isinstance(source, Path):
            shutil.copy(source, dags / name)
        else:
            (dags / name).write_text(source)
    database = f"nx1_dist_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    try:
        with psycopg.connect(_db_url(database), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{STORE_SCHEMA}"')
        _flush_redis()
        port = free_port()
        dep = Deployment(
            home, dags, database, port, settings(home, dags, database, port, extra_env or {})
        )
        dep.run_all(*migrate, timeout=300)
        yield dep
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        _flush_redis()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


class Processes:
    """Airflow's long-running processes of a deployment; `stop_all` ends every one."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.procs: dict[str, Proc] = {}

    def start(self, name: str, *argv: str, env: dict[str, str] | None = None) -> Proc:
        """Start `argv` (e.g. "airflow", "scheduler") in a new process group, output to a log."""
        log = self.dep.logs / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [str(BIN / argv[0]), *argv[1:]],
                env={**self.dep.env, **(env or {})},
                cwd=self.dep.home,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = self.procs[name] = Proc(name, popen, log)
        return proc

    def check_alive(self, *names: str) -> None:
        for name in names or tuple(self.procs):
            proc = self.procs[name]
            if proc.popen.poll() is not None:
                raise AssertionError(f"{name} exited ({proc.popen.returncode}):\n{proc.tail()}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the whole process group of `name` and wait for its leader."""
        proc = self.procs[name]
        try:
            os.killpg(proc.popen.pid, sig)
        except ProcessLookupError:
            pass
        proc.popen.wait(timeout=30)

    def stop_all(self) -> None:
        """SIGTERM every process group, SIGKILL what is left after 10 s; newest first."""
        for proc in reversed(self.procs.values()):
            try:
                os.killpg(proc.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        for proc in reversed(self.procs.values()):
            try:
                proc.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
            # The group may outlive its leader (pool children): end it in any case.
            try:
                os.killpg(proc.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.popen.wait(timeout=10)


def scheduler_healthy(dep: Deployment) -> bool:
    port = dep.env["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT"]
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def worker_ready(proc: Proc) -> bool:
    """True once a Celery worker's log says it is ready to take tasks."""
    return " ready." in proc.log.read_text(errors="replace")


# ---------------------------------------------------------------------------------------
# Which api-server worker process answered a connection (Linux /proc)
# ---------------------------------------------------------------------------------------


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 4 (ppid) comes after the parenthesised command name.
    return int(stat.rpartition(")")[2].split()[1])


def _pids() -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]


def descendants(pid: int) -> set[int]:
    """`pid` and every process below it."""
    parents = {p: _ppid(p) for p in _pids()}
    found = {pid}
    grew = True
    while grew:
        more = {p for p, parent in parents.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found


def _holders(inodes: set[str], pids: list[int] | None = None) -> list[int]:
    """The processes (of `pids`, default all) with a file descriptor on one of these sockets."""
    targets = {f"socket:[{inode}]" for inode in inodes}
    found = []
    for pid in pids if pids is not None else _pids():
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in targets:
                    found.append(pid)
                    break
            except OSError:
                continue
    return found


def _tcp_sockets() -> list[list[str]]:
    return [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]


def api_worker_pids(port: int) -> list[int]:
    """The worker processes of the server listening on 127.0.0.1:`port`: the processes that
    share its listening socket and whose parent shares it too (uvicorn's supervisor), or the
    one process holding it (a single worker runs in the server's own process)."""
    local = f"0100007F:{port:04X}"
    inodes = {f[9] for f in _tcp_sockets() if f[1] == local and f[3] == "0A"}
    holders = _holders(inodes)
    workers = sorted(p for p in holders if _ppid(p) in holders)
    return workers or sorted(holders)


def serving_pid(server_port: int, client_port: int, pids: list[int]) -> int | None:
    """Which of `pids` holds the server end of the connection 127.0.0.1:client -> :server."""
    local = f"0100007F:{server_port:04X}"
    remote = f"0100007F:{client_port:04X}"
    inodes = {f[9] for f in _tcp_sockets() if f[1] == local and f[2] == remote and f[9] != "0"}
    holders = _holders(inodes, pids) if inodes else []
    return holders[0] if len(holders) == 1 else None
