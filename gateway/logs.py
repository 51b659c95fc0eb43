"""Structured logs: JSON, one event per line, on stderr (ours, uvicorn's and APScheduler's).

Usage::

    configure("info")
    log = structlog.get_logger("gateway.ingest")
    log.info("ingest.accepted", doc=doc_id, size=n)   # an event name, then facts

.. warning:: Log events, never payloads: no envelope body, key, secret or signature value.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["configure"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _WorkerField:
    """A processor that names the worker process in each event."""

    def __init__(self, worker: int) -> None:
        self.worker = worker

    def __call__(
        self, _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event["worker"] = self.worker
        return event


def configure(level: str = "info", *, worker: int | None = None) -> None:
    """Render structlog events and stdlib records (uvicorn, APScheduler) as JSON on stderr.

    ``worker``: the worker process's index (``[server] workers``), added to every line.
    """
    number = _LEVELS[level]
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if worker is not None:
        shared.append(_WorkerField(worker))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(ensure_ascii=False),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(number)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "apscheduler"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # APScheduler logs every job run at INFO: noise, not events.
    logging.getLogger("apscheduler").setLevel(max(number, logging.WARNING))
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
