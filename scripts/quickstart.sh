#!/usr/bin/env bash
# Quick start, on a fresh Debian/Ubuntu machine after cloning:
#   1. .venv with the project installed (pip install -e .; python3-venv from apt if missing);
#   2. a Redis and a Postgres that answer: the ones at REDIS_URL / POSTGRES_URL, else local ones on the
#      default ports, started (and installed with apt) when none is running (scripts/services.sh);
#   3. a Postgres login that works: with the default POSTGRES_URL and no usable role (e.g. peer
#      authentication only), a role and database `rp_pipeline` are created through the postgres
#      system user (with a generated password); then ./.env (mode 600) records the REDIS_URL and
#      POSTGRES_URL used and DAGSTER_HOME=./.dagster_home, so the README's next commands work in a
#      new shell and keep their run history there (values already in .env are kept, never replaced);
#   4. the demo: sample data into Redis, one sync through the Dagster job, verification, statistics;
#   5. `dg dev` on http://127.0.0.1:${DAGSTER_PORT:-3000} with the sync schedule running.
# Environment: REDIS_URL, POSTGRES_URL (or in ./.env), DAGSTER_PORT, QUICKSTART_NO_DEV=1 (stop before 5).
# Running it again reuses what is in place and duplicates nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

_env_file_value() {  # KEY -> its value in ./.env (last one wins), without quotes
  [ -f .env ] || return 0
  sed -n -E "s/^[[:space:]]*(export[[:space:]]+)?$1[[:space:]]*=[[:space:]]*//p" .env | tail -1 \
    | sed -E "s/^['\"]//; s/['\"][[:space:]]*$//"
}

# The real environment wins over ./.env, as in the CLI. (Dagster's own CLI lets ./.env win: that is
# why step 3 records in .env what this run used, and reports any value there that differs.)
REDIS_URL=${REDIS_URL:-$(_env_file_value REDIS_URL)}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
POSTGRES_URL_GIVEN=${POSTGRES_URL:-$(_env_file_value POSTGRES_URL)}
export POSTGRES_URL=${POSTGRES_URL_GIVEN:-postgresql://postgres@127.0.0.1:5432/postgres}
PYTHON=${PYTHON:-python3}
STOP_HINTS=()

echo "== 1/5 Python environment (.venv)"
command -v "$PYTHON" >/dev/null || _apt_install python3 python3-venv
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || { echo "Python >= 3.10 is needed; $PYTHON is $("$PYTHON" -V 2>&1)." >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv >/dev/null 2>&1; then  # Debian/Ubuntu ship venv's ensurepip separately
    rm -rf .venv
    _apt_install python3-venv
    "$PYTHON" -m venv .venv
  fi
fi
# Reinstall only when the packaging changed since the last successful install.
stamp=$(cat pyproject.toml setup.py 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.rp_pipeline-installed 2>/dev/null)" != "$stamp" ]; then
  if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e .; } \
      > .venv/pip-install.log 2>&1; then
    cat .venv/pip-install.log >&2
    echo "pip install -e . failed (log above, also in .venv/pip-install.log)" >&2
    exit 1
  fi
  echo "$stamp" > .venv/.rp_pipeline-installed
fi
echo "   installed: $(.venv/bin/python -c 'import importlib.metadata as m; print("rp_pipeline", m.version("rp_pipeline"), "with dagster", m.version("dagster"))')"

echo "== 2/5 Redis and Postgres"
for service in redis postgres; do
  if [ "$service" = redis ]; then url=$REDIS_URL; port=6379; else url=$POSTGRES_URL; port=5432; fi
  read -r host port < <(_host_port "$url" "$port")
  was_up=$(_answers "$host" "$port")
  "ensure_$service"
  if [ "$was_up" = yes ]; then
    echo "   $service answers at $host:$port"
  elif [ "$service" = redis ]; then
    STOP_HINTS+=("Redis on $host:$port (started here, data not persisted): redis-cli -p $port shutdown nosave")
  else
    STOP_HINTS+=("Postgres on $host:$port (started here): pg_ctlcluster $(ls /etc/postgresql | sort -V | tail -1) main stop")
  fi
done

echo "== 3/5 Postgres login"
_redacted() {  # URL -> the URL with its password as *** (without importing the package: it loads Dagster)
  python3 -c 'import re, sys; print(re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", sys.argv[1]))' "$1"
}
_pg_login() {  # -> ok | created <database> | auth | other: <message>
  .venv/bin/python - <<'PY'
import os
import re
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
try:
    url = re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", os.environ["POSTGRES_URL"])
    try:
        psycopg.connect(url, connect_timeout=10).close()
        print("ok")
    except psycopg.OperationalError as exc:
        # The role logs in but the database is missing: create it when the role may.
        name = conninfo_to_dict(url).get("dbname")
        if not (name and f'database "{name}" does not exist' in str(exc)):
            raise
        try:
            with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.Error:
            raise exc from None
        print(f"created {name}")
except psycopg.OperationalError as exc:
    text = str(exc)
    refused = ("authentication failed", "no password supplied", "does not exist", "no pg_hba.conf entry")
    print("auth" if any(t in text for t in refused) else "other: " + text.strip().splitlines()[0])
PY
}
_as_postgres() {  # run a command as the postgres system user (peer authentication)
  if [ "$(id -u)" -eq 0 ]; then (cd /tmp && runuser -u postgres -- "$@"); else (cd /tmp && sudo -u postgres "$@"); fi
}
status=$(_pg_login)
if [ "${status%% *}" = created ]; then
  echo "   created database ${status#created } (POSTGRES_URL named a database that did not exist)"
  status=ok
fi
if [ "$status" = ok ]; then
  echo "   logged in as $(_redacted "$POSTGRES_URL")"
elif [ "$status" = auth ] && [ -z "$POSTGRES_URL_GIVEN" ]; then
  read -r host port < <(_host_port "$POSTGRES_URL" 5432)
  echo "   the default login does not work here; creating role and database rp_pipeline (as the postgres user)"
  password=$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(16))')
  _as_postgres psql -p "$port" -v ON_ERROR_STOP=1 -qAt <<SQL
