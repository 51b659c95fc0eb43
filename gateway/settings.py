"""Settings: one frozen, validated object built from a TOML file plus ``GATEWAY_*`` overrides.

No other module reads ``os.environ``. An environment variable names a key by its section and
name joined with a double underscore: ``GATEWAY_VERIFY__ALLOW_WEAK_ALGORITHMS=true`` overrides
``[verify] allow_weak_algorithms``.

Every number has its range in :data:`RANGES`, decided key by key: zero is allowed only where it
means something (``[delivery] backoff_jitter = 0``: no jitter; ``[limits] max_attachments = 0``:
documents without attachments only), never where it would stop the node or spin it (a zero
interval, timeout or limit). Every refusal names its key: ``[delivery] backoff_jitter must be at
least 0, not -1``.

The coercion is written here rather than taken from pydantic-settings: that would add a
dependency for ~60 lines, read environment lists as JSON where operators write
``a.pem,b.pem``, and word its errors by pydantic's field paths instead of the file's
``[section] key``.

Usage::

    settings = load_settings(Path("node.toml"))
    settings.verify.allow_weak_algorithms
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from gateway.envelope.xmlsafe import XMLLimits
from gateway.errors import ConfigError

__all__ = [
    "AuditSettings",
    "DatabaseSettings",
    "DeliverySettings",
    "DirectorySettings",
    "HubSettings",
    "LimitsSettings",
    "LoggingSettings",
    "NodeSettings",
    "PeerSettings",
    "ServerSettings",
    "Settings",
    "TLSSettings",
    "Tier",
    "TrustSettings",
    "VerifySettings",
    "WebhookEndpoint",
    "WebhookSettings",
    "load_settings",
]

ENV_PREFIX = "GATEWAY_"
#: most items a node accepts in one relay batch (and so the largest ``[delivery] batch_size``)
MAX_RELAY_ITEMS = 1000
#: most worker processes of one node (``[server] workers``)
MAX_WORKERS = 64
#: longest ``[hub] rotate_grace``: a rotated-out secret stays valid at most a year
MAX_ROTATE_GRACE = 365 * 24 * 3600
_NODE_NAME = re.compile(r"[a-z0-9-]+")


@dataclass(frozen=True, slots=True)
class _Range:
    """The values one number may take."""

    #: the smallest value allowed
    least: float
    #: the largest value allowed
    most: float = math.inf
    #: ``least`` itself is refused too (a duration that must be above zero)
    above: bool = False
    #: why the bound is there, said in the error
    why: str = ""

    def check(self, where: str, key: str, number: float) -> None:
        """Raise :class:`ConfigError` naming ``where`` (``[section] key``) when ``number`` is
        out of range."""
        low_ok = number > self.least if self.above else number >= self.least
        if low_ok and number <= self.most:
            return
        if self.above:
            bound = f"greater than {_shown(self.least)}"
        elif self.most == math.inf:
            bound = f"at least {_shown(self.least)}"
        else:
            bound = f"{_shown(self.least)}-{_shown(self.most)}"
        why = f": {self.why}" if self.why else ""
        raise ConfigError(
            f"{where} must be {bound}, not {number!r}{why}",
            detail={"key": key},
        )


def _shown(bound: float) -> str:
    """A bound as an operator writes it: ``31536000``, not ``3.1536e+07``."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


_POSITIVE = _Range(0, above=True)
_ONE_OR_MORE = _Range(1)
_ZERO_OR_MORE = _Range(0)

