"""The client's choice of the node nearest to an id's data (``client/locality.py``), without a
cluster: a stand-in for the Consul view with given health and distances."""

from __future__ import annotations

from shoveling_ray.client import locality
from shoveling_ray.placement import DEFAULT_REMOTE_SCORE


class View:
    """A Consul view whose ``critical`` nodes and pairwise ``rtt`` are given."""

    def __init__(self, critical=(), rtt=None):
        self._critical, self._rtt = set(critical), rtt or {}

    def critical(self, node):
        return node in self._critical

    def distance(self, a, b):
        return self._rtt.get(frozenset((a, b)))


RTT = {frozenset(("a", "b")): 0.004, frozenset(("a", "c")): 0.002, frozenset(("b", "c")): 0.003}


def test_without_consul_holders_score_zero_and_others_the_default():
    assert locality.score(None, "a", ["a", "b"]) == 0.0
    assert locality.score(None, "c", ["a", "b"]) == DEFAULT_REMOTE_SCORE
    assert locality.best_node(None, ["b", "a"], ["a", "b", "c"]) == "b"
    assert locality.nearest(None, "a", ["b", "c"]) is None


def test_with_consul_the_score_is_the_rtt_to_the_nearest_holder():
    assert locality.score(View(rtt=RTT), "a", ["b", "c"]) == 0.002
    assert locality.score(View(), "a", ["b"]) == DEFAULT_REMOTE_SCORE  # no coordinates yet


def test_a_critical_primary_gives_way_to_the_nearest_passing_holder_then_member():
    assert locality.best_node(View({"a"}, RTT), ["a", "b", "c"], ["a", "b", "c"]) == "c"
    assert locality.best_node(View({"a"}, RTT), ["a"], ["a", "b", "c"]) == "c"
    assert locality.best_node(View({"a", "b", "c"}, RTT), ["a"], ["a", "b", "c"]) == "a"


def test_nearest_skips_critical_nodes_and_needs_every_distance():
    assert locality.nearest(View({"c"}, RTT), "a", ["b", "c"]) == "b"
    assert locality.nearest(View(rtt=RTT), "a", ["b", "c"]) == "c"
    assert locality.nearest(View(), "a", ["b", "c"]) is None
