"""Delivering webhook events: claim due deliveries, sign, POST, record, retry.

One `Deliverer` runs in a child process of every api-server process (`core.webhooks.process`,
started with the plugin's FastAPI app) or as `nx1-connect webhooks deliver`. Any number of them
may run against one store, on any number of hosts:

- `claim` marks up to N due deliveries (pending or retrying, `next_attempt_at` passed, no live
  claim) as this deliverer's for `LEASE_S` seconds, in one statement: on PostgreSQL the rows
  are chosen `FOR UPDATE SKIP LOCKED` (two deliverers never wait on, or take, the same rows);
  on SQLite the statement runs under the store's one write lock. So an attempt is made by one
  deliverer only. A deliverer killed mid-attempt leaves its claim, which expires after
  `LEASE_S`: the delivery is attempted again then (at least once; same `webhook-id`).
- `attempt` resolves the URL's host, refuses a private address unless
  `webhook_allow_private_hosts` (checked on the address actually connected to: the request is
  pinned to it, with the host name kept for `Host` and TLS), signs the stored body per Standard
  Webhooks with a fresh `webhook-timestamp`, and POSTs it with httpx: no redirects followed, no
  proxies from the environment, at most `ATTEMPT_TIMEOUT_S` in all. A 2xx is delivered.
- `finish` records answers (a turn's worth, in one transaction): `delivered`, or `retrying`
  after the next of `webhook_retry_delays`, or `failed` after the last. It only touches a
  delivery still claimed by this deliverer. An answer that cannot be recorded leaves its claim
  to expire: the delivery is attempted again (at least once).
- `prune` (once an hour per deliverer) deletes finished deliveries, and then events left
  without deliveries, older than `webhook_history_days`.

Rule tasks and publishes only insert rows (`core.webhooks.record_publish`); nothing here runs
in them, so a slow or dead receiver never delays one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from airflow_nx1_connect.core.clock import utcnow
from airflow_nx1_connect.core.errors import one_line
from airflow_nx1_connect.core.webhooks import decrypt_secret, is_private, sign, url_parts
from airflow_nx1_connect.core.webhooks.tables import deliveries, events, webhooks

log = logging.getLogger(__name__)

#: A receiver must answer 2xx within this many seconds (connect, send and answer).
ATTEMPT_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0
#: How long a claim holds a delivery: far longer than an attempt, so only a dead (or frozen)
#: deliverer's claims expire.
LEASE_S = 30
#: Deliveries in flight per deliverer.
CONCURRENCY = 32
#: After an attempt finishes, how long the loop waits for others before it records them (and
#: claims more) in one go.
BATCH_WINDOW_S = 0.01
#: How often a deliverer deletes the history older than `webhook_history_days` (seconds),
#: and how many rows one of its transactions deletes at most.
PRUNE_EVERY_S = 3600.0
PRUNE_BATCH = 1000
#: Seconds between two looks for due deliveries when there were none.
POLL_S = 0.5
#: Bytes of a receiver's answer read (and dropped) so that the connection can be reused.
ANSWER_BYTES = 65536
#: Longest error text kept on a delivery.
ERROR_LENGTH = 500
USER_AGENT = "airflow-nx1-connect-webhooks"


@dataclass(frozen=True)
class Claimed:
    """A delivery claimed for one attempt, with what the attempt needs."""

    id: str
    event_id: str
    attempts: int
    url: str
    secret: str
    secret_encrypted: bool
    payload: str


def worker_id() -> str:
    """A name for this deliverer: host, process, and a random part."""
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _due(now: dt.datetime) -> Any:
    return sa.and_(
        deliveries.c.status.in_(("pending", "retrying")),
        deliveries.c.next_attempt_at <= now,
        sa.or_(deliveries.c.claimed_until.is_(None), deliveries.c.claimed_until < now),
    )


def claim(engine: Engine, worker: str, limit: int, now: dt.datetime | None = None) -> list[Claimed]:
    """Claim up to `limit` due deliveries for `worker` (see the module docstring)."""
    now = now or utcnow()
    if limit <= 0:
        return []
    due = _due(now)
    if engine.dialect.name == "sqlite":
        # A plain read first: most polls find nothing, and must not take the write lock.
        with engine.connect() as conn:
            if conn.execute(sa.select(deliveries.c.id).where(due).limit(1)).first() is None:
                return []
    chosen = (
        sa.select(deliveries.c.id)
        .where(due)
        .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
        .limit(limit)
    )
    if engine.dialect.name == "postgresql":
        chosen = chosen.with_for_update(skip_locked=True)
    until = now + dt.timedelta(seconds=LEASE_S)
    with engine.begin() as conn:
        ids = list(
            conn.execute(
                deliveries.update()
                .where(deliveries.c.id.in_(chosen.scalar_subquery()))
                .values(claimed_by=worker, claimed_until=until)
                .returning(deliveries.c.id)
            ).scalars()
        )
        if not ids:
            return []
        rows = conn.execute(
            sa.select(
                deliveries.c.id,
                deliveries.c.event_id,
                deliveries.c.attempts,
                webhooks.c.url,
                webhooks.c.secret,
                webhooks.c.secret_encrypted,
                events.c.payload,
            )
            .select_from(
                deliveries.join(webhooks, webhooks.c.id == deliveries.c.webhook_id).join(
                    events, events.c.id == deliveries.c.event_id
                )
            )
            .where(deliveries.c.id.in_(ids))
            .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
        ).all()
    return [Claimed(*row) for row in rows]


def release(engine: Engine, worker: str) -> int:
    """Give up `worker`'s claims (a deliverer that stops); how many were held."""
    with engine.begin() as conn:
        return conn.execute(
            deliveries.update()
            .where(deliveries.c.claimed_by == worker)
            .values(claimed_by=None, claimed_until=None)
        ).rowcount


