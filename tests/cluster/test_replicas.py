"""Replicas on a real multi-node cluster: writers keep appending while nodes leave and join.

One cluster for the module: a head node and three workers; tests that remove a worker add
one back first. The writers run pinned to the head node, which never leaves.
"""

from __future__ import annotations

import os
import time

import pytest
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import shoveling_ray as sr
from tests.conftest import module_cluster, wait_for

pytestmark = pytest.mark.cluster

cluster = module_cluster([{"num_cpus": 1}, {"num_cpus": 1}, {"num_cpus": 1}, {"num_cpus": 1}])

WRITERS = 4
RECORDS = 3000
IDS = [f"w{i}" for i in range(50)]


@ray.remote(num_cpus=0)
def write_numbered(cache: sr.Cache, writer: int, ids: list[str], count: int) -> dict:
    """Append ``writer:seq;`` records round-robin over ``ids``, each retried with its own token
    until acknowledged, and stop writing an id once it raises ``DataLost``. Returns what was
    acknowledged and which ids were found lost."""
    acked: list[int] = []
    lost: set[str] = set()
    for seq in range(count):
        cache_id = ids[seq % len(ids)]
        if cache_id in lost:
            continue
        deadline = time.monotonic() + 120
        while True:
            try:
                cache.append_many({cache_id: f"{writer}:{seq};".encode()}, token=f"{writer}:{seq}")
                acked.append(seq)
                break
            except sr.DataLost:
                lost.add(cache_id)
                break
            except sr.NodeUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    return {"acked": acked, "lost": sorted(lost), "finished": time.time()}


@ray.remote(num_cpus=0)
def read_here(cache: sr.Cache, ids: list[str]) -> dict:
    """The values as a task on this node reads them (a copy here is read here)."""
    return cache.get_many(ids)


def head_node() -> str:
    return next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"])


def start_writers(cache: sr.Cache) -> list:
    on_head = NodeAffinitySchedulingStrategy(head_node(), soft=False)
    return [write_numbered.options(scheduling_strategy=on_head).remote(cache, w, IDS, RECORDS) for w in range(WRITERS)]


def records_of(value: bytes) -> list[tuple[int, int]]:
    return [tuple(map(int, r.split(b":"))) for r in value.split(b";") if r]


def assert_each_acked_record_once_in_order(values: dict[str, bytes], results: list[dict]) -> None:
    for writer, result in enumerate(results):
        seen = {}
        for cache_id, value in values.items():
            mine = [seq for w, seq in records_of(value) if w == writer]
            assert mine == sorted(mine), f"writer {writer}'s records out of order in {cache_id}"
            for seq in mine:
                assert seq not in seen, f"record {writer}:{seq} twice ({seen[seq]}, {cache_id})"
                seen[seq] = cache_id
        assert sorted(seen) == result["acked"], f"writer {writer}: acknowledged records missing"
        assert all(seen[seq] == IDS[seq % len(IDS)] for seq in seen)


def swap_a_worker(cluster, cache: sr.Cache, victim_holds: list[str]) -> str:
    """Remove the worker node holding the most primary copies of ``victim_holds`` and add a
    new one; returns the removed node's id."""
    placed = {i: cache.node_id(i) for i in victim_holds}
    workers = list(cluster.worker_nodes)
    victim = max(workers, key=lambda n: sum(1 for node in placed.values() if node == n.node_id))
    cluster.remove_node(victim)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    return victim.node_id


def swap_while_writing(cluster, cache: sr.Cache) -> tuple[str, list[dict]]:
    """Start the writers, swap a worker while they write, return the removed node and what
    the writers acknowledged."""
    writers = start_writers(cache)
    time.sleep(1)  # the writers are under way
    removed_at = time.time()
    victim = swap_a_worker(cluster, cache, IDS)
    results = ray.get(writers, timeout=300)
    assert all(r["finished"] > removed_at for r in results), "the writers finished before the node left"
    return victim, results


