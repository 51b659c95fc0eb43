"""Alembic migrations of the node's database (configured from code: :mod:`gateway.db`)."""
