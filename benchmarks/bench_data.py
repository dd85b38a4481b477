"""Datasets in the cache (``shoveling_ray.data``) against Ray Data's own ways, on 3 local nodes.

The dataset: ``--rows`` rows (an int64 id, a float32 vector of 16, an int32 tag: 76 bytes a
row) made by a pipeline of two ``map_batches``. Baselines, measured in the same run:

- an epoch (``iter_batches`` over every row, on the driver) from ``read_dataset`` against the
  first epoch over ``ds.materialize()`` of the same pipeline (Ray's object store: the limit),
  and against running the pipeline again;
- ``write_dataset`` against ``ds.materialize()`` (both run the pipeline), and against the least
  any write that outlives its job does (``bare keepers``: each write task hands its blocks to a
  bare actor on its node, which puts its own copy into the object store: the block must be
  owned by a process that outlives the job, so a copy beyond ``materialize``'s one);
- a second job's (another driver process) first epoch against the writing job's first epoch
  after its write (both read blocks no epoch of theirs pulled yet), and against its later epochs;
- rows a ``map_batches`` after ``read_dataset`` processed on a node holding their block, and
  the same after ``materialize()`` (Ray's own scheduling of the driver's objects).

    python benchmarks/bench_data.py                 # 8 M rows, ~600 MB
    python benchmarks/bench_data.py --rows 200000   # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import ray
import ray.data

import shoveling_ray as sr
from common import MB, Report, parse_args, start, stop

CACHE, NAME = "bench-data", "features"
SECOND_JOB = """
import json, sys, time
import ray, ray.data, shoveling_ray as sr
sys.path.insert(0, sys.argv[3])
from bench_data import epoch
ray.init(address=sys.argv[1], log_to_driver=False)
ray.data.DataContext.get_current().enable_progress_bars = False
ray.data.from_items([{"id": 0}]).take(1)  # Ray Data's imports, as the first job warmed them (no task)
started = time.perf_counter()
rows = epoch(sr.data.read_dataset(sr.Cache("bench-data"), "features"), int(sys.argv[2]))
print(json.dumps({"seconds": time.perf_counter() - started, "rows": rows}))
"""


@ray.remote(num_cpus=0)
class Keeper:
    """A node's own copies of the blocks written on it: nothing else."""

    def __init__(self) -> None:
        self.tables: list = []

    def keep(self, *tables) -> None:
        self.tables.extend(ray.put(table) for table in tables)  # owned here: outlives the writing job

    def clear(self) -> int:
        count, self.tables = len(self.tables), []
        return count


class KeeperSink(ray.data.Datasink):
    """Each write task hands its blocks to the keeper of its node (one call per task)."""

    def __init__(self, keepers: dict) -> None:
        self.keepers = keepers

    def write(self, blocks, ctx) -> None:
        tables = [ray.data.block.BlockAccessor.for_block(block).to_arrow() for block in blocks]
        ray.get(self.keepers[ray.get_runtime_context().get_node_id()].keep.remote(*tables))


