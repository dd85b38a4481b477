"""The compact id table (actors/idtable.py) and what the store and directory keep in it: the
same answers as a dict, and memory counted as Python really allocates it."""

import ctypes
import ctypes.util
import tracemalloc
import zlib

import numpy as np

from shoveling_ray.actors.idtable import IdTable, Interned, NodeColumn
from shoveling_ray.actors.storage import EMPTY_BYTES, Store
from shoveling_ray.codec import CODEC_RAW, KIND_BYTES
from shoveling_ray.idpack import PackedIds
from shoveling_ray.placed import Placed


def test_table_answers_as_a_dict_under_random_changes():
    rng = np.random.default_rng(7)
    table, model = IdTable(("a", "b")), {"a": {}, "b": {}}
    names = [f"n{i}" for i in range(3000)] + ["é-ü", "日本", "x" * 300]
    for _ in range(40):
        column = "a" if rng.random() < 0.5 else "b"
        picked = [names[i] for i in rng.integers(0, len(names), 200)]
        values = rng.integers(0, 4, 200)  # 0 unsets
        if rng.random() < 0.5:
            table.add(picked, column, values)
        else:
            for name, value in zip(picked, values.tolist()):
                table.set(name, column, value)
        for name, value in zip(picked, values.tolist()):  # the last value of a name wins
            if value:
                model[column][name] = value
            else:
                model[column].pop(name, None)
        for col in ("a", "b"):
            assert dict(table.items(col)) == model[col]
            assert table.count(col) == len(model[col])
            assert table.values(names, col).tolist() == [model[col].get(n, 0) for n in names]
        assert len(table) == len(model["a"].keys() | model["b"].keys())
    assert all(table.get(n, "a") == model["a"].get(n, 0) for n in names)


def test_dead_rows_are_dropped_and_found_ids_stay():
    table = IdTable(("a",))
    names = [f"id-{i}" for i in range(200_000)]
    table.add(names, "a", 1)
    table.add(names[:150_000], "a", 0)  # dead rows outnumber live ones: rebuilt without them
    assert table._rows == 50_000 and len(table) == 50_000
    assert table.values(names[149_990:150_010], "a").tolist() == [0] * 10 + [1] * 10
    table.set(names[0], "a", 3)
    assert table.get(names[0], "a") == 3 and table.get(names[-1], "a") == 1


def test_node_column_is_a_mapping_of_node_ids():
    table, nodes = IdTable(("record", "lost")), Interned()
    records, lost = NodeColumn(table, "record", nodes), NodeColumn(table, "lost", nodes)
    records["x"] = "node-a"
    records.set_many(["y", "z"], ["node-b", "node-a"])
    lost["x"] = "node-c"
    assert dict(records.items()) == {"x": "node-a", "y": "node-b", "z": "node-a"} and len(records) == 3
    assert records.get("q") is None and "q" not in records and "y" in records
    assert records.pop("y") == "node-b" and records.pop("y", None) is None
    assert records.get_many(["z", "y", "x"]) == ["node-a", None, "node-a"]
    del records["x"]
    assert lost["x"] == "node-c" and len(table) == 2  # x stays for its lost entry
    lost.clear()
    records.unset_many(["z"])
    assert len(table) == 0 and not records and not lost


def _resident() -> int:
    """Resident bytes of this process, after handing freed heap blocks back (the allocator's
    cache of freed temporaries is not what the table holds)."""
    ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def test_empty_ids_cost_what_the_process_really_takes():
    """An empty id costs ``used`` what the process's resident memory grows by (within 10%; the
    table's arrays are memory maps, which tracemalloc does not see), a few dozen bytes, not an
    entry object and dict slots."""
    names = [f"id-{i:09d}" for i in range(600_000)]
    store = Store("n", None)
    before = _resident()
    for k in range(0, len(names), 100_000):
        store.create_empty_many(names[k:k + 100_000])
    grown = _resident() - before
    assert abs(grown - store.used) <= 0.10 * grown, (grown, store.used)
    assert store.used / len(store) < 50 and len(store) == 600_000


