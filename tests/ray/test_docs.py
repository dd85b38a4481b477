"""The docs run as written.

Every ```python block of README.md, CONTRIBUTING.md and docs/*.md runs, blocks in order, one process per file
(later blocks see what earlier ones defined), on a local Ray started once per file. A block
that cannot run there says so on its first line, ``# doc-test: skip (why)``, and is reported
as a skipped test under its file and line. Every command the docs show (in ```bash blocks and
in inline code) names a script that exists and options it takes; every ``shoveling`` command
parses; every benchmark they name has a ``--small`` size that test_benchmarks_smoke.py runs.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from shoveling_ray.cli import build_parser
from tests.ray.test_benchmarks_smoke import SCRIPTS as SMOKE_TESTED_BENCHMARKS

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = re.compile(r"#\s*doc-test:\s*skip\s*\((?P<why>.+)\)\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")
INLINE = re.compile(r"`([^`\n]+)`")

# One Ray per file, small and quiet; the blocks share one namespace, as a reader's session does.
# Ray's start is tried twice: on a machine busy with other clusters its raylet was seen to miss
# Ray's fixed 30 s registration wait, which says nothing about the docs.
RUNNER = """
import json, sys
import ray
for attempt in (1, 2):
    try:
        ray.init(address="local", num_cpus=2, object_store_memory=300 * 2**20, include_dashboard=False,
                 log_to_driver=False)
        break
    except Exception:
        ray.shutdown()
        if attempt == 2:
            raise
namespace = {"__name__": "__main__"}
for name, source in json.load(sys.stdin):
    print("== " + name, flush=True)
    exec(compile(source, name, "exec"), namespace)
"""


@dataclass(frozen=True)
class Block:
    doc: str  # path relative to the repository
    line: int  # of the opening fence
    lang: str
    source: str

    @property
    def name(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        first = self.source.lstrip().splitlines()[0] if self.source.strip() else ""
        match = SKIP.match(first)
        return match["why"] if match else None


def blocks_of(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file, indentation of list items removed."""
    out, current, indent, start, lang = [], None, "", 0, ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fence = FENCE.match(line)
        if current is None and fence:
            current, indent, start, lang = [], fence["indent"], number, fence["lang"]
        elif current is not None and fence and fence["indent"] == indent and not fence["lang"]:
            out.append(Block(str(path.relative_to(ROOT)), start, lang, "\n".join(current) + "\n"))
            current = None
        elif current is not None:
            current.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
    assert current is None, f"{path}: a code block opened on line {start} is never closed"
    return out


ALL_BLOCKS = [b for doc in DOCS for b in blocks_of(doc)]
PYTHON = [b for b in ALL_BLOCKS if b.lang == "python"]
RUNNABLE = {}
for _block in PYTHON:
    if _block.skip_reason is None:
        RUNNABLE.setdefault(_block.doc, []).append(_block)


@pytest.mark.parametrize("doc", sorted(RUNNABLE))
def test_python_blocks_run_as_written(doc, tmp_path):
    blocks = [(b.name, b.source) for b in RUNNABLE[doc]]
    run = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(blocks), cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    ran = re.findall(r"^== (\S+)$", run.stdout, re.M)
    assert run.returncode == 0, f"block {ran[-1] if ran else '?'} failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"
    assert ran == [name for name, _ in blocks]


@pytest.mark.parametrize("block", [b for b in PYTHON if b.skip_reason], ids=lambda b: b.name)
def test_block_marked_not_runnable_alone(block):
    pytest.skip(f"{block.name}: {block.skip_reason}")


def commands() -> list[tuple[str, list[str], bool]]:
    """(where, tokens, whole) of every command line the docs show: lines of shell blocks
    (comments dropped, ``&&`` chains split; ``whole``) and inline code spans (which may
    name a command in passing), without leading ``VAR=value``."""
    found = []
    for doc in DOCS:
        rel = str(doc.relative_to(ROOT))
        texts = [(b.name, line, True) for b in ALL_BLOCKS if b.doc == rel and b.lang in ("bash", "sh", "shell")
                 for line in b.source.splitlines()]
        prose = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        texts += [(rel, span, False) for span in INLINE.findall(prose)]
        for where, text, whole in texts:
            text = re.sub(r"(^|\s)#.*$", "", text)
            for part in text.split("&&"):
                try:
                    tokens = shlex.split(part)
                except ValueError:
                    continue  # not a command (unbalanced quotes in prose)
                while tokens and re.match(r"^[A-Z_]+=", tokens[0]):
                    tokens = tokens[1:]
                if tokens:
                    found.append((where, tokens, whole))
    return found


COMMANDS = commands()


def options_of(script: Path) -> str:
    """The source that defines a script's command-line options (benchmarks add --small in common.py)."""
    text = script.read_text()
    if "parse_args(parser" in text and (script.parent / "common.py").exists():
        text += (script.parent / "common.py").read_text()
    return text


def test_scripts_the_docs_run_exist_and_take_those_options():
    checked = 0
    for where, tokens, _ in COMMANDS:
        if tokens[0] in ("python", "python3") and len(tokens) > 1 and tokens[1].endswith(".py"):
            script, args = ROOT / tokens[1], tokens[2:]
        elif tokens[0] == "bash" and len(tokens) > 1 and tokens[1].endswith(".sh"):
            script, args = ROOT / tokens[1], []
        else:
            continue
        assert script.is_file(), f"{where}: {' '.join(tokens)}: no such file {tokens[1]}"
        source = options_of(script)
        for option in (a.split("=")[0] for a in args if a.startswith("--")):
            assert f'"{option}"' in source, f"{where}: {' '.join(tokens)}: {tokens[1]} has no option {option}"
        checked += 1
    assert checked >= 5  # the README's demo and tests, the benchmarks, the sort example, the soak


def test_shoveling_commands_parse():
    """Shown in a shell block, a command parses whole; named in prose, its subcommand exists."""
    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    shown = [(where, tokens, whole) for where, tokens, whole in COMMANDS if tokens[0] == "shoveling" and len(tokens) > 1]
    for where, tokens, whole in shown:
        if not whole:
            assert tokens[1] in subcommands or tokens[1].startswith("-"), f"{where}: no subcommand {tokens[1]!r}"
            continue
        try:
            parser.parse_args(tokens[1:])
        except SystemExit as exc:  # argparse's way of saying bad usage
            pytest.fail(f"{where}: {' '.join(tokens)} does not parse (exit {exc.code})")
    assert sum(whole for *_, whole in shown) >= 8


def test_every_benchmark_the_docs_name_has_a_smoke_tested_small_size():
    named = {Path(tokens[1]).name for _, tokens, _ in COMMANDS
             if tokens[0] in ("python", "python3") and len(tokens) > 1 and tokens[1].startswith("benchmarks/")}
    named.discard("report.py")  # turns results into a table and the chart; measures nothing
    assert named and named <= set(SMOKE_TESTED_BENCHMARKS)


def anchors_of(path: Path) -> set[str]:
    """The anchors GitHub gives a markdown file's headings."""
    prose = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    titles = re.findall(r"^#+\s+(.+?)\s*$", prose, re.M)
    return {re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-") for title in titles}


def test_relative_links_lead_somewhere():
    checked = 0
    for doc in [*DOCS, ROOT / "CHANGELOG.md"]:
        prose = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"^[a-z]+:", target):
                continue  # a web address
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            assert file.exists(), f"{doc.name}: link to {target}: no such file"
            if anchor:
                assert anchor in anchors_of(file), f"{doc.name}: link to {target}: no such heading"
            checked += 1
    assert checked >= 20
