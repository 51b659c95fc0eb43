"""The development PKI's directory on disk: file names, CA loading, the state file, CRL writing.

:mod:`gateway.dev.pki` runs the CA operations; this module is how they read and write the
directory (layout in :mod:`gateway.dev.pki`'s docstring). Keys are written once, mode 0600, never
over an existing file; everything else is replaced atomically, so a crash never leaves half a
certificate, CRL or state file.

Usage::

    root, root_key = load_pair(directory, ROOT_CERT, ROOT_KEY)
    inter, inter_key = load_pair(directory, INTERMEDIATE_CERT, INTERMEDIATE_KEY)
    state = read_state(directory)
    write_crls(directory, state, root=root, root_key=root_key, inter=inter, inter_key=inter_key)

.. warning:: Not safe for concurrent use on one directory: two writers lose each other's
   state updates.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.errors import UsageError

__all__ = [
    "CRL_FILE",
    "CRL_LIFETIME",
    "INTERMEDIATE_CERT",
    "INTERMEDIATE_KEY",
    "ROOT_CERT",
    "ROOT_KEY",
    "SIGNING_HASH",
    "STATE_FILE",
    "PrivateKey",
    "load_pair",
    "read_state",
    "write_crls",
    "write_key",
    "write_public",
    "write_state",
]

ROOT_CERT: Final = "ca.cert.pem"
ROOT_KEY: Final = "ca.key.pem"
INTERMEDIATE_CERT: Final = "intermediate.cert.pem"
INTERMEDIATE_KEY: Final = "intermediate.key.pem"
CRL_FILE: Final = "crl.pem"
STATE_FILE: Final = "pki-state.json"

CRL_LIFETIME: Final = dt.timedelta(days=7)

#: the private key types the development CA makes and signs with
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
#: the hash every certificate and CRL of the development CA is signed with
SIGNING_HASH: Final = hashes.SHA256()


def write_crls(
    directory: Path,
    state: dict[str, Any],
    *,
    root: x509.Certificate,
    root_key: PrivateKey,
    inter: x509.Certificate,
    inter_key: PrivateKey,
) -> Path:
    """Sign both CRLs with the next CRL number and write ``crl.pem`` then the state file.

    Usage: ``write_crls(directory, state, root=..., root_key=..., inter=..., inter_key=...)``
    after recording a revocation in ``state["revoked"]``; returns the path of ``crl.pem``.
    """
    state["crl_number"] = int(state.get("crl_number", 0)) + 1
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    pems = []
    for issuer, key, scope in ((inter, inter_key, "intermediate"), (root, root_key, "root")):
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.subject)
            .last_update(now)
            .next_update(now + CRL_LIFETIME)
            .add_extension(x509.CRLNumber(state["crl_number"]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                critical=False,
            )
        )
        for serial_hex, entry in sorted(state["revoked"].items()):
            if entry["issuer"] != scope:
                continue
            revoked = (
                x509.RevokedCertificateBuilder()
                .serial_number(int(serial_hex, 16))
                .revocation_date(dt.datetime.fromisoformat(entry["revoked_at"]))
            )
            flag = x509.ReasonFlags(entry["reason"])
            # RFC 5280 5.3.1: reasonCode "unspecified" SHOULD be absent rather than written.
            if flag is not x509.ReasonFlags.unspecified:
                revoked = revoked.add_extension(x509.CRLReason(flag), critical=False)
            builder = builder.add_revoked_certificate(revoked.build())
        crl = builder.sign(key, SIGNING_HASH)
        pems.append(crl.public_bytes(serialization.Encoding.PEM))
    path = directory / CRL_FILE
    write_public(path, b"".join(pems))
    write_state(directory, state)
    return path


def load_pair(
    directory: Path, cert_name: str, key_name: str
) -> tuple[x509.Certificate, PrivateKey]:
    """A CA certificate and its key from ``directory``, checked to belong together.

    Usage: ``inter, inter_key = load_pair(directory, INTERMEDIATE_CERT, INTERMEDIATE_KEY)``.
    Raises :class:`UsageError` naming the files (never echoing key bytes).
    """
    cert_path, key_path = directory / cert_name, directory / key_name
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise UsageError(
            f"{directory} holds no CA ({exc.filename} is missing): run `gateway pki init` first",
            detail={"directory": str(directory), "missing": str(exc.filename)},
        ) from exc
    except (OSError, ValueError, TypeError) as exc:
        # The message names the file only: key parsing errors must never echo key bytes.
        raise UsageError(
            f"cannot read the CA in {directory} ({cert_name} / {key_name})",
            detail={"directory": str(directory), "reason": type(exc).__name__},
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise UsageError(
            f"{key_path} holds an unsupported key type", detail={"path": str(key_path)}
        )
    if cert.public_key() != key.public_key():
        raise UsageError(
            f"{key_path} does not belong to {cert_path}",
            detail={"key": str(key_path), "cert": str(cert_path)},
        )
    return cert, key


def read_state(directory: Path) -> dict[str, Any]:
    """The PKI state file (CRL number, issued and revoked serials) of ``directory``.

    Usage: ``read_state(directory)["revoked"]``; :class:`UsageError` when missing or not one.
    """
    path = directory / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UsageError(
            f"{path} is missing: was {directory} made by `gateway pki init`?",
            detail={"path": str(path)},
        ) from exc
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {exc}", detail={"path": str(path)}) from exc
    if not isinstance(state, dict) or not {"issued", "revoked"} <= state.keys():
        raise UsageError(f"{path} is not a PKI state file", detail={"path": str(path)})
    return state


def write_state(directory: Path, state: dict[str, Any]) -> None:
    """Replace the state file of ``directory`` atomically.

    Usage: ``write_state(directory, state)``.
    """
    text = json.dumps(state, indent=2, sort_keys=True) + "\n"
    _atomic_write(directory / STATE_FILE, text.encode("utf-8"), 0o644)


def write_key(path: Path, key: PrivateKey) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM to a NEW file, mode 0600.

    Usage: ``write_key(directory / "h49-hub.key.pem", key)``.

    .. warning:: The key is unencrypted on disk: development use only. An existing file
       raises :class:`FileExistsError` rather than being overwritten.
    """
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Created 0600, so the key is never readable by others even for a moment; O_EXCL: never
    # clobber an existing key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    os.chmod(path, 0o600)  # the umask may have removed bits, never added: make it exact


def write_public(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, mode 0644 (certificates, CRLs).

    Usage: ``write_public(directory / CRL_FILE, pem)``.
    """
    _atomic_write(path, data, 0o644)


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