def test_used_counts_what_python_allocates_besides_the_table():
    """The table's arrays are what ``used`` counts of it: tracemalloc sees nothing else grow."""
    names = [f"id-{i:09d}" for i in range(50_000)]
    store = Store("n", None)
    store.create_empty_many(names[:10])
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store.create_empty_many(names)
        for name in names[:1000]:
            store.create_empty(name + "+")
        outside = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert outside < 0.02 * store.used, (outside, store.used)
    assert abs(store.used / len(store) - (EMPTY_BYTES + 12)) < 15


def test_empty_ids_behave_as_empty_values():
    store = Store("n", None)
    assert store.create_empty_many(["a", "b"]) == ["a", "b"] and store.create_empty_many(["a", "c"]) == ["c"]
    assert not store.create_empty("a") and len(store) == 3 and sorted(store.ids()) == ["a", "b", "c"]
    assert store.get("a") == (KIND_BYTES, b"", [])
    store.append("a", [(CODEC_RAW, 2, b"hi")])
    store.set("b", KIND_BYTES, b"", [(CODEC_RAW, 3, b"abc")])
    assert store.peek("a").raw == 2 and store.peek("b").raw == 3 and store.peek("c").raw == 0
    assert store.delete("c") and not store.delete("c") and "c" not in store
    assert sorted(store.ids()) == ["a", "b"] and store.table.count("empty") == 0


def test_placed_is_the_mapping_a_dict_would_be():
    ids = [f"i{k}" for k in range(1000)]
    nodes = [("a", "b", "c")[k % 3] for k in range(1000)]
    placed, plain = Placed(ids, nodes), dict(zip(ids, nodes))
    assert placed == plain and list(placed) == ids and len(placed) == 1000
    assert list(placed.items()) == list(plain.items()) and list(placed.values()) == nodes
    assert placed["i5"] == "c" and "i5" in placed and "zz" not in placed and placed.get("zz") is None
    assert placed.counts() == {"a": 334, "b": 333, "c": 333}


def test_a_pack_of_ids_hashes_as_zlib_and_takes_and_gives_back_its_names():
    names = ["a", "é-ü", "日本", "x" * 300, "id-000000001", *[f"n{i}" for i in range(1000)]]
    ids = PackedIds.of(names)
    assert ids.crc32().tolist() == [zlib.crc32(n.encode()) for n in names]
    assert ids.names() == names
    picked = np.array([3, 0, 2, 999, 1])
    assert ids.take(picked).names() == [names[k] for k in picked]
    assert len(ids.take(np.array([], np.int64))) == 0


def test_a_packed_batch_gets_the_same_rows_as_its_names():
    table = IdTable(("a", "b"))
    names = [f"n{i}" for i in range(5000)] + ["é-ü", "日本", "x" * 300]
    table.add(PackedIds.of(names[::2]), "a", 1)
    table.add(names[1::2], "b", 2)
    assert table.rows(PackedIds.of(names)).tolist() == table.rows(names).tolist()
    assert all(table.get(n, "a") == (1 - k % 2) for k, n in enumerate(names))
    table.add(PackedIds.of(["q", "é-ü", "q"]), "b", np.array([1, 3, 4]))  # twice: the last value
    assert table.get("q", "b") == 4 and table.get("é-ü", "b") == 3 and table.get("é-ü", "a") == 1
    table.unset_many(PackedIds.of(names), "a")
    assert table.count("a") == 0 and table.count("b") == len(names[1::2]) + 2


def test_the_table_is_the_process_own_memory():
    """Its arrays count in RssAnon (private maps), not beside Ray's shared pages."""
    def rss(field):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field + ":"))

    table = IdTable(("a",))
    shared = rss("RssShmem")
    table.add([f"id-{i:09d}" for i in range(300_000)], "a", 1)
    assert rss("RssShmem") - shared < table.nbytes / 10


def test_the_index_stays_between_forty_and_sixty_percent_full_as_the_table_grows():
    table = IdTable(("a",))
    loads = []
    for k in range(0, 200_000, 4096):
        table.add([f"id-{i}" for i in range(k, k + 4096)], "a", 1)
        loads.append(len(table) / len(table._index))
        for i in range(k, k + 4096, 997):  # every id is still found
            assert table.get(f"id-{i}", "a") == 1
    assert all(0.39 <= load <= 0.6 for load in loads[5:]), loads
    assert table.get("absent", "a") == 0 and table.rows(["absent", "id-7"]).tolist() == [-1, 7]
