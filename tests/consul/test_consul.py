"""Consul orchestration against real agents: a server on 127.0.0.1 and clients on 127.0.0.2
and 127.0.0.3, each paired with one Ray node through CONSUL_HTTP_ADDR (one set-up a module)."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import time

import pytest
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import shoveling_ray as sr
from shoveling_ray.membership.consul import CHECK_TTL, ConsulAgent, parse_address, resolve
from shoveling_ray.membership.registration import BEAT_INTERVAL
from tests.conftest import start_cluster, stop_cluster, wait_for
from tests.consul_agents import ConsulAgents, http_json

pytestmark = pytest.mark.consul
SERVICE = "shoveling-worker"
# The agents' node meta: the copies of the ids go to both zones.
ZONES = ["zone-a", "zone-a", "zone-b"]


@pytest.fixture(scope="module")
def agents():
    a = ConsulAgents(clients=2, zones=ZONES).start()
    yield a
    a.stop()


@pytest.fixture(scope="module")
def cluster(agents):
    c = start_cluster([{"num_cpus": 1, "env_vars": {"CONSUL_HTTP_ADDR": a.http}} for a in agents.agents])
    yield c
    stop_cluster(c)


@ray.remote(num_cpus=0)
def consul_addr_here():
    import os

    return os.environ.get("CONSUL_HTTP_ADDR")


@pytest.fixture(scope="module")
def pairing(cluster, agents):
    """Ray node id -> the Consul node name of the agent its processes see in CONSUL_HTTP_ADDR."""
    by_addr = {a.http: a.name for a in agents.agents}
    out = {}
    for node in ray.nodes():
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        out[node["NodeID"]] = by_addr[ray.get(consul_addr_here.options(scheduling_strategy=strategy).remote())]
    assert sorted(out.values()) == sorted(by_addr.values())
    return out


def instances(agents, cache_name, passing=None):
    """{ray_node_id: (consul node, status)} of a cache's instances, from the server's catalog."""
    query = f"/v1/health/service/{SERVICE}?tag={cache_name}" + ("&passing=1" if passing else "")
    out = {}
    for e in http_json(agents.server.http, query):
        status = "passing" if all(c["Status"] == "passing" for c in e["Checks"]) else "critical"
        out[e["Service"]["Meta"]["ray_node_id"]] = (e["Node"]["Node"], status, e["Service"])
    return out


def dig_records(ip="127.0.0.1"):
    out = subprocess.run(
        ["dig", f"@{ip}", "-p", "8600", f"{SERVICE}.service.consul", "SRV", "+short"],
        check=True, capture_output=True, text=True, timeout=20,
    )
    return [line for line in out.stdout.splitlines() if line.strip()]


# -- turning it on ---------------------------------------------------------------------------


def test_address_parsing_and_required_consul_errors(cluster):
    assert parse_address("10.0.0.1:8500") == ("http", "10.0.0.1", 8500)
    assert parse_address("https://consul.local") == ("https", "consul.local", 8501)
    assert parse_address("http://h:1234/") == ("http", "h", 1234)
    for bad in ("", "ftp://h:1", "h:notaport", "http://h:1/v1/x"):
        with pytest.raises(ValueError):
            parse_address(bad)
    with pytest.raises(sr.ConsulError, match="127.0.0.9:8500"):
        sr.Cache("required", consul="127.0.0.9:8500")
    with pytest.raises(TypeError):
        sr.Cache("required", consul=8500)


def test_auto_finds_the_local_agent_and_false_turns_it_off(cluster, agents):
    assert resolve(None).address == "http://127.0.0.1:8500"
    assert resolve(False) is None
    off = sr.Cache("no-consul", consul=False)
    try:
        off.set("a", b"1")
        assert instances(agents, "no-consul") == {}
    finally:
        off.close()


# -- membership and health -------------------------------------------------------------------


def test_each_actor_registers_on_its_own_nodes_agent_and_passes(cluster, agents, pairing):
    cache = sr.Cache("reg")
    try:
        seen = instances(agents, "reg")
        assert set(seen) == set(cache.nodes()) == set(pairing)
        for ray_node, (consul_node, status, service) in seen.items():
            assert consul_node == pairing[ray_node]
            assert status == "passing"
            assert service["Meta"] == {"ray_node_id": ray_node, "cache": "reg"}
            assert "reg" in service["Tags"]
        # the heartbeat keeps it passing past the TTL: watch every check stay passing until each
        # actor has beaten for longer than one TTL since it registered
        beats_past_ttl = CHECK_TTL / BEAT_INTERVAL + 2

        def beaten_past_ttl():
            assert {s for _, s, _ in instances(agents, "reg").values()} == {"passing"}
            return all(s["consul"]["beats"] >= beats_past_ttl for s in cache.stats().values())

        wait_for(beaten_past_ttl, timeout=6 * CHECK_TTL, interval=0.5, what="heartbeats past one TTL")
        # one instance per actor: registering again (a second opener) does not duplicate
        sr.Cache("reg")
        assert len(http_json(agents.server.http, f"/v1/health/service/{SERVICE}?tag=reg")) == 3
    finally:
        cache.close()
    assert instances(agents, "reg") == {}  # close() deregisters


def test_dns_lists_one_record_per_live_actor(cluster, agents):
    cache = sr.Cache("dns")
    try:
        wait_for(lambda: len(dig_records()) == 3, timeout=20, what="3 SRV records")
        victim = cache.nodes()[1]
        ray.kill(cache._router.members[victim])
        wait_for(lambda: len(dig_records()) == 2, timeout=3 * CHECK_TTL, what="the SRV count to drop")
    finally:
        cache.close()


def test_killed_actor_turns_critical_within_ttl_and_is_reported(cluster, agents):
    cache = sr.Cache("dead")
    try:
        placed = cache.init([f"d{i}" for i in range(9)])
        victim = sorted(set(placed.values()))[-1]
        ids = [i for i, n in placed.items() if n == victim]
        for i in placed:
            cache.append(i, b"x")
        ray.kill(cache._router.members[victim])
        killed = time.monotonic()
        wait_for(lambda: instances(agents, "dead")[victim][1] == "critical", timeout=3 * CHECK_TTL,
                 what="the instance to turn critical")
        print(f"critical {time.monotonic() - killed:.1f}s after the kill (TTL {CHECK_TTL}s)")  # no timed assert
        wait_for(lambda: cache._calls.consul.critical(victim), timeout=10, what="the client to see it")
        with pytest.raises(sr.NodeUnavailable) as err:
            cache.get(ids[0])
        assert err.value.node_id == victim
        others = [i for i, n in placed.items() if n != victim]
        assert cache.get_many(others) == {i: b"x" for i in others}
    finally:
        cache.close()


def test_removed_ray_node_leaves_routing(cluster, agents, pairing):
    node = cluster.add_node(num_cpus=1, env_vars={"CONSUL_HTTP_ADDR": agents.agents[2].http})
    cluster.wait_for_nodes()
    cache = sr.Cache("gone")
    try:
        placed = cache.init([f"g{i}" for i in range(8)])
        assert node.node_id in placed.values()
        assert instances(agents, "gone")[node.node_id][1] == "passing"
        on_it = [i for i, n in placed.items() if n == node.node_id]
        cluster.remove_node(node)
        removed = time.monotonic()
        wait_for(lambda: cache._calls.consul.critical(node.node_id), timeout=3 * CHECK_TTL, what="critical")
        print(f"removed node critical after {time.monotonic() - removed:.1f}s")
        with pytest.raises(sr.DataLost) as err:  # Ray reported the death: the coordinator followed it
            cache.get(on_it[0])
        assert err.value.node_id == node.node_id
        wait_for(lambda: (cache._calls.refresh(), node.node_id not in cache.nodes())[1], timeout=60,
                 what="Ray to drop the node")
        print(f"removed node out of routing after {time.monotonic() - removed:.1f}s")
        assert node.node_id not in cache.init(["after-removal"]).values()
    finally:
        cache.close()


def test_a_killed_nodes_instance_turns_critical_and_its_ids_are_served_by_the_copies(cluster, agents):
    node = cluster.add_node(num_cpus=1, env_vars={"CONSUL_HTTP_ADDR": agents.agents[2].http})
    cluster.wait_for_nodes()
    cache = sr.Cache("copies", replicas=2)
    try:
        values = {f"c{i}": f"v{i}".encode() for i in range(60)}
        cache.set_many(values)
        placed = cache.init([f"p{i}" for i in range(12)])
        for cache_id in placed:
            cache.append(cache_id, cache_id.encode())
        values.update({i: i.encode() for i in placed})
        assert any(cache.node_id(i) == node.node_id for i in values)
        cluster.remove_node(node, allow_graceful=False)  # SIGKILL: Ray notices after 13-16 s here
        removed = time.monotonic()
        wait_for(lambda: instances(agents, "copies")[node.node_id][1] == "critical", timeout=3 * CHECK_TTL,
                 what="the instance to turn critical")
        wait_for(lambda: cache._calls.consul.critical(node.node_id), timeout=10, what="the client to see it")
        critical = time.monotonic() - removed
        assert cache.get_many(list(values)) == values  # the copies answer
        ray_alive = any(n["NodeID"] == node.node_id and n["Alive"] for n in ray.nodes())
        print(f"critical {critical:.1f}s after SIGKILL; every id read from the copies "
              f"{time.monotonic() - removed:.1f}s after it (Ray still reports the node alive: {ray_alive})")

        def rebuilt() -> bool:
            try:
                return sum(s["under_replicated"] for s in cache.stats().values()) == 0
            except sr.NodeUnavailable:
                return False  # Ray has not dropped the node yet

        wait_for(rebuilt, timeout=120, what="the missing copies to be rebuilt")
        print(f"copies rebuilt {time.monotonic() - removed:.1f}s after the kill")
        assert all(node.node_id not in cache.node_ids(i) and len(cache.node_ids(i)) == 2 for i in values)
        assert cache.get_many(list(values)) == values
    finally:
        cache.close()


@ray.remote(num_cpus=1)
def consul_footprint(cache, cache_id: str, port: int) -> tuple:
    """Use a handle the way a task does; then this worker's Consul threads and connections."""
    import os
    import threading

    import psutil

    cache.node_id(cache_id)  # health-aware: needs this process's Consul view
    threads = sum(t.name.startswith("shoveling-health") and t.is_alive() for t in threading.enumerate())
    conns = sum(1 for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port == port)
    return os.getpid(), threads, conns


