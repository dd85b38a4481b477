"""The routing engine against plain node-actor objects: no Ray cluster.

Each test builds three ``_NodeActor`` objects (what runs inside the Ray actors) and routers
that call them directly, the way ``Cache`` calls them through Ray, and checks what a user of
the cache relies on: reads find data wherever ``init`` put it, stale placements are rerouted,
and ``init`` / ``delete`` / writes racing each other never leave an id without its record, a
record without its data, or an id listed twice.
"""

from __future__ import annotations

import tempfile
import threading
from collections import Counter

import pytest

from shoveling_ray import CacheFull, NodeUnavailable, ShovelingError
from shoveling_ray import protocol as p
from shoveling_ray.actors.node import _NodeActor
from shoveling_ray.codec import decode, encode, encode_append
from shoveling_ray.placement import build_chains, home_index, reassign_chains, slot_of
from shoveling_ray.router import MAX_ROUNDS, Router
from shoveling_ray.view import View

NODES = ["node-a", "node-b", "node-c"]
# A spill_dir keeps Ray's session out of it; removed when the test process exits.
SPILL_DIR = tempfile.TemporaryDirectory(prefix="router-spill-")


def view_of(actors: dict, replicas: int = 1) -> dict:
    chains = build_chains(sorted(actors), max(replicas, 2))
    return View(actors, [c[0] for c in chains], chains, replicas)


def make_actors(nodes: list[str] = NODES, replicas: int = 1, limits: dict | None = None) -> dict[str, _NodeActor]:
    """Node actors that took their first view from the coordinator (``limits``: the
    ``max_memory`` of some)."""
    limits = limits or {}
    actors = {n: _NodeActor("unit", n, limits.get(n), "reject", spill_dir=SPILL_DIR.name) for n in nodes}
    view = view_of(actors, replicas)
    for actor in actors.values():
        actor.rebuild(None, view.chains, [], actors, replicas)
    return actors


class Serial:
    """A node actor whose client calls run one at a time, as in Ray's default concurrency group
    (peer calls between actors go to the plain objects, as Ray runs them in their own group)."""

    _locks: dict[int, threading.Lock] = {}

    def __init__(self, actor: _NodeActor):
        self.actor = actor
        self.lock = Serial._locks.setdefault(id(actor), threading.Lock())

    def batch(self, *args):
        with self.lock:
            return self.actor.batch(*args)


def make_router(actors: dict, handle_for=None, replicas: int = 1, local: str | None = None) -> Router:
    return Router("unit", view_of(actors, replicas), handle_for or (lambda node, ids: Serial(actors[node])), local=local)


class Counting:
    """A node actor that counts the batches sent to it."""

    def __init__(self, actor, calls: Counter, node: str):
        self.actor, self.calls, self.node = actor, calls, node

    def batch(self, method, *args):
        self.calls[(self.node, method)] += 1
        return self.actor.batch(method, *args)


def get(router: Router, cache_id: str):
    ((status, value, _node),) = router.run("get", [(cache_id,)])
    return decode(*value) if status == p.OK else None


def set_(router: Router, cache_id: str, data) -> None:
    ((status, _value, _node),) = router.run("set", [(cache_id, *encode(data))])
    assert status == p.OK


def held_by(actors: dict, cache_id: str) -> list[str]:
    return [n for n, a in actors.items() if cache_id in a.store]


def assert_consistent(actors: dict, router: Router) -> None:
    """Every id lives on one node; away from its home only with a record there and at the
    backup home; every record points at data."""
    for node, actor in actors.items():
        for cache_id in actor.store.ids():
            assert held_by(actors, cache_id) == [node], f"{cache_id} held by {held_by(actors, cache_id)}"
            chain = router.chains[slot_of(cache_id)]
            if chain[0] != node:
                for keeper in chain[:2]:
                    if keeper != node:
                        assert actors[keeper].directory.records.get(cache_id) == node, f"{cache_id} on {node}: no record at {keeper}"
        for cache_id, target in actor.directory.records.items():
            assert node in router.chains[slot_of(cache_id)][:2], f"record of {cache_id} on {node}: not a directory node"
            assert cache_id in actors[target].store, f"record {cache_id} -> {target} without data"


