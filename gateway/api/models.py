"""The JSON bodies of the API, as pydantic models: what each route answers (and the admin
requeue's request), documented in the OpenAPI.

Usage::

    return InboxBody(items=[InboxItem(**i) for i in page.items], next_after=page.next_after)
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field

__all__ = [
    "ERROR_RESPONSES",
    "AcceptedBody",
    "AckBody",
    "DeliveriesBody",
    "DeliveryBody",
    "ErrorBody",
    "EventBody",
    "InboxBody",
    "InboxItem",
    "RecipientStatus",
    "RelayBody",
    "RelayResult",
    "RequeueBody",
    "RequeuedBody",
    "StatusBody",
]


class ErrorBody(BaseModel):
    """Every refusal."""

    code: str = Field(description="stable error code, e.g. SIGNATURE_DIGEST_MISMATCH")
    message: str
    detail: dict[str, Any] = Field(default_factory=dict)


class AcceptedBody(BaseModel):
    """The 202 of an ingest: the package is durably stored."""

    id: str = Field(description="the gateway's id for the package")
    kind: str
    duplicate: bool = Field(description="true when this exact package was already stored")
    receipt: dict[str, Any] = Field(description="signed by the node: digest, time, node")
    status_url: str


class InboxItem(BaseModel):
    id: str
    kind: str
    sender: str
    document_id: str | None
    subject: str | None
    status_code: str | None
    size: int
    sha256: str
    received_at: str
    state: str
    attested_by: str | None = Field(
        default=None,
        description="set when the sender's signature was NOT verified: the node that attested "
        "the package's intake (hub API, attest policy; GET .../evidence has the attestation)",
    )


class InboxBody(BaseModel):
    items: list[InboxItem]
    next_after: int | None = Field(description="pass as ?after= for the next page")


class AckBody(BaseModel):
    id: str
    state: str


class EventBody(BaseModel):
    at: str
    kind: str
    code: str
    node: str
    actor: str
    description: str | None


class RecipientStatus(BaseModel):
    recipient: str
    transport: str
    next_hop: str
    status: str | None
    events: list[EventBody]


class StatusBody(BaseModel):
    id: str
    sender: str
    document_id: str | None
    received_at: str
    attested_by: str | None = Field(
        default=None, description="set when the sender's signature was NOT verified"
    )
    recipients: list[RecipientStatus]


class RelayResult(BaseModel):
    ok: bool
    receipt: dict[str, Any] | None = None
    duplicate: bool | None = None
    code: str | None = None
    message: str | None = None
    detail: dict[str, Any] | None = None


class RelayBody(BaseModel):
    """One result per relayed item, in order."""

    results: list[RelayResult]


class DeliveryBody(BaseModel):
    id: int
    document: str
    kind: str
    sender: str
    document_id: str | None
    recipient: str
    next_hop: str
    state: str
    attempts: int
    next_attempt_at: str | None
    last_error: str | None
    updated_at: str


class DeliveriesBody(BaseModel):
    items: list[DeliveryBody]


class RequeueBody(BaseModel):
    ids: list[Annotated[int, Field(ge=1, le=2**53)]] = Field(min_length=1, max_length=1000)


class RequeuedBody(BaseModel):
    requeued: list[int]


#: the refusals every route may answer, documented once for the whole app
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 401, 403, 404, 409, 413, 422, 503)
}
