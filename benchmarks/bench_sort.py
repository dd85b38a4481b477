"""Sort benchmark, every contender on the same records (examples/distributed_sort.py's
generator; generation is included everywhere) on a local 3-node cluster of one CPU each:

- ``shuffle``: examples/distributed_sort.py, on :class:`~shoveling_ray.shuffle.Shuffle`; its
  reducers store the sorted partitions back in the cache;
- ``api``: the same sort written on the public API (``init``, ``append_many`` in the mappers,
  reducers placed by ``scheduling_strategy`` that ``get`` their partition and return it sorted);
  ``api (scratch)``: the same with ``init(ids, scratch=True)``, whose large pieces stay the
  mappers' objects (as a ``Shuffle``'s partitions);
- ``ray core``: the same sort hand-rolled with Ray tasks (mappers return their pieces with
  ``num_returns``, reducers take them as arguments and return the sorted partition);
- ``bare holders`` (``--bare-holders``): a cache of pieces as one would roll it by hand:
  mappers ``ray.put`` their pieces and hand the references to a bare actor on the partition's
  node (one call per node), reducers placed there ask it for the references and ``ray.get``
  them. What keeping pieces by name in actors, instead of passing them from task to task,
  costs when done plainly;
- Ray Data's ``sort`` (pull-based and push-based shuffle; the faster is the baseline),
  validated like the others (a pass over its sorted blocks: count, checksum, order, block
  boundaries); its time without that pass is printed beside it;
- a single-process numpy floor (timed without the validation, which the others include).

The contenders alternate: each round runs every one of them once, ``--repeat`` rounds, each
starting once the object stores are back to what they held before the first. Before the first
round an untimed Ray core sort of the same size warms the cluster (worker processes started,
the object stores' pages touched: on virtual machines that hand freed pages back to the host,
memory a process has not touched lately costs 2-3 s per GB to touch again), so that no
contender's first run pays for the cluster's cold start by running first; ``--cold`` (or
``--skip-ray-core``) skips it.
The first round is still each contender's first: the cache actors' own first use is in it. The ratios use each
contender's best run, and against the Ray core shuffle the first (cold) runs too; the bytes
each contender writes into memory per byte sorted (its copies) are printed beside them.

``--large-pieces``: 6 mappers and 12 partitions whatever the size (pieces of about 14 MB at
1 GB: the object-store path of every piece), instead of blocks of ``--block`` records.
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import psutil
import ray

import shoveling_ray as sr
from shoveling_ray.codec import OBJECT_STORE_BYTES
from common import MB, Report, parse_args, plasma_bytes, start, stop

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import distributed_sort as ds  # noqa: E402

# Ray workers cannot import the example by name: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(ds)


def in_use() -> int:
    """Memory of the whole machine not available to new work (processes and shared memory)."""
    vm = psutil.virtual_memory()
    return vm.total - vm.available


class Peak(threading.Thread):
    """Samples the machine's memory in use and the object store's usage; keeps the peaks."""

    def __init__(self, object_store: bool = True):
        super().__init__(daemon=True)
        self.object_store = object_store
        self.base, self.memory, self.store = in_use(), 0, 0
        self.disk_base, self.disk = written(), 0
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            self.memory = max(self.memory, in_use() - self.base)
            if self.object_store:
                self.store = max(self.store, plasma_bytes())
            self.stopped.wait(0.3)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.join()
        self.disk = written() - self.disk_base

    def __str__(self):
        store = f", object store {self.store / MB:.0f} MiB" if self.object_store else ""
        return f"peak memory +{self.memory / MB:.0f} MiB{store}, disk written {self.disk / MB:.0f} MiB"


def written() -> int:
    """Bytes written to the machine's disks so far (the cache's spill files, Ray's spilling)."""
    counters = psutil.disk_io_counters()
    return counters.write_bytes if counters else 0


