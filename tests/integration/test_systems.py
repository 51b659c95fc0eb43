"""Connected systems of the hub API on real databases: secrets, HMAC authentication, the CLI.

Each test that takes ``hub`` runs on SQLite and on PostgreSQL (``db_url``). The HMAC test vector
is HUB-PROTOCOL.md section 3.1's.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner, Result
from sqlalchemy import select, text, update
from support import G22, DevPKI

from gateway.cli.systems import systems as systems_cli
from gateway.dev.nodeconfig import write_node_config
from gateway.errors import (
    ConfigError,
    GatewayError,
    HubSignatureInvalid,
    SystemAgencyForbidden,
    SystemDisabled,
    SystemUnknown,
    UsageError,
)
from gateway.evidence import audit
from gateway.node import systems as systems_module
from gateway.node.container import Node
from gateway.node.systems import (
    Authenticated,
    System,
    add_system,
    authenticate,
    check_agency,
    disable_system,
    get_system,
    list_systems,
    rotate_secret,
    set_policy,
)
from gateway.settings import HubSettings, load_settings
from gateway.storage import db
from gateway.storage.tables import audit_log, systems

NODE = "systems-node"
H49 = "000.00.00.H49"
#: hosted by no node of these tests
ELSEWHERE = "000.00.00.G12"
REMOTE = "192.0.2.7"

#: HUB-PROTOCOL.md 3.1: this secret over this sign-header gives this MAC
VECTOR_SYSTEM = "vxp.example.01"
VECTOR_SECRET = "example-secret"
VECTOR_HEADER = (
    b'{"XroadVnpt-systemid":"vxp.example.01","XroadVnpt-timestamp":"22112026T105836+0908",'
    b'"XroadVnpt-Content-Type":"application/json"}'
)
VECTOR_MAC = "c1224f9dc1d2f6f2a9f0be01f2d8e9de5edd28dd31c0443ecfac15f189597f1d"


class Clock:
    """The node's clock, moved by hand: a rotation's grace without sleeping."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@dataclass
class Hub:
    node: Node
    clock: Clock
    config: Path
    folder: Path

    @property
    def key_file(self) -> Path:
        return self.folder / "hub-secrets.key"


def _config(folder: Path, pki: DevPKI, url: str, **hub: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_node_config(
        folder / "node.toml",
        name=NODE,
        agencies=[H49, G22],
        node=pki.issue(NODE),
        ca=pki.ca,
        database_url=url,
        extra={"hub": {"enabled": True, **hub}},
    )


@pytest.fixture
def hub(db_url: str, tmp_path: Path, pki: DevPKI) -> Iterator[Hub]:
    """A migrated node hosting H49 and G22, its clock in the test's hand, no system yet."""
    folder = tmp_path / "etc"
    config = _config(folder, pki, db_url)
    settings = load_settings(config, environ={})
    engine = db.make_engine(settings)
    db.upgrade(engine)
    clock = Clock()
    node = dataclasses.replace(Node.from_settings(settings, engine), clock=clock)
    try:
        yield Hub(node=node, clock=clock, config=config, folder=folder)
    finally:
        engine.dispose()


# --- helpers -------------------------------------------------------------------------------------


def sign_header(systemid: str, **params: Any) -> bytes:
    """A sign-header as the SDK builds it: compact JSON, every key prefixed."""
    entries = {"systemid": systemid, "timestamp": "22112026T105836+0908", **params}
    return json.dumps(
        {f"XroadVnpt-{k}": v for k, v in entries.items()}, separators=(",", ":")
    ).encode()


def mac(secret: str, header: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), header, hashlib.sha256).hexdigest()


def entries(node: Node, event: str) -> list[Any]:
    with node.reader.connect() as conn:
        return conn.execute(
            select(audit_log.c.actor, audit_log.c.subject, audit_log.c.data)
            .where(audit_log.c.event == event)
            .order_by(audit_log.c.seq)
        ).all()


def set_secret(node: Node, systemid: str, secret: str) -> None:
    """Test-only: replace a system's current secret, sealed with the module's own helper."""
    key = systems_module._read_key(node)
    with node.writing() as conn:
        conn.execute(
            update(systems)
            .where(systems.c.systemid == systemid)
            .values(secret=systems_module._seal(key, systemid, secret))
        )


