#!/usr/bin/env bash
# The whole test suite: installs the project with its test extras into .venv, makes sure Redis and
# Postgres answer (starting local ones if needed), starts throwaway TLS-only Redis servers (a CA made
# with openssl) and a 3-primary Redis Cluster (both stopped at the end), then runs pytest on both cores.
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
# TLS-only Redis servers on loopback with a throwaway CA (rp_pipeline_tests/test_tls.py), stopped at the end.
TEST_REDIS_TLS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/rp_pipeline_tls.XXXXXX")
export TEST_REDIS_TLS_DIR
# A 3-primary Redis Cluster on loopback (rp_pipeline_tests/test_redis_cluster.py), stopped at the end.
TEST_REDIS_CLUSTER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/rp_pipeline_cluster.XXXXXX")
export TEST_REDIS_CLUSTER_DIR
trap 'stop_tls_redis "$TEST_REDIS_TLS_DIR"; stop_redis_cluster "$TEST_REDIS_CLUSTER_DIR"' EXIT
start_tls_redis "$TEST_REDIS_TLS_DIR"
start_redis_cluster "$TEST_REDIS_CLUSTER_DIR"
.venv/bin/python -m pytest -n 2 -p no:cacheprovider "$@"
