"""rp_pipeline: Redis → PostgreSQL sync for ML metadata and predictions, as a Dagster project.

`from rp_pipeline import RedisWriter` for applications; `RedisPgSync` for the Python API;
`defs` is the Dagster code location (`dagster dev -m rp_pipeline`, which looks for it here).
"""

from .writer import RedisWriter
from .definitions import defs

__all__ = ["RedisWriter", "RedisPgSync", "defs"]


def __getattr__(name: str):
    if name == "RedisPgSync":  # the Python API loads on first use
        from .api import RedisPgSync

        return RedisPgSync
    raise AttributeError(f"module 'rp_pipeline' has no attribute {name!r}")
