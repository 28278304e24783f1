"""The cache warm: Postgres rows written back into Redis after a flush (asset, job, and the sensor that
requests it when the sync's marker vanished; off unless WARM_ON_FLUSH=1)."""

from rp_pipeline.warm_assets import redis_cache_warm, redis_cache_warm_job, warm_on_flush

__all__ = ["redis_cache_warm", "redis_cache_warm_job", "warm_on_flush"]
