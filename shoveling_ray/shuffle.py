"""A shuffle through the cache: partitions spread over the nodes, mappers appending into them
from anywhere, each reducer run on the node that holds its partition.

Built on the public :class:`~shoveling_ray.Cache` API only::

    with Shuffle(cache, num_partitions=64) as sh:
        results = sh.run(inputs, map_fn, reduce_fn)

- ``map_fn(input) -> {partition index: bytes}`` runs as one Ray task per input and sends its
  output with one ``append_many`` (one actor call per node). Partition in numpy, not per record.
  It may also return ``({partition index: bytes}, result)``: the results (say, a checksum of
  the input) are kept in ``map_results``, in input order.
- ``reduce_fn(partition index, data: bytes) -> result`` runs as one Ray task per partition,
  scheduled with ``cache.scheduling_strategy(partition)``, so it reads its partition from its
  own node without a transfer.

The partitions are *scratch* ids (``init(..., scratch=True)``): one copy each, on any cache,
and their large pieces stay objects of the mapper processes that wrote them, because a lost
partition is rebuilt from its inputs (lineage, as Spark does with its shuffle files), whether
its node died or a mapper's process did (its reducer's ``get`` raises ``DataLost``); what
reducers store is the user's, with the cache's ``replicas``. The partitions are
deleted when the ``with`` block ends (or on ``cleanup()``), also when a
task failed. ``run`` returns the reduce results in partition order.

A node lost during ``run`` loses the partitions it held; ``run`` recreates them, reruns every
mapper appending only to them (so ``map_fn`` must be deterministic) and reruns their reducers;
``recoveries`` records it. Each mapper appends with a token of its own
(``append_many(..., token=...)``), so a mapper run again (by Ray, after its node died, or by
``run``, after its appends met a dead node) adds nothing twice to the partitions that already
took its output: during the map phase, mappers whose appends failed are simply run again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import ray

from .cache import Cache
from .errors import CacheMiss, DataLost, NodeUnavailable, ray_errors
from .heap import keep_freed_memory
from .membership import ray_nodes


#: Seconds to wait for the other tasks of a failed phase to end before cleaning up.
_STRAGGLER_TIMEOUT = 60.0
#: What a reducer returns when its partition was lost with a node, and a mapper whose
#: appends met a dead node.
_LOST = "__shoveling_partition_lost__"


#: How many times one ``run`` rebuilds partitions lost with a node (in each phase).
MAX_RECOVERIES = 3


def _map(
    cache: Cache, partitions: list[str], map_fn: Callable, nodes: list[str], item: Any, only: frozenset | None,
    token: str,
) -> tuple:
    """Body of a map task: map one input, append its pieces, return ``(node, result, stats)``."""
    keep_freed_memory()
    started = time.perf_counter()
    out = map_fn(item)
    result = None
    if isinstance(out, tuple) and len(out) == 2:
        out, result = out
    if not isinstance(out, dict):
        raise TypeError(
            f"map_fn must return a dict of partition index -> bytes (or (dict, result)), not {type(out).__name__}"
        )
    if only is not None:  # a rerun that rebuilds lost partitions: the others have their data
        out = {p: data for p, data in out.items() if p in only}
    mapped = time.perf_counter()
    here = ray.get_runtime_context().get_node_id()
    try:
        cache.append_many({partitions[p]: data for p, data in out.items() if len(data)}, token=token)
    except (NodeUnavailable, DataLost):
        return here, _LOST, {}  # a partition's node died: the driver runs this mapper again
    stats = {
        "map_seconds": mapped - started,
        "push_seconds": time.perf_counter() - mapped,
        "bytes": sum(len(data) for data in out.values()),
        "remote_bytes": sum(len(data) for p, data in out.items() if nodes[p] != here),
    }
    return here, result, stats


def _reduce(cache: Cache, reduce_fn: Callable, partition: str, index: int) -> tuple:
    """Body of a reduce task: read one partition, reduce it, return ``(node, result, stats)``."""
    keep_freed_memory()
    started = time.perf_counter()
    try:
        data = cache.get(partition)
    except (DataLost, CacheMiss):
        # Its node died (a shuffle's partitions always exist, so a miss means the same): the
        # driver rebuilds it and runs this again.
        return ray.get_runtime_context().get_node_id(), _LOST, {}
    read = time.perf_counter()
    result = reduce_fn(index, data)
    stats = {"read_seconds": read - started, "reduce_seconds": time.perf_counter() - read}
    return ray.get_runtime_context().get_node_id(), result, stats


def _tasks(cache: Cache, partitions: list[str], map_fn: Callable, reduce_fn: Callable) -> tuple:
    """The map and reduce tasks of one ``run``. The cache handle and the functions are part of
    the task definitions, which Ray ships to each worker once, not with every task."""

    @ray.remote
    def shuffle_map(nodes: list[str], item: Any, only: frozenset | None, token: str) -> tuple:
        return _map(cache, partitions, map_fn, nodes, item, only, token)

    @ray.remote
    def shuffle_reduce(partition: str, index: int) -> tuple:
        return _reduce(cache, reduce_fn, partition, index)

    return shuffle_map, shuffle_reduce


def _run_all(submit: list[Callable[[], ray.ObjectRef]], phase: str, limit: int, progress) -> list:
    """Run the tasks ``submit`` starts, at most ``limit`` at a time; their results, in order.

    The limit matters: a task blocked in ``ray.get`` (an ``append_many`` waiting for its
    actors) lends its CPU to the next queued task, and Ray starts extra worker processes for
    them, which costs more than it overlaps.
    """
    refs: list[ray.ObjectRef] = []
    pending: list[ray.ObjectRef] = []
    if progress is not None:
        progress(phase, 0, len(submit))
    try:
        while len(refs) < len(submit) or pending:
            while len(refs) < len(submit) and len(pending) < limit:
                refs.append(submit[len(refs)]())
                pending.append(refs[-1])
            ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            ray.get(ready)  # raises as soon as a task failed
            if progress is not None:
                progress(phase, len(refs) - len(pending), len(submit))
        return ray.get(refs)
    except ray.exceptions.RayError:
        # One task failed (raised, its worker crashed or was killed for memory): stop the
        # others and let them end before the partitions are deleted, or a straggling mapper
        # would write a partition back after the cleanup.
        for ref in pending:
            ray.cancel(ref)
        if pending:
            ray.wait(pending, num_returns=len(pending), timeout=_STRAGGLER_TIMEOUT)
        raise


def _is_lost(result: Any) -> bool:
    return isinstance(result, str) and result == _LOST


class ProgressBars:
    """``progress`` callback drawing one tqdm bar per phase (map, reduce) of a shuffle."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.bars: dict[str, Any] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        from tqdm.auto import tqdm  # imported on use: tasks never need it

        bar = self.bars.get(phase)
        if bar is None or done == 0:  # a phase run again (rebuilding lost partitions): a new bar
            bar = self.bars[phase] = tqdm(total=total, desc=f"{self.prefix} {phase}", unit="task")
        bar.update(done - bar.n)
        if done >= total:
            bar.close()


