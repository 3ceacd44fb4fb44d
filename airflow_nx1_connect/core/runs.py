"""Runs on demand: an app with a `run` key asks for a manual run of its data API's rule.

Core does not import Airflow: it talks to Airflow through the `RunLauncher` port, which
`web.runs.AirflowRunLauncher` implements with Airflow's own trigger logic in the
api-server process. Which runs this API requested is kept in the store
(`nx1_run_requests`), so that concurrent requests get one run:

- `request_run` serialises the requests of one data API in the store (a write on the data
  API's row first: a row lock on PostgreSQL, the database write lock on SQLite), returns
  the newest API-requested run that is still `queued` / `running`, or else triggers one
  and records it before the lock is released;
- `run_status` is the state of a run of the rule's DAG and the snapshot it published
  (the published snapshot of that data API whose `run_id` is the Airflow run id);
- `wait_for_run` polls until the run ends or the time is up.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.core.clock import utcnow
from airflow_nx1_connect.core.errors import NotFound, RunRefused
from airflow_nx1_connect.core.store import data_apis, run_requests, snapshots

#: The states a run is reported in (Airflow's DagRunState values).
STATES = ("queued", "running", "success", "failed")
ACTIVE_STATES = frozenset({"queued", "running"})
ENDED_STATES = frozenset({"success", "failed"})
#: `Prefer: wait=N` accepts 1..MAX_WAIT_S seconds.
MAX_WAIT_S = 60
#: How often a waiting request asks Airflow for the run's state.
POLL_S = 0.5
#: How many of the newest API-requested runs are checked for one still active.
RECENT_REQUESTS = 5


@dataclass(frozen=True)
class LaunchedRun:
    """A DAG run as the launcher reports it."""

    run_id: str
    state: str


class RunLauncher(Protocol):
    """What core needs from Airflow to start and follow DAG runs."""

    def trigger(self, dag_id: str, conf: Mapping[str, Any], *, requested_by: str) -> LaunchedRun:
        """Start a manual run of `dag_id` with `conf`; RunRefused if the DAG is paused,
        missing or cannot run; RunsUnavailable if Airflow cannot be reached."""
        ...

    def state(self, dag_id: str, run_id: str) -> str | None:
        """The run's state (one of STATES), or None when Airflow has no such run."""
        ...


@dataclass(frozen=True)
class RunStatus:
    """A run of a data API's rule: its state and the snapshot it published, if any."""

    run_id: str
    state: str
    snapshot: snaps.Snapshot | None = None

    @property
    def ended(self) -> bool:
        """True once the run succeeded or failed."""
        return self.state in ENDED_STATES


def _dag_id(api: snaps.DataApi) -> str:
    if not api.dag_id:
        raise RunRefused(
            f"Data API {api.name!r} is not tied to an Airflow DAG yet; its rule's DAG must "
            "run once (or the data API be created with --dag) before runs can be requested."
        )
    return api.dag_id


def request_run(
    engine: Engine,
    launcher: RunLauncher,
    name: str,
    *,
    key_id: str | None,
    now: dt.datetime | None = None,
) -> tuple[RunStatus, bool]:
    """A queued or running API-requested run of data API `name`, or a new one.

    Returns (the run, True if this call triggered it). Requests of one data API are
    serialised in the store, so two apps asking at the same moment get the same run.
    """
    with engine.connect() as conn:
        try:
            # The lock: a no-op write on the data API's row (not on its key, so rows that
            # reference it are not blocked), held until commit.
            locked = conn.execute(
                data_apis.update()
                .where(data_apis.c.name == name)
                .values(description=data_apis.c.description)
            )
            if not locked.rowcount:
                conn.rollback()
                snaps.get_data_api(engine, name)  # raises DataApiNotFound
            api = snaps.get_data_api(conn, name)
            dag_id = _dag_id(api)
            recent = conn.execute(
                sa.select(run_requests.c.run_id)
                .where(run_requests.c.data_api == name, run_requests.c.dag_id == dag_id)
                .order_by(run_requests.c.requested_at.desc())
                .limit(RECENT_REQUESTS)
            ).scalars()
            for run_id in list(recent):
                state = launcher.state(dag_id, run_id)
                if state in ACTIVE_STATES:
                    conn.rollback()
                    return RunStatus(run_id, state), False
            conf = {"nx1_data_api": name, "nx1_key_id": key_id}
            launched = launcher.trigger(dag_id, conf, requested_by=f"nx1 key {key_id}")
            conn.execute(
                run_requests.insert().values(
                    dag_id=dag_id,
                    run_id=launched.run_id,
                    data_api=name,
                    key_id=key_id,
                    requested_at=now or utcnow(),
                )
            )
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
    return RunStatus(launched.run_id, launched.state), True


