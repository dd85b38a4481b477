"""A cache's life as one handle sees it: connecting to Ray, starting or finding the cache's
coordinator and joining it, and waiting for its name to be free after a close.

Not the calls a running cache serves (:mod:`.calls`), nor what the coordinator does
(:mod:`shoveling_ray.actors.coordinator`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..actors.coordinator import NAMESPACE, Coordinator, coordinator_name, find_coordinator, running_caches
from ..errors import CacheClosed, CacheNotFound, ShovelingError, ray_errors
from ..membership import ray_nodes
from ..view import View

#: Seconds ``Cache()`` keeps trying to reach a coordinator (one being closed by another
#: process releases its name first), and ``close()`` waits for the cache's actors to go.
LIFECYCLE_DEADLINE = 60.0
#: Seconds a handle waits at least for the coordinator (``Cache()``, ``attach``, ``configure``,
#: ``init``; ``drain`` waits ``DRAIN_DEADLINE``): its own work is bounded by its deadlines
#: (``JOIN_DEADLINE`` = 120 s), so a shorter ``timeout`` would give up on it early.
COORDINATOR_TIMEOUT = 300.0


def this_node() -> str:
    """The hex id of the Ray node this process runs on."""
    return ray.get_runtime_context().get_node_id()


def connect_ray() -> None:
    """``ray.init()`` when this process is not connected yet, with its errors mapped.

    Raises:
        ShovelingError: Ray could not be started or connected to.
    """
    if ray.is_initialized():
        return
    try:
        ray.init()
    except Exception as exc:  # ray.init raises ConnectionError, RuntimeError, ValueError, ...
        raise ShovelingError(f"could not start or connect to Ray: {exc}") from exc


@contextlib.contextmanager
def refusals_as_value_errors() -> Iterator[None]:
    """A ``ValueError`` raised by the coordinator (a setting or node it refuses) comes out as
    a plain ``ValueError``, like the client's own argument checks."""
    try:
        yield
    except ShovelingError as exc:
        if isinstance(exc.__cause__, ValueError):
            raise ValueError(str(exc.__cause__)) from None
        raise


def ask(name: str, ref: ray.ObjectRef, timeout: float, at_least: float = COORDINATOR_TIMEOUT) -> Any:
    """The coordinator's answer to ``ref``, waited for ``max(timeout, at_least)`` seconds.

    Raises:
        CacheClosed: the coordinator of cache ``name`` is gone.
        ShovelingError: it did not answer in time, or failed.
    """
    with ray_errors(f"cache {name!r}"):
        return ray.get(ref, timeout=max(timeout, at_least))


def open_coordinator(name: str, consul_config, given: dict, timeout: float) -> tuple[ray.actor.ActorHandle, View]:
    """Start or find the coordinator of cache ``name`` and join it with the settings
    ``given``; retried while a closing one holds the name, for :data:`LIFECYCLE_DEADLINE`.

    Returns:
        The coordinator and its view.

    Raises:
        ValueError: a setting differs from the running cache's.
        CacheClosed: a closing coordinator still held the name at the deadline.
        ShovelingError: the coordinator could not be started or did not answer.
    """
    deadline = time.monotonic() + LIFECYCLE_DEADLINE
    while True:
        coordinator = _start_coordinator(name, consul_config)
        try:
            with refusals_as_value_errors():
                return coordinator, ask(name, coordinator.join.remote(given), timeout)
        except CacheClosed:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # another process is closing this cache: its name frees soon


def _start_coordinator(name: str, consul_config) -> ray.actor.ActorHandle:
    # Pinned to the head node: the cluster's GCS lives there, so the coordinator dies only
    # with the cluster (soft affinity was seen to spill it to worker nodes).
    head = next((n.node_id for n in ray_nodes() if n.is_head and n.alive), None)
    strategy = NodeAffinitySchedulingStrategy(head, soft=False) if head else None
    # get_if_exists makes concurrent openers of one name share a single coordinator.
    with ray_errors(f"cache {name!r}: starting its coordinator"):
        return Coordinator.options(
            name=coordinator_name(name),
            namespace=NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
            scheduling_strategy=strategy,
        ).remote(name, consul_config)


def attach_coordinator(name: str, timeout: float) -> tuple[ray.actor.ActorHandle, View]:
    """The running coordinator of cache ``name``, joined without settings.

    Raises:
        CacheNotFound: no cache of that name runs, or it was closed since it was found.
    """
    coordinator = find_coordinator(name)
    if coordinator is None:
        raise CacheNotFound(name, running_caches())
    try:
        return coordinator, ask(name, coordinator.join.remote(None), timeout)
    except CacheClosed:  # closed by another process since it was found
        raise CacheNotFound(name, running_caches()) from None


def stop_coordinator(coordinator: ray.actor.ActorHandle, timeout: float) -> None:
    """Ask ``coordinator`` to shut its cache down (its node actors leave Consul and stop),
    waiting at most ``timeout`` seconds, then kill it."""
    try:
        ray.get(coordinator.shutdown.remote(), timeout=timeout)
    except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
        pass  # already gone, or stuck: it is killed below either way
    ray.kill(coordinator)


def wait_until_free(name: str, coordinator: ray.actor.ActorHandle, deadline: float, timeout: float) -> None:
    """Wait until the stopped ``coordinator`` no longer holds the name ``name``.

    Args:
        deadline: ``time.monotonic()`` to give up at; ``timeout``: the seconds it stands for,
            for the message.

    Raises:
        ShovelingError: the name was not free at ``deadline``.
    """
    mine = coordinator._actor_id
    while True:
        holder = find_coordinator(name)
        if holder is None or holder._actor_id != mine:
            return  # the name is free (or already another cache's: this one is gone)
        if time.monotonic() > deadline:
            raise ShovelingError(f"cache {name!r}: close() did not finish within {timeout:g} s: "
                                 "its coordinator still holds the name")
        time.sleep(0.05)
