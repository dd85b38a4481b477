"""Replicas against plain node-actor objects: no Ray cluster.

The routers and actors are those of ``test_router``; here every cache keeps ``k`` copies of
each id, and the checks are what a user of ``replicas`` relies on: every acknowledged write is
on every copy in one order, reads prefer a local copy, a dead node loses nothing and its
copies are rebuilt, deletes leave no copy or record behind.
"""

from __future__ import annotations

from collections import Counter

import pytest

from shoveling_ray import DataLost, NodeUnavailable
from shoveling_ray.actors import batch as batch_module
from shoveling_ray import protocol as p
from shoveling_ray.actors import replication as replication_module
from shoveling_ray.codec import decode, encode, encode_append
from shoveling_ray.placement import holders, reassign_chains, slot_of
from shoveling_ray.objects import resolve
from shoveling_ray.router import Router
from shoveling_ray.view import View

from .test_router import NODES, Counting, Serial, get, make_actors, make_router, set_

NODES4 = ["node-a", "node-b", "node-c", "node-d"]


def values_on(actors: dict, cache_id: str) -> dict:
    """``{node: decoded value}`` of every copy of ``cache_id``."""
    out = {}
    for node, actor in actors.items():
        value = actor.store.get(cache_id)
        if value is not None:
            out[node] = decode(*value)
    return out


def append(router: Router, cache_id: str, data: bytes, token: str | None = None) -> None:
    extra = (token,) if token else ()
    ((status, _value, _node),) = router.run("append", [(cache_id, encode_append(data), *extra)])
    assert status == p.OK


def lose(actors: dict, router: Router, dead: str, replicas: int) -> tuple[dict, Router]:
    """What the coordinator does when ``dead`` dies: new chains, every survivor rebuilds."""
    survivors = {n: a for n, a in actors.items() if n != dead}
    chains = reassign_chains(router.chains, survivors, max(replicas, 2))
    for actor in survivors.values():
        actor.rebuild(router.chains, chains, [dead], survivors, replicas)
    view = View(survivors, [c[0] for c in chains], chains, replicas)
    return survivors, Router("unit", view, lambda node, ids: Serial(survivors[node]))


def repair_all(actors: dict) -> None:
    for actor in actors.values():
        while actor.repair()[1]:
            pass


def test_every_write_is_on_every_holder_in_the_primarys_order():
    actors = make_actors(NODES4, replicas=3)
    router = make_router(actors, replicas=3)
    set_(router, "k", {"a": 1})
    for i in range(20):
        append(router, "log", b"%d," % i)
    placed = router.place([f"p{i}" for i in range(12)], {n: 1.0 for n in NODES4})
    for cache_id in placed:
        append(router, cache_id, b"x")
    for cache_id in ["k", "log", *placed]:
        primary = placed.get(cache_id, router.home(cache_id))
        expected = holders(primary, router.chains[slot_of(cache_id)], 3)
        copies = values_on(actors, cache_id)
        assert sorted(copies) == sorted(expected) and len(copies) == 3
        assert len({repr(v) for v in copies.values()}) == 1, copies
        (status, where, _node), = router.run("locate", [(cache_id,)])
        assert status == p.OK and where == expected
    assert values_on(actors, "log")[router.home("log")] == b"".join(b"%d," % i for i in range(20))
    assert all(a.stats()["under_replicated"] == 0 for a in actors.values())


def test_a_write_sent_to_a_copy_is_redirected_to_the_primary():
    actors = make_actors(replicas=2)
    router = make_router(actors, replicas=2)
    set_(router, "r", b"one")
    primary, copy = holders(router.home("r"), router.chains[slot_of("r")], 2)
    router.placements["r"] = copy  # a stale or wrong placement
    append(router, "r", b"+two")
    assert "r" not in router.placements  # the primary is its home: the wrong placement is forgotten
    assert values_on(actors, "r") == {primary: b"one+two", copy: b"one+two"}


