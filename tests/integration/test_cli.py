"""The ``gateway`` command as an auditor runs it: a real process, real files, exit codes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support import ATTACKS, G22, INTEROP, DevPKI

GATEWAY = shutil.which("gateway", path=str(Path(sys.executable).parent)) or "gateway"


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GATEWAY, *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


@pytest.fixture
def signed_file(tmp_path: Path, pki: DevPKI) -> Path:
    issued = pki.issue(G22)
    out = tmp_path / "signed.edxml"
    done = run(
        "sign", INTEROP / "edoc_update.edxml", "--key", issued.key, "--cert", issued.cert, "-o", out
    )
    assert done.returncode == 0, done.stderr
    assert "signed" in done.stdout
    return out


def test_verify_valid_exits_0_and_lists_every_check(signed_file: Path, pki: DevPKI) -> None:
    done = run("verify", signed_file, "--trust", pki.ca.root_cert, "--crl", pki.ca.crl)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "VALID" in done.stdout
    for name in ("xml", "structure", "schema", "signature", "chain", "revocation", "signer_agency"):
        assert name in done.stdout


def test_verify_json_report_shape(signed_file: Path, pki: DevPKI) -> None:
    done = run("verify", signed_file, "--trust", pki.ca.root_cert, "--crl", pki.ca.crl, "--json")
    assert done.returncode == 0, done.stdout
    report = json.loads(done.stdout)
    assert report["valid"] is True
    assert set(report["signer"]) >= {
        "subject",
        "agency_code",
        "issuer",
        "serial",
        "not_before",
        "not_after",
    }
    assert report["signer"]["agency_code"] == G22
    assert report["algorithm"].endswith("#rsa-sha256")
    assert all({"name", "ok", "detail"} <= set(c) for c in report["checks"])
    assert report["errors"] == []


def test_verify_tampered_exits_1_with_code(signed_file: Path, pki: DevPKI, tmp_path: Path) -> None:
    bad = tmp_path / "bad.edxml"
    bad.write_bytes(signed_file.read_bytes().replace(b"1896_QD", b"1897_QD", 1))
    done = run("verify", bad, "--trust", pki.ca.root_cert, "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["valid"] is False
    assert [e["code"] for e in report["errors"]] == ["SIGNATURE_DIGEST_MISMATCH"]


def test_verify_without_trust_is_invalid_not_crash(signed_file: Path) -> None:
    done = run("verify", signed_file, "--json")
    assert done.returncode == 1
    assert [e["code"] for e in json.loads(done.stdout)["errors"]] == ["CERT_UNTRUSTED"]


def test_verify_missing_file_exits_2(tmp_path: Path) -> None:
    done = run("verify", tmp_path / "nope.edxml")
    assert done.returncode == 2
    assert "USAGE_ERROR" in done.stderr


def test_verify_unreadable_trust_file_exits_2(signed_file: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    done = run("verify", signed_file, "--trust", junk)
    assert done.returncode == 2
    assert "error:" in done.stderr


def test_verify_field_sample_says_weak_algorithm(pki: DevPKI) -> None:
    done = run(
        "verify", INTEROP / "edoc_relayed_by_hub.edxml", "--trust", pki.ca.root_cert, "--json"
    )
    assert done.returncode == 1
    assert json.loads(done.stdout)["errors"][0]["code"] == "SIGNATURE_WEAK_ALGORITHM"


def test_allow_weak_setting_from_config_and_environment(pki: DevPKI, tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[verify]\nallow_weak_algorithms = true\n")
    sample = INTEROP / "edoc_relayed_by_hub.edxml"
    by_file = json.loads(run("verify", sample, "--config", config, "--json").stdout)
    by_env = json.loads(
        run(
            "verify", sample, "--json", env={"GATEWAY_VERIFY__ALLOW_WEAK_ALGORITHMS": "true"}
        ).stdout
    )
    for report in (by_file, by_env):
        assert report["weak_algorithm_admitted"] is True
        assert "SIGNATURE_VALUE_MISMATCH" in [e["code"] for e in report["errors"]]


def test_bad_config_key_is_named(tmp_path: Path, signed_file: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[verify]\nallow_weak_algoritms = true\n")
    done = run("verify", signed_file, "--config", config)
    assert done.returncode == 2
    assert "allow_weak_algoritms" in done.stderr


@pytest.mark.parametrize(
    ("name", "code"),
    [("edoc.edxml", "XML_PREFIX_UNDECLARED"), ("edoc_new.edxml", "XML_MALFORMED")],
)
def test_validate_malformed_sample_names_line_and_column(name: str, code: str) -> None:
    done = run("validate", INTEROP / name, "--json")
    assert done.returncode == 1
    error = json.loads(done.stdout)["errors"][0]
    assert error["code"] == code
    assert error["detail"]["line"] >= 1 and error["detail"]["column"] >= 1


def test_validate_good_and_attack(tmp_path: Path) -> None:
    assert run("validate", INTEROP / "status_finish_06.edxml").returncode == 0
    done = run("validate", ATTACKS / "billion_laughs.edxml")
    assert done.returncode == 1
    assert "XML_ENTITY_EXPANSION" in done.stdout


def test_sign_refuses_mismatched_key_and_cert(pki: DevPKI, tmp_path: Path) -> None:
    a = pki.issue(G22)
    b = pki.issue("000.00.00.G12")
    done = run(
        "sign",
        INTEROP / "edoc_update.edxml",
        "--key",
        a.key,
        "--cert",
        b.cert,
        "-o",
        tmp_path / "x",
    )
    assert done.returncode == 2
    assert "does not match" in done.stderr
    assert not (tmp_path / "x").exists()


def test_sign_never_prints_key_material(signed_file: Path, pki: DevPKI) -> None:
    assert b"PRIVATE KEY" not in signed_file.read_bytes()


def test_demo_runs_the_four_tier_network_and_stops_it(tmp_path: Path) -> None:
    """The README's first command, with --keep: four node processes, documents up and down the
    tree, statuses back, the district down and its backlog delivered; Ctrl-C stops every node."""
    keep = tmp_path / "demo"
    lines: list[str] = []
    with subprocess.Popen(
        [GATEWAY, "demo", "--keep", str(keep)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as process:
        watchdog = threading.Timer(180, process.kill)
        watchdog.start()
        try:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line)
                if "Press Ctrl-C to stop it" in line:
                    process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
        finally:
            watchdog.cancel()
            if process.poll() is None:
                process.kill()
    out = "".join(lines)
    assert process.returncode == 0, out
    assert "demo behaved as expected" in out
    assert "FAILED" not in out
    for line in (
        "000.01.01.H49,",  # the commune's document
        "reached 000.00.00.G12",
        "reached 000.00.01.H49",
        "000.00.00.G12's node shows status 06 from 000.01.01.H49, 000.00.01.H49",
        "h49 retried with backoff",
        "the backlog reached 000.01.01.H49",
        "h49's outbox is empty again",
        "stopping the nodes",
    ):
        assert line in out, line
    assert re.search(r"h49-bachdang +delivered", out)
    elapsed = re.search(r"elapsed (\d+\.\d) s", out)
    assert elapsed is not None and float(elapsed.group(1)) < 60, out
    assert "PRIVATE KEY" not in out
    # the files stay, the processes do not
    assert (keep / "h49" / "node.db").exists()
    assert (keep / "pki" / "ca.cert.pem").exists()
    ports = {int(p) for p in re.findall(r"https://127\.0\.0\.1:(\d+)", out)}
    assert len(ports) == 4
    for port in ports:
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass


def test_bench_prints_its_figures() -> None:
    done = run("bench", "envelopes", "--seconds", "0.05")
    assert done.returncode == 0, done.stderr
    for row in ("5 KB sign", "5 KB verify", "1 MB sign", "1 MB verify"):
        assert row in " ".join(done.stdout.split()), row
    assert "parse + structure + XSD + signature + chain + CRL" in done.stdout


def test_serve_refuses_an_unmigrated_database_and_names_the_fix(
    tmp_path: Path, pki: DevPKI
) -> None:
    node = pki.issue("cli-node")
    config = tmp_path / "node.toml"
    config.write_text(
        f"""
