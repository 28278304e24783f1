"""The analysts' indexes and the ON DELETE rules of the old SQL adapter (docs/postgres-schema.md).

New databases, databases at 0001 and the old adapter's own tables all end with the same indexes and
foreign keys. Foreign keys are found by table, column and parent, whatever their name, and replaced
only when their rule is wrong.

Locks: the revision runs in the migration's one transaction, so every lock is held until it commits.
It therefore goes from the weakest lock to the strongest: indexes (SHARE: analysts keep reading),
then the new foreign keys, validated as they are added (SHARE ROW EXCLUSIVE on both tables: reads
still go on), and only then drops the old ones (ACCESS EXCLUSIVE, for the moment before the commit).
NOT VALID followed by VALIDATE CONSTRAINT would buy nothing inside one transaction: the stronger lock
of the ADD is already held when the VALIDATE runs.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import context, op

revision = "0003"
down_revision = "0002"

# name -> (table, columns). The first three are the old adapter's names; the others follow them.
INDEXES = {
    "ix_training_runs_status": ("training_runs", ("status",)),
    "ix_training_runs_status_started_at": ("training_runs", ("status", "started_at")),
    "ix_metrics_metric_name": ("metrics", ("metric_name",)),
    "ix_metrics_training_run_id_metric_name_epoch": (
        "metrics",
        ("training_run_id", "metric_name", "epoch"),
    ),
    "ix_predictions_timestamp": ("predictions", ("timestamp",)),
    "ix_predictions_model_version_id_timestamp": ("predictions", ("model_version_id", "timestamp")),
    "ix_model_versions_model_id_status": ("model_versions", ("model_id", "status")),
}

# (table, column, parent, ON DELETE rule): a child goes with its parent; a run outlives its dataset.
FOREIGN_KEYS = (
    ("model_versions", "model_id", "models", "CASCADE"),
    ("training_runs", "model_version_id", "model_versions", "CASCADE"),
    ("training_runs", "dataset_id", "datasets", "SET NULL"),
    ("hyperparameters", "training_run_id", "training_runs", "CASCADE"),
    ("metrics", "training_run_id", "training_runs", "CASCADE"),
    ("experiment_runs", "experiment_id", "experiments", "CASCADE"),
    ("experiment_runs", "training_run_id", "training_runs", "CASCADE"),
    ("predictions", "model_version_id", "model_versions", "CASCADE"),
)
_CONFDELTYPE = {"CASCADE": "c", "SET NULL": "n"}  # pg_constraint.confdeltype of each rule


def upgrade():
    schema = context.config.attributes["schema"]
    for name, (table, columns) in INDEXES.items():
        if not _has_index_on(schema, table, columns):
            op.execute(
                f'CREATE INDEX IF NOT EXISTS {name} ON "{schema}"."{table}" '
                f"({', '.join(_quoted(c) for c in columns)})"
            )
    stale = []
    for table, column, parent, rule in FOREIGN_KEYS:
        found = _foreign_keys(schema, table, column, parent)
        wrong = [name for name, deltype in found.items() if deltype != _CONFDELTYPE[rule]]
        if len(wrong) == len(found):
            name = f"fk_{table}_{column}"
            if name in wrong:  # taken by the constraint it replaces: that one goes first
                wrong.remove(name)
                op.execute(f'ALTER TABLE "{schema}"."{table}" DROP CONSTRAINT {name}')
            op.execute(
                f'ALTER TABLE "{schema}"."{table}" ADD CONSTRAINT {name} FOREIGN KEY ("{column}") '
                f'REFERENCES "{schema}"."{parent}" (id) ON DELETE {rule}'
            )
        stale += [(table, name) for name in wrong]
    for table, name in stale:
        op.execute(f'ALTER TABLE "{schema}"."{table}" DROP CONSTRAINT "{name}"')


def _quoted(column: str) -> str:
    return f'"{column}"'


def _has_index_on(schema: str, table: str, columns: tuple[str, ...]) -> bool:
    """A btree index on exactly these columns, under this revision's name or another (the old adapter's own)."""
    return (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT 1 FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid "
                "JOIN pg_namespace n ON n.oid = t.relnamespace JOIN pg_class x ON x.oid = i.indexrelid "
                "JOIN pg_am am ON am.oid = x.relam AND am.amname = 'btree' "
                "WHERE n.nspname = :schema AND t.relname = :table "
                "AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL "
                "AND i.indkey::text = array_to_string(ARRAY("  # int2vector as text: attnums separated by spaces
                "  SELECT a.attnum FROM unnest(CAST(:columns AS text[])) WITH ORDINALITY c(name, o) "
                "  JOIN pg_attribute a ON a.attrelid = t.oid AND a.attname = c.name ORDER BY c.o), ' ')"
            ),
            {"schema": schema, "table": table, "columns": list(columns)},
        )
        .first()
        is not None
    )


def _foreign_keys(schema: str, table: str, column: str, parent: str) -> dict[str, str]:
    """{constraint name: confdeltype} of the foreign keys from table.column to parent, whatever their names."""
    return dict(
        op.get_bind()
        .execute(
            sa.text(
                "SELECT c.conname, c.confdeltype FROM pg_constraint c "
                "JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
                "JOIN pg_class p ON p.oid = c.confrelid "
                "JOIN pg_attribute a ON a.attrelid = c.conrelid AND c.conkey = ARRAY[a.attnum] "
                "WHERE c.contype = 'f' AND n.nspname = :schema AND t.relname = :table AND a.attname = :column "
                "AND p.relnamespace = n.oid AND p.relname = :parent"
            ),
            {"schema": schema, "table": table, "column": column, "parent": parent},
        )
        .all()
    )
