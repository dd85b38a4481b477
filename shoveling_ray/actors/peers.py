"""Calls from one node actor to the others, with one timeout and one error policy for all.

A peer is a member's Ray actor, or in unit tests the plain ``_NodeActor`` object, called
directly. Whatever keeps a peer from answering becomes :class:`~shoveling_ray.NodeUnavailable`:
raised by :meth:`Peers.call`, a value in the answer of :meth:`Peers.call_all`. Not for the
client's calls to the actors (see :mod:`shoveling_ray.router`).
"""

from __future__ import annotations

import ray

from ..errors import NodeUnavailable, ray_errors
from ..objects import as_refs
from ..wire import split
from .layout import Layout
from .storage import SPILL_TIMEOUT

#: Seconds an actor waits for another node's actor (``init``, ``delete``, forwarding writes to
#: copies, repairs). Longer than a write may wait for spilling there: a slow copy is not a dead
#: one. A live copy that still does not answer in time is counted under-replicated and repaired.
PEER_TIMEOUT = 2 * SPILL_TIMEOUT


def _peer_args(arg, packed: tuple | None, remote: bool) -> tuple:
    """The arguments of a peer call (see :meth:`Peers.call`)."""
    if packed is None:
        return (arg,)
    blob, buffers = packed
    return (arg, as_refs(buffers) if remote else buffers, *split(blob))


class Peers:
    """The other members' actors, as the layout names them.

    Args:
        cache: the cache name, for messages.
        layout: where the members' actors are (``layout.peers``).
    """

    def __init__(self, cache: str, layout: Layout) -> None:
        self.cache = cache
        self.layout = layout
        self.sent = 0  # calls made to other members (``stats()``'s ``peer_calls``)

    def call(self, node: str, method: str, arg, packed: tuple | None = None, members: dict | None = None):
        """Call another node's actor and wait (plain objects are called directly, in tests).
        ``packed``: a ``(blob, buffers)`` of :func:`~shoveling_ray.wire.pack`, which the method
        takes after ``arg`` as the client's ``batch`` does (the buffers, then the blob's pieces).
        ``members``: the actors to choose from instead of the layout's (a drain's new view).

        Raises:
            NodeUnavailable: it is not a member, died, or did not answer in ``PEER_TIMEOUT``.
        """
        peer = (self.layout.peers if members is None else members).get(node)
        self.sent += 1
        if peer is None:
            raise NodeUnavailable(node, arg, "not a member of the cache")
        if not isinstance(peer, ray.actor.ActorHandle):
            return getattr(peer, method)(*_peer_args(arg, packed, False))
        with ray_errors(f"cache {self.cache}: {method} on node {node}", node=node, ids=arg):
            return ray.get(getattr(peer, method).remote(*_peer_args(arg, packed, True)), timeout=PEER_TIMEOUT)

    def call_all(self, method: str, args: dict, packed: dict | None = None) -> dict:
        """Call ``method`` on several nodes' actors at once (``{node: arg}``, and ``{node:
        packed}`` as in :meth:`call`) and wait for all; returns ``{node: result}``, a
        :class:`NodeUnavailable` for each that did not answer."""
        pending, out = {}, {}
        for node, arg in args.items():
            peer = self.layout.peers.get(node)
            extra = packed.get(node) if packed else None
            if isinstance(peer, ray.actor.ActorHandle):
                self.sent += 1
                pending[node] = getattr(peer, method).remote(*_peer_args(arg, extra, True))
            else:
                try:
                    out[node] = self.call(node, method, arg, extra)
                except NodeUnavailable as exc:
                    out[node] = exc
        for node, ref in pending.items():
            try:
                with ray_errors(f"cache {self.cache}: {method} on node {node}", node=node, ids=[]):
                    out[node] = ray.get(ref, timeout=PEER_TIMEOUT)
            except NodeUnavailable as exc:
                out[node] = exc
        return out
