"""Shared fixtures for the test tiers.

- ``tests/unit``: no Ray at all.
- ``tests/ray``: one local Ray node (or a subprocess that starts its own).
- ``tests/cluster``: several Ray nodes from ``ray.cluster_utils.Cluster``, started once per
  module through :func:`start_cluster`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest
import ray
from ray.cluster_utils import Cluster

MB = 1 << 20
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Ray workers import functions defined in test modules by name (tests.cluster.test_x):
# they inherit this environment from the raylets the tests start.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)


def start_cluster(nodes: list[dict]) -> Cluster:
    """Start a Ray cluster whose first node is the head, and connect this process to it.

    Each dict holds ``Cluster.add_node`` arguments (``num_cpus``, ``object_store_memory``,
    ``env_vars``, ...).
    """
    cluster = Cluster(initialize_head=True, head_node_args=dict(nodes[0]))
    for args in nodes[1:]:
        cluster.add_node(**args)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="shoveling_tests", log_to_driver=False)
    return cluster


def stop_cluster(cluster: Cluster) -> None:
    ray.shutdown()
    cluster.shutdown()


def module_cluster(nodes: list[dict]):
    """A module-scoped ``cluster`` fixture over ``nodes`` (see :func:`start_cluster`)."""

    @pytest.fixture(scope="module")
    def cluster():
        c = start_cluster(nodes)
        yield c
        stop_cluster(c)

    return cluster


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def node_of_actor(cache, node_id: str) -> str:
    """The node a cache's actor for ``node_id`` really runs on (asked from inside it)."""
    return ray.get(cache._router.members[node_id].ping.remote())



def wait_until_dead(actor, timeout: float = 60.0) -> None:
    """Wait until Ray reports ``actor`` dead (``ray.kill`` is asynchronous)."""

    def dead() -> bool:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            return True
        except ray.exceptions.GetTimeoutError:
            pass
        return False

    wait_for(dead, timeout=timeout, what="the killed actor to be dead")
