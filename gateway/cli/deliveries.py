"""``gateway deliveries``: the outbox and its dead letters, from the command line.

Usage::

    gateway deliveries list --config node.toml --state failed
    gateway deliveries requeue --config node.toml 17 18
    gateway deliveries requeue --config node.toml --all-failed --peer h49-province

Exit status: 0 done, 2 usage error (``error: CODE: message`` on stderr). A requeue is recorded
in the audit log with the operator's login name; the running node picks the rows up at its
next dispatcher tick.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from gateway.cli.exits import exit_on_error, fail
from gateway.errors import UsageError
from gateway.node.container import Node

__all__ = ["deliveries"]

_CONFIG = click.option(
    "--config",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The node's settings file.",
)


@contextmanager
def _node(config: Path) -> Iterator[Node]:
    from gateway.settings import load_settings
    from gateway.storage import db

    """The node of ``config``, its engine disposed afterwards; any gateway error exits 2."""
    with exit_on_error():
        settings = load_settings(config)
        engine = db.make_engine(settings)
        try:
            db.require_current(engine, config=config)
            yield Node.from_settings(settings, engine)
        finally:
            engine.dispose()


@click.group(name="deliveries")
def deliveries() -> None:
    """The outbox: waiting, failed (dead-lettered) and delivered rows; requeue."""


@deliveries.command(name="list")
@_CONFIG
@click.option(
    "--state",
    help="failed (dead letters), waiting (the outbox), in_transit, delivered, ... (all if unset)",
)
@click.option("--peer", help="Only rows whose next hop is this node.")
@click.option("--limit", default=100, show_default=True, help="Most rows shown, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(
    config: Path, state: str | None, peer: str | None, limit: int, as_json: bool
) -> None:
    """Show deliveries, newest first."""
    from gateway.node.admin import list_deliveries

    with _node(config) as node:
        rows = list_deliveries(node, state=state, peer=peer, limit=limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        click.echo("no deliveries")
        return
    for r in rows:
        click.echo(
            f"{r['id']:>8}  {r['state']:<12} {r['recipient']}  via {r['next_hop']:<16} "
            f"attempts {r['attempts']:<3} {r['document_id'] or r['document']}"
            + (f"  last error: {r['last_error']}" if r["last_error"] else "")
        )


@deliveries.command(name="requeue")
@_CONFIG
@click.argument("ids", nargs=-1, type=int)
@click.option("--all-failed", is_flag=True, help="Requeue every failed delivery.")
@click.option("--peer", help="With --all-failed: only those whose next hop is this node.")
def requeue_command(config: Path, ids: tuple[int, ...], all_failed: bool, peer: str | None) -> None:
    """Send failed deliveries again (routed afresh, attempts and age budget reset)."""
    from gateway.node.admin import list_deliveries, requeue

    if bool(ids) == all_failed:
        fail(UsageError("name delivery ids or pass --all-failed"))
    with _node(config) as node:
        chosen = list(ids)
        if all_failed:
            chosen = [r["id"] for r in list_deliveries(node, state="failed", peer=peer, limit=1000)]
        if not chosen:
            click.echo("nothing to requeue")
            return
        done = requeue(node, chosen, actor=f"admin:{getpass.getuser()}")
    click.echo(f"requeued {len(done)} deliveries: {', '.join(map(str, done))}")
