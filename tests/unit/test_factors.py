"""Ids with a copy count of their own (``init(ids, replicas=k)``) against plain node-actor
objects: no Ray cluster.

What a user relies on: an id holds as many copies as it was created with, whatever the cache's
default, through writes, node loss, repairs, drains and a raised default; an id of one copy on
a cache of copies reads as lost (never as missing, never from a node that has no data) once its
node dies; ids that writes create take the cache's default.
"""

from __future__ import annotations

from shoveling_ray import protocol as p
from shoveling_ray.actors.admin import RECORD_BYTES
from shoveling_ray.codec import encode
from shoveling_ray.placement import reassign_chains, slot_of
from shoveling_ray.router import Router
from shoveling_ray.view import View

from .test_replicas import NODES4, append, lose, repair_all, values_on
from .test_router import Serial, get, make_actors, make_router, set_


def placed_with(router: Router, prefix: str, count: int, replicas: int | None) -> dict:
    return router.place([f"{prefix}{i}" for i in range(count)], {n: 1.0 for n in NODES4}, replicas)


def test_each_id_has_the_copies_it_was_created_with():
    actors = make_actors(NODES4, replicas=3)
    router = make_router(actors, replicas=3)
    groups = {1: placed_with(router, "one", 24, 1), 2: placed_with(router, "two", 24, 2),
              3: placed_with(router, "dflt", 24, None)}
    for count, placed in groups.items():
        for cache_id, node in placed.items():
            append(router, cache_id, b"x")
            append(router, cache_id, b"y")
            copies = values_on(actors, cache_id)
            assert len(copies) == count and all(v == b"xy" for v in copies.values()), (cache_id, copies)
            (status, where, _node), = router.run("locate", [(cache_id,)])
            assert status == p.OK and where[0] == node and sorted(where) == sorted(copies)
    assert sum(a.stats()["under_replicated"] for a in actors.values()) == 0
    for a in actors.values():  # the side table of the ids of their own count is counted in used
        assert a.layout.factors and a.stats()["bookkeeping"] >= RECORD_BYTES * len(a.layout.factors)
    # a set keeps the id's factor; a delete ends it: the id written again takes the default
    cache_id = next(iter(groups[1]))
    set_(router, cache_id, b"kept")
    assert len(values_on(actors, cache_id)) == 1
    assert router.delete(cache_id)
    assert not any(cache_id in a.layout.factors for a in actors.values())
    set_(router, cache_id, b"new")
    assert len(values_on(actors, cache_id)) == 3


def test_a_dead_node_loses_its_ids_of_one_copy_and_no_other_write():
    actors = make_actors(NODES4, replicas=2)
    router = make_router(actors, replicas=2)
    single = placed_with(router, "s", 120, 1)
    double = placed_with(router, "d", 40, None)
    for cache_id in [*single, *double]:
        append(router, cache_id, cache_id.encode())
    dead = "node-c"
    # among them ids whose record lived on the dead node (home or backup home)
    assert any(dead in router.chains[slot_of(i)][:2] and n != dead for i, n in single.items())
    survivors, after = lose(actors, router, dead, 2)
    gone = sorted(i for i, n in single.items() if n == dead)
    assert gone
    answers = after.run("get", [(i,) for i in single])
    for (cache_id, node), (status, value, _node) in zip(single.items(), answers):
        if node == dead:
            assert (status, value) == (p.LOST, dead), cache_id
        else:
            assert status == p.OK, cache_id
    assert sorted(i for a in survivors.values() for i in a.lost_ids()) == gone
    assert all(get(after, i) == i.encode() for i in double)
    repair_all(survivors)
    assert sum(a.stats()["under_replicated"] for a in survivors.values()) == 0
    assert all(len(values_on(survivors, i)) == 1 for i, n in single.items() if n != dead)
    assert all(len(values_on(survivors, i)) == 2 for i in double)
    # a second loss: the repaired copies of the others kept their factor too
    rest, again = lose(survivors, after, next(n for n in survivors if n != "node-a"), 2)
    assert all(get(again, i) == i.encode() for i in double)


def test_copies_of_an_id_of_two_on_a_cache_of_three_are_repaired_to_two():
    actors = make_actors(NODES4, replicas=3)
    router = make_router(actors, replicas=3)
    placed = placed_with(router, "t", 40, 2)
    for cache_id in placed:
        append(router, cache_id, b"v")
    survivors, after = lose(actors, router, "node-b", 3)
    repair_all(survivors)
    for cache_id in placed:
        assert get(after, cache_id) == b"v"
        assert len(values_on(survivors, cache_id)) == 2, cache_id
    assert sum(a.stats()["under_replicated"] for a in survivors.values()) == 0


def test_a_drain_moves_the_ids_of_one_copy_too():
    actors = make_actors(NODES4, replicas=2)
    router = make_router(actors, replicas=2)
    single = placed_with(router, "s", 60, 1)
    for cache_id in single:
        append(router, cache_id, cache_id.encode())
    drained = "node-b"
    assert any(n == drained for n in single.values())
    peers = {n: a for n, a in actors.items() if n != drained}
    chains = reassign_chains(router.chains, peers, 2)
    actors[drained].hand_over(router.chains, chains, peers)
    for actor in peers.values():
        actor.rebuild(router.chains, chains, [drained], peers, 2, full=True)
    after = Router("unit", View(peers, [c[0] for c in chains], chains, 2), lambda node, ids: Serial(peers[node]))
    for cache_id in single:
        assert get(after, cache_id) == cache_id.encode(), cache_id
        assert len(values_on(peers, cache_id)) == 1
    assert not any(a.lost_ids() for a in peers.values())


def test_raising_the_default_keeps_the_ids_of_their_own_factor():
    actors = make_actors(NODES4, replicas=2)
    router = make_router(actors, replicas=2)
    single = placed_with(router, "s", 30, 1)
    router.run("set", [(f"h{i}", *encode(b"h")) for i in range(30)])
    chains = reassign_chains(router.chains, actors, 3)
    for actor in actors.values():
        actor.rebuild(router.chains, chains, [], actors, 3)
    repair_all(actors)
    assert all(len(values_on(actors, i)) == 1 for i in single)
    assert all(len(values_on(actors, f"h{i}")) == 3 for i in range(30))
    assert sum(a.stats()["under_replicated"] for a in actors.values()) == 0


def test_mid_sized_pieces_of_one_copy_ids_go_in_one_call_per_node_without_a_bundle():
    # On a cache of copies, a batch of mid-sized pieces goes once per set of copy holders as
    # one object the primary hands on; ids this client placed with one copy have no copies to
    # hand it to, and go as on a one-copy cache: one call per node.
    from collections import Counter

    from shoveling_ray.codec import encode_append

    from .test_router import Counting, NODES

    actors = make_actors(replicas=2)
    calls: Counter = Counter()
    router = make_router(actors, replicas=2, handle_for=lambda node, ids: Counting(Serial(actors[node]), calls, node))
    placed = router.place([f"m{i}" for i in range(48)], {n: 1.0 for n in NODES}, 1)
    assert router.single == set(placed)
    pieces = {i: bytes([n]) * (128 << 10) for n, i in enumerate(placed)}
    results = router.run("append", [(i, encode_append(piece, compression=None)) for i, piece in pieces.items()])
    assert all(status == p.OK for status, _, _ in results)
    assert all(calls[(node, "append")] == 1 for node in NODES), calls
    assert all(values_on(actors, i) == {placed[i]: pieces[i]} for i in placed)
    router.delete_many(list(placed))
    assert not router.single
