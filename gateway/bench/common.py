"""What the benchmarks share: signed test documents, a node process, the bare HTTP client, the
CPU clock of a process, and the arithmetic of the figures.

The clients speak HTTP/1.1 by hand over asyncio (+ uvloop, in their own process): about 0.4 ms
of CPU per request, where httpx would cost 2-7x that and starve the node of the 2 cores.

Usage::

    template = document_template("000.00.01.H49", "000.00.02.H49", content_chars=4000)
    signed = sign_batch("agency.key.pem", "agency.cert.pem", template, ["01000001"])
    process = start_node([GATEWAY], config, log, port, root_cert)
    status, answer = await exchange(reader, writer, request_head(port), signed[0])
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import multiprocessing
import os
import signal
import sqlite3
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final

import click
from lxml import etree

from gateway.dev.network import GATEWAY
from gateway.dev.samples import DATA
from gateway.envelope.model import EDXML_NS

__all__ = [
    "DOCUMENTS_PATH",
    "GATEWAY",
    "SERIAL",
    "SPAWN",
    "Agency",
    "count_documents",
    "cpu_seconds",
    "document_template",
    "exchange",
    "ms_per",
    "percentile",
    "request_head",
    "sign_all",
    "sign_batch",
    "start_node",
    "stop_node",
    "upgrade",
    "work_folder",
    "write_config",
]

#: the placeholder a document template carries in its DocumentId, replaced before signing
SERIAL: Final = b"@SERIAL@"
#: where an agency's DMS pushes documents
DOCUMENTS_PATH: Final = "/api/v1/documents"
#: worker processes start clean (no forked threads, engines or event loops)
SPAWN = multiprocessing.get_context("spawn")

_SAMPLE: Final = DATA / "edoc_update.edxml"
_PARSER: Final = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)


def _q(name: str) -> str:
    return f"{{{EDXML_NS}}}{name}"


@dataclass(frozen=True)
class Agency:
    """A sending agency of a benchmark and its dev PKI files."""

    code: str
    key: Path
    cert: Path


# --- documents -------------------------------------------------------------------------------


def document_template(sender: str, recipient: str, content_chars: int) -> bytes:
    """An unsigned document From ``sender`` To ``recipient`` whose DocumentId holds SERIAL."""
    root = etree.fromstring(_SAMPLE.read_bytes(), _PARSER)
    header = root.find(f"{_q('edXMLEnvelope')}/{_q('edXMLHeader')}")
    assert header is not None
    for old in header.findall("{*}Signature"):
        header.remove(old)
    message = header.find(_q("MessageHeader"))
    assert message is not None
    organ = message.find(f"{_q('From')}/{_q('OrganId')}")
    assert organ is not None
    organ.text = sender
    tos = message.findall(_q("To"))
    for extra in tos[1:]:
        message.remove(extra)
    to_organ = tos[0].find(_q("OrganId"))
    assert to_organ is not None
    to_organ.text = recipient
    document_id = message.find(_q("DocumentId"))
    assert document_id is not None
    document_id.text = f"{sender},2026/11/23,{SERIAL.decode()}/BENCH"
    for trace in header.iter(_q("TraceHeader")):
        trace_organ = trace.find(_q("OrganId"))
        if trace_organ is not None:
            trace_organ.text = sender
    business = header.find(f"{_q('TraceHeaderList')}/{_q('Bussiness')}")
    if business is not None:
        parent = business.getparent()
        assert parent is not None
        parent.remove(business)
    for n, encoded in enumerate(root.iter(_q("ContentTransferEncoded"))):
        room = max(content_chars, 16) if n == 0 else 16
        raw = os.urandom(room * 3 // 4 + 3)
        encoded.text = base64.b64encode(raw).decode("ascii")[: room - room % 4]
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


_KEYS: dict[tuple[str, str], Any] = {}


def sign_batch(key: str, cert: str, template: bytes, serials: Sequence[str]) -> list[bytes]:
    """Sign one document per serial (runs in a worker process; keys loaded once per worker)."""
    from gateway.trust.signing import SigningKey, sign_package

    loaded = _KEYS.get((key, cert))
    if loaded is None:
        loaded = _KEYS[(key, cert)] = SigningKey.load(Path(key), Path(cert))
    return [sign_package(template.replace(SERIAL, s.encode("ascii")), loaded) for s in serials]


def _serial(client: int, n: int) -> str:
    text = f"{client:02d}{n:06d}"
    assert len(text) == len(SERIAL)
    return text


def sign_all(agencies: Sequence[Agency], counts: Sequence[int], size: int) -> list[list[bytes]]:
    """``counts[c]`` signed documents From agency ``c`` To agency ``c + 1``, in 2 processes.

    ``size`` is the package before signing, as in ``gateway bench envelopes``; the signature and
    the two embedded certificates (leaf, intermediate) add about 4 KB on the wire.
    """
    codes = [a.code for a in agencies]
    content = size - len(document_template(codes[0], codes[1 % len(codes)], 16)) + 16
    signed: list[list[bytes]] = [[] for _ in agencies]
    with ProcessPoolExecutor(max_workers=2, mp_context=SPAWN) as pool:
        jobs = []
        for c, agency in enumerate(agencies):
            template = document_template(codes[c], codes[(c + 1) % len(codes)], content)
            serials = [_serial(c, n) for n in range(counts[c])]
            for first in range(0, len(serials), 100):
                batch = serials[first : first + 100]
                args = (str(agency.key), str(agency.cert), template, batch)
                jobs.append((c, pool.submit(sign_batch, *args)))
        for c, job in jobs:
            signed[c].extend(job.result())
    return signed


# --- a node process ----------------------------------------------------------------------------


@contextlib.contextmanager
def work_folder(keep: Path | None, prefix: str) -> Iterator[Path]:
    """``keep`` (created if need be), or a temporary folder removed afterwards."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        yield Path(name)


