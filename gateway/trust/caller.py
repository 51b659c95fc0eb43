"""The caller identity: the agency or gateway node a verified client certificate speaks for.

A plain value, made by the HTTP edge's authenticator (:mod:`gateway.api.auth`) once the
certificate is verified, and handed to the core services (ingest, the inbox, relay receive),
which never see a request.

Usage::

    caller = Identity(kind="agency", agency=AgencyCode.parse("000.00.00.H49"), certificate=leaf)
    if caller.kind == "agency": ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cryptography import x509

from gateway.agency import AgencyCode

__all__ = ["Identity", "IdentityKind", "IdentitySource"]

IdentityKind = Literal["agency", "node"]
IdentitySource = Literal["tls", "proxy", "hub"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Identity:
    """An authenticated caller: an agency (its DMS) or a peer gateway node.

    Usage: ``if caller.kind == "agency": hosted(caller.agency)``.
    """

    #: "agency" or "node"
    kind: IdentityKind
    #: the agency code the certificate binds (kind "agency" only)
    agency: AgencyCode | None = None
    #: the node name the certificate binds (kind "node" only)
    node: str | None = None
    #: the verified client certificate (leaf); None for a connected system of the hub
    #: protocol, which authenticates with its systemid and secret instead
    certificate: x509.Certificate | None
    #: where the identity came from: the TLS connection, a trusted proxy's header, or the hub
    #: protocol's signed headers (``system`` says which connected system)
    source: IdentitySource = "tls"
    #: the connected system (hub protocol) acting for ``agency``
    system: str | None = None

    def __str__(self) -> str:
        if self.kind == "node":
            return f"node:{self.node}"
        if self.system is not None:
            return f"agency:{self.agency} via hub:{self.system}"
        return f"agency:{self.agency}"
