#!/usr/bin/env bash
# `make demo`: the whole product on embedded defaults, in a demo AIRFLOW_HOME inside the checkout.
#
# Migrates Airflow and the snapshot store, creates the demo source databases, an Admin user,
# runs both example DAGs once, creates a key per data API, starts a real `airflow api-server`,
# fetches the latest snapshot of each data API with curl, prints how to use it, then keeps
# Airflow (api-server, scheduler, dag-processor) running until Ctrl-C.
#
#   DEMO_SERVE=0 make demo    everything but the last step; exits 0
#   DEMO_PORT=9090 make demo  use this port instead of 8080 (or a free one when 8080 is taken)
#
# Everything lives in .demo/ (git-ignored): the env file this script sources (.demo/env;
# `source .demo/env` gives your shell the same setup), secrets generated once, Airflow's and the
# store's SQLite files, the demo sources, and the logs of every background process (.demo/logs/).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEMO="$ROOT/.demo"
LOGS="$DEMO/logs"
PIDS="$DEMO/pids"
SERVE="${DEMO_SERVE:-1}"
KEY_DAYS=30
KEY_DESCRIPTION="make demo"
ADMIN_USER=admin
T0=$(date +%s)

log() { printf '[demo] %3ss  %s\n' "$(($(date +%s) - T0))" "$*"; }
die() {
  printf '[demo] FAILED: %s\n' "$*" >&2
  exit 1
}
# Run a command quietly, its output to a log; on failure show the log's tail and stop.
quiet() {
  local name=$1
  shift
  if ! "$@" >"$LOGS/$name.log" 2>&1; then
    tail -n 40 "$LOGS/$name.log" >&2 || true
    die "'$*' failed; its whole output is in $LOGS/$name.log"
  fi
}

# --- prerequisites -----------------------------------------------------------------------
command -v curl >/dev/null 2>&1 || die "curl is needed to call the data API: install curl and run 'make demo' again."
VENV_BIN="$ROOT/.venv/bin"
[ -x "$VENV_BIN/airflow" ] && [ -x "$VENV_BIN/nx1-connect" ] \
  || die "the environment is not synced: run 'make demo' (it runs 'make sync' first), not this script alone."
PY="$VENV_BIN/python"
mkdir -p "$DEMO" "$LOGS" "$PIDS" "$DEMO/keys" "$DEMO/sources"
chmod 700 "$DEMO"

