"""How batches travel between clients and node actors: one pickle (protocol 5) blob.

Ray serialises a list of many small tuples element by element, which costs more than the work
the actor does on them; a single bytes blob is one cheap argument. Payloads of at least
:data:`~shoveling_ray.codec.OUT_OF_BAND_BYTES` bytes leave the blob as separate uint8 arrays, which Ray moves out of band
(zero-copy into and out of its object store) and ``unpack`` puts back without copying.
ObjectRefs never go inside a blob: they travel beside it, where Ray counts references.
"""

from __future__ import annotations

import contextlib
import gc
import pickle
from typing import Any

import numpy as np

from .codec import OUT_OF_BAND_BYTES


def pack(obj: Any) -> tuple[bytes, list[np.ndarray]]:
    """``obj`` as ``(blob, buffers)``."""
    buffers: list[np.ndarray] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        view = buffer.raw()
        if view.nbytes < OUT_OF_BAND_BYTES:
            return True  # true means: keep it in the blob
        buffers.append(np.frombuffer(view, dtype=np.uint8))
        return False

    return pickle.dumps(obj, protocol=5, buffer_callback=out_of_band), buffers


def unpack(blob: bytes, buffers: list[np.ndarray]) -> Any:
    """Inverse of :func:`pack`."""
    with no_gc():
        return pickle.loads(blob, buffers=buffers)


@contextlib.contextmanager
def no_gc():
    """Pause the cyclic garbage collector around building many small acyclic objects.

    A batch of ten thousand ids allocates tuples by the ten thousand, and each 700 allocations
    start a collection that scans them all again: about a third of a batch's time.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
