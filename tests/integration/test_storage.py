"""The storage layer on real databases: durability settings, paths, failures, concurrency, bytes.

Tests taking ``db_url`` run on SQLite and, when ``GATEWAY_TEST_POSTGRES_URL`` is set, on a fresh
PostgreSQL database (see ``tests/pg.py``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from gateway.errors import ConfigError, DatabaseUnavailable
from gateway.settings import load_settings
from gateway.storage import db as gateway_db
from gateway.storage.db import (
    engine_from_url,
    make_engine,
    ping,
    read_only,
    require_current,
    upgrade,
)
from gateway.storage.tables import deliveries, documents

UTC = dt.UTC
HANOI = dt.timezone(dt.timedelta(hours=7))


@pytest.fixture
def engine(db_url: str, tmp_path: Path) -> Iterator[Engine]:
    """A migrated database on each engine."""
    engine = engine_from_url(db_url, tmp_path)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = engine_from_url(f"sqlite:///{tmp_path / 'node.db'}", tmp_path)
    upgrade(engine)
    yield engine
    engine.dispose()


def document(**overrides: Any) -> dict[str, Any]:
    """A ``documents`` row with every required column."""
    doc_id = uuid.uuid4().hex
    envelope = overrides.pop("envelope", b"<edXMLEnvelope/>")
    row: dict[str, Any] = {
        "id": doc_id,
        "kind": "document",
        "sender": "000.00.00.G22",
        "document_id": doc_id,
        "dedup_key": f"000.00.00.G22|id:{doc_id}",
        "sha256": hashlib.sha256(envelope).hexdigest(),
        "size": len(envelope),
        "envelope": envelope,
        "signer": "CN=test",
        "received_at": dt.datetime.now(UTC),
        "received_from": "agency:000.00.00.G22",
        "receipt": "{}",
    }
    row.update(overrides)
    return row


# --- SQLite: durability and locking ----------------------------------------------------------


def test_every_sqlite_connection_is_wal_full_sync_with_foreign_keys(sqlite_engine: Engine) -> None:
    # two connections open at once (a writer and a reader, as two writers would queue): two
    # DBAPI connections, each set up by the connect hook
    with sqlite_engine.connect() as first, read_only(sqlite_engine).connect() as second:
        for conn in (first, second):
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000


def test_concurrent_sqlite_writers_queue_instead_of_failing(sqlite_engine: Engine) -> None:
    """Read-then-write transactions (like ingest's dedup check) from two threads both commit.

    The first reads, then dawdles before writing; the second starts in the meantime. With a
    deferred BEGIN the second would read too, and one of them would fail with "database is
    locked" when upgrading its stale snapshot to a write; BEGIN IMMEDIATE makes it wait.
    """
    first_has_read = threading.Event()
    numbers: list[int] = []
    errors: list[BaseException] = []

    def write(first: bool) -> None:
        try:
            if not first:
                assert first_has_read.wait(timeout=10)
            with sqlite_engine.begin() as conn:
                count = conn.execute(select(func.count()).select_from(documents)).scalar_one()
                if first:
                    first_has_read.set()
                    time.sleep(0.5)
                conn.execute(documents.insert().values(document(subject=str(count + 1))))
                numbers.append(count + 1)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(first,)) for first in (True, False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    # serialised: the second saw the first's row
    assert sorted(numbers) == [1, 2]


def test_many_sqlite_writers_all_commit(sqlite_engine: Engine) -> None:
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for _ in range(10):
                with sqlite_engine.begin() as conn:
                    conn.execute(documents.insert().values(document()))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    with sqlite_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(documents)).scalar_one() == 80


def test_sqlite_readers_do_not_wait_for_a_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_db, "SQLITE_BUSY_TIMEOUT_MS", 200)
    engine = engine_from_url(f"sqlite:///{tmp_path / 'node.db'}", tmp_path)
    try:
        upgrade(engine)
        with engine.begin() as writer:
            writer.execute(documents.insert().values(document()))
            # the writer holds the write lock; a reader sees the last commit, at once
            with read_only(engine).connect() as reader:
                count = select(func.count()).select_from(documents)
                assert reader.execute(count).scalar_one() == 0
            # and a second writer waits, then gives up as DatabaseUnavailable (503), not a crash
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailable, match="locked"), engine.begin() as other:
                other.execute(documents.insert().values(document()))
            assert time.monotonic() - started >= 0.15
    finally:
        engine.dispose()


# --- paths and URLs --------------------------------------------------------------------------


def test_relative_sqlite_path_lands_in_the_settings_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    config = etc / "node.toml"
    config.write_text('[database]\nurl = "sqlite:///data.db"\n', encoding="utf-8")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    engine = make_engine(load_settings(config, environ={}))
    try:
        ping(engine)
        assert engine.url.database == str(etc / "data.db")
    finally:
        engine.dispose()
    assert (etc / "data.db").is_file()
    assert list(cwd.iterdir()) == []


def test_postgresql_url_without_driver_uses_psycopg(tmp_path: Path) -> None:
    engine = engine_from_url("postgresql://gateway@db.example/gateway", tmp_path)
    assert engine.url.drivername == "postgresql+psycopg"
    engine.dispose()


@pytest.mark.parametrize(
    "url",
    [
        "mysql://gateway:hunter2pass@db.example/gateway",
        "sqlite+aiosqlite:///node.db",
        "not a url at all hunter2pass",
    ],
)
def test_unsupported_or_malformed_url_is_a_config_error(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        engine_from_url(url, tmp_path)
    assert caught.value.detail == {"key": "database.url"}
    assert "hunter2pass" not in caught.value.message


# --- failures --------------------------------------------------------------------------------


def test_unreachable_postgresql_is_unavailable_without_the_password(tmp_path: Path) -> None:
    engine = engine_from_url("postgresql+psycopg://gateway:hunter2pass@127.0.0.1:1/node", tmp_path)
    try:
        for use in (ping, require_current, lambda e: e.begin().__enter__()):
            with pytest.raises(DatabaseUnavailable) as caught:
                use(engine)
            assert "127.0.0.1:1/node" in caught.value.message
            assert "hunter2pass" not in caught.value.message
            assert "hunter2pass" not in str(caught.value.detail)
            assert caught.value.http_status == 503
    finally:
        engine.dispose()


def test_sqlite_file_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    engine = engine_from_url("sqlite:///no/such/folder/node.db", tmp_path)
    try:
        with pytest.raises(DatabaseUnavailable, match=r"no/such/folder/node\.db"):
            ping(engine)
    finally:
        engine.dispose()


def test_ping_answers_on_a_live_database(db_url: str, tmp_path: Path) -> None:
    engine = engine_from_url(db_url, tmp_path)
    try:
        ping(engine)
    finally:
        engine.dispose()


# --- constraints and values, on both engines -------------------------------------------------


def test_duplicate_dedup_key_is_rejected(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(documents.insert().values(document(dedup_key="000.00.00.G22|id:42")))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(documents.insert().values(document(dedup_key="000.00.00.G22|id:42")))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(documents)).scalar_one() == 1


def test_foreign_keys_are_enforced(engine: Engine) -> None:
    now = dt.datetime.now(UTC)
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            deliveries.insert().values(
                document_seq=999_999,
                recipient="000.00.00.H41",
                next_hop="local",
                state="accepted",
                created_at=now,
                updated_at=now,
            )
        )


def test_times_come_back_as_the_same_instant_in_utc(engine: Engine) -> None:
    received = dt.datetime(2024, 11, 23, 9, 30, 15, 123456, tzinfo=HANOI)
    with engine.begin() as conn:
        conn.execute(documents.insert().values(document(id="t" * 32, received_at=received)))
    with engine.connect() as conn:
        back = conn.execute(
            select(documents.c.received_at).where(documents.c.id == "t" * 32)
        ).scalar_one()
    assert back == received
    assert back.utcoffset() == dt.timedelta(0)


@pytest.mark.slow
def test_a_50_mb_envelope_round_trips_byte_for_byte(engine: Engine) -> None:
    envelope = os.urandom(50 * 1024 * 1024)
    digest = hashlib.sha256(envelope).hexdigest()
    with engine.begin() as conn:
        conn.execute(documents.insert().values(document(id="b" * 32, envelope=envelope)))
    del envelope  # keep one 50 MB copy alive at a time
    with engine.connect() as conn:
        back = conn.execute(
            select(documents.c.envelope, documents.c.sha256, documents.c.size).where(
                documents.c.id == "b" * 32
            )
        ).one()
    assert isinstance(back.envelope, bytes)
    assert len(back.envelope) == back.size == 50 * 1024 * 1024
    assert hashlib.sha256(back.envelope).hexdigest() == back.sha256 == digest
