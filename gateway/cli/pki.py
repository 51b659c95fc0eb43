"""``gateway pki``: the development PKI from the command line.

Usage::

    gateway pki init demo-pki
    gateway pki issue demo-pki --agency 000.00.00.H49
    gateway pki issue demo-pki --node h49-hub
    gateway pki revoke demo-pki 0x5fa1569bd9ddb3a0c58de0bfc8df83178d094288 --reason keyCompromise
    gateway pki list demo-pki
    gateway pki crl demo-pki          # re-sign the CRLs (they are valid for 7 days)

Exit status: 0 on success, 2 on a usage error (``error: CODE: message`` on stderr). Output names
the files written, serials and bindings; key material is never printed.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import click
from cryptography import x509

from gateway.cli.exits import EXIT_INVALID, exit_on_error
from gateway.dev import pki as dev_pki
from gateway.errors import UsageError

__all__ = ["pki"]

_REASONS = [f.value for f in x509.ReasonFlags if f is not x509.ReasonFlags.remove_from_crl]
_DirArg = click.argument("directory", type=click.Path(file_okay=False, path_type=Path))


def _errors() -> AbstractContextManager[None]:
    """A usage or I/O error exits 2; a refusal by the PKI (a revoked serial, say) exits 1."""
    return exit_on_error(refused=EXIT_INVALID)


def _show(label: str, value: object) -> None:
    click.echo(f"{label + ':':<22}{value}")


@click.group(name="pki")
def pki() -> None:
    """Development PKI: root and intermediate CA, agency and node certificates, CRLs.

    Never use it in production: point trust anchors at the government CA instead
    (see certs/README.md).
    """


@pki.command("init")
@_DirArg
@click.option("--days", type=click.IntRange(min=1), default=3650, show_default=True)
@click.option(
    "--prefix",
    "common_name_prefix",
    default="Gateway Dev",
    show_default=True,
    help="Organization and CA common-name prefix.",
)
@click.option(
    "--key-type",
    type=click.Choice(dev_pki.KEY_TYPES),
    default="rsa3072",
    show_default=True,
    help="Key type of both CAs.",
)
def init_command(directory: Path, days: int, common_name_prefix: str, key_type: str) -> None:
    """Create a root CA, an intermediate CA and empty CRLs in DIRECTORY."""
    with _errors():
        ca = dev_pki.init_ca(
            directory, days=days, common_name_prefix=common_name_prefix, key_type=key_type
        )
    _show("trust anchor (root)", f"{ca.root_cert}  serial 0x{ca.root_serial:x}")
    _show("root key", f"{ca.root_key}  (mode 0600)")
    _show("intermediate", f"{ca.intermediate_cert}  serial 0x{ca.intermediate_serial:x}")
    _show("intermediate key", f"{ca.intermediate_key}  (mode 0600)")
    _show("CRLs", ca.crl)


@pki.command("issue")
@_DirArg
@click.option("--agency", metavar="CODE", help="Agency code, e.g. 000.00.00.H49.")
@click.option("--node", metavar="NAME", help="Gateway node name, [a-z0-9-]+.")
@click.option(
    "--key-type",
    type=click.Choice(dev_pki.KEY_TYPES),
    default=None,
    help="Default: rsa2048 for agencies, ec-p256 for nodes.",
)
@click.option("--days", type=click.IntRange(min=1), default=825, show_default=True)
@click.option("--cn", "common_name", default=None, help="Subject common name.")
def issue_command(
    directory: Path,
    agency: str | None,
    node: str | None,
    key_type: str | None,
    days: int,
    common_name: str | None,
) -> None:
    """Issue an agency (--agency CODE) or node (--node NAME) certificate from DIRECTORY."""
    with _errors():
        if (agency is None) == (node is None):
            raise UsageError("give exactly one of --agency CODE or --node NAME")
        issued = dev_pki.issue(
            directory,
            agency=agency,
            node=node,
            key_type=key_type,
            days=days,
            common_name=common_name,
        )
    if issued.agency is not None:
        _show("agency", issued.agency)
    else:
        _show("node", issued.node)
    _show("subject", issued.subject)
    _show("serial", f"0x{issued.serial:x}")
    _show("key type", issued.key_type)
    _show("valid", f"{issued.not_before.isoformat()} .. {issued.not_after.isoformat()}")
    _show("certificate chain", issued.cert)
    _show("private key", f"{issued.key}  (mode 0600)")


@pki.command("revoke")
@_DirArg
@click.argument("serial")
@click.option(
    "--reason",
    type=click.Choice(_REASONS),
    default="unspecified",
    show_default=True,
    help="CRL reason code.",
)
def revoke_command(directory: Path, serial: str, reason: str) -> None:
    """Revoke SERIAL (decimal, or hex with 0x) and rewrite DIRECTORY/crl.pem."""
    with _errors():
        number = dev_pki.parse_serial(serial)
        path = dev_pki.revoke(directory, number, reason=reason)
    _show("revoked", f"0x{number:x} ({reason})")
    _show("CRLs", path)


@pki.command("crl")
@_DirArg
def crl_command(directory: Path) -> None:
    """Re-sign DIRECTORY's CRLs (next update in 7 days) without revoking anything."""
    with _errors():
        path = dev_pki.refresh_crl(directory)
    _show("CRLs", path)


@pki.command("list")
@_DirArg
def list_command(directory: Path) -> None:
    """List the certificates issued from DIRECTORY and whether they are revoked."""
    with _errors():
        records = dev_pki.list_issued(directory)
    for r in records:
        status = f"REVOKED {r.revoked_at} ({r.reason})" if r.revoked_at else f"until {r.not_after}"
        click.echo(f"0x{r.serial:x}  {r.kind:<12} {r.name:<24} {status}")
