"""Leases: proof that a `writing` snapshot's writer is still alive.

A writer holds the lease of its snapshot for the whole write; the operating system (an
flock beside a SQLite store) or the server (a PostgreSQL session advisory lock) releases
it when the process dies, so a `writing` record whose lease is free was left by a killed
run and may be removed (`writer.cleanup_abandoned`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine


class Lease:
    """Proof that a `writing` snapshot's writer is alive, released by the OS or server on death.

    PostgreSQL: a session advisory lock on a dedicated connection. SQLite: an exclusive
    flock on a file in a `<store>.nx1-leases` folder beside the database file.
    """

    def __init__(self, engine: Engine, snapshot_id: str) -> None:
        self.engine = engine
        self.snapshot_id = snapshot_id
        self._conn: Connection | None = None
        self._fd: int | None = None

    @staticmethod
    def _lock_key(snapshot_id: str) -> int:
        return int.from_bytes(hashlib.sha256(snapshot_id.encode()).digest()[:8], "big", signed=True)

    @staticmethod
    def _lease_dir(engine: Engine) -> Path | None:
        database = engine.url.database
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        return Path(database).expanduser().resolve().with_name(Path(database).name + ".nx1-leases")

    def _path(self) -> Path | None:
        folder = self._lease_dir(self.engine)
        return folder / f"{self.snapshot_id}.lease" if folder else None

    def acquire(self) -> None:
        if self.engine.dialect.name == "postgresql":
            self._conn = self.engine.connect()
            self._conn.execute(
                sa.text("SELECT pg_advisory_lock(:k)"), {"k": self._lock_key(self.snapshot_id)}
            )
            self._conn.commit()
            return
        path = self._path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute(
                    sa.text("SELECT pg_advisory_unlock(:k)"),
                    {"k": self._lock_key(self.snapshot_id)},
                )
                self._conn.commit()
            finally:
                self._conn.close()
                self._conn = None
        if self._fd is not None:
            path = self._path()
            if path is not None:
                path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    @classmethod
    def is_abandoned(cls, engine: Engine, snapshot_id: str) -> bool:
        """True when no live process holds the lease of this `writing` snapshot."""
        if engine.dialect.name == "postgresql":
            key = cls._lock_key(snapshot_id)
            with engine.connect() as conn:
                got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
                if got:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
            return bool(got)
        folder = cls._lease_dir(engine)
        if folder is None:
            return False
        path = folder / f"{snapshot_id}.lease"
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        else:
            path.unlink(missing_ok=True)
            return True
        finally:
            os.close(fd)


#: `pg_advisory_lock(namespace, key)`: the two-key form, so build locks never meet a
#: lease's one-key lock.
_BUILD_NAMESPACE = 0x6E7831  # "nx1"
_local_build_locks: dict[tuple[str, str], threading.Lock] = {}
_local_build_locks_guard = threading.Lock()


class BuildLock:
    """One build at a time per data API: held by an append or merge run from reading the
    latest snapshot it builds on until its publish, and by an overwrite run around its
    publish, so runs that overlap in time publish as if one came after the other.

    Released by the OS or the server if the holder dies, like a `Lease`: a PostgreSQL
    session advisory lock on a dedicated connection; an flock on a file in the
    `<store>.nx1-leases` folder; a lock of this process for an in-memory SQLite store.
    """

    def __init__(self, engine: Engine, data_api: str) -> None:
        self.engine = engine
        self.data_api = data_api
        self._conn: Connection | None = None
        self._fd: int | None = None
        self._local: threading.Lock | None = None

    def _key(self) -> int:
        digest = hashlib.sha256(self.data_api.encode()).digest()[:4]
        return int.from_bytes(digest, "big", signed=True)

    def acquire(self, *, blocking: bool = True) -> bool:
        """Take the lock (waiting for it unless `blocking` is False); True when taken."""
        if self.engine.dialect.name == "postgresql":
            conn = self.engine.connect()
            fn = "pg_advisory_lock" if blocking else "pg_try_advisory_lock"
            got = conn.execute(
                sa.text(f"SELECT {fn}(:ns, :k)"), {"ns": _BUILD_NAMESPACE, "k": self._key()}
            ).scalar()
            conn.commit()
            if blocking or got:
                self._conn = conn
                return True
            conn.close()
            return False
        folder = Lease._lease_dir(self.engine)
        if folder is None:
            with _local_build_locks_guard:
                lock = _local_build_locks.setdefault(
                    (str(self.engine.url), self.data_api), threading.Lock()
                )
            if not lock.acquire(blocking=blocking):
                return False
            self._local = lock
            return True
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / f"build-{self.data_api}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        """Let the next run of this data API build."""
        if self._conn is not None:
            try:
                self._conn.execute(
                    sa.text("SELECT pg_advisory_unlock(:ns, :k)"),
                    {"ns": _BUILD_NAMESPACE, "k": self._key()},
                )
                self._conn.commit()
            finally:
                self._conn.close()
                self._conn = None
        if self._fd is not None:
            os.close(self._fd)  # the file stays: unlinking it could split two waiters
            self._fd = None
        if self._local is not None:
            self._local.release()
            self._local = None
