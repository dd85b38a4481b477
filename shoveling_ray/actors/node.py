"""The cache actor pinned to one Ray node: its share of the data and the placement records
of the ids whose home it is.

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

import ray

from ..errors import CacheFull, NodeDrained, NodeUnavailable, ShovelingError, ray_errors
from ..heap import keep_freed_memory
from ..codec import KIND_BYTES, decode
from ..objects import adopt, fetch, load, refs_beside
from ..placement import slot_of
from ..observe.http import TOKEN_ENV, ReadEndpoint
from ..observe.metrics import NodeMetrics
from ..wire import no_gc, pack, unpack
from ..membership.consul import ConsulAgent, ConsulConfig
from ..membership.registration import ConfigFollower, Heartbeat
from . import protocol as p
from .disk import SpillFiles
from .storage import Store

log = logging.getLogger(__name__)

#: Seconds a home waits for another node's actor during ``init`` or ``delete``.
PEER_TIMEOUT = 30.0
#: Bytes of values a drained node sends in one call.
HAND_OVER_BYTES = 64 << 20


def _session_dir() -> str:
    """This node's directory of the running Ray session (``/tmp/ray/session_...``)."""
    context = ray.get_runtime_context()
    return os.path.join(context.get_temp_dir(), context.get_session_name(), "shoveling_ray")


