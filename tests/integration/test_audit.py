"""The audit log on real databases: SQLite always, PostgreSQL when GATEWAY_TEST_POSTGRES_URL is set.

Every tampering an operator with SQL access could try is made here by hand (UPDATE / DELETE) and
must be named by ``verify``; ``gateway audit verify`` must say so with its exit status.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, create_engine, delete, event, func, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from support import DevPKI

from gateway.cli.audit import audit as audit_cli
from gateway.errors import AuditChainBroken, ConfigError
from gateway.evidence.audit import (
    GENESIS_HASH,
    AuditReport,
    append,
    check_data,
    checkpoint,
    checkpoint_payload,
    entry_hash,
    verify,
)
from gateway.evidence.nodekey import NodeKey
from gateway.storage.tables import audit_checkpoints, audit_log, metadata
from gateway.trust.store import TrustStore

PG_ENV = "GATEWAY_TEST_POSTGRES_URL"
NODE = "audit-node"
RSA_NODE = "audit-node-rsa"
OTHER_NODE = "audit-other"
T0 = dt.datetime(2024, 5, 2, 3, 4, 5, 123456, tzinfo=dt.UTC)


# --- databases -----------------------------------------------------------------------------------


def _sqlite_engine(path: Path) -> Engine:
    """A SQLite engine that locks like the node's: WAL, BEGIN IMMEDIATE for every transaction."""
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we say BEGIN ourselves
        dbapi_connection.execute("PRAGMA journal_mode = WAL")

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _pg_server() -> str | None:
    return os.environ.get(PG_ENV) or None


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A PostgreSQL database of this module's own, with the gateway's tables; dropped after."""
    server = make_url(_pg_server() or "")
    if server.drivername == "postgresql":
        server = server.set(drivername="postgresql+psycopg")
    name = f"gw_audit_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = server.set(database=name)
    try:
        setup = create_engine(url, poolclass=NullPool)
        metadata.create_all(setup)
        setup.dispose()
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgresql",
            marks=pytest.mark.skipif(_pg_server() is None, reason=f"{PG_ENV} is not set"),
        ),
    ]
)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty audit log: a fresh SQLite file, or the module's PostgreSQL database emptied."""
    if request.param == "sqlite":
        eng = _sqlite_engine(tmp_path / "node.db")
        metadata.create_all(eng)
    else:
        eng = create_engine(request.getfixturevalue("pg_database"))
        with eng.begin() as conn:
            conn.execute(delete(audit_checkpoints))
            conn.execute(delete(audit_log))
    yield eng
    eng.dispose()


# --- keys ----------------------------------------------------------------------------------------


@pytest.fixture
def key(pki: DevPKI) -> NodeKey:
    return pki.node_key(NODE)


# --- helpers -------------------------------------------------------------------------------------


def fill(engine: Engine, count: int, *, per_transaction: int = 10, start: int = 0) -> None:
    """Append ``count`` entries, ``per_transaction`` to a transaction."""
    done = 0
    while done < count:
        with engine.begin() as conn:
            for _ in range(min(per_transaction, count - done)):
                n = start + done
                append(
                    conn,
                    event="ingest" if n % 3 else "deliver",
                    actor=f"agency:000.00.00.G{n % 90 + 10}",
                    subject=None if n % 7 == 0 else f"doc-{n:06d}",
                    data={"n": n, "sha256": f"{n:064x}", "recipients": ["000.00.00.H49"]},
                    at=T0 + dt.timedelta(seconds=n),
                )
                done += 1


def check(engine: Engine, trust: TrustStore | None = None, **kwargs: Any) -> AuditReport:
    with engine.connect() as conn:
        return verify(conn, trust, **kwargs)


def make_checkpoint(engine: Engine, key: NodeKey, node: str = NODE) -> int | None:
    with engine.begin() as conn:
        return checkpoint(conn, key, node, at=dt.datetime.now(dt.UTC))


def assert_broken_at(report: AuditReport, seq: int, *words: str) -> None:
    assert not report.ok
    assert report.first_broken_seq == seq, report.problems
    assert report.problems[0].startswith(f"seq {seq}:"), report.problems
    for word in words:
        assert any(word in p for p in report.problems), (word, report.problems)