#: The values every number may take, key by key (a test checks that each numeric key is here).
#: Zero is allowed only where it has a meaning; elsewhere a zero interval would spin a loop, a
#: zero timeout or limit would refuse everything.
RANGES: dict[str, _Range] = {
    "server.port": _Range(1, 65535),
    "server.workers": _Range(1, MAX_WORKERS),
    "server.max_header_bytes": _ONE_OR_MORE,
    "server.max_headers": _ONE_OR_MORE,
    "server.header_timeout": _POSITIVE,
    "server.body_timeout": _POSITIVE,
    "trust.reload_interval": _ONE_OR_MORE,
    "limits.max_envelope_bytes": _ONE_OR_MORE,
    "limits.max_depth": _ONE_OR_MORE,
    "limits.max_elements": _ONE_OR_MORE,
    "limits.max_recipients": _ONE_OR_MORE,
    "limits.max_attachments": _ZERO_OR_MORE,  # 0: documents without attachments only
    "limits.max_attributes": _ONE_OR_MORE,
    "limits.max_namespaces_per_element": _ONE_OR_MORE,
    "limits.max_namespaces": _ONE_OR_MORE,
    "limits.max_text_bytes": _ONE_OR_MORE,
    "limits.upload_budget": _POSITIVE,
    "limits.max_json_bytes": _ONE_OR_MORE,
    "limits.max_json_depth": _ONE_OR_MORE,
    "audit.checkpoint_interval": _ONE_OR_MORE,
    "delivery.tick_interval": _POSITIVE,
    "delivery.batch_size": _Range(1, MAX_RELAY_ITEMS, why="a node refuses larger relay batches"),
    "delivery.batch_bytes": _ONE_OR_MORE,
    "delivery.connect_timeout": _POSITIVE,
    "delivery.timeout": _POSITIVE,
    "delivery.backoff_initial": _POSITIVE,
    "delivery.backoff_max": _POSITIVE,
    "delivery.backoff_jitter": _ZERO_OR_MORE,  # 0: every node retries on the exact backoff
    "delivery.max_attempts": _ONE_OR_MORE,
    "delivery.max_age": _ONE_OR_MORE,
    "delivery.lease": _ONE_OR_MORE,
    "delivery.breaker_threshold": _ONE_OR_MORE,
    "delivery.breaker_probe_interval": _POSITIVE,
    "delivery.housekeeping_interval": _ONE_OR_MORE,
    # 0: a rotated-out secret stops working at once
    "hub.rotate_grace": _Range(0, MAX_ROTATE_GRACE, why="a rotated-out secret dies within a year"),
    "hub.request_deadline": _POSITIVE,
    "hub.port": _Range(0, 65535),  # 0: no listener of its own
    "hub.keepalive_timeout": _ONE_OR_MORE,
    "webhooks.tick_interval": _POSITIVE,
    "webhooks.timeout": _POSITIVE,
    "webhooks.max_attempts": _ONE_OR_MORE,
    "webhooks.backoff_initial": _POSITIVE,
    "webhooks.backoff_max": _POSITIVE,
    "webhooks.max_age": _ONE_OR_MORE,
}


@dataclass(frozen=True, kw_only=True, slots=True)
class VerifySettings:
    """``[verify]``: how strict signature verification is."""

    #: admit SHA-1 signatures (RSA-SHA1, as in every field sample) for legacy archives only
    allow_weak_algorithms: bool = False
    #: refuse a package when a certificate in its chain has no CRL from its issuer
    require_revocation_check: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class TrustSettings:
    """``[trust]``: trust anchors and revocation lists (PEM files)."""

    #: CA certificates every signer must chain to
    anchors: tuple[Path, ...] = ()
    #: CRL files (PEM; several CRLs per file allowed)
    crls: tuple[Path, ...] = ()
    #: extra intermediate certificates, for signers that embed only their leaf
    intermediates: tuple[Path, ...] = ()
    #: seconds between checks of these files: a changed CRL or anchor takes effect without
    #: a restart
    reload_interval: int = 300


@dataclass(frozen=True, kw_only=True, slots=True)
class LimitsSettings:
    """``[limits]``: caps applied to every package before it is parsed."""

    #: largest package accepted, in bytes
    max_envelope_bytes: int = 80 * 1024 * 1024
    #: deepest element nesting accepted
    max_depth: int = 64
    #: most elements in one package
    max_elements: int = 20_000
    #: most recipients (To) in one document
    max_recipients: int = 500
    #: most attachments in one document
    max_attachments: int = 100
    #: most attributes on one element
    max_attributes: int = 32
    #: most namespace declarations on one element
    max_namespaces_per_element: int = 16
    #: most namespace declarations in one package
    max_namespaces: int = 256
    #: largest text node or attribute value, in bytes (attachment payloads excepted: they are
    #: bounded by max_envelope_bytes)
    max_text_bytes: int = 1024 * 1024
    #: seconds of processing one upload may take before it is refused (REQUEST_BUDGET_EXCEEDED)
    upload_budget: float = 30.0
    #: largest body of a JSON route (admin requeue and the like), in bytes
    max_json_bytes: int = 64 * 1024
    #: deepest nesting of a JSON body or of the relay batch's JSON framing
    max_json_depth: int = 32

    def xml_limits(self) -> XMLLimits:
        return XMLLimits(
            max_bytes=self.max_envelope_bytes,
            max_depth=self.max_depth,
            max_elements=self.max_elements,
            max_attributes=self.max_attributes,
            max_namespaces_per_element=self.max_namespaces_per_element,
            max_namespaces=self.max_namespaces,
            max_text_bytes=self.max_text_bytes,
        )


