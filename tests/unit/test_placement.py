import math
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoveling_ray.placement import (
    SLOTS,
    STRATEGIES,
    Coordinate,
    apportion,
    assign,
    assign_homes,
    build_chains,
    check_strategy,
    home_index,
    reassign_chains,
    holders,
    rtt_seconds,
    slot_of,
)

NODES = ["aa", "bb", "cc"]


def test_slot_of_is_stable_across_processes():
    # CRC-32 of the UTF-8 bytes: a fixed value, unlike Python's salted hash().
    assert slot_of("partition-0") == 1620033673 % SLOTS
    assert 0 <= slot_of("ü" * 100) < SLOTS


def test_chains_are_deterministic_balanced_and_of_distinct_nodes():
    chains = build_chains(NODES, 2)
    assert chains == build_chains(list(reversed(NODES)), 2)
    assert all(len(chain) == 2 and chain[0] != chain[1] for chain in chains)
    homes, backups = Counter(c[0] for c in chains), Counter(c[1] for c in chains)
    for counts in (homes, backups):
        assert set(counts) == set(NODES)
        assert all(abs(c - SLOTS / 3) < SLOTS * 0.05 for c in counts.values())
    assert [c[:1] for c in chains] == [c[:1] for c in build_chains(NODES, 3)]  # longer chains keep homes
    assert all(len(c) == 1 for c in build_chains(["solo"], 2))


def test_reassign_moves_only_the_dead_nodes_places_and_survivors_move_up():
    chains = build_chains(NODES, 2)
    new = reassign_chains(chains, ["aa", "cc"], 2)
    for old, now in zip(chains, new):
        assert "bb" not in now and len(now) == 2
        if "bb" not in old:
            assert now == old
        else:
            survivor = [n for n in old if n != "bb"]
            assert now[: len(survivor)] == survivor  # the backup home becomes the home
    assert abs(sum(c[0] == "aa" for c in new) - sum(c[0] == "cc" for c in new)) < SLOTS * 0.1


def test_joiners_fill_short_chains_only_and_fewer_replicas_truncate():
    short = build_chains(["aa"], 3)
    grown = reassign_chains(short, ["aa", "bb", "cc"], 3)
    assert all(c[0] == "aa" and sorted(c) == ["aa", "bb", "cc"] for c in grown)
    full = build_chains(NODES, 2)
    assert reassign_chains(full, NODES + ["dd"], 2) == full  # a joiner moves no id
    assert all(len(c) == 2 for c in reassign_chains(build_chains(NODES, 3), NODES, 2))


def test_the_second_node_of_a_chain_is_in_another_zone_when_there_is_one():
    nodes = ["a1", "a2", "a3", "b1"]
    zones = {"a1": "za", "a2": "za", "a3": "za", "b1": "zb"}
    chains = build_chains(nodes, 2, zones)
    assert all(zones[c[0]] != zones[c[1]] for c in chains)
    after = reassign_chains(chains, ["a1", "a2", "a3"], 2, zones)  # one zone left: any node
    assert all(len(c) == 2 and c[0] != c[1] for c in after)


def test_holders_are_the_primary_then_the_other_nodes_of_the_chain():
    assert holders("bb", ["aa", "bb", "cc"], 2) == ["bb", "aa"]
    assert holders("dd", ["aa", "bb", "cc"], 3) == ["dd", "aa", "bb"]
    assert holders("aa", ["aa", "bb"], 1) == ["aa"]
    assert holders("aa", ["aa"], 3) == ["aa"]  # fewer nodes than replicas


def test_holders_of_an_id_off_its_chain_span_zones():
    """An id ``init`` put on a node outside its chain gets its copy in another zone, and an
    id on its home keeps the chain's (already zone-aware) order."""
    zones = {"a1": "a", "a2": "a", "a3": "a", "b1": "b", "b2": "b"}
    nodes = sorted(zones)
    chains = build_chains(nodes, 2, zones)
    for chain in chains[:200]:
        for primary in nodes:
            picked = holders(primary, chain, 2, zones)
            assert picked[0] == primary and {zones[n] for n in picked} == {"a", "b"}, (primary, chain)
        assert holders(chain[0], chain, 2, zones) == holders(chain[0], chain, 2)
    chains3 = build_chains(nodes, 3, zones)
    assert all(holders(c[0], c, 3, zones) == c for c in chains3)
    assert holders("a1", ["a2", "a3"], 2, zones) == ["a1", "a2"]  # no other zone in the chain


