"""``gateway audit``: check the node's audit log from the command line.

Usage::

    gateway audit verify --config node.toml
    gateway audit verify --config node.toml --json

Exit status: 0 the chain and every checkpoint verify, 1 the log is broken (the report names
the first broken entry), 2 usage error: unreadable settings, database unreachable or not
migrated (``error: CODE: message`` on stderr). Checkpoint certificates are checked against the
``[trust] anchors`` of the settings file when it names any; the report says whether they were.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import sqlalchemy
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from gateway.cli.exits import EXIT_INVALID, EXIT_OK, exit_on_error
from gateway.errors import DatabaseNotMigrated, DatabaseUnavailable, UsageError
from gateway.evidence.audit import AuditReport, verify
from gateway.settings import Settings, load_settings
from gateway.trust.store import TrustStore

__all__ = ["audit"]


def _engine(settings: Settings) -> Engine:
    """The node's engine (``gateway.storage.db``), for reading only; refuses a SQLite file that is
    absent.

    A relative SQLite path is relative to the settings file's folder.
    """
    from gateway.storage.db import make_engine, read_only  # lazily: the CLI starts fast

    try:
        url = make_url(settings.database.url)
    except ArgumentError:
        raise UsageError("[database] url is not a database URL") from None
    if url.get_backend_name() == "sqlite":
        if url.database in (None, "", ":memory:"):
            raise UsageError("[database] url names an in-memory SQLite database: nothing to verify")
        path = Path(url.database)
        path = path if path.is_absolute() else settings.base_dir / path
        # sqlite3 would silently create an empty file and report an empty, valid log.
        if not path.is_file():
            raise DatabaseUnavailable(f"the SQLite database {path} does not exist")
    # read-only: on SQLite a verification then never holds the write lock against the node
    return read_only(make_engine(settings))


def _trust(settings: Settings) -> TrustStore | None:
    if not settings.trust.anchors:
        return None
    return TrustStore.from_pem_files(
        settings.trust.anchors, intermediates=settings.trust.intermediates
    )


def _run(settings: Settings, trust: TrustStore | None) -> AuditReport:
    engine = _engine(settings)
    try:
        with engine.connect() as conn:
            inspector = sqlalchemy.inspect(conn)
            missing = [t for t in ("audit_log", "audit_checkpoints") if not inspector.has_table(t)]
            if missing:
                raise DatabaseNotMigrated(
                    f"the database has no {' and no '.join(missing)} table "
                    "(run `gateway db upgrade`)",
                    detail={"missing": missing},
                )
            return verify(conn, trust, node=settings.node.name)
    except SQLAlchemyError as exc:
        # The driver's message names the host and database, never the password.
        raise DatabaseUnavailable(
            f"cannot read the audit log: {type(exc).__name__}: {exc.args[0] if exc.args else exc}"
        ) from None
    finally:
        engine.dispose()


def _print(report: AuditReport, trust: TrustStore | None) -> None:
    head = (
        f"head seq {report.head_seq}, hash {report.head_hash}"
        if report.head_seq is not None
        else "empty"
    )
    click.echo(f"audit log: {report.entries} entries, {report.checkpoints} checkpoints; {head}")
    if trust is None:
        click.echo(
            "checkpoint certificates: NOT checked against trust anchors (no [trust] anchors "
            "configured): a forged checkpoint signed with a made-up certificate would pass"
        )
    else:
        click.echo(f"checkpoint certificates: checked against {len(trust.anchors)} trust anchor(s)")
    if report.ok:
        click.echo("OK: every entry and every checkpoint verifies")
        return
    click.echo(f"BROKEN: first broken entry: seq {report.first_broken_seq}")
    for line in report.problems:
        click.echo(f"  {line}")


@click.group(name="audit")
def audit() -> None:
    """The node's hash-chained audit log."""


@audit.command(name="verify")
@click.option(
    "--config",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The node's settings file ([database] url, [trust] anchors, [node] name).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_command(config: Path, as_json: bool) -> None:
    """Recompute the audit chain and check every signed checkpoint.

    Exit status 0 when it verifies, 1 when it is broken, 2 on a usage error.
    """
    # any gateway error before the report exists is a usage error (exit 2)
    with exit_on_error():
        settings = load_settings(config)
        trust = _trust(settings)
        report = _run(settings, trust)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        _print(report, trust)
    raise SystemExit(EXIT_OK if report.ok else EXIT_INVALID)
