"""Soak test (not part of the test run): writes and reads while nodes come and go.

A local cluster (a head and ``--nodes`` workers) and one cache. For ``--minutes``, this process
appends numbered records to ``--ids`` ids (init-placed over the nodes, as shuffle partitions
are; ten more after each event, so new nodes hold some too) and reads them back, while every ``--every`` seconds a random worker node is drained and
removed, or removed without warning (graceful or SIGKILL, in turn), and a new node is added.

After each event every id is checked against what this process had acknowledged: its value
must be exactly the acknowledged records, in order, or the read must raise ``DataLost`` (its
node died without a drain; the id is then written again from empty). A ``CacheMiss`` (counted
as ``missing``) is a silent loss and counts as wrong; with ``--replicas 2`` or more nothing may
be lost: a ``DataLost`` counts as wrong too. Each
append carries a token, so one that met a dying node is simply tried again. It prints what it
did and the count of wrong values, which must be 0, and exits 1 otherwise.

    python benchmarks/soak.py --minutes 10 [--replicas 2]
"""

from __future__ import annotations

import argparse
import random
import time

import ray
from ray.cluster_utils import Cluster

import shoveling_ray as sr
from common import parse_args


def check(cache: sr.Cache, acked: dict[str, list[bytes]], counts: dict, replicas: int) -> None:
    for cache_id, records in acked.items():
        try:
            value = cache.get(cache_id)
        except (sr.DataLost, sr.CacheMiss) as exc:
            # a miss would be a silent loss: every id's name is kept on two nodes
            counts["lost" if isinstance(exc, sr.DataLost) else "missing"] += 1
            if replicas > 1 or isinstance(exc, sr.CacheMiss):
                counts["wrong"] += 1
                print(f"  {'MISSING' if isinstance(exc, sr.CacheMiss) else f'LOST WITH {replicas} COPIES'}: "
                      f"{cache_id}: {exc}", flush=True)
            cache.set(cache_id, b"")  # clears the loss; start again from empty
            records.clear()
            continue
        counts["checked"] += len(records)
        if value != b"".join(records):
            counts["wrong"] += 1
            print(f"  WRONG: {cache_id}: {len(value)} bytes, expected {sum(map(len, records))}", flush=True)
            cache.set(cache_id, b"".join(records))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--nodes", type=int, default=3, help="worker nodes besides the head")
    parser.add_argument("--ids", type=int, default=50)
    parser.add_argument("--every", type=float, default=20, help="seconds between node events")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replicas", type=int, default=1)
    args = parse_args(parser, {"minutes": 0.2, "nodes": 2, "ids": 10, "every": 5})
    rng = random.Random(args.seed)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(args.nodes)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    cache = sr.Cache("soak", consul=False, replicas=args.replicas)
    ids = [f"soak/{i}" for i in range(args.ids)]
    cache.init(ids)
    acked: dict[str, list[bytes]] = {i: [] for i in ids}
    counts = {"appends": 0, "failed appends": 0, "events": 0, "drained": 0, "checked": 0, "lost": 0, "missing": 0,
              "wrong": 0}
    kinds = ["drain", "graceful", "sigkill"]
    end = time.monotonic() + 60 * args.minutes
    next_event = time.monotonic() + args.every
    seq = 0
    while time.monotonic() < end:
        cache_id = rng.choice(ids)
        record = f"{seq};".encode()
        seq += 1
        for _ in range(30):  # a token per record: trying again never appends it twice
            try:
                cache.append_many({cache_id: record}, token=f"r{seq}")
                acked[cache_id].append(record)
                counts["appends"] += 1
                break
            except sr.DataLost:
                counts["failed appends"] += 1
                cache.set(cache_id, b"")
                acked[cache_id].clear()
                break
            except sr.NodeUnavailable:
                time.sleep(1)  # a node just died: Ray has not declared it dead yet
        if time.monotonic() >= next_event:
            kind = kinds[counts["events"] % len(kinds)]
            victim = workers.pop(rng.randrange(len(workers)))
            if kind == "drain" and victim.node_id in cache.nodes():
                cache.drain(victim.node_id)
                counts["drained"] += 1
            cluster.remove_node(victim, allow_graceful=kind != "sigkill")
            workers.append(cluster.add_node(num_cpus=1))
            cluster.wait_for_nodes()
            counts["events"] += 1
            check(cache, acked, counts, args.replicas)
            fresh = [f"soak/{len(ids) + i}" for i in range(10)]  # init starts an actor on the new node
            cache.init(fresh)
            ids += fresh
            acked.update({i: [] for i in fresh})
            print(f"  {time.strftime('%H:%M:%S')} {kind} removal and a new node; {counts}", flush=True)
            next_event = time.monotonic() + args.every
    check(cache, acked, counts, args.replicas)
    print(f"done: {counts}")
    cache.close()
    ray.shutdown()
    cluster.shutdown()
    return 1 if counts["wrong"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
