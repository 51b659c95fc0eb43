"""One exception tree for the whole gateway.

Every error carries a stable ``code`` (never changed once shipped), the HTTP status it maps to,
and what it means in edXML / national-hub terms. The first line of each class docstring is its
default message. API errors are rendered as JSON ``{code, message, detail}``; every answer the
node gives a client with an error status carries one of the codes below, and nothing else
(the framework's own refusals included: unknown path, wrong method, unparseable HTTP).

**Naming.** A code is ``<SUBJECT>_<PROBLEM>``: its first word names what was refused (the XML,
the envelope, the signature, the certificate, the request, the relay, the document, the
delivery, the status, the database, the node), so a client can sort refusals by prefix, and
one problem on two subjects stays two codes: ``REQUEST_PATH_NOT_FOUND`` (a mistyped URL) is
not ``DOCUMENT_NOT_FOUND`` (an id this caller cannot see). Refusals of the HTTP request itself,
whether by the framework or by the node's own limits, are ``REQUEST_*``; there is no bare
``NOT_FOUND`` and no ``HTTP_<status>``. A family's own code (``REQUEST_ERROR``) is never raised
by the node; its members' are. ``tests/unit/test_errors.py`` pins every (code, HTTP status)
pair and checks this drawing against the classes.

::

    GatewayError                        GATEWAY_ERROR
    ├── UsageError                      USAGE_ERROR                 (CLI misuse, unreadable file)
    ├── ConfigError                     CONFIG_INVALID
    ├── WorkerFailed                    WORKER_FAILED               (a node's worker cannot start)
    ├── NodeNotReady                    NODE_NOT_READY              (answered by /readyz)
    ├── XMLError                        XML_ERROR                   (hostile or broken XML)
    │   ├── MalformedXML                XML_MALFORMED
    │   ├── DoctypeForbidden            XML_DOCTYPE_FORBIDDEN
    │   ├── ExternalEntityForbidden     XML_EXTERNAL_ENTITY
    │   ├── EntityExpansionForbidden    XML_ENTITY_EXPANSION
    │   ├── EntityDeclarationForbidden  XML_ENTITY_DECLARATION
    │   ├── XMLTooLarge                 XML_TOO_LARGE
    │   ├── XMLTooDeep                  XML_TOO_DEEP
    │   ├── XMLTooManyElements          XML_TOO_MANY_ELEMENTS       (elements, comments, PIs)
    │   ├── XMLTooManyAttributes        XML_TOO_MANY_ATTRIBUTES
    │   ├── XMLTooManyNamespaces        XML_TOO_MANY_NAMESPACES
    │   ├── XMLTextTooLarge             XML_TEXT_TOO_LARGE
    │   └── UndeclaredPrefix            XML_PREFIX_UNDECLARED       (hub packages, policy require)
    ├── SchemaError                     SCHEMA_INVALID
    ├── EnvelopeError                   ENVELOPE_INVALID            (valid, but inconsistent)
    │   ├── UnknownPackageKind          ENVELOPE_UNKNOWN_KIND
    │   ├── DuplicateElement            ENVELOPE_DUPLICATE_ELEMENT
    │   ├── MissingElement              ENVELOPE_MISSING_ELEMENT
    │   ├── InvalidValue                ENVELOPE_INVALID_VALUE
    │   ├── ManifestMismatch            ENVELOPE_MANIFEST_MISMATCH
    │   └── AttachmentEncodingError     ENVELOPE_ATTACHMENT_ENCODING
    ├── AgencyCodeError                 AGENCY_CODE_INVALID
    ├── SignatureError                  SIGNATURE_INVALID           (the XMLDSig itself)
    │   ├── SignatureMissing            SIGNATURE_MISSING
    │   ├── SignatureMalformed          SIGNATURE_MALFORMED
    │   ├── WrappedEnvelope             SIGNATURE_WRAPPED_ENVELOPE
    │   ├── ForgedHeader                SIGNATURE_FORGED_HEADER
    │   ├── DuplicateId                 SIGNATURE_DUPLICATE_ID
    │   ├── SignatureMisplaced          SIGNATURE_MISPLACED
    │   ├── PartialCoverage             SIGNATURE_PARTIAL_COVERAGE
    │   ├── WeakAlgorithm               SIGNATURE_WEAK_ALGORITHM
    │   ├── UnsupportedAlgorithm        SIGNATURE_UNSUPPORTED_ALGORITHM
    │   ├── SignatureNonCanonical       SIGNATURE_NON_CANONICAL     (high-S ECDSA)
    │   ├── SignatureValueMismatch      SIGNATURE_VALUE_MISMATCH
    │   ├── DigestMismatch              SIGNATURE_DIGEST_MISMATCH
    │   └── UnverifiedRefused           SIGNATURE_UNVERIFIED_REFUSED (attested; recipient refuses)
    ├── TrustError                      TRUST_ERROR                 (who signed; believe them?)
    │   ├── CertificateMalformed        CERT_MALFORMED
    │   ├── CertificateUntrusted        CERT_UNTRUSTED
    │   ├── CertificateKeyWeak          CERT_KEY_WEAK               (RSA < 2048, other curves)
    │   ├── CertificateNotValidAtSigning CERT_NOT_VALID_AT_SIGNING
    │   ├── CertificateExpired          CERT_EXPIRED
    │   ├── CertificateRevoked          CERT_REVOKED
    │   ├── CRLInvalid                  CRL_INVALID
    │   ├── SignerUnbound               SIGNER_AGENCY_UNBOUND
    │   └── SignerMismatch              SIGNER_AGENCY_MISMATCH
    ├── AuthError                       AUTH_ERROR                  (who is calling the API)
    │   ├── AuthRequired                AUTH_REQUIRED
    │   ├── ClientCertUntrusted         AUTH_CERT_UNTRUSTED
    │   ├── UnknownAgency               AUTH_UNKNOWN_AGENCY
    │   ├── SenderMismatch              AUTH_SENDER_MISMATCH
    │   ├── Forbidden                   AUTH_FORBIDDEN
    │   ├── SystemUnknown               AUTH_SYSTEM_UNKNOWN         (hub protocol: no such systemid)
    │   ├── SystemDisabled              AUTH_SYSTEM_DISABLED
    │   ├── HubSignatureInvalid         AUTH_HMAC_INVALID           (hub protocol: sign headers)
    │   └── SystemAgencyForbidden       AUTH_SYSTEM_AGENCY_FORBIDDEN (not this system's agency)
    ├── RequestError                    REQUEST_ERROR               (the HTTP request itself)
    │   ├── PathNotFound                REQUEST_PATH_NOT_FOUND      (no route at this path)
    │   ├── MethodNotAllowed            REQUEST_METHOD_NOT_ALLOWED
    │   ├── RequestMalformed            REQUEST_MALFORMED           (not parseable HTTP/1.1)
    │   ├── ParametersInvalid           REQUEST_PARAMETERS_INVALID  (path or query)
    │   ├── BodyInvalid                 REQUEST_BODY_INVALID        (JSON body: unreadable, wrong)
    │   ├── TooManyRecipients           REQUEST_TOO_MANY_RECIPIENTS
    │   ├── TooManyAttachments          REQUEST_TOO_MANY_ATTACHMENTS
    │   ├── RecipientUnreachable        REQUEST_RECIPIENT_UNREACHABLE
    │   ├── BodyTooLarge                REQUEST_BODY_TOO_LARGE
    │   ├── JSONTooDeep                 REQUEST_JSON_TOO_DEEP
    │   ├── HeadersTooLarge             REQUEST_HEADERS_TOO_LARGE
    │   ├── RequestTimeout              REQUEST_TIMEOUT
    │   ├── BudgetExceeded              REQUEST_BUDGET_EXCEEDED     (CPU time per upload)
    │   ├── HashFileMismatch            REQUEST_HASH_FILE_MISMATCH  (hub: body vs hash-file)
    │   └── WrongPackageKind            REQUEST_WRONG_PACKAGE_KIND
    ├── RelayError                      RELAY_ERROR                 (node-to-node relay)
    │   ├── RelayMalformed              RELAY_MALFORMED
    │   ├── PeerUnknown                 RELAY_PEER_UNKNOWN
    │   ├── HopChainBroken              RELAY_HOP_CHAIN_BROKEN
    │   ├── HopSignatureInvalid         RELAY_HOP_SIGNATURE_INVALID
    │   ├── EnvelopeTampered            RELAY_ENVELOPE_TAMPERED
    │   ├── RouteLoop                   RELAY_ROUTE_LOOP
    │   ├── ReceiptInvalid              RELAY_RECEIPT_INVALID
    │   ├── PeerRefused                 RELAY_PEER_REFUSED          (the peer's 4xx had no code)
    │   └── PeerUnavailable             RELAY_PEER_UNAVAILABLE
    ├── DeliveryNotFound                DELIVERY_NOT_FOUND
    ├── DeliveryNotFailed               DELIVERY_NOT_FAILED         (only a failed one is requeued)
    ├── DocumentNotFound                DOCUMENT_NOT_FOUND
    ├── DocumentConflict                DOCUMENT_CONFLICT
    ├── StatusError                     STATUS_ERROR                (business statuses)
    │   ├── StatusTargetUnknown         STATUS_TARGET_UNKNOWN
    │   ├── StatusNotAllowed            STATUS_NOT_ALLOWED
    │   └── StatusTransitionInvalid     STATUS_TRANSITION_INVALID
    ├── InternalError                   INTERNAL_ERROR              (a bug: logged, never shown)
    └── StorageError                    STORAGE_ERROR               (the node's database)
        ├── DatabaseNotMigrated         DATABASE_NOT_MIGRATED
        ├── DatabaseUnavailable         DATABASE_UNAVAILABLE
        └── AuditChainBroken            AUDIT_CHAIN_BROKEN

Usage::

    raise SchemaError(detail={"path": "/edXML/...", "reason": "..."})
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AgencyCodeError",
    "AttachmentEncodingError",
    "AuditChainBroken",
    "AuthError",
    "AuthRequired",
    "BodyInvalid",
    "BodyTooLarge",
    "BudgetExceeded",
    "CRLInvalid",
    "CertificateExpired",
    "CertificateKeyWeak",
    "CertificateMalformed",
    "CertificateNotValidAtSigning",
    "CertificateRevoked",
    "CertificateUntrusted",
    "ClientCertUntrusted",
    "ConfigError",
    "DatabaseNotMigrated",
    "DatabaseUnavailable",
    "DeliveryNotFailed",
    "DeliveryNotFound",
    "DigestMismatch",
    "DoctypeForbidden",
    "DocumentConflict",
    "DocumentNotFound",
    "DuplicateElement",
    "DuplicateId",
    "EntityDeclarationForbidden",
    "EntityExpansionForbidden",
    "EnvelopeError",
    "EnvelopeTampered",
    "ExternalEntityForbidden",
    "Forbidden",
    "ForgedHeader",
    "GatewayError",
    "HashFileMismatch",
    "HeadersTooLarge",
    "HopChainBroken",
    "HopSignatureInvalid",
    "HubSignatureInvalid",
    "InternalError",
    "InvalidValue",
    "JSONTooDeep",
    "MalformedXML",
    "ManifestMismatch",
    "MethodNotAllowed",
    "MissingElement",
    "NodeNotReady",
    "ParametersInvalid",
    "PartialCoverage",
    "PathNotFound",
    "PeerRefused",
    "PeerUnavailable",
    "PeerUnknown",
    "ReceiptInvalid",
    "RecipientUnreachable",
    "RelayError",
    "RelayMalformed",
    "RequestError",
    "RequestMalformed",
    "RequestTimeout",
    "RouteLoop",
    "SchemaError",
    "SenderMismatch",
    "SignatureError",
    "SignatureMalformed",
    "SignatureMisplaced",
    "SignatureMissing",
    "SignatureNonCanonical",
    "SignatureValueMismatch",
    "SignerMismatch",
    "SignerUnbound",
    "StatusError",
    "StatusNotAllowed",
    "StatusTargetUnknown",
    "StatusTransitionInvalid",
    "StorageError",
    "SystemAgencyForbidden",
    "SystemDisabled",
    "SystemUnknown",
    "TooManyAttachments",
    "TooManyRecipients",
    "TrustError",
    "UndeclaredPrefix",
    "UnknownAgency",
    "UnknownPackageKind",
    "UnsupportedAlgorithm",
    "UnverifiedRefused",
    "UsageError",
    "WeakAlgorithm",
    "WorkerFailed",
    "WrappedEnvelope",
    "WrongPackageKind",
    "XMLError",
    "XMLTextTooLarge",
    "XMLTooDeep",
    "XMLTooLarge",
    "XMLTooManyAttributes",
    "XMLTooManyElements",
    "XMLTooManyNamespaces",
    "all_error_classes",
]


class GatewayError(Exception):
    """The gateway refused the request."""

    code: ClassVar[str] = "GATEWAY_ERROR"
    http_status: ClassVar[int] = 500
    #: What the refusal means to an edXML peer or the national hub protocol.
    meaning: ClassVar[str] = "internal error"

    def __init__(self, message: str | None = None, *, detail: dict[str, Any] | None = None):
        self.message = message or self.default_message()
        self.detail: dict[str, Any] = dict(detail or {})
        #: the refusal is already in the audit log (ingest's ``refuse`` entry): an edge that
        #: audits its own refusals does not write a second entry
        self.audited = False
        super().__init__(self.message)

    @classmethod
    def default_message(cls) -> str:
        doc = cls.__doc__ or cls.__name__
        return doc.strip().splitlines()[0]

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of an API error: ``{code, message, detail}``."""
        return {"code": self.code, "message": self.message, "detail": self.detail}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class UsageError(GatewayError):
    """The command was called wrongly or a file could not be read."""

    code = "USAGE_ERROR"
    http_status = 400
    meaning = "not a protocol error: the caller's invocation is wrong"


