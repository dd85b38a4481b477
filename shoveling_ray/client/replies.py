"""The nodes' per-id answers (:mod:`shoveling_ray.protocol`) turned into the errors a user
sees; plain data in, no Ray. Not for the values themselves (``Cache.get_many`` decodes them).
"""

from __future__ import annotations

from .. import protocol as p
from ..errors import CacheFull, DataLost


def data_lost(lost: list[tuple], **counts: int) -> DataLost:
    """One :class:`DataLost` for the ``(id, status, node that died, node asked)`` of every lost
    id a call met; it names the node when they all were on one. ``counts``: ``stored`` and
    ``total`` of a write."""
    nodes = {node for _id, _status, node, _asked in lost}
    return DataLost(lost[0][0], nodes.pop() if len(nodes) == 1 else "", ids=[f[0] for f in lost], **counts)


def raise_write_errors(items: list[tuple], results: list[tuple]) -> None:
    """Raise for the ids a write did not apply.

    Args:
        items: the write's items, each starting with its id.
        results: the ``(status, value, node)`` answered for each item, in the same order.

    Raises:
        DataLost: some ids were lost; it carries every lost id (``.ids``) and, for more than
            one item, how many of the call's ids were written (``.stored`` of ``.total``).
        CacheFull: else, some ids did not fit; it carries them and the counts alike.
        TypeError: else, an append went to a value that is not bytes.
    """
    failed = [(cache_id, status, value, node) for (cache_id, *_), (status, value, node) in zip(items, results)
              if status != p.OK]
    lost = [f for f in failed if f[1] == p.LOST]
    full = [f for f in failed if f[1] == p.FULL]
    counts = {"stored": len(items) - len(failed), "total": len(items)} if len(items) > 1 else {}
    if lost:
        raise data_lost(lost, **counts)
    if full:
        cache_id, _status, value, node = full[0]
        raise CacheFull(node, *value[:3], cache_id, value[3], ids=[f[0] for f in full], **counts)
    for cache_id, status, _value, _node in failed:
        if status == p.WRONG_TYPE:
            raise TypeError(f"cannot append to {cache_id!r}: its value is not bytes")
