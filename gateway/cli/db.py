"""``gateway db``: the node's database schema from the command line.

Usage::

    gateway db upgrade --config node.toml    # apply every pending migration (Alembic)
    gateway db current --config node.toml    # which migration the database is at

Exit status: 0 on success (``current`` also exits 0 when the database is behind: it reports, it
does not judge), 2 on any error (``error: CODE: message`` on stderr). The database URL is shown
without its password.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from sqlalchemy.engine import Engine

from gateway.cli.exits import exit_on_error
from gateway.settings import load_settings
from gateway.storage.db import current_revision, head_revision, make_engine, safe_url, upgrade

__all__ = ["db"]

_ConfigOption = click.option(
    "--config",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The node's settings file ([database] url).",
)


@contextmanager
def _engine(config: Path) -> Iterator[Engine]:
    """The node's engine, disposed afterwards; any gateway error becomes exit status 2."""
    with exit_on_error():
        engine = make_engine(load_settings(config))
        try:
            yield engine
        finally:
            engine.dispose()


@click.group(name="db")
def db() -> None:
    """The node's database: schema migrations (Alembic)."""


@db.command("upgrade")
@_ConfigOption
def upgrade_command(config: Path) -> None:
    """Bring the database schema to this gateway's migration (creates it when empty)."""
    with _engine(config) as engine:
        before = current_revision(engine)
        upgrade(engine)
        after = current_revision(engine)
        where = safe_url(engine)
    if before == after:
        click.echo(f"{where}: already at {after} (head)")
    else:
        click.echo(f"{where}: upgraded {before or 'empty'} -> {after} (head)")


@db.command("current")
@_ConfigOption
def current_command(config: Path) -> None:
    """Print the migration the database is at, and whether it is this gateway's head."""
    with _engine(config) as engine:
        current = current_revision(engine)
        head = head_revision()
        where = safe_url(engine)
    if current == head:
        click.echo(f"{current} (head) {where}")
    else:
        click.echo(
            f"{current or 'none'} (this gateway needs {head}: "
            f"gateway db upgrade --config {config}) {where}"
        )
