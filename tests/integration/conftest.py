"""Integration fixtures: ``db_url``, an empty database on each engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pg import SKIP_REASON, postgres_url, temporary_database


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database's URL: a SQLite file in ``tmp_path``, then a fresh PostgreSQL database.

    The ``postgresql`` case is skipped, with the reason, unless ``GATEWAY_TEST_POSTGRES_URL``
    names a server (``tests/pg.py``); CI sets it and runs ``tests/require_no_skips.py``.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
        return
    server = postgres_url()
    if server is None:
        pytest.skip(SKIP_REASON)
    with temporary_database(server) as url:
        yield url