def rewrite_from(engine: Engine, first: int) -> None:
    """A careful forger: change entry ``first`` and recompute every hash after it."""
    with engine.begin() as conn:
        rows = conn.execute(
            select(audit_log).where(audit_log.c.seq >= first).order_by(audit_log.c.seq)
        ).all()
        prev = conn.execute(select(audit_log.c.hash).where(audit_log.c.seq == first - 1)).scalar()
        prev = prev or GENESIS_HASH
        for row in rows:
            data = json.loads(row.data)
            if row.seq == first:
                data["n"] = -1
            digest = entry_hash(
                seq=row.seq,
                at=row.at,
                event=row.event,
                actor=row.actor,
                subject=row.subject,
                data=data,
                prev_hash=prev,
            )
            conn.execute(
                update(audit_log)
                .where(audit_log.c.seq == row.seq)
                .values(
                    data=json.dumps(data, sort_keys=True, separators=(",", ":")),
                    prev_hash=prev,
                    hash=digest,
                )
            )
            prev = digest


# --- the chain -----------------------------------------------------------------------------------


def test_thousand_appends_verify(engine: Engine, key: NodeKey, pki: DevPKI) -> None:
    for part in range(4):
        fill(engine, 250, per_transaction=25, start=part * 250)
        assert make_checkpoint(engine, key) == (part + 1) * 250
    report = check(engine, pki.trust(), node=NODE)
    assert report.ok, report.problems
    assert (report.entries, report.checkpoints) == (1000, 4)
    assert report.first_broken_seq is None and report.problems == []
    assert report.head_seq == 1000 and report.trust_checked
    with engine.connect() as conn:
        last = conn.execute(select(audit_log.c.hash).where(audit_log.c.seq == 1000)).scalar()
    assert report.head_hash == last
    report.raise_if_broken()  # does not raise


def test_entries_are_chained(engine: Engine) -> None:
    fill(engine, 3)
    with engine.connect() as conn:
        rows = conn.execute(select(audit_log).order_by(audit_log.c.seq)).all()
    assert [r.seq for r in rows] == [1, 2, 3]
    assert rows[0].prev_hash == GENESIS_HASH
    assert rows[1].prev_hash == rows[0].hash and rows[2].prev_hash == rows[1].hash
    assert rows[0].data == '{"n":0,"recipients":["000.00.00.H49"],"sha256":"' + "0" * 64 + '"}'


def test_append_commits_and_rolls_back_with_the_caller(engine: Engine) -> None:
    with engine.connect() as conn:
        append(conn, event="ingest", actor="agency:x", subject="d1", data={})
        conn.rollback()  # the ingest failed: its audit entry goes with it
    with engine.begin() as conn:
        assert append(conn, event="ingest", actor="agency:x", subject="d2", data={}) == 1
    assert check(engine).entries == 1


def test_empty_log_verifies(engine: Engine) -> None:
    report = check(engine)
    assert report.ok and report.entries == 0 and report.head_seq is None


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("data", '{"n":999}'),
        ("data", '{"n": 6, "recipients": ["000.00.00.H49"]}'),
        ("event", "tampered"),
        ("actor", "admin:mallory"),
        ("subject", "doc-999999"),
        ("subject", None),
        ("at", T0 + dt.timedelta(days=1)),
        ("hash", "f" * 64),
        ("prev_hash", "e" * 64),
        ("seq", 1007),
    ],
)
def test_hand_edited_column_is_named(engine: Engine, column: str, value: object) -> None:
    fill(engine, 20)
    with engine.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == 7).values({column: value}))
    assert_broken_at(check(engine), 7)


def test_hand_edited_time_text_on_sqlite_is_reported_not_raised(tmp_path: Path) -> None:
    engine = _sqlite_engine(tmp_path / "node.db")
    metadata.create_all(engine)
    fill(engine, 10)
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET at = 'yesterday' WHERE seq = 4"))
    assert_broken_at(check(engine), 4, "not a time")
    engine.dispose()


def test_deleted_middle_entry_is_named(engine: Engine) -> None:
    fill(engine, 20)
    with engine.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq == 7))
    report = check(engine)
    assert_broken_at(report, 7, "entry 7 is missing")
    assert report.entries == 19


