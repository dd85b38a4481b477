"""Reading a dataset from the cache, and the calls around it: :func:`read_dataset`,
:func:`write_dataset`, :func:`cache_dataset`, :func:`dataset_info`, :func:`list_datasets`,
:func:`delete_dataset`.

``read_dataset`` asks each node holding blocks for them as Arrow tables in its object store
(one call per node, no task: see :mod:`shoveling_ray.actors.tables`). The node's cache actor
owns them, so they outlive the job that reads them, and every later read, from any job, gets
the same objects. The dataset is built from those references (``ray.data.from_arrow_refs``),
and its own ``DataContext`` sends every map task on it to where its input block is (Ray's
locality-aware scheduling; Ray Data spreads tasks with small inputs otherwise), so the tasks
that consume a block downstream run on its node.
"""

from __future__ import annotations

import time
import warnings

import ray
from ray.data import Dataset

from ..cache import Cache
from ..errors import CacheMiss, DataLost, NodeUnavailable, ShovelingError, ray_errors
from . import blocks as b
from . import manifest as m
from .sink import CacheDatasink, block_ids, check_cache, check_dataset, forget_tables, read_manifest

#: Times ``read_dataset`` starts again when a replacement deleted blocks it was reading.
MAX_READ_ATTEMPTS = 3
#: Seconds ``read_dataset`` waits for the cache to replace a dead member, and between its
#: looks, before it takes a block held nowhere for lost.
SETTLE_SECONDS = 60.0
SETTLE_POLL = 0.25
#: Seconds more on a cache of copies (see :func:`_table_refs`).
COPIES_GRACE = 10.0


def write_dataset(ds: Dataset, cache: Cache, name: str) -> m.DatasetInfo:
    """Store ``ds`` in ``cache`` as dataset ``name``, replacing any dataset of that name once
    the new one is complete; the same as ``ds.write_datasink(CacheDatasink(cache, name))``.

    Each block is stored on the node of the write task that produced it, as an Arrow IPC
    stream; the dataset becomes visible when its manifest is written, after every block.

    Returns:
        The :class:`~shoveling_ray.data.manifest.DatasetInfo` of the dataset written.

    Raises:
        TypeError / ValueError: ``ds`` is not a Dataset, a bad cache or name, or ``name``'s
            manifest id holds something else (nothing written).
        ShovelingError: the write failed (a task of the pipeline raised, say, or a block is
            not a table: the message carries the task's error); the blocks it stored are
            deleted and the previous version of ``name``, if any, stays.
    """
    check_dataset(ds)
    sink = CacheDatasink(cache, name)
    try:
        read_manifest(cache, name)  # a ValueError now if the id holds something else
    except CacheMiss:
        pass
    try:
        ds.write_datasink(sink)
    except ray.exceptions.RayError as exc:
        # Ray Data wraps a task's error in its own (the original's type does not survive)
        raise ShovelingError(f"writing dataset {name!r} failed, nothing was written: {exc}") from exc
    return dataset_info(cache, name)


def read_dataset(cache: Cache, name: str) -> Dataset:
    """Dataset ``name`` as a ``ray.data.Dataset``: its blocks in the object stores of the nodes
    that hold them, in the row order and with the schema written.

    Raises:
        TypeError / ValueError: a bad cache or name; ``name`` is not a dataset.
        CacheMiss: no dataset ``name`` (also while one is being written for the first time).
        DataLost: a block's every copy is gone with its node (names the block); never a shorter
            dataset.
    """
    check_cache(cache)
    m.check_name(name)
    for attempt in range(MAX_READ_ATTEMPTS):
        manifest = read_manifest(cache, name)
        try:
            return _read(cache, name, manifest)
        except CacheMiss as exc:
            # A replacement completed meanwhile and deleted this version's blocks: read the
            # new one; a block missing from a manifest that did not change is lost.
            if attempt + 1 == MAX_READ_ATTEMPTS or read_manifest(cache, name) == manifest:
                raise DataLost(exc.cache_id, "", f"dataset {name!r} lists it, the cache does not hold it") from None
    raise AssertionError("unreachable")


