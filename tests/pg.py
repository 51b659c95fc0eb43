"""PostgreSQL test databases: each test gets its own, created and dropped around it.

Set ``GATEWAY_TEST_POSTGRES_URL`` (e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/test``)
to run the storage tests on PostgreSQL as well as SQLite; unset, the ``postgresql`` cases are
skipped with the reason, and ``tests/require_no_skips.py`` makes CI fail on that skip. The URL's
database is only used to issue ``CREATE DATABASE`` / ``DROP DATABASE``; nothing is written in it.

Usage::

    with temporary_database(server_url) as url:   # a fresh, empty database, dropped after
        engine = engine_from_url(url, tmp_path)

Tests usually take the ``db_url`` fixture (``tests/integration/conftest.py``) instead, which runs
each test as ``test_x[sqlite]`` and ``test_x[postgresql]``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

__all__ = ["POSTGRES_URL_ENV", "SKIP_REASON", "postgres_url", "temporary_database"]

POSTGRES_URL_ENV = "GATEWAY_TEST_POSTGRES_URL"

SKIP_REASON = (
    f"postgresql: {POSTGRES_URL_ENV} is not set "
    f"(e.g. {POSTGRES_URL_ENV}=postgresql+psycopg://postgres@127.0.0.1:5432/test); CI must set it"
)


def postgres_url() -> str | None:
    """The server to make test databases on, or None when PostgreSQL tests are not wanted."""
    return os.environ.get(POSTGRES_URL_ENV) or None


@contextmanager
def temporary_database(server_url: str, prefix: str = "gateway_test") -> Iterator[str]:
    """Create a uniquely named database on ``server_url``'s server; yield its URL; drop it."""
    server = make_url(server_url)
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    # CREATE/DROP DATABASE cannot run in a transaction; NullPool: no connection lingers
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                # a test that failed may have left an engine's pool open on it
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        admin.dispose()
