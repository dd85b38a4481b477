"""The client: :class:`Cache`, the public surface of shoveling_ray.

It checks every argument before anything is sent, encodes values (``codec``), and hands the
items to the routing engine (:mod:`shoveling_ray.router`), giving it Ray's way of calling the
node actors: this is where actor calls start and are waited for, with every Ray error mapped
to the :mod:`shoveling_ray.errors` tree and, with Consul, a node whose check turns critical
given up on at once. A ``Cache`` pickles into a handle that tasks and actors use as their own.

It does not store data (``actors``), decide placement (``placement``) or route (``router``).
"""

from __future__ import annotations

import contextlib
import heapq
import html
import itertools
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from . import codec, settings
from . import protocol as p
from .actors.coordinator import (DRAIN_DEADLINE, NAMESPACE, Coordinator, coordinator_name, find_coordinator,
                                 running_caches)
from .actors.layout import SCRATCH
from .actors.sessions import RESEND_WINDOW
from .errors import (CacheClosed, CacheFull, CacheMiss, CacheNotFound, DataLost, NodeDrained, NodeUnavailable,
                     ShovelingError, ray_errors)
from .membership import ray_nodes, watch
from .membership.consul import DEFAULT_SERVICE, resolve
from .objects import as_refs, fetch
from .observe.display import Stats, html_table
from .placement import DEFAULT_REMOTE_SCORE, check_strategy
from .ids import check_id as _check_id
from .ids import check_ids as _check_ids
from .ids import check_mapping as _check_mapping
from .router import STAMPED, Router
from .wire import no_gc
from .writer import BufferedWriter

if TYPE_CHECKING:
    from .membership.watch import ConsulView

_MISSING: Any = object()


class _Unchanged:
    """``configure``'s default: the setting keeps its value."""

    def __repr__(self) -> str:
        return "<unchanged>"


_UNCHANGED: Any = _Unchanged()
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
#: Placements a pickled handle carries along (enough for a shuffle's partitions).
_PICKLED_PLACEMENTS = 20_000
#: Seconds between checks of Consul health while waiting for an actor's answer.
_HEALTH_POLL = 0.25
#: Seconds ``Cache()`` keeps trying to reach a coordinator (one being closed by another
#: process releases its name first), and ``close()`` waits for the cache's actors to go.
LIFECYCLE_DEADLINE = 60.0
#: Seconds a handle waits for a node actor's answer to one call, unless ``timeout=`` says
#: otherwise: longer than a write may wait at its node, for spilling (``SPILL_TIMEOUT``) and
#: then for its copies (``PEER_TIMEOUT``), so that a slow node is not taken for a dead one.
DEFAULT_TIMEOUT = 300.0
#: Seconds a handle waits at least for the coordinator (``Cache()``, ``attach``, ``configure``,
#: ``init``; ``drain`` waits ``DRAIN_DEADLINE``): its own work is bounded by its deadlines
#: (``JOIN_DEADLINE`` = 120 s), so a shorter ``timeout`` would give up on it early.
COORDINATOR_TIMEOUT = 300.0
#: Times a call is sent again after the members changed under it (a node died or was drained
#: meanwhile). Writes are stamped, so each is applied once however often it is sent.
RETRIES = 3
NODE_ID_STRATEGIES = ("default",)
#: Ids per page and node of :meth:`Cache.scan_ids` (a page of 12-byte names: about 300 KB).
SCAN_BATCH = 5_000


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"cache name must be 1-128 characters of letters, digits, '_', '.', '-', got {name!r}"
        )
    return name


def _check_prefix(prefix: Any) -> None:
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be str, not {type(prefix).__name__}")


def _check_timeout(timeout: Any) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if not 0 < timeout < math.inf:
        raise ValueError(f"timeout must be a positive, finite number of seconds, got {timeout}")
    return float(timeout)


def _this_node() -> str:
    return ray.get_runtime_context().get_node_id()


def _connect_ray() -> None:
    """``ray.init()`` when this process is not connected yet, with its errors mapped."""
    if ray.is_initialized():
        return
    try:
        ray.init()
    except Exception as exc:  # ray.init raises ConnectionError, RuntimeError, ValueError, ...
        raise ShovelingError(f"could not start or connect to Ray: {exc}") from exc


@contextlib.contextmanager
def _refusals_as_value_errors() -> Iterator[None]:
    """A ``ValueError`` raised by the coordinator (a setting or node it refuses) comes out as
    a plain ``ValueError``, like the client's own argument checks."""
    try:
        yield
    except ShovelingError as exc:
        if isinstance(exc.__cause__, ValueError):
            raise ValueError(str(exc.__cause__)) from None
        raise


