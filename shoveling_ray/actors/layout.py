"""What one node actor knows of its cache's layout: the coordinator's last view as this node
took it (slot chains, the members' actors, the copy count, failure domains), and the questions
every part of the actor asks of it: who holds an id, which nodes keep its placement record.

Plain data and lookups: no Ray, no calls. :class:`Change` is one view replacing another, as
``_NodeActor.rebuild`` applies it. Not the coordinator's view (it makes that; this is one
node's reading of it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ShovelingError
from ..placement import holders, slot_of

#: The factor of a *scratch* id (``init(ids, scratch=True)``): one copy, and its large pieces
#: stay the objects of the writers that sent them (see :func:`~shoveling_ray.objects.keep_writers`).
SCRATCH = 0


@dataclass(frozen=True)
class MembersChange:
    """A view change's members as a change from the ones a node took last, so that a view
    change does not carry every member's actor handle to every member (see docs/scaling.md).

    Attributes:
        base: the coordinator's members version the node took last (``Layout.members_version``).
        joined: the actors of members new since ``base`` (a node whose actor was replaced too).
        left: the nodes that left since ``base`` (or whose actor was replaced).
    """

    base: int
    joined: dict = field(default_factory=dict)
    left: list = field(default_factory=list)


class Layout:
    """The view of the cache that a node actor took last; changed only by :meth:`take`.

    Args:
        node_id: the node the actor runs on.
    """

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.chains: list | None = None  # slot chains (None until the first view)
        self.peers: dict = {}  # the members' actors, by node
        self.members_version: int | None = None  # the coordinator's version of ``peers``
        self.replicas = 1
        self.zones: dict[str, str] = {}  # members' failure domains (see placement.holders)
        # Per slot: the other holders of an id whose primary copy is here (None with one copy).
        self.others: list | None = None
        # The copy count of the ids held or recorded here that were created with one of their
        # own (``init(ids, replicas=k)``); every other id has ``replicas``. Empty in the default
        # case, so that ids cost nothing more.
        self.factors: dict[str, int] = {}

    def factor(self, cache_id: str) -> int:
        """How many nodes hold ``cache_id``: its own factor, at most ``replicas`` (lowering the
        cache's copy count caps the ids created with more), else ``replicas``."""
        factors = self.factors
        if factors:
            own = factors.get(cache_id)
            if own is not None and own < self.replicas:
                return own or 1  # SCRATCH: one copy
        return self.replicas

    def is_scratch(self, cache_id: str) -> bool:
        return bool(self.factors) and self.factors.get(cache_id) == SCRATCH

    def members(self, peers: dict | MembersChange) -> dict:
        """The members' actors a view change names: ``peers`` whole, or the ones taken last
        changed by a :class:`MembersChange` (nothing is changed here).

        Raises:
            ShovelingError: the change is from another version than the one taken last (the
                coordinator then sends the members whole).
        """
        if not isinstance(peers, MembersChange):
            return peers
        if peers.base != self.members_version:
            raise ShovelingError(f"node {self.node_id}: a members change from version {peers.base}, "
                                 f"but this node has version {self.members_version}")
        left = set(peers.left)
        return {**{n: a for n, a in self.peers.items() if n not in left}, **peers.joined}

    def take(self, old_chains: list | None, chains: list, gone: list, peers: dict, replicas: int,
             zones: dict | None, members_version: int | None = None) -> Change:
        """Take a new view (see ``_NodeActor.rebuild`` for the arguments; ``peers`` whole, see
        :meth:`members`); returns the change."""
        self.members_version = members_version
        change = Change(self, chains if old_chains is None else old_chains, self.replicas, self.zones, gone)
        self.chains, self.peers, self.replicas, self.zones = chains, peers, replicas, zones or {}
        me = self.node_id
        self.others = [holders(me, chain, replicas, self.zones)[1:] for chain in chains] if replicas > 1 else None
        return change

    def holders(self, cache_id: str, primary: str) -> list[str]:
        """The nodes that hold (or are to hold) an id whose primary copy is on ``primary``, it
        first."""
        if self.chains is None:
            return [primary]
        return holders(primary, self.chains[slot_of(cache_id)], self.factor(cache_id), self.zones)

    def others_of(self, cache_id: str) -> list[str]:
        """The other holders of an id whose primary copy is here."""
        if self.others is None:
            return []
        if self.factors and cache_id in self.factors:
            return self.holders(cache_id, self.node_id)[1:]
        return self.others[slot_of(cache_id)]

    def backup(self, cache_id: str) -> str | None:
        """The backup home of an id's slot: the other node keeping its placement record."""
        chain = self.chains[slot_of(cache_id)] if self.chains is not None else ()
        return chain[1] if len(chain) > 1 and chain[1] != self.node_id else None

    def is_home(self, cache_id: str) -> bool:
        return self.chains is None or self.chains[slot_of(cache_id)][0] == self.node_id


class Change:
    """A view replacing another: what held ids before, and which nodes kept their data.

    Args:
        layout: the layout taking the new view (read after :meth:`Layout.take`).
        old_chains: the slot chains replaced.
        old_replicas: the copy count replaced.
        old_zones: the failure domains replaced.
        gone: the nodes that died or left with their data.
    """

    def __init__(self, layout: Layout, old_chains: list, old_replicas: int, old_zones: dict, gone: list) -> None:
        self.layout = layout
        self.old_chains, self.old_replicas, self.old_zones = old_chains, old_replicas, old_zones
        self.gone = set(gone)

    def alive(self, node: str) -> bool:
        """A member that kept its data (not a replaced actor)."""
        return node in self.layout.peers and node not in self.gone

    def old_factor(self, cache_id: str) -> int:
        """How many nodes held ``cache_id`` under the old view (see :meth:`Layout.factor`)."""
        own = self.layout.factors.get(cache_id) if self.layout.factors else None
        return (own or 1) if own is not None and own < self.old_replicas else self.old_replicas

    def held_before(self, slot: int, primary: str, factor: int | None = None) -> list[str]:
        """The holders, under the old view, of an id of ``slot`` whose primary was ``primary``
        (``factor``: its copy count then, see :meth:`old_factor`; the old ``replicas`` by
        default)."""
        return holders(primary, self.old_chains[slot], factor or self.old_replicas, self.old_zones)

    def survivor(self, primary: str, slot: int, factor: int | None = None) -> str | None:
        """The first holder that kept its data of an id of ``slot`` whose primary was
        ``primary`` (``factor``: as for :meth:`held_before`)."""
        return next((n for n in self.held_before(slot, primary, factor) if self.alive(n)), None)
