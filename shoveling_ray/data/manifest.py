"""What a dataset in the cache is made of: its ids, its manifest, and :class:`DatasetInfo`.

A dataset ``name`` is a manifest id, ``dataset:<name>``, and block ids under
``dataset:<name>/<write token>/``: one token per write, so a replacement never overwrites
the blocks a reader of the previous version still reads, and a failed write's blocks are
found by their prefix. The manifest is written last: until it is, the dataset does not exist
for readers; writing it is what makes a write (or a replacement) take effect.

The manifest is a msgpack-able dict (the cache stores it as it stores any such value)::

    {"format": 1, "schema": <Arrow IPC schema bytes>, "rows": n, "bytes": n,
     "blocks": [[block id, rows, bytes, writer node id], ...]}   # in row order

Plain data in, plain data out (no Ray, no pyarrow: the schema stays bytes here), tested
without a cluster; :func:`summaries` asks a cache for its manifests, which is all the
``shoveling`` command needs. It does not store or read blocks (``sink``, ``source``).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..observe.display import human_bytes

if TYPE_CHECKING:
    from ..cache import Cache

#: Prefix of every id a dataset uses; ``ls`` and ``list_datasets`` find manifests by it.
PREFIX = "dataset:"
FORMAT = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def check_name(name: Any) -> str:
    """``name`` if it can name a dataset.

    Raises:
        TypeError: not a str.
        ValueError: not 1-128 letters, digits, ``_``, ``.``, ``-`` (starting with a letter or
            digit).
    """
    if not isinstance(name, str):
        raise TypeError(f"a dataset name must be a str, not {type(name).__name__}")
    if not _NAME_RE.match(name):
        raise ValueError(f"a dataset name must be 1-128 letters, digits, '_', '.', '-', got {name!r}")
    return name


def manifest_id(name: str) -> str:
    """The id of the manifest of dataset ``name``."""
    return f"{PREFIX}{name}"


def blocks_prefix(name: str, token: str = "") -> str:
    """The prefix of the block ids of dataset ``name`` (of one write, with its ``token``)."""
    return f"{PREFIX}{name}/{token}/" if token else f"{PREFIX}{name}/"


def block_base(name: str, token: str, task: int, index: int) -> str:
    """The id of a write task's ``index``-th block, before the salt that places it
    (:func:`salted`)."""
    return f"{blocks_prefix(name, token)}{task:06d}-{index:06d}"


def salted(base: str, salt: int) -> str:
    """``base`` with a salt: the writer tries salts until the id's home is its own node."""
    return f"{base}.{salt}"


def dataset_names(ids: list[str]) -> list[str]:
    """The dataset names among ``ids`` (manifest ids; block ids have a ``/``), sorted."""
    return sorted(i[len(PREFIX):] for i in ids if i.startswith(PREFIX) and "/" not in i)


def make_manifest(schema: bytes, blocks: list[list]) -> dict:
    """The manifest of a dataset whose ``blocks`` (``[id, rows, bytes, node]``) are in row
    order."""
    return {
        "format": FORMAT,
        "schema": bytes(schema),
        "rows": sum(b[1] for b in blocks),
        "bytes": sum(b[2] for b in blocks),
        "blocks": [list(b) for b in blocks],
    }


def check_manifest(value: Any, name: str) -> dict:
    """``value`` (what the manifest id holds) if it is a manifest.

    Raises:
        ValueError: it is not one (the id was set to something else).
    """
    if (
        not isinstance(value, dict)
        or value.get("format") != FORMAT
        or not isinstance(value.get("schema"), bytes)
        or not isinstance(value.get("blocks"), list)
    ):
        raise ValueError(f"{manifest_id(name)!r} does not hold a dataset manifest: {name!r} is not a dataset")
    return value


def summaries(cache: Cache) -> dict[str, dict]:
    """``{name: {"rows", "bytes", "blocks"}}`` of the datasets in ``cache`` (one ``get_many``
    for the manifests); an id under the prefix that holds no manifest is left out."""
    ids = [manifest_id(name) for name in dataset_names(cache.ids(PREFIX))]
    out = {}
    for cache_id, value in cache.get_many(ids, None).items():
        name = cache_id[len(PREFIX):]
        try:
            manifest = check_manifest(value, name)
        except ValueError:
            continue
        out[name] = {"rows": manifest["rows"], "bytes": manifest["bytes"], "blocks": len(manifest["blocks"])}
    return out


@dataclass(frozen=True)
class BlockInfo:
    """One stored block: its cache ``id``, ``rows``, ``bytes`` (Arrow IPC) and the ``nodes``
    holding it (its primary copy first)."""

    id: str
    rows: int
    bytes: int
    nodes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset in the cache: ``name``, Arrow ``schema``, ``rows``, ``bytes`` (Arrow IPC, one
    copy) and ``blocks`` in row order. An HTML table in Jupyter."""

    name: str
    schema: Any
    rows: int
    bytes: int
    blocks: list[BlockInfo]

    def __repr__(self) -> str:
        return (f"DatasetInfo({self.name!r}, rows={self.rows}, bytes={self.bytes}, blocks={len(self.blocks)}, "
                f"columns={list(self.schema.names)})")

    def nodes(self) -> dict[str, int]:
        """``{node id: rows of the blocks whose primary copy is there}``."""
        out: dict[str, int] = {}
        for block in self.blocks:
            if block.nodes:
                out[block.nodes[0]] = out.get(block.nodes[0], 0) + block.rows
        return out

    def _repr_html_(self) -> str:
        columns = "".join(f"<tr><td><code>{html.escape(f.name)}</code></td><td>{html.escape(str(f.type))}</td></tr>"
                          for f in self.schema)
        nodes = "".join(f'<tr><td title="{html.escape(n)}"><code>{html.escape(n[:12])}</code></td><td>{r:,} rows</td></tr>'
                        for n, r in sorted(self.nodes().items()))
        return (
            f"<table class='shoveling-dataset'><caption style='text-align:left'><b>dataset {html.escape(self.name)!s}"
            f"</b>: {self.rows:,} rows, {human_bytes(self.bytes)}, {len(self.blocks):,} blocks</caption>"
            f"<thead><tr><th>column</th><th>type</th></tr></thead><tbody>{columns}</tbody>"
            f"<thead><tr><th>node</th><th>holds</th></tr></thead><tbody>{nodes}</tbody></table>"
        )
