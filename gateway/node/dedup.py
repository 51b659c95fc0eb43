"""The dedup key of a stored package: how a node knows it has a package already.

``documents.dedup_key`` is unique, so a package stored twice (a retried upload, a relay sent
again) is found instead of duplicated. Every module that stores a package or looks one up by
its identity builds the key here, so the format has one definition:

- a document: ``<sender>|id:<DocumentId>`` (edXML identifies a document by its sender and
  DocumentId: the same pair with other bytes is a conflict, not a new document);
- a package without a DocumentId (a status package): ``<sender>|sha256:<hex>``;
- a node's notice: ``notice|sha256:<hex>`` (a notice names no agency of its own).

Usage::

    key = package_key("000.00.00.G22", "000.00.00.G22,2026/11/23,12/QD", sha256)
"""

from __future__ import annotations

__all__ = ["notice_key", "package_key"]


def package_key(sender: str, document_id: str | None, sha256: str) -> str:
    """The key of a package from agency ``sender``: by DocumentId when it has one, else by
    its bytes' SHA-256.

    Usage: ``package_key(target.organ_id, target.document_id, "")`` finds the document a
    status answers (a DocumentId is always given there, so the digest is not needed).
    """
    if document_id:
        return f"{sender}|id:{document_id}"
    return f"{sender}|sha256:{sha256}"


def notice_key(sha256: str) -> str:
    """The key of a node-signed notice, by its bytes' SHA-256.

    Usage: ``notice_key(hashlib.sha256(body).hexdigest())``
    """
    return f"notice|sha256:{sha256}"
