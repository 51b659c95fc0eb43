"""The development PKI: a root CA, an intermediate CA, agency and node certificates, CRLs.

Everything the gateway's trust model needs to run without the government CA: the agency code
(or node name) is bound into each leaf the same two ways a production certificate binds it
(subject ``serialNumber`` and a SAN URI), and revocation works through real CRLs.

Layout of a PKI directory::

    ca.cert.pem              root CA (self-signed): THE trust anchor
    ca.key.pem               root key (0600)
    intermediate.cert.pem    intermediate CA (pathlen 0), issues every leaf
    intermediate.key.pem     intermediate key (0600)
    crl.pem                  the intermediate's CRL (leaves), then the root's CRL (intermediate)
    pki-state.json           CRL number, issued and revoked serials
    <CODE|NAME>.cert.pem     leaf certificate, then the intermediate
    <CODE|NAME>.key.pem      leaf key, PKCS#8 unencrypted (0600)

Reading and writing those files (the state file, CRLs, keys) is :mod:`gateway.dev.pki_files`.

Usage::

    ca = init_ca(Path("demo-pki"))
    sender = issue(ca.directory, agency="000.00.00.H49")
    node = issue(ca.directory, node="h49-hub")
    revoke(ca.directory, sender.serial, reason="keyCompromise")

.. warning:: This is a development CA: its keys sit unencrypted on disk, and it is not safe
   for concurrent use on one directory. Never point a
   production node's trust anchors at it, and never commit ``*.key.pem`` (``.gitignore``
   ignores them).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.agency import AgencyCode
from gateway.dev.pki_files import CRL_FILE as CRL_FILE
from gateway.dev.pki_files import CRL_LIFETIME as CRL_LIFETIME
from gateway.dev.pki_files import INTERMEDIATE_CERT as INTERMEDIATE_CERT
from gateway.dev.pki_files import INTERMEDIATE_KEY as INTERMEDIATE_KEY
from gateway.dev.pki_files import ROOT_CERT as ROOT_CERT
from gateway.dev.pki_files import ROOT_KEY as ROOT_KEY
from gateway.dev.pki_files import (
    SIGNING_HASH,
    PrivateKey,
    load_pair,
    read_state,
    write_crls,
    write_key,
    write_public,
    write_state,
)
from gateway.dev.pki_files import STATE_FILE as STATE_FILE
from gateway.errors import AgencyCodeError, UsageError
from gateway.trust.binding import AGENCY_URN_PREFIX, NODE_URN_PREFIX, rfc4514_name

# The file names and CRL_LIFETIME live in gateway.dev.pki_files now; the ``X as X`` imports above
# keep them importable from here, as they were before the split.
__all__ = [
    "AGENCY_URN_PREFIX",
    "KEY_TYPES",
    "NODE_URN_PREFIX",
    "CAPaths",
    "IssuedPaths",
    "IssuedRecord",
    "init_ca",
    "issue",
    "list_issued",
    "parse_serial",
    "refresh_crl",
    "revoke",
]

#: key types :func:`issue` and :func:`init_ca` accept
KEY_TYPES: Final = ("rsa2048", "rsa3072", "ec-p256")

# Leaves start a little in the past so a peer whose clock lags still accepts them. CAs start a
# year back so tests can issue leaves "in the past" (not_before=...) and verify signatures at
# an earlier signing time: a real CA also predates every certificate it issues.
_CA_BACKDATE: Final = dt.timedelta(days=365)
_LEAF_BACKDATE: Final = dt.timedelta(minutes=5)
_NODE_NAME: Final = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_SERIAL: Final = re.compile(r"^(?:0[xX][0-9a-fA-F]+|[0-9]+)$")
_RESERVED_NAMES: Final = frozenset({"ca", "intermediate", "crl"})


@dataclass(frozen=True, kw_only=True, slots=True)
class CAPaths:
    """What :func:`init_ca` wrote."""

    #: the PKI directory
    directory: Path
    #: root certificate: the trust anchor to configure on every node
    root_cert: Path
    root_key: Path
    #: intermediate certificate (verifiers find it in each leaf's chain file)
    intermediate_cert: Path
    intermediate_key: Path
    #: both CRLs, PEM, concatenated
    crl: Path
    root_serial: int
    intermediate_serial: int


@dataclass(frozen=True, kw_only=True, slots=True)
class IssuedPaths:
    """What :func:`issue` wrote."""

    #: the leaf's private key, PKCS#8 PEM, mode 0600
    key: Path
    #: the leaf certificate followed by the intermediate, PEM
    cert: Path
    serial: int
    #: RFC 4514 subject
    subject: str
    #: agency code bound into the certificate (None for a node)
    agency: str | None
    #: node name bound into the certificate (None for an agency)
    node: str | None
    key_type: str
    not_before: dt.datetime
    not_after: dt.datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class IssuedRecord:
    """One certificate in the PKI's records, for ``gateway pki list``."""

    serial: int
    #: ``agency``, ``node`` or ``intermediate``
    kind: str
    #: agency code or node name (the file stem); the CA's subject for the intermediate
    name: str
    subject: str
    not_after: str
    #: ISO 8601 revocation time, None while the certificate is not revoked
    revoked_at: str | None = None
    reason: str | None = None