def test_the_second_copy_goes_to_the_other_consul_zone(cluster, agents, pairing):
    """No Ray node label names a zone here; each agent's node meta ``zone`` does (two nodes
    in zone-a, one in zone-b): every id's two copies are in different zones, so either zone can
    die without losing an id. (Rendezvous order alone puts both copies in zone-a for about a
    third of the slots.)"""
    zone_of = {agent.name: zone for agent, zone in zip(agents.agents, ZONES)}
    cache = sr.Cache("zones", replicas=2)
    try:
        assert cache._router.view.consul is not None
        ids = [f"z/{i}" for i in range(300)]
        cache.set_many({i: b"x" for i in ids})
        placed = cache.init([f"zi/{i}" for i in range(100)])
        for cache_id in ids + list(placed):
            holders = cache.node_ids(cache_id)
            assert len(holders) == 2
            assert {zone_of[pairing[n]] for n in holders} == {"zone-a", "zone-b"}, cache_id
    finally:
        cache.close()


def test_a_worker_running_many_tasks_keeps_one_consul_watcher(cluster, agents):
    cache = sr.Cache("threads")
    try:
        node = cache.nodes()[0]
        on_one_node = consul_footprint.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
        port = cache._router.view.consul.port
        seen = ray.get([on_one_node.remote(cache, f"t{i}", port) for i in range(500)])
        by_worker: dict = {}
        for pid, threads, conns in seen:
            by_worker.setdefault(pid, []).append((threads, conns))
        print({pid: (len(v), max(v)) for pid, v in by_worker.items()})
        assert max(len(v) for v in by_worker.values()) >= 100  # workers really ran many tasks each
        assert all(threads == 1 for v in by_worker.values() for threads, _ in v)
        assert max(conns for v in by_worker.values() for _, conns in v) <= 2  # the watch + one request
    finally:
        cache.close()


