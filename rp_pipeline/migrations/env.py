"""Alembic environment: runs on the connection that `schema.migrate` hands over."""

from alembic import context

attributes = context.config.attributes
context.configure(
    connection=attributes["connection"],
    version_table_schema=attributes["sync_schema"],
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
