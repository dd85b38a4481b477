import tracemalloc

import pytest

from shoveling_ray import CacheFull
from shoveling_ray.actors import entries
from shoveling_ray.actors.storage import Store, check_max_memory, check_policy, overhead
from shoveling_ray.codec import KIND_BYTES, KIND_MSGPACK, encode


def put(store, cache_id, data):
    store.set(cache_id, *encode(data, None))


def cost(cache_id, nbytes, frames=1):
    """Memory an id of ``nbytes`` payload bytes in ``frames`` frames is counted for."""
    return nbytes + overhead(cache_id, frames)


def test_accounting_follows_set_append_delete():
    s = Store("n", None)
    put(s, "a", b"x" * 1000)  # past SMALL_BYTES: an entry (small values: tests/unit/test_slab.py)
    s.append("a", encode(b"y" * 5, None)[2])
    s.append("b", encode(b"z" * 3, None)[2])
    assert s.stats()["used"] == cost("a", 1005, 2) + cost("b", 3) and s.stats()["ids"] == 2
    put(s, "a", b"w" * 1000)
    assert s.used == cost("a", 1000) + cost("b", 3)
    assert s.delete("a") and not s.delete("a")
    assert s.used == cost("b", 3) and s.raw == 3
    s.create_empty("e")
    assert s.used == cost("b", 3) + s.table.nbytes and s.peek("e").raw == 0 and "e" in s


def test_used_is_the_memory_entries_really_take():
    """The per-id and per-frame overheads are what Python really allocates (within 10%)."""
    tracemalloc.start()
    try:
        s = Store("n", None)
        for i in range(20_000):
            put(s, f"key-{i:06d}", i.to_bytes(4, "little") * 150)  # 600 bytes each: entries
        for i in range(0, 20_000, 2):
            s.append(f"key-{i:06d}", encode(i.to_bytes(5, "little") * 10, None)[2])  # 50 bytes
        allocated, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert abs(allocated - s.used) <= 0.10 * allocated, (allocated, s.used)


def test_raw_and_stored_differ_under_compression():
    s = Store("n", None)
    s.set("a", *encode(b"a" * 10_000, "lz4"))
    assert s.raw == 10_000 and s.used < cost("a", 200)


def test_reject_raises_and_keeps_everything():
    s = Store("node1", cost("a", 6000) + 4000, "reject")
    put(s, "a", b"x" * 6000)
    with pytest.raises(CacheFull) as err:
        put(s, "b", b"y" * 5000)
    assert err.value.node_id == "node1" and err.value.limit == s.max_memory and err.value.needed == cost("b", 5000)
    with pytest.raises(CacheFull):
        s.append("a", encode(b"y" * 4100, None)[2])
    assert s.used == cost("a", 6000) and "b" not in s and s.peek("a").raw == 6000
    put(s, "a", b"z" * 10_000)  # replacing within the limit is fine
    assert s.used == cost("a", 10_000)


def test_lru_evicts_least_recently_used():
    s = Store("n", 3 * cost("a", 3000) + 100, "lru")
    for k in "abc":
        put(s, k, k.encode() * 3000)
    s.get("a")  # a is now most recent: b goes first
    put(s, "d", b"d" * 3000)
    assert "b" not in s and {"a", "c", "d"} <= set(s.ids())
    assert s.evictions == 1 and s.used == 3 * cost("a", 3000)


def test_lru_refuses_value_larger_than_limit_and_evicts_nothing():
    s = Store("n", 10_000, "lru")
    put(s, "a", b"a" * 5000)
    with pytest.raises(CacheFull):
        put(s, "big", b"b" * 10_001)
    assert "a" in s and s.evictions == 0


def test_lru_keeps_the_entry_being_written():
    s = Store("n", cost("a", 9000, 2) + cost("b", 4000) - 1000, "lru")  # a and b fit, not after the append
    put(s, "a", b"a" * 5000)
    put(s, "b", b"b" * 4000)
    s.append("a", encode(b"a" * 4000, None)[2])  # needs room: b goes, a stays
    assert "b" not in s and s.peek("a").raw == 9000


