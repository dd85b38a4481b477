"""Keep freed memory in the process instead of handing it back to the kernel.

glibc returns freed blocks above its trim threshold to the kernel at once. A shuffle frees and
allocates blocks of the same sizes over and over, and on virtual machines that report free
pages to the host (Firecracker, many clouds) touching memory the kernel handed back costs
about as much as the work on it: a gigabyte of fresh pages was measured at 2-3 s here, the same
pages kept in the process at 0.15 s. :func:`keep_freed_memory` raises glibc's thresholds so
that blocks up to 32 MiB come from the heap and up to ``KEEP_BYTES`` of freed heap stays.

Called in the processes shoveling_ray runs in (node actors, shuffle tasks). The node actors
hand the freed heap back after ``init``'s packed batches (:func:`give_back_freed`): their
temporaries are not reused soon, and kept they would count against the ids created. They also
hand it back once they have been idle for :data:`IDLE_SECONDS` (:class:`IdleTrim`, as
jemalloc's decay does): calls in a burst reuse the freed memory, an idle cache does not hold
it. A no-op where the C library is not glibc.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import threading
import time

#: The environment node actors start with: glibc's allocator with one arena. Ray runs an
#: actor's calls on threads of its own, glibc gives each thread an arena, and ``malloc_trim``
#: hands back only the main arena's freed top (measured: 13-23 MB of a node actor's memory
#: after writes of 100,000 ids a call stayed, 1-10 MB with one arena). Set when the process
#: starts: ``mallopt`` from a running actor is too late for the threads it already has.
ONE_ARENA = {"MALLOC_ARENA_MAX": "1"}
#: Seconds without a call after which a node actor hands its freed heap back.
IDLE_SECONDS = 2.0
#: Freed heap memory a process keeps for reuse (glibc's trim threshold).
KEEP_BYTES = 512 * 2**20
#: Blocks up to this size come from the heap (the largest mmap threshold glibc accepts).
HEAP_BLOCK_BYTES = 32 * 2**20
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.cache
def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def give_back_freed() -> None:
    """Hand the freed heap back to the kernel now (glibc's ``malloc_trim``): after a call whose
    temporaries will not be reused soon (``init``'s packed batches of 100,000 ids), which the
    thresholds above would keep, counted in the process's memory against the ids it created.
    A no-op where the C library is not glibc."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


@functools.cache
def keep_freed_memory() -> bool:
    """Apply the thresholds once per process; whether they were applied."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_BLOCK_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES))


class IdleTrim:
    """Hands the freed heap back (:func:`give_back_freed`) once no call has run for ``idle``
    seconds; a background thread waits for it. Calls say when they run (:meth:`call`).

    Args:
        idle: seconds without a call before the heap is handed back.
        trim: what hands it back (:func:`give_back_freed`; a fake in tests).
    """

    def __init__(self, idle: float = IDLE_SECONDS, trim=give_back_freed) -> None:
        self.idle, self._trim = idle, trim
        self._last = time.monotonic()
        self._running = 0
        self._lock = threading.Lock()
        self._ended = threading.Event()
        threading.Thread(target=self._run, daemon=True, name="shoveling-idle-trim").start()

    @contextlib.contextmanager
    def call(self):
        """Around a call: the heap is not handed back while it runs, and is ``idle`` seconds
        after it (and every other call) ended."""
        with self._lock:
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                self._last = time.monotonic()
            self._ended.set()

    def _run(self) -> None:
        while True:
            self._ended.wait()
            while True:  # until no call ran for ``idle`` seconds
                self._ended.clear()
                with self._lock:
                    running, left = self._running, self._last + self.idle - time.monotonic()
                if running:
                    break  # the call running now sets the event when it ends
                if left <= 0:
                    self._trim()
                    break
                time.sleep(left)
