"""Memory tiers on a two-node Ray cluster: values past ``max_memory`` spill to disk on their
node and come back, writers are slowed instead of failed, and ``stats()`` counts the memory a
node actor really holds."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import ray
from ray._private.internal_api import get_memory_info_reply, get_state_from_address

import shoveling_ray as sr
from tests.conftest import MB, module_cluster, wait_for, wait_until_dead

pytestmark = pytest.mark.cluster

cluster = module_cluster([{"num_cpus": 2, "object_store_memory": 150 * MB}, {"num_cpus": 2, "object_store_memory": 150 * MB}])


def segments(spill_dir, cache: str, node: str) -> list[str]:
    path = os.path.join(spill_dir, cache, node)
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def ids_on(cache: sr.Cache, node: str, prefix: str, n: int) -> list[str]:
    """The first ``n`` ids ``prefix<k>`` homed on ``node``."""
    return list(itertools.islice((i for i in map(f"{prefix}{{}}".format, itertools.count()) if cache.node_id(i) == node), n))


def test_values_past_max_memory_spill_and_read_back(cluster, tmp_path):
    cache = sr.Cache("tiers", max_memory=8 * MB, spill_dir=tmp_path)  # eviction="spill" by default
    rng = np.random.default_rng(5)
    values = {
        "small": os.urandom(20_000),
        "large-bytes": os.urandom(4 * MB),  # kept in Ray's object store until spilled
        "numpy": rng.random((700, 1000)),  # 5.6 MB of float64
        "msgpack": {"rows": [[i, f"r{i}"] for i in range(20_000)]},
        "appended": b"",
    }
    try:
        node = cache.nodes()[0]
        named = dict(zip(values, ids_on(cache, node, "t/", len(values))))
        for key, value in values.items():
            if key != "appended":
                cache.set(named[key], value)
        pieces = [os.urandom(50_000) for _ in range(100)]  # 5 MB of appends, spilled part by part
        for piece in pieces:
            cache.append(named["appended"], piece)
        values["appended"] = b"".join(pieces)
        # Writes return once counted; the node spills in the background, back under its limit.
        stats = wait_for(lambda: (st := cache.stats()[node])["used"] <= 8 * MB and st, what="the background spill")
        assert stats["policy"] == "spill" and stats["spills"] > 0 and stats["spilled_ids"] > 0
        assert stats["used"] <= 8 * MB and stats["disk_used"] > 0 and segments(tmp_path, "tiers", node)
        got = cache.get_many([named[k] for k in values])
        for key, value in values.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(got[named[key]], value)
            else:
                assert got[named[key]] == value, key
        assert cache.size(named["appended"]) == len(values["appended"])
        assert cache.stats()[node]["restores"] > 0
        for key in values:
            assert cache.delete(named[key])
        assert cache.stats()[node]["disk_used"] == 0 and segments(tmp_path, "tiers", node) == []
        cache.set(named["large-bytes"], os.urandom(20 * MB))  # larger than memory: straight to disk
        assert cache.stats()[node]["disk_used"] >= 20 * MB
    finally:
        cache.close()
    assert not os.path.exists(os.path.join(tmp_path, "tiers"))  # close() removes the files


def test_spill_dir_is_taken_when_the_cache_starts(cluster, tmp_path):
    cache = sr.Cache("tiers-dir", spill_dir=tmp_path / "a")
    try:
        assert sr.Cache("tiers-dir", spill_dir=tmp_path / "a").nodes() == cache.nodes()  # the same: fine
        with pytest.raises(ValueError, match="close it to change spill_dir"):
            sr.Cache("tiers-dir", spill_dir=tmp_path / "b")
        with pytest.raises(TypeError, match="max_disk"):
            sr.Cache("tiers-dir", max_disk="10GB")
        assert sorted(os.listdir(tmp_path / "a" / "tiers-dir")) == cache.nodes()
    finally:
        cache.close()


def test_disk_full_raises_cache_full_and_keeps_what_is_stored(cluster, tmp_path):
    cache = sr.Cache("tiers-full", max_memory=2 * MB, max_disk=3 * MB, spill_dir=tmp_path, compression=None)
    try:
        node = cache.nodes()[0]
        ids = ids_on(cache, node, "f/", 6)
        kept = {}
        with pytest.raises(sr.CacheFull, match="max_disk") as err:
            for cache_id in ids:
                value = os.urandom(MB)
                cache.set(cache_id, value)
                kept[cache_id] = value
        assert err.value.node_id == node and len(kept) >= 4
        assert cache.get_many(list(kept)) == kept
    finally:
        cache.close()


def test_a_new_actor_removes_what_a_dead_one_left(cluster, tmp_path):
    cache = sr.Cache("tiers-dead", max_memory=1 * MB, spill_dir=tmp_path)
    try:
        node = cache.nodes()[1]
        for cache_id in ids_on(cache, node, "d/", 4):
            cache.set(cache_id, os.urandom(MB))
        assert segments(tmp_path, "tiers-dead", node)
        actor = cache._router.members[node]
        ray.kill(actor)
        wait_until_dead(actor)
        again = sr.Cache("tiers-dead")  # joining starts a new actor on the node
        assert again._router.members[node] != actor
        assert segments(tmp_path, "tiers-dead", node) == []
    finally:
        cache.close()


@ray.remote(num_cpus=1)
def append_records(cache: sr.Cache, ids: list[str], writer: int, n: int) -> int:
    for seq in range(n):
        record = f"{writer}:{seq};".encode() + os.urandom(2000)
        cache.append(ids[seq % len(ids)], record)
    return n


def test_writers_past_max_memory_are_not_failed_and_the_node_spills_back_under_it(cluster, tmp_path):
    cache = sr.Cache("tiers-writers", max_memory=4 * MB, spill_dir=tmp_path, compression=None)
    try:
        ids = [f"w/{i}" for i in range(8)]
        cache.init(ids)
        done = ray.get([append_records.remote(cache, ids, w, 3000) for w in range(4)])  # 24 MB into 8 MB
        assert done == [3000] * 4

        def under_the_limit():
            stats = cache.stats()
            return all(s["used"] <= 4 * MB for s in stats.values()) and stats

        stats = wait_for(under_the_limit, what="the background spill")
        assert sum(s["spills"] for s in stats.values()) > 0
        seen: dict[int, list[int]] = {w: [] for w in range(4)}
        for data in cache.get_many(ids).values():  # records are "writer:seq;" and 2000 bytes
            position = 0
            while position < len(data):
                end = data.index(b";", position)
                writer, seq = data[position:end].split(b":")
                seen[int(writer)].append(int(seq))
                position = end + 1 + 2000
        for seqs in seen.values():  # every record once, each writer's in its order on an id
            assert sorted(seqs) == list(range(3000))
            assert all(seqs[i] < seqs[i + 1] for i in range(len(seqs) - 1) if seqs[i] % 8 == seqs[i + 1] % 8)
    finally:
        cache.close()


def rss_anon(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("RssAnon:"))
    return int(line.split()[1]) * 1024


def plasma_bytes() -> int:
    """Bytes in the cluster's object stores, as the stores count them: objects a process still
    maps count until it lets go (Ray's ``object_store_memory`` resource frees them earlier)."""
    return get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address)).store_stats.object_store_bytes_used


