"""Membership from Ray alone: the alive nodes as Ray's GCS reports them."""

from __future__ import annotations

import ray

from .base import NodeInfo

_HEAD_RESOURCE = "node:__internal_head__"


def ray_nodes() -> list[NodeInfo]:
    """Every node Ray knows, alive or dead, as :class:`NodeInfo`."""
    nodes = []
    for node in ray.nodes():
        resources = node.get("Resources", {})
        nodes.append(
            NodeInfo(
                node_id=node["NodeID"],
                alive=bool(node.get("Alive")),
                cpus=float(resources.get("CPU", 0.0)),
                object_store_memory=int(resources.get("object_store_memory", 0)),
                is_head=_HEAD_RESOURCE in resources,
            )
        )
    return nodes
