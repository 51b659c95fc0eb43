"""Alembic migrations of the node's database (configured from code: :mod:`gateway.storage.db`)."""