class Tier(StrEnum):
    """Where a node stands in the four-tier tree."""

    COMMUNE = "commune"
    DISTRICT = "district"
    PROVINCE = "province"
    CENTRAL = "central"


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeSettings:
    """``[node]``: who this node is."""

    #: node name, bound in its certificate as ``urn:gateway-node:<name>`` ([a-z0-9-]+)
    name: str = "gateway"
    #: commune, district, province or central
    tier: Tier = Tier.PROVINCE
    #: agency codes whose DMS connect to this node
    agencies: tuple[str, ...] = ()
    #: the node's own private key (PEM; ECDSA P-256 recommended): signs receipts and audit
    #: checkpoints
    key: Path | None = None
    #: the node's certificate (PEM, leaf then chain)
    cert: Path | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class TLSSettings:
    """``[tls]``: HTTPS for agencies and peers."""

    #: server certificate (PEM, leaf then chain); usually the node certificate
    cert: Path | None = None
    #: its private key
    key: Path | None = None
    #: CA certificates that client certificates must chain to (defaults to [trust] anchors)
    client_ca: tuple[Path, ...] = ()
    #: addresses of a TLS-terminating proxy whose client-certificate header is believed;
    #: empty: no header is ever believed
    trusted_proxies: tuple[str, ...] = ()
    #: the header that proxy puts the URL-encoded PEM client certificate in
    proxy_cert_header: str = "x-client-cert"


@dataclass(frozen=True, kw_only=True, slots=True)
class DatabaseSettings:
    """``[database]``: where the node keeps documents, deliveries, timelines and its audit log."""

    #: SQLAlchemy URL: ``sqlite:///gateway.db`` (relative to this file) or
    #: ``postgresql+psycopg://user@host/db``
    url: str = "sqlite:///gateway.db"


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerSettings:
    """``[server]``: the HTTPS listener."""

    #: address to listen on
    host: str = "127.0.0.1"
    #: port to listen on
    port: int = 8443
    #: processes serving the node on that port (one per core uses the machine; see
    #: gateway.api.supervisor): worker 0 also runs the outbox dispatcher and the audit checkpoints
    workers: int = 1
    #: largest request head (request line plus headers), in bytes
    max_header_bytes: int = 16 * 1024
    #: most request headers
    max_headers: int = 100
    #: seconds a client has to send a whole request head (from connecting, or from the first
    #: byte of a later request on a kept-alive connection; idle kept-alive connections close
    #: after 30 s)
    header_timeout: float = 10.0
    #: seconds a client may leave a request body without sending a byte
    body_timeout: float = 30.0


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditSettings:
    """``[audit]``: the hash-chained event log."""

    #: seconds between signed checkpoints of the chain head
    checkpoint_interval: int = 300


@dataclass(frozen=True, kw_only=True, slots=True)
class PeerSettings:
    """One neighbour node in ``[directory]``: the parent, or a child and what it serves."""

    #: the peer's node name, as bound in its certificate (``urn:gateway-node:<name>``)
    name: str
    #: its HTTPS base URL, e.g. ``https://province.h49.example:8443``
    url: str
    #: for a child: the agency codes its subtree serves (a code serves itself and every code
    #: below it)
    serves: tuple[str, ...] = ()
    #: ``node`` (a gateway node: relay with node certificates) or, for the parent only, ``hub``
    #: (a national hub speaking the hub protocol at ``url``: docs/hub.md "A hub as parent")
    kind: str = "node"
    #: a hub parent: this node's systemid at the hub
    systemid: str | None = None
    #: a hub parent: the file holding this node's secret at the hub (or ``secret_env``)
    secret_file: Path | None = None
    #: a hub parent: the environment variable holding the secret instead
    secret_env: str | None = None
    #: a hub parent: ``require`` or ``attest``: what packages pulled from the hub must be
    policy: str = "require"
    #: a hub parent: seconds between two pulls of what it holds for this node
    poll_interval: float = 10.0


