"""Alembic environment: the catalog passes its own connection in `config.attributes["connection"]`."""

from alembic import context

from opentracy.store.tables import Base

target_metadata = Base.metadata
connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only when run from the alembic command line
    raise SystemExit("Run migrations through opentracy (Catalog.migrate), which supplies the connection.")

context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
