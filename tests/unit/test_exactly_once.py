"""Writes sent again are applied once: against plain node-actor objects, no Ray cluster.

A client sends a whole call again after one of its nodes died or was drained (``Cache`` does,
with the call's stamp, see ``shoveling_ray.actors.sessions``). The nodes that had applied it
must answer from what they remember: on the node itself, on a copy promoted after the primary
died mid-call, and on the node an id was drained or repaired to.
"""

from __future__ import annotations

from collections import Counter

import pytest

from shoveling_ray import NodeUnavailable
from shoveling_ray import protocol as p
from shoveling_ray.actors.sessions import ENTRY_BYTES, SESSION_BYTES, Sessions
from shoveling_ray.codec import encode, encode_append
from shoveling_ray.placement import holders, reassign_chains, slot_of
from shoveling_ray import router as router_module
from shoveling_ray.router import Router
from shoveling_ray.view import View

from .test_replicas import NODES4, lose, repair_all, values_on
from .test_router import NODES, Counting, Serial, get, make_actors, make_router, set_, view_of


def appends(ids, record: bytes) -> list[tuple]:
    return [(i, encode_append(record)) for i in ids]


class DiesAfterApplying:
    """A node whose actor applies a call, then is lost before its answer reaches the client
    (it died, or a drain retired it mid-call)."""

    def __init__(self, actor):
        self.actor = actor

    def batch(self, *args):
        self.actor.batch(*args)
        raise NodeUnavailable(self.actor.node_id, [], "died before it answered")


def ids_homed(router: Router, node: str, count: int, prefix: str = "id") -> list[str]:
    found, n = [], 0
    while len(found) < count:
        if router.home(f"{prefix}{n}") == node:
            found.append(f"{prefix}{n}")
        n += 1
    return found


def test_a_call_sent_again_after_one_node_failed_is_applied_once_on_the_nodes_that_took_it():
    # The reported bug: the client's retry sent the whole batch again, and every id whose node
    # had applied it took the append twice.
    actors = make_actors()
    on_a, on_b = ids_homed(make_router(actors), "node-a", 5), ids_homed(make_router(actors), "node-b", 5)
    flaky = {"node-b": DiesAfterApplying(actors["node-b"])}
    router = make_router(actors, lambda node, ids: flaky.get(node) or Serial(actors[node]))
    stamp = router.stamp()
    items = appends(on_a + on_b, b"r1,")
    with pytest.raises(NodeUnavailable):
        router.run("append", items, stamp=stamp)
    flaky.clear()  # the client tries again, with the same stamp
    results = router.run("append", items, stamp=stamp)
    assert [r[0] for r in results] == [p.OK] * 10
    assert all(get(router, i) == b"r1," for i in on_a + on_b)
    router.done(stamp)
    router.run("append", items)  # a new call is applied, of course
    assert all(get(router, i) == b"r1,r1," for i in on_a + on_b)


def test_sets_and_deletes_sent_again_do_not_undo_later_writes():
    actors = make_actors()
    first, second = make_router(actors), make_router(actors)
    stamp = first.stamp()
    first.run("set", [("k", *encode(b"old"))], stamp=stamp)
    set_(second, "k", b"new")  # acknowledged after the first set
    first.run("set", [("k", *encode(b"old"))], stamp=stamp)  # the first client's retry
    assert get(second, "k") == b"new"
    stamp = first.stamp()
    assert first.delete_many(["k"], stamp) == [True]
    set_(second, "k", b"newer")
    assert first.delete_many(["k"], stamp) == [True]  # answered as the first time
    assert get(second, "k") == b"newer"


def test_a_promoted_copy_does_not_apply_again_what_its_dead_primary_forwarded():
    actors = make_actors(NODES4, replicas=2)
    router = make_router(actors, replicas=2)
    ids = ids_homed(router, "node-a", 6)
    for cache_id in ids:
        set_(router, cache_id, b"")
    dying = make_router(actors, lambda node, ids: DiesAfterApplying(actors[node]) if node == "node-a"
                        else Serial(actors[node]), replicas=2)
    stamp = dying.stamp()
    items = appends(ids, b"once,")
    with pytest.raises(NodeUnavailable):
        dying.run("append", items, stamp=stamp)  # node-a applied and forwarded, then died
    survivors, after = lose(actors, router, "node-a", replicas=2)
    after.session = dying.session  # the same client, with its new view
    results = after.run("append", items, stamp=stamp)
    assert [r[0] for r in results] == [p.OK] * 6
    repair_all(survivors)
    for cache_id in ids:
        copies = values_on(survivors, cache_id)
        assert len(copies) == 2 and set(copies.values()) == {b"once,"}, (cache_id, copies)


