"""The disk tier (``eviction="spill"``) of the storage engine, without Ray."""

import os

import numpy as np
import pytest

from shoveling_ray import CacheFull
from shoveling_ray.actors import entries, spill_rounds, storage
from shoveling_ray.actors.disk import SpillFiles, check_max_disk
from shoveling_ray.actors.storage import Store, overhead
from shoveling_ray.codec import decode, encode


def spilling_store(tmp_path, max_memory, max_disk=None):
    return Store("node1", max_memory, "spill", SpillFiles(str(tmp_path / "spill"), max_disk))


def read(store, cache_id):
    return decode(*store.get(cache_id))


def files(tmp_path):
    return sorted(os.listdir(tmp_path / "spill"))


VALUES = {
    "small-bytes": b"s" * 1000,
    "big-bytes": os.urandom(300_000),  # out of band: read back as a uint8 array
    "compressed": b"abc" * 100_000,
    "numpy": np.arange(60_000, dtype=np.float32).reshape(200, 300),
    "numpy-fortran": np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4)),
    "msgpack": {"k": [1, 2.5, "x" * 5000, None, True], "b": b"raw"},
}


def same(a, b):
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and (a == b).all()
    return a == b


def test_every_kind_of_value_is_spilled_and_read_back(tmp_path):
    s = spilling_store(tmp_path, 20_000)
    for key, value in VALUES.items():
        s.set(key, *encode(value))
    # compressed to less than SMALL_BYTES: small values, kept in memory (tests/unit/test_slab.py)
    small = {key for key in VALUES if s.table.get(key, "small")}
    assert small == {"small-bytes", "msgpack"}
    assert s.stats()["spilled_ids"] >= len(VALUES) - len(small) - 2 and s.stats()["disk_used"] > 0
    assert s.used <= 20_000
    for key, value in VALUES.items():
        assert same(read(s, key), value), key
    assert s.stats()["restores"] >= len(VALUES) - len(small) - 2


def test_least_recently_used_values_are_spilled_first(tmp_path):
    s = spilling_store(tmp_path, 3 * (10_000 + overhead("a", 1)) + 100)
    for key in "abc":
        s.set(key, *encode(key.encode() * 10_000, None))
    s.get("a")  # b is now the least recently used
    s.set("d", *encode(b"d" * 10_000, None))
    spilled = {key for key in "abcd" if s.peek(key).disk}
    assert "b" in spilled and "a" not in spilled and "d" not in spilled and s.evictions == 0
    assert read(s, "b") == b"b" * 10_000


def test_a_read_value_comes_back_into_memory_when_it_fits(tmp_path):
    s = spilling_store(tmp_path, 2 * (10_000 + overhead("a", 1)) + 100)
    for key in "abc":
        s.set(key, *encode(key.encode() * 10_000, None))
    assert s.peek("a").disk
    on_disk = s.stats()["disk_used"]
    s.delete("c")
    assert read(s, "a") == b"a" * 10_000
    assert not s.peek("a").disk and s.stats()["spilled_ids"] == 1
    s.delete("b")  # a file goes when nothing in it is held any more
    assert on_disk > 0 and s.stats()["disk_used"] == 0 and files(tmp_path) == []


def test_appends_after_a_spill_keep_their_order(tmp_path):
    s = spilling_store(tmp_path, 30_000)
    expected = []
    for i in range(300):
        piece = i.to_bytes(2, "little") * 150
        expected.append(piece)
        s.append("p", encode(piece, None)[2])
        s.append("q", encode(piece, None)[2])
    assert s.spills > 2 and s.used <= 30_000
    assert read(s, "p") == b"".join(expected) == read(s, "q")


def test_small_appended_pieces_are_joined(tmp_path):
    s = Store("n", None)
    for i in range(2000):
        s.append("p", encode(i.to_bytes(4, "little") * 25, None)[2])  # 100 bytes
    frames = s.peek("p").frames
    joined = [f for f in frames if len(f[2]) >= entries.COALESCE_BYTES]
    assert len(joined) == 2000 * 100 // entries.COALESCE_BYTES and len(frames) < 40
    assert read(s, "p") == b"".join(i.to_bytes(4, "little") * 25 for i in range(2000))
    assert s.used == 200_000 + overhead("p", len(frames))


