"""Which client writes a node applied, so that a write sent again is applied once.

Every write a client sends carries a *stamp*: ``(session, sequence, low)``. The session is
random per client handle, the sequence numbers that handle's calls, and ``low`` is the lowest
sequence the handle still waits for (every call below it was answered). A client may send a
call again after a node died or was drained, in whole or in part, as often as it likes: each
holder remembers, per (session, sequence), the ids it applied and what it answered, and
answers a repeat from that instead of applying it again (as Kafka's idempotent producer and
Raft's client sessions do). Copies remember what their primary forwarded, so a promoted copy
knows too, and the remembered writes of an id travel with it when it moves (repair, drain).

The state is bounded: a session's calls below its ``low`` are forgotten with its next call,
and a session quiet for :data:`SESSION_TTL` seconds is forgotten whole. Its memory is counted
in the node's ``used`` (:data:`ENTRY_BYTES` per remembered id, :data:`SESSION_BYTES` per
session).

Plain Python, no Ray; the clock is a constructor argument. This module does not decide what a
write does (the node actor) nor number the calls (the router).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

#: Seconds a session may stay quiet before what it wrote is forgotten. A client resends a call
#: only within :data:`RESEND_WINDOW` of its first sending, well inside it.
SESSION_TTL = 300.0
RESEND_WINDOW = SESSION_TTL - 60.0
#: Memory counted per remembered (session, sequence, id): its dict entry (measured with
#: tracemalloc: about 40 bytes; the id's string and the answer are shared with the store).
ENTRY_BYTES = 48
#: Memory counted per session besides its ids.
SESSION_BYTES = 300
#: Calls remembered per session at most (a client with more in flight at once loses the oldest
#: ones' protection, not correctness of the others).
MAX_CALLS = 4096


class _Applied(dict):
    """``{id: answer}`` of one call, keeping its :class:`Sessions`' count of remembered ids up
    to date as ids are added (so that ``nbytes``, read at every publish, is not a walk over
    every session's calls)."""

    __slots__ = ("_count",)

    def __init__(self, count: list[int]) -> None:
        super().__init__()
        self._count = count

    def __setitem__(self, cache_id: str, answer: Any) -> None:
        if cache_id not in self:
            self._count[0] += 1
        dict.__setitem__(self, cache_id, answer)

    def update(self, pairs) -> None:  # type: ignore[override]
        for cache_id, answer in (pairs.items() if isinstance(pairs, dict) else pairs):
            self[cache_id] = answer

    def forget(self) -> None:
        """Uncount it (its call is forgotten); what a batch still serving it adds is not counted."""
        self._count[0] -= len(self)
        self._count = [0]


class Sessions:
    """The writes this node applied, per client session and call.

    Args:
        ttl: seconds after which a quiet session is forgotten.
        clock: seconds, monotonic (a fake in tests).
    """

    def __init__(self, ttl: float = SESSION_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.clock = ttl, clock
        # session -> [last seen, {sequence: {id: answer}}]
        self._sessions: dict[bytes, list] = {}
        self._count = [0]  # ids remembered over all sessions' calls (shared with each _Applied)
        self._swept = clock()

    @property
    def nbytes(self) -> int:
        """The memory counted for what is remembered."""
        return self._count[0] * ENTRY_BYTES + SESSION_BYTES * len(self._sessions)

    def __len__(self) -> int:
        return len(self._sessions)

    def call(self, stamp: tuple | None) -> dict[str, Any] | None:
        """The ids the write ``stamp`` names applied here, ``{id: answer}``, to be read and
        added to while it is served; ``None`` for a call without a stamp (nothing is kept)."""
        if stamp is None:
            return None
        session, sequence, low = stamp
        now = self.clock()
        state = self._sessions.get(session)
        if state is None:
            state = self._sessions[session] = [now, {}]
        state[0] = now
        calls = state[1]
        stale = [s for s in calls if s < low and s != sequence]
        extra = len(calls) - len(stale) - MAX_CALLS + 1
        if extra > 0:
            stale += sorted(s for s in calls if s >= low and s != sequence)[:extra]
        for old in stale:
            calls.pop(old).forget()
        if now - self._swept > self.ttl / 8:
            self._sweep(now)
        return self._applied(calls, sequence)

    def _applied(self, calls: dict, sequence: int) -> _Applied:
        applied = calls.get(sequence)
        if applied is None:
            applied = calls[sequence] = _Applied(self._count)
        return applied

    def _sweep(self, now: float) -> None:
        self._swept = now
        for session in [s for s, state in self._sessions.items() if now - state[0] > self.ttl]:
            for applied in self._sessions.pop(session)[1].values():
                applied.forget()

    def of(self, cache_ids: Iterable[str]) -> list[tuple]:
        """What is remembered of ``cache_ids``: ``(session, sequence, id, answer)`` entries,
        which travel with the ids to another node (:meth:`adopt`)."""
        wanted = set(cache_ids)
        return [(session, sequence, i, answer)
                for session, (_seen, calls) in self._sessions.items()
                for sequence, applied in calls.items()
                for i, answer in applied.items() if i in wanted]

    def adopt(self, entries: Iterable[tuple]) -> None:
        """Remember entries of :meth:`of` from another node."""
        now = self.clock()
        for session, sequence, cache_id, answer in entries:
            state = self._sessions.setdefault(session, [now, {}])
            state[0] = now  # its client may resend these as long as to the node they came from
            self._applied(state[1], sequence)[cache_id] = answer