SELECT format(CASE WHEN EXISTS (SELECT FROM pg_roles WHERE rolname = 'rp_pipeline')
                   THEN 'ALTER ROLE rp_pipeline LOGIN PASSWORD %L' ELSE 'CREATE ROLE rp_pipeline LOGIN PASSWORD %L' END,
              '$password') \gexec
SELECT 'CREATE DATABASE rp_pipeline OWNER rp_pipeline'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'rp_pipeline') \gexec
SQL
  export POSTGRES_URL="postgresql://rp_pipeline:$password@$host:$port/rp_pipeline"
  status=$(_pg_login)
  [ "$status" = ok ] || { echo "still cannot log in to Postgres ($status)" >&2; exit 1; }
  echo "   logged in as $(_redacted "$POSTGRES_URL") (role and database rp_pipeline)"
else
  echo "   cannot log in with POSTGRES_URL ($status); the demo below explains what to fix" >&2
fi
if [ "$status" = ok ]; then
  # Every later command, in any shell, reads .env: the same servers and the same persistent
  # Dagster instance (without DAGSTER_HOME Dagster's CLI would use a temporary one).
  .venv/bin/python -m rp_pipeline.env_file REDIS_URL="$REDIS_URL" POSTGRES_URL="$POSTGRES_URL"
  export DAGSTER_HOME=${DAGSTER_HOME:-$(_env_file_value DAGSTER_HOME)}
fi

echo "== 4/5 Demo: sample data into Redis, one sync, verification, statistics"
.venv/bin/python demo_redis_postgres_sync.py

dagster_port=${DAGSTER_PORT:-3000}
cat <<EOF
== Done. What you have:
   Redis:               $(_redacted "$REDIS_URL")
   Postgres:            $(_redacted "$POSTGRES_URL")
   Settings:            ./.env (the README's commands read it when run from here, in any shell)
   Sync once:           .venv/bin/python -m rp_pipeline --once
   Sync every 5 min:    .venv/bin/python -m rp_pipeline --interval 300      (Ctrl+C stops after the current cycle)
   Run history:         ${DAGSTER_HOME:-.dagster_home}/storage (SQLite), or Postgres when DAGSTER_POSTGRES_URL is set
EOF
for hint in "${STOP_HINTS[@]}"; do echo "   Stop $hint"; done

if [ "${QUICKSTART_NO_DEV:-}" = 1 ]; then
  echo "   QUICKSTART_NO_DEV=1: not starting dg dev. Start it with:"
  echo "     .venv/bin/dg dev -h 127.0.0.1 -p $dagster_port"
  exit 0
fi

if [ "$(_answers 127.0.0.1 "$dagster_port")" = yes ]; then
  if .venv/bin/python -c "import json, sys, urllib.request; json.load(urllib.request.urlopen('http://127.0.0.1:$dagster_port/server_info', timeout=5))" 2>/dev/null; then
    echo "== 5/5 Dagster is already running at http://127.0.0.1:$dagster_port (stop it with Ctrl+C where it runs)."
    exit 0
  fi
  echo "Port $dagster_port is taken by another program; choose another with DAGSTER_PORT=3001." >&2
  exit 1
fi
echo "== 5/5 dg dev on http://127.0.0.1:$dagster_port (schedule redis_to_postgres_sync_schedule running; Ctrl+C stops it)"
exec .venv/bin/dg dev -h 127.0.0.1 -p "$dagster_port"
