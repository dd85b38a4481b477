"""Hash placement of ids first written by ``set`` / ``append``: a slot table.

An id hashes (CRC-32, stable across processes and Python versions) to one of :data:`SLOTS`
slots; the slot table maps each slot to a member node, its *home*. The table is built once,
by rendezvous hashing over the members present when the cache is created, and afterwards only
changes when a member dies: its slots move to the survivors, again by rendezvous, and every
other slot stays where it was. Nodes that join later get no slots (they take part in ``init``
instead), so a node joining never moves an id.

The home of an id is also where the id's placement record lives when ``init`` put it on
another node, which is what lets any process find any id in at most two hops.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Sequence

SLOTS = 4096


def slot_of(cache_id: str) -> int:
    """The slot of ``cache_id``: CRC-32 of its UTF-8 bytes modulo :data:`SLOTS`."""
    return zlib.crc32(cache_id.encode()) % SLOTS


def _weight(slot: int, node: str) -> bytes:
    return hashlib.blake2b(f"{slot}:{node}".encode(), digest_size=8).digest()


def _rendezvous(slot: int, nodes: Iterable[str]) -> str:
    return max(nodes, key=lambda node: _weight(slot, node))


def build_slot_table(nodes: Sequence[str]) -> list[str]:
    """A slot table over ``nodes``: ``table[slot]`` is the home node of that slot.

    Raises:
        ValueError: ``nodes`` is empty.
    """
    if not nodes:
        raise ValueError("a slot table needs at least one node")
    return [_rendezvous(slot, nodes) for slot in range(SLOTS)]


def reassign_slots(table: Sequence[str], alive: Iterable[str]) -> list[str]:
    """``table`` with the slots of nodes not in ``alive`` moved to alive nodes.

    Slots of alive nodes keep their node. If no node of the table is alive, the whole table is
    rebuilt over ``alive``.

    Raises:
        ValueError: ``alive`` is empty.
    """
    alive = set(alive)
    if not alive:
        raise ValueError("cannot reassign slots: no node is alive")
    survivors = sorted(alive.intersection(table))
    if not survivors:
        return build_slot_table(sorted(alive))
    return [node if node in alive else _rendezvous(slot, survivors) for slot, node in enumerate(table)]


def home_index(cache_ids: Iterable[str], table: Sequence[str]) -> list[str]:
    """The home node of each id, in order."""
    crc = zlib.crc32
    return [table[crc(i.encode()) % SLOTS] for i in cache_ids]
