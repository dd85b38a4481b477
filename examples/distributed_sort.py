"""A validated distributed sort through shoveling_ray's shuffle.

Sorts N records of 100 bytes (10-byte key, 90-byte payload, generated deterministically from a
seed like the sort benchmark's gensort), range-partitioned by sampled splitters:

1. sample: every input block's keys are sampled; quantiles give the splitters;
2. map: each block is generated, partitioned with numpy (a table on the top bits of the keys'
   8-byte prefix, ``searchsorted`` where a splitter shares them) and appended to the
   partitions, one call per node;
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
# Per-column odd multipliers of the order-independent checksum (see ``checksum``).
_MULT = np.random.default_rng(12345).integers(1, 2**63, 13, dtype=np.uint64) | np.uint64(1)
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _random_bytes(seed: int, block: int, stream: int, rows: int, width: int) -> np.ndarray:
    # random_raw fills one uint64 array: about 10x faster than Generator.bytes, which copies.
    rng = np.random.default_rng([seed, block, stream])
    nbytes = rows * width
    return rng.bit_generator.random_raw(-(-nbytes // 8)).view(np.uint8)[:nbytes].reshape(rows, width)


def generate(seed: int, block: int, count: int) -> np.ndarray:
    """``count`` records of block ``block``: an (count, 100) uint8 array, deterministic.

    Keys and payloads come from two streams, so sampling can draw the keys alone."""
    records = np.empty((count, RECORD), dtype=np.uint8)
    records[:, :KEY] = _random_bytes(seed, block, 0, count, KEY)
    records[:, KEY:] = _random_bytes(seed, block, 1, count, RECORD - KEY)
    return records


def block_keys(seed: int, block: int, count: int) -> np.ndarray:
    """The keys' 8-byte prefixes of a block, without generating the payloads."""
    return prefixes(_random_bytes(seed, block, 0, count, KEY))


def prefixes(keys_or_records: np.ndarray) -> np.ndarray:
    """Big-endian uint64 of the first 8 key bytes: orders like the keys' first 8 bytes."""
    return np.ascontiguousarray(keys_or_records[:, :8]).view(">u8").ravel().astype(np.uint64)


def tails(records: np.ndarray) -> np.ndarray:
    """Key bytes 8 and 9 as a big-endian uint16: with the prefix, orders like the whole key."""
    return np.ascontiguousarray(records[:, 8:KEY]).view(">u2").ravel()


def checksum(records: np.ndarray, chunk: int = 1 << 16) -> int:
    """Order-independent: the sum (mod 2**64) of a 64-bit hash of every record.

    The hash mixes its 13 words non-linearly, so records whose parts were swapped change it."""
    records = np.ascontiguousarray(records)
    total = 0
    with np.errstate(over="ignore"):
        for start in range(0, len(records), chunk):
            rows = records[start : start + chunk]
            buf = rows.reshape(-1)
            words = np.ndarray((len(rows), 12), dtype="<u8", buffer=buf, strides=(RECORD, 8))
            last = np.ndarray((len(rows),), dtype="<u4", buffer=buf, offset=96, strides=(RECORD,))
            h = words @ _MULT[:12] + last * _MULT[12]  # matmul: one pass, no (rows, 12) temporary
            h ^= h >> np.uint64(31)
            h *= _MIX
            h ^= h >> np.uint64(29)
            total += int(h.sum(dtype=np.uint64))
    return total % 2**64


def sort_order(records: np.ndarray) -> np.ndarray:
    """The permutation that sorts ``records`` by their 10-byte key.

    Sorts one uint64 per record, the key's leading bits with the record's index packed below
    them (numpy's vectorised sort of plain integers is several times faster than ``argsort``),
    then re-sorts exactly the runs whose packed bits tie."""
    n = len(records)
    bits = max(int(n - 1).bit_length(), 1)
    prefix = prefixes(records)
    packed = (prefix >> np.uint64(bits)) << np.uint64(bits)
    packed |= np.arange(n, dtype=np.uint64)
    packed.sort()
    order = (packed & np.uint64((1 << bits) - 1)).astype(np.intp)
    truncated = packed >> np.uint64(bits)
    tied = np.flatnonzero(truncated[1:] == truncated[:-1])
    if len(tied):
        at = np.union1d(tied, tied + 1)  # tied runs, each contiguous, runs in key order
        members = order[at]
        order[at] = members[np.lexsort((tails(records[members]), prefix[members]))]
    return order


