#!/usr/bin/env bash
# Install everything the tests need (system packages, a virtualenv with the pinned
# requirements), then run the whole test suite. Usage: bash tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "note: chromium is not installed; the browser test will be skipped (sudo apt-get install chromium)" >&2
    fi
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements-dev.txt
.venv/bin/python -m pip install -q --no-deps -e .   # the project itself: m2e, m2e-train

.venv/bin/python -m ruff check m2e_core m2e_explorer training tests benchmarks app.py
# --- PostgreSQL for the label store tests (tests/test_labelstore.py) --------------------
# A private server on a free 127.0.0.1 port in a temporary directory, stopped on exit;
# tests/postgres.sh installs Debian's postgresql first when it is missing and we are root.
# Without one, the PostgreSQL cases are skipped with the reason. A server of your own:
# M2E_TEST_POSTGRES_URL=postgresql://user:password@host:port/db (a role that may CREATE DATABASE).
if [ -z "${M2E_TEST_POSTGRES_URL:-}" ]; then
    m2e_pg_dir="$(mktemp -d -t m2e-postgres.XXXXXX)"
    trap 'bash tests/postgres.sh stop "$m2e_pg_dir"' EXIT
    if m2e_pg_url="$(bash tests/postgres.sh start "$m2e_pg_dir")"; then
        export M2E_TEST_POSTGRES_URL="$m2e_pg_url"
    elif [ -n "${M2E_REQUIRE_POSTGRES:-}" ]; then
        echo "error: no PostgreSQL server could be started, and M2E_REQUIRE_POSTGRES is set (CI)" >&2
        exit 1
    else
        echo "note: no PostgreSQL server could be started; the PostgreSQL label store tests will be skipped" >&2
    fi
fi
# --- end PostgreSQL ----------------------------------------------------------------------

.venv/bin/python -m pytest "$@"
