"""Sealed objects: one format for receipts, hop records, notices and checkpoint signatures.

The golden vectors in ``tests/data/sealed`` were written by the code before the format had one
module (README there): what is stored in databases today must keep opening, and what is
written today must be the same bytes but for the signature and the certificate.
"""

from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from support import DATA

from gateway.errors import (
    CertificateKeyWeak,
    CertificateMalformed,
    GatewayError,
    HopSignatureInvalid,
    SignatureMalformed,
    SignatureValueMismatch,
    UnsupportedAlgorithm,
)
from gateway.evidence.auditor import _CheckpointChecker, checkpoint_fields
from gateway.evidence.hops import sign_hop, sign_notice, verify_hops, verify_notice
from gateway.evidence.nodekey import NodeKey, parse_utc
from gateway.evidence.receipts import make_receipt, verify_receipt
from gateway.evidence.sealed import open_sealed, sign_fields
from gateway.trust.store import TrustStore

GOLDEN = DATA / "sealed"
NODES = {"es256": "golden-node", "rs256": "golden-rsa"}
SHA = "ab" * 32
SIZE = 48213


def golden(kind: str, alg: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((GOLDEN / f"{kind}-{alg}.json").read_text("utf-8"))
    return loaded


@pytest.fixture(scope="module")
def trust() -> TrustStore:
    return TrustStore.from_pem_files([GOLDEN / "anchor.pem"])


def fresh_key(alg: str) -> NodeKey:
    """A key made now, of the golden node's kind, with a self-signed certificate.

    No private key is committed: what the write-again tests compare is everything but the
    signature and the certificate, which are the only fields that depend on the key.
    """
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
        ec.generate_private_key(ec.SECP256R1())
        if alg == "es256"
        else rsa.generate_private_key(65537, 2048)
    )
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, NODES[alg])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2027, 1, 1, tzinfo=dt.UTC))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"urn:gateway-node:{NODES[alg]}")]
            ),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    return NodeKey(private_key=private, certificate=cert, chain=())


@pytest.mark.parametrize("alg", list(NODES))
def test_receipts_hops_and_notices_sealed_by_the_earlier_code_still_verify(
    alg: str, trust: TrustStore
) -> None:
    node = NODES[alg]
    assert verify_receipt(golden("receipt", alg), trust)["node"] == node
    hop = verify_hops([golden("hop", alg)], trust=trust, sha256=SHA, size=SIZE, to_node="central")
    assert hop[0]["from"] == node
    assert verify_notice(golden("notice", alg), trust=trust)["node"] == node


@pytest.mark.parametrize("alg", list(NODES))
def test_audit_checkpoints_signed_by_the_earlier_code_still_verify(
    alg: str, trust: TrustStore
) -> None:
    stored = golden("checkpoint", alg)
    row = SimpleNamespace(**{**stored, "at": parse_utc(stored["at"])})
    assert _CheckpointChecker(trust, NODES[alg]).check(row) is None  # type: ignore[arg-type]
    edited = SimpleNamespace(**{**vars(row), "seq": 8})
    assert "does not verify" in str(_CheckpointChecker(trust, None).check(edited))  # type: ignore[arg-type]


def _write_again(alg: str) -> dict[str, dict[str, Any]]:
    """Each golden object, written again from its fields by the code of today."""
    key = fresh_key(alg)
    receipt = golden("receipt", alg)["receipt"]
    hop = golden("hop", alg)["hop"]
    notice = golden("notice", alg)["notice"]
    checkpoint = golden("checkpoint", alg)
    at = parse_utc(hop["at"])
    fields = checkpoint_fields(
        node=checkpoint["node"], seq=checkpoint["seq"], hash=checkpoint["hash"], at=at
    )
    return {
        "receipt": make_receipt(
            key,
            node=receipt["node"],
            document=receipt["document"],
            sender=receipt["sender"],
            document_id=receipt["document_id"],
            sha256=receipt["sha256"],
            size=receipt["size"],
            received_at=receipt["received_at"],
            received_from=receipt["received_from"],
        ),
        "hop": sign_hop(
            key,
            kind=hop["kind"],
            sender=hop["sender"],
            document_id=hop["document_id"],
            sha256=hop["sha256"],
            size=hop["size"],
            from_node=hop["from"],
            to_node=hop["to"],
            recipients=hop["recipients"],
            at=at,
            prev=hop["prev"],
        ),
        "notice": sign_notice(
            key,
            event=notice["event"],
            kind=notice["kind"],
            sender=notice["sender"],
            document_id=notice["document_id"],
            sha256=notice["sha256"],
            recipients=notice["recipients"],
            node=notice["node"],
            code=notice["code"],
            message=notice["message"],
            at=at,
            failed_hop=notice["failed_hop"],
            path=notice["path"],
            items=notice["items"],
        ),
        "checkpoint": {
            **fields,
            "signature": sign_fields(key, fields),
            "certificate": key.certificate_pem,
        },
    }


