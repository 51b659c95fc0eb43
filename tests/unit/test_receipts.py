"""Signed ingest receipts and the node key: round trips, tampering, trust, node binding."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import json
from typing import Any

import pytest
from support import DevPKI

from gateway.errors import (
    CertificateMalformed,
    CertificateNotValidAtSigning,
    CertificateUntrusted,
    ConfigError,
    GatewayError,
    SignatureMalformed,
    SignatureValueMismatch,
    SignerMismatch,
    SignerUnbound,
    UnsupportedAlgorithm,
)
from gateway.evidence.nodekey import Algorithm, NodeKey, canonical_json, verify_signature
from gateway.evidence.receipts import RECEIPT_FIELDS, make_receipt, verify_receipt

EC_NODE, RSA_NODE = "receipt-ec", "receipt-rsa"
G22 = "000.00.00.G22"
BODY = b"<edXML>stored bytes</edXML>"


#: within the validity of the certificates made at test time
def _when() -> dt.datetime:
    """Now, at test time (a time taken at import is stale by the time a long suite gets here,
    older than certificates the session's PKI issues later)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=123456)


def node_key(pki: DevPKI, name: str) -> NodeKey:
    return pki.node_key(name)


@pytest.fixture(params=[EC_NODE, RSA_NODE])
def key(request: pytest.FixtureRequest, pki: DevPKI) -> NodeKey:
    return node_key(pki, request.param)


def receipt_for(key: NodeKey, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "node": _bound_name(key),
        "document": "9f1c2a7e0b6d4f3e8a5c1b2d3e4f5a6b",
        "sender": G22,
        "document_id": "123/QĐ-UBND",
        "sha256": hashlib.sha256(BODY).hexdigest(),
        "size": len(BODY),
        "received_at": _when(),
        "received_from": f"agency:{G22}",
    }
    fields.update(overrides)
    return make_receipt(key, **fields)


def _bound_name(key: NodeKey) -> str:
    from gateway.trust.binding import node_name_of

    name = node_name_of(key.certificate)
    assert name is not None
    return name


def _bump(text: str) -> str:
    """``text`` with one character changed: its last digit, else its last letter, to the next."""
    for alphabet in ("0123456789", "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"):
        for i in range(len(text) - 1, -1, -1):
            if text[i] in alphabet:
                nxt = alphabet[(alphabet.index(text[i]) + 1) % len(alphabet)]
                return text[:i] + nxt + text[i + 1 :]
    raise AssertionError(f"nothing to change in {text!r}")


# --- round trips -------------------------------------------------------------------------------


def test_receipt_round_trip(key: NodeKey, pki: DevPKI) -> None:
    when = _when()
    receipt = receipt_for(key, received_at=when)
    fields = verify_receipt(receipt, pki.trust())
    assert fields == {
        "v": 1,
        "node": _bound_name(key),
        "document": "9f1c2a7e0b6d4f3e8a5c1b2d3e4f5a6b",
        "sender": G22,
        "document_id": "123/QĐ-UBND",
        "sha256": hashlib.sha256(BODY).hexdigest(),
        "size": len(BODY),
        "received_at": when.strftime("%Y-%m-%dT%H:%M:%S.123456Z"),
        "received_from": f"agency:{G22}",
    }
    assert receipt["alg"] == key.algorithm.value
    assert set(receipt) == {"receipt", "alg", "signature", "certificate"}


def test_receipt_survives_json_storage(key: NodeKey, pki: DevPKI) -> None:
    # the documents table keeps the receipt as JSON text; any key order must still verify
    receipt = receipt_for(key)
    stored = json.dumps(receipt, ensure_ascii=False, indent=1)
    assert verify_receipt(json.loads(stored), pki.trust())["size"] == len(BODY)


def test_algorithms_match_key_types(pki: DevPKI) -> None:
    assert node_key(pki, EC_NODE).algorithm is Algorithm.ES256
    assert node_key(pki, RSA_NODE).algorithm is Algorithm.RS256


def test_signature_covers_the_canonical_fields(key: NodeKey) -> None:
    # what an auditor recomputes with other tools: the signature over canonical JSON
    receipt = receipt_for(key)
    signed = json.dumps(
        receipt["receipt"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    assert signed == canonical_json(receipt["receipt"])
    assert verify_signature(key.certificate, signed, base64.b64decode(receipt["signature"]))
    assert not verify_signature(
        key.certificate, signed + b" ", base64.b64decode(receipt["signature"])
    )


def test_received_at_is_normalised_to_utc(pki: DevPKI) -> None:
    key = node_key(pki, EC_NODE)
    hanoi = dt.timezone(dt.timedelta(hours=7))
    aware = receipt_for(key, received_at=dt.datetime(2024, 5, 2, 10, 4, 5, tzinfo=hanoi))
    naive = receipt_for(key, received_at=dt.datetime(2024, 5, 2, 3, 4, 5))
    text = receipt_for(key, received_at="2024-05-02T10:04:05+07:00")
    for receipt in (aware, naive, text):
        assert receipt["receipt"]["received_at"] == "2024-05-02T03:04:05.000000Z"


# --- tampering -----------------------------------------------------------------------------------


@pytest.mark.parametrize("field", sorted(RECEIPT_FIELDS - {"v", "size"}))
def test_one_byte_change_in_any_field_fails(key: NodeKey, pki: DevPKI, field: str) -> None:
    receipt = receipt_for(key)
    forged = copy.deepcopy(receipt)
    forged["receipt"][field] = _bump(forged["receipt"][field])
    with pytest.raises(SignatureValueMismatch, match="changed after signing"):
        verify_receipt(forged)
    with pytest.raises(SignatureValueMismatch):
        verify_receipt(forged, pki.trust())


def test_changed_size_fails(key: NodeKey) -> None:
    forged = receipt_for(key)
    forged["receipt"]["size"] += 1
    with pytest.raises(SignatureValueMismatch):
        verify_receipt(forged)


def test_changed_version_is_refused(key: NodeKey) -> None:
    forged = receipt_for(key)
    forged["receipt"]["v"] = 2
    with pytest.raises(SignatureMalformed, match="version"):
        verify_receipt(forged)


def test_one_byte_change_in_the_signature_fails(key: NodeKey) -> None:
    receipt = receipt_for(key)
    raw = bytearray(base64.b64decode(receipt["signature"]))
    raw[len(raw) // 2] ^= 0x01
    receipt["signature"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(SignatureValueMismatch):
        verify_receipt(receipt)


@pytest.mark.parametrize("line", [2, 5, 8, 11])
def test_one_byte_change_in_the_certificate_fails(key: NodeKey, pki: DevPKI, line: int) -> None:
    receipt = receipt_for(key)
    lines = receipt["certificate"].splitlines()
    lines[line] = _bump(lines[line])
    receipt["certificate"] = "\n".join(lines) + "\n"
    # Without trust a change in the CA's signature of the leaf would go unnoticed: the key
    # still verifies. With trust every byte counts.
    with pytest.raises(GatewayError) as caught:
        verify_receipt(receipt, pki.trust())
    assert isinstance(
        caught.value,
        SignatureValueMismatch | CertificateMalformed | SignatureMalformed | CertificateUntrusted,
    ), caught.value


def test_added_field_is_refused(key: NodeKey) -> None:
    receipt = receipt_for(key)
    receipt["receipt"]["note"] = "x"
    with pytest.raises(SignatureMalformed, match="unexpected"):
        verify_receipt(receipt)
    receipt = receipt_for(key)
    receipt["extra"] = "x"
    with pytest.raises(SignatureMalformed, match="exactly the keys"):
        verify_receipt(receipt)


def test_missing_field_is_refused(key: NodeKey) -> None:
    receipt = receipt_for(key)
    del receipt["receipt"]["sha256"]
    with pytest.raises(SignatureMalformed, match="missing"):
        verify_receipt(receipt)


def test_signature_that_is_not_base64_is_refused(key: NodeKey) -> None:
    receipt = receipt_for(key)
    receipt["signature"] = "not base64!"
    with pytest.raises(SignatureMalformed, match="base64"):
        verify_receipt(receipt)


def test_unknown_algorithm_is_refused(key: NodeKey) -> None:
    receipt = receipt_for(key)
    receipt["alg"] = "HS256"
    with pytest.raises(UnsupportedAlgorithm, match="HS256"):
        verify_receipt(receipt)


def test_algorithm_that_does_not_match_the_key_is_refused(key: NodeKey) -> None:
    receipt = receipt_for(key)
    receipt["alg"] = "RS256" if key.algorithm is Algorithm.ES256 else "ES256"
    with pytest.raises(SignatureMalformed, match="certificate's key"):
        verify_receipt(receipt)


def test_garbage_certificate_is_refused(key: NodeKey) -> None:
    receipt = receipt_for(key)
    receipt["certificate"] = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(CertificateMalformed):
        verify_receipt(receipt)


# --- who signed ----------------------------------------------------------------------------------


def test_certificate_from_another_pki_is_untrusted(pki: DevPKI, other_pki: DevPKI) -> None:
    stranger = node_key(other_pki, EC_NODE)  # same node name, another CA
    receipt = receipt_for(stranger)
    assert verify_receipt(receipt)["node"] == EC_NODE  # signature alone holds...
    with pytest.raises(CertificateUntrusted):
        verify_receipt(receipt, pki.trust())  # ...but nobody vouches for the key


def test_receipt_dated_outside_the_certificate_validity_is_refused(pki: DevPKI) -> None:
    key = node_key(pki, EC_NODE)
    receipt = receipt_for(key, received_at=dt.datetime(2090, 1, 1, tzinfo=dt.UTC))
    with pytest.raises(CertificateNotValidAtSigning):
        verify_receipt(receipt, pki.trust())


def test_receipt_signed_by_another_node_is_refused(pki: DevPKI) -> None:
    other = node_key(pki, RSA_NODE)
    receipt = receipt_for(other)
    # re-sign fields that claim to come from the EC node with the RSA node's key
    receipt["receipt"]["node"] = EC_NODE
    receipt["signature"] = base64.b64encode(other.sign(canonical_json(receipt["receipt"]))).decode()
    with pytest.raises(SignerMismatch, match=f"names node '{EC_NODE}'"):
        verify_receipt(receipt, pki.trust())


def test_receipt_signed_by_an_agency_certificate_is_refused(pki: DevPKI) -> None:
    agency = pki.node_key(G22)
    fields = receipt_for(node_key(pki, EC_NODE))["receipt"]
    receipt = {
        "receipt": fields,
        "alg": agency.algorithm.value,
        "signature": base64.b64encode(agency.sign(canonical_json(fields))).decode(),
        "certificate": agency.certificate_pem,
    }
    with pytest.raises(SignerUnbound, match="not a node certificate"):
        verify_receipt(receipt, pki.trust())


def test_make_receipt_refuses_a_node_name_the_certificate_does_not_bind(pki: DevPKI) -> None:
    with pytest.raises(ConfigError, match="binds node"):
        receipt_for(node_key(pki, EC_NODE), node="some-other-node")


def test_make_receipt_refuses_malformed_fields(pki: DevPKI) -> None:
    key = node_key(pki, EC_NODE)
    with pytest.raises(ValueError, match="sha256"):
        receipt_for(key, sha256="ABC")
    with pytest.raises(ValueError, match="size"):
        receipt_for(key, size=-1)


# --- the key itself ------------------------------------------------------------------------------


def test_node_key_never_shows_its_key(key: NodeKey) -> None:
    from cryptography.hazmat.primitives import serialization

    secret = key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    body = "".join(secret.splitlines()[1:-1])
    for shown in (repr(key), str(key)):
        assert "NodeKey(" in shown
        assert body[:40] not in shown
        assert "private_key" not in shown


def test_certificate_pem_carries_the_chain(key: NodeKey, pki: DevPKI) -> None:
    # the intermediate travels in the receipt, so a verifier needs only the root
    assert key.certificate_pem.count("BEGIN CERTIFICATE") == 2
    verify_receipt(receipt_for(key), pki.trust())