@dataclass(frozen=True, kw_only=True, slots=True)
class DirectorySettings:
    """``[directory]``: this node's place in the tree: its parent and its children."""

    #: the node one tier up (None on the central node, which refuses what nobody serves)
    parent: PeerSettings | None = None
    #: the nodes one tier down, each with the agency codes its subtree serves
    children: tuple[PeerSettings, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class DeliverySettings:
    """``[delivery]``: the outbox dispatcher that relays packages to neighbour nodes."""

    #: seconds between dispatcher ticks (a new package also wakes it at once)
    tick_interval: float = 0.5
    #: most packages sent to one peer in one relay request
    batch_size: int = 100
    #: most bytes of envelopes in one relay request (a bigger package travels alone)
    batch_bytes: int = 16 * 1024 * 1024
    #: seconds to wait for a peer to connect
    connect_timeout: float = 5.0
    #: seconds to wait for a peer's answer to one relay request
    timeout: float = 60.0
    #: first retry wait in seconds; it doubles per attempt (exponential, with jitter)
    backoff_initial: float = 1.0
    #: longest wait between two attempts, in seconds
    backoff_max: float = 300.0
    #: random extra wait added to each backoff, up to this many seconds
    backoff_jitter: float = 1.0
    #: attempts before a delivery is dead-lettered (the sender gets a failure notice)
    max_attempts: int = 50
    #: seconds after which an undelivered package is dead-lettered, however few its attempts
    max_age: int = 3 * 24 * 3600
    #: seconds a dispatcher holds the rows it claimed; a dead worker's rows return after this
    lease: int = 120
    #: consecutive failures that trip a peer's circuit breaker open (the peer is "down")
    breaker_threshold: int = 5
    #: seconds between probes of a peer whose breaker is open
    breaker_probe_interval: float = 5.0
    #: seconds between housekeeping runs (dead-lettering by age, expired leases)
    housekeeping_interval: int = 30


@dataclass(frozen=True, kw_only=True, slots=True)
class LoggingSettings:
    """``[logging]``: structured JSON logs, one event per line, on stderr."""

    #: debug, info, warning or error
    level: str = "info"
    #: one JSON line per HTTP request (method, path, status, client address)
    access_log: bool = True


@dataclass(frozen=True, kw_only=True, slots=True)
class HubSettings:
    """``[hub]``: the national-hub-compatible API that DMS on the national Java SDK call
    (docs/hub.md; its connected systems: ``gateway systems``)."""

    #: serve the hub-compatible API
    enabled: bool = False
    #: the path prefix it is served under (the SDK's ENDPOINT path), starting with "/"
    prefix: str = "/vdxp"
    #: the AES-256 key (32 random bytes) that encrypts the connected systems' secrets in the
    #: database; kept outside it. Relative: in the settings file's folder (:meth:`key_path`)
    secrets_key_file: Path = Path("hub-secrets.key")
    #: seconds a rotated-out secret stays valid beside the new one
    rotate_grace: int = 7 * 24 * 3600
    #: seconds after which every hub request is answered FAIL (the SDK itself never times out)
    request_deadline: float = 30.0
    #: agencies hosted here that refuse packages whose sender signature was not verified
    #: (accepted somewhere under the ``attest`` policy): their delivery fails, the sender is told
    refuse_attested: tuple[str, ...] = ()
    #: 0: served on the node's listener under ``prefix``; else the port of a listener of its
    #: own, serving the hub API only (TLS server authentication only)
    port: int = 0
    #: that listener's address; "" (unset): the ``[server] host``
    host: str = ""
    #: that listener's certificate and key (the name DMS put in their endpoint URL); unset: the
    #: ``[tls]`` ones
    cert: Path | None = None
    key: Path | None = None
    #: seconds an idle kept-alive connection stays open on that listener (the SDK leaves the
    #: connections of its list calls open)
    keepalive_timeout: int = 5

    def key_path(self, base_dir: Path) -> Path:
        """``secrets_key_file``, a relative one taken in ``base_dir`` (``Settings.base_dir``)."""
        path = self.secrets_key_file
        return path if path.is_absolute() else base_dir / path


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookEndpoint:
    """One hosted agency's webhook (``[webhooks] endpoints``): where its DMS is told of arrivals."""

    #: the agency code (one of ``[node] agencies``)
    agency: str
    #: the DMS's HTTPS URL the notifications are POSTed to (http:// only to a loopback host)
    url: str
    #: the file holding the signing secret, ``whsec_<base64>`` (one per line: every line signs,
    #: for a rotation without downtime); never in the settings file, never logged
    secret_file: Path


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookSettings:
    """``[webhooks]``: signed notifications POSTed to an agency's DMS when a package lands in its
    inbox (docs/webhooks.md); the DMS still fetches and acknowledges through the API."""

    #: one per hosted agency whose DMS wants them; empty: no webhooks at all
    endpoints: tuple[WebhookEndpoint, ...] = ()
    #: the node's public base URL for the links in a notification (``https://host:port``);
    #: empty: ``https://<[server] host>:<[server] port>``
    public_url: str = ""
    #: CA certificates (PEM) the DMS's HTTPS certificate must chain to, instead of the system's
    ca_file: Path | None = None
    #: seconds between runs of the sender (one job per endpoint)
    tick_interval: float = 1.0
    #: seconds one POST may take (connect, send, answer) before it counts as a failed attempt
    timeout: float = 15.0
    #: failed attempts after which a notification is given up (audited ``webhook_failed``)
    max_attempts: int = 15
    #: first retry wait in seconds; it doubles per failed attempt (plus up to as much again,
    #: at random), at most backoff_max
    backoff_initial: float = 5.0
    #: longest wait between two attempts, in seconds
    backoff_max: float = 3600.0
    #: seconds after which a notification not yet accepted is given up, however few its attempts
    max_age: int = 3 * 24 * 3600

    def base_url(self, server: ServerSettings) -> str:
        """The base URL of the links: ``public_url``, or the ``[server]`` listener's."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{server.host}]" if ":" in server.host else server.host
        return f"https://{host}:{server.port}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """All settings of one gateway process."""

    node: NodeSettings = field(default_factory=NodeSettings)
    tls: TLSSettings = field(default_factory=TLSSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    verify: VerifySettings = field(default_factory=VerifySettings)
    trust: TrustSettings = field(default_factory=TrustSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    directory: DirectorySettings = field(default_factory=DirectorySettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    hub: HubSettings = field(default_factory=HubSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    #: the settings file's folder: relative paths (and a relative SQLite file) live there
    base_dir: Path = field(default_factory=Path.cwd)


_SECTIONS: dict[str, type[Any]] = {
    "node": NodeSettings,
    "tls": TLSSettings,
    "database": DatabaseSettings,
    "server": ServerSettings,
    "verify": VerifySettings,
    "trust": TrustSettings,
    "limits": LimitsSettings,
    "audit": AuditSettings,
    "delivery": DeliverySettings,
    "logging": LoggingSettings,
    "hub": HubSettings,
    "webhooks": WebhookSettings,
}

_LOG_LEVELS = ("debug", "info", "warning", "error")


def _parse(kind: type[int] | type[float], value: Any) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None


def _coerce(section: str, key: str, value: Any, annotation: str, base: Path) -> Any:
    where, name = f"[{section}] {key}", f"{section}.{key}"
    if annotation == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "1", "yes", "false", "0", "no"}:
            return value.lower() in {"true", "1", "yes"}
        raise ConfigError(f"{where} must be true or false, not {value!r}", detail={"key": name})
    if annotation == "int":
        # not a bool (TOML true) nor a float (1.5 would become 1 without a word)
        number = None if isinstance(value, bool | float) else _parse(int, value)
        if number is None:
            raise ConfigError(f"{where} must be an integer, not {value!r}", detail={"key": name})
        RANGES[name].check(where, name, number)
        return number
    if annotation == "float":
        real = None if isinstance(value, bool) else _parse(float, value)
        if real is None or not math.isfinite(real):
            raise ConfigError(f"{where} must be a number, not {value!r}", detail={"key": name})
        RANGES[name].check(where, name, real)
        return real
    if annotation == "str":
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where} must be a non-empty string", detail={"key": name})
        return value.strip()
    if annotation in {"Path", "Path | None"}:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where} must be a path", detail={"key": name})
        path = Path(value.strip())
        return path if path.is_absolute() else base / path
    if annotation == "Tier":
        try:
            return Tier(str(value).strip().lower())
        except ValueError:
            tiers = ", ".join(t.value for t in Tier)
            raise ConfigError(
                f"{where} must be one of {tiers}, not {value!r}", detail={"key": name}
            ) from None
    if annotation == "tuple[str, ...]":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{where} must be a list of strings", detail={"key": name})
        return tuple(i.strip() for i in items if i.strip())
    if annotation == "tuple[Path, ...]":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{where} must be a list of paths", detail={"key": name})
        return tuple(
            (base / i.strip()) if not Path(i.strip()).is_absolute() else Path(i.strip())
            for i in items
            if i.strip()
        )
    if annotation == "tuple[WebhookEndpoint, ...]":
        return _webhook_endpoints(where, value, base)
    raise ConfigError(f"{where}: unsupported setting type {annotation}")  # pragma: no cover


def load_settings(
    path: Path | None = None, *, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build settings from ``path`` (optional) and ``GATEWAY_*`` variables; validate every key.

    Relative paths in the file are taken relative to the file's folder.
    """
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read settings file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        base = path.resolve().parent
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if section in _SECTIONS:
            raw.setdefault(section, {})[key] = value
    built: dict[str, Any] = {}
    for section, values in raw.items():
        if section == "directory":
            built[section] = _directory(values, base)
            continue
        cls = _SECTIONS.get(section)
        if cls is None:
            raise ConfigError(f"unknown settings section [{section}]", detail={"key": section})
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table", detail={"key": section})
        known = {f.name: str(f.type) for f in fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(
                    f"unknown setting [{section}] {key}", detail={"key": f"{section}.{key}"}
                )
            kwargs[key] = _coerce(section, key, value, known[key], base)
        built[section] = cls(**kwargs)
    settings = Settings(**built, base_dir=base)
    _validate(settings)
    return settings


def _peer(where: str, value: Any, *, child: bool, base: Path | None = None) -> PeerSettings:
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where} must be a table {{name, url{', serves' if child else ''}}}",
            detail={"key": where},
        )
    hub = not child and value.get("kind") == "hub"
    allowed = {"name", "url", "serves"} if child else {"name", "url", "kind"}
    if hub:
        allowed |= {"systemid", "secret_file", "secret_env", "policy", "poll_interval"}
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}", detail={"key": where})
    name, url = value.get("name"), value.get("url")
    if not isinstance(name, str) or not _NODE_NAME.fullmatch(name):
        raise ConfigError(f"{where} name must match [a-z0-9-]+", detail={"key": f"{where}.name"})
    if not isinstance(url, str) or not url.startswith("https://"):
        raise ConfigError(
            f"{where} url must be an https:// URL (peers talk HTTPS with node certificates)",
            detail={"key": f"{where}.url"},
        )
    serves = value.get("serves", [])
    if not isinstance(serves, list) or not all(isinstance(s, str) for s in serves):
        raise ConfigError(
            f"{where} serves must be a list of agency codes", detail={"key": f"{where}.serves"}
        )
    if child and not serves:
        raise ConfigError(
            f"{where} serves is empty: a child must serve some agency codes",
            detail={"key": f"{where}.serves"},
        )
    if not hub:
        if value.get("kind", "node") != "node":
            raise ConfigError(
                f'{where} kind must be "node" or "hub"', detail={"key": f"{where}.kind"}
            )
        return PeerSettings(name=name, url=url.rstrip("/"), serves=tuple(s.strip() for s in serves))
    return _hub_parent(where, name, url, value, base)


