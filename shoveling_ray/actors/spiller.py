"""The node actor's background thread: spilling past ``max_memory``, and the holder's own
copies of large values, both off the writers' and readers' paths.

- **Spilling** (as Ray's IO workers do): a write that passes ``max_memory`` wakes the thread
  and returns (see :mod:`.storage`); the thread spills in rounds, each picked and finished
  under the actor's lock and written to disk without it, so writes and reads go on meanwhile.
- **Own copies**: a large payload a writer sent stays the writer's object, mapped by the actor
  (:func:`~shoveling_ray.objects.adopt`); a reader needs a reference the actor owns, so the
  actor puts a copy of its own into the object store. The thread does that after the write
  (:meth:`Spiller.own`), so that the first read does not pay it; a read that comes first
  still makes the copy itself (:func:`~shoveling_ray.objects.put_for_reads`). Spilling goes
  first: a value spilled before its copy is made needs none.

Plain Python over the store and the lock; the copy itself is the ``copy`` function given.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

from .storage import Store

log = logging.getLogger(__name__)


class Spiller:
    """The background thread of one node's store.

    Args:
        store: the node's store (made with ``wake=spiller.wake``).
        lock: the actor's lock, held while the store changes.
        copy: the copies a list of frames needs, ``{index: frame}`` (computed without the
            lock; see :func:`~shoveling_ray.objects.own_copies`); ``None``: no own copies.
    """

    def __init__(self, store: Store, lock: threading.RLock, copy: Callable[[list], dict] | None = None) -> None:
        self.store, self._lock, self._copy = store, lock, copy
        self._event = threading.Event()
        self._stopped = False
        self._owed: OrderedDict[str, None] = OrderedDict()  # ids whose large payloads need a copy
        self._thread = threading.Thread(target=self._run, name="shoveling-spiller", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Something to do: the store passed ``max_memory``, or values need copies."""
        self._event.set()

    def own(self, cache_ids: list) -> None:
        """Make the holder's copies of these ids' large payloads in the background (under the
        lock, as the writes that stored them)."""
        if self._copy is not None and cache_ids:
            self._owed.update(dict.fromkeys(cache_ids))
            self._event.set()

    def stop(self) -> None:
        """End the thread (after the round under way) and wait for it."""
        self._stopped = True
        self._event.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopped:
            self._event.wait()
            self._event.clear()
            try:
                while not self._stopped and (self._spill_round() or self._copy_one()):
                    pass
            except Exception:  # noqa: BLE001 - the thread must live on; the next write wakes it
                log.exception("node %s: background spilling failed", self.store.node_id)

    def _spill_round(self) -> bool:
        """One round of spilling; whether there was one."""
        with self._lock:
            job = self.store.start_spill()
        if job is None:
            return False
        self.store.write_spill(job)
        with self._lock:
            self.store.finish_spill(job)
        if job.error is not None:
            log.warning("node %s: spilling failed, memory stays over max_memory: %s", self.store.node_id, job.error)
            return False
        return True

    def _copy_one(self) -> bool:
        """The holder's copy of one owed id's large payloads; whether one was owed."""
        with self._lock:
            if not self._owed:
                return False
            cache_id = self._owed.popitem(last=False)[0]
            entry = self.store.peek(cache_id)
            frames = list(entry.frames) if entry is not None else []
        copies = self._copy(frames) if frames else {}
        if copies:
            with self._lock:
                self.store.swap(cache_id, entry, {id(frames[i]): f for i, f in copies.items()})
        return True
