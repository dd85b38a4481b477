"""The placement directory one node actor keeps: where ids of the slots it is home or backup
home for live when not on their home (``init`` placed them elsewhere, a node died and a copy
took over), and which of them were lost with the node that held their only copy.

A slot's two directory nodes (the first two of its chain) keep the same records: the home
answers clients, the backup home takes over when the home dies. Plain Python over the store,
the layout and the peers it is given; no Ray. The records and lost ids are two columns of the
store's id table (:mod:`.idtable`), the node ids in them numbered: a few bytes per id instead
of a dict entry and two strings. Which ids are held here as copies is
:mod:`.replication`'s; the item methods that read and write the records are :mod:`.items`'.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from ..errors import NodeUnavailable
from ..idpack import PackedIds
from ..placement import SLOTS, slot_of, slots_of
from .. import protocol as p
from .idtable import Interned, NodeColumn
from .layout import Change, Layout
from .peers import Peers
from .storage import Store

log = logging.getLogger(__name__)


class Directory:
    """Placement records and lost ids of one node.

    Args:
        store: the node's store.
        copies: the ids held here as a copy (``Replication.copies``; read only here).
        layout: the node's view of the cache.
        peers: calls to the other members.
        lock: the actor's lock: held while state changes, free during calls to peers.
    """

    def __init__(self, store: Store, copies: dict, layout: Layout, peers: Peers, lock: threading.RLock) -> None:
        self.store, self._copies, self.layout, self.peers, self._lock = store, copies, layout, peers, lock
        self.node_id, self.cache = layout.node_id, peers.cache
        nodes = Interned()
        # Placement records of ids homed here but placed on another node by init.
        self.records = NodeColumn(store.table, "record", nodes)
        # Ids homed here whose only copy was on a node that died: id -> that node.
        self.lost = NodeColumn(store.table, "lost", nodes)
        # Ids a failed drain left here whose backup home still points at the drained node:
        # recorded again with the next client batch's created ids (see record_created).
        self.unsent: list[str] = []

    def absent(self, cache_id: str, via: int) -> tuple:
        """The answer for an id not held here (see :mod:`.protocol`)."""
        return self.absent_known(self.records.get(cache_id), self.lost.get(cache_id), via)

    def absent_known(self, target: str | None, lost: str | None, via: int) -> tuple:
        """:meth:`absent` from the id's record and lost entry (see :meth:`known`)."""
        if target is not None and target != self.node_id:  # (to itself: evicted)
            return p.REDIRECT, target
        if lost is not None:
            return p.LOST, lost
        return (p.REROUTE, None) if via == p.VIA_CACHE else (p.MISS, None)

    def known(self, cache_ids: list[str]) -> tuple[list, list]:
        """The record and the lost entry of each id (``None`` where none), looked up at once."""
        found = self.store.table.lookup(cache_ids, ("record", "lost"))
        names = self.records.nodes.names()
        return [names[n] for n in found["record"].tolist()], [names[n] for n in found["lost"].tolist()]

    def forget(self, cache_id: str) -> None:
        """Forget the record and the loss of an id deleted here."""
        self.records.pop(cache_id, None)
        self.lost.pop(cache_id, None)

    def unrecord(self, cache_id: str) -> list[str]:
        """Forget the record here of an id evicted here as its primary; returns the other
        directory nodes of its slot, whose records of it must go too."""
        if self.records.get(cache_id) == self.node_id:
            del self.records[cache_id]
        chains = self.layout.chains
        return [n for n in chains[slot_of(cache_id)][:2] if n != self.node_id] if chains is not None else []

    def drop_record(self, cache_id: str, node: str) -> None:
        """Forget the record of an id if it points at ``node`` (which evicted it)."""
        if self.records.get(cache_id) == node:
            del self.records[cache_id]

    def lost_ids(self) -> dict:
        """``{id: dead node}`` of the ids homed here whose only copy died."""
        return {i: n for i, n in self.lost.items() if self.layout.is_home(i)}

    def lost_count(self) -> int:
        if not len(self.lost):  # every call publishes it: no pass over the table for none
            return 0
        return sum(1 for i in self.lost if self.layout.is_home(i))

    def record(self, cache_id: str, node: str, backups: dict) -> None:
        """Record where ``init`` put an id (this node too: the record is what tells a lost id
        from one never written), here and, through ``backups``, at the backup home."""
        self.records[cache_id] = node
        backup = self.layout.backup(cache_id)
        if backup is not None:
            backups.setdefault(backup, []).append(self.pair(cache_id, node))

    def _backup_homes(self) -> list | None:
        """Each slot's backup home (``None`` where it is this node or there is none), or
        ``None`` before the first view."""
        chains, me = self.layout.chains, self.node_id
        if chains is None:
            return None
        return [c[1] if len(c) > 1 and c[1] != me else None for c in chains]

    def record_many(self, cache_ids: list[str], node: str, backups: dict) -> None:
        """:meth:`record` for many ids placed on one node."""
        if not cache_ids:
            return
        self.records.set_many(cache_ids, node)
        backup_of = self._backup_homes()
        if backup_of is None:
            return
        pair = self.pair if self.layout.factors else (lambda cache_id, node: (cache_id, node))
        for cache_id, slot in zip(cache_ids, slots_of(cache_ids)):
            backup = backup_of[slot]
            if backup is not None:
                backups.setdefault(backup, []).append(pair(cache_id, node))

    def record_packed(self, cache_ids: PackedIds, node: str, backups: dict) -> None:
        """:meth:`record_many` of a pack (``init``'s ids of one copy and no factor of their
        own): ``backups`` gets ``{backup home: [(pack, node), ...]}`` for :meth:`send_packed`."""
        if not len(cache_ids):
            return
        self.records.set_many(cache_ids, node)
        backup_of = self._backup_homes()
        if backup_of is None:
            return
        names = sorted({b for b in backup_of if b is not None})
        number_of = {name: k for k, name in enumerate(names, 1)}
        numbered = np.array([0 if b is None else number_of[b] for b in backup_of], np.int16)
        backup = numbered[cache_ids.crc32() % SLOTS]
        for number, name in enumerate(names, 1):
            chosen = np.nonzero(backup == number)[0]
            if len(chosen):
                backups.setdefault(name, []).append((cache_ids.take(chosen), node))

    def send_packed(self, backups: dict[str, list]) -> None:
        """:meth:`send_records` of :meth:`record_packed`'s records."""
        for node, failed in self.peers.call_all("adopt_packed_records", backups).items():
            if isinstance(failed, NodeUnavailable):
                log.warning("cache %s: backup home %s missed %d records: %s", self.cache, node,
                            sum(len(ids) for ids, _node in backups[node]), failed)

    def adopt_packed(self, parts: list) -> None:
        """:meth:`adopt_records` of ``[(pack of ids, their node), ...]`` (see
        :meth:`record_packed`)."""
        copies = self._copies
        for cache_ids, node in parts:
            held = self.store.holds_packed(cache_ids)
            if copies and held.any():
                held &= np.fromiter((i not in copies for i in cache_ids.names()), bool, len(cache_ids))
            if held.any():
                cache_ids = cache_ids.take(np.nonzero(~held)[0])
            self.records.set_many(cache_ids, node)
            self.lost.unset_many(cache_ids)

    def record_created(self, created: list) -> None:
        """With one copy: record the ids a write just created here (``created``, and those a
        failed drain left, see :attr:`unsent`), here and at their backup home (one call per
        backup home for the batch), as ``init`` does, so that if this node dies they read as
        lost (``DataLost``) instead of never written."""
        if not created and not self.unsent:
            return
        backups: dict[str, list] = {}
        with self._lock:
            ids = list(dict.fromkeys([*self.unsent, *created]))
            copies = self._copies
            self.record_many([i for i, held in zip(ids, self.store.holds_many(ids)) if held and i not in copies],
                             self.node_id, backups)
            self.unsent = []
        self.send_records(backups)

    def pair(self, cache_id: str, node: str) -> tuple:
        """A record as it travels: ``(id, node)``, and the id's own factor if it has one."""
        factor = self.layout.factors.get(cache_id) if self.layout.factors else None
        return (cache_id, node) if factor is None else (cache_id, node, factor)

    def send_records(self, backups: dict[str, list]) -> None:
        """Give backup homes the records made here (``{node: [(id, node), ...]}``), all at once.
        One that does not answer gets this slot's records from the next rebuild."""
        for node, failed in self.peers.call_all("adopt_records", backups).items():
            if isinstance(failed, NodeUnavailable):
                log.warning("cache %s: backup home %s missed %d records: %s", self.cache, node, len(backups[node]), failed)

    def adopt_records(self, pairs: list) -> None:
        """At a home or backup home: record where ids of its slots live (see ``rebuild``):
        ``(id, node)`` pairs, or ``(id, node, its own factor)`` for an id created with one.
        Done for all pairs at once (``init`` sends them by the hundred thousand)."""
        ids = [pair[0] for pair in pairs]
        copies = self._copies
        kept = [k for k, held in enumerate(self.store.holds_many(ids)) if not held or ids[k] in copies]
        if len(kept) < len(ids):
            ids, pairs = [ids[k] for k in kept], [pairs[k] for k in kept]
        self.records.set_many(ids, [pair[1] for pair in pairs])
        self.lost.unset_many(ids)
        for cache_id, _node, *factor in pairs:
            if factor:
                self.layout.factors[cache_id] = factor[0]

    def adopt_directory(self, sent: tuple) -> None:
        """At a backup home: the home's records and lost ids of ``slots`` replace those here."""
        slots, records, lost = sent
        slots = set(slots)
        for entries in (self.records, self.lost):
            for cache_id in [i for i in entries if slot_of(i) in slots]:
                del entries[cache_id]
        for cache_id, node, *factor in records:
            if cache_id in self._copies or cache_id not in self.store:
                self.records[cache_id] = node
                if factor:
                    self.layout.factors[cache_id] = factor[0]
        self.lost.update((i, n) for i, n in lost if i not in self.store)

    def mend(self, change: Change) -> None:
        """``rebuild``'s first part (under the lock): records here pointing at a gone node
        point at the first surviving holder of the id, or become lost ids (``DataLost`` until
        set, deleted or inited again); records and lost ids of slots whose directory this node
        no longer is go."""
        me, chains = self.node_id, self.layout.chains
        for cache_id, node in list(self.records.items()):
            slot = slot_of(cache_id)
            if me not in chains[slot][:2]:
                del self.records[cache_id]
                if self.layout.factors and cache_id not in self.store:
                    self.layout.factors.pop(cache_id, None)
            elif not change.alive(node):
                del self.records[cache_id]
                factor = change.old_factor(cache_id)  # one copy: its data died with its node
                holder = change.survivor(node, slot, factor) if factor > 1 else None
                if holder is None:
                    self.lost[cache_id] = node
                else:
                    self.records[cache_id] = holder
        for cache_id in [i for i in self.lost if me not in chains[slot_of(i)][:2]]:
            del self.lost[cache_id]

    def pushes(self, change: Change, full: bool) -> dict:
        """``rebuild``'s second part (under the lock): a slot's directory node that kept its
        records sends them to the other one when that one is new or a fresh actor (after a
        drain, ``full``: every home to its backup home). Returns ``{node: (slots, (records,
        lost ids))}`` for :meth:`send`."""
        me, gone, old_chains = self.node_id, change.gone, change.old_chains
        push: dict[str, set] = {}
        for slot, chain in enumerate(self.layout.chains):
            if len(chain) < 2 or me not in chain[:2] or me not in old_chains[slot][:2] or me in gone:
                continue
            other = chain[1] if chain[0] == me else chain[0]
            if (chain[0] == me) if full else (other not in old_chains[slot][:2] or other in gone):
                push.setdefault(other, set()).add(slot)
        return {node: (sorted(slots), self._of_slots(slots)) for node, slots in push.items()}

    def send(self, directory: dict, announce: dict) -> int:
        """Send what a rebuild gives other directory nodes (outside the lock): the records and
        lost ids of :meth:`pushes`, and the primaries held here away from their home
        (``{node: [(id, this node)]}``, see ``Replication.take_view``). Returns how many
        records were sent."""
        for node, (slots, (records, lost)) in directory.items():
            self._send_directory(node, "adopt_directory", (slots, records, lost), len(records))
        for node, pairs in announce.items():
            self._send_directory(node, "adopt_records", pairs, len(pairs))
        return sum(len(pairs) for pairs in announce.values()) + sum(len(d[1][0]) for d in directory.values())

    def _of_slots(self, slots: set) -> tuple[list, list]:
        """The records and lost ids here of ``slots`` (a record of an id of its own factor
        with that factor, as :meth:`adopt_records` takes them)."""
        return ([self.pair(i, n) for i, n in self.records.items() if slot_of(i) in slots],
                [(i, n) for i, n in self.lost.items() if slot_of(i) in slots])

    def _send_directory(self, node: str, method: str, arg, count: int) -> None:
        try:
            self.peers.call(node, method, arg)
        except NodeUnavailable as exc:
            log.warning("cache %s: could not send %d records to node %s: %s", self.cache, count, node, exc)

    def by_home(self, table: list) -> dict[str, tuple[list, list]]:
        """For a drain: the records and lost ids homed here that point elsewhere, by their home
        under ``table`` (each slot's home): ``{home: (records, lost ids)}``."""
        directory: dict[str, tuple[list, list]] = {}
        for entries, index in ((self.records, 0), (self.lost, 1)):
            for cache_id, node in entries.items():
                if self.layout.is_home(cache_id) and node != self.node_id:
                    handed = self.pair(cache_id, node) if index == 0 else (cache_id, node)  # with its factor
                    directory.setdefault(table[slot_of(cache_id)], ([], []))[index].append(handed)
        return directory

    def take_handed(self, records: list, lost: list) -> None:
        """At a new home: the records and lost ids a drained node handed over, where no value
        here says otherwise."""
        for cache_id, node, *factor in records:
            if cache_id not in self.store:
                self.records[cache_id] = node
                if factor:
                    self.layout.factors[cache_id] = factor[0]
        for cache_id, node in lost:
            if cache_id not in self.store and cache_id not in self.records:
                self.lost[cache_id] = node

    def drop_handed(self, records: list, lost: list) -> None:
        """After a drain failed: forget the records and lost ids it handed over, unless they
        changed here since."""
        for entries, pairs in ((self.records, records), (self.lost, lost)):
            for cache_id, node, *_factor in pairs:
                if entries.get(cache_id) == node:
                    del entries[cache_id]

    def clear(self) -> None:
        self.records.clear()
        self.lost.clear()
