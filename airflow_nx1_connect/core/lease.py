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
