"""Verification under the hub's ``attest`` policy: every check runs; only the signature may fail.

Packages from the national SDK carry placeholder signatures, and the SDK's example writes
``xlink:`` without declaring it. For a connected system whose policy is ``attest``
(docs/hub.md), :func:`verify_or_attest` runs the full verification and, when it fails,
accepts the package only if everything that failed is about the signature and its signer
(:data:`SIGNATURE_CHECKS`): the XML is parsed within every budget (a copy that declares the
missing prefixes, when that is the only XML defect:
:func:`gateway.envelope.xmlsafe.declare_missing`), it is schema-valid, and its envelope reads
consistently. The caller then seals an intake
attestation (:mod:`gateway.evidence.attestations`) and stores the untouched bytes.

Usage::

    report, unverified = verify_or_attest(node.verifier, data, now=now, limits=limits)
    if unverified is None:
        package, signer = report.accepted()        # verified as on the node's own API
    else:
        package = unverified.package               # sender signature NOT verified
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.envelope import schema
from gateway.envelope.codec import parse_package
from gateway.envelope.xmlsafe import XMLLimits, declare_missing, parse_bytes
from gateway.errors import UndeclaredPrefix
from gateway.trust.report import Package, VerificationReport
from gateway.trust.verification import Verifier

__all__ = ["SIGNATURE_CHECKS", "Unverified", "verify_or_attest"]

#: the checks about the sender's signature and its signer: the only ones ``attest`` forgives
SIGNATURE_CHECKS: Final = frozenset(
    {
        "structure",
        "algorithm",
        "signature",
        "envelope",
        "chain",
        "validity_at_signing",
        "validity_now",
        "revocation",
        "signer_agency",
    }
)


@dataclass(frozen=True, slots=True)
class Unverified:
    """A package every check but the signature's accepted."""

    #: read from the whole package (its signature covers nothing verified)
    package: Package
    #: the codes of the signature checks that failed
    failed: list[str]
    #: every check, as ``gateway verify --json`` shows them
    report: list[dict[str, Any]] = field(default_factory=list)
    #: prefixes the package uses undeclared (its only XML defect)
    undeclared_prefixes: list[str] = field(default_factory=list)


def _raise_first(report: VerificationReport) -> None:
    first = report.first_error() or report.missing_verdict()
    first.detail.setdefault("errors", [e.code for e in report.errors])
    raise first


def verify_or_attest(
    verifier: Verifier, data: bytes, *, now: dt.datetime, limits: XMLLimits
) -> tuple[VerificationReport, Unverified | None]:
    """The verification report, and (when it failed on signature checks only) the package
    accepted without a verified signature. Raises the first error that ``attest`` does not
    forgive (XML, budgets, schema, envelope consistency)."""
    report = verifier.verify(data, now=now)
    if report.valid:
        return report, None
    prefixes: list[str] = []
    copy = data
    first = report.first_error()
    if report.check("xml").ok is not True:
        if not isinstance(first, UndeclaredPrefix):
            _raise_first(report)
        copy, prefixes = declare_missing(data, limits)
        report = verifier.verify(copy, now=now)
        if report.valid:  # declared, the signature verifies: still a defect worth naming
            package, _ = report.accepted()
            return report, Unverified(
                package=package,
                failed=[UndeclaredPrefix.code],
                report=report.to_dict()["checks"],
                undeclared_prefixes=prefixes,
            )
        if report.check("xml").ok is not True:
            _raise_first(report)
    if report.check("schema").ok is False:
        _raise_first(report)
    unforgiven = [c.name for c in report.checks if c.ok is False and c.name not in SIGNATURE_CHECKS]
    if unforgiven:
        _raise_first(report)
    root = parse_bytes(copy, limits)
    # structure refused before the schema ran: the schema must still pass
    schema.validate(root)
    package = parse_package(root)
    return report, Unverified(
        package=package,
        failed=[e.code for e in report.errors],
        report=report.to_dict()["checks"],
        undeclared_prefixes=prefixes,
    )