def authenticates(node: Node, secret: str, systemid: str) -> bool:
    header = sign_header(systemid)
    try:
        authenticate(node, header, mac(secret, header), remote=REMOTE)
    except HubSignatureInvalid:
        return False
    return True


# --- adding, listing -----------------------------------------------------------------------------


def test_add_gives_a_secret_once_and_lists_the_system_without_it(hub: Hub) -> None:
    assert not hub.key_file.exists()
    system, secret = add_system(hub.node, "vxp.h49-01_a", [H49, G22, H49], actor="admin:ops")
    assert system == System(
        "vxp.h49-01_a", (G22, H49), "require", False, hub.clock.now, hub.clock.now
    )
    # 32 random bytes, URL-safe base64 without padding: ASCII only
    assert len(secret) == 43 and secret.isascii() and "=" not in secret
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32
    assert list_systems(hub.node) == [system] == [get_system(hub.node, "vxp.h49-01_a")]
    assert secret not in repr(system) + repr(list_systems(hub.node))
    # the key file was made by the first add: 32 bytes, for the node's user only
    assert len(hub.key_file.read_bytes()) == 32
    assert stat.S_IMODE(hub.key_file.stat().st_mode) == 0o600
    assert [p.name for p in hub.folder.iterdir() if p.name.startswith(".")] == []
    other, other_secret = add_system(hub.node, "a", [G22], policy="attest", actor="admin:ops")
    assert other_secret != secret and other.policy == "attest"
    assert [s.systemid for s in list_systems(hub.node)] == ["a", "vxp.h49-01_a"]
    [first, second] = entries(hub.node, "system_add")
    assert (first.actor, first.subject) == ("admin:ops", "vxp.h49-01_a")
    assert json.loads(first.data) == {"agencies": [G22, H49], "policy": "require"}
    assert json.loads(second.data) == {"agencies": [G22], "policy": "attest"}


@pytest.mark.parametrize(
    ("systemid", "agencies", "policy", "says"),
    [
        pytest.param("", [H49], "require", "1-128 characters", id="empty systemid"),
        pytest.param("x" * 129, [H49], "require", "1-128 characters", id="long systemid"),
        pytest.param("vxp/01", [H49], "require", "1-128 characters", id="slash in systemid"),
        pytest.param("vxp 01", [H49], "require", "1-128 characters", id="space in systemid"),
        pytest.param("vxp", [], "require", "at least one agency", id="no agency"),
        pytest.param("vxp", ["000.00.00.h49"], "require", "000.00.00.h49", id="bad code"),
        pytest.param("vxp", [ELSEWHERE], "require", "not hosted by this node", id="not hosted"),
        pytest.param("vxp", [H49], "sign", "require or attest", id="bad policy"),
    ],
)
def test_add_refuses_bad_input_clearly(
    hub: Hub, systemid: str, agencies: list[str], policy: str, says: str
) -> None:
    with pytest.raises(UsageError) as caught:
        add_system(hub.node, systemid, agencies, policy=policy, actor="admin:ops")
    assert says in caught.value.message
    assert list_systems(hub.node) == []
    assert entries(hub.node, "system_add") == []


def test_a_systemid_is_added_once(hub: Hub) -> None:
    add_system(hub.node, "vxp", [H49], actor="admin:ops")
    with pytest.raises(UsageError, match="already exists"):
        add_system(hub.node, "vxp", [G22], actor="admin:ops")
    assert get_system(hub.node, "vxp").agencies == (H49,)


def test_unknown_system_operations(hub: Hub) -> None:
    for call in (
        lambda: get_system(hub.node, "nobody"),
        lambda: rotate_secret(hub.node, "nobody", actor="admin:ops"),
        lambda: disable_system(hub.node, "nobody", actor="admin:ops"),
        lambda: set_policy(hub.node, "nobody", "attest", actor="admin:ops"),
    ):
        with pytest.raises(SystemUnknown) as caught:
            call()
        assert caught.value.code == "AUTH_SYSTEM_UNKNOWN"


