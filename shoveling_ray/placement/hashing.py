"""Hash placement of ids first written by ``set`` / ``append``: a table of slot chains.

An id hashes (CRC-32, stable across processes and Python versions) to one of :data:`SLOTS`
slots. Each slot has a *chain*: distinct member nodes in rendezvous order. The first is the
slot's *home*: where ids first written by ``set`` / ``append`` live, and where the placement
record of an id that ``init`` put on another node is kept. The second is the *backup home*: it
keeps the same records, so the placement directory survives the death of either. With
``replicas=k`` an id whose primary copy is on node ``P`` has its other copies on the first
``k - 1`` nodes of its slot's chain other than ``P`` (:func:`holders`).

The table is built once, over the members present when the cache is created, and afterwards
changes only when a member leaves (its places in the chains go to the next survivors, every
other slot keeps its nodes) or when chains are shorter than they should be (fewer members than
``replicas``): nodes that join fill them. A node joining a cluster with full chains moves no
id. When nodes carry a failure domain (a zone), a chain takes a node of a zone it does not
have yet before one of a zone it has, so the second copy of an id lives in another zone.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

SLOTS = 4096


def slot_of(cache_id: str) -> int:
    """The slot of ``cache_id``: CRC-32 of its UTF-8 bytes modulo :data:`SLOTS`."""
    return zlib.crc32(cache_id.encode()) % SLOTS


#: SplitMix64's constants: the golden-ratio step and the finaliser's two multipliers.
_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _node_keys(nodes: Sequence[str]) -> np.ndarray:
    """Each node's 64-bit key: BLAKE2b of its id."""
    return np.array([int.from_bytes(hashlib.blake2b(n.encode(), digest_size=8).digest(), "little") for n in nodes],
                    dtype=np.uint64)


def _weights(slots: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Rendezvous weights, a row per slot and a column per node key: SplitMix64's finaliser of
    the key plus the slot's step (numpy's unsigned arithmetic wraps, as the finaliser wants).
    Vectorised: the whole table of 4,096 slots over 1,000 nodes in well under a second."""
    z = keys[None, :] + (slots[:, None].astype(np.uint64) + np.uint64(1)) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _ranked(weights: np.ndarray, nodes: Sequence[str], top: int) -> list[str]:
    """The ``top`` nodes of one slot's row of weights, the heaviest first."""
    if top < len(nodes):
        best = np.argpartition(weights, len(nodes) - top)[len(nodes) - top:]
    else:
        best = np.arange(len(nodes))
    return [nodes[i] for i in best[np.argsort(weights[best])[::-1]]]


def _fill(slot: int, chain: list[str], nodes: Iterable[str], length: int, zones: Mapping[str, str]) -> list[str]:
    """``chain`` cut or extended to ``length`` nodes from ``nodes``, in rendezvous order, a
    node of a zone the chain lacks first."""
    if len(chain) >= length:
        return chain[:length]
    candidates = sorted(n for n in nodes if n not in chain)
    weights = _weights(np.array([slot]), _node_keys(candidates))[0]
    return _zone_first(chain, _ranked(weights, candidates, len(candidates)), length, zones)


def _zone_first(picked: list[str], candidates: list[str], length: int, zones: Mapping[str, str]) -> list[str]:
    """``picked`` extended to ``length`` nodes from ``candidates``, in their order, except that
    a node of a zone ``picked`` lacks goes first."""
    while len(picked) < length and candidates:
        have = {zones.get(n) for n in picked}
        pick = next((n for n in candidates if zones.get(n) not in have), candidates[0])
        candidates.remove(pick)
        picked.append(pick)
    return picked


def build_chains(nodes: Sequence[str], length: int, zones: Mapping[str, str] | None = None) -> list[list[str]]:
    """A chain table over ``nodes``: ``chains[slot]`` lists ``min(length, len(nodes))``
    distinct nodes, the slot's home first. ``zones`` maps nodes to their failure domain.

    Raises:
        ValueError: ``nodes`` is empty.
    """
    if not nodes:
        raise ValueError("a slot table needs at least one node")
    nodes = sorted(set(nodes))
    weights = _weights(np.arange(SLOTS), _node_keys(nodes))
    # Without zones a chain is its slot's heaviest nodes; with zones a lighter one may come first.
    top = min(length, len(nodes)) if not zones else len(nodes)
    return [_zone_first([], _ranked(row, nodes, top), length, zones or {}) for row in weights]


def reassign_chains(
    chains: Sequence[Sequence[str]], alive: Iterable[str], length: int, zones: Mapping[str, str] | None = None
) -> list[list[str]]:
    """``chains`` without the nodes not in ``alive``, each refilled to ``length`` from
    ``alive``: survivors keep their order (the first survivor is the new home), new nodes go
    last. A chain with no survivor is built afresh.

    Raises:
        ValueError: ``alive`` is empty.
    """
    alive = set(alive)
    if not alive:
        raise ValueError("cannot reassign slots: no node is alive")
    return [_fill(slot, [n for n in chain if n in alive], alive, length, zones or {}) for slot, chain in enumerate(chains)]


def holders(primary: str, chain: Sequence[str], replicas: int, zones: Mapping[str, str] | None = None) -> list[str]:
    """The nodes that hold an id whose primary copy is on ``primary``: it, then ``replicas - 1``
    other nodes of the id's slot chain, in chain order, except that with ``zones`` a node of a
    zone the holders lack goes first (so the copies of an id that ``init`` put off its chain
    span zones too; for an id on its home this is the chain's own order)."""
    others = [n for n in chain if n != primary]
    if not zones:
        return [primary, *others[: replicas - 1]]
    return _zone_first([primary], others, replicas, zones)


def slots_of(cache_ids: Iterable[str]) -> list[int]:
    """:func:`slot_of` of each id, in order."""
    crc = zlib.crc32
    return [crc(i.encode()) % SLOTS for i in cache_ids]


def home_index(cache_ids: Iterable[str], table: Sequence[str]) -> list[str]:
    """The home node of each id, in order (``table[slot]`` is the slot's home)."""
    crc = zlib.crc32
    return [table[crc(i.encode()) % SLOTS] for i in cache_ids]
