"""What every route of the API shares: the :class:`Edge` of one app (its node, authenticator
and lanes), and the dependencies that say who may call a route.

* ``Caller``: any authenticated caller (an agency's DMS or a node), from its client
  certificate (:mod:`gateway.api.auth`);
* ``Admin``: the node's own certificate, its operators' credential (:func:`require_admin`,
  the one admin check of the API);
* ``Neighbour``: this node's parent or one of its children (the relay).

Each runs before the route reads a byte of its body (:mod:`gateway.api.app`, "Authenticate
first").

Usage::

    @router.get("/api/v1/inbox")
    async def inbox(request: Request, caller: Caller) -> InboxBody:
        node = edge_of(request).node
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from fastapi.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request

from gateway.api.auth import ClientAuthenticator, require_identity
from gateway.api.lanes import Lanes
from gateway.errors import Forbidden
from gateway.network.relay import require_neighbour
from gateway.node.container import Node
from gateway.trust.caller import Identity

__all__ = [
    "RELAY_FRAMING_BYTES",
    "Admin",
    "Caller",
    "Edge",
    "Neighbour",
    "admin",
    "authenticate",
    "edge_of",
    "neighbour",
    "require_admin",
]

#: room in a relay request beyond its packages: hop records, receipts, the JSON framing
RELAY_FRAMING_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, kw_only=True, slots=True)
class Edge:
    """One app's view of its node: kept on ``app.state.edge`` by
    :func:`gateway.api.app.create_app`.

    Usage: ``edge = Edge.of_node(node)``; a route gets it with :func:`edge_of`.
    """

    #: the node this app serves
    node: Node
    #: verifies client certificates (one per app, so verified ones are remembered)
    authenticator: ClientAuthenticator
    #: the upload and relay lanes of this process
    lanes: Lanes
    #: largest upload (one package), in bytes: ``[limits] max_envelope_bytes``
    upload_limit: int
    #: largest relay request, in bytes: a package, a batch's worth more, and its framing
    relay_limit: int

    @classmethod
    def of_node(cls, node: Node) -> Edge:
        """The edge of ``node``; the authenticator follows the node's trust reloads."""
        authenticator = require_identity(node.trust, node.settings)
        node.on_trust_change(authenticator.replace_trust)
        limit = node.settings.limits.max_envelope_bytes
        return cls(
            node=node,
            authenticator=authenticator,
            lanes=Lanes(),
            upload_limit=limit,
            relay_limit=limit + node.settings.delivery.batch_bytes + RELAY_FRAMING_BYTES,
        )


def edge_of(connection: HTTPConnection) -> Edge:
    """The :class:`Edge` of the app serving ``connection`` (a request).

    Usage: ``node = edge_of(request).node``.
    """
    edge: Edge = connection.app.state.edge
    return edge


async def authenticate(request: Request) -> Identity:
    """The verified caller of ``request``; :class:`~gateway.errors.AuthRequired` or
    :class:`~gateway.errors.ClientCertUntrusted` (401) otherwise.

    Usage: ``Caller`` (``Annotated[Identity, Depends(authenticate)]``) as a route parameter.
    """
    return edge_of(request).authenticator.identify(request)


Caller = Annotated[Identity, Depends(authenticate)]


def require_admin(node: Node, caller: Identity) -> Identity:
    """``caller`` if it is ``node``'s admin (it presented the node's own certificate, held by
    its operators); :class:`~gateway.errors.Forbidden` otherwise.

    Usage: ``require_admin(node, caller)``; routes use the ``Admin`` dependency.
    """
    if not node.is_admin(caller):
        raise Forbidden("this is an admin endpoint: present the node's own certificate")
    return caller


async def admin(request: Request, caller: Caller) -> Identity:
    """The ``Admin`` dependency: the caller, authenticated, and the node's admin."""
    return require_admin(edge_of(request).node, caller)


async def neighbour(request: Request, caller: Caller) -> Identity:
    """The ``Neighbour`` dependency: the caller, authenticated, and this node's parent or
    child. Checked before the body: any node certificate of the deployment passes TLS, but
    only the neighbours may have a batch read and parsed here."""
    await run_in_threadpool(require_neighbour, edge_of(request).node, caller)
    return caller


Admin = Annotated[Identity, Depends(admin)]
Neighbour = Annotated[Identity, Depends(neighbour)]
