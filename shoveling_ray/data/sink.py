"""Writing a ``ray.data.Dataset`` into the cache: :class:`CacheDatasink` and
:func:`write_dataset`.

Ray Data's commit protocol is the dataset's:

- ``write`` (a Ray Data write task, fused with the operators that produce its blocks, so on
  their node): each block becomes an Arrow IPC stream stored under an id whose home is the
  task's own node (``blocks.id_on_node``), so no block crosses the network on write. With
  ``replicas >= 2`` the cache copies it to other nodes as it copies any value. Then the
  node's actor is asked, without waiting, to put the blocks' tables into its object store
  for readers (:mod:`shoveling_ray.actors.tables`) while the pipeline runs on.
- ``on_write_complete`` (the driver): the manifest, written last, makes the dataset visible;
  then the blocks of the version it replaced, and of write tasks that Ray ran twice, are
  deleted.
- ``on_write_failed`` (the driver, also when the manifest could not be written): the blocks
  of this write are deleted; the previous version, if any, stays as it was.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import ray
from ray.data import Dataset
from ray.data.datasource import Datasink

from ..cache import Cache
from ..errors import CacheMiss, ShovelingError, ray_errors
from . import blocks as b
from . import manifest as m

if TYPE_CHECKING:
    from ray.data.datasource.datasink import WriteResult


def check_cache(cache: Any) -> Cache:
    if not isinstance(cache, Cache):
        raise TypeError(f"cache must be a shoveling_ray.Cache, not {type(cache).__name__}")
    return cache


def block_ids(cache: Cache, name: str, token: str = "") -> list[str]:
    """The ids of the blocks of dataset ``name`` in the cache (of one write, with ``token``)."""
    return cache.ids(m.blocks_prefix(name, token))


def read_manifest(cache: Cache, name: str) -> dict:
    """The manifest of dataset ``name``.

    Raises:
        CacheMiss: no dataset of that name.
        ValueError: its id holds something else.
    """
    return m.check_manifest(cache.get(m.manifest_id(name)), name)


def forget_tables(cache: Cache) -> None:
    """Have every node forget the tables it handed out of blocks deleted since (see
    :mod:`shoveling_ray.actors.tables`), so the object stores free them. A node that does
    not answer forgets them at its next read instead."""
    try:
        with ray_errors(f"cache {cache.name!r}: freeing the tables of deleted blocks"):
            ray.get([cache._arrow_tables(node, []) for node in cache.nodes()])
    except ShovelingError:
        pass


class CacheDatasink(Datasink):
    """A ``ray.data.Datasink`` that stores a dataset in a cache under ``name`` (see the module
    docstring); ``ds.write_datasink(CacheDatasink(cache, "features"))``.

    One sink makes one write: each has a token of its own that names its blocks.

    Args:
        cache: the cache to store the dataset in.
        name: the dataset's name: 1-128 letters, digits, ``_``, ``.``, ``-``.

    Raises:
        TypeError / ValueError: a bad cache or name.
    """

    def __init__(self, cache: Cache, name: str) -> None:
        check_cache(cache)
        self.name = m.check_name(name)
        # Blocks are stored uncompressed whatever the handle's compression: a reader maps the
        # Arrow stream where it lies instead of decompressing a copy of it.
        self._cache = Cache.attach(cache.name, compression=None, timeout=cache.timeout)
        self._token = uuid.uuid4().hex[:12]
        self._schema: pa.Schema | None = None
        self._started = False
        #: After the write: the manifest it wrote.
        self.manifest: dict | None = None

    def on_write_start(self, schema: pa.Schema | None = None) -> None:
        """Called by Ray Data on the driver before the first write task.

        Raises:
            ValueError: the sink wrote already, or the dataset's manifest id holds a value
                that is not a manifest (nothing is written).
        """
        if self._started:
            raise ValueError("a CacheDatasink writes once; make a new one for another write")
        self._started = True
        self._schema = schema
        try:
            read_manifest(self._cache, self.name)  # a ValueError if the id holds something else
        except CacheMiss:
            pass

    def write(self, blocks, ctx) -> dict:
        """Store each block of this write task on its node; returns what the manifest needs."""
        here = ray.get_runtime_context().get_node_id()
        stored, schema = [], None
        for index, block in enumerate(blocks):
            table = b.as_table(block)
            schema = schema or table.schema
            if table.num_rows == 0:
                continue
            data = b.to_ipc(table)
            block_id = b.id_on_node(self._cache, m.block_base(self.name, self._token, ctx.task_idx, index), here)
            self._cache.set(block_id, data)
            stored.append([block_id, table.num_rows, int(data.nbytes), here])
        if stored and here in self._cache.nodes():
            # The node's actor makes the tables readers get while the pipeline runs on; not
            # waited for (a read's request waits behind it on the actor).
            self._cache._arrow_tables(here, [block[0] for block in stored])
        return {"task": ctx.task_idx, "blocks": stored, "schema": b.schema_bytes(schema) if schema else None}

    def on_write_complete(self, write_result: WriteResult) -> None:
        returns = sorted((r for r in write_result.write_returns if r), key=lambda r: r["task"])
        stored = [block for r in returns for block in r["blocks"]]
        schema = _unified([b.schema_from_bytes(r["schema"]) for r in returns if r["schema"]]) or self._schema
        self.manifest = m.make_manifest(b.schema_bytes(schema or pa.schema([])), stored)
        try:
            old = [block[0] for block in read_manifest(self._cache, self.name)["blocks"]]
        except CacheMiss:
            old = []
        self._cache.set(m.manifest_id(self.name), self.manifest)
        kept = {block[0] for block in stored}
        # the replaced version's blocks, and those of a write task that Ray ran again
        stale = [i for i in old + block_ids(self._cache, self.name, self._token) if i not in kept]
        if stale:
            self._cache.delete_many(stale)
            forget_tables(self._cache)

    def on_write_failed(self, error: Exception) -> None:
        ids = block_ids(self._cache, self.name, self._token)
        if ids:
            self._cache.delete_many(ids)
            forget_tables(self._cache)

    def get_name(self) -> str:
        return f"Cache({self.name})"


def _unified(schemas: list[pa.Schema]) -> pa.Schema | None:
    """One schema for the blocks' schemas: the first when they agree or cannot be unified."""
    distinct = list({s.to_string(show_schema_metadata=False): s for s in schemas}.values())
    if len(distinct) <= 1:
        return distinct[0] if distinct else None
    try:
        return pa.unify_schemas(distinct)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return distinct[0]


def check_dataset(ds: Any) -> Dataset:
    if not isinstance(ds, Dataset):
        raise TypeError(f"expected a ray.data.Dataset, not {type(ds).__name__}")
    return ds
