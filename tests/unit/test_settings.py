"""Settings: TOML plus GATEWAY_* overrides, every key validated and named on error."""

from __future__ import annotations

import re
from dataclasses import fields, replace
from pathlib import Path

import pytest

import gateway.settings as settings_module
from gateway.errors import ConfigError
from gateway.settings import RANGES, Settings, load_settings

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


def _numeric_keys() -> list[tuple[str, str, str]]:
    """(section, key, type) of every number a settings file may hold."""
    sections = {f.name: f.type for f in fields(Settings) if f.name not in {"base_dir", "directory"}}
    out = []
    for section, cls in sections.items():
        for f in fields(getattr(settings_module, str(cls))):
            if str(f.type) in {"int", "float"}:
                out.append((section, f.name, str(f.type)))
    return out


#: the numbers that may be zero, each because zero means something (settings.py, RANGES)
ZERO_ALLOWED = {
    "delivery.backoff_jitter",
    "limits.max_attachments",
    "hub.rotate_grace",  # 0: a rotated-out secret stops at once
    "hub.port",  # 0: the hub API on the node's own listener
}


def test_every_number_has_a_range_and_the_defaults_are_in_it() -> None:
    keys = {f"{section}.{key}" for section, key, _ in _numeric_keys()}
    assert keys == set(RANGES)
    defaults = Settings()
    for section, key, _ in _numeric_keys():
        RANGES[f"{section}.{key}"].check(
            f"[{section}] {key}", key, getattr(getattr(defaults, section), key)
        )


@pytest.mark.parametrize(("section", "key", "kind"), _numeric_keys())
def test_zero_is_refused_unless_it_means_something(section: str, key: str, kind: str) -> None:
    environ = {f"GATEWAY_{section.upper()}__{key.upper()}": "0"}
    if f"{section}.{key}" in ZERO_ALLOWED:
        assert getattr(getattr(load_settings(None, environ=environ), section), key) == 0
        return
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ=environ)
    assert info.value.message.startswith(f"[{section}] {key} must be ")
    assert info.value.detail == {"key": f"{section}.{key}"}


@pytest.mark.parametrize(("section", "key", "kind"), _numeric_keys())
def test_a_negative_number_is_refused_naming_the_key(section: str, key: str, kind: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ={f"GATEWAY_{section.upper()}__{key.upper()}": "-1"})
    assert info.value.message.startswith(f"[{section}] {key} must be ")


def test_backoff_jitter_zero_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("[delivery]\nbackoff_jitter = 0\n[limits]\nmax_attachments = 0\n")
    settings = load_settings(path, environ={})
    assert settings.delivery.backoff_jitter == 0.0
    assert settings.limits.max_attachments == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[delivery]\nbackoff_jitter = -0.5\n", "[delivery] backoff_jitter must be at least 0"),
        ("[delivery]\ntick_interval = 0\n", "[delivery] tick_interval must be greater than 0"),
        ("[delivery]\nbatch_size = 1001\n", "[delivery] batch_size must be 1-1000"),
        ("[server]\nport = 70000\n", "[server] port must be 1-65535"),
        ("[limits]\nmax_depth = 1.5\n", "[limits] max_depth must be an integer, not 1.5"),
        ("[limits]\nmax_depth = true\n", "[limits] max_depth must be an integer, not True"),
        ("[delivery]\ntimeout = inf\n", "[delivery] timeout must be a number, not inf"),
        ("[delivery]\ntimeout = nan\n", "[delivery] timeout must be a number, not nan"),
    ],
)
def test_out_of_range_messages(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert info.value.message.startswith(message), info.value.message


def test_every_key_is_documented_in_the_example_config() -> None:
    # set in the example, or shown commented out ("# key = ..."), under its own section
    text = EXAMPLE.read_text(encoding="utf-8")
    documented: set[str] = set()
    section = ""
    for line in text.splitlines():
        header = re.fullmatch(r"\[(\w+)\]", line.strip())
        if header:
            section = header[1]
            continue
        key = re.match(r"#?\s?(\w+) = ", line)
        if key:
            documented.add(f"{section}.{key[1]}")
    expected = {
        f"{name}.{f.name}"
        for name, cls in (
            (f.name, getattr(settings_module, str(f.type)))
            for f in fields(Settings)
            if f.name != "base_dir"
        )
        for f in fields(cls)
    }
    assert expected <= documented, sorted(expected - documented)
