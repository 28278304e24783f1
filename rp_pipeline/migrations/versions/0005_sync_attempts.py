"""sync_status: per source and entity, the last attempt, the last success and running totals.

The Prometheus exporter reads this one small table (rows = sources × entities) at
every scrape instead of aggregating entity_runs, which grows with every cycle.
Existing history is folded in once, here. The index on pending makes "the oldest
waiting record" one index probe per entity.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import context, op

revision = "0005"
down_revision = "0004"

OUTCOMES = ("inserted", "updated", "unchanged", "skipped", "rejected")


def upgrade():
    sync_schema = context.config.attributes["sync_schema"]
    bind = op.get_bind()
    if sa.inspect(bind).has_table("sync_status", schema=sync_schema):
        return
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "sync_status",
        sa.Column("source", sa.Text, primary_key=True),
        sa.Column("entity", sa.Text, primary_key=True),
        sa.Column("last_attempt_at", ts),
        sa.Column("last_success_at", ts),
        sa.Column("last_run_id", sa.Text),
        sa.Column("last_duration_seconds", sa.Float(precision=53)),
        *[
            sa.Column(name, sa.BigInteger, nullable=False, server_default="0")
            for name in (
                "attempts",
                "successes",
                *[f"{o}_total" for o in OUTCOMES],
                "pending",
                "rejected_held",
            )
        ],
        schema=sync_schema,
    )
    s = f'"{sync_schema}"'
    op.execute(
        f"CREATE INDEX IF NOT EXISTS ix_pending_first_seen ON {s}.pending (source, entity, first_seen)"
    )
    outcome_columns = ", ".join(f"{o}_total" for o in OUTCOMES)
    op.execute(
        f"WITH t AS (SELECT source, entity, count(*) AS n, max(id) AS last_id, "
        f"{', '.join(f'sum({o}) AS {o}' for o in OUTCOMES)} FROM {s}.entity_runs GROUP BY source, entity) "
        f"INSERT INTO {s}.sync_status (source, entity, last_attempt_at, last_success_at, last_run_id, "
        f"last_duration_seconds, attempts, successes, {outcome_columns}, pending, rejected_held) "
        f"SELECT t.source, t.entity, l.finished_at, l.finished_at, l.run_id, l.duration_seconds, t.n, t.n, "
        f"{', '.join(f't.{o}' for o in OUTCOMES)}, l.pending, (SELECT count(*) FROM {s}.rejected_records r "
        f"WHERE r.source = t.source AND r.entity = t.entity) FROM t JOIN {s}.entity_runs l ON l.id = t.last_id"
    )
