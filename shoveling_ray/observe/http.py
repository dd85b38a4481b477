"""The opt-in HTTP read endpoint of a node actor, for readers that are not Python.

Routes (GET only; read-only):

- ``/v1/health``: ``200`` with ``{"cache": ..., "node": ...}``;
- ``/v1/caches/<cache>/ids?prefix=P``: ``200`` with the JSON list of the ids this node holds;
- ``/v1/caches/<cache>/ids/<id>`` (``id`` percent-encoded): ``200`` with the raw bytes of a
  bytes value held on this node, ``404`` absent, ``410`` lost, ``415`` not a bytes value.

With a token (``SHOVELING_HTTP_TOKEN`` in the node's environment), every request but
``/v1/health`` needs ``Authorization: Bearer <token>``, else ``401``. Malformed requests get
``400`` / ``404`` / ``405`` / ``414`` / ``431``; a client that has not sent its whole request
within :data:`CLIENT_TIMEOUT` seconds is dropped (however it trickles), and past
:data:`MAX_CONNECTIONS` open connections a new one gets ``503``. The server is the standard library's threading HTTP server:
the endpoint serves reads of whole values, where the per-request cost is the actor lookup and
the copy out, not the HTTP parsing, so a third-party server would buy nothing measurable.

This module knows nothing of Ray or of the store: it is given a :class:`Source`.
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import sys
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

log = logging.getLogger(__name__)

#: Seconds a client may take to send its request (all of it, not per read); a slower one is
#: dropped, as is a kept-alive connection idle that long.
CLIENT_TIMEOUT = 5.0
#: Connections served at once; more get 503 at once (each may be copying a whole value).
MAX_CONNECTIONS = 32
#: Longest request path accepted (longer: 414).
MAX_PATH = 8192
TOKEN_ENV = "SHOVELING_HTTP_TOKEN"


class Source(Protocol):
    """What the endpoint reads from (the node actor)."""

    cache: str
    node_id: str

    def http_value(self, cache_id: str) -> tuple[int, bytes | None]:
        """``(200, bytes)``, or ``(404 | 410 | 415, None)``."""

    def http_ids(self, prefix: str) -> list[str]:
        """Ids held here starting with ``prefix``, sorted."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = CLIENT_TIMEOUT
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle's algorithm the second waits for the
    # client's delayed ACK, 40 ms a small read (measured: 23 reads/s of 100 B instead of 8,200).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("http %s: " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode())

    def _authorised(self) -> bool:
        token = self.server.token
        if not token:
            return True
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        if len(self.path) > MAX_PATH:
            return self._error(HTTPStatus.REQUEST_URI_TOO_LONG, "path too long")
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.split("/")
        source = self.server.source
        if url.path == "/v1/health":
            return self._send(HTTPStatus.OK, json.dumps({"cache": source.cache, "node": source.node_id}).encode())
        if not self._authorised():
            return self._error(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token")
        if len(parts) < 5 or parts[:3] != ["", "v1", "caches"] or parts[4] != "ids":
            return self._error(HTTPStatus.NOT_FOUND, "no such route")
        if urllib.parse.unquote(parts[3]) != source.cache:
            return self._error(HTTPStatus.NOT_FOUND, f"this node serves cache {source.cache!r}")
        if len(parts) == 5:
            prefix = urllib.parse.parse_qs(url.query).get("prefix", [""])[0]
            return self._send(HTTPStatus.OK, json.dumps(source.http_ids(prefix)).encode())
        cache_id = urllib.parse.unquote("/".join(parts[5:]), errors="strict") if len(parts) > 5 else ""
        if not cache_id:
            return self._error(HTTPStatus.NOT_FOUND, "empty id")
        status, data = source.http_value(cache_id)
        if data is None:
            return self._error(HTTPStatus(status), f"{cache_id!r}: {HTTPStatus(status).phrase.lower()}")
        return self._send(HTTPStatus.OK, data, "application/octet-stream")

    def handle_one_request(self) -> None:
        # The socket's timeout bounds each read only: a client sending a byte every few seconds
        # would never time out. The watchdog shuts the socket once the whole request is late.
        self._watchdog = threading.Timer(self.server.client_timeout, self._drop)
        self._watchdog.daemon = True
        self._watchdog.start()
        try:
            super().handle_one_request()
        except UnicodeDecodeError:
            self._error(HTTPStatus.BAD_REQUEST, "the path is not valid UTF-8 once decoded")
        finally:
            self._watchdog.cancel()

    def parse_request(self) -> bool:
        whole = super().parse_request()  # it reads the headers too
        self._watchdog.cancel()  # the request is in: serving it may take longer
        return whole

    def _drop(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # closed already

    def _not_allowed(self) -> None:
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, "read-only: GET only")

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed  # noqa: N815


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], source: Source, token: str | None) -> None:
        super().__init__(address, _Handler)
        self.source, self.token = source, token
        self.client_timeout = CLIENT_TIMEOUT
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # a client gone, or dropped by its watchdog
            log.debug("http: connection from %s ended", client_address, exc_info=True)
        else:
            log.warning("http: serving %s failed", client_address, exc_info=True)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class ReadEndpoint:
    """The HTTP server of one node actor, in a daemon thread.

    Args:
        source: what it serves.
        host: the address to listen on (the node's IP).
        token: bearer token required on reads, or ``None``.
        port: ``0`` picks a free port.
    """

    def __init__(self, source: Source, host: str, token: str | None = None, port: int = 0) -> None:
        self._server = _Server((host, port), source, token or None)
        self.host, self.port = host, self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="shoveling-http", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