def test_http_endpoint_port_is_in_the_srv_records_and_serves_the_bytes(cluster, agents):
    import urllib.request

    cache = sr.Cache("webc", http=True)
    try:
        endpoints = cache.endpoints()
        ports = {int(url.rsplit(":", 1)[1]) for url in endpoints.values()}
        srv_ports = lambda: {int(line.split()[2]) for line in dig_records()}  # noqa: E731
        wait_for(lambda: srv_ports() == ports, timeout=20, what="SRV records naming the HTTP ports")
        # both checks (TTL and HTTP /v1/health) pass on every instance
        wait_for(lambda: all(len(e["Checks"]) == 3 and all(c["Status"] == "passing" for c in e["Checks"])
                             for e in http_json(agents.server.http, f"/v1/health/service/{SERVICE}?tag=webc")),
                 timeout=30, what="the HTTP checks to pass")
        node = cache.nodes()[0]
        cache_id = next(i for i in (f"w{k}" for k in range(10_000)) if cache.node_id(i) == node)
        cache.set(cache_id, b"served over http")
        with urllib.request.urlopen(f"{endpoints[node]}/v1/caches/webc/ids/{cache_id}", timeout=10) as response:
            assert response.read() == b"served over http"
    finally:
        cache.close()


def test_http_endpoint_follows_the_kv_key(cluster, agents):
    cache = sr.Cache("webkv")
    kv = ConsulAgent(resolve("127.0.0.1:8500"))
    try:
        assert cache.endpoints() == {}
        kv.kv_put("shoveling/webkv/config/http", "on")
        wait_for(lambda: set(cache.endpoints()) == set(cache.nodes()), timeout=15, what="endpoints on from KV")
        kv.kv_put("shoveling/webkv/config/http", "maybe")  # malformed: ignored, stays on
        node = cache.nodes()[0]
        kv.kv_put(f"shoveling/webkv/node/{instances(agents, 'webkv')[node][0]}/config/http", "off")
        wait_for(lambda: node not in cache.endpoints(), timeout=15, what="the node key to turn one off")
        assert set(cache.endpoints()) == set(cache.nodes()) - {node}  # "maybe" changed nothing
        kv.kv_delete("shoveling/webkv/config/http")
        kv.kv_delete(f"shoveling/webkv/node/{instances(agents, 'webkv')[node][0]}/config/http")
        wait_for(lambda: cache.endpoints() == {}, timeout=15, what="fallback to the cache's setting (off)")
    finally:
        cache.close()


