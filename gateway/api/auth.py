"""Who is calling: the agency or node a verified client certificate speaks for.

The certificate comes from one of two places, never both:

* **direct TLS** -- the ASGI ``tls`` extension that :mod:`gateway.api.server` fills in from the
  TLS connection (``scope["extensions"]["tls"]["client_cert_chain"]``);
* **a TLS-terminating proxy** -- the header named by ``[tls] proxy_cert_header`` (URL-encoded
  PEM, as nginx ``$ssl_client_escaped_cert``), believed ONLY when the TCP peer
  (``scope["client"]``) is one of ``[tls] trusted_proxies``. A request from a trusted proxy is
  identified by that header alone; without it the request is anonymous, even if the proxy
  itself presented a client certificate.

Either way the certificate is verified again here with the node's :class:`TrustStore` (chain
to the ``[trust]`` anchors now, then the CRLs): the TLS library's verification is a first
gate, not the decision.

Usage::

    authenticate = require_identity(trust, settings)
    Caller = Annotated[Identity, Depends(authenticate)]

    @app.post("/documents")
    async def submit(caller: Caller) -> ...: ...

.. warning:: Never read an identity header anywhere else. A header from an address outside
   ``[tls] trusted_proxies`` is ignored and logged (``auth.proxy_header_ignored``); uvicorn's
   own ``X-Forwarded-For`` handling is switched off by :mod:`gateway.api.server` so that
   ``scope["client"]`` is the real TCP peer.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import unquote

import structlog
from cryptography import x509
from starlette.requests import HTTPConnection, Request

from gateway.errors import (
    AgencyCodeError,
    AuthRequired,
    ClientCertUntrusted,
    ConfigError,
    SignerUnbound,
    TrustError,
    UsageError,
)
from gateway.settings import Settings, TLSSettings
from gateway.trust.binding import agency_code_of, node_name_of, rfc4514_name, serial_hex
from gateway.trust.caller import Identity, IdentitySource
from gateway.trust.store import TrustStore, load_certificates

__all__ = [
    "ClientAuthenticator",
    "identify",
    "require_identity",
]

log = structlog.get_logger("gateway.identity")

#: a header longer than this is not a certificate (a chain of three RSA-4096 PEMs is ~7 KiB)
MAX_HEADER_BYTES: Final = 32 * 1024

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientAuthenticator:
    """Turns a request's client certificate into an :class:`Identity`; a FastAPI dependency.

    Usage: ``Depends(ClientAuthenticator(trust, settings))`` (or :func:`require_identity`),
    or ``ClientAuthenticator(trust, settings).identify(scope)`` outside FastAPI.

    Verified certificates are remembered for ``cache_seconds`` (and never past the end of the
    chain's validity), keyed by the exact PEM text, so a keep-alive connection does not pay a
    chain verification per request. Refusals are not remembered.
    """

    def __init__(
        self,
        trust: TrustStore,
        settings: Settings,
        *,
        cache_seconds: float = 60.0,
        cache_size: int = 1024,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self._trust = trust
        self._require_revocation = settings.verify.require_revocation_check
        self._proxies = _parse_proxies(settings.tls)
        self._header = settings.tls.proxy_cert_header.strip().lower().encode("latin-1")
        # CA certificates listed in [tls] client_ca help build paths (the TLS layer only hands
        # over the leaf before Python 3.13); they are never anchors: the TrustStore decides.
        self._pool = _client_ca_pool(settings.tls)
        self._ttl = dt.timedelta(seconds=cache_seconds)
        self._size = cache_size
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._cache: OrderedDict[tuple[str, tuple[str, ...]], tuple[Identity, dt.datetime]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    async def __call__(self, request: Request) -> Identity:
        return self.identify(request)

    def replace_trust(self, trust: TrustStore) -> None:
        """Verify against a new trust store (new CRLs, anchors) from now on; forget the cache."""
        with self._lock:
            self._trust = trust
            self._cache.clear()

    def identify(self, scope_or_request: Mapping[str, Any] | HTTPConnection) -> Identity:
        """The verified identity of the caller of one request, or an :class:`AuthError`.

        Usage: ``identity = authenticator.identify(request)`` (a Starlette request or a raw
        ASGI scope).

        Raises :class:`AuthRequired` when no certificate was presented and
        :class:`ClientCertUntrusted` when it does not verify, is revoked or expired, or binds
        neither exactly one agency code nor a node name.
        """
        scope = (
            scope_or_request.scope
            if isinstance(scope_or_request, HTTPConnection)
            else scope_or_request
        )
        client = scope.get("client")
        peer = str(client[0]) if client else None
        headers = [v for k, v in scope.get("headers") or () if k.lower() == self._header]
        if peer is not None and self._is_trusted_proxy(peer):
            if not headers or not any(v.strip() for v in headers):
                raise AuthRequired(
                    "no client certificate: the proxy forwarded none",
                    detail={"header": self._header.decode("latin-1")},
                )
            if len(headers) > 1:
                raise self._refuse(
                    "the client-certificate header appears more than once",
                    reason="duplicate_header",
                    peer=peer,
                    source="proxy",
                )
            return self._resolve(self._pems_from_header(headers[0], peer), "proxy", peer)
        if headers:
            log.warning(
                "auth.proxy_header_ignored",
                peer=peer,
                header=self._header.decode("latin-1"),
                path=scope.get("path"),
            )
        tls = (scope.get("extensions") or {}).get("tls")
        chain = tuple(tls.get("client_cert_chain") or ()) if tls else ()
        if not chain:
            raise AuthRequired()
        if tls and tls.get("client_cert_error"):
            raise self._refuse(
                f"the TLS layer refused the client certificate: {tls['client_cert_error']}",
                reason="tls_verification_failed",
                peer=peer,
                source="tls",
            )
        return self._resolve(tuple(str(p) for p in chain), "tls", peer)

    # --- internals -----------------------------------------------------------------------

    def _is_trusted_proxy(self, peer: str) -> bool:
        if not self._proxies:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._proxies)

    def _pems_from_header(self, value: bytes, peer: str) -> tuple[str, ...]:
        if len(value) > MAX_HEADER_BYTES:
            raise self._refuse(
                "the client-certificate header is too long",
                reason="header_too_long",
                peer=peer,
                source="proxy",
            )
        return (unquote(value.decode("latin-1")).strip(),)

    def _resolve(self, pems: tuple[str, ...], source: IdentitySource, peer: str | None) -> Identity:
        now = self._clock()
        key = (source, pems)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and now < hit[1]:
                self._cache.move_to_end(key)
                return hit[0]
            trust = self._trust
        identity, chain = self._verify(pems, source, peer, now)
        until = min(now + self._ttl, *(c.not_valid_after_utc for c in chain))
        with self._lock:
            if trust is not self._trust:  # verified on a store replaced meanwhile: don't keep
                return identity
            self._cache[key] = (identity, until)
            self._cache.move_to_end(key)
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        log.info(
            "auth.certificate_verified",
            peer=peer,
            source=source,
            caller=str(identity),
            serial=serial_hex(chain[0].serial_number),
        )
        return identity

    def _verify(
        self, pems: Sequence[str], source: IdentitySource, peer: str | None, now: dt.datetime
    ) -> tuple[Identity, list[x509.Certificate]]:
        try:
            certs = [c for pem in pems for c in x509.load_pem_x509_certificates(pem.encode())]
        except ValueError:
            raise self._refuse(
                "the client certificate is not a readable PEM certificate",
                reason="malformed",
                peer=peer,
                source=source,
            ) from None
        leaf, presented = certs[0], certs[1:]
        subject = rfc4514_name(leaf.subject)
        try:
            chain = self._trust.verify_chain(leaf, [*presented, *self._pool], at=now)
            revocation = self._trust.check_revocation(chain, at=now)
        except TrustError as exc:
            raise self._refuse(
                f"client certificate refused: {exc.message}",
                reason=exc.code,
                peer=peer,
                source=source,
                subject=subject,
            ) from None
        if self._require_revocation and not revocation.checked:
            raise self._refuse(
                "client certificate refused: its revocation status cannot be checked",
                reason="revocation_unchecked",
                peer=peer,
                source=source,
                subject=subject,
            )
        try:
            agency, node = agency_code_of(leaf), node_name_of(leaf)
        except (SignerUnbound, AgencyCodeError) as exc:  # AgencyCodeError: a padded code
            raise self._refuse(
                exc.message, reason=exc.code, peer=peer, source=source, subject=subject
            ) from None
        if agency is not None and node is not None:
            raise self._refuse(
                "the client certificate binds both an agency code and a node name",
                reason="ambiguous_binding",
                peer=peer,
                source=source,
                subject=subject,
            )
        if agency is not None:
            identity = Identity(kind="agency", agency=agency, certificate=leaf, source=source)
        elif node is not None:
            identity = Identity(kind="node", node=node, certificate=leaf, source=source)
        else:
            raise self._refuse(
                "the client certificate binds neither an agency code nor a node name",
                reason="unbound",
                peer=peer,
                source=source,
                subject=subject,
            )
        return identity, chain

    @staticmethod
    def _refuse(
        message: str,
        *,
        reason: str,
        peer: str | None,
        source: IdentitySource,
        subject: str | None = None,
    ) -> ClientCertUntrusted:
        log.warning(
            "auth.rejected", peer=peer, source=source, reason=reason, subject=subject, msg=message
        )
        detail: dict[str, Any] = {"reason": reason}
        if subject is not None:
            detail["subject"] = subject
        return ClientCertUntrusted(message, detail=detail)


def require_identity(trust: TrustStore, settings: Settings) -> ClientAuthenticator:
    """The FastAPI dependency that authenticates the caller (build it once per app).

    Usage::

        Caller = Annotated[Identity, Depends(require_identity(trust, settings))]

    It raises :class:`AuthRequired` / :class:`ClientCertUntrusted` (401); the app's
    ``GatewayError`` handler renders them. Whether the agency is hosted here is the route's
    business, not this dependency's.
    """
    return ClientAuthenticator(trust, settings)


def identify(
    scope_or_request: Mapping[str, Any] | HTTPConnection, *, trust: TrustStore, settings: Settings
) -> Identity:
    """One-off :meth:`ClientAuthenticator.identify` without a cache (scripts, tests).

    Usage: ``identify(request, trust=trust, settings=settings)``. Servers should build one
    :func:`require_identity` instead, so verified certificates are remembered.
    """
    return ClientAuthenticator(trust, settings, cache_size=0).identify(scope_or_request)


def _parse_proxies(tls: TLSSettings) -> tuple[_Network, ...]:
    networks: list[_Network] = []
    for entry in tls.trusted_proxies:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError(
                f"[tls] trusted_proxies: {entry!r} is not an IP address or network",
                detail={"key": "tls.trusted_proxies"},
            ) from None
    return tuple(networks)


def _client_ca_pool(tls: TLSSettings) -> tuple[x509.Certificate, ...]:
    try:
        return tuple(c for path in tls.client_ca for c in load_certificates(path))
    except UsageError as exc:
        raise ConfigError(
            f"[tls] client_ca: {exc.message}", detail={"key": "tls.client_ca"}
        ) from None
