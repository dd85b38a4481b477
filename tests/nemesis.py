"""A seeded nemesis against concurrent writers, and the checker of what they were told.

Used by ``tests/cluster/test_nemesis.py`` (a few short seeds) and ``benchmarks/soak.py`` (as long
as asked). Writers run as Ray tasks on the head node (which never leaves) while the nemesis,
in this process, applies faults chosen by a seeded generator: a node SIGKILLed, removed
gracefully, drained then removed (each followed by a new node), a node added, ``replicas``
changed between 2 and 3, ``max_memory`` lowered (the cache spills). Writers:

- ``append``: numbered records to ids in turn, one ``append`` per record, no token;
- ``token``: the same with ``append_many(..., token=)``;
- ``batch``: one ``append_many`` (no token) of a record to several ids at once;
- ``writer``: records through ``cache.writer()``, flushed every few records;
- ``set``: increasing numbers ``set`` over and over on a few ids;
- ``delete``: ``set`` then ``delete`` of a few ids in turn.

A writer never sends a record again itself: a call that raised leaves its records *unknown*
(applied once or not at all). The checker reads every id from every node that holds it:

- every acknowledged record exactly once, and in its writer's order, on every holder; an
  unknown one at most once; nothing no writer sent;
- a set id reads its last acknowledged value or a later one (never an older one);
- a deleted id whose last acknowledged call was a delete reads as absent, unless a later
  unknown set applied;
- ``DataLost`` only with ``replicas=1``, and only naming a node that was removed without a
  drain.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import shoveling_ray as sr
from shoveling_ray.actors.peers import PEER_TIMEOUT

KINDS = ("append", "token", "batch", "writer", "set", "delete")
FAULTS = ("sigkill", "graceful", "drain", "add", "replicas", "max_memory")
#: Stops a node actor's process (SIGSTOP) for longer than the peer timeout, then lets it go on:
#: a slow copy must not be taken for a dead one. Long: the soak runs it, the suite does not.
STALL = "stall"
#: Worker nodes at most: an "add" past it removes one instead.
MAX_WORKERS = 5


def head_node() -> str:
    return next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"])


def ids_of(kind: str, writer: int, count: int) -> list[str]:
    return [f"{kind}/{writer}/{i}" for i in range(count)]


@ray.remote(num_cpus=0, max_retries=0)
def run_writer(cache: sr.Cache, kind: str, writer: int, ids: list[str], until: float) -> dict:
    """Write until ``until`` (wall clock). Returns the calls ``acked`` and ``unknown`` (they
    raised), each ``(seq, id, op)`` (``id`` ``"*"``: every live id, a batch), and the ids found
    ``lost`` ``{id: node}``."""
    acked, unknown, lost, raised = [], [], {}, Counter()
    w = cache.writer(max_bytes=1 << 30) if kind == "writer" else None
    pending: list[tuple] = []  # the writer's records not flushed yet
    seq = 0
    while time.time() < until:
        seq += 1
        live = [i for i in ids if i not in lost]
        if not live:
            break
        cache_id = live[seq % len(live)]
        record = f"{writer}:{seq};".encode()
        call = (seq, cache_id, "append")
        try:
            if kind == "append":
                cache.append(cache_id, record)
            elif kind == "token":
                cache.append_many({cache_id: record}, token=f"{writer}:{seq}")
            elif kind == "batch":
                call = (seq, "*", "append")
                cache.append_many({i: record for i in live})
            elif kind == "writer":
                w.append(cache_id, record)
                pending.append(call)
                if len(pending) < 5:
                    continue
                w.flush()
            elif kind == "set" or (seq // len(live)) % 2:  # each id: set, then delete, in turn
                call = (seq, cache_id, "set")
                cache.set(cache_id, seq)
            else:
                call = (seq, cache_id, "delete")
                cache.delete(cache_id)
        except sr.ShovelingError as exc:  # DataLost, NodeUnavailable, CacheFull, ...
            raised[f"{type(exc).__name__} at {time.time() - until:+.0f}s: {str(exc)[:80]}"] += 1
            if isinstance(exc, sr.DataLost):
                lost[exc.cache_id or cache_id] = exc.node_id
            if kind == "writer":
                unknown.extend(pending)
                pending = []
                w = cache.writer(max_bytes=1 << 30)  # what it held is unknown: not sent again
            else:
                unknown.append(call)
            time.sleep(0.2)
            continue
        if kind == "writer":
            acked.extend(pending)
            pending = []
        else:
            acked.append(call)
    if pending:
        try:
            w.flush()
            acked.extend(pending)
        except sr.ShovelingError:
            unknown.extend(pending)
    return {"kind": kind, "writer": writer, "ids": ids, "acked": acked, "unknown": unknown, "lost": lost,
            "raised": dict(raised)}


@ray.remote(num_cpus=0)
def read_here(cache: sr.Cache, ids: list[str], primaries: dict[str, str]) -> dict:
    """The values of ``ids`` as this node's copies hold them (``None``: absent, an exception
    name: it raised). Knowing each id's primary, the handle reads a copy held here here."""
    cache._router.placements.update(primaries)
    out = {}
    for cache_id in ids:
        try:
            out[cache_id] = cache.get(cache_id, None)
        except sr.ShovelingError as exc:
            out[cache_id] = type(exc).__name__
    return out


