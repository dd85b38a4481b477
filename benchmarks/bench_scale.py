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

- ``--ids``: what an id costs and how ``init`` grows with ids (``--id-nodes`` nodes, 3), for
  each count in ``--id-counts``: bytes per id in the node actors (growth of the actor
  processes' own resident memory, ``RssAnon``, divided by the ids, once the actors have been
  idle for ``IDLE_SECONDS`` and handed their freed heap back, see heap.py; also right after
  the call, after ``malloc_trim``, and the actors' ``stats()`` ``used``) for ids created empty by one ``init`` call and for ids
  created by ``set_many`` of 100-byte values (up to ``--set-ids``; with and without the
  values' bytes), against the 100-byte target and Redis's bytes per key (``INFO memory``
  ``used_memory`` growth for the same names). Each case first writes ``WARM_IDS`` other ids
  the same way and takes its baseline after them, so that an actor's fixed cost of its first
  calls is not spread over the ids (Redis's ``used_memory`` leaves its own out too); the
  growth from the freshly opened cache is printed beside. The ``init`` time and its ratio to the smallest
  count's; ``get_many`` of 100,000 of the largest count's ids from a fresh process (a new
  driver that attaches with ``Cache.attach``).

docs/scaling.md extrapolates these figures to 1,000 nodes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import common
import shoveling_ray as sr
from shoveling_ray.heap import IDLE_SECONDS
from common import MB, Report, parse_args, settle, start, stop
from redis_server import RedisServer


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


#: What an id may cost in the node actors (issue 26).
TARGET_BYTES = 100
VALUE_BYTES = 100
SET_BATCH = 100_000
FRESH_READS = 100_000


def names(count: int, prefix: str = "id-") -> list[str]:
    """``count`` ids of 12-13 characters, as the issue measured."""
    return [f"{prefix}{i:09d}" for i in range(count)]


#: Ids each case writes the same way before its baseline reading: an actor's first calls cost
#: it a fixed 10-15 MB (Ray's buffers, the allocator's arenas, numpy's first temporaries) that
#: does not grow with ids. The figures from the opened cache, with it, are printed too.
WARM_IDS = 10_000


def _status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field + ":"))


def actor_rss(cache: sr.Cache, field: str = "RssAnon") -> int:
    """Resident memory of the node actors' processes: by default their own (``RssAnon``: heap
    and anonymous maps), without the pages of Ray's object store they have touched
    (``RssShmem``: Ray's shared pool, the same memory in every process that maps it)."""
    pids = ray.get([h.__ray_call__.remote(lambda self: os.getpid()) for h in cache._router.members.values()])
    return sum(_status(pid, field) for pid in pids)


def _trim(actor) -> int:
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def trimmed_rss(cache: sr.Cache) -> int:
    """:func:`actor_rss` after each actor handed its freed heap back to the kernel: what it
    holds, without the freed memory it keeps for reuse (up to 512 MiB, see heap.py)."""
    ray.get([h.__ray_call__.remote(_trim) for h in cache._router.members.values()])
    return actor_rss(cache)


def forget_writes(cache: sr.Cache) -> None:
    """Write an id homed on each node: every node's sessions forget this client's writes before
    it (a node remembers the ids of a client's last call to it until its next one, see
    sessions.py; counted in ``used`` as ``bookkeeping``, not what an id costs)."""
    router, flush = cache._router, {}
    for n in range(100 * len(router.members)):  # 4,096 slots: each member is home of some
        flush.setdefault(router.home(f"flush-{n}"), f"flush-{n}")
        if len(flush) == len(router.members):
            break
    cache.set_many(dict.fromkeys(flush.values(), b""))


def idle_growth(cache: sr.Cache, rss0: int, count: int) -> tuple[float, float]:
    """Bytes per id the actors grew since ``rss0``: right after the call, and once they have
    been idle for ``IDLE_SECONDS`` (they hand their freed heap back then, see heap.py)."""
    busy = (actor_rss(cache) - rss0) / count
    time.sleep(IDLE_SECONDS + 1)
    return busy, (settle(lambda: actor_rss(cache)) - rss0) / count


def used(cache: sr.Cache) -> int:
    """``used`` of every node, without what the sessions remember of recent writes."""
    return sum(s["used"] - s["bookkeeping"] for s in cache.stats().values())


def bytes_per_id(report: Report, count: int, ids: list[str], redis: dict, set_ids: int) -> tuple[float, str]:
    """The two cases at ``count`` ids (the ``set`` one up to ``set_ids``); returns the init time
    and the init cache's name (open)."""
    name = f"bench-init-{count}"
    cache = sr.Cache(name, compression=None)
    opened = settle(lambda: trimmed_rss(cache))
    cache.init(names(WARM_IDS, "wa-"))
    rss0, used0 = settle(lambda: trimmed_rss(cache)), used(cache)
    shm0 = actor_rss(cache, "RssShmem")
    t = time.perf_counter()
    placed = cache.init(ids)
    seconds = time.perf_counter() - t
    assert len(placed) == count
    del placed
    busy, grown = idle_growth(cache, rss0, count)
    counted = (used(cache) - used0) / count
    trimmed = trimmed_rss(cache)
    held, cold = (trimmed - rss0) / count, (trimmed - opened) / count
    shared = (actor_rss(cache, "RssShmem") - shm0) / count
    print(f"init of {count:,} ids: {seconds:.2f} s; actors +{grown:.1f} B/id once idle (+{busy:.1f} right after it; "
          f"{held:.1f} after malloc_trim; "
          f"object store pages touched +{shared:.1f}), used +{counted:.1f} B/id (used/measured {counted / grown:.2f}); "
          f"from the opened cache (its first calls included, after malloc_trim): +{cold:.1f} B/id")
    report.add(f"init-placed id, {count:,} ids: bytes/id vs target", grown, TARGET_BYTES, "B", 1.0, False)
    report.add(f"init-placed id, {count:,} ids, first calls included: bytes/id vs target", cold, TARGET_BYTES, "B",
               None, False)
    report.add(f"init-placed id, {count:,} ids: bytes/id vs redis empty key", grown, redis["empty"], "B", None, False)
    report.add(f"init-placed id, {count:,} ids: used vs measured", counted, grown, "B", None)
    if count <= set_ids:
        set_bytes(report, count, ids, redis)
    return seconds, name


def set_bytes(report: Report, count: int, ids: list[str], redis: dict) -> None:
    """Bytes per id of ids created by ``set_many`` of 100-byte values."""
    small = sr.Cache(f"bench-set-{count}", compression=None)
    value = np.random.default_rng(0).bytes(VALUE_BYTES)
    opened = settle(lambda: trimmed_rss(small))
    small.set_many(dict.fromkeys(names(WARM_IDS, "wa-"), value))
    rss0, used0 = settle(lambda: trimmed_rss(small)), used(small)
    t = time.perf_counter()
    for k in range(0, count, SET_BATCH):
        small.set_many({i: value for i in ids[k:k + SET_BATCH]})
    set_seconds = time.perf_counter() - t
    forget_writes(small)
    busy, grown = idle_growth(small, rss0, count)
    counted = (used(small) - used0) / count
    trimmed = trimmed_rss(small)
    cold = (trimmed - opened) / count - VALUE_BYTES
    print(f"after malloc_trim: +{(trimmed - rss0) / count:.1f} B/id; from the opened cache (its first calls "
          f"included, after malloc_trim): +{cold:.1f} B/id without the value")
    print(f"set_many of {count:,} ids of {VALUE_BYTES} B: {set_seconds:.2f} s; actors +{grown:.1f} B/id with the "
          f"value once idle (+{busy:.1f} right after it), {grown - VALUE_BYTES:.1f} without; used +{counted:.1f} B/id (used/measured {counted / grown:.2f})")
    report.add(f"set id of {VALUE_BYTES} B, {count:,} ids: bytes/id without the value vs target",
               grown - VALUE_BYTES, TARGET_BYTES, "B", 1.0, False)
    report.add(f"set id of {VALUE_BYTES} B, {count:,} ids, first calls included: bytes/id without the value vs "
               "target", cold, TARGET_BYTES, "B", None, False)
    report.add(f"set id of {VALUE_BYTES} B, {count:,} ids: bytes/id with the value vs redis", grown, redis["value"],
               "B", None, False)
    report.add(f"set id of {VALUE_BYTES} B, {count:,} ids: used vs measured", counted, grown, "B", None)
    small.close()


def redis_bytes(ids: list[str]) -> dict:
    """Redis's ``used_memory`` growth per key for ``ids``, empty and with 100-byte values."""
    server = RedisServer()
    try:
        out = {}
        value = np.random.default_rng(0).bytes(VALUE_BYTES)
        for case, data in (("empty", b""), ("value", value)):
            server.client.flushall()
            before = server.client.info("memory")["used_memory"]
            for k in range(0, len(ids), SET_BATCH):
                pipe = server.client.pipeline(transaction=False)
                for i in ids[k:k + SET_BATCH]:
                    pipe.set(i, data)
                pipe.execute()
            out[case] = (server.client.info("memory")["used_memory"] - before) / len(ids)
        print(f"redis: {out['empty']:.1f} B per empty key, {out['value']:.1f} B per key of {VALUE_BYTES} B")
        return out
    finally:
        server.stop()


FRESH = textwrap.dedent("""
    import sys, time, ray, shoveling_ray as sr
    ray.init(address=sys.argv[1], log_to_driver=False)
    cache = sr.Cache.attach(sys.argv[2])
    ids = [f"id-{i:09d}" for i in range(0, int(sys.argv[3]), int(sys.argv[3]) // int(sys.argv[4]))][:int(sys.argv[4])]
    t = time.perf_counter()
    values = cache.get_many(ids)
    print(time.perf_counter() - t, len(values), sum(len(v) for v in values.values()))
""")


def fresh_reads(address: str, name: str, count: int, reads: int) -> float:
    """Seconds a new driver's ``get_many`` of ``reads`` ids of cache ``name`` takes."""
    out = subprocess.run([sys.executable, "-c", FRESH, address, name, str(count), str(reads)], capture_output=True,
                         text=True, check=True, timeout=600)
    seconds, got, nbytes = out.stdout.split()[-3:]
    assert int(got) == reads and int(nbytes) == 0, out.stdout
    return float(seconds)


def ids_section(args: argparse.Namespace, report: Report) -> None:
    cluster = start(nodes=args.id_nodes, object_store_mb=1024)
    try:
        _ids_section(args, report, cluster)
    finally:
        stop(cluster)


def _ids_section(args: argparse.Namespace, report: Report, cluster) -> None:
    counts = sorted(int(c) for c in args.id_counts.split(","))
    every = names(counts[-1])
    redis = redis_bytes(every[:args.redis_keys])
    timings = {}
    for count in counts:
        timings[count], name = bytes_per_id(report, count, every[:count], redis, args.set_ids)
        if count != counts[-1]:
            sr.Cache.attach(name).close()
    first = counts[0]
    for count in counts[1:]:
        report.add(f"init of {count:,} ids vs {first:,} ids: time / (ids ratio {count // first})",
                   timings[count] / (count / first), timings[first], "s", None, higher_is_better=False)
    reads = min(FRESH_READS, counts[-1])
    seconds = fresh_reads(cluster.address, name, counts[-1], reads)
    print(f"get_many of {reads:,} of {counts[-1]:,} ids from a fresh process: {seconds:.2f} s")
    report.add(f"get_many of {reads:,} ids from a fresh process: ids/s vs init's ids/s", reads / seconds,
               counts[-1] / timings[counts[-1]], "ids/s", None)
    sr.Cache.attach(name).close()


#: The sections, each run by its flag (all of them without one): ``flag -> (function, help)``.
SECTIONS = {
    "--nodes": (nodes_section, "the node table and the node loss at the largest count"),
    "--ids": (ids_section, "bytes per id, init of many ids, get_many from a fresh process"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, (_, help_) in SECTIONS.items():
        parser.add_argument(flag, action="store_true", help=help_)
    parser.add_argument("--node-counts", default="4,8,16,32", help="--nodes: cluster sizes of the node table, growing")
    parser.add_argument("--ids-per-run", type=int, default=20_000, help="--nodes: ids of init and of set_many per row")
    parser.add_argument("--object-store-mb", type=int, default=100, help="object store of each node")
    parser.add_argument("--id-nodes", type=int, default=3, help="--ids: nodes of its cluster")
    parser.add_argument("--id-counts", default="1000000,10000000", help="--ids: id counts, comma separated")
    parser.add_argument("--set-ids", type=int, default=10_000_000, help="--ids: largest count for the set case")
    parser.add_argument("--redis-keys", type=int, default=1_000_000, help="--ids: keys for Redis's bytes per key")
    args = parse_args(parser, {"node_counts": "4", "ids_per_run": 1000, "id_counts": "10000,30000",
                               "redis_keys": 10000})
    chosen = [flag for flag in SECTIONS if getattr(args, flag[2:].replace("-", "_"))] or list(SECTIONS)
    report = Report("scale")
    for name in chosen:
        SECTIONS[name][0](args, report)
    print(f"saved {report.save()}")


if __name__ == "__main__":
    main()
