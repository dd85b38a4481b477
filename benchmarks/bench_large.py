"""Large values (16-256 MB, numpy and bytes) against Ray's object store on a 2-node cluster.

Baselines, measured in the same run:
- local get: ``ray.get`` of an object already in the local object store;
- remote get: ``ray.get`` of an object that lives on the other node (made fresh each time);
- set / append: ``ray.put`` plus a transfer (a task on the target node receiving the object);
  on the local node, ``ray.put`` alone.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import shoveling_ray as sr
from common import MB, Report, parse_args, start, stop, timed


def value(kind: str, size: int, seed: int):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, size, dtype=np.uint8) if kind == "numpy" else rng.bytes(size)


@ray.remote(num_cpus=0)
def make(kind: str, size: int, seed: int):
    return value(kind, size, seed)


@ray.remote(num_cpus=0)
def consume(v) -> int:
    return len(v)


def on(node: str):
    return NodeAffinitySchedulingStrategy(node, soft=False)


def id_on(cache: sr.Cache, node: str, prefix: str) -> str:
    return next(i for i in (f"{prefix}{k}" for k in range(100_000)) if cache.node_id(i) == node)


def fresh_get(prepare, get, repeat: int) -> float:
    """Median seconds of ``get()``, with ``prepare()`` (untimed) before each run."""
    samples = []
    for _ in range(repeat + 1):
        prepare()
        t = time.perf_counter()
        get()
        samples.append(time.perf_counter() - t)
    return float(np.median(samples[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,64,256", help="MB, comma separated")
    parser.add_argument("--repeat", type=int, default=5)
    args = parse_args(parser, {"sizes": "2", "repeat": 1})
    sizes = [int(float(s) * MB) for s in args.sizes.split(",")]

    cluster = start(nodes=2, object_store_mb=max(1024, 6 * max(sizes) // MB))
    cache = sr.Cache("bench-large", max_memory=1 << 40)
    here = ray.get_runtime_context().get_node_id()
    there = next(n for n in cache.nodes() if n != here)
    local_id, remote_id = id_on(cache, here, "l"), id_on(cache, there, "r")
    report = Report("large")
    for size in sizes:
        mb = size / MB
        for kind in ("numpy", "bytes"):
            v = value(kind, size, 1)
            tag = f"{kind} {mb:g} MB"

            ref = ray.put(v)
            base = timed(lambda: ray.get(ref), args.repeat)
            cache.set(local_id, v)
            ours = timed(lambda: cache.get(local_id), args.repeat)
            report.add(f"get on the holder node, {tag}", mb / ours, mb / base, "MB/s", 0.5)
            ref = None  # let the baseline object go before the next case

            holder = {}
            base = fresh_get(
                lambda: holder.update(ref=make.options(scheduling_strategy=on(there)).remote(kind, size, 2))
                or ray.wait([holder["ref"]], fetch_local=False),
                lambda: ray.get(holder["ref"]),
                args.repeat,
            )
            holder.clear()
            ours = fresh_get(lambda: cache.set(remote_id, v), lambda: cache.get(remote_id), args.repeat)
            report.add(f"get from the other node, {tag}", mb / ours, mb / base, "MB/s", 0.7)

            base = timed(lambda: ray.put(v), args.repeat)
            ours = timed(lambda: cache.set(local_id, v), args.repeat)
            report.add(f"set on the local node, {tag}", mb / ours, mb / base, "MB/s", 0.7)

            base = timed(lambda: ray.get(consume.options(scheduling_strategy=on(there)).remote(ray.put(v))), args.repeat)
            ours = timed(lambda: cache.set(remote_id, v), args.repeat)
            report.add(f"set to the other node, {tag}", mb / ours, mb / base, "MB/s", 0.7)

            if kind == "bytes":
                cache.delete(remote_id)
                ours = timed(lambda: cache.append(remote_id, v), min(args.repeat, 3))
                report.add(f"append to the other node, {tag}", mb / ours, mb / base, "MB/s", 0.7)
                cache.delete(remote_id)
    cache.close()
    stop(cluster)
    print(f"saved {report.save()}")


if __name__ == "__main__":
    main()