def test_a_batch_of_mid_sized_pieces_goes_once_per_copy_holders_and_answers_in_order():
    # Pieces of 64 KiB-1 MiB adding up to 1 MiB or more travel as one object per set of copy
    # holders (which the primary hands on whole): the router splits each node's batch, and
    # the answers must still come back per item, in the caller's order.
    actors = make_actors(replicas=2)
    calls: Counter = Counter()
    router = make_router(actors, replicas=2, handle_for=lambda node, ids: Counting(Serial(actors[node]), calls, node))
    ids = [f"m{i}" for i in range(48)]
    set_(router, ids[5], {"not": "bytes"})  # its append fails: WRONG_TYPE, at its own position
    pieces = {i: bytes([n]) * (128 << 10) for n, i in enumerate(ids)}
    results = router.run("append", [(i, encode_append(piece, compression=None)) for i, piece in pieces.items()])
    assert [status for status, _, _ in results] == [p.WRONG_TYPE if i == ids[5] else p.OK for i in ids]
    for i in ids:
        expected = {"not": "bytes"} if i == ids[5] else pieces[i]
        copies = values_on(actors, i)
        assert len(copies) == 2 and all(v == expected for v in copies.values()), i
    assert all(calls[(node, "append")] == 2 for node in NODES), calls  # 3 nodes: 2 copy holders each


def test_a_copy_that_cannot_fetch_the_writers_objects_keeps_no_stale_value_and_is_repaired(monkeypatch):
    # A copy fetches a write's payloads from the writer's objects; a writer killed meanwhile
    # takes them along. The copy must not keep serving the value before that write.
    actors = make_actors(replicas=2)
    router = make_router(actors, replicas=2)
    set_(router, "w", b"old" * 30_000)
    primary, copy = holders(router.home("w"), router.chains[slot_of("w")], 2)
    fetches = []

    def resolve_then_lose(buffers):
        fetches.append(buffers)
        if len(fetches) > 1:  # the primary's own fetch works; the copy's finds the objects gone
            raise DataLost(detail="the writer died")
        return resolve(buffers)

    monkeypatch.setattr(batch_module, "resolve", resolve_then_lose)  # the primary's fetch
    monkeypatch.setattr(replication_module, "resolve", resolve_then_lose)  # the copy's
    set_(router, "w", b"new" * 30_000)
    monkeypatch.undo()
    assert values_on(actors, "w") == {primary: b"new" * 30_000}
    assert actors[primary].stats()["under_replicated"] == 1
    repair_all(actors)
    assert values_on(actors, "w") == {primary: b"new" * 30_000, copy: b"new" * 30_000}


def written_with_two_copies(count: int, local: str) -> tuple[dict, Router, list, list]:
    """``count`` ids written with ``replicas=2``: the actors, the writer, the ids, and those
    with a copy on ``local``."""
    actors = make_actors(replicas=2)
    writer = make_router(actors, replicas=2)
    ids = [f"l{i}" for i in range(count)]
    writer.run("set", [(i, *encode(i.encode())) for i in ids])
    return actors, writer, ids, [i for i in ids if local in holders(writer.home(i), writer.chains[slot_of(i)], 2)]


def test_reads_go_to_a_copy_on_the_readers_node():
    local = "node-b"
    actors, writer, _ids, here = written_with_two_copies(60, local)
    assert here and any(writer.home(i) != local for i in here)
    calls = Counter()
    reader = make_router(actors, lambda node, ids: Counting(actors[node], calls, node), replicas=2, local=local)
    results = reader.run("get", [(i,) for i in here])
    assert [decode(*r[1]) for r in results] == [i.encode() for i in here]
    assert calls == Counter({(local, "get"): 1})  # one call, to the local node
    assert not reader.placements  # a copy is not where the id lives: writes still go to the primary


