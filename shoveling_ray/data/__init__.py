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

Needs ``ray[data]`` (pyarrow); ``import shoveling_ray`` does not import this package until
``shoveling_ray.data`` is used.
"""

from .manifest import BlockInfo, DatasetInfo
from .sink import CacheDatasink
from .source import cache_dataset, dataset_info, delete_dataset, list_datasets, read_dataset, write_dataset

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
