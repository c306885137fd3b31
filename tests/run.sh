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

.venv/bin/python -m ruff check m2e_core training tests benchmarks app.py
.venv/bin/python -m pytest "$@"
