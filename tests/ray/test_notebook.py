"""examples/quickstart.ipynb runs top to bottom in a real Jupyter kernel (nbclient), and what
a notebook user sees is there: three local nodes, the HTML tables of the cache and its stats,
partitions spread over the three nodes, the shuffle's result, the progress bars. The notebook
is stored with the outputs of such a run: they are checked too."""

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


def result_of(cell) -> str:
    """The text of a cell's value (not what it printed or logged)."""
    return "".join(o["data"].get("text/plain", "") for o in cell.get("outputs", []) if o["output_type"] == "execute_result")


def check_outputs(nb) -> None:
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert result_of(code[0]) == "3"  # ray.nodes() of the local cluster
    cache_html, _ = outputs_of(code[1])
    assert "<table" in cache_html and "Cache &#x27;quickstart&#x27;: 3 nodes<" in cache_html
    per_node = result_of(code[2])
    assert per_node.startswith("Counter(") and per_node.count("': ") == 3  # partitions on each of 3 nodes
    assert outputs_of(code[3])[1] == "32"  # every producer task ran
    _, counts = outputs_of(code[4])
    assert counts.count(": 4") == 8  # 32 records over 8 partitions, read where they live
    stats_html, _ = outputs_of(code[5])
    assert "<table class='shoveling-stats'>" in stats_html and "used / limit" in stats_html
    _, shuffle_text = outputs_of(code[6])
    assert "True" in shuffle_text  # the reducers' sums add up to the input's
    assert "map: 100%" in shuffle_text and "reduce: 100%" in shuffle_text  # tqdm bars (text form)


def test_quickstart_notebook_is_stored_with_the_outputs_of_a_three_node_run():
    check_outputs(nbformat.read(NOTEBOOK, as_version=4))


def test_quickstart_notebook_runs_and_shows_tables_and_results(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    check_outputs(nb)
