"""examples/quickstart.ipynb runs top to bottom in a real Jupyter kernel (nbclient), and what
a notebook user sees is there: the HTML tables of the cache and its stats, the shuffle's
result, the progress bars."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.ray

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"


def outputs_of(cell) -> tuple[str, str]:
    """(html, text) of a cell's outputs."""
    html, text = [], []
    for out in cell.get("outputs", []):
        data = out.get("data", {})
        html.append(data.get("text/html", ""))
        text.append(data.get("text/plain", "") + out.get("text", ""))
    return "".join(html), "".join(text)


def test_quickstart_notebook_runs_and_shows_tables_and_results(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    cache_html, _ = outputs_of(code[1])
    assert "<table" in cache_html and "Cache &#x27;quickstart&#x27;: 1 node<" in cache_html
    assert outputs_of(code[3])[1] == "32"  # every producer task ran
    _, counts = outputs_of(code[4])
    assert counts.count(": 4") == 8  # 32 records over 8 partitions, read where they live
    stats_html, _ = outputs_of(code[5])
    assert "<table class='shoveling-stats'>" in stats_html and "used / limit" in stats_html
    _, shuffle_text = outputs_of(code[6])
    assert "True" in shuffle_text  # the reducers' sums add up to the input's
    assert "map: 100%" in shuffle_text and "reduce: 100%" in shuffle_text  # tqdm bars (text form)
