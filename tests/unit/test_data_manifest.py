"""Dataset ids, manifests and DatasetInfo (``shoveling_ray.data.manifest``), without Ray."""

from __future__ import annotations

import pyarrow as pa
import pytest

from shoveling_ray.data import manifest as m


@pytest.mark.parametrize("name", ["features", "a", "x.y-z_1", "9" * 128])
def test_good_names(name):
    assert m.check_name(name) == name


@pytest.mark.parametrize("name, error", [(None, TypeError), (3, TypeError), ("", ValueError), ("a/b", ValueError),
                                         ("-a", ValueError), ("a" * 129, ValueError), ("a b", ValueError)])
def test_bad_names(name, error):
    with pytest.raises(error):
        m.check_name(name)


def test_block_ids_sit_under_their_write_and_manifests_are_found_among_ids():
    base = m.block_base("f", "tok", 3, 7)
    assert base.startswith(m.blocks_prefix("f", "tok")) and base.startswith(m.blocks_prefix("f"))
    assert not m.blocks_prefix("f").startswith(m.blocks_prefix("g"))
    assert m.salted(base, 2) != m.salted(base, 3)
    ids = [m.manifest_id("b"), m.salted(base, 0), m.manifest_id("a"), "other", m.manifest_id("f")]
    assert m.dataset_names(ids) == ["a", "b", "f"]


def test_a_manifest_counts_its_blocks_and_anything_else_is_not_a_dataset():
    manifest = m.make_manifest(b"schema", [["x/1", 10, 100, "n1"], ["x/2", 5, 50, "n2"]])
    assert (manifest["rows"], manifest["bytes"]) == (15, 150)
    assert m.check_manifest(manifest, "x") is manifest
    for value in ({"a": 1}, b"bytes", None, {**manifest, "format": 99}, {**manifest, "schema": "str"}):
        with pytest.raises(ValueError, match="not a dataset"):
            m.check_manifest(value, "x")


class _FakeCache:
    def __init__(self, values: dict):
        self.values = values

    def ids(self, prefix: str = "") -> list[str]:
        return sorted(i for i in self.values if i.startswith(prefix))

    def get_many(self, ids, default):
        return {i: self.values.get(i, default) for i in ids}


def test_summaries_list_datasets_and_skip_what_is_not_one():
    manifest = m.make_manifest(b"s", [["dataset:f/t/0.0", 4, 40, "n"]])
    cache = _FakeCache({"dataset:f": manifest, "dataset:f/t/0.0": b"block", "dataset:odd": 5, "plain": b"x"})
    assert m.summaries(cache) == {"f": {"rows": 4, "bytes": 40, "blocks": 1}}


def test_dataset_info_is_a_short_repr_and_a_small_html_table():
    schema = pa.schema([("id", pa.int64()), ("<tag>", pa.int32())])
    info = m.DatasetInfo("f", schema, 30, 3000, [m.BlockInfo("b0", 10, 1000, ["node-a" * 8]),
                                                 m.BlockInfo("b1", 20, 2000, ["node-b" * 8, "node-a" * 8])])
    assert info.nodes() == {"node-a" * 8: 10, "node-b" * 8: 20}
    assert repr(info) == "DatasetInfo('f', rows=30, bytes=3000, blocks=2, columns=['id', '<tag>'])"
    page = info._repr_html_()
    assert page.startswith("<table") and "30 rows" in page and "2 blocks" in page
    assert "&lt;tag&gt;" in page and "<tag>" not in page  # escaped
    assert page.count("<tr>") == 2 + 2 + 2  # two header rows, two columns, two nodes
