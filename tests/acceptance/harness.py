"""A real node: `gateway db upgrade` then `gateway serve` in a subprocess, over real HTTPS.

tests/acceptance/conftest.py exposes the fixtures; test modules import the helpers.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from support import DevPKI, make_pki

from gateway.dev.network import free_port
from gateway.dev.nodeconfig import write_node_config
from gateway.trust.signing import SigningKey

GATEWAY = shutil.which("gateway", path=str(Path(sys.executable).parent)) or "gateway"

#: agencies hosted by the test node (Quảng Ninh: provincial People's Committee, 2 departments)
H49 = "000.00.00.H49"
H49_A = "000.00.01.H49"
H49_B = "000.00.02.H49"
HOSTED = (H49, H49_A, H49_B)


@dataclass
class RunningNode:
    """A node process and what a test needs to talk to it."""

    base_url: str
    directory: Path
    config: Path
    pki: DevPKI
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    clients: dict[str, httpx.Client] = field(default_factory=dict)

    def client(self, agency: str | None) -> httpx.Client:
        """An HTTPS client presenting ``agency``'s certificate (None: no certificate)."""
        key = agency or "-"
        if key not in self.clients:
            context = ssl.create_default_context(cafile=str(self.pki.ca.root_cert))
            if agency is not None:
                issued = self.pki.issue(agency)
                context.load_cert_chain(str(issued.cert), str(issued.key))
            self.clients[key] = httpx.Client(base_url=self.base_url, verify=context, timeout=30)
        return self.clients[key]

    def key(self, agency: str) -> SigningKey:
        return self.pki.key(agency)

    def start(self) -> None:
        self.log = self.directory / f"node-{int(time.time() * 1000)}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [GATEWAY, "serve", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ},
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"node exited: {self.log.read_text()[-3000:]}")
            try:
                context = ssl.create_default_context(cafile=str(self.pki.ca.root_cert))
                with httpx.Client(verify=context, timeout=1) as probe:
                    if probe.get(f"{self.base_url}/healthz").status_code == 200:
                        return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"node did not come up: {self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        for client in self.clients.values():
            client.close()
        self.clients.clear()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def write_config(
    directory: Path, pki: DevPKI, *, port: int, database_url: str, workers: int = 1
) -> Path:
    return write_node_config(
        directory / "node.toml",
        name="test-node",
        agencies=HOSTED,
        node=pki.issue("test-node"),
        ca=pki.ca,
        database_url=database_url,
        port=port,
        extra={
            "limits": {"max_envelope_bytes": 60_000_000, "max_recipients": 5},
            "audit": {"checkpoint_interval": 2},
            "trust": {"reload_interval": 1},
            "logging": {"level": "info"},
            "server": {"workers": workers},
        },
    )


def upgrade(config: Path) -> None:
    done = subprocess.run(
        [GATEWAY, "db", "upgrade", "--config", str(config)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def node_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    return make_pki(tmp_path_factory.mktemp("node-pki"))


def _postgres_url() -> str | None:
    return os.environ.get("GATEWAY_TEST_POSTGRES_URL")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def node(
    request: pytest.FixtureRequest, node_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningNode]:
    """A running node on SQLite, and on PostgreSQL when GATEWAY_TEST_POSTGRES_URL is set."""
    directory = tmp_path_factory.mktemp(f"node-{request.param}")
    cleanup = None
    if request.param == "sqlite":
        url = "sqlite:///node.db"
    else:
        base = _postgres_url()
        if base is None:
            pytest.skip("GATEWAY_TEST_POSTGRES_URL is not set")
        from pg import temporary_database  # tests/pg.py

        cleanup = temporary_database(base)
        url = cleanup.__enter__()
    port = free_port()
    config = write_config(directory, node_pki, port=port, database_url=url)
    upgrade(config)
    running = RunningNode(
        base_url=f"https://127.0.0.1:{port}", directory=directory, config=config, pki=node_pki
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()
        if cleanup is not None:
            cleanup.__exit__(None, None, None)
