"""The shuffle helper and the distributed sort example on three Ray nodes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import ray

import shoveling_ray as sr
from shoveling_ray.shuffle import Shuffle
from tests.conftest import MB, module_cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import distributed_sort as ds  # noqa: E402

# Ray workers cannot import the example by name: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(ds)

pytestmark = pytest.mark.cluster


cluster = module_cluster([{"num_cpus": 1, "object_store_memory": 300 * MB} for _ in range(3)])


@pytest.fixture(scope="module")
def cache(cluster):
    c = sr.Cache("shuffle-tests")
    yield c
    c.close()


def test_sort_is_validated_and_reducers_run_where_their_partition_is(cache):
    summary = ds.distributed_sort(cache, 300_000, seed=7, partitions=9, block_records=40_000, progress=lambda m: None)
    assert summary["ok"] and summary["checksum_matches"]
    assert summary["records"] == 300_000
    assert summary["reducers_on_their_node"] == 9
    assert set(summary["per_node"].values()) == {3}
    assert cache.ids("shuffle-") == []  # partitions cleaned up


def test_sort_helpers_agree_with_numpy():
    records = ds.generate(1, 0, 5000)
    out = ds.sort_records(records)
    keys = [bytes(r[:10]) for r in out]
    assert keys == sorted(bytes(r[:10]) for r in records)
    assert ds.checksum(out) == ds.checksum(records[::-1]) != ds.checksum(records[1:])


def _failing_map(item):
    raise ValueError(f"bad input {item}")


def test_a_failed_task_still_cleans_up(cache):
    with pytest.raises(sr.ShovelingError, match="bad input"):
        with Shuffle(cache, 4, prefix="failing") as sh:
            sh.run([1, 2], _failing_map, lambda i, d: None)
    assert cache.ids("failing/") == []


def _big_map(item):
    return {0: bytes(2 * MB), 1: bytes(2 * MB)}


def test_a_shuffle_larger_than_the_limits_fails_early_with_cache_full(cluster):
    small = sr.Cache("shuffle-small", max_memory=3 * MB, compression=None)
    try:
        with pytest.raises(sr.CacheFull) as err:
            with Shuffle(small, 2, prefix="big") as sh:
                sh.run(range(4), _big_map, lambda i, d: len(d))
        assert err.value.limit == 3 * MB and err.value.node_id in small.nodes()
        assert small.ids("big/") == []
        assert all(s["used"] == 0 for s in small.stats().values())  # nothing left behind
    finally:
        small.close()