class ConfigError(GatewayError):
    """A setting is missing or invalid."""

    code = "CONFIG_INVALID"
    http_status = 500
    meaning = "node misconfigured"


# --- hostile or broken XML -------------------------------------------------------------------


class XMLError(GatewayError):
    """The package is not acceptable XML."""

    code = "XML_ERROR"
    http_status = 400
    meaning = "package refused: not parseable"


class MalformedXML(XMLError):
    """The package is not well-formed XML."""

    code = "XML_MALFORMED"


class DoctypeForbidden(XMLError):
    """A DOCTYPE declaration is not allowed in an edXML package."""

    code = "XML_DOCTYPE_FORBIDDEN"
    meaning = "package refused: DTDs are forbidden"


class ExternalEntityForbidden(XMLError):
    """An external entity (file or network) is declared: refused, never resolved."""

    code = "XML_EXTERNAL_ENTITY"
    meaning = "package refused: external entity (XXE)"


class EntityExpansionForbidden(XMLError):
    """Entities expanding other entities are declared (billion laughs): refused, not expanded."""

    code = "XML_ENTITY_EXPANSION"
    meaning = "package refused: nested entity expansion"


class EntityDeclarationForbidden(XMLError):
    """An internal entity is declared (quadratic blowup risk): refused, never expanded."""

    code = "XML_ENTITY_DECLARATION"
    meaning = "package refused: entity declaration"


