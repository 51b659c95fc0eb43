"""Four-tier routing: where a package goes next for each recipient, decided from this node alone.

Nodes form a tree (commune < district < province < central). Each node knows the agencies it
hosts, its parent, and its children together with the agency codes each child's subtree serves.
A served code covers itself and every code below it (``000.00.01.H49`` covers ``000.01.01.H49``).
For one recipient the next hop is:

1. :data:`LOCAL` when this node hosts the recipient's exact code;
2. else the child serving the most specific code that equals or is an ancestor of the recipient;
3. else the parent;
4. else (the central node) :class:`~gateway.errors.RecipientUnreachable`.

Each hop is decided from local knowledge only, so a recipient that falls under a code a child
serves but that nobody hosts can bounce between a node and that child: a relay checks
:func:`would_loop` against the hops a package has already taken before forwarding it.

Usage::

    directory = Directory(
        node="h49",
        tier="province",
        hosted=frozenset({"000.00.00.H49"}),
        parent=Peer("central", "https://central.example:8443"),
        children=(
            Peer("hl", "https://hl.h49.example:8443", (AgencyCode.parse("000.00.01.H49"),)),
        ),
    )
    directory.check()                        # ConfigError naming an inconsistent directory
    directory.route("000.00.00.H49")         # "local"
    directory.route("000.01.01.H49")         # "hl": under 000.00.01.H49
    directory.route("000.00.00.G22")         # "central": not below this node
    directory.routes(["000.00.00.H49", "000.00.00.G22", "000.00.01.H49"])
    # {"local": ["000.00.00.H49"], "central": ["000.00.00.G22"], "hl": ["000.00.01.H49"]}
    would_loop(["central", "h49"], "central")  # True: the package has been there
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.agency import AgencyCode
from gateway.errors import AgencyCodeError, ConfigError, RecipientUnreachable

__all__ = ["LOCAL", "TIERS", "Directory", "Peer", "would_loop"]

#: the next hop of a recipient hosted by this node (the same value as
#: ``gateway.node.container.LOCAL``; defined here because :mod:`gateway.node.container` builds on
#: this module)
LOCAL = "local"

#: the tiers, lowest first
TIERS = ("commune", "district", "province", "central")

_NODE_NAME = re.compile(r"[a-z0-9-]+")


@dataclass(frozen=True, slots=True)
class Peer:
    """A neighbour node: the parent, or a child with the agency codes its subtree serves."""

    #: node name, as bound in its certificate ([a-z0-9-]+)
    name: str
    #: its HTTPS base URL
    url: str
    #: for a child: the codes its subtree serves; a code serves itself and every code below it
    serves: tuple[AgencyCode, ...] = ()


@dataclass(frozen=True, slots=True)
class Directory:
    """This node's place in the tree: what it hosts, its parent and its children."""

    #: this node's name
    node: str
    #: ``commune``, ``district``, ``province`` or ``central``
    tier: str
    #: agency codes this node hosts (exact codes, canonical ``VVV.ZZ.YY.Lnn``)
    hosted: frozenset[str]
    #: the node one tier up; None on the central node
    parent: Peer | None
    #: the nodes one tier down
    children: tuple[Peer, ...] = ()

    def route(self, recipient: AgencyCode | str) -> str:
        """The next hop for ``recipient``: :data:`LOCAL`, a child's name or the parent's name.

        A hosted code is local; otherwise the child serving the most specific code equal to or
        above the recipient takes it (the first such child if two serve the same code, which
        :meth:`check` refuses); otherwise the parent. Raise :class:`RecipientUnreachable` on a
        node without a parent, and :class:`AgencyCodeError` for a string that is not a code.
        """
        code = recipient if isinstance(recipient, AgencyCode) else AgencyCode.parse(recipient)
        if str(code) in self.hosted:
            return LOCAL
        for candidate in (code, *code.ancestors()):
            for child in self.children:
                if candidate in child.serves:
                    return child.name
        if self.parent is not None:
            return self.parent.name
        raise RecipientUnreachable(
            f"no node serves {code}: {self.node} does not host it, none of its children serves "
            "it and there is no node above",
            detail={"recipient": str(code), "node": self.node},
        )

    def routes(self, recipients: Iterable[AgencyCode | str]) -> dict[str, list[str]]:
        """Fan-out: each next hop with its recipients, both in first-seen order.

        A recipient named twice is routed once. Raise as :meth:`route` does for the first
        recipient that cannot be routed, so a package is never half-accepted.
        """
        out: dict[str, list[str]] = {}
        seen: set[AgencyCode] = set()
        for recipient in recipients:
            code = recipient if isinstance(recipient, AgencyCode) else AgencyCode.parse(recipient)
            if code in seen:
                continue
            seen.add(code)
            out.setdefault(self.route(code), []).append(str(code))
        return out

    def peer(self, name: str) -> Peer | None:
        """The parent or child called ``name``; None when it is neither."""
        return next((p for p in self.neighbours() if p.name == name), None)

    def neighbours(self) -> tuple[Peer, ...]:
        """The parent (if any) then the children."""
        return (self.parent, *self.children) if self.parent is not None else self.children

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able view for the API."""
        return {
            "node": self.node,
            "tier": str(self.tier),
            "hosted": sorted(self.hosted),
            "parent": (
                None if self.parent is None else {"name": self.parent.name, "url": self.parent.url}
            ),
            "children": [
                {"name": c.name, "url": c.url, "serves": [str(s) for s in c.serves]}
                for c in self.children
            ],
        }

    def check(self) -> None:
        """Refuse an inconsistent directory with :class:`ConfigError` naming the problem.

        Names must be ``[a-z0-9-]+`` and distinct from each other and from this node; the tier
        must be known and the central node has no parent; hosted codes must be canonical agency
        codes; no two children may serve the same code; no child may serve a code this node
        hosts or one above it (a recipient below the hosted code would then be ambiguous).
        """
        if str(self.tier) not in TIERS:
            raise ConfigError(
                f"directory tier {self.tier!r} must be one of {', '.join(TIERS)}",
                detail={"key": "directory.tier"},
            )
        if not _NODE_NAME.fullmatch(self.node):
            raise ConfigError(
                f"directory node name {self.node!r} must match [a-z0-9-]+",
                detail={"key": "directory.node"},
            )
        if self.parent is not None and str(self.tier) == "central":
            raise ConfigError(
                f"directory: {self.node} is the central node and cannot have a parent "
                f"({self.parent.name})",
                detail={"key": "directory.parent", "peer": self.parent.name},
            )
        hosted: list[AgencyCode] = []
        for text in sorted(self.hosted):
            try:
                code = AgencyCode.parse(text)
            except AgencyCodeError as exc:
                raise ConfigError(
                    f"directory: hosted {exc.message}", detail={"key": "directory.hosted"}
                ) from None
            if str(code) != text:
                raise ConfigError(
                    f"directory: hosted code {text!r} is not written canonically ({code})",
                    detail={"key": "directory.hosted"},
                )
            hosted.append(code)
        names: set[str] = set()
        for key, peer in self._keyed_peers():
            if not _NODE_NAME.fullmatch(peer.name):
                raise ConfigError(
                    f"directory: {key} name {peer.name!r} must match [a-z0-9-]+",
                    detail={"key": key, "peer": peer.name},
                )
            if peer.name == self.node:
                raise ConfigError(
                    f"directory: {key} {peer.name} is this node itself",
                    detail={"key": key, "peer": peer.name},
                )
            if peer.name in names:
                raise ConfigError(
                    f"directory: {key} {peer.name} is named twice",
                    detail={"key": key, "peer": peer.name},
                )
            names.add(peer.name)
        server: dict[AgencyCode, str] = {}
        for child in self.children:
            for code in child.serves:
                other = server.setdefault(code, child.name)
                if other != child.name:
                    raise ConfigError(
                        f"directory: children {other} and {child.name} both serve {code}",
                        detail={"key": "directory.children", "peer": child.name, "code": str(code)},
                    )
                for mine in hosted:
                    if code == mine or code.is_ancestor_of(mine):
                        what = "hosted here" if code == mine else f"above {mine}, hosted here"
                        raise ConfigError(
                            f"directory: child {child.name} serves {code}, {what}: routing "
                            "would be ambiguous",
                            detail={
                                "key": "directory.children",
                                "peer": child.name,
                                "code": str(code),
                            },
                        )

    def _keyed_peers(self) -> list[tuple[str, Peer]]:
        parent = [("directory.parent", self.parent)] if self.parent is not None else []
        return [*parent, *(("directory.children", c) for c in self.children)]


def would_loop(path: Sequence[str], node: str) -> bool:
    """True when ``node`` is already among ``path``, the names of the hops a package has taken."""
    return node in path
