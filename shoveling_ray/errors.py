"""The exception tree of shoveling_ray.

Every error that shoveling_ray raises on purpose derives from :class:`ShovelingError`, so one
``except sr.ShovelingError`` catches them all. Lower-layer errors (Ray's, HTTP's) are mapped
at the boundary with ``raise ... from exc``; none reaches a user raw::

    ShovelingError
     ├── CacheMiss          (also a KeyError) the id does not exist
     ├── CacheFull          a node's memory (and, under spill, its disk) cannot take the write
     ├── DataLost           the node that held the data is gone
     ├── NodeUnavailable    a node's cache actor does not answer
     │   └── NodeDrained    ... because it was drained (calls are retried on the new homes)
     ├── ConsulError        Consul was required but did not answer, or refused a request
     └── CacheClosed        the cache was closed

Bad arguments (wrong id type, unknown strategy, unsupported value) are plain ``TypeError`` /
``ValueError``, raised before anything is sent.

:func:`ray_errors` is the one place where Ray's exceptions become these; every module that
waits on Ray (the client, the shuffle, the node actors, the object-store path) goes through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator


class ShovelingError(Exception):
    """Base class of every error shoveling_ray raises on purpose."""


class CacheMiss(ShovelingError, KeyError):
    """The cache id does not exist. Also a ``KeyError``, so ``except KeyError`` works."""

    def __init__(self, cache_id: str, cache: str | None = None) -> None:
        super().__init__(cache_id)
        self.cache_id = cache_id
        self.cache = cache

    def __str__(self) -> str:
        where = f" in cache {self.cache!r}" if self.cache else ""
        return f"cache id {self.cache_id!r} does not exist{where}"

    def __reduce__(self):  # picklable across Ray tasks with its fields
        return type(self), (self.cache_id, self.cache)


class CacheFull(ShovelingError):
    """A node's cache is full: under ``reject``, past ``max_memory``; under ``spill``, its disk
    tier is full too (or spilling took too long); under ``lru``, a value exceeds the limit.

    Attributes:
        node_id: hex id of the Ray node whose limit was hit.
        limit: that node's ``max_memory`` in bytes.
        used: bytes held on that node when the write was refused.
        needed: bytes the refused write would have added.
        reason: why spilling did not help (``""`` without it).
    """

    def __init__(self, node_id: str, limit: int, used: int, needed: int, cache_id: str = "", reason: str = "") -> None:
        self.node_id, self.limit, self.used, self.needed = node_id, limit, used, needed
        self.cache_id, self.reason = cache_id, reason
        what = f"writing {cache_id!r}" if cache_id else "the write"
        super().__init__(
            f"cache full on node {node_id}: {what} needs {needed} bytes, "
            f"{used} of max_memory={limit} bytes are in use" + (f" {reason}" if reason else "")
        )

    def __reduce__(self):
        return type(self), (self.node_id, self.limit, self.used, self.needed, self.cache_id, self.reason)


class DataLost(ShovelingError):
    """The node that held the data is gone and no copy is left.

    Attributes:
        cache_id: the lost id ("" when the loss was found below the id level).
        node_id: hex id of the node it was on ("" when unknown).
    """

    def __init__(self, cache_id: str = "", node_id: str = "", detail: str = "") -> None:
        self.cache_id, self.node_id, self.detail = cache_id, node_id, detail
        what = f"cache id {cache_id!r} is lost" if cache_id else "data is lost"
        where = f" with node {node_id}" if node_id else ""
        super().__init__(f"{what}{where}" + (f": {detail}" if detail else "") +
                         ("; set, delete or init it again to use the id" if cache_id else ""))

    def __reduce__(self):
        return type(self), (self.cache_id, self.node_id, self.detail)


class NodeUnavailable(ShovelingError):
    """A node's cache actor does not answer (node dead, actor killed, or unreachable).

    Attributes:
        node_id: hex id of the Ray node.
        cache_ids: the ids whose operation could not be served.
    """

    def __init__(self, node_id: str, cache_ids: list[str] | tuple[str, ...] = (), reason: str = "") -> None:
        self.node_id = node_id
        self.cache_ids = list(cache_ids)
        shown = ", ".join(repr(i) for i in self.cache_ids[:5])
        more = f" (+{len(self.cache_ids) - 5} more)" if len(self.cache_ids) > 5 else ""
        ids = f" for ids {shown}{more}" if self.cache_ids else ""
        tail = f": {reason}" if reason else ""
        super().__init__(f"node {node_id} is unavailable{ids}{tail}")
        self.reason = reason

    def __reduce__(self):
        return type(self), (self.node_id, self.cache_ids, self.reason)


class NodeDrained(NodeUnavailable):
    """The node was drained: its ids live on other nodes now (the client refreshes its view and
    tries again)."""


class ConsulError(ShovelingError):
    """Consul was required but is unreachable, or it refused a request."""


class CacheClosed(ShovelingError):
    """The cache was closed; open it again with ``Cache(name)``."""


@contextlib.contextmanager
def ray_errors(what: str, *, node: str | None = None, ids: Iterable[str] = ()) -> Iterator[None]:
    """Map Ray's exceptions raised inside the block to this tree.

    Args:
        what: what was being done, for messages (``"cache 'x': get on node ..."``).
        node: the node whose cache actor the block waits on, if any.
        ids: the ids concerned, named in :class:`NodeUnavailable`.

    Raises:
        ShovelingError (any subclass): raised inside a task or actor, re-raised as itself
            (a :class:`CacheFull` keeps its node and limit).
        NodeUnavailable: with ``node``: its actor died, or it did not answer in time.
        CacheClosed: without ``node``: the actor waited on (the coordinator) is gone.
        DataLost: an object the block needed is lost with its node or owner.
        ShovelingError: anything else (a task's own exception, a crashed or out-of-memory-killed
            worker, a cancelled task), chained to the original.
    """
    import ray.exceptions as rex  # this module stays importable without starting Ray

    try:
        yield
    except rex.RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, ShovelingError):
            raise cause from None
        if isinstance(cause, rex.RayError) and not isinstance(cause, rex.RayTaskError):
            with ray_errors(what, node=node, ids=ids):
                raise cause from None
        raise ShovelingError(f"{what}: {cause!r}") from cause
    except rex.RayActorError as exc:
        if node is None:
            raise CacheClosed(f"{what}: the cache is closed or its coordinator died") from exc
        raise NodeUnavailable(node, list(ids), "its cache actor died") from exc
    except rex.GetTimeoutError as exc:
        if node is None:
            raise ShovelingError(f"{what}: no answer in time") from exc
        raise NodeUnavailable(node, list(ids), "its cache actor did not answer in time") from exc
    except rex.ObjectLostError as exc:
        raise DataLost(detail=f"{what}: a stored value is gone with its node or owner ({type(exc).__name__})") from exc
    except rex.RayError as exc:
        raise ShovelingError(f"{what}: {exc}") from exc
