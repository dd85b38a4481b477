"""keep_freed_memory: freed blocks stay in the process instead of going back to the kernel."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
