"""shoveling_ray in one minute: a local three-node Ray cluster, 64 partitions created with
``init``, mapper tasks appending into them, reducer tasks scheduled where their partition
lives, and a report of where the data is and what each step cost.

    python examples/demo.py                 # starts its own local cluster, no Consul needed
    python examples/demo.py --address auto  # or runs on an existing Ray cluster
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import ray
from ray.cluster_utils import Cluster

import shoveling_ray as sr


@ray.remote
def mapper(cache: sr.Cache, mapper_id: int, partitions: list[str], records: int) -> str:
    batch: dict[str, bytearray] = {p: bytearray() for p in partitions}
    for seq in range(records):
        batch[partitions[(seq * 7 + mapper_id) % len(partitions)]] += f"{mapper_id}:{seq};".encode()
    cache.append_many(batch)  # one actor call per node
    return ray.get_runtime_context().get_node_id()


@ray.remote
def reducer(cache: sr.Cache, partition: str) -> tuple[str, int]:
    data = cache.get(partition)
    return ray.get_runtime_context().get_node_id(), data.count(b";")


def connect(address: str | None) -> Cluster | None:
    """Connect to the Ray cluster at ``address``, or start a local one of three one-CPU nodes
    and return it (the caller shuts it down)."""
    if address:
        ray.init(address=address, log_to_driver=False)
        return None
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="an existing Ray cluster (default: start 3 local nodes)")
    parser.add_argument("--partitions", type=int, default=64)
    parser.add_argument("--mappers", type=int, default=8)
    parser.add_argument("--records", type=int, default=20_000, help="records per mapper")
    args = parser.parse_args()

    cluster = connect(args.address)

    timings = {}
    t = time.perf_counter()
    cache = sr.Cache("demo")
    timings["open cache"] = time.perf_counter() - t

    parts = [f"part-{i:04d}" for i in range(args.partitions)]
    t = time.perf_counter()
    placed = cache.init(parts, strategy="uniform_nodes")
    timings[f"init {len(parts)} ids"] = time.perf_counter() - t

    t = time.perf_counter()
    ray.get([mapper.remote(cache, m, parts, args.records) for m in range(args.mappers)])
    timings[f"{args.mappers} mappers x {args.records} appends"] = time.perf_counter() - t

    t = time.perf_counter()
    refs = [reducer.options(scheduling_strategy=cache.scheduling_strategy(p)).remote(cache, p) for p in parts]
    results = ray.get(refs)
    timings[f"{len(parts)} reducers"] = time.perf_counter() - t

    local = sum(node == placed[p] for p, (node, _) in zip(parts, results))
    total = sum(n for _, n in results)
    stats = cache.stats()
    print(f"\nshoveling_ray {sr.__version__} on {len(cache.nodes())} Ray nodes\n")
    print(f"{'node':<14}{'partitions':>11}{'ids':>7}{'stored':>12}{'raw':>12}")
    per_node = Counter(placed.values())
    for node in cache.nodes():
        s = stats[node]
        print(f"{node[:12]:<14}{per_node[node]:>11}{s['ids']:>7}{s['used']:>12,}{s['raw']:>12,}")
    print(f"\nrecords appended: {args.mappers * args.records:,}; records read back: {total:,}")
    print(f"reducers that ran on their partition's node: {local}/{len(parts)}\n")
    for step, seconds in timings.items():
        print(f"  {step:<32}{seconds * 1000:>10.1f} ms")
    ok = total == args.mappers * args.records and local == len(parts)
    cache.close()
    ray.shutdown()
    if cluster is not None:
        cluster.shutdown()
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
