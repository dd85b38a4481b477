"""Members come and go: a node joining, a node dying, an actor killed (one cluster)."""

from __future__ import annotations

from collections import Counter

import pytest
import ray

import shoveling_ray as sr
from tests.conftest import module_cluster, node_of_actor, wait_for, wait_until_dead

pytestmark = pytest.mark.cluster


cluster = module_cluster([{"num_cpus": 1}, {"num_cpus": 1}, {"num_cpus": 1}])


def alive():
    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def test_a_node_added_later_gets_an_actor_and_takes_part_in_init(cluster):
    cache = sr.Cache("grow")
    assert len(cache.nodes()) == 3
    cache.set("before", b"kept")
    new = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    placed = cache.init([f"g{i}" for i in range(40)])
    assert new.node_id in cache.nodes()
    assert node_of_actor(cache, new.node_id) == new.node_id
    assert Counter(placed.values())[new.node_id] == 10
    assert cache.get("before") == b"kept"  # joining moves no existing id
    cache.append("g0", b"x")
    assert cache.get("g0") == b"x"
    cache.close()


def test_a_dead_node_raises_node_unavailable_then_leaves_routing(cluster):
    cache = sr.Cache("shrink")
    placed = cache.init([f"d{i}" for i in range(30)])
    victim = next(n for n in cluster.worker_nodes if n.node_id in placed.values())
    on_victim = [i for i, n in placed.items() if n == victim.node_id]
    elsewhere = [i for i, n in placed.items() if n != victim.node_id]
    for i in placed:
        cache.append(i, i.encode())
    cluster.remove_node(victim)
    wait_for(lambda: victim.node_id not in alive(), what="Ray to mark the node dead")
    with pytest.raises(sr.NodeUnavailable) as err:
        cache.get(on_victim[0])
    assert err.value.node_id == victim.node_id and on_victim[0] in err.value.cache_ids
    wait_for(lambda: (cache._refresh(), victim.node_id not in cache.nodes())[1], what="the member list to drop the node")
    assert {i: cache.get(i) for i in elsewhere} == {i: i.encode() for i in elsewhere}
    fresh = [f"new{i}" for i in range(50)]
    cache.set_many({i: b"v" for i in fresh})  # hash slots of the dead node moved to survivors
    assert cache.get_many(fresh) == {i: b"v" for i in fresh}
    assert victim.node_id not in set(cache.init([f"after{i}" for i in range(10)]).values())
    cache.close()


def test_a_killed_actor_is_reported_and_replaced(cluster):
    cache = sr.Cache("killed")
    node = cache.nodes()[0]
    ids = [i for i in (f"k{n}" for n in range(1000)) if cache.node_id(i) == node][:3]
    cache.set(ids[0], b"gone")
    victim = cache._router.members[node]
    ray.kill(victim)
    wait_until_dead(victim)
    with pytest.raises(sr.NodeUnavailable):
        cache.get(ids[0])
    assert node in cache.nodes()
    assert node_of_actor(cache, node) == node
    cache.set(ids[1], b"new actor serves")
    assert cache.get(ids[1]) == b"new actor serves"
    assert cache.get(ids[0], None) is None
    cache.close()


def test_closed_cache_raises_cache_closed_everywhere(cluster):
    cache = sr.Cache("closing")
    other = sr.Cache("closing")
    cache.set("a", b"1")
    cache.close()
    cache.close()  # idempotent
    with pytest.raises(sr.CacheClosed):
        cache.get("a")
    with pytest.raises(sr.CacheClosed):
        other.get("a")
    reopened = sr.Cache("closing")  # the name is free again, and the cache is new
    assert reopened.get("a", None) is None
    reopened.close()


def test_close_then_reopen_in_a_loop_always_gets_a_fresh_working_cache(cluster):
    for round_ in range(8):
        cache = sr.Cache("cycle", max_memory=10 * (1 << 20))
        assert cache.get("k", None) is None  # nothing from the previous round
        placed = cache.init([f"c{i}" for i in range(12)])
        assert set(placed.values()) == set(cache.nodes()) == alive()
        cache.set("k", f"round {round_}".encode())
        assert cache.get("k") == f"round {round_}".encode()
        assert all(s["limit"] == 10 * (1 << 20) for s in cache.stats().values())
        cache.close()


def test_a_dead_member_does_not_stop_others_from_opening_with_settings(cluster):
    extra = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    cache = sr.Cache("prune")
    assert extra.node_id in cache.nodes()
    kept = next(i for i in (f"kept{k}" for k in range(1000)) if cache.node_id(i) != extra.node_id)
    cache.set(kept, b"v")
    cluster.remove_node(extra, allow_graceful=False)  # SIGKILL: Ray notices after a while
    reopened = sr.Cache("prune", max_memory=5 * (1 << 20))  # prunes, then configures
    wait_for(lambda: (reopened._refresh(), extra.node_id not in reopened.nodes())[1], timeout=90,
             what="the dead member to leave")
    assert all(s["limit"] == 5 * (1 << 20) for s in reopened.stats().values())
    assert reopened.get(kept) == b"v"  # data on a live node stays readable
    reopened.close()
