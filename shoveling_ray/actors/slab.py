"""Small values of a node's store in one byte array, a few bytes each besides their payload.

An :class:`~.entries.Entry` costs a value about 500 bytes of Python objects besides its payload
(the entry, its frame list and tuple, the payload's ``bytes`` object, its places in the
store's dicts). A value of at most :data:`SMALL_BYTES` stored bytes in one frame, with no numpy
meta and no append tokens, is kept here instead: an :data:`HEADER`-byte header (kind, codec,
stored and raw length) and its payload, one after another in an anonymous memory map; the
store keeps each one's place (offset + 1) in its id table's ``small`` column. A value read
is built for the reader and not kept.

A value replaced or deleted leaves its bytes behind as garbage until the array is compacted
(:meth:`Slab.compact`, once garbage passes half of it). Plain Python and numpy, no Ray.
"""

from __future__ import annotations

import struct

import numpy as np

from .idtable import grown, new_array

#: Values of up to this many stored bytes (in one frame) are kept in the slab.
SMALL_BYTES = 512
_HEADER = struct.Struct("<BBHI")  # kind, codec, stored length, raw length
#: Bytes of a value's header.
HEADER = _HEADER.size
#: Bytes a slab holds at most (its places are uint32 in the id table): a small value that
#: would pass it is an entry instead.
MAX_BYTES = (1 << 32) - 2
#: The slab is compacted once its garbage passes this many bytes and half of it.
COMPACT_BYTES = 1 << 20
#: Values copied at a time while compacting (an index per byte of them).
_COMPACT_VALUES = 4096


def fits(meta: bytes, frames: list) -> bool:
    """Whether a value (``codec``'s meta and frames) may be kept in a slab."""
    if meta or len(frames) != 1:
        return False
    frame = frames[0]
    return len(frame) == 3 and type(frame[2]) is bytes and len(frame[2]) <= SMALL_BYTES and frame[1] < 1 << 32


class Slab:
    """Small values, each at a place (an int, never 0) that :meth:`put` returns."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Forget every value."""
        self._bytes = new_array(0, np.uint8)
        self._view = memoryview(self._bytes)
        self.used = 0  # bytes written, garbage included: what ``nbytes`` counts
        self.garbage = 0

    @property
    def nbytes(self) -> int:
        """Memory it takes (the part of its array written)."""
        return self.used

    def has_room(self, frame: tuple) -> bool:
        """Whether a value of one frame ``frame`` fits under :data:`MAX_BYTES`."""
        return self.used + HEADER + len(frame[2]) <= MAX_BYTES

    def put(self, kind: int, frame: tuple) -> int:
        """Store a value of ``kind`` whose one frame is ``frame`` (see :func:`fits`); its place."""
        codec, raw, payload = frame
        at, size = self.used, HEADER + len(payload)
        if at + size > len(self._bytes):
            self._bytes = grown(self._bytes, at, at + size)
            self._view = memoryview(self._bytes)
        _HEADER.pack_into(self._view, at, kind, codec, len(payload), raw)
        self._view[at + HEADER:at + size] = payload
        self.used = at + size
        return at + 1

    def get(self, place: int) -> tuple[int, tuple]:
        """``(kind, frame)`` of the value at ``place``."""
        at = place - 1
        kind, codec, size, raw = _HEADER.unpack_from(self._view, at)
        return kind, (codec, raw, self._view[at + HEADER:at + HEADER + size].tobytes())

    def sizes(self, place: int) -> tuple[int, int]:
        """``(stored, raw)`` bytes of the value at ``place``."""
        _, _, size, raw = _HEADER.unpack_from(self._view, place - 1)
        return size, raw

    def free(self, place: int) -> None:
        """The value at ``place`` is gone: its bytes are garbage until :meth:`compact`."""
        self.garbage += HEADER + self.sizes(place)[0]

    def wants_compacting(self) -> bool:
        return self.garbage > max(COMPACT_BYTES, self.used // 2)

    def compact(self, places: np.ndarray) -> np.ndarray:
        """Keep only the values at ``places`` (every value still stored, distinct); returns
        their new places, in the same order."""
        order = np.argsort(places, kind="stable")
        starts = places[order].astype(np.int64) - 1
        old = self._bytes
        sizes = HEADER + (old[starts + 2].astype(np.int64) | old[starts + 3].astype(np.int64) << 8)
        new_starts = np.cumsum(sizes) - sizes
        total = int(sizes.sum())
        new = new_array(total, np.uint8)
        for first in range(0, len(starts), _COMPACT_VALUES):
            part = slice(first, first + _COMPACT_VALUES)
            size = sizes[part]
            within = np.arange(int(size.sum())) - np.repeat(np.cumsum(size) - size, size)
            new[np.repeat(new_starts[part], size) + within] = old[np.repeat(starts[part], size) + within]
        self._bytes, self._view, self.used, self.garbage = new, memoryview(new), total, 0
        out = np.empty(len(places), np.int64)
        out[order] = new_starts + 1
        return out
