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
     ├── CacheClosed        the cache was closed
     └── CacheNotFound      (also a ValueError) ``Cache.attach`` found no cache of that name

Bad arguments (wrong id type, unknown strategy, unsupported value) are plain ``TypeError`` /
``ValueError``, raised before anything is sent.

:func:`ray_errors` is the one place where Ray's exceptions become these; every module that
waits on Ray (the client, the shuffle, the node actors, the object-store path) goes through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

#: Ids a message names before it says how many more there are.
SHOWN_IDS = 5


def _ids_text(ids: Sequence[str]) -> str:
    """``'a', 'b', 'c'`` and ``(+N more)`` past :data:`SHOWN_IDS`."""
    shown = ", ".join(repr(i) for i in ids[:SHOWN_IDS])
    return shown + (f" (+{len(ids) - SHOWN_IDS} more)" if len(ids) > SHOWN_IDS else "")


def _stored_text(stored: int | None, total: int | None, ids: Sequence[str] = ()) -> str:
    """What a many-id write stored, for messages (naming ``ids``, not written); nothing when
    ``stored`` is ``None``."""
    if stored is None:
        return ""
    return f"; {stored} of {total} ids were written" + (f", not {_ids_text(ids)}" if ids else "")


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
        node_id: hex id of the Ray node whose limit was hit (the first one, when several were).
        limit: that node's ``max_memory`` in bytes.
        used: bytes held on that node when the write was refused.
        needed: bytes the refused write would have added.
        reason: why spilling did not help (``""`` without it).
        cache_id: the first id not written (``""`` when unknown).
        ids: every id the call did not write (``set_many`` / ``append_many``: the others were
            written; a single-id call: that id).
        stored, total: how many of the call's ids were written, of how many (``None`` when not
            a many-id call).
    """

    def __init__(self, node_id: str, limit: int, used: int, needed: int, cache_id: str = "", reason: str = "",
                 ids: Sequence[str] = (), stored: int | None = None, total: int | None = None) -> None:
        self.node_id, self.limit, self.used, self.needed = node_id, limit, used, needed
        self.cache_id, self.reason = cache_id, reason
        self.ids = list(ids) or ([cache_id] if cache_id else [])
        self.stored, self.total = stored, total
        what = f"writing {cache_id!r}" if cache_id else "the write"
        super().__init__(
            f"cache full on node {node_id}: {what} needs {needed} bytes, "
            f"{used} of max_memory={limit} bytes are in use" + (f" {reason}" if reason else "")
            + _stored_text(stored, total, self.ids)
        )

    def __reduce__(self):
        return type(self), (self.node_id, self.limit, self.used, self.needed, self.cache_id, self.reason,
                            self.ids, self.stored, self.total)


class DataLost(ShovelingError):
    """The node that held the data is gone and no copy is left.

    Attributes:
        cache_id: the (first) lost id ("" when the loss was found below the id level).
        node_id: hex id of the node it was on ("" when unknown).
        ids: every lost id the call met (``get_many`` / ``set_many`` / ``append_many``: all of
            them; a single-id call: that id).
        stored, total: how many of a many-id write's ids were written, of how many (``None``
            otherwise).
    """

    def __init__(self, cache_id: str = "", node_id: str = "", detail: str = "",
                 ids: Sequence[str] = (), stored: int | None = None, total: int | None = None) -> None:
        self.cache_id, self.node_id, self.detail = cache_id, node_id, detail
        self.ids = list(ids) or ([cache_id] if cache_id else [])
        self.stored, self.total = stored, total
        if len(self.ids) > 1:
            what = f"{len(self.ids)} cache ids are lost ({_ids_text(self.ids)})"
        else:
            what = f"cache id {cache_id!r} is lost" if cache_id else "data is lost"
        where = f" with node {node_id}" if node_id else ""
        again = ("; set, delete or init them again to use them" if len(self.ids) > 1
                 else "; set, delete or init it again to use the id")
        super().__init__(f"{what}{where}" + (f": {detail}" if detail else "") + (again if cache_id else "")
                         + _stored_text(stored, total))

    def __reduce__(self):
        return type(self), (self.cache_id, self.node_id, self.detail, self.ids, self.stored, self.total)


class NodeUnavailable(ShovelingError):
    """A node's cache actor does not answer (node dead, actor killed, or unreachable).

    Attributes:
        node_id: hex id of the Ray node.
        cache_ids: the ids whose operation could not be served.
    """

    def __init__(self, node_id: str, cache_ids: list[str] | tuple[str, ...] = (), reason: str = "") -> None:
        self.node_id = node_id
        self.cache_ids = list(cache_ids)
        ids = f" for ids {_ids_text(self.cache_ids)}" if self.cache_ids else ""
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


class CacheNotFound(ShovelingError, ValueError):
    """``Cache.attach(name)`` found no running cache of that name. Also a ``ValueError``.

    Attributes:
        name: the name asked for.
        running: the names of the caches that run, sorted.
    """

    def __init__(self, name: str, running: Sequence[str] = ()) -> None:
        self.name, self.running = name, list(running)
        others = f"running caches: {', '.join(self.running)}" if self.running else "no cache is running"
        super().__init__(f"no running cache named {name!r} ({others})")

    def __reduce__(self):
        return type(self), (self.name, self.running)


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
