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

from gateway.dev.pki import init_ca, issue
from gateway.dev.samples import DATA
from gateway.trust.signing import SigningKey, sign_package
from gateway.trust.store import TrustStore
from gateway.trust.verification import VerificationReport, Verifier

__all__ = ["make_envelope", "run_envelope_bench"]

_BARE_PARSER = etree.XMLParser(resolve_entities=False, huge_tree=True)


def make_envelope(size: int) -> bytes:
    """An unsigned document package of about ``size`` bytes, from a real field sample."""
    sample = (DATA / "edoc_update.edxml").read_bytes()
    start = sample.index(b"<edXML:ContentTransferEncoded")
    start = sample.index(b">", start) + 1
    end = sample.index(b"</edXML:ContentTransferEncoded>", start)
    head, tail = sample[:start], sample[end:]
    room = max(size - len(head) - len(tail), 64)
    raw = os.urandom(room * 3 // 4)
    encoded = base64.encodebytes(raw).replace(b"\n", b"")[:room]
    return head + encoded + tail


def _compare(
    ours: Callable[[], object],
    bare: Callable[[], object],
    seconds: float,
    results: list[object] | None = None,
) -> tuple[float, float]:
    """Operations per second of ``ours`` and ``bare``, measured interleaved.

    Short alternating batches, so that a machine that speeds up or slows down during the run
    (2 shared cores drift by ±20%) affects both sides alike; medians of single operations.
    What ``ours`` returns is appended to ``results`` when given.
    """
    ours()
    bare()  # warm up
    times: tuple[list[float], list[float]] = ([], [])
    deadline = time.perf_counter() + 2 * seconds
    while time.perf_counter() < deadline or len(times[1]) < 10:
        for fn, sink in ((ours, times[0]), (bare, times[1])):
            for _ in range(5):
                t0 = time.perf_counter()
                out = fn()
                sink.append(time.perf_counter() - t0)
                if results is not None and fn is ours:
                    results.append(out)
    return 1.0 / statistics.median(times[0]), 1.0 / statistics.median(times[1])


#: the checks inside the issue's target scope "parse + XSD + signature + chain + CRL"
_TARGET_SCOPE = (
    "xml",
    "structure",
    "schema",
    "algorithm",
    "signature",
    "chain",
    "validity_at_signing",
    "validity_now",
    "revocation",
)


def _breakdown(reports: list[object]) -> dict[str, float]:
    """Median milliseconds of each check over the reports of a measured run."""
    per: dict[str, list[float]] = {}
    for report in reports:
        assert isinstance(report, VerificationReport)
        for check in report.checks:
            per.setdefault(check.name, []).append(check.seconds * 1000.0)
    return {name: statistics.median(values) for name, values in per.items()}


def run_envelope_bench(seconds: float = 2.0) -> None:
    """Print sign/verify ops/s for 5 KB and 1 MB envelopes, ours vs bare signxml, and ratios."""
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        pki = Path(tmp) / "pki"
        ca = init_ca(pki)
        issued = issue(pki, agency="000.00.00.G22", key_type="rsa2048")
        key = SigningKey.load(issued.key, issued.cert)
        verifier = Verifier(TrustStore.from_pem_files([ca.root_cert], crls=[ca.crl]))
        click.echo(f"RSA-2048 signer; ours and bare interleaved, {seconds:.1f} s each; medians")
        click.echo(
            f"{'size':>6} {'operation':<8} {'ours ops/s':>11} {'bare ops/s':>11} {'ours/bare':>9}"
        )
        breakdowns: dict[str, tuple[dict[str, float], float, float]] = {}
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

            reports: list[object] = []
            for op, (ours, base) in (
                ("sign", _compare(ours_sign_once, bare_sign, seconds)),
                ("verify", _compare(ours_verify_once, bare_verify, seconds, reports)),
            ):
                ratio = ours / base
                click.echo(f"{label:>6} {op:<8} {ours:>11.1f} {base:>11.1f} {ratio:>8.2f}x")
            breakdowns[label] = (_breakdown(reports), 1000.0 / ours, 1000.0 / base)
        click.echo("ours verify = every check of `gateway verify`; bare = signxml verify alone")
        click.echo(
            "\nwhere ours spends its time (median ms per check, from the verify runs above):"
        )
        click.echo(f"{'check':<22}" + "".join(f"{label:>10}" for label in breakdowns))
        for name in verifier.verify(signed).checks:
            row = "".join(f"{b[0].get(name.name, 0.0):>10.3f}" for b in breakdowns.values())
            click.echo(f"{name.name:<22}{row}")
        for label, (steps, ours_ms, bare_ms) in breakdowns.items():
            scope = sum(steps.get(n, 0.0) for n in _TARGET_SCOPE)
            click.echo(
                f"{label}: parse + structure + XSD + signature + chain + CRL = {scope:.3f} ms "
                f"= {bare_ms / scope:.2f}x bare signxml ({bare_ms:.3f} ms); full check "
                f"{ours_ms:.3f} ms adds the signed-content model and the signer's agency"
            )
