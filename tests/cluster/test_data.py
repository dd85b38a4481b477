"""Ray Data datasets in the cache (``shoveling_ray.data``) on three Ray nodes.

The node-loss test runs last: it removes a worker node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest
import ray
import ray.data as ray_data

import shoveling_ray as sr
from tests.conftest import MB, ROOT, module_cluster

pytestmark = pytest.mark.cluster

cluster = module_cluster([{"num_cpus": 1, "object_store_memory": 300 * MB} for _ in range(3)])

ROWS = 24_000
BLOCKS = 12


@pytest.fixture(scope="module")
def cache(cluster):
    context = ray_data.DataContext.get_current()
    context.enable_progress_bars = False
    # the order of rows is the dataset's when Ray Data keeps it (it does not by default)
    context.execution_options.preserve_order = True
    c = sr.Cache("data-tests")
    yield c
    c.close()


def _features(batch: dict) -> dict:
    """A preprocessing step: a tensor column, a tag, and the node it ran on."""
    n = len(batch["id"])
    rng = np.random.default_rng(int(batch["id"][0]))
    batch["vec"] = rng.random((n, 16), dtype=np.float32)
    batch["tag"] = (batch["id"] % 7).astype(np.int32)
    batch["made_on"] = np.array([ray.get_runtime_context().get_node_id()] * n)
    return batch


def _features_dataset(rows: int = ROWS) -> ray_data.Dataset:
    return ray_data.range(rows, override_num_blocks=BLOCKS).map_batches(_features)


def _read_on(batch: dict) -> dict:
    batch["read_on"] = np.array([ray.get_runtime_context().get_node_id()] * len(batch["id"]))
    return batch


@pytest.fixture(scope="module")
def written(cache):
    """The features dataset written once, with what the pipeline produced."""
    ds = _features_dataset().materialize()
    info = sr.data.write_dataset(ds, cache, "features")
    return info, ds.to_pandas()


def test_round_trip_keeps_rows_order_and_schema_with_a_tensor_column(cache, written):
    info, expected = written
    assert (info.rows, len(info.blocks)) == (ROWS, BLOCKS)
    assert sum(b.rows for b in info.blocks) == ROWS and info.bytes > ROWS * 16 * 4
    ds = sr.data.read_dataset(cache, "features")
    assert ds.count() == ROWS
    schema = ds.schema().base_schema
    assert schema.names == ["id", "vec", "tag", "made_on"]
    assert schema.field("tag").type == pa.int32()
    assert isinstance(schema.field("vec").type, pa.ExtensionType)  # Ray Data's tensor type
    got = ds.to_pandas()
    assert got["id"].tolist() == expected["id"].tolist() == list(range(ROWS))
    assert np.array_equal(np.stack(got["vec"].to_numpy()), np.stack(expected["vec"].to_numpy()))
    assert got["tag"].tolist() == expected["tag"].tolist()
    assert info.schema == schema
    assert sr.data.dataset_info(cache, "features").rows == ROWS
    assert "features" in sr.data.list_datasets(cache)
    assert "<table" in info._repr_html_() and "24,000 rows" in info._repr_html_()


def test_each_block_is_stored_on_the_node_of_the_task_that_wrote_it(cache):
    # the write is fused with the map that made the rows: "made_on" is the writer's node
    info = sr.data.write_dataset(_features_dataset(), cache, "written-here")
    made_on = sr.data.read_dataset(cache, "written-here").to_pandas()["made_on"].tolist()
    assert made_on == _holder_of_each_row(info)
    assert len({n for b in info.blocks for n in b.nodes}) > 1  # spread, not gathered on one node
    sr.data.delete_dataset(cache, "written-here")


def _holder_of_each_row(info: sr.data.DatasetInfo) -> list[str]:
    return [node for block in info.blocks for node in [block.nodes[0]] * block.rows]


def test_rows_are_processed_downstream_on_a_node_holding_their_block(cache, written):
    info, _ = written
    ds = sr.data.read_dataset(cache, "features")
    # Where each block's bytes are: its node in the cache, and the copies Ray keeps of it (the
    # earlier tests' reads pulled blocks to the driver's node): a task there reads it as it is.
    refs = ds.to_arrow_refs()
    # a reference at a time: asked for several owners' objects at once, Ray 2.60 aborted the
    # process once ("Promise already satisfied" in GetLocationFromOwner)
    copies = {ref: ray.experimental.get_object_locations([ref])[ref] for ref in refs}
    held = [{block.nodes[0], *copies[ref]["node_ids"]} for ref, block in zip(refs, info.blocks)]
    out = ds.map_batches(_read_on).to_pandas()
    assert out["id"].tolist() == list(range(ROWS))
    holders = [nodes for nodes, block in zip(held, info.blocks) for _ in range(block.rows)]
    local = np.mean([node in nodes for node, nodes in zip(out["read_on"], holders)])
    assert local >= 0.9, f"only {local:.0%} of the rows were processed on a node holding their block"


DRIVER = textwrap.dedent(
    """
    import json, sys
    import ray, shoveling_ray as sr
    ray.init(address=sys.argv[1], log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    cache = sr.Cache("data-tests")
    ds = sr.data.read_dataset(cache, sys.argv[2])
    df = ds.to_pandas()
    print(json.dumps({"ids": df["id"].tolist(), "tags": df["tag"].tolist(), "vec0": df["vec"][0].tolist()}))
    """
)


def _second_driver(cluster, name: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    run = subprocess.run([sys.executable, "-c", DRIVER, cluster.address, name], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_a_dataset_written_by_a_driver_that_exited_reads_in_another(cluster, cache):
    writer = textwrap.dedent(
        """
        import sys
        import numpy as np, ray, shoveling_ray as sr
        ray.init(address=sys.argv[1], log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = ray.data.range(5000, override_num_blocks=5).map_batches(
            lambda b: {**b, "tag": (b["id"] * 3).astype(np.int32), "vec": np.ones((len(b["id"]), 4), np.float32)})
        sr.data.write_dataset(ds, sr.Cache("data-tests"), "from-another-job")
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    run = subprocess.run([sys.executable, "-c", writer, cluster.address], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    seen = _second_driver(cluster, "from-another-job")
    assert seen["ids"] == list(range(5000))
    assert seen["tags"] == [3 * i for i in range(5000)]
    assert seen["vec0"] == [1.0] * 4
    sr.data.delete_dataset(cache, "from-another-job")


def _fails_half_way(batch: dict) -> dict:
    if batch["id"][0] >= ROWS // 2:
        raise ValueError("preprocessing failed half way")
    return batch


def test_a_failed_write_leaves_no_dataset_and_no_block(cache):
    with pytest.raises(sr.ShovelingError, match="preprocessing failed half way"):
        sr.data.write_dataset(ray_data.range(ROWS, override_num_blocks=BLOCKS).map_batches(_fails_half_way), cache,
                              "half")
    assert "half" not in sr.data.list_datasets(cache)
    with pytest.raises(sr.CacheMiss):
        sr.data.read_dataset(cache, "half")
    assert cache.ids("dataset:half") == []


def test_a_failed_replacement_keeps_the_previous_version_and_a_complete_one_replaces_it(cache):
    sr.data.write_dataset(ray_data.range(100, override_num_blocks=2), cache, "versions")
    old_blocks = [b.id for b in sr.data.dataset_info(cache, "versions").blocks]
    with pytest.raises(sr.ShovelingError, match="preprocessing failed half way"):
        sr.data.write_dataset(ray_data.range(ROWS, override_num_blocks=BLOCKS).map_batches(_fails_half_way), cache,
                              "versions")
    assert sr.data.read_dataset(cache, "versions").count() == 100
    assert sorted(cache.ids("dataset:versions/")) == sorted(old_blocks)
    ds = sr.data.CacheDatasink(cache, "versions")
    ray_data.range(30, override_num_blocks=3).map(lambda r: {"x": r["id"] * 2}).write_datasink(ds)
    assert sr.data.read_dataset(cache, "versions").to_pandas()["x"].tolist() == [2 * i for i in range(30)]
    new_blocks = [b.id for b in sr.data.dataset_info(cache, "versions").blocks]
    assert sorted(cache.ids("dataset:versions/")) == sorted(new_blocks)  # the old blocks are gone
    assert not set(new_blocks) & set(old_blocks)
    assert sr.data.delete_dataset(cache, "versions") is True
    assert cache.ids("dataset:versions") == []
    assert sr.data.delete_dataset(cache, "versions") is False


def test_pandas_blocks_and_an_empty_dataset_round_trip(cache):
    import pandas as pd

    frame = pd.DataFrame({"name": ["a", "b", "c"], "score": [1.5, 2.5, None]})
    info = sr.data.write_dataset(ray_data.from_pandas(frame), cache, "from-pandas")
    assert info.rows == 3
    back = sr.data.read_dataset(cache, "from-pandas").to_pandas()
    assert back["name"].tolist() == ["a", "b", "c"] and back["score"].isna().tolist() == [False, False, True]
    empty = sr.data.write_dataset(ray_data.range(100).filter(lambda r: r["id"] < 0), cache, "empty")
    assert (empty.rows, empty.blocks) == (0, [])
    assert sr.data.read_dataset(cache, "empty").count() == 0
    for name in ("from-pandas", "empty"):
        sr.data.delete_dataset(cache, name)


def test_the_tables_readers_get_count_in_used_until_the_dataset_goes(cache):
    """Each block a reader gets is a table its node's actor keeps in the object store beside
    the block's stored Arrow stream: that memory counts in ``used`` (so ``max_memory`` sees
    it) from the first read until the dataset is deleted."""
    def used() -> int:
        return sum(s["used"] for s in cache.stats().values())

    before = used()
    info = sr.data.write_dataset(_features_dataset(), cache, "counted-tables")
    assert sr.data.read_dataset(cache, "counted-tables").count() == ROWS
    # each block's Arrow stream, and its table (about as large)
    assert used() - before >= 1.8 * info.bytes
    sr.data.delete_dataset(cache, "counted-tables")
    assert used() - before < 0.2 * info.bytes  # the streams and the tables are gone


def test_cache_dataset_runs_the_pipeline_once(cache):
    def counted(batch: dict) -> dict:
        sr.Cache("data-tests").append("counted", b"x" * len(batch["id"]))
        return batch

    ds = ray_data.range(1000, override_num_blocks=4).map_batches(counted)
    first = sr.data.cache_dataset(ds, cache, "once")
    again = sr.data.cache_dataset(ds, cache, "once")
    assert first.count() == again.count() == 1000
    assert cache.get("counted") == b"x" * 1000  # the pipeline ran once, over every row
    sr.data.delete_dataset(cache, "once")
    cache.delete("counted")


def test_bad_input_is_refused_and_changes_nothing(cache, written):
    before = cache.ids("dataset:")
    with pytest.raises(TypeError):
        sr.data.write_dataset([{"id": 1}], cache, "bad")
    with pytest.raises(TypeError):
        sr.data.write_dataset(ray_data.range(3), "not a cache", "bad")
    with pytest.raises(ValueError):
        sr.data.write_dataset(ray_data.range(3), cache, "bad/name")
    with pytest.raises(ValueError):
        sr.data.read_dataset(cache, "")
    with pytest.raises(sr.CacheMiss):
        sr.data.read_dataset(cache, "never-written")
    cache.set("dataset:not-one", {"some": "value"})
    with pytest.raises(ValueError, match="not a dataset"):
        sr.data.read_dataset(cache, "not-one")
    with pytest.raises(ValueError, match="not a dataset"):
        sr.data.write_dataset(ray_data.range(3), cache, "not-one")
    with pytest.raises(ValueError, match="not a dataset"):
        sr.data.delete_dataset(cache, "not-one")
    assert cache.get("dataset:not-one") == {"some": "value"}
    cache.delete("dataset:not-one")
    assert cache.ids("dataset:") == before


def test_blocks_that_are_not_tables_are_refused_and_nothing_stays(cache):
    with pytest.raises(ray.exceptions.RayError, match="must be tables"):
        ray_data.range(10, override_num_blocks=2).write_datasink(_NotTablesSink(cache, "not-tables"))
    assert cache.ids("dataset:not-tables") == []


class _NotTablesSink(sr.data.CacheDatasink):
    """A sink whose input blocks arrive as lists: Ray Data's public API makes only Arrow and
    pandas blocks, so a Dataset of other blocks is simulated here."""

    def write(self, blocks, ctx):
        return super().write(([1, 2, 3] for _ in blocks), ctx)


def _shoveling(cluster, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    run = subprocess.run([sys.executable, "-m", "shoveling_ray", "--address", cluster.address, *args], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_the_command_shows_datasets(cluster, cache, written):
    info, _ = written
    listed = json.loads(_shoveling(cluster, "ls", "data-tests", "--datasets", "--json"))
    assert listed["features"] == {"rows": ROWS, "bytes": info.bytes, "blocks": BLOCKS}
    assert json.loads(_shoveling(cluster, "status", "data-tests", "--json"))["datasets"] == listed
    text = _shoveling(cluster, "status", "data-tests")
    assert f"datasets: {len(listed)}" in text
    assert any(line.split()[:3] == ["features", f"{ROWS:,}", f"{info.bytes / MB:.1f}"] for line in text.splitlines())


def test_one_copy_loses_a_block_with_its_node_two_copies_survive(cluster, cache, written):
    info, expected = written
    twice = sr.Cache("data-tests-2", replicas=2)
    sr.data.write_dataset(_features_dataset(), twice, "features")
    workers = {n.node_id: n for n in cluster.worker_nodes}
    # a node holding blocks but not the manifest (the manifest lost is a DataLost naming it)
    manifest_node = cache.node_id("dataset:features")
    victim = next(b.nodes[0] for b in info.blocks if b.nodes[0] in workers and b.nodes[0] != manifest_node)
    lost = [b.id for b in info.blocks if b.nodes[0] == victim]
    cluster.remove_node(workers[victim])
    with pytest.raises(sr.DataLost) as raised:
        sr.data.read_dataset(cache, "features")
    assert raised.value.cache_id in lost
    survived = sr.data.read_dataset(twice, "features").to_pandas()
    assert survived["id"].tolist() == list(range(ROWS))
    assert np.array_equal(np.stack(survived["vec"].to_numpy()), np.stack(expected["vec"].to_numpy()))
    twice.close()
