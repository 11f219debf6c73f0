"""Alembic's environment: migrations run on the connection `Database.open` hands over
(config.attributes["connection"]), with the models' metadata for comparison."""
from __future__ import annotations

from alembic import context

from aios.storage.models import Base, managed

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                  include_name=managed)
with context.begin_transaction():
    context.run_migrations()