# -- configuration from KV -------------------------------------------------------------------


def test_kv_config_is_followed_live(cluster, agents, pairing):
    cache = sr.Cache("kv", compression=None, eviction="reject")
    kv = ConsulAgent(resolve("127.0.0.1:8500"))
    try:
        kv.kv_put("shoveling/kv/config/max-memory", "1000")
        wait_for(lambda: all(s["limit"] == 1000 for s in cache.stats().values()), timeout=15, what="limit 1000")
        with pytest.raises(sr.CacheFull):
            cache.set("a", b"x" * 2000)
        kv.kv_put("shoveling/kv/config/max-memory", "100000")
        wait_for(lambda: all(s["limit"] == 100000 for s in cache.stats().values()), timeout=15, what="limit up")
        cache.set("a", b"x" * 2000)
        # malformed: logged and ignored, the previous value stays in force. Node keys written
        # after them show when each actor has read them: the actors read the tree in order.
        kv.kv_put("shoveling/kv/config/max-memory", "lots")
        kv.kv_put("shoveling/kv/config/eviction", "random")
        for node, consul_node in pairing.items():
            kv.kv_put(f"shoveling/kv/node/{consul_node}/config/max-memory", "1500")
        wait_for(lambda: all(s["limit"] == 1500 for s in cache.stats().values()), timeout=15, what="node overrides")
        assert all(s["policy"] == "reject" for s in cache.stats().values())  # "random" ignored
        # a node key overrides the cache-wide one on that node only; without it the last valid
        # cache-wide value (not "lots") applies again
        holder = cache.node_ids("a")[0]
        for node, consul_node in pairing.items():
            if node != holder:
                kv.kv_delete(f"shoveling/kv/node/{consul_node}/config/max-memory")
        wait_for(lambda: all(s["limit"] == 100000 for n, s in cache.stats().items() if n != holder), timeout=15,
                 what="fallback to the last valid cache-wide value")
        assert cache.stats()[holder]["limit"] == 1500
        # below current usage under reject: nothing lost, new bytes refused
        assert cache.get("a") == b"x" * 2000
        with pytest.raises(sr.CacheFull):
            cache.append("a", b"y")
        # switching to lru applies the policy at once: evicts down to the limit
        kv.kv_put(f"shoveling/kv/node/{pairing[holder]}/config/eviction", "lru")
        wait_for(lambda: cache.stats()[holder]["evictions"] == 1, timeout=15, what="eviction")
        assert not cache.exists("a")
        kv.kv_delete(f"shoveling/kv/node/{pairing[holder]}/config/max-memory")
        wait_for(lambda: cache.stats()[holder]["limit"] == 100000, timeout=15, what="fallback to cache-wide")
    finally:
        kv.kv_delete("shoveling/kv/config/max-memory")
        cache.close()