def test_deleted_first_entry_is_named(engine: Engine) -> None:
    fill(engine, 5)
    with engine.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq == 1))
    assert_broken_at(check(engine), 1, "missing")


def test_truncated_tail_after_a_checkpoint_is_named(engine: Engine, key: NodeKey) -> None:
    fill(engine, 20)
    assert make_checkpoint(engine, key) == 20
    with engine.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq > 15))
    report = check(engine)
    assert_broken_at(report, 16, "entries 16..20 are deleted", "log ends at 15")


def test_consistent_rewrite_is_caught_by_the_next_checkpoint(engine: Engine, key: NodeKey) -> None:
    fill(engine, 10)
    make_checkpoint(engine, key)
    fill(engine, 10, start=10)
    make_checkpoint(engine, key)
    rewrite_from(engine, 14)
    report = check(engine)
    # every hash recomputes: only the signed checkpoint at 20 knows better
    assert_broken_at(report, 11, "checkpoint", "were rewritten")


def test_raise_if_broken_names_the_entry(engine: Engine) -> None:
    fill(engine, 10)
    with engine.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == 3).values(actor="x"))
    with pytest.raises(AuditChainBroken, match="seq 3"):
        check(engine).raise_if_broken()


# --- checkpoints ---------------------------------------------------------------------------------


def test_checkpoint_is_written_once_per_head(engine: Engine, key: NodeKey) -> None:
    assert make_checkpoint(engine, key) is None  # empty log
    fill(engine, 5)
    assert make_checkpoint(engine, key) == 5
    assert make_checkpoint(engine, key) is None  # head already checkpointed
    fill(engine, 1, start=5)
    assert make_checkpoint(engine, key) == 6
    with engine.connect() as conn:
        rows = conn.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.id)).all()
    assert [r.seq for r in rows] == [5, 6]
    assert rows[0].node == NODE and "BEGIN CERTIFICATE" in rows[0].certificate


@pytest.mark.parametrize("name", [NODE, RSA_NODE])
def test_checkpoints_verify_with_trust_for_both_key_types(
    engine: Engine, pki: DevPKI, name: str
) -> None:
    fill(engine, 5)
    make_checkpoint(engine, pki.node_key(name), name)
    report = check(engine, pki.trust(), node=name)
    assert report.ok, report.problems


def test_checkpoint_refuses_a_node_the_certificate_does_not_bind(
    engine: Engine, key: NodeKey
) -> None:
    fill(engine, 1)
    with pytest.raises(ConfigError, match="binds node"), engine.begin() as conn:
        checkpoint(conn, key, "someone-else")


def test_checkpoint_with_a_forged_signature_is_caught(
    engine: Engine, key: NodeKey, pki: DevPKI
) -> None:
    fill(engine, 10)
    make_checkpoint(engine, key)
    fill(engine, 10, start=10)
    make_checkpoint(engine, key)
    forger = pki.node_key(OTHER_NODE)  # a trusted key, but not this node's
    with engine.begin() as conn:
        cp = conn.execute(select(audit_checkpoints).where(audit_checkpoints.c.seq == 20)).one()
        payload = checkpoint_payload(node=cp.node, seq=cp.seq, hash=cp.hash, at=cp.at)
        conn.execute(
            update(audit_checkpoints)
            .where(audit_checkpoints.c.id == cp.id)
            .values(signature=base64.b64encode(forger.sign(payload)).decode())
        )
    report = check(engine, pki.trust())
    assert_broken_at(report, 11, f"checkpoint #{cp.id}", "does not verify")


@pytest.mark.parametrize(("column", "value"), [("hash", "a" * 64), ("seq", 9), ("node", "x")])
def test_hand_edited_checkpoint_is_caught(
    engine: Engine, key: NodeKey, column: str, value: object
) -> None:
    fill(engine, 10)
    make_checkpoint(engine, key)
    with engine.begin() as conn:
        conn.execute(update(audit_checkpoints).values({column: value}))
    report = check(engine)
    assert not report.ok
    assert any("checkpoint #" in p for p in report.problems), report.problems