def settle(base: int, timeout: float = 30.0) -> None:
    """Wait until the object stores hold at most ``base`` bytes (plus 64 MiB) again, up to
    ``timeout`` s: the last contender's objects are freed asynchronously (Ray Data's left
    gigabytes behind), and each contender should start from the same stores."""
    gc.collect()
    deadline = time.monotonic() + timeout
    while plasma_bytes() > base + 64 * MB and time.monotonic() < deadline:
        time.sleep(0.2)


def numpy_floor(n: int, block: int, seed: int, validate: bool = False) -> float:
    """Seconds to generate and sort in this process; ``validate`` adds the checks the
    distributed sort makes (input and output checksums, order)."""
    t = time.perf_counter()
    records = np.concatenate([ds.generate(seed, b, c) for b, c in ds.blocks_of(n, block)])
    out = ds.sort_records(records)
    assert len(out) == n
    if validate:
        assert ds.checksum(records) == ds.checksum(out) and ds.is_sorted(out)
    return time.perf_counter() - t


def ray_data_sort(n: int, block: int, seed: int, strategy, expected: int) -> tuple[float, float]:
    """Seconds of Ray Data's sort of the same records, validated as ours are (record count,
    output checksum against the input's ``expected``, order within each output block, no two
    blocks' key ranges overlapping; the input's checksum is computed beforehand, untimed),
    and the seconds of the sort alone (``materialize``), before that validation."""
    import ray.data
    from ray.data.context import DataContext

    DataContext.get_current().shuffle_strategy = strategy
    specs = ds.blocks_of(n, block)

    def gen(batch):
        records = np.concatenate([ds.generate(seed, int(b), int(c)) for b, c in zip(batch["block"], batch["count"])])
        return {"k1": ds.prefixes(records), "k2": ds.tails(records).astype(np.uint16), "record": records}

    def summarize(batch):
        records = batch["record"]
        edges = (records[0, :ds.KEY].tobytes(), records[-1, :ds.KEY].tobytes()) if len(records) else (b"", b"")
        return {"count": np.array([len(records)]), "checksum": np.array([ds.checksum(records)], dtype=np.uint64),
                "first": np.array([edges[0]], dtype=object), "last": np.array([edges[1]], dtype=object),
                "ordered": np.array([ds.is_sorted(records)])}

    t = time.perf_counter()
    items = [{"block": b, "count": c} for b, c in specs]
    out = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(gen, batch_size=1)
    done = out.sort(["k1", "k2"]).materialize()
    sorted_at = time.perf_counter()
    summaries = [r for r in done.map_batches(summarize, batch_size=None, batch_format="numpy").take_all() if r["count"]]
    seconds = time.perf_counter() - t
    assert sum(int(r["count"]) for r in summaries) == n
    assert sum(int(r["checksum"]) for r in summaries) % 2**64 == expected
    assert all(r["ordered"] for r in summaries)
    summaries.sort(key=lambda r: r["first"])  # the pass hands them back in any order
    assert all(a["last"] <= b["first"] for a, b in zip(summaries, summaries[1:]))
    return seconds, sorted_at - t


def summary(out: np.ndarray) -> tuple:
    """What a reducer reports of its sorted partition for :func:`validate`: rows, checksum,
    first and last keys, whether it is in order."""
    first, last = (out[0, :ds.KEY].tobytes(), out[-1, :ds.KEY].tobytes()) if len(out) else (None, None)
    return len(out), ds.checksum(out), first, last, ds.is_sorted(out)


def validate(summaries: list[tuple], n: int, expected: int) -> None:
    """The partitions' :func:`summary` s: ``n`` rows whose checksums add up to the input's
    (``expected``), each in order, and in order one after the other."""
    bounds = [(f, l) for count, _, f, l, _ in summaries if count]
    assert sum(s[0] for s in summaries) == n and sum(s[1] for s in summaries) % 2**64 == expected
    assert all(s[4] for s in summaries) and all(a[1] <= b[0] for a, b in zip(bounds, bounds[1:]))


