"""Alembic's environment for the job store: migrations run on the connection that
jobs/database.py ``migrate`` passes in (never from a config file or the command line)."""

from alembic import context

connection = context.config.attributes["connection"]
# SQLite alters tables by copying them (Alembic's batch mode); PostgreSQL alters in place.
context.configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
