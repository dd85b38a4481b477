"""The client: :class:`Cache`, the public surface of shoveling_ray.

It checks every argument before anything is sent (:mod:`.client.checks`), encodes values
(``codec``) and decodes them, and hands the items to the handle's :class:`~.client.calls.Calls`,
which routes them (:mod:`shoveling_ray.router`) to the node actors with Ray, waits for them and
maps Ray's errors. A ``Cache`` pickles into a handle that tasks and actors use as their own.

It does not store data (``actors``), decide placement (``placement``), route (``router``) or
call Ray itself (``client``).
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from . import codec, settings
from . import protocol as p
from .actors.layout import SCRATCH
from .client import lifecycle, locality, replies
from .client.calls import DEFAULT_TIMEOUT, Calls
from .client.checks import (check_batch, check_init, check_name, check_node_id_strategy, check_prefix,
                            check_timeout, check_token)
from .client.lifecycle import COORDINATOR_TIMEOUT, LIFECYCLE_DEADLINE
from .client.scan import SCAN_BATCH, scan
from .errors import CacheMiss, DataLost, ShovelingError
from .ids import check_id as _check_id
from .ids import check_ids as _check_ids
from .ids import check_mapping as _check_mapping
from .membership.consul import DEFAULT_SERVICE, resolve
from .objects import fetch
from .observe.display import Stats, html_table
from .wire import no_gc
from .writer import BufferedWriter

if TYPE_CHECKING:
    from .router import Router

__all__ = ["Cache", "COORDINATOR_TIMEOUT", "DEFAULT_TIMEOUT", "LIFECYCLE_DEADLINE", "SCAN_BATCH"]

_MISSING: Any = object()


class _Unchanged:
    """``configure``'s default: the setting keeps its value."""

    def __repr__(self) -> str:
        return "<unchanged>"