def _read(cache: Cache, name: str, manifest: dict) -> Dataset:
    if not manifest["blocks"]:
        return ray.data.from_arrow(b.schema_from_bytes(manifest["schema"]).empty_table())
    return _dataset(_table_refs(cache, name, manifest["blocks"]), manifest)


def _dataset(refs: list, manifest: dict) -> Dataset:
    """The dataset of the tables of ``refs``, as ``ray.data.from_arrow_refs(refs)`` makes it
    but without its task per block to learn the blocks' rows and schema: the manifest knows
    them, and a job's first tasks on a node wait for a worker process to start (seconds, in a
    second job's first epoch). That takes Ray Data's internals (Ray 2.60); if they moved,
    ``from_arrow_refs``."""
    try:
        from ray.data._internal.logical.interfaces import LogicalPlan
        from ray.data._internal.logical.operators.from_operators import FromArrow
        from ray.data._internal.stats import DatasetStats
        from ray.data.block import BlockMetadataWithSchema
        from ray.data.dataset import MaterializedDataset

        schema = b.schema_from_bytes(manifest["schema"])
        metadata = [BlockMetadataWithSchema(num_rows=rows, size_bytes=size, exec_stats=None, input_files=None,
                                            schema=schema) for _id, rows, size, _node in manifest["blocks"]]
        context = _local_context()
        stats = DatasetStats(metadata={"FromArrow": metadata}, parent=None)
        return MaterializedDataset(LogicalPlan(FromArrow(refs, metadata), context), context, stats)
    except (ImportError, TypeError, AttributeError):
        ds = ray.data.from_arrow_refs(refs)
        ds.context.large_args_threshold = _local_context().large_args_threshold
        return ds


def _local_context() -> ray.data.DataContext:
    """The current ``DataContext`` with every map task sent to the node of its input block."""
    with warnings.catch_warnings():
        # Deprecated ("Ray Data manages scheduling internally"), and still what sends a map
        # task to the node of its input block instead of spreading it. (Copying a context
        # warns about Ray's own deprecated settings too.)
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ray.data.DataContext.get_current().copy()
        context.large_args_threshold = 0
    return context


def _table_refs(cache: Cache, name: str, blocks: list) -> list:
    """A reference per block to its table in the object store of a node holding it.

    A block held nowhere is asked for again while a member of the cache is a dead Ray node
    (until the cache has replaced it, up to :data:`SETTLE_SECONDS`), and on a cache of copies
    for :data:`COPIES_GRACE` seconds more: until the cache has handled a node's loss, the
    copies on other nodes may not answer for its blocks yet.

    Raises:
        CacheMiss: a block is not held anywhere (names it).
    """
    deadline = time.monotonic() + SETTLE_SECONDS
    grace = time.monotonic() + (COPIES_GRACE if cache._router.replicas > 1 else 0.0)

    def waiting() -> bool:
        now = time.monotonic()
        return now < deadline and (now < grace or _dead_member(cache))

    while True:
        try:
            refs, missing = _held_refs(cache, name, blocks)
        except NodeUnavailable:  # asked where a block is, a dead member's node did not answer
            if not waiting():
                raise
        else:
            if missing is None:
                return refs
            if not waiting():
                raise CacheMiss(missing, cache.name)
        time.sleep(SETTLE_POLL)
        cache._calls.refresh()


def _dead_member(cache: Cache) -> bool:
    """Whether a member of the cache's view is a Ray node that died (its loss not handled yet)."""
    alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    return not set(cache.nodes()) <= alive