def test_two_copies_lose_no_acknowledged_append_when_a_node_leaves_and_another_joins(cluster):
    cache = sr.Cache("rep2", replicas=2)
    placed = cache.init(IDS)
    assert all(len(cache.node_ids(i)) == 2 and cache.node_ids(i)[0] == placed[i] for i in IDS)
    holder = cache.node_ids(IDS[0])
    assert [cache._node_cache_score(n, IDS[0]) for n in holder] == [0.0, 0.0]
    victim, results = swap_while_writing(cluster, cache)
    assert all(r["lost"] == [] for r in results)  # with two copies nothing is lost
    assert all(len(r["acked"]) == RECORDS for r in results)
    values = cache.get_many(IDS)
    assert_each_acked_record_once_in_order(values, results)
    # the missing copies are rebuilt in the background, on live nodes only
    wait_for(lambda: sum(s["under_replicated"] for s in cache.stats().values()) == 0, 120, what="re-replication")
    for cache_id in IDS:
        holders = cache.node_ids(cache_id)
        assert len(holders) == 2 and victim not in holders
    # every copy holds the same bytes: read each id by a task on each of its holders
    by_node: dict[str, list[str]] = {}
    for cache_id in IDS:
        for node in cache.node_ids(cache_id):
            by_node.setdefault(node, []).append(cache_id)
    for node, ids in by_node.items():
        here = NodeAffinitySchedulingStrategy(node, soft=False)
        assert ray.get(read_here.options(scheduling_strategy=here).remote(cache, ids)) == {i: values[i] for i in ids}
    assert sum(s["copies"] for s in cache.stats().values()) == len(IDS)
    assert cache.lost_ids() == []
    cache.close()


def test_one_copy_ids_are_intact_or_data_lost_never_wrong(cluster):
    cache = sr.Cache("rep1", replicas=1)
    cache.init(IDS)
    _victim, results = swap_while_writing(cluster, cache)
    lost = set(cache.lost_ids())
    assert lost  # the removed node held some ids
    assert set().union(*(r["lost"] for r in results)) <= lost
    intact = [i for i in IDS if i not in lost]
    for cache_id in lost:
        with pytest.raises(sr.DataLost):
            cache.get(cache_id)
        with pytest.raises(sr.DataLost):
            cache.exists(cache_id)
    with pytest.raises(sr.DataLost) as info:
        cache.get_many(IDS, None)  # a default does not hide a loss; every lost id is named
    assert sorted(info.value.ids) == sorted(lost)
    values = cache.get_many(intact)
    # for intact ids, every acknowledged record exactly once, in order
    trimmed = [{"acked": [s for s in r["acked"] if IDS[s % len(IDS)] in values]} for r in results]
    assert_each_acked_record_once_in_order(values, trimmed)
    cache.close()


@ray.remote(num_cpus=0)
def read_here_or_none(cache: sr.Cache, ids: list[str]) -> dict:
    """:func:`read_here`, ``None`` for an id not found."""
    return cache.get_many(ids, None)


def test_with_lru_every_node_reads_an_ids_one_value_or_none(cluster):
    """Each node evicts by its own memory: no node may keep serving a value its primary no
    longer has, nor a copy that missed part of the appends."""
    cache = sr.Cache("lru-copies", replicas=2, eviction="lru", max_memory=120_000, compression=None)
    ids = [f"e{i}" for i in range(200)]
    cache.set_many({i: b"b" * 1000 for i in ids})
    for round_ in range(3):
        cache.append_many({i: f"+{round_}".encode() for i in ids})
    assert sum(s["evictions"] for s in cache.stats().values()) > 0
    reads = {}
    for node in cache.nodes():
        here = NodeAffinitySchedulingStrategy(node, soft=False)
        reads[node] = ray.get(read_here_or_none.options(scheduling_strategy=here).remote(cache, ids))
    full = b"b" * 1000 + b"+0+1+2"
    for cache_id in ids:
        seen = {r[cache_id] for r in reads.values()} - {None}
        assert len(seen) <= 1, (cache_id, seen)  # one value, whichever node reads it
        assert seen <= {full, b"+1+2", b"+2", b"+0+1+2"}, (cache_id, seen)  # a whole suffix of the appends
    cache.close()


