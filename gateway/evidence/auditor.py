"""The auditor's check of the audit log: recompute the hash chain, check every checkpoint.

This module is also the log's format, everything an auditor with other tools must recompute
(``docs/audit.md``): the hash of an entry (:func:`entry_hash`) and the bytes a checkpoint signs
(:func:`checkpoint_payload`). Writing the log is :mod:`gateway.evidence.audit`'s, which
re-exports :func:`verify` and :class:`AuditReport`.

Usage::

    with engine.connect() as conn:
        report = verify(conn, trust=store, node="h49-hub")
    if not report.ok:
        print(report.first_broken_seq, report.problems)

.. warning:: :func:`verify` without ``trust`` proves little about checkpoints: whoever can
   rewrite the tables can also sign a new checkpoint with a certificate of their own.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Final

from cryptography import x509
from sqlalchemy import Connection, Row, String, select, type_coerce

from gateway.errors import AuditChainBroken, GatewayError
from gateway.evidence.nodekey import (
    as_utc,
    canonical_json,
    certificates_from_pem,
    format_utc,
    verify_signature,
)
from gateway.evidence.sealed import decode_signature
from gateway.storage.tables import audit_checkpoints, audit_log
from gateway.trust.binding import node_name_of
from gateway.trust.store import TrustStore

__all__ = [
    "GENESIS_HASH",
    "AuditReport",
    "checkpoint_fields",
    "checkpoint_payload",
    "entry_hash",
    "verify",
]

#: ``prev_hash`` of entry 1
GENESIS_HASH: Final = "0" * 64

_MAX_PROBLEMS: Final = 100
_BATCH: Final = 2000


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


def checkpoint_fields(*, node: str, seq: int, hash: str, at: dt.datetime) -> dict[str, Any]:
    """The fields a checkpoint signs (:func:`gateway.evidence.sealed.sign_fields`).

    Usage: ``sign_fields(node_key, checkpoint_fields(node=..., seq=..., hash=..., at=...))``.
    """
    return {"node": node, "seq": seq, "hash": hash, "at": format_utc(at)}


def checkpoint_payload(*, node: str, seq: int, hash: str, at: dt.datetime) -> bytes:
    """The bytes a checkpoint's signature covers: ``canonical_json`` of its fields.

    Usage: ``verify_signature(cert, checkpoint_payload(node=..., seq=..., hash=..., at=...),
    base64.b64decode(row.signature))``.
    """
    return canonical_json(checkpoint_fields(node=node, seq=seq, hash=hash, at=at))


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
        return as_utc(value)
    if isinstance(value, str):
        try:
            return as_utc(dt.datetime.fromisoformat(value))
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
            signature = decode_signature(str(cp.signature), "checkpoint")
        except GatewayError:
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
