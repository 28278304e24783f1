"""The backlog: records waiting in Redis, i.e. ids its counters allocated beyond what the sync reached.

One rule for the exporter's `rp_pipeline_backlog_records` and the backlog sensor; each reads the
counters its own way (the exporter with the generation marker in one pipeline, the sensor with
one MGET) and knows its own "synced up to" (the watermarks, or the last materializations).
"""

from __future__ import annotations

from .entities import ENTITIES
from .strategies import strategy_of

# Entities whose ids a Redis counter allocates, in dependency order.
COUNTED = tuple(spec for spec in ENTITIES if strategy_of(spec).allocates_ids and spec.counter)


def counter_keys(prefix: str) -> list[str]:
    """The Redis keys of the COUNTED entities' id counters, in COUNTED's order."""
    return [prefix + spec.counter for spec in COUNTED]


def counter_value(reply) -> int | None:
    """A counter as Redis answered it: absent is 0; None when it is not a count (or an error)."""
    if reply is None:
        return 0
    if isinstance(reply, bytes):
        reply = reply.decode("ascii", "replace")
    return int(reply) if isinstance(reply, str) and reply.isascii() and reply.isdigit() else None


def unsynced_ids(counters: dict[str, int | None], synced_up_to: dict[str, int]) -> dict[str, int]:
    """Per counted entity, the ids allocated beyond `synced_up_to` (0 when none); an entity whose
    counter is unknown or unreadable (None) is left out."""
    return {
        spec.name: max(0, counters[spec.name] - synced_up_to.get(spec.name, 0))
        for spec in COUNTED
        if counters.get(spec.name) is not None
    }
