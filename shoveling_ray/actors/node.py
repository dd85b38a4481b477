"""The cache actor pinned to one Ray node: its share of the data, the copies it keeps for
other nodes, and the placement records of the ids whose home or backup home it is.

The class is plain Python (testable without Ray); :data:`NodeActor` is its Ray actor. Client
calls run one at a time, which is what keeps each writer's appends in call order and makes each
home the single point that decides where an id lives. Calls from other nodes' actors are served
in their own concurrency group (``peer``), so two homes calling each other never wait on each
other.

This module is the Ray-facing shell only; each job is a part that owns its state:

- :mod:`.layout`: the coordinator's last view as this node took it;
- :mod:`.peers`: calls to the other members' actors (one timeout, one error policy);
- :mod:`.items`: the item methods a client batch runs (:mod:`.batch`: the batch served);
- :mod:`.directory`: placement records and lost ids;
- :mod:`.replication`: copies: forwarding writes, eviction drops, repairs;
- :mod:`.drain`: handing this node's ids over, taking another's;
- :mod:`.admin`: settings, the HTTP endpoint, Consul, stats and metrics;
- :mod:`.scans`: the pages of ``Cache.scan_ids``.
- :mod:`.tables`: values handed out as Arrow tables in the object store (``shoveling_ray.data``).
"""

from __future__ import annotations

import functools
import os
import threading

import ray

from ..errors import NodeDrained
from ..heap import IdleTrim, give_back_freed, keep_freed_memory
from ..idpack import PackedIds
from ..membership.consul import ConsulConfig
from ..objects import adopt, load, own_copies, refs_beside
from ..protocol import PACKED
from ..wire import no_gc, pack
from .admin import Admin
from .batch import unpack_batch
from .directory import Directory
from .disk import SpillFiles
from .drain import HAND_OVER_BYTES, Drain
from .items import Items
from .layout import Layout, MembersChange
from .peers import Peers
from .replication import Replication
from .scans import Scans
from .sessions import Sessions
from .spiller import Spiller
from .storage import Store
from .tables import Tables


def _session_dir() -> str:
    """This node's directory of the running Ray session (``/tmp/ray/session_...``)."""
    context = ray.get_runtime_context()
    return os.path.join(context.get_temp_dir(), context.get_session_name(), "shoveling_ray")


def _locked(method):
    # Calls run one at a time already; the lock orders them with the Consul config thread. The
    # cyclic GC pauses as for client batches (see wire.no_gc): peer calls such as replicate and
    # create_empty build entries by the thousand too.
    @functools.wraps(method)
    def wrapper(self, *args):
        with self.idle_trim.call(), self._lock, no_gc():
            return method(self, *args)

    return wrapper


def _counted(method):
    # A call of the default group (a client batch, a view change, a drain, a repair round): the
    # freed heap is handed back once none ran for a while (see heap.IdleTrim).
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.idle_trim.call():
            return method(self, *args, **kwargs)

    return wrapper


