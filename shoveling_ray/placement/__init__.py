"""Where cache ids live: pure functions, no Ray import, unit-tested without a cluster.

- :mod:`.hashing`: the slot chains: homes of ids first written by ``set`` / ``append``, backup
  homes of the placement directory, and where each id's copies go.
- :mod:`.strategies`: how ``init`` spreads many ids over nodes.
- :mod:`.scoring`: distances between nodes (Consul network coordinates) and data.
"""

from .hashing import SLOTS, build_chains, holders, home_index, reassign_chains, slot_of, slots_of
from .scoring import DEFAULT_REMOTE_SCORE, Coordinate, rtt_seconds
from .strategies import STRATEGIES, apportion, assign, assign_homes, check_strategy

__all__ = [
    "SLOTS",
    "build_chains",
    "holders",
    "home_index",
    "reassign_chains",
    "slot_of",
    "slots_of",
    "DEFAULT_REMOTE_SCORE",
    "Coordinate",
    "rtt_seconds",
    "STRATEGIES",
    "apportion",
    "assign",
    "assign_homes",
    "check_strategy",
]
