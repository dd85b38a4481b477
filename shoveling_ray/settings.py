"""The settings of a cache: their names, defaults, validation and Consul KV keys.

The one owner of what a setting is called and which values it takes, so that the client
(``Cache(...)``, ``Cache.configure``), the coordinator, the ``shoveling`` command and the
Consul KV follower agree. Plain Python, no Ray.

======================  ==========================================  ===================
setting                 values (default for a new cache)            Consul KV key
======================  ==========================================  ===================
``max_memory``          bytes per node, ``None`` (object store)     ``max-memory``
``eviction``            ``spill`` | ``reject`` | ``lru`` (spill)     ``eviction``
``max_disk``            bytes per node, ``None`` (keep 10% free)     ``max-disk``
``replicas``            int >= 1 (1)                                 --
``http``                bool (``False``)                             ``http`` (on | off)
``spill_dir``           a directory, ``None`` (Ray's session dir)    --
======================  ==========================================  ===================

It does not apply settings (the coordinator and the node actors do) nor read Consul.
"""

from __future__ import annotations

import os
from typing import Any

#: Eviction policies, in the order the docs list them.
POLICIES = ("spill", "reject", "lru")
#: Every setting and a new cache's value of it.
DEFAULTS: dict[str, Any] = {
    "max_memory": None,
    "eviction": "spill",
    "max_disk": None,
    "replicas": 1,
    "http": False,
    "spill_dir": None,
}
#: The settings ``Cache.configure`` changes on a running cache (``spill_dir`` is fixed at start).
CONFIGURABLE = ("max_memory", "eviction", "max_disk", "replicas", "http")
#: Setting name -> its key under ``shoveling/<cache>/config/`` in Consul KV.
KV_KEYS = {"max_memory": "max-memory", "eviction": "eviction", "max_disk": "max-disk", "http": "http"}
_SWITCH = {"on": True, "off": False}


def check_limit(name: str, value: object) -> int | None:
    """Return ``value`` if it is ``None`` or a non-negative int: a byte limit called ``name``.

    Raises:
        TypeError: not an int (bools are refused too).
        ValueError: negative.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int number of bytes or None, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return value


def check_max_memory(max_memory: object) -> int | None:
    """``max_memory`` if valid (see :func:`check_limit`)."""
    return check_limit("max_memory", max_memory)


def check_max_disk(max_disk: object) -> int | None:
    """``max_disk`` if valid (see :func:`check_limit`)."""
    return check_limit("max_disk", max_disk)


def check_eviction(eviction: object) -> str:
    """Return ``eviction`` if valid.

    Raises:
        ValueError: not one of :data:`POLICIES`.
    """
    if eviction not in POLICIES:
        raise ValueError(f"eviction must be 'spill', 'reject' or 'lru', not {eviction!r}")
    return eviction  # type: ignore[return-value]


def check_replicas(replicas: object) -> int:
    """Return ``replicas`` if it is an int of at least 1.

    Raises:
        TypeError: not an int (bools are refused too).
        ValueError: less than 1.
    """
    if isinstance(replicas, bool) or not isinstance(replicas, int):
        raise TypeError(f"replicas must be an int, not {type(replicas).__name__}")
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    return replicas


def check_http(http: object) -> bool:
    """Return ``http`` if it is a bool.

    Raises:
        TypeError: anything else.
    """
    if not isinstance(http, bool):
        raise TypeError(f"http must be True or False, not {type(http).__name__}")
    return http


def check_spill_dir(spill_dir: object) -> str:
    """``spill_dir`` as an absolute path (the actors run in other working directories).

    Raises:
        TypeError: not a str or ``os.PathLike``.
    """
    if not isinstance(spill_dir, (str, os.PathLike)):
        raise TypeError(f"spill_dir must be a str or a path, not {type(spill_dir).__name__}")
    return os.path.abspath(os.fspath(spill_dir))


_CHECKS = {
    "max_memory": check_max_memory,
    "eviction": check_eviction,
    "max_disk": check_max_disk,
    "replicas": check_replicas,
    "http": check_http,
    "spill_dir": check_spill_dir,
}


def given(**settings: Any) -> dict[str, Any]:
    """``settings`` validated (``None`` is valid for ``max_memory``, ``max_disk`` and
    ``spill_dir`` only: their defaults).

    Raises:
        TypeError / ValueError: an unknown name or a bad value (see the ``check_*`` functions).
    """
    out = {}
    for name, value in settings.items():
        if name not in _CHECKS:
            raise TypeError(f"unknown setting {name!r}; settings: {', '.join(DEFAULTS)}")
        out[name] = None if value is None and DEFAULTS[name] is None else _CHECKS[name](value)
    return out


def refuse_changes(cache: str, running: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Check that opening the running cache ``cache`` with the settings ``wanted`` changes
    nothing: a setting given with the value it runs with is fine.

    Raises:
        ValueError: a setting differs; names the running and the given value and the way to
            change it (``configure``, or for ``spill_dir`` closing the cache).
    """
    differ = [name for name in DEFAULTS if name in wanted and wanted[name] != running.get(name)]
    if not differ:
        return
    shown = "; ".join(f"{n}={running.get(n)!r} (given: {wanted[n]!r})" for n in differ)
    changes = ", ".join(f"{n}={wanted[n]!r}" for n in differ if n in CONFIGURABLE)
    how = []
    if changes:
        how.append(f"use Cache.attach({cache!r}).configure({changes}) to change it for everyone")
    if "spill_dir" in differ:
        how.append("spill_dir is fixed while the cache runs: close it to change spill_dir")
    raise ValueError(f"cache {cache!r} is running with {shown}; " + "; ".join(how))


def parse_kv(key: str, raw: bytes) -> int | str | bool:
    """Parse the value of Consul KV key ``key`` (one of :data:`KV_KEYS`' values).

    Raises:
        ValueError: ``max-memory`` / ``max-disk`` is not a non-negative integer, ``eviction``
            is not one of :data:`POLICIES`, ``http`` is not ``on`` / ``off``, or ``key`` is not
            a configuration key.
    """
    text = raw.decode("utf-8", "replace").strip()
    if key == KV_KEYS["http"]:
        if text not in _SWITCH:
            raise ValueError(f"http must be 'on' or 'off', got {text!r}")
        return _SWITCH[text]
    if key in (KV_KEYS["max_memory"], KV_KEYS["max_disk"]):
        if not text.isdigit():
            raise ValueError(f"{key} must be a non-negative integer number of bytes, got {text!r}")
        return int(text)
    if key == KV_KEYS["eviction"]:
        if text not in POLICIES:
            raise ValueError(f"eviction must be one of {', '.join(POLICIES)}, got {text!r}")
        return text
    raise ValueError(f"{key!r} is not a configuration key; keys: {', '.join(KV_KEYS.values())}")