class Nemesis:
    """Faults on a ``ray.cluster_utils.Cluster`` whose head never leaves.

    Args:
        cluster: the cluster (this process is connected to it).
        cache: the cache under test.
        seed: seeds the choice of faults and victims.
        replicas: the cache's replicas to start from (changed between 2 and 3 when >= 2).
        faults: the kinds of fault to choose from.
    """

    def __init__(self, cluster, cache: sr.Cache, seed: int, replicas: int, faults: tuple = FAULTS) -> None:
        self.cluster, self.cache, self.replicas, self.faults = cluster, cache, replicas, faults
        self.rng = random.Random(seed)
        self.done: Counter = Counter()
        self.unwarned: set[str] = set()  # nodes removed without a drain

    def step(self) -> str:
        """Apply one fault; returns its name."""
        fault = self.rng.choice([f for f in self.faults if self.replicas > 1 or f != "replicas"])
        workers = list(self.cluster.worker_nodes)
        if fault == "add" and len(workers) >= MAX_WORKERS:
            fault = "graceful"  # the cluster stays small enough for this machine
        if fault in ("sigkill", "graceful", "drain") and len(workers) > 1:
            victim = workers[self.rng.randrange(len(workers))]
            if fault == "drain":
                try:
                    self.cache.drain(victim.node_id)
                except sr.ShovelingError:
                    fault = "drain refused, then graceful"
            if fault != "drain":
                self.unwarned.add(victim.node_id)
            self.cluster.remove_node(victim, allow_graceful=fault != "sigkill")
            self.cluster.add_node(num_cpus=1)
        elif fault == STALL:
            alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
            node = self.rng.choice(sorted(n for n in self.cache._router.members if n in alive))
            try:
                pid = ray.get(self.cache._router.members[node].__ray_call__.remote(_pid), timeout=60)
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
                fault = "stall missed (the actor went meanwhile)"
            else:
                os.kill(pid, signal.SIGSTOP)
                threading.Timer(PEER_TIMEOUT + 10, _resume, (pid,)).start()
        elif fault == "replicas":
            self.replicas = 3 if self.replicas == 2 else 2
            self.cache.configure(replicas=self.replicas)
        elif fault == "max_memory":
            limit = self.rng.choice([256 << 10, 1 << 20])
            self.cache.configure(max_memory=limit)
        else:
            fault = "add"
            self.cluster.add_node(num_cpus=1)
        self.cluster.wait_for_nodes()
        self.done[fault] += 1
        return fault


def _pid(actor) -> int:
    return os.getpid()