def outcome(
    attempts: int, ok: bool, delays: tuple[int, ...], now: dt.datetime
) -> tuple[str, dt.datetime | None]:
    """(status, next_attempt_at) after attempt number `attempts` (1 = the first)."""
    if ok:
        return "delivered", None
    if attempts <= len(delays):
        return "retrying", now + dt.timedelta(seconds=delays[attempts - 1])
    return "failed", None


@dataclass(frozen=True)
class Answer:
    """One attempt's answer, waiting to be recorded."""

    item: Claimed
    response_status: int | None
    error: str | None
    at: dt.datetime


def finish(
    engine: Engine, worker: str, answers: list[Answer], *, delays: tuple[int, ...]
) -> list[str]:
    """Record attempts' answers, in one transaction, on deliveries still claimed by `worker`;
    their new statuses (in order)."""
    if not answers:
        return []
    statuses: list[str] = []
    params: list[dict[str, Any]] = []
    for answer in answers:
        code, error = answer.response_status, answer.error
        ok = error is None and code is not None and 200 <= code < 300
        attempts = answer.item.attempts + 1
        status, next_at = outcome(attempts, ok, delays, answer.at)
        statuses.append(status)
        params.append(
            {
                "b_id": answer.item.id,
                "b_attempts": attempts,
                "b_status": status,
                "b_next": next_at,
                "b_last": answer.at,
                "b_code": code,
                "b_error": (error or None) and error[:ERROR_LENGTH],
            }
        )
    with engine.begin() as conn:
        conn.execute(
            deliveries.update()
            .where(deliveries.c.id == sa.bindparam("b_id"), deliveries.c.claimed_by == worker)
            .values(
                attempts=sa.bindparam("b_attempts"),
                status=sa.bindparam("b_status"),
                next_attempt_at=sa.bindparam("b_next"),
                last_attempt_at=sa.bindparam("b_last"),
                response_status=sa.bindparam("b_code"),
                error=sa.bindparam("b_error"),
                claimed_by=None,
                claimed_until=None,
            ),
            params,
        )
    return statuses