def test_kv_eviction_spill_and_max_disk_are_followed_live(cluster, agents, pairing):
    cache = sr.Cache("kv-spill", max_memory=50_000, eviction="reject", compression=None)
    kv = ConsulAgent(resolve("127.0.0.1:8500"))
    try:
        holder = cache.nodes()[0]
        ids = [i for i in (f"s{k}" for k in range(1000)) if cache.node_id(i) == holder][:6]
        values = {i: os.urandom(20_000) for i in ids}
        kv.kv_put("shoveling/kv-spill/config/eviction", "spill")
        kv.kv_put("shoveling/kv-spill/config/max-disk", "60000")
        wait_for(lambda: all(s["policy"] == "spill" and s["disk_limit"] == 60_000 for s in cache.stats().values()),
                 timeout=15, what="eviction=spill and max-disk from KV")
        for cache_id in ids[:5]:  # 100 KB into 50 KB of memory: spilled, not refused
            cache.set(cache_id, values[cache_id])
        assert cache.stats()[holder]["spilled_ids"] >= 2
        with pytest.raises(sr.CacheFull, match="max_disk"):
            cache.set(ids[5], values[ids[5]])
        kv.kv_put("shoveling/kv-spill/config/max-disk", "200000")
        wait_for(lambda: cache.stats()[holder]["disk_limit"] == 200_000, timeout=15, what="max-disk raised")
        cache.set(ids[5], values[ids[5]])
        assert cache.get_many(ids) == values
    finally:
        for key in ("eviction", "max-disk"):
            kv.kv_delete(f"shoveling/kv-spill/config/{key}")
        cache.close()


# -- coordinates -----------------------------------------------------------------------------


def inject(agents, coords):
    for node, vec in coords.items():
        coord = {"Vec": list(vec) + [0.0] * (8 - len(vec)), "Error": 0.1, "Adjustment": 0.0, "Height": 1e-5}
        http_json(agents.server.http, "/v1/coordinate/update", "PUT", {"Node": node, "Coord": coord})


def visible(agents, coords):
    nodes = {n["Node"]: n["Coord"]["Vec"][: 2] for n in http_json(agents.server.http, "/v1/coordinate/nodes")}
    return all(nodes.get(node) == list(vec) for node, vec in coords.items())


