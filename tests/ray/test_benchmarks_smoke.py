"""Each benchmark still runs end to end at its ``--small`` size (numbers are not checked:
benchmarks are not tests), so a benchmark the docs show cannot silently break. Each starts its
own local cluster in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"

pytestmark = pytest.mark.ray

# Every script a user runs as a benchmark; the soak prints broken promises, not ratios.
SCRIPTS = ["bench_compression_memory.py", "bench_data.py", "bench_first_read.py", "bench_http.py", "bench_large.py",
           "bench_replicas.py", "bench_scale.py", "bench_small.py", "bench_sort.py", "bench_spill.py", "soak.py"]


def test_every_benchmark_script_is_smoke_tested():
    scripts = sorted(p.name for p in BENCH.glob("*.py") if p.name.startswith("bench_") or p.name == "soak.py")
    assert scripts == sorted(SCRIPTS)


def test_bench_extra_installs_what_the_benchmarks_import():
    # common.py reads the object stores' statistics through a Ray API that needs grpc,
    # which only ray[default] installs: without it `python benchmarks/bench_sort.py` fails
    # in a fresh virtualenv after `bash benchmarks/setup.sh`.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    ray_extras = {e.strip() for req in extras["bench"] if req.startswith("ray[")
                  for e in req[4:req.index("]")].split(",")}
    assert {"default", "data"} <= ray_extras


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_at_its_small_size(script, tmp_path):
    run = subprocess.run(
        [sys.executable, script, "--small"], cwd=BENCH, capture_output=True, text=True, timeout=600,
        env={**os.environ, "SHOVELING_BENCH_RESULTS": str(tmp_path)},
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    if script == "soak.py":
        assert "done: " in run.stdout and " 0 broken promises" in run.stdout
    else:
        assert " ratio " in run.stdout
        assert list(tmp_path.glob("*.json"))
