"""Ray Data and the cache: datasets stored where they were produced, read where they are.

::

    import shoveling_ray as sr
    info = sr.data.write_dataset(ds, cache, "features")          # -> DatasetInfo
    ds.write_datasink(sr.data.CacheDatasink(cache, "features"))   # the same, as a Datasink
    ds2 = sr.data.read_dataset(cache, "features")                 # -> ray.data.Dataset
    ds3 = sr.data.cache_dataset(ds, cache, "features")            # write on first use, then read
    sr.data.dataset_info(cache, "features")   # .schema, .rows, .bytes, .blocks: [.id, .rows, .nodes]
    sr.data.list_datasets(cache); sr.data.delete_dataset(cache, "features")

- ``manifest``: the ids and the manifest of a dataset, :class:`DatasetInfo` (no Ray).
- ``blocks``: blocks as Arrow IPC bytes, and the id that puts a block on its writer's node.
- ``sink``: :class:`CacheDatasink`, the write and its commit protocol.
- ``source``: reading, and the calls around it.

Limits: the manifest is an id like any other, so with one copy a dataset whose manifest's
node died raises ``DataLost`` naming the manifest. Blocks under 100 KB are returned to the
driver inline by Ray (not kept on their node), so downstream locality holds for larger blocks.
A write task still running after Ray Data gave up on a failed write may store its block after
the clean-up: ``delete_dataset`` removes every block under the name, whatever write left it.
Two writers of one name at once: the last manifest written wins.

Needs ``ray[data]`` (pyarrow), imported when one of its calls is first used: ``manifest``
alone (what the ``shoveling`` command shows) does without, and ``import shoveling_ray`` does
not import this package until ``shoveling_ray.data`` is used.
"""

import importlib

from .manifest import BlockInfo, DatasetInfo

_NEEDS_RAY_DATA = {
    "CacheDatasink": ".sink",
    "cache_dataset": ".source",
    "dataset_info": ".source",
    "delete_dataset": ".source",
    "list_datasets": ".source",
    "read_dataset": ".source",
    "write_dataset": ".source",
}


def __getattr__(name: str):
    if name in _NEEDS_RAY_DATA:
        return getattr(importlib.import_module(_NEEDS_RAY_DATA[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BlockInfo",
    "CacheDatasink",
    "DatasetInfo",
    "cache_dataset",
    "dataset_info",
    "delete_dataset",
    "list_datasets",
    "read_dataset",
    "write_dataset",
]
