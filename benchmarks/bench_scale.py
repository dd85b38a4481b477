"""What a cache costs as it grows: per node (``--nodes``), and per id beside it.

Sections (each its own function, listed in ``SECTIONS`` with its flag; a run without a flag
runs them all):

- ``--nodes``: one local cluster grown through ``--node-counts`` (4, 8, 16, 32 nodes of one
  CPU). At each count, a fresh cache is opened and measured: opening it (``Cache()``: the
  coordinator and one actor per node) against starting as many bare pinned actors (the
  process starts alone: the baseline), attaching to it again (``join`` without change), one
  view change without any process start (``configure(replicas=2)``: every member takes the new
  view), the view's size as a client receives it and as each actor receives it, ``init`` of
  ``--ids-per-run`` ids and ``set_many`` of as many 100-byte values, ``scan_ids`` of them all,
  and the calls made: the coordinator's to the actors (``counts()``) and the actors' to each
  other (``stats()``'s ``peer_calls``). Then at the largest count, with ``replicas=2``: a
  worker node SIGKILLed; every id must still read (nothing lost) and the copies are rebuilt
  (the time until ``under_replicated`` is 0 everywhere, and the calls it took).
  Ratios: the cache's opening over the bare starts; per member, a view change's seconds and
  calls against those at the smallest count (1.0: it grows as the number of nodes; above 1.0:
  slower than that).

docs/scaling.md extrapolates these figures to 1,000 nodes.
"""

from __future__ import annotations

import argparse
import json
import time

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import common
import shoveling_ray as sr
from common import MB, Report, parse_args, start, stop


@ray.remote(num_cpus=0)
class Bare:
    """A process start and nothing else: the baseline of opening a cache."""

    def ping(self) -> str:
        return ray.get_runtime_context().get_node_id()


def alive_nodes() -> list[str]:
    return sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])


def bare_starts(nodes: list[str]) -> float:
    """Seconds to start one pinned actor per node, plus one more (the coordinator's part), and
    hear from each; they are killed after."""
    t = time.perf_counter()
    actors = [Bare.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote()
              for n in [*nodes, nodes[0]]]
    ray.get([a.ping.remote() for a in actors])
    seconds = time.perf_counter() - t
    for actor in actors:
        ray.kill(actor)
    return seconds


def opening(name: str) -> float:
    """Seconds to open (and start) a new cache; it is closed after."""
    t = time.perf_counter()
    cache = sr.Cache(name, consul=False)
    seconds = time.perf_counter() - t
    cache.close()
    return seconds


def peer_calls(cache: sr.Cache) -> int:
    return sum(s["peer_calls"] for s in cache.stats().values())


def coordinator_calls(cache: sr.Cache) -> dict:
    return ray.get(cache._coordinator.counts.remote())


def sent_since(before: dict, after: dict) -> int:
    return sum(after["sent"].values()) - sum(before["sent"].values())


def measure(n: int, ids_per_run: int) -> dict:
    """One row of the node table on the cluster as it is (``n`` nodes)."""
    nodes = alive_nodes()
    assert len(nodes) == n, (len(nodes), n)
    row = {"nodes": n, "bare": bare_starts(nodes), "open": opening(f"scale-{n}-first")}
    row["bare"] = min(row["bare"], bare_starts(nodes))  # twice each, alternating: the machine is noisy
    t = time.perf_counter()
    cache = sr.Cache(f"scale-{n}", consul=False)
    row["open"] = min(row["open"], time.perf_counter() - t)
    t = time.perf_counter()
    sr.Cache(f"scale-{n}")
    row["attach"] = time.perf_counter() - t
    counts, peers = coordinator_calls(cache), peer_calls(cache)
    t = time.perf_counter()
    cache.configure(replicas=2)
    row["view_change"] = time.perf_counter() - t
    after = coordinator_calls(cache)
    row["view_calls"] = sent_since(counts, after)
    row["view_peer_calls"] = peer_calls(cache) - peers
    view = cache._router.view
    row["view_bytes"] = len(ray.cloudpickle.dumps(view))
    row["rebuild_bytes"] = len(ray.cloudpickle.dumps((view.chains, view.chains, [], dict(view.members), 2,
                                                      False, view.zones)))
    ids = [f"n{n}-{i}" for i in range(ids_per_run)]
    counts, peers = coordinator_calls(cache), peer_calls(cache)
    t = time.perf_counter()
    cache.init(ids)
    row["init"] = time.perf_counter() - t
    row["init_calls"] = sent_since(counts, coordinator_calls(cache))
    row["init_peer_calls"] = peer_calls(cache) - peers
    values = {f"v{n}-{i}": b"x" * 100 for i in range(ids_per_run)}
    peers = peer_calls(cache)
    t = time.perf_counter()
    cache.set_many(values)
    row["set_many"] = time.perf_counter() - t
    row["set_peer_calls"] = peer_calls(cache) - peers
    t = time.perf_counter()
    listed = sum(1 for _ in cache.scan_ids(batch=5000))
    row["scan"] = time.perf_counter() - t
    assert listed == 2 * ids_per_run, listed
    cache.close()
    return row


