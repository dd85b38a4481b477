"""Edges the exactly-once issue found by reading the node actor, each against plain node-actor
objects (no Ray cluster): what a user was promised, and what today's code did instead."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from shoveling_ray import CacheFull, NodeUnavailable, ShovelingError
from shoveling_ray.actors import disk as disk_module
from shoveling_ray import protocol as p
from shoveling_ray.actors.disk import SpillFiles
from shoveling_ray.actors.storage import Store
from shoveling_ray.codec import decode, encode, encode_append
from shoveling_ray.placement import holders, reassign_chains, slot_of

from .test_replicas import NODES4, lose, repair_all, values_on
from shoveling_ray.actors.node import _NodeActor

from .test_router import NODES, SPILL_DIR, get, make_actors, make_router, set_, view_of


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


# -- the disk tier ----------------------------------------------------------------------------

MiB = 1 << 20


def spilling_store(tmp_path, max_memory, max_disk=None):
    return Store("node1", max_memory, "spill", SpillFiles(str(tmp_path / "spill"), max_disk))


def test_max_disk_is_a_limit_for_spilling_writes_and_for_a_lower_max_memory(tmp_path):
    # A spill wrote down to 90% of max_memory without asking the disk tier's room, and a
    # lower max_memory spilled everything past it (12 MiB on disk with max_disk = 1 MiB).
    store = spilling_store(tmp_path, 16 * MiB, max_disk=1 * MiB)
    for i in range(12):
        store.set(f"v{i}", *encode(os.urandom(MiB - 4096), compression=None))
    store.configure(512 << 10, "spill", 1 * MiB)
    assert 0 < store.disk.used <= 1 * MiB
    store = spilling_store(tmp_path / "b", 4 * MiB, max_disk=1 * MiB)
    written = 0
    for i in range(12):
        try:
            store.set(f"w{i}", *encode(os.urandom(600 << 10), compression=None))
            written += 1
        except CacheFull:
            pass
        assert store.disk.used <= 1 * MiB
    assert written >= 6 and all(decode(*store.get(f"w{i}")) for i in range(written))


class FullDisk:
    """A file whose second write fails as a full disk does."""

    def __init__(self, path, mode):
        self.file = open(path, mode)  # noqa: SIM115 - closed by __exit__
        self.writes = 0

    def write(self, data):
        self.writes += 1
        if self.writes > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.file.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_a_disk_that_fills_mid_spill_leaves_no_partial_file_and_the_writer_gets_cache_full(tmp_path, monkeypatch):
    store = spilling_store(tmp_path, 1 * MiB)
    kept = {f"k{i}": os.urandom(200 << 10) for i in range(4)}
    for cache_id, value in kept.items():
        store.set(cache_id, *encode(value, compression=None))
    monkeypatch.setattr(disk_module, "open", FullDisk, raising=False)
    with pytest.raises(CacheFull, match="could not be written"):
        store.set("big", *encode(os.urandom(600 << 10), compression=None))
    assert os.listdir(tmp_path / "spill") == []  # the partial segment is gone
    assert "big" not in store and all(decode(*store.get(i)) == v for i, v in kept.items())
    store.configure(256 << 10, "spill", None)  # a lower limit that cannot spill: no error
    assert all(decode(*store.get(i)) == v for i, v in kept.items())


# -- slow copies and drains -------------------------------------------------------------------


class Stalled:
    """A live member's actor that does not answer in time (a long spill, a stalled process)."""

    def __init__(self, actor, methods=("replicate", "take_copies")):
        self.actor, self.methods = actor, methods

    def __getattr__(self, name):
        if name in self.methods:
            def late(*args):
                raise NodeUnavailable(self.actor.node_id, [], "did not answer in time")
            return late
        return getattr(self.actor, name)


def test_a_copy_that_does_not_answer_in_time_is_under_replicated_and_repaired_not_dropped():
    # The write was acknowledged without the slow copy, under_replicated stayed 0, and repair
    # counted the timeout as done: the copy kept an old value for good.
    actors = make_actors(NODES4, replicas=2)
    router = make_router(actors, replicas=2)
    set_(router, "s", b"old")
    primary, copy = holders(router.home("s"), router.chains[slot_of("s")], 2)
    actors[primary].layout.peers = {**actors[primary].layout.peers, copy: Stalled(actors[copy])}
    set_(router, "s", b"new")
    assert actors[primary].stats()["under_replicated"] == 1
    actors[primary].repair()  # still stalled: still owed
    assert actors[primary].stats()["under_replicated"] == 1
    actors[primary].layout.peers = {**actors[primary].layout.peers, copy: actors[copy]}
    repair_all(actors)
    assert actors[primary].stats()["under_replicated"] == 0
    assert values_on(actors, "s") == {primary: b"new", copy: b"new"}


def test_a_drain_whose_copies_are_refused_gives_up_and_the_node_keeps_serving():
    # hand_over looped on repair() for as long as a target refused its copies.
    actors = make_actors(NODES4, replicas=2)
    router = make_router(actors, replicas=2)
    drained = "node-d"
    ids = [f"d{i}" for i in range(40)]
    router.run("set", [(i, *encode(b"v")) for i in ids])
    chains = reassign_chains(router.chains, [n for n in NODES4 if n != drained], 2)
    peers = {n: Stalled(a, ("take_copies",)) for n, a in actors.items() if n != drained}
    actors[drained].replication.repairs = {i: {"node-a"} for i in ids if i in actors[drained].store and i not in actors[drained].replication.copies}
    assert actors[drained].replication.repairs
    actors[drained].layout.peers = {**peers, drained: actors[drained]}
    outcome = []

    def drain():
        try:
            outcome.append(actors[drained].hand_over(router.chains, chains, peers))
        except ShovelingError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the drain hangs"
    assert isinstance(outcome[0], ShovelingError) and "keeps its data" in str(outcome[0])
    assert not actors[drained].drain.retired
    actors[drained].layout.peers = actors
    assert all(get(router, i) == b"v" for i in ids)


def test_init_respects_max_memory():
    # create_empty ignored max_memory: init could fill a node past its limit with entries.
    actors = {n: _NodeActor("unit", n, 4000, "reject", spill_dir=SPILL_DIR.name) for n in NODES}
    view = view_of(actors)
    for actor in actors.values():
        actor.rebuild(None, view.chains, [], actors, 1)
    router = make_router(actors)
    with pytest.raises(CacheFull):
        router.place([f"i{i}" for i in range(1000)], {n: 1.0 for n in NODES})
    for actor in actors.values():  # some fit (a few dozen bytes each), not the third of 1000 each is given
        assert 0 < len(actor.store) < 300
    assert all(get(router, i) == b"" for i, n in router.placements.items())  # what was placed exists

