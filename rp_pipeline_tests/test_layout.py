"""The Redis layout is declared once (`rp_pipeline/layout.py`) and every reader agrees with it.

Covers: each entity with ids reads exactly the hash fields the writer writes (a field the spec
forgot would be dropped silently by the sync), hash keys and counters come from the layout, and
every spec's read strategy exists; a tenth entity stored by id is a layout entry and a spec.
"""

from __future__ import annotations

from rp_pipeline import layout
from rp_pipeline.connections import connect_postgres, connect_redis
from rp_pipeline.engine import sync_entity
from rp_pipeline.entities import ENTITIES, HASH_BY_ID, TIMESTAMPTZ, Column, EntitySpec
from rp_pipeline.schema import migrate
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


def test_an_entity_declared_by_its_layout_syncs_with_no_other_code(
    sync_config, redis_client, key_prefix
):
    """A throwaway entity: its layout and its spec, a table for it, and the engine syncs it
    (an id allocated but not written waits, a record changed in place is updated) with no other code."""
    records = layout.HashRecords(
        record="checkpoint:{id}",
        counter="counter:checkpoint",
        index="idx:checkpoints",
        fields=("name", "path", "saved_at"),
    )
    spec = EntitySpec(
        name="checkpoints",
        stat="checkpoints",
        label="Checkpoint",
        strategy=HASH_BY_ID,
        records=records,
        columns=(Column("name", required=True), Column("path"), Column("saved_at", TIMESTAMPTZ)),
        natural_key=("name",),
    )
    migrate(sync_config)
    with connect_postgres(sync_config) as conn:
        table = f'"{sync_config.schema}".checkpoints'
        conn.execute(
            f"CREATE TABLE {table} (id bigserial PRIMARY KEY, name text NOT NULL, path text, "
            "saved_at timestamptz, origin_source text)"
        )
        conn.execute(f"CREATE UNIQUE INDEX ON {table} (name)")
        conn.commit()
        for rid, name, path in ((1, "best", "/ckpt/best"), (3, "last", "/ckpt/last")):
            redis_client.hset(
                key_prefix + records.record.format(id=rid),
                mapping={"id": rid, "name": name, "path": path, "saved_at": "2025-11-22T10:30:00"},
            )
        redis_client.set(key_prefix + records.counter, 3)
        client = connect_redis(sync_config)
        try:
            first = sync_entity(spec, client, conn, sync_config)
            redis_client.hset(key_prefix + records.record.format(id=3), "path", "/ckpt/last2")
            second = sync_entity(spec, client, conn, sync_config)
        finally:
            client.close()
        rows = conn.execute(
            f"SELECT name, path, saved_at::text FROM {table} ORDER BY name"
        ).fetchall()
    assert (first.inserted, first.pending, second.updated) == (2, 1, 1)
    assert rows == [
        ("best", "/ckpt/best", "2025-11-22 10:30:00+00"),
        ("last", "/ckpt/last2", "2025-11-22 10:30:00+00"),
    ]