def test_a_large_read_batch_is_spread_over_the_nodes_not_piled_on_the_readers():
    """Two thirds of the ids have a copy on the reader's node; a batch of 3,000 reads still
    goes to the primaries, a third to each node (every node works on it at once), while a small
    batch reads every local copy locally."""
    local = "node-b"
    actors, writer, ids, here = written_with_two_copies(3000, local)
    assert len(here) > 1500
    reader = make_router(actors, replicas=2, local=local)
    results = reader.run("get", [(i,) for i in ids])
    assert [decode(*value) for _status, value, _node in results] == [i.encode() for i in ids]
    served = Counter(node for _status, _value, node in results)
    assert served == Counter(writer.home(i) for i in ids) and set(served) == set(NODES)
    small = reader.run("get", [(i,) for i in here[:100]])
    assert {node for _status, _value, node in small} == {local}


def test_a_dead_node_loses_no_write_and_its_copies_are_rebuilt():
    actors = make_actors(NODES4, replicas=2)
    router = make_router(actors, replicas=2)
    hashed = {f"h{i}": f"value {i}".encode() for i in range(80)}
    router.run("set", [(i, *encode(v)) for i, v in hashed.items()])
    placed = router.place([f"p{i}" for i in range(40)], {n: 1.0 for n in NODES4})
    for cache_id in placed:
        append(router, cache_id, cache_id.encode(), token="t1")
    dead = "node-c"
    survivors, after = lose(actors, router, dead, 2)
    for cache_id, value in hashed.items():
        assert get(after, cache_id) == value
    for cache_id in placed:
        assert get(after, cache_id) == cache_id.encode()
        append(after, cache_id, b"!", token="t1")  # the token came along: skipped
        append(after, cache_id, b"!", token="t2")
    under = sum(a.stats()["under_replicated"] for a in survivors.values())
    assert under > 0  # the ids that had a copy on the dead node
    repair_all(survivors)
    assert sum(a.stats()["under_replicated"] for a in survivors.values()) == 0
    for cache_id in [*hashed, *placed]:
        copies = values_on(survivors, cache_id)
        assert len(copies) == 2 and len({repr(v) for v in copies.values()}) == 1, (cache_id, copies)
    assert all(values_on(survivors, i)[n] == i.encode() + b"!" for i in placed for n in values_on(survivors, i))
    assert sorted(i for a in survivors.values() for i in a.ids("")) == sorted([*hashed, *placed])
    assert not any(a.lost_ids() for a in survivors.values())


def test_delete_leaves_no_copy_and_no_record():
    actors = make_actors(NODES4, replicas=2)
    router = make_router(actors, replicas=2)
    placed = router.place([f"d{i}" for i in range(30)], {n: 1.0 for n in NODES4})
    set_(router, "hashed", b"v")
    for cache_id in [*placed, "hashed"]:
        assert router.delete(cache_id)
        assert values_on(actors, cache_id) == {}
        assert not any(cache_id in a.directory.records or cache_id in a.replication.copies for a in actors.values())
        assert get(make_router(actors, replicas=2), cache_id) is None


def test_with_one_copy_the_directory_outlives_the_home_and_the_backup():
    for dead_position in (0, 1):
        actors = make_actors(NODES4, replicas=1)
        router = make_router(actors)
        placed = router.place([f"q{i}" for i in range(200)], {n: 1.0 for n in NODES4})
        dead = "node-d"
        keepers = [i for i, n in placed.items() if n != dead and router.chains[slot_of(i)][dead_position] == dead]
        assert keepers
        survivors, after = lose(actors, router, dead, 1)
        assert all(get(after, i) == b"" for i in keepers)  # data on an alive node stays reachable
        lost = sorted(i for i, n in placed.items() if n == dead)  # homed there or not
        assert sorted(i for a in survivors.values() for i in a.lost_ids()) == lost
        # and the new backup home knows the records too: lose another node
        second = next(n for n in survivors if n != "node-a")
        rest, again = lose(survivors, after, second, 1)
        alive = [i for i, n in placed.items() if n in rest]
        assert all(get(again, i) == b"" for i in alive)
        # and every id that died with either node reads as lost, not as never written
        gone = sorted(i for i, n in placed.items() if n not in rest)
        assert sorted(i for a in rest.values() for i in a.lost_ids()) == gone
        assert all(again.run("get", [(i,)])[0][:2] == (p.LOST, placed[i]) for i in gone)


