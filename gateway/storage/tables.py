"""The node's database schema (SQLAlchemy Core). Changed only through Alembic migrations.

::

    documents ──< deliveries          one row per (document, recipient): transport state and
        │                             the durable delivery schedule (outbox)
        ├───< events                  the timeline: transport events and business statuses
        │
        ├───< hops                    the signed hop records (in: how it came; out: where this
        │                             node sent it) and the next node's signed receipts
        │
        ├───< webhooks                one row per (package, hosted agency with a webhook): the
        │                             signed notification to its DMS, and its retry schedule
    peers                             the directory: parent and children, as configured
    breakers                          the peers held down by the circuit breaker, since when
    systems                           the connected DMS of the hub API: systemid, agencies,
                                      signature policy, secrets (encrypted; gateway.node.systems)
    audit_log                         hash-chained, append-only: every event of the node
    audit_checkpoints                 the chain head, signed by the node key at intervals

Usage::

    from gateway.storage.tables import documents
    conn.execute(documents.insert().values(...))

Times are stored as timezone-aware UTC. Envelope bytes are stored exactly as received.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

__all__ = [
    "UTCDateTime",
    "audit_checkpoints",
    "audit_log",
    "breakers",
    "deliveries",
    "documents",
    "events",
    "hops",
    "metadata",
    "peers",
    "systems",
    "webhooks",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every engine (SQLite stores it naive, in UTC).

    A naive datetime is refused on the way in: a time without a zone is a bug here.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, dt.datetime) or value.tzinfo is None:
            raise ValueError(f"a timezone-aware datetime is required, not {value!r}")
        utc = value.astimezone(dt.UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


#: BIGINT on PostgreSQL, INTEGER (the rowid alias, autoincrementing) on SQLite
_Id = BigInteger().with_variant(Integer(), "sqlite")

documents = Table(
    "documents",
    metadata,
    Column("seq", _Id, primary_key=True, autoincrement=True),
    #: the gateway's own id for the package (UUID hex), given to agencies and peers
    Column("id", String(32), nullable=False, unique=True),
    #: "document" or "status"
    Column("kind", String(8), nullable=False),
    #: From/OrganId
    Column("sender", String(32), nullable=False),
    #: the edXML DocumentId, when the package has one
    Column("document_id", String(255)),
    #: "<sender>|id:<DocumentId>" or "<sender>|sha256:<hex>": the idempotency key
    Column("dedup_key", String(320), nullable=False, unique=True),
    #: SHA-256 (hex) of the stored bytes
    Column("sha256", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    #: the envelope, byte for byte as received
    Column("envelope", LargeBinary, nullable=False),
    Column("subject", Text),
    #: for a status package: its code (01-16) and the document it is about
    Column("status_code", String(2)),
    Column("about_seq", _Id, ForeignKey("documents.seq")),
    #: the signer's certificate, described (subject, serial, agency)
    Column("signer", Text, nullable=False),
    Column("signing_time", UTCDateTime()),
    Column("received_at", UTCDateTime(), nullable=False),
    #: who handed it to this node: "agency:<code>" or "node:<name>"
    Column("received_from", String(128), nullable=False),
    #: the receipt this node signed when it stored the package (JSON)
    Column("receipt", Text, nullable=False),
    #: an intake attestation (JSON, :mod:`gateway.evidence.attestations`): the sender's
    #: signature was not verified, a node attested the intake (None: verified)
    Column("attestation", Text),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("document_seq", _Id, ForeignKey("documents.seq"), nullable=False),
    #: the recipient agency code
    Column("recipient", String(32), nullable=False),
    #: "local" (a DMS of this node fetches it) or the name of the next node
    Column("next_hop", String(128), nullable=False),
    #: accepted, in_transit, delivered, fetched, acknowledged, failed
    Column("state", String(16), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    #: the durable delivery schedule (outbox rows: next_hop != "local")
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime()),
    Column("last_error", Text),
    #: a dispatcher's claim: who holds the row and until when
    Column("leased_by", String(128)),
    Column("lease_until", UTCDateTime()),
    #: an attempt may have reached the next node (its answer was lost): never dead-lettered
    #: while so, since the package may be delivered (docs/network.md)
    Column("outcome_unknown", Boolean, nullable=False, default=False, server_default=false()),
    #: a recipient's DMS fetched or acknowledged a package that came from another node, and
    #: its sender's node has not been told yet (a ``progress`` notice, docs/network.md)
    Column("progress_due", Boolean, nullable=False, default=False, server_default=false()),
    UniqueConstraint("document_seq", "recipient"),
    Index(None, "recipient", "state", "document_seq"),
    Index(None, "next_hop", "state", "next_attempt_at"),
    #: the outbox: pending rows per next hop, in order
    Index(
        "ix_deliveries_pending",
        "next_hop",
        "document_seq",
        "id",
        sqlite_where=text("next_attempt_at IS NOT NULL"),
        postgresql_where=text("next_attempt_at IS NOT NULL"),
    ),
    #: progress to report to senders' nodes (a handful at a time)
    Index(
        "ix_deliveries_progress_due",
        "document_seq",
        sqlite_where=text("progress_due"),
        postgresql_where=text("progress_due"),
    ),
)

hops = Table(
    "hops",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("document_seq", _Id, ForeignKey("documents.seq"), nullable=False),
    #: "in" (a hop that brought the package here) or "out" (a hop this node made)
    Column("direction", String(3), nullable=False),
    #: 1 for the first hop from the sender's node, 2 for the next, ...
    Column("position", Integer, nullable=False),
    Column("from_node", String(128), nullable=False),
    Column("to_node", String(128), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    #: SHA-256 hex of the signed hop record's canonical JSON (the next hop's ``prev``)
    Column("digest", String(64), nullable=False),
    #: the signed hop record (JSON)
    Column("record", Text, nullable=False),
    #: the receiving node's signed receipt for this hop (JSON)
    Column("receipt", Text, nullable=False),
    UniqueConstraint("document_seq", "digest"),
    Index(None, "document_seq", "position"),
)

peers = Table(
    "peers",
    metadata,
    Column("name", String(128), primary_key=True),
    #: "parent" or "child"
    Column("role", String(8), nullable=False),
    Column("url", Text, nullable=False),
    #: JSON list of the agency codes a child's subtree serves
    Column("serves", Text, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

#: a peer's circuit breaker as the node's dispatchers share it (and find it after a restart):
#: open while ``opened_at`` is set; opened and closed by compare-and-set, so ``peer_down`` and
#: ``peer_up`` are audited once per outage whatever the number of processes
breakers = Table(
    "breakers",
    metadata,
    Column("peer", String(128), primary_key=True),
    Column("opened_at", UTCDateTime(), nullable=True),
    #: consecutive failures when it opened
    Column("failures", Integer, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

#: the connected systems of the hub-compatible API (:mod:`gateway.node.systems`): each DMS on the
#: national SDK authenticates with its systemid and an HMAC under its shared secret
systems = Table(
    "systems",
    metadata,
    #: the DMS's ``XroadVnpt-systemid``: 1-128 of [A-Za-z0-9._-]
    Column("systemid", String(128), primary_key=True),
    #: JSON list of the agency codes (hosted by this node) it may send as and read for
    Column("agencies", Text, nullable=False),
    #: "require" or "attest": what its packages' signatures must be
    Column("policy", String(16), nullable=False),
    #: the current secret, AES-256-GCM under [hub] secrets_key_file: nonce (12) || ciphertext
    #: || tag, the systemid as associated data; never in plain text
    Column("secret", LargeBinary, nullable=False),
    #: the secret before the last rotation, the same way, valid until ``previous_until``
    Column("previous_secret", LargeBinary, nullable=True),
    Column("previous_until", UTCDateTime(), nullable=True),
    Column("disabled", Boolean, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

#: webhook notifications (:mod:`gateway.node.webhooks`): written in the transaction that delivers
#: a package to a hosted agency's inbox, when ``[webhooks] endpoints`` has a URL for that agency;
#: POSTed to it, retried with backoff until a 2xx, given up after ``max_attempts``/``max_age``
webhooks = Table(
    "webhooks",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    #: the ``webhook-id`` header: ``msg_<32 hex>``, the same on every attempt (idempotency key)
    Column("message_id", String(40), nullable=False, unique=True),
    Column("document_seq", _Id, ForeignKey("documents.seq"), nullable=False),
    #: the hosted agency whose inbox the package landed in
    Column("agency", String(32), nullable=False),
    #: pending, sent or failed
    Column("state", String(16), nullable=False),
    #: the exact JSON body POSTed (and signed) on every attempt
    Column("payload", Text, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    #: when the next attempt is due (None once sent or failed)
    Column("next_attempt_at", UTCDateTime()),
    #: the last failure: ``HTTP 500``, ``ConnectError: ...``, ...
    Column("last_error", Text),
    #: a sender's claim: who holds the row and until when
    Column("leased_by", String(128)),
    Column("lease_until", UTCDateTime()),
    UniqueConstraint("document_seq", "agency"),
    Index(None, "agency", "state", "next_attempt_at"),
)

events = Table(
    "events",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("document_seq", _Id, ForeignKey("documents.seq"), nullable=False),
    #: the recipient the event concerns (None: the document as a whole)
    Column("recipient", String(32)),
    Column("at", UTCDateTime(), nullable=False),
    #: "transport" or "status"
    Column("kind", String(16), nullable=False),
    #: transport state (accepted, delivered, fetched, ...) or business status code (01-16)
    Column("code", String(16), nullable=False),
    #: the node that recorded it
    Column("node", String(128), nullable=False),
    #: who caused it: "agency:<code>", "node:<name>", "admin:<who>"
    Column("actor", String(128), nullable=False),
    Column("description", Text),
    #: the status package that carried a business status
    Column("status_seq", _Id, ForeignKey("documents.seq")),
    Index(None, "document_seq", "id"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", _Id, primary_key=True, autoincrement=False),
    Column("at", UTCDateTime(), nullable=False),
    #: ingest, refuse, deliver, fetch, ack, status, admin, config, auth_failure, ...
    Column("event", String(64), nullable=False),
    Column("actor", String(128), nullable=False),
    #: what the event is about (a gateway document id, a setting, ...)
    Column("subject", String(255)),
    #: canonical JSON of the event's facts (never an envelope body, a key or a secret)
    Column("data", Text, nullable=False),
    #: SHA-256 hex of the previous entry ("0" * 64 for the first)
    Column("prev_hash", String(64), nullable=False),
    #: SHA-256 hex over prev_hash and this entry's canonical form
    Column("hash", String(64), nullable=False),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    #: the last audit_log.seq covered
    Column("seq", _Id, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("node", String(128), nullable=False),
    #: base64 signature by the node key over the checkpoint's canonical form
    Column("signature", Text, nullable=False),
    #: the node certificate (PEM) that verifies it
    Column("certificate", Text, nullable=False),
)