def prune(engine: Engine, older_than: dt.datetime, batch: int = PRUNE_BATCH) -> tuple[int, int]:
    """Delete finished deliveries (delivered or failed) whose last attempt is before
    `older_than`, then the events left with no delivery that are older too; in short
    transactions of at most `batch` rows. Returns (deliveries, events) deleted."""
    finished = sa.and_(
        deliveries.c.status.in_(("delivered", "failed")),
        sa.func.coalesce(deliveries.c.last_attempt_at, deliveries.c.created_at) < older_than,
    )
    orphaned = sa.and_(
        events.c.created_at < older_than,
        ~sa.exists().where(deliveries.c.event_id == events.c.id),
    )
    counts = []
    for table, where in ((deliveries, finished), (events, orphaned)):
        total = 0
        while True:
            chosen = sa.select(table.c.id).where(where).limit(batch).scalar_subquery()
            with engine.begin() as conn:
                done = conn.execute(table.delete().where(table.c.id.in_(chosen))).rowcount
            total += done
            if done < batch:
                break
        counts.append(total)
    return counts[0], counts[1]


def _pinned(url: str, address: str) -> str:
    """`url` with its host replaced by the IP address it resolved to (port kept)."""
    parts = urlsplit(url)
    scheme, _host, port = url_parts(url)
    literal = f"[{address}]" if ":" in address else address
    return urlunsplit((scheme, f"{literal}:{port}", parts.path or "/", parts.query, ""))


def _host_header(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port else host


async def attempt(
    client: Any, item: Claimed, *, allow_private: bool
) -> tuple[int | None, str | None]:
    """One signed POST of the delivery's event: (response status or None, error or None)."""
    try:
        _scheme, host, port = url_parts(item.url)
    except ValueError:
        return None, "the webhook URL is not valid"
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), CONNECT_TIMEOUT_S
        )
    except (OSError, asyncio.TimeoutError) as exc:
        return None, f"cannot resolve {host}: {type(exc).__name__}: {exc}"
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        return None, f"cannot resolve {host}"
    if not allow_private:
        private = [a for a in addresses if is_private(a)]
        if private:
            return None, (
                f"refused: {host} resolves to {private[0]}, a loopback, private, link-local or "
                "unspecified address ([nx1_connect] webhook_allow_private_hosts is off)"
            )
    try:
        secret = decrypt_secret(item.secret, item.secret_encrypted)
    except Exception as exc:
        name = type(exc).__name__
        return None, f"cannot decrypt the webhook secret ({name}); check [core] fernet_key"
    body = item.payload.encode()
    timestamp = int(time.time())
    headers = {
        "Host": _host_header(item.url),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": item.event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, item.event_id, timestamp, body),
    }
    extensions = {"sni_hostname": host} if item.url.startswith("https") else {}
    request = client.build_request(
        "POST",
        _pinned(item.url, addresses[0]),
        content=body,
        headers=headers,
        extensions=extensions,
    )

    async def send() -> int:
        response = await client.send(request, stream=True, follow_redirects=False)
        try:  # read a short answer, so that its connection is kept for the next attempt
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read > ANSWER_BYTES:
                    break  # a long answer is not read: its connection is closed
        finally:
            await response.aclose()
        return int(response.status_code)

    try:
        status = await asyncio.wait_for(send(), ATTEMPT_TIMEOUT_S)
    except asyncio.TimeoutError:
        return None, f"no answer within {ATTEMPT_TIMEOUT_S:g} s"
    except Exception as exc:  # connection refused or reset, TLS, protocol errors
        detail = " ".join(str(exc).split()) or type(exc).__name__
        return None, f"{type(exc).__name__}: {detail}"
    if 200 <= status < 300:
        return status, None
    return status, f"the receiver answered {status}"


def new_client() -> Any:
    """The HTTP client of one deliverer: no redirects, no environment proxies, short timeouts."""
    import httpx

    return httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(ATTEMPT_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        limits=httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY),
    )


