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

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from cryptography import x509
from sqlalchemy import Connection, Row, String, select, text, type_coerce

from gateway.errors import AuditChainBroken, ConfigError, GatewayError
from gateway.evidence.nodekey import (
    NodeKey,
    canonical_json,
    certificates_from_pem,
    format_utc,
    verify_signature,
)
from gateway.storage.tables import audit_checkpoints, audit_log
from gateway.trust.binding import node_name_of
from gateway.trust.store import TrustStore

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

#: ``prev_hash`` of entry 1
GENESIS_HASH: Final = "0" * 64
#: the PostgreSQL advisory lock (``pg_advisory_xact_lock``) every append and checkpoint takes:
#: the bytes ``b"gw-audit"`` as a big-endian bigint
PG_LOCK_KEY: Final = int.from_bytes(b"gw-audit", "big")
#: the largest ``data`` accepted (canonical JSON, bytes): facts, not documents
MAX_DATA_BYTES: Final = 16 * 1024

_MAX_PROBLEMS: Final = 100
_BATCH: Final = 2000
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


# --- the entry and checkpoint formats ----------------------------------------------------------


def entry_hash(
    *,
    seq: int,
    at: dt.datetime,
    event: str,
    actor: str,
    subject: str | None,
    data: Any,
    prev_hash: str,
) -> str:
    """The SHA-256 (hex) of an entry's canonical form; ``prev_hash`` chains it to the last one.

    Usage: ``entry_hash(seq=1, at=when, event="ingest", actor="agency:...", subject=None,
    data={}, prev_hash=GENESIS_HASH)``.
    """
    entry = {
        "seq": seq,
        "at": format_utc(at),
        "event": event,
        "actor": actor,
        "subject": subject,
        "data": data,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(canonical_json(entry)).hexdigest()


def checkpoint_payload(*, node: str, seq: int, hash: str, at: dt.datetime) -> bytes:
    """The bytes a checkpoint's signature covers.

    Usage: ``verify_signature(cert, checkpoint_payload(node=..., seq=..., hash=..., at=...),
    base64.b64decode(row.signature))``.
    """
    return canonical_json({"node": node, "seq": seq, "hash": hash, "at": format_utc(at)})


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
    when = _utc(at) if at is not None else dt.datetime.now(dt.UTC)
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
    when = _utc(at) if at is not None else dt.datetime.now(dt.UTC)
    signature = key.sign(checkpoint_payload(node=node, seq=seq, hash=digest, at=when))
    conn.execute(
        audit_checkpoints.insert().values(
            seq=seq,
            hash=digest,
            at=when,
            node=node,
            signature=base64.b64encode(signature).decode("ascii"),
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


def _utc(when: dt.datetime) -> dt.datetime:
    if when.tzinfo is None:
        return when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


# --- verifying -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditReport:
    """What :func:`verify` found. ``ok`` only when every entry and checkpoint verifies."""

    ok: bool
    #: entries read
    entries: int
    #: checkpoints read
    checkpoints: int
    #: the first entry that cannot be vouched for (None when every entry verifies)
    first_broken_seq: int | None
    #: one line per problem, in seq order, each starting ``seq N:``; at most 100 lines, the
    #: last saying how many more there were
    problems: list[str]
    #: the last entry's seq and hash (None for an empty log)
    head_seq: int | None = None
    head_hash: str | None = None
    #: whether checkpoint certificates were checked against trust anchors
    trust_checked: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (``gateway audit verify --json``)."""
        return asdict(self)

    def raise_if_broken(self) -> None:
        """Raise :class:`AuditChainBroken` naming the first broken entry, unless ``ok``."""
        if not self.ok:
            first = self.problems[0] if self.problems else "unknown problem"
            raise AuditChainBroken(
                f"audit log broken at seq {self.first_broken_seq}: {first}",
                detail={"first_broken_seq": self.first_broken_seq, "problems": self.problems},
            )


@dataclass(slots=True)
class _Checkpoint:
    id: int
    seq: int
    hash: str
    #: why its signature or certificate is not acceptable (None: acceptable)
    problem: str | None


class _Problems:
    """Problems by the seq they concern, capped so a wrecked log cannot exhaust memory."""

    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []
        self.total = 0
        self.first: int | None = None

    def add(self, seq: int, message: str) -> None:
        self.total += 1
        self.first = seq if self.first is None else min(self.first, seq)
        if len(self.found) < _MAX_PROBLEMS:
            self.found.append((seq, message))

    def lines(self) -> list[str]:
        out = [f"seq {seq}: {message}" for seq, message in sorted(self.found, key=lambda p: p[0])]
        if self.total > len(self.found):
            out.append(f"... and {self.total - len(self.found)} more problems")
        return out


def verify(
    conn: Connection, trust: TrustStore | None = None, *, node: str | None = None
) -> AuditReport:
    """Recompute the whole chain and check every checkpoint; never writes.

    Usage: ``report = verify(conn, trust=store, node="h49-hub")``; ``report.ok``.

    Entries are streamed in seq order (memory does not grow with the log). Found: an edited
    column of any entry (its hash no longer matches, or the next entry's ``prev_hash`` does
    not); a deleted or inserted entry (a gap in seq, a broken link); a rewritten stretch or a
    deleted tail (a checkpoint's signed hash no longer matches, or covers a seq past the end);
    a checkpoint whose signature does not verify, whose certificate does not bind its node, or,
    with ``trust``, does not chain to an anchor at the checkpoint's time; with ``node``, a
    checkpoint of another node.

    .. warning:: Without ``trust`` a checkpoint proves little: whoever can rewrite the table
       can also sign a new checkpoint with a certificate of their own. Deleting the newest
       entries AND every checkpoint after them is not detectable from the database alone:
       keep checkpoints (or receipts) elsewhere too.
    """
    problems = _Problems()
    checker = _CheckpointChecker(trust, node)
    pending: dict[int, list[_Checkpoint]] = {}
    n_checkpoints = 0
    # Checkpoints are read BEFORE the entries: a checkpoint committed while we read can then
    # only cover entries the (later) entry query also sees.
    for stored in conn.execute(
        select(audit_checkpoints)
        .order_by(audit_checkpoints.c.seq, audit_checkpoints.c.id)
        .execution_options(yield_per=_BATCH)
    ):
        n_checkpoints += 1
        pending.setdefault(int(stored.seq), []).append(
            _Checkpoint(
                id=int(stored.id),
                seq=int(stored.seq),
                hash=str(stored.hash),
                problem=checker.check(stored),
            )
        )

    entries = 0
    expected = 1
    prev_stored = GENESIS_HASH
    last_vouched = 0  # the seq of the last checkpoint that verified and matched
    head: tuple[int, str] | None = None
    for row in _stream_entries(conn):
        entries += 1
        seq = int(row.seq)
        if seq > expected:
            problems.add(expected, f"{_span(expected, seq - 1)} missing (deleted)")
        elif seq < expected:
            problems.add(seq, f"seq {seq} is out of sequence (the log starts at 1)")
        if row.prev_hash != prev_stored:
            problems.add(seq, "prev_hash does not match the hash of the entry before it")
        content_problem = _content_problem(row)
        if content_problem:
            problems.add(seq, content_problem)
        for cp in pending.pop(seq, []):
            where = f"checkpoint #{cp.id} (seq {seq})"
            if cp.problem:
                problems.add(
                    last_vouched + 1,
                    f"{where} is not acceptable: {cp.problem}; entries {last_vouched + 1}..{seq} "
                    "are not vouched for",
                )
            elif cp.hash != row.hash:
                problems.add(
                    last_vouched + 1,
                    f"{where} signed hash {cp.hash} but entry {seq} holds {row.hash}: entries "
                    f"between {last_vouched + 1} and {seq} were rewritten",
                )
            else:
                last_vouched = seq
        prev_stored = row.hash if isinstance(row.hash, str) else ""
        expected = max(expected, seq + 1)
        head = (seq, prev_stored)

    end = head[0] if head else 0
    for seq in sorted(pending):
        for cp in pending[seq]:
            where = f"checkpoint #{cp.id} (seq {seq})"
            if seq > end:
                problems.add(
                    end + 1,
                    f"{where} covers entries up to {seq} but the log ends at {end}: "
                    f"{_span(end + 1, seq)} deleted",
                )
            else:
                problems.add(seq, f"{where} covers an entry that is missing from the log")
            if cp.problem:
                problems.add(seq, f"{where} is not acceptable: {cp.problem}")

    return AuditReport(
        ok=problems.total == 0,
        entries=entries,
        checkpoints=n_checkpoints,
        first_broken_seq=problems.first,
        problems=problems.lines(),
        head_seq=head[0] if head else None,
        head_hash=head[1] if head else None,
        trust_checked=trust is not None,
    )


def _span(first: int, last: int) -> str:
    return f"entry {first} is" if first == last else f"entries {first}..{last} are"


def _stream_entries(conn: Connection) -> Iterator[Any]:
    # On SQLite the stored time text is read as is: a hand-edited time must become a reported
    # problem, not a parse error that stops the verification.
    raw_at = conn.dialect.name == "sqlite"
    columns = [
        type_coerce(c, String).label("at") if raw_at and c is audit_log.c.at else c
        for c in audit_log.c
    ]
    stmt = select(*columns).order_by(audit_log.c.seq).execution_options(yield_per=_BATCH)
    yield from conn.execute(stmt)


def _content_problem(row: Row[Any]) -> str | None:
    """Why an entry's stored hash does not match its content, or None."""
    when = _as_time(row.at)
    if when is None:
        return f"at is not a time ({row.at!r})"
    if not isinstance(row.data, str):
        return "data is not JSON text"
    try:
        data = json.loads(row.data)
        canonical = canonical_json(data).decode("utf-8")
    except ValueError:  # not JSON, or NaN / Infinity
        return "data is not valid JSON"
    if canonical != row.data:
        return "data is not in canonical form (it was edited)"
    digest = entry_hash(
        seq=int(row.seq),
        at=when,
        event=row.event,
        actor=row.actor,
        subject=row.subject,
        data=data,
        prev_hash=row.prev_hash,
    )
    if digest != row.hash:
        return f"the entry's content does not match its hash (recomputed {digest})"
    return None


def _as_time(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return _utc(value)
    if isinstance(value, str):
        try:
            return _utc(dt.datetime.fromisoformat(value))
        except ValueError:
            return None
    return None


class _CheckpointChecker:
    """Checks checkpoint signatures and certificates, parsing each distinct PEM once."""

    def __init__(self, trust: TrustStore | None, node: str | None) -> None:
        self._trust = trust
        self._node = node
        self._certs: dict[str, list[x509.Certificate] | str] = {}
        #: per PEM: the window in which the chain verified last time
        self._windows: dict[str, tuple[dt.datetime, dt.datetime]] = {}

    def check(self, cp: Row[Any]) -> str | None:
        certs = self._parse(cp.certificate)
        if isinstance(certs, str):
            return certs
        leaf, *extra = certs
        when = _as_time(cp.at)
        if when is None:
            return f"at is not a time ({cp.at!r})"
        try:
            signature = base64.b64decode(str(cp.signature).encode("ascii"), validate=True)
        except (ValueError, binascii.Error):
            return "its signature is not base64"
        payload = checkpoint_payload(node=cp.node, seq=int(cp.seq), hash=cp.hash, at=when)
        if not verify_signature(leaf, payload, signature):
            return "its signature does not verify under its certificate (forged or edited)"
        try:
            bound = node_name_of(leaf)
        except GatewayError as exc:
            return exc.message
        if bound != cp.node:
            return f"it names node {cp.node!r} but its certificate binds node {bound!r}"
        if self._node is not None and cp.node != self._node:
            return f"it was signed by node {cp.node!r}, not by this node ({self._node!r})"
        if self._trust is not None:
            return self._chain_problem(cp.certificate, leaf, extra, when)
        return None

    def _parse(self, pem: Any) -> list[x509.Certificate] | str:
        if not isinstance(pem, str):
            return "its certificate is not PEM text"
        if pem not in self._certs:
            try:
                self._certs[pem] = certificates_from_pem(pem)
            except GatewayError as exc:
                self._certs[pem] = f"its certificate is not readable: {exc.message}"
        return self._certs[pem]

    def _chain_problem(
        self, pem: str, leaf: x509.Certificate, extra: list[x509.Certificate], when: dt.datetime
    ) -> str | None:
        assert self._trust is not None
        window = self._windows.get(pem)
        if window is not None and window[0] <= when <= window[1]:
            return None  # the same path verified before and is valid at this time too
        try:
            chain = self._trust.verify_chain(leaf, extra, at=when)
        except GatewayError as exc:
            return f"its certificate is not trusted at {format_utc(when)}: {exc.message}"
        self._windows[pem] = (
            max(c.not_valid_before_utc for c in chain),
            min(c.not_valid_after_utc for c in chain),
        )
        return None