class Cache:
    """A distributed in-memory cache with one actor on every Ray node.

    ``Cache(name)`` attaches to the cache of that name, starting it (one actor per alive node,
    no CPU reserved) if it does not run yet; :meth:`attach` only attaches. Any process of the
    job that opens the same name, or receives a pickled handle, sees the same ids, placements
    and data. The actors are detached: the cache lives until :meth:`close` (or the end of a
    ``with`` block) or the end of the Ray cluster, not until the process that started it exits.

    Settings (``max_memory``, ``eviction``, ``max_disk``, ``replicas``, ``http``,
    ``spill_dir``): a new cache takes those given and the defaults for the others; for a
    running cache each one given must equal its running value (``None``, the default, accepts
    any): :meth:`configure` is the one way to change them, so that opening a cache never
    reconfigures it for its other users.

    Example::

        import shoveling_ray as sr
        with sr.Cache("parts") as cache:                        # closed at the end of the block
            placed = cache.init([f"p{i}" for i in range(64)])  # {id: node_id}
            cache.append("p0", b"record")
            task.options(scheduling_strategy=cache.scheduling_strategy("p0")).remote(cache, "p0")

    Args:
        name: cache name: letters, digits, ``_``, ``.``, ``-``; at most 128 characters.
        max_memory: bytes each node's actor may hold (a new cache's default: each node's
            object store capacity).
        eviction: ``"spill"`` (least recently used values go to disk on their node and come
            back on read; :class:`CacheFull` only when ``max_disk`` is reached too),
            ``"reject"`` (raise :class:`CacheFull`) or ``"lru"`` (evict); a new cache's
            default: ``"spill"``.
        max_disk: bytes of spill files each node may hold (a new cache's default: whatever
            leaves 10% of the disk free).
        spill_dir: directory for spill files on every node (each node's actor uses
            ``<spill_dir>/<name>/<node_id>``); a new cache's default: the Ray session's
            directory of the node. Fixed while the cache runs.
        compression: ``"auto"`` (lz4 when the data shrinks), ``"lz4"`` or ``None``; a
            property of this client's writes, readers decode any.
        consul: ``None`` (auto: use Consul when ``CONSUL_HTTP_ADDR`` is set or an agent
            answers on 127.0.0.1:8500), an agent address (``"host:port"`` or an ``http(s)://``
            URL: Consul required), or ``False`` (Ray alone). Decided by whoever starts the
            cache; later openers follow the running cache.
        consul_token: ACL token; defaults to ``CONSUL_HTTP_TOKEN``.
        consul_service: the Consul service the actors register as.
        http: ``True`` serves each node's data read-only over HTTP on the node's address (see
            :meth:`endpoints`); a new cache's default: off.
        replicas: how many nodes hold each id (a new cache's default: 1). With ``k >= 2``
            every write returns once every live copy applied it, reads prefer a copy on the
            reader's node, and a node that dies loses no acknowledged write: its copies are
            rebuilt on the survivors in the background (``stats()`` counts
            ``under_replicated`` ids meanwhile).
        timeout: seconds this handle waits for a node actor's answer to one call before
            :class:`NodeUnavailable` names the node (default :data:`DEFAULT_TIMEOUT`, 300 s;
            settable later as ``cache.timeout``). Calls to the cache's coordinator (opening,
            ``init``, ``configure``, ``drain``) wait at least :data:`COORDINATOR_TIMEOUT`.

    Raises:
        TypeError / ValueError: a bad argument, before Ray is touched; a setting that differs
            from the running cache's (``ValueError`` naming both values).
        ConsulError: Consul was required and its agent does not answer.
        ShovelingError: the cache could not be started.
    """

    def __init__(
        self,
        name: str,
        *,
        max_memory: int | None = None,
        eviction: str | None = None,
        max_disk: int | None = None,
        spill_dir: str | os.PathLike | None = None,
        compression: str | None = "auto",
        consul: str | bool | None = None,
        consul_token: str | None = None,
        consul_service: str = DEFAULT_SERVICE,
        http: bool | None = None,
        replicas: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        _check_name(name)
        wanted = {"max_memory": max_memory, "eviction": eviction, "max_disk": max_disk, "spill_dir": spill_dir,
                  "http": http, "replicas": replicas}
        given = settings.given(**{k: v for k, v in wanted.items() if v is not None})
        codec.check_compression(compression)
        self._timeout = _check_timeout(timeout)
        consul_config = resolve(consul, consul_token, consul_service)
        _connect_ray()
        self._name = name
        self._compression = compression
        self._closed = False
        self._coordinator, view = self._open(consul_config, given)
        self._router = Router(name, view, self._handle, _submit, self._gather, local=_this_node(), nearest=self._nearest)

    @classmethod
    def attach(cls, name: str, *, compression: str | None = "auto", timeout: float = DEFAULT_TIMEOUT) -> Cache:
        """A handle to the running cache ``name``; never starts or reconfigures a cache.

        Example::

            cache = sr.Cache.attach("parts")      # CacheNotFound if nobody started it

        Args:
            name: the cache's name.
            compression, timeout: this handle's, as for :class:`Cache`.

        Raises:
            TypeError / ValueError: a bad argument, before Ray is touched.
            CacheNotFound: no cache of that name runs (also a ``ValueError``); the message
                names the running caches.
        """
        _check_name(name)
        codec.check_compression(compression)
        timeout = _check_timeout(timeout)
        _connect_ray()
        coordinator = find_coordinator(name)
        if coordinator is None:
            raise CacheNotFound(name, running_caches())
        cache = cls.__new__(cls)
        cache._name, cache._compression, cache._timeout, cache._closed = name, compression, timeout, False
        try:
            view = cache._ask(coordinator.join.remote(None))
        except CacheClosed:  # closed by another process since it was found
            raise CacheNotFound(name, running_caches()) from None
        cache._coordinator = coordinator
        cache._router = Router(name, view, cache._handle, _submit, cache._gather, local=_this_node(),
                               nearest=cache._nearest)
        return cache

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def timeout(self) -> float:
        """Seconds this handle waits for a node actor's answer to one call (see :class:`Cache`)."""
        return self._timeout

    @timeout.setter
    def timeout(self, timeout: float) -> None:
        self._timeout = _check_timeout(timeout)

    def configure(
        self,
        *,
        max_memory: int | None = _UNCHANGED,
        eviction: str = _UNCHANGED,
        max_disk: int | None = _UNCHANGED,
        replicas: int = _UNCHANGED,
        http: bool = _UNCHANGED,
    ) -> None:
        """Change settings of the running cache, for every handle and node; the one way to.

        Only the settings given change (see :class:`Cache` for their meaning);
        ``max_memory=None`` / ``max_disk=None`` go back to a new cache's defaults. Returns once
        every node took them: a lower ``max_memory`` spills or evicts at once, a new
        ``replicas`` has had its copies added or dropped (``stats()`` counts
        ``under_replicated`` ids still being copied). Keys set in Consul KV still override
        ``max_memory`` / ``eviction`` / ``max_disk`` / ``http`` on their nodes.
        ``spill_dir`` is fixed while the cache runs.

        Example::

            sr.Cache.attach("parts").configure(max_memory=8 << 30, replicas=2)

        Raises:
            TypeError / ValueError: a bad value, before anything is sent.
            CacheClosed: the cache was closed.
        """
        wanted = {"max_memory": max_memory, "eviction": eviction, "max_disk": max_disk, "replicas": replicas,
                  "http": http}
        given = settings.given(**{k: v for k, v in wanted.items() if v is not _UNCHANGED})
        if not given:
            return
        if self._closed:
            raise CacheClosed(f"cache {self._name!r} was closed")
        with _refusals_as_value_errors():
            self._router.apply_view(self._ask(self._coordinator.configure.remote(given)))

    def _ask(self, ref: ray.ObjectRef, at_least: float = COORDINATOR_TIMEOUT) -> Any:
        """The coordinator's answer to ``ref``, waited for at most ``at_least`` seconds (or this
        handle's longer ``timeout``).

        Raises:
            CacheClosed: the coordinator is gone.
            ShovelingError: it did not answer in time, or failed.
        """
        with ray_errors(f"cache {self._name!r}"):
            return ray.get(ref, timeout=max(self._timeout, at_least))

    def _open(self, consul_config, settings: dict) -> tuple[ray.actor.ActorHandle, dict]:
        """Start or find the coordinator and join; retried while a closing one holds the name."""
        deadline = time.monotonic() + LIFECYCLE_DEADLINE
        while True:
            coordinator = self._start_coordinator(consul_config)
            try:
                with _refusals_as_value_errors():
                    return coordinator, self._ask(coordinator.join.remote(settings))
            except CacheClosed:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)  # another process is closing this cache: its name frees soon

    def _start_coordinator(self, consul_config) -> ray.actor.ActorHandle:
        # Pinned to the head node: the cluster's GCS lives there, so the coordinator dies only
        # with the cluster (soft affinity was seen to spill it to worker nodes).
        head = next((n.node_id for n in ray_nodes() if n.is_head and n.alive), None)
        strategy = NodeAffinitySchedulingStrategy(head, soft=False) if head else None
        # get_if_exists makes concurrent openers of one name share a single coordinator.
        with ray_errors(f"cache {self._name!r}: starting its coordinator"):
            return Coordinator.options(
                name=coordinator_name(self._name),
                namespace=NAMESPACE,
                get_if_exists=True,
                lifetime="detached",
                scheduling_strategy=strategy,
            ).remote(self._name, consul_config)

    # -- pickling: a handle passed to tasks keeps its view and the placements it knows -------

    def __reduce__(self):
        router = self._router
        placements = dict(itertools.islice(router.placements.items(), _PICKLED_PLACEMENTS))
        single = set(itertools.islice(router.single, _PICKLED_PLACEMENTS))
        return _restore, (self._name, self._compression, self._coordinator, router.view, placements, self._closed,
                          self._timeout, single)

    def __repr__(self) -> str:
        return f"Cache({self._name!r}, nodes={len(self._router.members)})"

    # -- how calls reach the actors (given to the router) ------------------------------------

    @property
    def _consul(self) -> ConsulView | None:
        """This process's shared view of Consul health and coordinates, started on first use."""
        config = self._router.view.consul
        if config is None or self._closed:
            return None
        return watch.view(self._consul_key, config, self._name)

    @property
    def _consul_key(self) -> tuple[str, str]:
        """This incarnation of the cache, as the process-wide Consul views know it."""
        return self._name, self._router.view.epoch

    def _nearest(self, nodes: list[str]) -> str | None:
        """The one of ``nodes`` whose check passes nearest to this process's node by Consul's
        coordinates; ``None`` without Consul or when a distance is unknown."""
        view = self._consul
        if view is None:
            return None
        local = self._router.local
        distances = {n: view.distance(local, n) for n in nodes if not view.critical(n)}
        if not distances or None in distances.values():
            return None
        return min(distances, key=distances.get)

    def _check_healthy(self, node: str, ids: list[str]) -> None:
        view = self._consul
        if view is not None and view.critical(node):
            raise NodeUnavailable(node, ids, "its Consul health check is critical")

    def _handle(self, node: str, ids: list[str]) -> ray.actor.ActorHandle:
        """The actor of ``node``, if it is a member and not known to be down."""
        if self._closed:
            raise CacheClosed(f"cache {self._name!r} was closed")
        handle = self._router.members.get(node)
        if handle is None:
            self._refresh()
            raise NodeUnavailable(node, ids, "not a member of the cache")
        self._check_healthy(node, ids)
        return handle

    def _gather(self, pending: dict[str, ray.ObjectRef], ids: dict[str, list[str]], method: str) -> dict[str, Any]:
        """Wait for one call per node, all by one deadline (``timeout`` seconds from now); with
        Consul, give up on a node whose check turns critical. A dead or drained actor refreshes
        the member list before ``NodeUnavailable`` is raised."""
        out = {}
        deadline = time.monotonic() + self._timeout
        for node, ref in pending.items():
            try:
                with ray_errors(f"cache {self._name!r}: {method} on node {node}", node=node, ids=ids[node]):
                    out[node] = self._wait(ref, node, ids[node], deadline)
            except NodeUnavailable as exc:
                if isinstance(exc, NodeDrained) or isinstance(exc.__cause__, ray.exceptions.RayActorError):
                    self._refresh()
                raise
        return out

    def _wait(self, ref: ray.ObjectRef, node: str, ids: list[str], deadline: float) -> Any:
        """``ref``'s value; ``NodeUnavailable`` at ``deadline`` or, with Consul, as soon as the
        node's check is critical."""
        poll = math.inf if self._consul is None else _HEALTH_POLL
        while True:
            left = deadline - time.monotonic()
            try:
                return ray.get(ref, timeout=max(min(left, poll), 0))
            except ray.exceptions.GetTimeoutError:
                if left <= poll:
                    raise NodeUnavailable(node, ids, f"its cache actor did not answer within {self._timeout:g} s "
                                                     "(the handle's timeout)") from None
                self._check_healthy(node, ids)

    def _refresh(self) -> None:
        if self._closed:
            raise CacheClosed(f"cache {self._name!r} was closed")
        self._router.apply_view(self._ask(self._coordinator.join.remote(None)))

    def _run(self, method: str, items: list[tuple], *, cached: bool = True) -> list[tuple]:
        """``Router.run``, tried again when a dead node or actor changed the members meanwhile:
        its ids are then answered by their homes (lost, or recorded elsewhere)."""
        if method not in STAMPED:
            return self._again_if_members_changed(lambda: self._router.run(method, items, cached=cached))
        return self._write(lambda stamp: self._router.run(method, items, cached=cached, stamp=stamp))

    def _write(self, call: Callable[[tuple], Any]) -> Any:
        """``call(stamp)`` with one stamp for every time it is sent (see :meth:`Router.stamp`):
        a write sent again after a node died or was drained is applied once on every node,
        whichever of its ids the first try reached."""
        stamp = self._router.stamp()
        try:
            return self._again_if_members_changed(lambda: call(stamp), time.monotonic() + RESEND_WINDOW)
        finally:
            self._router.done(stamp)

    def _each_node(self, method: str, *args: Any) -> dict[str, Any]:
        """``Router.each_node``, asked again of the new members when a node left meanwhile."""
        return self._again_if_members_changed(lambda: self._router.each_node(method, *args))

    def _again_if_members_changed(self, call: Callable[[], Any], until: float | None = None) -> Any:
        """``call()``; after a ``NodeUnavailable``, again if the coordinator's view moved on
        meanwhile (it follows Ray's node deaths by itself), at most :data:`RETRIES` times and,
        for a write, not after ``until`` (``time.monotonic()``: the nodes remember a write for
        a bounded time, see :mod:`.actors.sessions`); else the error stands."""
        for attempt in range(RETRIES + 1):
            version = self._router.view.version
            try:
                return call()
            except NodeUnavailable:
                if attempt == RETRIES or (until is not None and time.monotonic() > until):
                    raise
                if self._router.view.version == version:
                    self._router.apply_view(self._ask(self._coordinator.view.remote()))
                    if self._router.view.version == version:
                        raise

    def _raise_write_errors(self, items: list[tuple], results: list[tuple]) -> None:
        """Raise for the ids a write did not apply: :class:`DataLost` if some were lost, else
        :class:`CacheFull` if some did not fit, each carrying every such id (``.ids``) and
        how many of the call's ids were written (``.stored`` of ``.total``); a ``TypeError`` for an append
        to a value that is not bytes."""
        failed = [(cache_id, status, value, node) for (cache_id, *_), (status, value, node) in zip(items, results)
                  if status != p.OK]
        lost = [f for f in failed if f[1] == p.LOST]
        full = [f for f in failed if f[1] == p.FULL]
        counts = {"stored": len(items) - len(failed), "total": len(items)} if len(items) > 1 else {}
        if lost:
            raise _data_lost(lost, **counts)
        if full:
            cache_id, _status, value, node = full[0]
            raise CacheFull(node, *value[:3], cache_id, value[3], ids=[f[0] for f in full], **counts)
        for cache_id, status, _value, _node in failed:
            if status == p.WRONG_TYPE:
                raise TypeError(f"cannot append to {cache_id!r}: its value is not bytes")

    # -- values ----------------------------------------------------------------------------

    def set(self, cache_id: str, data: Any) -> None:
        """Store ``data`` under ``cache_id``, replacing any value.

        Raises:
            TypeError / ValueError: bad id or unsupported value (nothing is sent).
            CacheFull: the owning node's limit would be exceeded; the old value stays.
            NodeUnavailable: the owning node's actor does not answer.
        """
        self.set_many({_check_id(cache_id): data})

    def set_many(self, mapping: Mapping[str, Any]) -> None:
        """Store many values, one actor call per node. See :meth:`set`.

        All values are encoded before anything is sent.

        Raises:
            CacheFull: some values did not fit (their old values stay); the others were
                stored. ``.ids`` lists every id not stored, ``.stored`` how many were.
            DataLost: some ids were lost with their node (see :meth:`lost_ids`) and keep
                their loss; the others were stored. ``.ids`` lists every lost id.
        """
        _check_mapping(mapping)
        with no_gc():
            items = [(i, *codec.encode(v, self._compression)) for i, v in mapping.items()]
        self._raise_write_errors(items, self._run("set", items))

    def append(self, cache_id: str, data: bytes | bytearray | memoryview) -> None:
        """Append bytes to ``cache_id``, creating it if absent.

        Appends from one process to one id land in call order.

        Raises:
            TypeError: ``data`` is not bytes-like (nothing is sent), or the stored value is not
                bytes (nothing changes).
            CacheFull: the owning node's limit would be exceeded; nothing changes.
        """
        self.append_many({_check_id(cache_id): data})

    def append_many(self, mapping: Mapping[str, Any], *, token: str | None = None) -> None:
        """Append to many ids, one actor call per node. See :meth:`append`.

        Args:
            token: makes the call idempotent per id: an id that already took an append with
                this token skips it, so a task that runs again (Ray retrying it after its node
                died, or a shuffle rebuilding partitions) appends once. ``set``, ``delete`` and
                ``init`` of a new id start its tokens afresh. Each token an id keeps costs about
                100 bytes of its node's memory.

        Raises:
            CacheFull / DataLost: as for :meth:`set_many`: the other ids took their appends;
                ``.ids`` lists every id that did not.
            TypeError: a value is not bytes-like (nothing is sent), or a stored value is not
                bytes (that id is unchanged).
        """
        _check_mapping(mapping)
        if token is not None and not isinstance(token, str):
            raise TypeError(f"token must be a str or None, not {type(token).__name__}")
        extra = (token,) if token is not None else ()
        items = [(i, codec.encode_append(d, self._compression), *extra) for i, d in mapping.items()]
        self._raise_write_errors(items, self._run("append", items))

    def get(self, cache_id: str, default: Any = _MISSING) -> Any:
        """The value of ``cache_id``.

        Returns:
            ``bytes`` for bytes-like values, a numpy array for arrays, the msgpack round trip
            of anything else (tuples come back as lists); ``default`` if absent and given.

        Raises:
            CacheMiss: absent and no default (a ``KeyError``).
        """
        return self.get_many([_check_id(cache_id)], default)[cache_id]

    def get_many(self, cache_ids: Iterable[str], default: Any = _MISSING) -> dict[str, Any]:
        """Values of many ids, one actor call per node, as ``{id: value}`` in the given order.

        Raises:
            CacheMiss: an id is absent and no default was given (names the first such id).
            DataLost: ids were lost with their node, default or not; ``.ids`` lists all of them.
        """
        ids = list(dict.fromkeys(_check_ids(cache_ids)))
        results = self._run("get", [(i,) for i in ids])
        lost = [(i, r[0], r[1], r[2]) for i, r in zip(ids, results) if r[0] == p.LOST]
        if lost:
            raise _data_lost(lost)  # a default does not hide a loss
        found = [r[1] for r in results if r[0] == p.OK]
        frames = iter(fetch([value[2] for value in found]))
        out = {}
        with no_gc():
            for cache_id, (status, value, _node) in zip(ids, results):
                if status == p.OK:
                    out[cache_id] = codec.decode(value[0], value[1], next(frames))
                elif default is _MISSING:
                    raise CacheMiss(cache_id, self._name)
                else:
                    out[cache_id] = default
        return out

    def delete(self, cache_id: str) -> bool:
        """Delete ``cache_id`` and its placement record. Returns whether it existed."""
        return self.delete_many([_check_id(cache_id)]) == 1

    def delete_many(self, cache_ids: Iterable[str]) -> int:
        """Delete many ids and their placement records, one actor call per node. Returns how
        many existed."""
        ids = list(dict.fromkeys(_check_ids(cache_ids)))
        return sum(self._write(lambda stamp: self._router.delete_many(ids, stamp))) if ids else 0

    def exists(self, cache_id: str) -> bool:
        """Whether ``cache_id`` exists (ids created by ``init`` exist while empty).

        Raises:
            DataLost: the id was lost with its node (as :meth:`get` and :meth:`size` do).
        """
        (status, value, _node), = self._run("exists", [(_check_id(cache_id),)])
        if status == p.LOST:
            raise DataLost(cache_id, value)
        return status == p.OK

    def size(self, cache_id: str) -> int:
        """Raw (uncompressed) size of the value in bytes.

        Raises:
            CacheMiss: the id does not exist.
            DataLost: the id was lost with its node.
        """
        (status, value, _node), = self._run("size", [(_check_id(cache_id),)])
        if status == p.LOST:
            raise DataLost(cache_id, value)
        if status != p.OK:
            raise CacheMiss(cache_id, self._name)
        return value

    def ids(self, prefix: str = "") -> list[str]:
        """All ids starting with ``prefix``, sorted: one list of the whole cache, built in this
        process (for small caches; :meth:`scan_ids` streams a large one)."""
        _check_prefix(prefix)
        found = self._each_node("ids", prefix)
        return sorted(i for ids in found.values() for i in ids)

    def scan_ids(self, prefix: str = "", batch: int = SCAN_BATCH) -> Iterator[str]:
        """The ids starting with ``prefix``, sorted, streamed: every node lists its own a page
        of at most ``batch`` ids at a time (the next page is asked for while one is read) and
        the pages are merged here, so this process holds at most two pages per node (``2 x
        nodes x batch`` names), whatever the cache's size. :meth:`ids` is the same as one
        list.

        Each node lists a snapshot of its ids taken when the scan starts (it holds one pointer
        per id until the scan ends or stops, see :mod:`.actors.scans`): an id that exists
        throughout the scan is yielded exactly once; one set or deleted during it may or may
        not be. A node that forgot the scan (quiet for 5 minutes, or past 64 open scans) goes
        on from a new snapshot after the last id it gave. The nodes are those of the cache
        when the scan starts.

        Raises:
            TypeError / ValueError: a bad ``prefix`` or ``batch``, at the call.
            NodeUnavailable: a node did not answer (scan again: its ids moved to others).
        """
        _check_prefix(prefix)
        if isinstance(batch, bool) or not isinstance(batch, int):
            raise TypeError(f"batch must be int, not {type(batch).__name__}")
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        token = uuid.uuid4().hex
        streams = [self._scan_node(node, token, prefix, batch) for node in sorted(self._router.members)]
        for stream in streams:
            next(stream)  # every node starts its snapshot now, in parallel
        return _merged(streams)

    def _scan_node(self, node: str, token: str, prefix: str, batch: int) -> Iterator[str]:
        """One node's part of :meth:`scan_ids`: primed by one ``next`` (the first page is
        asked for), then its ids."""
        handle, done = self._handle(node, []), False
        pending = _submit(handle, "scan", token, prefix, batch)
        try:
            yield ""
            while not done:
                page, done = self._gather({node: pending}, {node: []}, "scan_ids")[node]
                if not done:  # (naming its last id: a node that forgot the scan goes on from there)
                    pending = _submit(handle, "scan", token, prefix, batch, page[-1] if page else None)
                yield from page
        finally:
            if not done:  # stopped early: the node forgets the snapshot now
                _submit(handle, "scan_end", token)

    def lost_ids(self) -> list[str]:
        """Ids whose only copy was on a node that died (or whose actor died), sorted.

        Reading one (``get``, ``get_many`` with or without a default, ``size``) or appending to
        it raises :class:`DataLost` naming the id and the node, until it is ``set``, deleted or
        ``init``-ed again (``init`` recreates it empty on a live node). Every id has a
        placement record at its home and at the slot's backup home (``init`` and the write that
        creates an id make them), so the backup home knows what died with the home.
        """
        found = self._each_node("lost_ids")
        return sorted(i for lost in found.values() for i in lost)

    def drain(self, node_id: str) -> int:
        """Move every id off ``node_id`` before the node goes away; returns how many moved.

        The node's places in the slot chains go to the other nodes; with one copy per id its
        actor hands each id (its value, and the placement records and lost ids it kept as a
        home) to the id's new home, with replicas it sends the copies it still owed and the
        other copies are promoted; then it stops, and no id lands there again (``init`` skips
        it; a later ``Cache(...)`` starts no actor there). Removing the node afterwards loses
        nothing. Calls that meet the node meanwhile
        wait, then go to the new homes; an ``init`` that chose the node for new ids places
        them on the others.

        Raises:
            ValueError: ``node_id`` is not a member, or is the last one.
            CacheFull: a new home had no room (nothing moved; the node keeps serving).
        """
        if not isinstance(node_id, str):
            raise TypeError(f"node_id must be a str (a hex Ray node id), not {type(node_id).__name__}")
        with _refusals_as_value_errors():
            moved, view = self._ask(self._coordinator.drain.remote(node_id), DRAIN_DEADLINE)
        self._router.apply_view(view)
        return moved

    def writer(self, max_bytes: int = 8 << 20) -> BufferedWriter:
        """A buffered writer for many small appends (shuffles).

        Example::

            with cache.writer() as w:
                for key, record in records:
                    w.append(partition_of(key), record)

        Args:
            max_bytes: bytes buffered before a flush (one ``append_many``, one call per node).
        """
        return BufferedWriter(self, max_bytes)

    # -- placement -------------------------------------------------------------------------

    def init(self, list_ids: Iterable[str], strategy: str = "uniform_nodes", *, replicas: int | None = None,
             scratch: bool = False) -> Mapping[str, str]:
        """Create ids (empty bytes) spread over the cluster.

        Ids that already exist keep their node, data and copy count; new ids are spread by
        ``strategy``:

        - ``uniform_nodes``: per-node counts differ by at most one;
        - ``uniform_cpu``: in proportion to each node's CPUs;
        - ``uniform_memory``: in proportion to each node's free cache memory.

        Within those counts each new id goes to its home (the node its hash names, where
        ``set`` would put it) while that node's share lasts, the rest are spread over the
        shares left: a home creates most of its ids itself (see docs/scaling.md).

        Nodes that joined the cluster since the cache started get their actor first. Each id's
        home creates it on its node and records it before answering, so ``init`` is atomic per
        id for every client: calling it again, from here or from another process at the same
        time, returns the same nodes and keeps the data.

        Args:
            replicas: how many nodes hold each new id, for as long as it exists (``set``
                keeps it, ``delete`` ends it): at most the cache's ``replicas``; ``None``: the
                cache's, following :meth:`configure`. An id of its own factor keeps it when
                ``configure`` raises the cache's ``replicas``, and has at most the cache's
                when it lowers them. With ``replicas=1`` on a cache of copies, an id whose
                node dies is lost (``DataLost``), as on a cache of one copy; a ``Shuffle``
                makes its partitions so (see docs/fault-tolerance.md). Ids that writes create
                (``set``, ``append``, ``*_many``) take the cache's ``replicas``: ``init`` them
                first to give them another.
            scratch: ids of one copy whose large pieces (1 MiB or more each) stay objects of
                the processes that wrote them: the cache makes no copy of its own, neither at
                the write nor at the first read (as a Ray core task's return stays its
                owner's), and a writer that exits or dies takes its pieces along: reading the
                id then raises ``DataLost``. For data you can write again, like a
                ``Shuffle``'s partitions (its mappers run again); ``replicas`` must be 1 or
                ``None``.

        Returns:
            ``{cache_id: node_id}`` for every id given: a dict for up to 100,000 ids; for more,
            a read-only mapping (:class:`~shoveling_ray.placed.Placed`) that keeps about 10
            bytes an id instead of a dict's hundred (a lookup by id first builds an index).

        Raises:
            ValueError: unknown strategy (names the valid ones), an empty id, or ``replicas``
                below 1 or above the cache's, or above 1 with ``scratch``.
            TypeError: ids not an iterable of str, ``replicas`` not an int or ``scratch`` not
                a bool.
            NodeUnavailable: a chosen node did not answer and is still a member (call again to
                place the rest). One that was drained or died meanwhile is left out at once.
        """
        check_strategy(strategy)
        if replicas is not None:
            settings.check_replicas(replicas)
        if not isinstance(scratch, bool):
            raise TypeError(f"scratch must be a bool, not {type(scratch).__name__}")
        if scratch and replicas not in (None, 1):
            raise ValueError(f"scratch ids have one copy: replicas={replicas} cannot go with scratch=True")
        ids = list(dict.fromkeys(_check_ids(list_ids, "list_ids")))
        self._refresh()
        if replicas is not None and replicas > self._router.replicas:
            raise ValueError(f"replicas={replicas} is above cache {self.name!r}'s replicas={self._router.replicas}: "
                             "configure(replicas=...) it first")
        # a node drained or lost since the refresh: the ids not placed yet go to the others
        factor = SCRATCH if scratch else replicas
        return self._again_if_members_changed(lambda: self._router.place(ids, self._weights(strategy), factor))

    def _weights(self, strategy: str) -> dict[str, float]:
        members = self._router.members
        if strategy == "uniform_cpu":
            return {m: self._router.view.info[m]["cpus"] for m in members}
        if strategy == "uniform_memory":
            stats = self.stats()
            return {m: max((s["limit"] or 0) - s["used"], 0) for m, s in stats.items()}
        return {m: 1.0 for m in members}

    def node_ids(self, cache_id: str) -> list[str]:
        """Ray node ids (hex) that hold a live copy of ``cache_id``, its primary copy first;
        empty if it does not exist."""
        (status, value, _node), = self._run("locate", [(_check_id(cache_id),)])
        return list(value) if status == p.OK else []

    def _node_ids_many(self, cache_ids: list[str]) -> list[list[str]]:
        """:meth:`node_ids` of each of ``cache_ids``, one call per node (for
        ``shoveling_ray.data``'s ``dataset_info``)."""
        results = self._run("locate", [(i,) for i in _check_ids(cache_ids)])
        return [list(value) if status == p.OK else [] for status, value, _node in results]

    def _home(self, cache_id: str) -> str:
        """The node a ``set`` of ``cache_id`` creates it on when no placement names another
        (for ``shoveling_ray.data``, which salts block ids until they are homed on the
        writer's node)."""
        return self._router.home(cache_id)

    def _arrow_tables(self, node: str, cache_ids: list[str]) -> ray.ObjectRef:
        """``node``'s actor asked for the values of ``cache_ids`` as Arrow tables in its object
        store (for ``shoveling_ray.data``, see :mod:`.actors.tables`); the pending reply: a
        reference per id, ``None`` for an id not held there. An empty list only lets the actor
        forget the tables of ids gone.

        Raises:
            CacheClosed / NodeUnavailable: the cache was closed; ``node`` is not a member.
        """
        return self._handle(node, cache_ids).arrow_tables.remote(list(cache_ids))

    def node_id(self, cache_id: str, strategy: str = "default") -> str:
        """The Ray node id (hex) best placed to work on ``cache_id``.

        ``default``: the node holding the data (its primary copy); for an id that does not
        exist yet, the node where a ``set`` / ``append`` would create it. With Consul, if that
        node's check is critical, the nearest holder whose check passes, else the passing node
        nearest to it by network coordinates.

        Raises:
            ValueError: unknown strategy.
        """
        _check_id(cache_id)
        if strategy not in NODE_ID_STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; valid strategies: {', '.join(NODE_ID_STRATEGIES)}")
        holders = self._holders(cache_id)
        view = self._consul
        if view is None or not view.critical(holders[0]):
            return holders[0]
        alive = [h for h in holders if not view.critical(h)]
        if alive:
            return min(alive, key=lambda h: self._distance(h, holders[0]))
        passing = [m for m in sorted(self._router.members) if not view.critical(m)]
        return min(passing, key=lambda m: self._distance(m, holders[0]), default=holders[0])

    def _holders(self, cache_id: str) -> list[str]:
        """The holders of ``cache_id``, primary first; the node that would create it if absent."""
        try:
            holders = self.node_ids(cache_id)
        except NodeUnavailable as exc:
            return [exc.node_id]  # where the data is, even if that node cannot serve it now
        return holders or [self._router.home(cache_id)]

    def _distance(self, node_id: str, holder: str) -> float:
        if node_id == holder:
            return 0.0
        view = self._consul
        rtt = view.distance(node_id, holder) if view is not None else None
        return DEFAULT_REMOTE_SCORE if rtt is None else rtt

    def node_cache_score(self, node_id: str, cache_id: str) -> float:
        """Distance between ``node_id`` and the data of ``cache_id``; lower is nearer.

        0.0 on a node that holds a copy of the data (for an id that does not exist yet: the
        node that would create it). Elsewhere, with Consul, the round-trip time in seconds that
        Consul's network coordinates estimate between the node's agent and the nearest
        holder's (Consul's own formula, the figure ``consul rtt`` prints). Without Consul, or before coordinates exist, every other
        node scores :data:`~shoveling_ray.placement.DEFAULT_REMOTE_SCORE` (0.001 s, one
        nominal LAN round trip), since Ray alone knows no distances.
        """
        if not isinstance(node_id, str):
            raise TypeError(f"node_id must be a hex str, not {type(node_id).__name__}")
        return min(self._distance(node_id, holder) for holder in self._holders(_check_id(cache_id)))

    #: The seed design's name of :meth:`node_cache_score`: the same function.
    _node_cache_score = node_cache_score

    def scheduling_strategy(self, cache_id: str) -> NodeAffinitySchedulingStrategy:
        """A soft node-affinity strategy for a task or actor that works on ``cache_id``.

        Example::

            reduce.options(scheduling_strategy=cache.scheduling_strategy("p3")).remote(cache, "p3")
        """
        return NodeAffinitySchedulingStrategy(self.node_id(cache_id), soft=True)

    # -- cluster ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    def nodes(self) -> list[str]:
        """Hex ids of the nodes with a cache actor."""
        return sorted(self._router.members)

    def endpoints(self) -> dict[str, str]:
        """``{node_id: "http://host:port"}`` of the nodes' HTTP read endpoints; empty when off.

        Each serves ``GET /v1/caches/<cache>/ids/<id>`` (the raw bytes of a bytes value held on
        that node: ask the node ``node_id(id)`` names), ``GET /v1/caches/<cache>/ids?prefix=``
        and ``GET /v1/health``; with ``SHOVELING_HTTP_TOKEN`` set on a node, reads there need
        ``Authorization: Bearer <token>``.
        """
        return {node: url for node, url in self._each_node("endpoint").items() if url}

    def stats(self) -> Stats:
        """Per node: ``used`` (memory held: payloads as stored plus per-id overhead, and the
        ``bookkeeping`` counted in it: placement records, copies and repairs to make, and the
        writes remembered so that each applies once), ``raw``
        (payload bytes before compression), ``limit``, ``ids``, ``evictions``, ``policy``, the
        disk tier's ``disk_used`` / ``disk_limit`` / ``spilled_ids`` / ``spills`` /
        ``restores`` / ``spill_wait`` (seconds writes waited for spilling), ``copies`` (ids
        held there as a copy of another node's; counted in ``ids`` too), ``under_replicated``
        (ids whose primary copy is there with fewer copies than their count, ``replicas`` or
        their own from :meth:`init`: being rebuilt, or fewer nodes than that), ``lost`` (ids homed there whose only copy died) and
        ``consul`` (``None`` without Consul, else the
        heartbeat's ``beats`` and last ``error``). A dict; in Jupyter, an HTML table."""
        return Stats(self._each_node("stats"))

    def _repr_html_(self) -> str:
        nodes = len(self._router.members)
        title = f"Cache {self._name!r}: {nodes} node{'' if nodes == 1 else 's'}"
        try:
            return html_table(self.stats(), title)
        except ShovelingError as exc:
            return f"<b>{html.escape(title)}</b>: {html.escape(str(exc))}"

    def close(self, timeout: float | None = None) -> None:
        """Stop the cache: every node actor and the data they hold.

        Waits until the cache's name is free, so a ``Cache(name)`` right after starts a new
        cache. Other handles to the same cache raise :class:`CacheClosed` afterwards. Closing
        twice is harmless. Leaving a ``with Cache(...)`` block calls it.

        Args:
            timeout: seconds to wait for that (default :data:`LIFECYCLE_DEADLINE`, 60 s).

        Raises:
            ShovelingError: the name was not free within ``timeout`` (the actors were asked to
                stop and killed; Ray may still be removing them).
        """
        timeout = LIFECYCLE_DEADLINE if timeout is None else _check_timeout(timeout)
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        try:
            ray.get(self._coordinator.shutdown.remote(), timeout=timeout)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
            pass  # already gone, or stuck: it is killed below either way
        ray.kill(self._coordinator)
        if self._router.view.consul is not None:
            watch.close(self._consul_key)
        mine = self._coordinator._actor_id
        while True:
            holder = find_coordinator(self._name)
            if holder is None or holder._actor_id != mine:
                return  # the name is free (or already another cache's: this one is gone)
            if time.monotonic() > deadline:
                raise ShovelingError(f"cache {self._name!r}: close() did not finish within {timeout:g} s: "
                                     "its coordinator still holds the name")
            time.sleep(0.05)


