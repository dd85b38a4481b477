"""A validated distributed sort through shoveling_ray's shuffle.

Sorts N records of 100 bytes (10-byte key, 90-byte payload, generated deterministically from a
seed like the sort benchmark's gensort), range-partitioned by sampled splitters:

1. sample: every input block's keys are sampled; quantiles give the splitters;
2. map: each block is generated, partitioned with numpy (``searchsorted`` on the keys' 8-byte
   prefix) and appended to the partitions, one call per node;
3. reduce: each partition is sorted on the node that holds it and stored back sorted;
4. validate: the record count, an order-independent checksum equal to the input's, every
   partition sorted, and partition boundaries in order.

    python examples/distributed_sort.py --records 1000000           # local 3-node cluster
    python examples/distributed_sort.py --address auto --records 1e8  # an existing cluster
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

import numpy as np
import ray

import shoveling_ray as sr
from shoveling_ray.shuffle import Shuffle

RECORD, KEY = 100, 10
# Odd multipliers for an order-independent checksum: sum over records of a 64-bit hash.
_MULT = np.random.default_rng(12345).integers(1, 2**63, 13, dtype=np.uint64) | np.uint64(1)


def generate(seed: int, block: int, count: int) -> np.ndarray:
    """``count`` records of block ``block``: an (count, 100) uint8 array, deterministic."""
    rng = np.random.default_rng([seed, block])
    records = np.empty((count, RECORD), dtype=np.uint8)
    records[:, :KEY] = _random_bytes(rng, count, KEY)  # keys first, so sampling can skip payloads
    records[:, KEY:] = _random_bytes(rng, count, RECORD - KEY)
    return records


def _random_bytes(rng: np.random.Generator, rows: int, width: int) -> np.ndarray:
    return np.frombuffer(rng.bytes(rows * width), dtype=np.uint8).reshape(rows, width)


def block_keys(seed: int, block: int, count: int) -> np.ndarray:
    """The keys' 8-byte prefixes of a block, without generating the payloads."""
    rng = np.random.default_rng([seed, block])
    return prefixes(_random_bytes(rng, count, KEY))


def prefixes(keys_or_records: np.ndarray) -> np.ndarray:
    """Big-endian uint64 of the first 8 key bytes: orders like the keys' first 8 bytes."""
    return np.ascontiguousarray(keys_or_records[:, :8]).view(">u8").ravel().astype(np.uint64)


def checksum(records: np.ndarray) -> int:
    """Order-independent: the sum (mod 2**64) of a 64-bit hash of every record."""
    padded = np.zeros((len(records), 104), dtype=np.uint8)
    padded[:, :RECORD] = records
    words = padded.view("<u8")
    with np.errstate(over="ignore"):
        return int((words * _MULT).sum(axis=1, dtype=np.uint64).sum(dtype=np.uint64))


def sort_records(records: np.ndarray) -> np.ndarray:
    """Records sorted by their 10-byte key."""
    tail = np.ascontiguousarray(records[:, 8:KEY]).view(">u2").ravel()
    return records[np.lexsort((tail, prefixes(records)))]


def blocks_of(n: int, block_records: int) -> list[tuple[int, int]]:
    """``(block index, count)`` for n records in blocks of at most ``block_records``."""
    return [(b, min(block_records, n - b * block_records)) for b in range((n + block_records - 1) // block_records)]


@ray.remote
def sample(seed: int, block: int, count: int, k: int) -> np.ndarray:
    keys = block_keys(seed, block, count)
    return np.random.default_rng(block).choice(keys, size=min(k, count), replace=False)


def make_map(seed: int, splitters: np.ndarray):
    def map_block(spec: tuple[int, int]) -> dict[int, bytes]:
        block, count = spec
        records = generate(seed, block, count)
        part = np.searchsorted(splitters, prefixes(records), side="right")
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(len(splitters) + 2))
        grouped = records[order].reshape(-1)
        # memoryviews of one sorted copy: no per-partition copy before the cache's own
        return {p: memoryview(grouped[bounds[p] * RECORD : bounds[p + 1] * RECORD]) for p in range(len(splitters) + 1)}

    return map_block


def make_reduce(cache: sr.Cache, partitions: list[str]):
    def reduce_partition(index: int, data: bytes) -> dict:
        records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD)
        out = sort_records(records)
        cache.set(partitions[index], memoryview(out.reshape(-1)))  # stored back sorted, on this node
        keys = out[:, :KEY]
        p, t = prefixes(out), np.ascontiguousarray(out[:, 8:KEY]).view(">u2").ravel()
        ordered = bool(np.all((p[1:] > p[:-1]) | ((p[1:] == p[:-1]) & (t[1:] >= t[:-1]))))
        return {
            "count": len(out),
            "checksum": checksum(out),
            "first": keys[0].tobytes() if len(out) else None,
            "last": keys[-1].tobytes() if len(out) else None,
            "ordered": ordered,
        }

    return reduce_partition


