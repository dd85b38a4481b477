"""Each benchmark still runs end to end at a tiny size (numbers are not checked: benchmarks
are not tests). Each starts its own local cluster in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"

pytestmark = pytest.mark.ray


@pytest.mark.parametrize(
    "script,args",
    [
        ("bench_large.py", ["--sizes", "2", "--repeat", "1"]),
        ("bench_small.py", ["--ids", "200", "--appends", "2000", "--repeat", "1"]),
        ("bench_compression_memory.py", ["--size-mb", "2", "--values", "5", "--repeat", "1"]),
        ("bench_sort.py", ["--records", "40000", "--block", "10000"]),
        ("bench_http.py", ["--calls", "20", "--repeat", "1"]),
        ("bench_data.py", ["--rows", "20000", "--blocks", "6", "--repeat", "1", "--object-store-mb", "256"]),
    ],
)
def test_benchmark_runs_at_a_tiny_size(script, args, tmp_path):
    run = subprocess.run(
        [sys.executable, script, *args], cwd=BENCH, capture_output=True, text=True, timeout=600,
        env={**os.environ, "SHOVELING_BENCH_RESULTS": str(tmp_path)},
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert " ratio " in run.stdout
    assert list(tmp_path.glob("*.json"))