class XMLTooLarge(XMLError):
    """The package is larger than this node accepts."""

    code = "XML_TOO_LARGE"
    http_status = 413
    meaning = "package refused: too large"


class XMLTooDeep(XMLError):
    """The package nests elements deeper than this node accepts."""

    code = "XML_TOO_DEEP"
    meaning = "package refused: nesting too deep"


class XMLTooManyElements(XMLError):
    """The package has more nodes (elements, comments, processing instructions) than allowed."""

    code = "XML_TOO_MANY_ELEMENTS"
    meaning = "package refused: too many elements"


class XMLTooManyAttributes(XMLError):
    """An element of the package carries more attributes than this node accepts."""

    code = "XML_TOO_MANY_ATTRIBUTES"
    meaning = "package refused: too many attributes on one element"


class XMLTooManyNamespaces(XMLError):
    """The package declares more namespaces (on one element or in all) than this node accepts."""

    code = "XML_TOO_MANY_NAMESPACES"
    meaning = "package refused: too many namespace declarations"


class XMLTextTooLarge(XMLError):
    """A text node or attribute value of the package is larger than this node accepts."""

    code = "XML_TEXT_TOO_LARGE"
    http_status = 413
    meaning = "package refused: text node too large"


class UndeclaredPrefix(XMLError):
    """The package uses a namespace prefix it never declares (e.g. ``xlink:``): not XML."""

    code = "XML_PREFIX_UNDECLARED"
    meaning = "package refused: undeclared namespace prefix (accepted only under attest)"


