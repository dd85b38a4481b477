"""Large payloads through Ray's object store, owned by the node actor that holds them.

A frame payload of at least :data:`~shoveling_ray.codec.OBJECT_STORE_BYTES` travels as a uint8
array out of band (``codec`` and ``wire`` see to that): one copy into the writer's object
store, then Ray's own transfer to the actor's node, where the actor sees it without another
copy. Then:

- :func:`adopt` (actor): is put into the object store by the actor itself, so the actor owns it
  (it outlives the writer; Ray 2.56 removed ``ray.put(_owner=...)``) and it lives on the
  actor's node, where ``node_id`` says the data is. The frame's payload becomes a
  :class:`~shoveling_ray.codec.Stored`.
- :func:`refs_beside` (actor) and :func:`refs_back` (client): a reply carries its ObjectRefs
  beside its pickle blob, where Ray counts references, and each ``Stored`` inside the blob
  holds its ref's index.
- :func:`fetch` (client): readers get references and one ``ray.get`` for all of them:
  zero-copy for numpy on the holder's node, Ray's own transfer elsewhere.

Small payloads stay inline in the actor's memory: an object-store round trip costs more than
copying them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray

from .actors.protocol import OK
from .codec import OBJECT_STORE_BYTES, Stored, is_stored, payload_size
from .errors import ray_errors


def adopt(frames: list) -> list:
    """Frames to store: large payloads put into the object store, owned by this actor.

    Smaller arrays that arrived out of band are views into the writer's argument object, which
    Ray frees after the call: they are copied into the actor's memory.
    """
    out = []
    for frame in frames:
        payload = frame[2]
        size = payload_size(payload)
        if size >= OBJECT_STORE_BYTES:
            frame = (frame[0], frame[1], Stored(ray.put(payload), size))
        elif isinstance(payload, np.ndarray) and not payload.flags.owndata:
            frame = (frame[0], frame[1], payload.copy())
        out.append(frame)
    return out


def load(stored: Stored) -> Any:
    """The payload of a value this actor keeps in the object store (zero-copy on its node)."""
    return ray.get(stored.ref)


def _replace_stored(results: list, swap) -> None:
    """Apply ``swap`` to the ``Stored`` payload of every frame of every OK ``get`` result."""
    for index, (status, value) in enumerate(results):
        if status == OK and any(is_stored(f) for f in value[2]):
            frames = [(f[0], f[1], swap(f[2])) if is_stored(f) else f for f in value[2]]
            results[index] = (status, (value[0], value[1], frames))


def refs_beside(results: list) -> list:
    """Move the ObjectRefs out of ``get`` results (in place); returns them in index order."""
    refs: list = []

    def to_index(stored: Stored) -> Stored:
        refs.append(stored.ref)
        return Stored(len(refs) - 1, stored.size)

    _replace_stored(results, to_index)
    return refs


def refs_back(results: list, refs: list) -> list:
    """Inverse of :func:`refs_beside`: put the refs that travelled beside a reply back."""
    if refs:
        _replace_stored(results, lambda stored: Stored(refs[stored.ref], stored.size))
    return results


def swap_refs(frames: list, swap) -> list:
    """``frames`` with ``swap`` applied to the ref of each stored payload: to an index into a
    list of refs that travels beside a packed blob (forwarding a stored value to a copy), and
    back."""
    return [(f[0], f[1], Stored(swap(f[2].ref), f[2].size)) if is_stored(f) else f for f in frames]


def fetch(frame_lists: list[list]) -> list[list]:
    """Replace stored payloads by their data, with one ``ray.get`` for all of them.

    Raises:
        DataLost: an object is gone (its node died).
    """
    refs = [f[2].ref for frames in frame_lists for f in frames if is_stored(f)]
    if not refs:
        return frame_lists
    with ray_errors("reading stored values"):
        values: Any = iter(ray.get(refs))
    return [[(f[0], f[1], next(values)) if is_stored(f) else f for f in frames] for frames in frame_lists]
