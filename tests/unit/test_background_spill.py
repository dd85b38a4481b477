"""Spilling in the background (a store made with ``wake``, as the node actor makes it): writes
past ``max_memory`` return at once, rounds are written without the lock while the store
changes, and the node's background thread (:mod:`shoveling_ray.actors.spiller`). Without Ray."""

import os
import threading
import time

import pytest

from shoveling_ray import CacheFull
from shoveling_ray.actors import entries
from shoveling_ray.actors.disk import SpillFiles
from shoveling_ray.actors.spiller import Spiller
from shoveling_ray.actors.storage import CEILING, SPILL_TO, Store, overhead
from shoveling_ray.codec import decode, encode

KB10 = 10_000 + overhead("a", 1)


class Woken:
    def __init__(self):
        self.times = 0

    def __call__(self):
        self.times += 1


def background_store(tmp_path, max_memory, max_disk=None, wake=None):
    return Store("node1", max_memory, "spill", SpillFiles(str(tmp_path / "spill"), max_disk), wake=wake or Woken())


def read(store, cache_id):
    return decode(*store.get(cache_id))


def drain_rounds(store):
    """Run every round the store asks for, as the background thread does (no other thread here)."""
    while (job := store.start_spill()) is not None:
        store.write_spill(job)
        store.finish_spill(job)


def test_a_write_past_the_limit_returns_at_once_and_the_rounds_spill_after(tmp_path):
    woken = Woken()
    limit = int(4.5 * KB10)
    s = background_store(tmp_path, limit, wake=woken)
    values = {key: os.urandom(10_000) for key in "abcde"}
    for key, value in values.items():
        s.set(key, *encode(value, None))
    assert s.used > limit and s.spills == 0 and s.spill_wait == 0 and woken.times >= 1
    drain_rounds(s)
    assert s.used <= SPILL_TO * limit and s.peek("a").disk and not s.peek("e").disk
    for key, value in values.items():
        assert read(s, key) == value


def test_empty_ids_created_past_the_limit_wake_the_spiller(tmp_path):
    """``init`` of many ids can be what crosses ``max_memory``: the values before them spill."""
    woken = Woken()
    s = background_store(tmp_path, int(4.5 * KB10), wake=woken)
    for key in "abcd":
        s.set(key, *encode(os.urandom(10_000), None))
    assert s.used <= s.max_memory and woken.times == 0
    s.create_empty_many([f"empty/{i}" for i in range(400)])
    assert s.used > s.max_memory and woken.times == 1
    s.create_empty("one/more")
    assert woken.times == 2
    drain_rounds(s)
    assert s.used <= s.max_memory and s.peek("a").disk


def test_a_write_past_the_ceiling_spills_before_it_returns(tmp_path):
    s = background_store(tmp_path, 4 * KB10)
    for key in "abcd":
        s.set(key, *encode(os.urandom(10_000), None))
    s.set("big", *encode(os.urandom(int(CEILING * 4 * KB10)), None))  # past the ceiling alone
    assert s.spills >= 1 and s.used <= CEILING * 4 * KB10 and s.peek("big").disk


def test_cache_full_counts_the_bytes_rounds_are_writing(tmp_path):
    s = background_store(tmp_path, int(2.6 * KB10), max_disk=25_000)
    values = {key: os.urandom(10_000) for key in "abc"}
    for key, value in values.items():
        s.set(key, *encode(value, None))
    job = s.start_spill()  # 10 000 bytes on their way to disk: room for 15 000 more
    with pytest.raises(CacheFull, match="max_disk is reached"):
        s.set("d", *encode(os.urandom(20_000), None))
    s.write_spill(job)
    s.finish_spill(job)
    assert "d" not in s
    for key, value in values.items():
        assert read(s, key) == value


def test_what_changes_while_a_round_writes_is_kept(tmp_path):
    """Reads, deletes, replacements and appends between a round's pick and its finish."""
    s = background_store(tmp_path, 9 * KB10)
    values = {key: os.urandom(10_000) for key in "abcdefghijk"}
    for key, value in values.items():
        s.set(key, *encode(value, None))
    assert s.spills == 0
    job = s.start_spill()
    picked = {cache_id for cache_id, _entry, _frames in job.victims}
    assert {"a", "b", "c"} <= picked
    s.write_spill(job)
    assert read(s, "a") == values["a"]  # a read while it is written
    s.delete("b")
    s.set("c", *encode(b"new c", None))
    s.finish_spill(job)
    assert "b" not in s and read(s, "c") == b"new c" and read(s, "a") == values["a"]
    drain_rounds(s)
    for key in "adefghijk":
        assert read(s, key) == values[key]
    for key in list(s.ids()):  # every written byte is freed with its value: the files go
        s.delete(key)
    assert s.stats()["disk_used"] == 0 and os.listdir(tmp_path / "spill") == []


