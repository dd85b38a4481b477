"""The copies of one node actor's ids: which ids it holds as a copy of another node's, applying
the writes it takes as the primary copy on the other holders (forward, replicate), the ids the
store evicted leaving every holder (eviction drops), and copies a holder lacks sent in the
background (repairs).

Plain Python over the store, the layout and the peers it is given: unit tests drive it through
plain ``_NodeActor`` objects, without Ray (only the background repairer needs a Ray actor).
Where ids live and the placement records are :mod:`.directory`'s; a drained node's hand-over
is :mod:`.drain`'s.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import zlib

import ray

from ..errors import CacheFull, DataLost, NodeUnavailable
from ..objects import forwardable, placeholders, resolve
from ..placement import SLOTS, holders, slot_of
from ..wire import join, pack, unpack
from .. import protocol as p
from .batch import Batch, adopt_frames
from .directory import Directory
from .drain import HAND_OVER_BYTES, HAND_OVER_IDS, values
from .layout import Change, Layout
from .peers import Peers
from .sessions import Sessions
from .storage import Store

log = logging.getLogger(__name__)

#: Pace of the background copying that rebuilds missing copies after a node left.
REPAIR_BYTES_PER_SECOND = 256 << 20


class Replication:
    """The copies bookkeeping of one node.

    Args:
        store: the node's store.
        layout: the node's view of the cache.
        peers: calls to the other members.
        copies: an empty dict, the ids held here as a copy (kept here; the directory reads it).
        directory: the node's placement directory (an evicted id leaves it).
        sessions: what the clients' writes applied here (see :mod:`.sessions`).
        lock: the actor's lock: held while state changes, free during calls to peers.
    """

    def __init__(self, store: Store, layout: Layout, peers: Peers, copies: dict, directory: Directory,
                 sessions: Sessions, lock: threading.RLock) -> None:
        self.store, self.layout, self.peers, self._lock = store, layout, peers, lock
        self.directory, self.sessions = directory, sessions
        self.node_id, self.cache = layout.node_id, peers.cache
        # Ids held here as a copy: id -> the node of its primary copy.
        self.copies: dict[str, str] = copies
        # Ids whose primary copy is here and whose copy on some holders is missing: id -> nodes.
        self.repairs: dict[str, set] = {}
        self._drops: dict[str, list] = {}  # node -> ids evicted here, to drop there too (see evictions)
        self._wake = threading.Event()
        self._repairer: threading.Thread | None = None

    def secondaries(self, cache_id: str) -> list[str]:
        """The other holders of an id whose primary copy is here, without those still waiting
        for their copy (the copy they get will have the write)."""
        if self.layout.others is None:
            return []
        nodes = self.layout.others_of(cache_id)
        pending = self.repairs.get(cache_id) if self.repairs else None
        return [n for n in nodes if n not in pending] if pending else nodes

    def live_holders(self, cache_id: str) -> list[str]:
        """Members holding an id held here, its primary first, without those still waiting
        for their copy (known at the primary only)."""
        primary = self.copies.get(cache_id, self.node_id)
        if self.layout.chains is None:
            return [primary]
        pending = self.repairs.get(cache_id, ())
        return [n for n in self.layout.holders(cache_id, primary) if n in self.layout.peers and n not in pending]

    def under_replicated(self) -> int:
        """Ids whose primary copy is here with fewer copies than their factor (see
        :meth:`.Layout.factor`)."""
        layout = self.layout
        if layout.replicas == 1:
            return 0
        if len(layout.peers) < layout.replicas:
            short = len(self.store) - len(self.copies)
            # ids of their own factor that the members can hold are not short
            short -= sum(1 for i in layout.factors if layout.factor(i) <= len(layout.peers)
                         and i in self.store and i not in self.copies)
            return short
        return len(self.repairs)

    def forget(self, cache_id: str) -> None:
        """Forget the copies bookkeeping of an id deleted here."""
        self.copies.pop(cache_id, None)
        self.repairs.pop(cache_id, None)
        if self.layout.factors:
            self.layout.factors.pop(cache_id, None)

    def forward(self, method: str, batch: Batch) -> None:
        """Apply the writes of a batch that this node took as the primary copy on the ids'
        other holders, in the order taken, and wait for them (all holders at once). Payloads
        travel as the writer sent them: references to its objects, which each holder fetches
        from where they are (see :func:`~shoveling_ray.objects.forwardable`). A holder that
        does not answer is dead or leaving: the coordinator's next rebuild replaces its
        copies. A holder that could not apply a write dropped its copy; it is queued for
        repair."""
        groups: dict[str, list] = {}
        with self._lock:
            others, pending, crc = self.layout.others, self.repairs, zlib.crc32
            factors, others_of = self.layout.factors, self.layout.others_of
            for item in batch.taken:
                if factors and item[0] in factors:
                    targets = others_of(item[0])
                else:
                    targets = others[crc(item[0].encode()) % SLOTS]
                if pending and item[0] in pending:
                    targets = [n for n in targets if n not in pending[item[0]]]
                for node in targets:
                    groups.setdefault(node, []).append(item)
        calls, packed = {}, {}
        for node, group in groups.items():
            blob, out = pack(group)
            packed[node] = (blob, forwardable(out, batch.arrived))
            calls[node] = (self.node_id, method, batch.stamp)
        for node, failed in self.peers.call_all("replicate", calls, packed).items():
            if isinstance(failed, NodeUnavailable):
                log.warning("cache %s: a copy on node %s missed %d writes: %s", self.cache, node, len(groups[node]), failed)
                if node not in self.layout.peers:
                    continue  # it left: the coordinator's next rebuild names other holders
                failed = [item[0] for item in groups[node]]  # alive but late: a whole copy follows
            if failed:
                with self._lock:
                    for cache_id in failed:
                        self.repairs.setdefault(cache_id, set()).add(node)
                self.start_repairs()

    def replicate(self, forwarded: tuple, buffers: list, blob: tuple) -> list:
        """At a copy (under the lock): apply writes its primary took (``forwarded``:
        ``(primary, method, stamp)``, then the packed items as in :meth:`.Peers.call`, their
        payloads as the writer sent them). Returns the ids it could not apply (all of them when
        the writer's objects are gone); their copy here is dropped."""
        primary, method, stamp = forwarded
        applied = self.sessions.call(stamp)
        try:
            arrays = resolve(buffers)[0]
        except DataLost:  # the writer died before this copy fetched its objects: repaired whole
            items = unpack(join(blob), placeholders(buffers))
            for item in items:
                self.drop_copy(item[0])
            return [item[0] for item in items]
        items = unpack(join(blob), arrays)
        at = 4 if method == "set" else 2  # where the frames are
        inline = not arrays  # every payload is bytes of the blob: nothing to adopt
        failed = []
        for item in items:
            frames = item[at]
            cache_id = item[0]
            if applied is not None and cache_id in applied:  # forwarded again (it was sent again)
                continue
            if method == "append" and not item[1] and cache_id not in self.store:
                self.copies.pop(cache_id, None)  # evicted here: the tail alone would be wrong
                failed.append(cache_id)
                continue
            try:
                if not inline:
                    frames = adopt_frames(self.store, frames)
                if method == "set":
                    self.store.set(cache_id, item[2], item[3], frames)
                else:
                    if item[1]:  # the append created the id at the primary: so it does here
                        self.store.delete(cache_id)
                    self.store.append(cache_id, frames, *item[3:])
                self.copies[cache_id] = primary
                if applied is not None:
                    applied[cache_id] = p.APPLIED
            except (CacheFull, TypeError):
                self.drop_copy(cache_id)
                failed.append(cache_id)
        self.evictions()
        return failed

    def drop_copy(self, cache_id: str) -> None:
        """Forget this node's copy of an id (the directory records kept here stay)."""
        self.copies.pop(cache_id, None)
        self.store.delete(cache_id)
        if self.layout.factors and cache_id not in self.directory.records:
            self.layout.factors.pop(cache_id, None)

    def evictions(self) -> None:
        """Take the ids the store evicted (``lru``; under the lock): with copies, an id evicted
        by any holder leaves the cache. Evicted here as its primary, its other holders drop
        their copies; evicted here as a copy, its primary drops it and then its other copies.
        They are told by :meth:`send_drops`, before this node serves another client batch or,
        if none comes, by the background repairer (which runs in turn with client batches)."""
        evicted, self.store.evicted = self.store.evicted, []
        for cache_id in evicted:
            if cache_id in self.store:  # written again since
                continue
            if self.layout.factors and cache_id not in self.directory.records:
                self.layout.factors.pop(cache_id, None)
            primary = self.copies.pop(cache_id, None)
            if primary is not None:
                self._drops.setdefault(primary, []).append(cache_id)
            else:
                self._tell_copies(cache_id)
                self._unrecord(cache_id)
        if self._drops:
            self.start_repairs()

    def _unrecord(self, cache_id: str) -> None:
        """Queue the drop of the placement records of an id evicted here as its primary: a
        record left pointing here would send its writes here for good, and only the home
        creates ids (see :meth:`drop_copies`)."""
        for node in self.directory.unrecord(cache_id):
            self._drops.setdefault(node, []).append(cache_id)

    def _tell_copies(self, cache_id: str) -> None:
        """Queue the drop of an id gone from this node, its primary, at its other holders."""
        for node in self.secondaries(cache_id):
            self._drops.setdefault(node, []).append(cache_id)
        self.repairs.pop(cache_id, None)

    def send_drops(self) -> None:
        """Tell the other holders of the ids this node evicted (outside the lock). A write that
        reached such an id elsewhere meanwhile leaves with it, on every holder."""
        if not self._drops:
            return
        with self._lock:
            drops, self._drops = self._drops, {}
        calls = {n: (self.node_id, ids) for n, ids in drops.items()}
        for node, failed in self.peers.call_all("drop_copies", calls).items():
            if isinstance(failed, NodeUnavailable):
                log.warning("cache %s: node %s kept %d ids evicted here: %s", self.cache, node, len(drops[node]), failed)

    def drop_copies(self, sent: tuple) -> None:
        """Forget ids another holder evicted (``(holder, ids)``; under the lock): the placement
        records pointing at it, the copies of ids whose primary that holder is, and the ids of
        which it held a copy and this node is the primary (their copies are told in turn, the
        sender's too: a write may have given it a new one since it evicted the id)."""
        sender, cache_ids = sent
        for cache_id in cache_ids:
            self.directory.drop_record(cache_id, sender)  # its placement record: the id is gone
            primary = self.copies.get(cache_id)
            if primary == sender:
                self.drop_copy(cache_id)
            elif primary is None and cache_id in self.store and sender in self.secondaries(cache_id):
                self.store.delete(cache_id)
                self._tell_copies(cache_id)  # the sender too: it may hold a newer copy
                self._unrecord(cache_id)
        if self._drops:
            self.start_repairs()

    def take_copies(self, sent: tuple, buffers: list, blob: tuple) -> list:
        """At a new holder (under the lock): whole copies from their primary (``sent``:
        ``(primary, the writes it remembers of them, {id: its own factor})``, see
        :mod:`.sessions` and :meth:`.Layout.factor`; the values packed as in
        :meth:`.Peers.call`). Returns the ids that did not fit."""
        primary, entries, factors = sent
        failed = []
        for cache_id, kind, meta, frames, tokens in unpack(join(blob), resolve(buffers)[0]):
            try:
                self.store.set(cache_id, kind, meta, adopt_frames(self.store, frames), tokens)
                self.copies[cache_id] = primary
                if cache_id in factors:
                    self.layout.factors[cache_id] = factors[cache_id]
            except CacheFull:
                failed.append(cache_id)
        self.sessions.adopt(e for e in entries if e[2] not in failed)  # a refused id took nothing
        self.evictions()
        return failed

    def repair(self, max_bytes: int = HAND_OVER_BYTES) -> tuple[int, int]:
        """Send missing copies to their holders, up to ``max_bytes`` of values (one id may be
        larger) and :data:`~.drain.HAND_OVER_IDS` ids. Runs in turn with client calls, so no write slips between a copy and the
        writes forwarded after it, and first tells other holders what this node evicted
        (:meth:`send_drops`). Returns ``(bytes sent, ids still missing a copy)``."""
        self.send_drops()
        by_node: dict[str, list] = {}
        size = count = 0
        with self._lock:
            # a round looks at no more ids than it may send: the rest wait for the next round
            for cache_id, nodes in list(itertools.islice(self.repairs.items(), HAND_OVER_IDS)):
                entry = self.store.peek(cache_id)
                if entry is None or cache_id in self.copies:
                    del self.repairs[cache_id]
                    continue
                for node in nodes:
                    by_node.setdefault(node, []).append(cache_id)
                size += (entry.nbytes + entry.disk) * len(nodes)
                count += 1
                if size >= max_bytes or count >= HAND_OVER_IDS:
                    break
            packed = {node: pack(values(self.store, ids)) for node, ids in by_node.items()}
            remembered = {node: self.sessions.of(ids) for node, ids in by_node.items()}
            factors = self.layout.factors
            own = {node: {i: factors[i] for i in ids if i in factors} if factors else {} for node, ids in by_node.items()}
        for node, copied in packed.items():
            try:
                sent = (self.node_id, remembered[node], own[node])
                failed = set(self.peers.call(node, "take_copies", sent, copied))
            except NodeUnavailable as exc:
                log.warning("cache %s: could not copy %d ids to node %s: %s", self.cache, len(by_node[node]), node, exc)
                # a member that did not answer stays owed its copies; one that left is
                # replaced by the next rebuild, which names other holders
                failed = set(by_node[node]) if node in self.layout.peers else set()
            with self._lock:
                for cache_id in by_node[node]:
                    nodes = self.repairs.get(cache_id)
                    if nodes is not None and cache_id not in failed:
                        nodes.discard(node)
                        if not nodes:
                            del self.repairs[cache_id]
        return size, len(self.repairs)

    def start_repairs(self) -> None:
        """Wake the background repairer (started on first use, in a Ray actor only: plain
        objects in tests call ``repair`` themselves)."""
        if self._repairer is None:
            if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
                return
            self._repairer = threading.Thread(target=self._repair_loop, name="shoveling-repair", daemon=True)
            self._repairer.start()
        self._wake.set()

    def _repair_loop(self) -> None:
        # Through the actor's own repair method, so that repairs run in turn with client calls.
        me = ray.get_runtime_context().current_actor
        while True:
            self._wake.wait()
            self._wake.clear()
            try:
                sent, left = ray.get(me.repair.remote())
            except ray.exceptions.RayError:
                return  # the actor is going away
            if left:
                self._wake.set()
            time.sleep(sent / REPAIR_BYTES_PER_SECOND)

    def take_view(self, change: Change, full: bool) -> dict[str, list]:
        """The ids held here under a new view (``rebuild``'s part; under the lock): an id whose
        primary copy is gone is promoted here if this is its first surviving holder; the
        primary queues copies for holders that lack one (sent in the background), and a node
        that is no longer a holder drops its copy. Returns ``{directory node: [(id, this
        node)]}``: primaries held away from their home, for directory nodes that are new, or
        all of them when ``full`` or the copy count went down to one; and primaries of one
        copy held at their home, for a new backup home."""
        me, layout, gone = self.node_id, self.layout, change.gone
        chains, announce = layout.chains, {}
        # Down to one copy: ids written while there were copies have no placement records (a
        # write records the ids it creates with one copy only); the directory nodes get them
        # now, so that such an id reads as lost, not as never written, once its node dies.
        lowered = layout.replicas == 1 and change.old_replicas > 1
        for cache_id in list(self.store.ids()):
            slot = slot_of(cache_id)
            old_primary = self.copies.get(cache_id, me)
            factor = change.old_factor(cache_id)
            primary = old_primary if change.alive(old_primary) else (change.survivor(old_primary, slot, factor) or me)
            before = change.held_before(slot, old_primary, factor)
            after = holders(primary, chains[slot], layout.factor(cache_id), layout.zones)
            if primary == me:
                self.copies.pop(cache_id, None)
                # Promoted here: another surviving copy may lack what the dead primary
                # forwarded here only; a whole copy (with its remembered writes) mends it.
                promoted = primary != old_primary
                missing = {n for n in after[1:] if promoted or n not in before or n in gone}
                missing = (self.repairs.get(cache_id, set()) | missing) & set(after)
                if missing:
                    self.repairs[cache_id] = missing
                else:
                    self.repairs.pop(cache_id, None)
                directory = chains[slot][:2]
                renewed = directory != change.old_chains[slot][:2] or any(n in gone for n in directory)
                if lowered and directory[0] == me:  # written with copies: no record yet
                    self.directory.records.setdefault(cache_id, me)
                # With one copy and a new directory node, the ids held here are announced even
                # at their home: a node drops the records it is sent of ids it holds, so the
                # other directory node would not know them, and once this node died they
                # would read as never written instead of lost.
                alone = renewed and layout.factor(cache_id) == 1
                if (directory[0] != me and (primary != old_primary or full or renewed)) or lowered or alone:
                    for node in directory:
                        if node != me:
                            announce.setdefault(node, []).append(self.directory.pair(cache_id, me))
            elif me in after:
                self.copies[cache_id] = primary
                self.repairs.pop(cache_id, None)
            else:
                self.drop_copy(cache_id)  # the records here were mended before
        return announce