def _hub_parent(
    where: str, name: str, url: str, value: dict[str, Any], base: Path | None
) -> PeerSettings:
    """A parent that is a national hub: its endpoint, this node's systemid and secret."""
    systemid, policy = value.get("systemid"), value.get("policy", "require")
    if not isinstance(systemid, str) or not systemid:
        raise ConfigError(f"{where}: a hub parent needs its systemid", detail={"key": where})
    if policy not in ("require", "attest"):
        raise ConfigError(
            f'{where} policy must be "require" or "attest"', detail={"key": f"{where}.policy"}
        )
    secret_file, secret_env = value.get("secret_file"), value.get("secret_env")
    if (secret_file is None) == (secret_env is None):
        raise ConfigError(
            f"{where}: a hub parent's secret comes from secret_file or secret_env (one of them)",
            detail={"key": where},
        )
    path: Path | None = None
    if secret_file is not None:
        if not isinstance(secret_file, str) or not secret_file:
            raise ConfigError(f"{where} secret_file must be a path", detail={"key": where})
        path = Path(secret_file)
        if not path.is_absolute() and base is not None:
            path = base / path
    if secret_env is not None and (not isinstance(secret_env, str) or not secret_env):
        raise ConfigError(f"{where} secret_env must be a variable name", detail={"key": where})
    poll = value.get("poll_interval", 10.0)
    if isinstance(poll, bool) or not isinstance(poll, int | float) or not 0.1 <= poll <= 3600:
        raise ConfigError(
            f"{where} poll_interval must be 0.1-3600 seconds",
            detail={"key": f"{where}.poll_interval"},
        )
    return PeerSettings(
        name=name,
        url=url.rstrip("/"),
        kind="hub",
        poll_interval=float(poll),
        systemid=systemid,
        secret_file=path,
        secret_env=secret_env,
        policy=policy,
    )


