# The sync in continuous mode (the guide's daemon), as a container:
#
#   docker build -t rp-pipeline .
#   docker run -d --name rp-pipeline --restart unless-stopped --stop-timeout 300 \
#     -e REDIS_URL=redis://redis.internal:6379/0 \
#     -e POSTGRES_URL=postgresql://sync:PASSWORD@db.internal:5432/ai_models \
#     -e DAGSTER_POSTGRES_URL=postgresql://sync:PASSWORD@db.internal:5432/ai_models \
#     rp-pipeline
#
# `docker stop` sends SIGTERM: the cycle in progress finishes, then the process exits 0
# (--stop-timeout gives a long cycle time to finish). One-shot instead:
#   docker run --rm -e REDIS_URL=... -e POSTGRES_URL=... rp-pipeline python -m rp_pipeline --once
# Each cycle is a run of the Dagster job, recorded in Postgres (schema "dagster") when
# DAGSTER_POSTGRES_URL is set, so a Dagster webserver on that storage shows it; without it,
# in SQLite inside the container (/app/.dagster_home), lost with the container.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# All dependencies have binary wheels for this image (psycopg, psycopg2-binary, hiredis): no compiler.
COPY pyproject.toml setup.py ./
COPY rp_pipeline ./rp_pipeline
RUN pip install . && rm -rf build *.egg-info

# Instance settings (storage chosen by DAGSTER_POSTGRES_URL) and the code location.
COPY dagster.yaml workspace.yaml ./

RUN useradd --create-home --uid 10001 rp \
    && mkdir -p /app/.dagster_home \
    && chown rp /app/.dagster_home
USER rp

CMD ["python", "-m", "rp_pipeline", "--interval", "300"]
