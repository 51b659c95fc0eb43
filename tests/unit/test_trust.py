"""The trust store: chains, revocation and agency-code binding, with our CA and another CA."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.agency import AgencyCode
from gateway.dev import pki
from gateway.errors import (
    CertificateNotValidAtSigning,
    CertificateRevoked,
    CertificateUntrusted,
    CRLInvalid,
    SignerUnbound,
    UsageError,
)
from gateway.trust.store import TrustStore, agency_code_of, describe, node_name_of

AGENCY = "000.00.00.H49"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


@dataclass
class DevPKI:
    ca: pki.CAPaths
    agency: pki.IssuedPaths
    node: pki.IssuedPaths

    def store(self, *, crls: bool = True) -> TrustStore:
        return TrustStore.from_pem_files([self.ca.root_cert], crls=[self.ca.crl] if crls else [])

    def leaf(self, issued: pki.IssuedPaths) -> tuple[x509.Certificate, list[x509.Certificate]]:
        leaf, *rest = _chain(issued.cert)
        return leaf, rest

    def intermediate_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(
            self.ca.intermediate_key.read_bytes(), password=None
        )
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key


@pytest.fixture
def dev(tmp_path: Path) -> DevPKI:
    ca = pki.init_ca(tmp_path / "pki", key_type="ec-p256")
    return DevPKI(
        ca=ca,
        agency=pki.issue(ca.directory, agency=AGENCY, key_type="ec-p256"),
        node=pki.issue(ca.directory, node="h49-hub"),
    )


def _sign_leaf(
    issuer: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    subject: list[x509.NameAttribute[str]],
    *,
    san: list[x509.GeneralName] | None = None,
    ca: bool = False,
) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


# --- loading ---------------------------------------------------------------------------------


def test_from_pem_files_reads_several_certs_and_crls_per_file(dev: DevPKI, tmp_path: Path) -> None:
    bundle = tmp_path / "anchors.pem"
    bundle.write_bytes(dev.ca.root_cert.read_bytes() + dev.ca.intermediate_cert.read_bytes())
    store = TrustStore.from_pem_files([bundle], crls=[dev.ca.crl])
    assert len(store.anchors) == 2
    assert len(store.crls) == 2


def test_from_pem_files_reads_der(dev: DevPKI, tmp_path: Path) -> None:
    root = x509.load_pem_x509_certificate(dev.ca.root_cert.read_bytes())
    der_root = tmp_path / "root.cer"
    der_root.write_bytes(root.public_bytes(serialization.Encoding.DER))
    crl = x509.load_pem_x509_crl(
        dev.ca.crl.read_bytes().split(b"-----END X509 CRL-----")[0] + b"-----END X509 CRL-----"
    )
    der_crl = tmp_path / "leaf.crl"
    der_crl.write_bytes(crl.public_bytes(serialization.Encoding.DER))
    store = TrustStore.from_pem_files([der_root], crls=[der_crl])
    assert store.anchors == (root,)
    assert store.crls == (crl,)


def test_from_pem_files_names_the_bad_file(dev: DevPKI, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(UsageError, match=r"junk\.pem") as info:
        TrustStore.from_pem_files([junk])
    assert info.value.detail["path"] == str(junk)
    with pytest.raises(UsageError, match=r"missing\.pem"):
        TrustStore.from_pem_files([tmp_path / "missing.pem"])
    with pytest.raises(UsageError, match="at least one trust anchor"):
        TrustStore.from_pem_files([])
    bad_crl = tmp_path / "bad.crl.pem"
    bad_crl.write_text("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
    with pytest.raises(CRLInvalid, match=r"bad\.crl\.pem"):
        TrustStore.from_pem_files([dev.ca.root_cert], crls=[bad_crl])
    with pytest.raises(CRLInvalid, match=r"ca\.cert\.pem holds no readable CRL"):
        # a certificate file passed as a CRL: no CRL block in it
        TrustStore.from_pem_files([dev.ca.root_cert], crls=[dev.ca.root_cert])


# --- chains ----------------------------------------------------------------------------------


def test_verify_chain_for_agency_and_node(dev: DevPKI) -> None:
    store = dev.store()
    root = store.anchors[0]
    for issued in (dev.agency, dev.node):
        leaf, rest = dev.leaf(issued)
        chain = store.verify_chain(leaf, rest, at=_now())
        assert chain == [leaf, rest[0], root]


def test_store_intermediates_complete_a_bare_leaf(dev: DevPKI) -> None:
    leaf, _ = dev.leaf(dev.agency)
    with pytest.raises(CertificateUntrusted):
        dev.store().verify_chain(leaf, [], at=_now())
    store = TrustStore.from_pem_files([dev.ca.root_cert], intermediates=[dev.ca.intermediate_cert])
    assert len(store.verify_chain(leaf, [], at=_now())) == 3


def test_naive_time_is_utc(dev: DevPKI) -> None:
    leaf, rest = dev.leaf(dev.agency)
    naive = _now().replace(tzinfo=None)
    assert len(dev.store().verify_chain(leaf, rest, at=naive)) == 3


def test_unknown_root_is_untrusted(dev: DevPKI, tmp_path: Path) -> None:
    other = pki.init_ca(tmp_path / "other", key_type="ec-p256")
    store = TrustStore.from_pem_files([other.root_cert])
    leaf, rest = dev.leaf(dev.agency)
    with pytest.raises(CertificateUntrusted) as info:
        store.verify_chain(leaf, rest, at=_now())
    assert info.value.detail["subject"].startswith(f"serialNumber={AGENCY},")
    assert "reason" in info.value.detail


def test_expired_at_signing_time(dev: DevPKI) -> None:
    short = pki.issue(dev.ca.directory, agency="000.00.01.H49", days=1, key_type="ec-p256")
    leaf, rest = dev.leaf(short)
    store = dev.store()
    store.verify_chain(leaf, rest, at=_now())
    with pytest.raises(CertificateNotValidAtSigning) as info:
        store.verify_chain(leaf, rest, at=_now() + dt.timedelta(days=2))
    assert "not valid at validation time" in info.value.detail["reason"]


def test_not_yet_valid_at_signing_time(dev: DevPKI) -> None:
    future = pki.issue(
        dev.ca.directory,
        agency="000.00.02.H49",
        key_type="ec-p256",
        not_before=_now() + dt.timedelta(days=2),
    )
    leaf, rest = dev.leaf(future)
    store = dev.store()
    with pytest.raises(CertificateNotValidAtSigning):
        store.verify_chain(leaf, rest, at=_now())
    store.verify_chain(leaf, rest, at=_now() + dt.timedelta(days=3))


def test_expired_intermediate_fails_the_chain(tmp_path: Path) -> None:
    ca = pki.init_ca(tmp_path / "short", days=2, key_type="ec-p256")
    issued = pki.issue(ca.directory, node="n1", days=30)
    leaf, rest = _chain(issued.cert)[0], _chain(issued.cert)[1:]
    store = TrustStore.from_pem_files([ca.root_cert])
    with pytest.raises(CertificateNotValidAtSigning):
        store.verify_chain(leaf, rest, at=_now() + dt.timedelta(days=5))


def test_forged_signature_is_untrusted(dev: DevPKI) -> None:
    leaf, rest = dev.leaf(dev.agency)
    der = bytearray(leaf.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature value: still parses, no longer verifies
    forged = x509.load_der_x509_certificate(bytes(der))
    with pytest.raises(CertificateUntrusted):
        dev.store().verify_chain(forged, rest, at=_now())


def test_leaf_signed_by_an_impostor_key_is_untrusted(dev: DevPKI) -> None:
    _, rest = dev.leaf(dev.agency)
    impostor = ec.generate_private_key(ec.SECP256R1())
    fake = _sign_leaf(
        rest[0],
        impostor,
        [x509.NameAttribute(NameOID.SERIAL_NUMBER, AGENCY)],
        san=[x509.UniformResourceIdentifier(f"urn:qcvn102:{AGENCY}")],
    )
    with pytest.raises(CertificateUntrusted):
        dev.store().verify_chain(fake, rest, at=_now())


def test_ca_certificate_is_never_accepted_as_the_signer(dev: DevPKI) -> None:
    store = dev.store()
    intermediate = x509.load_pem_x509_certificate(dev.ca.intermediate_cert.read_bytes())
    with pytest.raises(CertificateUntrusted, match="basicConstraints"):
        store.verify_chain(intermediate, [], at=_now())
    # A cA=TRUE certificate carrying an agency code, issued under the intermediate: refused too
    # (besides, the intermediate's pathlen 0 forbids it from issuing CAs).
    sub_ca = _sign_leaf(
        intermediate,
        dev.intermediate_key(),
        [x509.NameAttribute(NameOID.SERIAL_NUMBER, AGENCY)],
        san=[x509.UniformResourceIdentifier(f"urn:qcvn102:{AGENCY}")],
        ca=True,
    )
    with pytest.raises(CertificateUntrusted):
        store.verify_chain(sub_ca, [intermediate], at=_now())


# --- another CA, made with the openssl CLI ---------------------------------------------------

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI missing")


@dataclass
class OtherCA:
    directory: Path
    root: Path
    root_key: Path

    def leaf(self, name: str, subject: str, extensions: str) -> x509.Certificate:
        key, csr, cert = (self.directory / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        ext_file = self.directory / f"{name}.ext"
        ext_file.write_text(extensions)
        _openssl(
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
            "-subj", subject,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", csr, "-CA", self.root, "-CAkey", self.root_key,
            "-CAcreateserial", "-out", cert, "-days", "30", "-sha256", "-extfile", ext_file,
        )  # fmt: skip
        return x509.load_pem_x509_certificate(cert.read_bytes())


def _openssl(*args: object) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


@pytest.fixture
def other_ca(tmp_path: Path) -> OtherCA:
    directory = tmp_path / "openssl-ca"
    directory.mkdir()
    root, key = directory / "root.pem", directory / "root.key"
    # Plain `openssl req -x509`: basicConstraints critical CA:TRUE, SKI, AKI, and NO keyUsage.
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", root,
        "-days", "60", "-subj", "/C=VN/O=Ban Co yeu thu nghiem/CN=Other Root CA",
    )  # fmt: skip
    return OtherCA(directory=directory, root=root, root_key=key)


@needs_openssl
def test_openssl_ca_san_only_leaf_verifies_and_binds(other_ca: OtherCA) -> None:
    leaf = other_ca.leaf(
        "san",
        "/C=VN/O=So Noi vu/CN=Nguyen Van A",
        "subjectAltName=URI:urn:qcvn102:000.00.12.H41\n"
        "keyUsage=critical,digitalSignature,nonRepudiation\n"
        "extendedKeyUsage=emailProtection\n",
    )
    store = TrustStore.from_pem_files([other_ca.root])
    chain = store.verify_chain(leaf, [], at=_now())
    assert len(chain) == 2
    assert agency_code_of(leaf) == AgencyCode.parse("000.00.12.H41")
    assert leaf.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER) == []


@needs_openssl
def test_openssl_ca_serial_number_only_leaf_without_eku_or_san(other_ca: OtherCA) -> None:
    leaf = other_ca.leaf(
        "sn",
        "/C=VN/O=UBND tinh Nghe An/CN=Van thu/serialNumber=000.00.00.H41",
        "keyUsage=critical,nonRepudiation\nbasicConstraints=CA:FALSE\n",
    )
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    store = TrustStore.from_pem_files([other_ca.root])
    assert len(store.verify_chain(leaf, [], at=_now())) == 2
    assert agency_code_of(leaf) == AgencyCode.parse("000.00.00.H41")


@needs_openssl
def test_openssl_ca_code_signing_only_leaf_is_refused(other_ca: OtherCA) -> None:
    leaf = other_ca.leaf(
        "codesign",
        "/C=VN/CN=Build server/serialNumber=000.00.00.H41",
        "extendedKeyUsage=codeSigning\n",
    )
    with pytest.raises(CertificateUntrusted, match="no document-signing purpose"):
        TrustStore.from_pem_files([other_ca.root]).verify_chain(leaf, [], at=_now())


@needs_openssl
def test_openssl_ca_leaf_with_cert_sign_usage_is_refused(other_ca: OtherCA) -> None:
    leaf = other_ca.leaf(
        "keycertsign",
        "/C=VN/CN=Odd/serialNumber=000.00.00.H41",
        "keyUsage=digitalSignature,keyCertSign\n",
    )
    with pytest.raises(CertificateUntrusted, match="keyCertSign"):
        TrustStore.from_pem_files([other_ca.root]).verify_chain(leaf, [], at=_now())


@needs_openssl
def test_openssl_ca_and_dev_ca_side_by_side(other_ca: OtherCA, dev: DevPKI) -> None:
    leaf = other_ca.leaf("san", "/C=VN/CN=A", "subjectAltName=URI:urn:qcvn102:000.00.12.H41\n")
    store = TrustStore.from_pem_files([other_ca.root, dev.ca.root_cert], crls=[dev.ca.crl])
    chain = store.verify_chain(leaf, [], at=_now())
    result = store.check_revocation(chain, at=_now())
    assert not result.checked
    assert "unchecked: no CRL for issuer CN=Other Root CA" in result.details[0]
    ours, rest = dev.leaf(dev.agency)
    assert store.check_revocation(store.verify_chain(ours, rest, at=_now()), at=_now()).checked


# --- revocation ------------------------------------------------------------------------------


def test_unrevoked_chain_is_checked_against_both_crls(dev: DevPKI) -> None:
    store = dev.store()
    leaf, rest = dev.leaf(dev.agency)
    result = store.check_revocation(store.verify_chain(leaf, rest, at=_now()), at=_now())
    assert result.checked is True
    assert len(result.details) == 2
    assert "checked against CRL #1 of CN=Gateway Dev Intermediate CA" in result.details[0]
    assert "checked against CRL #1 of CN=Gateway Dev Root CA" in result.details[1]
    assert result.warnings == []


def test_no_crls_means_not_checked(dev: DevPKI) -> None:
    store = dev.store(crls=False)
    leaf, rest = dev.leaf(dev.agency)
    result = store.check_revocation(store.verify_chain(leaf, rest, at=_now()), at=_now())
    assert result.checked is False
    assert result.details == ["revocation not checked: no CRLs configured"]


def test_revoked_leaf_raises_with_serial(dev: DevPKI) -> None:
    pki.revoke(dev.ca.directory, dev.agency.serial, reason="keyCompromise")
    store = dev.store()  # loaded after the revocation: the new crl.pem
    leaf, rest = dev.leaf(dev.agency)
    chain = store.verify_chain(leaf, rest, at=_now())
    with pytest.raises(CertificateRevoked) as info:
        store.check_revocation(chain, at=_now())
    detail = info.value.detail
    assert detail["serial"] == f"0x{dev.agency.serial:x}"
    assert detail["reason"] == "keyCompromise"
    assert detail["subject"].startswith(f"serialNumber={AGENCY}")
    assert dt.datetime.fromisoformat(detail["revoked_at"]) <= _now()
    # The node, not revoked, still passes against the same CRLs.
    node, node_rest = dev.leaf(dev.node)
    assert store.check_revocation(store.verify_chain(node, node_rest, at=_now()), at=_now()).checked


def test_revoked_intermediate_revokes_every_leaf(dev: DevPKI) -> None:
    pki.revoke(dev.ca.directory, dev.ca.intermediate_serial, reason="cACompromise")
    store = dev.store()
    for issued in (dev.agency, dev.node):
        leaf, rest = dev.leaf(issued)
        chain = store.verify_chain(leaf, rest, at=_now())
        with pytest.raises(CertificateRevoked) as info:
            store.check_revocation(chain, at=_now())
        assert info.value.detail["serial"] == f"0x{dev.ca.intermediate_serial:x}"
        assert "Intermediate CA" in info.value.detail["subject"]


def test_newest_of_several_crls_wins(dev: DevPKI, tmp_path: Path) -> None:
    old = tmp_path / "old-crl.pem"
    old.write_bytes(dev.ca.crl.read_bytes())
    pki.revoke(dev.ca.directory, dev.node.serial, reason="superseded")
    store = TrustStore.from_pem_files([dev.ca.root_cert], crls=[dev.ca.crl, old])
    leaf, rest = dev.leaf(dev.node)
    with pytest.raises(CertificateRevoked):
        store.check_revocation(store.verify_chain(leaf, rest, at=_now()), at=_now())


def test_crl_signed_by_the_wrong_key_is_invalid(dev: DevPKI) -> None:
    intermediate = x509.load_pem_x509_certificate(dev.ca.intermediate_cert.read_bytes())
    now = _now()
    forged = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(intermediate.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=7))
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )
    root = x509.load_pem_x509_certificate(dev.ca.root_cert.read_bytes())
    store = TrustStore.from_certificates([root], crls=[forged])
    leaf, rest = dev.leaf(dev.agency)
    chain = store.verify_chain(leaf, rest, at=now)
    with pytest.raises(CRLInvalid, match="valid signature"):
        store.check_revocation(chain, at=now)


def test_stale_crl_is_used_with_a_warning(dev: DevPKI) -> None:
    store = dev.store()
    leaf, rest = dev.leaf(dev.agency)
    chain = store.verify_chain(leaf, rest, at=_now())
    later = _now() + dt.timedelta(days=8)
    result = store.check_revocation(chain, at=later)
    assert result.checked is True
    assert len(result.warnings) == 2
    assert "was due to be replaced" in result.warnings[0]


def test_benign_revocation_after_signing_time_is_a_warning(dev: DevPKI) -> None:
    signed_at = _now() - dt.timedelta(minutes=2)
    pki.revoke(dev.ca.directory, dev.agency.serial, reason="cessationOfOperation")
    store = dev.store()
    leaf, rest = dev.leaf(dev.agency)
    chain = store.verify_chain(leaf, rest, at=signed_at)
    result = store.check_revocation(chain, at=signed_at)
    assert result.checked is True
    assert any("cessationOfOperation" in w and "stand" in w for w in result.warnings)
    with pytest.raises(CertificateRevoked):
        store.check_revocation(chain, at=_now() + dt.timedelta(seconds=1))


def test_compromise_revocation_raises_even_for_earlier_signing_time(dev: DevPKI) -> None:
    signed_at = _now() - dt.timedelta(minutes=2)
    pki.revoke(dev.ca.directory, dev.agency.serial, reason="keyCompromise")
    store = dev.store()
    leaf, rest = dev.leaf(dev.agency)
    with pytest.raises(CertificateRevoked):
        store.check_revocation(store.verify_chain(leaf, rest, at=signed_at), at=signed_at)


# --- bindings --------------------------------------------------------------------------------


def _bound(dev: DevPKI, serial_numbers: list[str], uris: list[str]) -> x509.Certificate:
    intermediate = x509.load_pem_x509_certificate(dev.ca.intermediate_cert.read_bytes())
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, "test")]
    subject += [x509.NameAttribute(NameOID.SERIAL_NUMBER, s) for s in serial_numbers]
    san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    return _sign_leaf(intermediate, dev.intermediate_key(), subject, san=san or None)


def test_agency_code_from_either_form_or_both_agreeing(dev: DevPKI) -> None:
    code = AgencyCode.parse(AGENCY)
    assert agency_code_of(_bound(dev, [AGENCY], [])) == code
    assert agency_code_of(_bound(dev, [], [f"urn:qcvn102:{AGENCY}"])) == code
    assert agency_code_of(_bound(dev, [], [f"URN:QCVN102:{AGENCY}"])) == code
    assert agency_code_of(_bound(dev, [AGENCY], [f"urn:qcvn102:{AGENCY}"])) == code


def test_values_that_are_not_agency_codes_do_not_count(dev: DevPKI) -> None:
    assert agency_code_of(_bound(dev, ["MST:0101234567"], [])) is None
    assert agency_code_of(_bound(dev, ["CMND:012345678"], ["urn:qcvn102:H49"])) is None
    assert agency_code_of(_bound(dev, ["MST:0101234567"], [f"urn:qcvn102:{AGENCY}"])) == (
        AgencyCode.parse(AGENCY)
    )


def test_two_different_codes_are_refused(dev: DevPKI) -> None:
    cert = _bound(dev, ["000.00.00.H41"], [f"urn:qcvn102:{AGENCY}"])
    with pytest.raises(SignerUnbound, match="more than one agency code") as info:
        agency_code_of(cert)
    assert set(info.value.detail["codes"]) == {"000.00.00.H41", AGENCY}
    assert describe(cert)["agency_code"] is None
    assert "more than one" in describe(cert)["binding_error"]


def test_node_name_binding(dev: DevPKI) -> None:
    leaf, _ = dev.leaf(dev.node)
    assert node_name_of(leaf) == "h49-hub"
    two = _bound(dev, [], ["urn:gateway-node:a", "urn:gateway-node:b"])
    with pytest.raises(SignerUnbound):
        node_name_of(two)
    assert node_name_of(_bound(dev, [], [])) is None


def test_describe_is_json_ready(dev: DevPKI) -> None:
    leaf, _ = dev.leaf(dev.agency)
    info = describe(leaf)
    assert info["agency_code"] == AGENCY
    assert info["node"] is None
    assert info["serial"] == f"0x{dev.agency.serial:x}"
    assert info["subject"] == f"serialNumber={AGENCY},CN=Agency {AGENCY},O=Gateway Dev,C=VN"
    assert info["issuer"] == "CN=Gateway Dev Intermediate CA,O=Gateway Dev,C=VN"
    for key in ("not_before", "not_after"):
        when = dt.datetime.fromisoformat(info[key])
        assert when.utcoffset() == dt.timedelta(0)
    assert len(info["sha256"]) == 64
