"""What a connection may cost a node: authenticate first, head and body limits, read timeouts.

A real node app over real HTTPS (tests/integration/served.py) with the gateway's own uvicorn
protocol classes, under both parsers uvicorn can pick (httptools, h11). Requests httpx will not
send (huge chunked bodies, megabytes of headers, slow trickles) go over raw TLS sockets.
"""

from __future__ import annotations

import json
import select
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from served import H49, NODE, PARENT, STRANGER, Served, serve_node
from support import DevPKI

from gateway.api.lanes import CallerQueues
from gateway.api.limits import HTTPLimits
from gateway.api.server import TLSH11Protocol, TLSHttpToolsProtocol, make_config
from gateway.network.wire import RELAY_CONTENT_TYPE

#: short timeouts, so that the timeout tests take about a second
TIMEOUT = 0.5
SERVER = {"header_timeout": TIMEOUT, "body_timeout": TIMEOUT, "max_header_bytes": 8192}
LIMITS = {"max_json_bytes": 4096, "max_json_depth": 16}


@pytest.fixture(scope="module", params=["httptools", "h11"])
def served(
    request: pytest.FixtureRequest, pki: DevPKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp(f"limits-{request.param}")
    with serve_node(pki, directory, http=request.param, server=SERVER, limits=LIMITS) as served:
        yield served


# --- raw HTTP over TLS -------------------------------------------------------------------------


class Answer:
    """One HTTP response read off a raw socket."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def early(sock: ssl.SSLSocket) -> bytes | None:
    """What the server has sent so far, without waiting; None when nothing yet.

    Not ``select()`` alone: TLS 1.3 session tickets make the socket readable with no answer.
    """
    if not (select.select([sock], [], [], 0)[0] or sock.pending()):
        return None
    sock.setblocking(False)
    try:
        return sock.recv(65536)
    except (ssl.SSLWantReadError, BlockingIOError):
        return None
    except (ConnectionError, ssl.SSLError):
        return b""
    finally:
        sock.setblocking(True)


def read_answer(sock: ssl.SSLSocket, *, timeout: float = 10.0, data: bytes = b"") -> Answer | None:
    """The next response on ``sock`` (after ``data`` already read), or None when the server
    closed without one."""
    sock.settimeout(timeout)
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(65536)
        except (ConnectionError, ssl.SSLError):
            chunk = b""
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return Answer(status, headers, body[:length])


def closed(sock: ssl.SSLSocket, *, timeout: float = 5.0) -> bool:
    """True when the server closed ``sock`` (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False


def assert_error(answer: Answer | None, status: int, code: str) -> dict[str, Any]:
    assert answer is not None, "the server closed without answering"
    assert answer.status == status, (answer.status, answer.body[:300])
    body = answer.json()
    assert set(body) == {"code", "message", "detail"}, body
    assert body["code"] == code, body
    return dict(body)


def stream_chunked(
    sock: ssl.SSLSocket, head: bytes, *, total: int, chunk: int = 64 * 1024
) -> tuple[Answer | None, int]:
    """Send ``head`` then a chunked body of ``total`` bytes, watching for an early answer.

    Returns the answer and how many body bytes were sent before it came.
    """
    sock.sendall(head)
    piece = b"%x\r\n%s\r\n" % (chunk, b"[" * chunk)
    sent = 0
    while sent < total:
        data = early(sock)
        if data is not None:
            return read_answer(sock, data=data), sent
        try:
            sock.sendall(piece)
        except (ConnectionError, ssl.SSLError):
            break
        sent += chunk
    return read_answer(sock), sent


def post_head(path: str, *, content_type: str = "application/json", **headers: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Content-Type: {content_type}",
        "Transfer-Encoding: chunked",
        *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


# --- authenticate first ------------------------------------------------------------------------

#: a body far larger than any limit: the refusals below must come long before its end
HUGE = 256 * 1024 * 1024
REQUEUE = "/api/v1/admin/deliveries/requeue"


@pytest.mark.parametrize(
    ("who", "status", "code"),
    [(None, 401, "AUTH_REQUIRED"), (H49, 403, "AUTH_FORBIDDEN"), (PARENT, 403, "AUTH_FORBIDDEN")],
)
def test_a_huge_chunked_body_to_an_admin_route_is_refused_before_it_is_read(
    served: Served, who: str | None, status: int, code: str
) -> None:
    with served.raw(who) as sock:
        answer, sent = stream_chunked(sock, post_head(REQUEUE), total=HUGE)
        assert_error(answer, status, code)
        assert answer is not None and answer.headers.get("connection") == "close"
        # answered on the head: the server did not wait for (or keep) the body
        assert sent < HUGE // 8, f"answered only after {sent} of {HUGE} body bytes"
        assert closed(sock)


def test_the_admins_json_body_is_capped_while_it_streams(served: Served) -> None:
    with served.raw(NODE) as sock:
        answer, sent = stream_chunked(sock, post_head(REQUEUE), total=HUGE)
        body = assert_error(answer, 413, "REQUEST_BODY_TOO_LARGE")
        assert body["detail"]["limit"] == LIMITS["max_json_bytes"]
        assert sent < HUGE // 8


def test_the_admins_json_body_is_depth_checked_before_it_is_parsed(served: Served) -> None:
    depth = LIMITS["max_json_depth"] + 1
    nested = b'{"ids":' + b"[" * depth + b"1" + b"]" * depth + b"}"
    response = served.client(NODE).post(
        REQUEUE, content=nested, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "REQUEST_JSON_TOO_DEEP"
    # and a valid body of the same route works
    ok = served.client(NODE).post(REQUEUE, json={"ids": [123456]})
    assert ok.status_code in (200, 404), ok.text


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"\n", b'{"v":1,"items":' + b"[" * 5000 + b"\n", b"\xff\xfe\n"],
    ids=["deep", "deep unbalanced", "not utf-8"],
)
def test_a_node_outside_the_directory_cannot_reach_the_relay_parser(
    served: Served, body: bytes
) -> None:
    response = served.client(STRANGER).post(
        "/api/v1/relay", content=body, headers={"content-type": RELAY_CONTENT_TYPE}
    )
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "RELAY_PEER_UNKNOWN"


def test_a_non_neighbours_huge_relay_is_refused_before_it_is_read(served: Served) -> None:
    head = post_head("/api/v1/relay", content_type=RELAY_CONTENT_TYPE)
    with served.raw(STRANGER) as sock:
        answer, sent = stream_chunked(sock, head, total=HUGE)
        assert_error(answer, 403, "RELAY_PEER_UNKNOWN")
        assert sent < HUGE // 8


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"[" * 100_000 + b"\n", "REQUEST_JSON_TOO_DEEP"),
        (b'{"v":1,"items":' + b"[" * 100_000 + b"\n", "REQUEST_JSON_TOO_DEEP"),
        (b'{"a":"' + b"[" * 100_000 + b'"}\n', "RELAY_MALFORMED"),
        (b'{"v":1,"items":[{"kind":["document"],"size":0,"hops":[]}]}\n', "RELAY_MALFORMED"),
        (b'{"v":1,"items":[{"kind":"document","size":0,"hops":[1],"receipts":[]}]}\n', None),
        (b'{"v":1,"items":[{"kind":"document","size":1e400,"hops":[]}]}\n', "RELAY_MALFORMED"),
        (b'{"v":1,"items":[{"kind":"document","size":' + b"9" * 5000 + b"}]}\n", None),
        (b"\xff\xfe{}\n", "RELAY_MALFORMED"),
        (b"no newline at all", "RELAY_MALFORMED"),
    ],
    ids=[
        "deep",
        "deep items",
        "brackets in a string",
        "unhashable kind",
        "hop not an object",
        "infinite size",
        "size of 5000 digits",
        "not utf-8",
        "no manifest",
    ],
)
def test_a_neighbours_hostile_relay_framing_gets_a_stable_code(
    served: Served, body: bytes, code: str | None
) -> None:
    response = served.client(PARENT).post(
        "/api/v1/relay", content=body, headers={"content-type": RELAY_CONTENT_TYPE}
    )
    assert 400 <= response.status_code < 500, response.text
    answer = response.json()
    assert set(answer) == {"code", "message", "detail"}
    assert answer["code"] == (code or "RELAY_MALFORMED")


