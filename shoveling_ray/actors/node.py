"""The cache actor pinned to one Ray node: its share of the data, the copies it keeps for
other nodes, and the placement records of the ids whose home or backup home it is.

The class is plain Python (testable without Ray); :data:`NodeActor` is its Ray actor. Client
calls run one at a time, which is what keeps each writer's appends in call order and makes each
home the single point that decides where an id lives. A home that places an id on another node
(``init``) or deletes one held elsewhere calls that node itself before it answers, so no client
ever sees a record without its data or data without its record, even if the client dies
mid-call. Those peer calls are served in their own concurrency group, so two homes calling each
other never wait on each other.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import zlib

import ray

from ..errors import CacheFull, ConsulError, DataLost, NodeDrained, NodeUnavailable, ShovelingError, ray_errors
from ..heap import keep_freed_memory
from ..codec import KIND_BYTES, OBJECT_STORE_BYTES, decode
from ..objects import adopt, as_refs, fetch, forwardable, load, placeholders, put_for_reads, refs_beside, resolve
from ..placement import SLOTS, holders, slot_of
from ..observe.http import TOKEN_ENV, ReadEndpoint
from ..observe.metrics import NodeMetrics
from ..wire import join, no_gc, pack, split, unpack
from ..membership.consul import ConsulAgent, ConsulConfig
from ..membership.registration import ConfigFollower, Heartbeat
from . import protocol as p
from .disk import SpillFiles
from .sessions import Sessions
from .storage import SPILL_TIMEOUT, Store

log = logging.getLogger(__name__)

#: Seconds an actor waits for another node's actor (``init``, ``delete``, forwarding writes to
#: copies, repairs). Longer than a write may wait for spilling there: a slow copy is not a dead
#: one. A live copy that still does not answer in time is counted under-replicated and repaired.
PEER_TIMEOUT = 2 * SPILL_TIMEOUT
#: Bytes of values a drained node sends in one call, and a repair at most.
HAND_OVER_BYTES = 64 << 20
#: Seconds a drain may take before it gives up (the node then keeps serving its ids), and the
#: rounds of repairs without progress after which it gives up sooner.
HAND_OVER_DEADLINE = 900.0
HAND_OVER_STALLS = 3
#: Pace of the background copying that rebuilds missing copies after a node left.
REPAIR_BYTES_PER_SECOND = 256 << 20
#: Share of ``max_memory`` below which the actor keeps writers' objects mapped (see _adopt).
MAPPED_SHARE = 0.5
#: Memory counted in ``used`` per placement record, lost id or copy kept here (a dict entry, its
#: node id string is shared), and per id waiting for repair (its entry and set).
RECORD_BYTES = 100
REPAIR_BYTES = 300
#: The Consul node meta key that names a node's failure domain.
ZONE_META = "zone"


def _session_dir() -> str:
    """This node's directory of the running Ray session (``/tmp/ray/session_...``)."""
    context = ray.get_runtime_context()
    return os.path.join(context.get_temp_dir(), context.get_session_name(), "shoveling_ray")


def _peer_args(arg, packed: tuple | None, remote: bool) -> tuple:
    """The arguments of a peer call (see :meth:`_NodeActor._call_peer`)."""
    if packed is None:
        return (arg,)
    blob, buffers = packed
    return (arg, as_refs(buffers) if remote else buffers, *split(blob))


def _locked(method):
    # Calls run one at a time already; the lock orders them with the Consul config thread. The
    # cyclic GC pauses as for client batches (see wire.no_gc): peer calls such as replicate and
    # create_empty build entries by the thousand too.
    @functools.wraps(method)
    def wrapper(self, *args):
        with self._lock, no_gc():
            return method(self, *args)

    return wrapper


