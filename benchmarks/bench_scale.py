"""Scale: what an id costs and how ``init`` grows with ids (3-node cluster by default).

Section ``ids`` (issue 26, part 1), for each count given in ``--ids``:

- bytes per id in the node actors (resident memory growth of the actor processes divided by the
  ids; the actors' own ``stats()`` ``used`` beside it) for ids created empty by one ``init`` call
  and for ids created by ``set_many`` of 100-byte values (with and without the values' own
  bytes), against the 100-byte target and against Redis's bytes per key (``INFO memory``
  ``used_memory`` growth for the same names, empty and with the same values);
- the time of the ``init`` call, and its ratio to the smallest count's;
- ``get_many`` of 100,000 of the largest count's ids from a fresh process (a new driver that
  attaches with ``Cache.attach``).

Other sections (``--section``) measure other things; see their docstrings.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import ray

import shoveling_ray as sr
from common import Report, parse_args, start, stop
from redis_server import RedisServer

#: What an id may cost in the node actors (issue 26).
TARGET_BYTES = 100
VALUE_BYTES = 100
SET_BATCH = 100_000
FRESH_READS = 100_000


def names(count: int) -> list[str]:
    """``count`` ids of 12-13 characters, as the issue measured."""
    return [f"id-{i:09d}" for i in range(count)]


def _status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field + ":"))


def actor_rss(cache: sr.Cache, field: str = "RssAnon") -> int:
    """Resident memory of the node actors' processes: by default their own (``RssAnon``: heap
    and anonymous maps), without the pages of Ray's object store they have touched
    (``RssShmem``: Ray's shared pool, the same memory in every process that maps it)."""
    pids = ray.get([h.__ray_call__.remote(lambda self: os.getpid()) for h in cache._router.members.values()])
    return sum(_status(pid, field) for pid in pids)


def _trim(actor) -> int:
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def trimmed_rss(cache: sr.Cache) -> int:
    """:func:`actor_rss` after each actor handed its freed heap back to the kernel: what it
    holds, without the freed memory it keeps for reuse (up to 512 MiB, see heap.py)."""
    ray.get([h.__ray_call__.remote(_trim) for h in cache._router.members.values()])
    return actor_rss(cache)


def settle(probe, rounds: int = 20) -> int:
    """Read ``probe`` until two readings agree (frees are asynchronous)."""
    last = probe()
    for _ in range(rounds):
        time.sleep(0.25)
        now = probe()
        if now == last:
            return now
        last = now
    return last


def used(cache: sr.Cache) -> int:
    """``used`` of every node, without what the sessions remember of recent writes."""
    return sum(s["used"] - s["bookkeeping"] for s in cache.stats().values())


def bytes_per_id(report: Report, count: int, ids: list[str], redis: dict, set_ids: int) -> tuple[float, str]:
    """The two cases at ``count`` ids (the ``set`` one up to ``set_ids``); returns the init time
    and the init cache's name (open)."""
    name = f"bench-init-{count}"
    cache = sr.Cache(name, compression=None)
    rss0, used0 = settle(lambda: trimmed_rss(cache)), used(cache)
    shm0 = actor_rss(cache, "RssShmem")
    t = time.perf_counter()
    placed = cache.init(ids)
    seconds = time.perf_counter() - t
    assert len(placed) == count
    del placed
    grown, counted = (settle(lambda: actor_rss(cache)) - rss0) / count, (used(cache) - used0) / count
    held = (trimmed_rss(cache) - rss0) / count
    shared = (actor_rss(cache, "RssShmem") - shm0) / count
    print(f"init of {count:,} ids: {seconds:.2f} s; actors +{grown:.1f} B/id ({held:.1f} after malloc_trim; "
          f"object store pages touched +{shared:.1f}), used +{counted:.1f} B/id (used/measured {counted / grown:.2f})")
    report.add(f"init-placed id, {count:,} ids: bytes/id vs target", grown, TARGET_BYTES, "B", 1.0, False)
    report.add(f"init-placed id, {count:,} ids: bytes/id vs redis empty key", grown, redis["empty"], "B", None, False)
    report.add(f"init-placed id, {count:,} ids: used vs measured", counted, grown, "B", None)
    if count <= set_ids:
        set_bytes(report, count, ids, redis)
    return seconds, name


def set_bytes(report: Report, count: int, ids: list[str], redis: dict) -> None:
    """Bytes per id of ids created by ``set_many`` of 100-byte values."""
    small = sr.Cache(f"bench-set-{count}", compression=None)
    rss0, used0 = settle(lambda: trimmed_rss(small)), used(small)
    value = np.random.default_rng(0).bytes(VALUE_BYTES)
    t = time.perf_counter()
    for k in range(0, count, SET_BATCH):
        small.set_many({i: value for i in ids[k:k + SET_BATCH]})
    set_seconds = time.perf_counter() - t
    small.set("flush", b"")  # the sessions forget the writes before this one
    grown, counted = (settle(lambda: actor_rss(small)) - rss0) / count, (used(small) - used0) / count
    print(f"after malloc_trim: +{(trimmed_rss(small) - rss0) / count:.1f} B/id")
    print(f"set_many of {count:,} ids of {VALUE_BYTES} B: {set_seconds:.2f} s; actors +{grown:.1f} B/id with the "
          f"value, {grown - VALUE_BYTES:.1f} without; used +{counted:.1f} B/id (used/measured {counted / grown:.2f})")
    report.add(f"set id of {VALUE_BYTES} B, {count:,} ids: bytes/id without the value vs target",
               grown - VALUE_BYTES, TARGET_BYTES, "B", 1.0, False)
    report.add(f"set id of {VALUE_BYTES} B, {count:,} ids: bytes/id with the value vs redis", grown, redis["value"],
               "B", None, False)
    report.add(f"set id of {VALUE_BYTES} B, {count:,} ids: used vs measured", counted, grown, "B", None)
    small.close()


def redis_bytes(ids: list[str]) -> dict:
    """Redis's ``used_memory`` growth per key for ``ids``, empty and with 100-byte values."""
    server = RedisServer()
    try:
        out = {}
        value = np.random.default_rng(0).bytes(VALUE_BYTES)
        for case, data in (("empty", b""), ("value", value)):
            server.client.flushall()
            before = server.client.info("memory")["used_memory"]
            for k in range(0, len(ids), SET_BATCH):
                pipe = server.client.pipeline(transaction=False)
                for i in ids[k:k + SET_BATCH]:
                    pipe.set(i, data)
                pipe.execute()
            out[case] = (server.client.info("memory")["used_memory"] - before) / len(ids)
        print(f"redis: {out['empty']:.1f} B per empty key, {out['value']:.1f} B per key of {VALUE_BYTES} B")
        return out
    finally:
        server.stop()


FRESH = textwrap.dedent("""
    import sys, time, ray, shoveling_ray as sr
    ray.init(address=sys.argv[1], log_to_driver=False)
    cache = sr.Cache.attach(sys.argv[2])
    ids = [f"id-{i:09d}" for i in range(0, int(sys.argv[3]), int(sys.argv[3]) // int(sys.argv[4]))][:int(sys.argv[4])]
    t = time.perf_counter()
    values = cache.get_many(ids)
    print(time.perf_counter() - t, len(values), sum(len(v) for v in values.values()))
""")


def fresh_reads(address: str, name: str, count: int, reads: int) -> float:
    """Seconds a new driver's ``get_many`` of ``reads`` ids of cache ``name`` takes."""
    out = subprocess.run([sys.executable, "-c", FRESH, address, name, str(count), str(reads)], capture_output=True,
                         text=True, check=True, timeout=600)
    seconds, got, nbytes = out.stdout.split()[-3:]
    assert int(got) == reads and int(nbytes) == 0, out.stdout
    return float(seconds)


def section_ids(args: argparse.Namespace, cluster) -> Report:
    report = Report("scale_ids")
    counts = sorted(int(c) for c in args.ids.split(","))
    every = names(counts[-1])
    redis = redis_bytes(every[:args.redis_keys])
    timings = {}
    for count in counts:
        timings[count], name = bytes_per_id(report, count, every[:count], redis, args.set_ids)
        if count != counts[-1]:
            sr.Cache.attach(name).close()
    first = counts[0]
    for count in counts[1:]:
        report.add(f"init of {count:,} ids vs {first:,} ids: time / (ids ratio {count // first})",
                   timings[count] / (count / first), timings[first], "s", None, higher_is_better=False)
    reads = min(FRESH_READS, counts[-1])
    seconds = fresh_reads(cluster.address, name, counts[-1], reads)
    print(f"get_many of {reads:,} of {counts[-1]:,} ids from a fresh process: {seconds:.2f} s")
    report.add(f"get_many of {reads:,} ids from a fresh process: ids/s vs init's ids/s", reads / seconds,
               counts[-1] / timings[counts[-1]], "ids/s", None)
    sr.Cache.attach(name).close()
    return report


SECTIONS = {"ids": section_ids}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=sorted(SECTIONS), action="append",
                        help="what to measure (repeatable; default: all)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--ids", default="1000000,10000000", help="id counts, comma separated (section ids)")
    parser.add_argument("--set-ids", type=int, default=1_000_000,
                        help="largest count for the set case (each set id still costs several hundred bytes)")
    parser.add_argument("--redis-keys", type=int, default=1_000_000, help="keys for Redis's bytes per key")
    args = parse_args(parser, {"ids": "20000,100000", "redis_keys": 20000})
    cluster = start(nodes=args.nodes, object_store_mb=1024)
    try:
        for section in args.section or sorted(SECTIONS):
            SECTIONS[section](args, cluster).save()
    finally:
        stop(cluster)


if __name__ == "__main__":
    main()
