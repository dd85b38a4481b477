"""The storage engine of one node's cache actor: entries, memory accounting, limits, eviction
and the disk tier.

Plain Python, no Ray: the actor wraps it, tests drive it directly. It stores encoded values
(``codec``'s ``(kind, meta, frames)``) without looking inside them. ``used`` is the memory the
entries really take: their payloads as stored (compressed; in the heap or in Ray's object
store) plus the Python objects around them (:func:`overhead`, measured per id and per frame).
``raw`` is the payload bytes before compression, for reporting.

Policies when a write would pass ``max_memory``:

- ``spill`` (default for new caches): least recently used values move to spill files
  (:mod:`.disk`) until the write fits, and come back into memory when read, if they fit
  without pushing anything else out (otherwise they are served from disk). A value may be
  partly on disk: what is appended after it was spilled stays in memory until the next spill.
  With a background spiller (the node actor runs one, :mod:`.spiller`; ``wake``), a write
  that passes ``max_memory`` returns once its bytes are counted, and the spiller writes the
  least recently used values out in rounds, down to :data:`SPILL_TO` of the limit, without
  holding the actor's lock while it writes (:meth:`Store.start_spill`). Only a write that
  would pass the hard ceiling (:data:`CEILING` times the limit) spills first, and waits while
  it does (back-pressure, counted in ``spill_wait``); without a spiller every write past the
  limit does. A write gets ``CacheFull`` only when the disk tier has no room either, or
  spilling took longer than :data:`SPILL_TIMEOUT`, and then nothing stored changes.
- ``reject``: the write raises :class:`~shoveling_ray.CacheFull` and nothing stored changes.
- ``lru``: least recently used non-empty entries are evicted until the write fits. A value
  larger than the whole limit is refused with ``CacheFull`` and evicts nothing.

Lowering the limit below current usage applies the policy at once (``spill`` spills, ``lru``
evicts); ``reject`` keeps everything and refuses writes that add bytes until usage falls
below the limit.

An empty id (``init`` makes millions of them) has no :class:`Entry`: it is a row of the node's
:class:`~.idtable.IdTable` (column ``empty``), which the placement directory shares for its
records; the table's whole memory is counted in ``used``. It becomes an entry when written.
A small value (:func:`.slab.fits`: up to :data:`~.slab.SMALL_BYTES` stored bytes in one frame,
without numpy meta or append tokens) has no entry either, except under ``lru`` with a limit
(which evicts values one by one, least recently used first): it is kept in the node's
:class:`~.slab.Slab`, its place in the table's ``small`` column, at about 50 bytes besides its
payload where an entry costs about 500. Small values are not spilled: an entry's payload was
the least of what it cost, so spilling one freed a fifth of it. An append to a small value, or
``lru`` with a limit, turns it into an entry.

Its parts: :mod:`.entries` (one value, :class:`~.entries.Entry`, and what it costs; small
appended pieces are joined there) and :mod:`.spill_rounds` (which values a round of spilling
writes, and what it left); the spill files are :mod:`.disk`'s.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

import numpy as np

from ..codec import KIND_BYTES
from ..errors import CacheFull
from ..idpack import PackedIds
from ..settings import check_eviction as check_policy
from ..settings import check_max_memory
from .disk import Spilled, SpillFiles
from .entries import FRAME_OVERHEAD, TOKEN_OVERHEAD, Entry, overhead
from .idtable import IdTable
from .slab import HEADER, Slab, fits
from .spill_rounds import SpillJob, SpillRounds

#: The columns of a node's id table: ``empty`` and ``small`` (the store's: held here, empty or
#: a small value in the slab at that place; no entry), ``record`` and ``lost`` (the
#: directory's: see :mod:`.directory`).
ID_COLUMNS = ("empty", "small", "record", "lost")
#: The columns wider than an int16.
WIDE_COLUMNS = {"small": np.uint32}
_HELD = ("empty", "small")

log = logging.getLogger(__name__)

#: Memory an empty id's row in the id table takes besides its name's bytes, as
#: :attr:`.IdTable.nbytes` counts it on average (the index about 60% full); only to make room
#: before the row exists: ``used`` counts the table's real size.
EMPTY_BYTES = 30
#: A spill goes down to this share of ``max_memory``, so that the writes that follow do not
#: each spill a sliver.
SPILL_TO = 0.9
#: Seconds a write may wait for spilling to make room before it gets ``CacheFull``.
SPILL_TIMEOUT = 60.0
#: With a background spiller, the hard ceiling as a multiple of ``max_memory``: a write that
#: stays under it returns once its bytes are counted while the node spills in the background;
#: one that would pass it spills first (back-pressure, counted in ``spill_wait``).
CEILING = 1.25


class Store:
    """Entries of one node with a memory limit, an eviction policy and a disk tier.

    Args:
        node_id: hex id of the node, named in ``CacheFull``.
        max_memory: limit in bytes on memory held (see the module docstring); ``None`` for
            no limit.
        policy: ``"spill"``, ``"reject"`` or ``"lru"``.
        disk: the spill files; ``None`` for none (``spill`` then behaves as ``reject``).
        own: makes frames read back from disk the store's own (the actor puts large payloads
            into Ray's object store); identity by default.
        load: the bytes of a payload kept in Ray's object store, to write it to disk.
        wake: with ``spill``, called when a write leaves the store over ``max_memory``: the
            owner then spills in the background (:meth:`start_spill`), and writes spill
            themselves only past :data:`CEILING`; ``None``: writes spill before they return.
        table: the node's id table (:data:`ID_COLUMNS`); ``None``: one of its own.
    """

    def __init__(
        self,
        node_id: str,
        max_memory: int | None = None,
        policy: str = "spill",
        disk: SpillFiles | None = None,
        own: Callable[[list], list] = lambda frames: frames,
        load: Callable | None = None,
        wake: Callable[[], None] | None = None,
        table: IdTable | None = None,
    ) -> None:
        self.node_id = node_id
        self.max_memory = check_max_memory(max_memory)
        self.policy = check_policy(policy)
        self.disk = disk
        self._own, self._wake = own, wake
        self._rounds = SpillRounds(disk, load)
        self._closed = False
        self._entries: dict[str, Entry] = {}
        self.table = table if table is not None else IdTable(ID_COLUMNS, WIDE_COLUMNS)
        self._slab = Slab()
        self._table_bytes = 0  # of ``used``: the table's and the slab's memory when last counted
        # Ids with payload bytes in memory, least recently used first: what may be spilled.
        self._resident: OrderedDict[str, None] = OrderedDict()
        self.used = 0
        self.bookkeeping = 0  # of ``used``: the owner's memory besides the entries (see charge)
        self.payload = 0  # payload bytes in memory: what spilling can free
        self.raw = 0
        self.evictions = self.spills = self.restores = 0
        self.evicted: list[str] = []  # ids evicted (lru) since the owner last took them
        self.spill_wait = 0.0

    def __contains__(self, cache_id: str) -> bool:
        return cache_id in self._entries or any(self.table.fields(cache_id, _HELD))

    def __len__(self) -> int:
        return len(self._entries) + self.table.count("empty") + self.table.count("small")

    def _held_rows(self, cache_ids: list[str] | PackedIds) -> np.ndarray:
        """Whether each id is held here without an entry (empty, or a small value)."""
        found = self.table.lookup(cache_ids, _HELD)
        return (found["empty"] != 0) | (found["small"] != 0)

    def holds_many(self, cache_ids: list[str]) -> list[bool]:
        """Whether each id is held here (``in`` for many at once)."""
        entries = self._entries
        return [e or i in entries for i, e in zip(cache_ids, self._held_rows(cache_ids).tolist())]

    def holds_places(self, cache_ids: list[str]) -> tuple[list[bool], list[int]]:
        """:meth:`holds_many`, and each id's place in the slab (0: none), for :meth:`get`."""
        found, entries = self.table.lookup(cache_ids, _HELD), self._entries
        places = found["small"].tolist()
        return [bool(e or s) or i in entries for i, e, s in zip(cache_ids, found["empty"].tolist(), places)], places

    def holds_packed(self, cache_ids: PackedIds) -> np.ndarray:
        """:meth:`holds_many` of a pack, as a bool array (a str per id only when the store
        holds some value: a cache of ``init``'s empty ids only holds none)."""
        held = self._held_rows(cache_ids)
        if self._entries:
            entries = self._entries
            held |= np.fromiter((i in entries for i in cache_ids.names()), bool, len(cache_ids))
        return held

    def _tabled(self, cache_id: str) -> tuple | None:
        """The value of an id held without an entry (empty, or small), or ``None``."""
        empty, place = self.table.fields(cache_id, _HELD)
        if place:
            kind, frame = self._slab.get(place)
            return kind, b"", [frame]
        return (KIND_BYTES, b"", []) if empty else None

    def peek(self, cache_id: str) -> Entry | None:
        """The entry without touching its recency; its frames may name spill files. An
        empty id's or a small value's is made for the caller (changing it changes nothing
        stored)."""
        entry = self._entries.get(cache_id)
        if entry is None:
            value = self._tabled(cache_id)
            return None if value is None else Entry(*value)
        return entry

    def retable(self) -> None:
        """Count the id table's and the slab's memory in ``used`` as it is now (the table's
        owners call this after changing it)."""
        now = self.table.nbytes + self._slab.nbytes
        self.used += now - self._table_bytes
        self._table_bytes = now

    def _take_empty(self, cache_id: str) -> bool:
        """Turn an id held without an entry (empty, or small) into an id about to get one;
        whether it was one."""
        empty, place = self.table.fields(cache_id, _HELD)
        if place:
            self._drop_small(cache_id, place)
        elif empty:
            self.table.set(cache_id, "empty", 0)
        return bool(empty or place)

    # -- small values ----------------------------------------------------------------------

    def _slabs(self) -> bool:
        """Whether small values go to the slab: unless ``lru`` evicts values one by one."""
        return self.max_memory is None or self.policy != "lru"

    def _drop_small(self, cache_id: str, place: int) -> None:
        self.raw -= self._slab.sizes(place)[1]
        self._slab.free(place)
        self.table.set(cache_id, "small", 0)
        self._compact()

    def _compact(self) -> None:
        """Compact the slab once it is mostly garbage (an empty one is cleared)."""
        if not self.table.count("small"):
            self._slab.clear()
        elif self._slab.wants_compacting():
            self.table.remap("small", self._slab.compact)

    def _set_small(self, cache_id: str, kind: int, frame: tuple) -> int:
        """:meth:`set` of a value that :func:`.slab.fits`, into the slab."""
        grows = HEADER + len(frame[2]) + EMPTY_BYTES + len(cache_id)  # a new row's, at most
        old = self._entries.get(cache_id)
        if old is not None:
            old_cost = old.cost(cache_id)
            self._make_room(cache_id, grows - old_cost, 0)
            del self._entries[cache_id]
            self._remove(cache_id, old, old_cost)
        else:
            self._make_room(cache_id, grows, 0)
        row = self.table.row(cache_id)  # the table changes no more until it is set
        empty, place = self.table.fields_at(row, _HELD)
        self.table.set_at(row, cache_id, "small", self._slab.put(kind, frame))  # the row stays alive
        if place:
            self.raw -= self._slab.sizes(place)[1]
            self._slab.free(place)
        elif empty:
            self.table.set(cache_id, "empty", 0)
        self._compact()
        self.raw += frame[1]
        self.retable()
        self._settle()  # past the limit below the ceiling: the background spiller makes room
        return len(frame[2])

    def _unslab_one(self, cache_id: str) -> Entry:
        """Turn the small value of ``cache_id`` into an entry (to append to it)."""
        place = self.table.get(cache_id, "small")
        kind, frame = self._slab.get(place)
        self._drop_small(cache_id, place)
        entry = self._entries[cache_id] = Entry(kind, b"", [frame])
        self._account(cache_id, entry, +1)
        self.retable()
        return entry

    def _unslab(self) -> None:
        """Turn every small value into an entry (``lru`` now evicts values one by one)."""
        converted = self.table.items("small")  # in the order they were first written
        for cache_id, place in converted:
            kind, frame = self._slab.get(place)
            self.raw -= frame[1]
            self.table.set(cache_id, "small", 0)
            entry = self._entries[cache_id] = Entry(kind, b"", [frame])
            self._account(cache_id, entry, +1)
        for cache_id, _ in reversed(converted):  # not used since lru began: evicted first
            if cache_id in self._resident:
                self._resident.move_to_end(cache_id, last=False)
        self._slab.clear()
        self.retable()

    def get(self, cache_id: str, held: bool | None = None, place: int | None = None) -> tuple | None:
        """``(kind, meta, frames)`` with every payload readable, marked as recently used; or
        ``None``. A spilled value comes back into memory if it fits without spilling others.
        ``held`` / ``place``: whether the id is held here and its place in the slab, if the
        caller knows (see :meth:`holds_many`, :meth:`holds_places`)."""
        entry = self._entries.get(cache_id)
        if entry is None:
            if place is None:
                return self._tabled(cache_id) if held is None or held else None
            if place:
                kind, frame = self._slab.get(place)
                return kind, b"", [frame]
            return (KIND_BYTES, b"", []) if held else None
        if cache_id in self._resident:
            self._resident.move_to_end(cache_id)
        if not entry.disk:
            return entry.kind, entry.meta, entry.frames
        self.restores += 1
        spilled = [f[2] for f in entry.frames if type(f[2]) is Spilled]
        frames = [(f[0], f[1], self.disk.read(f[2])) if type(f[2]) is Spilled else f for f in entry.frames]
        limit = self.max_memory
        if limit is None or self.used + entry.disk <= limit:
            frames = [self._own([f])[0] if type(old[2]) is Spilled else f for f, old in zip(frames, entry.frames)]
            self._account(cache_id, entry, -1)
            entry.frames, entry.nbytes, entry.disk = frames, entry.nbytes + entry.disk, 0
            self._account(cache_id, entry, +1)
            for where in spilled:
                self.disk.free(where)
        return entry.kind, entry.meta, frames

    def set(self, cache_id: str, kind: int, meta: bytes, frames: list, tokens: set | None = None) -> int:
        """Replace the value of ``cache_id``; returns the payload bytes stored. ``tokens``: the
        append tokens the value has taken (a value moved from another node keeps them).

        Raises:
            CacheFull: it does not fit (see the module docstring); nothing changed.
        """
        if not tokens and fits(meta, frames) and self._slabs() and self._slab.has_room(frames[0]):
            return self._set_small(cache_id, kind, frames[0])
        new = Entry(kind, meta, frames)
        if tokens:
            new.tokens = set(tokens)
        cost = new.cost(cache_id)
        old = self._entries.get(cache_id)
        if old is None:
            self._make_room(cache_id, cost, new.nbytes)
            if self._take_empty(cache_id):
                self.retable()
        else:
            old_cost = old.cost(cache_id)  # making room keeps this id as it is
            self._make_room(cache_id, cost - old_cost, new.nbytes - old.nbytes)
            self._remove(cache_id, old, old_cost)
        self._entries[cache_id] = new
        self._account(cache_id, new, +1, cost)
        self._settle()
        return new.nbytes

    def append(self, cache_id: str, frames: list, token: str | None = None) -> int:
        """Append bytes frames to ``cache_id``, creating it if absent; returns the bytes added.

        ``token``: an append whose token this value has already taken is skipped (returns 0),
        so a writer that runs again (a retried task) appends once. ``set``, ``delete`` and a
        new value forget the tokens.

        Raises:
            TypeError: the stored value is not bytes.
            CacheFull: it does not fit; nothing changed.
        """
        entry = self._entries.get(cache_id)
        place = self.table.get(cache_id, "small") if entry is None else 0
        kind = self._slab.get(place)[0] if place else entry.kind if entry is not None else KIND_BYTES
        if kind != KIND_BYTES:
            raise TypeError(f"cannot append to {cache_id!r}: its value is not bytes")
        if token is not None and entry is not None and entry.tokens and token in entry.tokens:
            return 0
        added = Entry(KIND_BYTES, b"", frames)
        grows = added.nbytes + FRAME_OVERHEAD * len(frames) + (0 if entry else overhead(cache_id, 0))
        grows += (FRAME_OVERHEAD if place else 0) + (TOKEN_OVERHEAD if token is not None else 0)
        self._make_room(cache_id, grows, added.nbytes)
        if place:  # a small value becomes an entry, now that there is room for it
            entry = self._unslab_one(cache_id)
        if entry is None:
            entry = self._entries[cache_id] = Entry(KIND_BYTES, b"", [])
            if self._take_empty(cache_id):
                self.retable()
        else:
            self._account(cache_id, entry, -1)
        entry.extend(added, token)
        self._account(cache_id, entry, +1)
        self._settle()
        return added.nbytes

    def swap(self, cache_id: str, entry: Entry, frames: dict) -> int:
        """Put frames of the same payload bytes (``{id(frame): new frame}``) in place of frames of
        ``entry`` that are still the value of ``cache_id``; returns how many were put (none when
        the value changed: deleted, replaced, or those frames spilled or joined meanwhile)."""
        if self._entries.get(cache_id) is not entry:
            return 0
        done = 0
        for index, f in enumerate(entry.frames):
            new = frames.get(id(f))
            if new is not None:
                entry.frames[index] = new
                done += 1
        return done

    def create_empty(self, cache_id: str) -> bool:
        """Create ``cache_id`` as empty bytes unless it exists. Returns whether it was created.

        Raises:
            CacheFull: its overhead does not fit under ``max_memory`` (after spilling or
                evicting others, as the policy says).
        """
        if cache_id in self:
            return False
        self._make_room(cache_id, EMPTY_BYTES + len(cache_id), 0)
        self.table.set(cache_id, "empty", 1)
        self.retable()
        self._settle()  # past the limit below the ceiling: the background spiller makes room
        return True

    def create_empty_many(self, cache_ids: list[str]) -> list[str]:
        """:meth:`create_empty` for many ids (distinct) at once; returns those created.

        Raises:
            CacheFull: their rows do not fit under ``max_memory``; none was created.
        """
        entries = self._entries
        absent = [i for i in cache_ids if i not in entries]
        held = self._held_rows(absent).tolist()
        created = [i for i, here in zip(absent, held) if not here]
        if created:
            grows = EMPTY_BYTES * len(created) + sum(map(len, created))
            self._make_room(created[0], grows, 0)
            self.table.add(created, "empty", 1)
            self.retable()
            self._settle()
        return created

    def create_empty_packed(self, cache_ids: PackedIds) -> np.ndarray:
        """:meth:`create_empty_many` of a pack (distinct ids); returns the positions of those
        created.

        Raises:
            CacheFull: their rows do not fit under ``max_memory``; none was created.
        """
        created = np.nonzero(~self.holds_packed(cache_ids))[0]
        if len(created):
            fresh = cache_ids if len(created) == len(cache_ids) else cache_ids.take(created)
            self._make_room(fresh.take(np.zeros(1, np.int64)).names()[0], EMPTY_BYTES * len(fresh) + len(fresh.blob), 0)
            self.table.add(fresh, "empty", 1)
            self.retable()
            self._settle()
        return created

    def charge(self, nbytes: int) -> None:
        """Count ``nbytes`` of the owner's memory besides the entries (placement records,
        what the sessions remember, ...) in ``used``, in place of what was counted before.
        It is not evicted or spilled, but writes find that much less room."""
        self.used += nbytes - self.bookkeeping
        self.bookkeeping = nbytes

    def delete(self, cache_id: str) -> bool:
        """Remove ``cache_id`` (and its spilled bytes). Returns whether it existed."""
        entry = self._entries.pop(cache_id, None)
        if entry is None:
            if not self._take_empty(cache_id):
                return False
            self.retable()
            return True
        self._remove(cache_id, entry)
        return True

    def ids(self, prefix: str = "") -> Iterator[str]:
        """Ids starting with ``prefix`` (a snapshot of those without an entry)."""
        tabled = (i for column in _HELD for i, _ in self.table.items(column))
        return (i for source in (self._entries, tabled) for i in source if i.startswith(prefix))

    def configure(self, max_memory: int | None, policy: str, max_disk: int | None = None) -> None:
        """Change the limits and policy; ``lru`` evicts and ``spill`` spills at once down to
        the new limit."""
        self.max_memory = check_max_memory(max_memory)
        self.policy = check_policy(policy)
        if self.disk is not None:
            self.disk.set_limit(max_disk)
        if not self._slabs() and self.table.count("small"):
            self._unslab()
        if self.max_memory is not None and self.used > self.max_memory:
            if self.policy == "lru":
                self._evict_until(self.max_memory)
            elif self.policy == "spill" and self.disk is not None:
                self._settle()

    def stats(self) -> dict:
        """``used`` / ``raw`` / ``limit`` / ``ids`` / ``evictions`` / ``policy`` and the disk
        tier's ``disk_used`` / ``disk_limit`` / ``spilled_ids`` / ``spills`` / ``restores`` /
        ``spill_wait`` (seconds writes waited for spilling)."""
        disk = self.disk
        return {
            "used": self.used,
            "bookkeeping": self.bookkeeping,
            "raw": self.raw,
            "limit": self.max_memory,
            "ids": len(self),
            "evictions": self.evictions,
            "policy": self.policy,
            "disk_used": disk.used if disk else 0,
            "disk_limit": disk.limit() if disk else 0,
            "spilled_ids": sum(1 for e in self._entries.values() if e.disk),
            "spills": self.spills,
            "restores": self.restores,
            "spill_wait": round(self.spill_wait, 3),
        }

    def close(self) -> None:
        """Drop every entry and remove the spill files."""
        self._closed = True
        self._entries.clear()
        self._resident.clear()
        self.table.clear()
        self._slab.clear()
        self.used = self.payload = self.raw = self.bookkeeping = self._table_bytes = 0
        if self.disk is not None:
            self.disk.close()

    # -- accounting ------------------------------------------------------------------------

    def _account(self, cache_id: str, entry: Entry, sign: int, cost: int | None = None) -> None:
        """Count ``entry`` in (``sign`` +1) or out (-1); ``cost``: its :meth:`Entry.cost` if known."""
        self.used += sign * (entry.cost(cache_id) if cost is None else cost)
        self.payload += sign * entry.nbytes
        self.raw += sign * entry.raw
        if sign > 0 and entry.nbytes:
            self._resident[cache_id] = None
            self._resident.move_to_end(cache_id)
        elif sign > 0:
            self._resident.pop(cache_id, None)

    def _remove(self, cache_id: str, entry: Entry, cost: int | None = None) -> None:
        self._account(cache_id, entry, -1, cost)
        self._resident.pop(cache_id, None)
        if entry.disk:
            for frame in entry.frames:
                if type(frame[2]) is Spilled:
                    self.disk.free(frame[2])

    # -- making room -----------------------------------------------------------------------

    def _disk_room(self) -> int:
        """Bytes the disk tier can still take, less what spills under way will write."""
        return self._rounds.room()

    def _make_room(self, cache_id: str, grows: int, payload: int) -> None:
        """Raise ``CacheFull`` unless ``grows`` more bytes of memory can be held, spilling
        others first under ``spill`` (in the background up to the ceiling, see
        :data:`CEILING`). ``payload`` is the part of it that spilling can free."""
        limit = self.max_memory
        if limit is None or grows <= 0 or self.used + grows <= limit:
            return
        if self.policy == "spill" and self.disk is not None:
            need = self.used + grows - limit
            room = self._disk_room()
            if need > min(room, self.payload + payload):
                reason = (f"and max_disk is reached too ({self.disk.used} bytes on disk, room for {room})"
                          if need > room else "and what is left in memory cannot be spilled")
                raise CacheFull(self.node_id, limit, self.used, grows, cache_id, reason)
            if self._wake is not None and self.used + grows <= CEILING * limit:
                return  # the write goes ahead; _settle wakes the background spiller
            started = time.monotonic()
            try:
                self._spill_until(min(int(SPILL_TO * limit), limit - grows), keep=cache_id,
                                  deadline=started + SPILL_TIMEOUT)
            except OSError as exc:  # the disk is full after all (another process filled it)
                raise CacheFull(self.node_id, limit, self.used, grows, cache_id,
                                f"and the disk tier could not be written: {exc}") from exc
            finally:
                self.spill_wait += time.monotonic() - started
            return  # what still does not fit is the new value's own part: _settle spills it
        own = self._entries[cache_id].cost(cache_id) if cache_id in self._entries else 0
        if self.policy != "lru" or own + grows > limit:
            raise CacheFull(self.node_id, limit, self.used, grows, cache_id)
        self._evict_until(limit - grows, keep=cache_id)

    def _settle(self) -> None:
        """After a spilling write, or a lower limit: spill what still passes the limit, the new
        value too (with a background spiller: wake it, and spill here only past the ceiling).
        The write is done either way: a disk that refuses leaves it in memory, above the
        limit, until later writes make room (they get ``CacheFull`` meanwhile)."""
        limit = self.max_memory
        if limit is not None and self.used > limit and self.policy == "spill" and self.disk is not None:
            if self._wake is not None and self.used <= CEILING * limit:
                self._wake()
                return
            try:
                self._spill_until(limit, deadline=None)
            except OSError as exc:
                log.warning("node %s: spilling failed, %d bytes held over max_memory: %s",
                            self.node_id, self.used - limit, exc)

    def _spill_until(self, target: int, keep: str | None = None, deadline: float | None = None) -> None:
        """Spill least recently used values until ``used <= target``, a file at a time (under
        the owner's lock throughout; values a background round is writing are left to it).

        Raises:
            CacheFull: past ``deadline`` with ``used`` still above ``target``; what was
                spilled stays spilled (readable), nothing is lost.
            OSError: the disk refused; nothing of that round was spilled.
        """
        while self.used > target:
            job = self._pick(self.used - target, keep)
            if job is None:
                return
            self.write_spill(job)
            self.finish_spill(job)
            if job.error is not None:
                raise job.error
            if deadline is not None and self.used > target and time.monotonic() > deadline:
                raise CacheFull(self.node_id, self.max_memory, self.used, self.used - target, keep or "",
                                f"and spilling did not make room within {SPILL_TIMEOUT:.0f} s")

    # -- spilling in rounds: pick (locked), write (unlocked), finish (locked) -----------------

    def start_spill(self) -> SpillJob | None:
        """The next round of background spilling, or ``None`` when memory, less what rounds
        under way will free, is down to :data:`SPILL_TO` of ``max_memory`` (or nothing can be
        spilled). Call it under the owner's lock, then :meth:`write_spill` without the lock
        (writes and reads go on meanwhile), then :meth:`finish_spill` under the lock again."""
        limit = self.max_memory
        if limit is None or self.policy != "spill" or self.disk is None or self._closed:
            return None
        excess = self.used - self._rounds.inflight - int(SPILL_TO * limit)
        return self._pick(excess, None) if excess > 0 else None

    def _pick(self, excess: int, keep: str | None) -> SpillJob | None:
        """A round of spilling (see :meth:`.SpillRounds.pick`)."""
        return self._rounds.pick(self._resident, self._entries, excess, keep)

    def write_spill(self, job: SpillJob) -> None:
        """Write a round's payloads (see :meth:`.SpillRounds.write`); no state of the store is
        touched: run it without the owner's lock."""
        self._rounds.write(job)

    def finish_spill(self, job: SpillJob) -> None:
        """Under the owner's lock: the frames a round wrote that its values still hold become
        spill-file places; what changed meanwhile is kept: a value deleted or replaced frees its
        written bytes, pieces appended stay in memory, pieces joined with them since are freed
        on disk (the joined frame stays in memory)."""
        self._rounds.finish(job, self._entries, self._closed, self._place)

    def _place(self, cache_id: str, entry: Entry, places: dict) -> None:
        """Put spill-file places (``{id(frame): [Spilled]}``, taken from it) in place of the
        frames of ``entry`` they were written from."""
        self._account(cache_id, entry, -1)
        entry.spilled(places)
        self._account(cache_id, entry, +1)
        self.spills += 1

    def _evict_until(self, target: int, keep: str | None = None) -> None:
        for victim in list(self._resident):
            if self.used <= target:
                return
            if victim != keep:
                self.delete(victim)
                self.evictions += 1
                self.evicted.append(victim)

