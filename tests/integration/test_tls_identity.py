"""HTTPS with client certificates, end to end: real uvicorn, real TLS, real curl and httpx.

A tiny FastAPI app (``make_app``) answers ``/whoami`` with the identity that
``gateway.api.auth.require_identity`` found, and ``/healthz`` without authentication. Servers
run in a thread for speed; ``test_subprocess_server_with_curl`` runs ``gateway.api.server.run`` in
a real child process.
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations at runtime.

import datetime as dt
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import pytest
import structlog
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from gateway.api.auth import identify, require_identity
from gateway.api.server import make_config, make_hub_config, make_hub_ssl_context, make_ssl_context
from gateway.dev.network import free_port
from gateway.dev.pki import CAPaths, IssuedPaths, init_ca, issue, revoke
from gateway.errors import ConfigError, GatewayError
from gateway.settings import (
    HubSettings,
    ServerSettings,
    Settings,
    TLSSettings,
    TrustSettings,
    load_settings,
)
from gateway.trust.caller import Identity
from gateway.trust.store import TrustStore

H49 = "000.00.00.H49"
H41 = "000.00.00.H41"  # revoked
G22 = "000.00.00.G22"  # expired
CURL = "/usr/bin/curl"
HERE = Path(__file__).parent


# --- the app under test ----------------------------------------------------------------------


def make_app(settings: Settings) -> FastAPI:
    """The smallest app that authenticates like the real API will."""
    trust = TrustStore.from_pem_files(
        list(settings.trust.anchors),
        crls=list(settings.trust.crls),
        intermediates=list(settings.trust.intermediates),
    )
    caller_dep = Annotated[Identity, Depends(require_identity(trust, settings))]
    app = FastAPI()

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, GatewayError)
        return JSONResponse(exc.to_dict(), status_code=exc.http_status)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/whoami")
    async def whoami(caller: caller_dep, request: Request) -> dict[str, Any]:
        return {
            "kind": caller.kind,
            "agency": str(caller.agency) if caller.agency else None,
            "node": caller.node,
            "source": caller.source,
            "client_port": request.scope["client"][1],
        }

    @app.get("/tls")
    async def tls(request: Request) -> dict[str, Any]:
        return dict(request.scope.get("extensions", {}).get("tls") or {"absent": True})

    return app


def _serve_main(settings_path: str, ready_file: str) -> None:
    """Entry point of the child process in ``test_subprocess_server_with_curl``."""
    from gateway.api.server import run

    settings = load_settings(Path(settings_path))
    run(make_app(settings), settings, ready_file=Path(ready_file))


# --- PKI and servers -------------------------------------------------------------------------


@dataclass
class PKI:
    ca: CAPaths
    server: IssuedPaths
    agency: IssuedPaths
    node: IssuedPaths
    revoked: IssuedPaths
    expired: IssuedPaths
    unbound_cert: Path
    unbound_key: Path
    foreign: IssuedPaths


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    root = tmp_path_factory.mktemp("tls-pki")
    ca = init_ca(root / "pki")
    revoked = issue(ca.directory, agency=H41)
    revoke(ca.directory, revoked.serial, reason="keyCompromise")
    expired = issue(
        ca.directory,
        agency=G22,
        days=1,
        not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3),
    )
    unbound_cert, unbound_key = _unbound_certificate(ca, root)
    foreign_ca = init_ca(root / "foreign", common_name_prefix="Elsewhere")
    return PKI(
        ca=ca,
        server=issue(ca.directory, node="test-node"),
        agency=issue(ca.directory, agency=H49),
        node=issue(ca.directory, node="peer-node"),
        revoked=revoked,
        expired=expired,
        unbound_cert=unbound_cert,
        unbound_key=unbound_key,
        foreign=issue(foreign_ca.directory, agency=H49),
    )


def _unbound_certificate(ca: CAPaths, where: Path) -> tuple[Path, Path]:
    """A client certificate from the trusted CA that binds no agency code and no node name."""
    issuer = x509.load_pem_x509_certificate(ca.intermediate_cert.read_bytes())
    issuer_key = serialization.load_pem_private_key(ca.intermediate_key.read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Somebody")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    cert_path, key_path = where / "unbound.cert.pem", where / "unbound.key.pem"
    cert_path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + issuer.public_bytes(serialization.Encoding.PEM)
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def settings_for(
    pki: PKI, *, tls: bool = True, trusted_proxies: tuple[str, ...] = (), port: int | None = None
) -> Settings:
    return Settings(
        server=ServerSettings(host="127.0.0.1", port=port or free_port()),
        tls=TLSSettings(
            cert=pki.server.cert if tls else None,
            key=pki.server.key if tls else None,
            trusted_proxies=trusted_proxies,
        ),
        trust=TrustSettings(
            anchors=(pki.ca.root_cert,),
            crls=(pki.ca.crl,),
            intermediates=(pki.ca.intermediate_cert,),
        ),
    )


@contextmanager
def serve(settings: Settings, *, http: str = "httptools") -> Iterator[str]:
    """Run the test app under uvicorn in a thread; yield its base URL."""
    config = make_config(make_app(settings), settings, http=http)  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    scheme = "https" if settings.tls.cert else "http"
    try:
        yield f"{scheme}://127.0.0.1:{settings.server.port}"
    finally:
        server.should_exit = True
        thread.join(10)


def client_context(pki: PKI, issued: IssuedPaths | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.root_cert))
    if issued is not None:
        context.load_cert_chain(issued.cert, issued.key)
    return context


def leaf_pem(path: Path) -> str:
    """The first certificate of a PEM chain file, as text."""
    return (
        x509.load_pem_x509_certificates(path.read_bytes())[0]
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )


@pytest.fixture(scope="module")
def direct(pki: PKI) -> Iterator[str]:
    """A direct-TLS server, no trusted proxies."""
    with serve(settings_for(pki)) as url:
        yield url


@pytest.fixture(scope="module")
def behind_proxy(pki: PKI) -> Iterator[str]:
    """A plain-HTTP server that believes the certificate header from 127.0.0.1."""
    with serve(settings_for(pki, tls=False, trusted_proxies=("127.0.0.1",))) as url:
        yield url


def proxy_headers(path: Path) -> dict[str, str]:
    """What nginx sends with ``proxy_set_header X-Client-Cert $ssl_client_escaped_cert``."""
    return {"X-Client-Cert": quote(leaf_pem(path), safe="")}


# --- direct TLS ------------------------------------------------------------------------------


def test_curl_with_agency_certificate(pki: PKI, direct: str) -> None:
    out = subprocess.run(
        [
            CURL,
            "--silent",
            "--show-error",
            "--fail-with-body",
            "--cacert",
            str(pki.ca.root_cert),
            "--cert",
            str(pki.agency.cert),
            "--key",
            str(pki.agency.key),
            f"{direct}/whoami",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    body = json.loads(out.stdout)
    assert body["kind"] == "agency"
    assert body["agency"] == H49
    assert body["source"] == "tls"


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_keep_alive_requests_share_one_connection_and_identity(pki: PKI, http: str) -> None:
    with (
        serve(settings_for(pki), http=http) as url,
        httpx.Client(verify=client_context(pki, pki.agency)) as client,
    ):
        answers = [client.get(f"{url}/whoami").json() for _ in range(5)]
    assert {a["agency"] for a in answers} == {H49}
    assert len({a["client_port"] for a in answers}) == 1, "keep-alive should reuse the connection"


def test_different_callers_on_different_connections(pki: PKI, direct: str) -> None:
    with (
        httpx.Client(verify=client_context(pki, pki.agency)) as agency,
        httpx.Client(verify=client_context(pki, pki.node)) as node,
    ):
        for _ in range(2):
            assert agency.get(f"{direct}/whoami").json()["agency"] == H49
            body = node.get(f"{direct}/whoami").json()
            assert (body["kind"], body["node"], body["agency"]) == ("node", "peer-node", None)


def test_httpx_cert_argument_still_works_but_is_deprecated(pki: PKI, direct: str) -> None:
    # httpx 0.28 deprecates cert=...; the supported spelling is an SSLContext with
    # load_cert_chain (what every other test here uses).
    with pytest.warns(DeprecationWarning, match="cert"):
        client = httpx.Client(
            verify=client_context(pki), cert=(str(pki.agency.cert), str(pki.agency.key))
        )
    with client:
        assert client.get(f"{direct}/whoami").json()["agency"] == H49


def test_tls_extension_in_scope(pki: PKI, direct: str) -> None:
    with httpx.Client(verify=client_context(pki, pki.agency)) as client:
        tls = client.get(f"{direct}/tls").json()
    assert tls["client_cert_chain"] == [leaf_pem(pki.agency.cert)]
    assert "serialNumber=000.00.00.H49" in tls["client_cert_name"]
    assert tls["client_cert_error"] is None
    assert tls["server_cert"] is None
    assert tls["tls_version"] == 0x0304
    assert tls["cipher_suite"] in {0x1301, 0x1302, 0x1303}


def test_no_client_certificate(pki: PKI, direct: str) -> None:
    with httpx.Client(verify=client_context(pki)) as client:
        assert client.get(f"{direct}/healthz").json() == {"status": "ok"}
        refused = client.get(f"{direct}/whoami")
        tls = client.get(f"{direct}/tls").json()
    assert refused.status_code == 401
    assert refused.json()["code"] == "AUTH_REQUIRED"
    assert tls["client_cert_chain"] == [] and tls["client_cert_name"] is None


def test_certificate_from_another_ca_fails_the_handshake(pki: PKI, direct: str) -> None:
    # The TLS layer verifies the chain before the app sees anything and drops the connection.
    # Under TLS 1.3 the client's side of the handshake has already finished, so it learns of
    # the refusal on its first read: httpx raises ReadError (or ConnectError), curl exits 56
    # ("Recv failure"), 52 ("Empty reply") or 35 (TLS handshake error): never an HTTP status.
    with (
        httpx.Client(verify=client_context(pki, pki.foreign)) as client,
        pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
    ):
        client.get(f"{direct}/whoami")
    out = subprocess.run(
        [
            CURL,
            "--silent",
            "--show-error",
            "--cacert",
            str(pki.ca.root_cert),
            "--cert",
            str(pki.foreign.cert),
            "--key",
            str(pki.foreign.key),
            f"{direct}/whoami",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode in (35, 52, 56), out.stderr
    assert out.stdout == ""


def test_revoked_certificate(pki: PKI, direct: str) -> None:
    with httpx.Client(verify=client_context(pki, pki.revoked)) as client:
        assert client.get(f"{direct}/healthz").status_code == 200
        refused = client.get(f"{direct}/whoami")
    assert refused.status_code == 401
    assert refused.json()["code"] == "AUTH_CERT_UNTRUSTED"
    assert refused.json()["detail"]["reason"] == "CERT_REVOKED"


def test_certificate_binding_nobody(pki: PKI, direct: str) -> None:
    context = client_context(pki)
    context.load_cert_chain(pki.unbound_cert, pki.unbound_key)
    with httpx.Client(verify=context) as client:
        refused = client.get(f"{direct}/whoami")
    assert refused.status_code == 401
    assert refused.json()["code"] == "AUTH_CERT_UNTRUSTED"
    assert refused.json()["detail"]["reason"] == "unbound"


def test_node_certificate(pki: PKI, direct: str) -> None:
    with httpx.Client(verify=client_context(pki, pki.node)) as client:
        body = client.get(f"{direct}/whoami").json()
    assert body["kind"] == "node"
    assert body["node"] == "peer-node"


# --- the proxy header ------------------------------------------------------------------------


def test_header_from_untrusted_address_is_ignored(pki: PKI, direct: str) -> None:
    headers = proxy_headers(pki.node.cert)
    with structlog.testing.capture_logs() as logs:
        with httpx.Client(verify=client_context(pki)) as anonymous:
            refused = anonymous.get(f"{direct}/whoami", headers=headers)
        with httpx.Client(verify=client_context(pki, pki.agency)) as agency:
            body = agency.get(f"{direct}/whoami", headers=headers).json()
    assert refused.status_code == 401
    assert refused.json()["code"] == "AUTH_REQUIRED"
    assert (body["kind"], body["agency"]) == ("agency", H49), "the header must not win"
    ignored = [e for e in logs if e["event"] == "auth.proxy_header_ignored"]
    assert len(ignored) == 2
    assert ignored[0]["peer"] == "127.0.0.1"


def test_forwarded_for_cannot_impersonate_a_trusted_proxy(pki: PKI) -> None:
    settings = settings_for(pki, tls=False, trusted_proxies=("10.1.2.3",))
    headers = {**proxy_headers(pki.agency.cert), "X-Forwarded-For": "10.1.2.3"}
    with serve(settings) as url, httpx.Client() as client:
        assert client.get(f"{url}/healthz").status_code == 200
        refused = client.get(f"{url}/whoami", headers=headers)
    assert refused.status_code == 401
    assert refused.json()["code"] == "AUTH_REQUIRED"


def test_header_from_trusted_proxy(pki: PKI, behind_proxy: str) -> None:
    with httpx.Client() as client:
        agency = client.get(f"{behind_proxy}/whoami", headers=proxy_headers(pki.agency.cert))
        node = client.get(f"{behind_proxy}/whoami", headers=proxy_headers(pki.node.cert))
        tls = client.get(f"{behind_proxy}/tls").json()
    assert agency.json() | {"client_port": 0} == {
        "kind": "agency",
        "agency": H49,
        "node": None,
        "source": "proxy",
        "client_port": 0,
    }
    assert (node.json()["kind"], node.json()["node"]) == ("node", "peer-node")
    assert tls == {"absent": True}, "plain HTTP must not claim a TLS extension"


@pytest.mark.parametrize(
    ("which", "code", "reason"),
    [
        ("revoked", "AUTH_CERT_UNTRUSTED", "CERT_REVOKED"),
        ("expired", "AUTH_CERT_UNTRUSTED", "CERT_NOT_VALID_AT_SIGNING"),
        ("foreign", "AUTH_CERT_UNTRUSTED", "CERT_UNTRUSTED"),
        ("garbage", "AUTH_CERT_UNTRUSTED", "malformed"),
        ("none", "AUTH_REQUIRED", None),
    ],
)
def test_trusted_proxy_header_is_still_verified(
    pki: PKI, behind_proxy: str, which: str, code: str, reason: str | None
) -> None:
    if which == "garbage":
        headers = {"X-Client-Cert": quote("-----BEGIN CERTIFICATE-----\nAAAA\n", safe="")}
    elif which == "none":
        headers = {}
    else:
        headers = proxy_headers(getattr(pki, which).cert)
    refused = httpx.get(f"{behind_proxy}/whoami", headers=headers)
    assert refused.status_code == 401
    assert refused.json()["code"] == code
    if reason is not None:
        assert refused.json()["detail"]["reason"] == reason


# --- configuration ---------------------------------------------------------------------------


def test_plain_http_without_trusted_proxy_is_refused(pki: PKI) -> None:
    with pytest.raises(ConfigError, match="trusted_proxies"):
        make_config(make_app(settings_for(pki, tls=False)), settings_for(pki, tls=False))


def test_unreadable_server_certificate_is_a_config_error(pki: PKI, tmp_path: Path) -> None:
    settings = settings_for(pki)
    broken = Settings(
        server=settings.server,
        trust=settings.trust,
        tls=TLSSettings(cert=tmp_path / "missing.pem", key=tmp_path / "missing.key"),
    )
    with pytest.raises(ConfigError) as info:
        make_ssl_context(broken)
    assert info.value.detail == {"key": "tls.cert"}


def test_the_hub_listener_is_configured_apart_or_refused_clearly(pki: PKI, tmp_path: Path) -> None:
    """[hub] port: its own certificate or [tls]'s, no client certificate asked for, its own
    keep-alive; no certificate and no proxy, or an unreadable one, is refused naming the key;
    none at all without [hub] port."""
    base = settings_for(pki)
    own = replace(base, hub=HubSettings(enabled=True, port=free_port(), keepalive_timeout=3))
    assert make_hub_config(object(), replace(base, hub=HubSettings(enabled=True))) is None
    config = make_hub_config(object(), own)
    assert config is not None and config.timeout_keep_alive == 3 and config.lifespan == "off"
    context = make_hub_ssl_context(own)
    assert context is not None and context.verify_mode == ssl.CERT_NONE
    plain = replace(own, tls=TLSSettings())
    with pytest.raises(ConfigError, match="trusted_proxies") as info:
        make_hub_ssl_context(plain)
    assert info.value.detail == {"key": "hub.cert"}
    behind_proxy = replace(plain, tls=TLSSettings(trusted_proxies=("127.0.0.1",)))
    assert make_hub_ssl_context(behind_proxy) is None
    missing = replace(
        own,
        hub=replace(own.hub, cert=tmp_path / "hub.pem", key=tmp_path / "hub.key"),
    )
    with pytest.raises(ConfigError) as info:
        make_hub_ssl_context(missing)
    assert info.value.detail == {"key": "hub.cert"}


def test_bad_trusted_proxy_entry_is_a_config_error(pki: PKI) -> None:
    settings = settings_for(pki, trusted_proxies=("proxy.example",))
    trust = TrustStore.from_pem_files([pki.ca.root_cert])
    with pytest.raises(ConfigError, match="trusted_proxies"):
        require_identity(trust, settings)


def test_identify_accepts_a_raw_scope_and_trusts_networks(pki: PKI) -> None:
    settings = settings_for(pki, tls=False, trusted_proxies=("10.0.0.0/8",))
    trust = TrustStore.from_pem_files(
        [pki.ca.root_cert], crls=[pki.ca.crl], intermediates=[pki.ca.intermediate_cert]
    )
    header = proxy_headers(pki.agency.cert)["X-Client-Cert"].encode()
    scope: dict[str, Any] = {"type": "http", "client": ("::ffff:10.9.8.7", 5000)}
    scope["headers"] = [(b"x-client-cert", header)]
    assert str(identify(scope, trust=trust, settings=settings)) == f"agency:{H49}"
    scope["headers"] = [(b"x-client-cert", header), (b"x-client-cert", header)]
    with pytest.raises(GatewayError) as info:
        identify(scope, trust=trust, settings=settings)
    assert info.value.detail["reason"] == "duplicate_header"


# --- a real process --------------------------------------------------------------------------


def test_subprocess_server_with_curl(pki: PKI, tmp_path: Path) -> None:
    port = free_port()
    settings_file = tmp_path / "node.toml"
    settings_file.write_text(
        f"""
