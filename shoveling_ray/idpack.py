"""Many ids as one UTF-8 byte array and the end offset of each: how ``init`` moves millions of
ids between processes without a Python string (49 bytes plus its characters) and a tuple per
id in each, and how the node's id table (:mod:`.actors.idtable`) takes them.

Also the one hash every id has on both sides: CRC-32 of its UTF-8 bytes (:func:`crc32`, the
same figure as ``zlib.crc32``, so :func:`~shoveling_ray.placement.slot_of` agrees), computed
for a whole pack with numpy. Plain numpy and zlib, no Ray; what the ids mean is the caller's.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Names up to this many bytes are hashed with numpy a byte position at a time (a pass over
#: every such name per position); longer ones each with ``zlib.crc32``.
_NUMPY_CRC_BYTES = 64
#: Ids :meth:`PackedIds.take` copies at a time (it makes an index per byte of them).
_TAKE_IDS = 8192


def _crc_table() -> np.ndarray:
    """CRC-32's (reflected polynomial 0xEDB88320) byte table, as ``zlib`` uses it."""
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0xEDB88320), table >> 1).astype(np.uint32)
    return table


_CRC_TABLE = _crc_table()


@dataclass(frozen=True)
class PackedIds:
    """Ids, their UTF-8 bytes one after another.

    Attributes:
        blob: uint8 array of the ids' bytes.
        ends: int64 array, where each id ends in ``blob``.
    """

    blob: np.ndarray
    ends: np.ndarray

    @classmethod
    def of(cls, names: Sequence[str]) -> PackedIds:
        """The pack of ``names`` (str)."""
        joined = "".join(names).encode()
        lengths = np.fromiter(map(len, names), np.int64, len(names))
        if len(joined) != int(lengths.sum()):  # not all ASCII: lengths in bytes differ
            encoded = [n.encode() for n in names]
            joined, lengths = b"".join(encoded), np.fromiter(map(len, encoded), np.int64, len(names))
        return cls(np.frombuffer(joined, np.uint8), np.cumsum(lengths))

    def __len__(self) -> int:
        return len(self.ends)

    def __iter__(self):
        """The ids as str (for messages naming them: :meth:`names`)."""
        return iter(self.names())

    @property
    def starts(self) -> np.ndarray:
        """Where each id starts in ``blob``."""
        starts = np.empty(len(self.ends), np.int64)
        starts[:1] = 0
        starts[1:] = self.ends[:-1]
        return starts

    def names(self) -> list[str]:
        """The ids as str (a string object each: for the few ids a slow path needs)."""
        data = self.blob.tobytes()
        return [data[a:b].decode() for a, b in zip(self.starts.tolist(), self.ends.tolist())]

    def take(self, indices: np.ndarray) -> PackedIds:
        """The pack of the ids at ``indices`` (in that order)."""
        indices = np.asarray(indices, np.int64)
        starts, ends = self.starts[indices], self.ends[indices]
        lengths = ends - starts
        new_ends = np.cumsum(lengths)
        blob = np.empty(int(new_ends[-1]) if len(new_ends) else 0, np.uint8)
        for first in range(0, len(indices), _TAKE_IDS):  # an index per byte: a few ids at a time
            part = slice(first, first + _TAKE_IDS)
            sizes, begin = lengths[part], int(new_ends[first] - lengths[first])
            offsets = np.repeat(starts[part] - (new_ends[part] - sizes), sizes)
            blob[begin:begin + len(offsets)] = self.blob[np.arange(begin, begin + len(offsets)) + offsets]
        return PackedIds(blob, new_ends)

    def crc32(self) -> np.ndarray:
        """``zlib.crc32`` of each id's bytes, as a uint32 array."""
        starts, ends = self.starts, self.ends
        lengths = ends - starts
        out = np.empty(len(ends), np.uint32)
        short = np.nonzero(lengths <= _NUMPY_CRC_BYTES)[0]
        order = short[np.argsort(-lengths[short], kind="stable")]  # longest first: a prefix stays
        longest_first = -lengths[order]
        crc = np.full(len(order), 0xFFFFFFFF, np.uint32)
        begin = starts[order]
        blob = self.blob
        for k in range(int(-longest_first[0]) if len(order) else 0):
            live = int(np.searchsorted(longest_first, -k, side="left"))  # ids longer than k
            c = crc[:live]
            crc[:live] = _CRC_TABLE[(c ^ blob[begin[:live] + k]) & 0xFF] ^ (c >> 8)
        out[order] = crc ^ np.uint32(0xFFFFFFFF)
        data = None
        for index in np.nonzero(lengths > _NUMPY_CRC_BYTES)[0].tolist():
            data = self.blob.tobytes() if data is None else data
            out[index] = zlib.crc32(data[int(starts[index]):int(ends[index])])
        return out


def mix(crc: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser of each CRC: CRC-32 is linear, so ids alike (``id-1``,
    ``id-2``, ...) and the ids of one home (their CRCs share the slot's low bits) would crowd
    some parts of an open-addressing index; mixed, every bit depends on every other."""
    h = crc.astype(np.uint32)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def mix_one(crc: int) -> int:
    """:func:`mix` of one CRC, in plain Python."""
    crc ^= crc >> 16
    crc = (crc * 0x85EBCA6B) & 0xFFFFFFFF
    crc ^= crc >> 13
    crc = (crc * 0xC2B2AE35) & 0xFFFFFFFF
    return crc ^ (crc >> 16)
