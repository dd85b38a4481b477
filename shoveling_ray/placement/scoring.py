"""Distances between nodes, for ``node_id`` and ``node_cache_score``.

With Consul, the distance of two nodes is the round-trip time that Consul's network
coordinates estimate, computed exactly as Consul does (``lib/rtt.go``, ``consul rtt``): the
Euclidean distance of the ``Vec`` parts plus both ``Height`` values; adding both
``Adjustment`` values gives the adjusted figure, used only when it stays positive. Units are
seconds, as in Consul's API.

Without Consul no distance is known; every node other than a holder then scores
:data:`DEFAULT_REMOTE_SCORE`, one nominal LAN round trip.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

#: Score of a node that does not hold the data when no coordinates are known (seconds).
DEFAULT_REMOTE_SCORE = 0.001


@dataclass(frozen=True)
class Coordinate:
    """A Consul network coordinate (``/v1/coordinate/nodes`` -> ``Coord``)."""

    vec: tuple[float, ...]
    error: float = 1.5
    adjustment: float = 0.0
    height: float = 1.0e-5

    @classmethod
    def from_consul(cls, coord: Mapping) -> Coordinate:
        """Build from the ``Coord`` object of Consul's JSON."""
        return cls(
            vec=tuple(float(x) for x in coord["Vec"]),
            error=float(coord.get("Error", 1.5)),
            adjustment=float(coord.get("Adjustment", 0.0)),
            height=float(coord.get("Height", 1.0e-5)),
        )


def rtt_seconds(a: Coordinate, b: Coordinate) -> float:
    """Estimated round-trip time between two coordinates, in seconds (Consul's formula).

    Raises:
        ValueError: the coordinates have different dimensions.
    """
    if len(a.vec) != len(b.vec):
        raise ValueError(f"coordinate dimensions differ: {len(a.vec)} != {len(b.vec)}")
    raw = math.sqrt(sum((x - y) ** 2 for x, y in zip(a.vec, b.vec))) + a.height + b.height
    adjusted = raw + a.adjustment + b.adjustment
    return adjusted if adjusted > 0.0 else raw

