"""The peer transport: node-to-node relay over HTTPS with node certificates.

One relay request carries a batch of packages to one neighbour, in order, in the wire format of
:mod:`gateway.network.wire`. A refusal of the whole request (``4xx`` with ``{code, message,
detail}``) refuses every item with the peer's code (``RELAY_PEER_REFUSED`` when its answer
names none); a connection error, a timeout or a ``5xx`` means "try again later"
(:class:`PeerUnavailable`). ``tests/integration/test_peer_transport.py`` holds it to this
against real HTTPS servers.

Usage::

    transport = HttpsPeerTransport(settings)
    results = transport.send(peer, items)
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Sequence

import httpx

from gateway.errors import PeerRefused, PeerUnavailable
from gateway.network.routing import Peer
from gateway.network.wire import RELAY_CONTENT_TYPE, RELAY_PATH, ItemResult, RelayItem, encode_batch
from gateway.settings import Settings

__all__ = ["HttpsPeerTransport"]


class HttpsPeerTransport:
    """Sends relay batches to neighbours over HTTPS: keep-alive, the node certificate as client.

    One ``httpx.Client`` per peer (sync: a relay batch is one request; measured cheaper per
    request than the async client), created on first use and reused.
    """

    def __init__(self, settings: Settings) -> None:
        if settings.node.cert is None or settings.node.key is None:
            raise ValueError("[node] cert and key are required to talk to peers")
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        for anchor in settings.trust.anchors:
            context.load_verify_locations(cafile=str(anchor))
        context.load_cert_chain(str(settings.node.cert), str(settings.node.key))
        self._context = context
        delivery = settings.delivery
        self._timeout = httpx.Timeout(delivery.timeout, connect=delivery.connect_timeout)
        self._clients: dict[str, httpx.Client] = {}
        self._lock = threading.Lock()

    def _client(self, peer: Peer) -> httpx.Client:
        with self._lock:
            client = self._clients.get(peer.name)
            if client is None:
                client = httpx.Client(
                    base_url=peer.url,
                    verify=self._context,
                    timeout=self._timeout,
                    limits=httpx.Limits(max_connections=4, max_keepalive_connections=4),
                )
                self._clients[peer.name] = client
            return client

    def send(self, peer: Peer, items: Sequence[RelayItem]) -> list[ItemResult]:
        """Relay ``items`` to ``peer``; one result per item, in order.

        Raises :class:`PeerUnavailable` when the batch should be tried again later (connection
        refused, timeout, TLS failure, 5xx, an answer that cannot be read); its
        ``detail["sent"]`` is False only when the peer cannot have stored the batch. A 4xx
        refusal of the whole request becomes a failed result for every item, with the peer's
        code.
        """
        body = encode_batch(items)
        try:
            response = self._client(peer).post(
                RELAY_PATH, content=body, headers={"content-type": RELAY_CONTENT_TYPE}
            )
        except (httpx.TransportError, ssl.SSLError) as exc:
            raise PeerUnavailable(
                f"{peer.name} cannot be reached: {type(exc).__name__}: {exc}",
                # "sent": whether the peer may have the batch (the outcome is unknown then)
                detail={"peer": peer.name, "error": type(exc).__name__, "sent": _may_have(exc)},
            ) from None
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise PeerUnavailable(
                f"{peer.name} answered {response.status_code}",
                # 503 (not ready), 408 and 429 refuse before storing; another 5xx may come
                # after the peer stored the batch
                detail={
                    "peer": peer.name,
                    "status": response.status_code,
                    "sent": response.status_code not in (503, 408, 429),
                },
            )
        try:
            answer = response.json()
        except ValueError:
            raise PeerUnavailable(
                f"{peer.name} answered {response.status_code} with a body that is not JSON",
                detail={"peer": peer.name, "status": response.status_code},
            ) from None
        if response.status_code >= 400:
            code = answer.get("code") if isinstance(answer, dict) else None
            message = answer.get("message") if isinstance(answer, dict) else None
            # Every code a node records is in the error tree: a bare status is PeerRefused's.
            refused = ItemResult(
                ok=False,
                code=str(code or PeerRefused.code),
                message=str(message or f"{peer.name} refused the relay"),
                detail={"status": response.status_code},
            )
            return [refused for _ in items]
        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, list) or len(results) != len(items):
            raise PeerUnavailable(
                f"{peer.name} answered with {type(results).__name__} instead of one result per"
                " item",
                detail={"peer": peer.name},
            )
        out: list[ItemResult] = []
        for result in results:
            if not isinstance(result, dict):
                raise PeerUnavailable(f"{peer.name} answered a result that is not an object")
            if result.get("ok") is True and isinstance(result.get("receipt"), dict):
                out.append(
                    ItemResult(
                        ok=True, receipt=result["receipt"], duplicate=bool(result.get("duplicate"))
                    )
                )
            else:
                detail = result.get("detail")
                out.append(
                    ItemResult(
                        ok=False,
                        code=str(result.get("code") or PeerRefused.code),
                        message=str(result.get("message") or "refused"),
                        detail=detail if isinstance(detail, dict) else {},
                    )
                )
        return out

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


def _may_have(exc: BaseException) -> bool:
    """Whether the peer may have stored the batch despite ``exc``: not when the connection was
    never made (refused, unreachable, the TLS handshake failed), else it cannot be known."""
    return not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | ssl.SSLError)