def published_by(engine: Engine, name: str, run_id: str) -> snaps.Snapshot | None:
    """The retained published snapshot of data API `name` that run `run_id` wrote, or None."""
    query = (
        sa.select(snapshots)
        .where(
            snapshots.c.data_api == name,
            snapshots.c.run_id == run_id,
            snapshots.c.status == "published",
        )
        .order_by(snapshots.c.published_at.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return snaps.snapshot_from_row(row) if row is not None else None


def run_status(engine: Engine, launcher: RunLauncher, name: str, run_id: str) -> RunStatus:
    """The state of run `run_id` of data API `name` and the snapshot it published.

    A run is known when it was requested through this API or published a retained
    snapshot of this data API (a scheduled run, say); any other id is NotFound, without
    asking Airflow. A run Airflow no longer has but whose snapshot is kept is a success.
    """
    api = snaps.get_data_api(engine, name)
    with engine.connect() as conn:
        requested = conn.execute(
            sa.select(run_requests.c.run_id).where(
                run_requests.c.data_api == name, run_requests.c.run_id == run_id
            )
        ).first()
    snapshot = published_by(engine, name, run_id)
    state = None
    if (requested is not None or snapshot is not None) and api.dag_id:
        state = launcher.state(api.dag_id, run_id)
    if state is None and snapshot is not None:
        state = "success"
    if state is None:
        raise NotFound(
            f"Data API {name!r} has no run {run_id!r}; use the run_id (or status_url) that "
            f"POST /data-apis/{name}/runs returned."
        )
    return RunStatus(run_id, state, snapshot)


def wait_for_run(
    engine: Engine,
    launcher: RunLauncher,
    name: str,
    run: RunStatus,
    seconds: float,
    *,
    poll: float = POLL_S,
    clock: Callable[[], float] = time.monotonic,
) -> RunStatus:
    """The run's status once it has ended, or after `seconds` at the latest."""
    deadline = clock() + seconds
    while True:
        if run.ended:
            return run_status(engine, launcher, name, run.run_id)
        left = deadline - clock()
        if left <= 0:
            return run
        time.sleep(min(poll, left))
        run = run_status(engine, launcher, name, run.run_id)


# ---------------------------------------------------------------------------------------
# Waiting without a thread: `Prefer: wait` on an event loop
# ---------------------------------------------------------------------------------------


class _Watch:
    """One poll loop per run and event loop, shared by every request waiting for it."""

    def __init__(self, engine: Engine, launcher: RunLauncher, name: str, run: RunStatus) -> None:
        self.engine, self.launcher, self.name = engine, launcher, name
        self.last = run
        self.waiters = 0
        self.ended = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def poll(self, every: float) -> None:
        """Ask for the run's state every `every` seconds (in a thread: the store and
        Airflow's database are blocking calls) until it ends or nobody waits any more."""
        while self.waiters > 0:
            await asyncio.sleep(every)
            status = await asyncio.to_thread(
                run_status, self.engine, self.launcher, self.name, self.last.run_id
            )
            self.last = status
            if status.ended:
                self.ended.set()
                return


_watches: dict[tuple[int, str, str, str], _Watch] = {}


async def wait_for_run_async(
    engine: Engine,
    launcher: RunLauncher,
    name: str,
    run: RunStatus,
    seconds: float,
    *,
    poll: float = POLL_S,
) -> RunStatus:
    """`wait_for_run` for an event loop: the waiting holds no thread.

    Requests that wait for the same run share one poll loop (one state query per `poll`
    seconds, however many wait), run by the event loop; each request only awaits it.
    """
    if run.ended:
        return await asyncio.to_thread(run_status, engine, launcher, name, run.run_id)
    loop = asyncio.get_running_loop()
    key = (id(loop), engine.url.render_as_string(hide_password=False), name, run.run_id)
    watch = _watches.get(key)
    if watch is None or watch.task is None or watch.task.done():
        watch = _watches[key] = _Watch(engine, launcher, name, run)
    watch.waiters += 1
    if watch.task is None:
        watch.task = loop.create_task(watch.poll(poll))
    try:
        await asyncio.wait_for(watch.ended.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
    finally:
        watch.waiters -= 1
        if watch.waiters == 0 and _watches.get(key) is watch:
            del _watches[key]
            if watch.task is not None and not watch.task.done():
                watch.task.cancel()
    return watch.last
