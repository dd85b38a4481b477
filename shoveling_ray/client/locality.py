"""Which node is nearest to an id's data, from the holders of the id and, with Consul, the
client's :class:`~shoveling_ray.membership.watch.ConsulView` (health and network
coordinates). Plain functions, no Ray: the holders are found by :class:`~.calls.Calls`.

``view`` is ``None`` without Consul: every node that holds no copy is then
:data:`~shoveling_ray.placement.DEFAULT_REMOTE_SCORE` away, and no node is critical.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..placement import DEFAULT_REMOTE_SCORE

if TYPE_CHECKING:
    from ..membership.watch import ConsulView


def distance(view: ConsulView | None, node_id: str, holder: str) -> float:
    """Seconds between ``node_id`` and ``holder``: 0.0 on the holder itself, else Consul's
    estimate, or :data:`DEFAULT_REMOTE_SCORE` without Consul or coordinates."""
    if node_id == holder:
        return 0.0
    rtt = view.distance(node_id, holder) if view is not None else None
    return DEFAULT_REMOTE_SCORE if rtt is None else rtt


def score(view: ConsulView | None, node_id: str, holders: Iterable[str]) -> float:
    """Distance between ``node_id`` and the nearest of ``holders`` (see :func:`distance`)."""
    return min(distance(view, node_id, holder) for holder in holders)


def best_node(view: ConsulView | None, holders: list[str], members: Iterable[str]) -> str:
    """The node best placed to work on the data of ``holders`` (primary first).

    The primary, unless Consul says its check is critical: then the nearest holder whose check
    passes, else the passing member nearest to the primary (the primary when none passes).
    """
    if view is None or not view.critical(holders[0]):
        return holders[0]
    alive = [h for h in holders if not view.critical(h)]
    if alive:
        return min(alive, key=lambda h: distance(view, h, holders[0]))
    passing = [m for m in sorted(members) if not view.critical(m)]
    return min(passing, key=lambda m: distance(view, m, holders[0]), default=holders[0])


def nearest(view: ConsulView | None, local: str | None, nodes: list[str]) -> str | None:
    """The one of ``nodes`` whose check passes nearest to ``local`` by Consul's coordinates;
    ``None`` without Consul or when a distance is unknown."""
    if view is None:
        return None
    distances = {n: view.distance(local, n) for n in nodes if not view.critical(n)}
    if not distances or None in distances.values():
        return None
    return min(distances, key=distances.get)
