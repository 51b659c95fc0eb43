"""``/readyz``: can this node take a document right now, and if not, why.

Usage::

    problems = readiness(node)   # [] when ready
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509

from gateway.errors import GatewayError
from gateway.node.container import Node
from gateway.storage import db
from gateway.trust.store import load_certificates

__all__ = ["readiness"]


def _certificate_problem(label: str, cert: x509.Certificate, now: dt.datetime) -> str | None:
    if now < cert.not_valid_before_utc:
        return f"{label} is not valid before {cert.not_valid_before_utc.isoformat()}"
    if now > cert.not_valid_after_utc:
        return f"{label} expired at {cert.not_valid_after_utc.isoformat()}"
    return None


def readiness(node: Node) -> list[str]:
    """Problems that make the node unready: database, migrations, certificates."""
    problems: list[str] = []
    try:
        db.ping(node.engine)
        db.require_current(node.engine)
    except GatewayError as exc:
        problems.append(f"{exc.code}: {exc.message}")
    now = node.now()
    problem = _certificate_problem("the node certificate", node.key.certificate, now)
    if problem:
        problems.append(problem)
    tls_cert = node.settings.tls.cert
    if tls_cert is not None:
        try:
            leaf = load_certificates(tls_cert)[0]
        except GatewayError as exc:
            problems.append(f"{exc.code}: {exc.message}")
        else:
            problem = _certificate_problem("the TLS certificate", leaf, now)
            if problem:
                problems.append(problem)
    return problems
