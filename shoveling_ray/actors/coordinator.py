"""The coordinator of one cache: its members, their actors, the slot table and the settings.

One detached actor per cache, found by name, kept on the head node when it can be. Clients
ask it only when they open a cache, run ``init`` or meet a dead node; data never passes
through it. It creates the per-node actors itself, so two processes opening the same cache at
once cannot start two actors on one node, and it owns the slot table so every process hashes
ids to the same homes.
"""

from __future__ import annotations

import logging

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..errors import ShovelingError
from ..membership import NodeInfo, ray_nodes
from ..membership.consul import ConsulConfig
from ..placement import build_slot_table, reassign_slots
from .node import NodeActor

log = logging.getLogger(__name__)

NAMESPACE = "shoveling_ray"
#: Seconds to wait for a new node actor to answer before leaving its node out.
ACTOR_START_TIMEOUT = 120.0
#: Seconds actors get to deregister from Consul before they are killed.
SHUTDOWN_GRACE = 10.0


def actor_name(cache: str, node_id: str) -> str:
    return f"{cache}/node/{node_id}"


def coordinator_name(cache: str) -> str:
    return f"{cache}/coordinator"


class _Coordinator:
    """Membership and settings of one cache.

    Args:
        cache: the cache name.
        max_memory: limit per node in bytes; ``None`` = each node's object store capacity.
        policy: ``"reject"`` or ``"lru"``.
        consul: Consul settings for the actors, or ``None`` for Ray alone.
    """

    def __init__(self, cache: str, max_memory: int | None, policy: str, consul: ConsulConfig | None) -> None:
        self.cache = cache
        self.consul = consul
        self.max_memory = max_memory
        self.policy = policy
        self.members: dict[str, ray.actor.ActorHandle] = {}
        self.info: dict[str, NodeInfo] = {}
        self.table: list[str] | None = None
        self.version = 0

    def _limit(self, node: NodeInfo) -> int:
        return self.max_memory if self.max_memory is not None else node.object_store_memory

    def join(self, settings: dict | None = None) -> dict:
        """Bring the member list up to date with Ray's alive nodes and return the view.

        New alive nodes get an actor; dead members leave, and their hash slots move to the
        survivors. ``settings`` (``max_memory`` / ``policy``) given explicitly by a client are
        applied to every actor.
        """
        if settings:
            self._configure(settings.get("max_memory", self.max_memory), settings.get("policy", self.policy))
        nodes = {n.node_id: n for n in ray_nodes()}
        dead = [m for m in self.members if not nodes.get(m, NodeInfo(m, False, 0, 0)).alive]
        for node_id in dead:
            log.warning("cache %s: node %s is dead and leaves the member list", self.cache, node_id)
            del self.members[node_id]
        for node_id in self._dead_actors():
            # The node lives but its actor died (killed, crashed): start a fresh one there.
            log.warning("cache %s: the actor on node %s died; its data is lost", self.cache, node_id)
            del self.members[node_id]
        started = {}
        for node in nodes.values():
            if node.alive and node.node_id not in self.members:
                started[node.node_id] = self._start(node)
        for node_id, handle in started.items():
            try:
                ray.get(handle.ping.remote(), timeout=ACTOR_START_TIMEOUT)
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as exc:
                log.warning("cache %s: no actor on node %s: %s", self.cache, node_id, exc)
                continue
            self.members[node_id] = handle
        self.info = {m: nodes[m] for m in self.members}
        if not self.members:
            raise ShovelingError(f"cache {self.cache}: no alive Ray node could start a cache actor")
        if self.table is None:
            self.table = build_slot_table(sorted(self.members))
            self.version += 1
        elif dead or not set(self.table) <= set(self.members):
            self.table = reassign_slots(self.table, self.members)
            self.version += 1
        if started:
            self.version += 1
        return self.view()

    def _dead_actors(self) -> list[str]:
        pings = {m: h.ping.remote() for m, h in self.members.items()}
        dead = []
        for node_id, ref in pings.items():
            try:
                ray.get(ref, timeout=ACTOR_START_TIMEOUT)
            except ray.exceptions.RayActorError:
                dead.append(node_id)
            except ray.exceptions.GetTimeoutError:
                pass  # busy, not dead
        return dead

    def _start(self, node: NodeInfo) -> ray.actor.ActorHandle:
        return NodeActor.options(
            name=actor_name(self.cache, node.node_id),
            namespace=NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
            scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
        ).remote(self.cache, node.node_id, self._limit(node), self.policy, self.consul)

    def _configure(self, max_memory: int | None, policy: str) -> None:
        self.max_memory, self.policy = max_memory, policy
        ray.get([h.configure.remote(self._limit(self.info[m]), policy) for m, h in self.members.items()])

    def view(self) -> dict:
        """What a client needs to route: members with their actors and resources, the table."""
        return {
            "version": self.version,
            "members": dict(self.members),
            "info": {m: i.to_dict() for m, i in self.info.items()},
            "table": self.table,
            "consul": self.consul,
        }

    def shutdown(self) -> None:
        """Stop every node actor of the cache (their data goes with them).

        Each actor is first asked to deregister from Consul, then killed.
        """
        polite = [h.shutdown.remote() for h in self.members.values()]
        ray.wait(polite, num_returns=len(polite), timeout=SHUTDOWN_GRACE)
        for handle in self.members.values():
            ray.kill(handle)
        self.members.clear()


Coordinator = ray.remote(num_cpus=0, max_restarts=0)(_Coordinator)
