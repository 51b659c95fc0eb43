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
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.xmlsafe import XMLLimits

__all__ = ["LimitsSettings", "Settings", "TrustSettings", "VerifySettings", "load_settings"]

ENV_PREFIX = "GATEWAY_"


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


@dataclass(frozen=True, kw_only=True, slots=True)
class LimitsSettings:
    """``[limits]``: caps applied to every package before it is parsed."""

    #: largest package accepted, in bytes
    max_envelope_bytes: int = 80 * 1024 * 1024
    #: deepest element nesting accepted
    max_depth: int = 64
    #: most elements in one package
    max_elements: int = 100_000

    def xml_limits(self) -> XMLLimits:
        return XMLLimits(
            max_bytes=self.max_envelope_bytes,
            max_depth=self.max_depth,
            max_elements=self.max_elements,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """All settings of one gateway process."""

    verify: VerifySettings = field(default_factory=VerifySettings)
    trust: TrustSettings = field(default_factory=TrustSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)


_SECTIONS: dict[str, type[Any]] = {
    "verify": VerifySettings,
    "trust": TrustSettings,
    "limits": LimitsSettings,
}


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
    return Settings(**built)
