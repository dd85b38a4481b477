"""Draining one node actor: handing its ids, placement records and lost ids to their new homes
before the node leaves (``hand_over``), taking them at a new home (``receive``), and undoing
that when the drain fails (``give_back``); plus how values travel between nodes
(:func:`values`, :func:`chunks`), which repairs use too.

Plain Python over the store, the layout, the peers and the other parts it is given; no Ray.
Choosing which node to drain and the views before and after are the coordinator's.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from ..errors import DataLost, ShovelingError
from ..objects import fetch, resolve
from ..placement import slot_of
from ..wire import join, pack, unpack
from .batch import adopt_frames
from .directory import Directory
from .layout import Layout
from .peers import Peers
from .sessions import Sessions
from .storage import Store

if TYPE_CHECKING:  # replication reads values and HAND_OVER_BYTES from here
    from .replication import Replication

log = logging.getLogger(__name__)

#: Bytes of values a drained node sends in one call, and a repair at most.
HAND_OVER_BYTES = 64 << 20
#: Ids (values, placement records, lost ids) a drained node sends in one call, and a repair
#: at most: empty ids weigh nothing by their bytes, and a million of them in one message
#: took more memory than the values of a full node.
HAND_OVER_IDS = 100_000
#: Seconds a drain may take before it gives up (the node then keeps serving its ids), and the
#: rounds of repairs without progress after which it gives up sooner.
HAND_OVER_DEADLINE = 900.0
HAND_OVER_STALLS = 3


def chunks(store: Store, ids: list) -> list[list]:
    """``ids`` cut into calls of at most :data:`HAND_OVER_BYTES` (one id may be larger) and
    :data:`HAND_OVER_IDS` ids."""
    out, size = [[]], 0
    for cache_id in ids:
        entry = store.peek(cache_id)
        if out[-1] and (size + entry.nbytes + entry.disk > HAND_OVER_BYTES or len(out[-1]) >= HAND_OVER_IDS):
            out.append([])
            size = 0
        out[-1].append(cache_id)
        size += entry.nbytes + entry.disk
    return out if ids else []


def values(store: Store, ids: list) -> list:
    """Values of ``ids`` as they travel to another node: read from disk, out of the object
    store (the receiver keeps its own copy), each with the append tokens it took."""
    stored = [store.get(i) for i in ids]
    frames = fetch([v[2] for v in stored])
    tokens = [sorted(store.peek(i).tokens or ()) for i in ids]
    return [(i, k, m, f, t) for i, (k, m, _), f, t in zip(ids, stored, frames, tokens)]


class Drain:
    """One node's side of drains: its own, and those of other nodes whose ids it takes.

    Args:
        store: the node's store.
        layout: the node's view of the cache.
        peers: calls to the other members.
        directory: the node's placement directory.
        replication: the node's copies (``repair``, ``copies``, ``evictions``).
        sessions: what the clients' writes applied here: handed over with the values.
        lock: the actor's lock.
    """

    def __init__(self, store: Store, layout: Layout, peers: Peers, directory: Directory, replication: Replication,
                 sessions: Sessions, lock: threading.RLock) -> None:
        self.store, self.layout, self.peers, self._lock = store, layout, peers, lock
        self.directory, self.replication, self.sessions = directory, replication, sessions
        self.node_id, self.cache = layout.node_id, peers.cache
        self.retired = False  # drained: every id went to another node
        # Ids taken from a node being drained (id -> that node) until the drain ends, and those
        # of them written or deleted here since: a failed drain leaves these here (give_back).
        self._received: dict[str, str] = {}
        self._touched: set[str] = set()

    def touch(self, cache_id: str) -> None:
        """Note a write or delete of an id: if a drain handed it here, a failed drain leaves it."""
        if cache_id in self._received:
            self._touched.add(cache_id)

    def forget_left(self, peers: dict) -> None:
        """At a new view (under the lock): a drain that succeeded, its node no member any more,
        can no longer take its ids back."""
        if self._received:
            self._received = {i: n for i, n in self._received.items() if n in peers}
            self._touched &= self._received.keys()

    def hand_over(self, old_chains: list, chains: list, peers: dict) -> int:
        """Drain this node: stop taking calls (:class:`NodeDrained`, so that clients move to
        the new homes), and make sure no id depends on this node any more; returns how many ids
        had their primary copy here.

        With one copy per id, every id held here goes to its home under ``chains`` (which no
        longer names this node; ``old_chains`` is what it replaces), and the placement records
        and lost ids homed here to their new homes. With replicas, the copies it still owed
        other holders are sent first, and its ids of one copy (see :meth:`.Layout.factor`) go
        to their homes; the coordinator's rebuild then promotes the copies of its other ids
        elsewhere.

        Calls wait until it is done. If a home refuses (full, unreachable), what was sent is
        dropped there again and nothing changes here, except for the ids clients wrote or
        deleted at a new home meanwhile (they found them there): those stay as they are there.

        Raises:
            ShovelingError: a home refused, or the drain gave up (see :data:`HAND_OVER_DEADLINE`):
                the node keeps its data and goes on serving it.
        """
        deadline = time.monotonic() + HAND_OVER_DEADLINE
        if self.layout.replicas > 1:
            return self._hand_over_copies(old_chains, chains, peers, deadline)
        with self._lock:
            table = [c[0] for c in chains]
            self._send_home(list(self.store.ids()), self.directory.by_home(table), old_chains, chains, peers, deadline)
            moved = len(self.store)
            self.store.close()
            self.directory.clear()
            self.retired = True
            log.warning("cache %s: drained, %d ids moved to other nodes", self.cache, moved)
            return moved

    def _send_home(self, ids: list, directory: dict, old_chains: list, chains: list, peers: dict,
                   deadline: float) -> None:
        """Send ``ids`` (held here, with the writes remembered of them and their own factors)
        and the records and lost ids of ``directory`` (:meth:`.Directory.by_home`) to their
        homes under ``chains`` (under the lock).

        Raises:
            ShovelingError: a home refused, or the deadline passed: what was sent is taken
                back (:meth:`_take_back`).
        """
        old_table, table = [c[0] for c in old_chains], [c[0] for c in chains]
        held: dict[str, list] = {}
        for cache_id in ids:
            held.setdefault(table[slot_of(cache_id)], []).append(cache_id)
        factors = self.layout.factors
        sent: dict[str, tuple] = {}  # home -> ([(id, homed here)], records, lost) it took
        try:
            for home in set(held) | set(directory):
                all_records, all_lost = directory.get(home, ([], []))
                calls = chunks(self.store, held.get(home, []))
                # records and lost ids ride along, as many a call as ids; more calls if need be
                needed = -(-max(len(all_records), len(all_lost)) // HAND_OVER_IDS)
                calls += [[]] * max(needed - len(calls), 0 if calls else 1)
                for k, chunk in enumerate(calls):
                    part = slice(k * HAND_OVER_IDS, (k + 1) * HAND_OVER_IDS)
                    records, lost = all_records[part], all_lost[part]
                    readable, chunk = self._readable(chunk)
                    homed = [old_table[slot_of(i)] == self.node_id for i in chunk]
                    packed = pack([(*v, h) for v, h in zip(readable, homed)])
                    if time.monotonic() > deadline:
                        raise ShovelingError(f"cache {self.cache}: drain of node {self.node_id} took "
                                             f"longer than {HAND_OVER_DEADLINE:.0f} s; the node keeps its data")
                    took = sent.setdefault(home, ([], [], []))
                    took[0].extend(zip(chunk, homed))
                    took[1].extend(records)
                    took[2].extend(lost)
                    own = {i: factors[i] for i in chunk if i in factors} if factors else {}
                    handed = (self.node_id, records, lost, self.sessions.of(chunk), own)
                    self.peers.call(home, "receive", handed, packed, members=peers)
        except ShovelingError:
            self._take_back(sent, peers)
            raise

    def _readable(self, chunk: list) -> tuple[list, list]:
        """The values of ``chunk`` as :func:`values` reads them, and the ids they are of: a
        scratch id whose writer died with its pieces (``DataLost``: only those are not this
        actor's to read) is left out, lost with this node as it was with its writer."""
        try:
            return values(self.store, chunk), chunk
        except DataLost:
            out, kept = [], []
            for cache_id in chunk:
                try:
                    out.extend(values(self.store, [cache_id]))
                except DataLost:
                    log.warning("cache %s: scratch id %s lost its writer's pieces; the drain leaves it lost",
                                self.cache, cache_id)
                    continue
                kept.append(cache_id)
            return out, kept

    def _hand_over_copies(self, old_chains: list, chains: list, peers: dict, deadline: float) -> int:
        """``hand_over`` with copies: stop taking calls, send the copies this node still owes
        other holders, and the ids of one copy whose primary is here to their homes; returns
        how many ids had their primary copy here.

        Raises:
            ShovelingError: holders kept refusing them (rounds without progress) or the deadline
                passed: the node keeps serving (nothing depends on the drain).
        """
        self.retired = True
        stalled, best = 0, None
        try:
            while True:
                left = self.replication.repair()[1]
                if not left:
                    break
                stalled = stalled + 1 if best is not None and left >= best else 0
                best = left if best is None else min(best, left)
                if stalled >= HAND_OVER_STALLS or time.monotonic() > deadline:
                    raise ShovelingError(f"cache {self.cache}: drain of node {self.node_id} gave up: {left} ids "
                                         "still miss a copy its holders would not take; the node keeps its data")
            with self._lock:
                single = [i for i in self.layout.factors if self.layout.factor(i) == 1
                          and i in self.store and i not in self.replication.copies]
                if single:
                    self._send_home(single, {}, old_chains, chains, peers, deadline)
                return len(self.store) - len(self.replication.copies)
        except BaseException:
            self.retired = False  # it keeps serving: nothing depends on the drain
            raise

    def _take_back(self, sent: dict, peers: dict) -> None:
        """After a home refused: ask every home what it took to give it back (under the lock)."""
        for home, (ids, records, lost) in sent.items():
            try:
                for k in range(0, max(len(ids), len(records), len(lost)), HAND_OVER_IDS):
                    part = slice(k, k + HAND_OVER_IDS)
                    returned = (self.node_id, ids[part], records[part], lost[part])
                    for cache_id in self.peers.call(home, "give_back", returned, members=peers):
                        self.store.delete(cache_id)  # written or deleted there meanwhile
            except ShovelingError as exc:
                log.warning("cache %s: could not take back %d ids from %s: %s", self.cache, len(ids), home, exc)

    def receive(self, handed: tuple, buffers: list, blob: tuple) -> None:
        """At a new home, from a node being drained (under the lock): values (with their append
        tokens), placement records, lost ids and the writes it remembers of those values (see
        :mod:`.sessions`), and the ids' own factors (see :meth:`.Layout.factor`).

        A value whose home did not change is taken only while this home's record still points
        at the drained node (a ``delete`` that raced the drain removed it: it stays deleted).
        """
        source, records, lost, entries, factors = handed
        self.sessions.adopt(entries)
        directory = self.directory
        for cache_id, kind, meta, frames, tokens, homed_there in unpack(join(blob), resolve(buffers)[0]):
            if homed_there or directory.records.get(cache_id) == source:
                self.store.set(cache_id, kind, meta, adopt_frames(self.store, frames), tokens)
                directory.records[cache_id] = self.node_id  # the full rebuild after the drain tells the backup
                directory.lost.pop(cache_id, None)
                if cache_id in factors:
                    self.layout.factors[cache_id] = factors[cache_id]
                self._received[cache_id] = source
        directory.take_handed(records, lost)
        self.replication.evictions()

    def give_back(self, returned: tuple) -> list:
        """Undo :meth:`receive` after a drain failed (under the lock): the node keeps its ids and
        its directory, except the ids written or deleted here since they came (clients found
        them here while the drain ran): they stay as they are here, and with one copy their
        backup homes learn it with the next client batch served here (as for ids a write
        creates). Returns those; the node drops its own."""
        source, ids, records, lost = returned
        touched = []
        for cache_id, homed_there in ids:
            self._received.pop(cache_id, None)
            if cache_id in self._touched:
                self._touched.discard(cache_id)
                touched.append(cache_id)
                if self.layout.replicas == 1:  # its backup home still points at the drained node:
                    self.directory.unsent.append(cache_id)  # told with the next client batch's records
                continue
            self.store.delete(cache_id)
            if not homed_there:
                self.directory.records[cache_id] = source
        self.directory.drop_handed(records, lost)
        return touched