def test_a_value_larger_than_memory_goes_to_disk(tmp_path):
    s = spilling_store(tmp_path, 10_000)
    big = os.urandom(100_000)
    s.set("big", *encode(big))
    assert s.peek("big").disk == 100_000 and s.used <= 10_000
    assert read(s, "big") == big


def test_disk_full_raises_and_loses_nothing(tmp_path):
    s = spilling_store(tmp_path, 2 * (10_000 + overhead("a", 1)), max_disk=25_000)
    values = {key: os.urandom(10_000) for key in "abcd"}
    for key, value in values.items():
        s.set(key, *encode(value, None))
    with pytest.raises(CacheFull, match="max_disk is reached") as err:
        s.set("e", *encode(os.urandom(10_000), None))
    assert err.value.node_id == "node1" and err.value.cache_id == "e"
    with pytest.raises(CacheFull):
        s.append("a", encode(os.urandom(10_000), None)[2])
    assert "e" not in s
    for key, value in values.items():
        assert read(s, key) == value


def test_spilling_past_the_timeout_raises_and_loses_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "SPILL_TIMEOUT", -1.0)  # every spill is already late
    monkeypatch.setattr(spill_rounds, "SEGMENT_BYTES", 1)  # one value a file: a deadline check each
    s = spilling_store(tmp_path, 3 * (10_000 + overhead("a", 1)))
    values = {key: os.urandom(10_000) for key in "abc"}
    for key, value in values.items():
        s.set(key, *encode(value, None))
    with pytest.raises(CacheFull, match="did not make room"):
        s.set("d", *encode(os.urandom(25_000), None))
    assert "d" not in s and s.spills >= 1  # what was spilled before the deadline stays readable
    for key, value in values.items():
        assert read(s, key) == value


def test_delete_close_and_a_successor_remove_the_files(tmp_path):
    s = spilling_store(tmp_path, 3000)
    for key in "abc":
        s.set(key, *encode(os.urandom(5000), None))
    assert len(files(tmp_path)) == 3
    s.delete("a")
    s.set("b", *encode(b"small", None))  # overwritten: its spilled bytes go too
    assert len(files(tmp_path)) == 1 and s.stats()["disk_used"] == 5000
    SpillFiles(str(tmp_path / "spill"))  # a new actor on the node: the leftovers go
    assert files(tmp_path) == []
    s = spilling_store(tmp_path, 3000)
    s.set("x", *encode(os.urandom(5000), None))
    s.close()
    assert not (tmp_path / "spill").exists()


def test_lowering_the_limit_spills_at_once(tmp_path):
    s = spilling_store(tmp_path, None)
    for key in "abcd":
        s.set(key, *encode(os.urandom(10_000), None))
    s.configure(20_000, "spill", None)
    assert s.used <= 20_000 and s.stats()["spilled_ids"] >= 2 and s.evictions == 0


def test_disk_limit_defaults_to_keeping_a_tenth_of_the_disk_free(tmp_path):
    disk = SpillFiles(str(tmp_path / "spill"))
    usage = os.statvfs(tmp_path)
    free, total = usage.f_bavail * usage.f_frsize, usage.f_blocks * usage.f_frsize
    assert abs(disk.limit() - (free - 0.1 * total)) < 0.01 * total
    assert SpillFiles(str(tmp_path / "other"), 123).limit() == 123
    with pytest.raises(TypeError):
        check_max_disk("1GB")
    with pytest.raises(ValueError):
        check_max_disk(-5)


def test_a_large_value_gets_a_spill_file_of_its_own(tmp_path):
    """Replacing or deleting a spilled partition frees its disk at once, whatever else was
    spilled with it."""
    mib = 1 << 20
    s = spilling_store(tmp_path, 2 * mib + mib // 2)
    for key in "abcd":
        s.set(key, *encode(os.urandom(mib), None))
    s.set("tiny", *encode(b"t" * 100, None))
    assert s.peek("a").disk and s.peek("b").disk and len(files(tmp_path)) == 2
    s.delete("a")
    s.set("b", *encode(b"sorted", None))
    assert files(tmp_path) == [] and s.stats()["disk_used"] == 0
