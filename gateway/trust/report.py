"""The verification report: every named check of a package, its verdict, and what was found.

:class:`gateway.trust.verification.Verifier` fills a :class:`VerificationReport` check by check
(:data:`CHECK_NAMES`, in order); ``gateway verify`` prints its
:meth:`~VerificationReport.render_text` (``--json``: :meth:`~VerificationReport.to_dict`).

Usage::

    report = verifier.verify(data)
    if not report.valid:
        print(report.render_text())
    package, signer = report.accepted()   # or raise the first error

.. warning:: Read package data only from ``report.package`` (built from what the signature
   covers), never from your own parse of the input bytes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from lxml import etree

from gateway.envelope.model import DocumentPackage, PackageKind, StatusPackage
from gateway.errors import GatewayError, InternalError
from gateway.trust.store import describe

__all__ = ["CHECK_NAMES", "Check", "Package", "VerificationReport"]

#: the checks of a verification, in the order they run
CHECK_NAMES = (
    "xml",
    "structure",
    "schema",
    "algorithm",
    "signature",
    "envelope",
    "chain",
    "validity_at_signing",
    "validity_now",
    "revocation",
    "signer_agency",
)

_CHECK_INDEX = {name: index for index, name in enumerate(CHECK_NAMES)}

#: what a verified package is
Package = DocumentPackage | StatusPackage


@dataclass(slots=True)
class Check:
    """One named check: ``ok`` is True, False, or None when it could not run."""

    name: str
    ok: bool | None = None
    detail: str = "not run"
    #: wall time the check took, in seconds (0.0 when it did not run)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "detail": self.detail,
            "ms": round(self.seconds * 1000.0, 3),
        }


@dataclass(slots=True)
class VerificationReport:
    """Everything a verification found, in check order."""

    checks: list[Check] = field(default_factory=lambda: [Check(n) for n in CHECK_NAMES])
    errors: list[GatewayError] = field(default_factory=list)
    kind: PackageKind | None = None
    algorithm: str | None = None
    weak_algorithm_admitted: bool = False
    signing_time: dt.datetime | None = None
    signing_time_source: str | None = None
    signer: x509.Certificate | None = None
    chain: list[x509.Certificate] = field(default_factory=list)
    #: the package built from the signed content only (None unless the signature verified)
    package: Package | None = None
    #: the signed content, canonical and re-parsed by :mod:`gateway.trust.dsig` (None unless the
    #: signature verified)
    signed_xml: etree._Element | None = None

    @property
    def valid(self) -> bool:
        """True only when every check ran and passed."""
        return not self.errors and all(c.ok is True for c in self.checks)

    def check(self, name: str) -> Check:
        return self.checks[_CHECK_INDEX[name]]

    def passed(self, name: str, detail: str) -> None:
        c = self.check(name)
        c.ok, c.detail = True, detail

    def failed(self, name: str, error: GatewayError) -> None:
        c = self.check(name)
        c.ok, c.detail = False, f"{error.code}: {error.message}"
        self.errors.append(error)

    def skipped(self, name: str, why: str) -> None:
        c = self.check(name)
        c.ok, c.detail = None, f"not run: {why}"

    def first_error(self) -> GatewayError | None:
        return self.errors[0] if self.errors else None

    def accepted(self) -> tuple[Package, x509.Certificate]:
        """The verified package and its signer, or raise why the package is refused.

        Usage: ``package, signer = verifier.verify(data).accepted()``

        Raises the first error, its ``detail["errors"]`` listing the code of every error.
        """
        if self.valid and self.package is not None and self.signer is not None:
            return self.package, self.signer
        first = self.first_error()
        if first is None:  # verify() never leaves it so; a report built by hand might
            first = self.missing_verdict()
        first.detail.setdefault("errors", [e.code for e in self.errors])
        raise first

    def missing_verdict(self) -> InternalError:
        """The error for a report that is not valid yet names no error: a verifier bug.

        Usage: ``report.errors.append(report.missing_verdict())``; never a pass.
        """
        unfinished = [c.name for c in self.checks if c.ok is not True]
        return InternalError(
            "verification ended without a verdict on every check", detail={"checks": unfinished}
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` report."""
        signer = None
        if self.signer is not None:
            signer = describe(self.signer)
        return {
            "valid": self.valid,
            "kind": self.kind.value if self.kind else None,
            "signer": signer,
            "algorithm": self.algorithm,
            "weak_algorithm_admitted": self.weak_algorithm_admitted,
            "signing_time": self.signing_time.isoformat() if self.signing_time else None,
            "signing_time_source": self.signing_time_source,
            "checks": [c.to_dict() for c in self.checks],
            "errors": [{"code": e.code, "message": e.message} for e in self.errors],
        }

    def render_text(self, name: str = "package") -> str:
        """The human report."""
        lines = [f"{name}: {'VALID' if self.valid else 'INVALID'}"]
        if self.signer is not None:
            d = describe(self.signer)
            lines.append(f"  signer:    {d['subject']}")
            lines.append(f"  agency:    {d['agency_code'] or '(none bound)'}")
            lines.append(f"  issuer:    {d['issuer']}  serial {d['serial']}")
            lines.append(f"  validity:  {d['not_before']} .. {d['not_after']}")
        if self.algorithm:
            lines.append(f"  algorithm: {self.algorithm}")
        if self.weak_algorithm_admitted:
            lines.append("  WARNING:   weak algorithm admitted (SHA-1); legacy archive mode")
        if self.signing_time:
            lines.append(
                f"  signed at: {self.signing_time.isoformat()} ({self.signing_time_source})"
            )
        for c in self.checks:
            mark = {True: "ok  ", False: "FAIL", None: "--  "}[c.ok]
            lines.append(f"  [{mark}] {c.name:<20} {c.detail}")
        for e in self.errors:
            lines.append(f"  error {e.code}: {e.message}")
        return "\n".join(lines)
