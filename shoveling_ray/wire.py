"""How batches travel between clients and node actors: one pickle (protocol 5) blob.

Ray serialises a list of many small tuples element by element, which costs more than the work
the actor does on them; a single bytes blob is one cheap argument. Payloads of at least
:data:`~shoveling_ray.codec.OUT_OF_BAND_BYTES` bytes leave the blob as separate uint8 arrays, which Ray moves out of band
(zero-copy into and out of its object store) and ``unpack`` puts back without copying.
ObjectRefs never go inside a blob: they travel beside it, where Ray counts references.

A blob travels :func:`split` into arguments of at most :data:`INLINE_BYTES`: Ray sends such
arguments inside the call's message, where a larger one goes through its object store, which
cost 4-6 ms of a call carrying 450 KB here against 1.1-1.4 ms for the same bytes inline.
"""

from __future__ import annotations

import contextlib
import gc
import pickle
from typing import Any

import numpy as np

from .codec import OUT_OF_BAND_BYTES


#: Largest piece of a blob per call argument: Ray inlines arguments up to 100 KiB
#: (``max_direct_call_object_size``, pickling adds a few bytes).
INLINE_BYTES = 96 << 10


class Bundled(list):
    """Out-of-band buffers of a write to an id with copies: the payloads under
    :data:`~shoveling_ray.codec.OBJECT_STORE_BYTES` travel together as one object of the
    writer's, which the primary can hand on to the copies instead of sending its own
    (:func:`~shoveling_ray.objects.as_refs`, :func:`~shoveling_ray.objects.forwardable`)."""


def split(blob: bytes) -> list[bytes]:
    """``blob`` in pieces of at most :data:`INLINE_BYTES` (one piece, maybe empty, at least)."""
    if len(blob) <= INLINE_BYTES:
        return [blob]
    return [blob[i : i + INLINE_BYTES] for i in range(0, len(blob), INLINE_BYTES)]


def join(pieces: tuple | list) -> bytes:
    """Inverse of :func:`split`."""
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


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
