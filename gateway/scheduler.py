"""Background jobs of a running node (APScheduler 3.x): audit checkpoints now, delivery later.

Usage::

    scheduler = start(node)
    ...
    scheduler.shutdown()
"""

from __future__ import annotations

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from gateway import audit
from gateway.node import Node

__all__ = ["checkpoint_now", "start"]

log = structlog.get_logger("gateway.scheduler")


def checkpoint_now(node: Node) -> int | None:
    """Sign the audit chain's head, if anything was appended since the last checkpoint."""
    with node.writing() as conn:
        made = audit.checkpoint(conn, node.key, node.name, at=node.now())
    if made is not None:
        log.info("audit.checkpoint", node=node.name, checkpoint=made)
    return made


def start(node: Node) -> BackgroundScheduler:
    """Start the node's background jobs in a daemon thread."""
    scheduler = BackgroundScheduler(daemon=True, timezone="UTC")
    scheduler.add_job(
        checkpoint_now,
        "interval",
        args=[node],
        seconds=node.settings.audit.checkpoint_interval,
        id="audit-checkpoint",
        max_instances=1,
        coalesce=True,
    )
    scheduler.start()
    return scheduler
