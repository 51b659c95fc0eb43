"""The ``gateway`` command line.

Exit codes for ``verify`` and ``validate``: 0 valid, 1 invalid, 2 usage or I/O error.

Usage::

    gateway sign IN.edxml --key KEY.pem --cert CERT.pem -o OUT.edxml
    gateway verify OUT.edxml --trust ca.cert.pem --crl crl.pem --json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from gateway import __version__
from gateway.cli.exits import EXIT_INVALID, EXIT_OK, exit_on_error, fail
from gateway.envelope.xmlsafe import XMLLimits, read_limited
from gateway.errors import GatewayError, UsageError, XMLTooLarge
from gateway.settings import Settings, load_settings

__all__ = ["main"]

_F = TypeVar("_F", bound=Callable[..., Any])


def _file_option(
    *decls: str, help: str, multiple: bool = False, required: bool = False
) -> Callable[[_F], _F]:
    """A ``--option FILE`` taking a path to a file (not a folder)."""
    return click.option(
        *decls,
        multiple=multiple,
        required=required,
        type=click.Path(path_type=Path, dir_okay=False),
        help=help,
    )


def _settings(config: Path | None) -> Settings:
    with exit_on_error():
        return load_settings(config)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gateway")
def main() -> None:
    """The inter-agency edXML document-exchange gateway."""


@main.command()
@click.argument("infile", type=click.Path(path_type=Path, dir_okay=False))
@_file_option(
    "--key", "key_path", help="PEM private key (RSA 2048/3072 or ECDSA P-256).", required=True
)
@_file_option(
    "--cert", "cert_path", help="PEM certificate, leaf first, chain after it.", required=True
)
@_file_option("--chain", "chain_paths", help="Extra PEM intermediates to embed.", multiple=True)
@_file_option("-o", "--output", help="Where to write the signed package.", required=True)
@click.option(
    "--no-stamp", is_flag=True, help="Do not record the signing time in the sender's TraceHeader."
)
@_file_option("--config", help="Settings file (limits).")
def sign(
    infile: Path,
    key_path: Path,
    cert_path: Path,
    chain_paths: tuple[Path, ...],
    output: Path,
    no_stamp: bool,
    config: Path | None,
) -> None:
    """Sign INFILE as its sender: enveloped XMLDSig over the whole package."""
    from gateway.trust.signing import SigningKey, sign_package

    settings = _settings(config)
    limits = settings.limits.xml_limits()
    with exit_on_error(refused=EXIT_INVALID):  # a package the signer refuses exits 1
        key = SigningKey.load(key_path, cert_path, chain_paths)
        data = read_limited(infile, limits)
        signed = sign_package(data, key, stamp_trace=not no_stamp, limits=limits)
    try:
        output.write_bytes(signed)
    except OSError as exc:
        fail(UsageError(f"cannot write {output}: {exc.strerror}"))
    click.echo(f"signed {infile} -> {output} ({key.algorithm.name}, {len(signed)} bytes)")


@main.command()
@click.argument("infile", type=click.Path(path_type=Path, dir_okay=False))
@_file_option("--trust", "anchors", help="Trust anchor(s), PEM. Repeatable.", multiple=True)
@_file_option("--crl", "crls", help="CRL file(s), PEM. Repeatable.", multiple=True)
@_file_option(
    "--intermediate",
    "intermediates",
    help="Extra intermediate CA certificates, PEM.",
    multiple=True,
)
@click.option("--allow-weak", is_flag=True, help="Admit SHA-1 signatures (legacy archives only).")
@click.option("--require-crl", is_flag=True, help="Fail when a certificate's issuer has no CRL.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report.")
@_file_option("--config", help="Settings file ([trust], [verify], [limits]).")
def verify(
    infile: Path,
    anchors: tuple[Path, ...],
    crls: tuple[Path, ...],
    intermediates: tuple[Path, ...],
    allow_weak: bool,
    require_crl: bool,
    as_json: bool,
    config: Path | None,
) -> None:
    """Verify INFILE's signature, chain, revocation and signer agency (exit 0/1/2)."""
    from gateway.trust.store import TrustStore
    from gateway.trust.verification import Verifier, VerifyPolicy

    settings = _settings(config)
    limits = settings.limits.xml_limits()
    anchor_files = anchors or settings.trust.anchors
    with exit_on_error():
        trust = (
            TrustStore.from_pem_files(
                list(anchor_files),
                crls=list(crls or settings.trust.crls),
                intermediates=list(intermediates or settings.trust.intermediates),
            )
            if anchor_files
            else None
        )
    policy = VerifyPolicy(
        allow_weak_algorithms=allow_weak or settings.verify.allow_weak_algorithms,
        require_revocation_check=require_crl or settings.verify.require_revocation_check,
        limits=limits,
        upload_budget=settings.limits.upload_budget,
    )
    verifier = Verifier(trust, policy)
    report = verifier.verify(_read_input(infile, limits, as_json))
    if as_json:
        body = {"file": str(infile), **report.to_dict()}
        click.echo(json.dumps(body, ensure_ascii=False, indent=2))
    else:
        click.echo(report.render_text(str(infile)))
    sys.exit(EXIT_OK if report.valid else EXIT_INVALID)


