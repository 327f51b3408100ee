"""Alembic environment of the records store.

Run only through ``arbup.records.migrate`` (``arbup db upgrade``,
``RecordsStore.create_schema``): the caller opens the connection and its
transaction and passes them in ``config.attributes["connection"]``, with the
PostgreSQL schema of the store, if any, in ``config.attributes["schema"]``.
Nothing is read from an ``alembic.ini``.
"""

from __future__ import annotations

from alembic import context

from arbup.records.schema import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError(
        "the records store's migrations run on a connection given by "
        "arbup.records.migrate (use `arbup db upgrade`)"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    # The version table lives with the tables: in the store's schema on PostgreSQL.
    version_table_schema=config.attributes.get("schema"),
    # SQLite cannot alter most of a table in place; batch operations copy it.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)

with context.begin_transaction():
    context.run_migrations()