def test_set_get_append_route_to_the_home_in_one_call():
    actors, calls = make_actors(), Counter()
    router = make_router(actors, lambda node, ids: Counting(actors[node], calls, node))
    set_(router, "k", b"value")
    router.run("append", [("log", encode_append(b"ab"))])
    router.run("append", [("log", encode_append(b"cd"))])
    assert get(router, "k") == b"value" and get(router, "log") == b"abcd"
    assert held_by(actors, "k") == [router.home("k")]
    assert sum(count for (node, method), count in calls.items() if method == "get") == 2  # one call per get


def test_an_init_placed_id_is_found_through_its_home_then_directly():
    actors = make_actors()
    placed = make_router(actors).place([f"p{i}" for i in range(30)], {n: 1.0 for n in NODES})
    assert Counter(placed.values()) == {n: 10 for n in NODES}
    away = next(i for i, n in placed.items() if n != make_router(actors).home(i))
    calls = Counter()
    reader = make_router(actors, lambda node, ids: Counting(actors[node], calls, node))
    assert get(reader, away) == b""  # home, then the holder
    assert reader.placements[away] == placed[away]
    calls.clear()
    assert get(reader, away) == b""  # remembered: one call, to the holder
    assert calls == Counter({(placed[away], "get"): 1})
    assert_consistent(actors, reader)


def test_a_client_remembers_a_bounded_number_of_placements_and_still_finds_forgotten_ids():
    actors = make_actors()
    ids = [f"b{i}" for i in range(300)]
    on_a = {"node-a": 1.0, "node-b": 0.0, "node-c": 0.0}  # every id on node-a: most away from home
    placed = make_router(actors).place(ids, on_a)
    for cache_id in ids:
        set_(make_router(actors), cache_id, cache_id.encode())
    calls = Counter()
    reader = Router("unit", view_of(actors), lambda node, ids: Counting(actors[node], calls, node), remember=40)
    reader.place(ids, on_a)  # learns about 200 placements away from home
    assert len(reader.placements) <= 40
    for cache_id in ids:  # the forgotten ones through their home, every one found
        assert get(reader, cache_id) == cache_id.encode()
        assert len(reader.placements) <= 40
        assert reader.placements.get(cache_id, reader.home(cache_id)) == placed[cache_id]
    recent = next(reversed(reader.placements))  # still remembered: one call, to its holder
    calls.clear()
    assert get(reader, recent) == recent.encode() and calls == Counter({(placed[recent], "get"): 1})
    forgotten = next(i for i in ids if placed[i] != reader.home(i) and i not in reader.placements)
    calls.clear()  # forgotten: its home redirects, then the holder answers
    assert get(reader, forgotten) == forgotten.encode()
    assert calls == Counter({(reader.home(forgotten), "get"): 1, (placed[forgotten], "get"): 1})
    assert_consistent(actors, reader)


def test_a_stale_placement_is_rerouted_to_the_home():
    actors = make_actors()
    first, second = make_router(actors), make_router(actors)
    placed = first.place([f"s{i}" for i in range(12)], {n: 1.0 for n in NODES})
    away = next(i for i, n in placed.items() if n != first.home(i))
    assert second.delete(away)
    set_(second, away, b"new home")  # created on the home this time
    assert get(first, away) == b"new home"  # first's remembered placement is stale
    assert away not in first.placements
    assert_consistent(actors, first)


def test_a_placement_that_keeps_moving_gives_up_after_max_rounds():
    class Bouncing:
        def __init__(self, other):
            self.other, self.calls = other, 0

        def batch(self, method, stamp, buffers, *blob):
            from shoveling_ray.wire import join, pack, unpack

            self.calls += 1
            return (*pack([(p.REDIRECT, self.other) for _ in unpack(join(blob), buffers)]), [])

    bouncers = {"node-a": Bouncing("node-b"), "node-b": Bouncing("node-a")}
    router = make_router(bouncers)
    with pytest.raises(ShovelingError, match="kept moving"):
        router.run("get", [("x",)])
    assert sum(b.calls for b in bouncers.values()) == MAX_ROUNDS


def test_init_twice_with_other_targets_returns_the_first_placement_and_ids_exist():
    actors = make_actors()
    ids = [f"i{i}" for i in range(40)]
    first = make_router(actors).place(ids, {"node-a": 1.0})
    second = make_router(actors).place(ids, {"node-b": 1.0})
    assert first == second and set(first.values()) == {"node-a"}
    assert all(get(make_router(actors), i) == b"" for i in ids)
    assert_consistent(actors, make_router(actors))


