"""Consul as the orchestration layer: where to find it, and the few calls shoveling_ray makes.

:func:`resolve` turns the ``consul=`` argument into a :class:`ConsulConfig` (or ``None``: Ray
alone). :class:`ConsulAgent` wraps one agent's HTTP API through py-consul, the maintained fork
of python-consul2 with the same ``consul`` import; it was chosen because it is released, has a
timeout on every request (blocking queries included: wait plus jitter plus a margin) and does
not warn on construction. Every py-consul or HTTP error becomes a
:class:`~shoveling_ray.ConsulError` here, so swapping the client touches this module only.

Names operators rely on (see DESIGN.md, "Consul contract"): service ``shoveling-worker``, one
instance per actor, tagged with the cache name, ``Meta`` = ``{"ray_node_id", "cache"}``, a TTL
check; KV under ``shoveling/<cache>/config/<key>`` and
``shoveling/<cache>/node/<consul node>/config/<key>``.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, replace

import consul
import requests

from ..errors import ConsulError
from ..placement import Coordinate

DEFAULT_ADDRESS = "127.0.0.1:8500"
DEFAULT_SERVICE = "shoveling-worker"
#: Suffix of the id of an instance's HTTP check (its endpoint), beside its TTL check.
HTTP_CHECK = ":http"
#: Seconds of silence after which an actor's instance turns critical.
CHECK_TTL = 5
#: Consul removes an instance that stays critical this long (its reaper runs every 30 s).
DEREGISTER_AFTER = "1m"
#: Seconds to wait for an answer to a plain (non-blocking) request.
REQUEST_TIMEOUT = 5.0


@dataclass(frozen=True)
class ConsulConfig:
    """Where a Consul agent is and how to talk to it. Picklable; sent to every actor.

    Attributes:
        scheme: ``"http"`` or ``"https"``.
        host, port: the agent's HTTP(S) address.
        token: ACL token sent as ``X-Consul-Token``, or ``None``.
        service: the service name instances register under.
        verify: TLS verification for https (``True``, ``False`` or a CA bundle path).
    """

    scheme: str
    host: str
    port: int
    token: str | None = None
    service: str = DEFAULT_SERVICE
    verify: bool | str = True

    @property
    def url_host(self) -> str:
        """The host as it goes into a URL: IPv6 literals in brackets."""
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def address(self) -> str:
        return f"{self.scheme}://{self.url_host}:{self.port}"

    def at(self, address: str) -> ConsulConfig:
        """The same settings for another agent's address."""
        scheme, host, port = parse_address(address)
        return replace(self, scheme=scheme, host=host, port=port)


def parse_address(address: str) -> tuple[str, str, int]:
    """``"host:port"``, ``"host"`` or an ``http(s)://`` URL as ``(scheme, host, port)``.

    Raises:
        ValueError: not an address of that form.
    """
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"a Consul address must be 'host:port' or an http(s):// URL, not {address!r}")
    text = address.strip()
    parsed = urllib.parse.urlsplit(text if "//" in text else "//" + text)
    scheme = parsed.scheme or "http"
    try:
        port = parsed.port
    except ValueError:
        port = -1
    if scheme not in ("http", "https") or not parsed.hostname or port == -1 or parsed.path not in ("", "/"):
        raise ValueError(f"a Consul address must be 'host:port' or an http(s):// URL, not {address!r}")
    return scheme, parsed.hostname, port or (8501 if scheme == "https" else 8500)


def resolve(consul_arg: object, token: str | None = None, service: str = DEFAULT_SERVICE) -> ConsulConfig | None:
    """Decide whether and where to use Consul (DESIGN.md, "Turning it on").

    Args:
        consul_arg: ``None`` = auto (``CONSUL_HTTP_ADDR`` if set, else a local agent on
            127.0.0.1:8500 if one answers, else no Consul); a string address = required;
            ``False`` = off.
        token: ACL token; ``None`` uses ``CONSUL_HTTP_TOKEN`` when set.
        service: service name for the actors' instances.

    Raises:
        ValueError / TypeError: a malformed argument.
        ConsulError: Consul is required (an address given, or ``CONSUL_HTTP_ADDR`` set) and its
            agent does not answer.
    """
    if consul_arg is False:
        return None
    if consul_arg is not None and not isinstance(consul_arg, str):
        raise TypeError(f"consul must be None, False or an address string, not {type(consul_arg).__name__}")
    if token is not None and not isinstance(token, str):
        raise TypeError(f"consul_token must be a str, not {type(token).__name__}")
    if not isinstance(service, str) or not service:
        raise ValueError("consul_service must be a non-empty str")
    token = token if token is not None else os.environ.get("CONSUL_HTTP_TOKEN") or None
    verify: bool | str = os.environ.get("CONSUL_CACERT") or True
    required = consul_arg if consul_arg is not None else os.environ.get("CONSUL_HTTP_ADDR")
    scheme, host, port = parse_address(required or DEFAULT_ADDRESS)
    config = ConsulConfig(scheme, host, port, token, service, verify)
    try:
        ConsulAgent(config, timeout=REQUEST_TIMEOUT if required else 0.5).leader()
    except ConsulError as exc:
        if required:
            raise ConsulError(f"Consul agent at {config.address} does not answer: {exc}") from None
        return None
    return config


