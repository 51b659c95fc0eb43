"""Intake attestations: a node's signed word for a package whose sender signature it could not
verify, kept beside the package's untouched bytes.

Packages from the national SDK carry placeholder signatures (RSA-SHA1, a SignatureValue reused
from one package to the next), so strict verification refuses every one of them. A connected
system whose policy is ``attest`` (docs/hub.md) still gets them in: the node runs every check,
and when the only failures are about the signature (the XML is safe and schema-valid, the
envelope is consistent, the sender is the system's own agency), it seals this attestation and
stores it with the package. It travels with the package to every node (each checks it and
runs the same checks again) and says plainly, in the evidence, the inbox and the timeline:
sender signature not verified; intake attested by node N::

    {
      "attestation": {"v": 1, "node": "h49-halong", "sha256": "<hex of the stored bytes>",
                      "systemid": "vxp.halong.01", "agency": "000.00.01.H49",
                      "at": "2026-12-06T03:14:15.926535Z",
                      "failed": ["SIGNATURE_WEAK_ALGORITHM", ...],
                      "report": [{"name": "xml", "ok": true, "detail": "..."}, ...],
                      "xml_defects": {"undeclared_prefixes": ["xlink"]}},
      "alg": "ES256", "signature": "<base64>", "certificate": "<PEM>"
    }

A sealed object (:mod:`gateway.evidence.sealed`) labelled ``attestation``, like receipts.

Usage::

    sealed = make_attestation(key, node="h49", sha256=digest, systemid="vxp.a",
                              agency="000.00.01.H49", at=now, failed=[...], report=[...],
                              undeclared_prefixes=[])
    fields = verify_attestation(sealed, trust=store, sha256=digest)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Final

from gateway.errors import ConfigError, SignatureMalformed, SignerMismatch
from gateway.evidence.nodekey import NodeKey, format_utc, parse_utc
from gateway.evidence.sealed import open_sealed, seal, trusted_chain
from gateway.trust.binding import node_name_of
from gateway.trust.store import TrustStore

__all__ = ["ATTESTATION_FIELDS", "make_attestation", "summary", "verify_attestation"]

ATTESTATION_VERSION: Final = 1
#: the signed fields of a version-1 attestation
ATTESTATION_FIELDS: Final = frozenset(
    {"v", "node", "sha256", "systemid", "agency", "at", "failed", "report", "xml_defects"}
)


def make_attestation(
    key: NodeKey,
    *,
    node: str,
    sha256: str,
    systemid: str,
    agency: str,
    at: dt.datetime,
    failed: Sequence[str],
    report: Sequence[Mapping[str, Any]],
    undeclared_prefixes: Sequence[str],
) -> dict[str, Any]:
    """Seal this node's attestation of a package it accepted without a verified signature."""
    bound = node_name_of(key.certificate)
    if bound != node:
        raise ConfigError(
            f"the node certificate binds node {bound!r}, not {node!r}",
            detail={"key": "node.cert", "node": node},
        )
    return seal(
        key,
        "attestation",
        {
            "v": ATTESTATION_VERSION,
            "node": node,
            "sha256": sha256,
            "systemid": systemid,
            "agency": agency,
            "at": format_utc(at),
            "failed": list(failed),
            "report": [dict(r) for r in report],
            "xml_defects": {"undeclared_prefixes": list(undeclared_prefixes)},
        },
    )


def verify_attestation(
    sealed: Any, *, trust: TrustStore | None, sha256: str | None = None
) -> dict[str, Any]:
    """Check an attestation (shape, key, signature; with ``trust``, the node's chain at its
    time; the certificate binds its node; with ``sha256``, that it is about those bytes).

    Usage: ``fields = verify_attestation(item.attestation, trust=node.trust, sha256=digest)``
    """
    opened = open_sealed(sealed, "attestation")
    fields = opened.fields
    if set(fields) != ATTESTATION_FIELDS or fields.get("v") != ATTESTATION_VERSION:
        raise SignatureMalformed("not a version-1 intake attestation")
    if not all(isinstance(fields[k], str) for k in ("node", "sha256", "systemid", "agency")):
        raise SignatureMalformed("an attestation names its node, bytes, system and agency")
    try:
        at = parse_utc(fields["at"])
    except (TypeError, ValueError):
        raise SignatureMalformed("the attestation's time is not an ISO 8601 time") from None
    if trust is not None:
        trusted_chain(trust, opened.leaf, opened.extra, at)
    if opened.node != fields["node"]:
        raise SignerMismatch(
            f"the attestation names node {fields['node']!r} but its certificate binds "
            f"{opened.node!r}",
            detail={"node": fields["node"]},
        )
    if sha256 is not None and fields["sha256"] != sha256:
        raise SignatureMalformed(
            "the attestation is about other bytes than the package it travels with",
            detail={"sha256": sha256},
        )
    return fields


def summary(fields: Mapping[str, Any]) -> str:
    """The plain words every view shows for an attested package."""
    return (
        f"sender signature not verified; intake attested by node {fields['node']} "
        f"(system {fields['systemid']}, agency {fields['agency']})"
    )