def ray_core_sort(n: int, block: int, seed: int, partitions: int) -> float:
    """Seconds of the same sort hand-rolled with Ray core tasks, validated like ours: map tasks
    return their pieces (``num_returns``), reduce tasks take them as arguments and return the
    sorted partition, which stays in the object store like our sorted output stays cached."""
    blocks = ds.blocks_of(n, block)
    t = time.perf_counter()
    samples = np.concatenate(ray.get([ds.sample.remote(seed, b, c, 2000) for b, c in blocks]))
    splitters = np.quantile(np.sort(samples), np.linspace(0, 1, partitions + 1)[1:-1], method="lower")
    map_block = ds.make_map(seed, splitters)

    @ray.remote(num_returns=partitions + 1)
    def mapper(spec):
        parts, total = map_block(spec)
        return (*(np.frombuffer(parts[p], dtype=np.uint8) for p in range(partitions)), total)

    @ray.remote(num_returns=2)
    def reducer(*pieces):
        out = ds.sort_records(np.concatenate(pieces).reshape(-1, ds.RECORD))
        return out, summary(out)

    maps = [mapper.remote(spec) for spec in blocks]
    reduced = [reducer.remote(*(m[p] for m in maps)) for p in range(partitions)]
    summaries = ray.get([r[1] for r in reduced])
    expected = sum(ray.get([m[partitions] for m in maps])) % 2**64
    seconds = time.perf_counter() - t
    validate(summaries, n, expected)
    del reduced, maps
    return seconds


@ray.remote(num_cpus=0)
class BareHolder:
    """A node's references to the pieces written to it, by partition: nothing else."""

    def __init__(self) -> None:
        self.pieces: dict[int, list] = {}

    def add(self, refs: dict) -> None:
        for partition, ref in refs.items():
            self.pieces.setdefault(partition, []).extend(ref)

    def take(self, partition: int) -> list:
        return self.pieces.pop(partition, [])


