"""Parsing and precedence of the configuration that actors follow in Consul KV."""

import http.server
import logging
import socket
import threading

import pytest

from shoveling_ray.membership.consul import ConsulAgent, ConsulConfig, parse_address
from shoveling_ray.membership.registration import ConfigFollower, parse_config_value

P = "shoveling/c/"


def follower():
    f = ConfigFollower(agent=None, cache="c", apply=lambda config: None)
    f.node_name = "n1"
    return f


def test_parse_values():
    assert parse_config_value("max-memory", b" 1024 ") == 1024
    assert parse_config_value("eviction", b"lru") == "lru"
    for key, raw in [("max-memory", b"-1"), ("max-memory", b"1GB"), ("max-memory", b""), ("eviction", b"fifo")]:
        with pytest.raises(ValueError):
            parse_config_value(key, raw)


def test_node_key_overrides_cache_key_and_deleting_falls_back():
    f = follower()
    tree = {P + "config/max-memory": b"100", P + "node/n1/config/max-memory": b"50", P + "node/n2/config/eviction": b"lru"}
    assert f.effective(tree) == {"max-memory": 50}
    del tree[P + "node/n1/config/max-memory"]
    assert f.effective(tree) == {"max-memory": 100}
    assert f.effective({}) == {}


def test_malformed_value_is_logged_once_and_the_previous_value_stays(caplog):
    f = follower()
    assert f.effective({P + "config/max-memory": b"100"}) == {"max-memory": 100}
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # a blocking query returns the same tree again and again
            assert f.effective({P + "config/max-memory": b"lots"}) == {"max-memory": 100}
    assert len([r for r in caplog.records if "lots" in r.getMessage()]) == 1
    assert f.effective({P + "config/max-memory": b"70"}) == {"max-memory": 70}


def test_unrelated_keys_are_ignored():
    f = follower()
    assert f.effective({P + "config/other": b"x", P + "notes/max-memory": b"5"}) == {}


def test_config_points_at_another_agent():
    c = ConsulConfig("https", "a", 8501, token="t", service="svc", verify="/ca.pem")
    d = c.at("127.0.0.2:8500")
    assert (d.scheme, d.host, d.port, d.token, d.service, d.verify) == ("http", "127.0.0.2", 8500, "t", "svc", "/ca.pem")
    assert parse_address("[::1]:8500") == ("http", "::1", 8500)


class _V6Server(http.server.HTTPServer):
    address_family = socket.AF_INET6


class _Leader(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # the status/leader answer of an agent, for the request's shape only
        self.server.paths.append(self.path)
        body = b'"[::1]:8300"'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_an_ipv6_agent_address_is_bracketed_in_urls():
    server = _V6Server(("::1", 0), _Leader)
    server.paths = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = ConsulConfig(*parse_address(f"[::1]:{server.server_address[1]}"))
        assert config.address == f"http://[::1]:{server.server_address[1]}"
        assert ConsulAgent(config).leader() == "[::1]:8300"
        assert server.paths == ["/v1/status/leader"]
    finally:
        server.shutdown()
