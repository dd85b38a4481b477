"""Listing a node's ids a page at a time (``Cache.scan_ids``), without a sorted list of the
whole cache anywhere.

A scan is named by a token the client draws. Its first page takes a snapshot of the ids whose
primary copy is here (a list of references to the names the store holds: one pointer per id,
sorted once); each later page is the next ``limit`` of it. A scan the client finished or
abandoned is forgotten with its last page, by :meth:`Scans.end`, or after :data:`SCAN_TTL`
quiet seconds; a page asked for after that resumes from a new snapshot past the last id the
client received (it names it), so the scan still yields each id once, in order. Plain Python,
no Ray.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable

#: Seconds a scan may stay quiet before its snapshot is forgotten (the client's next page then
#: takes a new one and goes on after the last id it received).
SCAN_TTL = 300.0
#: Scans one node keeps at once; the one quiet longest is forgotten first past it.
MAX_SCANS = 64


class Scans:
    """The open scans of one node actor: ``{token: (ids, next position, last used)}``.

    Args:
        clock: seconds, for :data:`SCAN_TTL`.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._open: dict[str, tuple[list[str], int, float]] = {}

    def page(self, token: str, limit: int, listed: Callable[[], Iterable[str]],
             after: str | None = None) -> tuple[list[str], bool]:
        """The next ``limit`` ids of scan ``token`` and whether the scan is done (then it is
        forgotten here). A scan new or forgotten here starts from a snapshot of ``listed()``,
        after ``after`` (the last id the client received of this node, ``None`` at first)."""
        now = self.clock()
        self._forget_quiet(now)
        state = self._open.pop(token, None)
        if state is None:
            ids = sorted(listed())
            state = ids, (0 if after is None else bisect.bisect_right(ids, after)), now
        ids, position, _used = state
        out = ids[position: position + limit]
        done = position + limit >= len(ids)
        if not done:
            self._open[token] = (ids, position + limit, now)
        return out, done

    def end(self, token: str) -> None:
        """Forget scan ``token`` (a client that stopped early)."""
        self._open.pop(token, None)

    def __len__(self) -> int:
        return len(self._open)

    def _forget_quiet(self, now: float) -> None:
        for token in [t for t, (_, _, used) in self._open.items() if now - used > SCAN_TTL]:
            del self._open[token]
        while len(self._open) >= MAX_SCANS:
            del self._open[min(self._open, key=lambda t: self._open[t][2])]
