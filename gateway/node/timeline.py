"""The one writer of timelines: every ``events`` row is built here, after the rules said yes.

:mod:`gateway.node.status` decides (pure rules, no database); this module records. A service
that moves a delivery or records a business status does it through a :class:`TimelineWriter`
bound to its transaction: the writer replays each stored timeline it touches (once per
transaction), applies the event with :func:`gateway.node.status.apply`, and only an accepted
event becomes a row. So every stored timeline replays, by construction; a property test
(``tests/integration/test_timelines.py``) drives random operations on a node and checks it.

How an event is stored (table ``events``, one row per event, in ``id`` order)::

    event                         kind       code                  node                  actor
    ----------------------------  ---------  --------------------  --------------------  -----------
    TransportEvent(state, node)   transport  the state (accepted,  ``node``, else here   the caller
                                             in_transit, ...)
    Requeue()                     transport  requeued              where it is sent      the caller
                                                                   again (here)
    StatusReport(code, reporter)  status     01 .. 16              here                  agency:<
                                                                                         reporter>

A delivery row and the first events of its timeline are made together, by
:meth:`TimelineWriter.open`: the row's state is the timeline's transport state, whatever the
route (``accepted`` or ``in_transit`` on arrival, then ``delivered`` for a recipient hosted
here or ``failed`` for one that cannot be routed).

Local requests (ingest, fetch, acknowledge, an admin's requeue) record ``strict``: a refusal is
raised, the transaction rolls back and the caller gets the rules' error. News from other nodes
and the dispatcher's own bookkeeping record with ``strict=False``: a refused event is not
written, ``timeline.refused`` is logged (info), and :meth:`TimelineWriter.record` returns None
so the caller leaves the delivery row as it is too (a late or racing report must never abort a
whole relay batch).

Usage::

    with TimelineWriter(conn, node.name) as timelines:
        timelines.record(seq, recipient, TransportEvent(state=TransportState.FETCHED),
                         at=now, actor="agency:000.00.00.H41")
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any

import structlog
from sqlalchemy import and_, bindparam, select
from sqlalchemy.engine import Connection

from gateway.envelope.model import StatusCode
from gateway.evidence import audit
from gateway.node.status import (
    REFUSALS,
    Event,
    Requeue,
    StatusReport,
    Timeline,
    TransportEvent,
    TransportState,
    apply,
)
from gateway.storage.tables import documents, events

__all__ = ["REQUEUED", "TimelineWriter", "decode", "deliver_entry"]

log = structlog.get_logger("gateway.timeline")

#: ``events.code`` of a :class:`~gateway.node.status.Requeue` (it is not a transport state)
REQUEUED = "requeued"

_WAITING = frozenset({TransportState.ACCEPTED, TransportState.IN_TRANSIT})

#: built once: SQLAlchemy compiles a statement per distinct construct, not per row
_INSERT = events.insert()
_SENDERS = select(documents.c.seq, documents.c.sender).where(
    documents.c.seq.in_(bindparam("seqs", expanding=True))
)
_EVENTS = (
    select(
        events.c.document_seq,
        events.c.recipient,
        events.c.kind,
        events.c.code,
        events.c.node,
        events.c.actor,
    )
    .where(
        and_(
            events.c.document_seq.in_(bindparam("seqs", expanding=True)),
            events.c.recipient.is_not(None),
        )
    )
    .order_by(events.c.id)
)


def decode(rows: Iterable[tuple[str, str, str, str]], *, legacy: bool = True) -> list[Event]:
    """The events of one timeline from its stored (kind, code, node, actor) rows, oldest first.

    Usage: ``replay(sender, recipient, decode(rows, legacy=False))``

    Databases written before ``requeued`` existed recorded a requeue as the next state
    straight after ``failed`` (``accepted``, or ``delivered`` for a hosted recipient). With
    ``legacy`` such a state is read as a requeue followed by that state, so old timelines
    replay too; without it (tests of what is written now) the rules refuse it on replay.
    """
    out: list[Event] = []
    failed = False
    for kind, code, node, actor in rows:
        if kind == "status":
            out.append(StatusReport(code=StatusCode(code), reporter=actor.split(":", 1)[1]))
            continue
        if code == REQUEUED:
            out.append(Requeue())
            failed = False
            continue
        state = TransportState(code)
        if legacy and failed and state is not TransportState.FAILED:
            out.append(Requeue())
        out.append(TransportEvent(state=state, node=node))
        failed = state is TransportState.FAILED
    return out


class TimelineWriter:
    """The timelines one transaction touches: each event checked by the rules, then written.

    Usage::

        with TimelineWriter(conn, node.name) as timelines:
            timelines.load([seq])
            timelines.record(seq, recipient, Requeue(), at=now, actor="admin:ops")

    Rows are written in one insert at :meth:`flush` (the ``with`` block's end): flush before
    anything else in the transaction reads ``events``. One writer per operation: a writer's
    timelines are not refreshed with what another writer stores meanwhile.
    """

    def __init__(self, conn: Connection, node: str) -> None:
        self.conn = conn
        #: this node's name: the ``node`` of an event that names none
        self.node = node
        self._senders: dict[int, str] = {}
        #: documents whose every stored event is in ``_timelines``
        self._loaded: set[int] = set()
        self._timelines: dict[tuple[int, str], Timeline] = {}
        self._rows: list[dict[str, Any]] = []

    def __enter__(self) -> TimelineWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.flush()

    # -- reading ------------------------------------------------------------------------------

    def load(self, seqs: Iterable[int]) -> None:
        """Read the stored timelines of documents ``seqs`` (two queries, whatever their number).

        Usage: ``timelines.load(seq for seq, _ in rows)``
        """
        wanted = sorted({seq for seq in seqs if seq not in self._loaded})
        if not wanted:
            return
        unknown = [seq for seq in wanted if seq not in self._senders]
        if unknown:
            self._senders.update(
                (seq, sender) for seq, sender in self.conn.execute(_SENDERS, {"seqs": unknown})
            )
        stored: dict[tuple[int, str], list[tuple[str, str, str, str]]] = {}
        for r in self.conn.execute(_EVENTS, {"seqs": wanted}):
            stored.setdefault((r.document_seq, r.recipient), []).append(
                (r.kind, r.code, r.node, r.actor)
            )
        for (seq, recipient), rows in stored.items():
            # a timeline opened by this writer has no stored events yet: keep its pending state
            if (seq, recipient) not in self._timelines:
                self._timelines[(seq, recipient)] = self._replayed(seq, recipient, rows)
        self._loaded.update(wanted)

    def _replayed(
        self, seq: int, recipient: str, rows: list[tuple[str, str, str, str]]
    ) -> Timeline:
        """A stored timeline. One that does not replay (written by a bug before every write
        went through the rules) is rebuilt from the events the rules accept, and logged: a
        node must keep working on it rather than refuse everything that follows."""
        t = Timeline.start(self._senders[seq], recipient)
        for event in decode(rows):
            try:
                t = apply(t, event)
            except REFUSALS as exc:
                log.warning(
                    "timeline.unreplayable", doc_seq=seq, recipient=recipient, code=exc.code
                )
        return t

    def timeline(self, seq: int, recipient: str) -> Timeline:
        """The timeline of (document ``seq``, ``recipient``) with this writer's events applied.

        Usage: ``timelines.timeline(seq, "000.00.00.H41").transport``
        """
        key = (seq, recipient)
        if key not in self._timelines:
            self.load([seq])
            if key not in self._timelines:
                self._timelines[key] = Timeline.start(self._senders[seq], recipient)
        return self._timelines[key]

    # -- writing ------------------------------------------------------------------------------

    def open(
        self,
        seq: int,
        sender: str,
        recipient: str,
        *,
        hop: str,
        arrived: TransportState,
        outcome: TransportState | None = None,
        at: dt.datetime,
        actor: str,
        failure: str | None = None,
        note: str | None = None,
    ) -> dict[str, Any]:
        """The new ``deliveries`` row of (``seq``, ``recipient``) and its first events.

        Usage: ``rows.append(timelines.open(seq, sender, r, hop=hop, arrived=ACCEPTED, ...))``

        ``arrived``: ``accepted`` (stored from an agency) or ``in_transit`` (relayed here);
        ``outcome``: ``delivered`` (``hop`` is this node's inbox), ``failed`` (``failure`` says
        why) or None (waiting for ``hop``: due now). The row's state is the timeline's. The
        caller inserts the row; a (document, recipient) has one delivery row (a unique key),
        so its timeline starts empty. ``note``: the arrival event's description (an attested
        package: "sender signature not verified; intake attested by node N").
        """
        self._senders.setdefault(seq, sender)
        self._timelines[(seq, recipient)] = Timeline.start(sender, recipient)
        self.record(
            seq, recipient, TransportEvent(state=arrived), at=at, actor=actor, description=note
        )
        if outcome is not None:
            self.record(
                seq,
                recipient,
                TransportEvent(state=outcome),
                at=at,
                actor=actor,
                description=failure,
            )
        state = self._timelines[(seq, recipient)].transport
        return {
            "document_seq": seq,
            "recipient": recipient,
            "next_hop": hop,
            "state": state.value,
            "created_at": at,
            "updated_at": at,
            "attempts": 0,
            "next_attempt_at": at if state in _WAITING else None,
            "last_error": failure,
            "leased_by": None,
            "lease_until": None,
        }

    def record(
        self,
        seq: int,
        recipient: str,
        event: Event,
        *,
        at: dt.datetime,
        actor: str,
        node: str | None = None,
        description: str | None = None,
        status_seq: int | None = None,
        strict: bool = True,
        repeats: bool = True,
    ) -> Timeline | None:
        """Apply ``event`` to the timeline and write its row; the timeline after it.

        Usage: ``timelines.record(seq, r, TransportEvent(state=FAILED), at=now, actor=a)``

        ``node``: where it happened, for an event that names none (default: this node).
        ``strict``: raise the rules' refusal (:data:`~gateway.node.status.REFUSALS`); otherwise
        write nothing and return None. ``repeats``: write a repeated or late report too (it
        replays as a no-op, and the status view shows when it came); False writes only news.
        """
        where = node or self.node
        if isinstance(event, TransportEvent):
            # the row stores where the document is; the timeline must hold the same node
            where = event.node or where
            event = replace(event, node=where)
        before = self.timeline(seq, recipient)
        try:
            after = apply(before, event)
        except REFUSALS as exc:
            if strict:
                raise
            # normal for news from other nodes (statuses out of order): info, not a warning
            log.info(
                "timeline.refused",
                doc_seq=seq,
                recipient=recipient,
                attempted=_code(event),
                code=exc.code,
                actor=actor,
            )
            return None
        if after is before and not repeats:
            return after
        self._timelines[(seq, recipient)] = after
        if isinstance(event, StatusReport):
            actor = f"agency:{event.reporter}"  # decode() reads the reporter back from here
        self._rows.append(
            {
                "document_seq": seq,
                "recipient": recipient,
                "at": at,
                "kind": "status" if isinstance(event, StatusReport) else "transport",
                "code": _code(event),
                "node": where,
                "actor": actor,
                "description": description,
                "status_seq": status_seq,
            }
        )
        return after

    def flush(self) -> None:
        """Write the rows recorded since the last flush, in one insert.

        Usage: ``timelines.flush()`` before a query of this transaction reads ``events``
        """
        rows, self._rows = self._rows, []
        if rows:
            self.conn.execute(_INSERT, rows)


def deliver_entry(node: str, gid: str, recipients: Sequence[str]) -> audit.Entry:
    """The audit entry ``deliver``: package ``gid`` is in the inboxes of ``recipients`` here
    (their delivery rows were opened ``delivered``).

    Usage: ``audit.append_many(conn, [deliver_entry(node.name, gid, ["000.00.00.G12"])])``
    """
    return audit.Entry("deliver", f"node:{node}", gid, {"recipients": list(recipients)})


def _code(event: Event) -> str:
    """``events.code`` of an event."""
    if isinstance(event, TransportEvent):
        return event.state.value
    if isinstance(event, Requeue):
        return REQUEUED
    return event.code.value
