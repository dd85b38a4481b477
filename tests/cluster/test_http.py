"""The opt-in HTTP read endpoint on two Ray nodes: one node with SHOVELING_HTTP_TOKEN set in its
environment, one without."""

from __future__ import annotations

import json
import os
import random
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest

import shoveling_ray as sr
from tests.conftest import module_cluster

pytestmark = pytest.mark.cluster

TOKEN = "s3cret-token"
cluster = module_cluster([{"num_cpus": 1, "env_vars": {"SHOVELING_HTTP_TOKEN": TOKEN}}, {"num_cpus": 1}])


@pytest.fixture(scope="module")
def cache(cluster):
    c = sr.Cache("web", http=True)
    yield c
    c.close()


def token_node(cache) -> str:
    return cluster_nodes(cache)[0]


def cluster_nodes(cache) -> list[str]:
    """[the node with the token, the node without]: the head is the first node started."""
    import ray

    head = next(n["NodeID"] for n in ray.nodes() if "node:__internal_head__" in n["Resources"])
    return [head, next(n for n in cache.nodes() if n != head)]


def fetch(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def value_url(cache, cache_id: str, cache_name: str = "web") -> str:
    node = cache.node_id(cache_id)
    return f"{cache.endpoints()[node]}/v1/caches/{cache_name}/ids/{urllib.parse.quote(cache_id, safe='')}"


def on_node(cache, node: str, prefix: str) -> str:
    return next(i for i in (f"{prefix}{k}" for k in range(10_000)) if cache.node_id(i) == node)


def test_endpoints_are_listed_only_when_on(cluster):
    off = sr.Cache("no-web")
    try:
        assert off.endpoints() == {}
        off.configure(http=True)
        on = sr.Cache.attach("no-web")
        assert set(on.endpoints()) == set(off.nodes())
        assert all(url.startswith("http://") for url in on.endpoints().values())
        on.configure(http=False)
        assert off.endpoints() == {}
    finally:
        off.close()


def test_a_bytes_value_over_http_equals_get(cache):
    for node in cache.nodes():
        small, large = on_node(cache, node, "small/"), on_node(cache, node, "large/id with spaces/")
        cache.set(small, b"hello over http")
        cache.set(large, os.urandom(3 << 20))  # lives in the object store
        for cache_id in (small, large):
            status, body = fetch(value_url(cache, cache_id), TOKEN)
            assert status == 200 and body == cache.get(cache_id)


def test_status_codes(cache):
    with_token, without = cluster_nodes(cache)
    endpoints = cache.endpoints()
    absent = on_node(cache, without, "absent/")
    assert fetch(value_url(cache, absent))[0] == 404
    array = on_node(cache, without, "array/")
    cache.set(array, np.arange(10))
    assert fetch(value_url(cache, array))[0] == 415
    kept = on_node(cache, with_token, "kept/")
    cache.set(kept, b"guarded")
    assert fetch(value_url(cache, kept))[0] == 401  # no token
    assert fetch(value_url(cache, kept), "wrong")[0] == 401
    assert fetch(value_url(cache, kept), TOKEN) == (200, b"guarded")
    assert fetch(f"{endpoints[with_token]}/v1/health")[0] == 200  # health needs no token
    assert fetch(value_url(cache, kept, cache_name="other"), TOKEN)[0] == 404
    status, body = fetch(f"{endpoints[with_token]}/v1/caches/web/ids?prefix=kept/", TOKEN)
    assert status == 200 and json.loads(body) == [kept]
    assert fetch(f"{endpoints[without]}/nowhere")[0] == 404


def raw_request(address: tuple[str, int], payload: bytes, pause: float = 0.0) -> None:
    """Send ``payload`` (maybe stalling first) and read whatever comes back; never raises."""
    try:
        with socket.create_connection(address, timeout=3) as sock:
            if pause:
                sock.sendall(payload[: len(payload) // 2])
                time.sleep(pause)
                payload = payload[len(payload) // 2 :]
            sock.sendall(payload)
            sock.recv(65536)
    except OSError:
        pass  # the server may close on us: that is allowed


def malformed(rng: random.Random, kind: int) -> tuple[bytes, float]:
    junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
    return [
        (b"GET /v1/caches/web/ids/" + junk.replace(b" ", b"") + b" HTTP/1.1\r\nHost: x\r\n\r\n", 0.0),  # bad path
        (b"GET /v1/caches/%ff%fe/ids/%c3%28 HTTP/1.1\r\nHost: x\r\n\r\n", 0.0),  # bad encoding
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 0.0),  # huge request line
        (b"GET /v1/health HTTP/1.1\r\n" + b"X-Big: " + b"b" * 70_000 + b"\r\n\r\n", 0.0),  # huge header
        (b"GET /v1/health HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n", 0.0),
        (b"GET /v1/caches/web/ids/x HTTP/1.1\r\nAuthorization: Bearer " + junk.hex().encode() + b"\r\n\r\n", 0.0),
        (b"POST /v1/caches/web/ids/x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 0.0),
        (junk + b"\r\n\r\n", 0.0),  # not HTTP at all
        (b"GET /v1/caches/web/ids/slow HTTP/1.1\r\nHost: x\r\n\r\n", 0.3),  # a slow client
    ][kind]


def test_a_thousand_malformed_requests_leave_the_actor_serving_and_the_data_intact(cache):
    node = cluster_nodes(cache)[0]
    cache_id = on_node(cache, node, "precious/")
    cache.set(cache_id, b"precious")
    host, port = urllib.parse.urlsplit(cache.endpoints()[node]).netloc.rsplit(":", 1)
    rng = random.Random(7)
    slow = 0
    for i in range(1000):
        payload, pause = malformed(rng, i % 9)
        if pause:
            slow += 1
            if slow > 20:  # a few stalls show the timeout; a thousand would only take long
                payload, pause = malformed(rng, 0)
        raw_request((host, int(port)), payload, pause)
    # clients that connect and then say nothing do not stop others being served
    idle = [socket.create_connection((host, int(port)), timeout=3) for _ in range(30)]
    try:
        assert fetch(value_url(cache, cache_id), TOKEN) == (200, b"precious")
    finally:
        for sock in idle:
            sock.close()
    assert cache.get(cache_id) == b"precious"
    assert fetch(f"{cache.endpoints()[node]}/v1/health")[0] == 200
