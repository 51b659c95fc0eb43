"""Two gateway processes on one PostgreSQL database drain one backlog: every document once.

A two-node network (:class:`gateway.dev.network.Network`): ``central`` hosting G12 and its child
``h49`` hosting H49, h49 on a fresh PostgreSQL database. With central stopped, H49 pushes a
backlog of documents for G12 into h49. A SECOND ``gateway serve`` process for h49 starts on the
same database (a copy of its settings file with another port: same node, certificate and
database), then central starts and both h49 processes send the backlog at once, in small
batches. Their dispatchers claim rows with ``FOR UPDATE SKIP LOCKED`` and a lease, so:

* every document is in G12's inbox exactly once;
* h49's audit log has exactly one ``relay_out`` entry per document (no row sent by both);
* both processes sent some of it (their ``outbox.sent`` log lines);
* the audit chain, appended to by both processes, still verifies.

It prints one count line::

    outbox[postgresql] sent=600 delivered=600 duplicated=0 lost=0 relay_out=600 by_process=...

Needs ``GATEWAY_TEST_POSTGRES_URL``; skipped with the reason otherwise (CI sets it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import ssl
import subprocess
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from pg import SKIP_REASON, postgres_url, temporary_database
from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool

from gateway.dev.network import GATEWAY, Network, NodeSpec, free_port, wait_for
from gateway.storage.tables import audit_log, deliveries, documents

G12 = "000.00.00.G12"
H49 = "000.00.00.H49"

#: the backlog, pushed by this many client threads
DOCUMENTS = int(os.environ.get("GATEWAY_OUTBOX_PG_DOCUMENTS") or 600)
PUSHERS = 3
SPECS = (
    NodeSpec("central", "central", (G12,)),
    NodeSpec("h49", "province", (H49,), "central", (H49,)),
)
#: small batches, so that both processes get some; short backoffs (central is down at first)
DELIVERY: dict[str, Any] = {
    "batch_size": 20,
    "backoff_initial": 0.5,
    "backoff_max": 2,
    "backoff_jitter": 0.5,
}
DRAIN_TIMEOUT = 240.0


def _client(net: Network, agency: str) -> httpx.Client:
    assert net.ca is not None
    context = ssl.create_default_context(cafile=str(net.ca.root_cert))
    context.load_cert_chain(str(net.pki / f"{agency}.cert.pem"), str(net.pki / f"{agency}.key.pem"))
    return httpx.Client(
        base_url=net.url(net.node_of(agency)),
        verify=context,
        timeout=httpx.Timeout(60.0, connect=5.0),
    )


def _push_all(net: Network, bodies: list[bytes]) -> tuple[list[str], list[str]]:
    """Push every body as H49 from a few threads; (gateway ids of the 202s, problems)."""
    queue = list(reversed(bodies))
    lock = threading.Lock()
    ids: list[str] = []
    problems: list[str] = []

    def pusher() -> None:
        try:
            with _client(net, H49) as client:
                while True:
                    with lock:
                        if not queue:
                            return
                        body = queue.pop()
                    response = client.post(
                        "/api/v1/documents",
                        content=body,
                        headers={"content-type": "application/xml"},
                    )
                    with lock:
                        if response.status_code == 202:
                            ids.append(str(response.json()["id"]))
                        else:
                            problems.append(f"{response.status_code} {response.text[:200]}")
        except BaseException as exc:  # reported by the test, not lost in the thread
            with lock:
                problems.append(repr(exc))

    threads = [threading.Thread(target=pusher, name=f"pusher-{i}") for i in range(PUSHERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a pusher is stuck"
    return ids, problems


def _second_config(config: Path, port: int) -> Path:
    """A copy of a node's settings file listening on ``port`` (same node, cert, database)."""
    text = config.read_text(encoding="utf-8")
    copied, replaced = re.subn(r"(?m)^port = \d+$", f"port = {port}", text)
    assert replaced == 1, text
    second = config.with_name("node-second.toml")
    second.write_text(copied, encoding="utf-8")
    return second


def _healthy(net: Network, port: int) -> bool:
    assert net.ca is not None
    context = ssl.create_default_context(cafile=str(net.ca.root_cert))
    try:
        with httpx.Client(verify=context, timeout=1) as probe:
            return probe.get(f"https://127.0.0.1:{port}/healthz").status_code == 200
    except httpx.TransportError:
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _crashes(log: Path) -> list[str]:
    """Dispatcher runs that died (a deadlock, say): each is a bug even if the next run recovers."""
    return [
        line[:300]
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines()
        if '"outbox.dispatch_crashed"' in line or "DeadlockDetected" in line
    ]


def _sent_by(log: Path) -> int:
    """Packages a process's dispatcher had accepted by central (its ``outbox.sent`` lines)."""
    accepted = 0
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if '"outbox.sent"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "outbox.sent" and entry.get("peer") == "central":
            accepted += int(entry.get("accepted", 0))
    return accepted


