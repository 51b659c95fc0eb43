"""The node's database: tables, engines, Alembic migrations."""