def test_disable_and_policy_are_audited_when_they_change(hub: Hub) -> None:
    add_system(hub.node, "vxp", [H49], actor="admin:ops")
    hub.clock.advance(60)
    changed = set_policy(hub.node, "vxp", "attest", actor="admin:alice")
    assert changed.policy == "attest" and changed.updated_at == hub.clock.now
    assert set_policy(hub.node, "vxp", "attest", actor="admin:alice") == changed  # no change
    with pytest.raises(UsageError, match="require or attest"):
        set_policy(hub.node, "vxp", "none", actor="admin:alice")
    disabled = disable_system(hub.node, "vxp", actor="admin:bob")
    assert disabled.disabled is True and get_system(hub.node, "vxp").disabled is True
    assert disable_system(hub.node, "vxp", actor="admin:bob") == disabled
    [policy] = entries(hub.node, "system_policy")
    assert (policy.actor, policy.subject) == ("admin:alice", "vxp")
    assert json.loads(policy.data) == {"policy_from": "require", "policy_to": "attest"}
    [disable] = entries(hub.node, "system_disable")
    assert (disable.actor, disable.subject) == ("admin:bob", "vxp")
    assert json.loads(disable.data) == {"disabled_from": False, "disabled_to": True}


# --- authentication ------------------------------------------------------------------------------


def test_the_protocol_test_vector_authenticates(hub: Hub) -> None:
    add_system(hub.node, VECTOR_SYSTEM, [H49], actor="admin:ops")
    set_secret(hub.node, VECTOR_SYSTEM, VECTOR_SECRET)
    for given in (VECTOR_MAC, VECTOR_MAC.upper()):
        auth = authenticate(hub.node, VECTOR_HEADER, given, remote=REMOTE)
        assert auth.system == get_system(hub.node, VECTOR_SYSTEM)
        assert auth.params == {
            "systemid": "vxp.example.01",
            "timestamp": "22112026T105836+0908",
            "Content-Type": "application/json",
        }
    # the raw bytes are what is signed: the same JSON spaced differently does not match
    spaced = json.dumps(json.loads(VECTOR_HEADER)).encode()
    with pytest.raises(HubSignatureInvalid):
        authenticate(hub.node, spaced, VECTOR_MAC, remote=REMOTE)
    [entry] = entries(hub.node, "hub_auth_refuse")
    assert (entry.actor, entry.subject) == (f"hub:{VECTOR_SYSTEM}", None)
    assert json.loads(entry.data) == {"code": "AUTH_HMAC_INVALID", "remote": REMOTE}


def test_an_added_systems_own_secret_authenticates(hub: Hub) -> None:
    _, secret = add_system(hub.node, "vxp", [H49], actor="admin:ops")
    header = sign_header("vxp", docId="42")
    auth = authenticate(hub.node, header, mac(secret, header), remote=None)
    assert auth.system.systemid == "vxp" and auth.param("docid") == "42"
    check_agency(auth, H49)
    with pytest.raises(SystemAgencyForbidden) as caught:
        check_agency(auth, G22)
    assert caught.value.code == "AUTH_SYSTEM_AGENCY_FORBIDDEN"
    assert entries(hub.node, "hub_auth_refuse") == []


