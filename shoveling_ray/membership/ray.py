"""Membership from Ray alone: the alive nodes as Ray's GCS reports them."""

from __future__ import annotations

import ray

from .base import NodeInfo

_HEAD_RESOURCE = "node:__internal_head__"
ZONE_LABEL = "ray.io/availability-zone"


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
                zone=(node.get("Labels") or {}).get(ZONE_LABEL),
            )
        )
    return nodes


def draining_nodes() -> set[str]:
    """Nodes Ray is draining (``ray drain-node``, an autoscaler scaling down), from the GCS.

    Ray 2.60 shows this state nowhere public (``ray.nodes()`` does not): this asks the GCS
    client of the current worker, as Ray Serve does. Where that client or call does not exist
    (another Ray version), it returns an empty set, and nodes are drained only explicitly.
    """
    gcs = getattr(getattr(ray._private.worker, "global_worker", None), "gcs_client", None)
    get = getattr(gcs, "get_draining_nodes", None)
    if get is None:
        return set()
    return {node if isinstance(node, str) else node.hex() for node in get()}
