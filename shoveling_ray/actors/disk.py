"""The disk tier of one node's cache actor: spill files in a directory of its own.

Values that leave memory (``eviction="spill"``, see :mod:`.storage`) are written in batches:
:meth:`SpillFiles.write` puts payloads one after another into a new *segment* file, and each
payload is then known by a :class:`Spilled` ``(segment, offset, size)``. A segment is removed when the
last payload in it is freed (deleted, overwritten or read back into memory), so disk use is
the size of the segments that still hold something. Reads use ``preadv`` straight into a new
buffer: one copy from the page cache, none in Python.

The directory belongs to one (cache, node): whatever is in it when a tier starts was left by a
dead predecessor and is removed, and :meth:`SpillFiles.close` removes it all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Any, NamedTuple

import numpy as np

from ..codec import OUT_OF_BAND_BYTES
from ..settings import check_max_disk

#: Without an explicit ``max_disk``, spilling stops where less than this share of the disk
#: would stay free.
KEEP_FREE = 0.10


class Spilled(NamedTuple):
    """A frame payload kept in a spill file."""

    segment: int
    offset: int
    size: int


class SpillFiles:
    """Segment files under ``directory``, with a byte limit.

    Args:
        directory: created if absent; anything already in it is removed.
        max_disk: bytes the segments may take; ``None`` for "leave :data:`KEEP_FREE` of the
            disk free".
    """

    def __init__(self, directory: str, max_disk: int | None = None) -> None:
        self.directory = directory
        self._root = os.path.dirname(os.path.dirname(directory))  # spill_dir: never removed here
        self.max_disk = check_max_disk(max_disk)
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory)
        self._live: dict[int, list[int]] = {}  # segment -> [payload bytes still held, file size]
        self._next = 0
        self.used = 0

    def limit(self) -> int:
        """Bytes the segments may take now (with no ``max_disk``: what keeps 10% of the disk free)."""
        if self.max_disk is not None:
            return self.max_disk
        disk = shutil.disk_usage(self._root)
        return max(self.used + disk.free - int(KEEP_FREE * disk.total), 0)

    def room(self) -> int:
        """Bytes that can still be written."""
        return max(self.limit() - self.used, 0)

    def write(self, payloads: list) -> list[Spilled]:
        """Write bytes-like payloads into one new segment; returns where each went
        (:meth:`reserve`, :meth:`write_segment` and :meth:`register` in one).

        Raises:
            OSError: the disk refused (full, ENOSPC, or failing); the segment is removed, so
                nothing of the failed write stays on disk.
        """
        segment = self.reserve()
        out = self.write_segment(segment, payloads)
        self.register(segment, sum(w.size for w in out))
        return out

    def reserve(self) -> int:
        """A new segment's number, for :meth:`write_segment`."""
        segment, self._next = self._next, self._next + 1
        return segment

    def write_segment(self, segment: int, payloads: list) -> list[Spilled]:
        """Write bytes-like payloads into the file of ``segment`` (from :meth:`reserve`);
        returns where each went. It touches no other state of the tier, so it may run on
        another thread than the rest; the bytes count once :meth:`register` is called.

        Raises:
            OSError: the disk refused (full, ENOSPC, or failing); the file is removed, so
                nothing of the failed write stays on disk.
        """
        out, offset = [], 0
        try:
            with open(self._path(segment), "wb") as f:
                for payload in payloads:
                    view = memoryview(payload).cast("B")
                    f.write(view)
                    out.append(Spilled(segment, offset, view.nbytes))
                    offset += view.nbytes
        except OSError:
            self.discard(segment)
            raise
        return out

    def register(self, segment: int, size: int) -> None:
        """Count a segment written by :meth:`write_segment` (``size`` bytes)."""
        self._live[segment] = [size, size]
        self.used += size

    def discard(self, segment: int) -> None:
        """Remove the file of a segment that was never registered."""
        with contextlib.suppress(OSError):
            os.unlink(self._path(segment))

    def read(self, where: Spilled) -> Any:
        """The payload: ``bytes`` when small, else a uint8 array (which travels out of band)."""
        with open(self._path(where.segment), "rb", buffering=0) as f:
            if where.size < OUT_OF_BAND_BYTES:
                return os.pread(f.fileno(), where.size, where.offset)
            buf = np.empty(where.size, dtype=np.uint8)
            done = 0
            while done < where.size:
                got = os.preadv(f.fileno(), [memoryview(buf)[done:]], where.offset + done)
                if got == 0:
                    raise OSError(f"spill file {self._path(where.segment)} ends early")
                done += got
            return buf

    def free(self, where: Spilled) -> None:
        """Forget a payload; its segment goes when nothing in it is held."""
        live = self._live[where.segment]
        live[0] -= where.size
        if live[0] <= 0:
            del self._live[where.segment]
            self.used -= live[1]
            os.unlink(self._path(where.segment))

    def set_limit(self, max_disk: int | None) -> None:
        self.max_disk = check_max_disk(max_disk)

    def close(self) -> None:
        """Remove every file and the directory, and its parent (the cache's) once empty."""
        shutil.rmtree(self.directory, ignore_errors=True)
        try:
            os.rmdir(os.path.dirname(self.directory))
        except OSError:
            pass  # another node of the cache still has its directory there
        self._live.clear()
        self.used = 0

    def _path(self, segment: int) -> str:
        return os.path.join(self.directory, f"segment-{segment}")