_UNCHANGED: Any = _Unchanged()


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
        check_name(name)
        wanted = {"max_memory": max_memory, "eviction": eviction, "max_disk": max_disk, "spill_dir": spill_dir,
                  "http": http, "replicas": replicas}
        given = settings.given(**{k: v for k, v in wanted.items() if v is not None})
        codec.check_compression(compression)
        timeout = check_timeout(timeout)
        consul_config = resolve(consul, consul_token, consul_service)
        lifecycle.connect_ray()
        coordinator, view = lifecycle.open_coordinator(name, consul_config, given, timeout)
        self._compression = compression
        self._calls = Calls(name, coordinator, view, timeout)

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
        check_name(name)
        codec.check_compression(compression)
        timeout = check_timeout(timeout)
        lifecycle.connect_ray()
        coordinator, view = lifecycle.attach_coordinator(name, timeout)
        return _restore(compression, Calls(name, coordinator, view, timeout))

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def timeout(self) -> float:
        """Seconds this handle waits for a node actor's answer to one call (see :class:`Cache`)."""
        return self._calls.timeout

    @timeout.setter
    def timeout(self, timeout: float) -> None:
        self._calls.timeout = check_timeout(timeout)

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
        if given:
            self._calls.configure(given)

    # -- pickling: a handle passed to tasks keeps its view and the placements it knows -------

    def __reduce__(self):
        return _restore, (self._compression, self._calls)

    def __copy__(self) -> Cache:
        """A handle of its own (its own routing, timeout and closed state), as a pickled
        one is."""
        build, args = self._calls.__reduce__()
        return _restore(self._compression, build(*args))

    def __repr__(self) -> str:
        return f"Cache({self.name!r}, nodes={len(self._router.members)})"

    # -- internal, for shoveling_ray's other modules, tests and benchmarks ------------------

    @property
    def _router(self) -> Router:
        """The handle's routing engine (:class:`~shoveling_ray.router.Router`)."""
        return self._calls.router

    @property
    def _coordinator(self) -> ray.actor.ActorHandle:
        return self._calls.coordinator

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
        replies.raise_write_errors(items, self._calls.run("set", items))

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
        check_token(token)
        extra = (token,) if token is not None else ()
        items = [(i, codec.encode_append(d, self._compression), *extra) for i, d in mapping.items()]
        replies.raise_write_errors(items, self._calls.run("append", items))

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
        results = self._calls.run("get", [(i,) for i in ids])
        lost = [(i, r[0], r[1], r[2]) for i, r in zip(ids, results) if r[0] == p.LOST]
        if lost:
            raise replies.data_lost(lost)  # a default does not hide a loss
        found = [r[1] for r in results if r[0] == p.OK]
        frames = iter(fetch([value[2] for value in found]))
        out = {}
        with no_gc():
            for cache_id, (status, value, _node) in zip(ids, results):
                if status == p.OK:
                    out[cache_id] = codec.decode(value[0], value[1], next(frames))
                elif default is _MISSING:
                    raise CacheMiss(cache_id, self.name)
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
        return sum(self._calls.write(lambda stamp: self._router.delete_many(ids, stamp))) if ids else 0

    def exists(self, cache_id: str) -> bool:
        """Whether ``cache_id`` exists (ids created by ``init`` exist while empty).

        Raises:
            DataLost: the id was lost with its node (as :meth:`get` and :meth:`size` do).
        """
        (status, value, _node), = self._calls.run("exists", [(_check_id(cache_id),)])
        if status == p.LOST:
            raise DataLost(cache_id, value)
        return status == p.OK

    def size(self, cache_id: str) -> int:
        """Raw (uncompressed) size of the value in bytes.

        Raises:
            CacheMiss: the id does not exist.
            DataLost: the id was lost with its node.
        """
        (status, value, _node), = self._calls.run("size", [(_check_id(cache_id),)])
        if status == p.LOST:
            raise DataLost(cache_id, value)
        if status != p.OK:
            raise CacheMiss(cache_id, self.name)
        return value

    def ids(self, prefix: str = "") -> list[str]:
        """All ids starting with ``prefix``, sorted: one list of the whole cache, built in this
        process (for small caches; :meth:`scan_ids` streams a large one)."""
        check_prefix(prefix)
        found = self._calls.each_node("ids", prefix)
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
        check_prefix(prefix)
        check_batch(batch)
        return scan(self._calls, prefix, batch)

    def lost_ids(self) -> list[str]:
        """Ids whose only copy was on a node that died (or whose actor died), sorted.

        Reading one (``get``, ``get_many`` with or without a default, ``size``) or appending to
        it raises :class:`DataLost` naming the id and the node, until it is ``set``, deleted or
        ``init``-ed again (``init`` recreates it empty on a live node). Every id has a
        placement record at its home and at the slot's backup home (``init`` and the write that
        creates an id make them), so the backup home knows what died with the home.
        """
        found = self._calls.each_node("lost_ids")
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
        return self._calls.drain(node_id)

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
        check_init(strategy, replicas, scratch)
        ids = list(dict.fromkeys(_check_ids(list_ids, "list_ids")))
        self._calls.refresh()
        if replicas is not None and replicas > self._router.replicas:
            raise ValueError(f"replicas={replicas} is above cache {self.name!r}'s replicas={self._router.replicas}: "
                             "configure(replicas=...) it first")
        # a node drained or lost since the refresh: the ids not placed yet go to the others
        factor = SCRATCH if scratch else replicas
        return self._calls.again_if_members_changed(lambda: self._router.place(ids, self._weights(strategy), factor))

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
        return self._calls.locate([_check_id(cache_id)])[0]

    def _node_ids_many(self, cache_ids: list[str]) -> list[list[str]]:
        """:meth:`node_ids` of each of ``cache_ids``, one call per node (for
        ``shoveling_ray.data``'s ``dataset_info``)."""
        return self._calls.locate(_check_ids(cache_ids))

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
        return self._calls.handle(node, cache_ids).arrow_tables.remote(list(cache_ids))

    def node_id(self, cache_id: str, strategy: str = "default") -> str:
        """The Ray node id (hex) best placed to work on ``cache_id``.

        ``default``: the node holding the data (its primary copy); for an id that does not
        exist yet, the node where a ``set`` / ``append`` would create it. With Consul, if that
        node's check is critical, the nearest holder whose check passes, else the passing node
        nearest to it by network coordinates.

        Raises:
            ValueError: unknown strategy.
        """
        check_node_id_strategy(strategy)
        holders = self._calls.holders(_check_id(cache_id))
        return locality.best_node(self._calls.consul, holders, self._router.members)

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
        holders = self._calls.holders(_check_id(cache_id))
        return locality.score(self._calls.consul, node_id, holders)

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
        return self._calls.name

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
        return {node: url for node, url in self._calls.each_node("endpoint").items() if url}

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
        return Stats(self._calls.each_node("stats"))

    def _repr_html_(self) -> str:
        nodes = len(self._router.members)
        title = f"Cache {self.name!r}: {nodes} node{'' if nodes == 1 else 's'}"
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
        self._calls.close(LIFECYCLE_DEADLINE if timeout is None else check_timeout(timeout))


def _restore(compression: str | None, calls: Calls) -> Cache:
    """A handle of ``calls`` (an unpickled one, or one just attached)."""
    cache = Cache.__new__(Cache)
    cache._compression, cache._calls = compression, calls
    return cache
