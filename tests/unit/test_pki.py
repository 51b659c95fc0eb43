"""The development PKI generator: files, extensions, bindings, revocation and the CLI."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.agency import AgencyCode
from gateway.cli.pki import pki as pki_cli
from gateway.dev import pki
from gateway.errors import UsageError
from gateway.trust.store import TrustStore, agency_code_of, node_name_of

AGENCY = "000.00.00.H49"


@pytest.fixture
def ca(tmp_path: Path) -> pki.CAPaths:
    # EC CAs keep the suite fast; the RSA default is exercised once below.
    return pki.init_ca(tmp_path / "pki", key_type="ec-p256")


def _chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def _crls(path: Path) -> list[x509.CertificateRevocationList]:
    text = path.read_bytes()
    blocks = text.split(b"-----END X509 CRL-----")
    return [
        x509.load_pem_x509_crl(block + b"-----END X509 CRL-----")
        for block in blocks
        if b"BEGIN X509 CRL" in block
    ]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _ext(
    cert: x509.Certificate, kind: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


# --- init ------------------------------------------------------------------------------------


def test_init_ca_writes_root_intermediate_and_empty_crls(ca: pki.CAPaths) -> None:
    root = x509.load_pem_x509_certificate(ca.root_cert.read_bytes())
    inter = x509.load_pem_x509_certificate(ca.intermediate_cert.read_bytes())

    assert root.subject == root.issuer
    root.verify_directly_issued_by(root)
    inter.verify_directly_issued_by(root)
    assert (root.serial_number, inter.serial_number) == (ca.root_serial, ca.intermediate_serial)

    root_bc = _ext(root, x509.BasicConstraints)
    inter_bc = _ext(inter, x509.BasicConstraints)
    assert root_bc.critical and root_bc.value.ca and root_bc.value.path_length is None
    assert inter_bc.critical and inter_bc.value.ca and inter_bc.value.path_length == 0
    for cert in (root, inter):
        usage = _ext(cert, x509.KeyUsage).value
        assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    inter_aki = _ext(inter, x509.AuthorityKeyIdentifier).value
    root_ski = _ext(root, x509.SubjectKeyIdentifier).value
    assert inter_aki.key_identifier == root_ski.digest

    assert _mode(ca.root_key) == 0o600
    assert _mode(ca.intermediate_key) == 0o600
    leaf_crl, root_crl = _crls(ca.crl)
    assert leaf_crl.issuer == inter.subject and root_crl.issuer == root.subject
    assert leaf_crl.is_signature_valid(inter.public_key())  # type: ignore[arg-type]
    assert root_crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]
    assert len(leaf_crl) == 0 and len(root_crl) == 0


def test_init_ca_default_key_is_rsa3072(tmp_path: Path) -> None:
    ca = pki.init_ca(tmp_path / "rsa", days=30, common_name_prefix="Tinh Quang Ninh")
    root = x509.load_pem_x509_certificate(ca.root_cert.read_bytes())
    key = root.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 3072
    assert root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "Tinh Quang Ninh Root CA"
    )
    now = dt.datetime.now(dt.UTC)
    assert abs(root.not_valid_after_utc - (now + dt.timedelta(days=30))) < dt.timedelta(minutes=1)
    # backdated a year, so tests can verify signatures made "in the past"
    assert root.not_valid_before_utc < now - dt.timedelta(days=364)


def test_init_ca_not_before(tmp_path: Path) -> None:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    ca = pki.init_ca(tmp_path / "p", key_type="ec-p256", not_before=start)
    inter = x509.load_pem_x509_certificate(ca.intermediate_cert.read_bytes())
    assert inter.not_valid_before_utc == start


def test_init_ca_refuses_to_overwrite(ca: pki.CAPaths) -> None:
    before = ca.root_key.read_bytes()
    with pytest.raises(UsageError, match="already holds a CA"):
        pki.init_ca(ca.directory, key_type="ec-p256")
    assert ca.root_key.read_bytes() == before


# --- issue -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["rsa2048", "rsa3072", "ec-p256"])
def test_issue_agency_binds_code_both_ways_and_verifies(ca: pki.CAPaths, key_type: str) -> None:
    issued = pki.issue(ca.directory, agency=AGENCY, key_type=key_type)

    assert issued.key == ca.directory / f"{AGENCY}.key.pem"
    assert issued.cert == ca.directory / f"{AGENCY}.cert.pem"
    assert _mode(issued.key) == 0o600
    leaf, inter = _chain(issued.cert)
    assert inter == x509.load_pem_x509_certificate(ca.intermediate_cert.read_bytes())
    assert leaf.serial_number == issued.serial > 0

    key = serialization.load_pem_private_key(issued.key.read_bytes(), password=None)
    assert issued.key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert key.public_key() == leaf.public_key()
    if key_type == "ec-p256":
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    else:
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == int(key_type[3:])

    serial_attr = leaf.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    assert [a.value for a in serial_attr] == [AGENCY]
    san = _ext(leaf, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"urn:qcvn102:{AGENCY}"]

    assert _ext(leaf, x509.BasicConstraints).value.ca is False
    usage = _ext(leaf, x509.KeyUsage).value
    assert usage.digital_signature and usage.content_commitment and not usage.key_cert_sign
    assert usage.key_encipherment is key_type.startswith("rsa")
    assert set(_ext(leaf, x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.EMAIL_PROTECTION,
    }
    _ext(leaf, x509.SubjectKeyIdentifier)
    _ext(leaf, x509.AuthorityKeyIdentifier)

    store = TrustStore.from_pem_files([ca.root_cert])
    chain = store.verify_chain(leaf, [inter], at=dt.datetime.now(dt.UTC))
    assert [c.subject for c in chain][1:] == [inter.subject, chain[-1].issuer]
    assert agency_code_of(leaf) == AgencyCode.parse(AGENCY)


def test_issue_agency_defaults_to_rsa2048(ca: pki.CAPaths) -> None:
    issued = pki.issue(ca.directory, agency="000.00.15.H51", days=10)
    leaf = _chain(issued.cert)[0]
    assert issued.key_type == "rsa2048"
    assert isinstance(leaf.public_key(), rsa.RSAPublicKey)
    assert issued.not_after - issued.not_before == dt.timedelta(days=10)


def test_issue_node_gets_tls_names_and_ecdsa(ca: pki.CAPaths) -> None:
    issued = pki.issue(ca.directory, node="h49-hub")
    leaf = _chain(issued.cert)[0]

    assert issued.key_type == "ec-p256" and issued.node == "h49-hub" and issued.agency is None
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    san = _ext(leaf, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:gateway-node:h49-hub"]
    assert san.get_values_for_type(x509.DNSName) == ["h49-hub", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert set(_ext(leaf, x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.SERVER_AUTH,
    }
    assert not _ext(leaf, x509.KeyUsage).value.key_encipherment
    assert leaf.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "h49-hub"
    assert node_name_of(leaf) == "h49-hub"
    assert agency_code_of(leaf) is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one"),
        ({"agency": AGENCY, "node": "n1"}, "exactly one"),
        ({"agency": "H49"}, "not a QCVN 102:2016 agency code"),
        ({"node": "H49-Hub"}, "not a node name"),
        ({"node": "-hub"}, "not a node name"),
        ({"node": "ca"}, "not a node name"),
        ({"node": "../x"}, "not a node name"),
        ({"agency": AGENCY, "key_type": "rsa1024"}, "unknown key type"),
        ({"agency": AGENCY, "days": 0}, "days must be a positive integer"),
    ],
)
def test_issue_refuses_bad_arguments(
    ca: pki.CAPaths, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(UsageError, match=match):
        pki.issue(ca.directory, **kwargs)  # type: ignore[arg-type]


def test_issue_refuses_to_overwrite_and_needs_a_ca(ca: pki.CAPaths, tmp_path: Path) -> None:
    pki.issue(ca.directory, node="n1")
    with pytest.raises(UsageError, match="already exists"):
        pki.issue(ca.directory, node="n1")
    with pytest.raises(UsageError, match="holds no CA"):
        pki.issue(tmp_path / "empty", node="n1")


# --- revoke ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"), [("42", 42), ("0x2a", 42), ("0X2A", 42), (" 0x2a ", 42), (7, 7)]
)
def test_parse_serial_accepts_decimal_and_hex(text: str | int, value: int) -> None:
    assert pki.parse_serial(text) == value


@pytest.mark.parametrize("text", ["", "0x", "2a", "12z", "-5", "0", "0x" + "f" * 41, "1.5", True])
def test_parse_serial_refuses_other_forms(text: str) -> None:
    with pytest.raises(UsageError):
        pki.parse_serial(text)


def test_revoke_adds_serial_to_intermediate_crl_and_bumps_number(ca: pki.CAPaths) -> None:
    issued = pki.issue(ca.directory, node="n1", days=5)
    path = pki.revoke(ca.directory, hex(issued.serial), reason="keyCompromise")

    assert path == ca.crl
    leaf_crl, root_crl = _crls(path)
    entry = leaf_crl.get_revoked_certificate_by_serial_number(issued.serial)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise
    assert len(root_crl) == 0
    for crl in (leaf_crl, root_crl):
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        assert number == 2
        assert crl.next_update_utc is not None
        assert crl.next_update_utc - crl.last_update_utc == dt.timedelta(days=7)

    state = json.loads((ca.directory / pki.STATE_FILE).read_text())
    assert state["revoked"][f"0x{issued.serial:x}"]["reason"] == "keyCompromise"

    # Revoking again keeps the first revocation time; the CRL is re-signed.
    pki.revoke(ca.directory, issued.serial)
    again = _crls(ca.crl)[0].get_revoked_certificate_by_serial_number(issued.serial)
    assert again is not None and again.revocation_date_utc == entry.revocation_date_utc


def test_revoke_intermediate_goes_on_root_crl(ca: pki.CAPaths) -> None:
    pki.revoke(ca.directory, str(ca.intermediate_serial), reason="cACompromise")
    leaf_crl, root_crl = _crls(ca.crl)
    assert len(leaf_crl) == 0
    assert root_crl.get_revoked_certificate_by_serial_number(ca.intermediate_serial) is not None


def test_revoke_refuses_root_unknown_serial_and_bad_reason(ca: pki.CAPaths) -> None:
    with pytest.raises(UsageError, match="root CA cannot be revoked"):
        pki.revoke(ca.directory, ca.root_serial)
    with pytest.raises(UsageError, match="no certificate with serial 0x1234"):
        pki.revoke(ca.directory, "0x1234")
    with pytest.raises(UsageError, match="not a certificate serial"):
        pki.revoke(ca.directory, "abc")
    issued = pki.issue(ca.directory, node="n1")
    with pytest.raises(UsageError, match="unknown revocation reason"):
        pki.revoke(ca.directory, issued.serial, reason="bored")
    with pytest.raises(UsageError, match="unknown revocation reason"):
        pki.revoke(ca.directory, issued.serial, reason="removeFromCRL")


def test_list_issued_and_refresh_crl(ca: pki.CAPaths) -> None:
    a = pki.issue(ca.directory, agency=AGENCY)
    n = pki.issue(ca.directory, node="n1")
    pki.revoke(ca.directory, n.serial, reason="superseded")
    records = {r.serial: r for r in pki.list_issued(ca.directory)}
    assert records[ca.intermediate_serial].kind == "intermediate"
    assert records[a.serial].name == AGENCY and records[a.serial].revoked_at is None
    assert records[n.serial].reason == "superseded" and records[n.serial].revoked_at

    pki.refresh_crl(ca.directory)
    leaf_crl = _crls(ca.crl)[0]
    assert leaf_crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 3
    assert leaf_crl.get_revoked_certificate_by_serial_number(n.serial) is not None


# --- CLI -------------------------------------------------------------------------------------


def test_cli_init_issue_revoke_list(tmp_path: Path) -> None:
    runner = CliRunner()
    directory = tmp_path / "cli-pki"

    result = runner.invoke(pki_cli, ["init", str(directory), "--key-type", "ec-p256"])
    assert result.exit_code == 0, result.output
    assert "ca.cert.pem" in result.stdout and "intermediate.key.pem" in result.stdout

    result = runner.invoke(pki_cli, ["issue", str(directory), "--agency", AGENCY])
    assert result.exit_code == 0, result.output
    assert AGENCY in result.stdout and "serial:" in result.stdout
    serial = next(
        line.split()[-1] for line in result.stdout.splitlines() if line.startswith("serial:")
    )

    result = runner.invoke(pki_cli, ["issue", str(directory), "--node", "h49-hub", "--days", "3"])
    assert result.exit_code == 0, result.output

    result = runner.invoke(pki_cli, ["revoke", str(directory), serial, "--reason", "superseded"])
    assert result.exit_code == 0, result.output
    assert "revoked:" in result.stdout and serial in result.stdout

    result = runner.invoke(pki_cli, ["list", str(directory)])
    assert result.exit_code == 0, result.output
    assert "REVOKED" in result.stdout and "h49-hub" in result.stdout

    result = runner.invoke(pki_cli, ["crl", str(directory)])
    assert result.exit_code == 0, result.output

    keys = sorted(directory.glob("*.key.pem"))
    assert len(keys) == 4
    for key in keys:
        assert _mode(key) == 0o600, key


def test_cli_outputs_never_contain_key_material(tmp_path: Path) -> None:
    runner = CliRunner()
    directory = tmp_path / "p"
    outputs = [
        runner.invoke(pki_cli, ["init", str(directory), "--key-type", "ec-p256"]),
        runner.invoke(pki_cli, ["issue", str(directory), "--agency", AGENCY]),
        runner.invoke(pki_cli, ["issue", str(directory), "--node", "n1"]),
        runner.invoke(pki_cli, ["list", str(directory)]),
    ]
    assert all(r.exit_code == 0 for r in outputs), [r.output for r in outputs]
    text = "".join(r.stdout + r.stderr for r in outputs)
    assert "PRIVATE KEY" not in text
    for key in directory.glob("*.key.pem"):
        body = [line for line in key.read_text().splitlines() if "-----" not in line]
        assert not any(line in text for line in body), key


@pytest.mark.parametrize(
    "args",
    [
        ["issue", "{d}", "--agency", "bad"],
        ["issue", "{d}"],
        ["issue", "{d}", "--agency", AGENCY, "--node", "n1"],
        ["revoke", "{d}", "zz"],
        ["revoke", "{d}", "0x99"],
        ["init", "{d}"],
        ["list", "{d}/missing"],
    ],
)
def test_cli_usage_errors_exit_2_with_code(tmp_path: Path, args: list[str]) -> None:
    directory = tmp_path / "p"
    pki.init_ca(directory, key_type="ec-p256")
    result = CliRunner().invoke(pki_cli, [a.format(d=directory) for a in args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: USAGE_ERROR: ")
    assert result.stdout == ""