# --- schema and envelope ---------------------------------------------------------------------


class SchemaError(GatewayError):
    """The package does not conform to the edXML schema."""

    code = "SCHEMA_INVALID"
    http_status = 422
    meaning = "package refused: does not conform to QCVN 102:2016"


class EnvelopeError(GatewayError):
    """The package is not a consistent edXML package."""

    code = "ENVELOPE_INVALID"
    http_status = 422
    meaning = "package refused: inconsistent content"


class UnknownPackageKind(EnvelopeError):
    """The package is neither an edXML document package nor a status package."""

    code = "ENVELOPE_UNKNOWN_KIND"


class DuplicateElement(EnvelopeError):
    """An element that may appear once appears more than once."""

    code = "ENVELOPE_DUPLICATE_ELEMENT"


class MissingElement(EnvelopeError):
    """A required element is absent or empty."""

    code = "ENVELOPE_MISSING_ELEMENT"


class InvalidValue(EnvelopeError):
    """An element holds a value outside what QCVN 102:2016 allows."""

    code = "ENVELOPE_INVALID_VALUE"


class ManifestMismatch(EnvelopeError):
    """The manifest references and the attachments do not match one to one."""

    code = "ENVELOPE_MANIFEST_MISMATCH"


class AttachmentEncodingError(EnvelopeError):
    """An attachment's content is not valid base64."""

    code = "ENVELOPE_ATTACHMENT_ENCODING"


