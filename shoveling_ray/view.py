"""The coordinator's view of a cache: what every client routes by.

One frozen value, made by the coordinator (:meth:`~shoveling_ray.actors.coordinator._Coordinator.view`)
each time the members, the slot chains or the settings change, and read by the router, the
``Cache`` and the tests. ``version`` grows with every change, so a client can tell whether a
view it holds is older than another. Plain data, no Ray: it pickles with the handles that
carry it into tasks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class View:
    """One view of a cache.

    Attributes:
        members: node id (hex) -> that node's actor (a Ray actor handle, or a plain object in
            unit tests).
        table: slot -> the node id of its home (the first node of its chain).
        chains: slot -> the nodes of its chain (home, backup home, then the holders of copies);
            ``None`` in a view made before chains existed.
        replicas: how many nodes hold each id.
        zones: node id -> failure domain (Consul node meta ``zone``), for the nodes that name one.
        version: grows with every change of the view.
        epoch: this incarnation of the cache (a new one after ``close`` and a new start).
        info: node id -> what the coordinator knows of the node (``cpus``, ...).
        consul: the Consul settings the cache runs with, or ``None`` for Ray alone.
    """

    members: Mapping[str, Any]
    table: list[str]
    chains: list[list[str]] | None = None
    replicas: int = 1
    zones: Mapping[str, str] = field(default_factory=dict)
    version: int = 0
    epoch: str = ""
    info: Mapping[str, dict] = field(default_factory=dict)
    consul: Any = None