def _refusals() -> list[Any]:
    good = sign_header("vxp")
    return [
        pytest.param(
            good, lambda s: mac("not-the-secret", good), "vxp", "AUTH_HMAC_INVALID", id="wrong"
        ),
        pytest.param(
            sign_header("nobody"),
            lambda s: mac(s, sign_header("nobody")),
            "nobody",
            "AUTH_SYSTEM_UNKNOWN",
            id="unknown system",
        ),
        pytest.param(
            sign_header("bad id!"),
            lambda s: mac(s, sign_header("bad id!")),
            "-",
            "AUTH_SYSTEM_UNKNOWN",
            id="malformed systemid",
        ),
        pytest.param(None, lambda s: mac(s, good), "-", "AUTH_HMAC_INVALID", id="no sign-header"),
        pytest.param(b"", lambda s: mac(s, good), "-", "AUTH_HMAC_INVALID", id="empty sign-header"),
        pytest.param(good, lambda s: None, "vxp", "AUTH_HMAC_INVALID", id="no hash-header"),
        pytest.param(good, lambda s: "", "vxp", "AUTH_HMAC_INVALID", id="empty hash-header"),
        pytest.param(
            b"systemid=vxp", lambda s: mac(s, b"systemid=vxp"), "-", "AUTH_HMAC_INVALID", id="text"
        ),
        pytest.param(
            b'{"XroadVnpt-systemid":"vxp"',
            lambda s: mac(s, b'{"XroadVnpt-systemid":"vxp"'),
            "-",
            "AUTH_HMAC_INVALID",
            id="truncated JSON",
        ),
        pytest.param(
            b'["XroadVnpt-systemid","vxp"]',
            lambda s: mac(s, b'["XroadVnpt-systemid","vxp"]'),
            "-",
            "AUTH_HMAC_INVALID",
            id="JSON array",
        ),
        pytest.param(
            b'{"XroadVnpt-systemid":"vxp","XroadVnpt-to":{"a":"b"}}',
            lambda s: mac(s, b'{"XroadVnpt-systemid":"vxp","XroadVnpt-to":{"a":"b"}}'),
            "-",
            "AUTH_HMAC_INVALID",
            id="nested object",
        ),
        pytest.param(
            b'{"XroadVnpt-systemid":"vxp","XroadVnpt-x":null}',
            lambda s: mac(s, b'{"XroadVnpt-systemid":"vxp","XroadVnpt-x":null}'),
            "-",
            "AUTH_HMAC_INVALID",
            id="null value",
        ),
        pytest.param(
            b'{"XroadVnpt-timestamp":"1"}',
            lambda s: mac(s, b'{"XroadVnpt-timestamp":"1"}'),
            "-",
            "AUTH_HMAC_INVALID",
            id="no systemid",
        ),
        pytest.param(b"\xff\xfe{}", lambda s: mac(s, good), "-", "AUTH_HMAC_INVALID", id="binary"),
        pytest.param(good, lambda s: "zz" * 32, "vxp", "AUTH_HMAC_INVALID", id="MAC not hex"),
        pytest.param(good, lambda s: mac(s, good)[:40], "vxp", "AUTH_HMAC_INVALID", id="short MAC"),
    ]


@pytest.mark.parametrize(("header", "make_mac", "who", "code"), _refusals())
def test_each_refusal_raises_its_code_and_is_audited_once(
    hub: Hub, header: bytes | None, make_mac: Any, who: str, code: str
) -> None:
    _, secret = add_system(hub.node, "vxp", [H49], actor="admin:ops")
    given = make_mac(secret)
    with structlog.testing.capture_logs() as logs, pytest.raises(GatewayError) as caught:
        authenticate(hub.node, header, given, remote=REMOTE)
    assert caught.value.code == code
    [entry] = entries(hub.node, "hub_auth_refuse")
    assert (entry.actor, entry.subject) == (f"hub:{who}", None)
    assert json.loads(entry.data) == {"code": code, "remote": REMOTE}
    assert [e["event"] for e in logs] == ["hub.auth_refused"]
    said = repr(logs) + entry.data + repr(caught.value.detail) + caught.value.message
    assert secret not in said
    assert not given or given not in said


def test_a_disabled_system_is_refused_only_once_its_mac_is_right(hub: Hub) -> None:
    _, secret = add_system(hub.node, "vxp", [H49], actor="admin:ops")
    disable_system(hub.node, "vxp", actor="admin:ops")
    header = sign_header("vxp")
    with pytest.raises(SystemDisabled) as caught:
        authenticate(hub.node, header, mac(secret, header), remote=REMOTE)
    assert caught.value.code == "AUTH_SYSTEM_DISABLED"
    with pytest.raises(HubSignatureInvalid):  # without the secret, nothing more is said
        authenticate(hub.node, header, mac("guess", header), remote=REMOTE)
    codes = [json.loads(e.data)["code"] for e in entries(hub.node, "hub_auth_refuse")]
    assert codes == ["AUTH_SYSTEM_DISABLED", "AUTH_HMAC_INVALID"]
    assert {e.actor for e in entries(hub.node, "hub_auth_refuse")} == {"hub:vxp"}


def test_the_frozen_timestamp_is_never_judged(hub: Hub) -> None:
    _, secret = add_system(hub.node, "vxp", [H49], actor="admin:ops")
    header = sign_header("vxp", timestamp="01011970T000000+0000")
    hub.clock.advance(400 * 24 * 3600)
    assert authenticate(hub.node, header, mac(secret, header), remote=REMOTE).param("timestamp")


# --- rotation ------------------------------------------------------------------------------------


