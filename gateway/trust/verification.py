"""Verifying a signed edXML package, the way an ingesting node or an auditor must.

Checks, in order (each one named in the report so an auditor sees why):

``xml``                 well-formed, no DOCTYPE/entities, within the input budgets (xmlsafe)
``structure``           one envelope, one header, unique Ids, one Signature as the last child of
                        edXMLHeader, one Reference URI="" with enveloped/C14N transforms only
``schema``              the edXML (or status) XSD
``algorithm``           RSA/ECDSA with SHA-2; SHA-1 refused unless admitted for legacy archives
``signature``           SignatureValue and digest (:mod:`gateway.trust.dsig`, on the pinned shape)
``envelope``            the *signed* content (only what dsig returns) is a consistent package,
                        and a document carries its sender's own TraceHeader (the signing time)
``chain``               the signer's certificate chains to a trust anchor
``validity_at_signing`` every certificate in the chain was valid at the claimed signing time
``validity_now``        ... and is valid at verification time
``revocation``          no certificate in the chain is on a CRL
``signer_agency``       the certificate's agency code equals From/OrganId

The claimed signing time is signed content: the status Timestamp, or the latest TraceHeader of
the sender (``gateway sign`` stamps it). A document without one is refused
(``ENVELOPE_MISSING_ELEMENT``): without a signing time, the chain cannot be judged as of signing.

Every step is bounded by the input budgets of :mod:`gateway.envelope.xmlsafe` (checked while
parsing, before any other step), and the whole verification by ``VerifyPolicy.upload_budget``: CPU
seconds of the verifying thread, checked between steps. Past it, the next step is refused with
``REQUEST_BUDGET_EXCEEDED`` and the rest are not run. A step already running is not
interrupted (most are one call into libxml2 or OpenSSL); the budgets make each one linear in
the package, so it ends in bounded time.

An invalid report always carries at least one error.

Usage::

    verifier = Verifier(TrustStore.from_pem_files([Path("ca.cert.pem")]))
    report = verifier.verify(data)
    if not report.valid: print(report.render_text())
    package, signer = report.accepted()  # or raise the first error

.. warning:: Read package data only from ``report.package`` (built from what the signature
   covers), never from your own parse of the input bytes.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from lxml import etree
from signxml.algorithms import DigestAlgorithm, SignatureMethod

from gateway.envelope import schema
from gateway.envelope.codec import parse_package
from gateway.envelope.model import DocumentPackage, StatusPackage
from gateway.envelope.xmlsafe import DEFAULT_LIMITS, XMLLimits, parse_bytes
from gateway.errors import (
    BudgetExceeded,
    CertificateExpired,
    CertificateMalformed,
    CertificateNotValidAtSigning,
    CertificateUntrusted,
    GatewayError,
    InternalError,
    MissingElement,
    SignatureMissing,
    SignerMismatch,
    SignerUnbound,
)
from gateway.trust.dsig import verify_enveloped
from gateway.trust.report import CHECK_NAMES, Check, Package, VerificationReport
from gateway.trust.sigstructure import (
    SignatureInfo,
    check_algorithms,
    check_transforms,
    inspect_signature,
)
from gateway.trust.store import TrustStore, agency_code_of

# The report's names are re-exported: callers import them from here, with the Verifier.
__all__ = ["CHECK_NAMES", "Check", "VerificationReport", "Verifier", "VerifyPolicy"]

_CHAIN_CACHE_SIZE = 256


@dataclass(frozen=True, kw_only=True, slots=True)
class VerifyPolicy:
    """How strict verification is. The defaults are the safe choice."""

    #: admit RSA-SHA1 / SHA-1 digests (legacy archives only); the report then says so
    allow_weak_algorithms: bool = False
    #: fail when a certificate in the chain has no CRL from its issuer
    require_revocation_check: bool = False
    #: caps on the raw package
    limits: XMLLimits = DEFAULT_LIMITS
    #: CPU seconds one verification may use, checked between steps (``[limits]
    #: upload_budget``); None for no budget
    upload_budget: float | None = 30.0


_TRACE_HEADER_PATH = "/edXML/edXMLEnvelope/edXMLHeader/TraceHeaderList/TraceHeader"


def _signing_time(package: Package) -> tuple[dt.datetime, str]:
    """The signing time the signed content claims; a document without one is refused."""
    if isinstance(package, StatusPackage):
        return package.timestamp, "status Timestamp"
    sender = package.from_.organ_id.strip()
    own = [t for t in package.trace_headers if t.organ_id.strip() == sender]
    if not own:
        # The sender's TraceHeader is the only signed signing time of a document; without it
        # validity at signing cannot be checked, so the package is refused here, by name.
        raise MissingElement(
            "the document carries no TraceHeader of its sender (From/OrganId): its signing "
            "time is not in the signed content (gateway sign adds it)",
            detail={"path": _TRACE_HEADER_PATH, "element": "TraceHeader", "organ_id": sender},
        )
    return own[-1].timestamp, f"sender's TraceHeader ({sender})"


def _embedded_certificates(info: SignatureInfo) -> list[x509.Certificate]:
    ns = etree.QName(info.element).namespace
    texts = tuple(
        "".join((el.text or "").split())
        for el in info.element.iterfind(f"{{{ns}}}KeyInfo/{{{ns}}}X509Data/{{{ns}}}X509Certificate")
    )
    if not texts:
        raise CertificateMalformed("the signature carries no X509Certificate in KeyInfo")
    return list(_load_certificates(texts))


@functools.lru_cache(maxsize=512)  # the same few signers send most packages
def _load_certificates(texts: tuple[str, ...]) -> tuple[x509.Certificate, ...]:
    certs = []
    for index, body in enumerate(texts):
        pem = "-----BEGIN CERTIFICATE-----\n" + body + "\n-----END CERTIFICATE-----\n"
        try:
            certs.append(x509.load_pem_x509_certificate(pem.encode("ascii")))
        except (ValueError, UnicodeEncodeError) as exc:
            raise CertificateMalformed(
                f"X509Certificate #{index + 1} in KeyInfo cannot be decoded: {exc}",
                detail={"index": index},
            ) from None
    return tuple(certs)


@functools.lru_cache(maxsize=512)
def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


@functools.lru_cache(maxsize=512)
def _leaf_of(certs: tuple[x509.Certificate, ...]) -> x509.Certificate:
    return _pick_leaf(list(certs))


def _pick_leaf(certs: list[x509.Certificate]) -> x509.Certificate:
    """The certificate that issued none of the others (the first one if that is ambiguous)."""
    issuers = {c.issuer for c in certs}
    leaves = [c for c in certs if c.subject not in issuers or len(certs) == 1]
    return leaves[0] if leaves else certs[0]


def _within(cert: x509.Certificate, at: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= at <= cert.not_valid_after_utc


class Verifier:
    """Verifies packages against one trust store; reuse it (it caches verified chains)."""

    def __init__(
        self,
        trust: TrustStore | None,
        policy: VerifyPolicy | None = None,
        *,
        clock: Callable[[], float] = time.thread_time,
    ):
        self.trust = trust
        self.policy = policy or VerifyPolicy()
        #: what the upload budget is counted on: the CPU time of the verifying thread, so a
        #: package is not refused because other threads had the CPU meanwhile
        self._clock = clock
        self._chains: OrderedDict[tuple[x509.Certificate, ...], list[x509.Certificate]] = (
            OrderedDict()
        )
        #: guards the chain cache: verifications run in a thread pool
        self._lock = threading.Lock()

    # -- public ----------------------------------------------------------------------------

    def replace_trust(self, trust: TrustStore) -> None:
        """Use a new trust store (new CRLs, anchors) from now on; forget verified chains."""
        with self._lock:
            self.trust = trust
            self._chains = OrderedDict()

    def verify(self, data: bytes, *, now: dt.datetime | None = None) -> VerificationReport:
        """Run every check on package bytes and return the report (never raises GatewayError).

        A report that is not valid always holds at least one error.
        """
        budget = self.policy.upload_budget
        report = VerificationReport()
        run = _Steps(self, report, None if budget is None else _Budget(self._clock, budget))
        now = now or dt.datetime.now(dt.UTC)
        box: list[etree._Element] = []

        def xml() -> str:
            box.append(parse_bytes(data, self.policy.limits))
            return f"well-formed, {len(data)} bytes, no DTD"

        try:
            if not run("xml", xml):
                self._skip_rest(report, "xml", "the package could not be parsed safely")
            else:
                self._verify_root(box[0], report, now, run)
        except _OverBudget:
            self._skip_rest(report, "xml", "the upload's processing budget is spent")
        if not report.errors and not report.valid:
            report.errors.append(report.missing_verdict())
        return report

    # -- pipeline --------------------------------------------------------------------------

    def _skip_rest(self, report: VerificationReport, after: str, why: str) -> None:
        start = CHECK_NAMES.index(after) + 1
        for name in CHECK_NAMES[start:]:
            if report.check(name).detail == "not run":
                report.skipped(name, why)

    def _run(self, report: VerificationReport, name: str, step: Callable[[], str]) -> bool:
        """Run one check, record its verdict and time; True if it passed."""
        started = time.perf_counter()
        try:
            detail = step()
        except GatewayError as exc:
            report.failed(name, exc)
            return False
        else:
            report.passed(name, detail)
            return True
        finally:
            report.check(name).seconds = time.perf_counter() - started

    def _verify_root(
        self, root: etree._Element, report: VerificationReport, now: dt.datetime, run: _Steps
    ) -> None:
        info_box: list[SignatureInfo] = []

        def structure() -> str:
            info = inspect_signature(root)
            if info is None:
                raise SignatureMissing("the package carries no signature (edXMLHeader/Signature)")
            info_box.append(info)
            ns = "edXML namespace (legacy field form)" if info.legacy_namespace else "XMLDSig"
            return f'one Signature ({ns}) as last child of edXMLHeader; Reference URI=""'

        if not run("structure", structure):
            self._skip_rest(report, "structure", "signature structure refused")
            return
        info = info_box[0]

        def schema_step() -> str:
            report.kind = schema.validate(root)
            return f"valid {report.kind.value} package (xsd/)"

        if not run("schema", schema_step):
            self._skip_rest(report, "schema", "schema invalid")
            return

        report.algorithm = info.signature_method

        def algorithm() -> str:
            report.weak_algorithm_admitted = check_algorithms(
                info, allow_weak=self.policy.allow_weak_algorithms
            )
            check_transforms(info)
            if report.weak_algorithm_admitted:
                return "weak algorithm admitted (SHA-1): legacy archive mode"
            method = SignatureMethod(info.signature_method).name
            return f"{method}, digest {DigestAlgorithm(info.digest_method).name}"

        algorithm_ok = run("algorithm", algorithm)

        try:
            certs = _embedded_certificates(info)
        except GatewayError as exc:
            report.failed("chain", exc)
            for name in (
                "signature",
                "envelope",
                "validity_at_signing",
                "validity_now",
                "revocation",
                "signer_agency",
            ):
                report.skipped(name, "no usable certificate in KeyInfo")
            return
        leaf = _leaf_of(tuple(certs))
        report.signer = leaf
        others = [c for c in certs if c is not leaf]

        if algorithm_ok:
            signature_ok = run(
                "signature",
                lambda: self._check_signature(root, info, leaf, report),
            )
        else:
            report.skipped("signature", "algorithm refused")
            signature_ok = False
        if signature_ok:
            run("envelope", lambda: self._check_envelope(report))
        else:
            report.skipped("envelope", "signed content unavailable")

        at = report.signing_time or now
        chain_ok = run("chain", lambda: self._check_chain(leaf, others, at, report))
        if chain_ok:
            if report.signing_time is None:
                report.skipped("validity_at_signing", "no signing time claimed in signed content")
            else:
                run(
                    "validity_at_signing",
                    lambda: self._check_validity(report.chain, at, signing=True),
                )
            run(
                "validity_now",
                lambda: self._check_validity(report.chain, now, signing=False),
            )
            run("revocation", lambda: self._check_revocation(report.chain, now))
        else:
            for name in ("validity_at_signing", "validity_now", "revocation"):
                report.skipped(name, "no trusted chain")
        if report.package is not None:
            package = report.package
            run("signer_agency", lambda: self._check_agency(leaf, package))
        else:
            report.skipped("signer_agency", "signed content unavailable")

    # -- steps -----------------------------------------------------------------------------

    def _check_signature(
        self,
        root: etree._Element,
        info: SignatureInfo,
        leaf: x509.Certificate,
        report: VerificationReport,
    ) -> str:
        report.signed_xml = verify_enveloped(root, info, leaf)
        legacy = " (legacy namespace)" if info.legacy_namespace else ""
        return f"SignatureValue and digest verified{legacy}"

    def _check_envelope(self, report: VerificationReport) -> str:
        if report.signed_xml is None:
            raise InternalError("the envelope check ran before the signature check")
        package = parse_package(report.signed_xml)
        report.signing_time, report.signing_time_source = _signing_time(package)
        report.package = package  # only a package that passed every envelope check
        if isinstance(package, DocumentPackage):
            return (
                f"document from {package.from_.organ_id} to "
                f"{', '.join(o.organ_id for o in package.to)}; "
                f"{len(package.attachments)} attachment(s) match the manifest"
            )
        return f"status {package.status_code.value} from {package.from_.organ_id}"

    def _check_chain(
        self,
        leaf: x509.Certificate,
        others: list[x509.Certificate],
        at: dt.datetime,
        report: VerificationReport,
    ) -> str:
        if self.trust is None:
            raise CertificateUntrusted("no trust anchors were supplied (--trust CA.pem)")
        key = (leaf, *others)  # certificates hash and compare by their DER
        trust = self.trust
        with self._lock:
            cached = self._chains.get(key)
            if cached is not None:
                self._chains.move_to_end(key)
        if cached is not None and all(_within(c, at) for c in cached):
            chain = cached
        else:
            try:
                chain = trust.verify_chain(leaf, others, at=at)
            except CertificateNotValidAtSigning:
                if report.signing_time is None:
                    raise CertificateExpired(
                        "the signer's certificate chain is not valid now"
                    ) from None
                raise
            with self._lock:
                if trust is self.trust:  # not a chain built on a store replaced meanwhile
                    self._chains[key] = chain
                    if len(self._chains) > _CHAIN_CACHE_SIZE:
                        self._chains.popitem(last=False)
        report.chain = list(chain)
        if len(chain) == 1:
            # A pinned signer certificate (as xmlsec1 --trusted-pem trusts one): it binds at
            # most one agency code, which the signer_agency check still compares with From.
            return "the signer's certificate is itself a trust anchor (pinned)"
        anchor = _subject(chain[-1])
        return f"chain of {len(chain)} to trust anchor {anchor}"

    def _check_validity(
        self, chain: list[x509.Certificate], at: dt.datetime, *, signing: bool
    ) -> str:
        for cert in chain:
            if not _within(cert, at):
                error = CertificateNotValidAtSigning if signing else CertificateExpired
                subject = cert.subject.rfc4514_string()
                raise error(
                    f"{subject} is valid {cert.not_valid_before_utc.isoformat()}"
                    f" .. {cert.not_valid_after_utc.isoformat()}, not at {at.isoformat()}",
                    detail={"subject": cert.subject.rfc4514_string(), "at": at.isoformat()},
                )
        return f"all {len(chain)} certificates valid at {at.isoformat()}"

    def _check_revocation(self, chain: list[x509.Certificate], now: dt.datetime) -> str:
        trust = self.trust
        if trust is None:
            raise CertificateUntrusted("no trust anchors were supplied (--trust CA.pem)")
        if len(chain) == 1:
            return "nothing to check: the signer's certificate is itself a trust anchor"
        result = trust.check_revocation(chain, at=now)
        if not result.checked:
            if self.policy.require_revocation_check:
                raise CertificateUntrusted(
                    "revocation could not be checked and the policy requires it: "
                    + "; ".join(result.details)
                )
            return "not fully checked (no CRL for every issuer): " + "; ".join(result.details)
        text = "; ".join(result.details)
        if result.warnings:
            text += " (warnings: " + "; ".join(result.warnings) + ")"
        return text

    def _check_agency(self, leaf: x509.Certificate, package: Package) -> str:
        code = agency_code_of(leaf)
        if code is None:
            raise SignerUnbound()
        sender = package.from_.organ_id.strip()
        if str(code) != sender:
            raise SignerMismatch(
                f"the certificate is bound to {code} but the package is From {sender}",
                detail={"certificate": str(code), "from": sender},
            )
        return f"certificate agency {code} == From/OrganId"


# --- the upload budget -----------------------------------------------------------------------


class _OverBudget(Exception):
    """Raised by :class:`_Steps` once the budget is spent: the remaining checks are not run."""


@dataclass(slots=True)
class _Budget:
    """CPU seconds one verification may still use, on ``clock``."""

    clock: Callable[[], float]
    seconds: float
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def spent(self) -> float:
        return self.clock() - self.started


@dataclass(slots=True)
class _Steps:
    """Runs a verification's checks in turn, refusing the next one once the budget is spent."""

    verifier: Verifier
    report: VerificationReport
    budget: _Budget | None

    def __call__(self, name: str, step: Callable[[], str]) -> bool:
        budget = self.budget
        if budget is not None:
            spent = budget.spent()
            if spent > budget.seconds:
                self.report.failed(
                    name,
                    BudgetExceeded(
                        f"the package used {spent:.1f} s of processing before the {name} check; "
                        f"one upload may use {budget.seconds:g} s",
                        detail={
                            "spent": round(spent, 3),
                            "budget": budget.seconds,
                            "check": name,
                        },
                    ),
                )
                raise _OverBudget
        return self.verifier._run(self.report, name, step)