def test_appends_to_a_value_being_spilled_keep_their_order(tmp_path, monkeypatch):
    s = background_store(tmp_path, 10_500)
    pieces = [bytes([i]) * 500 for i in range(40)]
    for piece in pieces[:20]:
        s.append("p", encode(piece, None)[2])
    job = s.start_spill()
    assert [c for c, _e, _f in job.victims] == ["p"]
    s.write_spill(job)
    for piece in pieces[20:]:  # past the ceiling: that write finds nothing else to spill
        s.append("p", encode(piece, None)[2])
    s.finish_spill(job)
    assert read(s, "p") == b"".join(pieces)
    entry = s.peek("p")
    assert entry.disk + entry.nbytes == 40 * 500 and s.stats()["disk_used"] == entry.disk
    drain_rounds(s)
    assert read(s, "p") == b"".join(pieces)


def test_a_value_joined_while_its_pieces_are_written_frees_them_on_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(entries, "COALESCE_BYTES", 4_000)
    s = background_store(tmp_path, 2_800)
    for i in range(5):
        s.append("p", encode(bytes([i]) * 500, None)[2])
    job = s.start_spill()
    s.write_spill(job)
    s.append("p", encode(b"z" * 1600, None)[2])  # the tail reaches 4 000 bytes: one frame
    s.finish_spill(job)
    assert s.peek("p").disk == 0 and s.stats()["disk_used"] == 0
    assert read(s, "p") == b"".join(bytes([i]) * 500 for i in range(5)) + b"z" * 1600


def test_the_background_thread_spills_under_the_lock_while_writers_write(tmp_path):
    lock = threading.RLock()
    holder = {}
    s = background_store(tmp_path, 20 * KB10, wake=lambda: holder["spiller"].wake())
    holder["spiller"] = spiller = Spiller(s, lock)
    values = {f"k{i}": os.urandom(10_000) for i in range(200)}

    def write(keys):
        for key in keys:
            with lock:
                s.set(key, *encode(values[key], None))
                s.append(key, encode(b"!", None)[2])

    writers = [threading.Thread(target=write, args=(list(values)[w::4],)) for w in range(4)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with lock:
            if s.used <= 20 * KB10:
                break
        time.sleep(0.05)
    spiller.stop()
    assert s.used <= 20 * KB10 and s.spills > 0
    for key, value in values.items():
        assert read(s, key) == value + b"!"
    for key in list(s.ids()):
        s.delete(key)
    assert s.stats()["disk_used"] == 0 and os.listdir(tmp_path / "spill") == []


def test_the_background_thread_makes_the_holders_copies_after_the_write(tmp_path):
    lock = threading.RLock()
    s = Store("node1", None)
    copied = threading.Event()

    def copy(frames):
        copied.set()
        return {i: (f[0], f[1], bytes(f[2]) + b"") for i, f in enumerate(frames) if type(f[2]) is memoryview}

    spiller = Spiller(s, lock, copy)
    big = os.urandom(300_000)
    kind, meta, frames = encode(big, None)
    frames = [(f[0], f[1], memoryview(f[2])) for f in frames]  # stands for the writer's object
    with lock:
        s.set("v", kind, meta, frames)
        s.set("gone", kind, meta, list(frames))
        s.delete("gone")
        spiller.own(["v", "gone"])
    assert copied.wait(30)
    spiller.stop()
    assert all(type(f[2]) is bytes for f in s.peek("v").frames) and read(s, "v") == big
    assert "gone" not in s


def test_a_piece_whose_writer_died_is_left_in_memory_and_the_others_spill(tmp_path):
    """A scratch id's large piece stays its writer's object: when that writer died, loading it
    to spill fails. The round goes on without it (its reader gets ``DataLost`` from the node),
    the spiller is not stuck on it and nothing stays counted as being written."""
    from shoveling_ray.codec import CODEC_RAW, KIND_BYTES, Stored

    class Lost(Exception):
        pass

    def load(payload):
        if payload.ref == "dead":
            raise Lost("the writer of this object died")
        return b"x" * payload.size

    s = Store("node1", int(4.5 * KB10), "spill", SpillFiles(str(tmp_path / "spill")), load=load, wake=Woken())
    s.set("scratch", KIND_BYTES, b"", [(CODEC_RAW, 10_000, Stored("dead", 10_000))])  # least recently used
    for key in "abcd":
        s.set(key, *encode(os.urandom(10_000), None))
    drain_rounds(s)
    assert s.used <= SPILL_TO * s.max_memory and s._rounds.inflight == 0
    assert s.peek("scratch").disk == 0 and s.peek("a").disk
    assert s.start_spill() is None  # done: not picking the dead piece again and again
