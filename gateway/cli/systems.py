"""``gateway systems``: the DMS connected through the hub-compatible API, from the command line.

Usage::

    gateway systems add vxp.h49.01 --agency 000.00.00.H49 --config node.toml
    gateway systems list --config node.toml [--json]
    gateway systems rotate vxp.h49.01 [--grace 86400] --config node.toml
    gateway systems disable vxp.h49.01 --config node.toml
    gateway systems policy vxp.h49.01 attest --config node.toml

``add`` and ``rotate`` print the secret once: it is stored only encrypted and cannot be shown
again. Every change is audited with the operator's login name (``admin:<login>``). Exit status:
0 done, 2 error (``error: CODE: message`` on stderr).
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from gateway.cli.exits import exit_on_error
from gateway.node.container import Node
from gateway.settings import MAX_ROTATE_GRACE

__all__ = ["systems"]

_CONFIG = click.option(
    "--config",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The node's settings file.",
)
_NOT_AGAIN = "This secret will not be shown again: give it to the DMS operator now."


@contextmanager
def _node(config: Path) -> Iterator[Node]:
    """The node of ``config``, its engine disposed afterwards; any gateway error exits 2.

    Warnings and errors are logged on stderr as the node writes them (JSON); the info events
    are left out (the audit log records every change): stdout carries only the answer, the
    secret included, and stderr only what went wrong.
    """
    from gateway.logs import configure
    from gateway.settings import load_settings
    from gateway.storage import db

    with exit_on_error():
        settings = load_settings(config)
        configure("error" if settings.logging.level == "error" else "warning")
        engine = db.make_engine(settings)
        try:
            db.require_current(engine, config=config)
            yield Node.from_settings(settings, engine)
        finally:
            engine.dispose()


def _actor() -> str:
    return f"admin:{getpass.getuser()}"


@click.group(name="systems")
def systems() -> None:
    """Connected systems: the DMS that call the hub-compatible API with a systemid and secret."""


@systems.command(name="add")
@click.argument("systemid")
@click.option(
    "--agency",
    "agencies",
    multiple=True,
    help="An agency code (hosted by this node) it may send as and read for. Repeatable; at "
    "least one.",
)
@click.option(
    "--policy",
    default="require",
    show_default=True,
    help="Signature policy of its packages: require or attest.",
)
@_CONFIG
def add_command(systemid: str, agencies: tuple[str, ...], policy: str, config: Path) -> None:
    """Register a DMS as SYSTEMID and print its secret (once)."""
    from gateway.node.systems import add_system

    with _node(config) as node:
        system, secret = add_system(node, systemid, agencies, policy=policy, actor=_actor())
    click.echo(
        f"system {system.systemid} added: agencies {', '.join(system.agencies)}; "
        f"policy {system.policy}"
    )
    click.echo(f"secret: {secret}")
    click.echo(_NOT_AGAIN)


@systems.command(name="list")
@_CONFIG
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(config: Path, as_json: bool) -> None:
    """Show the connected systems (never their secrets)."""
    from gateway.node.systems import list_systems

    with _node(config) as node:
        found = list_systems(node)
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in found], indent=2, ensure_ascii=False))
        return
    if not found:
        click.echo("no systems")
        return
    for s in found:
        state = "disabled" if s.disabled else "enabled"
        click.echo(
            f"{s.systemid:<32} {state:<9} {s.policy:<8} {', '.join(s.agencies)}  "
            f"(added {s.created_at:%Y-%m-%d %H:%M}Z, changed {s.updated_at:%Y-%m-%d %H:%M}Z)"
        )


@systems.command(name="rotate")
@click.argument("systemid")
@click.option(
    "--grace",
    type=float,
    help="Seconds the current secret stays valid beside the new one, 0 to "
    f"{MAX_ROTATE_GRACE} (default: [hub] rotate_grace; 0: it stops at once).",
)
@_CONFIG
def rotate_command(systemid: str, grace: float | None, config: Path) -> None:
    """Give SYSTEMID a new secret and print it (once)."""
    from gateway.node.systems import rotate_secret

    with _node(config) as node:
        seconds = node.settings.hub.rotate_grace if grace is None else grace
        secret = rotate_secret(node, systemid, actor=_actor(), grace=grace)
    if seconds:
        click.echo(
            f"secret of {systemid} rotated: the previous one stays valid for {seconds:g} seconds"
        )
    else:
        click.echo(f"secret of {systemid} rotated: the previous one no longer works")
    click.echo(f"secret: {secret}")
    click.echo(_NOT_AGAIN)


@systems.command(name="disable")
@click.argument("systemid")
@_CONFIG
def disable_command(systemid: str, config: Path) -> None:
    """Refuse SYSTEMID from now on (AUTH_SYSTEM_DISABLED)."""
    from gateway.node.systems import disable_system

    with _node(config) as node:
        system = disable_system(node, systemid, actor=_actor())
    click.echo(f"system {system.systemid} disabled")


@systems.command(name="policy")
@click.argument("systemid")
@click.argument("policy")
@_CONFIG
def policy_command(systemid: str, policy: str, config: Path) -> None:
    """Set the signature policy of SYSTEMID: require or attest."""
    from gateway.node.systems import set_policy

    with _node(config) as node:
        system = set_policy(node, systemid, policy, actor=_actor())
    click.echo(f"system {system.systemid}: policy {system.policy}")
