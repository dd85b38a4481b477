"""examples/datasets.py end to end at a small size (it starts its own local cluster)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "datasets.py"

pytestmark = pytest.mark.ray


def test_the_second_job_reads_what_the_first_cached_and_trained_on():
    run = subprocess.run([sys.executable, str(EXAMPLE), "--rows", "20000", "--epochs", "2"], capture_output=True,
                         text=True, timeout=600, env=os.environ.copy())
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "epoch 1: loss" in run.stdout
    sums = re.findall(r"job: 20,000 rows, label sum (\S+)", run.stdout)
    assert len(sums) == 2 and sums[0] == sums[1], run.stdout