def _directory(values: Any, base: Path | None = None) -> DirectorySettings:
    """``[directory]``: ``parent = {name, url}``, ``children = [{name, url, serves}, ...]``."""
    if not isinstance(values, dict):
        raise ConfigError("[directory] must be a table", detail={"key": "directory"})
    unknown = sorted(set(values) - {"parent", "children"})
    if unknown:
        raise ConfigError(
            f"unknown setting [directory] {unknown[0]}", detail={"key": f"directory.{unknown[0]}"}
        )
    parent = values.get("parent")
    children = values.get("children", [])
    if not isinstance(children, list):
        raise ConfigError(
            "[directory] children must be a list of tables", detail={"key": "directory.children"}
        )
    return DirectorySettings(
        parent=None
        if parent is None
        else _peer("[directory] parent", parent, child=False, base=base),
        children=tuple(
            _peer(f"[directory] children[{i}]", c, child=True) for i, c in enumerate(children)
        ),
    )


def _validate(settings: Settings) -> None:
    """Cross-field rules, each error naming its key."""
    from gateway.agency import AgencyCode
    from gateway.errors import AgencyCodeError

    if not _NODE_NAME.fullmatch(settings.node.name):
        raise ConfigError(
            f"[node] name {settings.node.name!r} must match [a-z0-9-]+",
            detail={"key": "node.name"},
        )
    for code in settings.node.agencies:
        try:
            AgencyCode.parse(code)
        except AgencyCodeError as exc:
            raise ConfigError(
                f"[node] agencies: {exc.message}", detail={"key": "node.agencies"}
            ) from None
    for peer in settings.directory.children:
        for code in peer.serves:
            if not AgencyCode.is_valid(code):
                raise ConfigError(
                    f"[directory] child {peer.name} serves {code!r}, not an agency code",
                    detail={"key": "directory.children"},
                )
    if settings.delivery.backoff_max < settings.delivery.backoff_initial:
        raise ConfigError(
            "[delivery] backoff_max must not be less than backoff_initial",
            detail={"key": "delivery.backoff_max"},
        )
    if settings.logging.level not in _LOG_LEVELS:
        raise ConfigError(
            f"[logging] level must be one of {', '.join(_LOG_LEVELS)}",
            detail={"key": "logging.level"},
        )
    _validate_hub(settings)
    _validate_webhooks(settings)
    url = settings.database.url
    if not url.startswith(("sqlite://", "postgresql+psycopg://", "postgresql://")):
        raise ConfigError(
            "[database] url must be sqlite:///... or postgresql+psycopg://...",
            detail={"key": "database.url"},
        )


