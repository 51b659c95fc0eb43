"""An in-process relay transport for tests: batches go straight into the other node's receive.

The real transport (``adapters.peer.HttpsPeerTransport``) is tested on its own against a real
HTTPS server (``test_peer_transport.py``); tests of what nodes do with a batch use this one, so
that they control the network: ``down`` is a dead link (PeerUnavailable, retried), ``tamper``
flips a byte of the body (refused, dead-lettered).

Usage::

    transport = Direct(nodes, sender=province)
    transport.down = True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.errors import PeerUnavailable
from gateway.network.relay import receive_batch
from gateway.network.routing import Peer
from gateway.network.wire import ItemResult, RelayItem, decode_batch, encode_batch
from gateway.node.container import Node
from gateway.trust.caller import Identity


@dataclass
class Direct:
    """Hands relay batches to the other node in-process; ``down`` makes it a dead network."""

    nodes: dict[str, Node]
    sender: Node
    down: bool = False
    tamper: bool = False
    calls: list[int] = field(default_factory=list)

    def send(self, peer: Peer, items: Sequence[RelayItem]) -> list[ItemResult]:
        self.calls.append(len(items))
        if self.down:
            raise PeerUnavailable(
                f"{peer.name} cannot be reached: ConnectError", detail={"sent": False}
            )
        body = encode_batch(items)
        if self.tamper:
            body = body[:-40] + bytes([body[-40] ^ 1]) + body[-39:]
        caller = Identity(
            kind="node", node=self.sender.name, certificate=self.sender.key.certificate
        )
        results = receive_batch(self.nodes[peer.name], caller, decode_batch(body, max_items=1000))
        return [
            ItemResult(
                ok=r["ok"],
                receipt=r.get("receipt"),
                duplicate=bool(r.get("duplicate")),
                code=r.get("code"),
                message=r.get("message"),
            )
            for r in results
        ]