def _held_refs(cache: Cache, name: str, blocks: list) -> tuple[list, str | None]:
    """:func:`_table_refs`' one try: the references, and the id of a block held nowhere
    (``None`` if every block was found)."""
    members = set(cache.nodes())
    by_node: dict[str, list[int]] = {}
    for index, (block_id, _rows, _bytes, writer) in enumerate(blocks):
        # the writer's node holds the block unless it left; then ask where the copies are
        by_node.setdefault(writer if writer in members else cache.node_id(block_id), []).append(index)
    refs: list = [None] * len(blocks)
    for _attempt in range(2):
        missing = []
        pending = {}
        for node, indices in by_node.items():
            try:
                pending[node] = cache._arrow_tables(node, [blocks[i][0] for i in indices])
            except NodeUnavailable:
                missing += indices
        for node, reply in pending.items():
            indices = by_node[node]
            try:
                with ray_errors(f"reading dataset {name!r}", node=node, ids=[blocks[i][0] for i in indices]):
                    got = ray.get(reply)
            except NodeUnavailable:  # its node died since the members were read
                missing += indices
                continue
            for index, ref in zip(indices, got):
                if ref is None:
                    missing.append(index)
                refs[index] = ref
        if not missing:
            return refs, None
        # not where it was written: moved since (a drain), or a copy took over after its node
        # died (or it died with it); ask where it is now
        by_node = {}
        for index in missing:
            holders = cache.node_ids(blocks[index][0])
            if not holders:
                return refs, blocks[index][0]
            by_node.setdefault(holders[0], []).append(index)
    return refs, next(blocks[i][0] for i, ref in enumerate(refs) if ref is None)


def cache_dataset(ds: Dataset, cache: Cache, name: str) -> Dataset:
    """Dataset ``name`` read from ``cache``; written from ``ds`` first if absent.

    ``ds`` runs only on the first call: later calls (later epochs, other jobs) read the cached
    blocks where they are. Raises what :func:`write_dataset` and :func:`read_dataset` raise.
    """
    check_dataset(ds)
    try:
        return read_dataset(cache, name)
    except CacheMiss:
        write_dataset(ds, cache, name)
        return read_dataset(cache, name)


def dataset_info(cache: Cache, name: str) -> m.DatasetInfo:
    """What dataset ``name`` holds: schema, rows, bytes and its blocks with the nodes that hold
    each (asked of the cache: one call per node).

    Raises:
        TypeError / ValueError: a bad cache or name; ``name`` is not a dataset.
        CacheMiss: no dataset ``name``.
    """
    check_cache(cache)
    manifest = read_manifest(cache, m.check_name(name))
    return m.DatasetInfo(
        name=name,
        schema=b.schema_from_bytes(manifest["schema"]),
        rows=manifest["rows"],
        bytes=manifest["bytes"],
        blocks=[m.BlockInfo(i, rows, size, nodes)
                for (i, rows, size, _writer), nodes in zip(manifest["blocks"], _holders(cache, manifest["blocks"]))],
    )


def _holders(cache: Cache, blocks: list) -> list[list[str]]:
    """The nodes holding each block (one call per node; one per block if a node does not
    answer: none known to hold its blocks)."""
    try:
        return cache._node_ids_many([block[0] for block in blocks])
    except ShovelingError:
        return [_holders_of(cache, block[0]) for block in blocks]


def _holders_of(cache: Cache, block_id: str) -> list[str]:
    try:
        return cache.node_ids(block_id)
    except ShovelingError:  # its node does not answer: none known to hold it
        return []


def list_datasets(cache: Cache) -> list[str]:
    """Names of the datasets in ``cache``, sorted."""
    return m.dataset_names(check_cache(cache).ids(m.PREFIX))


def delete_dataset(cache: Cache, name: str) -> bool:
    """Delete dataset ``name``: its manifest first (readers see ``CacheMiss`` from then on),
    then every block under its name (also those a failed write left behind). Returns whether
    it existed.

    Raises:
        TypeError / ValueError: a bad cache or name; ``name`` is not a dataset (nothing deleted).
    """
    check_cache(cache)
    try:
        read_manifest(cache, m.check_name(name))
    except CacheMiss:
        existed = False
    else:
        existed = cache.delete(m.manifest_id(name))
    ids = block_ids(cache, name)
    if ids:
        cache.delete_many(ids)
        forget_tables(cache)
    return existed


