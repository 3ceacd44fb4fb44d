#!/usr/bin/env bash
# `make test-pythons`: the wheel, installed by pip (its own resolution, no lock file) into a
# fresh venv of every Python that Airflow 3.3 supports and this machine has, and a smoke suite
# (scripts/smoke_installed.py) against a real api-server in each.
#
#   NX1_PYTHONS="3.10 3.13" make test-pythons   only these Pythons (default: 3.10 3.11 3.12 3.13)
#   NX1_OPENLINEAGE_PYTHONS="3.10"               which of them install the [openlineage] extra
#                                                (default 3.10 and 3.13; the others install none)
#   NX1_KEEP=1                                   keep the work folder (venvs, logs) afterwards
#
# Each Python is found as pyenv's latest X.Y, else as pythonX.Y on PATH; a missing one fails.
# pip's downloads are cached in pip's own cache (~/.cache/pip); the venvs, AIRFLOW_HOMEs and
# logs live in one temporary folder, removed at the end. Prints a table: per Python, the pip
# install time, the smoke result and its time; exits 1 when anything failed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHONS="${NX1_PYTHONS:-3.10 3.11 3.12 3.13}"
OL_PYTHONS="${NX1_OPENLINEAGE_PYTHONS-3.10 3.13}"
UV="${UV:-$(command -v uv || echo "$HOME/.local/bin/uv")}"
T0=$(date +%s)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/nx1-pythons.XXXXXX")"
cleanup() {
  if [ "${NX1_KEEP:-0}" = 1 ]; then echo "[pythons] kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
log() { printf '[pythons] %4ss  %s\n' "$(($(date +%s) - T0))" "$*"; }

find_python() {  # X.Y -> the path of an interpreter of that version, or nothing
  local v=$1 root candidate
  root="${PYENV_ROOT:-$HOME/.pyenv}/versions"
  if [ -d "$root" ]; then
    candidate=$(ls -d "$root/$v".* 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$candidate" ] && [ -x "$candidate/bin/python$v" ]; then
      echo "$candidate/bin/python$v"
      return
    fi
  fi
  command -v "python$v" 2>/dev/null || true
}

log "building the wheel"
if ! "$UV" build --wheel --out-dir "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1; then
  tail -n 30 "$WORK/build.log" >&2
  echo "[pythons] FAILED: could not build the wheel" >&2
  exit 1
fi
WHEEL=$(ls "$WORK"/dist/*.whl)
log "built $(basename "$WHEEL")"

declare -a ROWS=()
failed=0
for v in $PYTHONS; do
  py=$(find_python "$v")
  if [ -z "$py" ]; then
    log "Python $v: not found (pyenv ${PYENV_ROOT:-$HOME/.pyenv}/versions/$v.* or python$v on PATH)"
    ROWS+=("$v|-|-|not found|-")
    failed=1
    continue
  fi
  extras=""
  case " $OL_PYTHONS " in *" $v "*) extras="[openlineage]" ;; esac
  venv="$WORK/venv-$v"
  log "Python $v ($("$py" -c 'import sys; print(sys.version.split()[0])')): fresh venv, pip install the wheel$extras"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip \
    >"$WORK/pip-upgrade-$v.log" 2>&1 || true
  started=$(date +%s)
  if "$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off \
      "$WHEEL$extras" >"$WORK/pip-install-$v.log" 2>&1; then
    install_s=$(($(date +%s) - started))
    pkgs=$("$venv/bin/python" -m pip list --format=freeze 2>/dev/null | wc -l)
    log "Python $v: installed in ${install_s}s ($pkgs packages)"
  else
    install_s=$(($(date +%s) - started))
    tail -n 30 "$WORK/pip-install-$v.log" >&2
    log "Python $v: pip install FAILED after ${install_s}s"
    ROWS+=("$v|$extras|${install_s}s|pip install failed|-")
    failed=1
    rm -rf "$venv"
    continue
  fi
  started=$(date +%s)
  smoke_args=(--examples "$ROOT/dags_examples" --work "$WORK/smoke-$v")
  [ -n "$extras" ] && smoke_args+=(--openlineage)
  (cd "$WORK" && "$venv/bin/python" "$ROOT/scripts/smoke_installed.py" "${smoke_args[@]}") \
    2>&1 | tee "$WORK/smoke-$v.log" | grep --line-buffered '^\[smoke\]'
  rc=${PIPESTATUS[0]}
  smoke_s=$(($(date +%s) - started))
  result=$(grep -E '^\[smoke\] [0-9]+ passed, [0-9]+ failed' "$WORK/smoke-$v.log" | tail -n 1)
  result=${result#\[smoke\] }
  if [ "$rc" -ne 0 ] || [ -z "$result" ]; then
    failed=1
    result="${result:-did not finish} (exit $rc)"
    tail -n 40 "$WORK/smoke-$v.log" >&2
    [ -f "$WORK/smoke-$v/api-server.log" ] && tail -n 40 "$WORK/smoke-$v/api-server.log" >&2
  fi
  ROWS+=("$v|${extras:-none}|${install_s}s|$result|${smoke_s}s")
  [ "${NX1_KEEP:-0}" = 1 ] || rm -rf "$venv" "$WORK/smoke-$v"  # each venv is about 1 GB
done

echo
printf '%-8s %-15s %-13s %-30s %s\n' Python extras "pip install" smoke "smoke time"
for row in "${ROWS[@]}"; do
  IFS='|' read -r v extras install result smoke_s <<<"$row"
  printf '%-8s %-15s %-13s %-30s %s\n' "$v" "$extras" "$install" "$result" "$smoke_s"
done
log "done in $(($(date +%s) - T0)) s"
ok=0
for row in "${ROWS[@]}"; do
  case "$row" in *"| 0 failed|"* | *", 0 failed|"*) ok=$((ok + 1)) ;; esac
done
echo "pythons: $ok passed, $((${#ROWS[@]} - ok)) failed"
if [ "$failed" -ne 0 ]; then
  echo "[pythons] FAILED: see the lines above" >&2
  exit 1
fi