class _NodeActor:
    """State of one node's share of a cache.

    Args:
        cache: the cache name.
        node_id: hex id of the node the actor is pinned to.
        max_memory: limit on the memory held (see :mod:`.storage`); ``None`` for none.
        policy: ``"spill"``, ``"reject"`` or ``"lru"``.
        max_disk: limit on spill files; ``None``: keep 10% of the disk free.
        spill_dir: where spill files go, in ``<spill_dir>/<cache>/<node_id>``; ``None``: the
            Ray session's directory on this node. Whatever a dead predecessor left there is
            removed first.
        consul: Consul settings, or ``None`` for Ray alone. The actor talks to the agent its
            node names in ``CONSUL_HTTP_ADDR``, else to the one in ``consul``.
        http: serve the HTTP read endpoint (:mod:`shoveling_ray.observe.http`) on the node's
            address.
    """

    def __init__(self, cache: str, node_id: str, max_memory: int | None, policy: str, max_disk: int | None = None,
                 spill_dir: str | None = None, consul: ConsulConfig | None = None, http: bool = False) -> None:
        keep_freed_memory()
        self.idle_trim = IdleTrim()  # the freed heap goes back once calls stop (see heap.py)
        self.cache = cache
        self.node_id = node_id
        disk = SpillFiles(os.path.join(spill_dir or _session_dir(), cache, node_id), max_disk)
        # Held while state changes; free during calls to peers. Reentrant: Admin.publish takes
        # it too, from methods that hold it and from those that do not.
        self._lock = threading.RLock()
        self.store = Store(node_id, max_memory, policy, disk, own=adopt, load=load, wake=self._wake)
        self.spiller = Spiller(self.store, self._lock, own_copies)
        self.layout = Layout(node_id)
        self.peers = Peers(cache, self.layout)
        self.sessions = Sessions()  # what the clients' writes applied here, to apply each once
        self.tables = Tables(self.store)  # dataset blocks handed to Ray Data
        self.scans = Scans()  # Cache.scan_ids's open snapshots of the ids here
        parts = (self.store, self.layout, self.peers)
        copies: dict[str, str] = {}  # ids held here as a copy (Replication's; the directory reads it)
        self.directory = Directory(self.store, copies, self.layout, self.peers, self._lock)
        self.replication = Replication(*parts, copies, self.directory, self.sessions, self._lock)
        self.drain = Drain(*parts, self.directory, self.replication, self.sessions, self._lock)
        self.items = Items(*parts, self.directory, self.replication, self.drain, self._lock)
        base = {"max-memory": max_memory, "max-disk": max_disk, "eviction": policy, "http": http}
        self.admin = Admin(self, self.store, self.directory, self.replication, self.sessions, self.tables, self._lock,
                           base, consul)

    def _wake(self) -> None:
        self.spiller.wake()

    def ping(self) -> str:
        """The node this actor really runs on, as Ray reports it."""
        return ray.get_runtime_context().get_node_id()

    def failure_domain(self) -> str | None:
        """The zone this node's Consul agent names in its node meta (``zone``), if any."""
        return self.admin.zone

    @_counted
    def batch(self, method: str, stamp: tuple | None, buffers: list, *blob: bytes) -> tuple:
        """Run an item method (:mod:`.items`) on a packed batch (see :mod:`shoveling_ray.wire`:
        its blob in pieces, its large payloads as references, see :mod:`shoveling_ray.objects`).

        A write's ``stamp`` (``(session, sequence, low)``, see :mod:`.sessions`) names the
        client call: an id that took this call here before (the client sent it again after a
        failure) is answered as it was, not written again.

        ``place`` and ``delete`` call the other members' actors (``peers``, from the
        coordinator's last view). Writes taken here as the primary copy are applied on the
        other copies before the answer (``Replication.forward``).

        Returns ``(blob, buffers, refs)``: the packed results, with every ObjectRef of a
        stored frame moved to ``refs`` (see :func:`~shoveling_ray.objects.refs_beside`).

        Raises:
            NodeDrained: this node was drained: its ids live on other nodes now.
        """
        if self.drain.retired:
            raise NodeDrained(self.node_id, [], "it was drained: its ids live on other nodes now")
        with no_gc():
            served, items = unpack_batch(stamp, buffers, blob)
            self.replication.send_drops()
            with self._lock:
                served.applied = self.sessions.call(stamp)
            try:
                results = getattr(self.items, method)(served, items)
            finally:  # what the batch applied reaches the copies, even if an item failed oddly
                if served.taken:
                    if self.layout.replicas > 1:
                        self.replication.forward(method, served)
                    served.taken = []  # it holds the frames' ObjectRefs: a deleted value must free them
            served.arrived = {}  # the writer's references: its objects are freed once the views go
            if served.owed:
                with self._lock:
                    self.spiller.own(served.owed)
            if self.store.evicted:
                with self._lock:
                    self.replication.evictions()
                self.replication.send_drops()
            self.directory.record_created(served.created)
            refs = refs_beside(results) if method == "get" else []
            moved = served.moved
            count = len(items[0]) if method in PACKED else len(items)
            self.admin.metrics.served(method, count, moved if method in ("set", "append") else 0,
                                      moved if method == "get" else 0)
            if method in PACKED:
                give_back_freed()  # init's temporaries: see heap.py
            self.admin.publish()
            return (*pack(results), refs)

    @_locked  # outside ray.method: Ray reads the group from the unwrapped function
    @ray.method(concurrency_group="peer")
    def create_empty(self, pairs: list) -> dict:
        """See :meth:`.Items.create_empty`."""
        full = self.items.create_empty(pairs)
        self.admin.publish()
        return full

    @_locked
    @ray.method(concurrency_group="peer")
    def create_empty_ids(self, cache_ids: PackedIds) -> dict:
        """See :meth:`.Items.create_empty_ids`."""
        full = self.items.create_empty_ids(cache_ids)
        self.admin.publish()
        give_back_freed()  # init's temporaries: see heap.py
        return full

    @_locked
    @ray.method(concurrency_group="peer")
    def drop(self, cache_ids: list) -> int:
        """Delete ids held here and their records (their home deleted them); returns how many
        existed here."""
        dropped = sum(self.items.drop_here(i) for i in cache_ids)
        self.admin.publish()
        return dropped

    @_locked
    @ray.method(concurrency_group="peer")
    def replicate(self, forwarded: tuple, buffers: list, *blob: bytes) -> list:
        """See :meth:`.Replication.replicate`."""
        failed = self.replication.replicate(forwarded, buffers, blob)
        self.admin.publish()
        return failed

    @_locked
    @ray.method(concurrency_group="peer")
    def drop_copies(self, sent: tuple) -> None:
        """See :meth:`.Replication.drop_copies`."""
        self.replication.drop_copies(sent)
        self.admin.publish()

    @_locked
    @ray.method(concurrency_group="peer")
    def adopt_records(self, pairs: list) -> None:
        """See :meth:`.Directory.adopt_records`."""
        self.directory.adopt_records(pairs)
        self.admin.publish()

    @_locked
    @ray.method(concurrency_group="peer")
    def adopt_packed_records(self, parts: list) -> None:
        """See :meth:`.Directory.adopt_packed`."""
        self.directory.adopt_packed(parts)
        self.admin.publish()
        give_back_freed()

    @_locked
    @ray.method(concurrency_group="peer")
    def adopt_directory(self, sent: tuple) -> None:
        """See :meth:`.Directory.adopt_directory`."""
        self.directory.adopt_directory(sent)
        self.admin.publish()

    @_counted
    def hand_over(self, old_chains: list, chains: list, peers: dict) -> int:
        """Drain this node; see :meth:`.Drain.hand_over`."""
        moved = self.drain.hand_over(old_chains, chains, peers)
        self.admin.publish()
        return moved

    @_locked
    @ray.method(concurrency_group="peer")
    def receive(self, handed: tuple, buffers: list, *blob: bytes) -> None:
        """See :meth:`.Drain.receive`."""
        self.drain.receive(handed, buffers, blob)
        self.admin.publish()

    @_locked
    @ray.method(concurrency_group="peer")
    def give_back(self, returned: tuple) -> list:
        """See :meth:`.Drain.give_back`."""
        touched = self.drain.give_back(returned)
        self.admin.publish()
        return touched

    @_locked
    @ray.method(concurrency_group="peer")
    def take_copies(self, sent: tuple, buffers: list, *blob: bytes) -> list:
        """See :meth:`.Replication.take_copies`."""
        failed = self.replication.take_copies(sent, buffers, blob)
        self.admin.publish()
        return failed

    @_counted
    def repair(self, max_bytes: int = HAND_OVER_BYTES) -> tuple[int, int]:
        """See :meth:`.Replication.repair`."""
        done = self.replication.repair(max_bytes)
        self.admin.publish()
        return done

    @_locked
    def ids(self, prefix: str) -> list:
        """Ids whose primary copy is here (so that each id is listed by one node)."""
        return [i for i in self.store.ids(prefix) if i not in self.replication.copies]

    @_locked
    def scan(self, token: str, prefix: str, limit: int, after: str | None = None) -> tuple[list, bool]:
        """The next page of scan ``token`` over :meth:`ids` (``Cache.scan_ids``, see
        :mod:`.scans`; ``after``: the last id the client received from here): ``(up to limit
        ids, sorted; whether the scan is done)``."""
        return self.scans.page(token, limit, lambda: self.ids(prefix), after)

    def scan_end(self, token: str) -> None:
        """Forget scan ``token`` before its end (the client stopped reading)."""
        with self._lock:
            self.scans.end(token)

    @_locked
    def arrow_tables(self, cache_ids: list) -> list:
        """See :meth:`.Tables.refs`."""
        refs = self.tables.refs(cache_ids)
        self.admin.publish()  # the tables kept count in used
        return refs

    @_locked
    def lost_ids(self) -> dict:
        """``{id: dead node}`` of the ids homed here whose only copy died."""
        return self.directory.lost_ids()

    @_counted
    def rebuild(self, old_chains: list | None, chains: list, gone: list, peers: dict | MembersChange, replicas: int,
                full: bool = False, zones: dict | None = None, members_version: int | None = None) -> int:
        """Take a new view of the cache (the coordinator calls every member after any change)
        and keep every id's copies and the placement directory whole.

        ``chains`` replaces ``old_chains`` (``None``: the first view); ``gone`` are the nodes
        that died or left with their data; ``peers`` the members' actors, whole or as a
        :class:`.MembersChange` from the ones taken last (``members_version`` names the result);
        ``replicas`` the copy count, ``zones`` the members' failure domains. Then records pointing at a gone node are
        mended (:meth:`.Directory.mend`), ids whose primary copy is gone are promoted and
        missing copies queued (:meth:`.Replication.take_view`), and the directory nodes that
        are new learn the records (:meth:`.Directory.pushes`). Returns how many records were
        sent.
        """
        with self._lock:
            peers = self.layout.members(peers)  # raises before anything changes
            change = self.layout.take(old_chains, chains, gone, peers, replicas, zones, members_version)
            self.drain.forget_left(peers)
            self.directory.mend(change)
            announce = self.replication.take_view(change, full)
            directory = self.directory.pushes(change, full)
        self.admin.publish()
        sent = self.directory.send(directory, announce)
        if self.replication.repairs:
            self.replication.start_repairs()
        return sent

    @_locked
    def stats(self) -> dict:
        """See :meth:`.Admin.stats`."""
        return self.admin.stats()

    @_locked
    def configure(self, max_memory: int | None, policy: str, max_disk: int | None) -> None:
        """New base settings; keys set in Consul KV still override them."""
        self.admin.configure(**{"max-memory": max_memory, "eviction": policy, "max-disk": max_disk})
        self.admin.publish()

    @_locked
    def serve_http(self, on: bool) -> str | None:
        """The cache-wide setting for the HTTP read endpoint (Consul KV key ``http`` still
        overrides it); returns its URL (``None`` when off)."""
        self.admin.configure(http=on)
        return self.endpoint()

    def endpoint(self) -> str | None:
        """The HTTP endpoint's URL, or ``None`` when it is off."""
        return self.admin.endpoint()

    def http_value(self, cache_id: str) -> tuple[int, bytes | None]:
        """See :meth:`.Admin.http_value`."""
        return self.admin.http_value(cache_id)

    @_locked
    def http_ids(self, prefix: str) -> list[str]:
        return sorted(self.store.ids(prefix))

    def shutdown(self) -> None:
        """Stop the HTTP endpoint and the Consul threads (each joined), deregister this
        actor's instance and remove its spill files."""
        self.admin.stop()
        self.spiller.stop()
        with self._lock:
            self.store.close()


NodeActor = ray.remote(num_cpus=0, max_restarts=0, concurrency_groups={"peer": 1})(_NodeActor)
