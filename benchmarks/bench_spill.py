"""Which disk path for data past memory: the cache's own spill files, or Ray's object spilling?

One node, a 150 MiB object store (``ray.cluster_utils.Cluster``'s default), ``--total-mb`` of
incompressible values written then read back, once per path, alternating, best of
``--repeat`` each:

- ours: ``eviction="spill"`` with ``max_memory`` = 64 MiB; least recently used values go to the
  actor's segment files and come back on read.
- Ray's: ``eviction="reject"`` with ``max_memory`` far above the data, so every value ``>= 1
  MiB`` stays an object owned by the node actor, and Ray spills and restores them itself when
  its object store is full (values under 1 MiB live in the actor's heap, which Ray cannot
  spill: this path exists for large values only, or for small pieces coalesced into objects
  of that size first, which is what the 4 MiB values stand for).

Also the small-piece case on our path: 10 KB appends, which only the cache's own tier can
move to disk. The ratios are ours over Ray's, in MB/s.
"""

from __future__ import annotations

import argparse
import os
import time

import shoveling_ray as sr
from common import MB, Report, parse_args, start, stop


def write_read(cache: sr.Cache, values: dict) -> tuple[float, float]:
    """Seconds to set every value, then to read every value back (checked)."""
    t = time.perf_counter()
    for cache_id, value in values.items():
        cache.set(cache_id, value)
    write = time.perf_counter() - t
    t = time.perf_counter()
    for cache_id, value in values.items():
        assert cache.get(cache_id) == value
    return write, time.perf_counter() - t


def appends(cache: sr.Cache, pieces: list[bytes], ids: int) -> tuple[float, float]:
    t = time.perf_counter()
    for start_at in range(0, len(pieces), ids):  # a piece to every id per call
        cache.append_many({f"p{i}": p for i, p in enumerate(pieces[start_at:start_at + ids])})
    write = time.perf_counter() - t
    t = time.perf_counter()
    total = sum(cache.size(f"p{i}") for i in range(ids))
    got = sum(len(cache.get(f"p{i}")) for i in range(ids))
    assert got == total == sum(map(len, pieces))
    return write, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-mb", type=int, default=1024)
    parser.add_argument("--value-mb", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    args = parse_args(parser, {"total_mb": 80, "repeat": 1})
    cluster = start(nodes=1, object_store_mb=150)
    report = Report("spill")
    values = {f"v{i}": os.urandom(args.value_mb * MB) for i in range(args.total_mb // args.value_mb)}
    total = sum(map(len, values.values())) / MB
    best = {"ours": (1e9, 1e9), "ray": (1e9, 1e9)}
    for run in range(args.repeat):
        for path, settings in (("ours", {"eviction": "spill", "max_memory": 64 * MB}),
                               ("ray", {"eviction": "reject", "max_memory": 1 << 50})):
            cache = sr.Cache(f"bench-spill-{path}", compression=None, **settings)
            write, read = write_read(cache, values)
            stats = next(iter(cache.stats().values()))
            print(f"  run {run + 1} {path:<4}: write {total / write:7.0f} MB/s, read {total / read:7.0f} MB/s "
                  f"(spills {stats['spills']}, disk {stats['disk_used'] / MB:.0f} MiB)", flush=True)
            best[path] = (min(best[path][0], write), min(best[path][1], read))
            cache.close()
    report.add(f"write {args.total_mb} MiB of {args.value_mb} MiB values, own tier vs Ray spilling",
               total / best["ours"][0], total / best["ray"][0], "MB/s", None)
    report.add("read them back, own tier vs Ray restoring", total / best["ours"][1], total / best["ray"][1], "MB/s", None)
    pieces = [os.urandom(10_000) for _ in range(args.total_mb * MB // 10_000 // 4)]
    cache = sr.Cache("bench-spill-pieces", compression=None, max_memory=64 * MB)
    write, read = appends(cache, pieces, ids=16)
    stats = next(iter(cache.stats().values()))
    small = len(pieces) * 10_000 / MB
    print(f"  10 KB appends, {small:.0f} MiB into 64 MiB, own tier: write {small / write:.0f} MB/s, read "
          f"{small / read:.0f} MB/s (spills {stats['spills']}; Ray cannot spill heap pieces)", flush=True)
    cache.close()
    stop(cluster)
    print(f"saved {report.save()}")


if __name__ == "__main__":
    main()
