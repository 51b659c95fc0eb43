"""Settings: TOML plus GATEWAY_* overrides, every key validated and named on error."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings import Settings, load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


def test_example_config_loads_and_equals_defaults() -> None:
    loaded = load_settings(EXAMPLE, environ={})
    assert loaded.base_dir == EXAMPLE.parent
    assert replace(loaded, base_dir=Path.cwd()) == Settings()


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[verify]\nallow_weak_algorithms = false\n[trust]\nanchors = ["ca.pem"]\n')
    settings = load_settings(path, environ={"GATEWAY_VERIFY__ALLOW_WEAK_ALGORITHMS": "true"})
    assert settings.verify.allow_weak_algorithms is True
    assert settings.trust.anchors == (tmp_path / "ca.pem",)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[verify]\nallow_weak = true\n", "allow_weak"),
        ("[nonsense]\nx = 1\n", "nonsense"),
        ("[limits]\nmax_depth = -3\n", "max_depth"),
        ("[limits]\nmax_depth = 'deep'\n", "max_depth"),
        ("[verify]\nallow_weak_algorithms = 'perhaps'\n", "allow_weak_algorithms"),
        ("[verify\n", "TOML"),
        ("[server]\nworkers = 0\n", "workers"),
        ("[server]\nworkers = 65\n", "workers"),
        ("[logging]\naccess_log = 'loud'\n", "access_log"),
    ],
)
def test_bad_settings_name_the_key(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert named in info.value.message


def test_bad_environment_value_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ={"GATEWAY_LIMITS__MAX_ELEMENTS": "many"})
    assert "max_elements" in info.value.message


def test_limits_become_xml_limits() -> None:
    settings = load_settings(None, environ={"GATEWAY_LIMITS__MAX_ENVELOPE_BYTES": "1000"})
    assert settings.limits.xml_limits().max_bytes == 1000


def test_workers_and_access_log_from_the_environment() -> None:
    settings = load_settings(
        None, environ={"GATEWAY_SERVER__WORKERS": "2", "GATEWAY_LOGGING__ACCESS_LOG": "false"}
    )
    assert settings.server.workers == 2
    assert settings.logging.access_log is False
