"""Running a node: one process, or a supervisor and ``[server] workers`` worker processes.

A node's CPU work (TLS, verification, storage) runs under one GIL per process, so one process
uses one core. With ``workers = N`` the supervisor binds the listening socket once and forks N
workers that all accept on it; each builds its own database engine, trust store and app.

* **Worker 0 is the primary**: it alone runs the outbox dispatcher, its housekeeping and the
  audit checkpoints (on SQLite exactly one dispatcher may send a database's rows, in order),
  and the webhook sender (``[webhooks]``, gateway.node.webhooks). Every worker reloads trust
  files itself.
* **Wake-ups cross processes**: a package stored by another worker wakes the primary's
  dispatcher through a pipe the supervisor made before forking (a line of peer names); the
  dispatcher's tick catches anything a full pipe dropped.
* **Writers queue across processes**: on SQLite,
  :meth:`gateway.node.container.Node.writing` takes an ``flock`` next to the database, so
  writers of all workers (and of CLI commands) queue in the kernel instead of polling SQLite's
  busy handler.
* **Supervision**: a worker that dies is started again (its replacement waits a moment if it
  keeps dying); SIGTERM or SIGINT stops every worker gracefully, then the supervisor. Workers
  die with the supervisor, even on SIGKILL (``PR_SET_PDEATHSIG`` on Linux, a watchdog thread
  elsewhere), so a killed node never leaves a worker serving.
* A worker that dies five times in a row before serving (a bug, a broken installation)
  stops the node: ``gateway serve`` exits with 1 rather than restart it for ever.

Usage::

    run_node(settings, config_path)      # what `gateway serve` calls; blocks until stopped
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog

from gateway.api import server
from gateway.envelope import schema
from gateway.errors import ConfigError, WorkerFailed
from gateway.logs import configure
from gateway.node.container import Node, record_start
from gateway.settings import Settings
from gateway.storage import db

__all__ = ["run_node"]

log = structlog.get_logger("gateway.supervisor")

#: seconds a worker that keeps dying waits before it is started again (doubling, capped)
_RESTART_PAUSE: Final = (0.5, 30.0)
#: a worker that served this long before dying is restarted at once
_HEALTHY_SECONDS: Final = 30.0
#: a worker that dies this many times in a row before serving stops the node
_MAX_FAILED_BOOTS: Final = 5
#: seconds the supervisor waits for its workers after SIGTERM before it kills them
_STOP_SECONDS: Final = 15.0
_PR_SET_PDEATHSIG: Final = 1
#: connections a listening socket queues before the workers accept them (uvicorn's default)
_BACKLOG: Final = 2048
#: seconds a port still taken (by a killed node's dying workers) is tried again
_BIND_SECONDS: Final = 10.0


def run_node(settings: Settings, config: Path) -> None:
    """Check the database and the settings, then serve until SIGTERM/SIGINT (blocking).

    Raises :class:`~gateway.errors.GatewayError` (``DatabaseNotMigrated``, ``ConfigError``,
    ...) before anything listens.
    """
    engine = db.make_engine(settings)
    db.require_current(engine, config=config)
    node = Node.from_settings(settings, engine)
    schema.check_schemas()  # compile both validators now, not on the first refusal
    record_start(node)
    if settings.server.workers == 1:
        _serve(node)
        return
    engine.dispose()  # no pooled connection may cross a fork
    server.make_ssl_context(settings)  # a [tls] problem is reported now, not by each worker
    supervisor = Supervisor(settings)
    supervisor.run()
    if supervisor.failed:
        raise WorkerFailed(
            f"a worker of node {settings.node.name} died {_MAX_FAILED_BOOTS} times in a row "
            "before serving: see the log lines before this one"
        )


def _serve(
    node: Node,
    *,
    sockets: list[socket.socket] | None = None,
    hub_socket: socket.socket | None = None,
    primary: bool = True,
    on_started: Callable[[], None] | None = None,
) -> None:
    """One serving process: the app (and the hub API's own listener, ``[hub] port``), its
    background jobs, uvicorn."""
    from gateway.api.app import create_app, create_hub_app
    from gateway.network.scheduler import checkpoint_now, start

    app = create_app(node)
    config = server.make_config(app, node.settings)
    hub_app = create_hub_app(node, app)
    hub_config = server.make_hub_config(hub_app, node.settings) if hub_app is not None else None
    if hub_config is not None and hub_socket is None:
        hub_socket = _bind_hub(node.settings)  # before anything listens: a clear error
    dispatcher = None
    pulls: list[tuple[str, Callable[[], object], float]] = []
    if primary and node.directory is not None:
        from adapters.hub.parent import HubAwareTransport, HubPoller
        from adapters.peer import HttpsPeerTransport
        from gateway.network.dispatcher import Dispatcher

        transport = HttpsPeerTransport(node.settings)
        parent = node.settings.directory.parent
        if parent is not None and parent.kind == "hub":
            # a national hub as parent: sendEdoc to it, and pull what it holds for us
            dispatcher = Dispatcher(node, HubAwareTransport(node.settings, transport))
            pulls.append(("hub-poll", HubPoller(node).poll, parent.poll_interval))
        else:
            dispatcher = Dispatcher(node, transport)
    webhooks = None
    if primary and node.settings.webhooks.endpoints:
        from adapters.webhooks import HttpsWebhookTransport
        from gateway.node.webhooks import Sender

        webhooks = Sender(node, HttpsWebhookTransport(node.settings))
    scheduler = start(node, dispatcher, primary=primary, jobs=pulls, webhooks=webhooks)
    try:
        server.GatewayServer(
            config, on_started=on_started, hub=hub_config, hub_socket=hub_socket
        ).run(sockets)
    finally:
        scheduler.shutdown(wait=False)
        if primary:
            checkpoint_now(node)


# --- the supervisor --------------------------------------------------------------------------


@dataclass
class _Worker:
    index: int
    pid: int = 0
    started: float = 0.0
    #: it said it serves since it was last started
    serving: bool = False
    #: deaths in a row before it said it serves
    failed_boots: int = 0
    pause: float = 0.0
    #: monotonic time before which a dead worker is not started again
    not_before: float = 0.0


@dataclass
class Supervisor:
    """Forks ``[server] workers`` serving processes on one socket and keeps them running."""

    settings: Settings
    _workers: list[_Worker] = field(default_factory=list)
    _stopping: bool = False
    #: set when a worker could not start, time after time (`gateway serve` then fails)
    failed: bool = False

    def run(self) -> None:
        settings = self.settings
        sock = _bind(settings)
        try:
            hub_sock = _bind_hub(settings)
        except BaseException:
            sock.close()
            raise
        # wake-ups for the primary's dispatcher, and "worker i is serving" for this process
        wake_read, wake_write = os.pipe()
        ready_read, ready_write = os.pipe()
        for fd in (wake_write, ready_read):
            os.set_blocking(fd, False)
        self._workers = [_Worker(i) for i in range(settings.server.workers)]
        previous = {s: signal.signal(s, self._on_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        scheme = "https" if self._is_ssl() else "http"
        log.info(
            "supervisor.started",
            url=f"{scheme}://{settings.server.host}:{sock.getsockname()[1]}",
            pid=os.getpid(),
            workers=len(self._workers),
        )
        try:
            while not self._stopping:
                now = time.monotonic()
                for worker in self._workers:
                    if worker.pid == 0 and now >= worker.not_before:
                        self._fork(worker, (sock, hub_sock), (wake_read, wake_write), ready_write)
                self._read_ready(ready_read)
                self._reap()
                time.sleep(0.1)
        finally:
            self._stop_all()
            for s, handler in previous.items():
                signal.signal(s, handler)
            for fd in (wake_read, wake_write, ready_read, ready_write):
                os.close(fd)
            sock.close()
            if hub_sock is not None:
                hub_sock.close()
            log.info("supervisor.stopped", pid=os.getpid())

    def _on_stop(self, signum: int, _frame: Any) -> None:
        self._stopping = True

    def _fork(
        self,
        worker: _Worker,
        sock: tuple[socket.socket, socket.socket | None],
        wake: tuple[int, int],
        ready: int,
    ) -> None:
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                _worker_main(self.settings, worker.index, supervisor, sock, wake, ready)
                code = 0
            except BaseException:  # reported, then the worker exits with 1
                log.exception("worker.crashed", worker=worker.index)
            finally:
                os._exit(code)
        worker.pid, worker.started = pid, time.monotonic()
        log.info("supervisor.worker_started", worker=worker.index, pid=pid)

    def _read_ready(self, fd: int) -> None:
        """Note the workers that said they serve (a byte each: their index)."""
        with contextlib.suppress(BlockingIOError):
            for byte in os.read(fd, 1024):
                if byte < len(self._workers):
                    worker = self._workers[byte]
                    if not worker.serving:
                        log.info("supervisor.worker_serving", worker=byte, pid=worker.pid)
                    worker.serving, worker.failed_boots = True, 0

    def _is_ssl(self) -> bool:
        return self.settings.tls.cert is not None

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for worker in self._workers:
                if worker.pid != pid:
                    continue
                worker.pid = 0
                served = time.monotonic() - worker.started
                if self._stopping:
                    break
                if not worker.serving:
                    worker.failed_boots += 1
                    if worker.failed_boots >= _MAX_FAILED_BOOTS:
                        log.error(
                            "supervisor.giving_up",
                            worker=worker.index,
                            failed_boots=worker.failed_boots,
                        )
                        self.failed = True
                        self._stopping = True
                        break
                worker.serving = False
                low, high = _RESTART_PAUSE
                worker.pause = (
                    0.0 if served >= _HEALTHY_SECONDS else min(high, max(low, worker.pause * 2))
                )
                worker.not_before = time.monotonic() + worker.pause
                log.error(
                    "supervisor.worker_died",
                    worker=worker.index,
                    pid=pid,
                    status=os.waitstatus_to_exitcode(status),
                    served_seconds=round(served, 1),
                    restart_in=worker.pause,
                )

    def _stop_all(self) -> None:
        live = [w for w in self._workers if w.pid]
        for worker in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_SECONDS
        while any(w.pid for w in self._workers) and time.monotonic() < deadline:
            self._reap_quiet()
            time.sleep(0.05)
        for worker in self._workers:
            if worker.pid:
                log.error("supervisor.worker_killed", worker=worker.index, pid=worker.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(worker.pid, 0)
                worker.pid = 0

    def _reap_quiet(self) -> None:
        for worker in self._workers:
            if not worker.pid:
                continue
            with contextlib.suppress(ChildProcessError):
                pid, _ = os.waitpid(worker.pid, os.WNOHANG)
                if pid:
                    worker.pid = 0


def _bind(settings: Settings) -> socket.socket:
    """The listening socket all workers accept on, listening from here on: no other process
    can take the port between this bind and the workers' start (with SO_REUSEADDR two bound
    but idle sockets may share a port), and connections wait in its queue meanwhile.

    A port still held by the workers of a node that was just killed is retried for a few
    seconds (they die with their supervisor, a moment after it); any other failure, or a port
    that stays taken, is a :class:`ConfigError` naming ``[server]``.
    """
    return _bind_to(settings.server.host, settings.server.port, "server")


def _bind_hub(settings: Settings) -> socket.socket | None:
    """The hub API's own listening socket (``[hub] port``), like :func:`_bind`; None when it is
    served on the node's listener."""
    hub = settings.hub
    if not hub.enabled or hub.port == 0:
        return None
    return _bind_to(hub.host or settings.server.host, hub.port, "hub")