class AgencyCodeError(GatewayError):
    """Not a valid QCVN 102:2016 agency code (expected VVV.ZZ.YY.Lnn, e.g. 000.00.00.H49)."""

    code = "AGENCY_CODE_INVALID"
    http_status = 422
    meaning = "unknown or malformed agency identifier"


# --- signatures ------------------------------------------------------------------------------


class SignatureError(GatewayError):
    """The package's signature is not acceptable."""

    code = "SIGNATURE_INVALID"
    http_status = 422
    meaning = "package refused: signature invalid"


class SignatureMissing(SignatureError):
    """The package carries no XMLDSig signature."""

    code = "SIGNATURE_MISSING"


class SignatureMalformed(SignatureError):
    """The Signature element is incomplete or not an XMLDSig structure."""

    code = "SIGNATURE_MALFORMED"


class WrappedEnvelope(SignatureError):
    """The signed envelope is wrapped inside another element (signature wrapping attack)."""

    code = "SIGNATURE_WRAPPED_ENVELOPE"


class ForgedHeader(SignatureError):
    """A second header stands beside the signed one (signature wrapping attack)."""

    code = "SIGNATURE_FORGED_HEADER"


class DuplicateId(SignatureError):
    """Two elements carry the same Id (signature wrapping attack)."""

    code = "SIGNATURE_DUPLICATE_ID"


class SignatureMisplaced(SignatureError):
    """The signature is not the last child of edXMLHeader, or there is more than one."""

    code = "SIGNATURE_MISPLACED"


class PartialCoverage(SignatureError):
    """The signature does not cover the whole package (Reference URI must be "")."""

    code = "SIGNATURE_PARTIAL_COVERAGE"


class WeakAlgorithm(SignatureError):
    """The signature uses a weak algorithm (SHA-1); refused unless admitted for legacy archives."""

    code = "SIGNATURE_WEAK_ALGORITHM"


class UnsupportedAlgorithm(SignatureError):
    """The signature uses an algorithm this gateway does not support."""

    code = "SIGNATURE_UNSUPPORTED_ALGORITHM"


