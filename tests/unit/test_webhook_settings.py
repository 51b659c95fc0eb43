"""``[webhooks]``: endpoints for hosted agencies only, https URLs, readable whsec_ secrets."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings import Settings, WebhookEndpoint, load_settings, read_webhook_secrets

G12 = "000.00.00.G12"
SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


def _load(tmp_path: Path, webhooks: str, *, host: str = "127.0.0.1") -> Settings:
    (tmp_path / "g12.whsec").write_text(SECRET + "\n")
    path = tmp_path / "node.toml"
    path.write_text(
        f'[node]\nagencies = ["{G12}"]\n[server]\nhost = "{host}"\nport = 9443\n'
        f"[webhooks]\n{webhooks}\n"
    )
    return load_settings(path, environ={})


def _endpoint(
    url: str = "https://dms.g12.example/hook", agency: str = G12, secret: str = "g12.whsec"
) -> str:
    return f'endpoints = [{{ agency = "{agency}", url = "{url}", secret_file = "{secret}" }}]'


def test_an_endpoint_loads_with_its_secret_file_next_to_the_settings(tmp_path: Path) -> None:
    settings = _load(tmp_path, _endpoint() + '\npublic_url = "https://gw.example:8443/"')
    webhooks = settings.webhooks
    assert webhooks.endpoints == (
        WebhookEndpoint(
            agency=G12, url="https://dms.g12.example/hook", secret_file=tmp_path / "g12.whsec"
        ),
    )
    assert webhooks.base_url(settings.server) == "https://gw.example:8443"
    assert read_webhook_secrets(tmp_path / "g12.whsec") == [
        base64.b64decode(SECRET.removeprefix("whsec_"))
    ]


def test_without_public_url_the_links_name_the_listener(tmp_path: Path) -> None:
    settings = _load(tmp_path, _endpoint())
    assert settings.webhooks.base_url(settings.server) == "https://127.0.0.1:9443"


@pytest.mark.parametrize(
    ("webhooks", "message"),
    [
        (_endpoint(agency="000.00.00.G99"), "is not one of [node] agencies"),
        (_endpoint(url="http://dms.g12.example/hook"), "must be https://"),
        (_endpoint(url="ftp://dms.g12.example/hook"), "must be an https:// URL"),
        (_endpoint(url="https://user:pw@dms.g12.example/hook"), "user name or password"),
        (_endpoint(url="https://dms.g12.example/hook#x"), "fragment"),
        (_endpoint(secret="missing.whsec"), "cannot be read"),
        ('endpoints = [{ agency = "000.00.00.G12", url = "https://x.example" }]', "secret_file"),
        (
            'endpoints = [{ agency = "000.00.00.G12", url = "https://x.example", '
            'secret_file = "g12.whsec", events = "all" }]',
            "unknown key 'events'",
        ),
        ('endpoints = "https://x.example"', "must be a list of tables"),
        ("backoff_initial = 10.0\nbackoff_max = 5.0", "backoff_max must not be less"),
        ('public_url = "gw.example"', "[webhooks] public_url must be an https:// URL"),
        ("max_attempts = 0", "[webhooks] max_attempts must be at least 1"),
        ("timeout = 0", "[webhooks] timeout must be greater than 0"),
    ],
)
def test_bad_webhook_settings_are_refused_naming_the_key(
    tmp_path: Path, webhooks: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, webhooks)
    assert message in info.value.message
    assert info.value.detail["key"].startswith("webhooks.")
    assert SECRET not in info.value.message


def test_http_is_allowed_to_this_machine_only(tmp_path: Path) -> None:
    for url in ("http://127.0.0.1:8080/hook", "http://localhost/hook", "http://[::1]:81/h"):
        _load(tmp_path, _endpoint(url=url))


def test_two_endpoints_for_one_agency_are_refused(tmp_path: Path) -> None:
    one = f'{{ agency = "{G12}", url = "https://a.example", secret_file = "g12.whsec" }}'
    with pytest.raises(ConfigError, match="two endpoints"):
        _load(tmp_path, f"endpoints = [{one}, {one}]")


def test_a_wildcard_listener_needs_a_public_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="public_url is required"):
        _load(tmp_path, _endpoint(), host="0.0.0.0")
    _load(tmp_path, _endpoint() + '\npublic_url = "https://gw.example"', host="0.0.0.0")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no secret"),
        ("c2VjcmV0\n", "must start with whsec_"),
        ("whsec_" + base64.b64encode(b"short").decode(), "24-64 random bytes"),
        ("whsec_" + base64.b64encode(os.urandom(65)).decode(), "24-64 random bytes"),
        ("whsec_not*base64", "24-64 random bytes"),
    ],
)
def test_malformed_secret_files_are_refused_without_showing_them(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.whsec"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        read_webhook_secrets(path)
    assert message in info.value.message
    if content:
        assert content.strip() not in info.value.message


def test_a_rotation_file_holds_the_current_secret_first(tmp_path: Path) -> None:
    old, new = os.urandom(32), os.urandom(24)
    path = tmp_path / "g12.whsec"
    path.write_text(
        "whsec_" + base64.b64encode(new).decode() + "\n\nwhsec_" + base64.b64encode(old).decode()
    )
    assert read_webhook_secrets(path) == [new, old]
