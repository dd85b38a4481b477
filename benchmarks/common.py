"""Shared helpers for the side-by-side benchmarks: a local multi-node cluster, a timer that
reports the median of repeats, and a results file that ``report.py`` turns into a table and
a chart. Benchmarks print ratios against a baseline measured in the same run; they are not
tests and assert nothing about time."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import ray
from ray._private.internal_api import get_memory_info_reply, get_state_from_address
from ray.cluster_utils import Cluster


def plasma_bytes() -> int:
    """Bytes in use in the cluster's object stores, as the stores count them: an object a
    process still maps counts until it lets go (the cache keeps written payloads that way),
    where Ray's ``object_store_memory`` resource frees it when its owner does."""
    # The connected cluster's address: without it Ray picks "the" local cluster, and fails when
    # other clusters run on the machine too.
    address = ray.get_runtime_context().gcs_address
    return get_memory_info_reply(get_state_from_address(address)).store_stats.object_store_bytes_used


RESULTS = Path(os.environ.get("SHOVELING_BENCH_RESULTS", Path(__file__).resolve().parent / "results"))
MB = 1 << 20


def parse_args(parser: argparse.ArgumentParser, small: dict) -> argparse.Namespace:
    """The command line's arguments, with a ``--small`` option added to ``parser``.

    ``--small`` replaces the defaults with ``small``'s values (arguments given on the command
    line still win): a run of seconds that shows the script works end to end, as
    tests/ray/test_benchmarks_smoke.py runs it. Its figures mean nothing, so its results go to
    a temporary directory unless ``SHOVELING_BENCH_RESULTS`` names one, never over the
    recorded ones in ``results/``.

    Args:
        parser: the benchmark's parser, with its own options.
        small: option destinations (``size_mb``) and their small values.

    Returns:
        The parsed arguments.
    """
    global RESULTS
    sizes = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in small.items())
    parser.add_argument("--small", action="store_true", help=f"a tiny smoke run ({sizes}); results not kept")
    args = parser.parse_args()
    if args.small:
        parser.set_defaults(**small)
        args = parser.parse_args()
        if "SHOVELING_BENCH_RESULTS" not in os.environ:
            RESULTS = Path(tempfile.mkdtemp(prefix="shoveling-bench-"))
    return args


def start(nodes: int = 2, object_store_mb: int = 2048) -> Cluster:
    """A local cluster of ``nodes`` one-CPU nodes; this process connects to the head.

    Without the dashboard: its processes took up to a tenth of the two cores here, for every
    contender alike."""
    head = {"num_cpus": 1, "object_store_memory": object_store_mb * MB, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1, object_store_memory=object_store_mb * MB)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster


def stop(cluster: Cluster) -> None:
    ray.shutdown()
    cluster.shutdown()


def timed(fn, repeat: int = 5, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


class Report:
    """Rows of (case, ours, baseline, unit, ratio, target) printed as they come and saved."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rows: list[dict] = []

    def add(self, case: str, ours: float, baseline: float, unit: str, target: float | None, higher_is_better=True):
        ratio = ours / baseline if higher_is_better else baseline / ours
        row = {"case": case, "ours": ours, "baseline": baseline, "unit": unit, "ratio": ratio, "target": target}
        self.rows.append(row)
        verdict = "" if target is None else ("  ok" if ratio >= target else f"  MISSED (target {target}x)")
        print(f"{case:<58} ours {ours:>12.1f} {unit:<8} baseline {baseline:>12.1f} {unit:<8} ratio {ratio:6.2f}x{verdict}")
        return ratio

    def save(self) -> Path:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        path.write_text(json.dumps(self.rows, indent=1))
        return path


def settle(probe, rounds: int = 40) -> int:
    """Read ``probe`` until two readings agree (frees are asynchronous)."""
    last = probe()
    for _ in range(rounds):
        time.sleep(0.25)
        now = probe()
        if now == last:
            return now
        last = now
    return last
