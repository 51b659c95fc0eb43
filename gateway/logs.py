"""Structured logs: JSON, one event per line, on stderr.

Usage::

    configure("info")
    log = structlog.get_logger("gateway.ingest")
    log.info("ingest.accepted", doc=doc_id, size=n)   # an event name, then facts

.. warning:: Log events, never payloads: no envelope body, key, secret or signature value.
"""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure(level: str = "info") -> None:
    """Route structlog (and the stdlib loggers of uvicorn and friends) to JSON on stderr."""
    number = _LEVELS[level]
    logging.basicConfig(stream=sys.stderr, level=number, format="%(message)s", force=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
