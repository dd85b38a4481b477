"""The client's view of Consul: which actors' instances pass their checks, and where the
nodes are (network coordinates).

:class:`ConsulView` follows ``/v1/health/service/<service>?tag=<cache>`` with blocking queries
in a daemon thread, so routing never waits on Consul; when Consul stops answering it keeps the
last known membership and logs once. Coordinates are read on demand and kept for
:data:`COORDINATE_MAX_AGE` seconds, so a change in them shows within seconds.

A process holds one view per cache incarnation, however many handles it has (every task that
receives a pickled ``Cache`` makes one): :func:`view` shares it. It runs until the cache is
closed: :func:`close` in the process that closes it, and in every other process the view stops
by itself once all the cache's instances have left Consul (a closed cache deregisters them);
a view asked for again after that starts afresh.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable

from ..errors import ConsulError
from ..placement import Coordinate, rtt_seconds
from .consul import ConsulAgent, ConsulConfig

log = logging.getLogger(__name__)

HEALTH_WAIT = "5s"
COORDINATE_MAX_AGE = 1.0
MAX_BACKOFF = 5.0


class ConsulView:
    """Health and coordinates of one cache's instances, as seen from a client process.

    Args:
        config: the client's agent.
        cache: the cache name (the tag of its instances).
        clock: monotonic clock, replaceable in tests.
    """

    def __init__(self, config: ConsulConfig, cache: str, clock=time.monotonic) -> None:
        self.agent = ConsulAgent(config)
        self.cache = cache
        self.clock = clock
        self.instances: dict[str, tuple[str, bool]] = {}
        self._coords: dict[str, Coordinate] = {}
        self._coords_at = -float("inf")
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"shoveling-health-{cache}", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        index, backoff, degraded = None, 0.1, False
        while not self._stopped.is_set():
            try:
                index, instances = self.agent.instances(self.cache, index=index, wait=HEALTH_WAIT)
            except ConsulError as exc:
                if not degraded:
                    log.warning("cache %s: Consul unreachable, routing on the last known members: %s", self.cache, exc)
                    degraded = True
                index = None
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            if degraded:
                log.warning("cache %s: Consul answers again", self.cache)
            degraded, backoff = False, 0.1
            if self.instances and not instances:
                log.info("cache %s: every instance left Consul (the cache was closed)", self.cache)
                self._stopped.set()
            self.instances = instances

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def critical(self, ray_node_id: str) -> bool:
        """Whether the node's instance is registered and failing its check."""
        entry = self.instances.get(ray_node_id)
        return entry is not None and not entry[1]

    def consul_node(self, ray_node_id: str) -> str | None:
        entry = self.instances.get(ray_node_id)
        return entry[0] if entry else None

    def distance(self, ray_a: str, ray_b: str) -> float | None:
        """Consul's RTT estimate between two Ray nodes in seconds, or ``None`` if unknown."""
        a, b = self.consul_node(ray_a), self.consul_node(ray_b)
        if a is None or b is None:
            return None
        if self.clock() - self._coords_at > COORDINATE_MAX_AGE:
            try:
                self._coords = self.agent.coordinates()
            except ConsulError as exc:
                log.debug("cache %s: coordinates unavailable: %s", self.cache, exc)
            self._coords_at = self.clock()
        if a not in self._coords or b not in self._coords:
            return None
        return rtt_seconds(self._coords[a], self._coords[b])

    def close(self) -> None:
        """Stop following. A blocking query in flight ends by itself within ``HEALTH_WAIT``."""
        self._stopped.set()


_views: dict[Hashable, ConsulView] = {}
_views_lock = threading.Lock()


def view(key: Hashable, config: ConsulConfig, cache: str) -> ConsulView:
    """This process's view for ``key`` (one per cache incarnation), started on first use."""
    with _views_lock:
        shared = _views.get(key)
        if shared is None or shared.stopped:
            shared = _views[key] = ConsulView(config, cache)
        return shared


def close(key: Hashable) -> None:
    """Stop the view for ``key`` (the cache was closed)."""
    with _views_lock:
        shared = _views.pop(key, None)
    if shared is not None:
        shared.close()
