"""What a node's cache actor does in Consul: keep its instance registered and passing, and
follow its configuration in Consul's key/value store.

Two daemon threads per actor, both on the agent of the actor's own node:

- :class:`Heartbeat` registers the instance (check starts passing), marks the TTL check
  passing every ``CHECK_TTL / 5`` seconds and re-registers when the agent forgot it (agent
  restarted). When the agent stops answering it logs once and keeps trying.
- :class:`ConfigFollower` runs blocking queries on ``shoveling/<cache>/`` (index + wait, a
  client timeout longer than the wait, exponential backoff on errors) and hands the effective
  ``max-memory`` / ``max-disk`` / ``eviction`` / ``http`` to a callback. A malformed value is logged and ignored: the
  previous value of that key stays in force. A node key overrides the cache-wide key.

Neither thread touches the cache's data; the actor applies the configuration under its lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..actors.storage import POLICIES
from ..errors import ConsulError
from .consul import CHECK_TTL, REQUEST_TIMEOUT, ConsulAgent, service_id

log = logging.getLogger(__name__)

#: Seconds a blocking KV query waits on the server before returning unchanged.
KV_WAIT_SECONDS = 5
MAX_BACKOFF = 5.0
CONFIG_KEYS = ("max-memory", "max-disk", "eviction", "http")
_SWITCH = {"on": True, "off": False}
#: Seconds between two heartbeats: five a TTL, so one lost request never fails the check.
BEAT_INTERVAL = CHECK_TTL / 5
#: Seconds ``Heartbeat.stop`` waits for a beat in flight (one request's timeout, and a margin).
STOP_TIMEOUT = REQUEST_TIMEOUT + 1.0


def parse_config_value(key: str, raw: bytes) -> int | str | bool:
    """Parse one configuration value from KV.

    Raises:
        ValueError: ``max-memory`` / ``max-disk`` is not a non-negative integer, ``eviction`` is not a known
            policy, or ``http`` is not ``on`` / ``off``.
    """
    text = raw.decode("utf-8", "replace").strip()
    if key == "http":
        if text not in _SWITCH:
            raise ValueError(f"http must be 'on' or 'off', got {text!r}")
        return _SWITCH[text]
    if key in ("max-memory", "max-disk"):
        if not text.isdigit():
            raise ValueError(f"{key} must be a non-negative integer number of bytes, got {text!r}")
        return int(text)
    if text not in POLICIES:
        raise ValueError(f"eviction must be one of {', '.join(POLICIES)}, got {text!r}")
    return text


class Heartbeat(threading.Thread):
    """Keeps one actor's instance registered and its TTL check passing."""

    def __init__(self, agent: ConsulAgent, cache: str, ray_node_id: str, address: str) -> None:
        super().__init__(name=f"shoveling-heartbeat-{cache}", daemon=True)
        self.agent, self.cache, self.ray_node_id, self.address = agent, cache, ray_node_id, address
        self.service_id = service_id(cache, ray_node_id)
        self.stopped = threading.Event()
        self._registered = False
        #: The actor's HTTP endpoint port, carried by the instance (``None``: no endpoint).
        self.port: int | None = None
        #: Successful rounds so far, and the last round's error (``None`` while it works):
        #: what ``stats()`` shows of this node's standing in Consul.
        self.beats = 0
        self.error: str | None = None

    def beat(self) -> None:
        """One round: register if needed, else pass the TTL check."""
        try:
            if not self._registered:
                self.agent.register(self.service_id, self.cache, self.ray_node_id, self.address, self.port)
                self._registered = True
            else:
                self.agent.pass_ttl(self.service_id)
        except ConsulError as exc:
            # Unknown check (agent restarted) or agent down: register again next round.
            self._registered = False
            if self.error is None:
                log.warning("cache %s: Consul heartbeat failing, serving on: %s", self.cache, exc)
            self.error = str(exc)
            return
        if self.error is not None:
            log.warning("cache %s: Consul agent answers again; instance %s registered", self.cache, self.service_id)
            self.error = None
        self.beats += 1

    def announce_port(self, port: int | None) -> None:
        """Carry ``port`` (or none) from the next round on: the instance is registered again."""
        self.port = port
        self._registered = False

    def status(self) -> dict:
        """``{"beats": successful rounds, "error": the last round's error or None}``."""
        return {"beats": self.beats, "error": self.error}

    def run(self) -> None:
        while not self.stopped.is_set():
            self.beat()
            self.stopped.wait(BEAT_INTERVAL)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop beating, wait for a beat in flight, then deregister (best effort).

        Joining first matters: a beat still in flight after the deregistration would register
        the instance again.
        """
        self.stopped.set()
        if self.is_alive():
            self.join(timeout)
        try:
            self.agent.deregister(self.service_id)
        except ConsulError as exc:
            log.warning("cache %s: could not deregister %s: %s", self.cache, self.service_id, exc)


class ConfigFollower(threading.Thread):
    """Follows ``shoveling/<cache>/config/*`` and ``shoveling/<cache>/node/<node>/config/*``.

    Args:
        agent: the node's agent.
        cache: the cache name.
        apply: called with ``{"max-memory": int, "max-disk": int, "eviction": str, "http": bool}`` holding the keys that are
            set and valid (node over cache-wide), whenever that changes.
    """

    def __init__(self, agent: ConsulAgent, cache: str, apply: Callable[[dict], None]) -> None:
        super().__init__(name=f"shoveling-config-{cache}", daemon=True)
        self.agent, self.cache, self.apply = agent, cache, apply
        self.prefix = f"shoveling/{cache}/"
        self.stopped = threading.Event()
        self.node_name: str | None = None
        self._valid: dict[str, int | str] = {}  # last valid value per KV key
        self._seen: dict[str, bytes] = {}  # last raw value per KV key, to log a bad one once
        self._applied: dict | None = None

    def effective(self, tree: dict[str, bytes]) -> dict:
        """The configuration ``tree`` (KV keys to raw values) stands for, logging bad values."""
        for key in [k for k in self._seen if k not in tree]:
            del self._seen[key]
            self._valid.pop(key, None)
        for key, raw in tree.items():
            name = key.rsplit("/", 1)[-1]
            if name not in CONFIG_KEYS or "/config/" not in key or self._seen.get(key) == raw:
                continue
            self._seen[key] = raw
            try:
                self._valid[key] = parse_config_value(name, raw)
            except ValueError as exc:
                log.warning("cache %s: ignoring %s: %s (the previous value stays)", self.cache, key, exc)
        config = {}
        for name in CONFIG_KEYS:
            for key in (f"{self.prefix}node/{self.node_name}/config/{name}", f"{self.prefix}config/{name}"):
                if key in self._valid:
                    config[name] = self._valid[key]
                    break
        return config

    def run(self) -> None:
        index, backoff = None, 0.1
        while not self.stopped.is_set():
            try:
                if self.node_name is None:
                    self.node_name = self.agent.node_name()
                index, tree = self.agent.kv_tree(self.prefix, index=index, wait=f"{KV_WAIT_SECONDS}s")
            except ConsulError as exc:
                log.debug("cache %s: KV query failed, retrying in %.1fs: %s", self.cache, backoff, exc)
                index = None
                self.stopped.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            backoff = 0.1
            config = self.effective(tree)
            if config != self._applied:
                self._applied = config
                try:
                    self.apply(config)
                except Exception:  # noqa: BLE001 - the thread must outlive one bad apply
                    log.exception("cache %s: applying the Consul KV configuration failed; "
                                  "following on", self.cache)

    def stop(self) -> None:
        """Stop following. Not joined: a blocking query in flight changes nothing when it
        returns, and waiting for it would hold up shutdown by its wait time."""
        self.stopped.set()