def test_with_one_copy_every_order_of_two_losses_leaves_the_dead_ids_lost():
    """A node drops the records it is sent of ids it holds (``init`` puts some ids on their
    slot's backup home); when it becomes a slot's directory node, the new other directory node
    learns those ids from it, so losing it next still makes them ``DataLost`` (and ids ``set``
    on their home too)."""
    for first in NODES4:
        for second in NODES4:
            if second == first:
                continue
            actors = make_actors(NODES4, replicas=1)
            router = make_router(actors)
            placed = dict(router.place([f"q{i}" for i in range(120)], {n: 1.0 for n in NODES4}))
            router.run("set", [(f"s{i}", *encode(b"v")) for i in range(40)])
            placed.update((f"s{i}", router.home(f"s{i}")) for i in range(40))
            survivors, after = lose(actors, router, first, 1)
            rest, again = lose(survivors, after, second, 1)
            for cache_id, node in placed.items():
                status, value, _node = again.run("get", [(cache_id,)])[0]
                if node in (first, second):
                    assert (status, value) == (p.LOST, node), (first, second, cache_id)
                else:
                    assert status == p.OK, (first, second, cache_id)


def test_with_one_copy_ids_written_on_their_home_are_lost_not_missing_when_it_dies():
    """``set`` / ``append`` that create an id on its home record it at the backup home too, so
    the home's death makes them ``DataLost``, not a silent miss; ids elsewhere stay intact."""
    actors = make_actors(NODES4, replicas=1)
    router = make_router(actors)
    ids = [f"h{i}" for i in range(200)]
    router.run("set", [(i, *encode(b"v")) for i in ids[:100]])
    router.run("append", [(i, encode_append(b"a")) for i in ids[100:]])
    router.run("set", [(i, *encode(b"w")) for i in ids[:10]])  # overwrites: no new record
    dead = "node-b"
    homed = [i for i in ids if router.home(i) == dead]
    assert homed
    survivors, after = lose(actors, router, dead, 1)
    answers = after.run("get", [(i,) for i in ids])
    for cache_id, (status, value, _node) in zip(ids, answers):
        if cache_id in homed:
            assert (status, value) == (p.LOST, dead), cache_id
        else:
            assert status == p.OK and decode(*value) in (b"v", b"w", b"a"), cache_id
    assert sorted(i for a in survivors.values() for i in a.lost_ids()) == sorted(homed)
    set_(after, homed[0], b"again")  # set clears the loss
    assert get(after, homed[0]) == b"again"
    kept = next(i for i in ids if i not in homed)
    assert any(kept in a.directory.records for a in survivors.values())
    assert after.delete(kept)  # deleting drops its records at the home and the backup home
    assert not any(kept in a.directory.records for a in survivors.values())


def test_joining_nodes_fill_copies_when_there_were_fewer_nodes_than_replicas():
    actors = make_actors(["node-a", "node-b"], replicas=3)
    router = make_router(actors, replicas=3)
    router.run("set", [(f"j{i}", *encode(b"j")) for i in range(30)])
    assert sum(a.stats()["under_replicated"] for a in actors.values()) == 30
    grown = {**actors, **make_actors(["node-c"], replicas=3)}
    chains = reassign_chains(router.chains, grown, 3)
    for actor in grown.values():
        actor.rebuild(router.chains, chains, [], grown, 3)
    repair_all(grown)
    assert all(len(values_on(grown, f"j{i}")) == 3 for i in range(30))
    assert sum(a.stats()["under_replicated"] for a in grown.values()) == 0


