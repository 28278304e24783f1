"""A source is its data, not its address: `sources` maps each Redis data set's marker to its origin.

Revision ID: 0002
Revises: 0001

Written out literally (not derived from live specs), so this revision never changes. Nothing is
moved: a data set synced by the version before (which named sources by address) keeps that name
as its origin, adopted from its bookkeeping rows when it is first seen (`rp_pipeline/sources.py`).
"""

from alembic import context, op

revision = "0002"
down_revision = "0001"


def upgrade():
    sync_schema = context.config.attributes["sync_schema"]
    op.execute(f'''
        CREATE TABLE "{sync_schema}".sources (
            generation text PRIMARY KEY,
            origin text NOT NULL CONSTRAINT uq_sources_origin UNIQUE,
            label text,
            last_address text,
            first_seen timestamptz NOT NULL DEFAULT now(),
            last_seen timestamptz NOT NULL DEFAULT now()
        )''')


def downgrade():
    op.execute(f'DROP TABLE "{context.config.attributes["sync_schema"]}".sources')
