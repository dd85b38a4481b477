"""One Ray node, started by shoveling_ray itself when the caller has not initialised Ray."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.ray

SCRIPT = textwrap.dedent(
    """
    import ray
    import shoveling_ray as sr
    assert not ray.is_initialized()
    cache = sr.Cache("auto")
    assert ray.is_initialized()
    placed = cache.init(["a", "b"])
    cache.append("a", b"x")
    node = ray.get_runtime_context().get_node_id()
    assert set(placed.values()) == {node} == set(cache.nodes())
    print("OK", cache.get("a"), cache.get("b"))
    cache.close()
    ray.shutdown()
    """
)


def test_cache_calls_ray_init_when_ray_is_not_initialised():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "OK b'x' b''" in run.stdout
