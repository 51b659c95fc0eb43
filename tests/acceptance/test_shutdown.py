"""A clean stop is clean: SIGTERM with peers' kept-alive connections open logs no error.

A neighbour or a DMS keeps its TLS connection to a node open between requests (a new handshake
costs ~5 ms). At SIGTERM uvicorn closes such an idle connection, and a TLS close waits for the
peer's answer, which an idle client never sends: the stop used to wait out the whole graceful
timeout and log ``Cancel 0 running task(s), timeout graceful shutdown exceeded`` every time.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from harness import H49, RunningNode, free_port, upgrade, write_config
from support import DevPKI


def _errors(log: Path) -> list[dict[str, object]]:
    out = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("level") in ("error", "critical"):
            out.append(event)
    return out


@pytest.mark.slow
def test_sigterm_with_idle_keep_alive_connections_stops_without_an_error(
    node_pki: DevPKI, tmp_path: Path
) -> None:
    port = free_port()
    config = write_config(tmp_path, node_pki, port=port, database_url="sqlite:///node.db")
    upgrade(config)
    node = RunningNode(
        base_url=f"https://127.0.0.1:{port}", directory=tmp_path, config=config, pki=node_pki
    )
    node.start()
    assert node.process is not None and node.log is not None
    try:
        # two kept-alive connections, each idle after its request: an agency's and an
        # anonymous one
        assert node.client(H49).get("/api/v1/inbox").status_code == 200
        assert node.client(None).get("/healthz").status_code == 200
        node.process.send_signal(signal.SIGTERM)
        node.process.wait(timeout=30)
    finally:
        node.stop()
    text = node.log.read_text(encoding="utf-8", errors="replace")
    assert "timeout graceful shutdown exceeded" not in text
    assert _errors(node.log) == []