@pytest.mark.parametrize("alg", list(NODES))
def test_the_code_of_today_writes_the_objects_as_before_but_for_signature_and_certificate(
    alg: str,
) -> None:
    """Field for field and byte for byte, the same objects: only the key's own fields differ."""
    for kind, written in _write_again(alg).items():
        before = golden(kind, alg)
        blank = {"signature": "", "certificate": ""}
        assert json.dumps({**written, **blank}, sort_keys=False) == json.dumps(
            {**before, **blank}, sort_keys=False
        ), kind
        # and its signature verifies under the key that wrote it (the certificate chains to
        # no anchor: not checked here); a checkpoint is flat fields, not a sealed object
        if kind != "checkpoint":
            assert open_sealed(written, kind).fields == before[kind], kind


# --- the faults, and the code each caller gives them ---------------------------------------------


def _broken(label: str, fault: str) -> tuple[dict[str, Any], type[GatewayError]]:
    """A golden ES256 object with one fault, and the error :func:`open_sealed` must raise."""
    sealed = golden(label, "es256")
    if fault == "extra key":
        return {**sealed, "kid": "x"}, SignatureMalformed
    if fault == "unknown alg":
        return {**sealed, "alg": "HS256"}, UnsupportedAlgorithm
    if fault == "alg of another key":
        return {**sealed, "alg": "RS256"}, SignatureMalformed
    if fault == "signature not base64":
        return {**sealed, "signature": "not base64!"}, SignatureMalformed
    if fault == "certificate not PEM":
        return {**sealed, "certificate": "-----BEGIN CERTIFICATE-----\nAAAA"}, CertificateMalformed
    if fault == "field changed":
        return {**sealed, label: {**sealed[label], "size": SIZE + 1}}, SignatureValueMismatch
    raise AssertionError(fault)


FAULTS = [
    "extra key",
    "unknown alg",
    "alg of another key",
    "signature not base64",
    "certificate not PEM",
    "field changed",
]


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_of_a_seal_has_its_own_code_and_a_receipt_keeps_it(fault: str) -> None:
    broken, error = _broken("receipt", fault)
    with pytest.raises(error):
        open_sealed(broken, "receipt")
    with pytest.raises(error):
        verify_receipt(broken)


@pytest.mark.parametrize("fault", FAULTS)
def test_a_hop_record_with_any_fault_of_its_seal_is_relay_hop_signature_invalid(
    fault: str,
) -> None:
    """A peer expects one code for a faulty hop; ``detail.cause`` says which fault."""
    broken, error = _broken("hop", fault)
    with pytest.raises(HopSignatureInvalid) as info:
        verify_hops([broken], trust=None, sha256=SHA, size=SIZE)
    assert info.value.code == "RELAY_HOP_SIGNATURE_INVALID"
    assert info.value.detail == {"node": "golden-node", "cause": error.code}


def test_a_weak_key_is_refused_before_its_signature_is_checked() -> None:
    """The key policy comes first: a 1024-bit RSA certificate is CERT_KEY_WEAK, signed or not."""
    weak = rsa.generate_private_key(65537, 1024)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "weak")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(weak.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2027, 1, 1, tzinfo=dt.UTC))
        .sign(weak, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    sealed = {**golden("receipt", "rs256"), "certificate": pem}
    with pytest.raises(CertificateKeyWeak):
        open_sealed(sealed, "receipt")


def test_the_golden_files_are_the_ones_the_readme_lists() -> None:
    names = sorted(p.name for p in GOLDEN.iterdir())
    kinds = ("checkpoint", "hop", "notice", "receipt")
    expected = [f"{kind}-{alg}.json" for kind in kinds for alg in NODES]
    expected += ["README.md", "anchor.pem"]
    assert names == sorted(expected)
