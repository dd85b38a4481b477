"""The item methods of one node actor: what a client batch asks of each id (``get``,
``exists``, ``size``, ``locate``, ``set``, ``append``, ``delete``, ``place``), answered per
item as :mod:`.protocol` says.

Each method takes the :class:`~.batch.Batch` being served and its items, and records in it what
the batch did (writes taken, ids created, bytes moved). A home that places an id on another
node (``place``) or deletes one held elsewhere calls that node itself before it answers, so no
client ever sees a record without its data or data without its record. Plain Python over the
node's parts; no Ray. Forwarding the writes to the copies is :mod:`.replication`'s.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from ..codec import OBJECT_STORE_BYTES
from ..errors import CacheFull, NodeDrained, NodeUnavailable
from ..idpack import PackedIds
from ..objects import keep_writers, put_for_reads
from .. import protocol as p
from .batch import Batch, adopt_frames, mapped
from .directory import Directory
from .drain import Drain
from .layout import Layout
from .peers import Peers
from .replication import Replication
from .storage import Store

log = logging.getLogger(__name__)

#: Batches of at least this many ids look their ids up in the id table at once (a lookup costs
#: about 1 us an id one by one, plus about 50 us a batch at once).
BATCH_LOOKUP = 64


class Items:
    """The item methods over one node's parts.

    Args:
        store: the node's store.
        layout: the node's view of the cache.
        peers: calls to the other members.
        directory: placement records and lost ids.
        replication: the copies.
        drain: drains (whether this node is retired; ids a drain handed here).
        lock: the actor's lock: held while state changes, free during calls to peers.
    """

    def __init__(self, store: Store, layout: Layout, peers: Peers, directory: Directory, replication: Replication,
                 drain: Drain, lock: threading.RLock) -> None:
        self.store, self.layout, self.peers, self._lock = store, layout, peers, lock
        self.directory, self.replication, self.drain = directory, replication, drain
        self.node_id, self.cache = layout.node_id, peers.cache

    def get(self, batch: Batch, items: list) -> list:
        out = []
        with self._lock:  # held or not, record and loss: looked up at once for a large batch
            records, held, lost_ones, places = self._known([i for i, _ in items], places=True)
            for k, ((cache_id, via), record, here, lost) in enumerate(zip(items, records, held, lost_ones)):
                value = self.store.get(cache_id, here, places and places[k]) if here else None
                if value is None:
                    out.append(self.directory.absent_known(record, lost, via))
                elif not value[2]:
                    out.append((p.OK, value))  # empty: nothing to count or put
                elif len(value[2]) == 1 and type(value[2][0][2]) is bytes and len(value[2][0][2]) < OBJECT_STORE_BYTES:
                    batch.moved += len(value[2][0][2])  # one piece in the heap (a small value): nothing to put
                    out.append((p.OK, value))
                else:
                    entry = self.store.peek(cache_id)
                    batch.moved += entry.nbytes + entry.disk  # known sizes: no walk over the frames
                    if entry.nbytes >= OBJECT_STORE_BYTES and not entry.disk:
                        put_for_reads(entry.frames)
                    out.append((p.OK, value))
        return out

    def exists(self, batch: Batch, items: list) -> list:
        with self._lock:
            return [(p.OK, True) if i in self.store else self.directory.absent(i, via) for i, via in items]

    def size(self, batch: Batch, items: list) -> list:
        out = []
        with self._lock:
            for cache_id, via in items:
                entry = self.store.peek(cache_id)
                out.append(self.directory.absent(cache_id, via) if entry is None else (p.OK, entry.raw))
        return out

    def locate(self, batch: Batch, items: list) -> list:
        """Every node holding each id, its primary copy first."""
        ids = [i for i, _ in items]
        with self._lock:  # looked up at once: init locates millions of ids
            held = self.store.holds_many(ids)
            records, lost = self.directory.known(ids)
            live_holders, absent = self.replication.live_holders, self.directory.absent_known
            return [(p.OK, live_holders(i)) if here else absent(target, dead, via)
                    for (i, via), here, target, dead in zip(items, held, records, lost)]

    def _known(self, ids: list[str], places: bool = False) -> tuple:
        """Each id's placement record, whether it is held here, and its lost entry (``None``
        where none): looked up at once for a large batch of distinct ids, else one by one.
        With ``places``, a fourth list: each id's place in the slab (see
        :meth:`.Store.holds_places`), or ``None`` when looked up one by one."""
        if len(ids) >= BATCH_LOOKUP and len(set(ids)) == len(ids):
            records, lost = self.directory.known(ids)
            if places:
                held, found = self.store.holds_places(ids)
                return records, held, lost, found
            return records, self.store.holds_many(ids), lost
        records, lost, store = self.directory.records, self.directory.lost, self.store
        known = [records.get(i) for i in ids], [i in store for i in ids], [lost.get(i) for i in ids]
        return (*known, None) if places else known

    def _write(self, batch: Batch, items: list, apply, clears_loss: bool) -> list:
        """Apply writes to the ids this node may write (under the lock); ``apply`` adds each
        write it took to ``batch.taken`` (what ``Replication.forward`` sends to the copies)."""
        out = []
        copies, lost = self.replication.copies, self.directory.lost
        applied = batch.applied
        for item, record, here, lost_node in zip(items, *self._known([item[0] for item in items])):
            cache_id, via = item[0], item[1]
            if applied is not None and cache_id in applied:  # sent again: it was applied here
                out.append(applied[cache_id])
                continue
            if cache_id in copies:  # the primary orders writes
                out.append((p.REDIRECT, copies[cache_id]))
                continue
            target = None if record == self.node_id else record  # (to itself: placed here by init)
            if not here and (target is not None or via != p.AT_HOME):
                # Only the home creates ids: elsewhere a write could recreate a deleted id.
                out.append((p.REDIRECT, target) if target is not None else (p.REROUTE, None))
                continue
            if lost_node is not None:
                if not clears_loss:  # appending to a lost value would hide the loss
                    out.append((p.LOST, lost_node))
                    continue
                del lost[cache_id]
            created = record is None and not here
            if created and self.layout.factors:  # a write creates ids with the cache's factor
                self.layout.factors.pop(cache_id, None)
            try:
                batch.moved += apply(item)
            except CacheFull as exc:
                out.append((p.FULL, (exc.limit, exc.used, exc.needed, exc.reason)))
            except TypeError:
                out.append((p.WRONG_TYPE, None))
            else:
                out.append((p.OK, None))
                if applied is not None:
                    applied[cache_id] = p.APPLIED
                if created and self.layout.replicas == 1:
                    batch.created.append(cache_id)
                self.drain.touch(cache_id)
        return out

    def set(self, batch: Batch, items: list) -> list:
        """Items are ``(cache_id, via, kind, meta, frames)``."""

        def apply(item):
            frames = item[4] if batch.inline else self._adopt(batch, item[0], item[4])
            stored = self.store.set(item[0], item[2], item[3], frames)
            if not batch.inline and mapped(frames):
                batch.owed.append(item[0])
            batch.taken.append(item)
            return stored

        with self._lock:
            return self._write(batch, items, apply, clears_loss=True)

    def append(self, batch: Batch, items: list) -> list:
        """Items are ``(cache_id, via, frames)`` or ``(cache_id, via, frames, token)``."""

        def apply(item):
            fresh = item[0] not in self.store  # the append creates it: copies start it afresh
            frames = item[2] if batch.inline else self._adopt(batch, item[0], item[2])
            added = self.store.append(item[0], frames, *item[3:])
            if not batch.inline and mapped(frames):
                batch.owed.append(item[0])
            batch.taken.append((item[0], fresh, *item[2:]))
            return added

        with self._lock:
            return self._write(batch, items, apply, clears_loss=False)

    def _adopt(self, batch: Batch, cache_id: str, frames: list) -> list:
        """The frames of a write to keep: the writer's references for a scratch id's large
        pieces (:func:`~shoveling_ray.objects.keep_writers`: no copy of the actor's, ever), the
        rest as :func:`.adopt_frames` keeps them (the holder's copies made after the write)."""
        if self.layout.is_scratch(cache_id):
            frames = keep_writers(frames, batch.arrived)
        return adopt_frames(self.store, frames, later=True)

    def delete(self, batch: Batch, items: list) -> list:
        """At a home: delete the id, its copies and its placement records (here and at the
        backup home).

        Items are ``(cache_id, via)``; returns whether each id existed. Items not sent to
        their home are rerouted there.
        """
        out, calls = [], {}
        records, lost = self.directory.records, self.directory.lost
        applied = batch.applied
        with self._lock:
            for cache_id, via in items:
                if applied is not None and cache_id in applied:  # sent again: deleted here
                    out.append(applied[cache_id])
                    continue
                primary = records.pop(cache_id, None)
                if primary is None and cache_id in self.store and cache_id not in self.replication.copies:
                    primary = self.node_id
                backup = self.layout.backup(cache_id)
                if primary is None:
                    if lost.pop(cache_id, None) is not None:
                        if self.layout.factors:
                            self.layout.factors.pop(cache_id, None)
                        if backup:
                            calls.setdefault(backup, []).append(cache_id)
                        out.append((p.OK, True))
                    else:
                        out.append((p.REROUTE, None) if via != p.AT_HOME else (p.OK, False))
                    continue
                lost.pop(cache_id, None)
                nodes = set(self.layout.holders(cache_id, primary))
                if self.layout.factors:  # its factor ends with it, here at its home too
                    self.layout.factors.pop(cache_id, None)
                if backup:  # its record there (init) or its lost entry
                    nodes.add(backup)
                if self.node_id in nodes:
                    nodes.discard(self.node_id)
                    self.drop_here(cache_id)
                for node in nodes:
                    calls.setdefault(node, []).append(cache_id)
                out.append((p.OK, True))
            if applied is not None:
                applied.update((i, answer) for (i, _via), answer in zip(items, out) if answer[0] == p.OK)
        for node, ids in calls.items():
            try:
                self.peers.call(node, "drop", ids)
            except NodeUnavailable as exc:
                # Its node is gone, and the data with it.
                log.warning("cache %s: delete could not reach node %s: %s", self.cache, node, exc)
        return out

    def drop_here(self, cache_id: str) -> bool:
        """Delete an id here with its copies bookkeeping and records (under the lock); returns
        whether it was held here."""
        self.drain.touch(cache_id)
        self.replication.forget(cache_id)
        self.directory.forget(cache_id)
        return self.store.delete(cache_id)

    def place(self, batch: Batch, items: list) -> list:
        """At a home: decide where new ids live and create them there, with their copies.
        Items are ``(cache_id, via, target)``, or ``(cache_id, via, target, factor)`` for ids
        created with a copy count of their own (see :meth:`.Layout.factor`).

        An id that exists here or has a record keeps its node; otherwise it is created here
        (target is this node) or on ``target``, its copies on the other holders, and recorded
        here and at the backup home (also when it is here). Returns ``(OK, node)`` per id, or
        ``(UNAVAILABLE, (node, reason))`` when the target did not answer (nothing is recorded).
        """
        if self.layout.replicas == 1 and all(len(item) == 3 for item in items):
            return self._place_alone(items)
        out, primaries, copies, records = [], {}, {}, {}
        with self._lock:
            for index, (cache_id, _via, target, *factor) in enumerate(items):
                self.directory.lost.pop(cache_id, None)  # init recreates a lost id, empty
                if cache_id in self.directory.records:
                    out.append((p.OK, self.directory.records[cache_id]))
                    continue
                if cache_id in self.store and cache_id not in self.replication.copies:
                    out.append((p.OK, self.node_id))
                    continue
                if factor:
                    self.layout.factors[cache_id] = factor[0]
                elif self.layout.factors:
                    self.layout.factors.pop(cache_id, None)
                if target == self.node_id:
                    try:
                        self.store.create_empty(cache_id)
                    except CacheFull as exc:
                        out.append((p.FULL, (exc.limit, exc.used, exc.needed, exc.reason)))
                        continue
                    self.directory.record(cache_id, target, records)
                else:
                    primaries.setdefault(target, []).append(index)
                for node in set(self.layout.holders(cache_id, target)) - {target}:
                    copies.setdefault(node, []).append((cache_id, target, *factor))
                out.append((p.OK, target))
        self._create_placed(items, out, primaries, records)
        self._create_copies(items, out, copies)
        self.directory.send_records(records)
        return out

    def _place_alone(self, items: list) -> list:
        """:meth:`place` with one copy per id, each step for all ids at once (``init`` of
        millions of ids)."""
        ids = [item[0] for item in items]
        me, copies = self.node_id, self.replication.copies
        out: list = [None] * len(items)
        mine, primaries, records = [], {}, {}
        with self._lock:
            self.directory.lost.unset_many(ids)  # init recreates a lost id, empty
            known = self.directory.records.get_many(ids)
            held = self.store.holds_many(ids)
            for index, ((cache_id, _via, target), node, here) in enumerate(zip(items, known, held)):
                if node is not None:
                    out[index] = (p.OK, node)
                elif here and cache_id not in copies:
                    out[index] = (p.OK, me)
                else:
                    (mine if target == me else primaries.setdefault(target, [])).append(index)
                    out[index] = (p.OK, target)
            if mine:
                created = self._create_here([ids[k] for k in mine], out, mine)
                self.directory.record_many(created, me, records)
        self._create_placed(items, out, primaries, records)
        self.directory.send_records(records)
        return out

    def _create_here(self, ids: list[str], out: list, indices: list[int]) -> list[str]:
        """Create ``ids`` (at ``indices`` of ``out``) empty here for ``place``; returns those
        created or held here, and sets ``FULL`` in ``out`` for those that did not fit."""
        try:
            self.store.create_empty_many(ids)
        except CacheFull:  # one at a time: as many as fit
            fit = []
            for cache_id, index in zip(ids, indices):
                try:
                    self.store.create_empty(cache_id)
                except CacheFull as exc:
                    out[index] = (p.FULL, (exc.limit, exc.used, exc.needed, exc.reason))
                else:
                    fit.append(cache_id)
            ids = fit
        copies, factors, records = self.replication.copies, self.layout.factors, self.directory.records
        for cache_id in ids:
            copies.pop(cache_id, None)
            if factors and cache_id not in records:  # created with the cache's factor
                factors.pop(cache_id, None)
        return ids

    def _create_placed(self, items: list, out: list, primaries: dict, records: dict) -> None:
        """``place``: create the ids placed on other nodes there (``{node: [item index]}``) and
        record them; an id whose node did not answer gets ``UNAVAILABLE`` in ``out``, one it had
        no room for ``FULL``."""
        # The lock is free while the targets create their ids: a target that is itself a home
        # placing ids here must find this actor's peer methods able to run.
        for node, indices in primaries.items():
            try:
                full = self.peers.call(node, "create_empty", [(items[i][0], node, *items[i][3:]) for i in indices])
            except NodeUnavailable as exc:
                for i in indices:
                    out[i] = (p.UNAVAILABLE, (node, exc.reason))
                continue
            with self._lock:
                for i in indices:
                    if items[i][0] in full:
                        out[i] = (p.FULL, full[items[i][0]])
                self.directory.record_many([items[i][0] for i in indices if items[i][0] not in full], node, records)

    def _create_copies(self, items: list, out: list, copies: dict) -> None:
        """``place``: create the copies of the ids placed (``{node: [(id, primary)]}``), but
        not of those whose primary did not answer or had no room."""
        failed = {items[i][0] for i, (status, _v) in enumerate(out) if status != p.OK}
        for node, pairs in copies.items():
            pairs = [pair for pair in pairs if pair[0] not in failed]
            try:
                if node == self.node_id:
                    with self._lock:
                        full = self.create_empty(pairs)
                else:
                    full = self.peers.call(node, "create_empty", pairs)
            except NodeUnavailable as exc:  # the next rebuild gives them another holder
                log.warning("cache %s: no copy of %d new ids on node %s: %s", self.cache, len(pairs), node, exc)
                continue
            if full:
                log.warning("cache %s: node %s had no room for copies of %d new ids", self.cache, node, len(full))

    def locate_ids(self, batch: Batch, sent: tuple) -> tuple[np.ndarray, list]:
        """:meth:`locate` of a pack at the ids' home, for ``init`` (``sent``: ``(pack,)``):
        ``(numbers, nodes)``, the node of each id's primary copy as its number in ``nodes``
        (0: none, or lost). An id placed elsewhere is answered from its record here, without
        asking its node."""
        (cache_ids,) = sent
        with self._lock:
            nodes = self.directory.records.nodes
            me = nodes.number(self.node_id)
            held = self.store.holds_packed(cache_ids)
            records = self.store.table.values(cache_ids, "record")
            out = np.where(held, me, np.where(records == me, 0, records)).astype(np.int16)
            copies = self.replication.copies
            if copies and held.any():  # held here as a copy: its primary is elsewhere
                names = cache_ids.names()
                for k in np.nonzero(held)[0].tolist():
                    if names[k] in copies:
                        out[k] = nodes.number(copies[names[k]])
            return out, nodes.names()

    def place_ids(self, batch: Batch, sent: tuple) -> tuple[np.ndarray, list, dict]:
        """:meth:`place` of ``init``'s ids of one copy and no factor of their own, packed:
        ``sent`` is ``(pack of ids, target of each as a number in nodes, nodes)``. Every step
        is done for all ids at once, without a string or tuple per id (while the store holds
        only empty ids).

        Returns:
            ``(numbers, nodes, problems)``: each id's node as its number in ``nodes``, and
            ``{position: (status, value)}`` of the ids not placed (``UNAVAILABLE`` or
            ``FULL``, as :meth:`place` answers them).
        """
        cache_ids, targets, target_nodes = sent
        if self.layout.replicas != 1:  # the cache took copies since the client chose this way
            answers = self.place(batch, [(i, p.AT_HOME, target_nodes[t])
                                         for i, t in zip(cache_ids.names(), targets.tolist())])
            return self._packed_answer(answers)
        nodes = self.directory.records.nodes
        me = nodes.number(self.node_id)
        numbers = np.array([nodes.number(n) for n in target_nodes], np.int16)[targets]
        problems: dict[int, tuple] = {}
        others, backups = {}, {}
        with self._lock:
            self.directory.lost.unset_many(cache_ids)  # init recreates a lost id, empty
            records = self.store.table.values(cache_ids, "record")
            held = self.store.holds_packed(cache_ids)
            copies = self.replication.copies
            if copies and held.any():  # a copy here is no primary: placed as new
                held &= np.fromiter((i not in copies for i in cache_ids.names()), bool, len(cache_ids))
            new = (records == 0) & ~held
            out = np.where(records != 0, records, np.where(held, me, numbers)).astype(np.int16)
            mine = np.nonzero(new & (numbers == me))[0]
            if len(mine):
                created = self._create_packed(cache_ids, mine, problems)
                self.directory.record_packed(cache_ids.take(created), self.node_id, backups)
            for number in np.unique(numbers[new]).tolist():
                if number != me:
                    others[nodes.name(number)] = np.nonzero(new & (numbers == number))[0]
        # The lock is free while the targets create their ids (see _create_placed).
        for node, chosen in others.items():
            try:
                full = self.peers.call(node, "create_empty_ids", cache_ids.take(chosen))
            except NodeUnavailable as exc:
                problems.update((k, (p.UNAVAILABLE, (node, exc.reason))) for k in chosen.tolist())
                continue
            if full:
                problems.update((int(chosen[k]), (p.FULL, value)) for k, value in full.items())
                chosen = np.delete(chosen, list(full))
            with self._lock:
                self.directory.record_packed(cache_ids.take(chosen), node, backups)
        self.directory.send_packed(backups)
        return out, nodes.names(), problems

    def _packed_answer(self, answers: list) -> tuple[np.ndarray, list, dict]:
        """:meth:`place`'s answers as :meth:`place_ids` gives them."""
        nodes = self.directory.records.nodes
        out = np.zeros(len(answers), np.int16)
        problems = {}
        for k, (status, value) in enumerate(answers):
            if status == p.OK:
                out[k] = nodes.number(value)
            else:
                problems[k] = (status, value)
        return out, nodes.names(), problems

    def _create_packed(self, cache_ids: PackedIds, chosen: np.ndarray, problems: dict) -> np.ndarray:
        """Create the ids at positions ``chosen`` of ``cache_ids`` empty here, as the primary
        copy (under the lock); returns the positions created or held here, and puts ``FULL``
        in ``problems`` for those that did not fit."""
        fresh = cache_ids.take(chosen)
        try:
            self.store.create_empty_packed(fresh)
        except CacheFull:  # one at a time: as many as fit
            fit = []
            for k, cache_id in zip(chosen.tolist(), fresh.names()):
                try:
                    self.store.create_empty(cache_id)
                except CacheFull as exc:
                    problems[k] = (p.FULL, (exc.limit, exc.used, exc.needed, exc.reason))
                else:
                    fit.append(k)
            chosen = np.array(fit, np.int64)
            fresh = cache_ids.take(chosen)
        copies, factors, records = self.replication.copies, self.layout.factors, self.directory.records
        if copies or factors:  # created with the cache's factor, as the primary copy
            for cache_id in fresh.names():
                copies.pop(cache_id, None)
                if factors and cache_id not in records:
                    factors.pop(cache_id, None)
        return chosen

    def create_empty_ids(self, cache_ids: PackedIds) -> dict:
        """:meth:`create_empty` of a pack of ids whose primary copy is this node; returns
        ``{position: (limit, used, needed, reason)}`` of those that did not fit.

        Raises:
            NodeDrained: this node was drained.
        """
        if self.drain.retired:
            raise NodeDrained(self.node_id, [], "it was drained")
        problems: dict[int, tuple] = {}
        self._create_packed(cache_ids, np.arange(len(cache_ids)), problems)
        return {k: value for k, (_status, value) in problems.items()}

    def create_empty(self, pairs: list) -> dict:
        """Create ids as empty bytes where absent, from ``(id, primary node)`` pairs, or
        ``(id, primary node, factor)`` for an id of its own copy count (under the lock): the
        primary copy when that node is this one, else a copy. Returns ``{id: (limit, used,
        needed, reason)}`` of those that did not fit under ``max_memory``.

        Raises:
            NodeDrained: this node was drained.
        """
        if self.drain.retired:
            raise NodeDrained(self.node_id, [i for i, _ in pairs], "it was drained")
        full = {}
        copies = self.replication.copies
        if all(len(pair) == 2 and pair[1] == self.node_id for pair in pairs):  # init's primaries: at once
            out: list = [None] * len(pairs)
            self._create_here([pair[0] for pair in pairs], out, list(range(len(pairs))))
            return {pairs[k][0]: answer[1] for k, answer in enumerate(out) if answer is not None}
        factors = self.layout.factors
        for cache_id, primary, *factor in pairs:
            try:
                self.store.create_empty(cache_id)
            except CacheFull as exc:
                full[cache_id] = (exc.limit, exc.used, exc.needed, exc.reason)
                continue
            if factor:
                factors[cache_id] = factor[0]
            elif factors and cache_id not in self.directory.records:
                factors.pop(cache_id, None)
            if primary == self.node_id:
                copies.pop(cache_id, None)
            else:
                copies[cache_id] = primary
        return full