def test_reassign_with_no_survivor_rebuilds_and_empty_is_error():
    assert {c[0] for c in reassign_chains(build_chains(["x"], 2), ["y", "z"], 2)} == {"y", "z"}
    with pytest.raises(ValueError):
        reassign_chains(build_chains(["x"], 2), [], 2)
    with pytest.raises(ValueError):
        build_chains([], 2)


def test_home_index_matches_table():
    table = [c[0] for c in build_chains(NODES, 2)]
    ids = [f"id{i}" for i in range(100)]
    assert home_index(ids, table) == [table[slot_of(i)] for i in ids]


@given(st.integers(0, 5000), st.lists(st.integers(1, 64), min_size=1, max_size=10))
def test_apportion_is_exact_and_within_one_of_the_quota(total, ws):
    weights = {f"n{i}": w for i, w in enumerate(ws)}
    counts = apportion(total, weights)
    assert sum(counts.values()) == total
    mass = sum(ws)
    for node, w in weights.items():
        assert abs(counts[node] - total * w / mass) < 1


@given(st.integers(0, 3000), st.integers(1, 12))
def test_uniform_counts_differ_by_at_most_one(total, n):
    counts = Counter(assign(total, {f"n{i}": 1 for i in range(n)}))
    values = [counts.get(f"n{i}", 0) for i in range(n)]
    assert max(values) - min(values) <= 1


def test_assign_interleaves_neighbours():
    nodes = assign(9, {"a": 1, "b": 1, "c": 1})
    assert all(nodes[i] != nodes[i + 1] for i in range(8))


@given(st.lists(st.sampled_from("abcde"), max_size=300), st.lists(st.integers(0, 4), min_size=5, max_size=5))
def test_assign_homes_keeps_the_counts_and_puts_every_id_it_can_on_its_home(homes, ws):
    weights = dict(zip("abcde", ws))
    nodes = assign_homes(homes, weights)
    counts = apportion(len(homes), weights)
    assert Counter(nodes) == Counter({k: c for k, c in counts.items() if c})  # as assign's
    at_home = sum(1 for home, node in zip(homes, nodes) if node == home)
    assert at_home == sum(min(c, Counter(homes)[k]) for k, c in counts.items())  # as many as can be


def test_zero_and_negative_weights():
    assert apportion(4, {"a": 0, "b": 0}) == {"a": 2, "b": 2}
    assert apportion(4, {"a": -5, "b": 1}) == {"a": 0, "b": 4}
    with pytest.raises(ValueError):
        apportion(3, {})


def test_check_strategy_names_valid_ones():
    for s in STRATEGIES:
        assert check_strategy(s) == s
    with pytest.raises(ValueError, match="uniform_nodes, uniform_cpu, uniform_memory"):
        check_strategy("round_robin")


def test_rtt_formula_known_values():
    a = Coordinate(vec=(0.0, 0.0), height=0.001, adjustment=0.0)
    b = Coordinate(vec=(0.003, 0.004), height=0.002, adjustment=0.0)
    assert rtt_seconds(a, b) == pytest.approx(0.005 + 0.003)
    # Adjustments are added while the sum stays positive...
    a2 = Coordinate(vec=(0.0, 0.0), height=0.001, adjustment=0.0005)
    assert rtt_seconds(a2, b) == pytest.approx(0.0085)
    # ...and ignored when they would make it non-positive.
    a3 = Coordinate(vec=(0.0, 0.0), height=0.001, adjustment=-0.01)
    assert rtt_seconds(a3, b) == pytest.approx(0.008)
    assert rtt_seconds(a, a) == pytest.approx(0.002)


def test_rtt_from_consul_json_and_dimension_check():
    c = Coordinate.from_consul({"Vec": [0.001] * 8, "Error": 0.2, "Adjustment": 0.0001, "Height": 1e-5})
    d = Coordinate.from_consul({"Vec": [0.0] * 8, "Error": 0.2, "Adjustment": 0.0, "Height": 1e-5})
    assert rtt_seconds(c, d) == pytest.approx(math.sqrt(8) * 0.001 + 2e-5 + 0.0001)
    with pytest.raises(ValueError, match="dimensions"):
        rtt_seconds(c, Coordinate(vec=(0.0,)))