def test_rotation_keeps_the_old_secret_for_its_grace_only(hub: Hub) -> None:
    _, old = add_system(hub.node, "vxp", [H49], actor="admin:ops")
    new = rotate_secret(hub.node, "vxp", actor="admin:ops")
    assert new != old and len(new) == 43
    grace = hub.node.settings.hub.rotate_grace
    assert grace == 604800
    assert authenticates(hub.node, new, "vxp") and authenticates(hub.node, old, "vxp")
    hub.clock.advance(grace - 1)
    assert authenticates(hub.node, old, "vxp")
    hub.clock.advance(1)
    assert not authenticates(hub.node, old, "vxp")
    assert authenticates(hub.node, new, "vxp")
    [entry] = entries(hub.node, "system_rotate")
    assert (entry.actor, entry.subject) == ("admin:ops", "vxp")
    data = json.loads(entry.data)
    assert data["grace_seconds"] == grace
    assert dt.datetime.fromisoformat(data["previous_until"]) == hub.clock.now
    assert old not in entry.data and new not in entry.data


def test_rotation_with_a_grace_of_its_own(hub: Hub) -> None:
    _, first = add_system(hub.node, "vxp", [H49], actor="admin:ops")
    second = rotate_secret(hub.node, "vxp", actor="admin:ops", grace=0)
    assert not authenticates(hub.node, first, "vxp")
    third = rotate_secret(hub.node, "vxp", actor="admin:ops", grace=60)
    # only the last secret is kept beside the new one
    assert [authenticates(hub.node, s, "vxp") for s in (first, second, third)] == [
        False,
        True,
        True,
    ]
    hub.clock.advance(61)
    assert [authenticates(hub.node, s, "vxp") for s in (second, third)] == [False, True]
    for bad in (-1, 365 * 24 * 3600 + 1, float("nan")):
        with pytest.raises(UsageError, match="grace"):
            rotate_secret(hub.node, "vxp", actor="admin:ops", grace=bad)
    assert authenticates(hub.node, third, "vxp")


# --- where secrets are not -----------------------------------------------------------------------


