#!/usr/bin/env bash
# A private, throw-away PostgreSQL server for the label store tests.
#
#   bash tests/postgres.sh start DIR   initialise a cluster in DIR (empty or absent), start it on a
#                                      free port of 127.0.0.1 with a random password, print its URL
#   bash tests/postgres.sh stop DIR    stop that server and remove DIR
#
# Uses Debian's `postgresql` binaries (/usr/lib/postgresql/<version>/bin), installing the package
# with apt-get when they are missing and we are root. As root the server runs as the `postgres`
# user (PostgreSQL refuses to run as root). The cluster is for tests only: fsync is off.
# Exits non-zero, with the reason on stderr, when no server can be started.
set -euo pipefail

action="${1:-}"
dir="${2:-}"
if [ -z "$action" ] || [ -z "$dir" ]; then
    echo "usage: bash tests/postgres.sh start|stop DIR" >&2
    exit 2
fi

find_bin() {
    local candidate
    candidate="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [ -n "$candidate" ] && [ -x "$candidate/initdb" ]; then
        echo "$candidate"
    elif command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    fi
}

as_owner() {
    if [ "$(id -u)" = "0" ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

if [ "$action" = "stop" ]; then
    bin="$(find_bin)"
    if [ -n "$bin" ] && [ -f "$dir/data/postmaster.pid" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    exit 0
fi
if [ "$action" != "start" ]; then
    echo "unknown action $action (start or stop)" >&2
    exit 2
fi

bin="$(find_bin)"
if [ -z "$bin" ]; then
    if [ "$(id -u)" != "0" ]; then
        echo "PostgreSQL is not installed and we are not root (sudo apt-get install postgresql)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq >/dev/null
    timeout 600 apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    bin="$(find_bin)"
    if [ -z "$bin" ]; then
        echo "apt-get installed postgresql but no initdb was found" >&2
        exit 1
    fi
fi
if [ "$(id -u)" = "0" ] && ! id postgres >/dev/null 2>&1; then
    echo "no 'postgres' user to run the server as (PostgreSQL refuses to run as root)" >&2
    exit 1
fi

mkdir -p "$dir"
chmod 700 "$dir"
password="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
printf '%s\n' "$password" > "$dir/password"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
if [ "$(id -u)" = "0" ]; then
    chown -R postgres: "$dir"
fi
as_owner "$bin/initdb" -D "$dir/data" -U m2e --auth=scram-sha-256 --pwfile="$dir/password" \
    --encoding=UTF8 --locale=C.UTF-8 --no-sync >"$dir/initdb.log" 2>&1 \
    || { tail -n 5 "$dir/initdb.log" >&2; exit 1; }
as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c fsync=off -c max_connections=60" \
    start >/dev/null \
    || { tail -n 5 "$dir/server.log" >&2; exit 1; }
echo "postgresql://m2e:$password@127.0.0.1:$port/postgres"
