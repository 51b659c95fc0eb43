"""Background jobs of a running node (APScheduler 3.x): audit checkpoints, trust reloads.

Usage::

    scheduler = start(node)
    ...
    scheduler.shutdown()
"""

from __future__ import annotations

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from gateway import audit
from gateway.errors import GatewayError
from gateway.node import Node

__all__ = ["checkpoint_now", "reload_trust", "start"]

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
    scheduler.add_job(
        reload_trust,
        "interval",
        args=[node],
        seconds=node.settings.trust.reload_interval,
        id="trust-reload",
        max_instances=1,
        coalesce=True,
    )
    scheduler.start()
    return scheduler


def reload_trust(node: Node) -> bool:
    """Swap in new CRLs or anchors when their files changed (audited); keep the old on error."""
    try:
        changed = node.reload_trust()
    except GatewayError as exc:
        log.warning("trust.reload_failed", code=exc.code, message=exc.message)
        return False
    if changed:
        with node.writing() as conn:
            audit.append(
                conn,
                event="trust_reload",
                actor=f"node:{node.name}",
                subject="trust",
                data={"files": len(node.settings.trust.crls) + len(node.settings.trust.anchors)},
            )
        log.info("trust.reloaded", node=node.name)
    return changed