def _bind_to(host: str, port: int, section: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + _BIND_SECONDS
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(_BACKLOG)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            raise ConfigError(
                f"[{section}] cannot listen on {host}:{port}: {exc.strerror}",
                detail={"key": f"{section}.port"},
            ) from None
        sock.set_inheritable(True)
        return sock


# --- a worker --------------------------------------------------------------------------------


def _worker_main(
    settings: Settings,
    index: int,
    supervisor: int,
    socks: tuple[socket.socket, socket.socket | None],
    wake: tuple[int, int],
    ready: int,
) -> None:
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_DFL)
    _die_with(supervisor)
    configure(settings.logging.level, worker=index)
    wake_read, wake_write = wake
    primary = index == 0
    node = Node.from_settings(settings, db.make_engine(settings))
    if primary:
        threading.Thread(
            target=_relay_wakes, args=(wake_read, node), name="wake-reader", daemon=True
        ).start()
    else:
        node.on_wake(lambda peers: _send_wake(wake_write, peers))

    def started() -> None:
        with contextlib.suppress(OSError):
            os.write(ready, bytes([index]))

    sock, hub_sock = socks
    _serve(node, sockets=[sock], hub_socket=hub_sock, primary=primary, on_started=started)


def _send_wake(fd: int, peers: Iterable[str]) -> None:
    """Tell the primary that packages for ``peers`` were stored (dropped when the pipe is full:
    the dispatcher's tick finds them)."""
    for peer in sorted(peers):
        # one short line per write: writes up to PIPE_BUF bytes are atomic, so lines from
        # several workers never interleave
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(fd, peer.encode("ascii", "replace")[: select.PIPE_BUF - 1] + b"\n")


def _relay_wakes(fd: int, node: Node) -> None:
    """In the primary: read peer names other workers stored packages for; wake the dispatcher."""
    os.set_blocking(fd, True)
    pending = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            return
        if not chunk:
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        names = {line.decode("ascii", "replace") for line in lines if line}
        if names:
            node.wake(names)


def _die_with(supervisor: int) -> None:
    """Make this worker die when the supervisor does, even by SIGKILL."""
    libc_name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    if libc_name:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != supervisor:  # it died before prctl took effect
                os._exit(1)
            return

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()