# --- public operations -----------------------------------------------------------------------


def init_ca(
    directory: Path,
    *,
    days: int = 3650,
    common_name_prefix: str = "Gateway Dev",
    key_type: str = "rsa3072",
    not_before: dt.datetime | None = None,
) -> CAPaths:
    """Create a root CA, an intermediate CA under it and empty CRLs in ``directory``.

    Usage: ``ca = init_ca(Path("demo-pki"))``; configure ``ca.root_cert`` as the trust anchor.
    Refuses (:class:`UsageError`) when the directory already holds a CA.

    Both CAs are valid from ``not_before`` (default: a year ago, so signing times in the past
    can be tested) until ``days`` days from now. ``key_type`` is the CAs' key type
    (``rsa3072`` by default; ``ec-p256`` makes fast test CAs).
    """
    _check_days(days)
    _check_key_type(key_type)
    directory = Path(directory)
    names = (ROOT_CERT, ROOT_KEY, INTERMEDIATE_CERT, INTERMEDIATE_KEY, CRL_FILE, STATE_FILE)
    existing = [str(directory / n) for n in names if (directory / n).exists()]
    if existing:
        raise UsageError(
            f"{directory} already holds a CA; refusing to overwrite it",
            detail={"directory": str(directory), "existing": existing},
        )
    now = _now()
    start = _utc(not_before) if not_before is not None else now - _CA_BACKDATE
    end = now + dt.timedelta(days=days)
    if start >= end:
        raise UsageError("not_before must be earlier than the end of the CA's validity")
    directory.mkdir(parents=True, exist_ok=True)

    root_key = _generate_key(key_type)
    root_name = _name(common_name_prefix, f"{common_name_prefix} Root CA")
    root = (
        _builder(root_name, root_name, root_key.public_key(), start, end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(_ski(root_key), critical=False)
        .add_extension(_aki(root_key), critical=False)
        .sign(root_key, SIGNING_HASH)
    )

    inter_key = _generate_key(key_type)
    inter_name = _name(common_name_prefix, f"{common_name_prefix} Intermediate CA")
    inter = (
        _builder(inter_name, root_name, inter_key.public_key(), start, end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(_ski(inter_key), critical=False)
        .add_extension(_aki(root_key), critical=False)
        .sign(root_key, SIGNING_HASH)
    )

    paths = CAPaths(
        directory=directory,
        root_cert=directory / ROOT_CERT,
        root_key=directory / ROOT_KEY,
        intermediate_cert=directory / INTERMEDIATE_CERT,
        intermediate_key=directory / INTERMEDIATE_KEY,
        crl=directory / CRL_FILE,
        root_serial=root.serial_number,
        intermediate_serial=inter.serial_number,
    )
    write_key(paths.root_key, root_key)
    write_key(paths.intermediate_key, inter_key)
    write_public(paths.root_cert, root.public_bytes(serialization.Encoding.PEM))
    write_public(paths.intermediate_cert, inter.public_bytes(serialization.Encoding.PEM))
    state: dict[str, Any] = {
        "crl_number": 0,
        "root_serial": _hex(root.serial_number),
        "intermediate_serial": _hex(inter.serial_number),
        "issued": {},
        "revoked": {},
    }
    write_crls(directory, state, root=root, root_key=root_key, inter=inter, inter_key=inter_key)
    return paths


def issue(
    directory: Path,
    *,
    agency: str | None = None,
    node: str | None = None,
    key_type: str | None = None,
    days: int = 825,
    common_name: str | None = None,
    not_before: dt.datetime | None = None,
) -> IssuedPaths:
    """Issue an agency or node certificate from the intermediate CA in ``directory``.

    Usage: ``issue(Path("demo-pki"), agency="000.00.00.H49")`` writes
    ``000.00.00.H49.key.pem`` and ``000.00.00.H49.cert.pem`` (leaf, then intermediate).

    Exactly one of ``agency`` (a QCVN 102:2016 code) or ``node`` (``[a-z0-9-]+``) is given.
    The default key type is ``rsa2048`` for agencies (what DMS signing tools expect) and
    ``ec-p256`` for nodes (they sign every hop and receipt; ECDSA signs ~20x faster).
    ``not_before`` (default: now minus five minutes) exists so tests can make certificates
    that are not valid yet. The leaf may outlive the intermediate; its chain then stops
    verifying when the intermediate expires.
    """
    if (agency is None) == (node is None):
        raise UsageError("give exactly one of an agency code or a node name")
    _check_days(days)
    directory = Path(directory)
    if agency is not None:
        try:
            code = str(AgencyCode.parse(agency))
        except AgencyCodeError as exc:
            raise UsageError(exc.message, detail=exc.detail) from exc
        stem, uri = code, AGENCY_URN_PREFIX + code
        key_type = key_type or "rsa2048"
        default_cn = f"Agency {code}"
    else:
        assert node is not None
        if not _NODE_NAME.match(node) or node in _RESERVED_NAMES:
            raise UsageError(
                f"{node!r} is not a node name (lower-case letters, digits and inner hyphens, "
                "at most 63 characters; not ca, intermediate or crl)",
                detail={"node": node},
            )
        stem, uri = node, NODE_URN_PREFIX + node
        key_type = key_type or "ec-p256"
        default_cn = f"Gateway node {node}"
    _check_key_type(key_type)
    key_path, cert_path = directory / f"{stem}.key.pem", directory / f"{stem}.cert.pem"
    for path in (key_path, cert_path):
        if path.exists():
            raise UsageError(
                f"{path} already exists; refusing to overwrite it", detail={"path": str(path)}
            )

    inter, inter_key = load_pair(directory, INTERMEDIATE_CERT, INTERMEDIATE_KEY)
    state = read_state(directory)
    org = _organization_of(inter)
    attrs = [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name or default_cn),
        x509.NameAttribute(NameOID.SERIAL_NUMBER, stem),
    ]
    subject = x509.Name(attrs)
    san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    if node is not None:
        san += [
            x509.DNSName(node),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        eku = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    else:
        eku = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION]

    key = _generate_key(key_type)
    leaf_usage = _key_usage(
        digital_signature=True,
        content_commitment=True,
        key_encipherment=isinstance(key, rsa.RSAPrivateKey),
    )
    start = _utc(not_before) if not_before is not None else _now() - _LEAF_BACKDATE
    cert = (
        _builder(subject, inter.subject, key.public_key(), start, start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(leaf_usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(_ski(key), critical=False)
        .add_extension(_aki(inter_key), critical=False)
        .sign(inter_key, SIGNING_HASH)
    )

    write_key(key_path, key)
    chain_pem = cert.public_bytes(serialization.Encoding.PEM) + inter.public_bytes(
        serialization.Encoding.PEM
    )
    write_public(cert_path, chain_pem)
    state["issued"][_hex(cert.serial_number)] = {
        "name": stem,
        "kind": "agency" if agency is not None else "node",
        "subject": rfc4514_name(subject),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }
    write_state(directory, state)
    return IssuedPaths(
        key=key_path,
        cert=cert_path,
        serial=cert.serial_number,
        subject=rfc4514_name(subject),
        agency=stem if agency is not None else None,
        node=stem if node is not None else None,
        key_type=key_type,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def revoke(
    directory: Path,
    serial: int | str,
    *,
    reason: x509.ReasonFlags | str = x509.ReasonFlags.unspecified,
) -> Path:
    """Revoke a certificate issued from ``directory`` and rewrite both CRLs; return ``crl.pem``.

    Usage: ``revoke(Path("demo-pki"), "0x1f3a...", reason="keyCompromise")``.

    ``serial`` is an int, a decimal string or a ``0x`` hex string. A leaf's serial goes on the
    intermediate's CRL; the intermediate's serial goes on the root's CRL, which revokes every
    leaf under it. Revoking twice keeps the first revocation time. The root cannot be revoked
    (remove it from the trust anchors instead); serials this CA never issued are refused.
    """
    number = parse_serial(serial)
    flag = _reason(reason)
    directory = Path(directory)
    root, root_key = load_pair(directory, ROOT_CERT, ROOT_KEY)
    inter, inter_key = load_pair(directory, INTERMEDIATE_CERT, INTERMEDIATE_KEY)
    state = read_state(directory)
    key = _hex(number)
    if number == root.serial_number:
        raise UsageError(
            "the root CA cannot be revoked: remove it from the trust anchors",
            detail={"serial": key},
        )
    if number != inter.serial_number and key not in state["issued"]:
        raise UsageError(
            f"no certificate with serial {key} was issued from {directory}",
            detail={"serial": key, "directory": str(directory)},
        )
    if key not in state["revoked"]:
        state["revoked"][key] = {
            "revoked_at": _now().replace(microsecond=0).isoformat(),
            "reason": flag.value,
            "issuer": "root" if number == inter.serial_number else "intermediate",
        }
    return write_crls(
        directory, state, root=root, root_key=root_key, inter=inter, inter_key=inter_key
    )


def refresh_crl(directory: Path) -> Path:
    """Re-sign both CRLs (new CRL number, next update in 7 days) without revoking anything.

    Usage: ``refresh_crl(Path("demo-pki"))`` from a weekly job, so verifiers never see a stale
    CRL.
    """
    directory = Path(directory)
    root, root_key = load_pair(directory, ROOT_CERT, ROOT_KEY)
    inter, inter_key = load_pair(directory, INTERMEDIATE_CERT, INTERMEDIATE_KEY)
    state = read_state(directory)
    return write_crls(
        directory, state, root=root, root_key=root_key, inter=inter, inter_key=inter_key
    )


def list_issued(directory: Path) -> list[IssuedRecord]:
    """Every certificate issued from ``directory`` (intermediate first), with revocations.

    Usage: ``[r.name for r in list_issued(Path("demo-pki")) if r.revoked_at is None]``.
    """
    directory = Path(directory)
    state = read_state(directory)
    try:
        inter = x509.load_pem_x509_certificate((directory / INTERMEDIATE_CERT).read_bytes())
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"cannot read {directory / INTERMEDIATE_CERT}",
            detail={"path": str(directory / INTERMEDIATE_CERT), "reason": type(exc).__name__},
        ) from None
    rows = [
        (
            _hex(inter.serial_number),
            "intermediate",
            rfc4514_name(inter.subject),
            rfc4514_name(inter.subject),
            inter.not_valid_after_utc.isoformat(),
        )
    ]
    for serial_hex, info in state["issued"].items():
        rows.append((serial_hex, info["kind"], info["name"], info["subject"], info["not_after"]))
    out = []
    for serial_hex, kind, name, subject, not_after in rows:
        revoked = state["revoked"].get(serial_hex) or {}
        out.append(
            IssuedRecord(
                serial=int(serial_hex, 16),
                kind=kind,
                name=name,
                subject=subject,
                not_after=not_after,
                revoked_at=revoked.get("revoked_at"),
                reason=revoked.get("reason"),
            )
        )
    return out


def parse_serial(serial: int | str) -> int:
    """A certificate serial from an int, a decimal string or a ``0x`` hex string.

    Usage: ``parse_serial("0x2a") == 42``; anything else raises :class:`UsageError`.
    """
    if isinstance(serial, bool):
        raise UsageError(f"{serial!r} is not a certificate serial number")
    if isinstance(serial, int):
        number = serial
    elif isinstance(serial, str) and _SERIAL.match(serial.strip()):
        text = serial.strip()
        number = int(text, 16) if text[:2].lower() == "0x" else int(text, 10)
    else:
        raise UsageError(
            f"{serial!r} is not a certificate serial number (decimal, or hex with 0x)",
            detail={"serial": str(serial)},
        )
    if number <= 0 or number.bit_length() > 159:
        raise UsageError(
            f"{serial!r} is out of range for a certificate serial number",
            detail={"serial": str(serial)},
        )
    return number


# --- building blocks -------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _utc(when: dt.datetime) -> dt.datetime:
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def _hex(number: int) -> str:
    return f"0x{number:x}"


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days <= 0:
        raise UsageError(f"days must be a positive integer, not {days!r}")


def _check_key_type(key_type: str) -> None:
    if key_type not in KEY_TYPES:
        raise UsageError(
            f"unknown key type {key_type!r} (choose from {', '.join(KEY_TYPES)})",
            detail={"key_type": key_type},
        )


def _generate_key(key_type: str) -> PrivateKey:
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))


def _name(org: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _organization_of(cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(values[0].value) if values else "Gateway Dev"


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    start: dt.datetime,
    end: dt.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )


def _key_usage(**asserted: bool) -> x509.KeyUsage:
    flags = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    flags.update(asserted)
    return x509.KeyUsage(**flags)


def _ski(key: PrivateKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def _aki(issuer_key: PrivateKey) -> x509.AuthorityKeyIdentifier:
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())


def _reason(reason: x509.ReasonFlags | str) -> x509.ReasonFlags:
    if isinstance(reason, x509.ReasonFlags):
        return reason
    for flag in x509.ReasonFlags:
        if reason in (flag.value, flag.name):
            if flag is x509.ReasonFlags.remove_from_crl:
                break
            return flag
    choices = ", ".join(
        f.value for f in x509.ReasonFlags if f is not x509.ReasonFlags.remove_from_crl
    )
    raise UsageError(
        f"unknown revocation reason {reason!r} (choose from {choices})",
        detail={"reason": str(reason)},
    )
