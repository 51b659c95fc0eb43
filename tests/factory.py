"""Build signed edXML test packages from the real field samples: any sender, any recipients."""

from __future__ import annotations

from gateway.dev.samples import document, status
from gateway.trust.signing import SigningKey, sign_package

__all__ = ["document", "signed", "status"]


def signed(data: bytes, key: SigningKey) -> bytes:
    return sign_package(data, key)
