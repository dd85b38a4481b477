"""keep_freed_memory: freed blocks stay in the process instead of going back to the kernel,
until it has been idle for a while (IdleTrim)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from shoveling_ray.heap import IdleTrim

_PROBE = """
import sys, numpy as np, psutil
from shoveling_ray.heap import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
proc = psutil.Process()
block = np.ones(24 * 2**20, dtype=np.uint8)  # below glibc's largest mmap threshold
before = proc.memory_info().rss
del block
print(applied, (before - proc.memory_info().rss) // 2**20)
"""


def _released_mib(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True).stdout
    applied, released = out.split()
    return applied, int(released)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_block_stays_in_the_process_only_when_asked():
    applied, released = _released_mib("default")
    assert applied == "None" and released >= 20  # glibc hands (nearly all of) the 24 MiB block back
    applied, released = _released_mib("keep")
    assert applied == "True" and released <= 2  # kept: at most page-level noise leaves


_IDLE_PROBE = """
import time, numpy as np, psutil
from shoveling_ray.heap import IdleTrim, keep_freed_memory
keep_freed_memory()
proc = psutil.Process()
trim = IdleTrim(idle=0.3)
with trim.call():
    block = np.ones(24 * 2**20, dtype=np.uint8)
    before = proc.memory_info().rss
    del block
kept = (before - proc.memory_info().rss) // 2**20
deadline = time.monotonic() + 30
while (before - proc.memory_info().rss) // 2**20 < 20 and time.monotonic() < deadline:
    time.sleep(0.1)
print(kept, (before - proc.memory_info().rss) // 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_an_idle_process_hands_its_freed_heap_back():
    out = subprocess.run([sys.executable, "-c", _IDLE_PROBE], capture_output=True, text=True, check=True).stdout
    kept, released = (int(x) for x in out.split())
    assert kept <= 2 and released >= 20  # kept while calls may follow, handed back once idle


def wait_for(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_the_heap_goes_back_once_no_call_ran_for_a_while_and_never_during_a_call():
    trims = []
    trim = IdleTrim(idle=0.2, trim=lambda: trims.append(time.monotonic()))
    with trim.call():
        time.sleep(0.6)  # a long call: three idle periods long, and no trim while it runs
        assert trims == []
    ended = time.monotonic()
    wait_for(lambda: trims)
    assert len(trims) == 1 and trims[0] >= ended + 0.2  # once, after the idle period
    with trim.call():  # a later call: once more after it
        pass
    wait_for(lambda: len(trims) == 2)
    assert len(trims) == 2
