"""A development network: several gateway nodes, each its own process and database, on this
machine, with certificates from a fresh dev PKI. Used by ``gateway demo``, the network
benchmark and the acceptance tests.

The default layout is the four-tier link of Quảng Ninh::

    central         (tier central)   hosts 000.00.00.G22 (Government Office), 000.00.00.G12
      └ h49         (province)       hosts 000.00.00.H49 (provincial People's Committee)
          └ h49-halong   (district)  hosts 000.00.01.H49 (Hạ Long city People's Committee)
              └ h49-bachdang (commune) hosts 000.01.01.H49 (Bạch Đằng ward People's Committee)

Usage::

    with Network(Path("/tmp/net")) as net:
        net.create()
        net.start()
        doc_id, answer = net.send("000.01.01.H49", ["000.00.00.G12"])
        net.stop("h49-halong")

With ``settings=HUB_SETTINGS`` every node also serves the hub-compatible API (docs/hub.md) at
:meth:`Network.hub_endpoint`; :meth:`Network.add_system` registers a DMS there as an operator
does (``gateway systems add``) and returns its secret.

.. warning:: For development only: private keys lie unencrypted in the network's folder.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from gateway.dev.nodeconfig import write_node_config
from gateway.dev.pki import CAPaths, init_ca, issue
from gateway.dev.samples import document, status
from gateway.settings import load_settings
from gateway.storage import db
from gateway.trust.signing import SigningKey, sign_package

__all__ = ["HUB_SETTINGS", "QUANG_NINH", "Network", "NodeSpec", "free_port", "wait_for"]

T = TypeVar("T")

GATEWAY = shutil.which("gateway", path=str(Path(sys.executable).parent)) or "gateway"

#: every node serves the hub-compatible API (docs/hub.md) under /vdxp: ``Network(settings=...)``
HUB_SETTINGS: dict[str, dict[str, Any]] = {"hub": {"enabled": True, "prefix": "/vdxp"}}

_SECRET_LINE = re.compile(r"^secret: (\S+)$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node of a development network."""

    name: str
    tier: str
    #: agency codes whose DMS connect to it
    agencies: tuple[str, ...]
    #: the parent node's name (None for the central node)
    parent: str | None = None
    #: what the parent's directory says this node's subtree serves
    serves: tuple[str, ...] = ()


QUANG_NINH: tuple[NodeSpec, ...] = (
    NodeSpec("central", "central", ("000.00.00.G22", "000.00.00.G12")),
    NodeSpec("h49", "province", ("000.00.00.H49",), "central", ("000.00.00.H49",)),
    NodeSpec("h49-halong", "district", ("000.00.01.H49",), "h49", ("000.00.01.H49",)),
    NodeSpec("h49-bachdang", "commune", ("000.01.01.H49",), "h49-halong", ("000.01.01.H49",)),
)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int, *, avoid: Iterable[int] = ()) -> list[int]:
    """``count`` different TCP ports nobody listens on right now, none of ``avoid`` (ports
    already promised elsewhere, e.g. a ``[hub] port`` in the settings): each is held until all
    are drawn, so two draws cannot return the same port."""
    avoided = set(avoid)
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket()
            held.append(sock)
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port not in avoided:
                ports.append(port)
        return ports
    finally:
        for sock in held:
            sock.close()


@dataclass
class _Running:
    spec: NodeSpec
    port: int
    folder: Path
    config: Path
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None


