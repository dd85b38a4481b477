"""The coordinator of one cache: its members, their actors, the slot table and the settings.

One detached actor per cache, found by name, kept on the head node when it can be. Clients
ask it only when they open a cache, run ``init`` or meet a dead node; data never passes
through it. It creates the per-node actors itself, so two processes opening the same cache at
once cannot start two actors on one node, and it owns the slot chains (homes, backup homes and
where copies go) so every process hashes ids to the same nodes; every change of members or
chains reaches every actor before any client sees it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import Counter

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..errors import ShovelingError
from ..heap import ONE_ARENA
from ..membership import NodeInfo, draining_nodes, ray_nodes
from ..membership.consul import ConsulConfig
from ..placement import build_chains, reassign_chains
from ..view import View
from ..settings import CONFIGURABLE, DEFAULTS, given, refuse_changes
from .drain import HAND_OVER_DEADLINE
from .layout import MembersChange
from .node import NodeActor
from .peers import PEER_TIMEOUT

log = logging.getLogger(__name__)

NAMESPACE = "shoveling_ray"
#: Seconds one ``join`` may spend waiting for the node actors (new ones starting, members
#: answering a ping, settings applied), all together: one deadline, not one per actor.
JOIN_DEADLINE = 120.0
#: Seconds actors get to deregister from Consul before they are killed.
SHUTDOWN_GRACE = 10.0
#: Seconds a ``drain`` may take in all: the node's hand-over (it bounds itself), the rebuild
#: that follows and the drained actor's polite stop. Clients wait this long for it.
DRAIN_DEADLINE = HAND_OVER_DEADLINE + 2 * PEER_TIMEOUT + JOIN_DEADLINE + SHUTDOWN_GRACE
#: Seconds between two looks at Ray's dead and draining nodes.
FOLLOW_POLL = 1.0


def actor_name(cache: str, node_id: str) -> str:
    """A fresh name for a node actor: the suffix makes every actor's name its own, so starting
    one can never return a dying actor that still holds its predecessor's name."""
    return f"{cache}/node/{node_id}/{uuid.uuid4().hex[:8]}"


def coordinator_name(cache: str) -> str:
    return f"{cache}/coordinator"


def running_caches() -> list[str]:
    """Names of the caches running in the connected Ray cluster, sorted."""
    suffix = coordinator_name("")
    return sorted(
        actor["name"][: -len(suffix)]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == NAMESPACE and actor["name"].endswith(suffix)
    )


def find_coordinator(cache: str) -> ray.actor.ActorHandle | None:
    """The running coordinator of ``cache``, or ``None`` when no cache of that name runs."""
    try:
        return ray.get_actor(coordinator_name(cache), namespace=NAMESPACE)
    except ValueError:
        return None