[node]
name = "test-node"

[server]
host = "127.0.0.1"
port = {port}

[tls]
cert = "{pki.server.cert}"
key = "{pki.server.key}"

[trust]
anchors = ["{pki.ca.root_cert}"]
crls = ["{pki.ca.crl}"]
intermediates = ["{pki.ca.intermediate_cert}"]

[logging]
level = "warning"
""",
        encoding="utf-8",
    )
    ready = tmp_path / "ready.json"
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import test_tls_identity as t; "
        "t._serve_main(sys.argv[2], sys.argv[3])"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(HERE), str(settings_file), str(ready)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info == {"pid": proc.pid, "host": "127.0.0.1", "port": port, "scheme": "https"}
        base = [CURL, "--silent", "--show-error", "--cacert", str(pki.ca.root_cert)]
        whoami = subprocess.run(
            [
                *base,
                "--cert",
                str(pki.agency.cert),
                "--key",
                str(pki.agency.key),
                "--write-out",
                "\\n",
                f"https://127.0.0.1:{port}/whoami",
                f"https://127.0.0.1:{port}/whoami",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert whoami.returncode == 0, whoami.stderr
        # two URLs, one curl: both answered over the same kept-alive connection
        first, second = (json.loads(line) for line in whoami.stdout.splitlines())
        assert first["agency"] == second["agency"] == H49
        assert first["client_port"] == second["client_port"]
        anonymous = subprocess.run(
            [*base, "--write-out", "%{http_code}", f"https://127.0.0.1:{port}/whoami"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert anonymous.stdout.endswith("401")
        assert '"AUTH_REQUIRED"' in anonymous.stdout
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises SIGTERM with the default handler
    assert proc.returncode in (0, -15)
    assert not ready.exists(), "the ready file is removed on shutdown"
