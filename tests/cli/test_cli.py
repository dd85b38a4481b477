"""The installed ``shoveling`` command against a real two-node cluster started with ``ray
start`` on this machine (a head and a worker node), stopped at the end of the module.

Every call is a subprocess, as an operator would type it; the cache is started beforehand by
a separate Python process and outlives it (its actors are detached).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.cli

BIN = Path(sys.executable).parent
SHOVELING = str(BIN / "shoveling")
RAY = str(BIN / "ray")
PORT = 6391
ADDRESS = f"127.0.0.1:{PORT}"
NAME = "clitest"
MB = 1 << 20


def env() -> dict:
    # Ray 2.60 starts a head with token authentication; whoever joins it (a worker node's
    # `ray start --address`, a driver) must be told so, and reads the token the head wrote to
    # ~/.ray/auth_token.
    return {**os.environ, "RAY_ADDRESS": ADDRESS, "PYTHONPATH": ROOT, "RAY_AUTH_MODE": "token"}


def ray_cli(*args: str) -> None:
    run = subprocess.run([RAY, *args], capture_output=True, timeout=180, env=env())
    assert run.returncode == 0, run.stderr.decode()[-3000:]


def shoveling(*args: str, stdin: bytes | None = None, program: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*(program or [SHOVELING]), *args], input=stdin, capture_output=True, timeout=180, env=env()
    )


def ok(*args: str, **kwargs) -> str:
    run = shoveling(*args, **kwargs)
    assert run.returncode == 0, run.stderr.decode()
    return run.stdout.decode()


def fails(code: int, *args: str) -> str:
    """Run, expect exit ``code`` and one line on stderr without a traceback; return it."""
    run = shoveling(*args)
    err = run.stderr.decode()
    assert run.returncode == code, (run.returncode, err)
    assert "Traceback" not in err
    if code == 1:
        assert len(err.strip().splitlines()) == 1 and err.startswith("shoveling: "), err
    return err


def stop(temp_dir: str) -> None:
    """Stop the Ray processes of this module's cluster only (``ray stop`` would stop every Ray
    process on the machine, other test runs' included): those whose command line names its
    temp dir or its address's port (the head's client server names only that)."""
    markers = (temp_dir.encode(), f":{PORT}\0".encode())

    def own() -> list[int]:
        pids = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if any(m in cmdline for m in markers):
                pids.append(int(pid))
        return pids

    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        for pid in own():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while own() and time.monotonic() < deadline:
            time.sleep(0.2)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    common = ["--num-cpus", "1", "--object-store-memory", str(150 * MB), "--disable-usage-stats"]
    temp_dir = tempfile.mkdtemp(prefix="shoveling-cli-", dir="/tmp")  # short: Ray's socket paths
    ray_cli("start", "--head", "--port", str(PORT), "--include-dashboard=false", f"--temp-dir={temp_dir}", *common)
    try:
        ray_cli("start", "--address", ADDRESS, *common)
        starter = (
            "import ray, shoveling_ray as sr; ray.init(address=%r); "
            "c = sr.Cache(%r, consul=False); assert len(c.nodes()) == 2, c.nodes()" % (ADDRESS, NAME)
        )
        subprocess.run([sys.executable, "-c", starter], check=True, timeout=180, env=env())
        yield
    finally:
        stop(temp_dir)


def test_help_and_bad_usage_exit_2():
    run = shoveling("--help")
    assert run.returncode == 0
    for command in ("caches", "status", "ls", "get", "put", "rm", "drain", "config", "close"):
        assert command in run.stdout.decode()
    fails(2, "frobnicate")
    fails(2, "get", NAME)  # the id is missing
    fails(2, "config", NAME, "--eviction", "fifo")
    fails(2, "config", NAME, "--max-memory", "-5")


def test_no_cluster_at_the_address_is_one_line_and_exit_1():
    err = fails(1, "--address", "127.0.0.1:1", "caches")
    assert "no Ray cluster at 127.0.0.1:1" in err


def test_caches_and_unknown_cache(cluster):
    assert NAME in ok("caches").split()
    assert NAME in json.loads(ok("caches", "--json"))
    assert "no running cache named 'nope'" in fails(1, "status", "nope")
    assert ok("caches").split() == [NAME]  # asking about 'nope' started nothing


def test_put_then_get_10_mb_byte_for_byte(cluster, tmp_path):
    data = os.urandom(10 * MB)
    source = tmp_path / "in.bin"
    source.write_bytes(data)
    ok("put", NAME, "blob", str(source))
    target = tmp_path / "out.bin"
    ok("get", NAME, "blob", "-o", str(target))
    assert target.read_bytes() == data
    assert shoveling("get", NAME, "blob").stdout == data  # to stdout as raw bytes
    ok("put", NAME, "from-stdin", "-", stdin=b"piped bytes")
    assert shoveling("get", NAME, "from-stdin").stdout == b"piped bytes"
    assert json.loads(ok("get", NAME, "from-stdin", "--json")) == {"base64": "cGlwZWQgYnl0ZXM="}


def test_ls_status_and_rm(cluster):
    for i in range(3):
        ok("put", NAME, f"dir/{i}", "-", stdin=b"x" * (i + 1))
    assert ok("ls", NAME, "--prefix", "dir/").split() == ["dir/0", "dir/1", "dir/2"]
    assert json.loads(ok("ls", NAME, "--prefix", "dir/", "--json")) == ["dir/0", "dir/1", "dir/2"]
    status = json.loads(ok("status", NAME, "--json"))
    assert status["cache"] == NAME and len(status["nodes"]) == 2 and status["endpoints"] == {}
    ids = sum(n["ids"] for n in status["nodes"].values())
    assert ids == len(json.loads(ok("ls", NAME, "--json")))
    text = ok("status", NAME)
    assert text.splitlines()[0] == f"cache {NAME}: 2 nodes, {ids} ids, replicas 1"
    assert all(node in text for node in status["nodes"])
    ok("rm", NAME, "dir/1")
    assert ok("ls", NAME, "--prefix", "dir/").split() == ["dir/0", "dir/2"]
    assert "does not exist" in fails(1, "rm", NAME, "dir/1")
    assert "does not exist" in fails(1, "get", NAME, "dir/1")


def test_config_applies_to_every_node(cluster):
    before = json.loads(ok("config", NAME, "--json"))
    assert len(before) == 2
    assert all(c["eviction"] == "spill" and c["max_disk"] > 0 for c in before.values())  # a new cache's defaults
    after = json.loads(ok("config", NAME, "--max-memory", str(64 * MB), "--eviction", "lru", "--max-disk", str(MB),
                          "--json"))
    assert all(c == {"max_memory": 64 * MB, "eviction": "lru", "max_disk": MB, "replicas": 1} for c in after.values())
    assert json.loads(ok("config", NAME, "--json")) == after
    two = json.loads(ok("config", NAME, "--replicas", "2", "--json"))
    assert all(c["replicas"] == 2 for c in two.values())
    wait_for(lambda: sum(s["under_replicated"] for s in json.loads(ok("status", NAME, "--json"))["nodes"].values()) == 0,
             what="the new copies")
    nodes = json.loads(ok("status", NAME, "--json"))["nodes"]
    assert sum(s["copies"] for s in nodes.values()) == sum(s["ids"] for s in nodes.values()) // 2  # one copy per id
    assert "under-replicated" in ok("status", NAME).splitlines()[1]


def test_drain_moves_every_id_off_the_node(cluster):
    for i in range(20):
        ok("put", NAME, f"drain/{i}", "-", stdin=f"value {i}".encode())
    nodes = sorted(json.loads(ok("status", NAME, "--json"))["nodes"])
    out = ok("drain", NAME, nodes[1])
    assert f"node {nodes[1]} drained" in out and "ids moved" in out
    assert sorted(json.loads(ok("status", NAME, "--json"))["nodes"]) == [nodes[0]]
    for i in range(20):
        assert ok("get", NAME, f"drain/{i}") == f"value {i}"
    assert "not a member" in fails(1, "drain", NAME, nodes[1])


def test_python_dash_m_is_the_same_program(cluster):
    assert ok("caches", program=[sys.executable, "-m", "shoveling_ray"]).split() == [NAME]


def test_close_stops_the_cache(cluster):
    ok("close", NAME)
    wait_for(lambda: NAME not in ok("caches").split(), timeout=30, what="the cache to be gone")
    assert "no running cache" in fails(1, "ls", NAME)
