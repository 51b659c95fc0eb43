"""The network benchmark's view of the nodes: read-only connections to their SQLite files.

Counts and arrival times are read from the files, so that watching does not cost the nodes a
request; the waits give up when a count stops moving.

Usage::

    with contextlib.closing(Watch(net)) as watch:
        await_count("arrivals", lambda: watch.delivered("central", "000.00.00.G12"), 2000)
        await_quiet(watch)  # no outbox row waits on any node
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import click

from gateway.dev.network import Network

__all__ = ["Watch", "await_count", "await_quiet"]

#: give up when the awaited count has not moved for this long
_STALL_SECONDS: Final = 120.0


class Watch:
    """Read-only connections to every node's SQLite file: counts and arrival times."""

    def __init__(self, net: Network) -> None:
        self._conns = {
            name: sqlite3.connect(
                f"file:{running.folder / 'node.db'}?mode=ro", uri=True, check_same_thread=False
            )
            for name, running in net.nodes.items()
        }

    def count(self, node: str, sql: str, *args: Any) -> int:
        (value,) = self._conns[node].execute(sql, args).fetchone()
        return int(value)

    def delivered(self, node: str, recipient: str, states: Sequence[str] = ("delivered",)) -> int:
        """Delivery rows for ``recipient`` at ``node`` in ``states`` (an index-only count)."""
        marks = ",".join("?" * len(states))
        return self.count(
            node,
            f"SELECT count(*) FROM deliveries WHERE recipient = ? AND state IN ({marks})",  # noqa: S608
            recipient,
            *states,
        )

    def waiting(self) -> int:
        """Outbox rows waiting (or leased) on every node."""
        return sum(
            self.count(name, "SELECT count(*) FROM deliveries WHERE next_attempt_at IS NOT NULL")
            for name in self._conns
        )

    def arrivals(self, node: str, sender: str) -> dict[str, float]:
        """DocumentId -> ``received_at`` (POSIX seconds) of the documents from ``sender``."""
        rows = self._conns[node].execute(
            "SELECT document_id, received_at FROM documents WHERE kind = 'document' AND sender = ?",
            (sender,),
        )
        return {doc: _posix(at) for doc, at in rows}

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()


def _posix(stored: str) -> float:
    """A ``UTCDateTime`` as SQLite stores it (naive, UTC) in POSIX seconds."""
    return dt.datetime.fromisoformat(stored).replace(tzinfo=dt.UTC).timestamp()


def await_count(what: str, count: Callable[[], int], target: int, *, every: float = 0.1) -> float:
    """Poll ``count`` until it reaches ``target``; the time it did. Fails when stalled."""
    last, moved = -1, time.monotonic()
    while True:
        now = count()
        if now >= target:
            return time.time()
        if now != last:
            last, moved = now, time.monotonic()
        elif time.monotonic() - moved > _STALL_SECONDS:
            raise click.ClickException(
                f"{what}: stuck at {now} of {target} for {_STALL_SECONDS:.0f} s"
            )
        time.sleep(every)


def await_quiet(watch: Watch, *, every: float = 0.2) -> float:
    """Wait until no outbox row waits on any node (twice in a row); the time it was so."""
    quiet = 0
    last, moved = -1, time.monotonic()
    while quiet < 2:
        waiting = watch.waiting()
        quiet = quiet + 1 if waiting == 0 else 0
        if waiting != last:
            last, moved = waiting, time.monotonic()
        elif waiting and time.monotonic() - moved > _STALL_SECONDS:
            raise click.ClickException(f"{waiting} outbox rows still waiting, not moving")
        time.sleep(every)
    return time.time()
