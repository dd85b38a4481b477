"""Where the member list comes from.

:class:`~.base.NodeInfo` describes a Ray node as placement sees it. :mod:`.ray` reads the
alive nodes from Ray's GCS (the embedded default, no Consul needed).
"""

from .base import NodeInfo
from .ray import draining_nodes, ray_nodes

__all__ = ["NodeInfo", "draining_nodes", "ray_nodes"]