def test_a_read_that_meets_an_unavailable_holder_is_served_by_another_copy():
    actors = make_actors(replicas=2)
    writer = make_router(actors, replicas=2)
    writer.run("set", [(f"f{i}", *encode(b"%d" % i)) for i in range(40)])
    down = "node-a"

    def handle_for(node, ids):
        if node == down:  # e.g. its Consul check is critical, before Ray reports the death
            raise NodeUnavailable(node, ids, "its Consul health check is critical")
        return Serial(actors[node])

    reader = make_router(actors, handle_for, replicas=2)
    results = reader.run("get", [(f"f{i}",) for i in range(40)])
    assert [decode(*r[1]) for r in results] == [b"%d" % i for i in range(40)]
    assert any(writer.home(f"f{i}") == down for i in range(40))
    assert not any(n == down for n in reader.placements.values())
    single = make_actors()
    make_router(single).run("set", [(f"f{i}", *encode(b"x")) for i in range(40)])
    with pytest.raises(NodeUnavailable):  # one copy: the error stands
        make_router(single, lambda node, ids: handle_for(node, ids) and Serial(single[node])).run(
            "get", [(f"f{i}",) for i in range(40)])


def test_a_replaced_actor_is_a_fresh_node_its_records_and_copies_come_back():
    """The actor of a live node died and a fresh one took its place (same node id, same chains)."""
    for replicas in (1, 2):
        actors = make_actors(NODES4, replicas=replicas)
        router = make_router(actors, replicas=replicas)
        victim = "node-b"  # given half a share: some ids homed there are placed elsewhere
        placed = router.place([f"r{i}" for i in range(120)], {n: 0.5 if n == victim else 1.0 for n in NODES4})
        for cache_id in placed:
            append(router, cache_id, cache_id.encode())
        fresh = make_actors([victim], replicas=replicas)[victim]
        actors = {**actors, victim: fresh}
        for actor in actors.values():
            actor.rebuild(router.chains, router.chains, [victim], actors, replicas)
        after = make_router(actors, replicas=replicas)
        homed_there = [i for i, n in placed.items() if n != victim and after.home(i) == victim]
        assert homed_there and all(get(after, i) == i.encode() for i in homed_there)  # the fresh home learnt them
        on_victim = sorted(i for i, n in placed.items() if n == victim)
        if replicas == 1:
            assert sorted(i for a in actors.values() for i in a.lost_ids()) == on_victim
            assert all(after.run("get", [(i,)])[0][:2] == (p.LOST, victim) for i in on_victim)
        else:
            assert all(get(after, i) == i.encode() for i in placed)
            repair_all(actors)
            assert all(len(values_on(actors, i)) == 2 for i in placed)
            assert any(victim in values_on(actors, i) for i in placed)  # the fresh actor got copies back


def test_without_a_local_copy_reads_go_to_the_nearest_holder():
    actors = make_actors(NODES4, replicas=2)
    writer = make_router(actors, replicas=2)
    ids = [f"n{i}" for i in range(80)]
    writer.run("set", [(i, *encode(i.encode())) for i in ids])
    local, near = "node-a", "node-d"  # distances as Consul's coordinates would give them
    distance = {"node-a": 0.0, "node-b": 0.9, "node-c": 0.8, "node-d": 0.1}
    calls = Counter()
    reader = Router("unit", writer.view, lambda node, ids: Counting(actors[node], calls, node), local=local,
                    nearest=lambda nodes: min(nodes, key=distance.get))
    remote = [i for i in ids if local not in holders(writer.home(i), writer.chains[slot_of(i)], 2)]
    results = reader.run("get", [(i,) for i in remote])
    assert [decode(*r[1]) for r in results] == [i.encode() for i in remote]
    for i, (_status, _value, node) in zip(remote, results):
        holding = holders(writer.home(i), writer.chains[slot_of(i)], 2)
        assert node == min(holding, key=distance.get)
    assert any(r[2] == near for r in results) and not reader.placements