class _Coordinator:
    """Membership and settings of one cache.

    Args:
        cache: the cache name.
        consul: Consul settings for the actors, or ``None`` for Ray alone.

    ``settings`` (named as in :mod:`shoveling_ray.settings`) start at a new cache's defaults,
    take what the first :meth:`join` gives, and change only with :meth:`configure`.
    """

    def __init__(self, cache: str, consul: ConsulConfig | None) -> None:
        self.cache = cache
        self.consul = consul
        self.settings = dict(DEFAULTS)
        self.drained: set[str] = set()  # nodes that get no actor again
        self.members: dict[str, ray.actor.ActorHandle] = {}
        self.info: dict[str, NodeInfo] = {}
        self.consul_zones: dict[str, str | None] = {}  # members' Consul node meta zones, once asked
        # Failure domains of the nodes that were ever members (kept after they leave: the
        # holders an id had are worked out again with them, see placement.holders).
        self.zones: dict[str, str] = {}
        self.chains: list[list[str]] | None = None
        self.version = 0
        # Calls made to the node actors, by method (what a view change costs, see counts()).
        self.sent: Counter[str] = Counter()
        # The members sent with the last view change, with their version, and the version each
        # member took last: who can be sent only what changed (see _rebuild).
        self._members_sent: tuple[int, dict] = (0, {})
        self._members_taken: dict[str, int] = {}
        # Tells this incarnation of the cache from one closed and started again under its name.
        self.epoch = uuid.uuid4().hex
        threading.Thread(target=self._follow_ray, name="shoveling-ray-follower", daemon=True).start()

    def _follow_ray(self) -> None:
        """Follow Ray's view of the members' nodes, as calls on this actor's own handle (in turn
        with ``join`` and the others):

        - a member node Ray reports dead: ``join``, so copies are promoted and rebuilt, and
          lost ids known, without waiting for a client to meet the dead node;
        - a member node Ray starts draining (``ray drain-node``, an autoscaler scaling down):
          ``drain``. A node keeps a detached actor alive until its deadline, so the cache
          moves its ids away, its actor stops, and Ray can let the node go.
        """
        me = ray.get_runtime_context().current_actor
        asked: set[str] = set()
        while True:
            time.sleep(FOLLOW_POLL)
            try:
                nodes = {n.node_id: n.alive for n in ray_nodes()}
                members = set(self.members)
                if any(not nodes.get(m, False) for m in members):
                    ray.get(me.join.remote(None))
                for node_id in (draining_nodes() & members) - asked:
                    asked.add(node_id)
                    log.warning("cache %s: Ray is draining node %s: moving its ids away", self.cache, node_id)
                    me.drain.remote(node_id)
            except Exception as exc:  # noqa: BLE001 - the follower must outlive any one failure
                log.warning("cache %s: could not follow Ray's nodes: %s", self.cache, exc)

    @property
    def replicas(self) -> int:
        return self.settings["replicas"]

    def _limit(self, node: NodeInfo) -> int:
        max_memory = self.settings["max_memory"]
        return max_memory if max_memory is not None else node.object_store_memory

    def join(self, settings: dict | None = None) -> dict:
        """Bring the member list up to date with Ray's alive nodes and return the view.

        A new cache takes ``settings`` (setting name -> value, see
        :mod:`shoveling_ray.settings`; the others keep their defaults) before its actors start.
        A running cache only checks them: each must equal the running value
        (:meth:`configure` changes them). Then see :meth:`_update`.

        Raises:
            ShovelingError: no alive node has a cache actor.
            TypeError / ValueError: a bad setting, or one that differs from the running
                cache's (the message names both values).
        """
        wanted = given(**(settings or {}))
        if self.chains is None:
            self.settings.update(wanted)
        else:
            refuse_changes(self.cache, self.settings, wanted)
        return self._update(time.monotonic() + JOIN_DEADLINE)

    def configure(self, settings: dict) -> dict:
        """Change settings of the running cache on every member; returns the view.

        ``replicas`` changes the chains' length (copies are added or dropped, see
        :meth:`_update`); ``max_memory`` / ``eviction`` / ``max_disk`` are applied to every
        member (keys set in Consul KV still override them on their nodes); ``http`` turns the
        members' endpoints on or off. All the waiting shares one deadline
        (:data:`JOIN_DEADLINE`).

        Raises:
            TypeError / ValueError: an unknown or bad setting, or ``spill_dir``.
            ShovelingError: no alive node has a cache actor.
        """
        wanted = given(**settings)
        fixed = sorted(set(wanted) - set(CONFIGURABLE))
        if fixed:
            raise ValueError(f"{', '.join(fixed)} cannot change while cache {self.cache!r} runs: close it first")
        deadline = time.monotonic() + JOIN_DEADLINE
        replicas = wanted.pop("replicas", None)
        self.settings.update(wanted)  # before _update: actors it starts take them too
        view = self._update(deadline, replicas)
        if {"max_memory", "eviction", "max_disk"} & wanted.keys():
            calls = [h.configure.remote(self._limit(self.info[m]), self.settings["eviction"], self.settings["max_disk"])
                     for m, h in self.members.items()]
            _wait_all(calls, deadline)
        if "http" in wanted:
            _wait_all([h.serve_http.remote(wanted["http"]) for h in self.members.values()], deadline)
        return view

    def _update(self, deadline: float, replicas: int | None = None) -> dict:
        """Dead members leave first (their places in the slot chains go to the survivors), new
        alive nodes get an actor (and fill chains shorter than they should be), ``replicas``
        (when given) changes the chains' length, and every member takes the new view and
        mends copies and directory (``_NodeActor.rebuild``) before this returns the view. The
        actors are asked in parallel, all by ``deadline``."""
        nodes = {n.node_id: n for n in ray_nodes()}
        dead = [m for m in self.members if not nodes.get(m, NodeInfo(m, False, 0, 0)).alive]
        for node_id in dead:
            log.warning("cache %s: node %s is dead and leaves the member list", self.cache, node_id)
            del self.members[node_id]
        answered = self._answering(self.members, deadline)
        replaced = [m for m in self.members if answered[m] is False]
        for node_id in replaced:
            # The node lives (or Ray has not noticed yet) but its actor died: start a fresh one.
            log.warning("cache %s: the actor on node %s died; its data is lost", self.cache, node_id)
            del self.members[node_id]
        old_chains, old_replicas = self.chains, self.replicas
        if replicas is not None:
            self.settings["replicas"] = replicas
        started = {n.node_id: self._start(n) for n in nodes.values()
                   if n.alive and n.node_id not in self.members and n.node_id not in self.drained}
        for node_id, ok in self._answering(started, deadline).items():
            if ok:
                self.members[node_id] = started[node_id]
            else:
                log.warning("cache %s: no actor could start on node %s in time", self.cache, node_id)
                ray.kill(started[node_id])
        self.info = {m: nodes[m] for m in self.members}
        if not self.members:
            raise ShovelingError(f"cache {self.cache}: no alive Ray node could start a cache actor")
        old_zones = dict(self.zones)
        self._learn_zones(deadline)
        if self.chains is None:
            self.chains = build_chains(sorted(self.members), self._length(), self.zones)
        else:
            self.chains = reassign_chains(self.chains, self.members, self._length(), self.zones)
        if (old_chains is None or started or dead or replaced or old_chains != self.chains
                or old_replicas != self.replicas or old_zones != self.zones):
            self.version += 1
            self._rebuild(old_chains, sorted(set(dead) | set(replaced)), deadline)
        return self.view()

    def _learn_zones(self, deadline: float) -> None:
        """Add the members' failure domains to ``zones``: a member's Ray node label
        (``ray.io/availability-zone``), else, with Consul, the ``zone`` in its Consul agent's
        node meta (each member's actor is asked once)."""
        if self.consul is not None:
            asked = {h.failure_domain.remote(): m for m, h in self.members.items() if m not in self.consul_zones}
            for ref in _wait_all(list(asked), deadline):
                try:
                    self.consul_zones[asked[ref]] = ray.get(ref)
                except ray.exceptions.RayError:
                    pass  # asked again at the next join
        for member in self.members:
            zone = (self.info[member].zone if member in self.info else None) or self.consul_zones.get(member)
            if zone:
                self.zones[member] = zone

    def _length(self) -> int:
        """Nodes per slot chain: the copies, and at least two, so that the placement directory
        lives on two nodes whatever ``replicas`` is."""
        return max(self.replicas, 2)

    def _rebuild(self, old_chains: list | None, gone: list[str], deadline: float, full: bool = False) -> None:
        """Give every member the new view and have it mend copies and the placement directory
        (see ``_NodeActor.rebuild``) before any client sees it: this answers only when they
        are done.

        One call per member. The chains go into the object store once for all of them, and the
        members' actors too; a member that took the previous members gets only what changed
        (:class:`~.layout.MembersChange`), so a view change does not carry every member's
        handle to every member. A member that did not answer the last time, or whose change
        was refused, gets them whole."""
        peers = dict(self.members)
        base, before = self._members_sent
        joined = {m: h for m, h in peers.items() if before.get(m) is not h}
        left = [m for m, h in before.items() if peers.get(m) is not h]
        version = base + 1 if joined or left else base
        old, new = ray.put(old_chains), ray.put(self.chains)
        whole, change = ray.put(peers), ray.put(MembersChange(base, joined, left))
        calls = {}
        for member, handle in peers.items():
            members = change if self._members_taken.get(member) == base and member not in joined else whole
            calls[handle.rebuild.remote(old, new, gone, members, self.replicas, full, self.zones, version)] = member
        refused = {}
        for ref in _wait_all(list(calls), deadline):
            try:
                ray.get(ref)
                self._members_taken[calls[ref]] = version
            except ray.exceptions.RayError as exc:
                self._members_taken.pop(calls[ref], None)
                if "a members change from version" in str(exc):
                    refused[peers[calls[ref]].rebuild.remote(old, new, gone, whole, self.replicas, full, self.zones,
                                                             version)] = calls[ref]
        for ref in _wait_all(list(refused), deadline):
            with contextlib.suppress(ray.exceptions.RayError):
                ray.get(ref)
                self._members_taken[refused[ref]] = version
        taken = self._members_taken
        for member in calls.values():
            if taken.get(member) != version:
                taken.pop(member, None)  # did not answer in time: the members whole next time
        for member in left:
            if member not in peers:
                taken.pop(member, None)
        self._members_sent = (version, peers)
        self.sent["rebuild"] += len(calls) + len(refused)
        if gone or full:
            done = sum(1 for m in calls.values() if taken.get(m) == version)
            log.warning("cache %s: copies and directory rebuilt without %s (%d of %d members done)",
                        self.cache, gone or "a drained node", done, len(calls))

    def _answering(self, actors: dict[str, ray.actor.ActorHandle], deadline: float) -> dict[str, bool | None]:
        """Ping every actor at once: ``True`` answered, ``False`` dead, ``None`` no answer by
        the deadline (busy or still starting)."""
        pings = {h.ping.remote(): m for m, h in actors.items()}
        self.sent["ping"] += len(pings)
        ready = _wait_all(list(pings), deadline)
        out: dict[str, bool | None] = {m: None for m in actors}
        for ref in ready:
            try:
                ray.get(ref)
                out[pings[ref]] = True
            except ray.exceptions.RayError:
                out[pings[ref]] = False
        return out

    def _start(self, node: NodeInfo) -> ray.actor.ActorHandle:
        self.sent["start"] += 1
        # No get_if_exists: this coordinator is the only creator of its cache's node actors and
        # runs one call at a time, so two actors on one node cannot start.
        return NodeActor.options(
            name=actor_name(self.cache, node.node_id),
            namespace=NAMESPACE,
            lifetime="detached",
            scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
            runtime_env={"env_vars": ONE_ARENA},
        ).remote(self.cache, node.node_id, self._limit(node), self.settings["eviction"], self.settings["max_disk"],
                 self.settings["spill_dir"], self.consul, self.settings["http"])

    def counts(self) -> dict:
        """What this coordinator did: ``version`` (view changes), ``members``, and ``sent``,
        its calls to node actors by method (``start``, ``ping``, ``rebuild``) since it
        started: a view change costs one ping and one rebuild per member
        (benchmarks/bench_scale.py counts them)."""
        return {"version": self.version, "members": len(self.members), "sent": dict(self.sent)}

    def view(self) -> View:
        """What a client needs to route: members with their actors and resources, the table."""
        return View(
            members=dict(self.members),
            table=[chain[0] for chain in self.chains],
            chains=self.chains,
            replicas=self.replicas,
            zones=dict(self.zones),
            version=self.version,
            epoch=self.epoch,
            info={m: i.to_dict() for m, i in self.info.items()},
            consul=self.consul,
        )

    def drain(self, node_id: str) -> tuple[int, dict]:
        """Move every id off ``node_id``: its places in the slot chains go to the other
        members, its actor hands its ids, records and lost ids to their new homes (with
        replicas: sends the copies it owed, and the copies elsewhere are promoted) and is
        stopped, and the node gets no actor again. Returns ``(ids moved, view)``.

        Raises:
            ValueError: the node is not a member, or is the only one.
            ShovelingError: a new home could not take its ids (nothing moved).
        """
        if node_id not in self.members:
            raise ValueError(f"node {node_id} is not a member of cache {self.cache!r}")
        if len(self.members) == 1:
            raise ValueError(f"node {node_id} is the last node of cache {self.cache!r}: nowhere to move its ids")
        rest = {m: h for m, h in self.members.items() if m != node_id}
        old_chains = self.chains
        chains = reassign_chains(old_chains, rest, self._length(), self.zones)
        handle = self.members[node_id]
        # hand_over bounds itself (and then leaves the node serving): waiting less would let it
        # retire the node after the coordinator gave up, while the chains still name it
        moved = ray.get(handle.hand_over.remote(old_chains, chains, rest), timeout=HAND_OVER_DEADLINE + 2 * PEER_TIMEOUT)
        self.members, self.chains = rest, chains
        self.info.pop(node_id, None)
        self.drained.add(node_id)
        self.version += 1
        self._rebuild(old_chains, [node_id] if self.replicas > 1 else [], time.monotonic() + JOIN_DEADLINE, full=True)
        ray.wait([handle.shutdown.remote()], timeout=SHUTDOWN_GRACE)
        ray.kill(handle)
        log.warning("cache %s: node %s drained, %d ids moved", self.cache, node_id, moved)
        return moved, self.view()

    def shutdown(self) -> None:
        """Stop every node actor of the cache (their data goes with them).

        Each actor is first asked to deregister from Consul, then killed.
        """
        polite = [h.shutdown.remote() for h in self.members.values()]
        ray.wait(polite, num_returns=len(polite), timeout=SHUTDOWN_GRACE)
        for handle in self.members.values():
            ray.kill(handle)
        self.members.clear()


def _wait_all(refs: list, deadline: float) -> list:
    """The refs among ``refs`` that are ready by ``deadline`` (``time.monotonic()``)."""
    if not refs:
        return []
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=max(deadline - time.monotonic(), 0))
    return ready


Coordinator = ray.remote(num_cpus=0, max_restarts=0)(_Coordinator)
