"""A shuffle through the cache: partitions spread over the nodes, mappers appending into them
from anywhere, each reducer run on the node that holds its partition.

Built on the public :class:`~shoveling_ray.Cache` API only::

    with Shuffle(cache, num_partitions=64) as sh:
        results = sh.run(inputs, map_fn, reduce_fn)

- ``map_fn(input) -> {partition index: bytes}`` runs as one Ray task per input and sends its
  output with one ``append_many`` (one actor call per node). Partition in numpy, not per record.
- ``reduce_fn(partition index, data: bytes) -> result`` runs as one Ray task per partition,
  scheduled with ``cache.scheduling_strategy(partition)``, so it reads its partition from its
  own node without a transfer.

The partitions are deleted when the ``with`` block ends (or on ``cleanup()``), also when a
task failed. ``run`` returns the reduce results in partition order.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import ray

from .cache import Cache
from .errors import ShovelingError


#: Seconds to wait for the other tasks of a failed phase to end before cleaning up.
_STRAGGLER_TIMEOUT = 60.0


@ray.remote
def _map_task(cache: Cache, partitions: list[str], map_fn: Callable, item: Any) -> str:
    out = map_fn(item)
    if not isinstance(out, dict):
        raise TypeError(f"map_fn must return a dict of partition index -> bytes, not {type(out).__name__}")
    cache.append_many({partitions[p]: data for p, data in out.items() if len(data)})
    return ray.get_runtime_context().get_node_id()


@ray.remote
def _reduce_task(cache: Cache, partition: str, index: int, reduce_fn: Callable) -> tuple[str, Any]:
    data = cache.get(partition)
    return ray.get_runtime_context().get_node_id(), reduce_fn(index, data)


def _wait_all(refs: list, phase: str, progress: Callable[[str, int, int], None] | None) -> list:
    try:
        if progress is not None:
            pending = list(refs)
            progress(phase, 0, len(refs))
            while pending:
                ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
                progress(phase, len(refs) - len(pending), len(refs))
        return ray.get(refs)
    except ray.exceptions.RayTaskError:
        # One task failed: stop the others and let them end before the partitions are
        # deleted, or a straggling mapper would write a partition back after the cleanup.
        for ref in refs:
            ray.cancel(ref)
        ray.wait(refs, num_returns=len(refs), timeout=_STRAGGLER_TIMEOUT)
        raise


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
        self.placement = cache.init(self.partitions, strategy=strategy)
        #: After ``run``: the node each reducer ran on, in partition order.
        self.reducer_nodes: list[str] = []
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
        progress: Callable[[str, int, int], None] | None = None,
    ) -> list[Any]:
        """Map every input, then reduce every partition; returns the reduce results.

        Args:
            map_options / reduce_options: extra ``.options(...)`` for the tasks (``num_cpus``).
            progress: called as ``progress("map" | "reduce", done, total)`` as tasks finish.

        Raises:
            ShovelingError: a task failed (the cause is chained).
        """
        map_task = _map_task.options(**(map_options or {}))
        try:
            started = time.perf_counter()
            _wait_all([map_task.remote(self.cache, self.partitions, map_fn, item) for item in inputs], "map", progress)
            self.times["map"] = time.perf_counter() - started
            refs = [
                _reduce_task.options(
                    scheduling_strategy=self.cache.scheduling_strategy(pid), **(reduce_options or {})
                ).remote(self.cache, pid, index, reduce_fn)
                for index, pid in enumerate(self.partitions)
            ]
            done = _wait_all(refs, "reduce", progress)
            self.times["reduce"] = time.perf_counter() - started - self.times["map"]
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, ShovelingError):
                raise exc.cause from None  # CacheFull names the node and its limit
            raise ShovelingError(f"shuffle {self.prefix}: a task failed: {exc.cause!r}") from exc.cause
        self.reducer_nodes = [node for node, _ in done]
        return [result for _, result in done]

    def cleanup(self) -> None:
        """Delete the partitions (their data and placement records)."""
        for pid in self.partitions:
            self.cache.delete(pid)

    def __enter__(self) -> Shuffle:
        return self

    def __exit__(self, *exc_info) -> None:
        self.cleanup()
