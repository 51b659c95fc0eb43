"""Background jobs of a running node (APScheduler 3.x): audit checkpoints, trust reloads, the
outbox dispatcher (one job per peer, so a slow peer never holds up another) and its
housekeeping, the webhook sender (one job per endpoint) and its housekeeping.

Usage::

    scheduler = start(node, dispatcher)
    ...
    scheduler.shutdown()
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Sequence

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from gateway.errors import GatewayError
from gateway.evidence import audit
from gateway.network.dispatcher import Dispatcher
from gateway.node.container import Node
from gateway.node.webhooks import Sender

__all__ = ["checkpoint_now", "reload_trust", "start"]

log = structlog.get_logger("gateway.scheduler")


def checkpoint_now(node: Node) -> int | None:
    """Sign the audit chain's head, if anything was appended since the last checkpoint."""
    with node.writing() as conn:
        made = audit.checkpoint(conn, node.key, node.name, at=node.now())
    if made is not None:
        log.info("audit.checkpoint", node=node.name, checkpoint=made)
    return made


def _run_peer(dispatcher: Dispatcher, peer: str) -> None:
    try:
        dispatcher.run_peer(peer)
    except Exception:  # a job must not die silently: log it, the next tick tries again
        log.exception("outbox.dispatch_crashed", peer=peer)


def _housekeeping(dispatcher: Dispatcher) -> None:
    try:
        expired = dispatcher.housekeeping()
    except Exception:
        log.exception("outbox.housekeeping_crashed")
        return
    if expired:
        log.warning("outbox.expired", deliveries=expired)


def _send_webhooks(sender: Sender, agency: str) -> None:
    try:
        sender.run(agency)
    except Exception:  # a job must not die silently: log it, the next tick tries again
        log.exception("webhook.send_crashed", agency=agency)


def _webhook_housekeeping(sender: Sender) -> None:
    try:
        expired = sender.housekeeping()
    except Exception:
        log.exception("webhook.housekeeping_crashed")
        return
    if expired:
        log.warning("webhook.expired", notifications=expired)


def start(
    node: Node,
    dispatcher: Dispatcher | None = None,
    *,
    primary: bool = True,
    jobs: Sequence[tuple[str, Callable[[], object], float]] = (),
    webhooks: Sender | None = None,
) -> BackgroundScheduler:
    """Start the node's background jobs in a daemon thread.

    A node's other worker processes (``primary=False``, :mod:`gateway.api.supervisor`) only reload
    their trust files: the primary dispatches, keeps house and signs checkpoints.
    ``webhooks``: the primary's webhook sender (:mod:`gateway.node.webhooks`), one job per
    endpoint (a slow DMS never holds up another) and a housekeeping job.
    """
    peers = node.directory.neighbours() if node.directory is not None else ()
    endpoints = node.settings.webhooks.endpoints if webhooks is not None else ()
    # "maximum number of running instances reached" is the design (one run per peer), not news
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    scheduler = BackgroundScheduler(
        daemon=True,
        timezone="UTC",
        executors={"default": ThreadPoolExecutor(max_workers=len(peers) + len(endpoints) + 4)},
    )
    if dispatcher is not None:
        dispatcher.release_leases()
        dispatcher.load_breakers()
        delivery = node.settings.delivery
        for peer in peers:
            scheduler.add_job(
                _run_peer,
                "interval",
                args=[dispatcher, peer.name],
                seconds=delivery.tick_interval,
                id=f"dispatch:{peer.name}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
        scheduler.add_job(
            _housekeeping,
            "interval",
            args=[dispatcher],
            seconds=delivery.housekeeping_interval,
            id="outbox-housekeeping",
            max_instances=1,
            coalesce=True,
        )

        def waker(peer: str) -> None:
            with contextlib.suppress(JobLookupError):
                scheduler.modify_job(f"dispatch:{peer}", next_run_time=dt.datetime.now(dt.UTC))

        dispatcher.waker = waker
    if primary:
        scheduler.add_job(
            checkpoint_now,
            "interval",
            args=[node],
            seconds=node.settings.audit.checkpoint_interval,
            id="audit-checkpoint",
            max_instances=1,
            coalesce=True,
        )
    if webhooks is not None:
        webhooks.release_leases()
        for endpoint in endpoints:
            scheduler.add_job(
                _send_webhooks,
                "interval",
                args=[webhooks, endpoint.agency],
                seconds=node.settings.webhooks.tick_interval,
                id=f"webhooks:{endpoint.agency}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
        scheduler.add_job(
            _webhook_housekeeping,
            "interval",
            args=[webhooks],
            seconds=node.settings.delivery.housekeeping_interval,
            id="webhooks-housekeeping",
            max_instances=1,
            coalesce=True,
        )
    for name, job, seconds in jobs:  # e.g. pulling from a hub parent (adapters.hub.parent)
        scheduler.add_job(
            _guarded,
            "interval",
            args=[name, job],
            seconds=seconds,
            id=name,
            max_instances=1,
            coalesce=True,
            next_run_time=dt.datetime.now(dt.UTC),
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


def _guarded(name: str, job: Callable[[], object]) -> None:
    """Run a job; an error is logged (the next run tries again), never fatal to the node."""
    try:
        job()
    except GatewayError as exc:
        log.warning("job.failed", job=name, code=exc.code, message=exc.message)
    except Exception as exc:  # the scheduler thread must survive
        log.error("job.crashed", job=name, error=type(exc).__name__)


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
