"""The distributed sort example's record helpers: generation, exact sort order, checksum."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import distributed_sort as ds  # noqa: E402


def _keys(records: np.ndarray) -> list[bytes]:
    return [bytes(r[: ds.KEY]) for r in records]


def test_generation_is_deterministic_and_keys_come_alone():
    a, b = ds.generate(3, 5, 1000), ds.generate(3, 5, 1000)
    assert a.shape == (1000, 100) and np.array_equal(a, b)
    assert not np.array_equal(a, ds.generate(3, 6, 1000))
    assert np.array_equal(ds.block_keys(3, 5, 1000), ds.prefixes(a))


def test_sort_matches_python_on_random_records():
    records = ds.generate(1, 0, 5000)
    out = ds.sort_records(records)
    assert _keys(out) == sorted(_keys(records)) and ds.is_sorted(out)
    assert ds.checksum(out) == ds.checksum(records)


@pytest.mark.parametrize("prefix_values", [1, 3, 50])
def test_sort_is_exact_when_key_prefixes_tie(prefix_values):
    # Few distinct 8-byte prefixes: the packed sort ties everywhere and the fix-up decides,
    # on the prefix's low bits and on key bytes 8-9.
    rng = np.random.default_rng(prefix_values)
    records = ds.generate(2, 0, 4000)
    records[:, :8] = rng.integers(0, prefix_values, (4000, 1), dtype=np.uint8)
    records[:, 8:10] = rng.integers(0, 4, (4000, 2), dtype=np.uint8)
    out = ds.sort_records(records)
    assert _keys(out) == sorted(_keys(records)) and ds.is_sorted(out)
    assert ds.checksum(out) == ds.checksum(records)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_sort_of_tiny_inputs(n):
    records = ds.generate(4, 0, n)
    assert _keys(ds.sort_records(records)) == sorted(_keys(records))


def test_is_sorted_sees_one_pair_out_of_order():
    out = ds.sort_records(ds.generate(5, 0, 1000))
    swapped = out.copy()
    swapped[[10, 11]] = swapped[[11, 10]]
    assert ds.is_sorted(out) and not ds.is_sorted(swapped)


def test_checksum_is_order_independent_and_sees_lost_duplicated_or_mixed_records():
    records = ds.generate(6, 0, 1000)
    reference = ds.checksum(records)
    assert ds.checksum(records[::-1]) == reference
    assert ds.checksum(records[1:]) != reference
    assert ds.checksum(np.concatenate([records, records[:1]])) != reference
    mixed = records.copy()
    mixed[[0, 1], ds.KEY :] = mixed[[1, 0], ds.KEY :]  # two records swapped their payloads
    assert ds.checksum(mixed) != reference
    chunked = ds.checksum(records, chunk=7)
    assert chunked == reference


@pytest.mark.parametrize("trial", range(6))
def test_partitioner_agrees_with_searchsorted(trial):
    # Splitters drawn from the keys (so keys equal them), duplicated splitters, keys that share
    # a splitter's top bits, and the extremes of uint64.
    rng = np.random.default_rng(trial)
    keys = rng.integers(0, 2**64, 20_000, dtype=np.uint64)
    splitters = np.sort(rng.choice(keys, int(rng.integers(1, 70)), replace=False))
    if trial % 2:
        splitters = np.sort(np.concatenate([splitters, splitters[:3]]))
    keys = np.concatenate([keys, splitters, splitters - np.uint64(1), splitters + np.uint64(1),
                           np.array([0, 2**64 - 1], dtype=np.uint64)])
    expected = np.searchsorted(splitters, keys, side="right")
    assert np.array_equal(ds.Partitioner(splitters)(keys), expected)
