"""How one handle's calls reach a cache's actors: :class:`Calls`.

It gives the routing engine (:mod:`shoveling_ray.router`) Ray's way of calling the node
actors: this is where actor calls start and are waited for, by the handle's deadline, with
every Ray error mapped to the :mod:`shoveling_ray.errors` tree and, with Consul, a node whose
check turns critical given up on at once. A call that met a node gone meanwhile is sent again
once the coordinator's view moved on; writes carry one stamp however often they are sent. It
also carries the handle's calls to the coordinator (join, configure, drain, close) and what a
pickled handle takes along.

It does not check arguments or encode values (``Cache``), nor route (``router``).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import ray

from .. import protocol as p
from ..actors.coordinator import DRAIN_DEADLINE
from ..actors.sessions import RESEND_WINDOW
from ..errors import CacheClosed, NodeDrained, NodeUnavailable, ray_errors
from ..membership import watch
from ..objects import as_refs
from ..router import STAMPED, Router
from ..view import View
from . import lifecycle, locality

if TYPE_CHECKING:
    from ..membership.watch import ConsulView

#: Seconds a handle waits for a node actor's answer to one call, unless ``timeout=`` says
#: otherwise: longer than a write may wait at its node, for spilling (``SPILL_TIMEOUT``) and
#: then for its copies (``PEER_TIMEOUT``), so that a slow node is not taken for a dead one.
DEFAULT_TIMEOUT = 300.0
#: Times a call is sent again after the members changed under it (a node died or was drained
#: meanwhile). Writes are stamped, so each is applied once however often it is sent.
RETRIES = 3
#: Seconds between checks of Consul health while waiting for an actor's answer.
_HEALTH_POLL = 0.25
#: Placements a pickled handle carries along (enough for a shuffle's partitions).
_PICKLED_PLACEMENTS = 20_000


def submit(handle: ray.actor.ActorHandle, method: str, *args: Any) -> ray.ObjectRef:
    """Start ``handle.method(*args)``; the pending reply."""
    if method == "batch" and args[2]:  # large payloads as objects of their own: see objects.py
        args = (*args[:2], as_refs(args[2]), *args[3:])
    return getattr(handle, method).remote(*args)


class Calls:
    """One handle's way to a cache's coordinator and node actors.

    Picklable: a copy keeps the view, the handle's timeout and whether it was closed, and
    carries at most :data:`_PICKLED_PLACEMENTS` of the placements this one learned.

    Args:
        name: the cache's name.
        coordinator: the cache's coordinator actor.
        view: the coordinator's view, as joining it answered.
        timeout: seconds to wait for a node actor's answer to one call (``Cache.timeout``).
        placements, single: what the router starts with (see :class:`~shoveling_ray.router.Router`).
        closed: whether the cache was closed through this handle.
    """

    def __init__(self, name: str, coordinator: ray.actor.ActorHandle, view: View, timeout: float,
                 placements: dict[str, str] | None = None, single: Iterable[str] = (),
                 closed: bool = False) -> None:
        self.name, self.coordinator, self.timeout, self.closed = name, coordinator, timeout, closed
        self.router = Router(name, view, self.handle, submit, self.gather, placements, lifecycle.this_node(),
                             self.nearest)
        self.router.single.update(single)

    def __reduce__(self):
        router = self.router
        placements = dict(itertools.islice(router.placements.items(), _PICKLED_PLACEMENTS))
        single = set(itertools.islice(router.single, _PICKLED_PLACEMENTS))
        return Calls, (self.name, self.coordinator, router.view, self.timeout, placements, single, self.closed)

    def check_open(self) -> None:
        """Raises:
            CacheClosed: the cache was closed through this handle.
        """
        if self.closed:
            raise CacheClosed(f"cache {self.name!r} was closed")

    # -- the coordinator -------------------------------------------------------------------

    def ask(self, ref: ray.ObjectRef, at_least: float = lifecycle.COORDINATOR_TIMEOUT) -> Any:
        """The coordinator's answer to ``ref`` (see :func:`.lifecycle.ask`)."""
        return lifecycle.ask(self.name, ref, self.timeout, at_least)

    def refresh(self) -> None:
        """Join the coordinator again and take its view (new members, dead ones gone).

        Raises:
            CacheClosed: the cache was closed.
        """
        self.check_open()
        self.router.apply_view(self.ask(self.coordinator.join.remote(None)))

    def configure(self, given: dict) -> None:
        """Have the coordinator apply the settings ``given`` and take its new view.

        Raises:
            CacheClosed: the cache was closed.
            ValueError: the coordinator refused a setting.
        """
        self.check_open()
        with lifecycle.refusals_as_value_errors():
            self.router.apply_view(self.ask(self.coordinator.configure.remote(given)))

    def drain(self, node_id: str) -> int:
        """Have the coordinator drain ``node_id``; how many ids moved.

        Raises:
            ValueError: the coordinator refused the node (not a member, or the last one).
        """
        with lifecycle.refusals_as_value_errors():
            moved, view = self.ask(self.coordinator.drain.remote(node_id), DRAIN_DEADLINE)
        self.router.apply_view(view)
        return moved

    def close(self, timeout: float) -> None:
        """Stop the cache and wait until its name is free; nothing the second time.

        Raises:
            ShovelingError: the name was not free within ``timeout`` seconds.
        """
        if self.closed:
            return
        self.closed = True
        deadline = time.monotonic() + timeout
        lifecycle.stop_coordinator(self.coordinator, timeout)
        if self.router.view.consul is not None:
            watch.close(self.consul_key)
        lifecycle.wait_until_free(self.name, self.coordinator, deadline, timeout)

    # -- Consul ----------------------------------------------------------------------------

    @property
    def consul(self) -> ConsulView | None:
        """This process's shared view of Consul health and coordinates, started on first use."""
        config = self.router.view.consul
        if config is None or self.closed:
            return None
        return watch.view(self.consul_key, config, self.name)

    @property
    def consul_key(self) -> tuple[str, str]:
        """This incarnation of the cache, as the process-wide Consul views know it."""
        return self.name, self.router.view.epoch

    def nearest(self, nodes: list[str]) -> str | None:
        """The router's ``nearest`` (see :func:`.locality.nearest`)."""
        return locality.nearest(self.consul, self.router.local, nodes)

    def _check_healthy(self, node: str, ids: list[str]) -> None:
        view = self.consul
        if view is not None and view.critical(node):
            raise NodeUnavailable(node, ids, "its Consul health check is critical")

    # -- the node actors (given to the router) ---------------------------------------------

    def handle(self, node: str, ids: list[str]) -> ray.actor.ActorHandle:
        """The actor of ``node``, if it is a member and not known to be down.

        Raises:
            CacheClosed: the cache was closed.
            NodeUnavailable: ``node`` is not a member (the view is refreshed first), or its
                Consul check is critical.
        """
        self.check_open()
        handle = self.router.members.get(node)
        if handle is None:
            self.refresh()
            raise NodeUnavailable(node, ids, "not a member of the cache")
        self._check_healthy(node, ids)
        return handle

    def gather(self, pending: dict[str, ray.ObjectRef], ids: dict[str, list[str]], method: str) -> dict[str, Any]:
        """Wait for one call per node, all by one deadline (``timeout`` seconds from now); with
        Consul, give up on a node whose check turns critical. A dead or drained actor refreshes
        the member list before ``NodeUnavailable`` is raised."""
        out = {}
        deadline = time.monotonic() + self.timeout
        for node, ref in pending.items():
            try:
                with ray_errors(f"cache {self.name!r}: {method} on node {node}", node=node, ids=ids[node]):
                    out[node] = self._wait(ref, node, ids[node], deadline)
            except NodeUnavailable as exc:
                if isinstance(exc, NodeDrained) or isinstance(exc.__cause__, ray.exceptions.RayActorError):
                    self.refresh()
                raise
        return out

    def _wait(self, ref: ray.ObjectRef, node: str, ids: list[str], deadline: float) -> Any:
        """``ref``'s value; ``NodeUnavailable`` at ``deadline`` or, with Consul, as soon as the
        node's check is critical."""
        poll = math.inf if self.consul is None else _HEALTH_POLL
        while True:
            left = deadline - time.monotonic()
            try:
                return ray.get(ref, timeout=max(min(left, poll), 0))
            except ray.exceptions.GetTimeoutError:
                if left <= poll:
                    raise NodeUnavailable(node, ids, f"its cache actor did not answer within {self.timeout:g} s "
                                                     "(the handle's timeout)") from None
                self._check_healthy(node, ids)

    # -- calls, sent again when the members changed under them ------------------------------

    def run(self, method: str, items: list[tuple], *, cached: bool = True) -> list[tuple]:
        """``Router.run``, tried again when a dead node or actor changed the members meanwhile:
        its ids are then answered by their homes (lost, or recorded elsewhere)."""
        if method not in STAMPED:
            return self.again_if_members_changed(lambda: self.router.run(method, items, cached=cached))
        return self.write(lambda stamp: self.router.run(method, items, cached=cached, stamp=stamp))

    def write(self, call: Callable[[tuple], Any]) -> Any:
        """``call(stamp)`` with one stamp for every time it is sent (see :meth:`Router.stamp`):
        a write sent again after a node died or was drained is applied once on every node,
        whichever of its ids the first try reached."""
        stamp = self.router.stamp()
        try:
            return self.again_if_members_changed(lambda: call(stamp), time.monotonic() + RESEND_WINDOW)
        finally:
            self.router.done(stamp)

    def each_node(self, method: str, *args: Any) -> dict[str, Any]:
        """``Router.each_node``, asked again of the new members when a node left meanwhile."""
        return self.again_if_members_changed(lambda: self.router.each_node(method, *args))

    def again_if_members_changed(self, call: Callable[[], Any], until: float | None = None) -> Any:
        """``call()``; after a ``NodeUnavailable``, again if the coordinator's view moved on
        meanwhile (it follows Ray's node deaths by itself), at most :data:`RETRIES` times and,
        for a write, not after ``until`` (``time.monotonic()``: the nodes remember a write for
        a bounded time, see :mod:`shoveling_ray.actors.sessions`); else the error stands."""
        for attempt in range(RETRIES + 1):
            version = self.router.view.version
            try:
                return call()
            except NodeUnavailable:
                if attempt == RETRIES or (until is not None and time.monotonic() > until):
                    raise
                if self.router.view.version == version:
                    self.router.apply_view(self.ask(self.coordinator.view.remote()))
                    if self.router.view.version == version:
                        raise

    def locate(self, cache_ids: list[str]) -> list[list[str]]:
        """The nodes holding a live copy of each of ``cache_ids``, primary first; empty for an
        id that does not exist. One call per node."""
        results = self.run("locate", [(i,) for i in cache_ids])
        return [list(value) if status == p.OK else [] for status, value, _node in results]

    def holders(self, cache_id: str) -> list[str]:
        """The holders of ``cache_id``, primary first; the node that would create it if absent,
        or the node that did not answer (where the data is, even if it cannot serve it now)."""
        try:
            holders = self.locate([cache_id])[0]
        except NodeUnavailable as exc:
            return [exc.node_id]
        return holders or [self.router.home(cache_id)]
