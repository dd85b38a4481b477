"""The cache actor pinned to one Ray node: its share of the data and the placement records
of the ids whose home it is.

The class is plain Python (testable without Ray); :data:`NodeActor` is its Ray actor. It runs
one call at a time, which is what keeps each writer's appends in call order and makes each
home the single point that decides where an id lives.
"""

from __future__ import annotations

import functools
import logging
import os
import threading

import ray

from ..errors import CacheFull
from ..heap import keep_freed_memory
from ..objects import adopt
from ..wire import no_gc, pack, unpack
from ..membership.consul import ConsulAgent, ConsulConfig
from ..membership.registration import ConfigFollower, Heartbeat
from . import protocol as p
from .storage import Store

log = logging.getLogger(__name__)


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
        max_memory: limit on stored bytes; ``None`` for none.
        policy: ``"reject"`` or ``"lru"``.
        consul: Consul settings, or ``None`` for Ray alone. The actor talks to the agent its
            node names in ``CONSUL_HTTP_ADDR``, else to the one in ``consul``.
    """

    def __init__(
        self, cache: str, node_id: str, max_memory: int | None, policy: str, consul: ConsulConfig | None = None
    ) -> None:
        keep_freed_memory()
        self.cache = cache
        self.node_id = node_id
        self.store = Store(node_id, max_memory, policy)
        # Placement records of ids homed here but placed on another node by init.
        self.records: dict[str, str] = {}
        self._lock = threading.Lock()
        self._base = {"max-memory": max_memory, "eviction": policy}
        self._kv: dict = {}
        self._threads: list = []
        if consul is not None:
            local = os.environ.get("CONSUL_HTTP_ADDR")
            agent = ConsulAgent(consul.at(local) if local else consul)
            address = ray.util.get_node_ip_address()
            self._threads = [Heartbeat(agent, cache, node_id, address), ConfigFollower(agent, cache, self._follow)]
            self._threads[0].beat()  # registered before the first call is served
            for thread in self._threads:
                thread.start()

    def _follow(self, kv_config: dict) -> None:
        with self._lock:
            self._kv = kv_config
            self._apply()

    def _apply(self) -> None:
        config = {**self._base, **self._kv}
        before = self.store.evictions
        self.store.configure(config["max-memory"], config["eviction"])
        log.info("cache %s: max-memory=%s eviction=%s", self.cache, config["max-memory"], config["eviction"])
        if self.store.evictions > before:
            log.warning("cache %s: the new limit evicted %d ids", self.cache, self.store.evictions - before)

    def ping(self) -> str:
        """The node this actor really runs on, as Ray reports it."""
        return ray.get_runtime_context().get_node_id()

    def batch(self, method: str, blob: bytes, buffers: list) -> tuple:
        """Run an item method on a packed batch (see :mod:`shoveling_ray.wire`).

        Returns ``(blob, buffers, refs)``: the packed results, with every ObjectRef of a
        stored frame moved to ``refs`` and its place in the frame taken by its index there.
        """
        with no_gc():
            results = getattr(self, method)(unpack(blob, buffers))
            refs = _refs_beside(results) if method == "get" else []
            return (*pack(results), refs)

    def _absent(self, cache_id: str, auth: bool) -> tuple:
        target = self.records.get(cache_id)
        if target is not None:
            return p.REDIRECT, target
        return (p.MISS, None) if auth else (p.REROUTE, None)

    @_locked
    def get(self, items: list) -> list:
        out = []
        for cache_id, auth in items:
            entry = self.store.get(cache_id)
            if entry is None:
                out.append(self._absent(cache_id, auth))
            else:
                out.append((p.OK, (entry.kind, entry.meta, entry.frames)))
        return out

    @_locked
    def exists(self, items: list) -> list:
        return [(p.OK, True) if i in self.store else self._absent(i, a) for i, a in items]

    @_locked
    def size(self, items: list) -> list:
        out = []
        for cache_id, auth in items:
            entry = self.store.peek(cache_id)
            out.append(self._absent(cache_id, auth) if entry is None else (p.OK, entry.raw))
        return out

    @_locked
    def locate(self, items: list) -> list:
        return [(p.OK, self.node_id) if i in self.store else self._absent(i, a) for i, a in items]

    def _write(self, items: list, apply) -> list:
        out = []
        for item in items:
            cache_id, auth = item[0], item[1]
            if cache_id not in self.store:
                if cache_id in self.records or not auth:
                    out.append(self._absent(cache_id, auth))
                    continue
            try:
                apply(item)
            except CacheFull as exc:
                out.append((p.FULL, (exc.limit, exc.used, exc.needed)))
            except TypeError:
                out.append((p.WRONG_TYPE, None))
            else:
                out.append((p.OK, None))
        return out

    @_locked
    def set(self, items: list) -> list:
        """Items are ``(cache_id, auth, kind, meta, frames)``."""
        return self._write(items, lambda it: self.store.set(it[0], it[2], it[3], adopt(it[4])))

    @_locked
    def append(self, items: list) -> list:
        """Items are ``(cache_id, auth, frames)``."""
        return self._write(items, lambda it: self.store.append(it[0], adopt(it[2])))

    @_locked
    def delete(self, items: list) -> list:
        """Delete data held here; at a home, drop the record and redirect to its node."""
        out = []
        for cache_id, auth in items:
            if self.store.delete(cache_id):
                out.append((p.OK, True))
                continue
            target = self.records.pop(cache_id, None)
            out.append((p.REDIRECT, target) if target is not None else (p.OK, False))
        return out

    @_locked
    def place(self, items: list) -> list:
        """At a home: decide where new ids live. Items are ``(cache_id, target)``.

        An id that exists here or has a record keeps its node; otherwise it is created here
        (target is this node) or recorded as living on ``target``. Returns the node per id.
        """
        out = []
        for cache_id, target in items:
            if cache_id in self.store:
                out.append(self.node_id)
            elif cache_id in self.records:
                out.append(self.records[cache_id])
            else:
                if target == self.node_id:
                    self.store.create_empty(cache_id)
                else:
                    self.records[cache_id] = target
                out.append(target)
        return out

    @_locked
    def create_empty(self, cache_ids: list) -> int:
        """Create ids as empty bytes where absent; returns how many were created."""
        return sum(self.store.create_empty(i) for i in cache_ids)

    @_locked
    def ids(self, prefix: str) -> list:
        return list(self.store.ids(prefix))

    @_locked
    def stats(self) -> dict:
        return self.store.stats()

    @_locked
    def configure(self, max_memory: int | None, policy: str) -> None:
        """New base settings; keys set in Consul KV still override them."""
        self._base = {"max-memory": max_memory, "eviction": policy}
        self._apply()

    def shutdown(self) -> None:
        """Stop the Consul threads and deregister this actor's instance."""
        for thread in self._threads:
            thread.stop()


def _refs_beside(results: list) -> list:
    """Move the ObjectRefs out of ``get`` results (in place); returns them in index order."""
    refs: list = []
    for index, (status, value) in enumerate(results):
        if status == p.OK and any(len(f) == 4 for f in value[2]):
            frames = []
            for f in value[2]:
                if len(f) == 4:
                    frames.append((f[0], f[1], len(refs), f[3]))
                    refs.append(f[2])
                else:
                    frames.append(f)
            results[index] = (status, (value[0], value[1], frames))
    return refs


NodeActor = ray.remote(num_cpus=0, max_restarts=0)(_NodeActor)
