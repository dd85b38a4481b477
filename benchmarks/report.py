"""Turn ``results/*.json`` into a markdown table of ratios (printed, for the tables of
docs/performance.md, which say when, where and on which commit each figure was measured) and
``results/ratios.png`` (a bar chart of each ratio against its target, shown in the README)."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common import RESULTS  # noqa: E402

ORDER = ("large", "small", "compression_memory", "sort", "sort-spill", "spill", "http", "replicas")


def load() -> list[tuple[str, dict]]:
    rows = []
    for name in ORDER:
        path = RESULTS / f"{name}.json"
        if path.exists():
            rows += [(name, row) for row in json.loads(path.read_text())]
    return rows


def markdown(rows) -> str:
    lines = ["| benchmark | case | shoveling_ray | baseline | ratio | target |", "|---|---|---:|---:|---:|---:|"]
    for name, r in rows:
        target = "" if r["target"] is None else f"{r['target']:.2f}x"
        mark = "" if r["target"] is None else (" ✅" if r["ratio"] >= r["target"] else " ❌")
        lines.append(
            f"| {name} | {r['case']} | {r['ours']:,.1f} {r['unit']} | {r['baseline']:,.1f} {r['unit']} "
            f"| {r['ratio']:.2f}x{mark} | {target} |"
        )
    return "\n".join(lines) + "\n"


def chart(rows, path) -> None:
    shown = [(n, r) for n, r in rows if r["target"] is not None]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(shown) + 1.2))
    labels = [r["case"][:70] for _, r in shown]
    ratios = [min(r["ratio"], 5.0) for _, r in shown]
    colors = ["tab:green" if r["ratio"] >= r["target"] else "tab:red" for _, r in shown]
    ax.barh(range(len(shown)), ratios, color=colors)
    ax.scatter([r["target"] for _, r in shown], range(len(shown)), marker="|", color="black", s=200, label="target")
    ax.set_yticks(range(len(shown)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ratio vs baseline measured in the same run (higher is better; capped at 5)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    rows = load()
    chart(rows, RESULTS / "ratios.png")
    print(markdown(rows))


if __name__ == "__main__":
    main()
