"""A Ray Data pipeline preprocessed once, trained on for several epochs from the cache, and
read again by a second job after the first one's preprocessing is long gone.

    python examples/datasets.py                 # starts its own local three-node cluster
    python examples/datasets.py --address auto  # or runs on an existing Ray cluster

Each block is stored by the task that made it, on its node; every epoch reads the blocks
where they lie, without running the pipeline again; the second job (another driver process)
reads the same dataset by name.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import ray
import ray.data

import shoveling_ray as sr
from demo import connect  # this directory's demo: a local three-node cluster

CACHE, DATASET = "datasets-example", "features"
DIM = 16


def featurize(batch: dict) -> dict:
    """The expensive preprocessing: features and a label for every id."""
    ids = batch["id"]
    rng = np.random.default_rng(int(ids[0]))
    x = rng.standard_normal((len(ids), DIM)).astype(np.float32)
    true_w = np.arange(1, DIM + 1, dtype=np.float32) / DIM
    return {"id": ids, "x": x, "y": x @ true_w + 0.01 * rng.standard_normal(len(ids)).astype(np.float32)}


def train_epoch(ds: ray.data.Dataset, w: np.ndarray, lr: float = 0.05) -> tuple[np.ndarray, float]:
    """One epoch of minibatch SGD for a linear model; returns the weights and the mean loss."""
    losses = []
    for batch in ds.iter_batches(batch_size=4096, batch_format="numpy"):
        x, y = batch["x"], batch["y"]
        err = x @ w - y
        w = w - lr * (x.T @ err) / len(y)
        losses.append(float(np.mean(err**2)))
    return w, float(np.mean(losses))


def checksum(ds: ray.data.Dataset) -> tuple[int, float]:
    """Rows and the sum of every label: what the second job compares."""
    rows, total = 0, 0.0
    for batch in ds.iter_batches(batch_size=8192, batch_format="numpy"):
        rows += len(batch["y"])
        total += float(batch["y"].astype(np.float64).sum())
    return rows, round(total, 3)


def second_job() -> None:
    """Run as another driver: read the dataset the first job left in the cache."""
    cache = sr.Cache(CACHE)
    started = time.perf_counter()
    rows, total = checksum(sr.data.read_dataset(cache, DATASET))
    print(f"second job: {rows:,} rows, label sum {total} in {time.perf_counter() - started:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="an existing Ray cluster (default: start 3 local nodes)")
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--second-job", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    cluster = connect(args.address)
    ray.data.DataContext.get_current().enable_progress_bars = False
    if args.second_job:
        second_job()
        return

    cache = sr.Cache(CACHE)
    pipeline = ray.data.range(args.rows, override_num_blocks=12).map_batches(featurize)

    started = time.perf_counter()
    ds = sr.data.cache_dataset(pipeline, cache, DATASET)  # runs the pipeline: nothing cached yet
    print(f"preprocessed and cached in {time.perf_counter() - started:.2f} s")
    info = sr.data.dataset_info(cache, DATASET)
    print(f"{info!r}\nrows per node: {sorted(info.nodes().values())}")

    w = np.zeros(DIM, dtype=np.float32)
    for epoch in range(args.epochs):
        started = time.perf_counter()
        # every epoch: the cached blocks, read where they lie (the pipeline does not run again)
        w, loss = train_epoch(sr.data.cache_dataset(pipeline, cache, DATASET), w)
        print(f"epoch {epoch}: loss {loss:.4f} in {time.perf_counter() - started:.2f} s")
    rows, total = checksum(ds)
    print(f"this job: {rows:,} rows, label sum {total}")

    # A second driver process, started after this one's pipeline is gone, reads it by name.
    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), os.environ.get("PYTHONPATH")) if p)}
    subprocess.run([sys.executable, __file__, "--address", address, "--second-job"], check=True, env=env)

    sr.data.delete_dataset(cache, DATASET)
    cache.close()
    ray.shutdown()
    if cluster is not None:
        cluster.shutdown()


if __name__ == "__main__":
    main()
