"""``gateway demo``: the signed-envelope round trip, end to end, as a new user would see it.

It makes a fresh dev PKI, signs a real field sample as its sender agency, verifies it, verifies
a tampered copy, revokes the signer and verifies once more, printing every report.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click

from gateway.pki import init_ca, issue, revoke
from gateway.signing import SigningKey, sign_package
from gateway.trust import TrustStore
from gateway.verification import Verifier

__all__ = ["SAMPLE", "run_demo"]

#: A real package from the field (Government Office update notice, BussinessDocType 2).
SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "data" / "interop" / "edoc_update.edxml"


def _step(text: str) -> None:
    click.secho(f"\n== {text}", bold=True)


def run_demo(keep: Path | None = None) -> int:
    """Run the demonstration; return 0 when every step behaved as expected."""
    work = keep if keep is not None else Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(work)
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def _run(work: Path) -> int:
    pki_dir = work / "pki"
    sender = "000.00.00.G22"  # Văn phòng Chính phủ, the sample's sender
    _step(f"1. a fresh dev PKI in {pki_dir}")
    ca = init_ca(pki_dir)
    issued = issue(pki_dir, agency=sender)
    click.echo(f"   trust anchor  {ca.root_cert}")
    click.echo(f"   agency cert   {issued.cert} (serial {issued.serial:x}, {issued.key_type})")

    _step(f"2. sign the field sample {SAMPLE.name} as {sender}")
    key = SigningKey.load(issued.key, issued.cert)
    signed = sign_package(SAMPLE.read_bytes(), key)
    signed_path = work / "signed.edxml"
    signed_path.write_bytes(signed)
    click.echo(f"   wrote {signed_path} ({len(signed)} bytes, {key.algorithm.name})")

    trust = TrustStore.from_pem_files([ca.root_cert], crls=[ca.crl])
    _step("3. verify the signed package")
    good = Verifier(trust).verify(signed)
    click.echo(good.render_text(signed_path.name))

    _step("4. change one byte of the subject and verify again")
    tampered = signed.replace("Cập nhật".encode(), "Cập nhât".encode(), 1)
    tampered_path = work / "tampered.edxml"
    tampered_path.write_bytes(tampered)
    bad = Verifier(trust).verify(tampered)
    click.echo(bad.render_text(tampered_path.name))

    _step(f"5. revoke the signer's certificate (serial {issued.serial:x}) and verify again")
    revoke(pki_dir, issued.serial)
    revoked_trust = TrustStore.from_pem_files([ca.root_cert], crls=[ca.crl])
    after = Verifier(revoked_trust).verify(signed)
    click.echo(after.render_text(signed_path.name))

    _step("6. the original field sample (placeholder RSA-SHA1 signature)")
    field = Verifier(trust).verify(SAMPLE.read_bytes())
    click.echo(field.render_text(SAMPLE.name))

    expected = (
        good.valid
        and not bad.valid
        and not after.valid
        and not field.valid
        and any(e.code == "SIGNATURE_DIGEST_MISMATCH" for e in bad.errors)
        and any(e.code == "CERT_REVOKED" for e in after.errors)
    )
    _step("summary")
    click.echo(f"   signed: {'valid' if good.valid else 'INVALID'}")
    click.echo(f"   tampered: {', '.join(e.code for e in bad.errors)}")
    click.echo(f"   revoked: {', '.join(e.code for e in after.errors)}")
    click.echo(f"   field sample: {', '.join(e.code for e in field.errors)}")
    click.echo(f"   demo {'behaved as expected' if expected else 'DID NOT behave as expected'}")
    click.echo("   try it yourself: gateway verify FILE --trust ca.cert.pem --crl crl.pem --json")
    return 0 if expected else 1