def _read_input(infile: Path, limits: XMLLimits, as_json: bool) -> bytes:
    """Package bytes; oversize file is an invalid package (1), unreadable one usage (2)."""
    try:
        return read_limited(infile, limits)
    except XMLTooLarge as exc:
        _report_refused_early(infile, exc, as_json)
    except UsageError as exc:
        fail(exc)


def _report_refused_early(infile: Path, exc: GatewayError, as_json: bool) -> NoReturn:
    if as_json:
        body: dict[str, Any] = {
            "file": str(infile),
            "valid": False,
            "checks": [{"name": "xml", "ok": False, "detail": f"{exc.code}: {exc.message}"}],
            "errors": [{"code": exc.code, "message": exc.message}],
        }
        click.echo(json.dumps(body, ensure_ascii=False, indent=2))
    else:
        click.echo(f"{infile}: INVALID\n  error {exc.code}: {exc.message}")
    sys.exit(EXIT_INVALID)


@main.command()
@click.argument("infile", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
@_file_option("--config", help="Settings file ([limits]).")
def validate(infile: Path, as_json: bool, config: Path | None) -> None:
    """Check INFILE against the edXML schema only (exit 0/1/2); signatures are not checked."""
    from gateway.envelope import schema
    from gateway.envelope.xmlsafe import parse_bytes

    limits = _settings(config).limits.xml_limits()
    data = _read_input(infile, limits, as_json)
    try:
        root = parse_bytes(data, limits)
        kind = schema.validate(root)
    except GatewayError as exc:
        if as_json:
            body = {"file": str(infile), "valid": False, "errors": [exc.to_dict()]}
            click.echo(json.dumps(body, ensure_ascii=False, indent=2))
        else:
            click.echo(f"{infile}: INVALID\n  error {exc.code}: {exc.message}")
            for key, value in exc.detail.items():
                if key != "errors":
                    click.echo(f"  {key}: {value}")
        sys.exit(EXIT_INVALID)
    if as_json:
        click.echo(
            json.dumps({"file": str(infile), "valid": True, "kind": kind.value, "errors": []})
        )
    else:
        click.echo(f"{infile}: VALID ({kind.value} package)")
    sys.exit(EXIT_OK)


@main.command()
@_file_option("--config", help="The node's settings file.", required=True)
def serve(config: Path) -> None:
    """Run a node: HTTPS API with client certificates, storage, background jobs."""
    from gateway.api.supervisor import run_node
    from gateway.logs import configure

    settings = _settings(config)
    configure(settings.logging.level)
    with exit_on_error():
        run_node(settings, config)


@main.command()
@click.option(
    "--keep",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep the network's files in this folder and its nodes running until Ctrl-C.",
)
def demo(keep: Path | None) -> None:
    """Run a four-tier network of four node processes: documents up and down, statuses back,
    a district outage and its backlog."""
    from gateway.dev.demo import run_demo

    with exit_on_error():
        status = run_demo(keep)
    sys.exit(status)


@main.group()
def bench() -> None:
    """Benchmarks that print figures."""


@bench.command("envelopes")
@click.option("--seconds", default=2.0, show_default=True, help="Time per measurement.")
def bench_envelopes(seconds: float) -> None:
    """Sign/verify operations per second vs bare signxml, 5 KB and 1 MB envelopes."""
    from gateway.bench.envelopes import run_envelope_bench

    run_envelope_bench(seconds)


@bench.command("node")
@click.option("--documents", default=3000, show_default=True, help="Documents pushed (timed).")
@click.option(
    "--clients", default=16, show_default=True, help="Concurrent keep-alive HTTPS clients."
)
@click.option(
    "--client-processes", default=1, show_default=True, help="Processes the clients run in."
)
@click.option(
    "--floor-documents",
    default=1000,
    show_default=True,
    help="Documents ingested in-process for the floor.",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="The node's [server] workers (processes).",
)
@click.option(
    "--keep",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep PKI, configs, databases and logs here.",
)
def bench_node(
    documents: int,
    clients: int,
    client_processes: int,
    floor_documents: int,
    workers: int,
    keep: Path | None,
) -> None:
    """A real node over HTTPS (docs/s, p50/p99, CPU/doc) against the in-process floor."""
    from gateway.bench.node import run_node_bench

    run_node_bench(
        documents,
        clients,
        client_processes=client_processes,
        floor_documents=floor_documents,
        workers=workers,
        keep=keep,
    )


@bench.command("hub")
@click.option(
    "--documents", default=2000, show_default=True, help="Documents pushed per API (timed)."
)
@click.option(
    "--clients", default=16, show_default=True, help="Concurrent keep-alive HTTPS clients."
)
@click.option(
    "--rounds",
    default=4,
    show_default=True,
    type=click.IntRange(1, 100),
    help="Runs of each API, alternating (own hub hub own ...).",
)
@click.option(
    "--client",
    "client",
    default="bare",
    show_default=True,
    type=click.Choice(["bare", "httpx"]),
    help="The HTTP client of both APIs: bare HTTP/1.1 on asyncio, or httpx.AsyncClient.",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="The node's [server] workers (processes).",
)
@click.option(
    "--keep",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep PKI, config, database and log here.",
)
def bench_hub(
    documents: int, clients: int, rounds: int, client: str, workers: int, keep: Path | None
) -> None:
    """sendEdoc through the hub API against the own API, one node (docs/s, p50/p99, CPU/doc)."""
    from gateway.bench.hub import run_hub_bench

    run_hub_bench(
        documents,
        clients,
        rounds=rounds,
        client="httpx" if client == "httpx" else "bare",
        workers=workers,
        keep=keep,
    )


@bench.command("hostile")
@click.option(
    "--victim-documents",
    default=200,
    show_default=True,
    help="Documents the victim agency uploads in each phase (alone, attacked).",
)
@click.option(
    "--attackers", default=8, show_default=True, help="The attacker agency's connections."
)
@click.option(
    "--keep",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep PKI, configuration, database and log here.",
)
def bench_hostile(victim_documents: int, attackers: int, keep: Path | None) -> None:
    """Refusal cost of each hostile class vs parsing; a victim's latency under attack."""
    from gateway.bench.hostile import run_hostile_bench

    run_hostile_bench(victim_documents, attackers, keep=keep)


@bench.command("network")
@click.option(
    "--documents", default=2000, show_default=True, help="Documents commune -> G12 (timed)."
)
@click.option(
    "--backlog",
    default=20000,
    show_default=True,
    help="Documents queued while the district is down, then drained (timed).",
)
@click.option(
    "--clients", default=8, show_default=True, help="Concurrent keep-alive HTTPS clients."
)
@click.option("--batch-size", type=int, help="[delivery] batch_size on every node.")
@click.option("--tick-interval", type=float, help="[delivery] tick_interval on every node.")
@click.option(
    "--keep",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep PKI, configs, databases and logs here.",
)
def bench_network(
    documents: int,
    backlog: int,
    clients: int,
    batch_size: int | None,
    tick_interval: float | None,
    keep: Path | None,
) -> None:
    """The four-tier network: end-to-end docs/s, latency, CPU per hop; backlog drain rate."""
    from gateway.bench.network import run_network_bench

    run_network_bench(
        documents,
        backlog,
        clients,
        keep=keep,
        batch_size=batch_size,
        tick_interval=tick_interval,
    )


def _register_groups() -> None:
    from gateway.cli.audit import audit
    from gateway.cli.db import db
    from gateway.cli.deliveries import deliveries
    from gateway.cli.pki import pki
    from gateway.cli.systems import systems

    for group in (pki, db, audit, deliveries, systems):
        main.add_command(group)


_register_groups()