#: a path prefix: "/" then segments of URL path characters (no query, fragment, space or "%")
_HUB_PREFIX = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@/-]*")


def _validate_hub(settings: Settings) -> None:
    hub = settings.hub
    if not _HUB_PREFIX.fullmatch(hub.prefix):
        raise ConfigError(
            f'[hub] prefix must be a URL path starting with "/" (e.g. "/vdxp"), not {hub.prefix!r}',
            detail={"key": "hub.prefix"},
        )
    if hub.port == 0 and hub.prefix.rstrip("/") in ("", "/api"):
        raise ConfigError(
            f'[hub] prefix {hub.prefix!r} would hide the node\'s own API: use e.g. "/vdxp", '
            "or give the hub API a listener of its own ([hub] port)",
            detail={"key": "hub.prefix"},
        )
    if (
        hub.port != 0
        and hub.port == settings.server.port
        and hub.host in ("", settings.server.host)
    ):
        raise ConfigError(
            f"[hub] port {hub.port} is the node's own listener's: choose another, or 0 to serve "
            "the hub API on the node's listener",
            detail={"key": "hub.port"},
        )
    if (hub.cert is None) != (hub.key is None):
        raise ConfigError(
            "[hub] cert and key go together: set both, or neither to use [tls] cert and key",
            detail={"key": "hub.cert" if hub.cert is None else "hub.key"},
        )
    strangers = [code for code in hub.refuse_attested if code not in settings.node.agencies]
    if strangers:
        raise ConfigError(
            f"[hub] refuse_attested names {strangers[0]!r}, not one of [node] agencies",
            detail={"key": "hub.refuse_attested"},
        )


# --- [webhooks] ----------------------------------------------------------------------------------

#: hosts a webhook may be sent to over plain http:// (this machine: a DMS or an agent beside it)
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
#: the shortest and longest webhook secret, in bytes (Standard Webhooks: 24 to 64)
WEBHOOK_SECRET_BYTES = (24, 64)
_WHSEC = "whsec_"


