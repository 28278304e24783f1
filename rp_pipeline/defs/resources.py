"""Where Redis and Postgres are and how the sync behaves, from REDIS_URL, POSTGRES_URL and SYNC_* variables."""

import dagster as dg

from rp_pipeline.resources import resources_from_env


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=resources_from_env())
