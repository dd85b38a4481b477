"""Spilling in rounds: which values a round writes to disk, writing them, and what it left.

A round is picked under the owner's lock (:meth:`SpillRounds.pick`), written without it
(:meth:`SpillRounds.write`: writes and reads go on meanwhile), and finished under the lock
again (:meth:`SpillRounds.finish`), keeping whatever changed meanwhile. This module owns what
the rounds under way hold (their ids, their bytes, values that could not be loaded); the
values, their accounting and when to spill stay with :class:`~.storage.Store`.

Plain Python, no Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from ..codec import is_stored
from .disk import SpillFiles
from .entries import Entry, in_memory

#: Bytes spilled per round; between rounds the writer's deadline is checked.
SEGMENT_BYTES = 64 << 20
#: A value with at least this many bytes to spill gets a spill file of its own; smaller ones
#: share one, so small values do not cost a file each.
OWN_FILE_BYTES = 1 << 20


class SpillJob:
    """One round of spilling: its segment, its values ``(id, entry, frames in memory then)``,
    their payload bytes; once written, where each frame went (or the disk's error)."""

    __slots__ = ("segment", "victims", "size", "written", "error", "unreadable")

    def __init__(self, segment: int, victims: list) -> None:
        self.segment, self.victims = segment, victims
        self.size = 0
        self.written: list = []
        self.error: OSError | None = None
        self.unreadable: list = []  # (id, entry) whose payloads could not be loaded


class SpillRounds:
    """The rounds of one store's spilling.

    Args:
        disk: the spill files.
        load: the bytes of a payload kept in Ray's object store, to write it to disk.
    """

    def __init__(self, disk: SpillFiles, load: Callable | None) -> None:
        self.disk, self._load = disk, load
        self.spilling: set[str] = set()  # ids a round is writing
        # Values whose pieces could not be loaded to be spilled (a scratch id's piece, kept by
        # its writer, which died): left in memory, not picked again (id -> that entry).
        self.unspillable: dict[str, Entry] = {}
        self.inflight = 0  # payload bytes the rounds under way are writing

    def room(self) -> int:
        """Bytes the disk tier can still take, less what spills under way will write."""
        return self.disk.room() - self.inflight

    def pick(self, resident: Iterable[str], entries: Mapping[str, Entry], excess: int,
             keep: str | None) -> SpillJob | None:
        """A round, under the owner's lock: of the ``resident`` ids (least recently used
        first), the first value of at least :data:`OWN_FILE_BYTES` alone (a file of its own,
        freed as soon as the value is deleted or replaced, as a shuffle does with each
        partition), or smaller ones together up to ``excess`` or :data:`SEGMENT_BYTES`; never
        past the disk's room, never ``keep`` nor a value another round has. ``None``: nothing
        to spill."""
        room = self.room()
        victims, size = [], 0
        for cache_id in resident:
            if cache_id == keep or cache_id in self.spilling:
                continue
            entry = entries[cache_id]
            if size + entry.nbytes > room or (victims and entry.nbytes >= OWN_FILE_BYTES) \
                    or self.unspillable.get(cache_id) is entry:
                continue
            victims.append(cache_id)
            size += entry.nbytes
            if entry.nbytes >= OWN_FILE_BYTES or size >= excess or size >= SEGMENT_BYTES:
                break
        if not victims:
            return None
        job = SpillJob(self.disk.reserve(), [(c, entries[c], [f for f in entries[c].frames if in_memory(f)])
                                             for c in victims])
        job.size = size
        self.spilling.update(victims)
        self.inflight += size
        return job

    def write(self, job: SpillJob) -> None:
        """Write a round's payloads into its segment (nothing of the store is touched: run it
        without the owner's lock). A disk that refuses is kept in ``job.error``; a value whose
        pieces cannot be loaded (a scratch piece whose writer died) is left out of the round,
        in ``job.unreadable``."""
        payloads, readable = [], []
        for victim in job.victims:
            try:
                payloads += [self._load(f[2]) if is_stored(f) else f[2] for f in victim[2]]
            except Exception:  # noqa: BLE001 - whatever the object store raises for a lost object
                job.unreadable.append(victim[:2])
                continue
            readable.append(victim)
        job.victims = readable
        if not readable:
            return
        try:
            job.written = self.disk.write_segment(job.segment, payloads)
        except OSError as exc:
            job.error = exc

    def finish(self, job: SpillJob, entries: Mapping[str, Entry], closed: bool,
               place: Callable[[str, Entry, dict], None]) -> None:
        """Under the owner's lock: the round is no longer under way; the frames it wrote that
        its values still hold (the same entry in ``entries``) are handed to ``place`` as
        spill-file places (``{id(frame): [Spilled]}``, taken from the dict); the written bytes
        of what changed meanwhile are freed (a value deleted or replaced, pieces joined with
        later ones). A round of a ``closed`` store, or one with nothing written, is discarded."""
        self.inflight -= job.size
        self.spilling.difference_update(c for c, _e, _f in job.victims)
        self.spilling.difference_update(c for c, _e in job.unreadable)
        self.unspillable = {c: e for c, e in [*self.unspillable.items(), *job.unreadable] if entries.get(c) is e}
        if job.error is not None:
            return
        if closed or not job.victims:
            self.disk.discard(job.segment)
            return
        self.disk.register(job.segment, sum(w.size for w in job.written))
        written = iter(job.written)
        for cache_id, entry, frames in job.victims:
            places: dict[int, list] = {}
            for f in frames:
                places.setdefault(id(f), []).append(next(written))
            if entries.get(cache_id) is entry:
                place(cache_id, entry, places)
            for left in places.values():  # not held any more
                for where in left:
                    self.disk.free(where)