def _webhook_endpoints(where: str, value: Any, base: Path) -> tuple[WebhookEndpoint, ...]:
    """``endpoints = [{agency, url, secret_file}, ...]``, each table checked on its own."""
    if not isinstance(value, list):
        raise ConfigError(
            f"{where} must be a list of tables {{agency, url, secret_file}}",
            detail={"key": "webhooks.endpoints"},
        )
    out = []
    for index, item in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(
                f"{at} must be a table {{agency, url, secret_file}}",
                detail={"key": "webhooks.endpoints"},
            )
        unknown = sorted(set(item) - {"agency", "url", "secret_file"})
        if unknown:
            raise ConfigError(
                f"{at}: unknown key {unknown[0]!r}", detail={"key": "webhooks.endpoints"}
            )
        for name in ("agency", "url", "secret_file"):
            if not isinstance(item.get(name), str) or not item[name].strip():
                raise ConfigError(
                    f"{at} {name} must be a non-empty string",
                    detail={"key": "webhooks.endpoints"},
                )
        path = Path(item["secret_file"].strip())
        out.append(
            WebhookEndpoint(
                agency=item["agency"].strip(),
                url=item["url"].strip(),
                secret_file=path if path.is_absolute() else base / path,
            )
        )
    return tuple(out)


def webhook_url_problem(url: str) -> str | None:
    """Why ``url`` cannot receive webhooks (None: it can): https://, or http:// to this
    machine only; a host; no user name or password, no fragment."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("https", "http") or not host:
        return "must be an https:// URL"
    if parts.scheme == "http" and host not in _LOOPBACK_HOSTS and not host.startswith("127."):
        return "must be https:// (http:// is allowed only to 127.x.x.x, ::1 or localhost)"
    if parts.username is not None or parts.password is not None:
        return "must not carry a user name or password (the signature authenticates the node)"
    if parts.fragment:
        return "must not have a #fragment"
    return None


def read_webhook_secrets(path: Path) -> list[bytes]:
    """The HMAC keys in a webhook secret file: one ``whsec_<base64>`` per non-empty line, the
    current one first. Raises :class:`ConfigError` (naming the file, never its content)."""
    import base64
    import binascii

    try:
        lines = path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII text"
        raise ConfigError(
            f"webhook secret file {path} cannot be read: {reason}",
            detail={"key": "webhooks.endpoints"},
        ) from None
    keys = []
    least, most = WEBHOOK_SECRET_BYTES
    for number, line in enumerate(lines, 1):
        if not line.startswith(_WHSEC):
            raise ConfigError(
                f"webhook secret file {path}: secret {number} must start with {_WHSEC}",
                detail={"key": "webhooks.endpoints"},
            )
        try:
            key = base64.b64decode(line[len(_WHSEC) :], validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if not least <= len(key) <= most:
            raise ConfigError(
                f"webhook secret file {path}: secret {number} must be {_WHSEC} then the base64 "
                f"of {least}-{most} random bytes",
                detail={"key": "webhooks.endpoints"},
            )
        keys.append(key)
    if not keys:
        raise ConfigError(
            f"webhook secret file {path} holds no secret", detail={"key": "webhooks.endpoints"}
        )
    return keys


def _validate_webhooks(settings: Settings) -> None:
    webhooks = settings.webhooks
    if webhooks.backoff_max < webhooks.backoff_initial:
        raise ConfigError(
            "[webhooks] backoff_max must not be less than backoff_initial",
            detail={"key": "webhooks.backoff_max"},
        )
    if webhooks.public_url:
        problem = webhook_url_problem(webhooks.public_url)
        if problem is not None or "?" in webhooks.public_url:
            raise ConfigError(
                f"[webhooks] public_url {problem or 'must not have a query'}: "
                "the node's base URL, e.g. https://gateway.h49.example:8443",
                detail={"key": "webhooks.public_url"},
            )
    seen: set[str] = set()
    for index, endpoint in enumerate(webhooks.endpoints):
        at = f"[webhooks] endpoints[{index}]"
        if endpoint.agency not in settings.node.agencies:
            raise ConfigError(
                f"{at} agency {endpoint.agency!r} is not one of [node] agencies: only an "
                "agency hosted here has an inbox",
                detail={"key": "webhooks.endpoints"},
            )
        if endpoint.agency in seen:
            raise ConfigError(
                f"{at} agency {endpoint.agency!r} has two endpoints: one per agency",
                detail={"key": "webhooks.endpoints"},
            )
        seen.add(endpoint.agency)
        problem = webhook_url_problem(endpoint.url)
        if problem is not None:
            raise ConfigError(f"{at} url {problem}", detail={"key": "webhooks.endpoints"})
        read_webhook_secrets(endpoint.secret_file)
    wildcard = settings.server.host in ("0.0.0.0", "::", "")  # noqa: S104 - a check, not a bind
    if webhooks.endpoints and not webhooks.public_url and wildcard:
        raise ConfigError(
            "[webhooks] public_url is required when [server] host is a wildcard address: "
            "the notifications' links must name the node as a DMS reaches it",
            detail={"key": "webhooks.public_url"},
        )
