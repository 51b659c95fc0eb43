"""The SDK stand-in (tests/hubsdk.py) signs, builds, sends and parses as HUB-PROTOCOL.md says.

The wire tests run it against a small recording server in a thread (plain HTTP, and HTTPS with a
certificate made here), which keeps every request's raw head and body and answers from a script.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import hmac
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import BufferedReader
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hubsdk import (
    SDK_VERSION,
    USER_AGENT,
    HubService,
    NoResponse,
    ParamMap,
    Tamper,
    hash_file,
    hash_header,
    parse_response,
    sdk_timestamp,
    sign_entries,
)
from support import INTEROP

SECRET = "example-secret"
SYSTEMID = "vxp.example.01"
G22, H41 = "000.00.00.G22", "000.00.00.H41"
EDOC = (INTEROP / "edoc.edxml").read_bytes()
SIGN_HEADER_31 = (
    '{"XroadVnpt-systemid":"vxp.example.01","XroadVnpt-timestamp":"22112026T105836+0908",'
    '"XroadVnpt-Content-Type":"application/json"}'
)
TRIO = {"status": "OK", "ErrorCode": "0", "ErrorDesc": "OK"}


# --- a recording server ----------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the server read it."""

    conn: int
    method: str
    path: str
    head: bytes
    body: bytes
    sent_100: bool

    @property
    def headers(self) -> list[tuple[str, str]]:
        lines = self.head.decode("latin-1").split("\r\n")[1:]
        return [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines if line)]

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def raw_header(self, name: str) -> bytes:
        match = re.search(rb"\r\n" + name.encode() + rb": ([^\r\n]*)", self.head)
        assert match, name
        return match[1]

    @property
    def signed(self) -> dict[str, str]:
        loaded: dict[str, str] = json.loads(self.raw_header("XroadVnpt-sign-header"))
        return loaded

    def hmac_ok(self, secret: str = SECRET) -> bool:
        mac = hmac.new(secret.encode(), self.raw_header("XroadVnpt-sign-header"), hashlib.sha256)
        return hmac.compare_digest(mac.hexdigest(), self.header("XroadVnpt-hash-header") or "")


#: an answer's bytes, or None to close the connection without one
Reply = Callable[[Seen], bytes | None]


