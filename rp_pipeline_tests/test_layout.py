"""The Redis layout is declared once (`rp_pipeline/layout.py`) and every reader agrees with it.

Covers: each entity with ids reads exactly the hash fields the writer writes (a field the spec
forgot would be dropped silently by the sync), hash keys and counters come from the layout, and
every spec's read strategy exists.
"""

from __future__ import annotations

from rp_pipeline import layout
from rp_pipeline.entities import ENTITIES, HASH_BY_ID
from rp_pipeline.strategies import strategy_of


def test_every_entity_with_ids_reads_each_field_the_writer_writes():
    for spec in ENTITIES:
        if spec.strategy != HASH_BY_ID:
            continue
        read = [p.field for p in spec.parents] + [c.redis_field for c in spec.columns]
        assert sorted(read) == sorted(spec.records.fields), spec.name


def test_each_hash_layout_is_read_by_one_entity_with_its_keys():
    declared = [layout.MODEL, layout.VERSION, layout.DATASET, layout.RUN, layout.EXPERIMENT]
    declared.append(layout.PREDICTION)
    with_ids = [spec for spec in ENTITIES if spec.strategy == HASH_BY_ID]
    assert sorted(spec.records.record for spec in with_ids) == sorted(r.record for r in declared)
    for spec in with_ids:
        assert spec.key == spec.records.record
        assert spec.counter == spec.records.counter


def test_every_spec_names_a_known_read_strategy():
    assert {strategy_of(spec).name for spec in ENTITIES} == {spec.strategy for spec in ENTITIES}
