"""One client batch as a node actor serves it, and how the actor keeps the payloads it brings.

A :class:`Batch` is made per call of ``_NodeActor.batch`` and handed to the item methods
(:mod:`.items`), which record in it what the batch did; the actor then forwards the writes it
took to the copies (:mod:`.replication`) and records the ids it created (:mod:`.directory`).
Nothing of it outlives the call. Not the wire format (see :mod:`shoveling_ray.wire`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..codec import OBJECT_STORE_BYTES
from ..objects import adopt, resolve
from ..wire import join, unpack
from .storage import Store

#: Share of ``max_memory`` below which the actor keeps writers' objects mapped (see adopt_frames).
MAPPED_SHARE = 0.5


@dataclass
class Batch:
    """What one client batch brought and what serving it did.

    Attributes:
        stamp: a write's ``(session, sequence, low)`` (see :mod:`.sessions`), or ``None``.
        arrived: the batch's payload references (see :func:`~shoveling_ray.objects.resolve`):
            what :func:`~shoveling_ray.objects.forwardable` hands on to the copies.
        inline: whether every payload is bytes of the blob: nothing to adopt.
        taken: the writes this node took as the primary copy, in order (what
            ``Replication.forward`` sends to the copies).
        created: ids the batch created here (with one copy their backup homes learn them).
        moved: bytes stored or returned.
        owed: ids the batch stored large payloads of that are still the writer's objects: the
            node's background thread makes the holder's copies (see :mod:`.spiller`).
        applied: what the sessions remember of this call (``{id: answer}``; ``None``: a read,
            or a write without a stamp): an id in it took the call here before (the client sent
            it again after a failure) and is answered as it was, not written again.
    """

    stamp: tuple | None
    arrived: dict
    inline: bool
    taken: list = field(default_factory=list)
    created: list = field(default_factory=list)
    moved: int = 0
    owed: list = field(default_factory=list)
    applied: dict | None = None


def unpack_batch(stamp: tuple | None, buffers: list, blob: tuple) -> tuple[Batch, list]:
    """A client batch's :class:`Batch` and its items (``blob`` in pieces, large payloads as
    references, see :mod:`shoveling_ray.objects`; ``stamp`` as in :class:`Batch`).

    Raises:
        ShovelingError: the payloads could not be read (see :func:`~shoveling_ray.objects.resolve`).
    """
    arrays, arrived = resolve(buffers)
    return Batch(stamp, arrived, inline=not arrays), unpack(join(blob), arrays)


def adopt_frames(store: Store, frames: list, later: bool = False) -> list:
    """:func:`~shoveling_ray.objects.adopt`, keeping the writer's objects mapped only while
    ``store`` holds less than :data:`MAPPED_SHARE` of ``max_memory``: Ray cannot spill a mapped
    object, so a store full of them would leave Ray's own objects (replies, arguments) no room;
    past that share large payloads become objects of the actor's own, which Ray spills.
    ``later``: keep them mapped anyway, the node's background thread copies them (or spills
    them first) after the write."""
    limit = store.max_memory
    return adopt(frames, keep_views=later or limit is None or store.used < MAPPED_SHARE * limit)


def mapped(frames: list) -> bool:
    """Whether ``frames`` hold a large payload that is still the writer's object (see
    :func:`~shoveling_ray.objects.own_copies`)."""
    return any(type(f[2]) is np.ndarray and f[2].nbytes >= OBJECT_STORE_BYTES for f in frames)