def test_with_lru_an_id_evicted_by_any_holder_leaves_every_holder():
    """``eviction="lru"`` evicts on each node by its own memory. An id evicted at its primary
    leaves its copies; an id evicted at a copy leaves its primary (and so every holder): no id
    stays with fewer copies than it should, unseen, and no copy is rebuilt from the appends
    that follow (it would hold the tail of the value only)."""
    actors = make_actors(NODES, replicas=2)
    writer = make_router(actors, replicas=2)
    ids = [f"e{i}" for i in range(60)]
    for cache_id in ids:
        set_(writer, cache_id, b"base")
    for node in ("node-a", "node-b"):  # evict everything there: primaries and copies
        actors[node].configure(1, "lru", None)
        actors[node].configure(None, "lru", None)
    assert all(not actors[n].store._entries for n in ("node-a", "node-b"))
    untouched = ids[:20]
    for cache_id in ids[20:]:
        append(writer, cache_id, b"+t")
    for _ in range(2):  # every node serves a batch: it tells what it evicted, then what that made it drop
        writer.run("get", [(i,) for i in ids])
    repair_all(actors)
    for cache_id in ids:
        held = values_on(actors, cache_id)
        if cache_id in untouched:  # every id has a holder on node-a or node-b
            assert held == {}, (cache_id, held)
            continue
        assert held == {} or (len(held) == 2 and len(set(held.values())) == 1), (cache_id, held)
        assert set(held.values()) <= {b"+t", b"base+t"}, (cache_id, held)
        for node in NODES:
            assert get(make_router(actors, replicas=2, local=node), cache_id) in (None, *held.values()), (cache_id, node)
    assert all(a.stats()["under_replicated"] == 0 for a in actors.values())


def test_with_lru_a_node_that_serves_no_client_batch_still_tells_the_other_holders():
    # Its background repairer tells them (it runs in turn with client batches); the unit
    # test calls repair as that loop does.
    actors = make_actors(NODES, replicas=2)
    writer = make_router(actors, replicas=2)
    ids = [f"q{i}" for i in range(30)]
    writer.run("set", [(i, *encode(b"v")) for i in ids])
    on_a = {i for i in ids if "node-a" in values_on(actors, i)}
    actors["node-a"].configure(1, "lru", None)  # node-a evicts everything, then serves nothing
    actors["node-a"].configure(None, "lru", None)
    for _ in range(2):  # node-a tells, then the primaries it told tell their copies
        repair_all(actors)
    assert 0 < len(on_a) < len(ids)
    for cache_id in ids:
        held = values_on(actors, cache_id)
        if cache_id in on_a:
            assert held == {}, (cache_id, held)  # evicted at node-a: gone from its other holder too
        else:
            assert list(held.values()) == [b"v", b"v"], (cache_id, held)


def test_zones_learned_later_move_copies_to_the_nodes_they_name():
    """A member's zone known only at a later view (its Consul agent answered late) changes
    which nodes hold the copies of ids that ``init`` put off their slot chain: the new holders
    get copies, the old ones drop theirs, and nothing is under-replicated afterwards."""
    actors = make_actors(NODES4, replicas=2)
    router = make_router(actors, replicas=2)
    # node-a takes half of them: ids homed elsewhere go there, some off their slot chain
    placed = router.place([f"z{i}" for i in range(80)], {n: 3.0 if n == "node-a" else 1.0 for n in NODES4})
    for cache_id in placed:
        set_(router, cache_id, cache_id.encode())
    zones = {"node-a": "east", "node-b": "east", "node-c": "west", "node-d": "west"}
    chains = router.chains

    def holders_of(cache_id: str, with_zones: dict) -> set:
        return set(holders(placed[cache_id], chains[slot_of(cache_id)], 2, with_zones))

    moved = [i for i in placed if holders_of(i, zones) != holders_of(i, {})]
    assert moved  # the zones change where some copies belong
    for actor in actors.values():
        actor.rebuild(chains, chains, [], actors, 2, False, zones)
    repair_all(actors)
    for cache_id in placed:
        assert set(values_on(actors, cache_id)) == holders_of(cache_id, zones), cache_id
        assert get(router, cache_id) == cache_id.encode()
    assert sum(a.stats()["under_replicated"] for a in actors.values()) == 0
