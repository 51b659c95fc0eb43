"""A node served by several worker processes (``[server] workers = 2``), as a user runs one.

A two-node network (:class:`gateway.dev.network.Network`): ``central`` hosting G12 and its child
``h49`` hosting H49, h49 run by a supervisor and two workers on SQLite, its dispatcher ticking
only once a minute, so that a document reaches central within seconds only if the worker that
stored it woke the primary's dispatcher through the supervisor's pipe. Then the supervision:
a killed worker is replaced, and a killed supervisor takes its workers with it.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from gateway.api.supervisor import _bind_to
from gateway.dev.network import GATEWAY, Network, NodeSpec, wait_for

G12 = "000.00.00.G12"
H49 = "000.00.00.H49"
SPECS = (
    NodeSpec("central", "central", (G12,)),
    NodeSpec("h49", "province", (H49,), "central", (H49,)),
)
DOCUMENTS = 60
PUSHERS = 3


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    with Network(
        tmp_path / "net",
        specs=SPECS,
        node_settings={"h49": {"server": {"workers": 2}, "delivery": {"tick_interval": 60}}},
    ) as network:
        network.create()
        network.start()
        yield network


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="ascii")
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _events(log: Path, event: str) -> list[dict[str, object]]:
    found = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if f'"{event}"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            found.append(record)
    return found


def _push_all(net: Network, bodies: list[bytes]) -> tuple[list[str], list[str]]:
    """Push every body as H49, a new connection per request (so both workers take some)."""
    queue = list(reversed(bodies))
    lock = threading.Lock()
    ids: list[str] = []
    problems: list[str] = []
    assert net.ca is not None
    context = ssl.create_default_context(cafile=str(net.ca.root_cert))
    context.load_cert_chain(str(net.pki / f"{H49}.cert.pem"), str(net.pki / f"{H49}.key.pem"))

    def pusher() -> None:
        with httpx.Client(
            base_url=net.url("h49"),
            verify=context,
            limits=httpx.Limits(max_keepalive_connections=0),
            timeout=30,
        ) as fresh:
            while True:
                with lock:
                    if not queue:
                        return
                    body = queue.pop()
                try:
                    response = fresh.post(
                        "/api/v1/documents",
                        content=body,
                        headers={"content-type": "application/xml"},
                    )
                except httpx.HTTPError as exc:
                    with lock:
                        problems.append(repr(exc))
                    continue
                with lock:
                    if response.status_code == 202:
                        ids.append(str(response.json()["id"]))
                    else:
                        problems.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=pusher) for _ in range(PUSHERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return ids, problems


@pytest.mark.slow
def test_two_workers_share_the_load_and_wake_the_primary_dispatcher(net: Network) -> None:
    signed = [
        net.signed_document(H49, [G12], subject=f"Hai tiến trình {i}") for i in range(DOCUMENTS)
    ]
    sent = [document_id for document_id, _ in signed]
    began = time.monotonic()
    gids, problems = _push_all(net, [body for _, body in signed])
    assert not problems and len(gids) == DOCUMENTS, problems[:5]

    def arrived() -> list[dict[str, object]] | None:
        inbox = [i for i in net.inbox(G12) if i["kind"] == "document"]
        return inbox if len(inbox) >= DOCUMENTS else None

    # the dispatcher ticks once a minute: only a wake-up gets the documents there this fast
    inbox = wait_for(arrived, timeout=20, every=0.25)
    took = time.monotonic() - began
    time.sleep(1.0)  # a second copy would land now
    inbox = [i for i in net.inbox(G12) if i["kind"] == "document"]
    listed = Counter(str(i["document_id"]) for i in inbox)
    delivered = len(set(sent) & set(listed))
    duplicated = sum(1 for n in listed.values() if n > 1)
    lost = len(set(sent) - set(listed))
    log = net.nodes["h49"].log
    assert log is not None
    by_worker = Counter(record.get("worker") for record in _events(log, "ingest.accepted"))
    senders = Counter(record.get("worker") for record in _events(log, "outbox.sent"))
    print(
        f"workers sent={DOCUMENTS} delivered={delivered} duplicated={duplicated} lost={lost} "
        f"in={took:.1f}s ingests_by_worker={dict(by_worker)} relay_batches_by_worker="
        f"{dict(senders)}"
    )
    assert (delivered, duplicated, lost) == (DOCUMENTS, 0, 0)
    assert set(by_worker) == {0, 1} and sum(by_worker.values()) == DOCUMENTS, by_worker
    assert set(senders) == {0}, "only the primary worker dispatches"


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_the_node_keeps_serving(net: Network) -> None:
    supervisor = net.nodes["h49"].process
    assert supervisor is not None
    workers = _children(supervisor.pid)
    assert len(workers) == 2
    victim = workers[1]
    os.kill(victim, signal.SIGKILL)
    replaced = wait_for(
        lambda: [p for p in _children(supervisor.pid) if p not in workers and _alive(p)] or None,
        timeout=15,
    )
    assert len(replaced) == 1 and not _alive(victim)
    document_id, answer = net.send(H49, [G12], subject="Sau khi một tiến trình chết")
    assert answer["duplicate"] is False
    wait_for(
        lambda: any(i["document_id"] == document_id for i in net.inbox(G12)) or None, timeout=20
    )
    log = net.nodes["h49"].log
    assert log is not None
    died = _events(log, "supervisor.worker_died")
    assert [d.get("pid") for d in died] == [victim]


@pytest.mark.slow
def test_a_killed_supervisor_takes_its_workers_with_it(net: Network) -> None:
    supervisor = net.nodes["h49"].process
    assert supervisor is not None
    workers = _children(supervisor.pid)
    assert len(workers) == 2 and all(_alive(p) for p in workers)
    supervisor.send_signal(signal.SIGKILL)
    supervisor.wait(timeout=15)
    wait_for(lambda: not any(_alive(p) for p in workers) or None, timeout=10)
    with pytest.raises(httpx.TransportError):
        assert net.ca is not None
        trusted = ssl.create_default_context(cafile=str(net.ca.root_cert))
        httpx.get(f"{net.url('h49')}/healthz", verify=trusted, timeout=2)
    # and it starts again on the same port at once
    net.nodes["h49"].process = None
    net.start("h49")
    assert len(_children(net.nodes["h49"].process.pid)) == 2  # type: ignore[union-attr]


_BROKEN_WORKER = """
import sys
from pathlib import Path
from gateway.api import supervisor
from gateway.logs import configure
from gateway.settings import load_settings

