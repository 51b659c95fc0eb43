"""Hop records, notices and the relay framing: what a receiving node and an auditor check."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import itertools
from typing import Any

import pytest
from support import DevPKI

from gateway.errors import (
    EnvelopeTampered,
    HopChainBroken,
    HopSignatureInvalid,
    RelayMalformed,
    RouteLoop,
)
from gateway.evidence.hops import hop_digest, sign_hop, sign_notice, verify_hops, verify_notice
from gateway.network.wire import RelayItem, decode_batch, encode_batch

BODY = b"<edXML>the envelope, byte for byte</edXML>"
SHA = hashlib.sha256(BODY).hexdigest()


def _chain(pki: DevPKI, path: list[str], *, body: bytes = BODY) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for src, dst in itertools.pairwise(path):
        records.append(
            sign_hop(
                pki.node_key(src),
                kind="document",
                sender="000.01.01.H49",
                document_id="000.01.01.H49,2026/11/23,1/CV",
                sha256=hashlib.sha256(body).hexdigest(),
                size=len(body),
                from_node=src,
                to_node=dst,
                recipients=["000.00.00.G12"],
                at=dt.datetime.now(dt.UTC),
                prev=hop_digest(records[-1]) if records else None,
            )
        )
    return records


PATH = ["commune", "district", "province", "central"]


def test_a_chain_of_signed_hops_verifies_against_the_bytes(pki: DevPKI) -> None:
    chain = _chain(pki, PATH)
    fields = verify_hops(
        chain,
        trust=pki.trust(),
        sha256=SHA,
        size=len(BODY),
        to_node="central",
        from_node="province",
    )
    assert [(f["from"], f["to"]) for f in fields] == list(itertools.pairwise(PATH))


def test_other_bytes_than_the_hops_describe_are_tampered(pki: DevPKI) -> None:
    chain = _chain(pki, PATH)
    other = hashlib.sha256(BODY + b" ").hexdigest()
    with pytest.raises(EnvelopeTampered):
        verify_hops(chain, trust=pki.trust(), sha256=other, size=len(BODY) + 1)


def test_a_changed_hop_field_breaks_its_signature(pki: DevPKI) -> None:
    chain = _chain(pki, PATH)
    chain[1]["hop"]["recipients"] = ["000.00.00.G22"]
    with pytest.raises(HopSignatureInvalid):
        verify_hops(chain, trust=pki.trust(), sha256=SHA, size=len(BODY))


def test_a_dropped_or_reordered_hop_breaks_the_chain(pki: DevPKI) -> None:
    chain = _chain(pki, PATH)
    with pytest.raises(HopChainBroken):
        verify_hops([chain[0], chain[2]], trust=pki.trust(), sha256=SHA, size=len(BODY))
    with pytest.raises(HopChainBroken):
        verify_hops([chain[1]], trust=pki.trust(), sha256=SHA, size=len(BODY))


def test_a_hop_signed_by_another_node_than_it_names_is_refused(pki: DevPKI) -> None:
    chain = _chain(pki, ["commune", "district"])
    forged = sign_hop(
        pki.node_key("mallory"),
        kind="document",
        sender="000.01.01.H49",
        document_id=None,
        sha256=SHA,
        size=len(BODY),
        from_node="commune",
        to_node="district",
        recipients=["000.00.00.G12"],
        at=dt.datetime.now(dt.UTC),
        prev=None,
    )
    with pytest.raises(HopSignatureInvalid) as refused:
        verify_hops([forged], trust=pki.trust(), sha256=SHA, size=len(BODY))
    assert refused.value.detail["certificate_node"] == "mallory"
    assert verify_hops(chain, trust=pki.trust(), sha256=SHA, size=len(BODY))


def test_a_node_certificate_from_another_pki_is_not_trusted(pki: DevPKI, other_pki: DevPKI) -> None:
    chain = _chain(other_pki, ["commune", "district"])
    with pytest.raises(HopSignatureInvalid) as refused:
        verify_hops(chain, trust=pki.trust(), sha256=SHA, size=len(BODY))
    assert refused.value.detail["cause"].startswith("CERT_")


def test_a_package_coming_back_to_a_node_is_a_loop(pki: DevPKI) -> None:
    chain = _chain(pki, ["district", "commune"])
    with pytest.raises(RouteLoop):
        verify_hops(chain, trust=pki.trust(), sha256=SHA, size=len(BODY), to_node="district")


def test_the_last_hop_must_be_addressed_here_and_made_by_the_caller(pki: DevPKI) -> None:
    chain = _chain(pki, PATH)
    with pytest.raises(HopChainBroken):
        verify_hops(chain, trust=pki.trust(), sha256=SHA, size=len(BODY), to_node="elsewhere")
    with pytest.raises(HopChainBroken):
        verify_hops(chain, trust=pki.trust(), sha256=SHA, size=len(BODY), from_node="district")


def test_a_notice_verifies_and_a_changed_one_does_not(pki: DevPKI) -> None:
    notice = sign_notice(
        pki.node_key("central"),
        event="failed",
        kind="document",
        sender="000.01.01.H49",
        document_id="x",
        sha256=SHA,
        recipients=["000.00.00.G99"],
        node="central",
        code="REQUEST_RECIPIENT_UNREACHABLE",
        message="nobody serves 000.00.00.G99",
        at=dt.datetime.now(dt.UTC),
        failed_hop=None,
    )
    assert verify_notice(notice, trust=pki.trust())["code"] == "REQUEST_RECIPIENT_UNREACHABLE"
    changed = copy.deepcopy(notice)
    changed["notice"]["code"] = "DELIVERED"
    with pytest.raises(HopSignatureInvalid):
        verify_notice(changed, trust=pki.trust())


def test_the_relay_framing_round_trips_bytes_unchanged(pki: DevPKI) -> None:
    items = [
        RelayItem(kind="document", body=BODY, hops=_chain(pki, PATH[:2]), receipts=[]),
        RelayItem(kind="status", body=b"\n\x00 binary \n", hops=[], receipts=[]),
    ]
    decoded = decode_batch(encode_batch(items), max_items=10)
    assert [(i.kind, i.body, i.hops) for i in decoded] == [(i.kind, i.body, i.hops) for i in items]


def test_which_requeue_an_item_is_travels_with_it() -> None:
    """A package sent again after a requeue says which requeue, per recipient; a plain one
    says nothing (and reads as none)."""
    again = RelayItem(
        kind="document",
        body=b"x",
        hops=[],
        receipts=[],
        requeued={"000.00.00.G99": "2@2026-12-06T05:00:00Z"},
    )
    plain = RelayItem(kind="document", body=b"y", hops=[], receipts=[])
    body = encode_batch([again, plain])
    assert b'"requeued"' in body.split(b"\n", 1)[0] and body.count(b'"requeued"') == 1
    decoded = decode_batch(body, max_items=10)
    assert [i.requeued for i in decoded] == [{"000.00.00.G99": "2@2026-12-06T05:00:00Z"}, {}]


@pytest.mark.parametrize(
    "body",
    [
        b"no manifest line",
        b"[1,2]\n",
        b'{"v":1,"items":[]}\n',
        b'{"v":1,"items":[{"kind":"document","size":10,"hops":[]}]}\nshort',
        b'{"v":1,"items":[{"kind":"document","size":2,"hops":[]}]}\nabEXTRA',
        b'{"v":1,"items":[{"kind":"virus","size":0,"hops":[]}]}\n',
        b'{"v":1,"items":[{"kind":"document","size":-1,"hops":[]}]}\n',
        b'{"v":1,"items":[{"kind":"document","size":0,"hops":[],"requeued":["x"]}]}\n',
        b'{"v":1,"items":[{"kind":"document","size":0,"hops":[],"requeued":{"x":1}}]}\n',
    ],
)
def test_a_malformed_relay_body_is_refused_with_a_stable_code(body: bytes) -> None:
    with pytest.raises(RelayMalformed) as refused:
        decode_batch(body, max_items=10)
    assert refused.value.code == "RELAY_MALFORMED"


def test_a_batch_with_too_many_items_is_refused() -> None:
    body = encode_batch([RelayItem(kind="document", body=b"x", hops=[], receipts=[])] * 3)
    with pytest.raises(RelayMalformed):
        decode_batch(body, max_items=2)
