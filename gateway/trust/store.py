"""The trust store: chain building to configured anchors, CRL revocation, agency-code binding.

Trust anchors, known intermediates and CRLs are loaded ONCE and kept as certificate objects:
rereading PEM files per verification costs milliseconds per document (DESIGN.md section 6).
Reading the identity a certificate binds (``agency_code_of``, ``node_name_of``, ``describe``,
``rfc4514_name``) lives in :mod:`gateway.trust.binding` and is re-exported here.

Usage::

    store = TrustStore.from_pem_files([Path("certs/ca.cert.pem")], crls=[Path("certs/crl.pem")])
    chain = store.verify_chain(leaf, untrusted=extra_certs, at=signing_time)
    store.check_revocation(chain, at=signing_time)
    code = agency_code_of(leaf)     # AgencyCode('000.00.00.H49') or None

Certificate profile accepted (the extension policies, see ``EE_POLICY`` and ``CA_POLICY``):
document-signing certificates from real CAs are not Web PKI server certificates, so the
Web PKI defaults of ``cryptography.x509.verification`` are relaxed where such certificates
legitimately differ, and kept where they protect us:

* end entity: no SAN required (the agency code may sit in the subject serialNumber only), no
  AKI required, EKU optional -- but when present it must allow client authentication, e-mail
  protection / document signing (RFC 9336, Microsoft, Adobe) or anyExtendedKeyUsage (a
  code-signing-only or server-only certificate cannot sign documents); keyUsage optional, but
  when present it must allow digitalSignature or nonRepudiation and must not allow
  keyCertSign;
* **a CA certificate is never accepted as the signer** (``basicConstraints cA=TRUE`` in the
  end entity is refused): a CA key signs certificates, not documents, and accepting it would
  let any sub-CA impersonate every agency below it;
* CA: basicConstraints must be present with cA=TRUE (critical or not: older national CAs mark
  it non-critical), keyUsage optional but, when present, must allow keyCertSign; an AKI may
  carry authorityCertIssuer/serial (OpenSSL and ADCS write them); EKU, when present, must
  allow one of the purposes above.
* kept from ``cryptography``: chain to a configured anchor, signatures, validity at ``at``,
  pathLenConstraint, SHA-256/384/512 signatures only (SHA-1-signed certificates are refused),
  unknown critical extensions refused;
* **the key policy** (:mod:`gateway.trust.keypolicy`) on every certificate of the chain, leaf,
  intermediates and anchor alike: RSA 2048..16384 bits, EC on P-256 or P-384, anything else
  ``CERT_KEY_WEAK``. ``cryptography`` checks only the keys that verify a certificate's
  signature (an issuer's), never the leaf's own key: a leaf with a 1024-bit RSA or a P-521
  key chained cleanly before this check.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from gateway.errors import (
    CertificateMalformed,
    CertificateNotValidAtSigning,
    CertificateRevoked,
    CertificateUntrusted,
    CRLInvalid,
    UsageError,
)
from gateway.trust.binding import (
    AGENCY_URN_PREFIX,
    NODE_URN_PREFIX,
    agency_code_of,
    describe,
    extension_value,
    node_name_of,
    rfc4514_name,
    serial_hex,
)
from gateway.trust.keypolicy import check_certificate_key, check_chain_keys

__all__ = [
    "AGENCY_URN_PREFIX",
    "CA_POLICY",
    "EE_POLICY",
    "NODE_URN_PREFIX",
    "SIGNING_PURPOSES",
    "RevocationResult",
    "TrustStore",
    "agency_code_of",
    "describe",
    "load_certificates",
    "node_name_of",
    "rfc4514_name",
]

#: EKU purposes that allow a certificate to sign edXML documents, hop records and receipts
SIGNING_PURPOSES: Final = frozenset(
    {
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.EMAIL_PROTECTION,
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
        x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36"),  # id-kp-documentSigning (RFC 9336)
        x509.ObjectIdentifier("1.3.6.1.4.1.311.10.3.12"),  # Microsoft document signing
        x509.ObjectIdentifier("1.2.840.113583.1.1.5"),  # Adobe Authentic Documents Trust
    }
)

# Revocation reasons that make every signature by the key suspect, whatever time it claims.
_COMPROMISE_REASONS: Final = frozenset(
    {
        x509.ReasonFlags.unspecified,
        x509.ReasonFlags.key_compromise,
        x509.ReasonFlags.ca_compromise,
        x509.ReasonFlags.aa_compromise,
        x509.ReasonFlags.certificate_hold,
    }
)
_PEM_CRL: Final = re.compile(rb"-----BEGIN X509 CRL-----\s.*?-----END X509 CRL-----", re.DOTALL)


# --- extension policies ----------------------------------------------------------------------


def _check_eku(policy: Policy, cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None) -> None:
    if eku is not None and not SIGNING_PURPOSES.intersection(eku):
        names = ", ".join(oid.dotted_string for oid in eku)
        raise ValueError(f"extendedKeyUsage ({names}) allows no document-signing purpose")


def _check_ee_key_usage(
    policy: Policy, cert: x509.Certificate, usage: x509.KeyUsage | None
) -> None:
    if usage is None:
        return
    if usage.key_cert_sign:
        raise ValueError("keyUsage keyCertSign is asserted in an end-entity certificate")
    if not (usage.digital_signature or usage.content_commitment):
        raise ValueError("keyUsage allows neither digitalSignature nor nonRepudiation")


def _check_ca_key_usage(
    policy: Policy, cert: x509.Certificate, usage: x509.KeyUsage | None
) -> None:
    if usage is not None and not usage.key_cert_sign:
        raise ValueError("keyUsage keyCertSign is not asserted in a CA certificate")


def _check_ca_basic_constraints(
    policy: Policy, cert: x509.Certificate, constraints: x509.BasicConstraints
) -> None:
    if not constraints.ca:
        raise ValueError("basicConstraints cA is not asserted in a CA certificate")


#: End-entity policy: Web PKI defaults (which refuse cA=TRUE leaves) relaxed for signing certs.
EE_POLICY: Final = (
    ExtensionPolicy.webpki_defaults_ee()
    .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
    .may_be_present(x509.AuthorityKeyIdentifier, Criticality.NON_CRITICAL, None)
    .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _check_eku)
    .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _check_ee_key_usage)
)

#: CA policy: cA=TRUE required; keyUsage, AKI form and basicConstraints criticality relaxed.
CA_POLICY: Final = (
    ExtensionPolicy.webpki_defaults_ca()
    .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, _check_ca_basic_constraints)
    .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _check_ca_key_usage)
    .may_be_present(x509.AuthorityKeyIdentifier, Criticality.NON_CRITICAL, None)
    .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _check_eku)
)


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RevocationResult:
    """What :meth:`TrustStore.check_revocation` found (a revoked certificate raises instead)."""

    #: True only when every certificate below the anchor was checked against a CRL
    checked: bool
    #: one line per certificate: what it was checked against, or why it was not
    details: list[str] = field(default_factory=list)
    #: things an auditor should see: stale CRLs, revocations dated after ``at``
    warnings: list[str] = field(default_factory=list)


_FAR_FUTURE = dt.datetime.max.replace(tzinfo=dt.UTC)


# --- the store -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrustStore:
    """Trust anchors, known intermediates and CRLs, parsed once and kept in memory.

    Usage: ``TrustStore.from_pem_files([anchor_path], crls=[crl_path])``.

    .. warning:: Anchors are trusted unconditionally: anything that chains to one is believed.
       Never add a development CA (``gateway pki init``) to a production node.
    """

    #: certificates trusted a priori (roots, or a pinned sub-CA)
    anchors: tuple[x509.Certificate, ...]
    #: CA certificates offered to chain building (not trusted by themselves)
    intermediates: tuple[x509.Certificate, ...] = ()
    #: certificate revocation lists (complete CRLs; delta CRLs are skipped)
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    _store: Store = field(init=False, repr=False, compare=False)
    _crls_by_issuer: dict[x509.Name, tuple[x509.CertificateRevocationList, ...]] = field(
        init=False, repr=False, compare=False
    )
    #: CRLs whose signature verified under an issuing certificate, by that certificate: the
    #: CRLs never change inside a store, so each signature is checked once, not per package
    _signed_crls: dict[x509.Certificate, list[x509.CertificateRevocationList]] = field(
        init=False, repr=False, compare=False
    )
    #: clean results by chain, with the time they stay true until (the earliest next update
    #: of the CRLs used): the CRLs of a store never change, so neither does the answer
    _clean: dict[tuple[x509.Certificate, ...], tuple[RevocationResult, dt.datetime]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not self.anchors:
            raise UsageError("a trust store needs at least one trust anchor")
        object.__setattr__(self, "_store", Store(list(self.anchors)))
        object.__setattr__(self, "_signed_crls", {})
        object.__setattr__(self, "_clean", {})
        index: dict[x509.Name, list[x509.CertificateRevocationList]] = {}
        for crl in self.crls:
            index.setdefault(crl.issuer, []).append(crl)
        object.__setattr__(
            self, "_crls_by_issuer", {name: tuple(crls) for name, crls in index.items()}
        )

    @classmethod
    def from_certificates(
        cls,
        anchors: Iterable[x509.Certificate],
        crls: Iterable[x509.CertificateRevocationList] = (),
        intermediates: Iterable[x509.Certificate] = (),
    ) -> TrustStore:
        """A store from already-parsed objects (tests, or settings that hold PEM text).

        Usage: ``TrustStore.from_certificates([root], crls=[crl])``.
        """
        return cls(anchors=tuple(anchors), intermediates=tuple(intermediates), crls=tuple(crls))

    @classmethod
    def from_pem_files(
        cls,
        anchors: Sequence[Path],
        crls: Sequence[Path] = (),
        intermediates: Sequence[Path] = (),
    ) -> TrustStore:
        """Load anchors, CRLs and intermediates from files (PEM, several per file; or DER).

        Usage: ``TrustStore.from_pem_files([Path("ca.cert.pem")], crls=[Path("crl.pem")])``.
        An unreadable or malformed certificate file raises :class:`UsageError` naming it; a
        malformed CRL file raises :class:`CRLInvalid` naming it.
        """
        return cls(
            anchors=tuple(c for path in anchors for c in load_certificates(Path(path))),
            intermediates=tuple(c for path in intermediates for c in load_certificates(Path(path))),
            crls=tuple(crl for path in crls for crl in _load_crls(Path(path))),
        )

    # --- chain ---------------------------------------------------------------------------

    def verify_chain(
        self,
        leaf: x509.Certificate,
        untrusted: Sequence[x509.Certificate] = (),
        *,
        at: dt.datetime,
    ) -> list[x509.Certificate]:
        """Build and verify a chain from ``leaf`` to an anchor, valid at time ``at``.

        Usage: ``chain = store.verify_chain(leaf, certs_from_keyinfo, at=signed_at)``; the
        result runs leaf first, anchor last. ``untrusted`` certificates (for instance those
        sent in the signature's KeyInfo) only help build the path; the store's own
        intermediates are always offered too. A naive ``at`` is taken as UTC.

        Raises :class:`CertificateKeyWeak` when a certificate of the path has a key outside
        :mod:`gateway.trust.keypolicy` (``detail["role"]`` says which one),
        :class:`CertificateNotValidAtSigning` when a certificate on the path is expired
        or not yet valid at ``at``, :class:`CertificateUntrusted` for anything else (unknown
        root, bad signature, CA used as a leaf, wrong key usage); ``detail["reason"]`` says
        which.

        A leaf that is itself an anchor (a pinned certificate, e.g. openssl self-signed) is its
        own chain ``[leaf]``, checked for validity at ``at`` and for its key only: the operator
        trusts it as is.
        """
        when = _utc(at)
        # The leaf's key first: it costs a dictionary lookup, path building ~1.7 ms.
        check_certificate_key(leaf)
        if leaf in self.anchors:
            if not leaf.not_valid_before_utc <= when <= leaf.not_valid_after_utc:
                raise CertificateNotValidAtSigning(
                    f"the pinned certificate {rfc4514_name(leaf.subject)} is not valid at "
                    f"{when.isoformat()}",
                    detail={"reason": "pinned, outside its validity", "at": when.isoformat()},
                )
            return [leaf]
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(when)
            .extension_policies(ca_policy=CA_POLICY, ee_policy=EE_POLICY)
            .build_client_verifier()
        )
        pool = [*untrusted, *self.intermediates]
        try:
            verified = verifier.verify(leaf, pool)
        except VerificationError as exc:
            reason = str(exc)
            detail = {
                "reason": reason,
                "subject": rfc4514_name(leaf.subject),
                "issuer": rfc4514_name(leaf.issuer),
                "at": when.isoformat(),
            }
            if "not valid at validation time" in reason:
                raise CertificateNotValidAtSigning(
                    f"a certificate in the chain of {detail['subject']} is not valid at "
                    f"{detail['at']}",
                    detail=detail,
                ) from None
            raise CertificateUntrusted(
                f"{detail['subject']} is not trusted: {reason}",
                detail=detail,
            ) from None
        except (ValueError, x509.UnsupportedGeneralNameType) as exc:
            raise CertificateMalformed(
                f"cannot process the certificate of {rfc4514_name(leaf.subject)}: {exc}",
                detail={"reason": str(exc)},
            ) from None
        chain = list(verified.chain)
        check_chain_keys(chain)
        return chain

    # --- revocation ----------------------------------------------------------------------

    def check_revocation(
        self, chain: Sequence[x509.Certificate], *, at: dt.datetime
    ) -> RevocationResult:
        """Check every certificate of a verified chain (except the anchor) against the CRLs.

        Usage: ``result = store.check_revocation(chain, at=signed_at)`` on the output of
        :meth:`verify_chain`. A CRL counts only if its issuer name matches AND its signature
        verifies under the issuing certificate's key.

        Raises :class:`CertificateRevoked` (detail: serial, revoked_at, reason, subject) and
        :class:`CRLInvalid` when CRLs for the issuer exist but none is signed by it. A stale
        CRL (next update before ``at``) is still used, and reported in ``warnings``.

        A revocation dated after ``at`` for a reason that does not put earlier signatures in
        doubt (superseded, affiliationChanged, cessationOfOperation, privilegeWithdrawn) does
        not raise: it is reported in ``warnings``, so documents an official signed before
        leaving office still verify years later. Compromise, hold and unspecified reasons
        always raise.

        .. warning:: That leniency trusts ``at``. Pass a time the gateway itself vouches for
           (ingress time, a hop record or receipt time), never one taken from the document.
        """
        when = _utc(at)
        if not self.crls:
            return RevocationResult(
                checked=False, details=["revocation not checked: no CRLs configured"]
            )
        key = tuple(chain)
        cached = self._clean.get(key)
        if cached is not None and when < cached[1]:
            return cached[0]
        details: list[str] = []
        warnings: list[str] = []
        all_checked = True
        clean_until = _FAR_FUTURE
        for position, cert in enumerate(chain[:-1]):
            issuer = chain[position + 1]
            label = _label(cert)
            crl = self._crl_for(cert, issuer)
            if crl is None:
                all_checked = False
                details.append(f"{label}: unchecked: no CRL for issuer {rfc4514_name(cert.issuer)}")
                continue
            number = _crl_number(crl)
            where = f"CRL #{number if number is not None else '?'} of {rfc4514_name(crl.issuer)}"
            next_update = crl.next_update_utc
            if next_update is not None:
                clean_until = min(clean_until, next_update)
            if next_update is not None and next_update < when:
                warnings.append(
                    f"{where} was due to be replaced at {next_update.isoformat()}, before "
                    f"{when.isoformat()}: it was used anyway"
                )
            entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is not None:
                late = _tolerable_late_revocation(entry, when)
                if late is None:
                    raise CertificateRevoked(
                        f"{label} is revoked ({where})",
                        detail=_revocation_detail(cert, entry, crl, number),
                    )
                warnings.append(f"{label}: {late} ({where})")
                clean_until = when  # depends on the time asked about: never reused
            details.append(f"{label}: checked against {where}")
        result = RevocationResult(checked=all_checked, details=details, warnings=warnings)
        if not warnings and len(self._clean) < 4096:
            self._clean[key] = (result, clean_until)
        return result

    def _crl_for(
        self, cert: x509.Certificate, issuer: x509.Certificate
    ) -> x509.CertificateRevocationList | None:
        candidates = self._crls_by_issuer.get(cert.issuer, ())
        if not candidates:
            return None
        signed = self._signed_crls.get(issuer)
        if signed is None:
            key = issuer.public_key()
            signed = []
            for crl in candidates:
                try:
                    if crl.is_signature_valid(key):  # type: ignore[arg-type]
                        signed.append(crl)
                except (TypeError, ValueError, UnsupportedAlgorithm):
                    continue
            if len(self._signed_crls) < 4096:
                self._signed_crls[issuer] = signed
        if not signed:
            raise CRLInvalid(
                f"no CRL of {rfc4514_name(cert.issuer)} carries a valid signature by its "
                "issuer's key",
                detail={"issuer": rfc4514_name(cert.issuer), "crls": len(candidates)},
            )
        usage = extension_value(issuer, x509.KeyUsage)
        if usage is not None and not usage.crl_sign:
            raise CRLInvalid(
                f"{rfc4514_name(issuer.subject)} may not sign CRLs (keyUsage lacks cRLSign)",
                detail={"issuer": rfc4514_name(issuer.subject)},
            )
        covering = [crl for crl in signed if _covers(crl, cert)]
        if not covering:
            return None
        # Newest wins: highest CRL number, then latest thisUpdate.
        return max(covering, key=lambda c: (_crl_number(c) or -1, c.last_update_utc))


# --- helpers ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _label(cert: x509.Certificate) -> str:
    return f"{rfc4514_name(cert.subject)} (serial {serial_hex(cert.serial_number)})"


def _utc(when: dt.datetime) -> dt.datetime:
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def _crl_number(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return None


def _covers(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool:
    """True when ``crl`` is a complete CRL whose scope includes ``cert``."""
    try:
        crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
        return False  # a delta CRL lists only changes: never proof of non-revocation
    except x509.ExtensionNotFound:
        pass
    try:
        idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    except x509.ExtensionNotFound:
        return True
    constraints = extension_value(cert, x509.BasicConstraints)
    is_ca = constraints is not None and constraints.ca
    if idp.indirect_crl or idp.only_contains_attribute_certs:
        return False
    if (idp.only_contains_user_certs and is_ca) or (idp.only_contains_ca_certs and not is_ca):
        return False
    if idp.full_name is None and idp.relative_name is None:
        return True
    # A partitioned CRL covers only certificates that point at that same distribution point.
    points = extension_value(cert, x509.CRLDistributionPoints)
    if points is None or idp.full_name is None:
        return False
    wanted = set(idp.full_name)
    return any(dp.full_name and wanted.intersection(dp.full_name) for dp in points)


def _tolerable_late_revocation(entry: x509.RevokedCertificate, when: dt.datetime) -> str | None:
    """A warning when the revocation postdates ``when`` for a benign reason; None = revoked."""
    reason = _entry_extension(entry, x509.CRLReason)
    flag = reason.reason if reason is not None else x509.ReasonFlags.unspecified
    invalidity = _entry_extension(entry, x509.InvalidityDate)
    invalid_from = entry.revocation_date_utc
    if invalidity is not None:
        invalid_from = min(invalid_from, _utc(invalidity.invalidity_date_utc))
    if flag in _COMPROMISE_REASONS or invalid_from <= when:
        return None
    return (
        f"revoked at {entry.revocation_date_utc.isoformat()} ({flag.value}), after "
        f"{when.isoformat()}: signatures made before then stand"
    )


def _entry_extension(entry: x509.RevokedCertificate, kind: type[Any]) -> Any:
    try:
        return entry.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _revocation_detail(
    cert: x509.Certificate,
    entry: x509.RevokedCertificate,
    crl: x509.CertificateRevocationList,
    number: int | None,
) -> dict[str, Any]:
    reason = _entry_extension(entry, x509.CRLReason)
    return {
        "serial": serial_hex(cert.serial_number),
        "revoked_at": entry.revocation_date_utc.isoformat(),
        "reason": reason.reason.value if reason is not None else "unspecified",
        "subject": rfc4514_name(cert.subject),
        "issuer": rfc4514_name(crl.issuer),
        "crl_number": number,
    }


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(
            f"cannot read {path}: {exc.strerror or exc}", detail={"path": str(path)}
        ) from None


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file (or the one in a DER file); UsageError naming the file."""
    data = _read(path)
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise UsageError(
            f"{path} holds no readable X.509 certificate: {exc}", detail={"path": str(path)}
        ) from None


def _load_crls(path: Path) -> list[x509.CertificateRevocationList]:
    data = _read(path)
    try:
        if b"-----BEGIN" not in data:
            return [x509.load_der_x509_crl(data)]
        blocks = _PEM_CRL.findall(data)
        if not blocks:
            raise ValueError("no '-----BEGIN X509 CRL-----' block")
        return [x509.load_pem_x509_crl(block) for block in blocks]
    except ValueError as exc:
        raise CRLInvalid(
            f"{path} holds no readable CRL: {exc}", detail={"path": str(path)}
        ) from None