class ConsulAgent:
    """The calls shoveling_ray makes to one Consul agent. Errors are :class:`ConsulError`.

    Args:
        config: the agent and credentials.
        timeout: seconds for non-blocking requests; blocking ones add their wait.
    """

    def __init__(self, config: ConsulConfig, timeout: float = REQUEST_TIMEOUT) -> None:
        self.config = config
        self._client = consul.Consul(
            host=config.url_host, port=config.port, scheme=config.scheme, verify=config.verify, token=config.token
        )
        # py-consul lets CONSUL_HTTP_TOKEN override the token argument; ours wins.
        self._client.token = config.token
        self._client.http.connections_timeout = timeout

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except consul.ConsulException as exc:
            raise ConsulError(f"Consul {what} at {self.config.address} failed: {exc}") from exc
        except requests.RequestException as exc:
            raise ConsulError(f"Consul agent at {self.config.address} unreachable ({what}): {exc}") from exc

    def leader(self) -> str:
        """The raft leader's address; proves the agent answers and has a cluster."""
        return self._call("status/leader", self._client.status.leader)

    def node_name(self) -> str:
        """The Consul node name of this agent."""
        return self._call("agent/self", self._client.agent.self)["Config"]["NodeName"]

    def node_meta(self) -> dict[str, str]:
        """The node meta of this agent's Consul node (``node_meta`` in its configuration)."""
        return self._call("agent/self", self._client.agent.self).get("Meta") or {}

    def register(self, service_id: str, cache: str, ray_node_id: str, address: str, port: int | None = None) -> None:
        """Register (or replace) one actor's instance with a TTL check that starts passing.

        With ``port`` (the actor's HTTP endpoint), the instance carries it, so the SRV record
        names it, and gets a second check: an HTTP GET of ``/v1/health`` there.
        """
        check = {
            "CheckID": check_id(service_id),
            "Name": f"shoveling actor of cache {cache}",
            "TTL": f"{CHECK_TTL}s",
            "Status": "passing",
            "DeregisterCriticalServiceAfter": DEREGISTER_AFTER,
        }
        extra = None
        if port:
            host = f"[{address}]" if ":" in address else address
            extra = [{
                "CheckID": f"{check_id(service_id)}{HTTP_CHECK}",
                "Name": f"shoveling HTTP endpoint of cache {cache}",
                "HTTP": f"http://{host}:{port}/v1/health",
                "Interval": f"{CHECK_TTL}s",
                "Timeout": "2s",
                "Status": "passing",  # HTTP checks start critical: the endpoint serves already
                "DeregisterCriticalServiceAfter": DEREGISTER_AFTER,
            }]
        self._call(
            "service register",
            self._client.agent.service.register,
            self.config.service,
            service_id=service_id,
            address=address,
            port=port,
            tags=[cache],
            meta={"ray_node_id": ray_node_id, "cache": cache},
            check=check,
            extra_checks=extra,
            replace_existing_checks=True,
        )

    def pass_ttl(self, service_id: str) -> None:
        """Mark the instance's TTL check passing. ``ConsulError`` if the agent does not know it."""
        self._call("check pass", self._client.agent.check.ttl_pass, check_id(service_id))

    def deregister(self, service_id: str) -> None:
        self._call("service deregister", self._client.agent.service.deregister, service_id)

    def instances(self, cache: str, index: int | None = None, wait: str | None = None) -> tuple[int, dict]:
        """Instances of ``cache`` as ``(index, {ray_node_id: (consul_node, passing)})``.

        With ``index``, blocks until the list changes or ``wait`` passes.
        """
        idx, entries = self._call(
            "health/service", self._client.health.service, self.config.service, index=index, wait=wait, tag=cache
        )
        out = {}
        for entry in entries:
            meta = entry["Service"].get("Meta") or {}
            if meta.get("cache") != cache or "ray_node_id" not in meta:
                continue
            # The HTTP check says whether the endpoint answers, not whether the actor does:
            # routing follows the node's and the actor's own checks.
            passing = all(c["Status"] == "passing" for c in entry["Checks"] if not c["CheckID"].endswith(HTTP_CHECK))
            out[meta["ray_node_id"]] = (entry["Node"]["Node"], passing)
        return int(idx), out

    def kv_tree(self, prefix: str, index: int | None = None, wait: str | None = None) -> tuple[int, dict[str, bytes]]:
        """Keys under ``prefix`` as ``(index, {key: value})``; blocking with ``index``."""
        idx, items = self._call("kv get", self._client.kv.get, prefix, index=index, wait=wait, recurse=True)
        return int(idx), {item["Key"]: item["Value"] or b"" for item in items or []}

    def kv_put(self, key: str, value: str) -> None:
        self._call("kv put", self._client.kv.put, key, value)

    def kv_delete(self, key: str) -> None:
        self._call("kv delete", self._client.kv.delete, key)

    def coordinates(self) -> dict[str, Coordinate]:
        """Network coordinates of the datacenter's nodes, by Consul node name."""
        _index, nodes = self._call("coordinate/nodes", self._client.coordinate.nodes)
        return {n["Node"]: Coordinate.from_consul(n["Coord"]) for n in nodes or [] if n.get("Coord")}


def check_id(service_id: str) -> str:
    return f"service:{service_id}"


def service_id(cache: str, ray_node_id: str) -> str:
    """The instance id of a cache's actor on a Ray node."""
    return f"shoveling-{cache}-{ray_node_id}"
