"""The client's half of :meth:`Cache.scan_ids`: one stream of pages per node, merged in order.

Each node's pages come from its snapshot of its ids (:mod:`shoveling_ray.actors.scans`); the
next page is asked for while one is read, so the client holds at most two pages per node.
"""

from __future__ import annotations

import heapq
import uuid
from collections.abc import Iterator

from .calls import Calls, submit

#: Ids per page and node of :meth:`Cache.scan_ids` (a page of 12-byte names: about 300 KB).
SCAN_BATCH = 5_000


def scan(calls: Calls, prefix: str, batch: int) -> Iterator[str]:
    """The ids starting with ``prefix`` on every member of the cache, sorted; every node has
    started its snapshot when this returns.

    Raises:
        CacheClosed / NodeUnavailable: at the start, or while the stream is read.
    """
    token = uuid.uuid4().hex
    streams = [_scan_node(calls, node, token, prefix, batch) for node in sorted(calls.router.members)]
    for stream in streams:
        next(stream)  # every node starts its snapshot now, in parallel
    return _merged(streams)


def _scan_node(calls: Calls, node: str, token: str, prefix: str, batch: int) -> Iterator[str]:
    """One node's part of :func:`scan`: primed by one ``next`` (the first page is asked for),
    then its ids."""
    handle, done = calls.handle(node, []), False
    pending = submit(handle, "scan", token, prefix, batch)
    try:
        yield ""
        while not done:
            page, done = calls.gather({node: pending}, {node: []}, "scan_ids")[node]
            if not done:  # (naming its last id: a node that forgot the scan goes on from there)
                pending = submit(handle, "scan", token, prefix, batch, page[-1] if page else None)
            yield from page
    finally:
        if not done:  # stopped early: the node forgets the snapshot now
            submit(handle, "scan_end", token)


def _merged(streams: list[Iterator[str]]) -> Iterator[str]:
    """The sorted streams merged; each is closed (its node's scan ended) when this is."""
    try:
        yield from heapq.merge(*streams)
    finally:
        for stream in streams:
            stream.close()
