"""The hub protocol's operations, mapped onto the node's own model (HUB-PROTOCOL.md 5, 6).

=====================  ===========================================================================
sendEdoc               ingest, as the ``from`` agency (one of the system's): a document or, with
                       ``messagetype`` status, a status package; ``DocId`` = the node's id
getReceivedEdocList    the inboxes of the system's agencies (documents or statuses)
getEdoc                the stored bytes, base64 (a recipient's first fetch: ``fetched``)
updateStatus           ``done``/``fail``: acknowledged (out of the list); ``processing``: fetched
getSentEdocList        the per-recipient timeline of a package the system's agency sent
getAgenciesList        every agency addressable from this node (QD20: the same, with code102)
countReceive*          how many documents (statuses) wait in the inboxes
downloadEdoc           the stored bytes, raw
=====================  ===========================================================================

The same document reaches a DMS the same way whichever API its sender used: the inbox, the
bytes and the timelines are the node's own. Node notices (JSON, not edXML) are not listed: the
SDK's parsers cannot read them; a failure shows in getSentEdocList (``sendStatus`` failed).
Each operation reads only its own parameters: a reused SDK object sends every key it ever sent.

Usage::

    result = OPERATIONS["getEdoc"](node, auth, b"")       # dict: the trio's extra keys
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from adapters.hub.wire import doc_id_param
from gateway.agency import AgencyCode
from gateway.errors import (
    DocumentNotFound,
    GatewayError,
    ParametersInvalid,
)
from gateway.node.container import Node, directory_view
from gateway.node.inbox import acknowledge, fetch, list_inbox, status_view
from gateway.node.systems import Authenticated, check_agency
from gateway.trust.caller import Identity

__all__ = ["READS", "as_agency", "download"]

#: the hub's message types and the node's package kinds
KINDS = {"edoc": "document", "status": "status"}


def as_agency(auth: Authenticated, agency: str) -> Identity:
    """The caller identity of ``auth``'s system acting for ``agency`` (checked to be its own)."""
    check_agency(auth, agency)
    return Identity(
        kind="agency",
        agency=AgencyCode.parse(agency),
        certificate=None,
        source="hub",
        system=auth.system.systemid,
    )


def _identities(node: Node, auth: Authenticated) -> list[Identity]:
    """The system's agencies hosted here, as callers (a DMS reads for all of them at once)."""
    return [as_agency(auth, a) for a in auth.system.agencies if a in node.hosted]


def _kind(auth: Authenticated) -> str:
    value = (auth.param("messagetype") or "edoc").strip().lower()
    if value not in KINDS:
        raise ParametersInvalid(
            f"messagetype is {value!r}; edoc or status", detail={"messagetype": value}
        )
    return KINDS[value]


def _inbox(node: Node, auth: Authenticated, kind: str) -> list[tuple[str, dict[str, Any]]]:
    items: list[tuple[str, dict[str, Any]]] = []
    for caller in _identities(node, auth):
        after = 0
        while True:
            page = list_inbox(node, caller, limit=500, after=after)
            items.extend((str(caller.agency), i) for i in page.items if i["kind"] == kind)
            if page.next_after is None:
                break
            after = page.next_after
    return items


def received_list(node: Node, auth: Authenticated, _body: bytes) -> dict[str, Any]:
    """getReceivedEdocList: what waits in the system's inboxes, oldest first."""
    kind = _kind(auth)
    message_type = "edoc" if kind == "document" else "status"
    return {
        "data": [
            {
                "docId": item["id"],
                "messageType": message_type,
                "serviceType": "eDoc",
                "from": item["sender"],
                "to": agency,
                "created_time": item["received_at"],
                "updated_time": item["received_at"],
                "status": item["state"],
                "status_desc": item["subject"] or "",
            }
            for agency, item in _inbox(node, auth, kind)
        ]
    }


def count(kind: str) -> Callable[[Node, Authenticated, bytes], dict[str, Any]]:
    """countReceiveEdoc / countReceiveStatus: how many packages of ``kind`` wait."""

    def counted(node: Node, auth: Authenticated, _body: bytes) -> dict[str, Any]:
        return {"count": len(_inbox(node, auth, kind))}

    return counted


def _fetch(node: Node, auth: Authenticated) -> bytes:
    doc_id = doc_id_param(auth.params, strict=False)
    for caller in _identities(node, auth):
        try:
            return fetch(node, caller, doc_id)
        except DocumentNotFound:
            continue
    raise DocumentNotFound(detail={"id": doc_id})


def get_edoc(node: Node, auth: Authenticated, _body: bytes) -> dict[str, Any]:
    """getEdoc: the package's bytes exactly as stored, base64 (``filePath`` ignored)."""
    return {"data": base64.b64encode(_fetch(node, auth)).decode("ascii")}


