"""The signer key policy end to end: documents, hops, receipts and TLS callers alike.

Weak signers (RSA-1024, P-521, secp256k1), high-S ECDSA signatures and agency codes that are
codes only after trimming are refused with their stable code wherever they come in, and a
refused package stores nothing. Certificates are made at test time under the dev PKI's
intermediate; high-S signatures are derived deterministically from valid ones (``s -> n - s``).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from lxml import etree
from sqlalchemy import func, select
from support import DevPKI
from test_interop_xmlsec1 import ecdsa_form

from gateway.agency import AgencyCode
from gateway.api.auth import identify
from gateway.dev.nodeconfig import write_node_config
from gateway.dev.samples import document
from gateway.errors import (
    AgencyCodeError,
    CertificateKeyWeak,
    ClientCertUntrusted,
    GatewayError,
    HopSignatureInvalid,
    SignatureNonCanonical,
    UsageError,
)
from gateway.evidence.hops import sign_hop, verify_hops
from gateway.evidence.nodekey import NodeKey, canonical_json, check_signature, verify_signature
from gateway.evidence.receipts import make_receipt, verify_receipt
from gateway.node.container import Node
from gateway.node.ingest import ingest_document
from gateway.settings import Settings, TLSSettings, TrustSettings, load_settings
from gateway.storage import db
from gateway.storage.tables import audit_log, documents
from gateway.trust.caller import Identity
from gateway.trust.keypolicy import curve_order, is_low_s
from gateway.trust.signing import SigningKey, sign_package
from gateway.trust.store import agency_code_of

H49 = "000.00.07.H49"  # codes of their own: the session PKI is shared with other modules
G12 = "000.00.07.G12"
EC_SENDER = "000.00.08.H49"
P256 = ec.SECP256R1()
ORDER = curve_order(P256)
BODY = b"<edXML>relayed bytes</edXML>"
SHA = hashlib.sha256(BODY).hexdigest()


# --- certificates made at test time ----------------------------------------------------------


def _intermediate(pki: DevPKI) -> tuple[x509.Certificate, Any]:
    cert = x509.load_pem_x509_certificate(pki.ca.intermediate_cert.read_bytes())
    key = serialization.load_pem_private_key(pki.ca.intermediate_key.read_bytes(), None)
    return cert, key


def _leaf(
    pki: DevPKI,
    key: Any,
    *,
    agency: str | None = None,
    node: str | None = None,
    serial_number: str | None = None,
) -> x509.Certificate:
    """A leaf under the dev intermediate binding ``agency`` or ``node``, with any key."""
    issuer, issuer_key = _intermediate(pki)
    attrs = [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"Key policy test {agency or node}"),
    ]
    if serial_number or agency:
        value = serial_number or str(agency)
        # serialNumber is a PrintableString, which has no NBSP; a CA may still write UTF8String
        kind = _ASN1Type.PrintableString if value.isascii() else _ASN1Type.UTF8String
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, value, _type=kind))
    uris = []
    if agency and serial_number is None:
        uris.append(x509.UniformResourceIdentifier(f"urn:qcvn102:{agency}"))
    if node:
        uris.append(x509.UniformResourceIdentifier(f"urn:gateway-node:{node}"))
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION]
            ),
            critical=False,
        )
    )
    if uris:
        builder = builder.add_extension(x509.SubjectAlternativeName(uris), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _signing_key(pki: DevPKI, key: Any, cert: x509.Certificate) -> SigningKey:
    """Built by hand: SigningKey.load refuses these keys (tested below)."""
    return SigningKey(private_key=key, certificate=cert, chain=(_intermediate(pki)[0],))


WEAK_KEYS = {
    "RSA-1024": (lambda: rsa.generate_private_key(65537, 1024), {"key_type": "RSA", "bits": 1024}),
    "P-521": (lambda: ec.generate_private_key(ec.SECP521R1()), {"curve": "secp521r1"}),
    "secp256k1": (lambda: ec.generate_private_key(ec.SECP256K1()), {"curve": "secp256k1"}),
}


def _flip_der(signature_b64: str) -> str:
    """A node signature (DER ECDSA, base64) in its other form: ``(r, n - s)``."""
    r, s = utils.decode_dss_signature(base64.b64decode(signature_b64))
    return base64.b64encode(utils.encode_dss_signature(r, ORDER - s)).decode()


# --- documents -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(WEAK_KEYS))
def test_a_weak_document_signer_is_refused(pki: DevPKI, kind: str) -> None:
    make, expected = WEAK_KEYS[kind]
    key = make()
    signed = sign_package(document(H49, [G12]), _signing_key(pki, key, _leaf(pki, key, agency=H49)))
    report = pki.verifier().verify(signed)
    assert not report.valid
    assert report.first_error() is not None and report.first_error().code == "CERT_KEY_WEAK"
    # no arithmetic with the key (signature step) and no trust in it (chain step)
    assert report.check("signature").detail.startswith("CERT_KEY_WEAK")
    assert report.check("chain").detail.startswith("CERT_KEY_WEAK")
    detail = report.errors[-1].detail
    assert {k: detail[k] for k in expected} == expected
    assert detail["role"] == "signer"


def test_a_weak_key_cannot_be_loaded_to_sign(pki: DevPKI, tmp_path: Path) -> None:
    key = rsa.generate_private_key(65537, 1024)
    key_path, cert_path = tmp_path / "weak.key.pem", tmp_path / "weak.cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(_leaf(pki, key, agency=H49).public_bytes(serialization.Encoding.PEM))
    with pytest.raises(UsageError) as info:
        SigningKey.load(key_path, cert_path)
    assert info.value.detail["key_type"] == "RSA" and info.value.detail["bits"] == 1024
    with pytest.raises(UsageError):
        NodeKey.load(key_path, cert_path)


def test_a_p384_signer_is_admitted(pki: DevPKI) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    signing = _signing_key(pki, key, _leaf(pki, key, agency=H49))
    for _ in range(8):  # both forms would come up among 8; ours is always the low one
        signed = sign_package(document(H49, [G12]), signing)
        assert ecdsa_form(signed, "low", ec.SECP384R1()) == signed
        report = pki.verifier().verify(signed)
        assert report.valid, report.render_text()


def test_a_high_s_document_signature_is_refused_and_its_low_s_twin_accepted(
    pki: DevPKI,
) -> None:
    signed = sign_package(document(EC_SENDER, [G12]), pki.key(EC_SENDER, key_type="ec-p256"))
    assert ecdsa_form(signed, "low") == signed  # what we sign is already low-S
    high = ecdsa_form(signed, "high")
    assert high != signed
    refused = pki.verifier().verify(high)
    assert [e.code for e in refused.errors] == ["SIGNATURE_NON_CANONICAL"]
    assert refused.errors[0].detail == {"curve": "secp256r1", "form": "high-S"}
    assert refused.package is None  # nothing read from it
    assert pki.verifier().verify(signed).valid


_SIGNATURE_VALUE = re.compile(rb"<SignatureValue>([^<]*)</SignatureValue>")


def test_our_document_signer_always_writes_low_s(pki: DevPKI) -> None:
    key = pki.key(EC_SENDER, key_type="ec-p256")
    unsigned = document(EC_SENDER, [G12])
    for _ in range(200):  # all 200 low-S by chance: 2**-200
        match = _SIGNATURE_VALUE.search(sign_package(unsigned, key, stamp_trace=False))
        assert match is not None
        raw = base64.b64decode(match.group(1))
        assert is_low_s(P256, int.from_bytes(raw[32:], "big"))


def test_our_node_key_always_signs_low_s(pki: DevPKI) -> None:
    key = pki.node_key("keypolicy-signer")
    for index in range(200):
        signature = key.sign(canonical_json({"seq": index}))
        assert is_low_s(P256, utils.decode_dss_signature(signature)[1])
        assert verify_signature(key.certificate, canonical_json({"seq": index}), signature)


# --- agency codes ----------------------------------------------------------------------------


def _with_from(data: bytes, organ_id: str, element: str = "From") -> bytes:
    root = etree.fromstring(data)
    ns = {"e": "http://www.mic.gov.vn/TBT/QCVN_102_2016"}
    target = root.find(f"e:edXMLEnvelope/e:edXMLHeader/e:MessageHeader/e:{element}/e:OrganId", ns)
    assert target is not None
    target.text = organ_id
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


PADDED = {
    "trailing NBSP": (H49 + "\u00a0", "leading or trailing whitespace"),
    "leading space": (" " + H49, "leading or trailing whitespace"),
    "trailing newline": (H49 + "\n", "leading or trailing whitespace"),
    "lower case": (H49.lower(), "a character outside [0-9A-Z.]"),
}


@pytest.mark.parametrize("case", sorted(PADDED))
def test_a_from_code_that_is_not_exactly_a_code_is_refused(pki: DevPKI, case: str) -> None:
    organ_id, reason = PADDED[case]
    signed = sign_package(_with_from(document(H49, [G12]), organ_id), pki.key(H49))
    report = pki.verifier().verify(signed)
    error = report.first_error()
    assert error is not None and error.code == "ENVELOPE_INVALID_VALUE", report.render_text()
    assert error.detail["path"].endswith("/From/OrganId")
    assert error.detail["cause"] == "AGENCY_CODE_INVALID"
    assert error.detail["reason"] == reason
    assert error.detail["value"] == organ_id
    assert report.package is None


def test_a_to_code_with_a_trailing_nbsp_is_refused(pki: DevPKI) -> None:
    data = _with_from(document(H49, [G12]), G12 + "\u00a0", element="To")
    report = pki.verifier().verify(sign_package(data, pki.key(H49)))
    error = report.first_error()
    assert error is not None and error.code == "ENVELOPE_INVALID_VALUE"
    assert error.detail["cause"] == "AGENCY_CODE_INVALID"


@pytest.mark.parametrize("padded", [H49 + "\u00a0", " " + H49, H49.lower()])
def test_a_certificate_binding_a_padded_code_is_refused(pki: DevPKI, padded: str) -> None:
    key = ec.generate_private_key(P256)
    cert = _leaf(pki, key, agency=H49, serial_number=padded)
    with pytest.raises(AgencyCodeError) as info:
        agency_code_of(cert)
    assert info.value.detail["where"] == "subject serialNumber"
    report = pki.verifier().verify(sign_package(document(H49, [G12]), _signing_key(pki, key, cert)))
    assert [e.code for e in report.errors] == ["AGENCY_CODE_INVALID"]
    assert report.check("signer_agency").ok is False
    assert report.to_dict()["signer"]["agency_code"] is None  # describing it never raises


# --- nothing stored through ingest -----------------------------------------------------------


@pytest.fixture
def node(tmp_path: Path, pki: DevPKI) -> Any:
    config = write_node_config(
        tmp_path / "node.toml",
        node=pki.issue("keypolicy-node", key_type="ec-p256"),
        ca=pki.ca,
        database_url=f"sqlite:///{tmp_path / 'node.db'}",
        name="keypolicy-node",
        agencies=[H49, G12, EC_SENDER],
        tier="central",
    )
    settings = load_settings(config, environ={})
    engine = db.make_engine(settings)
    db.upgrade(engine)
    built = Node.from_settings(settings, engine)
    yield built
    engine.dispose()


def _caller(pki: DevPKI, code: str) -> Identity:
    return Identity(
        kind="agency", agency=AgencyCode.parse(code), certificate=pki.key(H49).certificate
    )


def _refused(node: Node, pki: DevPKI, sender: str, data: bytes) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        ingest_document(node, data, caller=_caller(pki, sender))
    with node.reader.connect() as conn:
        assert conn.execute(select(func.count()).select_from(documents)).scalar() == 0
        refusals = [
            row.data
            for row in conn.execute(select(audit_log.c.data).where(audit_log.c.event == "refuse"))
        ]
    assert len(refusals) == 1 and info.value.code in str(refusals[0])
    return info.value


def test_ingest_stores_nothing_for_a_weak_signer(node: Node, pki: DevPKI) -> None:
    key = rsa.generate_private_key(65537, 1024)
    signing = _signing_key(pki, key, _leaf(pki, key, agency=H49))
    error = _refused(node, pki, H49, sign_package(document(H49, [G12]), signing))
    assert error.code == "CERT_KEY_WEAK"


def test_ingest_stores_nothing_for_a_high_s_signature(node: Node, pki: DevPKI) -> None:
    signed = sign_package(document(EC_SENDER, [G12]), pki.key(EC_SENDER, key_type="ec-p256"))
    error = _refused(node, pki, EC_SENDER, ecdsa_form(signed, "high"))
    assert error.code == "SIGNATURE_NON_CANONICAL"


def test_ingest_stores_nothing_for_a_from_code_with_a_trailing_nbsp(
    node: Node, pki: DevPKI
) -> None:
    data = sign_package(_with_from(document(H49, [G12]), H49 + "\u00a0"), pki.key(H49))
    error = _refused(node, pki, H49, data)
    assert error.code == "ENVELOPE_INVALID_VALUE"
    assert error.detail["cause"] == "AGENCY_CODE_INVALID"


# --- hop records and receipts ----------------------------------------------------------------


def _hop(key: NodeKey, name: str) -> dict[str, Any]:
    return sign_hop(
        key,
        kind="document",
        sender=H49,
        document_id=None,
        sha256=SHA,
        size=len(BODY),
        from_node=name,
        to_node="central",
        recipients=[G12],
        at=dt.datetime.now(dt.UTC),
        prev=None,
    )


def test_a_high_s_hop_record_is_refused(pki: DevPKI) -> None:
    record = _hop(pki.node_key("keypolicy-hop"), "keypolicy-hop")
    verify_hops([record], trust=pki.trust(), sha256=SHA, size=len(BODY))
    twin = {**record, "signature": _flip_der(record["signature"])}
    with pytest.raises(HopSignatureInvalid) as info:
        verify_hops([twin], trust=pki.trust(), sha256=SHA, size=len(BODY))
    assert info.value.code == "RELAY_HOP_SIGNATURE_INVALID"
    assert info.value.detail["cause"] == "SIGNATURE_NON_CANONICAL"


def _weak_node_seal(pki: DevPKI, label: str, fields: dict[str, Any], node: str) -> dict[str, Any]:
    """What a node with an RSA-1024 certificate would send (NodeKey refuses to be one)."""
    key = rsa.generate_private_key(65537, 1024)
    cert = _leaf(pki, key, node=node)
    pem = cert.public_bytes(serialization.Encoding.PEM) + _intermediate(pki)[0].public_bytes(
        serialization.Encoding.PEM
    )
    signature = key.sign(canonical_json(fields), padding.PKCS1v15(), hashes.SHA256())
    return {
        label: fields,
        "alg": "RS256",
        "signature": base64.b64encode(signature).decode(),
        "certificate": pem.decode(),
    }


def test_a_hop_record_signed_by_a_weak_node_key_is_refused(pki: DevPKI) -> None:
    fields = _hop(pki.node_key("keypolicy-hop"), "weak-node")["hop"]
    record = _weak_node_seal(pki, "hop", fields, "weak-node")
    for trust in (None, pki.trust()):  # the policy holds with and without a trust store
        with pytest.raises(HopSignatureInvalid) as info:
            verify_hops([record], trust=trust, sha256=SHA, size=len(BODY))
        assert info.value.detail["cause"] == "CERT_KEY_WEAK"


def _receipt(key: NodeKey, node: str) -> dict[str, Any]:
    return make_receipt(
        key,
        node=node,
        document="9f1c2a7e0b6d4f3e8a5c1b2d3e4f5a6b",
        sender=H49,
        document_id=None,
        sha256=SHA,
        size=len(BODY),
        received_at=dt.datetime.now(dt.UTC),
        received_from=f"agency:{H49}",
    )


def test_a_high_s_receipt_is_refused(pki: DevPKI) -> None:
    receipt = _receipt(pki.node_key("keypolicy-hop"), "keypolicy-hop")
    verify_receipt(receipt, pki.trust())
    twin = {**receipt, "signature": _flip_der(receipt["signature"])}
    with pytest.raises(SignatureNonCanonical) as info:
        verify_receipt(twin, pki.trust())
    assert info.value.code == "SIGNATURE_NON_CANONICAL"


def test_a_receipt_signed_by_a_weak_node_key_is_refused(pki: DevPKI) -> None:
    fields = _receipt(pki.node_key("keypolicy-hop"), "keypolicy-hop")["receipt"]
    fields = {**fields, "node": "weak-node"}
    receipt = _weak_node_seal(pki, "receipt", fields, "weak-node")
    with pytest.raises(CertificateKeyWeak) as info:
        verify_receipt(receipt)
    assert info.value.detail["bits"] == 1024


def test_a_high_s_audit_checkpoint_signature_does_not_verify(pki: DevPKI) -> None:
    """Audit checkpoints are checked with verify_signature: the twin is not a signature."""
    key = pki.node_key("keypolicy-hop")
    data = canonical_json({"node": "keypolicy-hop", "seq": 1})
    signature = key.sign(data)
    twin = base64.b64decode(_flip_der(base64.b64encode(signature).decode()))
    assert verify_signature(key.certificate, data, signature)
    assert not verify_signature(key.certificate, data, twin)
    with pytest.raises(SignatureNonCanonical):
        check_signature(key.certificate, data, twin)


# --- TLS client certificates through a trusted proxy -----------------------------------------


def _proxy_scope(cert: x509.Certificate) -> dict[str, Any]:
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    header = quote(pem, safe="").encode()
    return {"type": "http", "client": ("10.1.2.3", 5000), "headers": [(b"x-client-cert", header)]}


def _proxy_settings(pki: DevPKI) -> Settings:
    return Settings(
        tls=TLSSettings(trusted_proxies=("10.0.0.0/8",)),
        trust=TrustSettings(
            anchors=(pki.ca.root_cert,),
            crls=(pki.ca.crl,),
            intermediates=(pki.ca.intermediate_cert,),
        ),
    )


@pytest.mark.parametrize("kind", sorted(WEAK_KEYS))
def test_a_weak_client_certificate_behind_a_trusted_proxy_is_refused(
    pki: DevPKI, kind: str
) -> None:
    """TLS refuses RSA-1024 at the handshake; a proxy may not. The same policy applies."""
    key = WEAK_KEYS[kind][0]()
    with pytest.raises(ClientCertUntrusted) as info:
        identify(
            _proxy_scope(_leaf(pki, key, agency=H49)),
            trust=pki.trust(with_intermediate=True),
            settings=_proxy_settings(pki),
        )
    assert info.value.http_status == 401
    assert info.value.detail["reason"] == "CERT_KEY_WEAK"


def test_a_client_certificate_binding_a_padded_code_is_refused(pki: DevPKI) -> None:
    key = ec.generate_private_key(P256)
    cert = _leaf(pki, key, agency=H49, serial_number=" " + H49)
    with pytest.raises(ClientCertUntrusted) as info:
        identify(
            _proxy_scope(cert),
            trust=pki.trust(with_intermediate=True),
            settings=_proxy_settings(pki),
        )
    assert info.value.detail["reason"] == "AGENCY_CODE_INVALID"


def test_an_admitted_client_certificate_behind_a_trusted_proxy_is_identified(
    pki: DevPKI,
) -> None:
    """Control: the refusals above are about the key, not about these hand-made certs."""
    key = ec.generate_private_key(ec.SECP384R1())
    identity = identify(
        _proxy_scope(_leaf(pki, key, agency=H49)),
        trust=pki.trust(with_intermediate=True),
        settings=_proxy_settings(pki),
    )
    assert str(identity) == f"agency:{H49}" and identity.source == "proxy"