def test_checkpoint_signed_by_a_stranger_is_caught_with_trust(
    engine: Engine, key: NodeKey, pki: DevPKI, other_pki: DevPKI
) -> None:
    fill(engine, 10)
    make_checkpoint(engine, key)
    fill(engine, 10, start=10)
    make_checkpoint(engine, key)
    # the forger rewrites 14..20, removes the real checkpoint and signs a new one with a
    # certificate of their own that even binds the right node name
    rewrite_from(engine, 14)
    with engine.begin() as conn:
        conn.execute(delete(audit_checkpoints).where(audit_checkpoints.c.seq == 20))
    make_checkpoint(engine, other_pki.node_key(NODE))
    assert check(engine).ok  # without trust anchors nothing can tell (documented)
    report = check(engine, pki.trust())
    assert_broken_at(report, 11, "not trusted")


def test_checkpoint_of_another_node_is_caught(engine: Engine, pki: DevPKI) -> None:
    fill(engine, 3)
    make_checkpoint(engine, pki.node_key(OTHER_NODE), OTHER_NODE)
    report = check(engine, pki.trust(), node=NODE)
    assert not report.ok
    assert "not by this node" in report.problems[0]


# --- concurrency ---------------------------------------------------------------------------------


def test_concurrent_appends_keep_one_chain(engine: Engine) -> None:
    per_thread = 100
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                with engine.begin() as conn:  # one transaction per event, as ingest does
                    append(conn, event="ingest", actor=name, subject=f"{name}-{i}", data={"i": i})
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"node:w{n}",)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    report = check(engine)
    assert report.ok, report.problems
    assert report.entries == 2 * per_thread
    with engine.connect() as conn:
        counts = dict(
            conn.execute(select(audit_log.c.actor, func.count()).group_by(audit_log.c.actor)).all()
        )
    assert counts == {"node:w1": per_thread, "node:w2": per_thread}


# --- the guard -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        {"envelope": "<edXML/>"},
        {"signedEnvelope": "x"},
        {"body": "x"},
        {"request_body": "x"},
        {"payload": "x"},
        {"key": "x"},
        {"private_key": "x"},
        {"privateKey": "x"},
        {"api_key": "x"},
        {"apikey": "x"},
        {"Authorization-Token": "x"},
        {"secret": "x"},
        {"client_secret": "x"},
        {"password": "x"},
        {"dbPassword": "x"},
        {"token": "x"},
        {"peer": {"credentials": "x"}},
        {"items": [{"passwd": "x"}]},
        {"note": "-----BEGIN PRIVATE KEY-----\nMIIE..."},
        {"ratio": 0.5},
        {"big": 2**60},
        {"raw": b"bytes"},
        {"blob": "x" * 20_000},
    ],
)
def test_guard_refuses_secrets_bodies_and_non_json(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        check_data(data)


def test_refused_append_writes_nothing(engine: Engine) -> None:
    with pytest.raises(ValueError, match="never hold envelope bodies"), engine.begin() as conn:
        append(conn, event="ingest", actor="agency:x", subject=None, data={"envelope": "<x/>"})
    assert check(engine).entries == 0


def test_guard_lets_facts_through(engine: Engine) -> None:
    facts = {
        "sha256": "0" * 64,
        "size": 48213,
        "keyword": "a word that merely starts with key",
        "monkey": True,
        "envelope_sha256": "0" * 64,
        "body_size": 10,
        "secretary": "Văn phòng",
        "recipients": ["000.00.00.H49"],
        "status_code": None,
    }
    with engine.begin() as conn:
        assert append(conn, event="ingest", actor="agency:x", subject="d", data=facts) == 1


def test_over_long_fields_are_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="event"), engine.begin() as conn:
        append(conn, event="e" * 65, actor="a", subject=None, data={})
    with pytest.raises(ValueError, match="actor"), engine.begin() as conn:
        append(conn, event="e", actor="", subject=None, data={})


# --- the format, for auditors --------------------------------------------------------------------