def download(node: Node, auth: Authenticated) -> bytes:
    """downloadEdoc: the raw bytes (answered as they are, not in JSON)."""
    return _fetch(node, auth)


#: updateStatus values: the description of the transport event each records, on this node's
#: timeline and, by a progress notice, on the sender's node
_UPDATES = {
    "done": "done: the agency's system has the package (updateStatus)",
    "fail": "fail: the agency's system could not process the package (updateStatus)",
    "processing": "processing: the agency's system is processing the package (updateStatus)",
}


def update_status(node: Node, auth: Authenticated, _body: bytes) -> dict[str, Any]:
    """updateStatus: ``done`` and ``fail`` acknowledge the package (it leaves the list),
    ``processing`` keeps it (fetched); each is recorded with its word, here and for the
    sender. Idempotent: the SDK retries."""
    doc_id = doc_id_param(auth.params, strict=True)
    value = (auth.param("status") or "").strip().lower()
    if value not in _UPDATES:
        raise ParametersInvalid(
            f"status is {value!r}; done, fail or processing", detail={"status": value}
        )
    last: GatewayError = DocumentNotFound(detail={"id": doc_id})
    for caller in _identities(node, auth):
        try:
            if value == "processing":
                fetch(node, caller, doc_id, note=_UPDATES[value])
            else:
                acknowledge(node, caller, doc_id, note=_UPDATES[value])
            return {}
        except DocumentNotFound as exc:
            last = exc
    raise last


def sent_list(node: Node, auth: Authenticated, _body: bytes) -> dict[str, Any]:
    """getSentEdocList: one row per recipient of a package the system's agency sent."""
    doc_id = doc_id_param(auth.params, strict=False)
    view: dict[str, Any] | None = None
    for caller in _identities(node, auth):
        try:
            view = status_view(node, caller, doc_id)
            break
        except DocumentNotFound:
            continue
    if view is None:
        raise DocumentNotFound(detail={"id": doc_id})
    rows = []
    for entry in view["recipients"]:
        events = entry["events"]
        delivered = next(
            (e["at"] for e in events if e["kind"] == "transport" and e["code"] == "delivered"),
            None,
        )
        # the latest transport news: a failure's reason, or the DMS's word (done, fail, ...)
        latest = next((e for e in reversed(events) if e["kind"] == "transport"), None)
        last_status = next((e for e in reversed(events) if e["kind"] == "status"), None)
        rows.append(
            {
                "senderDocId": view["id"],
                "fromCode": view["sender"],
                "toCode": entry["recipient"],
                "serviceType": "eDoc",
                "messageType": "edoc",
                "notation": view["document_id"],
                "sentTime": view["received_at"],
                "receivedTime": delivered,
                "sendStatus": entry["transport"],
                "sendStatusDesc": (latest or {}).get("description") or entry["transport"],
                "receiveStatus": entry["status"],
                "receiveStatusDesc": (last_status or {}).get("description"),
            }
        )
    return {"data": rows}


def agencies(
    node: Node, auth: Authenticated, _body: bytes, *, qd20: bool = False
) -> dict[str, Any]:
    """getAgenciesList: every agency addressable from this node, the caller's own included:
    the agencies hosted here and the codes this node's children serve (each covers the codes
    below it); everything else goes through the parent."""
    view = directory_view(node)
    codes: dict[str, str] = {code: "" for code in view["hosted"]}
    for child in view.get("children", []):
        for code in child.get("serves", []):
            codes.setdefault(code, "")
    data = []
    for code in sorted(codes):
        item = {
            "code": code,
            "id": code,
            "pid": "",
            "name": code,
            "mail": "",
            "oldCode": "",
        }
        if qd20:
            item["code102"] = code
        data.append(item)
    return {"data": data}


def agencies_qd20(node: Node, auth: Authenticated, body: bytes) -> dict[str, Any]:
    """getAgenciesListQD20: the agencies list with ``code102`` (``level`` not narrowed)."""
    return agencies(node, auth, body, qd20=True)


#: the JSON operations other than sendEdoc: name -> (method, function)
READS: dict[str, tuple[str, Callable[[Node, Authenticated, bytes], dict[str, Any]]]] = {
    "getReceivedEdocList": ("POST", received_list),
    "getEdoc": ("POST", get_edoc),
    "updateStatus": ("POST", update_status),
    "getSentEdocList": ("POST", sent_list),
    "getAgenciesList": ("POST", agencies),
    "getAgenciesListQD20": ("POST", agencies_qd20),
    "countReceiveEdoc": ("POST", count("document")),
    "countReceiveStatus": ("POST", count("status")),
}
