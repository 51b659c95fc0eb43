"""The network benchmark's agency DMS: documents signed ahead of time into files, and the one
client process that pushes them into a node, phase by phase.

The clients take the documents in order from one shared list, each keep-alive connection with
one request in flight; each document's push start and end are recorded on the wall clock
(``time.time``), which the nodes' ``received_at`` also use.

Usage::

    batch = sign_phase(pool, (key, cert), template, phase=3, count=2000, folder=signed)
    with contextlib.closing(Pusher(Target(port, root_cert, cert, key))) as pusher:
        pusher.prepare(8, batch, warm=None)   # connect, warm up: not timed
        pusher.go()
        pushed = pusher.result()              # starts, ends, client CPU, failures
"""

from __future__ import annotations

import asyncio
import ssl
import struct
import time
import traceback
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import click

from gateway.bench.common import SERIAL, SPAWN, exchange, request_head, sign_batch

__all__ = ["Batch", "Pushed", "Pusher", "Target", "sign_phase"]

#: documents per signing job (and per file)
_SIGN_BATCH: Final = 100


# --- signed documents, in files the client process reads -------------------------------------


def _serial(phase: int, n: int) -> str:
    text = f"{phase}{n:07d}"
    assert len(text) == len(SERIAL)
    return text


def _sign_to_file(key: str, cert: str, template: bytes, serials: list[str], path: str) -> int:
    """Sign one document per serial into ``path`` (runs in a worker process)."""
    signed = sign_batch(key, cert, template, serials)
    with open(path, "wb") as out:
        for body in signed:
            out.write(struct.pack(">I", len(body)))
            out.write(body)
    return sum(len(b) for b in signed)


def _read_file(path: str) -> list[bytes]:
    data = Path(path).read_bytes()
    bodies, offset = [], 0
    while offset < len(data):
        (size,) = struct.unpack_from(">I", data, offset)
        bodies.append(data[offset + 4 : offset + 4 + size])
        offset += 4 + size
    return bodies


@dataclass
class Batch:
    """Signed documents of one phase: their serials, and the files they are written to."""

    serials: list[str]
    files: list[str]
    jobs: list[Future[int]] = field(default_factory=list)

    def wait(self) -> int:
        """Bytes signed (waits for the workers)."""
        return sum(job.result() for job in self.jobs)


def sign_phase(
    pool: ProcessPoolExecutor,
    key: tuple[Path, Path],
    template: bytes,
    phase: int,
    count: int,
    folder: Path,
    first: int = 0,
) -> Batch:
    serials = [_serial(phase, n) for n in range(first, first + count)]
    batch = Batch(serials=serials, files=[])
    for start in range(0, count, _SIGN_BATCH):
        path = folder / f"signed-{phase}-{first + start:07d}.bin"
        chunk = serials[start : start + _SIGN_BATCH]
        args = (str(key[0]), str(key[1]), template, chunk, str(path))
        batch.jobs.append(pool.submit(_sign_to_file, *args))
        batch.files.append(str(path))
    return batch


# --- the clients (their own process) -----------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The commune node as the agency's DMS reaches it."""

    port: int
    root_cert: str
    cert: str
    key: str

    @property
    def head(self) -> bytes:
        """The request head, ``%d`` standing for the body's length."""
        return request_head(self.port)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        context = ssl.create_default_context(cafile=self.root_cert)
        context.load_cert_chain(self.cert, self.key)
        return await asyncio.open_connection("127.0.0.1", self.port, ssl=context)


def _client_process(target: Target, commands: Any, replies: Any) -> None:
    """Serve push commands until ``None``: for each, connect and warm up, wait for "go", push.

    A command is ``(connections, warm_files, files)``. The connections take the documents in
    order from one shared list (each has one request in flight); each document's push start and
    end are recorded on the wall clock (``time.time``), which the nodes' ``received_at`` also
    use. The connections are closed after each command.
    """
    try:
        import uvloop

        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        while (command := commands.get()) is not None:
            replies.put(("done", _push_phase(loop, target, command, commands, replies)))
        loop.close()
    except BaseException:
        replies.put(("error", traceback.format_exc()))


def _push_phase(
    loop: asyncio.AbstractEventLoop,
    target: Target,
    command: tuple[int, list[str], list[str]],
    commands: Any,
    replies: Any,
) -> tuple[list[float], list[float], float, list[str]]:
    connections, warm_files, files = command
    head = target.head
    warm = [body for name in warm_files for body in _read_file(name)]
    bodies = [body for name in files for body in _read_file(name)]
    streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    starts = [0.0] * len(bodies)
    ends = [0.0] * len(bodies)
    failures: list[str] = []
    cursor = [0]

    async def open_all() -> None:
        for _ in range(connections):
            streams.append(await target.connect())
        for n, body in enumerate(warm):
            reader, writer = streams[n % len(streams)]
            status, answer = await exchange(reader, writer, head, body)
            if status != 202:
                raise RuntimeError(f"warm-up answered {status}: {answer[:500]!r}")

    async def push(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while cursor[0] < len(bodies):
            index = cursor[0]
            cursor[0] += 1
            starts[index] = time.time()
            status, answer = await exchange(reader, writer, head, bodies[index])
            ends[index] = time.time()
            if status != 202:
                failures.append(f"{status}: {answer[:300]!r}")

    async def push_all() -> None:
        await asyncio.gather(*(push(r, w) for r, w in streams))

    loop.run_until_complete(open_all())
    replies.put(("ready", None))
    if commands.get() != "go":
        raise RuntimeError("the client process expected go")
    cpu0 = time.process_time()
    loop.run_until_complete(push_all())
    cpu = time.process_time() - cpu0
    for _, writer in streams:
        writer.close()
    loop.run_until_complete(asyncio.sleep(0))
    return starts, ends, cpu, failures


@dataclass
class Pushed:
    starts: list[float]
    ends: list[float]
    client_cpu: float
    failures: list[str]

    @property
    def wall(self) -> float:
        return max(self.ends) - min(self.starts)


class Pusher:
    """The client process (one for the whole run), pushing as an agency's DMS."""

    def __init__(self, target: Target) -> None:
        self._commands: Any = SPAWN.Queue()
        self._replies: Any = SPAWN.Queue()
        self._process = SPAWN.Process(
            target=_client_process, args=(target, self._commands, self._replies), daemon=True
        )
        self._process.start()

    def _reply(self, expected: str, timeout: float) -> Any:
        kind, payload = self._replies.get(timeout=timeout)
        if kind != expected:
            raise click.ClickException(f"the client process failed:\n{payload}")
        return payload

    def prepare(self, connections: int, batch: Batch, warm: Batch | None) -> None:
        """Connect and send the warm-up documents (not timed); push on :meth:`go`."""
        warm_files = warm.files if warm is not None else []
        self._commands.put((connections, warm_files, batch.files))
        self._reply("ready", 300)

    def go(self) -> None:
        self._commands.put("go")

    def result(self) -> Pushed:
        starts, ends, cpu, failures = self._reply("done", 7200)
        return Pushed(starts=starts, ends=ends, client_cpu=cpu, failures=failures)

    def close(self) -> None:
        if self._process.is_alive():
            self._commands.put(None)
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
