"""Alembic migrations on real databases (SQLite, and PostgreSQL when configured).

Every migration applied in turn must give exactly the schema ``gateway.storage.tables`` describes,
be reversible, and a node must refuse a database that is not at the code's head, saying how to
fix it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

from gateway.cli.db import db
from gateway.errors import DatabaseNotMigrated
from gateway.storage.db import (
    alembic_config,
    current_revision,
    downgrade,
    engine_from_url,
    head_revision,
    require_current,
    upgrade,
)
from gateway.storage.tables import metadata


@pytest.fixture
def engine(db_url: str, tmp_path: Path) -> Iterator[Engine]:
    engine = engine_from_url(db_url, tmp_path)
    yield engine
    engine.dispose()


def schema_differences(engine: Engine) -> list[object]:
    """What Alembic autogenerate would change to reach ``gateway.storage.tables`` ([] when
    identical)."""
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), metadata))


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def test_upgrade_of_an_empty_database_gives_exactly_the_models_schema(engine: Engine) -> None:
    assert tables(engine) == set()
    upgrade(engine)
    assert tables(engine) == set(metadata.tables) | {"alembic_version"}
    assert schema_differences(engine) == []


def test_current_revision_is_none_before_and_head_after_upgrade(engine: Engine) -> None:
    assert current_revision(engine) is None
    upgrade(engine)
    assert current_revision(engine) == head_revision() == "0008"


def test_downgrade_to_base_then_upgrade_round_trips(engine: Engine) -> None:
    upgrade(engine)
    downgrade(engine, "base")
    assert tables(engine) <= {"alembic_version"}
    assert current_revision(engine) is None
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    assert schema_differences(engine) == []


def test_each_migration_applies_reverts_and_reapplies_in_turn(engine: Engine) -> None:
    script = ScriptDirectory.from_config(alembic_config())
    revisions = list(reversed(list(script.walk_revisions())))  # oldest first
    assert revisions[-1].revision == head_revision()
    for rev in revisions:
        upgrade(engine, rev.revision)
        assert current_revision(engine) == rev.revision
        downgrade(engine, str(rev.down_revision) if rev.down_revision else "base")
        upgrade(engine, rev.revision)
        assert current_revision(engine) == rev.revision
    assert schema_differences(engine) == []


def test_require_current_refuses_an_empty_database_naming_the_fix(engine: Engine) -> None:
    with pytest.raises(DatabaseNotMigrated) as caught:
        require_current(engine)
    assert "gateway db upgrade --config <file>" in caught.value.message
    with pytest.raises(DatabaseNotMigrated) as caught:
        require_current(engine, config=Path("/etc/gateway/node.toml"))
    assert "gateway db upgrade --config /etc/gateway/node.toml" in caught.value.message
    assert caught.value.detail["head"] == head_revision()
    upgrade(engine)
    require_current(engine)


def test_a_database_migrated_by_a_newer_gateway_is_refused(engine: Engine) -> None:
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_from_the_future'"))
    with pytest.raises(DatabaseNotMigrated) as caught:
        require_current(engine)
    assert "ffff_from_the_future" in caught.value.message
    assert "does not know" in caught.value.message
    assert "gateway db upgrade" not in caught.value.message  # upgrading cannot fix it


@pytest.mark.slow
def test_concurrent_upgrades_from_several_processes_migrate_once(db_url: str) -> None:
    """Processes started together all upgrade: one migrates, the others wait and find it done."""
    script = (
        "import sys; from pathlib import Path; "
        "from gateway.storage.db import engine_from_url, upgrade; "
        "upgrade(engine_from_url(sys.argv[1], Path.cwd()))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, db_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(3)
    ]
    outcomes = [(p.wait(timeout=120), p.communicate()[1].decode()) for p in procs]
    assert outcomes == [(0, "")] * 3
    engine = engine_from_url(db_url, Path.cwd())
    try:
        assert current_revision(engine) == head_revision()
        assert schema_differences(engine) == []
    finally:
        engine.dispose()


# --- gateway db ------------------------------------------------------------------------------


def write_config(folder: Path, url: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "node.toml"
    config.write_text(f'[database]\nurl = "{url}"\n', encoding="utf-8")
    return config


def test_cli_upgrade_then_current(db_url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "etc", db_url)
    runner = CliRunner()

    before = runner.invoke(db, ["current", "--config", str(config)])
    assert before.exit_code == 0, before.stderr
    assert before.stdout.startswith("none ")
    assert f"gateway db upgrade --config {config}" in before.stdout

    done = runner.invoke(db, ["upgrade", "--config", str(config)])
    assert done.exit_code == 0, done.stderr
    assert "upgraded empty -> 0008 (head)" in done.stdout

    again = runner.invoke(db, ["upgrade", "--config", str(config)])
    assert again.exit_code == 0, again.stderr
    assert "already at 0008 (head)" in again.stdout

    after = runner.invoke(db, ["current", "--config", str(config)])
    assert after.exit_code == 0, after.stderr
    assert after.stdout.startswith("0008 (head)")


def test_cli_relative_sqlite_file_is_created_next_to_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path / "etc", "sqlite:///node.db")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    done = CliRunner().invoke(db, ["upgrade", "--config", str(config)])
    assert done.exit_code == 0, done.stderr
    assert (tmp_path / "etc" / "node.db").is_file()
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("mysql://gateway:hunter2pass@db.example/gateway", "CONFIG_INVALID"),
        ("postgresql+psycopg://gateway:hunter2pass@127.0.0.1:1/gateway", "DATABASE_UNAVAILABLE"),
    ],
)
def test_cli_errors_exit_2_with_code_and_no_password(tmp_path: Path, url: str, code: str) -> None:
    config = write_config(tmp_path, url)
    for command in ("upgrade", "current"):
        done = CliRunner().invoke(db, [command, "--config", str(config)])
        assert done.exit_code == 2
        assert done.stderr.startswith(f"error: {code}: ")
        assert "hunter2pass" not in done.stderr + done.stdout


def test_cli_missing_config_file_exits_2(tmp_path: Path) -> None:
    done = CliRunner().invoke(db, ["upgrade", "--config", str(tmp_path / "absent.toml")])
    assert done.exit_code == 2
    assert done.stderr.startswith("error: CONFIG_INVALID: ")
