"""Soak test (not part of the test run): the nemesis of ``tests/nemesis.py`` for as long as asked.

A local cluster (a head and ``--nodes`` workers) and one cache. Rounds of ``--round`` seconds
follow each other for ``--minutes``: in each, writers of every kind (appends with and without a
token, single, batched and through ``writer()``, sets that overwrite, deletes) run on the head
node while a seeded nemesis applies ``--faults`` faults (a node SIGKILLed, removed gracefully,
drained then removed, a node added, ``replicas`` changed between 2 and 3, ``max_memory``
lowered, a node actor stopped past the peer timeout); then every id is read on every node that holds it and checked against what the
writers were told (see the checker in ``tests/nemesis.py``). It prints each round's figures
and the totals, and exits 1 if any promise broke.

    python benchmarks/soak.py --minutes 30 [--replicas 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

import ray
from ray.cluster_utils import Cluster

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import shoveling_ray as sr  # noqa: E402
from tests.nemesis import FAULTS, STALL, Nemesis, check, start_writers  # noqa: E402


def one_round(cluster: Cluster, name: str, seed: int, args: argparse.Namespace) -> dict:
    cache = sr.Cache(name, replicas=args.replicas, consul=False)
    nemesis = Nemesis(cluster, cache, seed, args.replicas, FAULTS + ((STALL,) if args.stall else ()))
    writers = start_writers(cache, args.round)
    time.sleep(2)
    for _ in range(args.faults):
        print(f"    {time.strftime('%H:%M:%S')} {nemesis.step()}", flush=True)
        time.sleep(max(args.round / (args.faults + 1) - 5, 1))
    results = ray.get(writers, timeout=args.round + 600)
    if nemesis.replicas > 1:
        deadline = time.monotonic() + 300
        while sum(s["under_replicated"] for s in cache.stats().values()) and time.monotonic() < deadline:
            time.sleep(1)
    report = check(cache, results, nemesis.replicas, nemesis.unwarned)
    report["faults"] = sum(nemesis.done.values())
    report["acked_calls"] = sum(len(r["acked"]) for r in results)
    report["unknown_calls"] = sum(len(r["unknown"]) for r in results)
    report["by_fault"] = dict(nemesis.done)
    cache.close()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--nodes", type=int, default=3, help="worker nodes besides the head")
    parser.add_argument("--round", type=float, default=60, help="seconds of writing per round")
    parser.add_argument("--faults", type=int, default=3, help="faults per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--no-stall", dest="stall", action="store_false",
                        help="leave out stalling an actor past the peer timeout (its rounds take 2 minutes more)")
    args = parser.parse_args()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(args.nodes):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    totals: Counter = Counter()
    faults: Counter = Counter()
    errors: list[str] = []
    end = time.monotonic() + 60 * args.minutes
    seed = args.seed
    while time.monotonic() < end:
        report = one_round(cluster, f"soak-{seed}", seed, args)
        errors += report.pop("errors")
        faults.update(report.pop("by_fault"))
        totals.update(report)
        print(f"  {time.strftime('%H:%M:%S')} round {seed - args.seed + 1}: {report}", flush=True)
        seed += 1
    print(f"done: {dict(totals)}; faults {dict(faults)}; {len(errors)} broken promises")
    for error in errors[:50]:
        print(f"  BROKEN: {error}")
    ray.shutdown()
    cluster.shutdown()
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