class Shuffle:
    """Partitions for one shuffle, created with ``cache.init`` (see the module docstring).

    Args:
        cache: the cache that holds the partitions.
        num_partitions: how many partitions (reducers).
        strategy: how ``init`` spreads them (``uniform_nodes``, ``uniform_cpu``,
            ``uniform_memory``).
        prefix: id prefix of the partitions; a fresh unique one by default.

    Raises:
        ValueError: ``num_partitions`` < 1, or an unknown strategy.
    """

    def __init__(self, cache: Cache, num_partitions: int, strategy: str = "uniform_nodes", prefix: str | None = None):
        if isinstance(num_partitions, bool) or not isinstance(num_partitions, int) or num_partitions < 1:
            raise ValueError(f"num_partitions must be a positive int, got {num_partitions!r}")
        self.cache = cache
        self.prefix = prefix or f"shuffle-{uuid.uuid4().hex[:12]}"
        self.partitions = [f"{self.prefix}/{i:06d}" for i in range(num_partitions)]
        self.strategy = strategy
        # Scratch: one copy whatever the cache's replicas, large pieces left to their mappers
        # (a lost partition is rebuilt by mapping again, see the module docstring)
        # (a dict: init answers a read-only mapping for many ids, and a loss updates this one)
        self.placement = dict(cache.init(self.partitions, strategy=strategy, scratch=True))
        #: After ``run``: partitions rebuilt after a node died during the reduce phase, and
        #: what it took (``[{"partitions": [index, ...], "seconds": s}]``).
        self.recoveries: list[dict] = []
        #: After ``run``: the node each reducer ran on, in partition order.
        self.reducer_nodes: list[str] = []
        #: After ``run``: what ``map_fn`` returned beside its partitions, in input order.
        self.map_results: list[Any] = []
        #: After ``run``: sums over the tasks: seconds in ``map_fn`` (``map_seconds``), in
        #: ``append_many`` (``push_seconds``), in ``get`` (``read_seconds``), in ``reduce_fn``
        #: (``reduce_seconds``); bytes mapped (``bytes``) and of them sent to another node
        #: (``remote_bytes``).
        self.task_stats: dict[str, float] = {}
        #: After ``run``: seconds of the map phase (mappers, partitioning, pushing the data to
        #: the partitions' nodes) and of the reduce phase (reading and reducing in place).
        self.times: dict[str, float] = {}

    def run(
        self,
        inputs: Iterable[Any],
        map_fn: Callable[[Any], dict[int, bytes]],
        reduce_fn: Callable[[int, bytes], Any],
        *,
        map_options: dict | None = None,
        reduce_options: dict | None = None,
        progress: bool | Callable[[str, int, int], None] | None = True,
        max_in_flight: int | None = None,
    ) -> list[Any]:
        """Map every input, then reduce every partition; returns the reduce results.

        Args:
            map_options / reduce_options: extra ``.options(...)`` for the tasks (``num_cpus``).
            progress: ``True`` (default): a tqdm progress bar per phase (``tqdm.auto``: a
                widget in Jupyter, a text bar in a terminal); ``False`` / ``None``: none; a
                callable: called as ``progress("map" | "reduce", done, total)`` instead.
            max_in_flight: tasks submitted at a time; the cluster's CPU count by default.

        Raises:
            ShovelingError: a task failed, or its worker crashed or was killed (the cause is
                chained); a ``CacheFull`` or ``NodeUnavailable`` inside a task comes out as
                itself.
        """
        if max_in_flight is None:
            max_in_flight = max(int(ray.cluster_resources().get("CPU", 1)), 1)
        elif isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ValueError(f"max_in_flight must be a positive int, got {max_in_flight!r}")
        limit = max_in_flight
        map_task, reduce_task = _tasks(self.cache, self.partitions, map_fn, reduce_fn)
        map_task = map_task.options(**(map_options or {}))
        if progress is True:
            progress = ProgressBars(self.prefix)
        elif progress is False:
            progress = None
        with ray_errors(f"shuffle {self.prefix}: a task failed"):
            started = time.perf_counter()
            items = list(inputs)  # kept: lost partitions are rebuilt by mapping again
            self.recoveries = []
            mapped = self._map(items, map_task, [None] * len(items), limit, progress)
            while (failed := [i for i, (_, result, _) in enumerate(mapped) if _is_lost(result)]) or self._lost():
                # A node died during the map phase: rebuild the partitions it held, run again
                # the mappers whose appends failed (their tokens keep what already landed from
                # landing twice), and the others for the rebuilt partitions only.
                if len(self.recoveries) == MAX_RECOVERIES:
                    raise DataLost(detail=f"shuffle {self.prefix}: nodes kept dying during the map phase")
                began = time.perf_counter()
                lost = self._rebuild()
                only = [None if i in failed else frozenset(lost) for i in range(len(items))]
                rerun = [i for i in range(len(items)) if only[i] is None or lost]
                again = self._map([items[i] for i in rerun], map_task, [only[i] for i in rerun], limit, progress,
                                  [f"{self.prefix}/map/{i}" for i in rerun])
                for i, result in zip(rerun, again):
                    if only[i] is None or _is_lost(result[1]):  # a partial rerun that failed runs whole next
                        mapped[i] = result
                self.recoveries.append({"phase": "map", "partitions": lost, "mappers": failed,
                                        "seconds": time.perf_counter() - began})
            self.times["map"] = time.perf_counter() - started
            reduce_options = reduce_options or {}
            done = self._reduce(range(len(self.partitions)), reduce_task, reduce_options, limit, progress)
            self.times["reduce"] = time.perf_counter() - started - self.times["map"]
            rebuilds = 0
            while lost := [i for i, (_, result, _) in enumerate(done) if _is_lost(result)]:
                if rebuilds == MAX_RECOVERIES:
                    raise DataLost(self.partitions[lost[0]], "", f"still lost after {MAX_RECOVERIES} rebuilds")
                rebuilds += 1
                began = time.perf_counter()
                self._rebuild(lost)
                remapped = self._map(items, map_task, [frozenset(lost)] * len(items), limit, progress)
                if any(_is_lost(result) for _, result, _ in remapped):
                    continue  # another node died meanwhile: these partitions are rebuilt again
                for i, again in zip(lost, self._reduce(lost, reduce_task, reduce_options, limit, progress)):
                    done[i] = again
                self.recoveries.append({"phase": "reduce", "partitions": lost, "seconds": time.perf_counter() - began})
        self.map_results = [result for _, result, _ in mapped]
        self.reducer_nodes = [node for node, _, _ in done]
        self.task_stats = {}
        for _, _, stats in mapped + done:
            for key, value in stats.items():
                self.task_stats[key] = self.task_stats.get(key, 0) + value
        return [result for _, result, _ in done]

    def _map(self, items: list, map_task, only: list, limit: int, progress, tokens: list[str] | None = None) -> list:
        """Run a mapper per input, each appending only to the partitions in its ``only``
        (``None``: all of them) with its token (by default ``<prefix>/map/<input index>``)."""
        nodes = [self.placement[pid] for pid in self.partitions]
        tokens = tokens or [f"{self.prefix}/map/{i}" for i in range(len(items))]
        submit = [partial(map_task.remote, nodes, item, o, t) for item, o, t in zip(items, only, tokens)]
        return _run_all(submit, "map" if all(o is None for o in only) else "map (rebuild)", limit, progress)

    def _lost(self) -> list[int]:
        """Partitions placed on a node that is no longer alive."""
        alive = {n.node_id for n in ray_nodes() if n.alive}
        return [i for i, pid in enumerate(self.partitions) if self.placement[pid] not in alive]

    def _rebuild(self, lost: list[int] | None = None) -> list[int]:
        """Recreate partitions (by default those placed on dead nodes) empty, on alive nodes;
        returns their indices. Deleted first: an append that met the new home of a partition
        whose home died may have started it again with part of the data."""
        lost = self._lost() if lost is None else lost
        self.cache.delete_many([self.partitions[i] for i in lost])
        self.placement.update(self.cache.init([self.partitions[i] for i in lost], strategy=self.strategy, scratch=True))
        return lost

    def _reduce(self, indices, reduce_task, options: dict, limit: int, progress) -> list:
        """Run the reducers of the partitions at ``indices``, each where its partition lives."""
        submit = [
            partial(
                reduce_task.options(scheduling_strategy=self.cache.scheduling_strategy(self.partitions[i]), **options).remote,
                self.partitions[i], i,
            )
            for i in indices
        ]
        return _run_all(submit, "reduce", limit, progress)

    def cleanup(self) -> None:
        """Delete the partitions (their data and placement records)."""
        self.cache.delete_many(self.partitions)

    def __enter__(self) -> Shuffle:
        return self

    def __exit__(self, *exc_info) -> None:
        self.cleanup()
