"""Handles and settings on one Ray node: ``with``, ``attach``, ``configure``, the refusal to
reconfigure a running cache on open, and deadlines (a hung actor, a ``close`` that cannot
finish). One Ray instance for the module."""

from __future__ import annotations

import os
import pickle
import time

import pytest
import ray

import shoveling_ray as sr
import shoveling_ray.client.lifecycle as lifecycle
from shoveling_ray.actors.coordinator import running_caches
from tests.conftest import MB, module_cluster

pytestmark = pytest.mark.ray

cluster = module_cluster([{"num_cpus": 2, "object_store_memory": 200 * MB}])


def limits(cache: sr.Cache) -> set:
    return {(s["limit"], s["policy"], s["replicas"]) for s in cache.stats().values()}


def test_a_with_block_closes_the_cache(cluster):
    with sr.Cache("ctx", consul=False) as cache:
        cache.set("a", b"1")
        assert "ctx" in running_caches()
    assert "ctx" not in running_caches()
    with pytest.raises(sr.CacheClosed):
        cache.get("a")


def test_a_with_block_left_by_an_exception_closes_the_cache_too(cluster):
    with pytest.raises(KeyError), sr.Cache("ctx-error", consul=False) as cache:
        cache.get("absent")  # CacheMiss is a KeyError
    assert "ctx-error" not in running_caches()


def test_attach_to_an_unknown_name_is_an_error_naming_the_running_caches(cluster):
    with sr.Cache("known", consul=False):
        with pytest.raises(sr.CacheNotFound, match=r"no running cache named 'unknown' \(running caches: .*known") as info:
            sr.Cache.attach("unknown")
        assert isinstance(info.value, ValueError) and "known" in info.value.running
    assert "unknown" not in running_caches()  # attach started nothing


def test_attach_sees_the_running_cache_and_changes_nothing(cluster):
    with sr.Cache("attached", max_memory=3 * MB, eviction="reject", consul=False) as first:
        first.set("k", b"value")
        other = sr.Cache.attach("attached", timeout=30)
        assert other.get("k") == b"value" and other.nodes() == first.nodes() and other.timeout == 30
        assert limits(other) == {(3 * MB, "reject", 1)}


def test_a_running_cache_refuses_other_settings_on_open_and_configure_changes_them(cluster):
    with sr.Cache("settings", max_memory=2 * MB, eviction="reject", consul=False) as cache:
        assert limits(cache) == {(2 * MB, "reject", 1)}  # a new cache takes what it is given
        assert sr.Cache("settings", max_memory=2 * MB, eviction="reject").nodes() == cache.nodes()  # same: fine
        with pytest.raises(ValueError, match=r"max_memory=2097152 \(given: 5242880\).*configure\(max_memory=5242880\)"):
            sr.Cache("settings", max_memory=5 * MB)
        with pytest.raises(ValueError, match="replicas=1 .given: 2."):
            sr.Cache("settings", replicas=2)
        assert limits(cache) == {(2 * MB, "reject", 1)}  # nothing changed
        big = os.urandom(3 * MB)  # does not compress
        with pytest.raises(sr.CacheFull):
            cache.set("big", big)

        sr.Cache.attach("settings").configure(max_memory=5 * MB, eviction="lru", replicas=2)
        assert limits(cache) == {(5 * MB, "lru", 2)}  # every handle sees it
        cache.set("big", big)
        assert sr.Cache("settings", max_memory=5 * MB, replicas=2).get("big") == big

        assert cache.endpoints() == {}
        cache.configure(http=True)
        assert set(cache.endpoints()) == set(cache.nodes())
        cache.configure(http=False)
        assert cache.endpoints() == {}
        cache.configure(max_memory=None)  # back to the default: the node's object store capacity
        assert all(s["limit"] > 5 * MB for s in cache.stats().values())


@ray.remote(num_cpus=0)
class Hung:
    """Stands in for a node actor that stopped answering."""

    def batch(self, *args):
        time.sleep(3600)


@ray.remote(num_cpus=0)
def timeout_of(cache: sr.Cache) -> float:
    return cache.timeout


def test_a_call_to_a_hung_actor_raises_node_unavailable_naming_it_at_the_handles_deadline(cluster):
    with sr.Cache("hung", consul=False, timeout=60) as cache:
        cache.set("k", b"v")
        node = cache.nodes()[0]
        assert ray.get(timeout_of.remote(cache)) == 60  # a pickled handle keeps its timeout
        hung = Hung.remote()
        cache._router.members[node] = hung  # the member's actor now never answers
        cache.timeout = 1
        with pytest.raises(sr.NodeUnavailable, match="did not answer within 1 s") as info:
            cache.get("k")
        assert info.value.node_id == node and info.value.cache_ids == ["k"]
        ray.kill(hung)
        cache._calls.refresh()  # the coordinator's view: the real actor again
        assert cache.get("k") == b"v"


def test_a_close_that_cannot_finish_raises(cluster, monkeypatch):
    cache = sr.Cache("unclosable", consul=False)
    coordinator = cache._coordinator
    # the name stays with this cache's coordinator, as if Ray never let it go
    monkeypatch.setattr(lifecycle, "find_coordinator", lambda name: coordinator)
    with pytest.raises(sr.ShovelingError, match="did not finish within 0.5 s"):
        cache.close(timeout=0.5)
    monkeypatch.undo()
    deadline = time.monotonic() + 60
    while "unclosable" in running_caches() and time.monotonic() < deadline:
        time.sleep(0.1)  # it was killed all the same
    assert "unclosable" not in running_caches()


def test_a_handle_pickles_with_its_timeout(cluster):
    with sr.Cache("pickled", consul=False, timeout=12.5) as cache:
        assert pickle.loads(pickle.dumps(cache)).timeout == 12.5


def test_a_copied_handle_is_a_handle_of_its_own(cluster):
    """``copy.copy(cache)`` gives a handle as a pickled one is: its own timeout and routing."""
    import copy

    with sr.Cache("copied", consul=False, timeout=12.5) as cache:
        cache.set("a", b"1")
        twin = copy.copy(cache)
        twin.timeout = 3.0
        assert cache.timeout == 12.5 and twin.timeout == 3.0
        assert twin._router is not cache._router and twin.get("a") == b"1"