def _resume(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass  # its node was removed meanwhile


def start_writers(cache: sr.Cache, seconds: float, per_kind: int = 1, ids: int = 6) -> list:
    """Start ``per_kind`` writers of every kind on the head node, writing for ``seconds``."""
    on_head = NodeAffinitySchedulingStrategy(head_node(), soft=False)
    until = time.time() + seconds
    refs, writer = [], 0
    for kind in KINDS:
        for _ in range(per_kind):
            names = ids_of(kind, writer, ids)
            if kind not in ("set", "delete"):
                cache.init(names)
            refs.append(run_writer.options(scheduling_strategy=on_head).remote(cache, kind, writer, names, until))
            writer += 1
    return refs


def check(cache: sr.Cache, results: list[dict], replicas: int, unwarned: set[str]) -> dict:
    """Read every id from every holder and check it against what the writers were told.
    Returns counts (``records``, ``values``, ``holders_read``) and ``errors``: a list of what
    broke a promise (empty when every promise held)."""
    errors: list[str] = []
    counts = Counter()
    lost_now = set(cache.lost_ids())
    if lost_now and replicas > 1:
        errors.append(f"{len(lost_now)} ids lost with {replicas} copies, e.g. {min(lost_now)}")
    for result in results:
        result["lost"].update((i, "") for i in lost_now if i in result["ids"] and i not in result["lost"])
        for cache_id, node in result["lost"].items():
            if replicas > 1:
                errors.append(f"{cache_id}: DataLost with {replicas} copies (node {node})")
            elif node and node not in unwarned:
                errors.append(f"{cache_id}: DataLost naming node {node}, which was not removed unwarned")
    reads: dict[str, list] = {}  # id -> the value read on each holder
    all_ids = [i for r in results for i in r["ids"]]
    by_node: dict[str, list[str]] = {}
    primaries: dict[str, str] = {}
    for cache_id in all_ids:
        holders = cache.node_ids(cache_id) or [cache.node_id(cache_id)]
        primaries[cache_id] = holders[0]
        for node in holders:
            by_node.setdefault(node, []).append(cache_id)
    for node, ids in by_node.items():
        here = NodeAffinitySchedulingStrategy(node, soft=False)
        read = read_here.options(scheduling_strategy=here).remote(cache, ids, {i: primaries[i] for i in ids})
        for cache_id, value in ray.get(read).items():
            reads.setdefault(cache_id, []).append(value)
            counts["holders_read"] += 1
    for result in results:
        lost = result["lost"]
        if result["kind"] in ("set", "delete"):
            _check_sets(result, reads, lost, errors, counts)
        else:
            _check_records(result, reads, lost, errors, counts)
    return {**counts, "errors": errors}


def _check_records(result: dict, reads: dict, lost: dict, errors: list, counts: Counter) -> None:
    writer = result["writer"]
    unknown = {seq for seq, _id, _op in result["unknown"]}
    for cache_id in result["ids"]:
        if cache_id in lost:
            continue
        expected = {seq for seq, target, _op in result["acked"] if target in (cache_id, "*")}
        for value in reads.get(cache_id, []):
            if not isinstance(value, bytes):
                errors.append(f"{cache_id}: read {value!r}")
                continue
            try:
                records = [tuple(map(int, r.split(b":"))) for r in value.split(b";") if r]
            except ValueError:
                errors.append(f"{cache_id}: garbled value {value[:80]!r}")
                continue
            strangers = {w for w, _seq in records if w != writer}
            if strangers:
                errors.append(f"{cache_id}: records of writers {sorted(strangers)}, which never wrote it")
            mine = [seq for _w, seq in records]
            if mine != sorted(mine):
                errors.append(f"{cache_id}: writer {writer}'s records out of order")
            seen = Counter(mine)
            for seq, n in seen.items():
                if n > 1:
                    errors.append(f"{cache_id}: record {writer}:{seq} {n} times")
                if seq not in expected and seq not in unknown:
                    errors.append(f"{cache_id}: record {writer}:{seq} was never sent")
            missing = expected - set(seen)
            if missing:
                errors.append(f"{cache_id}: {len(missing)} acknowledged records missing, e.g. {writer}:{min(missing)}")
            counts["records"] += len(mine)


def _check_sets(result: dict, reads: dict, lost: dict, errors: list, counts: Counter) -> None:
    last: dict[str, tuple] = {}
    later: dict[str, set] = {}
    for seq, cache_id, op in sorted(result["acked"]):
        last[cache_id] = (seq, op)
    for seq, cache_id, op in result["unknown"]:
        if seq > last.get(cache_id, (0,))[0]:  # a later call that may have applied
            later.setdefault(cache_id, set()).add(seq if op == "set" else None)
    for cache_id in result["ids"]:
        if cache_id in lost or cache_id not in last:
            continue
        seq, op = last[cache_id]
        for value in reads.get(cache_id, []):
            counts["values"] += 1
            allowed = later.get(cache_id, set()) | ({seq} if op == "set" else {None})
            if value not in allowed:
                errors.append(f"{cache_id}: read {value!r}, last acknowledged {op} {seq}")
