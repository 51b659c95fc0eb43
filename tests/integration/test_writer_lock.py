"""SQLite writers of several processes take turns on ``<database>.writer-lock``.

A node's workers, and a CLI command run beside a node, write one SQLite file. A writer that
finds the file lock held waits for it; past the busy timeout it gets ``DatabaseUnavailable``
(a 503 to an agency), and nothing of its transaction is written.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from gateway.errors import DatabaseUnavailable
from gateway.storage import db
from gateway.storage.tables import peers

_HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _engine(tmp_path: Path) -> Engine:
    engine = db.engine_from_url("sqlite:///node.db", tmp_path)
    db.upgrade(engine)
    return engine


def _holder(lock: Path, seconds: float) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(lock), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def _write(engine: Engine, name: str) -> None:
    with db.sqlite_writer_lock(engine), engine.begin() as conn:
        conn.execute(
            peers.insert().values(
                name=name,
                role="child",
                url="https://x",
                serves="[]",
                updated_at=dt.datetime.now(dt.UTC),
            )
        )


def _count(engine: Engine) -> int:
    with db.read_only(engine).connect() as conn:
        return int(conn.execute(select(func.count()).select_from(peers)).scalar_one())


def test_a_writer_waits_for_another_process_then_writes(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    with _holder(tmp_path / "node.db.writer-lock", 0.5) as holder:
        began = time.monotonic()
        _write(engine, "after-the-wait")
        waited = time.monotonic() - began
        holder.wait(timeout=10)
    assert waited >= 0.3, "the writer did not wait for the other process's lock"
    assert _count(engine) == 1
    engine.dispose()


def test_a_lock_held_past_the_busy_timeout_is_database_unavailable_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = _engine(tmp_path)
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 300)
    with _holder(tmp_path / "node.db.writer-lock", 5) as holder:
        try:
            with pytest.raises(DatabaseUnavailable) as info:
                _write(engine, "never")
            assert "locked by another process" in info.value.message
            assert _count(engine) == 0
        finally:
            holder.kill()
            holder.wait(timeout=10)
    _write(engine, "once-free")  # the dead holder's lock went with it
    assert _count(engine) == 1
    engine.dispose()
