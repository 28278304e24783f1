#!/usr/bin/env bash
# Make sure a Redis and a Postgres answer; start local ones (installing them with apt when absent).
# Sourced by quickstart.sh and test.sh. Honours REDIS_URL / POSTGRES_URL hosts: a remote server is
# only checked, never started. Prints what it started so you know what to stop.
set -euo pipefail

_host_port() {  # URL default_port -> "host port"
  python3 - "$1" "$2" <<'PY'
import sys
from urllib.parse import urlsplit
u = urlsplit(sys.argv[1])
print(u.hostname or "127.0.0.1", u.port or int(sys.argv[2]))
PY
}

_is_local() { case "$1" in 127.*|localhost|::1) return 0;; *) return 1;; esac; }

_answers() {  # host port
  python3 - "$1" "$2" <<'PY'
import socket, sys
s = socket.socket(); s.settimeout(1)
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print("yes")
except OSError:
    print("no")
PY
}

_apt_install() {
  echo "Installing $* with apt-get..."
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

ensure_redis() {
  read -r host port < <(_host_port "${REDIS_URL:-redis://127.0.0.1:6379/0}" 6379)
  if [ "$(_answers "$host" "$port")" = yes ]; then return 0; fi
  if ! _is_local "$host"; then echo "Redis at $host:$port does not answer; start it or fix REDIS_URL." >&2; return 1; fi
  command -v redis-server >/dev/null || _apt_install redis-server
  mkdir -p /tmp/rp_pipeline_redis
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
    --dir /tmp/rp_pipeline_redis --logfile /tmp/rp_pipeline_redis/redis.log
  for _ in $(seq 50); do [ "$(_answers "$host" "$port")" = yes ] && break; sleep 0.2; done
  echo "Started Redis on 127.0.0.1:$port (stop: redis-cli -p $port shutdown nosave)"
}

ensure_postgres() {
  read -r host port < <(_host_port "${POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/postgres}" 5432)
  if [ "$(_answers "$host" "$port")" = yes ]; then return 0; fi
  if ! _is_local "$host"; then echo "Postgres at $host:$port does not answer; start it or fix POSTGRES_URL." >&2; return 1; fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then _apt_install postgresql; fi
  version=$(ls /etc/postgresql | sort -V | tail -1)
  if command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  fi
  for _ in $(seq 50); do [ "$(_answers "$host" "$port")" = yes ] && break; sleep 0.2; done
  if [ "$(_answers "$host" "$port")" != yes ]; then echo "could not start Postgres on $host:$port" >&2; return 1; fi
  echo "Started Postgres $version on 127.0.0.1:$port (stop: pg_ctlcluster $version main stop)"
}

ensure_prometheus() {  # the Prometheus server and promtool, for the monitoring tests (Debian's package)
  if command -v prometheus >/dev/null && command -v promtool >/dev/null; then return 0; fi
  _apt_install prometheus || { echo "could not install Prometheus (apt-get install prometheus); its tests will be skipped" >&2; return 0; }
  # The package enables a system service; the tests run their own server on a free loopback port.
}
