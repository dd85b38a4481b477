"""Compression and memory (2-node cluster).

- ``compression="auto"`` on incompressible data: set + get throughput against the same cache
  with ``compression=None`` (target: at most 10% slower);
- ``auto`` on compressible data: the ratio and the throughput against ``None``;
- bytes held by the actors (object store plus actor heap) per byte stored, for 1-4 MB values;
  and that deleting everything gives that memory back.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import psutil
import ray

import shoveling_ray as sr
from common import MB, Report, parse_args, plasma_bytes, settle, start, stop, timed


def actor_rss(cache: sr.Cache) -> int:
    pids = ray.get([h.__ray_call__.remote(lambda self: os.getpid()) for h in cache._router.members.values()])
    # USS: the object store is shared memory mapped into the actor, counted above already.
    return sum(psutil.Process(pid).memory_full_info().uss for pid in pids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=64)
    parser.add_argument("--values", type=int, default=100, help="values of 1-4 MB for the memory check")
    parser.add_argument("--repeat", type=int, default=5)
    args = parse_args(parser, {"size_mb": 2, "values": 5, "repeat": 1})
    size = args.size_mb * MB

    cluster = start(nodes=2, object_store_mb=max(1024, 8 * args.size_mb + 5 * args.values))
    auto = sr.Cache("bench-auto", compression="auto")
    raw = sr.Cache("bench-raw", compression=None)
    report = Report("compression_memory")

    noise = np.random.default_rng(0).bytes(size)
    text = (b"shoveling_ray keeps shuffle partitions near their reducers; " * (size // 60 + 1))[:size]
    columns = np.arange(size // 8, dtype=np.int64).tobytes()
    for name, data, target in (("incompressible", noise, 0.9), ("text", text, None), ("int64 column", columns, None)):
        def roundtrip(cache):
            cache.set("v", data)
            assert len(cache.get("v")) == size

        t_raw = timed(lambda: roundtrip(raw), args.repeat)
        t_auto = timed(lambda: roundtrip(auto), args.repeat)
        stats = auto.stats()
        used = sum(s["used"] for s in stats.values())
        ratio = sum(s["raw"] for s in stats.values()) / max(used, 1)
        mb = args.size_mb
        report.add(f"auto vs None, {name} {mb} MB set+get (compression {ratio:.1f}:1)", mb / t_auto, mb / t_raw,
                   "MB/s", target)
    auto.close()
    raw.close()

    cache = sr.Cache("bench-memory", compression=None)
    rng = np.random.default_rng(1)
    base_plasma, base_rss = settle(plasma_bytes), settle(lambda: actor_rss(cache))
    print(f"baseline: object store {base_plasma / MB:.0f} MiB, actor heap {base_rss / MB:.0f} MiB")
    stored = 0
    for i in range(args.values):
        n = int(rng.integers(1 * MB, 4 * MB))
        cache.set(f"m{i}", rng.bytes(n))
        stored += n
    in_store = settle(plasma_bytes) - base_plasma
    in_heap = settle(lambda: actor_rss(cache)) - base_rss
    held = in_store + in_heap
    print(f"bytes held per byte stored: {held / stored:.3f} ({held / MB:.0f} MiB for {stored / MB:.0f} MiB: "
          f"object store {in_store / MB:.0f} MiB, actor heap {in_heap / MB:+.0f} MiB)")
    report.add("memory: stored bytes per byte held (1-4 MB values)", stored / MB, held / MB, "MiB", 1 / 1.1)
    for i in range(args.values):
        cache.delete(f"m{i}")
    left_plasma = settle(plasma_bytes) - base_plasma
    left_rss = settle(lambda: actor_rss(cache)) - base_rss
    print(f"after delete: object store {left_plasma / MB:+.1f} MiB, actor heap {left_rss / MB:+.1f} MiB vs before")
    report.add("memory: object store after delete (MiB above baseline)", left_plasma / MB + 1, 1, "MiB+1", None,
               higher_is_better=False)
    cache.close()
    stop(cluster)
    print(f"saved {report.save()}")


if __name__ == "__main__":
    main()
