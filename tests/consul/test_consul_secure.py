"""Consul with ACLs and TLS: the token and https addresses are honoured (a real agent with
default-deny ACLs serving only https on 127.0.0.5:8501, certificates made by `consul tls`)."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest

import shoveling_ray as sr
from tests.conftest import start_cluster, stop_cluster, wait_for
from tests.consul_agents import Agent, consul_binary

pytestmark = pytest.mark.consul
TOKEN = "3c2d6a41-5f4e-4c1a-9a57-8e3f2b1d0c99"
ADDRESS = "https://127.0.0.5:8501"


class Secure:
    def __init__(self) -> None:
        self.binary = consul_binary()
        self.workdir = Path(tempfile.mkdtemp(prefix="shoveling-consul-tls-"))
        run = dict(cwd=self.workdir, check=True, capture_output=True)
        subprocess.run([self.binary, "tls", "ca", "create"], **run)
        subprocess.run([self.binary, "tls", "cert", "create", "-server", "-additional-ipaddress=127.0.0.5"], **run)
        self.ca = self.workdir / "consul-agent-ca.pem"
        hcl = f"""
acl {{
  enabled = true
  default_policy = "deny"
  tokens {{
    initial_management = "{TOKEN}"
    agent = "{TOKEN}"
  }}
}}
ports {{
  http = -1
  https = 8501
}}
tls {{
  defaults {{
    ca_file = "{self.ca}"
    cert_file = "{self.workdir / 'dc1-server-consul-0.pem'}"
    key_file = "{self.workdir / 'dc1-server-consul-0-key.pem'}"
    verify_incoming = false
  }}
}}
"""
        self.agent = Agent(self.binary, "secure", "127.0.0.5", self.workdir, True, None, hcl)

    def get(self, path: str, token: str | None = TOKEN):
        request = urllib.request.Request(ADDRESS + path)
        if token:
            request.add_header("X-Consul-Token", token)
        context = ssl.create_default_context(cafile=str(self.ca))
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return json.loads(response.read() or b"null")

    def start(self) -> Secure:
        self.agent.start()
        wait_for(self._leader, timeout=60, what="the secure agent")
        return self

    def _leader(self) -> bool:
        try:
            return bool(self.get("/v1/status/leader"))
        except OSError:
            return False

    def stop(self) -> None:
        self.agent.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def secure(monkeypatch_module):
    s = Secure().start()
    monkeypatch_module.setenv("CONSUL_CACERT", str(s.ca))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def cluster(secure):
    c = start_cluster([{"num_cpus": 1}, {"num_cpus": 1}])
    yield c
    stop_cluster(c)


def registered(secure, cache):
    entries = secure.get(f"/v1/health/service/shoveling-worker?tag={cache}")
    return {e["Service"]["Meta"]["ray_node_id"]: [c["Status"] for c in e["Checks"]] for e in entries}


def test_token_and_https_are_used(cluster, secure):
    cache = sr.Cache("secure", consul=ADDRESS, consul_token=TOKEN)
    try:
        assert cache._router.view.consul.scheme == "https"
        wait_for(lambda: set(registered(secure, "secure")) == set(cache.nodes()), timeout=20, what="registration")
        assert all(set(s) == {"passing"} for s in registered(secure, "secure").values())
        cache.set("k", b"v")
        assert cache.get("k") == b"v"
    finally:
        cache.close()
    assert registered(secure, "secure") == {}


def test_without_the_token_nothing_is_registered_but_the_cache_serves(cluster, secure):
    cache = sr.Cache("anonymous", consul=ADDRESS, consul_token="")
    try:
        cache.set("k", b"v")
        assert cache.get("k") == b"v"
        # every actor has tried to register and been refused, and serves on
        wait_for(lambda: all(s["consul"]["error"] for s in cache.stats().values()), timeout=20,
                 what="the refused registrations")
        assert all("Permission denied" in s["consul"]["error"] and s["consul"]["beats"] == 0
                   for s in cache.stats().values())
        assert registered(secure, "anonymous") == {}
        assert cache.get("k") == b"v"
    finally:
        cache.close()


def test_plain_http_to_the_https_port_is_a_consul_error(cluster, secure):
    with pytest.raises(sr.ConsulError):
        sr.Cache("wrong-scheme", consul="http://127.0.0.5:8501", consul_token=TOKEN)
