"""The whole public API on a four-node Ray cluster (one cluster for the module)."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
import ray
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import shoveling_ray as sr
from shoveling_ray.placement import DEFAULT_REMOTE_SCORE
from tests.conftest import MB, module_cluster, node_of_actor, wait_for, wait_until_dead

pytestmark = pytest.mark.cluster

# Different CPUs and object store sizes so that uniform_cpu and uniform_memory differ.
NODES = [
    {"num_cpus": 1, "object_store_memory": 300 * MB},
    {"num_cpus": 1, "object_store_memory": 200 * MB},
    {"num_cpus": 2, "object_store_memory": 100 * MB},
    {"num_cpus": 4, "object_store_memory": 100 * MB},
]


cluster = module_cluster(NODES)


@pytest.fixture(scope="module")
def cache(cluster):
    cache = sr.Cache("main")
    yield cache
    cache.close()


def alive_nodes():
    return sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])


@ray.remote(num_cpus=0)
def on_node(fn, *args):
    return ray.get_runtime_context().get_node_id(), fn(*args)


def run_on(node_id, fn, *args):
    strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
    return ray.get(on_node.options(scheduling_strategy=strategy).remote(fn, *args))


# -- 1. actors -------------------------------------------------------------------------------


def test_one_actor_pinned_to_each_node_without_cpu(cache):
    assert cache.nodes() == alive_nodes()
    for node_id in cache.nodes():
        assert node_of_actor(cache, node_id) == node_id
    assert ray.available_resources().get("CPU") == ray.cluster_resources()["CPU"]


def _arenas(actor) -> str | None:
    return os.environ.get("MALLOC_ARENA_MAX")


def test_node_actors_run_with_one_allocator_arena_so_an_idle_one_can_give_memory_back(cache):
    handles = cache._router.members.values()
    assert ray.get([h.__ray_call__.remote(_arenas) for h in handles]) == ["1"] * len(handles)


def test_opening_again_attaches_to_the_same_actors(cache):
    again = sr.Cache("main")
    assert again._router.members == cache._router.members
    cache.set("attach", b"1")
    assert again.get("attach") == b"1"


def test_caches_with_different_names_are_isolated(cache):
    other = sr.Cache("other")
    try:
        cache.set("shared-id", b"main")
        other.set("shared-id", b"other")
        assert cache.get("shared-id") == b"main"
        assert other.get("shared-id") == b"other"
        other.init(["only-other"])
        assert not cache.exists("only-other")
        assert "only-other" not in cache.ids()
        assert set(other._router.members.values()).isdisjoint(cache._router.members.values())
    finally:
        other.close()
    assert cache.get("shared-id") == b"main"


# -- 2. values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [b"", b"bytes", bytearray(b"ba" * 100), memoryview(b"mv" * 1000), os.urandom(200_000), b"z" * 3_000_000],
    ids=["empty", "small", "bytearray", "memoryview", "random", "compressible"],
)
def test_bytes_like_round_trip_as_bytes(cache, value):
    cache.set("v", value)
    out = cache.get("v")
    assert type(out) is bytes and out == bytes(value)


@pytest.mark.parametrize(
    "arr",
    [np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.array(2.5), np.random.default_rng(0).random((500, 300))],
    ids=["int16-3d", "scalar", "float-large"],
)
def test_numpy_round_trip(cache, arr):
    cache.set("arr", arr)
    out = cache.get("arr")
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("value", [None, 7, 1.25, "text", [1, "two", [3.0]], {"nested": {"k": [b"v"]}}])
def test_msgpack_values_round_trip(cache, value):
    cache.set("obj", value)
    assert cache.get("obj") == value


@pytest.mark.parametrize("value", [{(1, 2): 3}, [{"k": {(1,): 0}}]])
def test_a_value_that_would_not_read_back_is_refused_and_the_old_one_kept(cache, value):
    cache.set("unreadable", b"old")
    with pytest.raises(TypeError, match="would not read it back"):
        cache.set("unreadable", value)
    assert cache.get("unreadable") == b"old"


def test_append_concatenates_in_order_and_creates(cache):
    cache.delete("log")
    for part in (b"a", bytearray(b"bc"), memoryview(b"def")):
        cache.append("log", part)
    assert cache.get("log") == b"abcdef"
    assert cache.size("log") == 6


def test_many_small_appends_through_a_writer_read_back_whole_and_in_order(cache):
    pieces = [bytes([i % 251]) * 40_000 for i in range(300)]
    cache.delete("pieces")
    with cache.writer(max_bytes=100_000) as w:
        for piece in pieces:
            w.append("pieces", piece)
    assert cache.get("pieces") == b"".join(pieces)
    assert cache.size("pieces") == 300 * 40_000
    cache.append("pieces", b"tail")
    assert cache.get("pieces")[-40_004:] == pieces[-1] + b"tail"
    cache.delete("pieces")


def test_numpy_slices_and_other_buffers_are_written_as_their_bytes(cache):
    import array

    import numpy as np

    rows = np.arange(600_000, dtype=np.int64).reshape(-1, 4)  # 4.8 MB: the object store path
    pieces = {"buf/a": rows[:1000], "buf/b": rows[1000:], "buf/c": rows[5]}
    cache.append_many(pieces)
    cache.append("buf/a", rows[1000:1002])
    assert cache.get("buf/a") == rows[:1002].tobytes()
    assert cache.get_many(["buf/b", "buf/c"]) == {"buf/b": rows[1000:].tobytes(), "buf/c": rows[5].tobytes()}
    cache.set("buf/d", array.array("i", [1, 2, 3]))
    assert cache.get("buf/d") == array.array("i", [1, 2, 3]).tobytes()
    with pytest.raises(ValueError, match="not C-contiguous"):
        cache.append_many({"buf/e": b"ok", "buf/f": rows[:, 1]})  # a column: strided
    with pytest.raises(ValueError, match="not C-contiguous"):
        cache.set("buf/e", memoryview(rows)[::2])
    assert not cache.exists("buf/e")  # refused before anything was sent
    assert cache.delete_many([*pieces, "buf/d"]) == 4


def test_init_replicas_is_checked_before_anything_is_sent(cache):
    with pytest.raises(ValueError, match="at least 1"):
        cache.init(["rep/x"], replicas=0)
    with pytest.raises(ValueError, match="above cache 'main'"):
        cache.init(["rep/x"], replicas=2)  # the cache keeps one copy
    assert not cache.exists("rep/x")
    assert cache.init(["rep/x"], replicas=1)["rep/x"] == cache.node_ids("rep/x")[0]
    cache.delete("rep/x")


def test_append_to_non_bytes_is_type_error_and_keeps_value(cache):
    cache.set("dict", {"a": 1})
    with pytest.raises(TypeError, match="not bytes"):
        cache.append("dict", b"x")
    assert cache.get("dict") == {"a": 1}


def test_missing_get_raises_cache_miss_or_returns_default(cache):
    with pytest.raises(sr.CacheMiss) as err:
        cache.get("never-set")
    assert isinstance(err.value, KeyError) and "never-set" in str(err.value)
    assert cache.get("never-set", None) is None
    assert cache.get("never-set", b"d") == b"d"


def test_delete_exists_size_ids(cache):
    cache.set_many({f"pre/{i}": b"x" * i for i in range(5)})
    assert cache.exists("pre/3") and cache.size("pre/3") == 3
    assert [i for i in cache.ids("pre/")] == [f"pre/{i}" for i in range(5)]
    assert cache.delete("pre/3") is True
    assert cache.delete("pre/3") is False
    assert not cache.exists("pre/3")
    with pytest.raises(sr.CacheMiss):
        cache.size("pre/3")
    assert "pre/3" not in cache.ids("pre/")


def test_batched_calls(cache):
    data = {f"batch/{i}": os.urandom(i % 50) for i in range(2000)}
    cache.set_many(data)
    assert cache.get_many(list(data)) == data
    cache.append_many({k: b"+" for k in data})
    got = cache.get_many(data)
    assert all(got[k] == v + b"+" for k, v in data.items())
    with pytest.raises(sr.CacheMiss, match="batch/missing"):
        cache.get_many(["batch/0", "batch/missing"])
    assert cache.get_many(["batch/missing"], default=None) == {"batch/missing": None}
    placed = cache.init([f"batch/placed/{i}" for i in range(30)])  # records at their homes too
    gone = [*list(data)[:1000], *placed, "batch/missing", "batch/0"]  # a repeated id counts once
    assert cache.delete_many(gone) == 1000 + 30
    assert cache.get_many(gone, default=None) == dict.fromkeys(gone)
    assert cache.ids("batch/placed/") == []
    assert len(cache.ids("batch/")) == 1000
    assert cache.delete_many([]) == 0
    with pytest.raises(TypeError):
        cache.delete_many("batch/1")  # a str is not a list of ids


def test_scan_ids_streams_every_id_once_sorted_from_every_node(cache):
    placed = cache.init([f"scan/i{i:03}" for i in range(150)])
    cache.set_many({f"scan/s{i:03}": b"v" for i in range(150)})
    assert len(set(placed.values())) == len(cache.nodes())  # ids on every node
    listed = cache.ids("scan/")
    assert len(listed) == 300
    for batch in (1, 7, 300, 10_000):
        assert list(cache.scan_ids("scan/", batch=batch)) == listed
    assert list(cache.scan_ids("scan/s", batch=13)) == listed[150:]
    assert list(cache.scan_ids("scan/none")) == []
    # An id set during the scan: listed at most once; every id there throughout exactly once.
    scan = cache.scan_ids("scan/", batch=5)
    first = [next(scan) for _ in range(10)]
    cache.set("scan/i0005x", b"new")
    cache.delete("scan/s149")
    rest = list(scan)
    seen = Counter(first + rest)
    assert max(seen.values()) == 1 and first + rest == sorted(seen)
    assert set(listed) - {"scan/s149"} <= set(seen)
    stopped = cache.scan_ids("scan/", batch=3)  # stopped early: the nodes forget it
    assert next(stopped) == "scan/i000"
    stopped.close()
    with pytest.raises(TypeError):
        cache.scan_ids(b"scan/")
    with pytest.raises(ValueError):
        cache.scan_ids("scan/", batch=0)
    cache.delete_many(cache.ids("scan/"))


# -- 3. init ---------------------------------------------------------------------------------


def test_init_uniform_nodes(cache):
    ids = [f"un/{i}" for i in range(1001)]
    placed = cache.init(ids)
    assert list(placed) == ids
    counts = Counter(placed.values())
    assert set(counts) == set(cache.nodes())
    assert max(counts.values()) - min(counts.values()) <= 1
    assert all(cache.get(i) == b"" for i in ids[:50])
    assert cache.get_many(ids) == {i: b"" for i in ids}
    for i in ids[:20]:
        assert cache.node_ids(i) == [placed[i]]


def test_init_uniform_cpu_is_proportional_to_cpus(cache):
    placed = cache.init([f"cpu/{i}" for i in range(800)], strategy="uniform_cpu")
    cpus = {n["NodeID"]: n["Resources"]["CPU"] for n in ray.nodes() if n["Alive"]}
    counts = Counter(placed.values())
    for node, c in cpus.items():
        assert abs(counts[node] - 800 * c / 8) < 1


def test_init_uniform_memory_is_proportional_to_free_memory(cache):
    stats = cache.stats()
    free = {n: s["limit"] - s["used"] for n, s in stats.items()}
    placed = cache.init([f"mem/{i}" for i in range(700)], strategy="uniform_memory")
    counts = Counter(placed.values())
    total = sum(free.values())
    for node, f in free.items():
        assert abs(counts[node] - 700 * f / total) < 1
    assert counts.most_common(1)[0][1] > 2.5 * min(counts.values())  # 300 MB vs 100 MB nodes


def test_init_unknown_strategy_and_bad_ids(cache):
    with pytest.raises(ValueError, match="uniform_nodes, uniform_cpu, uniform_memory"):
        cache.init(["x"], strategy="random")
    with pytest.raises(TypeError):
        cache.init("abc")
    with pytest.raises(TypeError):
        cache.init(["ok", 3])
    assert not cache.exists("ok")


def test_init_keeps_existing_ids_where_they_are(cache):
    cache.set("keep/set", b"data")
    first = cache.init(["keep/a", "keep/b"])
    cache.append("keep/a", b"appended")
    again = cache.init(["keep/a", "keep/b", "keep/set", "keep/new"])
    assert again["keep/a"] == first["keep/a"] and again["keep/b"] == first["keep/b"]
    assert again["keep/set"] == cache.node_ids("keep/set")[0]
    assert cache.get("keep/a") == b"appended"
    assert cache.get("keep/set") == b"data"


@ray.remote(num_cpus=0)
def init_from_task(cache, ids, strategy):
    return cache.init(ids, strategy=strategy)


@ray.remote(num_cpus=0)
def delete_and_set_from_task(cache, ids, rounds):
    for r in range(rounds):
        for cache_id in ids:
            cache.delete(cache_id)
        cache.set_many({i: f"set{r}".encode() for i in ids[::2]})


def assert_listed_once_where_placed(cache, placed):
    listed = cache.ids("race/")
    assert len(listed) == len(set(listed))
    assert sorted(placed) == [i for i in listed if i in placed]
    assert all(cache.node_ids(i) == [node] for i, node in placed.items())


def test_init_racing_init_from_every_node_places_each_id_once(cache):
    ids = [f"race/a{i}" for i in range(300)]
    strategies = ["uniform_nodes", "uniform_cpu", "uniform_memory", "uniform_nodes"]
    tasks = [
        init_from_task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
            cache, ids[::-1] if k % 2 else ids, strategy)
        for k, (node, strategy) in enumerate(zip(cache.nodes(), strategies))
    ]
    results = ray.get(tasks)
    assert all(r == results[0] for r in results)  # every client sees the same placement
    assert cache.get_many(ids) == {i: b"" for i in ids}
    assert_listed_once_where_placed(cache, results[0])
    for cache_id in ids:
        cache.delete(cache_id)


def test_init_racing_delete_and_set_leaves_no_id_twice_or_without_its_record(cache):
    ids = [f"race/b{i}" for i in range(100)]
    racers = [init_from_task.remote(cache, ids, "uniform_nodes") for _ in range(3)]
    racers.append(delete_and_set_from_task.remote(cache, ids, 3))
    ray.get(racers)
    listed = cache.ids("race/b")
    assert len(listed) == len(set(listed))
    placed = cache.init(ids)  # after the race: everything exists, exactly where init says
    assert_listed_once_where_placed(cache, placed)
    values = cache.get_many(ids)
    assert set(values.values()) <= {b"", b"set2"}
    for cache_id in ids:
        cache.delete(cache_id)


def test_init_100k_ids(cache):
    ids = [f"big/{i}" for i in range(100_000)]
    placed = cache.init(ids)
    counts = Counter(placed.values())
    assert sum(counts.values()) == 100_000
    assert max(counts.values()) - min(counts.values()) <= 1
    assert len(cache.ids("big/")) == 100_000
    sample = ids[::997]
    assert cache.get_many(sample) == {i: b"" for i in sample}


# -- 4. the same placement everywhere --------------------------------------------------------


def _open_and_read(ids):
    cache = sr.Cache("main")
    return {i: (cache.node_ids(i), cache.get(i)) for i in ids}


def test_other_process_on_other_node_sees_ids_nodes_and_data(cache):
    ids = [f"shared/{i}" for i in range(12)]
    placed = cache.init(ids)
    for i in ids:
        cache.append(i, i.encode())
    far = next(n for n in cache.nodes() if n != ray.get_runtime_context().get_node_id())
    node, seen = run_on(far, _open_and_read, ids)
    assert node == far
    assert seen == {i: ([placed[i]], i.encode()) for i in ids}


@ray.remote(num_cpus=0)
class Initialiser:
    def run(self, ids):
        return sr.Cache("main").init(ids)


def test_placement_survives_the_process_that_called_init(cache):
    ids = [f"survive/{i}" for i in range(30)]
    actor = Initialiser.remote()
    placed = ray.get(actor.run.remote(ids))
    ray.kill(actor)
    fresh = sr.Cache("main")
    assert {i: fresh.node_ids(i)[0] for i in ids} == placed


def _home_of(cache_id):
    cache = sr.Cache("main")
    cache.set(cache_id, b"from a task")
    return cache.node_ids(cache_id)


def test_set_placement_is_deterministic_across_processes(cache):
    expected = cache.node_id("det/new")  # where it will be created
    node, holders = run_on(cache.nodes()[-1], _home_of, "det/new")
    assert holders == [expected]
    assert cache.get("det/new") == b"from a task"


def test_pickled_handle_works_in_tasks_and_actors(cache):
    cache.init(["pickled"])

    @ray.remote(num_cpus=0)
    def use(c):
        c.append("pickled", b"!")
        return c.get("pickled")

    assert ray.get(use.remote(cache)) == b"!"


# -- 5. node hints ---------------------------------------------------------------------------


@ray.remote(num_cpus=0)
def where_am_i():
    return ray.get_runtime_context().get_node_id()


def test_node_hints_and_scheduling(cache):
    placed = cache.init([f"hint/{i}" for i in range(8)])
    for cache_id, node in placed.items():
        assert cache.node_ids(cache_id) == [node]
        assert cache.node_id(cache_id) == node
        strategy = cache.scheduling_strategy(cache_id)
        assert isinstance(strategy, NodeAffinitySchedulingStrategy) and strategy.soft
        assert ray.get(where_am_i.options(scheduling_strategy=strategy).remote()) == node
        assert cache._node_cache_score(node, cache_id) == 0.0
        for other in cache.nodes():
            if other != node:
                assert cache._node_cache_score(other, cache_id) == DEFAULT_REMOTE_SCORE > 0.0
    assert cache.node_ids("hint/none") == []
    with pytest.raises(ValueError, match="default"):
        cache.node_id("hint/0", strategy="nearest-moon")


# -- 6. compression --------------------------------------------------------------------------


def test_compression_modes_and_stats(cluster):
    sizes = {}
    for mode in ("auto", "lz4", None):
        c = sr.Cache(f"comp-{mode}", compression=mode)
        c.set("text", b"abcdefgh" * 100_000)
        c.set("noise", os.urandom(800_000))
        assert c.get("text") == b"abcdefgh" * 100_000
        s = c.stats()
        sizes[mode] = (sum(v["used"] - v["bookkeeping"] for v in s.values()), sum(v["raw"] for v in s.values()))
        c.close()
    raw = 1_600_000
    assert sizes[None][1] == raw and raw < sizes[None][0] < raw + 3000  # and two ids with their records
    assert sizes["auto"][1] == raw and sizes["auto"][0] < 800_000 + 20_000
    assert sizes["lz4"][0] > sizes["auto"][0]  # lz4 also "compresses" the noise, a bit larger
    with pytest.raises(ValueError, match="compression"):
        sr.Cache("comp-bad", compression="gzip")


# -- 7. memory limits ------------------------------------------------------------------------


def test_reject_policy(cluster):
    c = sr.Cache("limit-reject", max_memory=10_000, eviction="reject", compression=None)
    try:
        c.set("a", b"a" * 6000)
        with pytest.raises(sr.CacheFull) as err:
            c.set("a", b"b" * 10_001)
        assert err.value.limit == 10_000 and err.value.node_id == c.node_ids("a")[0]
        assert c.get("a") == b"a" * 6000
        node = c.node_ids("a")[0]
        same_node = next(f"r{i}" for i in range(10_000) if c.node_id(f"r{i}") == node)
        with pytest.raises(sr.CacheFull):
            c.append(same_node, b"x" * 5000)
        assert not c.exists(same_node)
        stats = c.stats()[node]
        assert 6000 < stats["used"] - stats["bookkeeping"] < 6800 and stats["limit"] == 10_000  # and the id table (its record)
        assert stats["bookkeeping"] > 0 and stats["evictions"] == 0  # its record, the writes remembered
    finally:
        c.close()


def test_lru_policy(cluster):
    c = sr.Cache("limit-lru", max_memory=11_000, eviction="lru", compression=None)  # 3 values and their overhead
    try:
        node = c.node_id("k0")
        keys = [k for k in (f"k{i}" for i in range(5000)) if c.node_id(k) == node][:4]
        for k in keys[:3]:
            c.set(k, b"v" * 3000)
        c.get(keys[0])
        c.set(keys[3], b"w" * 3000)  # evicts keys[1], the least recently used
        assert not c.exists(keys[1])
        assert c.get(keys[0]) == b"v" * 3000 and c.get(keys[3]) == b"w" * 3000
        assert c.stats()[node]["evictions"] == 1
        with pytest.raises(sr.CacheFull):
            c.set(keys[0], b"x" * 11_001)  # larger than the whole limit
        assert c.get(keys[0]) == b"v" * 3000
    finally:
        c.close()


def test_configure_applies_settings_to_every_node_and_opening_never_does(cluster):
    c = sr.Cache("limit-change", max_memory=1000, eviction="reject", compression=None)
    try:
        with pytest.raises(sr.CacheFull):
            c.set("a", b"x" * 2000)
        with pytest.raises(ValueError, match="configure"):
            sr.Cache("limit-change", max_memory=5000)
        assert all(s["limit"] == 1000 for s in c.stats().values())
        sr.Cache.attach("limit-change").configure(max_memory=5000)
        c.set("a", b"x" * 2000)
        assert all(s["limit"] == 5000 for s in c.stats().values())
    finally:
        c.close()


# -- 8. errors -------------------------------------------------------------------------------


hashable_bad_ids = st.one_of(st.just(""), st.none(), st.integers(), st.binary(min_size=1), st.floats(allow_nan=False))
bad_ids = st.one_of(hashable_bad_ids, st.lists(st.text(min_size=1), max_size=2))
bad_values = st.one_of(st.sets(st.integers(), min_size=1), st.complex_numbers(), st.builds(object))
calls = st.one_of(
    st.tuples(st.just("set"), bad_ids, st.just(b"v")),
    st.tuples(st.just("set"), st.just("fuzz/ok"), bad_values),
    st.tuples(st.just("append"), bad_ids, st.just(b"v")),
    st.tuples(st.just("append"), st.just("fuzz/ok"), st.one_of(st.text(), st.integers(), st.none())),
    st.tuples(st.just("get"), bad_ids),
    st.tuples(st.just("delete"), bad_ids),
    st.tuples(st.just("exists"), bad_ids),
    st.tuples(st.just("size"), bad_ids),
    st.tuples(st.just("node_id"), bad_ids),
    st.tuples(st.just("init"), st.one_of(st.text(), st.integers(), st.lists(bad_ids, min_size=1))),
    st.tuples(st.just("init"), st.just(["fuzz/ok"]), st.text().filter(lambda s: s not in sr.STRATEGIES)),
    st.tuples(st.just("set_many"), st.one_of(st.lists(st.text()), st.dictionaries(hashable_bad_ids, st.just(b"v"), min_size=1))),
    st.tuples(st.just("get_many"), st.one_of(st.text(), st.integers(), st.lists(bad_ids, min_size=1))),
)


def test_malformed_calls_are_refused_before_sending_and_harm_nothing(cache):
    cache.set("fuzz/ok", b"precious")
    cache.init(["fuzz/partition"])
    cache.append("fuzz/partition", b"rows")
    def unchanged(stats):  # disk_limit follows the disk's free space
        return {node: {k: v for k, v in figures.items() if k != "disk_limit"} for node, figures in stats.items()}

    before = unchanged(cache.stats())
    count = 0

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(calls)
    def one_call(call):
        nonlocal count
        name, *args = call
        with pytest.raises((TypeError, ValueError)):
            getattr(cache, name)(*args)
        count += 1

    one_call()
    assert count >= 300
    assert cache.get("fuzz/ok") == b"precious"
    assert cache.get("fuzz/partition") == b"rows"
    assert unchanged(cache.stats()) == before
    cache.set("fuzz/after", b"still serving")
    assert cache.get("fuzz/after") == b"still serving"


def test_bad_constructor_arguments():
    for kwargs, exc in [
        ({"name": ""}, ValueError),
        ({"name": "has space"}, ValueError),
        ({"name": "ok", "max_memory": "1GB"}, TypeError),
        ({"name": "ok", "eviction": "fifo"}, ValueError),
    ]:
        with pytest.raises(exc):
            sr.Cache(**kwargs)


# -- 9. concurrent appends -------------------------------------------------------------------


@ray.remote(num_cpus=0)
def append_records(cache, writer, ids, n):
    for seq in range(n):
        cache.append(ids[seq % len(ids)], f"{writer}:{seq};".encode())
    return ray.get_runtime_context().get_node_id()


def test_concurrent_appends_from_four_nodes_lose_nothing(cache):
    ids = [f"conc/{i}" for i in range(20)]
    cache.init(ids)
    nodes = cache.nodes()
    assert len(nodes) == 4
    refs = [
        append_records.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(
            cache, w, ids, 2000
        )
        for w, n in enumerate(nodes)
    ]
    assert sorted(ray.get(refs)) == sorted(nodes)
    seen = Counter()
    for cache_id, data in cache.get_many(ids).items():
        last = {}
        for record in data.decode().rstrip(";").split(";"):
            writer, seq = map(int, record.split(":"))
            assert ids[seq % 20] == cache_id
            assert seq > last.get(writer, -1), "a writer's records are out of order"
            last[writer] = seq
            seen[(writer, seq)] += 1
    assert len(seen) == 4 * 2000 and set(seen.values()) == {1}


# -- large values through the object store; the buffered writer -------------------------------


@ray.remote(num_cpus=0)
class Writer:
    def write(self, cache, cache_id, arr):
        cache.set(cache_id, arr)
        return ray.get_runtime_context().get_node_id()


def test_large_values_live_on_the_holder_and_survive_the_writer(cache):
    arr = np.random.default_rng(3).random(600_000)  # 4.8 MB, incompressible
    blob = os.urandom(3 << 20)
    for node in cache.nodes():
        cache_id = next(i for i in (f"large/{node[:6]}/{k}" for k in range(10_000)) if cache.node_id(i) == node)
        writer_node = next(n for n in cache.nodes() if n != node)
        writer = Writer.options(scheduling_strategy=NodeAffinitySchedulingStrategy(writer_node, soft=False)).remote()
        assert ray.get(writer.write.remote(cache, cache_id, arr)) == writer_node
        ray.kill(writer)  # the value must not depend on the process that wrote it
        wait_until_dead(writer)
        out = cache.get(cache_id)
        np.testing.assert_array_equal(out, arr)
        assert cache.node_ids(cache_id) == [node]
        assert cache.stats()[node]["used"] >= arr.nbytes
        cache.append(f"{cache_id}/log", blob)
        cache.append(f"{cache_id}/log", b"tail")
        assert cache.get(f"{cache_id}/log") == blob + b"tail"
        assert cache.delete(cache_id)
        assert cache.get(cache_id, None) is None


@ray.remote(num_cpus=0)
def write_every_path(cache, prefix, values, pieces):
    """Write through each data path, from a task; returns this worker's pid."""
    cache.set_many({f"{prefix}/{name}": value for name, value in values.items()})
    for piece in pieces:
        cache.append_many({f"{prefix}/appended/{n}": piece for n in range(3)})
    return os.getpid()


