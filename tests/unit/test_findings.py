"""Edges the exactly-once issue found by reading the node actor, each against plain node-actor
objects (no Ray cluster): what a user was promised, and what today's code did instead."""

from __future__ import annotations

from shoveling_ray.actors import protocol as p
from shoveling_ray.codec import encode, encode_append

from .test_replicas import NODES4, lose
from .test_router import NODES, get, make_actors, make_router, set_


def test_ids_written_with_two_copies_read_as_lost_after_replicas_went_down_to_one():
    # A write records the ids it creates at the backup home only with one copy; ids written
    # while there were two had no record, and read as never written once their node died.
    actors = make_actors(NODES4, replicas=2)
    router = make_router(actors, replicas=2)
    ids = [f"r{i}" for i in range(120)]
    router.run("set", [(i, *encode(b"v")) for i in ids])
    for actor in actors.values():  # the coordinator's rebuild after replicas=1
        actor.rebuild(router.chains, router.chains, [], actors, 1)
    one = make_router(actors, replicas=1)
    dead = "node-b"
    homed = [i for i in ids if one.home(i) == dead]
    assert homed
    _survivors, after = lose(actors, one, dead, 1)
    answers = after.run("get", [(i,) for i in ids])
    for cache_id, (status, value, _node) in zip(ids, answers):
        assert (status, value) == (p.LOST, dead) if cache_id in homed else status == p.OK, cache_id


def test_with_lru_an_id_init_placed_away_from_its_home_can_be_written_again_after_its_eviction():
    # The home kept redirecting writes to the holder, which rerouted them to the home (only the
    # home creates ids) until "placements kept moving"; init answered the holder, uncreated.
    actors = make_actors(NODES, replicas=1)
    router = make_router(actors)
    target = {n: 1.0 for n in NODES}
    placed = router.place([f"x{i}" for i in range(30)], target)
    away = next(i for i, n in placed.items() if n != router.home(i))
    holder = actors[placed[away]]
    set_(router, away, b"value")
    holder.configure(1, "lru", None)  # evicts everything held there
    holder.configure(None, "lru", None)
    assert away not in holder.store
    fresh = make_router(actors)  # a client that remembers no placement
    ((status, _value, _node),) = fresh.run("append", [(away, encode_append(b"again"))])
    assert status == p.OK and get(fresh, away) == b"again"
    assert fresh.place([away], target)[away] in NODES and get(fresh, away) == b"again"
    gone = next(i for i, n in placed.items() if n == holder.node_id and i != away)
    assert fresh.place([gone], target)[gone] and get(fresh, gone) == b""  # init creates it again
