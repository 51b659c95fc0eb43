"""A client of the hub protocol (HUB-PROTOCOL.md): what a node uses to call a real hub (or a node
of ours serving the hub API), and what the demo and the benchmark drive one with.

It signs like the national SDK (HMAC-SHA256 over the compact JSON of the ``XroadVnpt-``
parameters, :func:`sign_headers`), sends sendEdoc's body as the SDK does (the file, then one
CRLF, with an unpadded ``hash-file``), and reads the trio: a FAIL raises
:class:`~gateway.errors.PeerRefused`, the hub's code in ``detail["error_code"]``
(:func:`hub_code`). Unlike the SDK it keeps no stale parameters, uses a fresh timestamp per
call, and gives every call a timeout.

Usage::

    with HubClient("https://hub.example/vdxp", "vxp.h49.01", secret, verify=ca_file) as hub:
        doc_id = hub.send_edoc("000.00.01.H49", package)     # PeerRefused: hub_code(exc)
        for item in hub.received("edoc"):
            data = hub.get_edoc(item["docId"])
            hub.update_status(item["docId"], "done")
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import ssl
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import httpx

from adapters.hub.wire import hash_file
from gateway.errors import PeerRefused, PeerUnavailable

__all__ = ["HubClient", "hub_code", "sdk_timestamp", "sign_headers"]

PREFIX = "XroadVnpt-"
VERSION = "3.0.201608"


def hub_code(exc: PeerRefused) -> str:
    """The hub's own ErrorCode of a FAIL answer (our stable codes, from a node of ours)."""
    return str(exc.detail.get("error_code") or exc.code)


def sdk_timestamp(when: dt.datetime) -> str:
    """``ddMMyyyy'T'HHmmss+SSSS``: the SDK's timestamp (``SSSS``: milliseconds, 4 digits)."""
    return when.strftime("%d%m%YT%H%M%S") + f"+{when.microsecond // 1000:04d}"


def sign_headers(params: Mapping[str, str], secret: str) -> dict[str, str]:
    """The headers of a signed hub request: each parameter as ``XroadVnpt-<k>``, the
    sign-header (compact JSON of them), its key list, and its HMAC-SHA256 (hex)."""
    entries = {f"{PREFIX}{k}": str(v) for k, v in params.items()}
    sign_header = json.dumps(entries, separators=(",", ":"), ensure_ascii=True)
    mac = hmac.new(secret.encode("utf-8"), sign_header.encode("utf-8"), hashlib.sha256)
    return {
        **entries,
        f"{PREFIX}sign-header": sign_header,
        f"{PREFIX}sign-header-key": ";".join(params),
        f"{PREFIX}hash-header": mac.hexdigest(),
        f"{PREFIX}version": VERSION,
    }


class HubClient:
    """One connected system's calls to a hub endpoint (``https://host:port/prefix``)."""

    def __init__(
        self,
        endpoint: str,
        systemid: str,
        secret: str,
        *,
        verify: str | bool | ssl.SSLContext = True,
        timeout: float = 30.0,
    ) -> None:
        """``verify``: a CA file (a private CA), an SSL context, or True (the system's CAs)."""
        self.endpoint = endpoint.rstrip("/")
        self.systemid = systemid
        self._secret = secret
        if isinstance(verify, str):
            verify = ssl.create_default_context(cafile=verify)
        self._http = httpx.Client(verify=verify, timeout=timeout)

    def __enter__(self) -> HubClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:  # never the secret
        return f"HubClient({self.endpoint!r}, {self.systemid!r})"

    # -- the operations -----------------------------------------------------------------------

    def send_edoc(
        self, sender: str, file: bytes, *, messagetype: str = "edoc", to: list[str] | None = None
    ) -> str:
        """sendEdoc: the hub's ``DocId`` for ``file`` (a repeat gets the first one)."""
        params = {
            "from": sender,
            "servicetype": "eDoc",
            "messagetype": messagetype,
            "hash-file": hash_file(file),
        }
        if to:
            params["to"] = json.dumps(to)
        answer = self._call(
            "sendEdoc", params, file + b"\r\n", content_type="application/octet-stream"
        )
        return str(answer.get("DocId", ""))

    def received(self, messagetype: str = "edoc") -> list[dict[str, Any]]:
        """getReceivedEdocList: what waits for the system (``docId``, ``from``, ...)."""
        answer = self._call(
            "getReceivedEdocList", {"servicetype": "eDoc", "messagetype": messagetype}
        )
        data = answer.get("data", [])
        return [dict(item) for item in data] if isinstance(data, list) else []

    def get_edoc(self, doc_id: str) -> bytes:
        """getEdoc: the package's bytes."""
        answer = self._call("getEdoc", {"docId": doc_id}, b"{}")
        return base64.b64decode(str(answer.get("data", "")), validate=False)

    def update_status(self, doc_id: str, status: str) -> None:
        """updateStatus ``done`` / ``fail`` / ``processing``."""
        self._call("updateStatus", {"docId": doc_id, "status": status}, b"{}")

    def sent(self, doc_id: str, messagetype: str = "edoc") -> list[dict[str, Any]]:
        """getSentEdocList: per recipient, the trace of a package this system sent."""
        answer = self._call(
            "getSentEdocList",
            {"servicetype": "eDoc", "messagetype": messagetype, "docId": doc_id},
        )
        data = answer.get("data", [])
        return [dict(item) for item in data] if isinstance(data, list) else []

    def agencies(self) -> list[dict[str, Any]]:
        """getAgenciesList."""
        data = self._call("getAgenciesList", {}).get("data", [])
        return [dict(item) for item in data] if isinstance(data, list) else []

    # -- the wire -----------------------------------------------------------------------------

    def _call(
        self,
        operation: str,
        params: Mapping[str, str],
        body: bytes = b"",
        *,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        signed = {
            "systemid": self.systemid,
            "timestamp": sdk_timestamp(dt.datetime.now()),
            "Content-Type": content_type,
            **params,
        }
        headers = {**sign_headers(signed, self._secret), "Content-Type": content_type}
        try:
            response = self._http.post(
                f"{self.endpoint}/{operation}", content=body, headers=headers
            )
        except httpx.HTTPError as exc:
            never = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
            raise PeerUnavailable(
                f"hub {self.endpoint} cannot be reached: {type(exc).__name__}",
                # "sent": whether the hub may have acted on it (unknown after the connection)
                detail={"operation": operation, "sent": not never},
            ) from None
        try:
            answer = response.json()
        except ValueError:
            raise PeerUnavailable(
                f"hub {self.endpoint} answered {operation} with no JSON (HTTP "
                f"{response.status_code})",
                detail={"operation": operation, "status": response.status_code},
            ) from None
        if not isinstance(answer, dict):
            raise PeerUnavailable(f"hub {self.endpoint} answered {operation} with no trio")
        if answer.get("status") != "OK" or str(answer.get("ErrorCode")) != "0":
            if response.status_code >= 500:
                raise PeerUnavailable(
                    f"hub {self.endpoint}: {operation} failed ({response.status_code})",
                    detail={"operation": operation, "status": response.status_code},
                )
            code, desc = str(answer.get("ErrorCode", "")), str(answer.get("ErrorDesc", ""))
            # the hub's own code in detail["error_code"] (hub_code): the error tree is pinned
            raise PeerRefused(
                f"{operation}: {code}: {desc}"[:500],
                detail={"operation": operation, "error_code": code},
            )
        return answer
