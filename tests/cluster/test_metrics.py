"""The node actors' metrics, scraped with a plain HTTP GET from the Prometheus endpoint that
Ray serves on each node (ray[default] runs the metrics agent), after known operations."""

from __future__ import annotations

import re
import urllib.request

import pytest
import ray

import shoveling_ray as sr
from tests.conftest import module_cluster, wait_for

pytestmark = pytest.mark.cluster

cluster = module_cluster([{"num_cpus": 1}, {"num_cpus": 1}])
_LINE = re.compile(r"^(ray_shoveling_\w+)\{([^}]*)\} (\S+)$")


def scrape(node_id: str, cache: str) -> dict[tuple[str, str], float]:
    """``{(metric, op or ""): value}`` of ``cache`` on ``node_id``, from its node's endpoint."""
    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["NodeID"] == node_id)
    assert port > 0, "no metrics agent on the node: is ray[default] installed?"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
        if labels.get("cache") == cache and labels.get("node") == node_id:
            out[(match.group(1), labels.get("op", ""))] = float(match.group(3))
    return out


def test_metrics_show_what_the_node_holds_and_served(cluster):
    cache = sr.Cache("metered", max_memory=10_000, eviction="lru", compression=None)
    spilling = sr.Cache("metered-spill", max_memory=10_000, compression=None)  # eviction="spill"
    try:
        node = cache.nodes()[0]
        ids = [i for i in (f"m{k}" for k in range(10_000)) if cache.node_id(i) == node][:12]
        cache.set_many({i: b"x" * 100 for i in ids[:10]})  # 1,000 bytes in
        cache.get_many(ids[:10])  # 1,000 bytes out
        cache.append(ids[0], b"y" * 50)
        cache.set(ids[10], b"z" * 6000)  # past the limit: lru evicts
        spilling.set_many({i: b"s" * 4000 for i in ids[:4]})  # past the limit: spills
        stats, spilled = cache.stats()[node], spilling.stats()[node]
        assert stats["evictions"] > 0 and spilled["spills"] > 0 and spilled["disk_used"] >= 4000
        expected = {
            ("metered", "ray_shoveling_ids", ""): stats["ids"],
            ("metered", "ray_shoveling_lost_ids", ""): 0,
            ("metered", "ray_shoveling_bytes_used", ""): stats["used"],
            ("metered", "ray_shoveling_bytes_limit", ""): 10_000,
            ("metered", "ray_shoveling_evictions_total", ""): stats["evictions"],
            ("metered", "ray_shoveling_operations_total", "set"): 11,
            ("metered", "ray_shoveling_operations_total", "get"): 10,
            ("metered", "ray_shoveling_operations_total", "append"): 1,
            ("metered", "ray_shoveling_bytes_in_total", ""): 1000 + 50 + 6000,
            ("metered", "ray_shoveling_bytes_out_total", ""): 1000,
            ("metered-spill", "ray_shoveling_spills_total", ""): spilled["spills"],
            ("metered-spill", "ray_shoveling_disk_bytes_used", ""): spilled["disk_used"],
            ("metered-spill", "ray_shoveling_bytes_used", ""): spilled["used"],
        }

        seen: dict = {}

        def exported() -> bool:
            for name in ("metered", "metered-spill"):
                seen.update({(name, *key): value for key, value in scrape(node, name).items()})
            return {key: seen.get(key) for key in expected} == expected

        try:
            wait_for(exported, timeout=90, interval=1, what="the metrics to be exported")
        finally:
            print({key: seen.get(key) for key in expected})
    finally:
        cache.close()
        spilling.close()
