"""Alembic environment: migrates the connection that :mod:`gateway.storage.db` passes in.

:func:`gateway.storage.db.upgrade` puts an open connection, already inside its transaction, in
``config.attributes["connection"]``. Without one (an ``alembic_config()`` used by hand) the
URL in the ``sqlalchemy.url`` main option is used, or SQL is printed in offline mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection

from gateway.errors import ConfigError
from gateway.storage.tables import UTCDateTime, metadata

target_metadata = metadata


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # a migration must not import the application's types: they may change after it shipped
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        render_item=_render_item,
        **kwargs,
    )


def _migrate(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    _configure(
        connection=connection,
        # SQLite alters most things only by copying the table: Alembic's batch mode does that
        render_as_batch=sqlite,
        # gateway.storage.db emits BEGIN itself on SQLite, so DDL there is transactional too
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    from gateway.storage.db import engine_from_url

    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise ConfigError("no connection to migrate: use gateway.storage.db.upgrade(engine)")
    engine = engine_from_url(url, Path.cwd())
    try:
        with engine.connect() as conn:
            _migrate(conn)
    finally:
        engine.dispose()


def run_offline() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise ConfigError("offline migration needs the sqlalchemy.url main option")
    _configure(url=url, literal_binds=True, render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