@pytest.mark.slow
def test_two_dispatchers_drain_one_backlog_postgresql(tmp_path: Path) -> None:
    server = postgres_url()
    if server is None:
        pytest.skip(SKIP_REASON)
    with ExitStack() as stack:
        url = stack.enter_context(temporary_database(server, "gateway_outbox"))
        net = stack.enter_context(
            Network(
                tmp_path / "net",
                specs=SPECS,
                database_urls={"h49": url},
                settings={"delivery": DELIVERY},
            )
        )
        net.create()
        signed = [
            net.signed_document(H49, [G12], subject=f"Backlog {i + 1}") for i in range(DOCUMENTS)
        ]
        sent = [document_id for document_id, _ in signed]
        began = time.monotonic()

        # 1. the backlog: central is down, h49 keeps every document for it
        net.start("h49", timeout=90)
        gids, problems = _push_all(net, [body for _, body in signed])
        assert not problems and len(gids) == DOCUMENTS, problems[:10]
        backlog = net.client("h49").get(
            "/api/v1/admin/deliveries",
            params={"state": "waiting", "peer": "central", "limit": 1000},
        )
        assert backlog.status_code == 200, backlog.text
        assert len(backlog.json()["items"]) == DOCUMENTS, backlog.text[:2000]
        pushed_in = time.monotonic() - began

        # 2. a second process of h49 on the same database, then central: both drain it
        first = net.nodes["h49"]
        second_port = free_port()
        second_config = _second_config(first.config, second_port)
        second_log = first.folder / "node-second.log"
        with second_log.open("wb") as out:
            second = subprocess.Popen(
                [GATEWAY, "serve", "--config", str(second_config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ},
                start_new_session=True,
            )
        stack.callback(_stop, second)
        try:
            wait_for(
                lambda: second.poll() is not None or _healthy(net, second_port),
                timeout=90,
                every=0.2,
            )
        except TimeoutError:
            pytest.fail(f"the second h49 process did not come up: {second_log.read_text()[-3000:]}")
        assert second.poll() is None, second_log.read_text()[-3000:]
        drain_began = time.monotonic()
        net.start("central", timeout=90)

        def drained() -> list[dict[str, Any]] | None:
            # nothing waits at h49 (documents) nor at central (its "delivered" notices)
            for name in ("h49", "central"):
                waiting = net.client(name).get(
                    "/api/v1/admin/deliveries", params={"state": "waiting", "limit": 10}
                )
                assert waiting.status_code == 200, waiting.text
                if waiting.json()["items"]:
                    return None
            inbox = net.inbox(G12)
            return inbox if len(inbox) >= DOCUMENTS else None

        with contextlib.suppress(TimeoutError):  # the count below says what is missing
            wait_for(drained, timeout=DRAIN_TIMEOUT, every=1.0)
        time.sleep(2.0)  # anything late (a second copy) would land now
        inbox = net.inbox(G12)
        drained_in = time.monotonic() - drain_began
        assert second.poll() is None, second_log.read_text()[-3000:]

        # 3. count: stop both h49 processes first (their logs complete, nothing moves)
        _stop(second)
        net.stop("h49")
        assert first.log is not None
        by_process = {"first": _sent_by(first.log), "second": _sent_by(second_log)}
        crashes = _crashes(first.log) + _crashes(second_log)
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                relay_out = Counter(
                    str(subject)
                    for (subject,) in conn.execute(
                        select(audit_log.c.subject).where(audit_log.c.event == "relay_out")
                    )
                )
                states: dict[str, int] = {
                    f"{kind}:{state}": n
                    for kind, state, n in conn.execute(
                        select(documents.c.kind, deliveries.c.state, func.count())
                        .join(documents, documents.c.seq == deliveries.c.document_seq)
                        .group_by(documents.c.kind, deliveries.c.state)
                    )
                }
        finally:
            engine.dispose()
        verified = subprocess.run(
            [GATEWAY, "audit", "verify", "--config", str(first.config)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    listed = Counter(str(item["document_id"]) for item in inbox if item["kind"] == "document")
    delivered = len(set(sent) & set(listed))
    duplicated = sum(1 for n in listed.values() if n > 1)
    lost = len(set(sent) - set(listed))
    sent_twice = sorted(s for s, n in relay_out.items() if n > 1)
    never_sent = sorted(set(gids) - set(relay_out))
    line = (
        f"outbox[postgresql] sent={len(gids)} delivered={delivered} duplicated={duplicated} "
        f"lost={lost} relay_out={sum(relay_out.values())} sent_twice={len(sent_twice)} "
        f"by_process={by_process}"
    )
    detail = (
        f"outbox[postgresql] pushed_in={pushed_in:.1f}s drained_in={drained_in:.1f}s "
        f"h49_delivery_states={states} audit_verify_exit={verified.returncode}"
    )
    print(line)
    print(detail)
    message = "\n".join([line, detail, *sent_twice[:10], *never_sent[:10], verified.stdout[-2000:]])
    assert not crashes, "\n".join(crashes[:5])
    assert delivered == len(gids) == DOCUMENTS, message
    assert duplicated == lost == 0, message
    assert set(relay_out) == set(gids) and not sent_twice, message
    assert sum(by_process.values()) == DOCUMENTS, message
    assert all(n > 0 for n in by_process.values()), message
    # at h49, each document's delivery is "delivered" (central's notice came back) and each
    # "delivered" notice (one per relay batch and sender) is "acknowledged": the node's own
    # business, never in H49's inbox
    assert states.get("document:delivered") == DOCUMENTS, message
    notices = {k: n for k, n in states.items() if k.startswith("notice:")}
    assert set(notices) == {"notice:acknowledged"}, message
    assert 0 < notices["notice:acknowledged"] <= DOCUMENTS, message
    assert set(states) == {"document:delivered", "notice:acknowledged"}, message
    assert verified.returncode == 0, message + verified.stderr
