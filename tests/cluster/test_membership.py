"""Members come and go: a node joining, a node dying, an actor killed (one cluster)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
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


def test_a_dead_node_loses_only_its_data_and_says_so(cluster):
    extra = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    cache = sr.Cache("shrink", http=True)
    victim = extra.node_id
    # ids whose home is the victim alternate with others: init's evenly interleaved placement
    # then puts some of each kind on the victim and some elsewhere, whatever the slot table
    names = [f"d{i}" for i in range(2_000)]
    homed = [i for i in names if cache._router.home(i) == victim][:30]
    other = [i for i in names if cache._router.home(i) != victim][:30]
    placed = cache.init([i for pair in zip(homed, other) for i in pair])
    homes = {i: cache._router.home(i) for i in placed}
    on_victim = [i for i, n in placed.items() if n == victim]
    elsewhere = [i for i, n in placed.items() if n != victim]
    assert any(homes[i] == victim for i in elsewhere)  # the directory must mend
    assert any(homes[i] == victim for i in on_victim)  # known lost through the backup home
    for i in placed:
        cache.append(i, i.encode())
    cluster.remove_node(extra)
    wait_for(lambda: victim not in alive(), what="Ray to mark the node dead")
    # data on live nodes stays readable, also where its home was the dead node: a new handle
    # knows no placements and asks the (new) homes
    reader = sr.Cache("shrink")
    assert victim not in reader.nodes()
    assert reader.get_many(elsewhere) == {i: i.encode() for i in elsewhere}
    assert cache.get_many(elsewhere) == {i: i.encode() for i in elsewhere}
    with pytest.raises(sr.DataLost) as err:
        cache.get(on_victim[0])  # the old handle: its remembered placement is on the dead node
    assert err.value.cache_id == on_victim[0] and err.value.node_id == victim
    with pytest.raises(sr.DataLost):
        cache.get(on_victim[0], None)  # a default does not hide a loss
    with pytest.raises(sr.DataLost):
        cache.get_many(on_victim[:2], None)
    with pytest.raises(sr.DataLost):
        cache.size(on_victim[0])
    with pytest.raises(sr.DataLost):
        cache.append(on_victim[0], b"more")
    assert cache.lost_ids() == sorted(on_victim)
    home_url = reader.endpoints()[reader._router.home(on_victim[0])]
    with pytest.raises(urllib.error.HTTPError) as gone:
        urllib.request.urlopen(f"{home_url}/v1/caches/shrink/ids/{on_victim[0]}", timeout=10)
    assert gone.value.code == 410  # its home answers "gone" over HTTP too
    assert sum(s["lost"] for s in cache.stats().values()) == len(on_victim)
    # set, delete and init clear a loss; init recreates the id empty on a live node
    cache.set(on_victim[0], b"written again")
    assert cache.get(on_victim[0]) == b"written again"
    assert cache.delete(on_victim[1]) and cache.get(on_victim[1], None) is None
    again = cache.init(on_victim[2:])
    assert victim not in again.values() and all(cache.get(i) == b"" for i in on_victim[2:])
    assert cache.lost_ids() == []
    fresh = [f"new{i}" for i in range(50)]
    cache.set_many({i: b"v" for i in fresh})  # hash slots of the dead node moved to survivors
    assert cache.get_many(fresh) == {i: b"v" for i in fresh}
    listed = cache.ids("d")
    assert len(listed) == len(set(listed)) and set(listed) == set(placed) - {on_victim[1]}  # nothing twice
    cache.close()


@ray.remote(num_cpus=0)
def append_numbered(cache: sr.Cache, ids: list[str], count: int) -> int:
    for seq in range(count):
        cache.append(ids[seq % len(ids)], f"{seq};".encode())
    return count


def test_a_drained_node_then_removed_loses_nothing(cluster, tmp_path):
    extra = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    victim = extra.node_id
    # a small max_memory: part of what the victim holds is in its spill files when it drains
    cache = sr.Cache("drain", max_memory=300_000, spill_dir=tmp_path)
    assert victim in cache.nodes()
    # init-placed, records at their homes. init puts an id on its home while the home's share
    # lasts: the victim's share of ids homed elsewhere is their homes' surplus (held there,
    # homed elsewhere), and ids all homed there go past its share (homed there, held elsewhere)
    names = [f"p{i}" for i in range(2000)]
    placed = {**cache.init([i for i in names if cache._router.home(i) != victim][:30]),
              **cache.init([i for i in names if cache._router.home(i) == victim][:30])}
    first = next(iter(placed))
    homes = {i: cache._router.home(i) for i in placed}
    assert any(n == victim != homes[i] for i, n in placed.items())  # held there, homed elsewhere
    assert any(homes[i] == victim != n for i, n in placed.items())  # homed there, held elsewhere
    values = {i: os.urandom(20_000) for i in placed}
    cache.set_many(values)
    own = {f"own{i}": os.urandom(50_000) for i in range(40)}  # set: held on their homes
    cache.set_many(own)
    assert any(homes.get(i, cache._router.home(i)) == victim for i in own)
    assert cache.stats()[victim]["spilled_ids"] > 0
    cache.delete(first)
    tokened = [i for i in (f"tok{k}" for k in range(1000)) if cache.node_id(i) == victim][:3]
    cache.append_many({i: b"once" for i in tokened}, token="before-the-drain")
    # a writer keeps appending to ids, some of them on the victim, while it drains
    logs = [i for i in (f"log{k}" for k in range(1000)) if cache.node_id(i) == victim][:3] + ["log-elsewhere"]
    writer = append_numbered.remote(cache, logs, 1500)
    stale = sr.Cache("drain")  # a handle whose view still names the victim when it calls init
    moved = cache.drain(victim)
    assert ray.get(writer) == 1500
    assert moved > 0 and victim not in cache.nodes() and victim not in sr.Cache("drain").nodes()
    assert victim not in cache.init([f"q{i}" for i in range(30)]).values()
    stale._calls.refresh = lambda: None  # init raced the drain: its refresh came just before it
    late = stale.init([f"late{i}" for i in range(30)])
    assert len(late) == 30 and victim not in late.values() and victim not in stale.nodes()
    cluster.remove_node(extra)
    wait_for(lambda: victim not in alive(), what="Ray to mark the node dead")
    for reader in (cache, sr.Cache("drain")):  # the old handle and one that knows no placements
        assert reader.get_many(list(values)[1:]) == {i: values[i] for i in list(values)[1:]}
        assert reader.get(first, None) is None  # deleted before the drain: stays deleted
        assert reader.get_many(list(own)) == own
        assert reader.lost_ids() == []
    for k, cache_id in enumerate(logs):  # every append once, in order
        assert cache.get(cache_id) == b"".join(f"{s};".encode() for s in range(k, 1500, len(logs)))
    cache.append_many({i: b"again" for i in tokened}, token="before-the-drain")  # a retried writer
    assert cache.get_many(tokened) == {i: b"once" for i in tokened}  # the moved ids kept their tokens
    with pytest.raises(ValueError, match="not a member"):
        cache.drain(victim)
    with pytest.raises(TypeError):
        cache.drain(7)
    cache.close()


def test_a_node_ray_drains_is_drained_by_the_cache_and_let_go(cluster):
    extra = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    victim = extra.node_id
    cache = sr.Cache("ray-drain")
    placed = cache.init([f"r{i}" for i in range(30)])
    assert victim in placed.values()
    values = {i: os.urandom(1000) for i in placed}
    cache.set_many(values)
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    subprocess.run([ray_cli, "drain-node", "--address", cluster.address, "--node-id", victim,
                    "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "test",
                    "--deadline-remaining-seconds", "120"],
                   check=True, capture_output=True, timeout=60, env={**os.environ, "RAY_AUTH_MODE": "token"})
    # the cache moves its ids off the node and stops its actor there; with no actor left, Ray
    # lets the node go long before the deadline
    wait_for(lambda: victim not in alive(), timeout=60, what="the drained node to be let go")
    cluster.remove_node(extra)  # Ray ended it; the Cluster object must forget it too
    assert victim not in sr.Cache("ray-drain").nodes()
    assert cache.get_many(list(values)) == values and cache.lost_ids() == []
    cache.close()


def test_a_killed_actor_is_replaced_and_calls_go_on(cluster):
    cache = sr.Cache("killed")
    node = cache.nodes()[0]
    ids = [i for i in (f"k{n}" for n in range(1000)) if cache.node_id(i) == node][:3]
    cache.set(ids[0], b"gone")
    victim = cache._router.members[node]
    ray.kill(victim)
    wait_until_dead(victim)
    # the call meets the dead actor, the member list gets a fresh one, and the call is retried
    # there: the value lived on its own home, whose backup home kept its name, so it is lost,
    # not missing (also with a default)
    with pytest.raises(sr.DataLost) as err:
        cache.get(ids[0])
    assert (err.value.cache_id, err.value.node_id) == (ids[0], node)
    assert node in cache.nodes()
    assert node_of_actor(cache, node) == node
    cache.set(ids[1], b"new actor serves")
    assert cache.get(ids[1]) == b"new actor serves"
    with pytest.raises(sr.DataLost):
        cache.get(ids[0], None)
    assert cache.lost_ids() == [ids[0]]
    cache.set(ids[0], b"set again")  # clears the loss
    assert cache.get(ids[0]) == b"set again" and cache.lost_ids() == []
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


def test_a_dead_member_does_not_stop_others_from_attaching_and_configuring(cluster):
    extra = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    cache = sr.Cache("prune")
    assert extra.node_id in cache.nodes()
    kept = next(i for i in (f"kept{k}" for k in range(1000)) if cache.node_id(i) != extra.node_id)
    cache.set(kept, b"v")
    cluster.remove_node(extra, allow_graceful=False)  # SIGKILL: Ray notices after a while
    reopened = sr.Cache.attach("prune")
    reopened.configure(max_memory=5 * (1 << 20))  # prunes, then configures
    wait_for(lambda: (reopened._calls.refresh(), extra.node_id not in reopened.nodes())[1], timeout=90,
             what="the dead member to leave")
    assert all(s["limit"] == 5 * (1 << 20) for s in reopened.stats().values())
    assert reopened.get(kept) == b"v"  # data on a live node stays readable
    reopened.close()
