"""Identity bound in a certificate: the agency code or gateway node name a certificate speaks for.

A certificate binds an agency code in its SAN URIs (``urn:qcvn102:CODE``) and/or its subject
``serialNumber``, and a gateway node name in a SAN URI (``urn:gateway-node:NAME``). These
functions only READ the binding; they do not say whether the certificate is trusted -- verify
its chain with :class:`gateway.trust.store.TrustStore` first. :mod:`gateway.trust.store` re-exports
every public name here.

Usage::

    code = agency_code_of(leaf)     # AgencyCode('000.00.00.H49') or None
    node = node_name_of(peer_cert)  # 'h49-hub' or None
    json.dumps(describe(leaf))
"""

from __future__ import annotations

import functools
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from gateway.agency import AgencyCode
from gateway.errors import AgencyCodeError, CertificateMalformed, SignerUnbound

__all__ = [
    "AGENCY_URN_PREFIX",
    "NODE_URN_PREFIX",
    "agency_code_of",
    "describe",
    "extension_value",
    "node_name_of",
    "rfc4514_name",
    "serial_hex",
]

#: SAN URI prefix binding an agency code (same value as :mod:`gateway.dev.pki` writes)
AGENCY_URN_PREFIX: Final = "urn:qcvn102:"
#: SAN URI prefix binding a gateway node name
NODE_URN_PREFIX: Final = "urn:gateway-node:"

_ATTR_NAMES: Final = {NameOID.SERIAL_NUMBER: "serialNumber"}


@functools.lru_cache(maxsize=1024)  # certificates are immutable and hashable
def agency_code_of(cert: x509.Certificate) -> AgencyCode | None:
    """The agency code a certificate binds, or None when it binds none.

    Usage: ``agency_code_of(leaf) == AgencyCode.parse(from_organ_id)``.

    Read from SAN URIs ``urn:qcvn102:CODE`` and from subject ``serialNumber`` attributes; a
    verifier accepts either. Only values that parse as an :class:`AgencyCode` count (a
    serialNumber such as ``MST:0101234567`` is simply not an agency code). A certificate that
    binds two DIFFERENT codes raises :class:`SignerUnbound`: it does not bind one agency, and
    guessing which one would let a CA mistake speak for another agency.

    A value that is a code only after trimming or case folding (``"000.00.00.H49\u00a0"``,
    ``" 000.00.00.h49"``) raises :class:`AgencyCodeError`: the certificate claims a code in a
    form the gateway refuses in a package too, and reading it as "no code" would hide that.
    """
    codes: dict[str, list[str]] = {}
    found = [(value, "subjectAltName URI") for value in _uris_with_prefix(cert, AGENCY_URN_PREFIX)]
    for attr in cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER):
        found.append((attr.value if isinstance(attr.value, str) else "", "subject serialNumber"))
    for value, where in found:
        if AgencyCode.is_valid(value):
            codes.setdefault(value, []).append(where)
        elif AgencyCode.is_near_miss(value):
            subject = rfc4514_name(cert.subject)
            raise AgencyCodeError(
                f"{subject} binds {value[:40]!r} in its {where}: not exactly an agency code "
                "(whitespace, case or compatibility characters around or in it)",
                detail={"subject": subject, "where": where, "value": value[:40]},
            )
    if len(codes) > 1:
        raise SignerUnbound(
            f"{rfc4514_name(cert.subject)} binds more than one agency code: "
            f"{', '.join(sorted(codes))}",
            detail={"subject": rfc4514_name(cert.subject), "codes": codes},
        )
    return AgencyCode.parse(next(iter(codes))) if codes else None


def node_name_of(cert: x509.Certificate) -> str | None:
    """The gateway node name a certificate binds (SAN URI ``urn:gateway-node:NAME``), or None.

    Usage: ``node_name_of(peer_cert) == "h49-hub"``. Two different names raise
    :class:`SignerUnbound`.
    """
    names = _node_names(cert)
    if len(names) > 1:
        raise SignerUnbound(
            f"{rfc4514_name(cert.subject)} binds more than one node name: {', '.join(names)}",
            detail={"subject": rfc4514_name(cert.subject), "nodes": names},
        )
    return names[0] if names and names[0] else None


@functools.lru_cache(maxsize=512)
def _node_names(cert: x509.Certificate) -> tuple[str, ...]:
    return tuple(sorted(set(_uris_with_prefix(cert, NODE_URN_PREFIX))))


def describe(cert: x509.Certificate) -> dict[str, Any]:
    """A JSON-ready summary of a certificate for reports and evidence bundles.

    Usage: ``json.dumps(describe(leaf))``. Never raises on an odd binding: a certificate
    binding two codes, or a code in a refused form, is described with ``agency_code: None``
    and ``binding_error``.
    """
    return dict(_describe(cert))


@functools.lru_cache(maxsize=512)
def _describe(cert: x509.Certificate) -> dict[str, Any]:
    out: dict[str, Any] = {
        "subject": rfc4514_name(cert.subject),
        "issuer": rfc4514_name(cert.issuer),
        "serial": serial_hex(cert.serial_number),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
    }
    try:
        code = agency_code_of(cert)
        out["agency_code"] = str(code) if code is not None else None
    except (SignerUnbound, AgencyCodeError) as exc:
        out["agency_code"] = None
        out["binding_error"] = exc.message
    try:
        out["node"] = node_name_of(cert)
    except SignerUnbound as exc:
        out["node"] = None
        out["binding_error"] = exc.message
    return out


# --- helpers ---------------------------------------------------------------------------------


def rfc4514_name(name: x509.Name) -> str:
    """``name`` as an RFC 4514 string, spelling serialNumber out instead of ``2.5.4.5``.

    Usage: ``rfc4514_name(cert.subject)`` -> ``'serialNumber=000.00.00.H49,CN=...,C=VN'``.
    """
    return name.rfc4514_string(_ATTR_NAMES)


def serial_hex(number: int) -> str:
    """A certificate serial as reports show it: lower-case hex with ``0x``.

    Usage: ``serial_hex(cert.serial_number)`` -> ``'0x5fa1569b...'``.
    """
    return f"0x{number:x}"


def extension_value(cert: x509.Certificate, kind: type[Any]) -> Any:
    """The value of ``cert``'s extension of class ``kind``, or None when it has none.

    Usage: ``extension_value(cert, x509.KeyUsage)``. An undecodable extension block raises
    :class:`CertificateMalformed` naming the subject.
    """
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:
        raise CertificateMalformed(
            f"cannot decode the extensions of {rfc4514_name(cert.subject)}: {exc}",
            detail={"subject": rfc4514_name(cert.subject), "reason": str(exc)},
        ) from None


def _uris_with_prefix(cert: x509.Certificate, prefix: str) -> list[str]:
    san = extension_value(cert, x509.SubjectAlternativeName)
    if san is None:
        return []
    out: list[str] = []
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        # RFC 8141: the "urn" scheme and the namespace identifier are case-insensitive.
        if uri[: len(prefix)].lower() == prefix:
            out.append(uri[len(prefix) :])
    return out
