"""shoveling_ray: a distributed in-memory cache and shuffle manager for Ray clusters.

One cache actor is pinned to every Ray node; :class:`Cache` routes ``set`` / ``get`` /
``append`` to the node that owns each id, creates many empty ids spread over the cluster with
``init``, and tells tasks where to run with ``scheduling_strategy``. :class:`Shuffle` runs
map / reduce shuffles on a cache; :class:`BufferedWriter` (``cache.writer()``) batches many
small appends. :mod:`shoveling_ray.data` stores and reads ``ray.data.Dataset`` objects
(imported on first use: it needs ``ray[data]``).
"""

import importlib

from .cache import Cache
from .errors import (
    CacheClosed,
    CacheFull,
    CacheMiss,
    CacheNotFound,
    ConsulError,
    DataLost,
    NodeDrained,
    NodeUnavailable,
    ShovelingError,
)
from .observe.display import Stats
from .placement import STRATEGIES
from .shuffle import Shuffle
from .writer import BufferedWriter

#: The package version (pyproject.toml reads it from here).
__version__ = "0.1.0"


def __getattr__(name: str):
    # ``sr.data`` without importing Ray Data (and pyarrow) with every ``import shoveling_ray``
    if name == "data":
        return importlib.import_module(".data", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BufferedWriter",
    "Cache",
    "CacheClosed",
    "CacheFull",
    "CacheMiss",
    "CacheNotFound",
    "ConsulError",
    "DataLost",
    "NodeDrained",
    "NodeUnavailable",
    "STRATEGIES",
    "ShovelingError",
    "Shuffle",
    "Stats",
    "__version__",
]
