"""How ``init`` spreads a batch of new ids over nodes.

A strategy turns per-node weights into per-node counts (largest-remainder apportionment, so
counts are exact and differ from the ideal share by less than one). ``init`` then puts each
new id on its home (the node its hash names, :mod:`.hashing`) while that node's count lasts and
interleaves the rest over the counts left (:func:`assign_homes`), so that a home creates most
of its ids itself and calls few other nodes, however many there are.

- ``uniform_nodes``: every node weighs 1; per-node counts differ by at most one.
- ``uniform_cpu``: weight = the node's CPUs.
- ``uniform_memory``: weight = the node's free cache memory (limit minus bytes in use).

If every weight is zero (no node has CPUs, say) the strategy falls back to ``uniform_nodes``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

STRATEGIES = ("uniform_nodes", "uniform_cpu", "uniform_memory")


def check_strategy(strategy: object) -> str:
    """Return ``strategy`` if it is known.

    Raises:
        ValueError: unknown strategy; the message names the valid ones.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}")
    return strategy  # type: ignore[return-value]


def apportion(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split ``total`` items over the keys of ``weights`` in proportion to the weights.

    Largest-remainder method; ties go to the key that sorts first, so the result is
    deterministic. Negative weights count as zero; all-zero weights split evenly.

    Raises:
        ValueError: ``weights`` is empty or ``total`` is negative.
    """
    if not weights:
        raise ValueError("no nodes to place ids on")
    if total < 0:
        raise ValueError("total must not be negative")
    keys = sorted(weights)
    w = {k: max(float(weights[k]), 0.0) for k in keys}
    mass = sum(w.values())
    if mass <= 0:
        w, mass = {k: 1.0 for k in keys}, float(len(keys))
    quotas = {k: total * w[k] / mass for k in keys}
    counts = {k: int(quotas[k]) for k in keys}
    left = total - sum(counts.values())
    by_remainder = sorted(keys, key=lambda k: (-(quotas[k] - counts[k]), k))
    for k in by_remainder[:left]:
        counts[k] += 1
    return counts


def assign(n: int, weights: Mapping[str, float]) -> list[str]:
    """Nodes for ``n`` new ids, interleaved, with per-node counts from :func:`apportion`.

    Node ``k`` with count ``c`` takes positions whose keys are ``(j + 0.5) / c``; sorting all
    keys interleaves the nodes evenly (stride scheduling).
    """
    return _interleaved(apportion(n, weights))


def assign_homes(homes: Sequence[str], weights: Mapping[str, float]) -> list[str]:
    """Nodes for new ids whose homes are ``homes`` (one per id): the per-node counts of
    :func:`assign`, each id on its own home while that home's count lasts, the others
    interleaved over the counts left.

    What ``init`` uses: an id on its home is created by the home itself, so each home calls
    only the few nodes its surplus goes to, not every node (see docs/scaling.md).
    """
    left = apportion(len(homes), weights)
    out: list = [None] * len(homes)
    rest: list[int] = []
    for k, home in enumerate(homes):
        if left.get(home, 0) > 0:
            left[home] -= 1
            out[k] = home
        else:
            rest.append(k)
    for k, node in zip(rest, _interleaved(left)):
        out[k] = node
    return out


def _interleaved(counts: Mapping[str, int]) -> list[str]:
    keyed = [((j + 0.5) / c, node) for node, c in counts.items() for j in range(c)]
    keyed.sort()
    return [node for _, node in keyed]
