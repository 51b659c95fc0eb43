"""The per-recipient document timeline: transport states and business statuses, as pure rules.

For every (document, recipient) a node keeps one :class:`Timeline`: where the document is on its
way (:class:`TransportState`) and what has been said about it in status packages
(:class:`~gateway.envelope.model.StatusCode`). This module only decides; it knows no database and no
HTTP. Storage keeps the events it accepted and can rebuild the timeline with :func:`replay`.

Usage::

    t = Timeline.start(sender="000.00.00.G22", recipient="000.00.00.H41")
    t = apply_transport(t, TransportState.DELIVERED)
    t = apply_status(t, StatusCode.RECEIVED, reporter="000.00.00.H41")
    summary(t)   # {"transport": "delivered", "status": "01", ...}

Transport (reported by the node's own delivery, fetch, acknowledge and admin code)::

    accepted ─▶ in_transit ─▶ delivered ─▶ fetched ─▶ acknowledged     forward only, steps may
        │            │                                                  be skipped
        └────────────┴──▶ failed ──requeue──▶ accepted

    event           current state                   result
    --------------  ------------------------------  ---------------------------------------------
    s on the chain  before s on the chain           moves to s (node recorded when given)
    s on the chain  s itself                        no-op; except in_transit at another node: a
                                                    further hop, the node is updated
    s on the chain  after s on the chain            no-op: a late or repeated report (a DMS may
                                                    download again after acknowledging)
    failed          accepted, in_transit            failed
    failed          failed                          no-op
    failed          delivered, fetched, acknowledg  409: a delivered document cannot fail
    s on the chain  failed                          409: an admin must requeue it first
    requeue         failed                          accepted (node cleared): sent again from here
    requeue         anything else                   409 DeliveryNotFailed: only a failed delivery
                                                    is requeued

A requeue is an event of its own (:class:`Requeue`, stored as the transport code ``requeued``),
never a transport state written after ``failed``: replaying ``accepted`` or ``delivered`` after
``failed`` is refused. Whoever requeues records ``requeued`` first, then what happens next
(``delivered`` for a recipient hosted here, ``in_transit`` when a peer takes it). Every stored
event goes through these rules first (:mod:`gateway.node.timeline` is the only writer).

Business statuses. Checks run in this order: who reports (403 :class:`StatusNotAllowed`), repeat
(no-op), transport (the document must be delivered, fetched or acknowledged), withdrawn (after 15
nothing more), refused (after 02 nothing more), then the code's own rule (409
:class:`StatusTransitionInvalid`, with a message saying why)::

    code                      reported by  accepted when                       repeat (no-op) when
    ------------------------  -----------  ----------------------------------  --------------------
    01 received               recipient    delivered or later                  already recorded
    02 refused                recipient    after 01, before 03; final: closes  already recorded
                                           an open 13, nothing may follow
    03 accepted (registered)  recipient    after 01                            already recorded
    04 assigned               recipient    after 03, before 05 and 06          already recorded
    05 processing             recipient    after 03, before 06                 already recorded
    06 finished               recipient    after 03; then only 13/15/16        already recorded
    13 take-back requested    sender       delivered or later, at any stage    a 13 is open
                                           (also after 06, again after a 16)
    15 take-back accepted     recipient    a 13 is open; the document is then  already withdrawn
                                           withdrawn: nothing may follow
    16 take-back refused      recipient    a 13 is open; closes it             no 13 open and the
                                                                               last answer was 16

The progress codes 01-06 go forward only, in their numeric order; 04 and 05 may be skipped. A
progress code already recorded is a repeat even when it arrives late (status packages travel
at-least-once). Progress may continue while a 13 is open: the recipient may not have seen it yet.

Warning: a business status requires the ``delivered`` transport state. A node that learns of a
delivery only through the recipient's status package must apply ``delivered`` first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, TypeAlias

from gateway.agency import AgencyCode
from gateway.envelope.model import StatusCode
from gateway.errors import DeliveryNotFailed, StatusError, StatusNotAllowed, StatusTransitionInvalid

__all__ = [
    "REFUSALS",
    "Event",
    "Requeue",
    "StatusReport",
    "Timeline",
    "TransportEvent",
    "TransportState",
    "apply",
    "apply_status",
    "apply_transport",
    "replay",
    "requeue",
    "summary",
]


class TransportState(StrEnum):
    """Where a document is on its way to one recipient."""

    ACCEPTED = "accepted"  #: stored at the sender's node
    IN_TRANSIT = "in_transit"  #: relayed, held at an intermediate node
    DELIVERED = "delivered"  #: stored at the recipient's node
    FETCHED = "fetched"  #: the recipient's DMS downloaded it
    ACKNOWLEDGED = "acknowledged"  #: the recipient's DMS confirmed it has it
    FAILED = "failed"  #: dead-lettered or unreachable; an admin may requeue it


#: The forward chain; ``failed`` stands beside it.
_CHAIN: dict[TransportState, int] = {
    TransportState.ACCEPTED: 0,
    TransportState.IN_TRANSIT: 1,
    TransportState.DELIVERED: 2,
    TransportState.FETCHED: 3,
    TransportState.ACKNOWLEDGED: 4,
}
_AT_RECIPIENT = frozenset(
    {TransportState.DELIVERED, TransportState.FETCHED, TransportState.ACKNOWLEDGED}
)

_LABELS: dict[StatusCode, str] = {
    StatusCode.RECEIVED: "received",
    StatusCode.REFUSED: "refused",
    StatusCode.ACCEPTED: "accepted",
    StatusCode.ASSIGNED: "assigned",
    StatusCode.PROCESSING: "processing",
    StatusCode.FINISHED: "finished",
    StatusCode.TAKE_BACK_REQUESTED: "take-back request",
    StatusCode.CHANGE_ACCEPTED: "take-back accepted",
    StatusCode.CHANGE_REFUSED: "take-back refused",
}
_TAKE_BACK = frozenset(
    {StatusCode.TAKE_BACK_REQUESTED, StatusCode.CHANGE_ACCEPTED, StatusCode.CHANGE_REFUSED}
)
#: The code each progress code needs recorded before it.
_REQUIRES: dict[StatusCode, StatusCode] = {
    StatusCode.REFUSED: StatusCode.RECEIVED,
    StatusCode.ACCEPTED: StatusCode.RECEIVED,
    StatusCode.ASSIGNED: StatusCode.ACCEPTED,
    StatusCode.PROCESSING: StatusCode.ACCEPTED,
    StatusCode.FINISHED: StatusCode.ACCEPTED,
}


def _name(code: StatusCode) -> str:
    """``06 (finished)``: how a code is named in messages."""
    return f"{code.value} ({_LABELS[code]})"


@dataclass(frozen=True, kw_only=True, slots=True)
class Timeline:
    """One document's timeline for one recipient. Build with :meth:`start`, never by hand.

    Usage: ``t = Timeline.start(sender="000.00.00.G22", recipient="000.00.00.H41")``
    """

    #: agency code of the sender (normalised)
    sender: str
    #: agency code of the recipient this timeline is about (normalised)
    recipient: str
    #: where the document is on its way
    transport: TransportState = TransportState.ACCEPTED
    #: the node last reported with the transport state (the relay for ``in_transit``)
    node: str | None = None
    #: business status codes accepted so far, oldest first, without repeats
    statuses: tuple[StatusCode, ...] = ()
    #: a 13 (take-back request) awaits its 15 or 16
    open_take_back: bool = False
    #: the recipient accepted the take-back (15): no further status is accepted
    withdrawn: bool = False

    @classmethod
    def start(cls, sender: str, recipient: str) -> Timeline:
        """A new timeline: accepted at the sender's node, no status yet.

        Raises :class:`~gateway.errors.AgencyCodeError` for a malformed agency code.
        """
        return cls(sender=str(AgencyCode.parse(sender)), recipient=str(AgencyCode.parse(recipient)))

    @property
    def last_status(self) -> StatusCode | None:
        """The latest business status, take-back codes included; None before the first."""
        return self.statuses[-1] if self.statuses else None

    @property
    def progress(self) -> StatusCode | None:
        """The furthest of 01-06 recorded (the recipient's handling); None before 01."""
        for code in reversed(self.statuses):
            if code not in _TAKE_BACK:
                return code
        return None

    @property
    def refused(self) -> bool:
        """The recipient refused the document (02): the timeline's statuses are final."""
        return StatusCode.REFUSED in self.statuses


# --- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class TransportEvent:
    """A transport state reported by this node's delivery, fetch or acknowledge code.

    Usage: ``apply(t, TransportEvent(state=TransportState.IN_TRANSIT, node="node-h41"))``
    """

    #: the state reached
    state: TransportState
    #: where the document is (the relay node for ``in_transit``); None when not known
    node: str | None = None


@dataclass(frozen=True, slots=True)
class Requeue:
    """A failed delivery sent again: an admin's requeue here, or one learnt of (the previous
    node sent the package again; a delivery or status proves it went on). Stored as the
    transport code ``requeued``.

    Usage: ``apply(t, Requeue())``
    """


@dataclass(frozen=True, kw_only=True, slots=True)
class StatusReport:
    """A business status from a status package, with the agency that reported it.

    Usage: ``apply(t, StatusReport(code=StatusCode.ACCEPTED, reporter="000.00.00.H41"))``
    """

    #: the status code
    code: StatusCode
    #: agency code of the reporting agency (the status package's From)
    reporter: str


#: Anything that can happen to a timeline.
Event: TypeAlias = TransportEvent | Requeue | StatusReport

#: Every refusal :func:`apply` can raise: ``except REFUSALS`` catches a rule saying no, and
#: nothing else.
REFUSALS = (StatusError, DeliveryNotFailed)


# --- transport -------------------------------------------------------------------------------


def _transport_words(t: Timeline) -> str:
    """Where the document is, in a user's words."""
    if t.transport is TransportState.ACCEPTED:
        return "it is still at the sender's node"
    if t.transport is TransportState.IN_TRANSIT:
        return "it is still in transit" + (f" at {t.node}" if t.node else "")
    if t.transport is TransportState.FAILED:
        return "its delivery failed"
    return f"it is {t.transport.value}"


def _transport_invalid(t: Timeline, attempted: str, message: str) -> StatusTransitionInvalid:
    return StatusTransitionInvalid(
        message,
        detail={"recipient": t.recipient, "current": t.transport.value, "attempted": attempted},
    )


def apply_transport(t: Timeline, state: TransportState, *, node: str | None = None) -> Timeline:
    """``t`` after the transport state ``state``; ``t`` itself for a repeated or late report.

    Usage: ``t = apply_transport(t, TransportState.DELIVERED, node="node-h41")``

    Raises :class:`~gateway.errors.StatusTransitionInvalid` for ``failed`` after delivery and
    for any forward state after ``failed`` (use :func:`requeue`).
    """
    current = t.transport
    if current is TransportState.FAILED:
        if state is TransportState.FAILED:
            return t
        raise _transport_invalid(
            t,
            state.value,
            f"the delivery to {t.recipient} failed; an admin must requeue it before it can be "
            f"{state.value}",
        )
    if state is TransportState.FAILED:
        if current in _AT_RECIPIENT:
            raise _transport_invalid(
                t,
                state.value,
                f"the delivery to {t.recipient} cannot fail: the document already reached its "
                f"node ({current.value})",
            )
        return replace(t, transport=state, node=node if node is not None else t.node)
    if _CHAIN[state] < _CHAIN[current]:
        return t  # a late report: transport never moves back
    if state is current:
        if state is TransportState.IN_TRANSIT and node is not None and node != t.node:
            return replace(t, node=node)  # a further hop
        return t
    return replace(t, transport=state, node=node if node is not None else t.node)


def requeue(t: Timeline) -> Timeline:
    """``t`` back to ``accepted`` after an admin's requeue of its failed delivery.

    Usage: ``t = requeue(t)``

    Raises :class:`~gateway.errors.DeliveryNotFailed` unless the delivery has failed (a
    delivery that has not failed is not a status out of order: it needs no requeue at all).
    """
    if t.transport is not TransportState.FAILED:
        raise DeliveryNotFailed(
            f"only a failed delivery can be requeued; the delivery to {t.recipient} has not "
            f"failed ({_transport_words(t)})",
            detail={"recipient": t.recipient, "current": t.transport.value, "attempted": "requeue"},
        )
    return replace(t, transport=TransportState.ACCEPTED, node=None)


# --- business statuses -----------------------------------------------------------------------


def _status_invalid(
    t: Timeline, code: StatusCode, message: str, *, current: str | None = None
) -> StatusTransitionInvalid:
    last = t.last_status
    return StatusTransitionInvalid(
        message,
        detail={
            "recipient": t.recipient,
            "current": current if current is not None else (last.value if last else None),
            "attempted": code.value,
            "transport": t.transport.value,
        },
    )


def _last_take_back(t: Timeline) -> StatusCode | None:
    for code in reversed(t.statuses):
        if code in _TAKE_BACK:
            return code
    return None


def _is_repeat(t: Timeline, code: StatusCode) -> bool:
    """True when ``code`` says nothing new (a duplicate or late status package)."""
    if code is StatusCode.TAKE_BACK_REQUESTED:
        return t.open_take_back
    if code is StatusCode.CHANGE_ACCEPTED:
        return t.withdrawn
    if code is StatusCode.CHANGE_REFUSED:
        return not t.open_take_back and _last_take_back(t) is StatusCode.CHANGE_REFUSED
    return code in t.statuses


def _check_reporter(t: Timeline, code: StatusCode, reporter: str) -> None:
    if code.from_sender:
        allowed, role, about = t.sender, "sender", f" to {t.recipient}"
    else:
        allowed, role, about = t.recipient, "recipient", ""
    if reporter.strip() != allowed:
        raise StatusNotAllowed(
            f"only the {role} {allowed} may report {_name(code)}{about}; "
            f"{reporter.strip() or 'an unnamed agency'} may not",
            detail={
                "recipient": t.recipient,
                "sender": t.sender,
                "reporter": reporter,
                "attempted": code.value,
            },
        )


def apply_status(t: Timeline, code: StatusCode, *, reporter: str) -> Timeline:
    """``t`` after the business status ``code`` reported by agency ``reporter``.

    Usage: ``t = apply_status(t, StatusCode.ACCEPTED, reporter="000.00.00.H41")``

    A repeat returns ``t`` itself. Raises :class:`~gateway.errors.StatusNotAllowed` when
    ``reporter`` may not report ``code`` (13 is the sender's, every other code the recipient's)
    and :class:`~gateway.errors.StatusTransitionInvalid` when ``code`` makes no sense now.
    """
    _check_reporter(t, code, reporter)
    if _is_repeat(t, code):
        return t
    r = t.recipient
    if t.transport not in _AT_RECIPIENT:
        raise _status_invalid(
            t,
            code,
            f"{_name(code)} cannot be reported for {r} before the document reaches its node "
            f"({_transport_words(t)})",
            current=t.transport.value,
        )
    if t.withdrawn:
        if code is StatusCode.TAKE_BACK_REQUESTED:
            message = (
                f"{_name(code)} is pointless: {r} already accepted taking the document back (15)"
            )
        else:
            message = (
                f"{_name(code)} cannot follow 15 (take-back accepted) for {r}: the document was "
                "taken back"
            )
        raise _status_invalid(t, code, message)
    if t.refused:
        raise _status_invalid(
            t, code, f"{_name(code)} cannot follow 02 (refused) for {r}: a refusal is final"
        )

    if code is StatusCode.TAKE_BACK_REQUESTED:
        return replace(t, statuses=(*t.statuses, code), open_take_back=True)
    if code in _TAKE_BACK:  # 15 or 16: an answer to a 13
        if not t.open_take_back:
            message = f"{_name(code)} needs an open 13 (take-back request) for {r}"
            if _last_take_back(t) is StatusCode.CHANGE_REFUSED:
                message += "; the last request was already answered with 16 (take-back refused)"
            else:
                message += f"; {t.sender} has not asked to take the document back"
            raise _status_invalid(t, code, message)
        return replace(
            t,
            statuses=(*t.statuses, code),
            open_take_back=False,
            withdrawn=code is StatusCode.CHANGE_ACCEPTED,
        )

    # 01-06: forward only, in numeric order
    needed = _REQUIRES.get(code)
    if needed is not None and needed not in t.statuses:
        raise _status_invalid(t, code, f"{_name(code)} cannot come before {_name(needed)} for {r}")
    furthest = t.progress
    if furthest is not None and int(furthest.value) > int(code.value):
        raise _status_invalid(t, code, f"{_name(code)} cannot come after {_name(furthest)} for {r}")
    return replace(
        t,
        statuses=(*t.statuses, code),
        # a refused document needs no taking back: the refusal answers an open request
        open_take_back=t.open_take_back and code is not StatusCode.REFUSED,
    )


# --- events, replay, summary -----------------------------------------------------------------


def apply(t: Timeline, event: Event) -> Timeline:
    """``t`` after ``event``: dispatches to :func:`apply_transport`, :func:`requeue` or
    :func:`apply_status`.

    Usage: ``t = apply(t, StatusReport(code=StatusCode.RECEIVED, reporter="000.00.00.H41"))``
    """
    if isinstance(event, TransportEvent):
        return apply_transport(t, event.state, node=event.node)
    if isinstance(event, Requeue):
        return requeue(t)
    return apply_status(t, event.code, reporter=event.reporter)


def replay(sender: str, recipient: str, events: Iterable[Event]) -> Timeline:
    """The timeline rebuilt from scratch from ``events`` (the ones accepted before, in order).

    Usage: ``t = replay("000.00.00.G22", "000.00.00.H41", stored_events)``

    Raises the first refusal if the events were not all accepted in this order.
    """
    t = Timeline.start(sender, recipient)
    for event in events:
        t = apply(t, event)
    return t


def summary(t: Timeline) -> dict[str, Any]:
    """The timeline as the status API shows it (JSON-ready).

    Usage: ``summary(t)["status"]  # "03"``
    """
    last = t.last_status
    progress = t.progress
    return {
        "recipient": t.recipient,
        "sender": t.sender,
        "transport": t.transport.value,
        "node": t.node,
        "status": last.value if last else None,
        "progress": progress.value if progress else None,
        "statuses": [code.value for code in t.statuses],
        "open_take_back": t.open_take_back,
        "withdrawn": t.withdrawn,
    }
