"""The routing engine: which node actor serves each id, following redirects and reroutes.

Every id has a *home*: the node its hash slot maps to in the cache's slot table
(:mod:`shoveling_ray.placement.hashing`). An id first written by ``set`` / ``append`` lives on
its home. An id created by ``init`` lives where the strategy put it, and its home keeps a
placement record pointing there. The router sends each item to the node it remembers for the
id, else to the home; it follows a redirect (the home names the holder) and a reroute (a
remembered placement went stale: ask the home again), at most :data:`MAX_ROUNDS` times, and
remembers where ids live, so steady-state routing is one actor call per node touched.

With replicas, writes go to the primary copy (a copy redirects them there) and reads go to a
copy on the reader's own node when the id has one (``local``), else to the holder nearest to it
(``nearest``, Consul's coordinates) or to the primary. A batch of more than
:data:`SPREAD_READS_OVER` ids is read from the primaries, spread over the nodes by the hash as
without copies (the reader's node would otherwise serve most of it alone); a read
that meets an unavailable node (its actor died, or with Consul its check is critical) is asked
again of another holder.

The router knows nothing of Ray. It is given ``handle_for(node, ids)`` (the node's actor, or
raises :class:`~shoveling_ray.NodeUnavailable`), ``submit(handle, method, *args)`` (start a
call, return its pending reply) and ``gather({node: pending}, {node: ids}, method)`` (wait for
the replies). The defaults call plain objects directly, which is how the unit tests drive it
against :class:`~shoveling_ray.actors.node._NodeActor` objects without a cluster; the
:class:`~shoveling_ray.Cache` passes Ray's.

It does not validate arguments (``cache``), encode values (``codec``) or choose nodes for new
ids (``placement``).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import threading
import zlib
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from . import protocol as p
from .codec import OBJECT_STORE_BYTES
from .errors import CacheFull, NodeUnavailable, ShovelingError
from .idpack import PackedIds
from .objects import refs_back
from .placed import DICT_IDS, Placed
from .placement import SLOTS, assign_homes, holders, home_index, slot_of
from .view import View
from .wire import Bundled, no_gc, pack, split, unpack

#: Redirects and reroutes one operation may follow before giving up.
MAX_ROUNDS = 6
#: Item methods any copy of an id answers.
_READS = ("get", "exists", "size", "locate")
#: Item methods whose items carry payloads.
_WRITES = ("set", "append")
#: Item methods whose calls carry a stamp, so that a call sent again is applied once.
STAMPED = ("set", "append", "delete")
#: ``init`` locates and places ids this many at a time: a node's actor then holds a few
#: megabytes of a call's temporaries at once, not a copy of millions of names (its freed heap
#: stays in the process, see :mod:`shoveling_ray.heap`, and would count as its memory).
PLACE_CHUNK = 100_000
#: Reads in larger batches go to the primaries (see the module docstring): each node's actor
#: serves its part of a batch one id after another, and a call costs about what a thousand
#: small ids do.
SPREAD_READS_OVER = 1000
#: Items a node is sent in one call at most, when its part of a batch is larger than
#: :data:`WHOLE_ITEMS`: the part goes as several calls of even sizes, all sent at once (the
#: node serves them one after another). Serving a call builds Python objects for each of its
#: items, and the few that outlive it (a timestamp, a counter) keep whole arenas of Python's
#: allocator in the actor: measured with 3 nodes and 1 M ids of 100 B written in calls of
#: 100,000, 20 MB of a node actor's memory stayed beyond ``used``; in calls of 4,096, 6 MB;
#: of 6,667, 8 MB.
CALL_ITEMS = 4096
#: A node's part of a batch up to this many items goes in one call: splitting 5,000 small
#: writes or reads in two cost 10-20% of their speed (``bench_small.py``) for a few megabytes.
WHOLE_ITEMS = 2 * CALL_ITEMS
#: Placements a router remembers at most (about 100 MB of 12-byte ids and their entries); past
#: it, it forgets the eighth it learned first. A forgotten id is asked of its home again,
#: which redirects to the holder: one hop more, then it is remembered again.
REMEMBERED = 1_000_000


def forget_oldest(placements: dict, limit: int) -> None:
    """Bound ``placements`` to ``limit`` entries: past it, forget the ones learned first, and an
    eighth of ``limit`` more, so that the bound costs a pass over them once in a while."""
    excess = len(placements) - limit
    if excess > 0:
        for cache_id in list(itertools.islice(placements, excess + limit // 8)):
            del placements[cache_id]


def call_now(handle: Any, method: str, *args: Any) -> Any:
    """``submit`` for plain objects: the call runs at once and its result is the reply."""
    return getattr(handle, method)(*args)


def gather_now(pending: dict[str, Any], ids: dict[str, list[str]], method: str) -> dict[str, Any]:
    """``gather`` for plain objects: the replies are already there."""
    return pending


def _shared_node_ids(view: View) -> View:
    """``view`` with one string object per node id in its table and chains.

    Ray hands lists of strings over as new objects, one per entry: 3 x 4096 copies of the node
    ids, which pickle to half a megabyte with every task that takes the cache as an argument.
    Shared, pickle writes each id once (the handle pickles to about 30 KB), and a view that
    came out of a pickle is shared already."""
    sample = view.table[:64]
    if len(set(map(id, sample))) == len(set(sample)):
        return view
    same: dict[str, str] = {}
    table = [same.setdefault(n, n) for n in view.table]
    chains = view.chains
    if chains is not None:
        chains = [[same.setdefault(n, n) for n in chain] for chain in chains]
    return dataclasses.replace(view, table=table, chains=chains)


class Router:
    """Routes batches of items to the node actors of one cache.

    Args:
        name: the cache name, for messages.
        view: the coordinator's :class:`~shoveling_ray.view.View` (members, table, chains,
            replicas, zones).
        handle_for: ``(node, ids) -> actor``; raises ``NodeUnavailable`` for a node that
            cannot serve.
        submit, gather: how calls start and are waited for (see the module docstring).
        placements: remembered ``{id: node}`` of ids that live away from their home.
        remember: how many placements to remember at most (:data:`REMEMBERED`): the oldest
            learned are forgotten first; a forgotten id costs one redirect by its home.
        local: the node this process runs on: reads go to a copy there when there is one.
        nearest: ``(nodes) -> node``: the one of ``nodes`` nearest to ``local`` (Consul's
            network coordinates), or ``None`` when unknown; reads go to the nearest holder
            when ``local`` holds no copy. Without it they go to the primary.
    """

    def __init__(
        self,
        name: str,
        view: View,
        handle_for: Callable[[str, list[str]], Any],
        submit: Callable[..., Any] = call_now,
        gather: Callable[[dict, dict, str], dict] = gather_now,
        placements: dict[str, str] | None = None,
        local: str | None = None,
        nearest: Callable[[list[str]], str | None] | None = None,
        remember: int = REMEMBERED,
    ) -> None:
        self.name, self.local, self.nearest, self.remember = name, local, nearest, remember
        self.handle_for, self.submit, self.gather = handle_for, submit, gather
        self.placements: dict[str, str] = placements if placements is not None else {}
        # Ids this client placed with one copy (``init(..., replicas=1)`` or scratch) on a cache
        # of copies: their writes need no bundle for copies (see _calls). At most ``remember``.
        self.single: set[str] = set()
        # Writes are numbered per router: (session, sequence) names a call to every node.
        self.session = os.urandom(8)
        self._sequence = itertools.count(1)
        self._in_flight: set[int] = set()
        self._stamps = threading.Lock()
        self.apply_view(view)

    def stamp(self) -> tuple[bytes, int, int]:
        """A new write call's stamp ``(session, sequence, low)``: ``low`` is the lowest sequence
        still in flight here, so nodes may forget the calls below it. Send the call (again and
        again if need be) with this stamp, then :meth:`done`."""
        with self._stamps:
            sequence = next(self._sequence)
            self._in_flight.add(sequence)
            return self.session, sequence, min(self._in_flight)

    def done(self, stamp: tuple) -> None:
        """The call ``stamp`` names was answered (or given up on): it will not be sent again."""
        with self._stamps:
            self._in_flight.discard(stamp[1])

    def apply_view(self, view: View) -> None:
        view = _shared_node_ids(view)
        self.view = view
        self.members: Mapping[str, Any] = view.members
        self.table: list[str] = view.table
        self.chains: list[list[str]] | None = view.chains
        self.replicas: int = view.replicas
        self.zones: Mapping[str, str] = view.zones
        # Slots whose ids, when they live on their home, have a copy on this process's node.
        self._local_slots = frozenset(
            slot for slot, chain in enumerate(self.chains or ()) if self.local in chain[: self.replicas]
        ) if self.replicas > 1 else frozenset()

    def _holders(self, primary: str, slot: int) -> list[str]:
        """The holders of an id of ``slot`` whose primary copy is on ``primary``."""
        return holders(primary, self.chains[slot], self.replicas, self.zones)

    def home(self, cache_id: str) -> str:
        return self.table[slot_of(cache_id)]

    def run(self, method: str, items: list[tuple], *, cached: bool = True, stamp: tuple | None = None) -> list[tuple]:
        """Send ``items`` (``(cache_id, *payload)``) to their nodes, following redirects.

        Args:
            cached: start from remembered placements; ``False`` starts every item at its home.
            stamp: a write's :meth:`stamp`, when the caller may send the call again (each node
                applies a stamped call to an id once); a write without one gets its own.

        Returns:
            ``(status, value, node)`` per item, in order; never ``REDIRECT`` / ``REROUTE``.

        Raises:
            ShovelingError: an id's placement changed more than ``MAX_ROUNDS`` times.
        """
        own = stamp is None and method in STAMPED
        stamp = self.stamp() if own else stamp
        try:
            with no_gc():
                return self._rounds(method, items, cached, stamp)
        finally:
            if own:
                self.done(stamp)
            forget_oldest(self.placements, self.remember)

    def _rounds(self, method: str, items: list[tuple], cached: bool, stamp: tuple | None) -> list[tuple]:
        placements = self.placements
        members = self.members
        local = self.local if cached and method in _READS and self.replicas > 1 and self.local in members else None
        if len(items) > SPREAD_READS_OVER:
            local = None  # a large batch is read from the primaries, spread over every node
        if local is None:
            homes = home_index([item[0] for item in items], self.table)
        else:  # the slots are needed too: hashed once
            crc = zlib.crc32
            slots = [crc(item[0].encode()) % SLOTS for item in items]
            homes = [self.table[slot] for slot in slots]
        results: list = [None] * len(items)
        groups: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
        copy_read: set[int] = set()  # served by a copy: not where the id lives
        nearest = self.nearest if local is not None else None
        chosen: dict[tuple[str, int], str | None] = {}  # (primary, slot) -> nearest holder
        for index, item in enumerate(items):
            node = placements.get(item[0]) if cached else None
            if node is not None and node not in members:
                node = None  # remembered on a node that left: its home knows what became of it
            if local is not None and local != (node or homes[index]):
                slot = slots[index]
                if slot in self._local_slots if node is None else local in self._holders(node, slot):
                    node = local
                    copy_read.add(index)
                elif nearest is not None:
                    key = (node or homes[index], slot)
                    if key not in chosen:
                        chosen[key] = nearest([n for n in self._holders(key[0], slot) if n in members])
                    if chosen[key] not in (None, key[0]):
                        node = chosen[key]
                        copy_read.add(index)
            group = groups[node or homes[index]]
            group[0].append(index)
            group[1].append(p.AT_HOME if node is None else p.VIA_CACHE)
        avoid: set[str] = set()  # nodes found unavailable during this read
        for _ in range(MAX_ROUNDS):
            try:
                answers = self._send(method, items, groups, stamp)
            except NodeUnavailable as exc:
                if method not in _READS or self.replicas < 2 or exc.node_id in avoid or exc.node_id not in groups:
                    raise
                avoid.add(exc.node_id)
                groups = self._elsewhere(groups, exc, avoid, items, homes, copy_read)
                continue
            retry: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
            for node, (indices, _via) in groups.items():
                for index, (status, value) in zip(indices, answers[node]):
                    if status == p.REDIRECT:
                        if value == homes[index]:  # a backup home's record of an id on its home
                            placements.pop(items[index][0], None)
                        else:
                            placements[items[index][0]] = value
                        retry[value][0].append(index)
                        retry[value][1].append(p.VIA_HOME)
                    elif status == p.REROUTE:
                        if index not in copy_read:
                            placements.pop(items[index][0], None)
                        copy_read.discard(index)
                        retry[homes[index]][0].append(index)
                        retry[homes[index]][1].append(p.AT_HOME)
                    else:
                        if status == p.OK and node != homes[index] and index not in copy_read:
                            placements[items[index][0]] = node
                        results[index] = (status, value, node)
            if not retry:
                return results
            groups = retry
        raise ShovelingError(f"cache {self.name!r}: placements kept moving during {method}; try again")

    def _elsewhere(self, groups: dict, exc: NodeUnavailable, avoid: set, items: list, homes: list,
                   copy_read: set) -> dict:
        """``groups`` with the items of the node that failed (``exc``) moved to another holder
        of each id (a read: any copy answers it).

        Raises:
            NodeUnavailable: ``exc``, when an id has no other live holder.
        """
        moved: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
        for node, (indices, vias) in groups.items():
            if node != exc.node_id:
                moved[node][0].extend(indices)
                moved[node][1].extend(vias)
                continue
            for index in indices:
                cache_id = items[index][0]
                primary = self.placements.get(cache_id, homes[index])
                others = [n for n in self._holders(primary, slot_of(cache_id)) if n not in avoid and n in self.members]
                if not others:
                    raise exc
                moved[others[0]][0].append(index)
                moved[others[0]][1].append(p.VIA_CACHE)
                copy_read.add(index)
        return moved

    def _send(self, method: str, items: list[tuple], groups: dict[str, tuple[list, list]],
              stamp: tuple | None) -> dict[str, list]:
        """One ``batch`` call per node, or per node and copy holders for writes whose smaller
        payloads travel as one object (:meth:`_calls`); returns the ``(status, value)`` list per
        node, in the order of its indices."""
        rounds: list[tuple[dict, dict]] = []  # ({node: pending}, {node: ids}): a node's calls, one per round
        order: dict[str, list[int]] = {}  # of a node sent several calls: its items' positions as answered
        for node, (indices, vias) in groups.items():
            ids = [items[i][0] for i in indices]
            handle = self.handle_for(node, ids)
            calls = self._calls(method, node, [(items[i][0], via, *items[i][1:]) for i, via in zip(indices, vias)])
            if len(calls) > 1:
                order[node] = [k for positions, _, _ in calls for k in positions]
            for r, (positions, blob, buffers) in enumerate(calls):
                if r == len(rounds):
                    rounds.append(({}, {}))
                rounds[r][0][node] = self.submit(handle, "batch", method, stamp, buffers, *split(blob))
                rounds[r][1][node] = ids if len(calls) == 1 else [ids[k] for k in positions]
        answers: dict[str, list] = defaultdict(list)
        for r, (pending, ids) in enumerate(rounds):
            try:
                gathered = self.gather(pending, ids, method)
            except NodeUnavailable as exc:  # the node's later calls are unanswered too
                later = [i for _pending, more in rounds[r + 1:] for i in more.get(exc.node_id, ())]
                if not later:
                    raise
                raise type(exc)(exc.node_id, [*exc.cache_ids, *later], exc.reason) from exc
            for node, (blob, buffers, refs) in gathered.items():
                answers[node].extend(refs_back(unpack(blob, buffers), refs))
        for node, positions in order.items():  # split nodes: their answers back in item order
            answered, answers[node] = answers[node], [None] * len(positions)
            for k, answer in zip(positions, answered):
                answers[node][k] = answer
        return answers

    def _calls(self, method: str, node: str, batch: list[tuple]) -> list[tuple[Sequence[int], bytes, list]]:
        """``batch`` (the items for ``node``) packed: ``[(positions in batch, blob, buffers)]``,
        up to :data:`WHOLE_ITEMS` in one call, more in calls of at most :data:`CALL_ITEMS` items
        (:meth:`_packed_calls` of each part); ``place`` in one (each of its calls fans out to the
        nodes it creates ids on)."""
        if len(batch) <= WHOLE_ITEMS or method == "place":
            return self._packed_calls(method, node, batch)
        size = -(-len(batch) // -(-len(batch) // CALL_ITEMS))  # as few calls as may be, of even sizes
        return [(range(k + positions.start, k + positions.stop) if isinstance(positions, range)
                 else [k + j for j in positions], blob, buffers)
                for k in range(0, len(batch), size)
                for positions, blob, buffers in self._packed_calls(method, node, batch[k:k + size])]

    def _packed_calls(self, method: str, node: str, batch: list[tuple]) -> list[tuple[Sequence[int], bytes, list]]:
        """``batch`` packed as one call, or as several by copy holders:

        A write to ids with copies whose payloads under ``OBJECT_STORE_BYTES`` add up to that
        much goes as one call per set of copy holders, its buffers
        :class:`~shoveling_ray.wire.Bundled`: those payloads become one object, which the
        primary hands on whole to the copies (see :mod:`shoveling_ray.objects`). Ids this
        client placed with one copy (:attr:`single`) go as without copies: a bundle is fetched
        by the actor inside its call, while Ray fetches a call's arguments before it runs."""
        blob, buffers = pack(batch)
        small = sum(b.nbytes for b in buffers if b.nbytes < OBJECT_STORE_BYTES)
        if self.replicas < 2 or method not in _WRITES or small < OBJECT_STORE_BYTES:
            return [(range(len(batch)), blob, buffers)]
        by_copies: dict[tuple, list[int]] = defaultdict(list)
        single = self.single
        for k, item in enumerate(batch):
            by_copies[() if item[0] in single else tuple(self._holders(node, slot_of(item[0]))[1:])].append(k)
        if len(by_copies) == 1 and () in by_copies:
            return [(range(len(batch)), blob, buffers)]
        calls = []
        for others, positions in by_copies.items():
            blob, buffers = pack([batch[k] for k in positions])
            calls.append((positions, blob, Bundled(buffers) if others else buffers))
        return calls

    def each_node(self, method: str, *args: Any) -> dict[str, Any]:
        """Call ``method(*args)`` on every member; returns ``{node: result}``."""
        pending = {node: self.submit(self.handle_for(node, []), method, *args) for node in self.members}
        return self.gather(pending, {node: [] for node in pending}, method)

    def place(self, ids: list[str], weights: Mapping[str, float], replicas: int | None = None) -> Mapping[str, str]:
        """``init``'s protocol: ids that exist keep their node; new ones are spread over the
        nodes in proportion to ``weights`` and created by their homes, held by ``replicas``
        nodes (``None``: the cache's ``replicas``).

        Each home decides for its ids and creates them on their nodes before it answers, so
        every client sees each id placed once, existing, with its record; running it again
        (after a failure, or from another client at the same time) changes nothing placed.

        Returns:
            ``{id: node}`` for every id, in the given order: a dict, or for more than
            :data:`~shoveling_ray.placed.DICT_IDS` ids a :class:`~shoveling_ray.placed.Placed`.

        Raises:
            NodeUnavailable: a chosen node did not answer; the other ids are placed, and
                calling again places the rest.
            CacheFull: a chosen node had no room under ``max_memory`` for an id's entry; the
                ids that fit are placed.
        """
        homes = home_index(ids, self.table)
        with no_gc():
            if replicas is None and self.replicas == 1:
                nodes = self._place_packed(ids, homes, weights)
            else:
                nodes = self._place_items(ids, homes, weights, replicas)
        placements, limit = self.placements, self.remember
        for cache_id, node, home in zip(ids, nodes, homes):
            if node != home:
                placements[cache_id] = node
                if len(placements) > limit:  # an init of millions of ids: remember the last ones
                    forget_oldest(placements, limit)
        return dict(zip(ids, nodes)) if len(ids) <= DICT_IDS else Placed(ids, nodes)

    def _place_items(self, ids: list[str], homes: list[str], weights: Mapping[str, float],
                     replicas: int | None) -> list[str]:
        """:meth:`place` as item batches (``locate``, then ``place``): the node of each id."""
        nodes: list = []
        for k in range(0, len(ids), PLACE_CHUNK):  # chunks: what a node holds at once stays small
            located = self.run("locate", [(i,) for i in ids[k:k + PLACE_CHUNK]], cached=False)
            nodes.extend(r[1][0] if r[0] == p.OK else None for r in located)
        new = [k for k, node in enumerate(nodes) if node is None]
        targets = assign_homes([homes[k] for k in new], weights) if new else []
        own = () if replicas is None else (replicas,)
        for c in range(0, len(new), PLACE_CHUNK):
            chunk = list(zip(new[c:c + PLACE_CHUNK], targets[c:c + PLACE_CHUNK]))
            answers = self.run("place", [(ids[k], target, *own) for k, target in chunk], cached=False)
            for (k, target), (status, value, _node) in zip(chunk, answers):
                if status == p.UNAVAILABLE:
                    raise NodeUnavailable(value[0], [ids[k]], value[1])
                if status == p.FULL:  # the node chosen for it has no room for its entry
                    raise CacheFull(target, *value[:3], ids[k], value[3])
                nodes[k] = value
                if replicas is not None and replicas <= 1 and len(self.single) < self.remember:
                    self.single.add(ids[k])
        return nodes

    def _place_packed(self, ids: list[str], homes: list[str], weights: Mapping[str, float]) -> list[str]:
        """:meth:`place` of ids of one copy, each home sent its ids packed (``locate_ids``,
        then ``place_ids``, see :data:`~shoveling_ray.protocol.PACKED`): no string or tuple
        per id in the actors while they hold only empty ids. The node of each id.

        Raises:
            NodeUnavailable: an id is recorded on a node that left the cache (its loss not
                handled yet at the id's home), as the item batches' redirect to it raises."""
        nodes: list = [None] * len(ids)
        for k in range(0, len(ids), PLACE_CHUNK):  # chunks: what a node holds at once stays small
            chunk = range(k, min(k + PLACE_CHUNK, len(ids)))
            for positions, (numbers, names) in self._to_homes("locate_ids", ids, homes, chunk):
                for position, number in zip(positions, numbers.tolist()):
                    nodes[position] = names[number]
                    # answered from a record naming a node that left: as the item batches'
                    # redirect to it would, fail (the caller retries once the loss is handled)
                    if nodes[position] is not None and nodes[position] not in self.members:
                        raise NodeUnavailable(nodes[position], [ids[position]], "not a member of the cache")
        new = [k for k, node in enumerate(nodes) if node is None]
        targets = assign_homes([homes[k] for k in new], weights) if new else []
        for c in range(0, len(new), PLACE_CHUNK):
            chunk, chosen = new[c:c + PLACE_CHUNK], targets[c:c + PLACE_CHUNK]
            target_nodes = list(dict.fromkeys(chosen))
            index_of = {node: n for n, node in enumerate(target_nodes)}
            target_of = dict(zip(chunk, (index_of[t] for t in chosen)))
            problems = []
            answers = self._to_homes("place_ids", ids, homes, chunk, lambda positions: (
                np.fromiter(map(target_of.__getitem__, positions), np.int16, len(positions)), target_nodes))
            for positions, (numbers, names, failed) in answers:
                for position, number in zip(positions, numbers.tolist()):
                    nodes[position] = names[number]
                problems.extend((positions[k], answer) for k, answer in failed.items())
            if problems:  # as the item batches: the first id not placed
                k, (status, value) = min(problems, key=lambda problem: problem[0])
                if status == p.UNAVAILABLE:
                    raise NodeUnavailable(value[0], [ids[k]], value[1])
                raise CacheFull(target_nodes[target_of[k]], *value[:3], ids[k], value[3])
        return nodes

    def _to_homes(self, method: str, ids: list[str], homes: list[str], positions: Sequence[int],
                  extra: Callable[[list[int]], tuple] = lambda positions: ()) -> list[tuple[list[int], Any]]:
        """One packed call of ``method`` per home of the ids at ``positions``: ``(pack of its
        ids, *extra(their positions))``; returns ``[(positions, answer)]``, one per home."""
        groups: dict[str, list[int]] = defaultdict(list)
        for k in positions:
            groups[homes[k]].append(k)
        pending, asked = {}, {}
        for node, chosen in groups.items():
            asked[node] = names = [ids[k] for k in chosen]
            blob, buffers = pack((PackedIds.of(names), *extra(chosen)))
            pending[node] = self.submit(self.handle_for(node, names), "batch", method, None, buffers, *split(blob))
        replies = self.gather(pending, asked, method)
        return [(groups[node], unpack(blob, buffers)) for node, (blob, buffers, _refs) in replies.items()]

    def delete(self, cache_id: str) -> bool:
        """Delete an id and its placement record (the home does both). Whether it existed."""
        return self.delete_many([cache_id])[0]

    def delete_many(self, cache_ids: list[str], stamp: tuple | None = None) -> list[bool]:
        """:meth:`delete` for many ids, one call per home; whether each existed. ``stamp``: as
        for :meth:`run`."""
        results = self.run("delete", [(i,) for i in cache_ids], cached=False, stamp=stamp)
        for cache_id in cache_ids:
            self.placements.pop(cache_id, None)
            self.single.discard(cache_id)
        return [bool(existed) for _status, existed, _node in results]
