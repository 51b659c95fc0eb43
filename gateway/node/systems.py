"""The connected systems of the hub-compatible API: who a DMS on the national SDK is.

A *system* is one agency DMS built on the national Java SDK (SDKVXP). It connects with a
``systemid`` and a shared secret: every request carries ``XroadVnpt-sign-header`` (compact JSON
of its parameters) and ``XroadVnpt-hash-header`` (hex HMAC-SHA256 of that header's bytes under
the secret; HUB-PROTOCOL.md section 3). A system may send as, and read for, the agency codes it
was given (all hosted by this node), and its packages follow its signature policy
(``require`` or ``attest``; applied by the hub API).

Usage::

    system, secret = add_system(node, "vxp.h49.01", ["000.00.00.H49"], actor="admin:ops")
    auth = authenticate(node, sign_header, hash_header, remote="10.0.0.7")   # or raise
    check_agency(auth, "000.00.00.H49")
    doc_id = auth.param("docId")

Secrets are 32 random bytes shown once as URL-safe base64 without padding (43 ASCII
characters: only ASCII survives both of the SDK's HTTP stacks). The database holds them only
encrypted, AES-256-GCM with a random 12-byte nonce and the systemid as associated data, under
the key in ``[hub] secrets_key_file`` (32 random bytes, outside the database; made by the first
:func:`add_system`, mode 0600). A rotation keeps the previous secret valid for a grace period
(``[hub] rotate_grace``), so the DMS operator can install the new one without an outage.

Every change is audited (``system_add``, ``system_rotate``, ``system_disable``,
``system_policy``) and so is every refused authentication (``hub_auth_refuse``, in a
transaction of its own).

.. warning:: A secret is returned once, by :func:`add_system` or :func:`rotate_secret`, and
   never again: it is never logged, never audited, never kept in a module global, never stored
   in plain text. Keep it that way: do not add it to a log event, an exception or a repr.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, bindparam, func, select, update
from sqlalchemy.exc import IntegrityError

from gateway.agency import AgencyCode
from gateway.errors import (
    AgencyCodeError,
    ConfigError,
    GatewayError,
    HubSignatureInvalid,
    JSONTooDeep,
    SystemAgencyForbidden,
    SystemDisabled,
    SystemUnknown,
    UsageError,
)
from gateway.evidence import audit
from gateway.jsonsafe import loads
from gateway.node.container import Node
from gateway.settings import MAX_ROTATE_GRACE
from gateway.storage.tables import systems

__all__ = [
    "POLICIES",
    "PREFIX",
    "Authenticated",
    "System",
    "add_system",
    "authenticate",
    "check_agency",
    "disable_system",
    "get_system",
    "list_systems",
    "rotate_secret",
    "set_policy",
]

log = structlog.get_logger("gateway.systems")

#: the signature policies a system may have: its packages must be signed (``require``, the
#: default), or the node accepts what the SDK sends on the system's authentication (``attest``)
POLICIES: Final = ("require", "attest")
#: the prefix of every SDK parameter header, and of the keys inside the sign-header
PREFIX: Final = "XroadVnpt-"

_SYSTEMID: Final = re.compile(r"[A-Za-z0-9._-]{1,128}")
_HEX_MAC: Final = re.compile(r"[0-9a-f]{64}")
_KEY_BYTES: Final = 32
_NONCE_BYTES: Final = 12
_SECRET_BYTES: Final = 32


# --- values --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class System:
    """A connected system as stored, without its secrets."""

    #: its ``XroadVnpt-systemid``
    systemid: str
    #: the agency codes it may send as and read for (sorted)
    agencies: tuple[str, ...]
    #: "require" or "attest"
    policy: str
    #: a disabled system is refused (AUTH_SYSTEM_DISABLED), its secrets kept
    disabled: bool
    created_at: dt.datetime
    updated_at: dt.datetime

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``gateway systems list --json``)."""
        return {
            "systemid": self.systemid,
            "agencies": list(self.agencies),
            "policy": self.policy,
            "disabled": self.disabled,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Authenticated:
    """A request whose sign-header's HMAC matched its system's secret.

    ``params`` are the parameters of the sign-header, the only ones the HMAC covers: its keys
    with the ``XroadVnpt-`` prefix stripped (a key sent without it is kept as it is), in the
    order sent, values as strings. Read them with :meth:`param`; the unsigned headers are not
    here, on purpose.
    """

    system: System
    params: dict[str, str]

    def param(self, name: str) -> str | None:
        """The signed parameter ``name``, its case ignored; None when absent.

        Usage: ``auth.param("docId")``. The SDK sends both ``docId`` and ``docid``: when several
        keys match, the one spelled exactly as ``name`` wins, else the first sent.
        """
        return _param(self.params, name)


def _param(params: dict[str, str], name: str) -> str | None:
    if name in params:
        return params[name]
    folded = name.casefold()
    return next((v for k, v in params.items() if k.casefold() == folded), None)


# --- administration ------------------------------------------------------------------------------


def add_system(
    node: Node,
    systemid: str,
    agencies: Sequence[str],
    *,
    policy: str = "require",
    actor: str,
) -> tuple[System, str]:
    """Register a DMS; return it and its new secret, which is never shown again.

    Usage: ``system, secret = add_system(node, "vxp.h49.01", ["000.00.00.H49"],
    actor="admin:ops")``

    Raises :class:`UsageError` for a bad systemid, policy or agency (each agency must be a
    valid code hosted by this node), or a systemid taken; :class:`ConfigError` when the key
    file is unusable. The first system creates ``[hub] secrets_key_file``.
    """
    _check_systemid(systemid)
    _check_policy(policy)
    codes = _check_agencies(node, agencies)
    now = node.now()
    secret = _new_secret()
    with node.writing() as conn:
        if conn.execute(select(systems.c.systemid).where(systems.c.systemid == systemid)).first():
            raise UsageError(
                f"system {systemid} already exists (rotate its secret with "
                f"`gateway systems rotate {systemid}`)",
                detail={"systemid": systemid},
            )
        key = _key_for_new_secret(node, conn)
        try:
            conn.execute(
                systems.insert().values(
                    systemid=systemid,
                    agencies=json.dumps(list(codes)),
                    policy=policy,
                    secret=_seal(key, systemid, secret),
                    previous_secret=None,
                    previous_until=None,
                    disabled=False,
                    created_at=now,
                    updated_at=now,
                )
            )
        except IntegrityError:  # pragma: no cover - the check above runs under the write lock
            raise UsageError(
                f"system {systemid} already exists", detail={"systemid": systemid}
            ) from None
        audit.append(
            conn,
            event="system_add",
            actor=actor,
            subject=systemid,
            data={"agencies": list(codes), "policy": policy},
        )
    log.info("system.added", systemid=systemid, agencies=list(codes), policy=policy, actor=actor)
    system = System(systemid, codes, policy, False, now, now)
    return system, secret


def list_systems(node: Node) -> list[System]:
    """Every connected system, by systemid (no secrets)."""
    with node.reader.connect() as conn:
        rows = conn.execute(select(*_PUBLIC).order_by(systems.c.systemid)).all()
    return [_system(r) for r in rows]


def get_system(node: Node, systemid: str) -> System:
    """The system ``systemid``; :class:`SystemUnknown` when there is none."""
    with node.reader.connect() as conn:
        row = conn.execute(select(*_PUBLIC).where(systems.c.systemid == systemid)).first()
    if row is None:
        raise _unknown(systemid)
    return _system(row)


def rotate_secret(node: Node, systemid: str, *, actor: str, grace: float | None = None) -> str:
    """Give ``systemid`` a new secret and return it (shown once); the current one stays valid
    for ``grace`` seconds (default ``[hub] rotate_grace``; 0: it stops at once).

    Usage: ``secret = rotate_secret(node, "vxp.h49.01", actor="admin:ops")``

    Only the last secret is kept beside the new one: rotating again within the grace ends the
    older one at once. Raises :class:`SystemUnknown`, :class:`UsageError` for a grace outside
    0 to a year, :class:`ConfigError` when the key file is missing or is not the one the
    stored secrets were made with.
    """
    seconds = float(node.settings.hub.rotate_grace if grace is None else grace)
    if not 0 <= seconds <= MAX_ROTATE_GRACE:  # NaN fails too
        raise UsageError(
            f"grace must be 0 to {MAX_ROTATE_GRACE} seconds, not {grace!r}",
            detail={"grace": str(grace)},
        )
    now = node.now()
    secret = _new_secret()
    with node.writing() as conn:
        row = conn.execute(
            select(systems.c.secret).where(systems.c.systemid == systemid).with_for_update()
        ).first()
        if row is None:
            raise _unknown(systemid)
        key = _read_key(node)
        _open(key, systemid, row.secret)  # the key file is the one these secrets were made with
        until = now + dt.timedelta(seconds=seconds) if seconds > 0 else None
        conn.execute(
            update(systems)
            .where(systems.c.systemid == systemid)
            .values(
                secret=_seal(key, systemid, secret),
                previous_secret=row.secret if until is not None else None,
                previous_until=until,
                updated_at=now,
            )
        )
        audit.append(
            conn,
            event="system_rotate",
            actor=actor,
            subject=systemid,
            data={
                "grace_seconds": round(seconds),
                "previous_until": None if until is None else until.isoformat(),
            },
        )
    log.info("system.rotated", systemid=systemid, grace_seconds=round(seconds), actor=actor)
    return secret


def disable_system(node: Node, systemid: str, *, actor: str) -> System:
    """Refuse ``systemid`` from now on (AUTH_SYSTEM_DISABLED); audited once, when it changes.

    Usage: ``disable_system(node, "vxp.h49.01", actor="admin:ops")``. Raises
    :class:`SystemUnknown`.
    """
    return _change(node, systemid, actor, event="system_disable", disabled=True)


def set_policy(node: Node, systemid: str, policy: str, *, actor: str) -> System:
    """Set the signature policy of ``systemid`` (``require`` or ``attest``); audited when it
    changes.

    Usage: ``set_policy(node, "vxp.h49.01", "attest", actor="admin:ops")``. Raises
    :class:`SystemUnknown`, :class:`UsageError` for another policy.
    """
    _check_policy(policy)
    return _change(node, systemid, actor, event="system_policy", policy=policy)


def _change(node: Node, systemid: str, actor: str, *, event: str, **values: Any) -> System:
    """Update the columns ``values`` of one system; audit ``event`` with what changed."""
    now = node.now()
    with node.writing() as conn:
        row = conn.execute(
            select(*_PUBLIC).where(systems.c.systemid == systemid).with_for_update()
        ).first()
        if row is None:
            raise _unknown(systemid)
        before = {name: getattr(row, name) for name in values}
        if before == values:
            return _system(row)
        conn.execute(
            update(systems).where(systems.c.systemid == systemid).values(**values, updated_at=now)
        )
        data: dict[str, Any] = {}
        for name, value in values.items():
            data[f"{name}_from"], data[f"{name}_to"] = before[name], value
        audit.append(conn, event=event, actor=actor, subject=systemid, data=data)
        changed = conn.execute(select(*_PUBLIC).where(systems.c.systemid == systemid)).one()
    log.info(event.replace("_", ".", 1), systemid=systemid, actor=actor, **values)
    return _system(changed)


# --- authentication ------------------------------------------------------------------------------


def authenticate(
    node: Node, sign_header: bytes | None, hash_header: str | None, *, remote: str | None
) -> Authenticated:
    """Check a hub request's sign headers (HUB-PROTOCOL.md 3.2); return who signed and what.

    Usage::

        auth = authenticate(node, raw_sign_header, request.headers.get("XroadVnpt-hash-header"),
                            remote=client_host)

    ``sign_header`` is ``XroadVnpt-sign-header`` **as received**, byte for byte: the HMAC
    covers those bytes, never a rebuilt JSON. It must be a flat JSON object whose values are
    strings (numbers are taken as their text). The secret is the one of the
    ``XroadVnpt-systemid`` inside it; the MAC is compared in constant time, hex case ignored,
    with the current secret and, until its grace ends, the previous one. The timestamp is not
    checked: the SDK freezes it for days (HUB-PROTOCOL.md 3.3).

    Raises :class:`HubSignatureInvalid` (headers missing, unparseable or not matching),
    :class:`SystemUnknown`, :class:`SystemDisabled` (checked after the MAC: a caller without
    the secret learns nothing more), :class:`ConfigError` (the key file). Every refusal is
    audited as ``hub_auth_refuse`` in a transaction of its own, and logged, without the MAC.
    """
    systemid: str | None = None  # once it is a well-formed one: the audit entry's actor
    try:
        params = _signed_params(node, sign_header)
        claimed = _param(params, "systemid")
        if claimed is None:
            raise HubSignatureInvalid(
                "the sign-header names no XroadVnpt-systemid", detail={"reason": "no systemid"}
            )
        if not _SYSTEMID.fullmatch(claimed):
            raise _unknown("-")
        systemid = claimed
        if not hash_header:
            raise HubSignatureInvalid(
                "XroadVnpt-hash-header is missing", detail={"reason": "missing header"}
            )
        assert sign_header is not None  # _signed_params refused a missing one
        return _verify(node, systemid, params, sign_header, hash_header)
    except GatewayError as exc:
        _refused(node, exc, systemid, remote)
        raise


def _signed_params(node: Node, sign_header: bytes | None) -> dict[str, str]:
    """The sign-header's parameters, prefix stripped; HubSignatureInvalid when it is not one."""
    if not sign_header:
        raise HubSignatureInvalid(
            "XroadVnpt-sign-header is missing", detail={"reason": "missing header"}
        )
    if len(sign_header) > node.settings.server.max_header_bytes:
        raise HubSignatureInvalid(
            "the sign-header is longer than a request head may be",
            detail={"reason": "sign-header too long"},
        )
    try:
        value = loads(sign_header, max_depth=1)  # flat: an object of scalars
    except (ValueError, JSONTooDeep):
        value = None
    if not isinstance(value, dict):
        raise HubSignatureInvalid(
            "the sign-header is not a flat JSON object", detail={"reason": "not a JSON object"}
        )
    params: dict[str, str] = {}
    for key, item in value.items():
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise HubSignatureInvalid(
                "the sign-header's values must be strings or numbers",
                detail={"reason": "not a string value"},
            )
        prefixed = key[: len(PREFIX)].lower() == PREFIX.lower()
        name = key[len(PREFIX) :] if prefixed else key
        if name in params and not prefixed:
            continue  # the SDK prefixes every key: a bare one never overrides a prefixed one
        params[name] = item if isinstance(item, str) else json.dumps(item)
    return params


def _verify(
    node: Node, systemid: str, params: dict[str, str], sign_header: bytes, hash_header: str
) -> Authenticated:
    """The HMAC check proper, once the headers are known to be there and parseable."""
    with node.reader.connect() as conn:
        row = conn.execute(_WITH_SECRETS, {"systemid": systemid}).first()
    if row is None:
        raise _unknown(systemid)
    given = hash_header.strip().lower()
    if not _HEX_MAC.fullmatch(given):
        raise HubSignatureInvalid(
            "XroadVnpt-hash-header is not 64 hex digits", detail={"reason": "not a MAC"}
        )
    key = _read_key(node)
    candidates = [row.secret]
    grace_until = row.previous_until
    if row.previous_secret is not None and grace_until is not None and node.now() < grace_until:
        candidates.append(row.previous_secret)
    matched = False
    for sealed in candidates:
        expected = hmac.new(_open(key, systemid, sealed), sign_header, hashlib.sha256).hexdigest()
        # every candidate is compared (no early exit): the time taken says nothing of which one
        matched |= hmac.compare_digest(expected.encode("ascii"), given.encode("ascii"))
    if not matched:
        raise HubSignatureInvalid(
            "the sign-header's HMAC does not match this system's secret",
            detail={"reason": "mac mismatch", "systemid": systemid},
        )
    system = _system(row)
    if system.disabled:
        raise SystemDisabled(f"system {systemid} is disabled", detail={"systemid": systemid})
    return Authenticated(system, params)


def _refused(node: Node, exc: GatewayError, systemid: str | None, remote: str | None) -> None:
    """Audit and log one refused authentication (never the MAC, never a secret)."""
    actor = f"hub:{systemid or '-'}"
    with node.writing() as conn:
        audit.append(
            conn,
            event="hub_auth_refuse",
            actor=actor,
            subject=None,
            data={"code": exc.code, "remote": None if remote is None else remote[:255]},
        )
    log.warning("hub.auth_refused", code=exc.code, systemid=systemid or "-", remote=remote)


def check_agency(auth: Authenticated, agency: str) -> None:
    """Raise :class:`SystemAgencyForbidden` unless ``agency`` is one of the system's codes.

    Usage: ``check_agency(auth, sender_code)`` before sending as, or reading for, an agency.
    """
    if agency not in auth.system.agencies:
        raise SystemAgencyForbidden(
            f"system {auth.system.systemid} may not send as or read for {agency!r}",
            detail={"systemid": auth.system.systemid, "agency": agency},
        )


# --- checks and rows -----------------------------------------------------------------------------

_PUBLIC: Final = (
    systems.c.systemid,
    systems.c.agencies,
    systems.c.policy,
    systems.c.disabled,
    systems.c.created_at,
    systems.c.updated_at,
)

#: built once: every hub request reads its system (SQLAlchemy compiles a construct per call)
_WITH_SECRETS = select(
    *_PUBLIC, systems.c.secret, systems.c.previous_secret, systems.c.previous_until
).where(systems.c.systemid == bindparam("systemid"))


def _system(row: Any) -> System:
    return System(
        systemid=row.systemid,
        agencies=tuple(json.loads(row.agencies)),
        policy=row.policy,
        disabled=bool(row.disabled),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _unknown(systemid: str) -> SystemUnknown:
    return SystemUnknown(f"no connected system {systemid}", detail={"systemid": systemid})


def _check_systemid(systemid: str) -> None:
    if not isinstance(systemid, str) or not _SYSTEMID.fullmatch(systemid):
        raise UsageError(
            f"a systemid is 1-128 characters of A-Z a-z 0-9 . _ -, not {systemid!r}",
            detail={"systemid": str(systemid)[:128]},
        )


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise UsageError(
            f"policy must be {' or '.join(POLICIES)}, not {policy!r}", detail={"policy": policy}
        )


def _check_agencies(node: Node, agencies: Sequence[str]) -> tuple[str, ...]:
    """The codes, sorted and distinct, once each is a valid code hosted by this node."""
    if isinstance(agencies, str) or not agencies:
        raise UsageError(
            "a system needs at least one agency code to send as and read for",
            detail={"agencies": []},
        )
    for code in agencies:
        try:
            AgencyCode.parse(code)
        except AgencyCodeError as exc:
            raise UsageError(f"agency {code!r}: {exc.message}", detail={"agency": code}) from None
        if code not in node.hosted:
            hosted = ", ".join(sorted(node.hosted)) or "none"
            raise UsageError(
                f"agency {code} is not hosted by this node ([node] agencies: {hosted}): a "
                "system may only send as and read for this node's own agencies",
                detail={"agency": code},
            )
    return tuple(sorted(set(agencies)))


# --- secrets and their key -----------------------------------------------------------------------


def _new_secret() -> str:
    """32 random bytes as URL-safe base64 without padding: 43 ASCII characters."""
    return base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).rstrip(b"=").decode()


def _seal(key: bytes, systemid: str, secret: str) -> bytes:
    """``secret`` encrypted for the ``systems`` table: nonce || AES-256-GCM(secret, aad=id)."""
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, secret.encode("utf-8"), systemid.encode("utf-8"))


