"""A node's part of ``Cache.scan_ids`` (:mod:`shoveling_ray.actors.scans`): pages of a sorted
snapshot, forgotten when done, stopped or quiet. The scan over many nodes is tested in
tests/cluster/test_cache.py."""

from __future__ import annotations

from shoveling_ray.actors.scans import MAX_SCANS, SCAN_TTL, Scans


def pages(scans: Scans, token: str, limit: int, ids: list[str]) -> list[list[str]]:
    out, done = [], False
    while not done:
        page, done = scans.page(token, limit, lambda: ids)
        out.append(page)
    return out


def test_a_scan_pages_a_sorted_snapshot_and_forgets_it_at_its_end():
    scans, ids = Scans(), [f"id{i:03}" for i in range(25)][::-1]
    assert pages(scans, "t", 10, ids) == [sorted(ids)[:10], sorted(ids)[10:20], sorted(ids)[20:]]
    assert len(scans) == 0
    assert pages(scans, "u", 5, ids[:5]) == [sorted(ids[:5])]  # exactly one page: done at once
    assert pages(scans, "v", 3, []) == [[]]


def test_ids_added_after_the_first_page_do_not_move_the_pages():
    scans, ids = Scans(), ["b", "d", "f", "h"]
    first, done = scans.page("t", 2, lambda: ids)
    ids.extend(["a", "c", "e"])  # the store changed; the snapshot did not
    rest, done = scans.page("t", 2, lambda: ids)
    assert (first, rest, done) == (["b", "d"], ["f", "h"], True)


def test_stopped_and_quiet_scans_are_forgotten():
    now = [0.0]
    scans, ids = Scans(clock=lambda: now[0]), [str(i) for i in range(10)]
    scans.page("stopped", 2, lambda: ids)
    scans.page("quiet", 2, lambda: ids)
    scans.end("stopped")
    assert len(scans) == 1
    now[0] = SCAN_TTL + 1
    scans.page("new", 2, lambda: ids)
    assert len(scans) == 1  # the quiet one went, the new one stays
    for k in range(2 * MAX_SCANS):
        scans.page(f"many{k}", 2, lambda: ids)
    assert len(scans) <= MAX_SCANS


def test_a_scan_forgotten_midway_goes_on_after_the_last_id_the_client_received():
    """A slow reader's scan is forgotten after SCAN_TTL quiet seconds, or pushed out by
    MAX_SCANS others: its next page, naming the last id received, still continues in order,
    each id once (an id set meanwhile after that point is in it)."""
    now = [0.0]
    scans, ids = Scans(clock=lambda: now[0]), [f"id{i:02}" for i in range(10)]
    first, _ = scans.page("slow", 4, lambda: ids)
    now[0] = SCAN_TTL + 1
    scans.page("other", 1, lambda: ids)  # forgets the quiet one
    ids.append("id05b")
    rest, done = [], False
    while not done:
        page, done = scans.page("slow", 4, lambda: ids, after=(rest or first)[-1])
        rest += page
    assert first + rest == sorted(ids)