def bare_holders_sort(n: int, block: int, seed: int, partitions: int) -> float:
    """Seconds of the same sort through bare holder actors, one per node (see the module
    docstring), validated the same way; partition ``p`` lives on node ``p % nodes``."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    holders = [BareHolder.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
               for node in nodes]
    ray.get([holder.take.remote(-1) for holder in holders])  # started: the cache's actors are, too
    blocks = ds.blocks_of(n, block)
    t = time.perf_counter()
    samples = np.concatenate(ray.get([ds.sample.remote(seed, b, c, 2000) for b, c in blocks]))
    splitters = np.quantile(np.sort(samples), np.linspace(0, 1, partitions + 1)[1:-1], method="lower")
    map_block = ds.make_map(seed, splitters)

    @ray.remote
    def mapper(spec):
        parts, total = map_block(spec)
        by_node: dict[int, dict] = {}
        for p in range(partitions):
            if len(parts[p]):  # nested in a list: the holder keeps the reference, not the value
                by_node.setdefault(p % len(holders), {})[p] = [ray.put(parts[p])]
        ray.get([holders[k].add.remote(refs) for k, refs in by_node.items()])
        return total

    @ray.remote(num_returns=2)
    def reducer(p):
        pieces = ray.get(ray.get(holders[p % len(holders)].take.remote(p)))
        out = ds.sort_records(np.frombuffer(b"".join(pieces), dtype=np.uint8).reshape(-1, ds.RECORD))
        return out, summary(out)

    expected = sum(ray.get([mapper.remote(spec) for spec in blocks])) % 2**64
    reduced = [reducer.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[p % len(nodes)], soft=True))
               .remote(p) for p in range(partitions)]
    summaries = ray.get([r[1] for r in reduced])
    seconds = time.perf_counter() - t
    validate(summaries, n, expected)
    del reduced
    for holder in holders:
        ray.kill(holder)
    return seconds


def run_shuffle(cache: sr.Cache, n: int, block: int, partitions: int) -> tuple[float, dict]:
    """Seconds and summary of examples/distributed_sort.py (``Shuffle``; the reducers store
    the sorted partitions back in the cache)."""
    t = time.perf_counter()
    summary = ds.distributed_sort(cache, n, seed=1, partitions=partitions, block_records=block, progress=lambda m: None)
    seconds = time.perf_counter() - t
    assert summary["ok"], summary
    return seconds, summary


def api_sort(cache: sr.Cache, n: int, block: int, seed: int, partitions: int, scratch: bool = False) -> float:
    """Seconds of the same sort written on the cache's public API, as a user would write it
    beside the Ray core version: ``init`` the partitions, mappers ``append_many`` their pieces,
    reducers placed with ``scheduling_strategy`` ``get`` their partition, sort it and return it
    (it stays in the object store, as Ray core's does). Validated the same way. ``scratch``:
    the partitions are ``init``ed with ``scratch=True``."""
    blocks = ds.blocks_of(n, block)
    t = time.perf_counter()
    samples = np.concatenate(ray.get([ds.sample.remote(seed, b, c, 2000) for b, c in blocks]))
    splitters = np.quantile(np.sort(samples), np.linspace(0, 1, partitions + 1)[1:-1], method="lower")
    map_block = ds.make_map(seed, splitters)
    ids = [f"api-sort/{p:04d}" for p in range(partitions)]
    cache.init(ids, scratch=scratch)

    @ray.remote
    def mapper(spec):
        parts, total = map_block(spec)
        cache.append_many({ids[p]: parts[p] for p in range(partitions) if len(parts[p])})
        return total

    @ray.remote(num_returns=2)
    def reducer(cache_id):
        out = ds.sort_records(np.frombuffer(cache.get(cache_id), dtype=np.uint8).reshape(-1, ds.RECORD))
        return out, summary(out)

    expected = sum(ray.get([mapper.remote(spec) for spec in blocks])) % 2**64
    reduced = [reducer.options(scheduling_strategy=cache.scheduling_strategy(i)).remote(i) for i in ids]
    summaries = ray.get([r[1] for r in reduced])
    seconds = time.perf_counter() - t
    validate(summaries, n, expected)
    del reduced
    for cache_id in ids:
        cache.delete(cache_id)
    return seconds


def copies(contender: str, piece: float, remote: float) -> list[tuple[str, float]]:
    """Bytes written into memory per byte sorted at each step of a contender's data path, for
    incompressible pieces of ``piece`` bytes of which a share ``remote`` crosses nodes (the
    README's copy table)."""
    head = [("generate (two random streams, then records)", 2.0), ("group rows by partition", 1.0)]
    sort = [("sort (row gather)", 1.0)]
    if contender == "numpy":
        return [head[0], ("concatenate the blocks", 1.0), *sort]
    if contender == "ray core":
        return [*head, ("task return -> object store", 1.0), ("transfer to the reducer's node", remote),
                ("np.concatenate of the pieces", 1.0), *sort, ("sorted partition returned", 1.0)]
    large = piece >= OBJECT_STORE_BYTES  # the writer's object, kept mapped by the holder
    cache_path = [
        *head,
        ("append_many -> object store", 1.0),
        ("transfer to the partition's node", remote),
        ("holder keeps the piece (heap copy; 0 for pieces of 1 MiB+)", 0.0 if large else 1.0),
        ("get -> reply object (heap pieces) or the first read's ray.put", 1.0),
        ("reader joins the pieces", 1.0),
        *sort,
    ]
    if contender == "shuffle":  # the example stores the sorted partition back in the cache
        return [*cache_path, ("set back: the writer's object, kept mapped by the holder", 1.0)]
    return [*cache_path, ("sorted partition returned", 1.0)]


def print_copies(contender: str, steps: list[tuple[str, float]]) -> None:
    print(f"  {contender}: {sum(c for _, c in steps):.2f} bytes written per byte sorted")
    for step, c in steps:
        print(f"    {c:5.2f}  {step}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", default="10e6", help="comma separated, e.g. 10e6,20e6")
    parser.add_argument("--block", type=int, default=250_000)
    parser.add_argument("--repeat", type=int, default=2, help="rounds of every contender (best counts)")
    parser.add_argument("--skip-ray-data", action="store_true")
    parser.add_argument("--ray-data-max-records", type=float, default=20e6, help="larger sizes skip Ray Data")
    parser.add_argument("--object-store-mb", type=int, help="per node (default: 3x the largest size, 512-6000)")
    parser.add_argument("--max-memory-mb", type=int, help="the cache's max_memory per node (default: the object store)")
    parser.add_argument("--skip-floor", action="store_true", help="no numpy floor (it needs the data in memory)")
    parser.add_argument("--skip-ray-core", action="store_true", help="no hand-rolled Ray core shuffle")
    parser.add_argument("--skip-api", action="store_true", help="no sort written on the public API")
    parser.add_argument("--bare-holders", action="store_true",
                        help="also the sort through bare holder actors (a cache of pieces rolled by hand)")
    parser.add_argument("--partitions", type=int, help="default: 2 per node, up to one per block (64 at most)")
    parser.add_argument("--cold", action="store_true", help="no warm-up sort before the first round")
    parser.add_argument("--large-pieces", action="store_true",
                        help="6 mappers x 12 partitions (pieces of ~14 MB at 1 GB) instead of --block")
    args = parse_args(parser, {"records": "40000", "block": 10000, "repeat": 1})
    sizes = [int(float(s)) for s in args.records.split(",")]
    from ray.data.context import ShuffleStrategy

    report = Report("sort-spill" if args.max_memory_mb else "sort-large" if args.large_pieces else "sort")
    store_mb = args.object_store_mb or min(max(512, 3 * max(sizes) * 100 // MB), 6000)
    cluster = start(nodes=3, object_store_mb=store_mb)
    max_memory = args.max_memory_mb * MB if args.max_memory_mb else None
    print(f"3 nodes, object stores {store_mb} MiB, cache max_memory {args.max_memory_mb or store_mb} MiB", flush=True)
    cache = sr.Cache("bench-sort", max_memory=max_memory)
    base = plasma_bytes()
    for n in sizes:
        gb = n * 100 / 1e9
        block = -(-n // 6) if args.large_pieces else args.block
        blocks = len(ds.blocks_of(n, block))
        partitions = args.partitions or (12 if args.large_pieces else max(6, min(blocks, 64)))
        print(f"== {n:,} records ({gb:.1f} GB), {blocks} blocks, {partitions} partitions; "
              f"{args.repeat} rounds, each contender once per round", flush=True)
        contenders = {"shuffle": partial(run_shuffle, cache, n, block, partitions)}
        if not args.skip_api:
            contenders["api"] = partial(api_sort, cache, n, block, 1, partitions)
            contenders["api (scratch)"] = partial(api_sort, cache, n, block, 1, partitions, scratch=True)
        if not args.skip_ray_core:
            contenders["ray core"] = partial(ray_core_sort, n, block, 1, partitions)
        if args.bare_holders:
            contenders["bare holders"] = partial(bare_holders_sort, n, block, 1, partitions)
        if not args.skip_floor:
            contenders["numpy"] = partial(numpy_floor, n, block, 1)
        if not (args.skip_ray_data or n > args.ray_data_max_records):
            expected = sum(ds.checksum(ds.generate(1, b, c)) for b, c in ds.blocks_of(n, block)) % 2**64
            for strategy in (ShuffleStrategy.SORT_SHUFFLE_PULL_BASED, ShuffleStrategy.SORT_SHUFFLE_PUSH_BASED):
                contenders[f"ray data {strategy.value}"] = partial(ray_data_sort, n, block, 1, strategy, expected)
        if not (args.cold or args.skip_ray_core):  # (no Ray core sort: too large for one)
            print(f"  warm-up (untimed): a Ray core sort of the same size, {ray_core_sort(n, block, 2, partitions):.2f}s",
                  flush=True)
        runs: dict[str, list[float]] = {name: [] for name in contenders}
        unvalidated: list[float] = []  # Ray Data's sorts without their validation
        summaries = []
        for round_ in range(args.repeat):
            for name, run in contenders.items():
                settle(base)
                with Peak(object_store=name != "numpy") as peak:
                    seconds = run()
                if name == "shuffle":
                    seconds, summary = seconds
                    summaries.append(summary)
                elif name.startswith("ray data"):
                    seconds, sort_only = seconds
                    unvalidated.append(sort_only)
                    print(f"  round {round_ + 1} {name}: sort alone {sort_only:.2f}s, validation {seconds - sort_only:.2f}s")
                runs[name].append(seconds)
                print(f"  round {round_ + 1} {name}: {seconds:.2f}s; {peak}; "
                      f"{peak.disk / (n * 100):.2f} disk bytes per byte sorted", flush=True)
        best = {name: min(times) for name, times in runs.items()}
        print("  first runs: " + ", ".join(f"{name} {times[0]:.2f}s" for name, times in runs.items()))
        summary = summaries[runs["shuffle"].index(best["shuffle"])]
        print("  Shuffle's best run: " + ", ".join(f"{k} {v:.2f}s" for k, v in summary["times"].items()) + "; summed over tasks: "
              + ", ".join(f"{k} {v:.2f}s" for k, v in summary["task_stats"].items() if k.endswith("seconds")))
        if "numpy" in contenders:
            print(f"  numpy floor with the same validation: {numpy_floor(n, block, 1, validate=True):.2f}s (one run)")
        stats = summary["task_stats"]
        piece = summary["bytes"] / partitions / blocks
        for name in ("shuffle", "api", "ray core", "numpy"):
            if name in contenders:
                print_copies(name, copies(name, piece, stats["remote_bytes"] / max(stats["bytes"], 1)))
        labels = {"shuffle": "sort (Shuffle)", "api": "sort (public API)", "api (scratch)": "sort (public API, scratch)",
                  "bare holders": "sort (bare holder actors)"}
        mode = ", 6x12 large pieces" if args.large_pieces else ""
        data = [t for k, t in best.items() if k.startswith("ray data")]
        if unvalidated:
            print(f"  Ray Data's fastest sort without its validation: {min(unvalidated):.2f}s; against it "
                  + ", ".join(f"{name} {min(unvalidated) / best[name]:.2f}x" for name in ("shuffle", "api") if name in best))
        for name in labels:
            if name not in best:
                continue
            rate = 1000 * gb / best[name]
            label = f"{labels[name]} {gb:.1f} GB{mode}"
            if "numpy" in best:
                report.add(f"{label} vs single-process numpy (floor)", rate, 1000 * gb / best["numpy"], "MB/s", None)
            if "ray core" in best:
                target = None if name == "bare holders" else 1.0
                report.add(f"{label} vs hand-rolled Ray core shuffle", rate, 1000 * gb / best["ray core"], "MB/s", target)
                report.add(f"{label}, first runs, vs the same", 1000 * gb / runs[name][0], 1000 * gb / runs["ray core"][0],
                           "MB/s", target)
            if "bare holders" in best and name != "bare holders":
                report.add(f"{label} vs bare holder actors (rolled by hand)", rate, 1000 * gb / best["bare holders"],
                           "MB/s", None)
            if data:
                target = 3.0 if max_memory else 5.0  # spilling (issue 12) / in memory (issue 14)
                report.add(f"{label} vs Ray Data sort (faster strategy)", rate, 1000 * gb / min(data), "MB/s", target)
    cache.close()
    stop(cluster)
    print(f"saved {report.save()}")


if __name__ == "__main__":
    main()
