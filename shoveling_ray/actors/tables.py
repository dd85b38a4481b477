"""Values held on this node handed out as Arrow tables in its object store, owned by its actor
(``shoveling_ray.data``'s dataset blocks, stored as Arrow IPC streams).

The first request for an id decodes its value (an Arrow IPC stream, read where it lies) and
puts the table into this node's object store once, as an object of this actor's: every later
request, from any job, gets the same reference, and ``ray.get`` of it on this node maps the
table without a copy. The reference lives as long as the value does: each request first
forgets the tables of ids deleted, replaced or moved away since (``shoveling_ray.data`` sends
an empty request after it deletes a dataset), so the object store frees them. The tables kept
count in the node's ``used`` (see :attr:`Tables.nbytes`).

Plain Python over the node's store and Ray's object store; it does not decide what a dataset
is (``shoveling_ray.data``).
"""

from __future__ import annotations

from typing import Any

import ray

from .. import codec
from ..objects import load
from .storage import Store


class Tables:
    """The table references handed out for the ids held in ``store``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._refs: dict[str, tuple[list, ray.ObjectRef, int]] = {}  # id -> (its frames then, the table, its bytes)
        #: Bytes of the tables handed out and still kept: this node's memory besides the
        #: stored values (each table beside its value's Arrow stream), counted in ``used``.
        self.nbytes = 0

    def refs(self, cache_ids: list[str]) -> list[ray.ObjectRef | None]:
        """A reference to the table of each id held here, ``None`` for an id not held here.

        Raises:
            pyarrow.ArrowInvalid: a value is not an Arrow IPC stream.
        """
        self._forget_stale()
        return [self._ref(cache_id) for cache_id in cache_ids]

    def forget_stale(self) -> None:
        """Forget the tables of ids deleted, replaced, evicted, spilled away or moved since
        (under the actor's lock): the object store frees them and ``used`` stops counting them."""
        if self._refs:
            self._forget_stale()

    def _forget_stale(self) -> None:
        for cache_id, (frames, _ref, nbytes) in list(self._refs.items()):
            entry = self.store.peek(cache_id)
            if entry is None or entry.frames is not frames:
                del self._refs[cache_id]
                self.nbytes -= nbytes

    def _ref(self, cache_id: str) -> ray.ObjectRef | None:
        entry = self.store.peek(cache_id)
        if entry is None:
            return None
        known = self._refs.get(cache_id)
        if known is not None:
            return known[1]
        kind, meta, frames = self.store.get(cache_id)  # a spilled value is read back
        table = _table(codec.decode(kind, meta, [_readable(f) for f in frames]))
        ref = ray.put(table)
        self._refs[cache_id] = (self.store.peek(cache_id).frames, ref, table.nbytes)
        self.nbytes += table.nbytes
        return ref


def _readable(frame: tuple) -> tuple:
    return (frame[0], frame[1], load(frame[2])) if codec.is_stored(frame) else frame


def _table(data: Any):
    from ..data.blocks import from_ipc  # imports Ray Data: its extension types come back as themselves

    return from_ipc(data)