@ray.remote
def input_checksum(seed: int, block: int, count: int) -> int:
    return checksum(generate(seed, block, count))


def bar(phase: str, done: int, total: int) -> None:
    """A one-line progress bar on stderr."""
    width = 30
    filled = width * done // max(total, 1)
    end = "\n" if done == total else ""
    print(f"\r  {phase:<7} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end=end, file=sys.stderr, flush=True)


def distributed_sort(cache: sr.Cache, n: int, seed: int = 0, partitions: int | None = None,
                     block_records: int = 250_000, progress=print, progress_bar=None) -> dict:
    """Sort n records through ``cache``; returns the summary (validated: see ``ok``).

    ``progress`` gets a line per phase; ``progress_bar`` (e.g. :func:`bar`) task counts.
    """
    times = {}
    blocks = blocks_of(n, block_records)
    partitions = partitions or max(2 * len(cache.nodes()), min(len(blocks), 64))

    t = time.perf_counter()
    samples = np.concatenate(ray.get([sample.remote(seed, b, c, 2000) for b, c in blocks]))
    splitters = np.quantile(np.sort(samples), np.linspace(0, 1, partitions + 1)[1:-1], method="lower")
    times["sample"] = time.perf_counter() - t
    progress(f"sampled {len(samples):,} keys into {partitions} partitions")

    with Shuffle(cache, partitions) as shuffle:
        reduce_fn = make_reduce(cache, shuffle.partitions)
        shuffle_results = shuffle.run(blocks, make_map(seed, splitters), reduce_fn, progress=progress_bar)
        times["generate+map+push"] = shuffle.times["map"]
        times["reduce+sort"] = shuffle.times["reduce"]
        progress(f"shuffled and sorted {n:,} records")

        t = time.perf_counter()
        expected = sum(ray.get([input_checksum.remote(seed, b, c) for b, c in blocks])) % 2**64
        count = sum(r["count"] for r in shuffle_results)
        got = sum(r["checksum"] for r in shuffle_results) % 2**64
        firsts_lasts = [(r["first"], r["last"]) for r in shuffle_results if r["count"]]
        boundaries = all(a[1] <= b[0] for a, b in zip(firsts_lasts, firsts_lasts[1:]))
        times["validate"] = time.perf_counter() - t
        summary = {
            "records": count,
            "bytes": count * RECORD,
            "ok": count == n and got == expected and boundaries and all(r["ordered"] for r in shuffle_results),
            "checksum_matches": got == expected,
            "partitions": partitions,
            "per_node": dict(Counter(shuffle.placement.values())),
            "reducers_on_their_node": sum(a == b for a, b in zip(shuffle.reducer_nodes, shuffle.placement.values())),
            "times": times,
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=float, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--partitions", type=int)
    parser.add_argument("--address", help="an existing Ray cluster (default: start 3 local nodes)")
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()
    n = int(args.records)

    cluster = None
    if args.address:
        ray.init(address=args.address)
    else:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        for _ in range(args.nodes - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
    cache = sr.Cache("distributed-sort")
    t = time.perf_counter()
    summary = distributed_sort(
        cache, n, args.seed, args.partitions, progress=lambda m: print(f"  {m}", flush=True), progress_bar=bar
    )
    total = time.perf_counter() - t
    print(f"\nsorted {summary['records']:,} records ({summary['bytes'] / 1e9:.2f} GB) in {total:.2f} s")
    for phase, seconds in summary["times"].items():
        print(f"  {phase:<22}{seconds:8.2f} s")
    print(f"  partitions per node: {summary['per_node']}")
    print(f"  reducers on their partition's node: {summary['reducers_on_their_node']}/{summary['partitions']}")
    print(f"  validation: {'OK' if summary['ok'] else 'FAILED'} (checksum {'matches' if summary['checksum_matches'] else 'differs'})")
    cache.close()
    ray.shutdown()
    if cluster is not None:
        cluster.shutdown()
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
