"""The node's database: engines tuned for durability, Alembic migrations, health checks.

Usage::

    engine = make_engine(settings)
    require_current(engine)                      # refuse to serve an un-migrated database
    with engine.begin() as conn:                 # one transaction per ingest
        conn.execute(documents.insert().values(...))
    with read_only(engine).connect() as conn:    # a pure reader: does not queue behind writers
        conn.execute(select(documents.c.id)).all()

SQLite (the embedded default, one file per node): WAL journal, ``synchronous=FULL``, foreign
keys on, a 10 s busy timeout, and every transaction opened with ``BEGIN IMMEDIATE`` so that
concurrent writers queue for the write lock instead of failing with "database is locked" when a
read lock cannot be upgraded. PostgreSQL (``postgresql+psycopg://``): a pre-pinged pool.

Errors: a database that cannot be reached, drops the connection or stays locked past the busy
timeout raises :class:`~gateway.errors.DatabaseUnavailable` naming the URL without its password;
a malformed or unsupported URL raises :class:`~gateway.errors.ConfigError`; a schema that is not
at the code's migration raises :class:`~gateway.errors.DatabaseNotMigrated`.

.. warning:: Schema changes go through Alembic only (``gateway db upgrade``); never call
   ``metadata.create_all`` on a node's database: it would not be stamped and the node would
   refuse to start.
"""

from __future__ import annotations

import fcntl
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Connection, Engine, ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from gateway.errors import ConfigError, DatabaseNotMigrated, DatabaseUnavailable
from gateway.settings import Settings

__all__ = [
    "READ_ONLY_OPTION",
    "SQLITE_BUSY_TIMEOUT_MS",
    "alembic_config",
    "current_revision",
    "downgrade",
    "engine_from_url",
    "head_revision",
    "make_engine",
    "ping",
    "read_only",
    "require_current",
    "safe_url",
    "sqlite_writer_lock",
    "upgrade",
]

#: execution option marking a connection whose transactions only read (see :func:`read_only`)
READ_ONLY_OPTION: Final = "gateway_read_only"

#: how long a SQLite writer waits for the write lock before giving up, in milliseconds
SQLITE_BUSY_TIMEOUT_MS: Final = 10_000

#: PostgreSQL advisory lock held while migrating, so that processes started together on
#: several machines run the migrations once, one after the other ("edxml" in ASCII)
_MIGRATION_LOCK: Final = 0x6564786D6C

#: Alembic keeps the running migration in module globals (``alembic.context``, ``alembic.op``):
#: two threads of one process must not migrate at the same time, whatever the database
_ALEMBIC_IN_USE = threading.Lock()

_MIGRATIONS = Path(__file__).parent / "migrations"
_UPGRADE_COMMAND = "gateway db upgrade --config {config}"


# --- engines ---------------------------------------------------------------------------------


def make_engine(settings: Settings) -> Engine:
    """The engine for ``[database] url``; a relative SQLite file lives in ``settings.base_dir``.

    Usage::

        engine = make_engine(load_settings(Path("node.toml")))

    The engine connects lazily: an unreachable database is reported by the first use
    (:func:`ping`, :func:`require_current`, a transaction) as ``DatabaseUnavailable``.
    """
    return engine_from_url(settings.database.url, settings.base_dir)


