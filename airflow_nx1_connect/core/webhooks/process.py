"""The api-server's webhook deliverer, as a child process of each api-server process.

The plugin's FastAPI app starts one with its lifespan (`web.webhooks_admin`), unless
`[nx1_connect] webhook_deliver_in_api_server` is False. A process of its own, not a thread: a
drain of pending deliveries (signing, sending, recording each) then never holds the api-server's
interpreter lock while a data API request waits for it; and at a lower CPU priority (nice +10),
so that on a busy host the data API's requests get the CPU first.

`DeliveryProcess` starts, watches (a child that dies is started again) and stops it. The child,
`python -m airflow_nx1_connect.core.webhooks.process PARENT_PID`, runs the same loop as
`nx1-connect webhooks deliver`, and ends on SIGTERM or SIGINT, or within a second of its parent
going away (even a parent killed with SIGKILL). Its log lines go to the api-server's stderr
(both its stdout and stderr).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

log = logging.getLogger(__name__)

#: How much lower than the api-server's the child's CPU priority is (`nice` increment).
NICE = 10
#: A child that died is started again at most this often (seconds).
RESTART_AFTER_S = 5.0


class DeliveryProcess:
    """The api-server process's delivering child (see the module docstring)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> DeliveryProcess:
        self.proc = subprocess.Popen(  # noqa: S603 - this interpreter and module; no input
            [sys.executable, "-m", __name__, str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=_stderr(),  # log lines only, never on the api-server's stdout
            env=dict(os.environ),
            close_fds=True,
        )
        self.started_at = time.monotonic()
        return self

    def watch(self) -> None:
        """Start the child again if it has died (not more often than RESTART_AFTER_S)."""
        if self.proc is None or self.proc.poll() is None:
            return
        if time.monotonic() - self.started_at < RESTART_AFTER_S:
            return
        log.warning(
            "The webhook delivery process exited (code %s); starting it again",
            self.proc.returncode,
        )
        self.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the child to end (SIGTERM), then kill it after `timeout` seconds."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def _stderr() -> int | None:
    """This process's stderr as a file descriptor (None: inherit stdout as it is)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def main(argv: list[str]) -> int:
    """The child: deliver until told to stop or until the parent process is gone."""
    from airflow_nx1_connect.core import engines
    from airflow_nx1_connect.core.settings import get_settings
    from airflow_nx1_connect.core.webhooks import _fernet
    from airflow_nx1_connect.core.webhooks.delivery import Deliverer

    parent = int(argv[0])
    try:
        os.nice(NICE)
    except OSError:  # not allowed here: deliver at the same priority
        pass
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s [nx1 webhooks] %(message)s"
    )
    deliverer = Deliverer(engines.get_engine, get_settings)
    try:  # import Airflow's Fernet now, not in the first attempt (it imports Airflow: seconds)
        _fernet()
    except Exception as exc:  # the attempts that need it say why
        log.warning("Airflow's Fernet key cannot be loaded: %s", exc)

    def orphaned() -> None:
        while not deliverer.stopping.wait(1.0):
            if os.getppid() != parent:
                deliverer.stop()

    threading.Thread(target=orphaned, name="nx1-webhooks-parent", daemon=True).start()
    deliverer.serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