def held_refs(cache, node, cache_id):
    """The ObjectRefs through which the actor on ``node`` holds ``cache_id``'s payloads."""
    from shoveling_ray import protocol
    from shoveling_ray.wire import pack

    blob, buffers = pack([(cache_id, protocol.AT_HOME)])
    _blob, _buffers, refs = ray.get(cache._router.members[node].batch.remote("get", None, buffers, blob))  # no stamp: a read
    return refs


def payload_kinds(cache, node, cache_id):
    """How the actor on ``node`` keeps each payload of ``cache_id``: ``view`` (a read-only view
    of object store memory), ``heap`` (an array of its own), ``bytes`` or ``stored``."""

    def kinds(actor):
        out = []
        for frame in actor.store.peek(cache_id).frames:
            payload = frame[2]
            if isinstance(payload, np.ndarray):
                out.append("heap" if payload.flags.owndata else "view" if not payload.flags.writeable else "writable view")
            else:
                out.append(type(payload).__name__.lower())
        return out

    return ray.get(cache._router.members[node].__ray_call__.remote(kinds))


def test_every_data_path_outlives_a_killed_writer_and_node_ids_name_where_the_bytes_are(cache):
    """Small values (in the pickled batch), pieces of 64 KiB - 1 MiB (out of band, into the
    holder's heap), 1 MiB and more (the writer's object, kept mapped by the holder without a
    copy), numpy, and appended pieces: written by a task whose worker process is then killed
    (the owner of those objects), they read back whole,
    and the node ``node_ids`` names is where the holder keeps the bytes: its process, whose
    views map only its own node's object store, and for payloads of 1 MiB and more, once read,
    the object the holder put, which Ray locates there. The holder makes that object after the
    write, in the background (no read asks for it here)."""
    rng = np.random.default_rng(11)
    values = {
        "small": os.urandom(100),
        "mid": os.urandom(300 << 10),
        "large": os.urandom(3 << 20),
        "array": rng.random(200_000),  # 1.6 MB
    }
    pieces = [os.urandom(200 << 10), os.urandom(2 << 20), b"tail"]
    for writer_node in cache.nodes()[:2]:
        prefix = f"paths/{writer_node[:6]}"
        strategy = NodeAffinitySchedulingStrategy(writer_node, soft=False)
        pid = ray.get(write_every_path.options(scheduling_strategy=strategy).remote(cache, prefix, values, pieces))
        os.kill(pid, 9)  # the task has ended; now its worker process is gone too (nodes are local)
        for name in [*values, *(f"appended/{n}" for n in range(3))]:
            cache_id = f"{prefix}/{name}"
            (holder,) = cache.node_ids(cache_id)
            assert node_of_actor(cache, holder) == holder  # its payloads live in its process
            expected = {"small": ["bytes"], "mid": ["heap"]}.get(name, ["stored"] if name in values else ["heap", "stored", "bytes"])
            wait_for(lambda: payload_kinds(cache, holder, cache_id) == expected, what=f"the holder's copy of {name}")
            refs = held_refs(cache, holder, cache_id)  # the first read
            assert len(refs) == (1 if name in ("large", "array") or name.startswith("appended") else 0), name
            for where in ray.experimental.get_object_locations(refs).values():
                assert where["node_ids"] == [holder], (name, where)
        for name, value in values.items():
            out = cache.get(f"{prefix}/{name}")
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(out, value)
            else:
                assert out == value, name
        whole = b"".join(pieces)
        for n in range(3):
            assert cache.get(f"{prefix}/appended/{n}") == whole
        for name in [*values, *(f"appended/{n}" for n in range(3))]:
            assert cache.delete(f"{prefix}/{name}")


def test_buffered_writer_keeps_order_bounds_its_buffer_and_flushes_on_exit(cache):
    ids = [f"w/{i}" for i in range(10)]
    cache.init(ids)
    with cache.writer(max_bytes=5000) as w:
        for seq in range(3000):
            w.append(ids[seq % 10], f"{seq};".encode())
            assert w.buffered_bytes < 5000
        assert w.flushes >= 2
    for i, cache_id in enumerate(ids):
        assert [int(x) for x in cache.get(cache_id).decode().rstrip(";").split(";")] == list(range(i, 3000, 10))
    with pytest.raises(TypeError):
        cache.writer().append("w/0", "text")
    with pytest.raises(ValueError):
        cache.writer(max_bytes=0)
    with pytest.raises(RuntimeError):
        with cache.writer() as w:
            w.append("w/0", b"!")
            raise RuntimeError("mapper failed")
    assert cache.get("w/0").endswith(b"!")  # flushed on the way out
