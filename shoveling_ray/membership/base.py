"""The node record that every membership source produces."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class NodeInfo:
    """A Ray node as seen by placement.

    Attributes:
        node_id: Ray node id, hex.
        alive: whether Ray reports the node alive.
        cpus: the node's ``CPU`` resource.
        object_store_memory: the node's object store capacity in bytes; the default cache
            limit of the node's actor.
        is_head: whether it is the head node.
        zone: its failure domain (Ray node label ``ray.io/availability-zone``), if any: the
            second copy of an id goes to another zone when there is one.
    """

    node_id: str
    alive: bool
    cpus: float
    object_store_memory: int
    is_head: bool = False
    zone: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)
