#!/usr/bin/env bash
# Make sure the PostgreSQL the tests use answers; start a local cluster if it is installed and stopped.
set -euo pipefail
url="${1:-postgresql://postgres@127.0.0.1:5432/test}"
answers() { pg_isready -q -d "$url" 2>/dev/null || python3 - "$url" <<'PY'
import socket, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
socket.create_connection((u.hostname or "127.0.0.1", u.port or 5432), timeout=2).close()
PY
}
if answers; then exit 0; fi
if command -v pg_ctlcluster >/dev/null 2>&1 && ls /etc/postgresql >/dev/null 2>&1; then
  echo "PostgreSQL is not answering at $url: starting the local cluster"
  for version in $(ls /etc/postgresql); do
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  done
  for _ in $(seq 1 30); do answers && exit 0; sleep 1; done
fi
echo "PostgreSQL is not reachable at $url and could not be started here: install and start PostgreSQL (trust auth, database 'test'), or set PG_URL." >&2
exit 1
