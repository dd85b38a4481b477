"""Real Consul agents on loopback addresses for the consul test tier.

One server on 127.0.0.1 and client agents on 127.0.0.2, 127.0.0.3, ... each with ``-bind`` and
``-client`` set to its own address, so every agent has the standard ports (HTTP 8500, DNS
8600) on its own address. Update checks are off; nothing calls out.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SERVER_HCL = """
disable_update_check = true
performance { raft_multiplier = 1 }
consul { coordinate { update_period = "1s" } }
"""
CLIENT_HCL = "disable_update_check = true\n"


def consul_binary() -> str:
    """A consul binary: $CONSUL_BIN, PATH, or built by scripts/provide-consul.sh."""
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "provide-consul.sh")], check=True, stdout=subprocess.PIPE, text=True
    )
    return out.stdout.strip().splitlines()[-1]


def http_json(address: str, path: str, method: str = "GET", body: object = None, token: str | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{address}{path}", data=data, method=method)
    if token:
        request.add_header("X-Consul-Token", token)
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    return json.loads(text) if text else None


class Agent:
    def __init__(
        self, binary: str, name: str, ip: str, workdir: Path, server: bool, join: str | None, extra_hcl: str = ""
    ) -> None:
        self.binary, self.name, self.ip, self.server, self.join = binary, name, ip, server, join
        self.data_dir = workdir / name
        self.config = workdir / f"{name}.hcl"
        self.config.write_text((SERVER_HCL if server else CLIENT_HCL) + extra_hcl)
        self.log = open(workdir / f"{name}.log", "ab")
        self.process: subprocess.Popen | None = None

    @property
    def http(self) -> str:
        return f"{self.ip}:8500"

    def start(self) -> None:
        args = [
            self.binary, "agent", f"-node={self.name}", f"-bind={self.ip}", f"-client={self.ip}",
            f"-data-dir={self.data_dir}", f"-config-file={self.config}", "-retry-interval=1s",
        ]
        if self.server:
            args += ["-server", "-bootstrap-expect=1"]
        if self.join:
            args.append(f"-retry-join={self.join}")
        env = {**os.environ, "CHECKPOINT_DISABLE": "1"}
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)  # graceful leave
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class ConsulAgents:
    """A server on 127.0.0.1 and ``clients`` client agents on 127.0.0.2, ...; ``zones``: the
    ``zone`` node meta of each agent, server first."""

    def __init__(self, clients: int = 2, zones: list[str] | None = None) -> None:
        self.binary = consul_binary()
        self.workdir = Path(tempfile.mkdtemp(prefix="shoveling-consul-"))
        meta = [f'node_meta {{ zone = "{zone}" }}\n' for zone in zones] if zones else [""] * (clients + 1)
        self.agents = [Agent(self.binary, "consul-1", "127.0.0.1", self.workdir, True, None, meta[0])]
        for i in range(2, clients + 2):
            self.agents.append(Agent(self.binary, f"consul-{i}", f"127.0.0.{i}", self.workdir, False, "127.0.0.1",
                                     meta[i - 1]))

    def start(self, timeout: float = 60.0) -> ConsulAgents:
        for agent in self.agents:
            agent.start()
        deadline = time.monotonic() + timeout
        while True:
            if any(a.process.poll() is not None for a in self.agents):
                break
            try:
                leader = http_json(self.server.http, "/v1/status/leader")
                nodes = http_json(self.server.http, "/v1/catalog/nodes")
                if leader and len(nodes) == len(self.agents) and self._ours():
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"consul agents did not form a cluster in {timeout}s; logs in {self.workdir}")
            time.sleep(0.2)
        exited = [a.name for a in self.agents if a.process.poll() is not None]
        if exited:
            self.stop()
            raise RuntimeError(f"consul agents {exited} exited (another agent on their address?)")
        return self

    def _ours(self) -> bool:
        # A leftover agent from another run could answer on the same address.
        for agent in self.agents:
            if http_json(agent.http, "/v1/agent/self")["DebugConfig"]["DataDir"] != str(agent.data_dir):
                raise RuntimeError(f"another consul agent answers on {agent.http}; stop it first")
        return True

    @property
    def server(self) -> Agent:
        return self.agents[0]

    def stop(self) -> None:
        for agent in reversed(self.agents):
            agent.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def rtt_cli(self, a: str, b: str) -> str:
        """What ``consul rtt`` prints for two nodes."""
        out = subprocess.run(
            [self.binary, "rtt", f"-http-addr={self.server.http}", a, b], check=True, capture_output=True, text=True
        )
        return out.stdout.strip()
