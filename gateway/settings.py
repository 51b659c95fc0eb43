"""Settings: one frozen, validated object built from a TOML file plus ``GATEWAY_*`` overrides.

No other module reads ``os.environ``. An environment variable names a key by its section and
name joined with a double underscore: ``GATEWAY_VERIFY__ALLOW_WEAK_ALGORITHMS=true`` overrides
``[verify] allow_weak_algorithms``.

Usage::

    settings = load_settings(Path("node.toml"))
    settings.verify.allow_weak_algorithms
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.xmlsafe import XMLLimits

__all__ = [
    "AuditSettings",
    "DatabaseSettings",
    "LimitsSettings",
    "LoggingSettings",
    "NodeSettings",
    "ServerSettings",
    "Settings",
    "TLSSettings",
    "Tier",
    "TrustSettings",
    "VerifySettings",
    "load_settings",
]

ENV_PREFIX = "GATEWAY_"
_NODE_NAME = re.compile(r"[a-z0-9-]+")


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
    max_elements: int = 100_000
    #: most recipients (To) in one document
    max_recipients: int = 500
    #: most attachments in one document
    max_attachments: int = 100

    def xml_limits(self) -> XMLLimits:
        return XMLLimits(
            max_bytes=self.max_envelope_bytes,
            max_depth=self.max_depth,
            max_elements=self.max_elements,
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


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditSettings:
    """``[audit]``: the hash-chained event log."""

    #: seconds between signed checkpoints of the chain head
    checkpoint_interval: int = 300


@dataclass(frozen=True, kw_only=True, slots=True)
class LoggingSettings:
    """``[logging]``: structured JSON logs, one event per line, on stderr."""

    #: debug, info, warning or error
    level: str = "info"


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
    logging: LoggingSettings = field(default_factory=LoggingSettings)
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
    "logging": LoggingSettings,
}

_LOG_LEVELS = ("debug", "info", "warning", "error")


def _coerce(section: str, key: str, value: Any, annotation: str, base: Path) -> Any:
    where = f"[{section}] {key}"
    if annotation == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "1", "yes", "false", "0", "no"}:
            return value.lower() in {"true", "1", "yes"}
        raise ConfigError(f"{where} must be true or false, not {value!r}", detail={"key": where})
    if annotation == "int":
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where} must be an integer, not {value!r}", detail={"key": where}
            ) from None
        if number <= 0:
            raise ConfigError(f"{where} must be positive", detail={"key": where})
        return number
    if annotation == "str":
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where} must be a non-empty string", detail={"key": where})
        return value.strip()
    if annotation == "Path | None":
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where} must be a path", detail={"key": where})
        path = Path(value.strip())
        return path if path.is_absolute() else base / path
    if annotation == "Tier":
        try:
            return Tier(str(value).strip().lower())
        except ValueError:
            tiers = ", ".join(t.value for t in Tier)
            raise ConfigError(
                f"{where} must be one of {tiers}, not {value!r}", detail={"key": where}
            ) from None
    if annotation == "tuple[str, ...]":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{where} must be a list of strings", detail={"key": where})
        return tuple(i.strip() for i in items if i.strip())
    if annotation == "tuple[Path, ...]":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{where} must be a list of paths", detail={"key": where})
        return tuple(
            (base / i.strip()) if not Path(i.strip()).is_absolute() else Path(i.strip())
            for i in items
            if i.strip()
        )
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
    if settings.logging.level not in _LOG_LEVELS:
        raise ConfigError(
            f"[logging] level must be one of {', '.join(_LOG_LEVELS)}",
            detail={"key": "logging.level"},
        )
    if not 0 < settings.server.port < 65536:
        raise ConfigError("[server] port must be 1-65535", detail={"key": "server.port"})
    url = settings.database.url
    if not url.startswith(("sqlite://", "postgresql+psycopg://", "postgresql://")):
        raise ConfigError(
            "[database] url must be sqlite:///... or postgresql+psycopg://...",
            detail={"key": "database.url"},
        )
