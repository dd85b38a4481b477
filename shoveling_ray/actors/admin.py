"""The operator's side of one node actor: its settings (the cache-wide base the coordinator
sets, overridden by keys in Consul KV), the HTTP read endpoint, with Consul the heartbeat and
the config follower (:mod:`shoveling_ray.membership.registration`), and its figures (``stats``
and the Ray metrics of :mod:`shoveling_ray.observe.metrics`).

It reads the node's other parts and changes none of them except through the store's limits.
Not the client's ``configure`` (see :mod:`shoveling_ray.cache`), nor what the settings mean
(see :mod:`.storage`).
"""

from __future__ import annotations

import logging
import os
import threading

import ray

from ..codec import KIND_BYTES, decode
from ..errors import ConsulError
from ..membership.consul import ConsulAgent, ConsulConfig
from ..membership.registration import ConfigFollower, Heartbeat
from ..objects import fetch
from ..observe.http import TOKEN_ENV, ReadEndpoint
from ..observe.metrics import NodeMetrics
from .directory import Directory
from .replication import Replication
from .sessions import Sessions
from .storage import Store
from .tables import Tables

log = logging.getLogger(__name__)

#: The Consul node meta key that names a node's failure domain.
ZONE_META = "zone"
#: Memory counted in ``used`` per copy kept here or id of its own copy count (a dict entry, its
#: node id string is shared; 100 measured with tracemalloc for a factor's entry with its own
#: 13-character name), and per id waiting for repair (its entry and set).
RECORD_BYTES = 100
REPAIR_BYTES = 300


class Admin:
    """Settings, endpoint, Consul threads and figures of one node actor.

    Args:
        source: what the HTTP endpoint serves (the actor: ``http_value``, ``http_ids``).
        store: the node's store.
        directory: the node's placement directory (lost ids).
        replication: the node's copies (evictions a new limit makes; figures).
        sessions: what the clients' writes applied here (counted in ``used``).
        lock: the actor's lock: settings change under it.
        base: the cache-wide settings: ``max-memory``, ``max-disk``, ``eviction``, ``http``.
        consul: Consul settings, or ``None`` for Ray alone. The actor talks to the agent its
            node names in ``CONSUL_HTTP_ADDR``, else to the one in ``consul``.
    """

    def __init__(self, source, store: Store, directory: Directory, replication: Replication, sessions: Sessions,
                 tables: Tables, lock: threading.RLock, base: dict, consul: ConsulConfig | None) -> None:
        self.source, self.store, self.directory, self.replication = source, store, directory, replication
        self.sessions, self.tables = sessions, tables
        self.layout, self._lock = replication.layout, lock
        self.cache, self.node_id = replication.cache, replication.node_id
        self._base, self._kv = base, {}
        self._threads: list = []
        self._endpoint: ReadEndpoint | None = None
        self._serving = 0  # bytes of values being copied out to HTTP readers
        self.metrics = NodeMetrics(self.cache, self.node_id)
        self.zone: str | None = None  # the Consul node meta zone of this node's agent
        if base["http"]:
            self._serve(True)
        if consul is not None:
            self._join(consul)

    def _join(self, consul: ConsulConfig) -> None:
        """Register with the node's Consul agent and follow the cache's keys there."""
        local = os.environ.get("CONSUL_HTTP_ADDR")
        agent = ConsulAgent(consul.at(local) if local else consul)
        try:
            self.zone = agent.node_meta().get(ZONE_META) or None
        except ConsulError as exc:  # the heartbeat reports the agent's trouble
            log.warning("cache %s: could not read this node's Consul node meta: %s", self.cache, exc)
        address = ray.util.get_node_ip_address()
        self._threads = [Heartbeat(agent, self.cache, self.node_id, address), ConfigFollower(agent, self.cache, self._follow)]
        self._threads[0].port = self._endpoint.port if self._endpoint else None
        self._threads[0].beat()  # registered before the first call is served
        for thread in self._threads:
            thread.start()

    def _follow(self, kv_config: dict) -> None:
        with self._lock:
            self._kv = kv_config
            self.apply()
            self.publish()

    def configure(self, **base) -> None:
        """New base settings (under the lock); keys set in Consul KV still override them."""
        self._base.update(base)
        self.apply()

    def apply(self) -> None:
        """Apply the settings in force (under the lock)."""
        config = {**self._base, **self._kv}
        before = self.store.evictions
        self.store.configure(config["max-memory"], config["eviction"], config["max-disk"])
        self._serve(config["http"])
        log.info("cache %s: max-memory=%s max-disk=%s eviction=%s http=%s", self.cache, config["max-memory"],
                 config["max-disk"], config["eviction"], config["http"])
        if self.store.evictions > before:
            log.warning("cache %s: the new limit evicted %d ids", self.cache, self.store.evictions - before)
            self.replication.evictions()

    def _serve(self, on: bool) -> None:
        """Start or stop the endpoint. With Consul, the instance then carries the port and an
        HTTP check."""
        if bool(on) == (self._endpoint is not None):
            return
        if on:
            self._endpoint = ReadEndpoint(self.source, ray.util.get_node_ip_address(), os.environ.get(TOKEN_ENV))
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
                return (410, None) if cache_id in self.directory.lost else (404, None)
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

    def _bookkeeping(self) -> int:
        """Memory held besides the stored values, counted in ``used`` (see Store.charge)."""
        replication = self.replication
        self.tables.forget_stale()  # a deleted, evicted or moved block's table is not held
        return (self.sessions.nbytes + RECORD_BYTES * (len(replication.copies) + len(self.layout.factors))
                + REPAIR_BYTES * len(replication.repairs) + self._serving + self.tables.nbytes)

    def publish(self) -> None:
        """Count the bookkeeping in ``used`` and update the metrics of what this node holds."""
        with self._lock:  # the peer group's and the HTTP threads change what it reads
            store = self.store
            store.retable()  # the directory's records and lost ids are rows of it
            store.charge(self._bookkeeping())
            self.metrics.held(store.used, store.max_memory, len(store), store.evictions, self.directory.lost_count(),
                              store.disk.used, store.spills)

    def stats(self) -> dict:
        """The store's figures (``ids`` counts copies too), ``replicas``, ``copies`` (ids held
        here as a copy of another node's), ``under_replicated`` (ids whose primary copy is here
        with fewer copies than their count (see :meth:`.Layout.factor`): missing ones not
        rebuilt yet, or fewer nodes than that), ``lost`` (ids homed here whose only copy died),
        ``peer_calls`` (calls this actor made to other members since it started), and ``consul``: the
        heartbeat's ``beats`` and last ``error`` (``None`` without Consul). Under the lock."""
        return {**self.store.stats(), "replicas": self.layout.replicas, "copies": len(self.replication.copies),
                "under_replicated": self.replication.under_replicated(),
                "lost": self.directory.lost_count(), "peer_calls": self.replication.peers.sent,
                "consul": self._threads[0].status() if self._threads else None}

    def stop(self) -> None:
        """Stop the HTTP endpoint and the Consul threads (each joined; the heartbeat
        deregisters this actor's instance)."""
        if self._endpoint is not None:
            self._endpoint.stop()
        for thread in self._threads:
            thread.stop()
