"""Small values kept in the store's slab: they behave as any value and cost what they take."""

import ctypes
import ctypes.util

import numpy as np
import pytest

from shoveling_ray import CacheFull
from shoveling_ray.actors.disk import SpillFiles
from shoveling_ray.actors.slab import COMPACT_BYTES, SMALL_BYTES, Slab
from shoveling_ray.actors.storage import Store
from shoveling_ray.codec import decode, encode


def put(store, cache_id, data, compression=None):
    return store.set(cache_id, *encode(data, compression))


def read(store, cache_id):
    return decode(*store.get(cache_id))


def slabbed(store):
    return store.table.count("small")


def test_small_values_read_back_as_they_were_set_whatever_their_kind():
    s = Store("n", None)
    values = {"bytes": b"abc", "empty": b"", "int": 7, "text": "héllo", "list": [1, "a", None],
              "lz4": b"z" * 400, "edge": b"e" * SMALL_BYTES}
    for key, value in values.items():
        put(s, key, value, "lz4" if key == "lz4" else None)
    assert slabbed(s) == len(values) and not s._entries
    assert {k: read(s, k) for k in values} == values
    assert sorted(s.ids()) == sorted(values) and len(s) == len(values) and "int" in s and "nope" not in s
    assert s.peek("bytes").raw == 3 and s.peek("lz4").raw == 400 and s.get("nope") is None
    assert s.stats()["ids"] == len(values) and s.raw == sum(s.peek(k).raw for k in values) > 915


def test_replacing_deleting_and_appending_keep_the_store_consistent():
    s = Store("n", None)
    put(s, "a", b"small")
    put(s, "a", b"x" * (SMALL_BYTES + 1))  # small -> entry
    assert read(s, "a") == b"x" * (SMALL_BYTES + 1) and not slabbed(s) and "a" in s._entries
    put(s, "a", b"back")  # entry -> small
    assert read(s, "a") == b"back" and slabbed(s) == 1 and not s._entries
    s.append("a", encode(b"+more", None)[2])  # an append turns it into an entry
    assert read(s, "a") == b"back+more" and not slabbed(s) and s.raw == 9
    put(s, "b", 5)
    with pytest.raises(TypeError, match="not bytes"):
        s.append("b", encode(b"x", None)[2])
    assert read(s, "b") == 5
    assert s.delete("b") and not s.delete("b") and "b" not in s and s.raw == 9
    assert not s.create_empty("a") and s.create_empty("c") and read(s, "c") == b""
    put(s, "c", b"now small")
    assert read(s, "c") == b"now small" and s.table.count("empty") == 0
    assert s.create_empty_many(["c", "d"]) == ["d"] and read(s, "c") == b"now small"


def test_a_refused_append_leaves_a_small_value_as_it_was():
    s = Store("n", None, "reject")
    put(s, "n", 5)
    put(s, "b", b"small")
    with pytest.raises(TypeError, match="not bytes"):
        s.append("n", encode(b"x", None)[2])
    s.configure(s.used + 10, "reject")
    used = s.used
    with pytest.raises(CacheFull):
        s.append("b", encode(b"more", None)[2])
    assert slabbed(s) == 2 and not s._entries and s.used == used and read(s, "b") == b"small"


def test_small_writes_past_the_limit_wake_the_background_spiller(tmp_path):
    woken = []
    s = Store("n", 50_000, "spill", SpillFiles(str(tmp_path / "spill")), wake=lambda: woken.append(1))
    put(s, "big", b"b" * 40_000)
    i = 0
    while s.used <= s.max_memory:
        assert not woken
        put(s, f"small{i}", b"s" * 100)
        i += 1
    assert woken and s.peek("big").disk == 0  # the spiller makes room in the background


def test_a_value_with_append_tokens_stays_an_entry():
    s = Store("n", None)
    s.set("a", *encode(b"v", None), tokens={"t1"})
    assert "a" in s._entries and s.append("a", encode(b"w", None)[2], "t1") == 0