def test_empty_entries_are_not_evicted():
    s = Store("n", cost("a", 1000) + overhead("e", 0) + 100, "lru")
    s.create_empty("e")
    put(s, "a", b"a" * 1000)
    put(s, "b", b"b" * 1000)
    assert "e" in s and "a" not in s


def test_lowering_limit_applies_policy():
    s = Store("n", None, "lru")
    for k in "abcd":
        put(s, k, b"x" * 2500)
    s.configure(2 * cost("a", 2500), "lru")
    assert s.used <= 2 * cost("a", 2500) and s.evictions == 2
    r = Store("n", None, "reject")
    for k in "abcd":
        put(r, k, b"x" * 2500)
    r.configure(2 * cost("a", 2500), "reject")
    assert r.used == 4 * cost("a", 2500)  # nothing silently lost...
    with pytest.raises(CacheFull):
        put(r, "e", b"x")  # ...but no new bytes either
    assert r.delete("a") and r.delete("b") and r.delete("c")
    put(r, "e", b"x")


def test_append_to_non_bytes_is_type_error_and_changes_nothing():
    s = Store("n", None)
    s.set("m", *encode({"k": 1}))
    with pytest.raises(TypeError, match="not bytes"):
        s.append("m", encode(b"x")[2])
    assert s.peek("m").kind == KIND_MSGPACK


def test_create_empty_never_overwrites():
    s = Store("n", None)
    put(s, "a", b"data")
    assert not s.create_empty("a") and s.peek("a").raw == 4
    assert s.create_empty("b") and s.peek("b").kind == KIND_BYTES and s.peek("b").raw == 0


def test_ids_prefix():
    s = Store("n", None)
    for k in ("p1", "p2", "q1"):
        s.create_empty(k)
    assert sorted(s.ids("p")) == ["p1", "p2"]


def test_argument_checks():
    with pytest.raises(ValueError):
        check_policy("fifo")
    with pytest.raises(TypeError):
        check_max_memory("1GB")
    with pytest.raises(TypeError):
        check_max_memory(True)
    with pytest.raises(ValueError):
        check_max_memory(-1)


def test_errors_pickle_with_their_fields():
    import pickle

    from shoveling_ray import CacheMiss, NodeUnavailable

    full = pickle.loads(pickle.dumps(CacheFull("n1", 10, 5, 7, "x", "and max_disk is reached too")))
    assert (full.node_id, full.limit, full.used, full.needed, full.cache_id) == ("n1", 10, 5, 7, "x")
    assert str(full).endswith("in use and max_disk is reached too")
    miss = pickle.loads(pickle.dumps(CacheMiss("k", "c")))
    assert isinstance(miss, KeyError) and miss.cache_id == "k" and str(miss) == str(CacheMiss("k", "c"))
    gone = pickle.loads(pickle.dumps(NodeUnavailable("n", ["a"], "dead")))
    assert gone.cache_ids == ["a"] and str(gone) == str(NodeUnavailable("n", ["a"], "dead"))


def test_an_append_with_a_token_it_took_is_skipped():
    s = Store("n", None)
    assert s.append("p", encode(b"a", None)[2], "t1") == 1
    assert s.append("p", encode(b"a", None)[2], "t1") == 0  # a retried writer
    s.append("p", encode(b"b", None)[2], "t2")
    s.append("p", encode(b"c", None)[2])  # no token: always applied
    assert s.peek("p").raw == 3 and s.used == cost("p", 3, 3) + 2 * entries.TOKEN_OVERHEAD
    put(s, "p", b"")  # a new value forgets the tokens
    assert s.append("p", encode(b"a", None)[2], "t1") == 1
    s.set("moved", *encode(b"x", None), tokens={"t9"})  # a value moved from a drained node keeps them
    assert s.append("moved", encode(b"a", None)[2], "t9") == 0 and s.peek("moved").raw == 1