@dataclass
class Network:
    """Nodes of a development network; stops every process it started on exit."""

    root: Path
    specs: Sequence[NodeSpec] = QUANG_NINH
    #: per node name, a database URL (default: a SQLite file in the node's folder)
    database_urls: Mapping[str, str] = field(default_factory=dict)
    #: extra settings for every node, by section (e.g. ``{"delivery": {"tick_interval": 0.2}}``)
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: extra settings for one node, by node name then section (``{"h49": {"server": {...}}}``)
    node_settings: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    nodes: dict[str, _Running] = field(default_factory=dict)
    ca: CAPaths | None = None
    _keys: dict[str, SigningKey] = field(default_factory=dict)
    _clients: dict[tuple[str, str], httpx.Client] = field(default_factory=dict)

    def __enter__(self) -> Network:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- set-up -------------------------------------------------------------------------------

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    def create(self) -> None:
        """A fresh dev PKI, node and agency certificates, settings files, migrated databases."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.ca = init_ca(self.pki)
        # distinct, and none a port the settings promise to a node (e.g. its [hub] port)
        promised = [
            values["port"]
            for sections in (self.settings, *self.node_settings.values())
            for values in sections.values()
            if isinstance(values.get("port"), int)
        ]
        ports = dict(
            zip(
                (spec.name for spec in self.specs),
                free_ports(len(self.specs), avoid=promised),
                strict=True,
            )
        )
        for spec in self.specs:
            folder = self.root / spec.name
            folder.mkdir(exist_ok=True)
            node_cert = issue(self.pki, node=spec.name, key_type="ec-p256")
            for agency in spec.agencies:
                issue(self.pki, agency=agency)
            parent = None
            if spec.parent is not None:
                parent = {"name": spec.parent, "url": f"https://127.0.0.1:{ports[spec.parent]}"}
            children = [
                {
                    "name": child.name,
                    "url": f"https://127.0.0.1:{ports[child.name]}",
                    "serves": list(child.serves),
                }
                for child in self.specs
                if child.parent == spec.name
            ]
            extra: dict[str, dict[str, Any]] = {
                "logging": {"level": "info"},
                "delivery": {"tick_interval": 0.2, "breaker_probe_interval": 1.0},
            }
            for section, values in self.settings.items():
                extra.setdefault(section, {}).update(values)
            for section, values in self.node_settings.get(spec.name, {}).items():
                extra.setdefault(section, {}).update(values)
            config = write_node_config(
                folder / "node.toml",
                name=spec.name,
                agencies=spec.agencies,
                node=node_cert,
                ca=self.ca,
                database_url=self.database_urls.get(spec.name, "sqlite:///node.db"),
                port=ports[spec.name],
                tier=spec.tier,
                parent=parent,
                children=children,
                extra=extra,
            )
            engine = db.make_engine(load_settings(config, environ={}))
            try:
                db.upgrade(engine)
            finally:
                engine.dispose()
            self.nodes[spec.name] = _Running(
                spec=spec, port=ports[spec.name], folder=folder, config=config
            )

    # -- processes ----------------------------------------------------------------------------

    def url(self, name: str) -> str:
        return f"https://127.0.0.1:{self.nodes[name].port}"

    @property
    def ca_file(self) -> Path:
        """The dev CA's certificate: what a client trusts (a DMS on the SDK: its trust store)."""
        assert self.ca is not None, "create() the network first"
        return self.ca.root_cert

    def hub_endpoint(self, name: str) -> str:
        """The URL a DMS on the national SDK puts in its settings to reach node ``name``'s hub
        API (``https://127.0.0.1:PORT/vdxp``, the port ``[hub] port`` when the hub API has a
        listener of its own); ValueError when the node does not serve it. Read as the node
        reads it: its settings file and ``GATEWAY_*`` variables."""
        hub = load_settings(self.nodes[name].config, environ=dict(os.environ)).hub
        if not hub.enabled:
            raise ValueError(f"node {name} does not serve the hub API ([hub] enabled = false)")
        base = self.url(name) if hub.port == 0 else f"https://127.0.0.1:{hub.port}"
        return base + hub.prefix.rstrip("/")

    def systems_add_command(
        self, name: str, systemid: str, agencies: Sequence[str], *, policy: str = "require"
    ) -> list[str]:
        """The operator's command that makes ``systemid`` a connected system of node ``name``."""
        command = [GATEWAY, "systems", "add", systemid]
        for agency in agencies:
            command += ["--agency", agency]
        if policy != "require":
            command += ["--policy", policy]
        return [*command, "--config", str(self.nodes[name].config)]

    def add_system(
        self,
        name: str,
        systemid: str,
        agencies: Sequence[str],
        *,
        policy: str = "require",
        in_process: bool = False,
    ) -> str:
        """Register a DMS of the hub API on node ``name`` and return its secret (shown once).

        By default with ``gateway systems add`` (:meth:`systems_add_command`), a process of its
        own as an operator runs it; RuntimeError when it fails. ``in_process``: the same
        :func:`gateway.node.systems.add_system` in this process, without an interpreter's
        start-up (its events go to this process's logging). The node may be running or not.
        """
        if in_process:
            from gateway.node.container import Node
            from gateway.node.systems import add_system

            settings = load_settings(self.nodes[name].config, environ=dict(os.environ))
            engine = db.make_engine(settings)
            try:
                node = Node.from_settings(settings, engine)
                return add_system(node, systemid, agencies, policy=policy, actor="admin:devnet")[1]
            finally:
                engine.dispose()
        done = subprocess.run(
            self.systems_add_command(name, systemid, agencies, policy=policy),
            capture_output=True,
            text=True,
            env={**os.environ},
            timeout=120,
        )
        found = _SECRET_LINE.search(done.stdout)
        if done.returncode != 0 or found is None:
            raise RuntimeError(
                f"gateway systems add {systemid} on {name} failed ({done.returncode}): "
                f"{done.stderr.strip()[-2000:]}"
            )
        return found.group(1)

    def _context(self) -> ssl.SSLContext:
        assert self.ca is not None, "create() the network first"
        return ssl.create_default_context(cafile=str(self.ca.root_cert))

    def start(self, *names: str, timeout: float = 30.0) -> None:
        """Start the named nodes (all when none are named) and wait until each answers."""
        chosen = names or tuple(self.nodes)
        for name in chosen:
            running = self.nodes[name]
            if running.process is not None and running.process.poll() is None:
                continue
            running.log = running.folder / f"node-{int(time.time() * 1000)}.log"
            with running.log.open("wb") as out:
                running.process = subprocess.Popen(
                    [GATEWAY, "serve", "--config", str(running.config)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ},
                    start_new_session=True,  # Ctrl-C in a terminal reaches us, not the nodes
                )
        deadline = time.monotonic() + timeout
        for name in chosen:
            running = self.nodes[name]
            assert running.process is not None and running.log is not None
            while True:
                if running.process.poll() is not None:
                    raise RuntimeError(
                        f"node {name} exited: {running.log.read_text(errors='replace')[-3000:]}"
                    )
                try:
                    with httpx.Client(verify=self._context(), timeout=1) as probe:
                        if probe.get(f"{self.url(name)}/healthz").status_code == 200:
                            break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node {name} did not come up within {timeout} s")
                time.sleep(0.05)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop one node (SIGKILL: as if the machine died)."""
        for key in [k for k in self._clients if k[1] == name]:
            self._clients.pop(key).close()
        running = self.nodes[name]
        process = running.process
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        running.process = None

    def running(self, name: str) -> bool:
        process = self.nodes[name].process
        return process is not None and process.poll() is None

    def close(self) -> None:
        """Stop every node (all signalled first: each waits a moment for its neighbours'
        idle connections) and close every client."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        for running in self.nodes.values():
            if running.process is not None and running.process.poll() is None:
                running.process.send_signal(signal.SIGTERM)
        for name in self.nodes:
            self.stop(name)

    # -- agencies -----------------------------------------------------------------------------

    def node_of(self, agency: str) -> str:
        for spec in self.specs:
            if agency in spec.agencies:
                return spec.name
        raise KeyError(f"no node of this network hosts {agency}")

    def client(self, who: str) -> httpx.Client:
        """An HTTPS client of ``who`` (an agency code, or a node name for its admin API)."""
        node = who if who in self.nodes else self.node_of(who)
        key = (who, node)
        if key not in self._clients:
            context = self._context()
            cert, private = _issued_paths(self.pki, who)
            context.load_cert_chain(str(cert), str(private))
            self._clients[key] = httpx.Client(base_url=self.url(node), verify=context, timeout=30)
        return self._clients[key]

    def key(self, agency: str) -> SigningKey:
        if agency not in self._keys:
            cert, private = _issued_paths(self.pki, agency)
            self._keys[agency] = SigningKey.load(private, cert)
        return self._keys[agency]

    def signed_document(
        self, sender: str, recipients: Sequence[str], *, subject: str = "Công văn thử nghiệm"
    ) -> tuple[str, bytes]:
        """(DocumentId, signed package) from ``sender`` to ``recipients``."""
        today = time.strftime("%Y/%m/%d")
        document_id = f"{sender},{today},{uuid.uuid4().hex[:12]}/CV"
        unsigned = document(sender, recipients, subject=subject, document_id=document_id)
        return document_id, sign_package(unsigned, self.key(sender))

    def send(
        self, sender: str, recipients: Sequence[str], *, subject: str = "Công văn thử nghiệm"
    ) -> tuple[str, dict[str, Any]]:
        """Push a new signed document as ``sender``'s DMS; (DocumentId, the node's answer)."""
        document_id, data = self.signed_document(sender, recipients, subject=subject)
        return document_id, self.push(sender, data)

    def push(self, sender: str, data: bytes, path: str = "/api/v1/documents") -> dict[str, Any]:
        response = self.client(sender).post(
            path, content=data, headers={"content-type": "application/xml"}
        )
        if response.status_code != 202:
            raise RuntimeError(f"{sender}: {response.status_code} {response.text}")
        answer: dict[str, Any] = response.json()
        return answer

    def signed_status(self, reporter: str, *, sender: str, document_id: str, code: str) -> bytes:
        """A status package (``code``) about ``sender``'s document, signed by ``reporter``."""
        return sign_package(
            status(reporter, sender=sender, document_id=document_id, code=code),
            self.key(reporter),
        )

    def report(self, reporter: str, *, sender: str, document_id: str, code: str) -> dict[str, Any]:
        """Push a signed status package (``code``) about ``sender``'s document."""
        data = self.signed_status(reporter, sender=sender, document_id=document_id, code=code)
        return self.push(reporter, data, "/api/v1/statuses")

    def inbox(self, agency: str) -> list[dict[str, Any]]:
        """Every item waiting in ``agency``'s inbox (all pages)."""
        items: list[dict[str, Any]] = []
        after = 0
        while True:
            response = self.client(agency).get(
                "/api/v1/inbox", params={"limit": 500, "after": after}
            )
            response.raise_for_status()
            page = response.json()
            items.extend(page["items"])
            if page["next_after"] is None:
                return items
            after = page["next_after"]


def _issued_paths(folder: Path, name: str) -> tuple[Path, Path]:
    """The certificate and key files the dev PKI wrote for ``name``."""
    cert, key = folder / f"{name}.cert.pem", folder / f"{name}.key.pem"
    if not cert.is_file() or not key.is_file():
        raise FileNotFoundError(f"no certificate issued for {name} in {folder}")
    return cert, key


def wait_for(check: Callable[[], T | None], *, timeout: float, every: float = 0.1) -> T:
    """Call ``check`` until it returns something truthy; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"still waiting after {timeout} s")
        time.sleep(every)