# --- background processes: each in its own process group, stopped by the trap ------------
BG_NAMES=()
start_bg() {
  local name=$1
  shift
  # A new process group, so Ctrl-C reaches this script only and the trap stops them in order.
  "$PY" -c 'import os, sys; os.setpgrp(); os.execvp(sys.argv[1], sys.argv[1:])' "$@" \
    >"$LOGS/$name.log" 2>&1 &
  echo $! >"$PIDS/$name.pid"
  BG_NAMES+=("$name")
}
alive() { kill -0 "$1" 2>/dev/null; }
stop_pid() {  # stop the process group led by $1: TERM, then KILL after 30 s
  local pid=$1 i
  alive "$pid" || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 60); do
    alive "$pid" || break
    sleep 0.5
  done
  # Whatever is left of the group (the leader after 30 s, or a child it left behind,
  # such as an idle LocalExecutor worker, which ignores TERM) gets 5 s, then KILL.
  for i in $(seq 1 10); do
    kill -0 -- "-$pid" 2>/dev/null || return 0
    sleep 0.5
  done
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
}
stop_bg() {
  local name=$1 pid
  [ -f "$PIDS/$name.pid" ] || return 0
  pid=$(cat "$PIDS/$name.pid")
  if alive "$pid"; then
    log "stopping $name (pid $pid)"
    stop_pid "$pid"
  fi
  rm -f "$PIDS/$name.pid"
}
stop_all() {
  local i
  for ((i = ${#BG_NAMES[@]} - 1; i >= 0; i--)); do stop_bg "${BG_NAMES[$i]}"; done
  BG_NAMES=()
}
on_exit() {
  local rc=$?
  trap - EXIT INT TERM HUP
  stop_all
  exit "$rc"
}
trap on_exit EXIT
trap 'echo; log "interrupted: stopping Airflow"; exit 130' INT TERM HUP

# Processes a previous demo run in this checkout left running (its terminal was closed, say).
for f in "$PIDS"/*.pid; do
  [ -e "$f" ] || continue
  pid=$(cat "$f")
  if alive "$pid" && ps -o command= -p "$pid" 2>/dev/null | grep -q airflow; then
    log "stopping $(basename "$f" .pid) left running by an earlier demo (pid $pid)"
    stop_pid "$pid"
  fi
  rm -f "$f"
done

# --- configuration: secrets generated once, the env file written every run ---------------
SECRETS="$DEMO/secrets"
if [ ! -s "$SECRETS" ]; then
  log "generating the demo's secrets (once) into .demo/secrets"
  (umask 077 && "$PY" - >"$SECRETS" <<'PY'
import base64, os, secrets
print(f"FERNET_KEY={base64.urlsafe_b64encode(os.urandom(32)).decode()}")
print(f"SECRET_KEY={secrets.token_urlsafe(32)}")
print(f"JWT_SECRET={secrets.token_urlsafe(32)}")
print(f"ADMIN_PASSWORD={secrets.token_urlsafe(12)}")
PY
  )
fi
FERNET_KEY= SECRET_KEY= JWT_SECRET= ADMIN_PASSWORD=
# shellcheck disable=SC1090
. "$SECRETS"
[ -n "$FERNET_KEY" ] && [ -n "$SECRET_KEY" ] && [ -n "$JWT_SECRET" ] && [ -n "$ADMIN_PASSWORD" ] \
  || die "$SECRETS is incomplete: delete it (or run 'make clean') and run 'make demo' again."

PORT=$("$PY" - "${DEMO_PORT:-8080}" <<'PY'
import socket, sys
wanted = int(sys.argv[1])
for port in (wanted, 0):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(s.getsockname()[1])
        break
PY
)
[ -n "$PORT" ] || die "could not find a free TCP port on 127.0.0.1"
[ "$PORT" = "${DEMO_PORT:-8080}" ] || log "port ${DEMO_PORT:-8080} is taken: using $PORT instead"
BASE_URL="http://127.0.0.1:$PORT"
# An Airflow Connection URI for a SQLite file, as dags_examples/demo_data.py builds it.
conn_uri() {
  (cd "$ROOT" && "$PY" -c 'import sys; from dags_examples.demo_data import sqlite_conn_uri
print(sqlite_conn_uri(sys.argv[1]))' "$1")
}

# Nothing from the caller's Airflow setup may leak into the demo (it could point at a real one).
for var in $(compgen -e); do
  case "$var" in AIRFLOW_* | AIRFLOW__*) unset "$var" ;; esac
done

q() { printf '%q' "$1"; }
{
  echo "# Written by scripts/demo.sh on every run; 'source .demo/env' to use the demo from a shell."
  echo "export PATH=$(q "$VENV_BIN"):\"\$PATH\""
  echo "export AIRFLOW_HOME=$(q "$DEMO")"
  echo "export AIRFLOW__CORE__DAGS_FOLDER=$(q "$ROOT/dags_examples")"
  echo "export AIRFLOW__CORE__LOAD_EXAMPLES=False"
  echo "export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False"
  echo "export AIRFLOW__CORE__EXECUTOR=LocalExecutor"
  echo "export AIRFLOW__CORE__FERNET_KEY=$(q "$FERNET_KEY")"
  echo "export AIRFLOW__CORE__AUTH_MANAGER=airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
  echo "# The admin view under /pluginsv2 sees a user logged in at /auth/login/ only with this backend."
  echo "export AIRFLOW__FAB__SESSION_BACKEND=securecookie"
  echo "export AIRFLOW__API__SECRET_KEY=$(q "$SECRET_KEY")"
  echo "export AIRFLOW__API_AUTH__JWT_SECRET=$(q "$JWT_SECRET")"
  echo "export AIRFLOW__API__HOST=127.0.0.1"
  echo "export AIRFLOW__API__PORT=$PORT"
  echo "export AIRFLOW__API__BASE_URL=$BASE_URL"
  echo "export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=$BASE_URL/execution/"
  echo "export AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN=$(q "sqlite:///$DEMO/nx1_connect.db")"
  echo "# The example DAGs' Connections 'retail' and 'bank': the demo SQLite sources."
  echo "export AIRFLOW_CONN_RETAIL=$(q "$(conn_uri "$DEMO/sources/retail.db")")"
  echo "export AIRFLOW_CONN_BANK=$(q "$(conn_uri "$DEMO/sources/bank.db")")"
} >"$DEMO/env"
# shellcheck disable=SC1091
. "$DEMO/env"
log "AIRFLOW_HOME=$AIRFLOW_HOME (settings in .demo/env, logs in .demo/logs/)"

# --- databases ---------------------------------------------------------------------------
log "airflow db migrate"
quiet airflow-db-migrate airflow db migrate
log "nx1-connect db migrate (snapshot store .demo/nx1_connect.db)"
quiet nx1-connect-db-migrate nx1-connect db migrate
log "creating the demo source databases (dags_examples/demo_data.py -> .demo/sources/)"
(cd "$ROOT" && quiet demo-sources "$PY" -m dags_examples.demo_data "$DEMO/sources")

# --- the Admin user (password generated once, reset on every run so it always matches) -----
log "Admin user '$ADMIN_USER'"
airflow users create -u "$ADMIN_USER" -p "$ADMIN_PASSWORD" -r Admin -f Demo -l Admin \
  -e admin@example.com >"$LOGS/airflow-users-create.log" 2>&1 \
  || { tail -n 20 "$LOGS/airflow-users-create.log" >&2; die "could not create the Admin user"; }
if grep -q "already exist" "$LOGS/airflow-users-create.log"; then
  quiet airflow-users-reset-password \
    airflow users reset-password -u "$ADMIN_USER" -p "$ADMIN_PASSWORD"
fi

# --- run each example DAG once -----------------------------------------------------------
log "finding the example DAGs in dags_examples/"
airflow dags list --local -o json >"$DEMO/dags.json" 2>"$LOGS/airflow-dags-list.log" \
  || { tail -n 40 "$LOGS/airflow-dags-list.log" >&2; die "'airflow dags list' failed"; }
# stdout also carries Airflow's warnings: the JSON array is the line that parses as one.
DAG_IDS=$("$PY" - "$DEMO/dags.json" <<'PY'
import json, sys
for line in open(sys.argv[1], encoding="utf-8"):
    if line.startswith("["):
        try:
            dags = json.loads(line)
        except ValueError:
            continue
        print(" ".join(sorted(d["dag_id"] for d in dags)))
        break
PY
)
[ -n "$DAG_IDS" ] || die "no DAG found in dags_examples/ (see $DEMO/dags.json and $LOGS/airflow-dags-list.log)"
for dag_id in $DAG_IDS; do
  log "airflow dags test $dag_id"
  quiet "dags-test-$dag_id" airflow dags test "$dag_id"
done

# --- a key per data API --------------------------------------------------------------------
# JSON on stdout -> the values of one field, a line each.
json_field() { "$PY" -c 'import json, sys
for item in json.load(open(sys.argv[1], encoding="utf-8")):
    if len(sys.argv) < 4 or item.get(sys.argv[3]) == sys.argv[4]:
        print(item[sys.argv[2]])' "$@"; }
nx1-connect apis list --json >"$DEMO/apis.json" 2>"$LOGS/nx1-connect-apis-list.log" \
  || die "nx1-connect apis list failed (see $LOGS/nx1-connect-apis-list.log)"
APIS=$(json_field "$DEMO/apis.json" name | sort)
[ -n "$APIS" ] || die "the example DAGs ran but registered no data API ('nx1-connect apis list' is empty)"
for api in $APIS; do
  # Idempotent: the key made by an earlier demo run is deleted, a fresh one replaces it.
  nx1-connect keys list --data-api "$api" --json >"$DEMO/keys.json" 2>>"$LOGS/nx1-connect-keys.log" \
    || die "nx1-connect keys list --data-api $api failed (see $LOGS/nx1-connect-keys.log)"
  for old in $(json_field "$DEMO/keys.json" key_id description "$KEY_DESCRIPTION"); do
    nx1-connect keys delete "$old" >>"$LOGS/nx1-connect-keys.log" 2>&1 \
      || die "nx1-connect keys delete $old failed (see $LOGS/nx1-connect-keys.log)"
  done
  (umask 077 && nx1-connect keys create --data-api "$api" --days "$KEY_DAYS" \
    --description "$KEY_DESCRIPTION" >"$DEMO/keys/$api.key" 2>>"$LOGS/nx1-connect-keys.log") \
    || { tail -n 5 "$LOGS/nx1-connect-keys.log" >&2; die "nx1-connect keys create --data-api $api failed"; }
  log "key created for data API '$api' (valid $KEY_DAYS days; saved in .demo/keys/$api.key)"
done

# --- a real api-server -----------------------------------------------------------------------
log "starting airflow api-server on $BASE_URL (log: .demo/logs/api-server.log)"
start_bg api-server airflow api-server --host 127.0.0.1 --port "$PORT"
API_PID=$(cat "$PIDS/api-server.pid")
for i in $(seq 1 180); do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$BASE_URL/api/v2/monitor/health" || true)
  [ "$code" = 200 ] && break
  alive "$API_PID" || { tail -n 40 "$LOGS/api-server.log" >&2; die "the api-server exited while starting"; }
  sleep 1
done
[ "$code" = 200 ] || { tail -n 40 "$LOGS/api-server.log" >&2; die "the api-server did not answer 200 on /api/v2/monitor/health within 180 s"; }
log "api-server is up (health 200 after ${i}s)"

# GET $2 with the key $1 into $DEMO/last-response; fail loudly unless it answers 200.
fetch() {
  local key=$1 url=$2 code
  code=$(curl -sS -o "$DEMO/last-response" -D "$DEMO/last-headers" -w '%{http_code}' --max-time 60 \
    -H "Authorization: Bearer $key" "$url") || die "curl $url failed"
  if [ "$code" != 200 ]; then
    head -c 2000 "$DEMO/last-response" >&2 || true
    echo >&2
    die "GET $url answered $code, not 200 (api-server log: $LOGS/api-server.log)"
  fi
}
for api in $APIS; do
  key=$(cat "$DEMO/keys/$api.key")
  fetch "$key" "$BASE_URL/nx1/api/v1/data-apis/$api/latest"
  rows=$("$PY" -c 'import json, sys; b = json.load(open(sys.argv[1])); print(b["snapshot"]["row_count"])' \
    "$DEMO/last-response") || die "the latest snapshot of '$api' is not the JSON the contract describes"
  fetch "$key" "$BASE_URL/nx1/api/v1/data-apis/$api/latest?format=csv"
  fetch "$key" "$BASE_URL/pluginsv2/nx1/api/v1/data-apis/$api/latest?limit=1"
  log "GET /nx1/api/v1/data-apis/$api/latest: 200, latest snapshot has $rows rows (JSON, CSV and /pluginsv2 mount checked)"
done

# Paging as printed below: a 2-row page carries data.next_start and a Link rel="next" header.
page_api=$(echo "$APIS" | grep -x weekly_top_product || echo "$APIS" | head -n 1)
fetch "$(cat "$DEMO/keys/$page_api.key")" "$BASE_URL/nx1/api/v1/data-apis/$page_api/latest?limit=2"
next_start=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["data"]["next_start"])' \
  "$DEMO/last-response")
grep -qi '^link:.*rel="next"' "$DEMO/last-headers" \
  || die "a 2-row page of '$page_api' has no Link rel=\"next\" header"
log "paging checked on '$page_api': ?limit=2 gives next_start=$next_start and a Link rel=\"next\" header"

# The printed login must work: log in like a browser and open the admin view.
JAR="$DEMO/cookies"
rm -f "$JAR"
curl -sS -c "$JAR" -b "$JAR" -o "$DEMO/login.html" "$BASE_URL/auth/login/" || die "GET /auth/login/ failed"
CSRF=$("$PY" -c 'import re, sys
m = re.search(r"name=\"csrf_token\"[^>]*value=\"([^\"]+)\"", open(sys.argv[1]).read())
print(m.group(1) if m else "")' "$DEMO/login.html")
[ -n "$CSRF" ] || die "no csrf_token on $BASE_URL/auth/login/"
curl -sS -c "$JAR" -b "$JAR" -o /dev/null --data-urlencode "username=$ADMIN_USER" \
  --data-urlencode "password=$ADMIN_PASSWORD" --data-urlencode "csrf_token=$CSRF" \
  "$BASE_URL/auth/login/" || die "POST /auth/login/ failed"
code=$(curl -sS -b "$JAR" -o "$DEMO/last-response" -w '%{http_code}' "$BASE_URL/pluginsv2/nx1connect/")
rm -f "$JAR" "$DEMO/login.html"
[ "$code" = 200 ] || die "after logging in as $ADMIN_USER, GET /pluginsv2/nx1connect/ answered $code, not 200"
log "logged in as $ADMIN_USER: the NX1 Connect admin view answers 200"

# --- what to do next -------------------------------------------------------------------------
# The Ask data API of the retail example leads the examples when it is there.
first=$(echo "$APIS" | grep -x weekly_top_product || echo "$APIS" | head -n 1)
first_key=$(cat "$DEMO/keys/$first.key")
echo
echo "=================================================================================="
echo " NX1 Connect demo is ready ($(($(date +%s) - T0)) s)"
echo "=================================================================================="
echo " Airflow UI      $BASE_URL/   (login: $ADMIN_USER / $ADMIN_PASSWORD)"
echo " Admin view      $BASE_URL/pluginsv2/nx1connect/   (menu: NX1 Connect)"
echo " OpenAPI         $BASE_URL/nx1/api/v1/openapi.json"
echo " Data API keys   (shown here because this is a local demo; saved in .demo/keys/)"
for api in $APIS; do
  printf '   %-24s %s\n' "$api" "$(cat "$DEMO/keys/$api.key")"
done
echo
for api in $APIS; do
  echo " # $api: latest snapshot as JSON"
  echo " curl -H \"Authorization: Bearer $(cat "$DEMO/keys/$api.key")\" $BASE_URL/nx1/api/v1/data-apis/$api/latest"
done
echo
echo " # the whole latest snapshot as CSV (streamed), or NDJSON with format=ndjson"
echo " curl -H \"Authorization: Bearer $first_key\" \"$BASE_URL/nx1/api/v1/data-apis/$first/latest?format=csv\""
echo
echo " # paging: 2 rows a page; the Link header (rel=\"next\") and data.next_start give the next page"
echo " curl -i -H \"Authorization: Bearer $first_key\" \"$BASE_URL/nx1/api/v1/data-apis/$first/latest?limit=2\""
echo " curl -H \"Authorization: Bearer $first_key\" \"$BASE_URL/nx1/api/v1/data-apis/$first/latest?start=2&limit=2\""
echo
echo " # the data API itself, and its retained snapshots (X-API-Key works as well as Bearer)"
echo " curl -H \"X-API-Key: $first_key\" $BASE_URL/nx1/api/v1/data-apis/$first"
echo " curl -H \"X-API-Key: $first_key\" $BASE_URL/nx1/api/v1/data-apis/$first/snapshots"
echo
echo " # the command line, with the demo's settings"
echo " source .demo/env && nx1-connect keys list"
echo "=================================================================================="

if [ "$SERVE" = 0 ]; then
  log "DEMO_SERVE=0: stopping the api-server and exiting"
  stop_all
  log "done in $(($(date +%s) - T0)) s"
  trap - EXIT
  exit 0
fi

# --- keep Airflow running until Ctrl-C -------------------------------------------------------
log "starting the scheduler and the dag-processor (logs in .demo/logs/), so the schedules run"
start_bg scheduler airflow scheduler
start_bg dag-processor airflow dag-processor
trap 'echo; log "Ctrl-C: stopping Airflow"; stop_all; log "stopped"; trap - EXIT; exit 0' INT TERM HUP
log "Airflow is running at $BASE_URL/ ; press Ctrl-C to stop it"
while :; do
  for name in "${BG_NAMES[@]}"; do
    pid=$(cat "$PIDS/$name.pid" 2>/dev/null || echo 0)
    if ! alive "$pid"; then
      tail -n 30 "$LOGS/$name.log" >&2 || true
      die "$name stopped unexpectedly (log: .demo/logs/$name.log); stopping the others"
    fi
  done
  sleep 2
done