class SignatureNonCanonical(SignatureError):
    """The ECDSA signature is in its malleable high-S form; only low-S signatures are accepted."""

    code = "SIGNATURE_NON_CANONICAL"
    meaning = "signature refused: non-canonical (high-S) ECDSA value"


class SignatureValueMismatch(SignatureError):
    """The SignatureValue does not match SignedInfo under the signer's key."""

    code = "SIGNATURE_VALUE_MISMATCH"


class DigestMismatch(SignatureError):
    """The signed content was changed after signing (digest mismatch)."""

    code = "SIGNATURE_DIGEST_MISMATCH"


class UnverifiedRefused(SignatureError):
    """The recipient refuses packages whose sender signature was not verified (attested)."""

    code = "SIGNATURE_UNVERIFIED_REFUSED"
    http_status = 422
    meaning = "delivery refused: the recipient takes only packages whose signature verified"


# --- trust -----------------------------------------------------------------------------------


class TrustError(GatewayError):
    """The signer's certificate is not trusted."""

    code = "TRUST_ERROR"
    http_status = 403
    meaning = "package refused: signer not trusted"


class CertificateMalformed(TrustError):
    """The signer's certificate is missing or cannot be decoded."""

    code = "CERT_MALFORMED"


class CertificateUntrusted(TrustError):
    """The signer's certificate does not chain to a trust anchor."""

    code = "CERT_UNTRUSTED"


class CertificateKeyWeak(TrustError):
    """The certificate's key is outside the trust policy (RSA >= 2048, EC on P-256 or P-384)."""

    code = "CERT_KEY_WEAK"
    meaning = "signer refused: key too weak or of a kind not admitted"


class CertificateNotValidAtSigning(TrustError):
    """The signer's certificate was not valid at the signing time."""

    code = "CERT_NOT_VALID_AT_SIGNING"


class CertificateExpired(TrustError):
    """The signer's certificate is not valid now."""

    code = "CERT_EXPIRED"


class CertificateRevoked(TrustError):
    """A certificate in the signer's chain is revoked."""

    code = "CERT_REVOKED"


class CRLInvalid(TrustError):
    """A certificate revocation list is unreadable, not signed by its issuer, or out of date."""

    code = "CRL_INVALID"


class SignerUnbound(TrustError):
    """The signer's certificate binds no agency code (subject serialNumber or urn:qcvn102: SAN)."""

    code = "SIGNER_AGENCY_UNBOUND"


class SignerMismatch(TrustError):
    """The signer's agency code differs from the package's From/OrganId."""

    code = "SIGNER_AGENCY_MISMATCH"


# --- the API and the node ----------------------------------------------------------------------


class AuthError(GatewayError):
    """The caller is not authenticated or not allowed."""

    code = "AUTH_ERROR"
    http_status = 403
    meaning = "request refused: caller not authorised"


class AuthRequired(AuthError):
    """A client certificate (or trusted proxy header) is required."""

    code = "AUTH_REQUIRED"
    http_status = 401


class ClientCertUntrusted(AuthError):
    """The client certificate does not chain to a trusted CA, or is revoked or expired."""

    code = "AUTH_CERT_UNTRUSTED"
    http_status = 401


class UnknownAgency(AuthError):
    """The calling agency is not hosted by this node."""

    code = "AUTH_UNKNOWN_AGENCY"


class SenderMismatch(AuthError):
    """The package's From (and signer) is not the agency that authenticated."""

    code = "AUTH_SENDER_MISMATCH"


class Forbidden(AuthError):
    """The caller may not read or act on this document."""

    code = "AUTH_FORBIDDEN"


class SystemUnknown(AuthError):
    """No connected system has this systemid."""

    code = "AUTH_SYSTEM_UNKNOWN"
    http_status = 401


class SystemDisabled(AuthError):
    """This connected system is disabled."""

    code = "AUTH_SYSTEM_DISABLED"
    http_status = 401


class HubSignatureInvalid(AuthError):
    """The request's sign headers are missing, or their HMAC does not match the secret."""

    code = "AUTH_HMAC_INVALID"
    http_status = 401