# --- the request head ----------------------------------------------------------------------------


def get_head(*extra: str) -> bytes:
    lines = ["GET /healthz HTTP/1.1", "Host: 127.0.0.1", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@pytest.mark.parametrize(
    "head",
    [
        get_head("X-Big: " + "a" * 9000),
        get_head(*(f"X-H{i}: {i}" for i in range(101))),
        get_head(*(f"X-H{i}: {'b' * 100}" for i in range(90))),
        b"GET /healthz?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ],
    ids=["one huge header", "too many headers", "many long headers", "huge url"],
)
def test_an_oversized_head_is_refused_with_431(served: Served, head: bytes) -> None:
    with served.raw(None) as sock:
        sock.sendall(head)
        assert_error(read_answer(sock), 431, "REQUEST_HEADERS_TOO_LARGE")
        assert closed(sock)


def test_a_head_growing_without_end_is_refused_before_it_completes(served: Served) -> None:
    with served.raw(None) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: ")
        sent = 0
        answer = None
        while sent < 4 * 1024 * 1024:
            data = early(sock)
            if data is not None:
                answer = read_answer(sock, data=data)
                break
            try:
                sock.sendall(b"z" * 4096)
            except (ConnectionError, ssl.SSLError):
                answer = read_answer(sock)
                break
            sent += 4096
        assert_error(answer, 431, "REQUEST_HEADERS_TOO_LARGE")
        assert sent < 1024 * 1024


def test_a_head_within_the_limits_is_served(served: Served) -> None:
    with served.raw(None) as sock:
        sock.sendall(get_head(*(f"X-H{i}: {i}" for i in range(90))))
        answer = read_answer(sock)
        assert answer is not None and answer.status == 200 and answer.json() == {"status": "ok"}


# --- read timeouts -------------------------------------------------------------------------------


def test_a_slowloris_head_is_timed_out(served: Served) -> None:
    with served.raw(None) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        answer = None
        # one header every tenth of a second: never complete, never idle
        while time.monotonic() - started < 20 * TIMEOUT:
            time.sleep(0.1)
            data = early(sock)
            if data is not None:
                answer = read_answer(sock, data=data)
                break
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except (ConnectionError, ssl.SSLError):
                answer = read_answer(sock)
                break
        body = assert_error(answer, 408, "REQUEST_TIMEOUT")
        assert body["detail"]["part"] == "head"
        assert closed(sock)


def test_a_connection_that_never_sends_a_head_is_timed_out(served: Served) -> None:
    with served.raw(None) as sock:
        body = assert_error(read_answer(sock, timeout=20 * TIMEOUT), 408, "REQUEST_TIMEOUT")
        assert body["detail"]["part"] == "head"
        assert closed(sock)


def test_a_stalled_body_is_timed_out(served: Served) -> None:
    with served.raw(H49) as sock:
        sock.sendall(
            b"POST /api/v1/documents HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/xml\r\nContent-Length: 100000\r\n\r\n<edXML>"
        )
        body = assert_error(read_answer(sock, timeout=20 * TIMEOUT), 408, "REQUEST_TIMEOUT")
        assert body["detail"]["part"] == "body"
        assert closed(sock)
    # the node is fine, and the caller's upload queue was released
    assert served.client(H49).get("/api/v1/inbox").status_code == 200
    response = served.client(H49).post(
        "/api/v1/documents", content=b"<x/>", headers={"content-type": "application/xml"}
    )
    assert 400 <= response.status_code < 500, response.text


def test_an_idle_kept_alive_connection_outlives_the_head_timeout(served: Served) -> None:
    # the head timeout runs from a request's first byte; idling between requests is the
    # keep-alive timer's business (30 s)
    client = served.client(H49)
    first = client.get("/api/v1/inbox")
    time.sleep(3 * TIMEOUT)
    second = client.get("/api/v1/inbox")
    assert first.status_code == second.status_code == 200
    port = {first.extensions["network_stream"].get_extra_info("client_addr")[1]}
    port.add(second.extensions["network_stream"].get_extra_info("client_addr")[1])
    assert len(port) == 1, "the kept-alive connection was closed"


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_make_config_gives_either_protocol_the_server_settings(
    http: str, pki: DevPKI, tmp_path: Path
) -> None:
    from gateway.dev.nodeconfig import write_node_config
    from gateway.settings import load_settings

    config = write_node_config(
        tmp_path / "node.toml",
        name=NODE,
        agencies=[H49],
        node=pki.issue(NODE),
        ca=pki.ca,
        database_url="sqlite:///unused.db",
        extra={"server": {"max_header_bytes": 1234, "max_headers": 7, "header_timeout": 2.5}},
    )
    settings = load_settings(config, environ={})
    protocol = make_config(object(), settings, http=http).http  # type: ignore[arg-type]
    assert isinstance(protocol, type)
    assert issubclass(protocol, TLSHttpToolsProtocol if http == "httptools" else TLSH11Protocol)
    assert protocol.limits == HTTPLimits(  # type: ignore[attr-defined]
        max_header_bytes=1234, max_headers=7, header_timeout=2.5, body_timeout=30.0
    )


# --- fairness ------------------------------------------------------------------------------------


def test_one_callers_burst_puts_one_upload_ahead_of_another_caller() -> None:
    """Eight uploads of a hostile caller queued first; another caller's upload waits for at
    most one of them at the shared lane, and the per-caller queues are gone afterwards."""
    order: list[str] = []
    queues = CallerQueues()

    async def upload(caller: str, lane: anyio.CapacityLimiter) -> None:
        async with queues.turn(caller), lane:
            order.append(caller)
            await anyio.sleep(0.01)

    async def main() -> None:
        lane = anyio.CapacityLimiter(1)
        async with anyio.create_task_group() as group:
            for _ in range(8):
                group.start_soon(upload, "agency:HOSTILE", lane)
            await anyio.sleep(0)  # the burst is queued first
            group.start_soon(upload, "agency:OTHER", lane)

    anyio.run(main)
    assert order.index("agency:OTHER") <= 2, order
    assert order.count("agency:HOSTILE") == 8
    assert len(queues) == 0, "a caller's queue outlived its last upload"
