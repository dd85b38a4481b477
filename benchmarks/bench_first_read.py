"""The first read of large values: does the reader pay the holder's copy?

Two nodes. A task on one node writes ``--pieces`` values of ``--piece-mb`` MiB (numpy) held on
the other node, as a shuffle's mapper writes its partitions; after ``--pause`` seconds (the
mapper's next work), the driver reads each value once (the first read), then once again. The
baseline, in the same run: ``ray.get`` of objects of the same size a task on that node made
(Ray core's shuffle reading its pieces). Both reads are timed the same way; the ratio is the
cache's over Ray's, in MB/s.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import shoveling_ray as sr
from common import MB, Report, parse_args, start, stop


def on(node: str):
    return NodeAffinitySchedulingStrategy(node, soft=False)


@ray.remote(num_cpus=0)
def write(cache: sr.Cache, ids: list[str], size: int) -> int:
    for n, cache_id in enumerate(ids):
        cache.set(cache_id, np.full(size, n % 251, dtype=np.uint8))
    return len(ids)


@ray.remote(num_cpus=0)
def make(n: int, size: int) -> np.ndarray:
    return np.full(size, n % 251, dtype=np.uint8)


def read_all(get, keys: list) -> float:
    t = time.perf_counter()
    for n, key in enumerate(keys):
        value = get(key)
        assert value.nbytes and value[0] == n % 251
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pieces", type=int, default=24)
    parser.add_argument("--piece-mb", type=int, default=14)
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between the writes and the reads")
    parser.add_argument("--repeat", type=int, default=3)
    args = parse_args(parser, {"pieces": 4, "repeat": 1, "pause": 0.5})
    cluster = start(nodes=2, object_store_mb=1024)
    report = Report("first_read")
    cache = sr.Cache("bench-first-read", compression=None)
    head = ray.get_runtime_context().get_node_id()
    holder = next(n for n in cache.nodes() if n != head)
    size, total = args.piece_mb * MB, args.pieces * args.piece_mb
    best = {"first": 1e9, "second": 1e9, "ray": 1e9}
    for run in range(args.repeat):
        ids = [i for i in (f"r{run}/{k}" for k in range(10 * args.pieces)) if cache.node_id(i) == holder][:args.pieces]
        ray.get(write.options(scheduling_strategy=on(holder)).remote(cache, ids, size))
        refs = [make.options(scheduling_strategy=on(holder)).remote(n, size) for n in range(args.pieces)]
        ray.wait(refs, num_returns=len(refs), fetch_local=False)
        time.sleep(args.pause)
        times = {"first": read_all(cache.get, ids), "second": read_all(cache.get, ids), "ray": read_all(ray.get, refs)}
        print("  run %d: first read %.0f MB/s, second %.0f MB/s, ray.get %.0f MB/s" % (
            run + 1, *(total / times[k] for k in ("first", "second", "ray"))), flush=True)
        best = {k: min(best[k], times[k]) for k in best}
        cache.delete_many(ids)
        del refs
    report.add(f"first read of {args.pieces} x {args.piece_mb} MiB, other node", total / best["first"],
               total / best["ray"], "MB/s", None)
    report.add("second read", total / best["second"], total / best["ray"], "MB/s", None)
    cache.close()
    stop(cluster)
    print(f"saved {report.save()}")


if __name__ == "__main__":
    main()
