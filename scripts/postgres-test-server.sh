#!/usr/bin/env bash
# A throwaway PostgreSQL server for the shared-study tests (and CI): trust auth, 127.0.0.1 only, fsync off.
#   scripts/postgres-test-server.sh start DIR   prints postgresql+psycopg://postgres@127.0.0.1:PORT/reprocls_test
#   scripts/postgres-test-server.sh stop DIR    stops it and deletes its data
# PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user; its data then lives in a
# folder that user can reach (a mktemp folder, linked from DIR/pgdata) because DIR may sit under a private tmp.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
dir=$2
database=reprocls_test

find_bindir() {
  if [ -n "${PG_BINDIR:-}" ]; then
    [ -x "$PG_BINDIR/pg_ctl" ] || { echo "PG_BINDIR=$PG_BINDIR has no pg_ctl; point it at PostgreSQL's bin folder" >&2; exit 3; }
    echo "$PG_BINDIR"; return
  fi
  if command -v pg_ctl >/dev/null; then dirname "$(readlink -f "$(command -v pg_ctl)")"; return; fi  # Debian links only some tools
  local newest
  newest=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$newest" ] && [ -x "$newest/pg_ctl" ] && { echo "$newest"; return; }
  echo "PostgreSQL is not installed (no pg_ctl on PATH or in /usr/lib/postgresql/*/bin); install Debian's postgresql or set PG_BINDIR" >&2
  exit 3
}

as_server_user() {
  if [ "$(id -u)" -eq 0 ]; then
    if command -v runuser >/dev/null; then runuser -u postgres -- "$@"; else su postgres -s /bin/sh -c "$(printf '%q ' "$@")"; fi
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start() {
  local bindir data port attempt
  bindir=$(find_bindir)
  mkdir -p "$dir"
  if [ -e "$dir/pgdata" ]; then echo "$dir/pgdata exists: stop the server there first ($0 stop $dir)" >&2; exit 1; fi
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || { echo "running as root needs the 'postgres' user (created by Debian's postgresql package)" >&2; exit 3; }
    data=$(mktemp -d "${TMPDIR:-/tmp}/reprocls-pg.XXXXXX")
    chmod 755 "$data"  # mktemp makes it private to root; the server user must enter it
    chown postgres "$data"
    ln -s "$data" "$dir/pgdata"
  else
    data="$dir/pgdata"
    mkdir -p "$data"
  fi
  trap 'rm -rf "$data"; rm -f "$dir/pgdata"' EXIT  # a failed start leaves nothing behind
  as_server_user "$bindir/initdb" -D "$data/cluster" -U postgres --auth=trust --encoding=UTF8 --locale=C --no-sync \
    >"$dir/initdb.log" 2>&1 || { echo "initdb failed:" >&2; tail -n 20 "$dir/initdb.log" >&2; exit 1; }
  as_server_user mkdir -p "$data/socket"
  for attempt in 1 2 3 4 5; do
    port=$(free_port)
    if as_server_user "$bindir/pg_ctl" -D "$data/cluster" -l "$data/server.log" -w -t 60 \
         -o "-h 127.0.0.1 -p $port -k $data/socket -c fsync=off -c full_page_writes=off" start >/dev/null; then
      echo "$port" >"$dir/port"
      trap - EXIT  # running: from here on `stop` cleans up
      if ! as_server_user "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres "$database"; then
        echo "createdb $database failed; stopping the server" >&2
        stop
        exit 1
      fi
      echo "postgresql+psycopg://postgres@127.0.0.1:$port/$database" | tee "$dir/url"
      return 0
    fi
    sleep "$attempt"  # the port was probably taken between choosing and binding it; try another
  done
  echo "PostgreSQL did not start; its log says:" >&2
  tail -n 20 "$data/server.log" >&2 || true
  exit 1
}

stop() {
  local bindir data
  [ -e "$dir/pgdata" ] || { echo "no server data under $dir (nothing to stop)" >&2; return 0; }
  bindir=$(find_bindir)
  data=$(readlink -f "$dir/pgdata")
  if [ -f "$data/cluster/postmaster.pid" ]; then
    as_server_user "$bindir/pg_ctl" -D "$data/cluster" -m fast -w -t 60 stop >/dev/null
  fi
  rm -rf "$data"
  rm -f "$dir/pgdata" "$dir/port" "$dir/url" "$dir/initdb.log"
}

case "$action" in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
