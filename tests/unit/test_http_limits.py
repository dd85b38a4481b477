"""The HTTP read endpoint's limits, against a plain source (no Ray): a client that trickles its
request is dropped, and connections past the cap are refused at once."""

from __future__ import annotations

import socket
import threading
import time

from shoveling_ray.observe.http import ReadEndpoint


class Source:
    cache, node_id = "c", "n"

    def http_value(self, cache_id):
        return 200, b"value"

    def http_ids(self, prefix):
        return []


def connect(endpoint: ReadEndpoint) -> socket.socket:
    return socket.create_connection((endpoint.host, endpoint.port), timeout=10)


def test_a_client_that_trickles_its_request_is_dropped():
    # The timeout bounded each read only: a byte every few seconds kept the thread for good.
    endpoint = ReadEndpoint(Source(), "127.0.0.1")
    endpoint._server.client_timeout = 1.0
    try:
        client = connect(endpoint)
        client.sendall(b"GET /v1/caches/c/ids/x HTTP/1.1\r\n")  # the request line at once,
        request = b"Host: h\r\nX-Slow: " + b"a" * 30  # then its headers a byte at a time
        dropped = False
        for byte in request:  # one byte every 0.3 s: each read is quick, the request is not
            try:
                client.sendall(bytes([byte]))
            except OSError:
                dropped = True
                break
            time.sleep(0.3)
        assert dropped, "a trickling client kept its connection"
        fine = connect(endpoint)
        fine.sendall(b"GET /v1/caches/c/ids/x HTTP/1.1\r\nHost: h\r\n\r\n")
        assert fine.recv(1000).startswith(b"HTTP/1.1 200")
    finally:
        endpoint.stop()


def test_connections_past_the_cap_get_503_and_the_others_are_served():
    endpoint = ReadEndpoint(Source(), "127.0.0.1")
    endpoint._server.slots = threading.BoundedSemaphore(2)
    try:
        idle = [connect(endpoint), connect(endpoint)]  # each holds a serving thread (accepted in order)
        extra = connect(endpoint)
        assert extra.recv(1000).startswith(b"HTTP/1.1 503")
        idle[0].sendall(b"GET /v1/health HTTP/1.1\r\nHost: h\r\n\r\n")
        assert idle[0].recv(1000).startswith(b"HTTP/1.1 200")
    finally:
        endpoint.stop()
