"""rp_pipeline: Redis → PostgreSQL sync for ML metadata and predictions, as a Dagster project.

`from rp_pipeline import RedisWriter` for applications; `RedisPgSync` for the Python API;
`defs` is the Dagster code location (`dagster dev -m rp_pipeline` finds it here).
Each loads on first use, so the hot-path client does not import Dagster, and the CLI can
report a missing package or a bad setting as a clear error instead of a traceback.
"""

import importlib

_EXPORTS = {"RedisWriter": ".writer", "RedisPgSync": ".api", "defs": ".definitions"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rp_pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():  # Dagster finds `defs` by listing the module's attributes
    return sorted({*globals(), *_EXPORTS})
