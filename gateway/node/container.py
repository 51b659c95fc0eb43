"""The running node's collaborators, built once at start and handed to the services.

Usage::

    node = Node.from_settings(settings, engine)
    result = ingest_document(node, data, caller=identity)

The services (:mod:`gateway.node.ingest`, :mod:`gateway.node.inbox`) take a :class:`Node` and know
nothing about HTTP; the API (:mod:`gateway.api.app`) is a thin edge over them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection, Engine

from gateway import __version__
from gateway.agency import AgencyCode
from gateway.errors import ConfigError, RecipientUnreachable
from gateway.evidence import audit
from gateway.evidence.nodekey import NodeKey
from gateway.network.routing import LOCAL, Directory, Peer
from gateway.settings import Settings
from gateway.storage import db
from gateway.storage.tables import audit_log, peers
from gateway.trust.caller import Identity
from gateway.trust.store import TrustStore
from gateway.trust.verification import Verifier, VerifyPolicy

__all__ = ["LOCAL", "Node", "Router", "directory_of", "directory_view", "record_start"]

#: one lock per process: SQLite has one writer at a time anyway (see Node.writing)
_SQLITE_WRITERS = threading.Lock()

#: Given a recipient this node does not host, the name of the next node (or raise
#: :class:`RecipientUnreachable`). The four-tier routing plugs in here.
Router = Callable[[AgencyCode], str]


def _no_route(recipient: AgencyCode) -> str:
    raise RecipientUnreachable(
        f"{recipient} is not served by this node and no route to other nodes is configured",
        detail={"recipient": str(recipient)},
    )


@dataclass(frozen=True, kw_only=True)
class Node:
    """Everything a request needs, built once: settings, database, trust, keys."""

    settings: Settings
    #: for writes (on SQLite every transaction on it takes the write lock: BEGIN IMMEDIATE)
    engine: Engine
    verifier: Verifier
    key: NodeKey
    #: agency codes whose DMS connect here
    hosted: frozenset[str]
    route: Router = _no_route
    #: parent and children (None: a node on its own, which hosts every agency it serves)
    directory: Directory | None = None
    #: injectable clock (tests)
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))
    #: called with the new store when the trust files change (the API's authenticator)
    _trust_listeners: list[Callable[[TrustStore], None]] = field(default_factory=list)
    #: SHA-256 of the trust files' contents as last loaded
    _trust_digest: list[str] = field(default_factory=list)
    #: called with peer names when rows for them were committed (the outbox dispatcher)
    _wake_listeners: list[Callable[[Iterable[str]], None]] = field(default_factory=list)

    def on_wake(self, listener: Callable[[Iterable[str]], None]) -> None:
        """Have ``listener`` called with peer names whenever packages for them are stored."""
        self._wake_listeners.append(listener)

    def wake(self, peers: Iterable[str]) -> None:
        """Packages for ``peers`` were committed: tell the dispatcher (after the commit)."""
        names = {p for p in peers if p != LOCAL}
        if names:
            for listener in self._wake_listeners:
                listener(names)

    @property
    def trust(self) -> TrustStore:
        """The trust anchors, intermediates and CRLs in force."""
        store = self.verifier.trust
        assert store is not None
        return store

    def on_trust_change(self, listener: Callable[[TrustStore], None]) -> None:
        """Have ``listener`` called with the new store whenever :meth:`reload_trust` swaps it."""
        self._trust_listeners.append(listener)

    def reload_trust(self) -> bool:
        """Reload anchors, intermediates and CRLs if their files changed; True when swapped.

        A CA publishes a new CRL; an operator adds an anchor: no restart is needed. Files that
        cannot be read or parsed leave the store in force untouched (the error is raised).
        """
        digest = _trust_digest(self.settings)
        if self._trust_digest and digest == self._trust_digest[0]:
            return False
        store = _load_trust(self.settings)
        self.verifier.replace_trust(store)
        for listener in self._trust_listeners:
            listener(store)
        self._trust_digest[:] = [digest]
        return True

    @property
    def name(self) -> str:
        return self.settings.node.name

    @contextlib.contextmanager
    def writing(self, *, chain: bool = True) -> Iterator[Connection]:
        """A write transaction; on SQLite, writers of this process queue on a Python lock.

        On PostgreSQL a transaction that may append to the audit log (``chain``, the default)
        takes the chain's lock FIRST (:func:`gateway.evidence.audit.lock_chain`), before any row
        lock: every such transaction then takes its locks in one order, so two of them can never
        deadlock (a dispatcher holding delivery rows and waiting for the chain, a relay
        receiver holding the chain and waiting for those rows). Only a transaction that
        writes no audit entry (an outbox claim, a lease release) may pass ``chain=False``.

        SQLite makes a writer that finds the database locked sleep and retry (1, 2, 5 ... 100
        ms) instead of queueing, so under concurrent ingests the lock sits idle while writers
        sleep: p99 latency in seconds and, past the busy timeout, 503s. Queueing in Python
        first hands the lock over at once (measured: p99 2.2 s -> 0.26 s with 16 clients);
        across processes (a node's workers, a CLI command)
        :func:`gateway.storage.db.sqlite_writer_lock` does the same with a file lock.
        """
        if self.engine.dialect.name != "sqlite":
            with self.engine.begin() as conn:
                if chain:
                    audit.lock_chain(conn)
                yield conn
            return
        with _SQLITE_WRITERS, db.sqlite_writer_lock(self.engine), self.engine.begin() as conn:
            yield conn

    @functools.cached_property
    def reader(self) -> Engine:
        """The same database for reads only: on SQLite they never queue behind a writer."""
        return db.read_only(self.engine)

    @classmethod
    def from_settings(
        cls, settings: Settings, engine: Engine, *, route: Router | None = None
    ) -> Node:
        """Load trust anchors, CRLs and the node key once; refuse to start without them."""
        if not settings.trust.anchors:
            raise ConfigError(
                "[trust] anchors is empty: a node must know which CA signs its agencies",
                detail={"key": "trust.anchors"},
            )
        if settings.node.key is None or settings.node.cert is None:
            raise ConfigError(
                "[node] key and cert are required: the node signs receipts and audit checkpoints",
                detail={"key": "node.key"},
            )
        digest = _trust_digest(settings)
        trust = _load_trust(settings)
        directory = directory_of(settings)
        policy = VerifyPolicy(
            allow_weak_algorithms=settings.verify.allow_weak_algorithms,
            require_revocation_check=settings.verify.require_revocation_check,
            limits=settings.limits.xml_limits(),
            upload_budget=settings.limits.upload_budget,
        )
        return cls(
            settings=settings,
            engine=engine,
            verifier=Verifier(trust, policy),
            key=NodeKey.load(Path(settings.node.key), Path(settings.node.cert)),
            hosted=frozenset(settings.node.agencies),
            route=route or (directory.route if directory is not None else _no_route),
            directory=directory,
            _trust_digest=[digest],
        )

    def next_hop(self, recipient: AgencyCode) -> str:
        """``local`` for a hosted agency, else what the router says."""
        return LOCAL if str(recipient) in self.hosted else self.route(recipient)

    def new_id(self) -> str:
        """A fresh gateway document id."""
        return uuid.uuid4().hex

    def now(self) -> dt.datetime:
        return self.clock()

    def is_admin(self, caller: Identity) -> bool:
        """Whether ``caller`` is this node's admin: it presented the node's own certificate
        (held by its operators). The one admin check: the API and the inbox both ask it.

        Usage: ``if node.is_admin(caller): ...``
        """
        return caller.kind == "node" and caller.node == self.name


def directory_of(settings: Settings) -> Directory | None:
    """The node's directory from ``[node]`` and ``[directory]``; None without any neighbour.

    Raises :class:`ConfigError` for an inconsistent directory.
    """
    config = settings.directory
    if config.parent is None and not config.children:
        return None
    directory = Directory(
        node=settings.node.name,
        tier=settings.node.tier.value,
        hosted=frozenset(settings.node.agencies),
        parent=None if config.parent is None else Peer(config.parent.name, config.parent.url),
        children=tuple(
            Peer(c.name, c.url, tuple(AgencyCode.parse(code) for code in c.serves))
            for c in config.children
        ),
    )
    directory.check()
    return directory


def _trust_files(settings: Settings) -> list[Path]:
    trust = settings.trust
    return [*trust.anchors, *trust.intermediates, *trust.crls]


def _trust_digest(settings: Settings) -> str:
    digest = hashlib.sha256()
    for path in _trust_files(settings):
        try:
            digest.update(Path(path).read_bytes())
        except OSError:
            digest.update(b"\0missing\0" + str(path).encode())
    return digest.hexdigest()


def _load_trust(settings: Settings) -> TrustStore:
    return TrustStore.from_pem_files(
        list(settings.trust.anchors),
        crls=list(settings.trust.crls),
        intermediates=list(settings.trust.intermediates),
    )


def record_start(node: Node) -> bool:
    """Audit the node's start, and a config change when the settings differ from last start.

    Returns True when the settings changed since the previous start.
    """
    digest = hashlib.sha256(repr(node.settings).encode("utf-8")).hexdigest()
    actor = f"node:{node.name}"
    with node.writing() as conn:
        previous = conn.execute(
            select(audit_log.c.data)
            .where(audit_log.c.event == "start")
            .order_by(audit_log.c.seq.desc())
            .limit(1)
        ).scalar()
        before = json.loads(previous).get("config_sha256") if previous else None
        changed = before is not None and before != digest
        if changed:
            audit.append(
                conn,
                event="config_change",
                actor=actor,
                subject="settings",
                data={"from_sha256": before, "to_sha256": digest},
            )
        audit.append(
            conn,
            event="start",
            actor=actor,
            subject=None,
            data={"version": __version__, "config_sha256": digest},
        )
        _sync_directory(node, conn, actor)
    return changed


def _sync_directory(node: Node, conn: Connection, actor: str) -> None:
    """Keep the ``peers`` table equal to the configured directory; audit any change."""
    wanted: dict[str, tuple[str, str, str]] = {}
    if node.directory is not None:
        if node.directory.parent is not None:
            parent = node.directory.parent
            wanted[parent.name] = ("parent", parent.url, "[]")
        for child in node.directory.children:
            serves = json.dumps(sorted(str(code) for code in child.serves))
            wanted[child.name] = ("child", child.url, serves)
    stored = {
        r.name: (r.role, r.url, r.serves)
        for r in conn.execute(select(peers.c.name, peers.c.role, peers.c.url, peers.c.serves))
    }
    if stored == wanted:
        return
    now = node.now()
    conn.execute(delete(peers))
    if wanted:
        conn.execute(
            peers.insert(),
            [
                {"name": name, "role": role, "url": url, "serves": serves, "updated_at": now}
                for name, (role, url, serves) in wanted.items()
            ],
        )
    audit.append(
        conn,
        event="directory_change",
        actor=actor,
        subject="directory",
        data={
            "added": sorted(set(wanted) - set(stored)),
            "removed": sorted(set(stored) - set(wanted)),
            "changed": sorted(n for n in set(wanted) & set(stored) if wanted[n] != stored[n]),
        },
    )


def directory_view(node: Node) -> dict[str, Any]:
    """The directory as stored: this node, its tier and agencies, its parent and children."""
    with node.reader.connect() as conn:
        rows = conn.execute(
            select(
                peers.c.name, peers.c.role, peers.c.url, peers.c.serves, peers.c.updated_at
            ).order_by(peers.c.role.desc(), peers.c.name)
        ).all()
    parent = next(({"name": r.name, "url": r.url} for r in rows if r.role == "parent"), None)
    return {
        "node": node.name,
        "tier": node.settings.node.tier.value,
        "hosted": sorted(node.hosted),
        "parent": parent,
        "children": [
            {"name": r.name, "url": r.url, "serves": json.loads(r.serves)}
            for r in rows
            if r.role == "child"
        ],
        "updated_at": max((r.updated_at for r in rows), default=None),
    }