def engine_from_url(url: str, base_dir: Path) -> Engine:
    """An engine for ``url`` (``sqlite:///...`` or ``postgresql+psycopg://...``).

    Usage::

        engine = engine_from_url("sqlite:///gateway.db", Path("/srv/node"))  # /srv/node/gateway.db

    ``postgresql://`` means ``postgresql+psycopg://`` (psycopg 3 is the only PostgreSQL driver
    shipped). Raises ``ConfigError`` for a malformed URL or another database.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        # the message would echo the URL, password included
        raise ConfigError(
            "[database] url is not a database URL (sqlite:///FILE or postgresql+psycopg://...)",
            detail={"key": "database.url"},
        ) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        engine = _sqlite_engine(_sqlite_in(parsed, base_dir))
    elif backend == "postgresql" and parsed.drivername in ("postgresql", "postgresql+psycopg"):
        engine = _postgresql_engine(parsed.set(drivername="postgresql+psycopg"))
    else:
        raise ConfigError(
            f"[database] url: {parsed.drivername} is not supported "
            "(use sqlite:///FILE or postgresql+psycopg://...)",
            detail={"key": "database.url"},
        )
    event.listen(engine, "handle_error", _unavailable)
    return engine


def safe_url(engine: Engine) -> str:
    """The engine's URL with the password masked, for messages and logs.

    Usage::

        log.info("db.upgraded", url=safe_url(engine))
    """
    return engine.url.render_as_string(hide_password=True)


def read_only(engine: Engine) -> Engine:
    """The same engine (same pool) for transactions that only read.

    Usage::

        with read_only(engine).connect() as conn:
            rows = conn.execute(select(documents.c.id)).all()

    On SQLite its transactions begin ``DEFERRED``: in WAL mode readers then never wait for a
    writer. On PostgreSQL nothing changes.

    .. warning:: Never write through it: on SQLite a deferred transaction that tries to write
       after another writer committed fails at once with ``SQLITE_BUSY`` instead of queueing.
    """
    return engine.execution_options(**{READ_ONLY_OPTION: True})


def _sqlite_in(url: URL, base_dir: Path) -> URL:
    """``url`` with a relative database file made relative to ``base_dir``."""
    database = url.database
    if not database or database == ":memory:" or url.query.get("uri"):
        return url
    path = Path(database)
    return url if path.is_absolute() else url.set(database=str(base_dir / path))


def _sqlite_engine(url: URL) -> Engine:
    engine = create_engine(url)
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


@contextmanager
def sqlite_writer_lock(engine: Engine) -> Iterator[None]:
    """Hold ``<database>.writer-lock`` (``flock``) while writing a SQLite file; a no-op else.

    Usage::

        with sqlite_writer_lock(engine), engine.begin() as conn:
            ...

    Writers of several processes on one SQLite file (a node's workers, a CLI command beside
    a running node) then take turns within a fraction of a millisecond, where SQLite's own busy
    handler sleeps 1, 2, 5 ... 100 ms between tries. Waiting longer than the busy timeout
    raises ``DatabaseUnavailable``, as SQLite would. One lock per process and file: the
    callers in one process serialise themselves first (``Node.writing``).
    """
    path = _lock_path(engine)
    if path is None:
        yield
        return
    fd = _lock_fd(path)
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    pause = 0.0002
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise DatabaseUnavailable(
                    f"the database at {safe_url(engine)} stayed locked by another process for "
                    f"{SQLITE_BUSY_TIMEOUT_MS} ms",
                    detail={"url": safe_url(engine)},
                ) from None
            time.sleep(pause)
            pause = min(pause * 2, 0.002)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


#: (process id, lock file) -> descriptor: a forked child opens its own (a descriptor shared
#: with the parent would share its lock too)
_LOCK_FDS: dict[tuple[int, str], int] = {}
_LOCK_FDS_GUARD = threading.Lock()


def _lock_path(engine: Engine) -> str | None:
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or engine.url.query.get("uri"):
        return None
    return f"{database}.writer-lock"


def _lock_fd(path: str) -> int:
    key = (os.getpid(), path)
    with _LOCK_FDS_GUARD:
        fd = _LOCK_FDS.get(key)
        if fd is None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            _LOCK_FDS[key] = fd
    return fd


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # The sqlite3 driver's own transaction handling (legacy mode) would BEGIN DEFERRED only
    # before DML and commit around DDL; turn it off and let _sqlite_on_begin emit BEGIN.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: switching the journal to WAL needs a lock another process may hold
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        # FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on power loss, and a
        # 202 (with a signed receipt) promises the document is stored
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    # IMMEDIATE takes the write lock at BEGIN, so a second writer waits (busy_timeout) at its
    # BEGIN. A DEFERRED writer would read first and then fail with SQLITE_BUSY when upgrading a
    # stale read snapshot to a write lock, which no timeout can cure.
    read_only_ = conn.get_execution_options().get(READ_ONLY_OPTION, False)
    conn.exec_driver_sql("BEGIN DEFERRED" if read_only_ else "BEGIN IMMEDIATE")


def _postgresql_engine(url: URL) -> Engine:
    try:
        return create_engine(
            url,
            # a connection the server dropped (restart, failover, idle timeout) is replaced
            # before use instead of failing a request
            pool_pre_ping=True,
            # per process; several gateway processes share the server, so keep it modest
            pool_size=5,
            max_overflow=10,
            pool_timeout=30,
            pool_recycle=1800,
            connect_args={"connect_timeout": 10, "application_name": "edxml-gateway"},
        )
    except NoSuchModuleError:  # pragma: no cover - psycopg is a dependency
        raise ConfigError(
            "[database] url: the psycopg driver is not installed", detail={"key": "database.url"}
        ) from None


def _unavailable(context: ExceptionContext) -> None:
    """Raise ``DatabaseUnavailable`` for a failed or lost connection or a SQLite lock held too long.

    Every other error (a constraint, bad SQL) is left as it is.
    """
    if context.is_pre_ping:
        return  # the pool replaces the dead connection itself
    original = context.original_exception
    url = context.engine.url if context.engine is not None else None
    where = url.render_as_string(hide_password=True) if url is not None else "the database"
    reason = str(original).strip().splitlines()[0] if str(original).strip() else "no reason given"
    if url is not None and url.password:
        reason = reason.replace(str(url.password), "***")
    if context.connection is None or context.is_disconnect:
        raise DatabaseUnavailable(
            f"cannot reach the database at {where}: {reason}", detail={"url": where}
        )
    # SQLITE_BUSY: the busy timeout ran out waiting for the write lock (a long writer, or a
    # writer of another process). Not SQLITE_BUSY_SNAPSHOT: that is a write attempted through
    # read_only(), a bug to see as it is.
    if (
        isinstance(original, sqlite3.OperationalError)
        and original.sqlite_errorname == "SQLITE_BUSY"
    ):
        raise DatabaseUnavailable(
            f"the database at {where} stayed locked by another writer for "
            f"{SQLITE_BUSY_TIMEOUT_MS} ms: {reason}",
            detail={"url": where},
        )


def ping(engine: Engine) -> None:
    """Check that the database answers (``SELECT 1``); raise ``DatabaseUnavailable`` if not.

    Usage::

        ping(engine)
    """
    with read_only(engine).connect() as conn:
        conn.exec_driver_sql("SELECT 1").scalar_one()


# --- migrations ------------------------------------------------------------------------------


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for the package's migrations, without any ``alembic.ini``.

    Usage (a developer writing the next migration against a scratch database)::

        from alembic import command
        engine = engine_from_url("sqlite:///scratch.db", Path.cwd())
        upgrade(engine)
        with engine.begin() as conn:
            command.revision(alembic_config(conn), "add x", autogenerate=True, rev_id="0008")

    ``connection`` (in ``config.attributes["connection"]``) is what ``env.py`` migrates.
    """
    config = Config()
    # a filesystem path next to this module: works from a checkout and from an installed
    # package alike; %% because Config values go through configparser interpolation
    config.set_main_option("script_location", str(_MIGRATIONS).replace("%", "%%"))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The migration this code expects the database to be at.

    Usage::

        head_revision()   # "0008"
    """
    head = _scripts().get_current_head()
    if head is None:  # pragma: no cover - the package ships 0001_initial
        raise DatabaseNotMigrated("the gateway package ships no migrations")
    return head


def current_revision(engine: Engine) -> str | None:
    """The migration the database is at, or None for a database never migrated.

    Usage::

        current_revision(engine) == head_revision()
    """
    with read_only(engine).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def require_current(engine: Engine, *, config: Path | str | None = None) -> None:
    """Raise ``DatabaseNotMigrated`` unless the database is at :func:`head_revision`.

    Usage::

        require_current(engine, config=Path("node.toml"))

    The message names the command that fixes it, ``gateway db upgrade --config <file>``, with
    ``config`` as the file when given.
    """
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    fix = _UPGRADE_COMMAND.format(config=config if config is not None else "<file>")
    where = safe_url(engine)
    detail: dict[str, Any] = {"url": where, "current": current, "head": head}
    if current is None:
        message = f"the database at {where} has no schema (this gateway needs {head}): run {fix}"
    elif _known(current):
        message = f"the database at {where} is at {current}, this gateway needs {head}: run {fix}"
    else:
        message = (
            f"the database at {where} is at {current}, a migration this gateway does not know "
            f"(it needs {head}; was it upgraded by a newer gateway?): run the newer gateway"
        )
        raise DatabaseNotMigrated(message, detail=detail)
    raise DatabaseNotMigrated(message, detail={**detail, "command": fix})


def _known(revision: str) -> bool:
    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:
        return False


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply the migrations up to ``revision`` (default: the head), in one transaction.

    Usage::

        upgrade(engine)

    Safe to run from several processes at once: PostgreSQL serialises them on an advisory
    lock, SQLite on its write lock; the later ones find nothing to do.
    """
    with _migrating(engine) as conn:
        command.upgrade(alembic_config(conn), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Revert the migrations down to ``revision`` (``"base"``: an empty database).

    Usage::

        downgrade(engine, "base")

    .. warning:: Downgrading drops tables and columns with their data (``"base"`` drops every
       document, delivery and audit entry). Back up the database first.
    """
    with _migrating(engine) as conn:
        command.downgrade(alembic_config(conn), revision)


@contextmanager
def _migrating(engine: Engine) -> Iterator[Connection]:
    """One connection and one transaction for a whole migration run.

    On SQLite foreign keys are switched off while migrating, as SQLite prescribes for schema
    changes: Alembic's batch mode rebuilds a table by copy, drop and rename, and dropping a
    referenced table with enforcement on would fail (or cascade). ``foreign_key_check`` must
    then find nothing before the commit, and the connection is discarded afterwards rather
    than returned to the pool with enforcement off.
    """
    with _ALEMBIC_IN_USE, engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        try:
            if sqlite:
                # outside any transaction (the pragma is a no-op inside one), so on the driver
                conn.connection.driver_connection.execute("PRAGMA foreign_keys = OFF")  # type: ignore[union-attr]
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    lock = text("SELECT pg_advisory_xact_lock(:key)")
                    conn.execute(lock, {"key": _MIGRATION_LOCK})
                yield conn
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise DatabaseNotMigrated(
                            f"the migration left {len(broken)} rows with dangling foreign keys "
                            f"(first in table {broken[0][0]}); nothing was changed",
                            detail={"url": safe_url(engine)},
                        )
        finally:
            if sqlite:
                conn.invalidate()