class Deliverer:
    """The delivery loop: claims due deliveries and attempts them, CONCURRENCY at a time.

    `engine` is a callable returning the store engine (settings are read when used);
    `settings` returns the current `core.settings.Settings`.
    """

    def __init__(
        self,
        engine: Callable[[], Engine],
        settings: Callable[[], Any],
        *,
        concurrency: int = CONCURRENCY,
        poll_s: float = POLL_S,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.concurrency = concurrency
        self.poll_s = poll_s
        self.worker = worker_id()
        self.stopping = threading.Event()
        self.attempts = 0
        #: Answers of finished attempts, recorded by the loop's next turn.
        self.answers: list[Answer] = []
        #: When to delete old history next (monotonic seconds): at the first turn.
        self.prune_at = 0.0

    async def run(self, *, once: bool = False) -> int:
        """Deliver until `stop()` (or, with `once`, until nothing is due and nothing is in
        flight). Returns the attempts made.

        Each turn of the loop records the answers that came back since the last turn and
        claims what is due, in one call to the store (two short transactions), so a drain costs
        about one commit per turn rather than two per delivery.
        """
        running: set[asyncio.Task[None]] = set()
        async with new_client() as client:
            while not self.stopping.is_set():
                answers, self.answers = self.answers, []
                free = self.concurrency - len(running)
                claimed: list[Claimed] = []
                if answers or free > 0:
                    try:
                        claimed = await asyncio.to_thread(self._record_and_claim, answers, free)
                    except Exception as exc:  # recorded-or-not, their claims expire: resent
                        log.warning("Webhook deliveries cannot be claimed now: %s", one_line(exc))
                        if once:
                            raise
                        await self._sleep(max(self.poll_s, 2.0))
                        continue
                for item in claimed:
                    task = asyncio.create_task(self._deliver(client, item))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if claimed and len(claimed) == free:
                    await asyncio.sleep(0)
                    continue
                if once and not claimed and not running and not self.answers:
                    break
                if running and (once or len(running) >= self.concurrency):
                    done, _ = await asyncio.wait(
                        running, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED
                    )
                    if done and running:  # let the others that are about to finish join in
                        await asyncio.wait(running, timeout=BATCH_WINDOW_S)
                    continue
                await self._sleep(self.poll_s)
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            try:
                answers, self.answers = self.answers, []
                await asyncio.to_thread(self._record_and_claim, answers, 0)
                await asyncio.to_thread(release, self.engine(), self.worker)
            except Exception as exc:  # they expire after LEASE_S instead
                log.warning("Webhook claims cannot be released: %s", one_line(exc))
        return self.attempts

    def _record_and_claim(self, answers: list[Answer], free: int) -> list[Claimed]:
        """(In a worker thread) record `answers`, then claim up to `free` due deliveries."""
        engine = self.engine()
        if answers:
            statuses = finish(
                engine, self.worker, answers, delays=self.settings().webhook_retry_delays
            )
            for answer, status in zip(answers, statuses, strict=True):
                item = answer.item
                level = logging.DEBUG if status == "delivered" else logging.INFO
                log.log(
                    level,
                    "Webhook delivery %s (event %s) attempt %d: %s%s",
                    item.id,
                    item.event_id,
                    item.attempts + 1,
                    status,
                    f" ({answer.error})" if answer.error else "",
                )
        if time.monotonic() >= self.prune_at:
            self.prune_at = time.monotonic() + PRUNE_EVERY_S
            days = self.settings().webhook_history_days
            gone = prune(engine, utcnow() - dt.timedelta(days=days))
            if any(gone):
                log.info(
                    "Deleted %d webhook deliveries and %d events older than %d days",
                    *gone,
                    days,
                )
        return claim(engine, self.worker, free) if free > 0 else []

    async def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.1, seconds))

    async def _deliver(self, client: Any, item: Claimed) -> None:
        settings = self.settings()
        status, error = await attempt(
            client, item, allow_private=settings.webhook_allow_private_hosts
        )
        self.attempts += 1
        self.answers.append(Answer(item, status, error, utcnow()))

    def stop(self) -> None:
        """Ask the loop to end (in-flight attempts are cancelled; their claims expire)."""
        self.stopping.set()

    def serve(self, *, once: bool = False) -> int:
        """`run` as a process's main loop: SIGTERM and SIGINT stop it. Returns the attempts."""

        def stop(*_args: object) -> None:
            self.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        return asyncio.run(self.run(once=once))
