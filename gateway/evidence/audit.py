"""The node's audit log: append-only, hash-chained, with checkpoints signed by the node key.

Every entry commits in the same transaction as the event it records, so an ingest and its
audit entry exist together or not at all. Entry ``seq`` (1, 2, 3, ...) stores::

    hash = sha256_hex(canonical_json({"seq": seq, "at": "<UTC, microseconds, Z>",
                                      "event": ..., "actor": ..., "subject": ... or null,
                                      "data": {...}, "prev_hash": <hash of seq-1, or 64 "0">}))

A checkpoint signs the chain head with the node key: the signature (ES256 in DER, or RS256)
covers ``canonical_json({"node": ..., "seq": ..., "hash": ..., "at": ...})``. An edited,
inserted or deleted entry breaks the chain at that entry; a consistently rewritten chain, or a
deleted tail, no longer matches the hash a checkpoint signed. :func:`verify` finds the first
broken entry. ``docs/audit.md`` gives the format for auditors with other tools.

This module writes the log (append, lock, checkpoint); the format and the auditor's check are
:mod:`gateway.evidence.auditor`'s (:func:`verify`, :class:`AuditReport`, :func:`entry_hash`,
:func:`checkpoint_payload` are re-exported here).

Usage::

    with engine.begin() as conn:
        store_document(conn, ...)
        append(conn, event="ingest", actor="agency:000.00.00.G22", subject=doc_id,
               data={"sha256": digest, "size": size})
    with engine.begin() as conn:
        checkpoint(conn, node_key, "h49-hub")          # every [audit] checkpoint_interval
    report = verify(engine.connect(), trust=store)      # report.ok, report.first_broken_seq

.. warning:: ``data`` is kept for years and shown to auditors: never put an envelope body, a
   key, a password or a token in it. :func:`append` refuses keys that look like one, but the
   guard is a seat belt, not a licence.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Connection, select, text

from gateway.errors import ConfigError
from gateway.evidence.auditor import (
    GENESIS_HASH,
    AuditReport,
    checkpoint_fields,
    checkpoint_payload,
    entry_hash,
    verify,
)
from gateway.evidence.nodekey import NodeKey, as_utc, canonical_json
from gateway.evidence.sealed import sign_fields
from gateway.storage.tables import audit_checkpoints, audit_log
from gateway.trust.binding import node_name_of

__all__ = [
    "GENESIS_HASH",
    "MAX_DATA_BYTES",
    "PG_LOCK_KEY",
    "AuditReport",
    "Entry",
    "append",
    "append_many",
    "check_data",
    "checkpoint",
    "checkpoint_payload",
    "entry_hash",
    "lock_chain",
    "verify",
]

#: the PostgreSQL advisory lock (``pg_advisory_xact_lock``) every append and checkpoint takes:
#: the bytes ``b"gw-audit"`` as a big-endian bigint
PG_LOCK_KEY: Final = int.from_bytes(b"gw-audit", "big")
#: the largest ``data`` accepted (canonical JSON, bytes): facts, not documents
MAX_DATA_BYTES: Final = 16 * 1024

_TEXT_LIMITS: Final = {"event": 64, "actor": 128, "subject": 255}
#: integers JSON tools agree on (IEEE 754 doubles represent them exactly)
_MAX_INT: Final = 2**53 - 1
# A data key is refused when one of its words (snake_case, camelCase or kebab-case) names a
# secret ("client_secret", "apiKey"), when its LAST word names a body ("signedEnvelope", but
# not "envelope_sha256", which names a fact about one), or when it contains a compound secret
# name whatever the separators ("dbpassword").
_SECRET_WORDS: Final = frozenset({"credential", "key", "passphrase", "secret", "token"})
_BODY_WORDS: Final = frozenset({"body", "content", "envelope", "payload"})
_SECRET_FRAGMENTS: Final = ("apikey", "passwd", "password", "privatekey", "secretkey")
_CAMEL: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_WORD_SPLIT: Final = re.compile(r"[^a-z0-9]+")


# --- what an entry may hold ----------------------------------------------------------------------


def check_data(data: Mapping[str, Any]) -> str:
    """Validate an entry's ``data`` and return its canonical JSON text; ValueError if refused.

    Usage: ``check_data({"sha256": digest, "size": 48213})``.

    Refused, at any depth: a key with a word naming a secret (``key``, ``token``, ``secret``,
    ``credential``, ``passphrase``; snake_case, camelCase or kebab-case), with ``password`` or
    ``apikey`` anywhere in it, or ending in a word naming a body (``envelope``, ``body``,
    ``content``, ``payload``: ``envelope_sha256`` is a fact, ``signedEnvelope`` is not); a PEM
    private key in any string; floats (their JSON spelling differs between tools; use
    integers: milliseconds, bytes); integers beyond 2**53-1; anything that is not JSON; more
    than :data:`MAX_DATA_BYTES`.
    """
    if not isinstance(data, Mapping):
        raise ValueError("audit data must be a mapping")
    plain = _plain(data, "data")
    encoded = canonical_json(plain)
    if len(encoded) > MAX_DATA_BYTES:
        raise ValueError(
            f"audit data is {len(encoded)} bytes, more than {MAX_DATA_BYTES}: record facts "
            "(ids, digests, sizes), never documents"
        )
    return encoded.decode("utf-8")


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain JSON (dict, list, str, int, bool, None), or ValueError."""
    if value is None or isinstance(value, bool | str):
        if isinstance(value, str) and "PRIVATE KEY-----" in value:
            raise ValueError(f"{where} holds a PEM private key: keys never go in the audit log")
        return value
    if isinstance(value, int):
        if abs(value) > _MAX_INT:
            raise ValueError(f"{where}: integer {value} is beyond 2**53-1; write it as a string")
        return value
    if isinstance(value, float):
        raise ValueError(f"{where}: floats are not allowed in audit data; use an integer")
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: keys must be strings, not {key!r}")
            if _is_secret_name(key):
                raise ValueError(
                    f"{where}.{key}: audit data must never hold envelope bodies, keys or "
                    "secrets; name the fact instead (e.g. sha256, size, key_id -> cert_serial)"
                )
            out[key] = _plain(item, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise ValueError(f"{where}: {type(value).__name__} is not a JSON value")


def _is_secret_name(name: str) -> bool:
    words = [w for w in _WORD_SPLIT.split(_CAMEL.sub("_", name).lower()) if w]
    if any(fragment in "".join(words) for fragment in _SECRET_FRAGMENTS):
        return True
    singular = [w.removesuffix("s") for w in words]  # "keys", "secrets", "credentials"
    return bool(words) and (
        words[-1] in _BODY_WORDS or any(w in _SECRET_WORDS for w in (*words, *singular))
    )


# --- writing -------------------------------------------------------------------------------------


def append(
    conn: Connection,
    *,
    event: str,
    actor: str,
    subject: str | None,
    data: Mapping[str, Any],
    at: dt.datetime | None = None,
) -> int:
    """Append one entry inside the caller's transaction and return its ``seq``.

    Usage: ``append(conn, event="ingest", actor="agency:000.00.00.G22", subject=doc_id,
    data={"sha256": digest})``, on the connection that stores what the entry records, before
    it commits.

    Appends are serialised: on PostgreSQL by ``pg_advisory_xact_lock(PG_LOCK_KEY)`` held to the
    end of the transaction; on SQLite by taking the write lock first (the node's engine begins
    with ``BEGIN IMMEDIATE`` anyway). Use READ COMMITTED on PostgreSQL (its default): under
    REPEATABLE READ a transaction that read earlier may see a stale head and fail on the
    primary key. ``at`` defaults to now; a naive time is taken as UTC.
    Raises ValueError for refused ``data`` (see :func:`check_data`) or over-long fields.
    """
    return append_many(conn, [Entry(event=event, actor=actor, subject=subject, data=data)], at=at)


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry for :func:`append_many`."""

    event: str
    actor: str
    subject: str | None
    data: Mapping[str, Any]


def append_many(
    conn: Connection, entries: Sequence[Entry], *, at: dt.datetime | None = None
) -> int:
    """Append ``entries`` in order, inside the caller's transaction; the last ``seq`` written.

    Usage: ``append_many(conn, [Entry("relay_in", actor, gid, facts) for ...])``: what
    :func:`append` does for each, with the chain head read once and one insert for all (a
    relay batch of 100 packages writes 100 entries). Every entry is checked before anything is
    written (ValueError, as :func:`append`); all get the same time ``at`` (default: now).
    Returns 0, writing nothing, for no entries.
    """
    if not entries:
        return 0
    texts = [_checked(e) for e in entries]
    when = as_utc(at) if at is not None else dt.datetime.now(dt.UTC)
    # Within one transaction the head is read (and the chain locked) once: later appends of
    # the same transaction continue from what the previous one wrote (the gateway never wraps
    # an append in a savepoint, whose rollback would leave this stale).
    transaction = conn.get_transaction()
    known = conn.info.get(_HEAD_KEY)
    if known is not None and transaction is not None and known[0] is transaction:
        head: tuple[int, str] | None = known[1]
    else:
        _lock(conn)
        head = _head(conn)
    seq, digest = (0, GENESIS_HASH) if head is None else head
    rows = []
    for entry, data_text in zip(entries, texts, strict=True):
        seq, prev_hash = seq + 1, digest
        digest = entry_hash(
            seq=seq,
            at=when,
            event=entry.event,
            actor=entry.actor,
            subject=entry.subject,
            data=json.loads(data_text),
            prev_hash=prev_hash,
        )
        rows.append(
            {
                "seq": seq,
                "at": when,
                "event": entry.event,
                "actor": entry.actor,
                "subject": entry.subject,
                "data": data_text,
                "prev_hash": prev_hash,
                "hash": digest,
            }
        )
    conn.execute(_INSERT, rows if len(rows) > 1 else rows[0])
    if transaction is not None:
        conn.info[_HEAD_KEY] = (transaction, (seq, digest))
    return seq


def _checked(entry: Entry) -> str:
    """The entry's data as canonical JSON text, once its fields are checked (ValueError)."""
    for name, value in (("event", entry.event), ("actor", entry.actor), ("subject", entry.subject)):
        if value is None and name == "subject":
            continue
        if not isinstance(value, str) or not value:
            raise ValueError(f"audit {name} must be a non-empty string")
        if len(value) > _TEXT_LIMITS[name]:
            raise ValueError(f"audit {name} is longer than {_TEXT_LIMITS[name]} characters")
    return check_data(entry.data)


#: built once (SQLAlchemy builds and caches a statement per construct, not per call)
_INSERT = audit_log.insert()
#: ``conn.info`` key: (the transaction, the chain head it wrote last)
_HEAD_KEY = "gateway.audit.head"


def checkpoint(
    conn: Connection, key: NodeKey, node: str, at: dt.datetime | None = None
) -> int | None:
    """Sign the chain head into ``audit_checkpoints``; return the seq covered.

    Usage: ``with engine.begin() as conn: checkpoint(conn, node_key, settings.node.name)``.
    Returns None, writing nothing, when the log is empty or its head is already checkpointed.
    Raises :class:`ConfigError` when the key's certificate does not bind ``node``.
    """
    bound = node_name_of(key.certificate)
    if bound != node:
        raise ConfigError(
            f"the node certificate ({key.subject}) binds node {bound!r}, not {node!r}",
            detail={"key": "node.cert", "node": node, "certificate_node": bound},
        )
    _lock(conn)
    head = _head(conn)
    if head is None:
        return None
    seq, digest = head
    last = conn.execute(
        select(audit_checkpoints.c.seq, audit_checkpoints.c.hash)
        .order_by(audit_checkpoints.c.seq.desc(), audit_checkpoints.c.id.desc())
        .limit(1)
    ).first()
    if last is not None and last.seq == seq and last.hash == digest:
        return None
    when = as_utc(at) if at is not None else dt.datetime.now(dt.UTC)
    signature = sign_fields(key, checkpoint_fields(node=node, seq=seq, hash=digest, at=when))
    conn.execute(
        audit_checkpoints.insert().values(
            seq=seq,
            hash=digest,
            at=when,
            node=node,
            signature=signature,
            certificate=key.certificate_pem,
        )
    )
    return seq


def lock_chain(conn: Connection) -> None:
    """Take the chain's lock now, for the rest of the caller's transaction, and read its head.

    Usage: first thing in a PostgreSQL transaction that will append entries and also lock rows
    (``gateway.node.container.Node.writing`` does it), so that the chain is always the first lock
    taken. Appends of the same transaction then neither lock nor read again.
    """
    transaction = conn.get_transaction()
    _lock(conn)
    head = _head(conn)
    if transaction is not None:
        conn.info[_HEAD_KEY] = (transaction, head)


def _lock(conn: Connection) -> None:
    """Serialise writers of the chain until the caller's transaction ends."""
    if conn.dialect.name == "postgresql":
        conn.execute(_PG_LOCK, {"k": PG_LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        # A write statement takes SQLite's write lock even when it changes nothing, so the head
        # read next is the head this transaction appends to, whatever BEGIN mode the caller used.
        conn.execute(_SQLITE_LOCK)


def _head(conn: Connection) -> tuple[int, str] | None:
    row = conn.execute(_HEAD).first()
    return None if row is None else (int(row.seq), str(row.hash))


#: built once, like _INSERT
_PG_LOCK = text("SELECT pg_advisory_xact_lock(CAST(:k AS BIGINT))")
_SQLITE_LOCK = text("UPDATE audit_log SET seq = seq WHERE 0")
_HEAD = select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