def test_garbage_is_compacted_and_every_value_stays():
    s = Store("n", None)
    for round_ in range(40):
        for i in range(1000):
            put(s, f"k{i}", f"{round_}:{i}".encode() * 20)
    assert s._slab.garbage <= max(COMPACT_BYTES, s._slab.used // 2)
    assert all(read(s, f"k{i}") == f"39:{i}".encode() * 20 for i in range(1000))
    assert s.used == s.table.nbytes + s._slab.nbytes


def test_a_limit_under_lru_turns_small_values_into_entries_it_can_evict():
    s = Store("n", None, "lru")
    for i in range(100):
        put(s, f"k{i}", b"v" * 100)
    assert slabbed(s) == 100
    s.configure(30_000, "lru")
    assert not slabbed(s) and s.used <= 30_000 and s.evictions > 0
    kept = sorted(s.ids())
    assert kept and all(read(s, k) == b"v" * 100 for k in kept) and "k99" in kept  # the newest stay
    put(s, "new", b"n" * 100)
    assert "new" in s._entries  # no slab while lru picks values one by one


def test_under_spill_small_values_stay_in_memory_and_entries_spill(tmp_path):
    s = Store("n", 60_000, "spill", SpillFiles(str(tmp_path / "spill")))
    for i in range(100):
        put(s, f"small{i}", b"s" * 100)
    for i in range(10):
        put(s, f"big{i}", bytes([i]) * 10_000)
    assert slabbed(s) == 100 and s.used <= 60_000 and s.stats()["spilled_ids"] >= 4
    assert all(read(s, f"small{i}") == b"s" * 100 for i in range(100))
    assert all(read(s, f"big{i}") == bytes([i]) * 10_000 for i in range(10))
    s.configure(s.table.nbytes + s._slab.nbytes + 5_000, "spill")  # room for small values only
    with pytest.raises(CacheFull, match="cannot be spilled"):
        for i in range(1000):
            put(s, f"more{i}", b"m" * 100)
    assert all(read(s, f"small{i}") == b"s" * 100 for i in range(100))


def test_reject_refuses_a_small_value_that_does_not_fit_and_keeps_the_old_one():
    s = Store("n", None, "reject")
    put(s, "a", b"old")
    s.configure(s.used + 10, "reject")
    with pytest.raises(CacheFull):
        put(s, "b", b"x" * 100)
    with pytest.raises(CacheFull):
        put(s, "a", b"y" * 100)
    assert read(s, "a") == b"old" and "b" not in s and slabbed(s) == 1


def test_compact_keeps_the_places_it_is_given():
    slab = Slab()
    places = [slab.put(i % 3, (0, i, bytes([i % 256]) * (i % 50))) for i in range(10_000)]
    keep = np.array(places[::-3][:2000])
    for place in set(places) - set(keep.tolist()):
        slab.free(place)
    new = slab.compact(keep)
    assert slab.garbage == 0 and slab.used == sum(slab.sizes(int(p))[0] + 8 for p in new)
    for old_index, place in zip(range(len(places) - 1, -1, -3), new.tolist()):
        assert slab.get(place) == (old_index % 3, (0, old_index, bytes([old_index % 256]) * (old_index % 50)))


def _resident():
    ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def test_a_small_value_costs_what_the_process_really_takes():
    """``used`` is what resident memory grows by (within 10%), and a 100-byte value costs at
    most 100 bytes besides its payload: no Python object per id stays."""
    names = [f"id-{i:09d}" for i in range(300_000)]
    value = encode(np.random.default_rng(0).bytes(100), None)
    s = Store("n", None)
    before = _resident()
    for name in names:
        s.set(name, *value)
    grown = _resident() - before
    assert abs(grown - s.used) <= 0.10 * grown, (grown, s.used)
    assert (s.used - 100 * len(names)) / len(names) < 100 and len(s) == len(names)