def inject_until_visible(agents, coords, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        inject(agents, coords)
        for _ in range(20):
            if visible(agents, coords):
                return
            time.sleep(0.25)
    pytest.fail("injected coordinates never became visible")


def test_rtt_matches_consul_rtt(cluster, agents):
    coords = {"consul-1": (0.0, 0.0), "consul-2": (0.003, 0.004), "consul-3": (0.05, 0.0)}
    inject_until_visible(agents, coords)
    cache = sr.Cache("rtt")
    try:
        nodes = {consul: ray for ray, (consul, _s, _x) in instances(agents, "rtt").items()}
        wait_for(lambda: cache._calls.consul.consul_node(nodes["consul-2"]) is not None, timeout=15, what="health view")
        inject_until_visible(agents, coords)
        ours = cache._calls.consul.distance(nodes["consul-1"], nodes["consul-2"])
        printed = agents.rtt_cli("consul-1", "consul-2")
        ms = float(re.search(r"rtt: ([0-9.]+) ms", printed).group(1))
        assert ours * 1000 == pytest.approx(ms, abs=0.0015), printed
        assert ours == pytest.approx(0.005 + 2e-5)
    finally:
        cache.close()


def test_scores_and_node_id_follow_coordinates(cluster, agents):
    cache = sr.Cache("near")
    try:
        by_consul = {consul: ray for ray, (consul, _s, _x) in instances(agents, "near").items()}
        holder = by_consul["consul-1"]
        near, far = by_consul["consul-2"], by_consul["consul-3"]
        cache_id = next(i for i in (f"n{k}" for k in range(10_000)) if cache.node_id(i) == holder)
        cache.set(cache_id, b"data")
        wait_for(lambda: cache._calls.consul.consul_node(far) is not None, timeout=15, what="health view")

        def ranking():
            scores = {n: cache._node_cache_score(n, cache_id) for n in cache.nodes()}
            return sorted(scores, key=scores.get), scores

        layout = {"consul-1": (0.0, 0.0), "consul-2": (0.002, 0.0), "consul-3": (0.2, 0.0)}
        inject_until_visible(agents, layout)
        order, scores = wait_for(lambda: (r := ranking())[0] == [holder, near, far] and r, timeout=10, what="rank")
        assert scores[holder] == 0.0 and scores[near] == pytest.approx(0.002 + 2e-5, rel=1e-3)
        assert cache.node_id(cache_id) == holder
        # the coordinates move: the ranking follows within seconds
        moved = {"consul-1": (0.0, 0.0), "consul-2": (0.3, 0.0), "consul-3": (0.001, 0.0)}
        inject_until_visible(agents, moved)
        wait_for(lambda: ranking()[0] == [holder, far, near], timeout=10, what="the new ranking")
        # the holder's actor dies: node_id prefers the nearest passing node
        ray.kill(cache._router.members[holder])
        wait_for(lambda: cache._calls.consul.critical(holder), timeout=3 * CHECK_TTL, what="critical holder")
        inject_until_visible(agents, moved)
        assert cache.node_id(cache_id) == far
        assert not math.isinf(cache._node_cache_score(far, cache_id))
    finally:
        cache.close()


# -- Consul going away -----------------------------------------------------------------------


def test_agent_down_cache_serves_and_reregisters_when_back(cluster, agents, pairing):
    cache = sr.Cache("outage")
    agent = agents.agents[2]
    ray_node = next(r for r, c in pairing.items() if c == agent.name)
    try:
        ids = [i for i in (f"o{k}" for k in range(10_000)) if cache.node_id(i) == ray_node][:3]
        cache.set(ids[0], b"before")
        agent.stop()
        cache.set(ids[1], b"during")
        assert cache.get(ids[0]) == b"before" and cache.get(ids[1]) == b"during"
        # the actor has noticed (its heartbeat fails) and serves on
        wait_for(lambda: cache.stats()[ray_node]["consul"]["error"], timeout=20, what="the heartbeat to fail")
        assert cache.get_many(ids[:2]) == {ids[0]: b"before", ids[1]: b"during"}
        shutil.rmtree(agent.data_dir)  # the agent comes back having forgotten the registration
        agent.start()
        restarted = time.monotonic()
        wait_for(lambda: instances(agents, "outage", passing=True).get(ray_node), timeout=60,
                 what="the actor to re-register")
        print(f"re-registered {time.monotonic() - restarted:.1f}s after the agent restarted")
        cache.set(ids[2], b"after")
        assert cache.get(ids[2]) == b"after"
    finally:
        cache.close()