@ray.remote(num_cpus=0)
def append_halves(cache: sr.Cache, pieces: dict) -> int:
    """Append each id's piece in two batches; returns this worker's process id."""
    cache.append_many({i: piece[: len(piece) // 2] for i, piece in pieces.items()})
    cache.append_many({i: piece[len(piece) // 2 :] for i, piece in pieces.items()})
    return os.getpid()


def test_mid_sized_pieces_reach_every_copy_whole_after_their_writer_is_killed(cluster):
    """Pieces of 64 KiB - 1 MiB, a megabyte and more of them per node, travel as one object of
    the writer's that the primary hands on to the copies: each holder keeps its own bytes, so
    every node reads every id whole, from its own copy where it has one, once the writer's
    process is gone."""
    cache = sr.Cache("mid-copies", replicas=2, compression=None)
    pieces = {f"m{i}": os.urandom(400 << 10) for i in range(24)}
    writer = next(n for n in cache.nodes() if n != head_node())
    on_writer = NodeAffinitySchedulingStrategy(writer, soft=False)
    os.kill(ray.get(append_halves.options(scheduling_strategy=on_writer).remote(cache, pieces)), 9)
    assert all(len(cache.node_ids(i)) == 2 for i in pieces)
    for node in cache.nodes():
        here = NodeAffinitySchedulingStrategy(node, soft=False)
        assert ray.get(read_here.options(scheduling_strategy=here).remote(cache, list(pieces))) == pieces, node
    cache.close()


def test_raising_replicas_on_a_running_cache_adds_copies_and_a_drain_keeps_them(cluster):
    cache = sr.Cache("rep-up")
    cache.set_many({f"u{i}": f"v{i}".encode() for i in range(200)})
    assert all(len(cache.node_ids(f"u{i}")) == 1 for i in range(0, 200, 20))
    cache.configure(replicas=3)
    wait_for(lambda: sum(s["under_replicated"] for s in cache.stats().values()) == 0, 120, what="new copies")
    assert all(len(cache.node_ids(f"u{i}")) == 3 for i in range(200))
    big = os.urandom(4 << 20)  # in the object store: copies fetch the primary's object and own theirs
    cache.set("big", big)
    cache.append("big", big[:1000])
    for node in cache.node_ids("big"):
        here = NodeAffinitySchedulingStrategy(node, soft=False)
        assert ray.get(read_here.options(scheduling_strategy=here).remote(cache, ["big"])) == {"big": big + big[:1000]}
    worker = next(iter(cluster.worker_nodes))
    assert cache.drain(worker.node_id) > 0
    assert cache.get_many([f"u{i}" for i in range(200)]) == {f"u{i}": f"v{i}".encode() for i in range(200)}
    wait_for(lambda: sum(s["under_replicated"] for s in cache.stats().values()) == 0, 120, what="copies after drain")
    assert all(worker.node_id not in cache.node_ids(f"u{i}") and len(cache.node_ids(f"u{i}")) == 3 for i in range(200))
    cluster.remove_node(worker)
    assert cache.get_many([f"u{i}" for i in range(200)]) == {f"u{i}": f"v{i}".encode() for i in range(200)}
    # a copy's object is its own: removing the primary's node (not drained) loses nothing
    workers = {n.node_id: n for n in cluster.worker_nodes}
    primary = cache.node_id("big")
    cluster.remove_node(workers.get(primary) or next(iter(workers.values())))
    assert cache.get("big") == big + big[:1000]
    with pytest.raises(ValueError, match="replicas"):
        cache.configure(replicas=0)
    cache.close()