def test_entry_hash_golden_vector() -> None:
    # docs/audit.md shows this entry and this hash: other tools must reproduce it
    canonical = (
        '{"actor":"agency:000.00.00.G22","at":"2024-05-02T03:04:05.123456Z",'
        '"data":{"sha256":"' + "ab" * 32 + '","size":48213},"event":"ingest",'
        '"prev_hash":"' + "0" * 64 + '","seq":1,"subject":"9f1c2a7e0b6d4f3e8a5c1b2d3e4f5a6b"}'
    )
    import hashlib

    expected = hashlib.sha256(canonical.encode()).hexdigest()
    assert (
        entry_hash(
            seq=1,
            at=T0,
            event="ingest",
            actor="agency:000.00.00.G22",
            subject="9f1c2a7e0b6d4f3e8a5c1b2d3e4f5a6b",
            data={"size": 48213, "sha256": "ab" * 32},
            prev_hash=GENESIS_HASH,
        )
        == expected
        == "a02ac9cc6c3b20aac3f62a33de8b4ef7719b35ba757d4e9cc90bdde48369d634"
    )


# --- the command ---------------------------------------------------------------------------------


def _config(tmp_path: Path, engine: Engine, pki: DevPKI | None) -> Path:
    url = engine.url.render_as_string(hide_password=False)
    lines = [f'[node]\nname = "{NODE}"\n', f"[database]\nurl = {json.dumps(url)}\n"]
    if pki is not None:
        lines.append(f"[trust]\nanchors = [{json.dumps(str(pki.ca.root_cert))}]\n")
    path = tmp_path / "node.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(audit_cli, list(args), catch_exceptions=False)


def test_cli_verify_ok(engine: Engine, key: NodeKey, pki: DevPKI, tmp_path: Path) -> None:
    fill(engine, 30)
    make_checkpoint(engine, key)
    result = run_cli("verify", "--config", str(_config(tmp_path, engine, pki)))
    assert result.exit_code == 0, result.output
    assert "30 entries, 1 checkpoints" in result.output
    assert "checked against 1 trust anchor" in result.output
    assert "OK" in result.output


def test_cli_verify_broken_names_the_entry(engine: Engine, tmp_path: Path) -> None:
    fill(engine, 30)
    with engine.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == 12).values(event="edited"))
    config = _config(tmp_path, engine, None)
    result = run_cli("verify", "--config", str(config))
    assert result.exit_code == 1, result.output
    assert "BROKEN: first broken entry: seq 12" in result.output
    assert "NOT checked against trust anchors" in result.output
    result = run_cli("verify", "--config", str(config), "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["ok"] is False and report["first_broken_seq"] == 12
    assert report["entries"] == 30 and report["problems"][0].startswith("seq 12:")


def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    result = run_cli("verify", "--config", str(tmp_path / "absent.toml"))
    assert result.exit_code == 2
    assert "CONFIG_INVALID" in result.output
    config = tmp_path / "node.toml"
    config.write_text('[database]\nurl = "sqlite:///no-such.db"\n', encoding="utf-8")
    result = run_cli("verify", "--config", str(config))
    assert result.exit_code == 2
    assert "does not exist" in result.output
    assert not (tmp_path / "no-such.db").exists()  # verifying never creates a database


def test_cli_unmigrated_database_exits_2(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE unrelated (x INTEGER)")
    engine.dispose()
    config = tmp_path / "node.toml"
    config.write_text('[database]\nurl = "sqlite:///empty.db"\n', encoding="utf-8")
    result = run_cli("verify", "--config", str(config))
    assert result.exit_code == 2
    assert "DATABASE_NOT_MIGRATED" in result.output


def test_concurrent_appends_on_a_plain_sqlite_engine(tmp_path: Path) -> None:
    # An engine without BEGIN IMMEDIATE (the sqlite3 driver begins lazily, before the first
    # write): append's first statement takes the write lock, so the head it reads is current.
    engine = create_engine(f"sqlite:///{tmp_path / 'plain.db'}", connect_args={"timeout": 30})
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode = WAL")
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def worker(name: str) -> None:
        try:
            start.wait()
            for i in range(100):
                with engine.begin() as conn:
                    append(conn, event="ingest", actor=name, subject=None, data={"i": i})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"node:w{n}",)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    report = check(engine)
    assert report.ok and report.entries == 200, report.problems
    engine.dispose()
