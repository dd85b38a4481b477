"""What copies cost: a cache with ``replicas=2`` against one with ``replicas=1``, in one run,
on a local 3-node cluster of one CPU each.

Cases: ``set_many`` and ``get_many`` of 10,000 values of 100 bytes, ``set`` and ``get`` of one
64 MB value whose primary copy is on another node (medians of 5 after a warm-up), and the 1 GB sort of examples/distributed_sort.py
(best of ``--repeat``). The two caches alternate case by case, so both see the same machine
state. Ratio: the ``replicas=2`` throughput over the ``replicas=1`` one (targets from the
node-loss issue: writes >= 0.5x, reads >= 0.9x, the sort >= 0.6x).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import ray

import shoveling_ray as sr
from common import MB, Report, start, stop, timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import distributed_sort as ds  # noqa: E402

ray.cloudpickle.register_pickle_by_value(ds)


def small_cases(cache: sr.Cache) -> dict[str, float]:
    values = {f"s{i}": os.urandom(100) for i in range(10_000)}
    ids = list(values)
    out = {"set_many 10k x 100 B": len(values) / timed(lambda: cache.set_many(values))}
    out["get_many 10k x 100 B"] = len(values) / timed(lambda: cache.get_many(ids))
    return out


def large_cases(cache: sr.Cache) -> dict[str, float]:
    """On an id whose primary copy is on another node than this process's: where the id of a
    fixed name lands changes with every cluster (the written bytes cross to it or not), and on
    a real cluster most ids live elsewhere."""
    here = ray.get_runtime_context().get_node_id()
    big = next(i for i in (f"big{n}" for n in range(1000)) if cache.node_id(i) != here)
    blob = os.urandom(64 * MB)
    out = {"set 64 MB": 64 / timed(lambda: cache.set(big, blob))}
    out["get 64 MB"] = 64 / timed(lambda: cache.get(big))
    cache.delete(big)
    return out


def sort_case(cache: sr.Cache, records: int, repeat: int) -> dict[str, float]:
    best = None
    for _ in range(repeat):
        t = time.perf_counter()
        summary = ds.distributed_sort(cache, records, seed=1, progress=lambda m: None)
        seconds = time.perf_counter() - t
        assert summary["ok"], summary
        best = seconds if best is None else min(best, seconds)
    return {f"sort {records * 100 / 1e9:.1f} GB": records * 100 / MB / best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=float, default=10e6, help="records of the sort (100 bytes each)")
    parser.add_argument("--repeat", type=int, default=2, help="sort runs per cache (best counts)")
    parser.add_argument("--object-store-mb", type=int, default=3000)
    args = parser.parse_args()
    cluster = start(nodes=3, object_store_mb=args.object_store_mb)
    caches = {k: sr.Cache(f"bench-replicas-{k}", replicas=k) for k in (1, 2)}
    units = {"set_many": "values/s", "get_many": "values/s", "set": "MB/s", "get": "MB/s", "sort": "MB/s"}
    targets = {"set_many": 0.5, "set": 0.5, "get_many": 0.9, "get": 0.9, "sort": 0.6}
    report = Report("replicas")
    for case in (small_cases, large_cases, lambda c: sort_case(c, int(args.records), args.repeat)):
        results = {k: case(cache) for k, cache in caches.items()}
        for name, one in results[1].items():
            kind = name.split()[0]
            report.add(f"{name}: replicas=2 vs replicas=1", results[2][name], one, units[kind], targets[kind])
    for cache in caches.values():
        cache.close()
    stop(cluster)
    print(f"saved {report.save()}")


if __name__ == "__main__":
    main()
