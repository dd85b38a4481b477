"""Sort benchmark: shoveling_ray's distributed sort vs Ray Data's ``sort`` (pull-based and
push-based shuffle; the faster is the baseline) vs a single-process numpy floor, on the same
records (examples/distributed_sort.py's generator; generation is included everywhere), on a
local 3-node cluster of one CPU each."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np
import ray

import shoveling_ray as sr
from common import MB, Report, start, stop
from bench_compression_memory import plasma_bytes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import distributed_sort as ds  # noqa: E402

# Ray workers cannot import the example by name: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(ds)


class Peak(threading.Thread):
    """Samples the object store's usage; ``peak`` is the highest seen."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stopped = 0, threading.Event()

    def run(self):
        while not self.stopped.is_set():
            self.peak = max(self.peak, plasma_bytes())
            self.stopped.wait(0.5)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.join()


def numpy_floor(n: int, block: int, seed: int) -> float:
    t = time.perf_counter()
    records = np.concatenate([ds.generate(seed, b, c) for b, c in ds.blocks_of(n, block)])
    out = ds.sort_records(records)
    assert len(out) == n
    return time.perf_counter() - t


def ray_data_sort(n: int, block: int, seed: int, strategy) -> float:
    import ray.data
    from ray.data.context import DataContext

    DataContext.get_current().shuffle_strategy = strategy
    specs = ds.blocks_of(n, block)

    def gen(batch):
        records = np.concatenate([ds.generate(seed, int(b), int(c)) for b, c in zip(batch["block"], batch["count"])])
        tail = np.ascontiguousarray(records[:, 8:10]).view(">u2").ravel().astype(np.uint16)
        return {"k1": ds.prefixes(records), "k2": tail, "record": records}

    t = time.perf_counter()
    items = [{"block": b, "count": c} for b, c in specs]
    out = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(gen, batch_size=1)
    total = out.sort(["k1", "k2"]).materialize().count()
    assert total == n, total
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", default="10e6", help="comma separated, e.g. 10e6,20e6")
    parser.add_argument("--block", type=int, default=250_000)
    parser.add_argument("--skip-ray-data", action="store_true")
    args = parser.parse_args()
    sizes = [int(float(s)) for s in args.records.split(",")]
    from ray.data.context import ShuffleStrategy

    report = Report("sort")
    cluster = start(nodes=3, object_store_mb=max(512, 3 * max(sizes) * 100 // MB))
    for n in sizes:
        gb = n * 100 / 1e9
        floor = numpy_floor(n, args.block, seed=1)
        cache = sr.Cache("bench-sort")
        with Peak() as peak:
            t = time.perf_counter()
            summary = ds.distributed_sort(cache, n, seed=1, block_records=args.block, progress=lambda m: None)
            ours = time.perf_counter() - t
        assert summary["ok"], summary
        cache.close()
        phases = ", ".join(f"{k} {v:.2f}s" for k, v in summary["times"].items())
        print(f"shoveling_ray {gb:.1f} GB: {ours:.2f}s ({phases}); object store peak {peak.peak / MB:.0f} MiB")
        report.add(f"sort {gb:.1f} GB vs single-process numpy (floor)", 1000 * gb / ours, 1000 * gb / floor, "MB/s", 1.0)
        if args.skip_ray_data:
            continue
        best = None
        for strategy in (ShuffleStrategy.SORT_SHUFFLE_PULL_BASED, ShuffleStrategy.SORT_SHUFFLE_PUSH_BASED):
            with Peak() as peak:
                seconds = ray_data_sort(n, args.block, 1, strategy)
            print(f"ray data {strategy.value} {gb:.1f} GB: {seconds:.2f}s; object store peak {peak.peak / MB:.0f} MiB")
            best = seconds if best is None else min(best, seconds)
        report.add(f"sort {gb:.1f} GB vs Ray Data sort (faster strategy)", 1000 * gb / ours, 1000 * gb / best, "MB/s", 8.0)
    stop(cluster)
    print(f"saved {report.save()}")


if __name__ == "__main__":
    main()
