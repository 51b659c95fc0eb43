"""Four-tier routing (gateway.network.routing): next hops, fan-out, directory checks, random
trees."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.agency import AgencyCode
from gateway.errors import AgencyCodeError, ConfigError, RecipientUnreachable
from gateway.network.routing import LOCAL, TIERS, Directory, Peer, would_loop

G22 = "000.00.00.G22"  # Văn phòng Chính phủ
G12 = "000.00.00.G12"  # a ministry
H41 = "000.00.00.H41"  # UBND tỉnh Nghệ An: hosted nowhere in this tree
H49 = "000.00.00.H49"  # UBND tỉnh Quảng Ninh
HL = "000.00.01.H49"  # a district of Quảng Ninh (level 2)
HL_X1 = "000.01.01.H49"  # a commune of that district (level 3)


def code(text: str) -> AgencyCode:
    return AgencyCode.parse(text)


def quang_ninh() -> dict[str, Directory]:
    """central > h49 (province) > hl (district) > hl-x1 (commune), each hosting one level."""
    return {
        "central": Directory(
            node="central",
            tier="central",
            hosted=frozenset({G22, G12}),
            parent=None,
            children=(Peer("h49", "https://h49.example", (code(H49),)),),
        ),
        "h49": Directory(
            node="h49",
            tier="province",
            hosted=frozenset({H49}),
            parent=Peer("central", "https://central.example"),
            children=(Peer("hl", "https://hl.h49.example", (code(HL),)),),
        ),
        "hl": Directory(
            node="hl",
            tier="district",
            hosted=frozenset({HL}),
            parent=Peer("h49", "https://h49.example"),
            children=(Peer("hl-x1", "https://x1.hl.h49.example", (code(HL_X1),)),),
        ),
        "hl-x1": Directory(
            node="hl-x1",
            tier="commune",
            hosted=frozenset({HL_X1}),
            parent=Peer("hl", "https://hl.h49.example"),
        ),
    }


@dataclass(frozen=True)
class Walk:
    """Where following route() node to node took a package, and how it ended."""

    path: list[str]
    #: "delivered" (LOCAL at path[-1]), "unreachable" (raised at path[-1]) or "loop"
    end: str


def walk(directories: dict[str, Directory], start: str, recipient: str) -> Walk:
    """Relay as the dispatcher does: stop on LOCAL, on RecipientUnreachable, or on a loop."""
    path = [start]
    while True:
        try:
            hop = directories[path[-1]].route(recipient)
        except RecipientUnreachable:
            return Walk(path, "unreachable")
        if hop == LOCAL:
            return Walk(path, "delivered")
        if would_loop(path, hop):
            return Walk(path, "loop")
        path.append(hop)


# --- plain examples --------------------------------------------------------------------------


def test_local_is_the_value_gateway_node_uses() -> None:
    from gateway.node import container as node

    assert LOCAL == node.LOCAL == "local"


@pytest.mark.parametrize(
    ("node", "recipient"),
    [("central", G22), ("central", G12), ("h49", H49), ("hl", HL), ("hl-x1", HL_X1)],
)
def test_hosted_recipient_is_local(node: str, recipient: str) -> None:
    assert quang_ninh()[node].route(recipient) == LOCAL
    assert quang_ninh()[node].route(code(recipient)) == LOCAL


def test_down_the_tree_one_tier_at_a_time() -> None:
    tree = quang_ninh()
    assert tree["central"].route(HL_X1) == "h49"
    assert tree["h49"].route(HL_X1) == "hl"
    assert tree["hl"].route(HL_X1) == "hl-x1"
    assert walk(tree, "central", HL_X1) == Walk(["central", "h49", "hl", "hl-x1"], "delivered")


def test_a_served_code_covers_the_codes_below_it() -> None:
    tree = quang_ninh()
    assert tree["central"].route("001.01.01.H49") == "h49"  # level 4, under H49
    assert tree["h49"].route("000.03.01.H49") == "hl"  # level 3, under 000.00.01.H49


def test_up_the_tree_to_whoever_serves_it() -> None:
    tree = quang_ninh()
    assert tree["hl-x1"].route(G22) == "hl"
    assert tree["hl"].route(G22) == "h49"
    assert walk(tree, "hl-x1", G22) == Walk(["hl-x1", "hl", "h49", "central"], "delivered")
    # up, then stop where it is hosted: a sibling subtree's parent
    assert walk(tree, "hl-x1", H49) == Walk(["hl-x1", "hl", "h49"], "delivered")


def test_not_under_this_node_goes_to_the_parent_even_if_a_neighbour_code() -> None:
    tree = quang_ninh()
    assert tree["hl"].route("000.00.02.H49") == "h49"  # another district of the province
    assert tree["h49"].route("000.00.02.H49") == "central"


def test_most_specific_child_wins_whatever_the_order() -> None:
    hl = Peer("hl", "https://hl.example", (code(HL),))
    x1 = Peer("x1", "https://x1.example", (code(HL_X1),))
    for children in [(hl, x1), (x1, hl)]:
        province = Directory("h49", "province", frozenset({H49}), None, children)
        province.check()
        assert province.route(HL_X1) == "x1"
        assert province.route("001.01.01.H49") == "x1"  # below HL_X1
        assert province.route("000.02.01.H49") == "hl"  # below HL, beside HL_X1
        assert province.route(HL) == "hl"


def test_unknown_recipient_at_central_is_unreachable() -> None:
    with pytest.raises(RecipientUnreachable) as caught:
        quang_ninh()["central"].route(H41)
    assert caught.value.code == "REQUEST_RECIPIENT_UNREACHABLE"
    assert caught.value.http_status == 422
    assert caught.value.detail == {"recipient": H41, "node": "central"}
    assert H41 in caught.value.message
    assert caught.value.to_dict()["code"] == "REQUEST_RECIPIENT_UNREACHABLE"


def test_unknown_recipient_climbs_to_central_then_is_refused() -> None:
    assert walk(quang_ninh(), "hl-x1", H41) == Walk(
        ["hl-x1", "hl", "h49", "central"], "unreachable"
    )


def test_unknown_recipient_under_a_served_code_bounces_and_would_loop_catches_it() -> None:
    # 005.01.01.H49 lies under hl-x1's code but nobody hosts it: hl-x1 sends it back up to hl,
    # which sends it down again. The relay stops it with would_loop.
    unknown = "005.01.01.H49"
    assert walk(quang_ninh(), "central", unknown) == Walk(["central", "h49", "hl", "hl-x1"], "loop")
    assert quang_ninh()["hl-x1"].route(unknown) == "hl"


def test_route_parses_strings_and_refuses_non_codes() -> None:
    assert quang_ninh()["h49"].route(H49) == LOCAL
    with pytest.raises(AgencyCodeError):
        quang_ninh()["h49"].route("H49")
    # exactly a code: no surrounding whitespace of any kind is trimmed away
    for padded in (f"  {H49}\n", f"{H49}\u00a0"):
        with pytest.raises(AgencyCodeError):
            quang_ninh()["h49"].route(padded)


def test_fan_out_groups_recipients_per_next_hop_in_first_seen_order() -> None:
    recipients: list[AgencyCode | str] = [G22, HL_X1, H49, G12, code(HL), G22, "000.00.02.H49"]
    assert quang_ninh()["h49"].routes(recipients) == {
        "central": [G22, G12, "000.00.02.H49"],
        "hl": [HL_X1, HL],
        "local": [H49],
    }
    assert list(quang_ninh()["h49"].routes(recipients)) == ["central", "hl", "local"]
    assert quang_ninh()["h49"].routes([]) == {}


def test_fan_out_refuses_the_whole_list_when_one_recipient_is_unreachable() -> None:
    with pytest.raises(RecipientUnreachable) as caught:
        quang_ninh()["central"].routes([G22, H41, H49])
    assert caught.value.detail["recipient"] == H41


def test_peer_and_neighbours() -> None:
    tree = quang_ninh()
    hl = tree["hl"]
    assert [p.name for p in hl.neighbours()] == ["h49", "hl-x1"]
    assert hl.peer("h49") == Peer("h49", "https://h49.example")
    assert hl.peer("hl-x1") is not None
    assert hl.peer("hl-x1").serves == (code(HL_X1),)  # type: ignore[union-attr]
    assert hl.peer("hl") is None  # itself
    assert hl.peer("central") is None  # not a neighbour
    assert [p.name for p in tree["central"].neighbours()] == ["h49"]
    assert tree["hl-x1"].neighbours() == (Peer("hl", "https://hl.h49.example"),)


def test_to_dict_is_json_for_the_api() -> None:
    view = quang_ninh()["h49"].to_dict()
    assert json.loads(json.dumps(view)) == view
    assert view == {
        "node": "h49",
        "tier": "province",
        "hosted": [H49],
        "parent": {"name": "central", "url": "https://central.example"},
        "children": [{"name": "hl", "url": "https://hl.h49.example", "serves": [HL]}],
    }
    central = quang_ninh()["central"].to_dict()
    assert central["parent"] is None
    assert central["hosted"] == sorted([G22, G12])


def test_would_loop() -> None:
    assert would_loop(["hl-x1", "hl", "h49"], "hl")
    assert not would_loop(["hl-x1", "hl", "h49"], "central")
    assert not would_loop([], "central")


# --- check() -----------------------------------------------------------------------------------


def test_the_quang_ninh_directories_are_consistent() -> None:
    for directory in quang_ninh().values():
        directory.check()


def _province(**changes: object) -> Directory:
    return replace(quang_ninh()["h49"], **changes)  # type: ignore[arg-type]


CENTRAL = Peer("central", "https://central.example")
HL_PEER = Peer("hl", "https://hl.example", (code(HL),))


@pytest.mark.parametrize(
    ("directory", "key", "words"),
    [
        (
            _province(children=(HL_PEER, Peer("hl", "https://hl2.example", (code(HL_X1),)))),
            "directory.children",
            "named twice",
        ),
        (
            _province(children=(Peer("central", "https://c.example", (code(HL),)),)),
            "directory.children",
            "named twice",
        ),
        (_province(parent=Peer("h49", "https://h49.example")), "directory.parent", "itself"),
        (
            _province(children=(Peer("h49", "https://h49.example", (code(HL),)),)),
            "directory.children",
            "itself",
        ),
        (
            _province(children=(HL_PEER, Peer("hl-bis", "https://b.example", (code(HL),)))),
            "directory.children",
            "both serve 000.00.01.H49",
        ),
        (
            _province(children=(Peer("hl", "https://hl.example", (code(H49),)),)),
            "directory.children",
            "hosted here",
        ),
        (
            _province(hosted=frozenset({HL_X1}), children=(HL_PEER,)),
            "directory.children",
            "above 000.01.01.H49",
        ),
        (_province(tier="ward"), "directory.tier", "must be one of"),
        (_province(tier="central", parent=CENTRAL), "directory.parent", "central"),
        (_province(node="H49"), "directory.node", "[a-z0-9-]+"),
        (_province(parent=Peer("Central", "https://c.example")), "directory.parent", "[a-z0-9-]+"),
        (_province(hosted=frozenset({"H49"})), "directory.hosted", "not a QCVN"),
        (_province(hosted=frozenset({f" {H49}"})), "directory.hosted", "whitespace"),
    ],
)
def test_check_refuses(directory: Directory, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        directory.check()
    assert caught.value.code == "CONFIG_INVALID"
    assert caught.value.detail["key"] == key
    assert words in caught.value.message


def test_check_accepts_a_child_serving_codes_below_or_beside_the_hosted_ones() -> None:
    _province(children=(HL_PEER, Peer("x1", "https://x1.example", (code(HL_X1),)))).check()
    replace(quang_ninh()["hl-x1"], parent=None).check()  # a lone commune (a test rig)


# --- random trees ------------------------------------------------------------------------------

#: a small code space, so that codes often lie above or below each other
UNIVERSE = [
    AgencyCode(l4=l4, l3=l3, l2=l2, l1=l1)
    for l1 in ("G22", "H49", "H51")
    for l2 in ("00", "01", "02")
    for l3 in ("00", "01")
    for l4 in ("000", "001")
]
#: under nothing anyone can host here: must always climb to the root and be refused there
OUTSIDE = code("000.00.00.H99")


@dataclass(frozen=True)
class Tree:
    #: parent index of each node (None for the root, node 0)
    parents: list[int | None]
    #: agency code -> index of the node hosting it (each code hosted exactly once)
    host: dict[AgencyCode, int]

    def depth(self, i: int) -> int:
        parent = self.parents[i]
        return 0 if parent is None else 1 + self.depth(parent)

    def children(self, i: int) -> list[int]:
        return [j for j, p in enumerate(self.parents) if p == i]

    def subtree(self, i: int) -> set[int]:
        out = {i}
        for child in self.children(i):
            out |= self.subtree(child)
        return out

    def up(self, i: int) -> list[int]:
        """``i`` and its ancestors, up to the root."""
        out = [i]
        while (parent := self.parents[out[-1]]) is not None:
            out.append(parent)
        return out

    def path(self, start: int, end: int) -> list[str]:
        """The unique tree path, as node names."""
        up, down = self.up(start), self.up(end)
        meet = next(i for i in up if i in down)
        nodes = up[: up.index(meet) + 1] + down[: down.index(meet)][::-1]
        return [name(i) for i in nodes]

    def hosted_below(self, i: int) -> set[AgencyCode]:
        below = self.subtree(i)
        return {c for c, h in self.host.items() if h in below}


def name(i: int) -> str:
    return f"n{i}"


@st.composite
def trees(draw: st.DrawFn) -> Tree:
    """1-25 nodes, at most four tiers deep, codes hosted where the tree can route them.

    Codes are placed ancestors first. A code below another one (``a``) hosted off the root must
    be hosted in a subtree of a child of ``a``'s host's parent: anywhere else, that parent's
    child would claim it (routing it wrongly) or be refused by check() for serving above a code
    the parent hosts.
    """
    count = draw(st.integers(min_value=1, max_value=25))
    parents: list[int | None] = [None]
    depths = [0]
    for i in range(1, count):
        parent = draw(st.sampled_from([j for j in range(i) if depths[j] < len(TIERS) - 1]))
        parents.append(parent)
        depths.append(depths[parent] + 1)
    tree = Tree(parents, {})
    codes = draw(st.lists(st.sampled_from(UNIVERSE), unique=True, max_size=20))
    for recipient in sorted(codes, key=lambda c: c.level):
        allowed = set(range(count))
        for above in recipient.ancestors():
            if above in tree.host and (up := parents[tree.host[above]]) is not None:
                allowed &= tree.subtree(up) - {up}
        tree.host[recipient] = draw(st.sampled_from(sorted(allowed)))
    return tree


def aggregate(mine: set[AgencyCode], others: set[AgencyCode]) -> tuple[AgencyCode, ...]:
    """``mine`` without the codes a kept code above already covers unambiguously.

    A code is dropped when the nearest kept code above it has no code of ``others`` (hosted by
    the parent or a sibling subtree) between them: the child then still wins the most specific
    match for everything it hosts.
    """
    kept: list[AgencyCode] = []
    for c in sorted(mine, key=lambda c: (c.level, c)):
        cover = next((a for a in c.ancestors() if a in kept), None)
        if cover is None or any(cover.is_ancestor_of(d) and d.is_ancestor_of(c) for d in others):
            kept.append(c)
    return tuple(kept)


def directories(tree: Tree, *, aggregated: bool) -> dict[str, Directory]:
    out: dict[str, Directory] = {}
    for i, parent in enumerate(tree.parents):
        children = []
        for child in tree.children(i):
            mine = tree.hosted_below(child)
            serves = (
                aggregate(mine, tree.hosted_below(i) - mine) if aggregated else tuple(sorted(mine))
            )
            children.append(Peer(name(child), f"https://{name(child)}.example", serves))
        out[name(i)] = Directory(
            node=name(i),
            tier=TIERS[len(TIERS) - 1 - tree.depth(i)],
            hosted=frozenset(str(c) for c, h in tree.host.items() if h == i),
            parent=None
            if parent is None
            else Peer(name(parent), f"https://{name(parent)}.example"),
            children=tuple(children),
        )
    return out


def covered(directories: dict[str, Directory], recipient: AgencyCode) -> bool:
    """True when some node would send ``recipient`` down to a child."""
    chain = {recipient, *recipient.ancestors()}
    return any(
        chain.intersection(child.serves) for d in directories.values() for child in d.children
    )


def check_routing(tree: Tree, dirs: dict[str, Directory]) -> None:
    for directory in dirs.values():
        directory.check()
    for start in range(len(tree.parents)):
        for recipient, host in tree.host.items():
            # reaches the host along the unique tree path: as long as the tree distance, no loop
            assert walk(dirs, name(start), str(recipient)) == Walk(
                tree.path(start, host), "delivered"
            )
        for unknown in [OUTSIDE, *(c for c in UNIVERSE if c not in tree.host)]:
            result = walk(dirs, name(start), str(unknown))
            if covered(dirs, unknown):
                # under a served code nobody hosts: bounces back; would_loop stops it
                assert result.end == "loop"
            else:
                # straight up to the root, which refuses it
                assert result == Walk([name(i) for i in tree.up(start)], "unreachable")


@settings(max_examples=40, deadline=None)
@given(trees())
def test_random_trees_route_every_hosted_code_along_the_tree_path(tree: Tree) -> None:
    check_routing(tree, directories(tree, aggregated=False))


@settings(max_examples=40, deadline=None)
@given(trees())
def test_random_trees_route_with_children_serving_common_ancestor_codes(tree: Tree) -> None:
    dirs = directories(tree, aggregated=True)
    check_routing(tree, dirs)