def test_a_repaired_copy_knows_the_writes_it_was_given_whole():
    # A copy made by repair that becomes the primary before the client's retry.
    actors = make_actors(NODES4, replicas=2)
    router = make_router(actors, replicas=2)
    cache_id = ids_homed(router, "node-a", 1)[0]
    first_copy = holders("node-a", router.chains[slot_of(cache_id)], 2)[1]
    stamp = router.stamp()
    router.run("append", appends([cache_id], b"x,"), stamp=stamp)
    survivors, after = lose(actors, router, first_copy, replicas=2)
    repair_all(survivors)  # node-a copies the id whole to a new holder
    new_copy = next(n for n in values_on(survivors, cache_id) if n != "node-a")
    survivors, after = lose(survivors, after, "node-a", replicas=2)
    assert after.run("locate", [(cache_id,)])[0][1][0] == new_copy
    after.session = router.session
    after.run("append", appends([cache_id], b"x,"), stamp=stamp)
    assert get(after, cache_id) == b"x,"


def test_an_id_drained_to_its_new_home_takes_a_retry_once():
    actors = make_actors()
    router = make_router(actors)
    drained = "node-c"
    ids = ids_homed(router, drained, 4)
    stamp = router.stamp()
    router.run("append", appends(ids, b"a,"), stamp=stamp)
    chains = reassign_chains(router.chains, [n for n in NODES if n != drained], 2)
    peers = {n: a for n, a in actors.items() if n != drained}
    actors[drained].hand_over(router.chains, chains, peers)
    for actor in peers.values():
        actor.rebuild(router.chains, chains, [drained], peers, 1, full=True)
    view = View(peers, [c[0] for c in chains], chains, 1)
    after = Router("unit", view, lambda node, ids: Serial(peers[node]))
    after.session = router.session
    after.run("append", appends(ids, b"a,"), stamp=stamp)
    assert all(get(after, i) == b"a," for i in ids)


def test_what_sessions_remember_is_bounded_and_counted_in_used():
    now = [0.0]
    sessions = Sessions(ttl=60.0, clock=lambda: now[0])
    for sequence in range(1, 11):
        sessions.call((b"s1", sequence, sequence)).update({f"id{sequence}-{k}": (p.OK, None) for k in range(100)})
    # every call below the last one's ``low`` was answered: only the last is remembered
    assert sessions.nbytes < 2 * 100 * ENTRY_BYTES
    sessions.call((b"s2", 1, 1))["x"] = (p.OK, None)
    now[0] = 30.0
    sessions.call((b"s2", 2, 1))
    now[0] = 70.0  # s1 quiet for 70 s, s2 for 40 s
    sessions.call((b"s3", 1, 1))
    assert len(sessions) == 2 and sessions.of(["x"]) == [(b"s2", 1, "x", (p.OK, None))]

    actors = make_actors()
    router = make_router(actors)
    actor = actors[router.home("k")]
    before = actor.stats()["used"]
    stamp = router.stamp()  # in flight: what it wrote is kept until the client's next call
    router.run("set", [(f"k{i}", *encode(b"v")) for i in range(200) if router.home(f"k{i}") == actor.node_id], stamp=stamp)
    held = actor.sessions.nbytes
    assert held > 0 and actor.stats()["used"] - before >= held


def test_with_three_copies_a_promoted_primary_mends_the_copy_the_dead_one_never_reached():
    # node-a applied and forwarded to one copy only, then died; the promoted copy answers the
    # client's resend from memory: the third holder must still end up with the write.
    actors = make_actors(NODES4, replicas=3)
    router = make_router(actors, replicas=3)
    cache_id = ids_homed(router, "node-a", 1)[0]
    set_(router, cache_id, b"")
    _a, second, third = holders("node-a", router.chains[slot_of(cache_id)], 3)
    actors["node-a"].layout.peers = {**actors["node-a"].layout.peers, third: Unreachable(actors[third])}
    dying = make_router(actors, lambda node, ids: DiesAfterApplying(actors[node]) if node == "node-a"
                        else Serial(actors[node]), replicas=3)
    stamp = dying.stamp()
    with pytest.raises(NodeUnavailable):
        dying.run("append", appends([cache_id], b"once,"), stamp=stamp)
    survivors, after = lose(actors, router, "node-a", replicas=3)
    after.session = dying.session
    after.run("append", appends([cache_id], b"once,"), stamp=stamp)
    repair_all(survivors)
    copies = values_on(survivors, cache_id)
    assert len(copies) == 3 and set(copies.values()) == {b"once,"}, copies


class Unreachable:
    """A member whose forwarded writes never arrive (the primary died before they went out)."""

    def __init__(self, actor):
        self.actor = actor

    def replicate(self, *args):
        raise NodeUnavailable(self.actor.node_id, [], "the primary died before forwarding")

    def __getattr__(self, name):
        return getattr(self.actor, name)


