"""Webhooks: a signed nudge to an agency's DMS when a package lands in its inbox.

A DMS that does not want to poll ``GET /api/v1/inbox`` gives the node an HTTPS URL
(``[webhooks] endpoints``). When a package is delivered to that agency's inbox the node POSTs a
small JSON notification there, signed the Standard Webhooks way
(https://www.standardwebhooks.com/): headers ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature`` = ``v1,<base64 of HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``. The
DMS still fetches and acknowledges through the API; the webhook only says "look now".

**Durable, enqueued exactly once.** :func:`enqueue` writes the notification row in the SAME
transaction that makes the delivery ``delivered`` for a hosted agency (ingest from a local DMS,
a package or notice arriving by relay or stored by this node, an admin requeue that delivers
here): a rolled-back delivery leaves no row, a committed one always has its row, and a
(package, agency) gets at most one (a unique key). The body is built then and stored: every
attempt POSTs the same bytes under the same ``webhook-id`` (the receiver's idempotency key);
only ``webhook-timestamp`` and the signature are made per attempt.

**Sent at least once, retried until a 2xx.** :class:`Sender` (one scheduler job per endpoint,
:mod:`gateway.network.scheduler`) claims due rows with a lease by compare-and-set on their
state (as the outbox's dispatcher claims delivery rows: :mod:`gateway.node.transitions`), POSTs
each through the injected :class:`Transport` (:class:`adapters.webhooks.HttpsWebhookTransport`:
the core knows no HTTP client), marks it ``sent`` on a 2xx, and otherwise schedules the next
attempt (exponential backoff with jitter, tenacity's wait functions; a ``Retry-After`` is
honoured up to ``backoff_max``). An endpoint that cannot be reached, times out or answers 5xx,
408 or 429 holds back the rest of its batch until the failed row is due again. A notification
is given up (``failed``, audited ``webhook_failed``) after ``max_attempts`` failed attempts,
after ``max_age`` seconds, when the DMS answers 410 Gone, or when its endpoint is no longer
configured.

Usage::

    with node.writing() as conn:                 # the transaction that delivers
        ...
        webhooks.enqueue(conn, node, [(seq, "000.00.00.G12")])
    sender = Sender(node, HttpsWebhookTransport(node.settings))
    sender.run("000.00.00.G12")                  # what the scheduler's job calls
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
import tenacity
from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.engine import Connection

from gateway.errors import ConfigError
from gateway.evidence import audit
from gateway.evidence.hops import CONFIRMATIONS
from gateway.evidence.nodekey import format_utc
from gateway.node.container import Node
from gateway.settings import WebhookEndpoint, WebhookSettings, read_webhook_secrets
from gateway.storage.tables import documents, webhooks

__all__ = [
    "BATCH",
    "EVENT_TYPE",
    "FAILED",
    "PENDING",
    "SENT",
    "Answer",
    "Sender",
    "Transport",
    "backoff",
    "enqueue",
    "headers",
    "payload",
    "sign",
    "signature_base",
]

log = structlog.get_logger("gateway.webhooks")

#: the states of a notification row
PENDING, SENT, FAILED = "pending", "sent", "failed"
#: the notification's ``type``
EVENT_TYPE = "inbox.arrived"
#: rows one run claims for one endpoint at a time
BATCH = 10
#: seconds an endpoint whose secret file cannot be read waits before the next try
_SECRET_PAUSE = 60.0


# --- signing ---------------------------------------------------------------------------------


def signature_base(message_id: str, timestamp: int, body: bytes) -> bytes:
    """What is signed: ``{webhook-id}.{webhook-timestamp}.{body}``, the body byte for byte."""
    return f"{message_id}.{timestamp}.".encode("ascii") + body


def sign(keys: Sequence[bytes], message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,<base64 HMAC-SHA256>`` per key, space-separated
    (the first key is the current secret; others are kept for a rotation without downtime)."""
    signed = signature_base(message_id, timestamp, body)
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")
        for key in keys
    )


