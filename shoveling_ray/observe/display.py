"""Tables of a cache's per-node figures: HTML for Jupyter, text for a terminal.

:class:`Stats` is what ``cache.stats()`` returns: a plain ``{node_id: figures}`` dict that
also renders itself as an HTML table in a notebook (per node: ids, used / limit with a bar,
disk (spill files, spilled ids), evictions, lost ids, policy, Consul standing). :func:`text_table` is the same table for the ``shoveling``
command. Pure formatting: no Ray import, tested without a cluster.
"""

from __future__ import annotations

import html
from collections.abc import Sequence


def human_bytes(n: int | None) -> str:
    """``1536`` -> ``"1.5 KiB"``; ``None`` -> ``"-"``."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def consul_state(figures: dict) -> str:
    """``"off"``, ``"passing"`` or ``"failing: <error>"`` from a node's ``consul`` figures."""
    consul = figures.get("consul")
    if consul is None:
        return "off"
    return f"failing: {consul['error']}" if consul.get("error") else "passing"


COLUMNS = ("node", "ids", "copies", "used", "limit", "use", "disk", "spilled", "evictions", "lost", "under-replicated",
           "policy", "consul")


def rows(stats: dict) -> list[tuple[str, ...]]:
    """One row of strings per node, in node order, for the columns of :data:`COLUMNS`."""
    out = []
    for node in sorted(stats):
        s = stats[node]
        limit = s.get("limit")
        share = f"{100 * s['used'] / limit:.0f}%" if limit else "-"
        out.append((node, str(s["ids"]), str(s.get("copies", 0)), human_bytes(s["used"]), human_bytes(limit), share,
                    human_bytes(s.get("disk_used", 0)), str(s.get("spilled_ids", 0)), str(s["evictions"]),
                    str(s.get("lost", 0)), str(s.get("under_replicated", 0)), str(s["policy"]), consul_state(s)))
    return out


def text_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *body)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in (header, *body)]
    return "\n".join(lines)


def _bar(used: int, limit: int | None) -> str:
    if not limit:
        return ""
    width = min(100.0, 100.0 * used / limit)
    colour = "#d9534f" if width >= 90 else "#5cb85c"
    return (
        '<div style="width:8em;height:0.8em;border:1px solid #999;display:inline-block;'
        f'vertical-align:middle"><div style="width:{width:.1f}%;height:100%;background:{colour}"></div></div>'
    )


def html_table(stats: dict, title: str = "") -> str:
    """The per-node table as HTML (node ids shortened to 12 characters, full id on hover)."""
    head = "".join(f"<th>{c}</th>" for c in ("node", "ids (copies)", "used / limit", "", "disk (ids)", "evictions", "lost",
                                             "under-replicated", "policy", "consul"))
    body = []
    for node in sorted(stats):
        s = stats[node]
        cells = [
            f'<td title="{html.escape(node)}"><code>{html.escape(node[:12])}</code></td>',
            f"<td>{s['ids']:,} ({s.get('copies', 0):,})</td>",
            f"<td>{human_bytes(s['used'])} / {human_bytes(s.get('limit'))}</td>",
            f"<td>{_bar(s['used'], s.get('limit'))}</td>",
            f"<td>{human_bytes(s.get('disk_used', 0))} ({s.get('spilled_ids', 0):,})</td>",
            f"<td>{s['evictions']:,}</td>",
            f"<td>{s.get('lost', 0):,}</td>",
            f"<td>{s.get('under_replicated', 0):,}</td>",
            f"<td>{html.escape(str(s['policy']))}</td>",
            f"<td>{html.escape(consul_state(s))}</td>",
        ]
        body.append("<tr>" + "".join(cells) + "</tr>")
    caption = f"<caption style='text-align:left'><b>{html.escape(title)}</b></caption>" if title else ""
    return f"<table class='shoveling-stats'>{caption}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class Stats(dict):
    """``{node_id: figures}`` as ``cache.stats()`` returns it; an HTML table in Jupyter."""

    def _repr_html_(self) -> str:
        return html_table(self)
