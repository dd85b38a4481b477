"""The storage engine of one node's cache actor: entries, byte accounting, limits, eviction.

Plain Python, no Ray: the actor wraps it, tests drive it directly. It stores encoded values
(``codec``'s ``(kind, meta, frames)``) without looking inside them and counts the bytes of
their payloads as stored (compressed) plus their raw size for reporting. Per-entry Python
overhead (about 200 bytes an id) is not counted against ``max_memory``.

Policies when a write would pass ``max_memory``:

- ``reject`` (default, safe for shuffles): the write raises :class:`~shoveling_ray.CacheFull`
  and nothing stored changes.
- ``lru``: least recently used non-empty entries are evicted until the write fits. A value
  larger than the whole limit is refused with ``CacheFull`` and evicts nothing.

Lowering the limit below current usage applies the policy: ``lru`` evicts at once, ``reject``
keeps everything and refuses writes that add bytes until usage falls below the limit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from ..codec import KIND_BYTES, raw_size, stored_size
from ..errors import CacheFull

POLICIES = ("reject", "lru")


def check_policy(policy: object) -> str:
    """Return ``policy`` if valid.

    Raises:
        ValueError: not ``"reject"`` or ``"lru"``.
    """
    if policy not in POLICIES:
        raise ValueError(f"eviction must be 'reject' or 'lru', not {policy!r}")
    return policy  # type: ignore[return-value]


def check_max_memory(max_memory: object) -> int | None:
    """Return ``max_memory`` if it is ``None`` or a non-negative int.

    Raises:
        TypeError: not an int (bools are refused too).
        ValueError: negative.
    """
    if max_memory is None:
        return None
    if isinstance(max_memory, bool) or not isinstance(max_memory, int):
        raise TypeError(f"max_memory must be an int number of bytes or None, not {type(max_memory).__name__}")
    if max_memory < 0:
        raise ValueError(f"max_memory must not be negative, got {max_memory}")
    return max_memory


class Entry:
    """One stored value: its kind, numpy meta, frames and sizes."""

    __slots__ = ("kind", "meta", "frames", "nbytes", "raw")

    def __init__(self, kind: int, meta: bytes, frames: list) -> None:
        self.kind, self.meta, self.frames = kind, meta, frames
        if len(frames) == 1 and len(frames[0]) == 3 and type(frames[0][2]) is bytes:
            self.raw = frames[0][1]  # the common small case, without the generic walk
            self.nbytes = len(frames[0][2])
        else:
            self.nbytes = stored_size(frames)
            self.raw = raw_size(frames)


class Store:
    """Entries of one node with a byte limit and an eviction policy.

    Args:
        node_id: hex id of the node, named in ``CacheFull``.
        max_memory: limit in bytes on stored payloads; ``None`` for no limit.
        policy: ``"reject"`` or ``"lru"``.
    """

    def __init__(self, node_id: str, max_memory: int | None = None, policy: str = "reject") -> None:
        self.node_id = node_id
        self.max_memory = check_max_memory(max_memory)
        self.policy = check_policy(policy)
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self.used = 0
        self.raw = 0
        self.evictions = 0

    def __contains__(self, cache_id: str) -> bool:
        return cache_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, cache_id: str) -> Entry | None:
        """The entry, marked as recently used, or ``None``."""
        entry = self._entries.get(cache_id)
        if entry is not None:
            self._entries.move_to_end(cache_id)
        return entry

    def peek(self, cache_id: str) -> Entry | None:
        """The entry without touching its recency."""
        return self._entries.get(cache_id)

    def set(self, cache_id: str, kind: int, meta: bytes, frames: list) -> int:
        """Replace the value of ``cache_id``; returns the bytes stored.

        Raises:
            CacheFull: it does not fit (see the module docstring); nothing changed.
        """
        new = Entry(kind, meta, frames)
        old = self._entries.get(cache_id)
        self._make_room(cache_id, new.nbytes - (old.nbytes if old else 0), keep=cache_id)
        if old is not None:
            self._account(old, -1)
        self._entries[cache_id] = new
        self._entries.move_to_end(cache_id)
        self._account(new, +1)
        return new.nbytes

    def append(self, cache_id: str, frames: list) -> int:
        """Append bytes frames to ``cache_id``, creating it if absent; returns the bytes added.

        Raises:
            TypeError: the stored value is not bytes.
            CacheFull: it does not fit; nothing changed.
        """
        entry = self._entries.get(cache_id)
        if entry is not None and entry.kind != KIND_BYTES:
            raise TypeError(f"cannot append to {cache_id!r}: its value is not bytes")
        added = Entry(KIND_BYTES, b"", frames)
        self._make_room(cache_id, added.nbytes, keep=cache_id)
        if entry is None:
            self._entries[cache_id] = added
        else:
            entry.frames.extend(frames)
            entry.nbytes += added.nbytes
            entry.raw += added.raw
            self._entries.move_to_end(cache_id)
        self.used += added.nbytes
        self.raw += added.raw
        return added.nbytes

    def create_empty(self, cache_id: str) -> bool:
        """Create ``cache_id`` as empty bytes unless it exists. Returns whether it was created."""
        if cache_id in self._entries:
            return False
        self._entries[cache_id] = Entry(KIND_BYTES, b"", [])
        return True

    def delete(self, cache_id: str) -> bool:
        """Remove ``cache_id``. Returns whether it existed."""
        entry = self._entries.pop(cache_id, None)
        if entry is None:
            return False
        self._account(entry, -1)
        return True

    def ids(self, prefix: str = "") -> Iterator[str]:
        """Ids starting with ``prefix``."""
        return (i for i in self._entries if i.startswith(prefix))

    def configure(self, max_memory: int | None, policy: str) -> None:
        """Change the limit and policy; under ``lru`` evict at once down to the new limit."""
        self.max_memory = check_max_memory(max_memory)
        self.policy = check_policy(policy)
        if self.policy == "lru" and self.max_memory is not None:
            self._evict_until(self.max_memory)

    def stats(self) -> dict:
        """``used`` / ``raw`` / ``limit`` / ``ids`` / ``evictions`` / ``policy``."""
        return {
            "used": self.used,
            "raw": self.raw,
            "limit": self.max_memory,
            "ids": len(self._entries),
            "evictions": self.evictions,
            "policy": self.policy,
        }

    def _account(self, entry: Entry, sign: int) -> None:
        self.used += sign * entry.nbytes
        self.raw += sign * entry.raw

    def _make_room(self, cache_id: str, delta: int, keep: str) -> None:
        limit = self.max_memory
        if limit is None or delta <= 0 or self.used + delta <= limit:
            return
        own = self._entries[keep].nbytes if keep in self._entries else 0
        if self.policy == "reject" or own + delta > limit:
            raise CacheFull(self.node_id, limit, self.used, delta, cache_id)
        self._evict_until(limit - delta, keep=keep)

    def _evict_until(self, target: int, keep: str | None = None) -> None:
        for victim in list(self._entries):
            if self.used <= target:
                return
            entry = self._entries[victim]
            if victim == keep or entry.nbytes == 0:
                continue
            self.delete(victim)
            self.evictions += 1
