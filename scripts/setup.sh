#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks, idempotently: the PostgreSQL 15 server,
# pgBackRest, tmux, the virtual environment and the Python dependencies. Safe to run again.
#
# The virtual environment is made with an interpreter the server's user (postgres) can execute: PostgreSQL
# runs archive_command/restore_command (`runbook wal-push`/`wal-fetch`) as that user, and a venv made from an
# interpreter it cannot reach (a pyenv under /root, say) makes every archive command fail with exit 126.
#
#   scripts/setup.sh                 install (what `make setup` runs)
#   scripts/setup.sh --which-python  only say which interpreter the venv is (or would be) made with, and why
#
# RUNBOOK_SERVER_USER (default postgres) names the server's user; RUNBOOK_SYSTEM_PYTHON (default
# /usr/bin/python3) the interpreter tried when the first python3 on PATH is not executable by that user.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
SERVER_USER=${RUNBOOK_SERVER_USER:-postgres}
SYSTEM_PYTHON=${RUNBOOK_SYSTEM_PYTHON:-/usr/bin/python3}

say() { echo "setup: $*" >&2; }

# The interpreter a venv made by "$1" points at (a pyenv shim resolves to the version it runs).
base_of() { "$1" -c 'import sys; print(getattr(sys, "_base_executable", "") or sys.executable)' 2>/dev/null; }

# Can the server's user execute interpreter $1? Unknown (true) when we are not root or the user does not exist:
# then there is nobody to ask, and nothing to switch to.
# `why` holds what the system said when it cannot.
why=""
server_can_run() {
  [ "$(id -u)" -eq 0 ] && id -u "$SERVER_USER" >/dev/null 2>&1 || return 0
  PATH=$PATH:/usr/sbin:/sbin command -v runuser >/dev/null 2>&1 || return 0  # util-linux: always on Debian
  why=$( (cd / && PATH=$PATH:/usr/sbin:/sbin runuser -u "$SERVER_USER" -- "$1" -c '') 2>&1 >/dev/null ) && return 0
  why=${why:-it exits non-zero}
  return 1
}

# Prints the interpreter to make the venv with; says on stderr why when it is not the first python3 on PATH.
# Fails, saying what to do, when neither it nor $SYSTEM_PYTHON can be executed by the server's user.
choose_python() {
  local first="" fallback=""
  if command -v python3 >/dev/null 2>&1; then first=$(base_of python3 || true); fi
  if [ -n "$first" ] && server_can_run "$first"; then
    echo "$first"
    return 0
  fi
  local first_why=$why
  why=""
  if [ -x "$SYSTEM_PYTHON" ]; then fallback=$(base_of "$SYSTEM_PYTHON" || true); fi
  if [ -n "$fallback" ] && "$fallback" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
     && server_can_run "$fallback"; then
    if [ -n "$first" ]; then
      say "$SERVER_USER cannot execute $first, the first python3 on PATH ($first_why):" \
          "using $fallback, which it can, for the environment archive_command and restore_command run from"
    fi
    echo "$fallback"
    return 0
  fi
  local second="does not exist"
  [ -z "$fallback" ] || second="is too old or not executable by it${why:+ ($why)}"
  say "no Python 3.11+ that $SERVER_USER can execute: ${first:-no python3 on PATH}${first:+ is not executable by it ($first_why)}," \
      "and $SYSTEM_PYTHON $second."
  say "PostgreSQL runs archive_command/restore_command as $SERVER_USER: install one it can run" \
      "(apt-get install python3 python3-venv), or put a readable one first on PATH, and run this again" \
      "(RUNBOOK_SYSTEM_PYTHON=/path/to/python3.11 names another)"
  return 3
}

if [ "${1:-}" = "--which-python" ]; then
  choose_python
  exit
fi

need_apt=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql-15)
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)
command -v age >/dev/null 2>&1 || need_apt+=(age)  # docs/encryption.md's recovery by hand, and its test
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)  # the HTML report's rendering test
command -v pgbackrest >/dev/null 2>&1 || need_apt+=(pgbackrest)  # engine: pgbackrest (docs/pgbackrest.md) and its tests
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing system packages: ${need_apt[*]}; run as root or: sudo apt-get install ${need_apt[*]}" >&2
    exit 3
  fi
  echo "setup: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # The Debian package creates and starts a default cluster on 5432; the product never needs it.
  if command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters -h 2>/dev/null | awk '$1=="15" && $4=="online" {print $2}' | while read -r c; do
      pg_ctlcluster 15 "$c" stop || true
    done
  fi
fi

# After the packages: the server's user exists only once postgresql is installed. A venv whose interpreter that
# user can execute is kept (the fast path: one runuser); one it cannot is made again.
stamp="$VENV/.installed"
if [ -x "$VENV/bin/python" ]; then
  current=$(readlink -f "$VENV/bin/python")
  if ! server_can_run "$current"; then
    say "making $VENV again: $SERVER_USER cannot execute its interpreter $current ($why)"
    rm -rf "$VENV"
  fi
fi
if [ ! -x "$VENV/bin/python" ]; then
  python=$(choose_python)
  if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    say "$python has no venv module: apt-get install python3-venv (as root), then run this again"
    exit 3
  fi
  "$python" -m venv "$VENV"
  rm -f "$stamp"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q -e '.[test]'
  touch "$stamp"
fi

# The venv's interpreter is fine; can the server's user also reach the venv itself? Only a note: the demo and the
# tests make their own environment for the server under a directory it can enter.
venv_abs=$(cd "$VENV" && pwd)
if [ "$(id -u)" -eq 0 ] && id -u "$SERVER_USER" >/dev/null 2>&1 \
   && ! (cd / && PATH=$PATH:/usr/sbin:/sbin runuser -u "$SERVER_USER" -- test -x "$venv_abs/bin/runbook") 2>/dev/null; then
  say "note: $SERVER_USER cannot reach $venv_abs (a parent directory is closed to it), so archive_command" \
      "cannot use this venv's runbook. On a server, install where it can: python3 -m venv /opt/runbook/venv &&" \
      "/opt/runbook/venv/bin/pip install . (docs/backup-scheduling.md)"
fi