def _locked(method):
    # Calls run one at a time already; the lock orders them with the Consul config thread.
    @functools.wraps(method)
    def wrapper(self, *args):
        with self._lock:
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
        self._lock = threading.Lock()
        self._base = {"max-memory": max_memory, "max-disk": max_disk, "eviction": policy, "http": http}
        self._kv: dict = {}
        self._threads: list = []
        self._endpoint: ReadEndpoint | None = None
        self._metrics = NodeMetrics(cache, node_id)
        self._moved = 0  # bytes stored or returned by the batch being served
        self.retired = False  # drained: every id went to another node
        if http:
            self._serve(True)
        if consul is not None:
            local = os.environ.get("CONSUL_HTTP_ADDR")
            agent = ConsulAgent(consul.at(local) if local else consul)
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

    def ping(self) -> str:
        """The node this actor really runs on, as Ray reports it."""
        return ray.get_runtime_context().get_node_id()

    def batch(self, method: str, blob: bytes, buffers: list, peers: dict | None = None) -> tuple:
        """Run an item method on a packed batch (see :mod:`shoveling_ray.wire`).

        ``peers`` (``{node_id: actor}``) are the other nodes' actors, for ``place`` and
        ``delete``, which call them.

        Returns ``(blob, buffers, refs)``: the packed results, with every ObjectRef of a
        stored frame moved to ``refs`` (see :func:`~shoveling_ray.objects.refs_beside`).
        """
        if self.retired:
            raise NodeDrained(self.node_id, [], "it was drained: its ids live on other nodes now")
        with no_gc():
            items = unpack(blob, buffers)
            self._moved = 0
            results = getattr(self, method)(items, peers) if peers is not None else getattr(self, method)(items)
            refs = refs_beside(results) if method == "get" else []
            moved = self._moved
            self._metrics.served(method, len(items), moved if method in ("set", "append") else 0,
                                 moved if method == "get" else 0)
            self._publish()
            return (*pack(results), refs)

    def _publish(self) -> None:
        store = self.store
        self._metrics.held(store.used, store.max_memory, len(store), store.evictions, len(self.lost),
                           store.disk.used, store.spills)

    def _absent(self, cache_id: str, via: int) -> tuple:
        """The answer for an id not held here (see :mod:`.protocol`)."""
        target = self.records.get(cache_id)
        if target is not None:
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
        return [(p.OK, self.node_id) if i in self.store else self._absent(i, via) for i, via in items]

    def _write(self, items: list, apply, clears_loss: bool) -> list:
        out = []
        for item in items:
            cache_id, via = item[0], item[1]
            if cache_id not in self.store and (cache_id in self.records or via != p.AT_HOME):
                # Only the home creates ids: elsewhere a write could recreate a deleted id.
                target = self.records.get(cache_id)
                out.append((p.REDIRECT, target) if target is not None else (p.REROUTE, None))
                continue
            if cache_id in self.lost:
                if not clears_loss:  # appending to a lost value would hide the loss
                    out.append((p.LOST, self.lost[cache_id]))
                    continue
                del self.lost[cache_id]
            try:
                self._moved += apply(item)
            except CacheFull as exc:
                out.append((p.FULL, (exc.limit, exc.used, exc.needed, exc.reason)))
            except TypeError:
                out.append((p.WRONG_TYPE, None))
            else:
                out.append((p.OK, None))
        return out

    @_locked
    def set(self, items: list) -> list:
        """Items are ``(cache_id, via, kind, meta, frames)``."""
        return self._write(items, lambda it: self.store.set(it[0], it[2], it[3], adopt(it[4])), clears_loss=True)

    @_locked
    def append(self, items: list) -> list:
        """Items are ``(cache_id, via, frames)`` or ``(cache_id, via, frames, token)``."""
        return self._write(items, lambda it: self.store.append(it[0], adopt(it[2]), *it[3:]), clears_loss=False)

    def delete(self, items: list, peers: dict) -> list:
        """At a home: delete the id here, or its record and its data on the node it names.

        Items are ``(cache_id, via)``; returns whether each id existed. Items not sent to
        their home are rerouted there.
        """
        out, elsewhere = [], {}
        with self._lock:
            for index, (cache_id, via) in enumerate(items):
                if self.store.delete(cache_id):
                    out.append((p.OK, True))
                elif self.lost.pop(cache_id, None) is not None:
                    out.append((p.OK, True))
                elif via != p.AT_HOME:
                    out.append((p.REROUTE, None))
                elif cache_id in self.records:
                    elsewhere.setdefault(self.records.pop(cache_id), []).append(index)
                    out.append((p.OK, True))
                else:
                    out.append((p.OK, False))
        for node, indices in elsewhere.items():
            try:
                self._call_peer(peers, node, "drop", [items[i][0] for i in indices])
            except NodeUnavailable as exc:
                # Its node is gone, and the data with it; the record is gone too.
                log.warning("cache %s: delete could not reach node %s: %s", self.cache, node, exc)
        return out

    def place(self, items: list, peers: dict) -> list:
        """At a home: decide where new ids live and create them there. Items are
        ``(cache_id, via, target)``.

        An id that exists here or has a record keeps its node; otherwise it is created here
        (target is this node) or on ``target``, and recorded. Returns ``(OK, node)`` per id, or
        ``(UNAVAILABLE, (node, reason))`` when the target did not answer (nothing is recorded).
        """
        out, elsewhere = [], {}
        with self._lock:
            for index, (cache_id, _via, target) in enumerate(items):
                self.lost.pop(cache_id, None)  # init recreates a lost id, empty
                if cache_id in self.store:
                    out.append((p.OK, self.node_id))
                elif cache_id in self.records:
                    out.append((p.OK, self.records[cache_id]))
                elif target == self.node_id:
                    self.store.create_empty(cache_id)
                    out.append((p.OK, target))
                else:
                    elsewhere.setdefault(target, []).append(index)
                    out.append((p.OK, target))
        # The lock is free while the targets create their ids: a target that is itself a home
        # placing ids here must find this actor's peer methods able to run.
        for node, indices in elsewhere.items():
            ids = [items[i][0] for i in indices]
            try:
                self._call_peer(peers, node, "create_empty", ids)
            except NodeUnavailable as exc:
                for i in indices:
                    out[i] = (p.UNAVAILABLE, (node, exc.reason))
                continue
            with self._lock:
                for cache_id in ids:
                    self.records[cache_id] = node
        return out

    def _call_peer(self, peers: dict, node: str, method: str, arg):
        """Call another node's actor and wait (plain objects are called directly, in tests).

        Raises:
            NodeUnavailable: it is not a member, died, or did not answer in ``PEER_TIMEOUT``.
        """
        peer = peers.get(node)
        if peer is None:
            raise NodeUnavailable(node, arg, "not a member of the cache")
        if not isinstance(peer, ray.actor.ActorHandle):
            return getattr(peer, method)(arg)
        with ray_errors(f"cache {self.cache}: {method} on node {node}", node=node, ids=arg):
            return ray.get(getattr(peer, method).remote(arg), timeout=PEER_TIMEOUT)

    @_locked  # outside ray.method: Ray reads the group from the unwrapped function
    @ray.method(concurrency_group="peer")
    def create_empty(self, cache_ids: list) -> int:
        """Create ids as empty bytes where absent; returns how many were created."""
        if self.retired:
            raise NodeDrained(self.node_id, cache_ids, "it was drained")
        created = sum(self.store.create_empty(i) for i in cache_ids)
        self._publish()
        return created

    @_locked
    @ray.method(concurrency_group="peer")
    def drop(self, cache_ids: list) -> int:
        """Delete ids held here (their home dropped their records); returns how many existed."""
        dropped = sum(self.store.delete(i) for i in cache_ids)
        self._publish()
        return dropped

    @_locked
    def ids(self, prefix: str) -> list:
        return list(self.store.ids(prefix))

    @_locked
    def lost_ids(self) -> dict:
        """``{id: dead node}`` of the ids homed here whose only copy died."""
        return dict(self.lost)

    def rebuild(self, table: list, moved_slots: list, lost_nodes: list, peers: dict) -> int:
        """After nodes died or lost their actor: keep the placement directory whole.

        Records here that point at a lost node become lost ids (``DataLost`` until set,
        deleted or inited again). Ids held here whose slot moved to another home (``table`` is
        the new slot table) are recorded at that home, which had no record of them. Returns
        how many records were sent.
        """
        moved, gone = set(moved_slots), set(lost_nodes)
        send: dict[str, list] = {}
        with self._lock:
            for cache_id, node in list(self.records.items()):
                if node in gone:
                    del self.records[cache_id]
                    self.lost[cache_id] = node
            for cache_id in self.store.ids():
                slot = slot_of(cache_id)
                if slot in moved and table[slot] != self.node_id:
                    send.setdefault(table[slot], []).append((cache_id, self.node_id))
        self._publish()
        for home, pairs in send.items():
            try:
                self._call_peer(peers, home, "adopt_records", pairs)
            except NodeUnavailable as exc:
                log.warning("cache %s: could not record %d ids at node %s: %s", self.cache, len(pairs), home, exc)
        return sum(len(pairs) for pairs in send.values())

    @_locked  # outside ray.method: Ray reads the group from the unwrapped function
    @ray.method(concurrency_group="peer")
    def adopt_records(self, pairs: list) -> None:
        """At a new home: record where ids of its slots live (see :meth:`rebuild`)."""
        for cache_id, node in pairs:
            if cache_id not in self.store:
                self.records[cache_id] = node
                self.lost.pop(cache_id, None)
        self._publish()

    def hand_over(self, old_table: list, table: list, peers: dict) -> int:
        """Drain this node: give every id held here to its home under ``table`` (which no
        longer names this node; ``old_table`` is the table it replaces), and the placement
        records and lost ids homed here to their new homes; then refuse every call
        (:class:`NodeDrained`), so that clients move to the new homes. Returns how many ids
        moved.

        Calls wait until it is done. If a home refuses (full, unreachable), what was sent is
        dropped there again and nothing changes here.
        """
        with self._lock:
            held: dict[str, list] = {}
            for cache_id in list(self.store.ids()):
                held.setdefault(table[slot_of(cache_id)], []).append(cache_id)
            directory: dict[str, tuple[list, list]] = {}
            for entries, index in ((self.records, 0), (self.lost, 1)):
                for cache_id, node in entries.items():
                    directory.setdefault(table[slot_of(cache_id)], ([], []))[index].append((cache_id, node))
            sent: dict[str, tuple] = {}  # home -> ([(id, homed here)], records, lost) it took
            try:
                for home in set(held) | set(directory):
                    records, lost = directory.get(home, ([], []))
                    for chunk in self._chunks(held.get(home, [])) or [[]]:
                        blob, buffers = self._pack(chunk, old_table)
                        took = sent.setdefault(home, ([], records, lost))
                        took[0].extend((i, old_table[slot_of(i)] == self.node_id) for i in chunk)
                        self._call_peer(peers, home, "receive", (self.node_id, blob, buffers, records, lost))
                        records, lost = [], []
            except ShovelingError:
                for home, took in sent.items():
                    try:
                        self._call_peer(peers, home, "give_back", (self.node_id, *took))
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

    def _pack(self, ids: list, old_table: list) -> tuple:
        """Values of ``ids`` as they travel to another node: read from disk, out of the object
        store (the receiver keeps its own copy), each with whether this node was its home and
        the append tokens it took."""
        values = [self.store.get(i) for i in ids]
        frames = fetch([v[2] for v in values])
        homed = [old_table[slot_of(i)] == self.node_id for i in ids]
        tokens = [sorted(self.store.peek(i).tokens or ()) for i in ids]
        return pack([(i, k, m, f, h, t) for i, (k, m, _), f, h, t in zip(ids, values, frames, homed, tokens)])

    @_locked
    @ray.method(concurrency_group="peer")
    def receive(self, handed: tuple) -> None:
        """At a new home, from a node being drained: values (with their append tokens),
        placement records and lost ids.

        A value whose home did not change is taken only while this home's record still points
        at the drained node (a ``delete`` that raced the drain removed it: it stays deleted).
        """
        source, blob, buffers, records, lost = handed
        for cache_id, kind, meta, frames, homed_there, tokens in unpack(blob, buffers):
            if homed_there or self.records.get(cache_id) == source:
                self.store.set(cache_id, kind, meta, adopt(frames), tokens)
                self.records.pop(cache_id, None)
                self.lost.pop(cache_id, None)
        for cache_id, node in records:
            if cache_id not in self.store:
                self.records[cache_id] = node
        for cache_id, node in lost:
            if cache_id not in self.store and cache_id not in self.records:
                self.lost[cache_id] = node
        self._publish()

    @_locked
    @ray.method(concurrency_group="peer")
    def give_back(self, returned: tuple) -> None:
        """Undo :meth:`receive` after a drain failed: the node keeps its ids and its directory."""
        source, ids, records, lost = returned
        for cache_id, homed_there in ids:
            self.store.delete(cache_id)
            if not homed_there:
                self.records[cache_id] = source
        for entries, pairs in ((self.records, records), (self.lost, lost)):
            for cache_id, node in pairs:
                if entries.get(cache_id) == node:
                    del entries[cache_id]
        self._publish()

    @_locked
    def stats(self) -> dict:
        """The store's figures, and ``consul``: the heartbeat's ``beats`` and last ``error``
        (``None`` without Consul)."""
        return {**self.store.stats(), "lost": len(self.lost),
                "consul": self._threads[0].status() if self._threads else None}

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

    @_locked
    def http_value(self, cache_id: str) -> tuple[int, bytes | None]:
        """For the HTTP endpoint: ``(200, bytes)``, or ``(404 | 410 | 415, None)`` (410: a lost
        id homed here)."""
        value = self.store.get(cache_id)
        if value is None:
            return (410, None) if cache_id in self.lost else (404, None)
        kind, meta, frames = value
        if kind != KIND_BYTES:
            return 415, None
        (frames,) = fetch([frames])
        return 200, decode(kind, meta, frames)

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