def node_loss(cluster, n: int, ids_per_run: int) -> dict:
    """The scenario of issue 26 at ``n`` nodes: ``replicas=2``, ids created by ``init`` and by
    ``set_many``, a worker node SIGKILLed; nothing may be lost."""
    cache = sr.Cache(f"scale-loss-{n}", consul=False, replicas=2)
    ids = [f"loss-i{i}" for i in range(ids_per_run)]
    values = {f"loss-s{i}": i.to_bytes(4, "little") * 25 for i in range(ids_per_run)}
    t = time.perf_counter()
    cache.init(ids)
    cache.set_many(values)
    row = {"nodes": n, "fill": time.perf_counter() - t}
    here = ray.get_runtime_context().get_node_id()
    victim = next(node for node in cluster.worker_nodes if node.node_id != here)
    counts, peers = coordinator_calls(cache), peer_calls(cache)
    t = time.perf_counter()
    cluster.remove_node(victim, allow_graceful=False)
    while coordinator_calls(cache)["members"] == n:  # Ray declares the node dead (13-16 s here)
        time.sleep(0.2)
    row["noticed"] = time.perf_counter() - t
    got = cache.get_many(list(values))
    assert got == values, "a value was lost or changed"
    assert cache.get_many(ids) == dict.fromkeys(ids, b""), "an init-created id was lost"
    row["read_all"] = time.perf_counter() - t - row["noticed"]
    while any(s["under_replicated"] for s in cache.stats().values()):
        time.sleep(0.2)
    row["rebuilt"] = time.perf_counter() - t - row["noticed"]
    row["lost"] = len(cache.lost_ids())
    row["loss_calls"] = sent_since(counts, coordinator_calls(cache))
    row["loss_peer_calls"] = peer_calls(cache) - peers
    cache.close()
    return row


def add_node(cluster, object_store_mb: int, tries: int = 3) -> None:
    """One more node; tried again when its raylet did not start in time (the two cores here
    are shared: a node's start timed out once while other clusters ran)."""
    for attempt in range(tries):
        try:
            cluster.add_node(num_cpus=1, object_store_memory=object_store_mb * MB)
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for it
            if attempt == tries - 1:
                raise
            print(f"a node did not start ({exc}); trying again", flush=True)


def nodes_section(args: argparse.Namespace, report: Report) -> None:
    counts = [int(c) for c in args.node_counts.split(",")]
    cluster = start(nodes=counts[0], object_store_mb=args.object_store_mb)
    rows = []
    try:
        for n in counts:
            while len(alive_nodes()) < n:
                add_node(cluster, args.object_store_mb)
            cluster.wait_for_nodes()
            rows.append(measure(n, args.ids_per_run))
            print(table([rows[-1]], header=len(rows) == 1), flush=True)
        loss = node_loss(cluster, counts[-1], args.ids_per_run)
    finally:
        stop(cluster)
    first = rows[0]
    for row in rows:
        n = row["nodes"]
        report.add(f"open {n} nodes (s): cache vs bare actor starts", row["open"], row["bare"], "s", None,
                   higher_is_better=False)
        report.add(f"view change {n} nodes: s per member vs at {first['nodes']}", row["view_change"] / n,
                   first["view_change"] / first["nodes"], "s", None, higher_is_better=False)
        report.add(f"view change {n} nodes: calls per member vs at {first['nodes']}",
                   (row["view_calls"] + row["view_peer_calls"]) / n,
                   (first["view_calls"] + first["view_peer_calls"]) / first["nodes"], "calls", None,
                   higher_is_better=False)
    print(f"\nnode loss at {loss['nodes']} nodes, replicas=2, {2 * args.ids_per_run:,} ids: "
          f"filled in {loss['fill']:.1f} s; Ray declared the node dead after {loss['noticed']:.1f} s; then every "
          f"id read back in {loss['read_all']:.1f} s and the copies were rebuilt after {loss['rebuilt']:.1f} s; "
          f"lost ids {loss['lost']}; "
          f"calls: coordinator {loss['loss_calls']}, between actors {loss['loss_peer_calls']}")
    common.RESULTS.mkdir(parents=True, exist_ok=True)  # the table itself, beside the ratios
    (common.RESULTS / "scale-nodes.json").write_text(json.dumps({"rows": rows, "node_loss": loss}, indent=1))


COLUMNS = [("nodes", "{:>5}"), ("bare", "{:>6.1f}"), ("open", "{:>6.1f}"), ("attach", "{:>6.2f}"),
           ("view_change", "{:>6.2f}"), ("view_calls", "{:>6}"), ("view_peer_calls", "{:>6}"),
           ("view_bytes", "{:>8,}"), ("rebuild_bytes", "{:>8,}"), ("init", "{:>6.2f}"), ("init_calls", "{:>6}"),
           ("init_peer_calls", "{:>6}"), ("set_many", "{:>6.2f}"), ("set_peer_calls", "{:>6}"), ("scan", "{:>6.2f}")]


def table(rows: list[dict], header: bool = True) -> str:
    """The node table (seconds, calls, bytes), as printed and copied into docs/scaling.md."""
    lines = [" | ".join(name for name, _ in COLUMNS)] if header else []
    lines += [" | ".join(fmt.format(row[name]) for name, fmt in COLUMNS) for row in rows]
    return "\n".join(lines)


#: The sections, each run by its flag (all of them without one): ``flag -> (function, help)``.
SECTIONS = {
    "--nodes": (nodes_section, "the node table and the node loss at the largest count"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, (_, help_) in SECTIONS.items():
        parser.add_argument(flag, action="store_true", help=help_)
    parser.add_argument("--node-counts", default="4,8,16,32", help="--nodes: cluster sizes of the node table, growing")
    parser.add_argument("--ids-per-run", type=int, default=20_000, help="--nodes: ids of init and of set_many per row")
    parser.add_argument("--object-store-mb", type=int, default=100, help="object store of each node")
    args = parse_args(parser, {"node_counts": "4", "ids_per_run": 1000})
    chosen = [flag for flag in SECTIONS if getattr(args, flag[2:].replace("-", "_"))] or list(SECTIONS)
    report = Report("scale")
    for name in chosen:
        SECTIONS[name][0](args, report)
    print(f"saved {report.save()}")


if __name__ == "__main__":
    main()
