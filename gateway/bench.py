"""``gateway bench envelopes``: sign and verify throughput against bare signxml, in one run.

Our verify path is the whole ingest check (safe parse, structure, XSD, signature, envelope
model, chain, CRL, signer agency); the baseline is ``XMLVerifier().verify(data, x509_cert=...)``
on the same bytes, as a signxml user would call it. Figures drift run to run: compare the ratio,
measured in the same run, not the absolute numbers.
"""

from __future__ import annotations

import base64
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import click
from lxml import etree
from signxml.algorithms import CanonicalizationMethod
from signxml.signer import XMLSigner
from signxml.verifier import XMLVerifier

from gateway.pki import init_ca, issue
from gateway.signing import SigningKey, sign_package
from gateway.trust import TrustStore
from gateway.verification import Verifier

__all__ = ["make_envelope", "run_envelope_bench"]

_BARE_PARSER = etree.XMLParser(resolve_entities=False, huge_tree=True)
_INTEROP = Path(__file__).resolve().parent.parent / "tests" / "data" / "interop"


def make_envelope(size: int) -> bytes:
    """An unsigned document package of about ``size`` bytes, from a real field sample."""
    sample = (_INTEROP / "edoc_update.edxml").read_bytes()
    start = sample.index(b"<edXML:ContentTransferEncoded")
    start = sample.index(b">", start) + 1
    end = sample.index(b"</edXML:ContentTransferEncoded>", start)
    head, tail = sample[:start], sample[end:]
    room = max(size - len(head) - len(tail), 64)
    raw = os.urandom(room * 3 // 4)
    encoded = base64.encodebytes(raw).replace(b"\n", b"")[:room]
    return head + encoded + tail


def _rate(fn: Callable[[], object], seconds: float) -> tuple[float, float]:
    """Operations per second and median milliseconds per operation."""
    fn()  # warm up
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < 5:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    median = statistics.median(samples)
    return 1.0 / median, median * 1000.0


def run_envelope_bench(seconds: float = 2.0) -> None:
    """Print sign/verify ops/s for 5 KB and 1 MB envelopes, ours vs bare signxml, and ratios."""
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        pki = Path(tmp) / "pki"
        ca = init_ca(pki)
        issued = issue(pki, agency="000.00.00.G22", key_type="rsa2048")
        key = SigningKey.load(issued.key, issued.cert)
        verifier = Verifier(TrustStore.from_pem_files([ca.root_cert], crls=[ca.crl]))
        click.echo(f"RSA-2048 signer, {seconds:.1f} s per measurement, medians")
        click.echo(
            f"{'size':>6} {'operation':<8} {'ours ops/s':>11} {'bare ops/s':>11} {'ours/bare':>9}"
        )
        for label, size in (("5 KB", 5 * 1024), ("1 MB", 1024 * 1024)):
            unsigned = make_envelope(size)
            signed = sign_package(unsigned, key)
            report = verifier.verify(signed)
            if not report.valid:  # a benchmark of a failing path would be meaningless
                raise click.ClickException(report.render_text("bench envelope"))

            bare_signer = XMLSigner(
                signature_algorithm=key.algorithm,
                digest_algorithm="sha256",
                c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
            )

            def bare_sign(data: bytes = unsigned, signer: XMLSigner = bare_signer) -> bytes:
                root = etree.fromstring(data, _BARE_PARSER)
                out = signer.sign(root, key=key.private_key, cert=[key.certificate, *key.chain])
                return bytes(etree.tostring(out))

            def bare_verify(data: bytes = signed) -> object:
                return XMLVerifier().verify(data, x509_cert=key.certificate, parser=_BARE_PARSER)

            def ours_sign_once(data: bytes = unsigned) -> bytes:
                return sign_package(data, key)

            def ours_verify_once(data: bytes = signed) -> object:
                return verifier.verify(data)

            ours_sign = _rate(ours_sign_once, seconds)
            base_sign = _rate(bare_sign, seconds)
            ours_verify = _rate(ours_verify_once, seconds)
            base_verify = _rate(bare_verify, seconds)
            for op, ours, base in (
                ("sign", ours_sign, base_sign),
                ("verify", ours_verify, base_verify),
            ):
                ratio = ours[0] / base[0]
                click.echo(f"{label:>6} {op:<8} {ours[0]:>11.1f} {base[0]:>11.1f} {ratio:>8.2f}x")
        click.echo("ours verify = safe parse + structure + XSD + signature + envelope + chain")
        click.echo("              + validity + CRL + signer agency; bare = signxml verify only")
