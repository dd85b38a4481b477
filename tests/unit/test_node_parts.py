"""Parts of the node actor driven alone, without the actor around them (see
``shoveling_ray/actors/node.py`` for the map): the peers' one error policy, and the placement
directory's half of a rebuild, event by event."""

from __future__ import annotations

import threading
import time

import pytest

from shoveling_ray import NodeUnavailable, ShovelingError
from shoveling_ray.actors.directory import Directory
from shoveling_ray.actors.layout import Layout
from shoveling_ray.actors.peers import Peers
from shoveling_ray.actors.storage import Store
from shoveling_ray.placement import build_chains, reassign_chains, slot_of

NODES = ["node-a", "node-b", "node-c"]


class Doubling:
    def twice(self, arg):
        return 2 * arg


class Dying:
    def twice(self, arg):
        raise NodeUnavailable("node-b", arg, "died while it answered")


def test_a_peer_that_does_not_answer_is_a_value_of_call_all_and_raised_by_call():
    layout = Layout("node-a")
    layout.take(None, build_chains(NODES, 2), [], {"node-a": Doubling(), "node-b": Dying()}, 1, None)
    peers = Peers("unit", layout)
    out = peers.call_all("twice", {"node-a": ["x"], "node-b": ["y"], "node-c": ["z"]})
    assert out["node-a"] == ["x", "x"]
    assert isinstance(out["node-b"], NodeUnavailable) and isinstance(out["node-c"], NodeUnavailable)
    with pytest.raises(NodeUnavailable, match="not a member"):
        peers.call("node-c", "twice", ["z"])
    assert peers.call("node-c", "twice", ["z"], members={"node-c": Doubling()}) == ["z", "z"]  # a drain's view


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_record_of_a_dead_node_points_at_its_surviving_copy_or_reads_as_lost(replicas):
    chains = build_chains(NODES, 2)
    homed = [i for i in (f"x{n}" for n in range(500)) if chains[slot_of(i)][0] == "node-a"]
    layout = Layout("node-a")
    layout.take(None, chains, [], dict.fromkeys(NODES), replicas, None)
    directory = Directory(Store("node-a"), {}, layout, Peers("unit", layout), threading.Lock())
    directory.adopt_records([(homed[0], "node-c")])  # init put it on node-c
    survivors = ["node-a", "node-b"]
    change = layout.take(chains, reassign_chains(chains, survivors, 2), ["node-c"], dict.fromkeys(survivors),
                         replicas, None)
    directory.mend(change)
    if replicas == 1:
        assert directory.records == {} and directory.lost_ids() == {homed[0]: "node-c"}
    else:
        assert directory.records[homed[0]] in survivors and directory.lost == {}


def test_a_members_change_applies_to_the_members_taken_last_and_only_to_them():
    from shoveling_ray import ShovelingError
    from shoveling_ray.actors.layout import MembersChange

    layout = Layout("a")
    chains = build_chains(["a", "b", "c"], 2)
    layout.take(None, chains, [], {"a": "actor-a", "b": "actor-b", "c": "actor-c"}, 1, None, 1)
    # c left, d joined, b's actor was replaced: only those travel
    change = MembersChange(1, {"d": "actor-d", "b": "actor-b2"}, ["c", "b"])
    assert layout.members(change) == {"a": "actor-a", "b": "actor-b2", "d": "actor-d"}
    assert layout.members({"a": "whole"}) == {"a": "whole"}  # members sent whole stay whole
    with pytest.raises(ShovelingError, match="a members change from version 0"):
        layout.members(MembersChange(0, {}, ["c"]))  # not the version taken: refused, nothing changed
    assert layout.peers == {"a": "actor-a", "b": "actor-b", "c": "actor-c"}


def test_a_drained_home_hands_its_records_over_with_each_id_s_own_factor():
    """An id of one copy ``init`` put away from its home keeps that one copy when its home is
    drained and then the cache's ``replicas`` rise: its record travels with its factor (without
    it, the new home would take the id for one of two copies and, when its node dies, point at
    a survivor that never had it instead of reporting it lost)."""
    chains = build_chains(NODES, 1)
    homed = [i for i in (f"x{n}" for n in range(500)) if chains[slot_of(i)][0] == "node-a"]
    old, new = Layout("node-a"), Layout("node-b")
    for layout in (old, new):
        layout.take(None, chains, [], dict.fromkeys(NODES), 1, None)
    drained = Directory(Store("node-a"), {}, old, Peers("unit", old), threading.Lock())
    drained.adopt_records([(homed[0], "node-c", 1), (homed[1], "node-c")])  # init(..., replicas=1)
    table = ["node-b"] * len(chains)  # every slot's new home after the drain
    records, lost = drained.by_home(table)["node-b"]
    taker = Directory(Store("node-b"), {}, new, Peers("unit", new), threading.Lock())
    taker.take_handed(records, lost)
    assert taker.records == {homed[0]: "node-c", homed[1]: "node-c"}
    assert new.factors == {homed[0]: 1}
    taker.drop_handed(records, lost)  # the drain failed after all
    assert taker.records == {}


class _Recording:
    """Peers that take every call and keep what each carried."""

    cache = "unit"

    def __init__(self, refuse_after: int | None = None) -> None:
        self.calls: list[tuple] = []
        self.refuse_after = refuse_after  # receive calls taken before one is refused

    def call(self, node, method, handed, packed=None, members=None):
        self.calls.append((node, method, handed))
        if method == "receive" and self.refuse_after is not None:
            if sum(c[1] == "receive" for c in self.calls) > self.refuse_after:
                raise ShovelingError("full")
        return []


def test_a_drain_sends_at_most_hand_over_ids_a_call(monkeypatch):
    """A drained node holding many empty ids (``init``'s) and many records sends them in calls
    of at most ``HAND_OVER_IDS`` each (one message of millions of empty ids or records took more
    memory than a full node's values); every id and record arrives once."""
    from shoveling_ray.actors import drain as d
    from shoveling_ray.actors.sessions import Sessions

    monkeypatch.setattr(d, "HAND_OVER_IDS", 1000)
    chains = build_chains(NODES, 1)
    layout = Layout("node-a")
    layout.take(None, chains, [], dict.fromkeys(NODES), 1, None)
    store = Store("node-a")
    held = [f"e{n}" for n in range(2500)]
    store.create_empty_many(held)
    peers = _Recording()
    drain = d.Drain(store, layout, peers, None, None, Sessions(), threading.Lock())
    records = [(f"r{n}", "node-c") for n in range(3500)]
    drain._send_home(held, {"node-b": (records, [])}, chains, [["node-b"]] * len(chains), {}, time.monotonic() + 60)
    sizes = [(len(handed[1]), len(handed[3])) for _node, _method, handed in peers.calls]
    assert all(r <= 1000 for r, _ in sizes) and len(peers.calls) == 4
    assert [r for c in peers.calls for r in c[2][1]] == records
    assert d.chunks(store, held) == [held[:1000], held[1000:2000], held[2000:]]
    # a home that refuses the last call: what it took comes back in calls as small
    peers.calls, peers.refuse_after = [], 3
    with pytest.raises(ShovelingError):
        drain._send_home(held, {"node-b": (records, [])}, chains, [["node-b"]] * len(chains), {},
                         time.monotonic() + 60)
    given = [handed for _node, method, handed in peers.calls if method == "give_back"]
    assert len(given) == 4 and all(len(g[1]) <= 1000 and len(g[2]) <= 1000 for g in given)
    assert [r for g in given for r in g[2]] == records
