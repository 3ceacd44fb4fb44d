#!/usr/bin/env bash
# System packages the test suite needs beyond the locked Python environment.
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
  echo "Installing Debian's chromium for the browser test"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi
fi
# MariaDB for the MySQL-source tests (127.0.0.1:3306, root, database `test`): start the local
# server if it is installed and stopped.
mariadb_answers() {
  python3 -c 'import socket; socket.create_connection(("127.0.0.1", 3306), timeout=2).close()' \
    2>/dev/null
}
if [ -z "${NX1_TEST_MYSQL_HOST:-}" ] && ! mariadb_answers && [ -x /usr/sbin/mariadbd ]; then
  echo "MariaDB is not answering on 127.0.0.1:3306: starting the local server"
  if [ "$(id -u)" = 0 ]; then start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  else sudo start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd; fi
  for _ in $(seq 1 30); do mariadb_answers && break; sleep 1; done
fi