def _open(key: bytes, systemid: str, sealed: bytes) -> bytes:
    """The secret (as the HMAC key: its UTF-8 bytes) from what :func:`_seal` made."""
    data = bytes(sealed)
    try:
        return AESGCM(key).decrypt(
            data[:_NONCE_BYTES], data[_NONCE_BYTES:], systemid.encode("utf-8")
        )
    except (InvalidTag, ValueError):
        raise ConfigError(
            f"the secret of system {systemid} cannot be decrypted with [hub] secrets_key_file: "
            "it is not the key file the stored secrets were made with (or the row was "
            "altered)",
            detail={"key": "hub.secrets_key_file", "systemid": systemid},
        ) from None


def _key_path(node: Node) -> Path:
    return node.settings.hub.key_path(node.settings.base_dir)


def _read_key(node: Node) -> bytes:
    """The key of ``[hub] secrets_key_file``, read afresh (never kept); ConfigError when it is
    missing, unreadable or not 32 bytes."""
    return _read_key_file(_key_path(node))


def _read_key_file(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            key = handle.read(_KEY_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            f"[hub] secrets_key_file {path} is missing, and connected systems exist: their "
            "secrets cannot be decrypted without it (nor with a new key). Restore it from its "
            "backup",
            detail={"key": "hub.secrets_key_file"},
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"[hub] secrets_key_file {path} cannot be read: {exc.strerror}",
            detail={"key": "hub.secrets_key_file"},
        ) from None
    if not stat.S_ISREG(mode) or len(key) != _KEY_BYTES:
        raise ConfigError(
            f"[hub] secrets_key_file {path} is not a {_KEY_BYTES}-byte key file",
            detail={"key": "hub.secrets_key_file"},
        )
    return key


def _key_for_new_secret(node: Node, conn: Connection) -> bytes:
    """The key to seal a new system's secret with: created when no system exists yet, else the
    existing one, checked against a stored secret (a wrong key file is refused, not used)."""
    count = conn.execute(select(func.count()).select_from(systems)).scalar_one()
    if count == 0 and not _key_path(node).exists():
        return _create_key(_key_path(node))
    key = _read_key(node)
    if count:
        row = conn.execute(select(systems.c.systemid, systems.c.secret).limit(1)).one()
        _open(key, row.systemid, row.secret)
    return key


def _create_key(path: Path) -> bytes:
    """Write a new random key to ``path`` (mode 0600) without ever replacing a file there.

    The key is written and synced under a temporary name, then linked to ``path``: a reader
    never sees half a key, and of two processes creating it at once, one wins and the other
    reads the winner's.
    """
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(
            f"the folder of [hub] secrets_key_file ({folder}) does not exist: create it (only "
            "the node's user should be able to read it), then add the system again",
            detail={"key": "hub.secrets_key_file"},
        )
    key = secrets.token_bytes(_KEY_BYTES)
    temporary = folder / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return _read_key_file(path)
        _sync_folder(folder)
    except OSError as exc:
        raise ConfigError(
            f"cannot create [hub] secrets_key_file {path}: {exc.strerror}",
            detail={"key": "hub.secrets_key_file"},
        ) from None
    finally:
        temporary.unlink(missing_ok=True)
    log.info("hub.secrets_key_file_created", path=str(path))
    return key


def _sync_folder(folder: Path) -> None:
    """Make the new key file's name durable (the key itself was synced before)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
