"""The shuffle helper and the distributed sort example on three Ray nodes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import ray

import shoveling_ray as sr
from shoveling_ray.actors.idtable import IdTable
from shoveling_ray.shuffle import Shuffle
from tests.conftest import MB, module_cluster, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import distributed_sort as ds  # noqa: E402

# Ray workers cannot import the example by name: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(ds)

pytestmark = pytest.mark.cluster


cluster = module_cluster([{"num_cpus": 1, "object_store_memory": 300 * MB} for _ in range(3)])


@pytest.fixture(scope="module")
def cache(cluster):
    c = sr.Cache("shuffle-tests")
    yield c
    c.close()


def _object_store_bytes() -> int:
    """Bytes in use in the cluster's object stores (Ray's public resource view)."""
    total = ray.cluster_resources().get("object_store_memory")
    free = ray.available_resources().get("object_store_memory")
    if total is None or free is None:
        pytest.fail("Ray reports no object_store_memory resource: cannot measure the object store")
    return int(total - free)


def test_sort_is_validated_and_reducers_run_where_their_partition_is(cache):
    before = _object_store_bytes()
    summary = ds.distributed_sort(cache, 300_000, seed=7, partitions=9, block_records=40_000, progress=lambda m: None)
    assert summary["ok"] and summary["checksum_matches"]
    assert summary["records"] == 300_000
    assert summary["reducers_on_their_node"] == 9
    assert set(summary["per_node"].values()) == {3}
    assert cache.ids("shuffle-") == []  # partitions cleaned up
    # the 30 MB sorted and stored back are freed with them (frees are asynchronous)
    wait_for(lambda: _object_store_bytes() <= before + 4 * MB, what="the object store to be freed")


def _counting_map(item):
    return {p: bytes([item]) * 1000 for p in range(3)}, item * 10


def test_map_results_come_back_in_input_order_with_task_stats(cache):
    with Shuffle(cache, 3, prefix="counting") as sh:
        results = sh.run(range(7), _counting_map, lambda i, d: len(d), max_in_flight=2)
        assert results == [7000, 7000, 7000]
        assert sh.map_results == [i * 10 for i in range(7)]
        assert sh.task_stats["bytes"] == 7 * 3 * 1000
        # three partitions on three nodes: a mapper sends two of its three pieces elsewhere
        assert sh.task_stats["remote_bytes"] == 7 * 2 * 1000
        assert all(sh.task_stats[k] > 0 for k in ("map_seconds", "push_seconds", "read_seconds", "reduce_seconds"))
    assert cache.ids("counting/") == []


def test_progress_bars_by_default_and_none_when_turned_off(cache, capfd):
    with Shuffle(cache, 3, prefix="bars") as sh:
        sh.run(range(4), _counting_map, lambda i, d: len(d))
    err = capfd.readouterr().err
    assert "bars map: 100%" in err and "4/4" in err
    assert "bars reduce: 100%" in err and "3/3" in err
    with Shuffle(cache, 3, prefix="quiet") as sh:
        sh.run(range(4), _counting_map, lambda i, d: len(d), progress=False)
    assert "quiet" not in capfd.readouterr().err


def test_bad_max_in_flight_is_refused_before_any_task(cache):
    with Shuffle(cache, 2, prefix="inflight") as sh:
        with pytest.raises(ValueError, match="max_in_flight"):
            sh.run(range(2), _counting_map, lambda i, d: None, max_in_flight=0)
        assert sh.map_results == [] and cache.get_many(sh.partitions) == {pid: b"" for pid in sh.partitions}


def _failing_map(item):
    raise ValueError(f"bad input {item}")


def test_a_failed_task_still_cleans_up(cache):
    with pytest.raises(sr.ShovelingError, match="bad input"):
        with Shuffle(cache, 4, prefix="failing") as sh:
            sh.run([1, 2], _failing_map, lambda i, d: None)
    assert cache.ids("failing/") == []


def _crashing_map(item):
    if item == 1:
        os._exit(1)  # the worker process dies, as under an out-of-memory kill
    return {0: b"x" * 1000}


def test_a_crashed_worker_is_a_shoveling_error_and_still_cleans_up(cache):
    with pytest.raises(sr.ShovelingError, match="a task failed") as err:
        with Shuffle(cache, 3, prefix="crashing") as sh:
            sh.run(range(4), _crashing_map, lambda i, d: None, map_options={"max_retries": 0})
    assert isinstance(err.value.__cause__, ray.exceptions.WorkerCrashedError)
    assert cache.ids("crashing/") == []


def _big_map(item):
    return {0: bytes(2 * MB), 1: bytes(2 * MB)}


def test_a_shuffle_larger_than_memory_spills_and_completes(cluster):
    small = sr.Cache("shuffle-spill", max_memory=3 * MB, compression=None)  # eviction="spill"
    try:
        with Shuffle(small, 2, prefix="big") as sh:
            assert sh.run(range(4), _big_map, lambda i, d: d == bytes(8 * MB)) == [True, True]
            assert sum(s["spills"] for s in small.stats().values()) > 0
        assert all(s["disk_used"] == 0 and s["ids"] == 0 for s in small.stats().values())
    finally:
        small.close()


def test_a_shuffle_larger_than_the_limits_fails_early_with_cache_full(cluster):
    small = sr.Cache("shuffle-small", max_memory=3 * MB, eviction="reject", compression=None)
    try:
        with pytest.raises(sr.CacheFull) as err:
            with Shuffle(small, 2, prefix="big") as sh:
                sh.run(range(4), _big_map, lambda i, d: len(d))
        assert err.value.limit == 3 * MB and err.value.node_id in small.nodes()
        assert small.ids("big/") == []
        # nothing left behind: no id, no bytes but the writes the nodes remember (for 300 s)
        # and an empty id table's index
        empty = IdTable(["empty"]).nbytes
        assert all(s["ids"] == 0 and s["used"] == s["bookkeeping"] + empty for s in small.stats().values())
    finally:
        small.close()


def _numbers_map(block):
    import numpy as np

    numbers = np.arange(block * 1000, (block + 1) * 1000, dtype=np.int64)
    return {p: numbers[numbers % 6 == p].tobytes() for p in range(6)}


def _sum_reduce(partition, data):
    import numpy as np

    return int(np.frombuffer(data, dtype=np.int64).sum())


def test_a_node_lost_during_the_map_phase_is_rebuilt_and_nothing_lands_twice(cluster, cache, monkeypatch):
    import numpy as np

    # init answers its read-only mapping, as for a shuffle of over 100,000 partitions
    monkeypatch.setattr("shoveling_ray.router.DICT_IDS", 1)
    extra = cluster.add_node(num_cpus=1, object_store_memory=300 * MB)
    cluster.wait_for_nodes()
    removed = []

    def progress(phase, done, total):
        if phase == "map" and done >= 2 and not removed:  # some mappers done, others running
            cluster.remove_node(extra)
            removed.append(extra.node_id)

    with Shuffle(cache, 6, prefix="map-rebuilt") as sh:
        on_extra = sorted(i for i, pid in enumerate(sh.partitions) if sh.placement[pid] == extra.node_id)
        assert on_extra, "the shuffle must have partitions on the node that dies"
        results = sh.run(range(12), _numbers_map, _sum_reduce, progress=progress, max_in_flight=2)
        numbers = np.arange(12000)
        assert results == [int(numbers[numbers % 6 == p].sum()) for p in range(6)]  # every record once
        assert removed and sh.recoveries and sh.recoveries[0]["phase"] == "map"
        assert sorted(sh.recoveries[0]["partitions"]) == on_extra
        assert extra.node_id not in sh.placement.values() and extra.node_id not in sh.reducer_nodes
        print(f"map-phase rebuild of {on_extra}, mappers rerun whole {sh.recoveries[0]['mappers']}: "
              f"{sum(r['seconds'] for r in sh.recoveries):.1f}s (map {sh.times['map']:.1f}s, reduce {sh.times['reduce']:.1f}s)")
    assert cache.ids("map-rebuilt/") == []


def _two_nodes_lost_one_in_each_phase(cluster, cache) -> tuple[list, list, object]:
    """Two nodes added (with the cache's actors) and a ``progress`` callback that removes one
    once some mappers are done and the other once reducing starts; ``removed`` names the phases."""
    doomed = [cluster.add_node(num_cpus=1, object_store_memory=300 * MB) for _ in range(2)]
    cluster.wait_for_nodes()
    cache.init(["wake"])  # the new nodes get their actors
    removed = []

    def progress(phase, done, total):
        if phase == "map" and done >= 3 and not removed:
            cluster.remove_node(doomed[0])
            removed.append(phase)
        elif phase == "reduce" and len(removed) == 1:
            cluster.remove_node(doomed[1])
            removed.append(phase)

    return doomed, removed, progress


def test_the_validated_sort_survives_a_node_lost_in_each_phase(cluster, cache):
    import time

    _doomed, removed, progress = _two_nodes_lost_one_in_each_phase(cluster, cache)

    started = time.perf_counter()
    summary = ds.distributed_sort(cache, 300_000, seed=7, partitions=10, block_records=20_000,
                                  progress=lambda m: None, progress_bar=progress)
    disturbed = time.perf_counter() - started
    assert removed == ["map", "reduce"]
    assert summary["ok"] and summary["checksum_matches"] and summary["records"] == 300_000
    started = time.perf_counter()
    undisturbed = ds.distributed_sort(cache, 300_000, seed=7, partitions=10, block_records=20_000,
                                      progress=lambda m: None)
    assert undisturbed["ok"]
    print(f"sort with a node lost in each phase: {disturbed:.1f}s, undisturbed: {time.perf_counter() - started:.1f}s")
    cache.delete("wake")


def test_a_retried_append_many_with_a_token_appends_once(cache):
    ids = [f"tok/{i}" for i in range(6)]
    cache.init(ids)
    cache.append_many({i: b"a" for i in ids[:3]}, token="writer-1")
    cache.append_many({i: b"a" for i in ids}, token="writer-1")  # run again: only the new ids take it
    cache.append_many({i: b"b" for i in ids}, token="writer-2")
    assert cache.get_many(ids) == {i: b"ab" for i in ids}
    cache.set(ids[0], b"")  # a new value forgets its tokens
    cache.append_many({ids[0]: b"a"}, token="writer-1")
    assert cache.get(ids[0]) == b"a"
    with pytest.raises(TypeError, match="token"):
        cache.append_many({ids[0]: b"x"}, token=7)
    for i in ids:
        cache.delete(i)


def test_a_node_lost_during_the_reduce_phase_is_rebuilt_from_the_mappers(cluster, cache):
    import numpy as np

    extra = cluster.add_node(num_cpus=1, object_store_memory=300 * MB)
    cluster.wait_for_nodes()
    removed = []

    def progress(phase, done, total):
        if phase == "reduce" and not removed:  # every mapper has finished: kill a node now
            cluster.remove_node(extra)
            removed.append(extra.node_id)

    with Shuffle(cache, 6, prefix="rebuilt") as sh:
        on_extra = sorted(i for i, pid in enumerate(sh.partitions) if sh.placement[pid] == extra.node_id)
        assert on_extra, "the shuffle must have partitions on the node that dies"
        results = sh.run(range(8), _numbers_map, _sum_reduce, progress=progress)
        numbers = np.arange(8000)
        assert results == [int(numbers[numbers % 6 == p].sum()) for p in range(6)]  # as undisturbed
        assert removed and [p for r in sh.recoveries for p in r["partitions"]] == on_extra
        assert extra.node_id not in sh.reducer_nodes
        print(f"rebuilt {on_extra} in {sum(r['seconds'] for r in sh.recoveries):.1f}s "
              f"(map {sh.times['map']:.1f}s, reduce {sh.times['reduce']:.1f}s)")
    assert cache.ids("rebuilt/") == []


def test_on_a_cache_of_two_copies_partitions_are_scratch_and_outputs_keep_two(cluster):
    """A ``replicas=2`` cache: the partitions have one copy (a lost one is rebuilt from the
    mappers), what reducers store has two; a node lost in each phase changes no result."""
    import numpy as np

    cache = sr.Cache("shuffle-two-copies", replicas=2)
    doomed, removed, progress = _two_nodes_lost_one_in_each_phase(cluster, cache)

    def store_sorted(partition, data):
        numbers = np.sort(np.frombuffer(data, dtype=np.int64))
        cache.set(f"two-out/{partition}", numbers)
        return int(numbers.sum())

    with Shuffle(cache, 6, prefix="two-copies") as sh:
        assert {len(cache.node_ids(pid)) for pid in sh.partitions} == {1}
        assert sum(s["under_replicated"] for s in cache.stats().values()) == 0  # one copy is their due
        assert {sh.placement[pid] for pid in sh.partitions} & {n.node_id for n in doomed}
        results = sh.run(range(12), _numbers_map, store_sorted, progress=progress, max_in_flight=2)
    numbers = np.arange(12000)
    assert removed == ["map", "reduce"]
    assert results == [int(numbers[numbers % 6 == p].sum()) for p in range(6)]  # as undisturbed
    for p in range(6):
        assert len(cache.node_ids(f"two-out/{p}")) == 2
        assert np.array_equal(cache.get(f"two-out/{p}"), numbers[numbers % 6 == p])
    assert cache.ids("two-copies/") == []
    cache.close()


@ray.remote(num_cpus=0)
class _Writer:
    def append(self, cache: sr.Cache, ids: list[str], size: int) -> bytes:
        piece = os.urandom(size)
        cache.append_many({i: piece for i in ids})
        return piece


def test_a_scratch_ids_large_pieces_leave_with_their_writer(cache):
    """Scratch ids (a Shuffle's partitions) keep their large pieces as the writer's objects:
    readable while the writer lives, ``DataLost`` once it died; other ids keep theirs."""
    from tests.conftest import wait_until_dead

    cache.init(["scratch/a"], scratch=True)
    cache.init(["kept/a"])
    with pytest.raises(ValueError, match="one copy"):
        cache.init(["scratch/b"], replicas=2, scratch=True)
    writer = _Writer.remote()
    piece = ray.get(writer.append.remote(cache, ["scratch/a", "kept/a"], 2 * MB))
    assert cache.get("scratch/a") == piece and cache.get("kept/a") == piece
    ray.kill(writer)
    wait_until_dead(writer)
    with pytest.raises(sr.DataLost):
        wait_for(lambda: cache.get("scratch/a") != piece, what="the scratch piece to leave with its writer")
    assert cache.get("kept/a") == piece
    cache.delete_many(["scratch/a", "kept/a"])


def test_a_drain_leaves_behind_only_the_scratch_ids_whose_writer_died(cluster):
    from tests.conftest import wait_until_dead

    cache = sr.Cache("scratch-drain")
    node = cache.init(["sd/gone"], scratch=True)["sd/gone"]
    cache.init(["sd/live"], scratch=True, strategy="uniform_nodes")
    kept = [i for i, n in cache.init([f"sd/k{i}" for i in range(9)]).items() if n == node]
    assert kept
    dead, alive = _Writer.remote(), _Writer.remote()
    gone = ray.get(dead.append.remote(cache, ["sd/gone"], 2 * MB))
    live = ray.get(alive.append.remote(cache, ["sd/live", *kept], 2 * MB))
    assert cache.get("sd/gone") == gone
    ray.kill(dead)
    wait_until_dead(dead)
    with pytest.raises(sr.DataLost):
        wait_for(lambda: cache.get("sd/gone") != gone, what="the scratch piece to leave with its writer")
    assert cache.drain(node) >= len(kept)  # the dead writer's piece does not stop it
    assert cache.get_many([*kept, "sd/live"]) == dict.fromkeys([*kept, "sd/live"], live)
    with pytest.raises((sr.DataLost, sr.CacheMiss)):
        cache.get("sd/gone")
    cache.close()
