"""The per-node tables for notebooks and terminals, from figures as stats() reports them."""

from __future__ import annotations

from shoveling_ray.observe.display import COLUMNS, Stats, human_bytes, rows, text_table

FIGURES = {
    "bb" * 28: {"used": 900, "raw": 900, "limit": 1000, "ids": 3, "evictions": 0, "policy": "reject", "consul": None, "lost": 2,
                "disk_used": 3 << 20, "spilled_ids": 2, "copies": 1, "under_replicated": 1},
    "aa" * 28: {"used": 1536, "raw": 2000, "limit": None, "ids": 12000, "evictions": 7, "policy": "lru",
                "consul": {"beats": 4, "error": "agent unreachable"}},
}


def test_human_bytes():
    assert [human_bytes(n) for n in (None, 0, 1023, 1536, 5 << 30)] == ["-", "0 B", "1023 B", "1.5 KiB", "5.0 GiB"]


def test_rows_are_in_node_order_with_share_and_consul_standing():
    table = rows(FIGURES)
    assert [r[0] for r in table] == sorted(FIGURES)
    assert table[0][1:] == ("12000", "0", "1.5 KiB", "-", "-", "0 B", "0", "7", "0", "0", "lru", "failing: agent unreachable")
    assert table[1][1:] == ("3", "1", "900 B", "1000 B", "90%", "3.0 MiB", "2", "0", "2", "1", "reject", "off")
    text = text_table(COLUMNS, table).splitlines()
    assert text[0].split() == list(COLUMNS) and len(text) == 3


def test_stats_stay_a_dict_and_render_as_an_html_table():
    stats = Stats(FIGURES)
    assert stats == FIGURES and isinstance(stats, dict)
    html = stats._repr_html_()
    assert html.startswith("<table") and html.count("<tr>") == 3
    assert "12,000 (0)" in html and "3 (1)" in html and "900 B / 1000 B" in html and "width:90.0%" in html and "3.0 MiB (2)" in html
    assert "failing: agent unreachable" in html