def test_secrets_are_nowhere_in_the_database_nor_in_the_logs(
    hub: Hub, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with structlog.testing.capture_logs() as logs:
        _, first = add_system(hub.node, "vxp", [H49], actor="admin:ops")
        second = rotate_secret(hub.node, "vxp", actor="admin:ops")
        set_policy(hub.node, "vxp", "attest", actor="admin:ops")
        header = sign_header("vxp")
        authenticate(hub.node, header, mac(second, header), remote=REMOTE)
        with pytest.raises(HubSignatureInvalid):
            authenticate(hub.node, header, mac(first + "x", header), remote=REMOTE)
        disable_system(hub.node, "vxp", actor="admin:ops")
    key = hub.key_file.read_bytes()
    forms = (
        [s.encode() for s in (first, second)]
        + [base64.urlsafe_b64decode(s + "=") for s in (first, second)]
        + [key]
    )
    # every row of every table, as the database renders it
    with hub.node.reader.connect() as conn:
        names = db_tables(conn)
        dumped = b"".join(
            repr(conn.execute(text(f'SELECT * FROM "{name}"')).all()).encode() for name in names
        )
    assert {"systems", "audit_log"} <= set(names)
    for form in forms:
        assert form not in dumped
    if hub.node.engine.dialect.name == "sqlite":
        files = b"".join(
            Path(f"{hub.node.engine.url.database}{suffix}").read_bytes()
            for suffix in ("", "-wal")
            if Path(f"{hub.node.engine.url.database}{suffix}").exists()
        )
        assert b"vxp" in files  # the file is the one written
        for form in forms:
            assert form not in files
    printed = capsys.readouterr()
    said = (repr(logs) + printed.out + printed.err + caplog.text).encode()
    assert {e["event"] for e in logs} >= {"system.added", "system.rotated", "hub.auth_refused"}
    for form in forms:
        assert form not in said


def db_tables(conn: Any) -> list[str]:
    from sqlalchemy import inspect

    return list(inspect(conn).get_table_names())


# --- the key file --------------------------------------------------------------------------------


def test_the_key_file_is_read_each_time_and_must_be_the_right_one(hub: Hub) -> None:
    _, secret = add_system(hub.node, "vxp", [H49], actor="admin:ops")
    assert authenticates(hub.node, secret, "vxp")
    key = hub.key_file.read_bytes()
    hub.key_file.unlink()  # nothing kept in memory: the next request needs the file
    with pytest.raises(ConfigError, match="missing, and connected systems exist"):
        authenticates(hub.node, secret, "vxp")
    assert json.loads(entries(hub.node, "hub_auth_refuse")[-1].data)["code"] == "CONFIG_INVALID"
    for call in (
        lambda: add_system(hub.node, "other", [H49], actor="admin:ops"),
        lambda: rotate_secret(hub.node, "vxp", actor="admin:ops"),
    ):
        with pytest.raises(ConfigError, match="Restore it from its backup"):
            call()
    assert not hub.key_file.exists()  # never silently replaced while systems exist
    hub.key_file.write_bytes(key[:16])
    with pytest.raises(ConfigError, match="not a 32-byte key file"):
        authenticates(hub.node, secret, "vxp")
    hub.key_file.write_bytes(os.urandom(32))
    for call in (
        lambda: authenticates(hub.node, secret, "vxp"),
        lambda: add_system(hub.node, "other", [H49], actor="admin:ops"),
        lambda: rotate_secret(hub.node, "vxp", actor="admin:ops"),
    ):
        with pytest.raises(ConfigError, match="not the key file"):
            call()
    hub.key_file.write_bytes(key)
    assert authenticates(hub.node, secret, "vxp")
    assert [s.systemid for s in list_systems(hub.node)] == ["vxp"]


def test_the_key_files_folder_must_exist(db_url: str, tmp_path: Path, pki: DevPKI) -> None:
    config = _config(tmp_path / "etc", pki, db_url, secrets_key_file="keys/hub.key")
    settings = load_settings(config, environ={})
    assert settings.hub.key_path(settings.base_dir) == tmp_path / "etc" / "keys" / "hub.key"
    engine = db.make_engine(settings)
    try:
        db.upgrade(engine)
        node = Node.from_settings(settings, engine)
        with pytest.raises(ConfigError, match="does not exist"):
            add_system(node, "vxp", [H49], actor="admin:ops")
        (tmp_path / "etc" / "keys").mkdir()
        add_system(node, "vxp", [H49], actor="admin:ops")
        assert (tmp_path / "etc" / "keys" / "hub.key").stat().st_size == 32
    finally:
        engine.dispose()


# --- parameters ----------------------------------------------------------------------------------


def test_parameters_are_the_signed_ones_looked_up_without_case(hub: Hub) -> None:
    _, secret = add_system(hub.node, "vxp", [H49], actor="admin:ops")
    header = (
        b'{"XroadVnpt-docid":"old","XroadVnpt-systemid":"vxp","XroadVnpt-docId":"new",'
        b'"XroadVnpt-status":7,"XroadVnpt-filePath":"C:/x","XroadVnpt-to":"[\\"a\\",\\"b\\"]",'
        b'"bare":"kept","XroadVnpt-bare":"prefixed"}'
    )
    auth = authenticate(hub.node, header, mac(secret, header), remote=REMOTE)
    assert auth.params == {
        "docid": "old",
        "systemid": "vxp",
        "docId": "new",
        "status": "7",
        "filePath": "C:/x",
        "to": '["a","b"]',
        "bare": "prefixed",
    }
    assert auth.param("docId") == "new"
    assert auth.param("docid") == "old"
    assert auth.param("DOCID") == "old"  # neither exact: the first sent
    assert auth.param("FILEPATH") == "C:/x"
    assert auth.param("status") == "7"
    assert auth.param("hash-file") is None


def test_param_prefers_the_exact_spelling() -> None:
    system = System(
        "vxp", (H49,), "require", False, dt.datetime.now(dt.UTC), dt.datetime.now(dt.UTC)
    )
    auth = Authenticated(system, {"docId": "a", "docid": "b"})
    assert (auth.param("docId"), auth.param("docid"), auth.param("DocID")) == ("a", "b", "a")
    assert Authenticated(system, {"docid": "b"}).param("docId") == "b"


# --- the audit chain stays whole -----------------------------------------------------------------


def test_the_audit_chain_verifies_after_every_kind_of_entry(hub: Hub) -> None:
    _, secret = add_system(hub.node, "vxp", [H49], actor="admin:ops")
    rotate_secret(hub.node, "vxp", actor="admin:ops")
    set_policy(hub.node, "vxp", "attest", actor="admin:ops")
    disable_system(hub.node, "vxp", actor="admin:ops")
    with pytest.raises(SystemDisabled):
        authenticate(hub.node, sign_header("vxp"), mac(secret, sign_header("vxp")), remote=None)
    with hub.node.reader.connect() as conn:
        report = audit.verify(conn)
    assert report.ok, report.problems
    assert report.entries == 5


# --- the command line ----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _logging_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The command configures logging for its process (JSON on stderr): undo it after.

    In the test process loggers must not cache that configuration (``gateway.logs.configure``
    asks structlog to, on first use): a module's logger would keep it for the whole session.
    """
    import gateway.logs

    real = gateway.logs.configure

    def configure(level: str = "info", *, worker: int | None = None) -> None:
        real(level, worker=worker)
        structlog.configure(cache_logger_on_first_use=False)

    monkeypatch.setattr(gateway.logs, "configure", configure)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    yield
    root.handlers[:], root.level = handlers, level
    structlog.configure(**config)


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(systems_cli, [str(a) for a in args])


def test_cli_add_list_rotate_policy_disable(hub: Hub) -> None:
    config = ("--config", hub.config)
    done = cli("add", "vxp.cli", "--agency", H49, "--agency", G22, *config)
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    assert lines[0] == f"system vxp.cli added: agencies {G22}, {H49}; policy require"
    assert lines[1].startswith("secret: ")
    secret = lines[1].removeprefix("secret: ")
    assert len(secret) == 43
    assert "will not be shown again" in lines[2]
    assert len(lines) == 3 and done.stderr == ""  # no log line: info events are left out
    assert authenticates(hub.node, secret, "vxp.cli")
    [entry] = entries(hub.node, "system_add")
    assert entry.actor.startswith("admin:") and entry.actor != "admin:"

    listed = cli("list", *config)
    assert listed.exit_code == 0, listed.output
    assert "vxp.cli" in listed.stdout and "enabled" in listed.stdout and "require" in listed.stdout
    assert secret not in listed.stdout
    as_json = cli("list", "--json", *config)
    [row] = json.loads(as_json.stdout)
    assert {k: row[k] for k in ("systemid", "agencies", "policy", "disabled")} == {
        "systemid": "vxp.cli",
        "agencies": [G22, H49],
        "policy": "require",
        "disabled": False,
    }
    assert "secret" not in as_json.stdout

    rotated = cli("rotate", "vxp.cli", "--grace", "0", *config)
    assert rotated.exit_code == 0, rotated.output
    assert "no longer works" in rotated.stdout
    new = rotated.stdout.splitlines()[1].removeprefix("secret: ")
    assert "will not be shown again" in rotated.stdout
    assert authenticates(hub.node, new, "vxp.cli") and not authenticates(
        hub.node, secret, "vxp.cli"
    )
    rotated = cli("rotate", "vxp.cli", *config)
    assert "stays valid for 604800 seconds" in rotated.stdout

    assert cli("policy", "vxp.cli", "attest", *config).stdout == "system vxp.cli: policy attest\n"
    assert cli("disable", "vxp.cli", *config).stdout == "system vxp.cli disabled\n"
    assert json.loads(cli("list", "--json", *config).stdout)[0]["disabled"] is True
    assert "disabled" in cli("list", *config).stdout


@pytest.mark.parametrize(
    ("args", "code"),
    [
        pytest.param(("add", "vxp"), "USAGE_ERROR", id="add without agency"),
        pytest.param(("add", "vxp", "--agency", ELSEWHERE), "USAGE_ERROR", id="not hosted"),
        pytest.param(("add", "v x", "--agency", H49), "USAGE_ERROR", id="bad systemid"),
        pytest.param(("add", "vxp", "--agency", H49, "--policy", "x"), "USAGE_ERROR", id="policy"),
        pytest.param(("rotate", "nobody"), "AUTH_SYSTEM_UNKNOWN", id="rotate unknown"),
        pytest.param(("rotate", "vxp", "--grace", "-5"), "USAGE_ERROR", id="negative grace"),
        pytest.param(("disable", "nobody"), "AUTH_SYSTEM_UNKNOWN", id="disable unknown"),
        pytest.param(("policy", "nobody", "attest"), "AUTH_SYSTEM_UNKNOWN", id="policy unknown"),
        pytest.param(("policy", "vxp", "maybe"), "USAGE_ERROR", id="bad policy"),
    ],
)
def test_cli_errors_exit_2_with_one_line(hub: Hub, args: tuple[str, ...], code: str) -> None:
    if args[0] != "add":
        add_system(hub.node, "vxp", [H49], actor="admin:ops")
    done = cli(*args, "--config", hub.config)
    assert done.exit_code == 2, done.output
    assert done.stderr.startswith(f"error: {code}: ") and done.stderr.count("\n") == 1
    assert done.stdout == ""


def test_cli_without_settings_exits_2(tmp_path: Path) -> None:
    done = cli("list", "--config", tmp_path / "absent.toml")
    assert done.exit_code == 2
    assert done.stderr.startswith("error: CONFIG_INVALID: ")


# --- settings ------------------------------------------------------------------------------------


def test_hub_settings_load_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        '[hub]\nenabled = true\nprefix = "/hub/api"\n'
        'secrets_key_file = "secret/hub.key"\nrotate_grace = 0\nrequest_deadline = 12.5\n',
        encoding="utf-8",
    )
    settings = load_settings(path, environ={"GATEWAY_HUB__ROTATE_GRACE": "3600"})
    assert settings.hub == HubSettings(
        enabled=True,
        prefix="/hub/api",
        secrets_key_file=tmp_path / "secret" / "hub.key",
        rotate_grace=3600,
        request_deadline=12.5,
    )
    defaults = load_settings(None, environ={})
    assert defaults.hub == HubSettings()
    assert not defaults.hub.enabled and defaults.hub.prefix == "/vdxp"
    # a relative default lives in the settings file's folder, like every relative path
    assert defaults.hub.key_path(tmp_path) == tmp_path / "hub-secrets.key"
    absolute = HubSettings(secrets_key_file=Path("/etc/gw/hub.key"))
    assert absolute.key_path(tmp_path) == Path("/etc/gw/hub.key")


def test_a_hub_listener_of_its_own_takes_any_prefix_and_its_own_certificate(
    tmp_path: Path,
) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        '[hub]\nport = 9443\nprefix = "/"\ncert = "hub.pem"\nkey = "hub.key"\n', encoding="utf-8"
    )
    hub = load_settings(path, environ={}).hub
    assert (hub.port, hub.prefix, hub.host, hub.keepalive_timeout) == (9443, "/", "", 5)
    assert (hub.cert, hub.key) == (tmp_path / "hub.pem", tmp_path / "hub.key")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('prefix = "vdxp"', "[hub] prefix must be a URL path starting with"),
        ('prefix = "/vdxp?x=1"', "[hub] prefix must be a URL path starting with"),
        ('prefix = ""', "[hub] prefix must be a non-empty string"),
        ('prefix = "/api"', "[hub] prefix '/api' would hide the node's own API"),
        ("rotate_grace = -1", "[hub] rotate_grace must be 0-31536000"),
        ("rotate_grace = 31536001", "[hub] rotate_grace must be 0-31536000"),
        ("rotate_grace = 1.5", "[hub] rotate_grace must be an integer"),
        ("request_deadline = 0", "[hub] request_deadline must be greater than 0"),
        ("enabled = 'perhaps'", "[hub] enabled must be true or false"),
        ('secrets_key_file = ""', "[hub] secrets_key_file must be a path"),
        ("secret = 'x'", "unknown setting [hub] secret"),
        ('prefix = "/"', "[hub] prefix '/' would hide the node's own API"),
        ("port = 8443", "[hub] port 8443 is the node's own listener's"),
        ("port = 65536", "[hub] port must be 0-65535"),
        ('port = 9443\ncert = "hub.pem"', "[hub] cert and key go together"),
        ("port = 9443\nkeepalive_timeout = 0", "[hub] keepalive_timeout must be"),
    ],
)
def test_bad_hub_settings_are_refused_naming_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "node.toml"
    path.write_text(f"[hub]\n{text}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert caught.value.message.startswith(message), caught.value.message
