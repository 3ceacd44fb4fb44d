"""A real webhook receiver on loopback for tests and benchmarks: records every POST (headers,
body, time), answers with the next of a list of statuses (the last one repeats), optionally
after sleeping. Runs in a thread of the test process (`Receiver`), or as a process of its own
(`python -m tests.webhook_receiver PORT`, which prints one JSON line per POST on stdout)."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """A loopback HTTP server that records the webhook POSTs it gets."""

    def __init__(self, statuses: list[int] | None = None, sleep_s: float = 0.0, port: int = 0):
        self.statuses = list(statuses or [204])
        self.sleep_s = sleep_s
        self.posts: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.arrived:
                    receiver.posts.append(
                        {
                            "headers": dict(self.headers),
                            "body": body,
                            "at": time.time(),
                            "path": self.path,
                        }
                    )
                    status = (
                        receiver.statuses.pop(0)
                        if len(receiver.statuses) > 1
                        else (receiver.statuses[0])
                    )
                    receiver.arrived.notify_all()
                if receiver.sleep_s:
                    time.sleep(receiver.sleep_s)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 512  # many deliverers connect at once

        self.server = Server(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The POSTs once there are at least `count` (AssertionError after `timeout`)."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.posts) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.posts)} webhook POSTs, expected {count}")
                self.arrived.wait(left)
            return list(self.posts)


if __name__ == "__main__":
    with Receiver(port=int(sys.argv[1])) as r:
        print(json.dumps({"port": r.port}), flush=True)
        seen = 0
        while True:
            posts = r.wait_for(seen + 1, timeout=3600)
            for post in posts[seen:]:
                data = json.loads(post["body"] or b"{}").get("data") or {}
                line = {
                    "id": post["headers"].get("webhook-id"),
                    "at": post["at"],
                    "snapshot": (data.get("snapshot") or {}).get("id"),
                }
                print(json.dumps(line), flush=True)
            seen = len(posts)