def test_stats_count_the_memory_the_actor_really_holds(cluster):
    """The actor's private memory (RSS without shared pages) plus its object-store bytes
    grow by what ``stats()["used"]`` says, within 10%."""
    cache = sr.Cache("tiers-rss", compression=None)
    try:
        node = cache.nodes()[0]
        pid = ray.get(cache._router.members[node].__ray_call__.remote(lambda actor: os.getpid()))
        small = ids_on(cache, node, "s/", 40_000)
        for start in range(0, 2000, 500):  # warm up: the first calls' one-off allocations
            cache.set_many({i: os.urandom(2000) for i in small[start:start + 500]})
        for _ in range(80):  # and the buffers Ray's calls leave to the allocator (a batch travels
            cache.set_many({i: os.urandom(2000) for i in small[:500]})  # inline): overwrites
        before = (rss_anon(pid), plasma_bytes(), cache.stats()[node]["used"])
        for start in range(2000, len(small), 500):  # 38,000 more ids of 2 KB in the heap, 1 MB a batch
            cache.set_many({i: os.urandom(2000) for i in small[start:start + 500]})
        for cache_id in ids_on(cache, node, "l/", 8):  # 8 x 4 MB in the object store
            cache.set(cache_id, os.urandom(4 * MB))
        used = cache.stats()[node]["used"] - before[2]
        assert used > 100 * MB

        def matches():
            real = rss_anon(pid) - before[0] + plasma_bytes() - before[1]
            print(f"real {real}, stats {used}")
            return abs(real - used) <= 0.10 * used

        wait_for(matches, timeout=30, interval=0.5, what="the actor's memory to match stats() within 10%")
    finally:
        cache.close()
