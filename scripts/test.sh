#!/usr/bin/env bash
# The whole test suite: installs the project with its test extras into .venv, makes sure Redis and
# Postgres answer (starting local ones if needed), then runs pytest on both cores.
# Extra arguments go to pytest (e.g. scripts/test.sh -k flush, or -m soak for the long fault tests).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PYTHON" -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
ensure_redis
ensure_postgres
ensure_prometheus
# Tests need a superuser-ish role that can CREATE DATABASE; defaults to local trust auth as postgres.
export TEST_POSTGRES_URL=${TEST_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
export TEST_REDIS_URL=${TEST_REDIS_URL:-redis://127.0.0.1:6379}
exec .venv/bin/python -m pytest -n 2 -p no:cacheprovider "$@"