def keepers() -> dict:
    """A started :class:`Keeper` on every node, by node id."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    out = {node["NodeID"]: Keeper.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
           .remote() for node in ray.nodes() if node["Alive"]}
    ray.get([keeper.clear.remote() for keeper in out.values()])
    return out


def features(batch: dict) -> dict:
    ids = batch["id"]
    rng = np.random.default_rng(int(ids[0]))
    return {"id": ids, "vec": rng.random((len(ids), 16), dtype=np.float32)}


def tagged(batch: dict) -> dict:
    batch["tag"] = (batch["id"] % 1000).astype(np.int32)
    batch["vec"] = batch["vec"] * np.float32(2.0)
    return batch


def pipeline(rows: int, blocks: int) -> ray.data.Dataset:
    return ray.data.range(rows, override_num_blocks=blocks).map_batches(features).map_batches(tagged)


def epoch(ds: ray.data.Dataset, batch_size: int) -> int:
    """Iterate every row on the driver; returns how many there were."""
    rows = 0
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        rows += len(batch["id"])
    return rows


def where(batch: dict) -> dict:
    return {"id": batch["id"], "node": np.array([ray.get_runtime_context().get_node_id()] * len(batch["id"]))}


def locations(refs: list) -> dict:
    """``ray.experimental.get_object_locations``, a reference at a time: asked for the objects
    of several owners at once, Ray 2.60 aborted the process here once ("Promise already
    satisfied" in ``GetLocationFromOwner``)."""
    return {ref: ray.experimental.get_object_locations([ref])[ref] for ref in refs}


def local_rows(ds: ray.data.Dataset, rows: int, holders: list | None = None) -> tuple[float, float | None]:
    """The share (%) of rows a ``map_batches`` after ``ds`` processed on a node holding their
    block: any copy of it in Ray's object stores (the epochs pulled blocks to the driver's
    node: a task there reads the block without a transfer as well), and the node of
    ``holders[k]`` (block ``k``'s node in the cache), if given."""
    refs = ds.to_arrow_refs()
    copies = locations(refs)
    seen = ds.map_batches(where).to_pandas()
    holder, anywhere = np.empty(rows, dtype=object), np.empty(rows, dtype=object)
    for k, ref in enumerate(refs):
        ids = ray.get(ref)["id"].to_numpy()
        holder[ids] = holders[k] if holders else None
        anywhere[ids] = " ".join({*([holders[k]] if holders else []), *copies[ref]["node_ids"]})
    nodes, ids = seen["node"].to_numpy(), seen["id"].to_numpy()
    local = 100 * float(np.mean([node in held for node, held in zip(nodes, anywhere[ids])]))
    return local, 100 * float(np.mean(nodes == holder[ids])) if holders else None


def timed_once(fn) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def median_of(repeat: int, fn) -> float:
    return float(np.median([timed_once(fn)[0] for _ in range(repeat)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8_000_000)
    parser.add_argument("--blocks", type=int, default=48, help="blocks of the pipeline's source")
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--repeat", type=int, default=3, help="epochs measured per case (the median is shown)")
    parser.add_argument("--object-store-mb", type=int, default=2048, help="per node")
    args = parse_args(parser, {"rows": 20_000, "blocks": 6, "repeat": 1, "object_store_mb": 256})

    cluster = start(nodes=3, object_store_mb=args.object_store_mb)
    ray.data.DataContext.get_current().enable_progress_bars = False
    cache = sr.Cache(CACHE)
    report = Report("data")
    # Ray Data's workers and imports, the cache's actors and the package in the workers, for
    # every case alike
    epoch(pipeline(1000, 3).materialize(), 100)
    epoch(sr.data.cache_dataset(pipeline(1000, 3), cache, "warm-up"), 100)
    sr.data.delete_dataset(cache, "warm-up")
    size = args.rows * 76 / MB
    print(f"{args.rows:,} rows ({size:.0f} MB) in {args.blocks} source blocks, 3 nodes\n")
    check = lambda rows: rows == args.rows or sys.exit(f"an epoch saw {rows} rows, not {args.rows}")  # noqa: E731

    writes, materialize, over_materialized, first_epochs, kept = [], [], [], [], []
    keeping = keepers()
    for _ in range(args.repeat):
        # a fresh write (replacing the last) and a fresh materialize() each time, in turns; the
        # first epoch over each: a second epoch would find the blocks that the first one
        # pulled to the driver's node there already
        seconds, info = timed_once(lambda: sr.data.write_dataset(pipeline(args.rows, args.blocks), cache, NAME))
        writes.append(seconds)
        first_epochs.append(timed_once(lambda: check(epoch(sr.data.read_dataset(cache, NAME), args.batch_size)))[0])
        seconds, materialized = timed_once(lambda: pipeline(args.rows, args.blocks).materialize())
        materialize.append(seconds)
        over_materialized.append(timed_once(lambda: check(epoch(materialized, args.batch_size)))[0])
        materialized = None  # its blocks are freed before the next run
        kept.append(timed_once(lambda: pipeline(args.rows, args.blocks).write_datasink(KeeperSink(keeping)))[0])
        ray.get([keeper.clear.remote() for keeper in keeping.values()])
    ours_write, theirs_write, floor_write = (float(np.median(t)) for t in (writes, materialize, kept))
    over_materialized, first = float(np.median(over_materialized)), float(np.median(first_epochs))

    def ours_epoch():
        check(epoch(sr.data.read_dataset(cache, NAME), args.batch_size))

    ours = median_of(args.repeat, ours_epoch)
    rerun = median_of(args.repeat, lambda: check(epoch(pipeline(args.rows, args.blocks), args.batch_size)))

    bench_dir = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.path.dirname(bench_dir), os.environ.get(
        "PYTHONPATH")) if p)}
    jobs = [json.loads(subprocess.run([sys.executable, "-c", SECOND_JOB, cluster.address, str(args.batch_size),
                                       bench_dir], check=True, capture_output=True, text=True, env=env)
                       .stdout.strip().splitlines()[-1]) for _ in range(args.repeat)]
    for job in jobs:
        check(job["rows"])
    second = float(np.median([job["seconds"] for job in jobs]))

    read = sr.data.read_dataset(cache, NAME)
    local, strict = local_rows(read, args.rows, [block.nodes[0] for block in info.blocks])
    # Ray's own: a map after materialize(), whose blocks the driver owns (task returns)
    materialized = pipeline(args.rows, args.blocks).materialize()
    theirs_local, _ = local_rows(materialized, args.rows)
    materialized = None

    report.add("epoch: read_dataset vs first epoch over materialize()", ours, over_materialized, "s", 0.9,
               higher_is_better=False)
    report.add("epoch: read_dataset vs running the pipeline again", ours, rerun, "s", None, higher_is_better=False)
    report.add("write_dataset vs materialize()", ours_write, theirs_write, "s", 0.8, higher_is_better=False)
    report.add("bare keepers' write (the floor) vs materialize()", floor_write, theirs_write, "s", None,
               higher_is_better=False)
    report.add("write_dataset vs bare keepers' write", ours_write, floor_write, "s", None, higher_is_better=False)
    report.add("epoch: a second job's first vs the writing job's first", second, first, "s", 0.9,
               higher_is_better=False)
    report.add("epoch: a second job's first vs the writing job's later ones", second, ours, "s", None,
               higher_is_better=False)
    report.add("rows mapped after read_dataset on a node holding their block", local, 100.0, "%", 0.9)
    report.add("  of which on their block's node in the cache", strict, 100.0, "%", None)
    if theirs_local:  # (blocks of a few rows live inline in their owner, on no node)
        report.add("  the same vs after materialize() (Ray's own)", local, theirs_local, "%", None)
    report.add("epoch: the first read_dataset after a write vs materialize()", first,
               over_materialized, "s", None, higher_is_better=False)
    print(f"\nblocks: {len(info.blocks)}, rows per node: {sorted(info.nodes().values())}")
    print(f"saved {report.save()}")
    sr.data.delete_dataset(cache, NAME)
    cache.close()
    stop(cluster)


if __name__ == "__main__":
    main()
