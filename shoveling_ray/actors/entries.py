"""One stored value of a node's store, :class:`Entry`, and what it costs in memory.

Plain Python, no Ray. An entry holds an encoded value (``codec``'s ``(kind, meta, frames)``)
without looking inside the payloads; its frames may be in the heap, in Ray's object store or
in spill files (:class:`~.disk.Spilled`). It knows its own sizes and its trailing small pieces
(joined once they add up to :data:`COALESCE_BYTES`, so a value built from many small appends
costs its bytes, not a Python object per piece).

Not the store's totals, limits or policies (:mod:`.storage`), nor spilling (:mod:`.spill_rounds`).
"""

from __future__ import annotations

from ..codec import CODEC_RAW, Stored, payload_size, raw_size, stored_size
from .disk import Spilled

#: Memory an id with a value takes besides its frames and the characters of its name: the entry, its frame
#: list, its places in the store's dicts and the id's string object (measured with
#: tracemalloc, checked in ``tests/unit/test_storage.py``).
ID_OVERHEAD = 280
#: Memory a frame takes besides its payload bytes: its tuple, the payload's object header.
FRAME_OVERHEAD = 110
#: Memory an append token takes in its id's set (see :meth:`.Store.append`).
TOKEN_OVERHEAD = 100
#: Trailing small appended pieces of a value are joined once they add up to this many bytes.
COALESCE_BYTES = 64 << 10


def overhead(cache_id: str, frames: int) -> int:
    """Memory an id with ``frames`` frames takes besides its payload bytes."""
    return ID_OVERHEAD + len(cache_id) + FRAME_OVERHEAD * frames


def is_small_raw(frame: tuple) -> bool:
    """Whether a frame is a small uncompressed piece in the heap, one that may be joined."""
    payload = frame[2]
    return frame[0] == CODEC_RAW and type(payload) is bytes and len(payload) < COALESCE_BYTES


def in_memory(frame: tuple) -> bool:
    """Whether a frame holds payload bytes in memory (the heap or Ray's object store)."""
    payload = frame[2]
    return type(payload) is not Spilled and (payload.size if type(payload) is Stored else payload_size(payload)) > 0


class Entry:
    """One stored value: its kind, numpy meta, frames and sizes.

    ``nbytes`` counts the payload bytes in memory, ``disk`` those in spill files, ``raw``
    all of them before compression; ``tail`` / ``tail_bytes`` the trailing small raw frames
    not joined yet.
    """

    __slots__ = ("kind", "meta", "frames", "nbytes", "raw", "disk", "tail", "tail_bytes", "tokens")

    def __init__(self, kind: int, meta: bytes, frames: list) -> None:
        self.kind, self.meta, self.frames = kind, meta, frames
        self.disk = self.tail = self.tail_bytes = 0
        self.tokens: set | None = None  # of the appends applied with a token
        if len(frames) == 1 and len(frames[0]) == 3 and type(frames[0][2]) is bytes:
            self.raw = frames[0][1]  # the common small case, without the generic walk
            self.nbytes = len(frames[0][2])
        else:
            self.nbytes = stored_size(frames)
            self.raw = raw_size(frames)

    def cost(self, cache_id: str) -> int:
        """Memory it takes."""
        tokens = TOKEN_OVERHEAD * len(self.tokens) if self.tokens else 0
        return self.nbytes + overhead(cache_id, len(self.frames)) + tokens

    def extend(self, added: Entry, token: str | None) -> None:
        """Append the frames of ``added`` (bytes frames), taking ``token`` if given; the
        trailing small pieces are joined once they add up to :data:`COALESCE_BYTES`."""
        for frame in added.frames:
            self.frames.append(frame)
            if is_small_raw(frame):
                self.tail += 1
                self.tail_bytes += len(frame[2])
            else:
                self.tail = self.tail_bytes = 0
        self.nbytes += added.nbytes
        self.raw += added.raw
        if token is not None:
            if self.tokens is None:
                self.tokens = set()
            self.tokens.add(token)
        if self.tail > 1 and self.tail_bytes >= COALESCE_BYTES:
            tail = self.frames[-self.tail:]
            del self.frames[-self.tail:]
            self.frames.append((CODEC_RAW, self.tail_bytes, b"".join(f[2] for f in tail)))
            self.tail = self.tail_bytes = 0

    def spilled(self, places: dict) -> None:
        """Put spill-file places (``{id(frame): [Spilled]}``, taken from it) in place of the
        frames they were written from; raw pieces written one after another become one."""
        frames: list = []
        moved = 0
        for f in self.frames:
            where = places.get(id(f))
            if not where:
                frames.append(f)
                continue
            where = where.pop(0)
            moved += where.size
            last = frames[-1] if frames else None
            if f[0] == CODEC_RAW and last and last[0] == CODEC_RAW and type(last[2]) is Spilled \
                    and last[2].segment == where.segment and last[2].offset + last[2].size == where.offset:
                # Raw pieces written one after another read back as one.
                frames[-1] = (CODEC_RAW, last[1] + f[1], Spilled(where.segment, last[2].offset, last[2].size + where.size))
            else:
                frames.append((f[0], f[1], where))
        self.frames = frames
        self.nbytes -= moved
        self.disk += moved
        tail = 0
        while tail < len(frames) and is_small_raw(frames[-1 - tail]):
            tail += 1
        self.tail, self.tail_bytes = tail, sum(len(f[2]) for f in frames[len(frames) - tail:])
