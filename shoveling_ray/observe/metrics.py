"""A node actor's figures as Ray metrics (``ray.util.metrics``), so that Ray's Prometheus
endpoint and dashboard show them, tagged ``cache`` and ``node``.

Prometheus sees them with Ray's ``ray_`` prefix (``ray_shoveling_bytes_used``). They are
exported only where a Ray metrics agent runs, which needs ``ray[default]``
(``pip install shoveling_ray[metrics]``); without it, recording them costs little and goes
nowhere.

- gauges ``shoveling_bytes_used`` (memory held), ``shoveling_bytes_limit`` (0: no limit),
  ``shoveling_disk_bytes_used`` (spill files), ``shoveling_ids``, ``shoveling_lost_ids`` (ids
  homed here whose only copy died with another node);
- counters ``shoveling_operations_total`` (tag ``op``: items served per actor method),
  ``shoveling_bytes_in_total`` (bytes stored by writes), ``shoveling_bytes_out_total`` (bytes
  returned by reads), ``shoveling_evictions_total``, ``shoveling_spills_total`` (values
  written to disk).
"""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge

_TAGS = ("cache", "node")


class NodeMetrics:
    """The metrics of one node actor, created once in its constructor."""

    def __init__(self, cache: str, node_id: str) -> None:
        tags = {"cache": cache, "node": node_id}

        def made(metric):
            metric.set_default_tags(tags)
            return metric

        self.bytes_used = made(Gauge("shoveling_bytes_used", "memory held: payloads and per-id overhead", _TAGS))
        self.disk_used = made(Gauge("shoveling_disk_bytes_used", "bytes in spill files", _TAGS))
        self.bytes_limit = made(Gauge("shoveling_bytes_limit", "max_memory in bytes (0: none)", _TAGS))
        self.ids = made(Gauge("shoveling_ids", "ids held", _TAGS))
        self.lost_ids = made(Gauge("shoveling_lost_ids", "ids homed here whose only copy died", _TAGS))
        self.operations = made(Counter("shoveling_operations_total", "items served, by method", (*_TAGS, "op")))
        self.bytes_in = made(Counter("shoveling_bytes_in_total", "bytes stored by writes", _TAGS))
        self.bytes_out = made(Counter("shoveling_bytes_out_total", "bytes returned by reads", _TAGS))
        self.evictions = made(Counter("shoveling_evictions_total", "ids evicted to make room", _TAGS))
        self.spills = made(Counter("shoveling_spills_total", "values written to disk to make room", _TAGS))
        self._seen = {"evictions": 0, "spills": 0}
        self._gauges = (self.bytes_used, self.bytes_limit, self.disk_used, self.ids, self.lost_ids)
        self._set: list = [None] * len(self._gauges)  # the values last recorded

    def served(self, op: str, items: int, bytes_in: int = 0, bytes_out: int = 0) -> None:
        """Count one batch: ``items`` served by method ``op`` and the bytes that moved."""
        if items:
            self.operations.inc(items, tags={"op": op})
        if bytes_in:
            self.bytes_in.inc(bytes_in)
        if bytes_out:
            self.bytes_out.inc(bytes_out)

    def held(self, used: int, limit: int | None, ids: int, evictions: int, lost: int, disk_used: int,
             spills: int) -> None:
        """The store's state after a batch (``evictions`` and ``spills``: totals so far). Only
        the figures that changed are recorded again: a read changes none, and recording them
        all cost two thirds of an actor's work on a one-id ``get``."""
        for index, value in enumerate((used, limit or 0, disk_used, ids, lost)):
            if self._set[index] != value:
                self._gauges[index].set(value)
                self._set[index] = value
        for name, total in (("evictions", evictions), ("spills", spills)):
            if total > self._seen[name]:
                getattr(self, name).inc(total - self._seen[name])
                self._seen[name] = total
