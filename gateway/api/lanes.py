"""The lanes uploads and relay batches wait in: CPU work under one GIL, one at a time, with a
queue per caller in front so that one agency cannot make every other wait behind it.

An upload first waits its turn in its caller's own queue (:class:`CallerQueues`: one upload per
caller past it), then reads its body, then waits for a shared lane (small packages, or large
ones: a 50 MB package verifying for a second does not hold up the small ones). A refused upload
costs its caller a wait of :data:`REFUSAL_PENALTY` times the CPU the refusal took, still inside
its turn, so nobody else waits for it (`gateway bench hostile`; docs/benchmarks.md).

Usage::

    lanes = Lanes()
    accepted = await lanes.upload(caller, read=read, work=verify_and_store)
    results = await lanes.relay(receive)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from anyio import CapacityLimiter, Lock, sleep, to_thread

from gateway.errors import GatewayError
from gateway.trust.caller import Identity

__all__ = [
    "INGESTS_IN_FLIGHT",
    "LARGE_UPLOAD_BYTES",
    "REFUSAL_PENALTY",
    "RELAYS_IN_FLIGHT",
    "UPLOADS_PER_CALLER",
    "CallerQueues",
    "Lanes",
]

#: agency uploads (documents, statuses) verified and stored at once per process, and relay
#: batches received at once: CPU work under one GIL, so one of each (measured with
#: `gateway bench node`: two uploads in flight cost 3.9 ms of CPU per document, one 3.1 ms)
INGESTS_IN_FLIGHT: Final = 1
RELAYS_IN_FLIGHT: Final = 1
#: uploads larger than this take a lane of their own (one at a time too), so that a 50 MB
#: package verifying for a second does not hold up the small ones queued behind it
LARGE_UPLOAD_BYTES: Final = 1024 * 1024
#: uploads of one caller in flight or queued for the shared lanes at once; the caller's others
#: wait in a queue of their own, so one agency with 16 connections puts one upload, not 16, in
#: front of everyone else's
UPLOADS_PER_CALLER: Final = 1
#: after a refused upload, the caller's next one waits this many times the CPU time the refusal
#: took: uploads that are refused (a buggy or hostile DMS) can then take at most a quarter of a
#: lane, and every other agency keeps its latency (`gateway bench hostile`); an honest refusal
#: of a 5 KB package costs ~1 ms, so its sender barely notices
REFUSAL_PENALTY: Final = 3.0

T = TypeVar("T")


@dataclass(slots=True)
class _Queue:
    lock: Lock
    #: requests holding or waiting for ``lock``
    users: int = 0


class CallerQueues:
    """One FIFO queue per caller in front of a shared lane; a caller's queue exists only
    while it has a request in it (bounded by the requests in flight, not by the callers ever
    seen).

    Usage::

        async with queues.turn(str(caller)):   # at most one per caller past this point
            ...                                # wait for the shared lane, then work
    """

    def __init__(self) -> None:
        self._queues: dict[str, _Queue] = {}

    def __len__(self) -> int:
        return len(self._queues)

    @contextlib.asynccontextmanager
    async def turn(self, caller: str) -> AsyncIterator[None]:
        # one event loop thread: no lock needed around the dict
        queue = self._queues.get(caller)
        if queue is None:
            queue = self._queues[caller] = _Queue(Lock())
        queue.users += 1
        try:
            async with queue.lock:  # anyio's Lock wakes its waiters in order of arrival
                yield
        finally:
            queue.users -= 1
            if queue.users == 0:
                del self._queues[caller]


class Lanes:
    """The shared lanes of one app (one process): small uploads, large uploads, relay batches,
    and the per-caller queues in front of the upload lanes.

    Usage: ``await lanes.upload(caller, read=read, work=work)`` in an upload route.
    """

    def __init__(self) -> None:
        # Ingests are CPU work under one GIL: more in flight only trade the GIL (and starve the
        # event loop thread that does TLS); the rest wait here, in order of arrival.
        self.ingesting = CapacityLimiter(INGESTS_IN_FLIGHT)
        self.ingesting_large = CapacityLimiter(INGESTS_IN_FLIGHT)
        self.relaying = CapacityLimiter(RELAYS_IN_FLIGHT)
        # ...and each caller's own uploads wait in a queue of their own first: one hostile DMS
        # cannot fill the lanes' queue and make every other agency wait behind all of it
        self.uploaders = CallerQueues()

    def lane(self, data: bytes) -> CapacityLimiter:
        """The upload lane a body of this size waits for."""
        return self.ingesting_large if len(data) > LARGE_UPLOAD_BYTES else self.ingesting

    async def upload(
        self,
        caller: Identity,
        *,
        read: Callable[[], Awaitable[bytes]],
        work: Callable[[bytes], T],
    ) -> T:
        """In ``caller``'s turn: ``read()`` the body, then ``work(body)`` in a worker thread
        in its lane; a refusal (a 4xx :class:`GatewayError`) costs the caller its penalty."""
        async with self.uploaders.turn(str(caller)):
            # read inside the caller's turn: one body per caller in memory, not one per
            # connection it opens
            data = await read()
            spent = [0.0]

            def timed() -> T:
                start = time.thread_time()  # this thread's CPU: not the wait for the lane
                try:
                    return work(data)
                finally:
                    spent[0] = time.thread_time() - start

            try:
                return await to_thread.run_sync(timed, limiter=self.lane(data))
            except GatewayError as exc:
                if exc.http_status < 500:
                    # still in the caller's turn: its next upload waits, nobody else does
                    await sleep(spent[0] * REFUSAL_PENALTY)
                raise

    async def relay(self, work: Callable[[], T]) -> T:
        """``work()`` (parse and store one relay batch) in a worker thread, in the relay lane."""
        return await to_thread.run_sync(work, limiter=self.relaying)
