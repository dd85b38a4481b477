"""The client's public surface without a cluster: what ``*_many`` errors carry, ``exists`` of a
lost id, argument checks before Ray is touched, the exports and the packaging.

The :class:`Cache` here routes through a stand-in router that answers with given per-id
statuses, the way the node actors answer (see ``protocol.py``)."""

from __future__ import annotations

import os
import pickle
import re
import tomllib

import pytest

import shoveling_ray as sr
from shoveling_ray import protocol as p
from shoveling_ray.view import View
from shoveling_ray.cache import DEFAULT_TIMEOUT
from shoveling_ray.client.calls import Calls

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FULL = (1000, 900, 200, "")  # (limit, used, needed, reason)


class Answers:
    """A router whose ``run`` answers each id with the status given for it (``OK`` if none)."""

    def __init__(self, statuses: dict[str, tuple]):
        self.statuses = statuses
        self.view = View({}, [])

    def run(self, method, items, *, cached=True, stamp=None):
        return [(*self.statuses.get(item[0], (p.OK, None)), "node-a") for item in items]

    def stamp(self):
        return b"session", 1, 1

    def done(self, stamp):
        pass


def cache_answering(statuses: dict[str, tuple]) -> sr.Cache:
    calls = Calls.__new__(Calls)
    calls.name, calls.coordinator, calls.closed, calls.timeout = "unit", None, False, DEFAULT_TIMEOUT
    calls.router = Answers(statuses)
    cache = sr.Cache.__new__(sr.Cache)
    cache._compression, cache._calls = None, calls
    return cache


def test_set_many_cache_full_carries_every_id_not_stored_and_says_what_was():
    cache = cache_answering({"b": (p.FULL, FULL), "d": (p.FULL, FULL)})
    with pytest.raises(sr.CacheFull) as info:
        cache.set_many({k: b"v" for k in "abcde"})
    assert info.value.ids == ["b", "d"]
    assert info.value.stored == 3
    assert "3 of 5 ids were written, not 'b', 'd'" in str(info.value)
    assert pickle.loads(pickle.dumps(info.value)).ids == ["b", "d"]  # crosses Ray whole


def test_append_many_data_lost_carries_every_lost_id():
    cache = cache_answering({"a": (p.LOST, "dead-node"), "c": (p.LOST, "dead-node"), "b": (p.FULL, FULL)})
    with pytest.raises(sr.DataLost) as info:
        cache.append_many({k: b"v" for k in "abcd"})
    assert info.value.ids == ["a", "c"] and info.value.node_id == "dead-node"
    assert (info.value.stored, info.value.total) == (1, 4)  # 'b' did not fit either
    assert "2 cache ids are lost ('a', 'c')" in str(info.value) and "1 of 4 ids were written" in str(info.value)
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.ids, copy.stored, copy.total) == (["a", "c"], 1, 4)


def test_a_single_write_names_its_id_without_counts():
    with pytest.raises(sr.CacheFull) as info:
        cache_answering({"a": (p.FULL, FULL)}).set("a", b"v")
    assert info.value.ids == ["a"] and info.value.stored is None and "were written" not in str(info.value)


def test_get_many_data_lost_carries_every_lost_id_default_or_not():
    cache = cache_answering({"x": (p.LOST, "n1"), "z": (p.LOST, "n2"), "y": (p.MISS, None)})
    for args in ((), (None,)):
        with pytest.raises(sr.DataLost) as info:
            cache.get_many(["w", "x", "y", "z"], *args)
        assert info.value.ids == ["x", "z"]
        assert info.value.node_id == ""  # two nodes: none named as the one
        assert "2 cache ids are lost ('x', 'z')" in str(info.value)


def test_exists_of_a_lost_id_raises_data_lost_like_get_and_size():
    cache = cache_answering({"lost": (p.LOST, "dead-node"), "gone": (p.MISS, None)})
    for call in (cache.exists, cache.get, cache.size):
        with pytest.raises(sr.DataLost, match="'lost' is lost with node dead-node"):
            call("lost")
    assert cache.exists("here") is True
    assert cache.exists("gone") is False


@pytest.mark.parametrize("kwargs", [{"timeout": 0}, {"timeout": -1.0}, {"timeout": float("inf")}, {"timeout": "5"},
                                    {"replicas": 0}, {"eviction": "fifo"}, {"http": "on"}, {"max_memory": -1}])
def test_bad_arguments_are_refused_before_ray_is_touched(kwargs):
    with pytest.raises((TypeError, ValueError)):
        sr.Cache("unit", **kwargs)
    if "timeout" in kwargs:
        with pytest.raises((TypeError, ValueError)):
            sr.Cache.attach("unit", **kwargs)


def test_the_default_timeout_outlasts_a_slow_but_live_node():
    from shoveling_ray.actors.peers import PEER_TIMEOUT
    from shoveling_ray.actors.storage import SPILL_TIMEOUT

    assert DEFAULT_TIMEOUT > SPILL_TIMEOUT + PEER_TIMEOUT


def test_the_timeout_is_settable_per_handle_and_checked():
    cache = cache_answering({})
    assert cache.timeout == DEFAULT_TIMEOUT
    cache.timeout = 2.5
    assert cache.timeout == 2.5
    with pytest.raises(ValueError):
        cache.timeout = 0


def test_configure_checks_its_values_before_anything_is_sent():
    cache = cache_answering({})  # no coordinator: a call would fail with AttributeError
    with pytest.raises(ValueError, match="eviction"):
        cache.configure(eviction="fifo")
    with pytest.raises(TypeError):
        cache.configure(spill_dir="/tmp")  # fixed while the cache runs: not an argument
    cache.configure()  # nothing to change: nothing sent


def test_cache_not_found_is_a_value_error_naming_the_running_caches():
    error = sr.CacheNotFound("nope", ["a", "b"])
    assert isinstance(error, ValueError) and isinstance(error, sr.ShovelingError)
    assert "no running cache named 'nope'" in str(error) and "a, b" in str(error)
    assert "no cache is running" in str(sr.CacheNotFound("nope"))


def test_the_public_names_are_exported():
    for name in ("Cache", "Shuffle", "BufferedWriter", "NodeDrained", "Stats", "CacheNotFound", "DataLost"):
        assert name in sr.__all__ and getattr(sr, name)
    assert all(hasattr(sr, name) for name in sr.__all__)
    assert sr.Cache._node_cache_score is sr.Cache.node_cache_score


def test_the_package_is_typed_and_has_one_version():
    assert os.path.exists(os.path.join(os.path.dirname(sr.__file__), "py.typed"))
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["shoveling_ray"]
    assert "version" in project["project"]["dynamic"] and "version" not in project["project"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "shoveling_ray.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", sr.__version__)


def test_ray_is_bounded_above_and_the_notebook_extra_installs_the_widgets():
    import ray

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    rays = [d for d in project["dependencies"] if re.match(r"ray\b", d)]
    assert rays and all("<" in d for d in rays)
    extras = project["optional-dependencies"]
    assert all("<" in d for deps in extras.values() for d in deps if re.match(r"ray\b", d))
    assert any(d.startswith("ipywidgets") for d in extras["notebook"])
    # the installed Ray is inside the tested range
    lower, upper = re.search(r">=([\d.]+),<([\d.]+)", rays[0]).groups()
    version = tuple(int(x) for x in ray.__version__.split(".")[:2])
    assert tuple(int(x) for x in lower.split(".")[:2]) <= version < tuple(int(x) for x in upper.split(".")[:2])