def test_writes_a_node_adopts_are_kept_as_long_as_those_it_applied_and_refused_ids_take_none():
    now = [0.0]
    sessions = Sessions(ttl=60.0, clock=lambda: now[0])
    sessions.call((b"s", 1, 1))["old"] = (p.OK, None)
    now[0] = 50.0
    sessions.adopt([(b"s", 2, "moved", (p.OK, None))])  # repaired or drained here just now
    now[0] = 100.0
    sessions.call((b"other", 1, 1))  # sweeps quiet sessions
    assert sessions.of(["moved"]) == [(b"s", 2, "moved", (p.OK, None))]

    actors = make_actors(NODES4, replicas=2)
    full = actors["node-b"]
    full.store.configure(1, "reject", None)
    entries = [(b"s", 7, "x", (p.OK, None))]
    from shoveling_ray.wire import pack
    blob, buffers = pack([("x", 0, b"", [(0, 5, b"hello")], [])])
    assert full.take_copies(("node-a", entries, {}), buffers, blob) == ["x"]
    assert full.sessions.of(["x"]) == []  # it took nothing: a resend there must apply


def test_the_count_of_remembered_ids_follows_every_way_they_come_and_go():
    """``nbytes`` is read at every publish, so it is kept as a count: it must equal what a walk
    over every session's calls finds, whatever the order of calls, resends, adoptions, trims and
    sweeps."""
    import random

    now = [0.0]
    sessions = Sessions(ttl=60.0, clock=lambda: now[0])
    rng = random.Random(7)
    for step in range(3000):
        now[0] += rng.random()
        session = bytes([rng.randrange(6)])
        sequence = rng.randrange(1, 40)
        if rng.random() < 0.2:
            sessions.adopt([(session, sequence, f"m{rng.randrange(50)}", (p.OK, None))])
        else:
            applied = sessions.call((session, sequence, max(1, sequence - rng.randrange(10))))
            for _ in range(rng.randrange(4)):
                applied[f"i{rng.randrange(50)}"] = (p.OK, None)
            if rng.random() < 0.3:
                applied.update({f"u{rng.randrange(50)}": p.APPLIED})
        if step % 500 == 499:
            now[0] += 100.0  # every session goes quiet past the ttl: the next call sweeps
        walked = sum(len(a) for _seen, calls in sessions._sessions.values() for a in calls.values())
        assert sessions.nbytes == walked * ENTRY_BYTES + len(sessions) * SESSION_BYTES


class DiesOnItsSecondCall:
    """A node that serves one call of a batch split into several, then is lost."""

    def __init__(self, actor):
        self.actor, self.calls = actor, 0

    def batch(self, *args):
        self.calls += 1
        if self.calls > 1:
            raise NodeUnavailable(self.actor.node_id, [], "died after its first call")
        return self.actor.batch(*args)


def later(handle, method: str, *args):
    """``submit`` as Ray's: the call runs when its reply is waited for."""
    return lambda: getattr(handle, method)(*args)


def waited(pending: dict, ids: dict, method: str) -> dict:
    """``gather`` as the client's: a node that fails names the ids of its call."""
    out = {}
    for node, reply in pending.items():
        try:
            out[node] = reply()
        except NodeUnavailable as exc:
            raise NodeUnavailable(node, ids[node], exc.reason) from exc
    return out


def test_a_large_batch_goes_to_a_node_in_several_calls_and_a_retry_after_some_applies_the_rest_once(monkeypatch):
    monkeypatch.setattr(router_module, "CALL_ITEMS", 7)
    monkeypatch.setattr(router_module, "WHOLE_ITEMS", 14)
    actors = make_actors()
    on_a = ids_homed(make_router(actors), "node-a", 30)
    calls = Counter()
    dying = {"node-a": DiesOnItsSecondCall(actors["node-a"])}
    router = Router("unit", view_of(actors), lambda node, ids: dying.get(node) or Counting(actors[node], calls, node),
                    submit=later, gather=waited)
    stamp = router.stamp()
    items = appends(on_a, b"r1,")
    with pytest.raises(NodeUnavailable) as raised:
        router.run("append", items, stamp=stamp)
    assert sorted(raised.value.cache_ids) == sorted(on_a[6:])  # its failed call and the later ones
    reader = make_router(actors)
    assert sum(get(reader, i) == b"r1," for i in on_a) == 6  # the first call (30 ids in 5 calls of 6)
    dying.clear()  # the client tries again, with the same stamp
    results = router.run("append", [*items, ("other", encode_append(b"x"))], stamp=stamp)
    assert [r[0] for r in results] == [p.OK] * 31
    assert calls[("node-a", "append")] == 5  # 30 ids in calls of at most 7: 5 of 6
    small = ids_homed(make_router(actors), "node-a", 14, prefix="small")
    router.run("append", appends(small, b"s"))
    assert calls[("node-a", "append")] == 6  # up to WHOLE_ITEMS in one call
    assert [get(reader, i) for i in on_a] == [b"r1,"] * 30 and get(reader, "other") == b"x"