class _NodeActor:
    """State of one node's share of a cache.

    Args:
        cache: the cache name.
        node_id: hex id of the node the actor is pinned to.
        max_memory: limit on the memory held (see :mod:`.storage`); ``None`` for none.
        policy: ``"spill"``, ``"reject"`` or ``"lru"``.
        max_disk: limit on spill files; ``None``: keep 10% of the disk free.
        spill_dir: where spill files go, in ``<spill_dir>/<cache>/<node_id>``; ``None``: the
            Ray session's directory on this node. Whatever a dead predecessor left there is
            removed first.
        consul: Consul settings, or ``None`` for Ray alone. The actor talks to the agent its
            node names in ``CONSUL_HTTP_ADDR``, else to the one in ``consul``.
        http: serve the HTTP read endpoint (:mod:`shoveling_ray.observe.http`) on the node's
            address.
    """

    def __init__(
        self,
        cache: str,
        node_id: str,
        max_memory: int | None,
        policy: str,
        max_disk: int | None = None,
        spill_dir: str | None = None,
        consul: ConsulConfig | None = None,
        http: bool = False,
    ) -> None:
        keep_freed_memory()
        self.cache = cache
        self.node_id = node_id
        disk = SpillFiles(os.path.join(spill_dir or _session_dir(), cache, node_id), max_disk)
        self.store = Store(node_id, max_memory, policy, disk, own=adopt, load=load)
        # Placement records of ids homed here but placed on another node by init.
        self.records: dict[str, str] = {}
        # Ids homed here whose only copy was on a node that died: id -> that node.
        self.lost: dict[str, str] = {}
        # Where ids go (set by the coordinator through rebuild): slot chains, the members'
        # actors, copies per id.
        self.chains: list | None = None
        self.peers: dict = {}
        self.replicas = 1
        self.zones: dict[str, str] = {}  # members' failure domains (see placement.holders)
        # Per slot: the other holders of an id whose primary copy is here (from chains).
        self._others: list | None = None
        # Ids held here as a copy: id -> the node of its primary copy.
        self.copies: dict[str, str] = {}
        # Ids whose primary copy is here and whose copy on some holders is missing: id -> nodes.
        self.repairs: dict[str, set] = {}
        self._taken: list = []  # the writes the batch being served took (see _write)
        self._created: list = []  # ids the batch being served created here (see _record_created)
        self._arrived: dict = {}  # the batch being served's payload references (see _forward)
        self._inline = True  # whether the batch being served has only payloads of its blob
        # What the clients' writes applied here, to apply each once (see .sessions); the
        # batch being served's part of it (``None``: a read, or a write without a stamp).
        self.sessions = Sessions()
        self._applied: dict | None = None
        self._drops: dict[str, list] = {}  # node -> ids evicted here, to drop there too (see _evictions)
        # Ids taken from a node being drained (id -> that node) until the drain ends, and those
        # of them written or deleted here since: a failed drain leaves these here (give_back).
        self._received: dict[str, str] = {}
        self._touched: set[str] = set()
        self._wake = threading.Event()
        self._repairer: threading.Thread | None = None
        self._lock = threading.Lock()
        self._base = {"max-memory": max_memory, "max-disk": max_disk, "eviction": policy, "http": http}
        self._kv: dict = {}
        self._threads: list = []
        self._endpoint: ReadEndpoint | None = None
        self._metrics = NodeMetrics(cache, node_id)
        self._moved = 0  # bytes stored or returned by the batch being served
        self._serving = 0  # bytes of values being copied out to HTTP readers
        self.retired = False  # drained: every id went to another node
        self.zone: str | None = None  # the Consul node meta zone of this node's agent
        if http:
            self._serve(True)
        if consul is not None:
            local = os.environ.get("CONSUL_HTTP_ADDR")
            agent = ConsulAgent(consul.at(local) if local else consul)
            try:
                self.zone = agent.node_meta().get(ZONE_META) or None
            except ConsulError as exc:  # the heartbeat reports the agent's trouble
                log.warning("cache %s: could not read this node's Consul node meta: %s", cache, exc)
            address = ray.util.get_node_ip_address()
            self._threads = [Heartbeat(agent, cache, node_id, address), ConfigFollower(agent, cache, self._follow)]
            self._threads[0].port = self._endpoint.port if self._endpoint else None
            self._threads[0].beat()  # registered before the first call is served
            for thread in self._threads:
                thread.start()

    def _follow(self, kv_config: dict) -> None:
        with self._lock:
            self._kv = kv_config
            self._apply()
            self._publish()

    def _apply(self) -> None:
        config = {**self._base, **self._kv}
        before = self.store.evictions
        self.store.configure(config["max-memory"], config["eviction"], config["max-disk"])
        self._serve(config["http"])
        log.info("cache %s: max-memory=%s max-disk=%s eviction=%s http=%s", self.cache, config["max-memory"],
                 config["max-disk"], config["eviction"], config["http"])
        if self.store.evictions > before:
            log.warning("cache %s: the new limit evicted %d ids", self.cache, self.store.evictions - before)
            self._evictions()

    def ping(self) -> str:
        """The node this actor really runs on, as Ray reports it."""
        return ray.get_runtime_context().get_node_id()

    def failure_domain(self) -> str | None:
        """The zone this node's Consul agent names in its node meta (``zone``), if any."""
        return self.zone

    def batch(self, method: str, stamp: tuple | None, buffers: list, *blob: bytes) -> tuple:
        """Run an item method on a packed batch (see :mod:`shoveling_ray.wire`: its blob in
        pieces, its large payloads as references, see :mod:`shoveling_ray.objects`).

        A write's ``stamp`` (``(session, sequence, low)``, see :mod:`.sessions`) names the
        client call: an id that took this call here before (the client sent it again after a
        failure) is answered as it was, not written again.

        ``place`` and ``delete`` call the other members' actors (``peers``, from the
        coordinator's last view). Writes taken here as the primary copy are applied on the
        other copies before the answer (:meth:`_forward`).

        Returns ``(blob, buffers, refs)``: the packed results, with every ObjectRef of a
        stored frame moved to ``refs`` (see :func:`~shoveling_ray.objects.refs_beside`).
        """
        if self.retired:
            raise NodeDrained(self.node_id, [], "it was drained: its ids live on other nodes now")
        with no_gc():
            arrays, self._arrived = resolve(buffers)
            self._inline = not arrays  # every payload is bytes of the blob: nothing to adopt
            items = unpack(join(blob), arrays)
            self._moved = 0
            self._send_drops()
            with self._lock:
                self._applied = self.sessions.call(stamp)
            try:
                results = getattr(self, method)(items)
            finally:  # what the batch applied reaches the copies, even if an item failed oddly
                if self._taken:
                    if self.replicas > 1:
                        self._forward(method, stamp)
                    self._taken = []  # it holds the frames' ObjectRefs: a deleted value must free them
                self._applied = None
            self._arrived = {}  # the writer's references: its objects are freed once the views go
            if self.store.evicted:
                with self._lock:
                    self._evictions()
                self._send_drops()
            if self._created:
                self._record_created()
            refs = refs_beside(results) if method == "get" else []
            moved = self._moved
            self._metrics.served(method, len(items), moved if method in ("set", "append") else 0,
                                 moved if method == "get" else 0)
            self._publish()
            return (*pack(results), refs)

    def _bookkeeping(self) -> int:
        """Memory held besides the stored values, counted in ``used`` (see Store.charge)."""
        return (self.sessions.nbytes + RECORD_BYTES * (len(self.records) + len(self.lost) + len(self.copies))
                + REPAIR_BYTES * len(self.repairs) + self._serving)

    def _publish(self) -> None:
        store = self.store
        store.charge(self._bookkeeping())
        self._metrics.held(store.used, store.max_memory, len(store), store.evictions,
                           sum(1 for i in self.lost if self._is_home(i)), store.disk.used, store.spills)

    def _adopt(self, frames: list) -> list:
        """:func:`adopt`, keeping the writer's objects mapped only while this actor holds less
        than :data:`MAPPED_SHARE` of ``max_memory``: Ray cannot spill a mapped object, so a
        store full of them would leave Ray's own objects (replies, arguments) no room; past
        that share large payloads become objects of the actor's own, which Ray spills."""
        limit = self.store.max_memory
        return adopt(frames, keep_views=limit is None or self.store.used < MAPPED_SHARE * limit)

    def _secondaries(self, cache_id: str) -> list[str]:
        """The other holders of an id whose primary copy is here, without those still waiting
        for their copy (the copy they get will have the write)."""
        if self._others is None:
            return []
        nodes = self._others[slot_of(cache_id)]
        pending = self.repairs.get(cache_id) if self.repairs else None
        return [n for n in nodes if n not in pending] if pending else nodes

    def _forward(self, method: str, stamp: tuple | None) -> None:
        """Apply the writes of a batch that this node took as the primary copy on the ids'
        other holders, in the order taken, and wait for them (all holders at once). Payloads
        travel as the writer sent them: references to its objects, which each holder fetches
        from where they are (see :func:`~shoveling_ray.objects.forwardable`). A holder that
        does not answer is dead or leaving: the coordinator's next rebuild replaces its
        copies. A holder that could not apply a write dropped its copy; it is queued for
        repair."""
        groups: dict[str, list] = {}
        with self._lock:
            others, pending, crc = self._others, self.repairs, zlib.crc32
            for item in self._taken:
                targets = others[crc(item[0].encode()) % SLOTS]
                if pending and item[0] in pending:
                    targets = [n for n in targets if n not in pending[item[0]]]
                for node in targets:
                    groups.setdefault(node, []).append(item)
        calls, packed = {}, {}
        for node, group in groups.items():
            blob, out = pack(group)
            packed[node] = (blob, forwardable(out, self._arrived))
            calls[node] = (self.node_id, method, stamp)
        for node, failed in self._call_peers("replicate", calls, packed).items():
            if isinstance(failed, NodeUnavailable):
                log.warning("cache %s: a copy on node %s missed %d writes: %s", self.cache, node, len(groups[node]), failed)
                if node not in self.peers:
                    continue  # it left: the coordinator's next rebuild names other holders
                failed = [item[0] for item in groups[node]]  # alive but late: a whole copy follows
            if failed:
                with self._lock:
                    for cache_id in failed:
                        self.repairs.setdefault(cache_id, set()).add(node)
                self._start_repairs()

    def _record_created(self) -> None:
        """With one copy: record the ids a write just created here, here and at their backup
        home (one call per backup home for the batch), as ``init`` does, so that if this node
        dies they read as lost (``DataLost``) instead of never written."""
        backups: dict[str, list] = {}
        with self._lock:
            for cache_id in self._created:
                if cache_id in self.store and cache_id not in self.copies:
                    self._record(cache_id, self.node_id, backups)
            self._created = []
        self._send_records(backups)

    def _send_records(self, backups: dict[str, list]) -> None:
        """Give backup homes the records made here (``{node: [(id, node), ...]}``), all at once.
        One that does not answer gets this slot's records from the next rebuild."""
        for node, failed in self._call_peers("adopt_records", backups).items():
            if isinstance(failed, NodeUnavailable):
                log.warning("cache %s: backup home %s missed %d records: %s", self.cache, node, len(backups[node]), failed)

    def _absent(self, cache_id: str, via: int) -> tuple:
        """The answer for an id not held here (see :mod:`.protocol`)."""
        target = self.records.get(cache_id)
        if target is not None and target != self.node_id:  # (to itself: evicted)
            return p.REDIRECT, target
        if cache_id in self.lost:
            return p.LOST, self.lost[cache_id]
        return (p.REROUTE, None) if via == p.VIA_CACHE else (p.MISS, None)

    @_locked
    def get(self, items: list) -> list:
        out = []
        for cache_id, via in items:
            value = self.store.get(cache_id)
            if value is None:
                out.append(self._absent(cache_id, via))
            else:
                entry = self.store.peek(cache_id)
                self._moved += entry.nbytes + entry.disk  # known sizes: no walk over the frames
                if entry.nbytes >= OBJECT_STORE_BYTES and not entry.disk:
                    put_for_reads(entry.frames)
                out.append((p.OK, value))
        return out

    @_locked
    def exists(self, items: list) -> list:
        return [(p.OK, True) if i in self.store else self._absent(i, via) for i, via in items]

    @_locked
    def size(self, items: list) -> list:
        out = []
        for cache_id, via in items:
            entry = self.store.peek(cache_id)
            out.append(self._absent(cache_id, via) if entry is None else (p.OK, entry.raw))
        return out

    @_locked
    def locate(self, items: list) -> list:
        """Every node holding each id, its primary copy first."""
        return [(p.OK, self._live_holders(i)) if i in self.store else self._absent(i, via) for i, via in items]

    def _live_holders(self, cache_id: str) -> list[str]:
        """Members holding an id held here, its primary first, without those still waiting
        for their copy (known at the primary only)."""
        primary = self.copies.get(cache_id, self.node_id)
        if self.chains is None:
            return [primary]
        nodes = holders(primary, self.chains[slot_of(cache_id)], self.replicas, self.zones)
        pending = self.repairs.get(cache_id, ())
        return [n for n in nodes if n in self.peers and n not in pending]

    def _write(self, items: list, apply, clears_loss: bool) -> list:
        """Apply writes to the ids this node may write; ``apply`` adds each write it took to
        ``_taken`` (what :meth:`_forward` sends to the copies)."""
        out = []
        self._taken = []
        applied = self._applied
        for item in items:
            cache_id, via = item[0], item[1]
            if applied is not None and cache_id in applied:  # sent again: it was applied here
                out.append(applied[cache_id])
                continue
            if cache_id in self.copies:  # the primary orders writes
                out.append((p.REDIRECT, self.copies[cache_id]))
                continue
            target = self.records.get(cache_id)
            if target == self.node_id:
                target = None  # placed here by init
            if cache_id not in self.store and (target is not None or via != p.AT_HOME):
                # Only the home creates ids: elsewhere a write could recreate a deleted id.
                out.append((p.REDIRECT, target) if target is not None else (p.REROUTE, None))
                continue
            if cache_id in self.lost:
                if not clears_loss:  # appending to a lost value would hide the loss
                    out.append((p.LOST, self.lost[cache_id]))
                    continue
                del self.lost[cache_id]
            created = target is None and cache_id not in self.store and cache_id not in self.records
            try:
                self._moved += apply(item)
            except CacheFull as exc:
                out.append((p.FULL, (exc.limit, exc.used, exc.needed, exc.reason)))
            except TypeError:
                out.append((p.WRONG_TYPE, None))
            else:
                out.append((p.OK, None))
                if applied is not None:
                    applied[cache_id] = p.APPLIED
                if created and self.replicas == 1:
                    self._created.append(cache_id)
                if cache_id in self._received:
                    self._touched.add(cache_id)
        return out

    @_locked
    def set(self, items: list) -> list:
        """Items are ``(cache_id, via, kind, meta, frames)``."""

        def apply(item):
            frames = item[4] if self._inline else self._adopt(item[4])
            stored = self.store.set(item[0], item[2], item[3], frames)
            self._taken.append(item)
            return stored

        return self._write(items, apply, clears_loss=True)

    @_locked
    def append(self, items: list) -> list:
        """Items are ``(cache_id, via, frames)`` or ``(cache_id, via, frames, token)``."""

        def apply(item):
            fresh = item[0] not in self.store  # the append creates it: copies start it afresh
            frames = item[2] if self._inline else self._adopt(item[2])
            added = self.store.append(item[0], frames, *item[3:])
            self._taken.append((item[0], fresh, *item[2:]))
            return added

        return self._write(items, apply, clears_loss=False)

    def _backup(self, cache_id: str) -> str | None:
        """The backup home of an id's slot: the other node keeping its placement record."""
        chain = self.chains[slot_of(cache_id)] if self.chains is not None else ()
        return chain[1] if len(chain) > 1 and chain[1] != self.node_id else None

    def delete(self, items: list) -> list:
        """At a home: delete the id, its copies and its placement records (here and at the
        backup home).

        Items are ``(cache_id, via)``; returns whether each id existed. Items not sent to
        their home are rerouted there.
        """
        out, calls = [], {}
        applied = self._applied
        with self._lock:
            for cache_id, via in items:
                if applied is not None and cache_id in applied:  # sent again: deleted here
                    out.append(applied[cache_id])
                    continue
                primary = self.records.pop(cache_id, None)
                if primary is None and cache_id in self.store and cache_id not in self.copies:
                    primary = self.node_id
                if primary is None:
                    if self.lost.pop(cache_id, None) is not None:
                        if self._backup(cache_id):
                            calls.setdefault(self._backup(cache_id), []).append(cache_id)
                        out.append((p.OK, True))
                    else:
                        out.append((p.REROUTE, None) if via != p.AT_HOME else (p.OK, False))
                    continue
                self.lost.pop(cache_id, None)
                nodes = self._holders(cache_id, primary)
                if self._backup(cache_id):  # its record there (init) or its lost entry
                    nodes.add(self._backup(cache_id))
                if self.node_id in nodes:
                    nodes.discard(self.node_id)
                    self._drop_here(cache_id)
                for node in nodes:
                    calls.setdefault(node, []).append(cache_id)
                out.append((p.OK, True))
            if applied is not None:
                applied.update((i, answer) for (i, _via), answer in zip(items, out) if answer[0] == p.OK)
        for node, ids in calls.items():
            try:
                self._call_peer(self.peers, node, "drop", ids)
            except NodeUnavailable as exc:
                # Its node is gone, and the data with it.
                log.warning("cache %s: delete could not reach node %s: %s", self.cache, node, exc)
        return out

    def _holders(self, cache_id: str, primary: str) -> set:
        """The nodes that hold (or are to hold) an id whose primary copy is on ``primary``."""
        if self.chains is None:
            return {primary}
        return set(holders(primary, self.chains[slot_of(cache_id)], self.replicas, self.zones))

    def _drop_here(self, cache_id: str) -> bool:
        if cache_id in self._received:
            self._touched.add(cache_id)
        self.copies.pop(cache_id, None)
        self.repairs.pop(cache_id, None)
        self.records.pop(cache_id, None)
        self.lost.pop(cache_id, None)
        return self.store.delete(cache_id)

    def place(self, items: list) -> list:
        """At a home: decide where new ids live and create them there, with their copies.
        Items are ``(cache_id, via, target)``.

        An id that exists here or has a record keeps its node; otherwise it is created here
        (target is this node) or on ``target``, its copies on the other holders, and recorded
        here and at the backup home (also when it is here). Returns ``(OK, node)`` per id, or
        ``(UNAVAILABLE, (node, reason))`` when the target did not answer (nothing is recorded).
        """
        out, primaries, copies, records = [], {}, {}, {}
        with self._lock:
            for index, (cache_id, _via, target) in enumerate(items):
                self.lost.pop(cache_id, None)  # init recreates a lost id, empty
                if cache_id in self.records:
                    out.append((p.OK, self.records[cache_id]))
                    continue
                if cache_id in self.store and cache_id not in self.copies:
                    out.append((p.OK, self.node_id))
                    continue
                if target == self.node_id:
                    try:
                        self.store.create_empty(cache_id)
                    except CacheFull as exc:
                        out.append((p.FULL, (exc.limit, exc.used, exc.needed, exc.reason)))
                        continue
                    self._record(cache_id, target, records)
                else:
                    primaries.setdefault(target, []).append(index)
                for node in self._holders(cache_id, target) - {target}:
                    copies.setdefault(node, []).append((cache_id, target))
                out.append((p.OK, target))
        # The lock is free while the targets create their ids: a target that is itself a home
        # placing ids here must find this actor's peer methods able to run.
        for node, indices in primaries.items():
            ids = [items[i][0] for i in indices]
            try:
                full = self._call_peer(self.peers, node, "create_empty", [(i, node) for i in ids])
            except NodeUnavailable as exc:
                for i in indices:
                    out[i] = (p.UNAVAILABLE, (node, exc.reason))
                continue
            with self._lock:
                for i in indices:
                    if items[i][0] in full:
                        out[i] = (p.FULL, full[items[i][0]])
                    else:
                        self._record(items[i][0], node, records)
        failed = {items[i][0] for i, (status, _v) in enumerate(out) if status != p.OK}
        for node, pairs in copies.items():
            pairs = [pair for pair in pairs if pair[0] not in failed]
            try:
                full = self.create_empty(pairs) if node == self.node_id else \
                    self._call_peer(self.peers, node, "create_empty", pairs)
            except NodeUnavailable as exc:  # the next rebuild gives them another holder
                log.warning("cache %s: no copy of %d new ids on node %s: %s", self.cache, len(pairs), node, exc)
                continue
            if full:
                log.warning("cache %s: node %s had no room for copies of %d new ids", self.cache, node, len(full))
        self._send_records(records)
        return out

    def _record(self, cache_id: str, node: str, backups: dict) -> None:
        """Record where ``init`` put an id (this node too: the record is what tells a lost id
        from one never written), here and, through ``backups``, at the backup home."""
        self.records[cache_id] = node
        backup = self._backup(cache_id)
        if backup is not None:
            backups.setdefault(backup, []).append((cache_id, node))

    def _call_peer(self, peers: dict, node: str, method: str, arg, packed: tuple | None = None):
        """Call another node's actor and wait (plain objects are called directly, in tests).
        ``packed``: a ``(blob, buffers)`` of :func:`pack`, which the method takes after ``arg``
        as the client's ``batch`` does (the buffers, then the blob's pieces).

        Raises:
            NodeUnavailable: it is not a member, died, or did not answer in ``PEER_TIMEOUT``.
        """
        peer = peers.get(node)
        if peer is None:
            raise NodeUnavailable(node, arg, "not a member of the cache")
        if not isinstance(peer, ray.actor.ActorHandle):
            return getattr(peer, method)(*_peer_args(arg, packed, False))
        with ray_errors(f"cache {self.cache}: {method} on node {node}", node=node, ids=arg):
            return ray.get(getattr(peer, method).remote(*_peer_args(arg, packed, True)), timeout=PEER_TIMEOUT)

    def _call_peers(self, method: str, args: dict, packed: dict | None = None) -> dict:
        """Call ``method`` on several nodes' actors at once (``{node: arg}``, and ``{node:
        packed}`` as in :meth:`_call_peer`) and wait for all; returns ``{node: result}``, a
        :class:`NodeUnavailable` for each that did not answer."""
        pending, out = {}, {}
        for node, arg in args.items():
            peer = self.peers.get(node)
            extra = packed.get(node) if packed else None
            if isinstance(peer, ray.actor.ActorHandle):
                pending[node] = getattr(peer, method).remote(*_peer_args(arg, extra, True))
            else:
                try:
                    out[node] = self._call_peer(self.peers, node, method, arg, extra)
                except NodeUnavailable as exc:
                    out[node] = exc
        for node, ref in pending.items():
            try:
                with ray_errors(f"cache {self.cache}: {method} on node {node}", node=node, ids=[]):
                    out[node] = ray.get(ref, timeout=PEER_TIMEOUT)
            except NodeUnavailable as exc:
                out[node] = exc
        return out

    @_locked  # outside ray.method: Ray reads the group from the unwrapped function
    @ray.method(concurrency_group="peer")
    def create_empty(self, pairs: list) -> dict:
        """Create ids as empty bytes where absent, from ``(id, primary node)`` pairs: the
        primary copy when that node is this one, else a copy. Returns ``{id: (limit, used,
        needed, reason)}`` of those that did not fit under ``max_memory``."""
        if self.retired:
            raise NodeDrained(self.node_id, [i for i, _ in pairs], "it was drained")
        full = {}
        for cache_id, primary in pairs:
            try:
                self.store.create_empty(cache_id)
            except CacheFull as exc:
                full[cache_id] = (exc.limit, exc.used, exc.needed, exc.reason)
                continue
            if primary == self.node_id:
                self.copies.pop(cache_id, None)
            else:
                self.copies[cache_id] = primary
        self._publish()
        return full

    @_locked
    @ray.method(concurrency_group="peer")
    def drop(self, cache_ids: list) -> int:
        """Delete ids held here and their records (their home deleted them); returns how many
        existed here."""
        dropped = sum(self._drop_here(i) for i in cache_ids)
        self._publish()
        return dropped

    @_locked
    @ray.method(concurrency_group="peer")
    def replicate(self, forwarded: tuple, buffers: list, *blob: bytes) -> list:
        """At a copy: apply writes its primary took (``forwarded``: ``(primary, method)``, then
        the packed items as in :meth:`_call_peer`, their payloads as the writer sent them).
        Returns the ids it could not apply (all of them when the writer's objects are gone);
        their copy here is dropped."""
        primary, method, stamp = forwarded
        applied = self.sessions.call(stamp)
        try:
            arrays = resolve(buffers)[0]
        except DataLost:  # the writer died before this copy fetched its objects: repaired whole
            items = unpack(join(blob), placeholders(buffers))
            for item in items:
                self._drop_copy(item[0])
            self._publish()
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
                    frames = self._adopt(frames)
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
                self._drop_copy(cache_id)
                failed.append(cache_id)
        self._evictions()
        self._publish()
        return failed

    def _drop_copy(self, cache_id: str) -> None:
        """Forget this node's copy of an id (the directory records kept here stay)."""
        self.copies.pop(cache_id, None)
        self.store.delete(cache_id)

    def _evictions(self) -> None:
        """Take the ids the store evicted (``lru``; under the lock): with copies, an id evicted
        by any holder leaves the cache. Evicted here as its primary, its other holders drop
        their copies; evicted here as a copy, its primary drops it and then its other copies.
        They are told by :meth:`_send_drops`, before this node serves another client batch or,
        if none comes, by the background repairer (which runs in turn with client batches)."""
        evicted, self.store.evicted = self.store.evicted, []
        for cache_id in evicted:
            if cache_id in self.store:  # written again since
                continue
            primary = self.copies.pop(cache_id, None)
            if primary is not None:
                self._drops.setdefault(primary, []).append(cache_id)
            else:
                self._tell_copies(cache_id)
                self._unrecord(cache_id)
        if self._drops:
            self._start_repairs()

    def _unrecord(self, cache_id: str) -> None:
        """Queue the drop of the placement records of an id evicted here as its primary: a
        record left pointing here would send its writes here for good, and only the home
        creates ids (see :meth:`drop_copies`)."""
        if self.records.get(cache_id) == self.node_id:
            del self.records[cache_id]
        for node in self.chains[slot_of(cache_id)][:2] if self.chains is not None else ():
            if node != self.node_id:
                self._drops.setdefault(node, []).append(cache_id)

    def _tell_copies(self, cache_id: str) -> None:
        """Queue the drop of an id gone from this node, its primary, at its other holders."""
        for node in self._secondaries(cache_id):
            self._drops.setdefault(node, []).append(cache_id)
        self.repairs.pop(cache_id, None)

    def _send_drops(self) -> None:
        """Tell the other holders of the ids this node evicted (outside the lock). A write that
        reached such an id elsewhere meanwhile leaves with it, on every holder."""
        if not self._drops:
            return
        with self._lock:
            drops, self._drops = self._drops, {}
        for node, failed in self._call_peers("drop_copies", {n: (self.node_id, ids) for n, ids in drops.items()}).items():
            if isinstance(failed, NodeUnavailable):
                log.warning("cache %s: node %s kept %d ids evicted here: %s", self.cache, node, len(drops[node]), failed)

    @_locked
    @ray.method(concurrency_group="peer")
    def drop_copies(self, sent: tuple) -> None:
        """Forget ids another holder evicted (``(holder, ids)``): the placement records
        pointing at it, the copies of ids whose primary that holder is, and the ids of which it held a copy and this node is the
        primary (their copies are told in turn, the sender's too: a write may have given it a
        new one since it evicted the id)."""
        sender, cache_ids = sent
        for cache_id in cache_ids:
            if self.records.get(cache_id) == sender:  # its placement record: the id is gone
                del self.records[cache_id]
            primary = self.copies.get(cache_id)
            if primary == sender:
                self._drop_copy(cache_id)
            elif primary is None and cache_id in self.store and sender in self._secondaries(cache_id):
                self.store.delete(cache_id)
                self._tell_copies(cache_id)  # the sender too: it may hold a newer copy
        if self._drops:
            self._start_repairs()
        self._publish()

    @_locked
    @ray.method(concurrency_group="peer")
    def take_copies(self, sent: tuple, buffers: list, *blob: bytes) -> list:
        """At a new holder: whole copies from their primary (``sent``: ``(primary, the writes
        it remembers of them)``, see :mod:`.sessions`; the values packed as in
        :meth:`_call_peer`). Returns the ids that did not fit."""
        primary, entries = sent
        self.sessions.adopt(entries)
        failed = []
        for cache_id, kind, meta, frames, tokens in unpack(join(blob), resolve(buffers)[0]):
            try:
                self.store.set(cache_id, kind, meta, self._adopt(frames), tokens)
                self.copies[cache_id] = primary
            except CacheFull:
                failed.append(cache_id)
        self._evictions()
        self._publish()
        return failed

    def repair(self, max_bytes: int = HAND_OVER_BYTES) -> tuple[int, int]:
        """Send missing copies to their holders, up to ``max_bytes`` of values (one id may be
        larger). Runs in turn with client calls, so no write slips between a copy and the
        writes forwarded after it, and first tells other holders what this node evicted
        (:meth:`_send_drops`). Returns ``(bytes sent, ids still missing a copy)``."""
        self._send_drops()
        by_node: dict[str, list] = {}
        size = 0
        with self._lock:
            for cache_id, nodes in list(self.repairs.items()):
                entry = self.store.peek(cache_id)
                if entry is None or cache_id in self.copies:
                    del self.repairs[cache_id]
                    continue
                for node in nodes:
                    by_node.setdefault(node, []).append(cache_id)
                size += (entry.nbytes + entry.disk) * len(nodes)
                if size >= max_bytes:
                    break
            packed = {node: pack(self._values(ids)) for node, ids in by_node.items()}
        for node, values in packed.items():
            try:
                sent = (self.node_id, self.sessions.of(by_node[node]))
                failed = set(self._call_peer(self.peers, node, "take_copies", sent, values))
            except NodeUnavailable as exc:
                log.warning("cache %s: could not copy %d ids to node %s: %s", self.cache, len(by_node[node]), node, exc)
                # a member that did not answer stays owed its copies; one that left is
                # replaced by the next rebuild, which names other holders
                failed = set(by_node[node]) if node in self.peers else set()
            with self._lock:
                for cache_id in by_node[node]:
                    nodes = self.repairs.get(cache_id)
                    if nodes is not None and cache_id not in failed:
                        nodes.discard(node)
                        if not nodes:
                            del self.repairs[cache_id]
        self._publish()
        return size, len(self.repairs)

    def _start_repairs(self) -> None:
        """Wake the background repairer (started on first use, in a Ray actor only: plain
        objects in tests call :meth:`repair` themselves)."""
        if self._repairer is None:
            if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
                return
            self._repairer = threading.Thread(target=self._repair_loop, name="shoveling-repair", daemon=True)
            self._repairer.start()
        self._wake.set()

    def _repair_loop(self) -> None:
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

    @_locked
    def ids(self, prefix: str) -> list:
        """Ids whose primary copy is here (so that each id is listed by one node)."""
        return [i for i in self.store.ids(prefix) if i not in self.copies]

    @_locked
    def lost_ids(self) -> dict:
        """``{id: dead node}`` of the ids homed here whose only copy died."""
        return {i: n for i, n in self.lost.items() if self._is_home(i)}

    def _is_home(self, cache_id: str) -> bool:
        return self.chains is None or self.chains[slot_of(cache_id)][0] == self.node_id

    def rebuild(self, old_chains: list | None, chains: list, gone: list, peers: dict, replicas: int,
                full: bool = False, zones: dict | None = None) -> int:
        """Take a new view of the cache (the coordinator calls every member after any change)
        and keep every id's copies and the placement directory whole.

        ``chains`` replaces ``old_chains`` (``None``: the first view); ``gone`` are the nodes
        that died or left with their data; ``peers`` the members' actors; ``replicas`` the copy
        count, ``zones`` the members' failure domains. Then:

        - records here pointing at a gone node point at the first surviving holder of the id,
          or become lost ids (``DataLost`` until set, deleted or inited again);
        - an id held here whose primary copy is gone is promoted here if this is its first
          surviving holder; the primary queues copies for holders that lack one (sent in the
          background), and a node that is no longer a holder drops its copy;
        - a slot's directory node sends its records and lost ids to the other one when that is
          new or a fresh actor (after a drain, ``full``: every home to its backup home), and
          primaries held away from their home tell new directory nodes where they are.

        Returns how many records were sent.
        """
        gone_set = set(gone)
        old_chains = chains if old_chains is None else old_chains
        old_replicas = self.replicas
        # Down to one copy: ids written while there were copies have no placement records (a
        # write records the ids it creates with one copy only); the directory nodes get them
        # now, so that such an id reads as lost, not as never written, once its node dies.
        lowered = replicas == 1 and old_replicas > 1
        me = self.node_id
        announce: dict[str, list] = {}
        push: dict[str, set] = {}
        with self._lock:
            old_zones = self.zones
            self.chains, self.peers, self.replicas, self.zones = chains, peers, replicas, zones or {}
            if self._received:  # a drain that succeeded: its node is no member any more
                self._received = {i: n for i, n in self._received.items() if n in peers}
                self._touched &= self._received.keys()
            self._others = [holders(me, chain, replicas, self.zones)[1:] for chain in chains] if replicas > 1 else None

            def alive(node: str) -> bool:  # a member that kept its data (not a replaced actor)
                return node in peers and node not in gone_set

            def survivor(primary: str, slot: int) -> str | None:
                before = holders(primary, old_chains[slot], old_replicas, old_zones)
                return next((n for n in before if alive(n)), None)

            for cache_id, node in list(self.records.items()):
                slot = slot_of(cache_id)
                if me not in chains[slot][:2]:
                    del self.records[cache_id]
                elif not alive(node):
                    del self.records[cache_id]
                    holder = survivor(node, slot) if old_replicas > 1 else None
                    if holder is None:
                        self.lost[cache_id] = node
                    else:
                        self.records[cache_id] = holder
            for cache_id in [i for i in self.lost if me not in chains[slot_of(i)][:2]]:
                del self.lost[cache_id]
            for cache_id in list(self.store.ids()):
                slot = slot_of(cache_id)
                old_primary = self.copies.get(cache_id, me)
                primary = old_primary if alive(old_primary) else (survivor(old_primary, slot) or me)
                before = holders(old_primary, old_chains[slot], old_replicas, old_zones)
                after = holders(primary, chains[slot], replicas, self.zones)
                if primary == me:
                    self.copies.pop(cache_id, None)
                    missing = {n for n in after[1:] if n not in before or n in gone_set}
                    missing = (self.repairs.get(cache_id, set()) | missing) & set(after)
                    if missing:
                        self.repairs[cache_id] = missing
                    else:
                        self.repairs.pop(cache_id, None)
                    directory = chains[slot][:2]
                    renewed = directory != old_chains[slot][:2] or any(n in gone_set for n in directory)
                    if lowered and directory[0] == me:  # written with copies: no record yet
                        self.records.setdefault(cache_id, me)
                    if (directory[0] != me and (primary != old_primary or full or renewed)) or lowered:
                        for node in directory:
                            if node != me:
                                announce.setdefault(node, []).append((cache_id, me))
                elif me in after:
                    self.copies[cache_id] = primary
                    self.repairs.pop(cache_id, None)
                else:
                    self._drop_copy(cache_id)  # the records here were mended above
            for slot, chain in enumerate(chains):
                # A directory node that kept its records sends them to the other one when that
                # one is new or a fresh actor (after a drain: the home to the backup home).
                if len(chain) < 2 or me not in chain[:2] or me not in old_chains[slot][:2] or me in gone_set:
                    continue
                other = chain[1] if chain[0] == me else chain[0]
                if (chain[0] == me) if full else (other not in old_chains[slot][:2] or other in gone_set):
                    push.setdefault(other, set()).add(slot)
            directory = {node: (sorted(slots), self._directory(slots)) for node, slots in push.items()}
        self._publish()
        for node, (slots, (records, lost)) in directory.items():
            self._send_directory(node, "adopt_directory", (slots, records, lost), len(records))
        for node, pairs in announce.items():
            self._send_directory(node, "adopt_records", pairs, len(pairs))
        if self.repairs:
            self._start_repairs()
        return sum(len(pairs) for pairs in announce.values()) + sum(len(d[1][0]) for d in directory.values())

    def _directory(self, slots: set) -> tuple[list, list]:
        """The records and lost ids here of ``slots``."""
        return ([(i, n) for i, n in self.records.items() if slot_of(i) in slots],
                [(i, n) for i, n in self.lost.items() if slot_of(i) in slots])

    def _send_directory(self, node: str, method: str, arg, count: int) -> None:
        try:
            self._call_peer(self.peers, node, method, arg)
        except NodeUnavailable as exc:
            log.warning("cache %s: could not send %d records to node %s: %s", self.cache, count, node, exc)

    @_locked  # outside ray.method: Ray reads the group from the unwrapped function
    @ray.method(concurrency_group="peer")
    def adopt_records(self, pairs: list) -> None:
        """At a home or backup home: record where ids of its slots live (see :meth:`rebuild`)."""
        for cache_id, node in pairs:
            if cache_id in self.copies or cache_id not in self.store:
                self.records[cache_id] = node
                self.lost.pop(cache_id, None)
        self._publish()

    @_locked
    @ray.method(concurrency_group="peer")
    def adopt_directory(self, sent: tuple) -> None:
        """At a backup home: the home's records and lost ids of ``slots`` replace those here."""
        slots, records, lost = sent
        slots = set(slots)
        for entries in (self.records, self.lost):
            for cache_id in [i for i in entries if slot_of(i) in slots]:
                del entries[cache_id]
        for cache_id, node in records:
            if cache_id in self.copies or cache_id not in self.store:
                self.records[cache_id] = node
        self.lost.update((i, n) for i, n in lost if i not in self.store)
        self._publish()

    def hand_over(self, old_chains: list, chains: list, peers: dict) -> int:
        """Drain this node: stop taking calls (:class:`NodeDrained`, so that clients move to
        the new homes), and make sure no id depends on this node any more; returns how many ids
        had their primary copy here.

        With one copy per id, every id held here goes to its home under ``chains`` (which no
        longer names this node; ``old_chains`` is what it replaces), and the placement records
        and lost ids homed here to their new homes. With replicas, the copies it still owed
        other holders are sent first; the coordinator's rebuild then promotes the copies of
        its ids elsewhere.

        Calls wait until it is done. If a home refuses (full, unreachable), what was sent is
        dropped there again and nothing changes here, except for the ids clients wrote or
        deleted at a new home meanwhile (they found them there): those stay as they are there.
        """
        deadline = time.monotonic() + HAND_OVER_DEADLINE
        if self.replicas > 1:
            self.retired = True
            stalled, best = 0, None
            while True:
                left = self.repair()[1]
                if not left:
                    break
                stalled = stalled + 1 if best is not None and left >= best else 0
                best = left if best is None else min(best, left)
                if stalled >= HAND_OVER_STALLS or time.monotonic() > deadline:
                    self.retired = False  # it keeps serving: nothing depends on the drain
                    raise ShovelingError(f"cache {self.cache}: drain of node {self.node_id} gave up: {left} ids "
                                         "still miss a copy its holders would not take; the node keeps its data")
            with self._lock:
                return len(self.store) - len(self.copies)
        old_table, table = [c[0] for c in old_chains], [c[0] for c in chains]
        with self._lock:
            held: dict[str, list] = {}
            for cache_id in list(self.store.ids()):
                held.setdefault(table[slot_of(cache_id)], []).append(cache_id)
            directory: dict[str, tuple[list, list]] = {}
            for entries, index in ((self.records, 0), (self.lost, 1)):
                for cache_id, node in entries.items():
                    if self._is_home(cache_id) and node != self.node_id:
                        directory.setdefault(table[slot_of(cache_id)], ([], []))[index].append((cache_id, node))
            sent: dict[str, tuple] = {}  # home -> ([(id, homed here)], records, lost) it took
            try:
                for home in set(held) | set(directory):
                    records, lost = directory.get(home, ([], []))
                    for chunk in self._chunks(held.get(home, [])) or [[]]:
                        homed = [old_table[slot_of(i)] == self.node_id for i in chunk]
                        values = pack([(*v, h) for v, h in zip(self._values(chunk), homed)])
                        if time.monotonic() > deadline:
                            raise ShovelingError(f"cache {self.cache}: drain of node {self.node_id} took "
                                                 f"longer than {HAND_OVER_DEADLINE:.0f} s; the node keeps its data")
                        took = sent.setdefault(home, ([], records, lost))
                        took[0].extend(zip(chunk, homed))
                        handed = (self.node_id, records, lost, self.sessions.of(chunk))
                        self._call_peer(peers, home, "receive", handed, values)
                        records, lost = [], []
            except ShovelingError:
                for home, took in sent.items():
                    try:
                        for cache_id in self._call_peer(peers, home, "give_back", (self.node_id, *took)):
                            self.store.delete(cache_id)  # written or deleted there meanwhile
                    except ShovelingError as exc:
                        log.warning("cache %s: could not take back %d ids from %s: %s", self.cache, len(took[0]), home, exc)
                raise
            moved = len(self.store)
            self.store.close()
            self.records.clear()
            self.lost.clear()
            self.retired = True
            self._publish()
            log.warning("cache %s: drained, %d ids moved to other nodes", self.cache, moved)
            return moved

    def _chunks(self, ids: list) -> list[list]:
        """``ids`` cut into calls of at most :data:`HAND_OVER_BYTES` (one id may be larger)."""
        chunks, size = [[]], 0
        for cache_id in ids:
            entry = self.store.peek(cache_id)
            if chunks[-1] and size + entry.nbytes + entry.disk > HAND_OVER_BYTES:
                chunks.append([])
                size = 0
            chunks[-1].append(cache_id)
            size += entry.nbytes + entry.disk
        return chunks if ids else []

    def _values(self, ids: list) -> list:
        """Values of ``ids`` as they travel to another node: read from disk, out of the object
        store (the receiver keeps its own copy), each with the append tokens it took."""
        values = [self.store.get(i) for i in ids]
        frames = fetch([v[2] for v in values])
        tokens = [sorted(self.store.peek(i).tokens or ()) for i in ids]
        return [(i, k, m, f, t) for i, (k, m, _), f, t in zip(ids, values, frames, tokens)]

    @_locked
    @ray.method(concurrency_group="peer")
    def receive(self, handed: tuple, buffers: list, *blob: bytes) -> None:
        """At a new home, from a node being drained: values (with their append tokens),
        placement records, lost ids and the writes it remembers of those values (see
        :mod:`.sessions`).

        A value whose home did not change is taken only while this home's record still points
        at the drained node (a ``delete`` that raced the drain removed it: it stays deleted).
        """
        source, records, lost, entries = handed
        self.sessions.adopt(entries)
        for cache_id, kind, meta, frames, tokens, homed_there in unpack(join(blob), resolve(buffers)[0]):
            if homed_there or self.records.get(cache_id) == source:
                self.store.set(cache_id, kind, meta, self._adopt(frames), tokens)
                self.records[cache_id] = self.node_id  # the full rebuild after the drain tells the backup
                self.lost.pop(cache_id, None)
                self._received[cache_id] = source
        for cache_id, node in records:
            if cache_id not in self.store:
                self.records[cache_id] = node
        for cache_id, node in lost:
            if cache_id not in self.store and cache_id not in self.records:
                self.lost[cache_id] = node
        self._evictions()
        self._publish()

    @_locked
    @ray.method(concurrency_group="peer")
    def give_back(self, returned: tuple) -> list:
        """Undo :meth:`receive` after a drain failed: the node keeps its ids and its directory,
        except the ids written or deleted here since they came (clients found them here while
        the drain ran): they stay as they are here, and with one copy their backup homes learn
        it with the next client batch served here (as for ids a write creates). Returns those;
        the node drops its own."""
        source, ids, records, lost = returned
        touched = []
        for cache_id, homed_there in ids:
            self._received.pop(cache_id, None)
            if cache_id in self._touched:
                self._touched.discard(cache_id)
                touched.append(cache_id)
                if self.replicas == 1:  # its backup home still points at the drained node:
                    self._created.append(cache_id)  # told with the next client batch's records
                continue
            self.store.delete(cache_id)
            if not homed_there:
                self.records[cache_id] = source
        for entries, pairs in ((self.records, records), (self.lost, lost)):
            for cache_id, node in pairs:
                if entries.get(cache_id) == node:
                    del entries[cache_id]
        self._publish()
        return touched

    @_locked
    def stats(self) -> dict:
        """The store's figures (``ids`` counts copies too), ``replicas``, ``copies`` (ids held here as a copy
        of another node's), ``under_replicated`` (ids whose primary copy is here with fewer
        copies than ``replicas``: missing ones not rebuilt yet, or fewer nodes than
        ``replicas``), ``lost`` (ids homed here whose only copy died), and ``consul``: the
        heartbeat's ``beats`` and last ``error`` (``None`` without Consul)."""
        return {**self.store.stats(), "replicas": self.replicas, "copies": len(self.copies),
                "under_replicated": self._under_replicated(),
                "lost": sum(1 for i in self.lost if self._is_home(i)),
                "consul": self._threads[0].status() if self._threads else None}

    def _under_replicated(self) -> int:
        if self.replicas == 1:
            return 0
        if len(self.peers) < self.replicas:
            return len(self.store) - len(self.copies)
        return len(self.repairs)

    @_locked
    def configure(self, max_memory: int | None, policy: str, max_disk: int | None) -> None:
        """New base settings; keys set in Consul KV still override them."""
        self._base.update({"max-memory": max_memory, "eviction": policy, "max-disk": max_disk})
        self._apply()
        self._publish()

    @_locked
    def serve_http(self, on: bool) -> str | None:
        """The cache-wide setting for the HTTP read endpoint (Consul KV key ``http`` still
        overrides it); returns its URL (``None`` when off)."""
        self._base["http"] = on
        self._apply()
        return self.endpoint()

    def _serve(self, on: bool) -> None:
        """Start or stop the endpoint. With Consul, the instance then carries the port and an
        HTTP check."""
        if bool(on) == (self._endpoint is not None):
            return
        if on:
            self._endpoint = ReadEndpoint(self, ray.util.get_node_ip_address(), os.environ.get(TOKEN_ENV))
        else:
            self._endpoint.stop()
            self._endpoint = None
        if self._threads:
            self._threads[0].announce_port(self._endpoint.port if self._endpoint else None)

    def endpoint(self) -> str | None:
        """The HTTP endpoint's URL, or ``None`` when it is off."""
        return self._endpoint.url if self._endpoint else None

    def http_value(self, cache_id: str) -> tuple[int, bytes | None]:
        """For the HTTP endpoint: ``(200, bytes)``, or ``(404 | 410 | 415, None)`` (410: a lost
        id homed here). The copy it makes is counted in ``used`` while it is served, and made
        outside the lock (client calls go on meanwhile)."""
        with self._lock:
            value = self.store.get(cache_id)
            if value is None:
                return (410, None) if cache_id in self.lost else (404, None)
            kind, meta, frames = value
            if kind != KIND_BYTES:
                return 415, None
            size = self.store.peek(cache_id).raw
            self._serving += size
            self.store.charge(self._bookkeeping())
        try:
            (frames,) = fetch([frames])
            return 200, decode(kind, meta, frames)
        finally:
            with self._lock:
                self._serving -= size
                self.store.charge(self._bookkeeping())

    @_locked
    def http_ids(self, prefix: str) -> list[str]:
        return sorted(self.store.ids(prefix))

    def shutdown(self) -> None:
        """Stop the HTTP endpoint and the Consul threads (each joined), deregister this
        actor's instance and remove its spill files."""
        if self._endpoint is not None:
            self._endpoint.stop()
        for thread in self._threads:
            thread.stop()
        with self._lock:
            self.store.close()


NodeActor = ray.remote(num_cpus=0, max_restarts=0, concurrency_groups={"peer": 1})(_NodeActor)
