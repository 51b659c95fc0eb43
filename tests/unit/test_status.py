"""The per-recipient timeline: transport states and business statuses (gateway.node.status)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gateway.envelope.model import StatusCode
from gateway.errors import (
    AgencyCodeError,
    DeliveryNotFailed,
    StatusNotAllowed,
    StatusTransitionInvalid,
)
from gateway.node.status import (
    REFUSALS,
    Event,
    Requeue,
    StatusReport,
    Timeline,
    TransportEvent,
    TransportState,
    apply,
    apply_status,
    apply_transport,
    replay,
    requeue,
    summary,
)

G22 = "000.00.00.G22"  # Văn phòng Chính phủ: the sender
H41 = "000.00.00.H41"  # UBND tỉnh Nghệ An: the recipient
H49 = "000.00.00.H49"  # UBND tỉnh Quảng Ninh: neither

S = StatusCode
T = TransportState
ALL_CODES = list(StatusCode)
PROGRESS = [S.RECEIVED, S.REFUSED, S.ACCEPTED, S.ASSIGNED, S.PROCESSING, S.FINISHED]
NOT_AT_RECIPIENT = [T.ACCEPTED, T.IN_TRANSIT, T.FAILED]


def reporter_for(code: StatusCode) -> str:
    """The agency entitled to report ``code``: 13 is the sender's, the rest the recipient's."""
    return G22 if code is S.TAKE_BACK_REQUESTED else H41


def delivered() -> Timeline:
    return apply_transport(Timeline.start(G22, H41), T.DELIVERED)


def run(*codes: str) -> Timeline:
    """A delivered timeline after ``codes``, each reported by the agency entitled to it."""
    t = delivered()
    for value in codes:
        code = StatusCode(value)
        t = apply_status(t, code, reporter=reporter_for(code))
    return t


def report(t: Timeline, value: str) -> Timeline:
    code = StatusCode(value)
    return apply_status(t, code, reporter=reporter_for(code))


# --- business statuses: accepted sequences ---------------------------------------------------

ACCEPTED_SEQUENCES = [
    ("01",),
    ("01", "02"),
    ("01", "03"),
    ("01", "03", "04", "05", "06"),
    ("01", "03", "05"),  # 04 may be skipped
    ("01", "03", "06"),  # and 05
    ("01", "03", "04", "06"),
    ("13",),  # the sender may ask as soon as the document is delivered
    ("13", "15"),
    ("13", "16"),
    ("13", "16", "13", "15"),  # a new request after a refused one
    ("01", "03", "06", "13", "16"),  # taking back a finished document: the recipient decides
    ("01", "03", "06", "13", "15"),
    ("01", "13", "03", "04", "16", "05", "06"),  # handling goes on while a request is open
    ("01", "13", "02"),  # the refusal closes the open request
]


@pytest.mark.parametrize("codes", ACCEPTED_SEQUENCES, ids="-".join)
def test_accepted_sequences_are_recorded_in_order(codes: tuple[str, ...]) -> None:
    t = run(*codes)
    assert [code.value for code in t.statuses] == list(codes)
    assert t.last_status == StatusCode(codes[-1])


@pytest.mark.parametrize("codes", ACCEPTED_SEQUENCES, ids="-".join)
def test_the_same_status_twice_is_a_no_op(codes: tuple[str, ...]) -> None:
    t = run(*codes)
    assert report(t, codes[-1]) is t


@pytest.mark.parametrize(
    ("codes", "late"),
    [
        (("01", "03", "04", "05"), "01"),
        (("01", "03", "04", "05"), "03"),
        (("01", "03", "04", "05", "06"), "04"),
        (("01", "02"), "01"),  # even after the final 02
        (("01", "03", "13", "15"), "03"),  # even after withdrawal
    ],
)
def test_a_late_copy_of_a_recorded_status_is_a_no_op(codes: tuple[str, ...], late: str) -> None:
    t = run(*codes)
    assert report(t, late) is t


# --- business statuses: refused transitions --------------------------------------------------

REFUSED_TRANSITIONS = [
    # the first example: 06 before 03 for the same recipient
    (("01",), "06", "06 (finished) cannot come before 03 (accepted) for 000.00.00.H41"),
    ((), "06", "06 (finished) cannot come before 03 (accepted) for 000.00.00.H41"),
    ((), "03", "03 (accepted) cannot come before 01 (received) for 000.00.00.H41"),
    ((), "02", "02 (refused) cannot come before 01 (received) for 000.00.00.H41"),
    (("01",), "04", "04 (assigned) cannot come before 03 (accepted)"),
    (("01",), "05", "05 (processing) cannot come before 03 (accepted)"),
    (("01", "03"), "02", "02 (refused) cannot come after 03 (accepted)"),
    (("01", "03", "05"), "04", "04 (assigned) cannot come after 05 (processing)"),
    (("01", "03", "06"), "04", "04 (assigned) cannot come after 06 (finished)"),
    (("01", "03", "06"), "05", "05 (processing) cannot come after 06 (finished)"),
    ((), "15", "15 (take-back accepted) needs an open 13 (take-back request)"),
    (("01",), "16", "000.00.00.G22 has not asked to take the document back"),
    (("13", "16"), "15", "the last request was already answered with 16"),
    (("13", "15"), "13", "13 (take-back request) is pointless: 000.00.00.H41 already accepted"),
    (("13", "15"), "01", "01 (received) cannot follow 15 (take-back accepted)"),
    (("01", "13", "15"), "03", "the document was taken back"),
    (("13", "15"), "16", "cannot follow 15 (take-back accepted)"),
]


@pytest.mark.parametrize(("codes", "attempted", "why"), REFUSED_TRANSITIONS)
def test_a_status_out_of_order_is_refused_saying_why(
    codes: tuple[str, ...], attempted: str, why: str
) -> None:
    t = run(*codes)
    with pytest.raises(StatusTransitionInvalid) as caught:
        report(t, attempted)
    assert why in caught.value.message
    assert caught.value.http_status == 409
    assert caught.value.detail["attempted"] == attempted
    assert caught.value.detail["recipient"] == H41


@pytest.mark.parametrize("attempted", ["03", "04", "05", "06", "13", "15", "16"])
def test_nothing_follows_a_refusal(attempted: str) -> None:
    # the second example: anything after 02 is refused
    t = run("01", "02")
    with pytest.raises(StatusTransitionInvalid) as caught:
        report(t, attempted)
    assert "cannot follow 02 (refused) for 000.00.00.H41: a refusal is final" in str(caught.value)
    assert caught.value.detail["current"] == "02"


def test_refusal_detail_names_recipient_current_and_attempted() -> None:
    with pytest.raises(StatusTransitionInvalid) as caught:
        report(run("01"), "06")
    assert caught.value.to_dict() == {
        "code": "STATUS_TRANSITION_INVALID",
        "message": "06 (finished) cannot come before 03 (accepted) for 000.00.00.H41",
        "detail": {
            "recipient": H41,
            "current": "01",
            "attempted": "06",
            "transport": "delivered",
        },
    }


@pytest.mark.parametrize("state", NOT_AT_RECIPIENT)
@pytest.mark.parametrize("code", ALL_CODES)
def test_a_status_needs_the_document_at_the_recipients_node(
    state: TransportState, code: StatusCode
) -> None:
    t = Timeline.start(G22, H41)
    if state is T.IN_TRANSIT:
        t = apply_transport(t, state, node="node-h40")
    elif state is T.FAILED:
        t = apply_transport(t, state)
    with pytest.raises(StatusTransitionInvalid) as caught:
        apply_status(t, code, reporter=reporter_for(code))
    assert "before the document reaches its node" in caught.value.message
    assert caught.value.detail["current"] == state.value
    assert t.statuses == ()


def test_the_refusal_names_the_relay_holding_the_document() -> None:
    t = apply_transport(Timeline.start(G22, H41), T.IN_TRANSIT, node="node-h40")
    with pytest.raises(StatusTransitionInvalid, match="still in transit at node-h40"):
        apply_status(t, S.RECEIVED, reporter=H41)


@pytest.mark.parametrize("state", [T.DELIVERED, T.FETCHED, T.ACKNOWLEDGED])
def test_a_status_is_accepted_once_delivered_fetched_or_acknowledged(
    state: TransportState,
) -> None:
    t = apply_transport(Timeline.start(G22, H41), state)
    assert apply_status(t, S.RECEIVED, reporter=H41).statuses == (S.RECEIVED,)


def test_take_back_state_follows_13_15_16() -> None:
    asked = run("01", "13")
    assert asked.open_take_back and not asked.withdrawn
    refused = report(asked, "16")
    assert not refused.open_take_back and not refused.withdrawn
    withdrawn = report(report(refused, "13"), "15")
    assert withdrawn.withdrawn and not withdrawn.open_take_back
    assert not run("01", "13", "02").open_take_back


# --- who may report --------------------------------------------------------------------------


@pytest.mark.parametrize("code", [c for c in ALL_CODES if c is not S.TAKE_BACK_REQUESTED])
@pytest.mark.parametrize("reporter", [G22, H49])
def test_only_the_recipient_reports_its_statuses(code: StatusCode, reporter: str) -> None:
    with pytest.raises(StatusNotAllowed) as caught:
        apply_status(delivered(), code, reporter=reporter)
    assert caught.value.http_status == 403
    assert f"only the recipient {H41} may report {code.value} (" in caught.value.message
    assert caught.value.detail["reporter"] == reporter


@pytest.mark.parametrize("reporter", [H41, H49])
def test_only_the_sender_asks_to_take_back(reporter: str) -> None:
    with pytest.raises(StatusNotAllowed, match=f"only the sender {G22} may report 13"):
        apply_status(delivered(), S.TAKE_BACK_REQUESTED, reporter=reporter)


def test_the_reporter_is_checked_before_the_order() -> None:
    # a stranger learns nothing about the timeline: 403, not 409
    with pytest.raises(StatusNotAllowed):
        apply_status(Timeline.start(G22, H41), S.FINISHED, reporter=H49)
    with pytest.raises(StatusNotAllowed):
        apply_status(run("01", "02"), S.RECEIVED, reporter=G22)


def test_reporter_surrounding_whitespace_is_tolerated() -> None:
    assert apply_status(delivered(), S.RECEIVED, reporter=f" {H41}\n").statuses == (S.RECEIVED,)


def test_an_agency_sending_to_itself_reports_both_sides() -> None:
    t = apply_transport(Timeline.start(H41, H41), T.DELIVERED)
    t = apply_status(t, S.TAKE_BACK_REQUESTED, reporter=H41)
    t = apply_status(t, S.CHANGE_ACCEPTED, reporter=H41)
    assert t.withdrawn


# --- transport -------------------------------------------------------------------------------


def test_start_checks_agency_codes_exactly() -> None:
    t = Timeline.start(G22, H41)
    assert (t.sender, t.recipient, t.transport, t.statuses) == (G22, H41, T.ACCEPTED, ())
    with pytest.raises(AgencyCodeError):
        Timeline.start("01.02.G22", H41)
    with pytest.raises(AgencyCodeError):
        Timeline.start(f" {G22} ", H41)  # surrounding whitespace is refused, not trimmed


def test_transport_moves_forward_and_may_skip_steps() -> None:
    t = Timeline.start(G22, H41)
    t = apply_transport(t, T.IN_TRANSIT, node="node-h40")
    assert (t.transport, t.node) == (T.IN_TRANSIT, "node-h40")
    t = apply_transport(t, T.DELIVERED, node="node-h41")
    t = apply_transport(t, T.ACKNOWLEDGED)  # fetched skipped
    assert (t.transport, t.node) == (T.ACKNOWLEDGED, "node-h41")


@pytest.mark.parametrize("state", [T.ACCEPTED, T.IN_TRANSIT, T.DELIVERED, T.FETCHED])
def test_a_repeated_or_late_transport_report_changes_nothing(state: TransportState) -> None:
    t = apply_transport(apply_transport(Timeline.start(G22, H41), state), T.FETCHED)
    assert apply_transport(t, state) is t
    assert apply_transport(t, T.FETCHED) is t  # fetched twice is fine


def test_a_download_after_the_acknowledgement_does_not_move_back() -> None:
    t = apply_transport(delivered(), T.ACKNOWLEDGED)
    assert apply_transport(t, T.FETCHED) is t


def test_each_relay_hop_updates_the_node() -> None:
    t = apply_transport(Timeline.start(G22, H41), T.IN_TRANSIT, node="node-g")
    t = apply_transport(t, T.IN_TRANSIT, node="node-h")
    assert (t.transport, t.node) == (T.IN_TRANSIT, "node-h")
    assert apply_transport(t, T.IN_TRANSIT, node="node-h") is t
    assert apply_transport(t, T.IN_TRANSIT) is t


@pytest.mark.parametrize("before", [T.ACCEPTED, T.IN_TRANSIT])
def test_failed_follows_accepted_or_in_transit(before: TransportState) -> None:
    t = apply_transport(Timeline.start(G22, H41), before, node="node-h40")
    failed = apply_transport(t, T.FAILED)
    assert failed.transport is T.FAILED
    assert apply_transport(failed, T.FAILED) is failed


@pytest.mark.parametrize("before", [T.DELIVERED, T.FETCHED, T.ACKNOWLEDGED])
def test_a_delivered_document_cannot_fail(before: TransportState) -> None:
    t = apply_transport(Timeline.start(G22, H41), before)
    with pytest.raises(StatusTransitionInvalid, match="already reached its node") as caught:
        apply_transport(t, T.FAILED)
    assert caught.value.detail == {"recipient": H41, "current": before.value, "attempted": "failed"}


@pytest.mark.parametrize("state", [T.ACCEPTED, T.IN_TRANSIT, T.DELIVERED, T.ACKNOWLEDGED])
def test_after_failed_only_a_requeue_moves_on(state: TransportState) -> None:
    failed = apply_transport(Timeline.start(G22, H41), T.FAILED)
    with pytest.raises(StatusTransitionInvalid, match="an admin must requeue it"):
        apply_transport(failed, state)
    again = requeue(apply_transport(failed, T.FAILED))
    assert (again.transport, again.node) == (T.ACCEPTED, None)
    assert apply_transport(again, state).transport is state


@pytest.mark.parametrize("state", [T.ACCEPTED, T.IN_TRANSIT, T.DELIVERED, T.ACKNOWLEDGED])
def test_only_a_failed_delivery_is_requeued(state: TransportState) -> None:
    t = apply_transport(Timeline.start(G22, H41), state)
    # a delivery that has not failed is not a status out of order: its own code, still a 409
    with pytest.raises(DeliveryNotFailed, match="only a failed delivery can be requeued") as caught:
        requeue(t)
    assert (caught.value.code, caught.value.http_status) == ("DELIVERY_NOT_FAILED", 409)
    assert caught.value.detail == {"recipient": H41, "current": state.value, "attempted": "requeue"}


# --- events, replay, summary -----------------------------------------------------------------


def test_replay_rebuilds_the_timeline_from_its_events() -> None:
    events: list[Event] = [
        TransportEvent(state=T.IN_TRANSIT, node="node-h40"),
        TransportEvent(state=T.FAILED),
        Requeue(),
        TransportEvent(state=T.DELIVERED, node="node-h41"),
        StatusReport(code=S.RECEIVED, reporter=H41),
        StatusReport(code=S.TAKE_BACK_REQUESTED, reporter=G22),
        StatusReport(code=S.CHANGE_REFUSED, reporter=H41),
    ]
    t = replay(G22, H41, events)
    assert t == Timeline(
        sender=G22,
        recipient=H41,
        transport=T.DELIVERED,
        node="node-h41",
        statuses=(S.RECEIVED, S.TAKE_BACK_REQUESTED, S.CHANGE_REFUSED),
    )
    with pytest.raises(StatusTransitionInvalid):
        replay(G22, H41, events[::-1])


def test_summary_for_the_status_api() -> None:
    t = apply_transport(run("01", "03", "05", "13"), T.FETCHED)
    assert summary(t) == {
        "recipient": H41,
        "sender": G22,
        "transport": "fetched",
        "node": None,
        "status": "13",
        "progress": "05",
        "statuses": ["01", "03", "05", "13"],
        "open_take_back": True,
        "withdrawn": False,
    }
    fresh = summary(Timeline.start(G22, H41))
    assert (fresh["transport"], fresh["status"], fresh["progress"]) == ("accepted", None, None)


# --- properties ------------------------------------------------------------------------------

NODES = st.sampled_from([None, "node-g22", "node-h40", "node-h41"])
#: forward states more often than failed, so that sequences reach the recipient
STATES = st.sampled_from(
    [T.ACCEPTED, T.IN_TRANSIT, T.DELIVERED, T.DELIVERED, T.FETCHED, T.ACKNOWLEDGED, T.FAILED]
)


#: 01 and 03-06 twice: 02 and 15 end a timeline, so they should not come up too often
CODES = st.sampled_from([*ALL_CODES, S.RECEIVED, S.ACCEPTED, S.ASSIGNED, S.PROCESSING, S.FINISHED])


@st.composite
def status_reports(draw: st.DrawFn) -> StatusReport:
    """Mostly from the entitled agency, so that sequences get somewhere."""
    code = draw(CODES)
    right = reporter_for(code)
    wrong = G22 if right == H41 else H41
    return StatusReport(
        code=code, reporter=draw(st.sampled_from([right, right, right, wrong, H49]))
    )


_EVENT_KINDS: dict[str, st.SearchStrategy[Event]] = {
    "transport": st.builds(TransportEvent, state=STATES, node=NODES),
    "requeue": st.just(Requeue()),
    "status": status_reports(),
}
#: statuses are where the rules are: draw them more often
_WEIGHTS = ["transport", "transport", "requeue", "status", "status", "status", "status", "status"]
EVENTS: st.SearchStrategy[Event] = st.sampled_from(_WEIGHTS).flatmap(_EVENT_KINDS.__getitem__)
#: the same, every status from the agency entitled to it
ENTITLED_EVENTS: st.SearchStrategy[Event] = st.sampled_from(_WEIGHTS).flatmap(
    {
        **_EVENT_KINDS,
        "status": CODES.map(lambda c: StatusReport(code=c, reporter=reporter_for(c))),
    }.__getitem__
)


@settings(max_examples=120, deadline=None)
@given(st.booleans(), st.lists(EVENTS, min_size=5, max_size=50))
def test_random_events_are_applied_or_refused_with_a_rules_error(
    start_delivered: bool, events: list[Event]
) -> None:
    t = Timeline.start(G22, H41)
    if start_delivered:
        t = apply_transport(t, T.DELIVERED)
    for event in events:
        try:
            t = apply(t, event)
        except REFUSALS as exc:
            assert isinstance(exc, StatusNotAllowed | StatusTransitionInvalid | DeliveryNotFailed)
            assert isinstance(exc, DeliveryNotFailed) == isinstance(event, Requeue)
            assert exc.http_status in (403, 409)
            assert exc.detail["recipient"] == H41
            assert {"recipient", "attempted"} <= exc.detail.keys()


def _rank(state: TransportState) -> int:
    return [T.ACCEPTED, T.IN_TRANSIT, T.DELIVERED, T.FETCHED, T.ACKNOWLEDGED].index(state)


class TimelineMachine(RuleBasedStateMachine):
    """Random events against one timeline; every accepted step must keep the rules."""

    def __init__(self) -> None:
        super().__init__()
        self.t = Timeline.start(G22, H41)
        self.accepted: list[Event] = []

    @initialize(start_delivered=st.booleans())
    def start(self, start_delivered: bool) -> None:
        if start_delivered:  # half the runs skip straight to where the status rules are
            self._do(TransportEvent(state=T.DELIVERED))

    def _do(self, event: Event) -> None:
        before = self.t
        try:
            after = apply(before, event)
        except REFUSALS:
            return
        self._check_step(before, after, event)
        self.t = after
        self.accepted.append(event)
        if not isinstance(event, Requeue):
            assert apply(after, event) is after  # an accepted event repeated is a no-op

    @staticmethod
    def _check_step(before: Timeline, after: Timeline, event: Event) -> None:
        # transport never goes backwards, except a requeue from failed
        if after.transport is not before.transport:
            if isinstance(event, Requeue):
                assert (before.transport, after.transport) == (T.FAILED, T.ACCEPTED)
            elif after.transport is T.FAILED:
                assert before.transport in (T.ACCEPTED, T.IN_TRANSIT)
            else:
                assert before.transport is not T.FAILED
                assert _rank(after.transport) > _rank(before.transport)
        # statuses are only ever appended, one at a time
        assert after.statuses[: len(before.statuses)] == before.statuses
        assert len(after.statuses) - len(before.statuses) in (0, 1)
        # after 02 (refused) or 15 (withdrawn) the statuses never change
        if before.refused or before.withdrawn:
            assert after.statuses == before.statuses
        assert (before.sender, before.recipient) == (after.sender, after.recipient)

    @rule(event=ENTITLED_EVENTS)
    def happens(self, event: Event) -> None:
        # one rule for all kinds, so that swarm testing never switches the statuses off
        self._do(event)

    @rule(code=CODES, stranger=st.sampled_from([G22, H41, H49, ""]))
    def someone_else_reports(self, code: StatusCode, stranger: str) -> None:
        if stranger == reporter_for(code):
            return
        with pytest.raises(StatusNotAllowed):
            apply_status(self.t, code, reporter=stranger)

    @invariant()
    def progress_follows_its_order(self) -> None:
        progress = [c for c in self.t.statuses if c in PROGRESS]
        assert progress == sorted(progress, key=lambda c: int(c.value))  # also: no repeats
        assert len(progress) == len(set(progress))
        for later, needed in [
            (S.FINISHED, S.ACCEPTED),
            (S.PROCESSING, S.ACCEPTED),
            (S.ASSIGNED, S.ACCEPTED),
            (S.ACCEPTED, S.RECEIVED),
            (S.REFUSED, S.RECEIVED),
        ]:
            if later in progress:
                assert needed in progress[: progress.index(later)]
        assert not (S.REFUSED in progress and S.ACCEPTED in progress)

    @invariant()
    def answers_follow_an_open_take_back(self) -> None:
        is_open = False
        for code in self.t.statuses:
            if code is S.TAKE_BACK_REQUESTED:
                assert not is_open
                is_open = True
            elif code in (S.CHANGE_ACCEPTED, S.CHANGE_REFUSED):
                assert is_open, "15/16 without an open 13"
                is_open = False
            elif code is S.REFUSED:
                is_open = False
        assert self.t.open_take_back == is_open
        assert self.t.withdrawn == (S.CHANGE_ACCEPTED in self.t.statuses)
        if self.t.withdrawn:
            assert self.t.statuses[-1] is S.CHANGE_ACCEPTED

    @invariant()
    def statuses_imply_the_document_reached_the_recipient(self) -> None:
        if self.t.statuses:
            assert self.t.transport in (T.DELIVERED, T.FETCHED, T.ACKNOWLEDGED)

    @invariant()
    def replay_is_deterministic(self) -> None:
        assert replay(G22, H41, self.accepted) == self.t


TimelineMachine.TestCase.settings = settings(max_examples=75, stateful_step_count=30, deadline=None)
TestTimelineMachine = TimelineMachine.TestCase