def test_a_write_redirected_before_a_delete_does_not_recreate_the_id_away_from_home():
    actors = make_actors()
    owner = make_router(actors)
    placed = owner.place([f"r{i}" for i in range(12)], {n: 1.0 for n in NODES})
    victim = next(i for i, n in placed.items() if n != owner.home(i))
    target, injected = placed[victim], []

    def handle_for(node, ids):
        if node == target and not injected:  # the home has redirected the writer: delete now
            injected.append(owner.delete(victim))
        return Serial(actors[node])

    writer = make_router(actors, handle_for)
    set_(writer, victim, b"after delete")
    assert injected == [True]
    assert held_by(actors, victim) == [owner.home(victim)]  # not recreated on the old target
    assert get(make_router(actors), victim) == b"after delete"
    assert_consistent(actors, writer)


def test_init_delete_and_set_racing_from_threads_keep_every_id_consistent():
    actors = make_actors()
    ids = [f"race{i}" for i in range(60)]
    errors: list[BaseException] = []

    def loop(action):
        router = make_router(actors)
        try:
            for _ in range(25):
                action(router)
        except BaseException as exc:  # reported below, with the thread's traceback
            errors.append(exc)

    threads = [
        threading.Thread(target=loop, args=(lambda r: r.place(ids, {n: 1.0 for n in NODES}),)),
        threading.Thread(target=loop, args=(lambda r: r.place(ids[::-1], {"node-c": 1.0}),)),
        threading.Thread(target=loop, args=(lambda r: [r.delete(i) for i in ids[::3]],)),
        threading.Thread(target=loop, args=(lambda r: r.run("set", [(i, *encode(b"v")) for i in ids[1::3]]),)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    router = make_router(actors)
    assert_consistent(actors, router)
    listed = [i for a in actors.values() for i in a.store.ids("race")]
    assert len(listed) == len(set(listed))
    placed = router.place(ids, {n: 1.0 for n in NODES})  # init after the storm: all exist
    assert all(get(router, i) is not None for i in ids)
    assert all(held_by(actors, i) == [placed[i]] for i in ids)


def test_after_a_node_dies_its_records_become_lost_ids_and_data_elsewhere_stays_reachable():
    actors = make_actors()
    before = make_router(actors)
    dead = "node-c"  # given half a share: some ids homed there are placed elsewhere
    placed = before.place([f"d{i}" for i in range(90)], {n: 0.5 if n == dead else 1.0 for n in NODES})
    survivors = {n: a for n, a in actors.items() if n != dead}
    chains = reassign_chains(before.chains, survivors, 2)
    for actor in survivors.values():
        actor.rebuild(before.chains, chains, [dead], survivors, 1)
    view = View(survivors, [c[0] for c in chains], chains, 1)
    after = Router("unit", view, lambda node, ids: Serial(survivors[node]))
    on_dead = sorted(i for i, n in placed.items() if n == dead)
    elsewhere = [i for i, n in placed.items() if n != dead]
    homed_on_dead = [i for i in elsewhere if before.home(i) == dead]
    assert homed_on_dead, "some surviving data must have had its home on the dead node"
    results = after.run("get", [(i,) for i in elsewhere])
    assert all(status == p.OK for status, _v, _n in results)  # every live copy still readable
    lost = on_dead  # their homes or, for those homed there, the backup homes knew them
    assert any(before.home(i) == dead for i in lost)
    assert lost and all(after.run("get", [(i,)])[0][:2] == (p.LOST, dead) for i in lost)
    assert sorted(i for a in survivors.values() for i in a.lost_ids()) == lost
    set_(after, lost[0], b"again")  # a set clears the loss
    assert get(after, lost[0]) == b"again"
    ((status, _v, _n),) = after.run("append", [(lost[1], encode_append(b"x"))])
    assert status == p.LOST  # an append does not hide it
    assert after.delete(lost[1]) and get(after, lost[1]) is None
    replaced = after.place(lost[2:], {n: 1.0 for n in survivors})  # init recreates them, empty
    assert all(get(after, i) == b"" for i in lost[2:]) and dead not in replaced.values()
    assert_consistent(survivors, after)


class AnswerLost:
    """A new home that takes what a draining node hands it, serves a client's calls that found
    those ids there (``during``), and whose answer never reaches the draining node."""

    def __init__(self, actor: _NodeActor, during):
        self.actor, self.during = actor, during

    def receive(self, *args):
        self.actor.receive(*args)
        self.during()
        raise NodeUnavailable(self.actor.node_id, [], "the answer was lost")

    def __getattr__(self, name):
        return getattr(self.actor, name)


def test_a_failed_drain_keeps_the_writes_and_deletes_clients_made_while_it_ran():
    actors = make_actors()
    router = make_router(actors)
    drained = "node-c"  # given twice a share: ids homed elsewhere are placed there too
    placed = router.place([f"w{i}" for i in range(90)], {n: 2.0 if n == drained else 1.0 for n in NODES})
    for cache_id in placed:
        set_(router, cache_id, b"before")
    away = [i for i, n in placed.items() if n == drained and router.home(i) != drained]  # homes stay
    home = router.home(away[0])
    written, deleted, kept = [i for i in away if router.home(i) == home][:3]
    client = make_router(actors)  # remembers no placement: asks the home

    def during():
        set_(client, written, b"during")
        assert client.delete(deleted)

    chains = reassign_chains(router.chains, [n for n in NODES if n != drained], 2)
    peers = {n: AnswerLost(a, during) if n == home else a for n, a in actors.items() if n != drained}
    with pytest.raises(NodeUnavailable):
        actors[drained].hand_over(router.chains, chains, peers)
    reader = make_router(actors)
    assert get(reader, written) == b"during"  # acknowledged while the drain ran: kept
    backup = router.chains[slot_of(written)][1]  # told where it stayed by that client batch
    assert actors[backup].directory.records.get(written) == home
    assert get(reader, deleted) is None
    assert get(reader, kept) == b"before" and kept in actors[drained].store
    listed = [i for actor in actors.values() for i in actor.ids("w")]
    assert sorted(listed) == sorted(set(placed) - {deleted})  # each id held once, none twice


def state(actors: dict) -> dict:
    """What each node holds and records, to compare two ways of doing the same."""
    return {n: (sorted(a.store.ids()), sorted(a.directory.records.items()), sorted(a.directory.lost.items()))
            for n, a in actors.items()}


def test_init_of_packed_ids_places_and_records_as_the_item_batches_do():
    ids = [f"q{i}" for i in range(300)] + ["é-ü", "日本語", "x" * 200, "ü" * 70]
    weights = {n: 1.0 for n in NODES}
    packed, items = make_actors(), make_actors()
    for actors in (packed, items):  # ids that exist keep their node
        set_(make_router(actors), ids[5], b"v")
        set_(make_router(actors), "日本語", b"w")
    router, other = make_router(packed), make_router(items)
    placed = router.place(ids, weights)
    assert placed == dict(zip(ids, other._place_items(ids, home_index(ids, other.table), weights, None)))
    assert state(packed) == state(items)
    assert placed[ids[5]] == router.home(ids[5]) and get(router, "日本語") == b"w"
    assert make_router(packed).place(ids[::-1], {"node-a": 1.0}) == {i: placed[i] for i in ids[::-1]}
    assert all(get(make_router(packed), i) == b"" for i in ids if i not in (ids[5], "日本語"))
    assert_consistent(packed, router)


def test_init_of_packed_ids_on_a_full_node_places_the_rest_and_raises_cache_full():
    actors = make_actors(limits={"node-b": 4000})
    ids = [f"f{i}" for i in range(600)]
    router = make_router(actors)
    with pytest.raises(CacheFull) as info:
        router.place(ids, {n: 1.0 for n in NODES})
    assert info.value.node_id == "node-b" and info.value.cache_id in ids
    assert 0 < len(actors["node-b"].store) < 200  # as many as fit
    assert len(actors["node-a"].store) == len(actors["node-c"].store) == 200
    assert_consistent(actors, router)
    placed = router.place(ids, {"node-a": 1.0, "node-c": 1.0})  # again, without the full node
    assert all(get(make_router(actors), i) == b"" for i in ids)
    assert set(placed.values()) == set(NODES)
    assert_consistent(actors, router)