configure("info")

def broken(*args, **kwargs):
    raise RuntimeError("this worker cannot start")

supervisor._worker_main = broken
supervisor._RESTART_PAUSE = (0.01, 0.05)
try:
    supervisor.run_node(load_settings(Path(sys.argv[1])), Path(sys.argv[1]))
except supervisor.WorkerFailed as exc:
    print("WORKER_FAILED", exc.code, exc.message)
    sys.exit(3)
"""


@pytest.mark.slow
def test_a_worker_that_cannot_start_stops_the_node_instead_of_looping(tmp_path: Path) -> None:
    with Network(
        tmp_path / "net", specs=SPECS[:1], node_settings={"central": {"server": {"workers": 2}}}
    ) as network:
        network.create()
        config = network.nodes["central"].config
        done = subprocess.run(
            [sys.executable, "-c", _BROKEN_WORKER, str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "WORKER_FAILED" in done.stdout and "5 times in a row" in done.stdout
    assert '"supervisor.giving_up"' in done.stderr
    assert done.stderr.count('"worker.crashed"') >= 5


def test_a_hub_port_another_process_listens_on_stops_the_node_with_a_clear_error(
    tmp_path: Path,
) -> None:
    """``[hub] port`` taken: ``gateway serve`` (two workers) refuses to start, naming the
    setting, instead of serving the node while the hub API's port answers for someone else."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    with (
        closing(taken),
        Network(
            tmp_path / "net",
            specs=SPECS[:1],
            node_settings={
                "central": {"hub": {"enabled": True, "port": port}, "server": {"workers": 2}}
            },
        ) as network,
    ):
        network.create()
        done = subprocess.run(
            [GATEWAY, "serve", "--config", str(network.nodes["central"].config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0
    assert f"CONFIG_INVALID: [hub] cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr


def test_a_port_the_supervisor_bound_is_not_taken_before_its_workers_start() -> None:
    """The supervisor's socket listens as soon as it is bound: another process binding the
    same port (SO_REUSEADDR, as servers do) cannot listen on it in the moment before the
    workers start, so the two never share a port."""
    sock = _bind_to("127.0.0.1", 0, "hub")
    with closing(sock), closing(socket.socket()) as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with pytest.raises(OSError) as taken:
            other.bind(sock.getsockname())
            other.listen()
        assert taken.value.errno == errno.EADDRINUSE
