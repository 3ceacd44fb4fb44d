#!/usr/bin/env bash
# Make sure the Redis the distributed test uses (the Celery broker) answers; start it if it is
# installed and stopped. The test uses a database number of its own (NX1_TEST_REDIS).
set -euo pipefail
url="${1:-${NX1_TEST_REDIS:-redis://127.0.0.1:6379/13}}"
answers() { python3 - "$url" <<'PY'
import socket, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=2) as s:
    s.sendall(b"PING\r\n")
    assert s.recv(64).startswith(b"+PONG")
PY
}
if answers 2>/dev/null; then exit 0; fi
if command -v redis-server >/dev/null 2>&1; then
  echo "Redis is not answering at $url: starting it"
  if [ -x /etc/init.d/redis-server ]; then
    /etc/init.d/redis-server start >/dev/null 2>&1 || service redis-server start >/dev/null 2>&1 || true
  fi
  answers 2>/dev/null || redis-server --bind 127.0.0.1 --port 6379 --daemonize yes >/dev/null || true
  for _ in $(seq 1 30); do answers 2>/dev/null && exit 0; sleep 1; done
fi
echo "Redis is not reachable at $url and could not be started here: install and start Redis (apt-get install redis-server), or set NX1_TEST_REDIS." >&2
exit 1
