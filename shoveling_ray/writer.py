"""Buffered appends for shuffles: many small appends, few actor calls.

``with cache.writer() as w: w.append(id, data)`` gathers appends per id in memory and sends
them with one ``append_many`` (one actor call per node) whenever the buffer reaches
``max_bytes``, on ``flush()``, and on leaving the ``with`` block (also when it is left with an
exception: what was appended is written). Appends to one id keep their call order, and land
after everything this writer flushed before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .codec import as_buffer
from .ids import check_id

if TYPE_CHECKING:
    from .cache import Cache

DEFAULT_MAX_BYTES = 8 << 20


class BufferedWriter:
    """Buffers appends to a :class:`~shoveling_ray.Cache`; see the module docstring.

    Args:
        cache: the cache to append to.
        max_bytes: flush when this many bytes are buffered (at least 1).

    Raises:
        ValueError / TypeError: ``max_bytes`` is not a positive int.
    """

    def __init__(self, cache: Cache, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
            raise TypeError(f"max_bytes must be an int, not {type(max_bytes).__name__}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self._cache = cache
        self._max_bytes = max_bytes
        self._parts: dict[str, list] = {}
        self._size = 0
        self.flushes = 0

    def append(self, cache_id: str, data: Any) -> None:
        """Buffer the bytes of ``data`` (as :meth:`~shoveling_ray.Cache.append` takes them) for
        ``cache_id``; flushes when the buffer is full.

        Raises:
            TypeError: ``data`` exports no buffer, or the id is not a str (nothing buffered).
            ValueError: empty id, or a buffer that is not C-contiguous.
        """
        check_id(cache_id)
        buf = as_buffer(data)
        if buf is None:
            raise TypeError(f"append takes data exporting a buffer (bytes, bytearray, memoryview, a numpy array, "
                            f"...), not {type(data).__name__}")
        chunk = bytes(buf)  # the caller may reuse its buffer
        parts = self._parts.get(cache_id)
        if parts is None:
            self._parts[cache_id] = [chunk]
        else:
            parts.append(chunk)
        self._size += len(chunk)
        if self._size >= self._max_bytes:
            self.flush()

    def flush(self) -> None:
        """Send everything buffered (one actor call per node)."""
        if not self._parts:
            return
        batch = {cache_id: b"".join(parts) for cache_id, parts in self._parts.items()}
        self._parts.clear()
        self._size = 0
        self._cache.append_many(batch)
        self.flushes += 1

    @property
    def buffered_bytes(self) -> int:
        return self._size

    def __enter__(self) -> BufferedWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.flush()
