"""A national hub as this node's parent (``[directory] parent = {kind = "hub", ...}``).

Two halves, both through :class:`adapters.hub.client.HubClient` with this node's systemid and
secret at the hub:

- **Sending**: :class:`HubAwareTransport` is the dispatcher's transport. A batch for the hub
  parent goes out as one sendEdoc per package (a document, or a status package with
  ``messagetype`` status), with the outbox's retries, breaker and dead letters unchanged; the
  hub's ``DocId`` stands where a node's signed receipt would (a hub signs nothing). A node notice
  (JSON) cannot travel through a hub: it is refused, dead-lettered and logged. Batches for
  gateway nodes go through :class:`adapters.peer.HttpsPeerTransport` as before.
- **Receiving**: :class:`HubPoller` (a scheduler job) pulls getReceivedEdocList for documents
  and statuses, fetches each with getEdoc, stores it (:func:`gateway.network.hubin.store_from_hub`,
  one transaction) and only then acknowledges it with updateStatus ``done``; a package the node
  refuses is acknowledged ``fail``. A crash between storing and acknowledging loses nothing and
  stores nothing twice: the next poll finds it stored and acknowledges it.

Usage::

    transport = HubAwareTransport(settings, HttpsPeerTransport(settings))
    poller = HubPoller(node)
    poller.poll()            # what the scheduler's job calls
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence
from pathlib import Path

import structlog

from adapters.hub.client import HubClient, hub_code
from gateway.errors import ConfigError, GatewayError, PeerRefused, PeerUnavailable
from gateway.network.dispatcher import Transport
from gateway.network.hubin import hub_parent, store_from_hub
from gateway.network.routing import Peer
from gateway.network.wire import ItemResult, RelayItem
from gateway.node.container import Node
from gateway.settings import PeerSettings, Settings

__all__ = ["HubAwareTransport", "HubPoller", "hub_client"]

log = structlog.get_logger("gateway.hub")


def _secret(parent: PeerSettings) -> str:
    if parent.secret_env is not None:
        value = os.environ.get(parent.secret_env)
        if not value:
            raise ConfigError(
                f"[directory] parent: the environment variable {parent.secret_env} holding "
                "the hub secret is not set",
                detail={"key": "directory.parent.secret_env"},
            )
        return value.strip()
    assert parent.secret_file is not None
    try:
        return Path(parent.secret_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"[directory] parent: cannot read the hub secret file {parent.secret_file}: "
            f"{exc.strerror}",
            detail={"key": "directory.parent.secret_file"},
        ) from None


def hub_client(settings: Settings) -> HubClient:
    """This node's client of its hub parent (its trust anchors verify the hub's TLS too)."""
    parent = settings.directory.parent
    if parent is None or parent.kind != "hub" or parent.systemid is None:
        raise ConfigError("[directory] parent is not a hub")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    for anchor in settings.trust.anchors:
        context.load_verify_locations(cafile=str(anchor))
    delivery = settings.delivery
    return HubClient(
        parent.url, parent.systemid, _secret(parent), verify=context, timeout=delivery.timeout
    )


class HubAwareTransport:
    """The dispatcher's transport when the parent is a hub: sendEdoc to it, relay to nodes."""

    def __init__(self, settings: Settings, nodes: Transport) -> None:
        parent = settings.directory.parent
        self._hub = parent.name if parent is not None and parent.kind == "hub" else None
        self._settings = settings
        self._nodes = nodes
        self._client: HubClient | None = None

    def close(self) -> None:
        """Close the connections to the hub."""
        if self._client is not None:
            self._client.close()

    def send(self, peer: Peer, items: Sequence[RelayItem]) -> list[ItemResult]:
        if peer.name != self._hub:
            return self._nodes.send(peer, items)
        if self._client is None:
            self._client = hub_client(self._settings)
        return [self._send_one(self._client, item) for item in items]

    def _send_one(self, client: HubClient, item: RelayItem) -> ItemResult:
        if item.kind == "notice":
            return ItemResult(
                ok=False,
                code=PeerRefused.code,
                message="a hub carries edXML packages only: a node notice cannot go through it",
            )
        sender = str(item.hops[-1]["hop"]["sender"])  # the sealed hop record's fields
        try:
            doc_id = client.send_edoc(
                sender, item.body, messagetype="status" if item.kind == "status" else "edoc"
            )
        except PeerRefused as exc:
            return ItemResult(ok=False, code=hub_code(exc), message=exc.message)
        if not doc_id:
            raise PeerUnavailable("the hub answered sendEdoc without a DocId")
        return ItemResult(ok=True, hub_doc_id=doc_id)


class HubPoller:
    """Pulls what the hub holds for this node's agencies; acknowledges only what is stored."""

    def __init__(self, node: Node, client: HubClient | None = None) -> None:
        self.node = node
        self._client = client

    def close(self) -> None:
        """Close the connections to the hub."""
        if self._client is not None:
            self._client.close()

    def poll(self) -> dict[str, int]:
        """One pass over the hub's lists (documents, then statuses); counts of what it did."""
        if hub_parent(self.node) is None:
            return {}
        if self._client is None:
            self._client = hub_client(self.node.settings)
        counts = {"stored": 0, "repeated": 0, "refused": 0}
        for messagetype in ("edoc", "status"):
            try:
                listed = self._client.received(messagetype)
            except GatewayError as exc:
                log.warning("hub.poll_failed", messagetype=messagetype, code=exc.code)
                continue
            for item in listed:
                doc_id = str(item.get("docId", ""))
                if doc_id:
                    counts[self._take(doc_id, messagetype)] += 1
        if any(counts.values()):
            log.info("hub.polled", **counts)
        return counts

    def _take(self, doc_id: str, messagetype: str) -> str:
        assert self._client is not None
        try:
            data = self._client.get_edoc(doc_id)
        except GatewayError as exc:
            log.warning("hub.get_failed", doc=doc_id, code=exc.code)
            return "refused"
        try:
            _, repeated = store_from_hub(self.node, data, kind=messagetype)
        except PeerUnavailable:
            raise
        except GatewayError:
            # refused here (audited): the hub is told, so it stops offering it
            self._ack(doc_id, "fail")
            return "refused"
        # stored (committed) first, acknowledged after: a crash in between is a repeat later
        self._ack(doc_id, "done")
        return "repeated" if repeated else "stored"

    def _ack(self, doc_id: str, status: str) -> None:
        assert self._client is not None
        try:
            self._client.update_status(doc_id, status)
        except GatewayError as exc:  # offered again next time, and acknowledged then
            log.warning("hub.ack_failed", doc=doc_id, code=exc.code)
