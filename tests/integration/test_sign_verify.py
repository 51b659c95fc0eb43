"""Sign as a sender, verify as a node or an auditor: every check, every refusal."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from lxml import etree
from support import G22, H41, DevPKI, sample

from gateway.dev.pki import issue, revoke
from gateway.trust.signing import SigningKey, sign_package
from gateway.trust.store import TrustStore
from gateway.trust.verification import CHECK_NAMES, Verifier, VerifyPolicy

NOW = dt.datetime.now(dt.UTC)


def codes(report: object) -> list[str]:
    return [e.code for e in report.errors]  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def signed_update(pki: DevPKI) -> bytes:
    return sign_package(sample("edoc_update.edxml"), pki.key(G22))


@pytest.fixture
def signed_now(pki: DevPKI) -> tuple[bytes, dt.datetime]:
    when = dt.datetime.now(dt.UTC)
    return sign_package(sample("edoc_update.edxml"), pki.key(G22)), when


def test_signed_field_sample_verifies_with_every_check(
    pki: DevPKI, signed_now: tuple[bytes, dt.datetime]
) -> None:
    signed_update, signed_at = signed_now
    report = pki.verifier().verify(signed_update)
    assert report.valid, report.render_text()
    assert [c.name for c in report.checks] == list(CHECK_NAMES)
    assert all(c.ok for c in report.checks)
    assert report.package is not None
    assert report.package.from_.organ_id == G22
    assert report.signing_time is not None
    assert abs(report.signing_time - signed_at) < dt.timedelta(minutes=5)
    body = report.to_dict()
    assert body["valid"] is True
    assert body["signer"]["agency_code"] == G22
    assert body["algorithm"].endswith("rsa-sha256")
    assert body["errors"] == []


def test_signature_is_last_child_of_edxmlheader_and_unprefixed(signed_update: bytes) -> None:
    root = etree.fromstring(signed_update)
    header = root.find("{*}edXMLEnvelope/{*}edXMLHeader")
    last = header[-1]
    assert last.tag == "{http://www.w3.org/2000/09/xmldsig#}Signature"
    assert last.prefix is None
    ref = last.find("{*}SignedInfo/{*}Reference")
    assert ref.get("URI") == ""
    # the rest of the package keeps the SDK prefixing
    assert b"<edXML:MessageHeader>" in signed_update
    assert b"<AttachmentEncoded>" in signed_update


def test_only_the_signature_and_the_trace_stamp_change(signed_update: bytes) -> None:
    original = etree.fromstring(sample("edoc_update.edxml"))
    signed = etree.fromstring(signed_update)
    for root in (original, signed):
        for sig in root.iter("{*}Signature"):
            sig.getparent().remove(sig)
        for ts in root.iter("{*}Timestamp"):
            ts.text = "T"
    assert etree.tostring(original, method="c14n") == etree.tostring(signed, method="c14n")


def test_one_byte_tamper_is_a_digest_mismatch(pki: DevPKI, signed_update: bytes) -> None:
    tampered = signed_update.replace(b"1896_QD-TTg", b"1897_QD-TTg", 1)
    report = pki.verifier().verify(tampered)
    assert not report.valid
    assert codes(report) == ["SIGNATURE_DIGEST_MISMATCH"]
    assert report.package is None  # nothing unsigned is handed out


def test_tampered_attachment_is_caught(pki: DevPKI, signed_update: bytes) -> None:
    start = signed_update.index(b"ContentTransferEncoded")
    start = signed_update.index(b">", start) + 50
    flipped = b"B" if signed_update[start : start + 1] != b"B" else b"C"
    tampered = signed_update[:start] + flipped + signed_update[start + 1 :]
    assert codes(pki.verifier().verify(tampered)) == ["SIGNATURE_DIGEST_MISMATCH"]


def test_tampered_signature_value_is_a_value_mismatch(pki: DevPKI, signed_update: bytes) -> None:
    root = etree.fromstring(signed_update)
    value = root.find(".//{*}SignatureValue")
    raw = value.text.strip()
    value.text = ("A" if raw[0] != "A" else "B") + raw[1:]
    report = pki.verifier().verify(etree.tostring(root))
    assert codes(report) == ["SIGNATURE_VALUE_MISMATCH"]


def test_ecdsa_signer_verifies(pki: DevPKI) -> None:
    key = pki.key(H41, key_type="ec-p256")
    signed = sign_package(sample("status_acceptance_03.edxml"), key)
    report = pki.verifier().verify(signed)
    assert report.valid, report.render_text()
    assert report.algorithm is not None and "ecdsa-sha256" in report.algorithm
    assert report.signing_time_source == "status Timestamp"


def test_status_signing_time_is_its_timestamp_and_must_be_in_validity(pki: DevPKI) -> None:
    # status_inbox_01's Timestamp (2018) precedes a certificate issued today
    key = pki.key(H41, key_type="ec-p256")
    signed = sign_package(sample("status_inbox_01.edxml"), key, stamp_trace=False)
    report = pki.verifier().verify(signed)
    assert codes(report) == ["CERT_NOT_VALID_AT_SIGNING"]
    assert report.signing_time is not None and report.signing_time.year < 2020
    assert report.signing_time.isoformat() in report.errors[0].message


def test_wrong_signer_agency_is_refused(pki: DevPKI) -> None:
    # an H41 certificate signing a package whose From is G22
    signed = sign_package(sample("edoc_update.edxml"), pki.key(H41, key_type="ec-p256"))
    report = pki.verifier().verify(signed)
    assert codes(report) == ["SIGNER_AGENCY_MISMATCH"]
    assert "000.00.00.H41" in report.errors[0].message
    assert G22 in report.errors[0].message


def test_node_certificate_binds_no_agency(pki: DevPKI) -> None:
    signed = sign_package(sample("edoc_update.edxml"), pki.key("province-h49"))
    assert codes(pki.verifier().verify(signed)) == ["SIGNER_AGENCY_UNBOUND"]


def test_untrusted_ca_is_refused(pki: DevPKI, other_pki: DevPKI) -> None:
    signed = sign_package(sample("edoc_update.edxml"), other_pki.key(G22))
    report = pki.verifier().verify(signed)
    assert codes(report) == ["CERT_UNTRUSTED"]
    assert report.check("signature").ok is True  # the signature itself is fine
    assert report.check("revocation").ok is None


def test_no_trust_anchor_means_untrusted(signed_update: bytes) -> None:
    report = Verifier(None).verify(signed_update)
    assert codes(report) == ["CERT_UNTRUSTED"]


def test_revoked_signer_is_refused(fresh_pki: DevPKI) -> None:
    key = fresh_pki.key(G22)
    signed = sign_package(sample("edoc_update.edxml"), key)
    assert fresh_pki.verifier().verify(signed).valid
    revoke(fresh_pki.directory, fresh_pki.issued[G22].serial)
    report = fresh_pki.verifier().verify(signed)
    assert codes(report) == ["CERT_REVOKED"]
    assert f"{fresh_pki.issued[G22].serial:x}" in str(report.errors[0].detail).lower()


def test_certificate_expired_now_but_valid_at_signing(fresh_pki: DevPKI) -> None:
    start = NOW - dt.timedelta(days=30)
    paths = issue(fresh_pki.directory, agency=G22, days=10, not_before=start)
    key = SigningKey.load(paths.key, paths.cert)
    signed = sign_package(sample("edoc_update.edxml"), key, now=start + dt.timedelta(days=2))
    report = fresh_pki.verifier().verify(signed)
    assert codes(report) == ["CERT_EXPIRED"]
    assert report.check("validity_at_signing").ok is True
    assert report.check("validity_now").ok is False


def test_signing_time_before_certificate_is_refused(fresh_pki: DevPKI) -> None:
    key = fresh_pki.key(G22)
    signed = sign_package(sample("edoc_update.edxml"), key, now=NOW - dt.timedelta(days=400))
    assert codes(fresh_pki.verifier().verify(signed)) == ["CERT_NOT_VALID_AT_SIGNING"]


def test_unsigned_package_is_refused() -> None:
    root = etree.fromstring(sample("status_finish_06.edxml"))
    report = Verifier(None).verify(etree.tostring(root))
    assert codes(report) == ["SIGNATURE_MISSING"]


@pytest.mark.parametrize(
    "name",
    [
        "edoc_update.edxml",
        "edoc_replacement.edxml",
        "edoc_revocation.edxml",
        "edoc_relayed_by_hub.edxml",
    ],
)
def test_field_placeholder_signatures_are_refused_as_weak(pki: DevPKI, name: str) -> None:
    report = pki.verifier().verify(sample(name))
    assert not report.valid
    assert codes(report)[0] == "SIGNATURE_WEAK_ALGORITHM"
    assert report.check("signature").ok is None


@pytest.mark.parametrize(
    ("name", "code"),
    [
        # a real (VNPT) certificate with a reused placeholder SignatureValue
        ("edoc_relayed_by_hub.edxml", "SIGNATURE_VALUE_MISMATCH"),
        # the certificate in KeyInfo is truncated ("MIIFqTCCBJG")
        ("edoc_update.edxml", "CERT_MALFORMED"),
    ],
)
def test_field_placeholders_with_weak_admitted_say_why(pki: DevPKI, name: str, code: str) -> None:
    report = pki.verifier(allow_weak_algorithms=True).verify(sample(name))
    assert not report.valid
    assert code in codes(report)
    assert report.weak_algorithm_admitted
    assert "weak algorithm admitted" in report.render_text()


def test_weak_policy_is_off_by_default() -> None:
    assert VerifyPolicy().allow_weak_algorithms is False


def test_intermediate_only_in_trust_store(pki: DevPKI) -> None:
    """A signer that embeds only its leaf verifies when the store knows the intermediate."""
    key = pki.key(G22)
    leaf_only = SigningKey(private_key=key.private_key, certificate=key.certificate, chain=())
    signed = sign_package(sample("edoc_update.edxml"), leaf_only)
    assert codes(pki.verifier().verify(signed)) == ["CERT_UNTRUSTED"]
    store = TrustStore.from_pem_files(
        [pki.ca.root_cert], crls=[pki.ca.crl], intermediates=[pki.ca.intermediate_cert]
    )
    assert Verifier(store).verify(signed).valid


def test_chain_cache_does_not_hide_expiry(fresh_pki: DevPKI) -> None:
    start = NOW - dt.timedelta(days=30)
    paths = issue(fresh_pki.directory, agency=G22, days=10, not_before=start)
    key = SigningKey.load(paths.key, paths.cert)
    verifier = fresh_pki.verifier()
    good = sign_package(sample("edoc_update.edxml"), key, now=start + dt.timedelta(days=1))
    late = sign_package(sample("edoc_update.edxml"), key, now=start + dt.timedelta(days=20))
    assert codes(verifier.verify(good)) == ["CERT_EXPIRED"]
    assert codes(verifier.verify(late))[0] == "CERT_NOT_VALID_AT_SIGNING"


def test_pinned_self_signed_signer_from_openssl(tmp_path: Path) -> None:
    """Another PKI at its simplest: an openssl self-signed certificate, trusted directly."""
    key, cert = tmp_path / "ss.key", tmp_path / "ss.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "30",
            "-subj",
            f"/CN=Agency/serialNumber={G22}",
            "-addext",
            f"subjectAltName=URI:urn:qcvn102:{G22}",
        ],
        check=True,
        capture_output=True,
    )
    signed = sign_package(sample("edoc_update.edxml"), SigningKey.load(key, cert))
    report = Verifier(TrustStore.from_pem_files([cert])).verify(signed)
    assert report.valid, report.render_text()
    assert "pinned" in report.check("chain").detail
    # pinned is not "anything goes": the agency binding still has to match From
    other = sign_package(sample("status_finish_06.edxml"), SigningKey.load(key, cert))
    mismatch = Verifier(TrustStore.from_pem_files([cert])).verify(other)
    assert [e.code for e in mismatch.errors] == ["SIGNER_AGENCY_MISMATCH"]