def _data_lost(lost: list[tuple], **counts: int) -> DataLost:
    """One :class:`DataLost` for the ``(id, status, node that died, node asked)`` of every lost
    id a call met; it names the node when they all were on one. ``counts``: ``stored`` and
    ``total`` of a write."""
    nodes = {node for _id, _status, node, _asked in lost}
    return DataLost(lost[0][0], nodes.pop() if len(nodes) == 1 else "", ids=[f[0] for f in lost], **counts)


def _merged(streams: list[Iterator[str]]) -> Iterator[str]:
    """The sorted streams merged; each is closed (its node's scan ended) when this is."""
    try:
        yield from heapq.merge(*streams)
    finally:
        for stream in streams:
            stream.close()


def _submit(handle: ray.actor.ActorHandle, method: str, *args: Any) -> ray.ObjectRef:
    if method == "batch" and args[2]:  # large payloads as objects of their own: see objects.py
        args = (*args[:2], as_refs(args[2]), *args[3:])
    return getattr(handle, method).remote(*args)


def _restore(name, compression, coordinator, view, placements, closed, timeout, single) -> Cache:
    cache = Cache.__new__(Cache)
    cache._name, cache._compression, cache._coordinator = name, compression, coordinator
    cache._closed, cache._timeout = closed, timeout
    cache._router = Router(name, view, cache._handle, _submit, cache._gather, placements, _this_node(), cache._nearest)
    cache._router.single.update(single)
    return cache