class SystemAgencyForbidden(AuthError):
    """The agency is not one this connected system may send as or read for."""

    code = "AUTH_SYSTEM_AGENCY_FORBIDDEN"


class RequestError(GatewayError):
    """The request cannot be accepted."""

    code = "REQUEST_ERROR"
    http_status = 422
    meaning = "request refused"


class PathNotFound(RequestError):
    """No route of this API answers at this path."""

    code = "REQUEST_PATH_NOT_FOUND"
    http_status = 404
    meaning = "request refused: no such endpoint (check the base URL and the API version)"


class MethodNotAllowed(RequestError):
    """This path does not take this HTTP method."""

    code = "REQUEST_METHOD_NOT_ALLOWED"
    http_status = 405
    meaning = "request refused: wrong HTTP method for this endpoint"


class RequestMalformed(RequestError):
    """The request is not valid HTTP/1.1."""

    code = "REQUEST_MALFORMED"
    http_status = 400
    meaning = "request refused: not parseable HTTP"


class ParametersInvalid(RequestError):
    """The request's path or query parameters are invalid."""

    code = "REQUEST_PARAMETERS_INVALID"
    meaning = "request refused: invalid parameters"


class BodyInvalid(RequestError):
    """The request's body is not the JSON this endpoint takes."""

    code = "REQUEST_BODY_INVALID"
    meaning = "request refused: the JSON body is unreadable or of the wrong shape"


class TooManyRecipients(RequestError):
    """The package names more recipients than this node accepts."""

    code = "REQUEST_TOO_MANY_RECIPIENTS"


class TooManyAttachments(RequestError):
    """The document carries more attachments than this node accepts."""

    code = "REQUEST_TOO_MANY_ATTACHMENTS"
    meaning = "document refused: too many attachments"


class RecipientUnreachable(RequestError):
    """No node serves this recipient."""

    code = "REQUEST_RECIPIENT_UNREACHABLE"


class BodyTooLarge(RequestError):
    """The request body is larger than this node accepts."""

    code = "REQUEST_BODY_TOO_LARGE"
    http_status = 413


class JSONTooDeep(RequestError):
    """The JSON body nests deeper than this node accepts."""

    code = "REQUEST_JSON_TOO_DEEP"
    http_status = 400
    meaning = "request refused: JSON nested too deep"


class HeadersTooLarge(RequestError):
    """The request's headers are larger or more numerous than this node accepts."""

    code = "REQUEST_HEADERS_TOO_LARGE"
    http_status = 431
    meaning = "request refused: headers too large"


class RequestTimeout(RequestError):
    """The request's headers or body did not arrive in time."""

    code = "REQUEST_TIMEOUT"
    http_status = 408
    meaning = "request refused: too slow"


class BudgetExceeded(RequestError):
    """The package took more processing time than one upload may use; it was not stored."""

    code = "REQUEST_BUDGET_EXCEEDED"
    http_status = 422
    meaning = "package refused: exceeds the processing budget of one upload"


class HashFileMismatch(RequestError):
    """The sendEdoc body does not match its ``hash-file`` parameter."""

    code = "REQUEST_HASH_FILE_MISMATCH"
    http_status = 400
    meaning = "package refused: body and hash-file differ"


class WrongPackageKind(RequestError):
    """A status package was sent where a document was expected, or the reverse."""

    code = "REQUEST_WRONG_PACKAGE_KIND"


class DocumentNotFound(GatewayError):
    """No such document here (or not one the caller may see)."""

    code = "DOCUMENT_NOT_FOUND"
    http_status = 404
    meaning = "unknown document"


class RelayError(GatewayError):
    """A relay between two nodes was refused."""

    code = "RELAY_ERROR"
    http_status = 400
    meaning = "relay refused"


class RelayMalformed(RelayError):
    """The relay request is not a well-formed relay batch."""

    code = "RELAY_MALFORMED"


class PeerUnknown(RelayError):
    """The calling node is not a neighbour of this node in the directory."""

    code = "RELAY_PEER_UNKNOWN"
    http_status = 403


class HopChainBroken(RelayError):
    """The hop records do not form an unbroken chain ending at this node."""

    code = "RELAY_HOP_CHAIN_BROKEN"
    http_status = 422