def write_config(
    path: Path,
    *,
    node_key: Path,
    node_cert: Path,
    agencies: Sequence[str],
    database: Path,
    port: int,
    ca: Any,
    log_level: str,
    workers: int = 1,
) -> Path:
    """The settings file of the benchmarks' node, ``bench-node``, on SQLite."""
    from gateway.dev.nodeconfig import write_node_config

    issued = SimpleNamespace(key=node_key, cert=node_cert)
    return write_node_config(
        path,
        name="bench-node",
        agencies=agencies,
        node=issued,  # type: ignore[arg-type]  # only .key and .cert are read
        ca=ca,
        database_url=f"sqlite:///{database}",
        port=port,
        extra={"logging": {"level": log_level}, "server": {"workers": workers}},
    )


def upgrade(config: Path) -> None:
    """``gateway db upgrade`` on the node's database."""
    done = subprocess.run(
        [GATEWAY, "db", "upgrade", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise click.ClickException(f"gateway db upgrade failed: {done.stderr[-2000:]}")


def start_node(
    command: Sequence[str], config: Path, log: Path, port: int, root_cert: Path
) -> subprocess.Popen[bytes]:
    """``COMMAND serve --config CONFIG``, once its ``/healthz`` answers 200 (60 s at most)."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "serve", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    context = ssl.create_default_context(cafile=str(root_cert))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException(f"the node exited: {log.read_text()[-3000:]}")
        probe = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=2)
        try:
            probe.request("GET", "/healthz")
            if probe.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.1)
        finally:
            probe.close()
    stop_node(process)
    raise click.ClickException(f"the node did not come up: {log.read_text()[-3000:]}")


def stop_node(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process and its live descendants, every thread.

    Read from ``/proc/<pid>/stat`` (utime + stime); the descendants count so that a node that
    forks workers (uvicorn ``--workers``) is measured whole.
    """
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
        except FileNotFoundError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[0] is field 3 (state): utime and stime are fields 14 and 15
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(FileNotFoundError):
                pending.extend(int(child) for child in task.read_text().split())
    return total


def count_documents(database: Path, sender: str | None = None) -> int:
    """Documents stored in a node's SQLite file (from ``sender`` only, when given), read-only:
    the node is not asked."""
    sql = "SELECT count(*) FROM documents"
    args: tuple[str, ...] = ()
    if sender is not None:
        sql, args = sql + " WHERE sender = ?", (sender,)
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        (count,) = conn.execute(sql, args).fetchone()
    return int(count)


# --- the bare HTTP/1.1 client ------------------------------------------------------------------


def request_head(port: int) -> bytes:
    """The head of a document push, ``%d`` standing for the body's length."""
    return (
        f"POST {DOCUMENTS_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/xml\r\nContent-Length: %d\r\n\r\n"
    ).encode("ascii")


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes
) -> tuple[int, bytes]:
    """Send one request on a keep-alive connection; (status, body) of the answer."""
    writer.write(head % len(body) + body)
    header = await reader.readuntil(b"\r\n\r\n")
    lines = header.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise RuntimeError(f"no content-length in the node's answer: {header!r}")
    return status, await reader.readexactly(length)


# --- figures -----------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The value at ``fraction`` (0.5: the median) of values sorted in ascending order."""
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def ms_per(seconds: float, count: int) -> float:
    """Milliseconds per item; NaN when there was none."""
    return seconds / count * 1000 if count else float("nan")