def take_rows(records: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``records[order]`` through a 100-byte void view: several times faster than indexing."""
    rows = np.ascontiguousarray(records).view(f"V{RECORD}").ravel()
    return np.take(rows, order).view(np.uint8).reshape(-1, RECORD)


def sort_records(records: np.ndarray) -> np.ndarray:
    """Records sorted by their 10-byte key."""
    return take_rows(records, sort_order(records))


def is_sorted(records: np.ndarray) -> bool:
    """Whether the records are in key order."""
    p, t = prefixes(records), tails(records)
    return bool(np.all((p[1:] > p[:-1]) | ((p[1:] == p[:-1]) & (t[1:] >= t[:-1]))))


def blocks_of(n: int, block_records: int) -> list[tuple[int, int]]:
    """``(block index, count)`` for n records in blocks of at most ``block_records``."""
    return [(b, min(block_records, n - b * block_records)) for b in range((n + block_records - 1) // block_records)]


@ray.remote
def sample(seed: int, block: int, count: int, k: int) -> np.ndarray:
    keys = block_keys(seed, block, count)
    return np.random.default_rng(block).choice(keys, size=min(k, count), replace=False)


class Partitioner:
    """The partition of each key prefix, ``searchsorted(splitters, prefix, side="right")``,
    ten times faster: a table gives it from the prefix's top bits, and only the prefixes whose
    top bits a splitter shares (about one in a hundred) are searched."""

    TOP = 12  # the table's size is 2**TOP

    def __init__(self, splitters: np.ndarray):
        self.splitters = np.asarray(splitters, dtype=np.uint64)
        shift = np.uint64(64 - self.TOP)
        first = np.arange(1 << self.TOP, dtype=np.uint64) << shift
        self.table = np.searchsorted(self.splitters, first, side="right").astype(np.uint16)
        last = first | np.uint64((1 << (64 - self.TOP)) - 1)
        self.exact = self.table == np.searchsorted(self.splitters, last, side="right")

    def __call__(self, keys: np.ndarray) -> np.ndarray:
        top = keys >> np.uint64(64 - self.TOP)
        part = self.table[top]
        shared = np.flatnonzero(~self.exact[top])
        part[shared] = np.searchsorted(self.splitters, keys[shared], side="right")
        return part


def make_map(seed: int, splitters: np.ndarray):
    partition = Partitioner(splitters)

    def map_block(spec: tuple[int, int]) -> tuple[dict[int, memoryview], int]:
        block, count = spec
        records = generate(seed, block, count)
        part = partition(prefixes(records))
        order = np.argsort(part, kind="stable")  # a radix sort on 16-bit partition numbers
        bounds = np.concatenate(([0], np.cumsum(np.bincount(part, minlength=len(splitters) + 1)))) * RECORD
        grouped = take_rows(records, order).reshape(-1)
        # memoryviews of one grouped copy: no per-partition copy before the cache's own
        parts = {p: memoryview(grouped[bounds[p] : bounds[p + 1]]) for p in range(len(splitters) + 1)}
        return parts, checksum(records)  # the input's checksum, for the validation

    return map_block


def make_reduce(cache: sr.Cache, partitions: list[str]):
    def reduce_partition(index: int, data: bytes) -> dict:
        out = sort_records(np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD))
        cache.set(partitions[index], memoryview(out.reshape(-1)))  # stored back sorted, on this node
        return {
            "count": len(out),
            "checksum": checksum(out),
            "first": out[0, :KEY].tobytes() if len(out) else None,
            "last": out[-1, :KEY].tobytes() if len(out) else None,
            "ordered": is_sorted(out),
        }

    return reduce_partition


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
        expected = sum(shuffle.map_results) % 2**64
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
            "blocks": len(blocks),
            "per_node": dict(Counter(shuffle.placement.values())),
            "reducers_on_their_node": sum(a == b for a, b in zip(shuffle.reducer_nodes, shuffle.placement.values())),
            "times": times,
            "task_stats": shuffle.task_stats,
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

        # Cluster's default object stores (150 MiB a node): what does not fit spills to disk.
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