def answer(
    payload: object, status: int = 200, headers: Sequence[tuple[str, str]] = (), gz: bool = False
) -> bytes:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    if gz:
        body = gzip.compress(body)
        headers = [*headers, ("Content-Encoding", "gzip")]
    lines = [f"HTTP/1.1 {status} Whatever", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def script(*replies: bytes | None) -> Reply:
    """Answer the n-th request with the n-th reply; the last one repeats."""
    queue = list(replies)
    return lambda seen: queue.pop(0) if len(queue) > 1 else queue[0]


def trio_with(**extra: object) -> Reply:
    return lambda seen: answer({**TRIO, **extra})


class Server:
    """A threaded HTTP/1.1 server that records requests and answers from ``reply``."""

    def __init__(
        self,
        reply: Reply | None = None,
        *,
        send_100: bool = True,
        answer_early: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.reply = reply or trio_with(DocId="d1")
        self.send_100, self.answer_early, self.tls = send_100, answer_early, tls
        self.seen: list[Seen] = []
        self.ended: set[int] = set()  # connections the client closed
        self.release = threading.Event()  # for replies that hold their answer
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)  # accept() does not wake when another thread closes it
        self.port = self._listener.getsockname()[1]
        self._spawn(self._accept)

    def url(self, path: str = "/vdxp", host: str = "127.0.0.1") -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        n = 0
        while not self.release.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._socks.append(sock)
            self._spawn(self._serve, sock, n)
            n += 1

    def _serve(self, sock: socket.socket, n: int) -> None:
        try:
            if self.tls:
                sock = self.tls.wrap_socket(sock, server_side=True)
                self._socks.append(sock)
            with sock.makefile("rb") as stream:
                while self._one(sock, stream, n):
                    pass
        except (OSError, ValueError):
            pass
        finally:
            sock.close()

    def _one(self, sock: socket.socket, stream: BufferedReader, n: int) -> bool:
        head = stream.readline()
        if not head:
            self.ended.add(n)
            return False
        while (line := stream.readline()) not in (b"\r\n", b""):
            head += line
        method, path = head.decode("latin-1").split(" ")[:2]
        seen = Seen(n, method, path, head=head, body=b"", sent_100=False)
        expect = (seen.header("Expect") or "").lower() == "100-continue"
        if expect and self.answer_early:
            self.seen.append(seen)
            out = self.reply(seen)
            if out is not None:
                sock.sendall(out)
            return False
        if expect and self.send_100:
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            seen.sent_100 = True
        seen.body = stream.read(int(seen.header("Content-Length") or 0))
        self.seen.append(seen)
        out = self.reply(seen)
        if out is None:
            return False
        sock.sendall(out)
        return b"connection: close" not in out.split(b"\r\n\r\n")[0].lower()

    def wait_ended(self, n: int, seconds: float = 2.0) -> bool:
        deadline = time.monotonic() + seconds
        while n not in self.ended and time.monotonic() < deadline:
            time.sleep(0.01)
        return n in self.ended

    def close(self) -> None:
        self.release.set()
        self._listener.close()
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(2)


@pytest.fixture
def server() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(*args: object, **kwargs: object) -> Server:
        servers.append(Server(*args, **kwargs))  # type: ignore[arg-type]
        return servers[-1]

    yield make
    for each in servers:
        each.close()


@pytest.fixture
def service() -> Iterator[Callable[..., HubService]]:
    services: list[HubService] = []

    def make(endpoint: str, **kwargs: object) -> HubService:
        kwargs.setdefault("timeout", 5.0)
        kwargs.setdefault("continue_timeout", 0.3)
        services.append(HubService(endpoint, SYSTEMID, SECRET, **kwargs))  # type: ignore[arg-type]
        return services[-1]

    yield make
    for each in services:
        each.close()


def key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (IP SAN only): ca, cert, key."""
    folder = tmp_path_factory.mktemp("hubsdk-tls")
    now = datetime.now(UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hubsdk test CA")])

    def builder(subject: x509.Name, public: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        )

    ca = (
        builder(ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(key_usage(cert_sign=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hub test server")])
    leaf = (
        builder(leaf_name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


# --- signing, hashing, the map ---------------------------------------------------------------


def test_the_hmac_test_vector_of_section_3_1() -> None:
    entries = [
        ("systemid", SYSTEMID),
        ("timestamp", "22112026T105836+0908"),
        ("Content-Type", "application/json"),
    ]
    assert sign_entries(entries, SECRET) == [
        ("XroadVnpt-sign-header", SIGN_HEADER_31),
        ("XroadVnpt-sign-header-key", "systemid;timestamp;Content-Type"),
        (
            "XroadVnpt-hash-header",
            "c1224f9dc1d2f6f2a9f0be01f2d8e9de5edd28dd31c0443ecfac15f189597f1d",
        ),
        ("XroadVnpt-version", SDK_VERSION),
    ]
    assert hash_header("other-secret", SIGN_HEADER_31) != hash_header(SECRET, SIGN_HEADER_31)


def test_hash_file_is_unpadded_hex_of_sha256() -> None:
    assert len(EDOC) == 8363
    assert hash_file(EDOC) == "7e4a746b898d9b54749de74b58e7bd24c8b86287a386653f6593adf9db5eb"
    assert hashlib.sha256(EDOC).hexdigest() == (
        "7e4a746b898d9b054749de74b58e7bd24c8b86287a3806653f06593adf9db5eb"
    )


def test_the_timestamp_is_ddmmyyyy_t_hhmmss_plus_milliseconds_on_four_digits() -> None:
    assert sdk_timestamp(datetime(2026, 11, 22, 10, 58, 36, 908_000)) == "22112026T105836+0908"
    assert sdk_timestamp(datetime(2025, 1, 2, 3, 4, 5, 7_999)) == "02012025T030405+0007"
    stamp = HubService("http://h/", SYSTEMID, SECRET).timestamp
    assert re.fullmatch(r"\d{8}T\d{6}\+0\d{3}", stamp)
    assert abs(datetime.strptime(stamp[:15], "%d%m%YT%H%M%S") - datetime.now()) < timedelta(
        seconds=5
    )


def test_parameter_values_are_stringified_and_keys_keep_their_case() -> None:
    pmap = ParamMap(SYSTEMID, timestamp="t")
    pmap.update('{"docId":123,"docid":"x","n":1.50,"b":true,"to":["a","b"],"f":"/dữ liệu"}')
    pmap.update({"level": 1})
    assert pmap.items() == [
        ("systemid", SYSTEMID),
        ("timestamp", "t"),
        ("docId", "123"),
        ("docid", "x"),
        ("n", "1.50"),
        ("b", "true"),
        ("to", '["a","b"]'),
        ("f", "/dữ liệu"),
        ("level", "1"),
    ]


def test_the_map_is_never_cleared_and_the_timestamp_never_changes() -> None:
    svc = HubService("http://h/vdxp", SYSTEMID, SECRET)
    first = svc.prepare("getEdoc", '{"docId":"d1","filePath":"/in"}', body=b"{}")
    svc.prepare("updateStatus", {"docId": "d2", "status": "done"}, body=b"{}")
    inbox = svc.prepare("getReceivedEdocList", {"servicetype": "eDoc", "messagetype": "status"})
    assert dict(inbox.signed) == {
        "systemid": SYSTEMID,
        "timestamp": svc.timestamp,
        "Content-Type": "application/json",
        "docId": "d2",
        "filePath": "/in",
        "status": "done",
        "servicetype": "eDoc",
        "messagetype": "status",
    }
    assert dict(first.signed)["timestamp"] == svc.timestamp == svc.params["timestamp"]


def test_a_service_object_per_call_sends_no_stale_keys_and_a_new_timestamp() -> None:
    svc = HubService("http://h/vdxp", SYSTEMID, SECRET, reuse=False)
    first = dict(svc.prepare("getEdoc", {"docId": "d1"}, body=b"{}").signed)
    time.sleep(0.002)
    second = dict(svc.prepare("getReceivedEdocList", {"messagetype": "edoc"}).signed)
    assert "docId" not in second
    assert first["timestamp"] != second["timestamp"]


def test_header_order_is_shuffled_per_call_from_the_seed_and_signed_in_that_order() -> None:
    def orders(seed: int) -> list[list[str]]:
        svc = HubService("http://h/vdxp", SYSTEMID, SECRET, seed=seed)
        params = {"docId": "d", "status": "done", "a": "1", "b": "2"}
        return [[k for k, _ in svc.prepare("updateStatus", params).signed] for _ in range(6)]

    assert orders(1) == orders(1) != orders(2)
    assert len({tuple(order) for order in orders(1)}) > 1
    req = HubService("http://h/vdxp", SYSTEMID, SECRET, seed=3).prepare("getEdoc", {"docId": "d"})
    wire = [k.removeprefix("XroadVnpt-") for k, _ in req.headers if k.startswith("XroadVnpt-")]
    keys = [k for k, _ in req.signed]
    assert wire[: len(keys)] == keys
    assert list(json.loads(req.header("XroadVnpt-sign-header") or "")) == [
        "XroadVnpt-" + k for k in keys
    ]
    assert req.header("XroadVnpt-sign-header-key") == ";".join(keys)


def test_the_url_is_endpoint_slash_operation_and_only_apache_folds_slashes() -> None:
    svc = HubService("https://hub.example:8443/vdxp/", SYSTEMID, SECRET)
    assert svc.prepare("sendEdoc", stack="jdk").path == "/vdxp//sendEdoc"
    assert svc.prepare("getEdoc").path == "/vdxp/getEdoc"
    assert svc.prepare("getEdoc").header("Host") == "hub.example:8443"
    raw = HubService("http://h//", SYSTEMID, SECRET, apache_collapse_slashes=False)
    assert raw.prepare("getEdoc").path == "///getEdoc"
    assert HubService("http://h//", SYSTEMID, SECRET).prepare("getEdoc").path == "/getEdoc"


# --- the SDK's response parser ---------------------------------------------------------------

FIELDS = ("status", "error_code", "error_desc", "doc_id", "data", "count")
NONE: dict[str, object] = dict.fromkeys(FIELDS)


def ok(**fields: object) -> dict[str, object]:
    return NONE | {"status": "OK", "error_code": "0", "error_desc": "OK"} | fields


def fail(**fields: object) -> dict[str, object]:
    return NONE | {"status": "FAIL", "error_code": "1", "error_desc": "x"} | fields


def body(**fields: object) -> str:
    return json.dumps({**TRIO, **fields})


FAIL = '{"status":"FAIL","ErrorCode":"1","ErrorDesc":"x"'


@pytest.mark.parametrize(
    ("operation", "text", "expected"),
    [
        (
            "sendEdoc",
            '{"status":"OK","ErrorCode":"0","ErrorDesc":"Th\\u00e0nh c\\u00f4ng","DocId":"a1"}',
            ok(error_desc="Thành công", doc_id="a1"),
        ),
        ("sendEdoc", FAIL + ',"DocId":""}', fail(doc_id="")),
        ("sendEdoc", body(), NONE),  # no DocId
        (
            "sendEdoc",
            '{"status":"OK","ErrorCode":0,"ErrorDesc":"OK","DocId":123}',
            ok(doc_id="123"),
        ),
        ("updateStatus", '{"status":"OK","ErrorCode":0.0,"ErrorDesc":"OK"}', ok(error_code="0.0")),
        (
            "updateStatus",
            '{\n  "status": ["OK"],\n  "ErrorCode": "0",\n  "ErrorDesc": "OK"\n}',
            ok(),
        ),
        ("updateStatus", '{"status":["OK","OK"],"ErrorCode":"0","ErrorDesc":"OK"}', NONE),
        ("updateStatus", '{"status":"OK","errorCode":"0","ErrorDesc":"OK"}', NONE),
        ("updateStatus", '{"status":"OK","ErrorCode":"0","ErrorDesc":null}', NONE),
        ("updateStatus", '{"status":"OK","ErrorCode":"0","ErrorDesc":{}}', NONE),
        ("updateStatus", body(extra=None), ok()),  # a null the SDK does not read is harmless
        ("updateStatus", "<html>502 Bad Gateway</html>", NONE),
        ("updateStatus", "", NONE),
        (
            "getReceivedEdocList",
            "<html>502 Bad Gateway</html>",
            NONE | {"status": "OK", "data": []},
        ),
        ("getReceivedEdocList", "", NONE),
        ("getReceivedEdocList", body(), ok()),
        ("getReceivedEdocList", body(data=None), ok()),
        (
            "getReceivedEdocList",
            body(data=[{"docId": 7, "to": ["x"], "other": None}]),
            ok(data=[{"docId": "7", "to": "x"}]),
        ),
        ("getReceivedEdocList", body(data=[{"docId": "a"}, {"docId": None}]), ok()),
        ("getReceivedEdocList", body(data={"docId": "a"}), ok()),
        ("getSentEdocList", body(data=[{"toCode": ["a", "b"]}]), ok()),
        ("getSentEdocList", body(data=[{"toCode": "a"}]), ok(data=[{"toCode": "a"}])),
        (
            "getAgenciesList",
            body(data=[{"code": "G22", "pid": 1}]),
            ok(data=[{"code": "G22", "pid": "1"}]),
        ),
        ("getAgenciesList", body(data=[{"code": "G22", "pid": None}]), NONE),
        ("countReceiveEdoc", body(count=5), ok(count=5)),
        ("countReceiveStatus", FAIL + "}", fail()),
        ("countReceiveStatus", body(), NONE),
        ("getEdoc", FAIL + ',"data":null}', fail()),
        ("getEdoc", body(), NONE),
    ],
)
def test_answers_are_read_as_the_sdk_reads_them(
    operation: str, text: str, expected: dict[str, object]
) -> None:
    result = parse_response(operation, text, text.encode())
    assert {name: getattr(result, name) for name in FIELDS} == expected


@pytest.mark.parametrize(
    "encode",
    [
        base64.b64encode,
        lambda b: base64.urlsafe_b64encode(b).rstrip(b"="),
        base64.encodebytes,  # MIME: line breaks
    ],
)
def test_get_edoc_data_is_base64_decoded_then_read_as_utf8(
    encode: Callable[[bytes], bytes],
) -> None:
    package = "<?xml version='1.0'?><edXML>Văn bản ?>~</edXML>".encode() + b"\xff\xfe"
    assert b"_" in base64.urlsafe_b64encode(package) or b"-" in base64.urlsafe_b64encode(package)
    result = parse_response("getEdoc", body(data=encode(package).decode()))
    assert result.data_bytes == package
    assert result.text == package[:-2].decode() + "\ufffd\ufffd"


def test_download_edoc_reports_any_non_empty_raw_body_as_success() -> None:
    assert parse_response("downloadEdoc", "", b"<edXML/>").status == "SUCCESS"
    assert parse_response("downloadEdoc", "", b"").status is None


# --- on the wire: sendEdoc, the JDK stack -----------------------------------------------------


def test_send_edoc_body_is_the_file_and_one_crlf_signed_with_an_unpadded_hash(
    server: Callable[..., Server], service: Callable[..., HubService]
) -> None:
    hub = server()
    svc = service(hub.url("/vdxp/"))
    result = svc.send_edoc(G22, EDOC, to=[H41])
    (seen,) = hub.seen
    assert (seen.method, seen.path) == ("POST", "/vdxp//sendEdoc")
    assert seen.body == EDOC + b"\r\n"
    assert seen.header("Content-Length") == str(len(EDOC) + 2)
    assert seen.header("Content-Type") == "application/octet-stream"
    assert seen.header("User-Agent") == USER_AGENT
    assert seen.header("XroadVnpt-version") == SDK_VERSION
    assert seen.header("Accept-Encoding") is None and seen.header("Expect") is None
    assert seen.hmac_ok() and not seen.hmac_ok("wrong")
    assert seen.signed == {
        "XroadVnpt-" + k: v
        for k, v in {
            "systemid": SYSTEMID,
            "timestamp": svc.timestamp,
            "Content-Type": "application/octet-stream",
            "from": G22,
            "servicetype": "eDoc",
            "messagetype": "edoc",
            "to": f'["{H41}"]',
            "hash-file": "7e4a746b898d9b54749de74b58e7bd24c8b86287a386653f6593adf9db5eb",
        }.items()
    }
    assert all(seen.header(k) == v for k, v in seen.signed.items())
    assert (result.status, result.doc_id, result.http_status, result.attempts) == (
        "OK",
        "d1",
        200,
        1,
    )


def test_a_str_to_is_json_text_with_its_quotes(
    server: Callable[..., Server], service: Callable[..., HubService]
) -> None:
    hub = server()
    service(hub.url()).send_edoc(G22, b"<x/>", messagetype="status", to=H41)
    assert hub.seen[0].header("XroadVnpt-to") == f'"{H41}"'
    assert hub.seen[0].header("XroadVnpt-messagetype") == "status"


def test_send_edoc_takes_the_dms_json_parameter_string_too(
    server: Callable[..., Server], service: Callable[..., HubService]
) -> None:
    hub = server()
    params = json.dumps({"from": G22, "to": [H41], "servicetype": "eDoc", "messagetype": "edoc"})
    assert service(hub.url()).send_edoc(params, EDOC).doc_id == "d1"
    signed = hub.seen[0].signed
    assert signed["XroadVnpt-from"] == G22 and signed["XroadVnpt-to"] == f'["{H41}"]'
    assert signed["XroadVnpt-hash-file"] == hash_file(EDOC)


def test_send_edoc_carries_the_stale_keys_of_earlier_calls(
    server: Callable[..., Server], service: Callable[..., HubService]
) -> None:
    hub = server(trio_with(DocId="d1", data=""))
    svc = service(hub.url())
    svc.get_edoc('{"docId":"abc","filePath":"/data/in"}')
    svc.update_status("abc", "done")
    svc.send_edoc(G22, EDOC)
    send = hub.seen[-1].signed
    assert send["XroadVnpt-docId"] == "abc" and send["XroadVnpt-status"] == "done"
    assert send["XroadVnpt-filePath"] == "/data/in"
    assert len({seen.signed["XroadVnpt-timestamp"] for seen in hub.seen}) == 1


def test_the_jdk_connection_is_kept_alive_and_answers_read_as_us_ascii(
    server: Callable[..., Server], service: Callable[..., HubService]
) -> None:
    raw = '{"status":"OK","ErrorCode":"0","ErrorDesc":"Thành công","DocId":"d1"}'.encode()
    hub = server(lambda seen: answer(raw))
    svc = service(hub.url())
    first, second = svc.send_edoc(G22, EDOC), svc.send_edoc(G22, EDOC)
    assert [seen.conn for seen in hub.seen] == [0, 0]
    assert (first.connection_reused, second.connection_reused) == (False, True)
    assert second.error_desc == "Th\ufffd\ufffdnh c\ufffd\ufffdng" and second.doc_id == "d1"


def test_a_gzipped_answer_to_send_edoc_is_not_decoded(
    server: Callable[..., Server], service: Callable[..., HubService]
) -> None:
    hub = server(lambda seen: answer({**TRIO, "DocId": "d1"}, gz=True))
    result = service(hub.url()).send_edoc(G22, EDOC)
    assert result.http_status == 200 and result.raw.startswith(b"\x1f\x8b")
    assert result.status is None and result.doc_id is None


def test_the_jdk_resends_once_when_the_connection_closes_before_an_answer(
    server: Callable[..., Server], service: Callable[..., HubService]
) -> None:
    hub = server(script(None, answer({**TRIO, "DocId": "d1"})))
    result = service(hub.url()).send_edoc(G22, EDOC)
    assert [seen.conn for seen in hub.seen] == [0, 1]
    assert hub.seen[0].head == hub.seen[1].head and hub.seen[0].body == hub.seen[1].body
    assert (result.doc_id, result.attempts) == ("d1", 2)


def test_the_jdk_gives_up_after_one_resend(
    server: Callable[..., Server], service: Callable[..., HubService]
) -> None:
    hub = server(lambda seen: None)
    result = service(hub.url()).send_edoc(G22, EDOC)
    assert len(hub.seen) == 2 and isinstance(result.error, NoResponse)
    assert (result.status, result.doc_id, result.attempts) == (None, None, 2)


def test_a_kept_alive_connection_the_server_dropped_is_replaced_by_the_resend(
    server: Callable[..., Server], service: Callable[..., HubService]
) -> None:
    hub = server(lambda seen: answer({**TRIO, "DocId": "d1"}, headers=[("Connection", "close")]))
    svc = service(hub.url())
    svc.send_edoc(G22, EDOC)
    second = svc.send_edoc(G22, EDOC)
    assert [seen.conn for seen in hub.seen] == [0, 1] and not second.connection_reused
    assert second.doc_id == "d1" and second.attempts == 1


def test_send_twice_writes_the_same_request_on_two_connections(
    server: Callable[..., Server], service: Callable[..., HubService]
) -> None:
    hub = server()
    svc = service(hub.url())
    first, second = svc.send_edoc_twice(G22, EDOC)
    assert [seen.conn for seen in hub.seen] == [0, 1]
    assert hub.seen[0].head == hub.seen[1].head and hub.seen[0].body == hub.seen[1].body
    assert first.doc_id == second.doc_id == "d1"
    lost, again = svc.send_edoc_twice(G22, EDOC, wait_first=False)
    assert lost.http_status is None and again.doc_id == "d1"
    # the server thread of the abandoned first connection may record it after the second
    deadline = time.monotonic() + 5
    while len(hub.seen) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(hub.seen) == 4 and hub.seen[2].head == hub.seen[3].head


def test_multipart_send_edoc_as_other_clients_send_it(
    server: Callable[..., Server], service: Callable[..., HubService]
) -> None:
    hub = server()
    result = service(hub.url()).send_edoc_multipart(G22, EDOC, boundary="BOUNDARY")
    (seen,) = hub.seen
    assert seen.header("Content-Type") == "multipart/form-data; boundary=BOUNDARY"
    assert seen.body == (
        b'--BOUNDARY\r\nContent-Disposition: form-data; name="file_doc"; filename="edoc.edxml"'
        b"\r\nContent-Type: application/octet-stream\r\n\r\n" + EDOC + b"\r\n--BOUNDARY--\r\n"
    )
    assert seen.header("XroadVnpt-hash-file") == hash_file(EDOC) and seen.hmac_ok()
    assert seen.header("Expect") is None and result.doc_id == "d1"


# --- on the wire: the Apache stack -------------------------------------------------------------


def test_other_calls_use_a_new_connection_each_accept_gzip_and_ignore_the_status(
    server: Callable[..., Server], service: Callable[..., HubService]
) -> None:
    items = [{"docId": "r1", "messageType": "edoc", "from": G22, "to": H41}]
    hub = server(lambda seen: answer({**TRIO, "data": items}, status=401, gz=True))
    svc = service(hub.url("/vdxp/"))
    results = [svc.get_received_edoc_list("edoc") for _ in range(3)]
    assert [seen.conn for seen in hub.seen] == [0, 1, 2]
    seen = hub.seen[0]
    assert (seen.method, seen.path, seen.body) == ("POST", "/vdxp/getReceivedEdocList", b"")
    assert seen.header("Accept-Encoding") == "gzip,deflate" and seen.header("Expect") is None
    assert (
        seen.header("Content-Length") == "0" and seen.header("Content-Type") == "application/json"
    )
    assert seen.hmac_ok()
    assert all(r.http_status == 401 and r.items == items for r in results)


def test_list_calls_leave_their_connection_open_others_close_it(
    server: Callable[..., Server], service: Callable[..., HubService]
) -> None:
    hub = server(trio_with(data=[]))
    svc = service(hub.url())
    svc.get_received_edoc_list("status")
    svc.update_status("d1", "done")
    assert hub.wait_ended(1) and not hub.wait_ended(0, seconds=0.2)
    svc.close()
    assert hub.wait_ended(0)


def test_get_edoc_waits_for_100_continue_and_reads_the_package(
    server: Callable[..., Server], service: Callable[..., HubService]
) -> None:
    package = "<edXML>Văn bản</edXML>".encode()
    hub = server(trio_with(data=base64.b64encode(package).decode()))
    svc = service(hub.url(), continue_timeout=2.0)
    started = time.monotonic()
    result = svc.get_edoc("abc", file_path="/data/in")
    assert time.monotonic() - started < 1.0
    (seen,) = hub.seen
    assert seen.header("Expect") == "100-continue" and seen.sent_100 and seen.body == b"{}"
    assert result.got_100_continue and result.data_bytes == package
    assert result.text == "<edXML>Văn bản</edXML>"


def test_without_100_continue_the_body_goes_after_the_wait(
    server: Callable[..., Server], service: Callable[..., HubService]
) -> None:
    hub = server(trio_with(), send_100=False)
    started = time.monotonic()
    result = service(hub.url(), continue_timeout=0.3).update_status("d1", "done")
    assert time.monotonic() - started >= 0.3
    assert hub.seen[0].body == b"{}" and not result.got_100_continue and result.ok


def test_an_answer_before_the_body_is_taken_and_the_body_never_sent(
    server: Callable[..., Server], service: Callable[..., HubService]
) -> None:
    fail = {"status": "FAIL", "ErrorCode": "1", "ErrorDesc": "bad signature"}
    hub = server(lambda seen: answer(fail, status=401), send_100=False, answer_early=True)
    started = time.monotonic()
    result = service(hub.url(), continue_timeout=2.0).get_edoc("d1")
    assert time.monotonic() - started < 1.0
    assert hub.seen[0].body == b"" and not result.got_100_continue
    assert (result.status, result.error_desc, result.http_status) == ("FAIL", "bad signature", 401)


def test_apache_retries_io_errors_up_to_retry_attempts_posts_included(
    server: Callable[..., Server], service: Callable[..., HubService]
) -> None:
    hub = server(lambda seen: None)
    result = service(hub.url(), retry=3).update_status("d1", "done")
    assert [seen.conn for seen in hub.seen] == [0, 1, 2]
    assert isinstance(result.error, NoResponse) and result.attempts == 3 and result.status is None
    hub2 = server(script(None, answer(TRIO)))
    assert service(hub2.url(), retry=2).update_status("d1", "done").ok and len(hub2.seen) == 2


def test_apache_does_not_retry_a_timeout(
    server: Callable[..., Server], service: Callable[..., HubService]
) -> None:
    def hold(seen: Seen) -> None:
        hub.release.wait(5)  # set when the server closes

    hub = server(hold)
    result = service(hub.url(), timeout=0.3).get_received_edoc_list("edoc")
    assert isinstance(result.error, TimeoutError) and result.attempts == 1 and len(hub.seen) == 1
    assert result.data is None


def test_get_agencies_list_signs_only_its_own_map(
    server: Callable[..., Server], service: Callable[..., HubService]
) -> None:
    agencies = [{"code": G22, "id": "1", "pid": "0", "name": "VPCP", "mail": "", "oldCode": ""}]
    hub = server(trio_with(data=agencies))
    svc = service(hub.url())
    svc.get_edoc("d1", file_path="/in")
    result = svc.get_agencies_list()
    svc.get_agencies_list()
    signed = [seen.signed for seen in hub.seen[1:]]
    assert signed[0] == signed[1]
    assert set(signed[0]) == {
        "XroadVnpt-systemid",
        "XroadVnpt-timestamp",
        "XroadVnpt-Content-Type",
    }
    assert hub.seen[1].hmac_ok() and result.items == agencies


def test_count_download_and_qd20_calls(
    server: Callable[..., Server], service: Callable[..., HubService]
) -> None:
    def reply(seen: Seen) -> bytes:
        if seen.path.endswith("downloadEdoc"):
            return answer(b"<edXML/>", gz=True)
        return answer({**TRIO, "count": "4", "data": [{"code": G22, "code102": "x"}]})

    hub = server(reply)
    svc = service(hub.url())
    assert svc.count_receive_edoc().count == 4 and svc.count_receive_status().count == 4
    download = svc.download_edoc("d1", file_path="/in")
    assert (download.status, download.data_bytes) == ("SUCCESS", b"<edXML/>")
    assert svc.get_agencies_list_qd20(1).items == [{"code": G22, "code102": "x"}]
    count, get, qd20 = hub.seen[0], hub.seen[2], hub.seen[3]
    assert count.header("Expect") == "100-continue" and count.body == b"{}"
    assert get.method == "GET" and get.header("Content-Length") is None and get.body == b""
    assert get.signed["XroadVnpt-docId"] == "d1" and qd20.signed["XroadVnpt-level"] == "1"
    unsigned = svc.download_edoc2("d1")
    assert hub.seen[4].header("XroadVnpt-hash-header") is None and unsigned.status == "SUCCESS"


def test_non_ascii_values_reach_the_wire_differently_per_stack(
    server: Callable[..., Server], service: Callable[..., HubService]
) -> None:
    hub = server(trio_with(DocId="d1", data=""))
    svc = service(hub.url())
    folder = "/dữ liệu"
    svc.get_edoc("d1", file_path=folder)
    svc.send_edoc(G22, EDOC)  # the stale filePath again, written by the JDK in UTF-8
    apache, jdk = hub.seen
    assert folder.encode("utf-16-be")[1::2] in apache.head and not apache.hmac_ok()
    assert folder.encode() in jdk.head and jdk.hmac_ok()


# --- tampering and TLS -------------------------------------------------------------------------


def test_tampered_requests(
    server: Callable[..., Server], service: Callable[..., HubService]
) -> None:
    hub = server()
    svc = service(hub.url())
    svc.get_edoc("d1", tamper=Tamper(secret="wrong"))
    svc.send_edoc(G22, EDOC, tamper=Tamper(hash_file="00", body=b"other"))
    svc.update_status("d1", "done", tamper=Tamper(drop_headers={"XroadVnpt-hash-header"}))
    svc.update_status("d1", "done", tamper=Tamper(set_headers={"XroadVnpt-systemid": "x"}))
    wrong, other, dropped, changed = hub.seen
    assert not wrong.hmac_ok() and wrong.hmac_ok("wrong")
    assert other.signed["XroadVnpt-hash-file"] == "00" and other.hmac_ok()
    assert other.body == b"other" and other.header("Content-Length") == "5"
    assert dropped.header("XroadVnpt-hash-header") is None and dropped.header(
        "XroadVnpt-sign-header"
    )
    assert changed.header("XroadVnpt-systemid") == "x" and changed.hmac_ok()
    assert changed.signed["XroadVnpt-systemid"] == SYSTEMID


def test_https_with_a_private_ca_and_host_name_verification(
    server: Callable[..., Server],
    service: Callable[..., HubService],
    tls_files: tuple[Path, Path, Path],
) -> None:
    ca, cert, key = tls_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    hub = server(trio_with(DocId="d1", data=""), tls=context)
    svc = service(hub.url(), ca_file=ca)
    assert svc.send_edoc(G22, EDOC).doc_id == "d1" and svc.get_edoc("d1").ok
    assert svc.send_edoc(G22, EDOC).connection_reused
    assert [seen.conn for seen in hub.seen] == [0, 1, 0]
    wrong_host = service(hub.url(host="localhost"), ca_file=ca).update_status("d1", "done")
    assert isinstance(wrong_host.error, ssl.SSLCertVerificationError)
    assert wrong_host.attempts == 1 and len(hub.seen) == 3
    untrusted = service(hub.url()).send_edoc(G22, EDOC)
    assert isinstance(untrusted.error, ssl.SSLError) and untrusted.attempts == 0