class HopSignatureInvalid(RelayError):
    """A hop record's signature or node certificate does not verify."""

    code = "RELAY_HOP_SIGNATURE_INVALID"
    http_status = 422


class EnvelopeTampered(RelayError):
    """The relayed envelope's bytes are not the bytes the hop records describe."""

    code = "RELAY_ENVELOPE_TAMPERED"
    http_status = 422


class RouteLoop(RelayError):
    """The package has already passed through this node: the directories disagree."""

    code = "RELAY_ROUTE_LOOP"
    http_status = 422


class ReceiptInvalid(RelayError):
    """The peer's receipt does not verify, or does not match what was sent."""

    code = "RELAY_RECEIPT_INVALID"
    http_status = 502


class PeerRefused(RelayError):
    """The peer node refused the relay request without an error code of its own."""

    code = "RELAY_PEER_REFUSED"
    http_status = 502
    meaning = "relay refused by the peer (its answer carried only an HTTP status)"


class PeerUnavailable(RelayError):
    """The peer node cannot be reached or answered with a server error (retried)."""

    code = "RELAY_PEER_UNAVAILABLE"
    http_status = 503
    meaning = "peer temporarily unavailable"


class DeliveryNotFound(GatewayError):
    """No such delivery."""

    code = "DELIVERY_NOT_FOUND"
    http_status = 404
    meaning = "unknown delivery"


class DeliveryNotFailed(GatewayError):
    """Only a failed delivery can be requeued; this one has not failed."""

    code = "DELIVERY_NOT_FAILED"
    http_status = 409
    meaning = "requeue refused: the delivery has not failed"


class DocumentConflict(GatewayError):
    """A document with this sender and DocumentId exists with different bytes."""

    code = "DOCUMENT_CONFLICT"
    http_status = 409
    meaning = "duplicate document id with different content"


class StatusError(GatewayError):
    """The status report cannot be accepted."""

    code = "STATUS_ERROR"
    http_status = 409
    meaning = "status refused"


class StatusTargetUnknown(StatusError):
    """The status package refers to a document this node does not know."""

    code = "STATUS_TARGET_UNKNOWN"
    http_status = 404


class StatusNotAllowed(StatusError):
    """The reporting agency may not report this status on this document."""

    code = "STATUS_NOT_ALLOWED"
    http_status = 403


class StatusTransitionInvalid(StatusError):
    """This status makes no sense after the statuses already recorded."""

    code = "STATUS_TRANSITION_INVALID"


class InternalError(GatewayError):
    """The node failed to handle the request; nothing was stored, and the operators are told."""

    code = "INTERNAL_ERROR"
    http_status = 500
    meaning = "internal error: try again later"


class StorageError(GatewayError):
    """The node's database cannot serve the request."""

    code = "STORAGE_ERROR"
    http_status = 503
    meaning = "node temporarily unavailable"


class DatabaseNotMigrated(StorageError):
    """The database schema is not at the current migration (run `gateway db upgrade`)."""

    code = "DATABASE_NOT_MIGRATED"


class DatabaseUnavailable(StorageError):
    """The database cannot be reached."""

    code = "DATABASE_UNAVAILABLE"


class AuditChainBroken(StorageError):
    """The audit log's hash chain or a signed checkpoint does not verify."""

    code = "AUDIT_CHAIN_BROKEN"
    http_status = 500


class NodeNotReady(GatewayError):
    """The node cannot take documents now (database, migrations or certificates)."""

    code = "NODE_NOT_READY"
    http_status = 503
    meaning = "node temporarily unavailable: try again later"


class WorkerFailed(GatewayError):
    """A worker process of the node died again and again before it could serve."""

    code = "WORKER_FAILED"
    http_status = 500
    meaning = "node cannot start"


def all_error_classes() -> list[type[GatewayError]]:
    """Every error class, depth first: used to check that codes are unique and documented."""
    out: list[type[GatewayError]] = []
    stack: list[type[GatewayError]] = [GatewayError]
    while stack:
        cls = stack.pop()
        out.append(cls)
        stack.extend(reversed(cls.__subclasses__()))
    return out
