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

# TLS-only Redis servers on loopback for the TLS tests, with a throwaway CA made by openssl.
# start_tls_redis DIR writes into DIR: ca.crt (the CA), server.crt/.key, client.crt/.key (for
# mutual TLS), other-ca.crt (a CA that signed nothing here), and starts two servers without
# persistence: DIR/tls.port (no client certificate asked) and DIR/mtls.port (a client
# certificate signed by the CA required). stop_tls_redis DIR stops both (by their pid files).
start_tls_redis() {
  local dir=$1 mode port auth
  mkdir -p "$dir"
  command -v openssl >/dev/null || _apt_install openssl
  command -v redis-server >/dev/null || _apt_install redis-server
  (
    cd "$dir"
    # Strict verifiers (Python >= 3.13) want key identifiers and a critical CA constraint.
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=rp_pipeline test CA" -keyout ca.key -out ca.crt \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=unrelated CA" -keyout other-ca.key -out other-ca.crt
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "extendedKeyUsage=serverAuth" > server.ext
    printf '%s\n' "extendedKeyUsage=clientAuth" > client.ext
    for who in server client; do
      printf '%s\n' "basicConstraints=critical,CA:FALSE" "subjectKeyIdentifier=hash" \
        "authorityKeyIdentifier=keyid,issuer" >> "$who.ext"
      openssl req -newkey rsa:2048 -nodes -subj "/CN=rp_pipeline test $who" -keyout "$who.key" -out "$who.csr"
      openssl x509 -req -in "$who.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile "$who.ext" \
        -out "$who.crt"
    done
    chmod 600 ./*.key
  ) >"$dir/openssl.log" 2>&1 || { cat "$dir/openssl.log" >&2; return 1; }
  for mode in tls mtls; do
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    if [ "$mode" = mtls ]; then auth=yes; else auth=no; fi
    redis-server --bind 127.0.0.1 --port 0 --tls-port "$port" --tls-cert-file "$dir/server.crt" \
      --tls-key-file "$dir/server.key" --tls-ca-cert-file "$dir/ca.crt" --tls-auth-clients "$auth" \
      --save "" --appendonly no --dir "$dir" --daemonize yes --pidfile "$dir/$mode.pid" --logfile "$dir/$mode.log" \
      || { echo "redis-server could not start with TLS (built without it?): see $dir/$mode.log" >&2; return 1; }
    for _ in $(seq 50); do [ "$(_answers 127.0.0.1 "$port")" = yes ] && break; sleep 0.1; done
    if [ "$(_answers 127.0.0.1 "$port")" != yes ]; then
      echo "TLS Redis did not start on 127.0.0.1:$port: $(tail -3 "$dir/$mode.log")" >&2; return 1
    fi
    echo "$port" > "$dir/$mode.port"
  done
}

stop_tls_redis() {
  local dir=$1 mode
  for mode in tls mtls; do
    if [ -s "$dir/$mode.pid" ]; then kill "$(cat "$dir/$mode.pid")" 2>/dev/null || true; fi
  done
  # Redis removes its pid file as it exits; its last log lines would otherwise land in a removed directory.
  for _ in $(seq 50); do [ -e "$dir/tls.pid" ] || [ -e "$dir/mtls.pid" ] || break; sleep 0.1; done
  rm -rf "$dir"
}

# A 3-primary Redis Cluster on loopback for the cluster tests, without persistence.
# start_redis_cluster DIR starts three `redis-server --cluster-enabled yes` on free ports, joins them
# with `redis-cli --cluster create` (no replicas) and writes DIR/ports (one port per line, the first
# is the node the tests name in REDIS_URL). stop_redis_cluster DIR stops them (by their pid files).
_free_cluster_port() {  # a free port whose cluster bus port (port + 10000) is free and valid too
  python3 - <<'PY'
import random, socket
while True:
    port = random.randint(20000, 55000)
    try:
        for p in (port, port + 10000):
            with socket.socket() as s:
                s.bind(("127.0.0.1", p))
    except OSError:
        continue
    print(port)
    break
PY
}

start_redis_cluster() {
  local dir=$1 port ports=() i
  mkdir -p "$dir"
  command -v redis-server >/dev/null || _apt_install redis-server
  for i in 1 2 3; do
    port=$(_free_cluster_port)
    mkdir -p "$dir/$port"
    redis-server --bind 127.0.0.1 --port "$port" --cluster-enabled yes --cluster-config-file "$dir/$port/nodes.conf" \
      --cluster-node-timeout 5000 --save "" --appendonly no --dir "$dir/$port" --daemonize yes \
      --pidfile "$dir/$port/redis.pid" --logfile "$dir/$port/redis.log" \
      || { echo "redis-server could not start in cluster mode: see $dir/$port/redis.log" >&2; return 1; }
    ports+=("$port")
  done
  for port in "${ports[@]}"; do
    for _ in $(seq 50); do [ "$(_answers 127.0.0.1 "$port")" = yes ] && break; sleep 0.1; done
  done
  redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1 \
    || { cat "$dir/create.log" >&2; return 1; }
  for _ in $(seq 100); do
    redis-cli -p "${ports[0]}" cluster info | grep -q "cluster_state:ok" && break; sleep 0.1
  done
  printf '%s\n' "${ports[@]}" > "$dir/ports"
}

stop_redis_cluster() {
  local dir=$1 pidfile
  for pidfile in "$dir"/*/redis.pid; do
    if [ -s "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
  done
  for _ in $(seq 50); do compgen -G "$dir/*/redis.pid" >/dev/null || break; sleep 0.1; done
  rm -rf "$dir"
}