def headers(keys: Sequence[bytes], message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one attempt (Standard Webhooks), for ``body`` sent as JSON."""
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(keys, message_id, timestamp, body),
    }


# --- enqueueing (in the delivering transaction) ----------------------------------------------

_DOCUMENTS = select(
    documents.c.seq,
    documents.c.id,
    documents.c.kind,
    documents.c.sender,
    documents.c.document_id,
    documents.c.sha256,
    documents.c.status_code,
    documents.c.subject,
).where(documents.c.seq.in_(bindparam("seqs", expanding=True)))
_PRESENT = select(webhooks.c.document_seq, webhooks.c.agency).where(
    webhooks.c.document_seq.in_(bindparam("seqs", expanding=True))
)
_INSERT = webhooks.insert()


def enqueue(
    conn: Connection,
    node: Node,
    arrivals: Iterable[tuple[int, str]],
    *,
    at: dt.datetime | None = None,
) -> int:
    """Write the notifications of packages just delivered to hosted agencies' inboxes, in the
    caller's transaction (the one that delivers them); the number of rows written.

    Usage: ``enqueue(conn, node, [(seq, "000.00.00.G12")])``: (``documents.seq``, agency);
    ``at``: when they were delivered (the notification's ``timestamp``; default: now).

    Only agencies with an endpoint in ``[webhooks]`` get a row; a (package, agency) that has one
    already gets no second. A delivered notice is never in an inbox (the node handles it
    itself): it gets none either.
    """
    configured = {endpoint.agency for endpoint in node.settings.webhooks.endpoints}
    if not configured:
        return 0
    wanted = list(dict.fromkeys((seq, agency) for seq, agency in arrivals if agency in configured))
    if not wanted:
        return 0
    seqs = sorted({seq for seq, _ in wanted})
    docs = {row.seq: row for row in conn.execute(_DOCUMENTS, {"seqs": seqs})}
    present = {(row.document_seq, row.agency) for row in conn.execute(_PRESENT, {"seqs": seqs})}
    now = node.now()
    base = node.settings.webhooks.base_url(node.settings.server)
    rows = []
    for seq, agency in wanted:
        doc = docs[seq]
        if (seq, agency) in present or (doc.kind == "notice" and doc.subject in CONFIRMATIONS):
            continue
        rows.append(
            {
                "message_id": f"msg_{uuid.uuid4().hex}",
                "document_seq": seq,
                "agency": agency,
                "state": PENDING,
                "payload": payload(base, doc, agency, at or now),
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
                "next_attempt_at": now,
                "last_error": None,
                "leased_by": None,
                "lease_until": None,
            }
        )
    if rows:
        conn.execute(_INSERT, rows)
        log.info("webhook.enqueued", notifications=len(rows))
    return len(rows)


def payload(base: str, doc: Any, agency: str, at: dt.datetime) -> str:
    """The notification's JSON body (compact, UTF-8) for package ``doc`` in ``agency``'s inbox.

    ``doc``: its ``documents`` row (id, kind, sender, document_id, sha256, status_code).
    """
    package = f"{base}/api/v1/documents/{doc.id}"
    links = {
        "package": package,
        "ack": f"{package}/ack",
        "evidence": f"{package}/evidence",
        "inbox": f"{base}/api/v1/inbox",
    }
    if doc.kind == "document":
        links["statuses"] = f"{base}/api/v1/statuses"  # where the DMS answers it (01-06, ...)
    body = {
        "type": EVENT_TYPE,
        "timestamp": format_utc(at),
        "data": {
            "id": doc.id,
            "kind": doc.kind,
            "agency": agency,
            "from": doc.sender,
            "document_id": doc.document_id,
            "status_code": doc.status_code,
            "sha256": doc.sha256,
            "links": links,
        },
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


# --- sending ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """What one POST came to: the HTTP status, or None and why there was none."""

    status: int | None
    #: why no status came (``ConnectError: ...``, ``ReadTimeout: ...``)
    error: str | None = None
    #: seconds the receiver asked to wait (``Retry-After``), if it said
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def endpoint_down(self) -> bool:
        """The endpoint as a whole is unwell (unreachable, slow, overloaded): its other
        notifications wait too, rather than each spend an attempt on it."""
        return self.status is None or self.status >= 500 or self.status in (408, 429)

    def describe(self) -> str:
        return f"HTTP {self.status}" if self.status is not None else str(self.error)


class Transport(Protocol):
    """POSTs one notification (:class:`adapters.webhooks.HttpsWebhookTransport`)."""

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer: ...


def backoff(settings: WebhookSettings, attempts: int) -> float:
    """Seconds to wait after ``attempts`` failed attempts: ``backoff_initial * 2^(attempts-1)``,
    at most ``backoff_max``, plus a random 0 to ``backoff_initial``."""
    wait = tenacity.wait_exponential(
        multiplier=settings.backoff_initial, max=settings.backoff_max
    ) + tenacity.wait_random(0, settings.backoff_initial)
    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(1, attempts)
    return float(wait(state))


def _lease_free(now: dt.datetime) -> Any:
    return or_(webhooks.c.lease_until.is_(None), webhooks.c.lease_until < now)


@dataclass
class Sender:
    """Sends due notifications, one endpoint at a time per call; thread-safe across endpoints
    (the scheduler runs one job per endpoint, never two at once for one)."""

    node: Node
    transport: Transport
    worker: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    )
    #: per agency: no claim before this time (its endpoint failed as a whole)
    _paused: dict[str, dt.datetime] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def settings(self) -> WebhookSettings:
        return self.node.settings.webhooks

    def endpoint(self, agency: str) -> WebhookEndpoint | None:
        return next((e for e in self.settings.endpoints if e.agency == agency), None)

    def release_leases(self) -> int:
        """At start on SQLite (one process per database): rows a previous process of this node
        had claimed when it stopped are free again at once, not after their lease."""
        if self.node.engine.dialect.name != "sqlite":
            return 0
        with self.node.writing(chain=False) as conn:
            released = conn.execute(
                update(webhooks)
                .where(webhooks.c.leased_by.is_not(None))
                .values(leased_by=None, lease_until=None)
            ).rowcount
        return int(released or 0)

    def run(self, agency: str) -> int:
        """Send everything due for ``agency``'s endpoint; the number its DMS accepted (2xx)."""
        endpoint = self.endpoint(agency)
        if endpoint is None:
            return 0
        accepted = 0
        while True:
            now = self.node.now()
            with self._lock:
                paused = self._paused.get(agency)
            if paused is not None and now < paused:
                return accepted
            claimed = self._claim(agency, now)
            if not claimed:
                return accepted
            try:
                keys = read_webhook_secrets(endpoint.secret_file)
            except ConfigError as exc:
                self._release(claimed)
                log.error("webhook.secret_unreadable", agency=agency, message=exc.message)
                with self._lock:  # an operator fixes the file: tried again within a minute
                    self._paused[agency] = now + dt.timedelta(seconds=_SECRET_PAUSE)
                return accepted
            index = 0
            try:
                for index, row in enumerate(claimed):
                    body = row.payload.encode("utf-8")
                    stamp = int(self.node.now().timestamp())
                    answer = self.transport.post(
                        endpoint.url, body, headers(keys, row.message_id, stamp, body)
                    )
                    if answer.ok:
                        accepted += self._sent(row)
                        continue
                    retry_at = self._failed(row, answer)
                    if answer.endpoint_down:
                        self._release(claimed[index + 1 :])
                        with self._lock:
                            self._paused[agency] = retry_at or self.node.now()
                        return accepted
            except BaseException:
                # a bug or a stop: what was not recorded goes back now, not after the lease
                self._release(claimed[index:])
                raise
            with self._lock:
                self._paused.pop(agency, None)
            if len(claimed) < BATCH:
                return accepted

    def _claim(self, agency: str, now: dt.datetime) -> list[Any]:
        """Lease up to :data:`BATCH` due rows of ``agency`` (oldest first) by compare-and-set."""
        node = self.node
        due = and_(
            webhooks.c.agency == agency,
            webhooks.c.state == PENDING,
            webhooks.c.next_attempt_at <= now,
            _lease_free(now),
        )
        # an idle tick only reads: it never queues for the write lock
        with node.reader.connect() as conn:
            if conn.execute(select(webhooks.c.id).where(due).limit(1)).first() is None:
                return []
        query = select(webhooks.c.id).where(due).order_by(webhooks.c.id).limit(BATCH)
        if node.engine.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        lease = dt.timedelta(seconds=BATCH * self.settings.timeout + 60)
        with node.writing(chain=False) as conn:  # a claim writes no audit entry
            ids = [row.id for row in conn.execute(query)]
            if not ids:
                return []
            claimed = conn.execute(
                update(webhooks)
                .where(and_(webhooks.c.id.in_(ids), webhooks.c.state == PENDING, _lease_free(now)))
                .values(leased_by=self.worker, lease_until=now + lease)
                .returning(
                    webhooks.c.id,
                    webhooks.c.message_id,
                    webhooks.c.agency,
                    webhooks.c.payload,
                    webhooks.c.attempts,
                    webhooks.c.created_at,
                )
            ).all()
        return sorted(claimed, key=lambda row: row.id)

    def _mine(self, row_id: int) -> Any:
        """The compare-and-set condition: still pending, still leased by this sender."""
        return and_(
            webhooks.c.id == row_id,
            webhooks.c.state == PENDING,
            webhooks.c.leased_by == self.worker,
        )

    def _release(self, rows: Sequence[Any]) -> None:
        """Hand rows back untried: no attempt counted, due as they were."""
        if not rows:
            return
        with self.node.writing(chain=False) as conn:
            conn.execute(
                update(webhooks)
                .where(
                    and_(
                        webhooks.c.id.in_([row.id for row in rows]),
                        webhooks.c.state == PENDING,
                        webhooks.c.leased_by == self.worker,
                    )
                )
                .values(leased_by=None, lease_until=None)
            )

    def _sent(self, row: Any) -> int:
        """The DMS answered 2xx: ``sent``. 1, or 0 when the row was no longer this sender's."""
        now = self.node.now()
        with self.node.writing(chain=False) as conn:
            changed = conn.execute(
                update(webhooks)
                .where(self._mine(row.id))
                .values(
                    state=SENT,
                    attempts=webhooks.c.attempts + 1,
                    next_attempt_at=None,
                    leased_by=None,
                    lease_until=None,
                    last_error=None,
                    updated_at=now,
                )
            ).rowcount
        if not changed:
            log.info("webhook.stale_update", id=row.id, change="sent", worker=self.worker)
            return 0
        log.info(
            "webhook.sent", agency=row.agency, webhook_id=row.message_id, attempts=row.attempts + 1
        )
        return 1

    def _failed(self, row: Any, answer: Answer) -> dt.datetime | None:
        """A failed attempt: the next one scheduled (its time), or the notification given up
        (None; audited)."""
        settings, now = self.settings, self.node.now()
        attempts = row.attempts + 1
        error = answer.describe()[:2000]
        if answer.status == 410:
            reason = "gone"
        elif attempts >= settings.max_attempts:
            reason = "max_attempts"
        elif row.created_at <= now - dt.timedelta(seconds=settings.max_age):
            reason = "max_age"
        else:
            wait = backoff(settings, attempts)
            if answer.retry_after is not None:
                wait = max(wait, min(answer.retry_after, settings.backoff_max))
            retry_at = now + dt.timedelta(seconds=wait)
            with self.node.writing(chain=False) as conn:
                changed = conn.execute(
                    update(webhooks)
                    .where(self._mine(row.id))
                    .values(
                        attempts=attempts,
                        next_attempt_at=retry_at,
                        leased_by=None,
                        lease_until=None,
                        last_error=error,
                        updated_at=now,
                    )
                ).rowcount
            if not changed:
                log.info("webhook.stale_update", id=row.id, change="retry", worker=self.worker)
            log.warning(
                "webhook.retry",
                agency=row.agency,
                webhook_id=row.message_id,
                attempts=attempts,
                error=error,
                wait=round(wait, 3),
            )
            return retry_at
        self._give_up(
            [row], reason=reason, attempts={row.id: attempts}, errors={row.id: error}, worker=True
        )
        return None

    def housekeeping(self) -> int:
        """Give up pending notifications older than ``max_age`` (an endpoint down for days) and
        those of agencies whose endpoint was removed from the settings; count them."""
        now = self.node.now()
        oldest = now - dt.timedelta(seconds=self.settings.max_age)
        configured = sorted(e.agency for e in self.settings.endpoints)
        given_up = 0
        with self.node.reader.connect() as conn:
            rows = conn.execute(
                select(
                    webhooks.c.id,
                    webhooks.c.message_id,
                    webhooks.c.agency,
                    webhooks.c.payload,
                    webhooks.c.attempts,
                    webhooks.c.created_at,
                    webhooks.c.last_error,
                )
                .where(
                    and_(
                        webhooks.c.state == PENDING,
                        _lease_free(now),
                        or_(webhooks.c.created_at < oldest, webhooks.c.agency.not_in(configured)),
                    )
                )
                .order_by(webhooks.c.id)
                .limit(1000)
            ).all()
        for reason, chosen in (
            ("endpoint_removed", [r for r in rows if r.agency not in configured]),
            ("max_age", [r for r in rows if r.agency in configured]),
        ):
            given_up += self._give_up(
                chosen,
                reason=reason,
                attempts={r.id: r.attempts for r in chosen},
                errors={r.id: r.last_error for r in chosen},
                worker=False,
                now=now,
            )
        return given_up

    def _give_up(
        self,
        rows: Sequence[Any],
        *,
        reason: str,
        attempts: Mapping[int, int],
        errors: Mapping[int, str | None],
        worker: bool,
        now: dt.datetime | None = None,
    ) -> int:
        """``failed``, each audited ``webhook_failed``, by compare-and-set: only rows still
        pending and leased by this sender (``worker``) or by nobody (housekeeping)."""
        if not rows:
            return 0
        now = now or self.node.now()
        actor = f"node:{self.node.name}"
        entries = []
        with self.node.writing() as conn:  # audited: the chain's lock first
            for row in rows:
                held = webhooks.c.leased_by == self.worker if worker else _lease_free(now)
                changed = conn.execute(
                    update(webhooks)
                    .where(and_(webhooks.c.id == row.id, webhooks.c.state == PENDING, held))
                    .values(
                        state=FAILED,
                        attempts=attempts[row.id],
                        next_attempt_at=None,
                        leased_by=None,
                        lease_until=None,
                        last_error=errors[row.id],
                        updated_at=now,
                    )
                ).rowcount
                if not changed:
                    log.info("webhook.stale_update", id=row.id, change=reason, worker=self.worker)
                    continue
                entries.append(
                    audit.Entry(
                        "webhook_failed",
                        actor,
                        json.loads(row.payload)["data"]["id"],
                        {
                            "webhook_id": row.message_id,
                            "agency": row.agency,
                            "attempts": attempts[row.id],
                            "reason": reason,
                            "last_error": errors[row.id],
                        },
                    )
                )
            audit.append_many(conn, entries)
        for entry in entries:
            log.warning("webhook.failed", **dict(entry.data))
        return len(entries)