[node]
name = "cli-node"
agencies = ["{G22}"]
key = "{node.key}"
cert = "{node.cert}"
[tls]
cert = "{node.cert}"
key = "{node.key}"
[trust]
anchors = ["{pki.ca.root_cert}"]
[database]
url = "sqlite:///fresh.db"
""",
        encoding="utf-8",
    )
    done = run("serve", "--config", config)
    assert done.returncode == 2
    assert "DATABASE_NOT_MIGRATED" in done.stderr
    assert f"gateway db upgrade --config {config}" in done.stderr
    upgraded = run("db", "upgrade", "--config", config)
    assert upgraded.returncode == 0, upgraded.stderr
    assert run("db", "current", "--config", config).returncode == 0


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("demo", "--keep", "{busy}"), id="demo into a folder that is not empty"),
        pytest.param(("deliveries", "requeue", "--config", "{config}"), id="requeue nothing"),
        pytest.param(("db", "current", "--config", "{missing}"), id="db without settings"),
        pytest.param(("audit", "verify", "--config", "{missing}"), id="audit without settings"),
        pytest.param(("pki", "issue", "{busy}"), id="pki issue neither agency nor node"),
    ],
)
def test_every_command_group_fails_the_same_way(tmp_path: Path, args: tuple[str, ...]) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x", encoding="utf-8")
    config = tmp_path / "node.toml"
    config.write_text("", encoding="utf-8")
    where = {"busy": busy, "config": config, "missing": tmp_path / "missing.toml"}
    done = run(*(arg.format(**where) for arg in args))
    assert done.returncode == 2, done.stdout + done.stderr
    assert re.fullmatch(r"error: [A-Z_]+: .+\n", done.stderr), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
