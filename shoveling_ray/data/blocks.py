"""Dataset blocks as bytes: Arrow IPC streams, and where a writer puts them.

A block is stored as the Arrow IPC stream of its table, a uint8 array to the cache (numpy
values come back from ``get`` as a view of the object store, so :func:`from_ipc` reads the
table without a copy). Arrow's extension types (Ray Data's tensor columns) travel in the
schema's field metadata and come back as themselves once Ray Data registered them, which
importing this module does.

It does not decide what a dataset is (``manifest``) nor run tasks (``sink``, ``source``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from ray.data.block import BlockAccessor  # importing ray.data registers its Arrow extension types

from .manifest import salted

if TYPE_CHECKING:
    from ..cache import Cache

#: Salts a writer tries for an id homed on its node before it stores the block at any home
#: (a node owning one slot in a hundred still finds one with odds of 1 - e^-10).
MAX_SALTS = 1000


def as_table(block: Any) -> pa.Table:
    """``block`` as an Arrow table (pandas blocks are converted as Ray Data converts them).

    Raises:
        TypeError: ``block`` is not a table (Arrow or pandas).
    """
    if isinstance(block, pa.Table):
        return block
    try:
        import pandas as pd
    except ImportError:  # without pandas no block can be a DataFrame
        pd = None
    if pd is not None and isinstance(block, pd.DataFrame):
        return BlockAccessor.for_block(block).to_arrow()
    raise TypeError(f"dataset blocks must be tables (pyarrow.Table or pandas.DataFrame), not {type(block).__name__}")


def to_ipc(table: pa.Table) -> np.ndarray:
    """The Arrow IPC stream of ``table`` as a read-only uint8 array (no copy of the stream)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return np.frombuffer(sink.getvalue(), dtype=np.uint8)


def from_ipc(data: Any) -> pa.Table:
    """The table of an Arrow IPC stream (``bytes`` or a uint8 array), its buffers views of
    ``data``."""
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def schema_bytes(schema: pa.Schema) -> bytes:
    return schema.serialize().to_pybytes()


def schema_from_bytes(data: bytes) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(data))


def id_on_node(cache: Cache, base: str, node: str) -> str:
    """``base`` salted so that its home, where ``set`` stores it, is ``node``.

    A node without a cache actor (it joined after the cache started) is home to no id: the
    block then lives at the home of ``salted(base, 0)``.
    """
    if node in cache.nodes():
        home = cache._home  # the routing table's hash, computed here: no call per salt tried
        for salt in range(MAX_SALTS):
            if home(salted(base, salt)) == node:
                return salted(base, salt)
    return salted(base, 0)
