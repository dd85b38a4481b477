"""Large payloads through Ray's object store, kept by the node actor that holds them.

A frame payload of at least :data:`~shoveling_ray.codec.OUT_OF_BAND_BYTES` travels as a uint8
array out of band (``codec`` and ``wire`` see to that), one copy into the object store; one
of at least :data:`~shoveling_ray.codec.OBJECT_STORE_BYTES` as an object of its own, put by the
writer (:func:`as_refs`), then Ray's own transfer to the actor's node, where the actor maps it
without another copy (:func:`resolve`). Then:

- :func:`adopt` (actor): keeps that view as the stored payload. The object store keeps an
  object's memory while a process maps it, after its owner freed it or died, so the value
  outlives its writer without a copy of its own, on the actor's node, where ``node_id`` says
  the data is (``test_every_data_path_outlives_a_killed_writer...`` kills the writer's
  process); deleting the value unmaps it and the store frees it. Ray cannot spill a mapped
  object: a client write's payloads get the actor's own copy after the write (see below), and
  the copies and drains other nodes send get it at once past half its ``max_memory``
  (:func:`~shoveling_ray.actors.batch.adopt_frames`).
- :func:`forwardable` (actor): a primary forwards a write to the other copies with the
  writer's references, not a copy of its own: each copy fetches the object from where it is.
  With copies, the smaller payloads of a write travel together as one object of the writer's
  too (a :class:`~shoveling_ray.wire.Bundled` batch, one per node and copy holders), so the
  primary hands that on as well instead of putting them into the object store again, and a
  copy on the writer's node reads them there without a transfer.
- :func:`own_copies` (the actor's background thread, :mod:`~shoveling_ray.actors.spiller`)
  puts each payload of at least :data:`~shoveling_ray.codec.OBJECT_STORE_BYTES` a client wrote
  into the object store after the write, owned by the actor (Ray 2.56 removed
  ``ray.put(_owner=...)``), as a :class:`~shoveling_ray.codec.Stored`: every read then gets a
  reference instead of a copy in its reply, and the first read does not pay the copy. A read
  that comes before it makes it itself (:func:`put_for_reads`); a value spilled first needs
  none.
- :func:`refs_beside` (actor) and :func:`refs_back` (client): a reply carries its ObjectRefs
  beside its pickle blob, where Ray counts references, and each ``Stored`` inside the blob
  holds its ref's index.
- :func:`fetch` (client): readers get references and one ``ray.get`` for all of them:
  zero-copy for numpy on the holder's node, Ray's own transfer elsewhere.

Smaller payloads are copied into the actor's memory: an object of their own costs more than
the copy (about 0.4 ms an object here, against 0.3 ms to copy 1 MiB).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray

from .protocol import OK
from .codec import OBJECT_STORE_BYTES, Stored, is_stored
from .errors import ray_errors
from .wire import Bundled


def as_refs(buffers: list) -> list:
    """Each out-of-band buffer of at least :data:`~shoveling_ray.codec.OBJECT_STORE_BYTES` as an
    object of its own in the object store (references stay); smaller ones stay arrays, which
    travel together in one object (see the module docstring). Of :class:`~shoveling_ray.wire.Bundled`
    buffers, the smaller ones become one object put here: each stays as its index in it, and
    the object's reference comes last."""
    out = [b if type(b) is int or isinstance(b, ray.ObjectRef) or b.nbytes < OBJECT_STORE_BYTES else ray.put(b)
           for b in buffers]
    if isinstance(buffers, Bundled):
        small = [i for i, b in enumerate(out) if isinstance(b, np.ndarray)]
        if len(small) > 1:
            bundle = ray.put([out[i] for i in small])
            for index, i in enumerate(small):
                out[i] = index
            out.append(bundle)
    return out


def resolve(buffers: list) -> tuple[list, dict]:
    """The arrays of ``buffers`` (references fetched with one ``ray.get``, mapped without a
    copy), and where those that came as references came from: ``{(address, size): reference}``,
    and for a bundle's arrays ``(bundle reference, index, the bundle's bytes)``."""
    refs = [b for b in buffers if isinstance(b, ray.ObjectRef)]
    if not refs:
        return list(buffers), {}
    with ray_errors("reading the call's payloads"):
        fetched = ray.get(refs)
    bundle, parts = (refs[-1], fetched.pop()) if any(type(b) is int for b in buffers) else (None, [])
    if bundle is not None:
        buffers = buffers[:-1]
    values = iter(fetched)
    arrays = [parts[b] if type(b) is int else next(values) if isinstance(b, ray.ObjectRef) else b for b in buffers]
    arrived: dict = {(a.ctypes.data, a.nbytes): b for a, b in zip(arrays, buffers) if isinstance(b, ray.ObjectRef)}
    total = sum(a.nbytes for a in parts)
    arrived.update({(a.ctypes.data, a.nbytes): (bundle, index, total) for index, a in enumerate(parts)})
    return arrays, arrived


def placeholders(buffers: list) -> list:
    """Empty arrays in place of the arrays of ``buffers`` (as :func:`as_refs` sent them) whose
    objects are gone: unpacking with them gives the items, their payloads empty."""
    bundled = any(type(b) is int for b in buffers)
    return [np.empty(0, dtype=np.uint8)] * (len(buffers) - bundled)


def forwardable(buffers: list, arrived: dict) -> list:
    """Out-of-band buffers of a packed forward, each one that :func:`resolve` fetched replaced by
    its reference, and a bundle's arrays by their indices in it (its reference last), as
    :func:`as_refs` sends them, when they are at least half of its bytes: less, and they
    travel as arrays (each copy holder would fetch the whole bundle)."""
    if not arrived:
        return buffers
    out = [arrived.get((b.ctypes.data, b.nbytes), b) for b in buffers]
    bundled = [i for i, b in enumerate(out) if type(b) is tuple]
    if not bundled:
        return out
    if 2 * sum(buffers[i].nbytes for i in bundled) < out[bundled[0]][2]:
        for i in bundled:
            out[i] = buffers[i]
        return out
    bundle = out[bundled[0]][0]
    for i in bundled:
        out[i] = out[i][1]
    return [*out, bundle]


def adopt(frames: list, keep_views: bool = True) -> list:
    """Frames to store, each payload the actor's to keep.

    With ``keep_views``, a read-only array of at least
    :data:`~shoveling_ray.codec.OBJECT_STORE_BYTES` is kept as it is: the writer's object (see
    the module docstring; in-process tests pass views of immutable bytes). Other arrays of that
    size become objects of the actor's own; smaller ones that are views into memory the actor
    does not own (the argument object several payloads share, writable memory) are copied into
    its memory.
    """
    out = []
    for frame in frames:
        payload = frame[2]
        if isinstance(payload, np.ndarray):
            large = payload.nbytes >= OBJECT_STORE_BYTES
            if large and not (keep_views and not payload.flags.owndata and not payload.flags.writeable):
                frame = (frame[0], frame[1], _own(payload))
            elif not large and not payload.flags.owndata:
                frame = (frame[0], frame[1], payload.copy())
        out.append(frame)
    return out


def keep_writers(frames: list, arrived: dict) -> list:
    """Frames of a scratch id (``init(ids, scratch=True)``): each payload of at least
    :data:`~shoveling_ray.codec.OBJECT_STORE_BYTES` that came as an object of its writer (see
    :func:`resolve`) stays that object, kept by reference as a
    :class:`~shoveling_ray.codec.Stored`: no copy of the actor's, neither now nor at the first
    read, as a Ray core task's return stays its owner's. A writer that dies takes the object
    along, and reading the id then raises ``DataLost``. Other payloads are left as they are."""
    out = []
    for frame in frames:
        payload = frame[2]
        if type(payload) is np.ndarray and payload.nbytes >= OBJECT_STORE_BYTES:
            ref = arrived.get((payload.ctypes.data, payload.nbytes))
            if isinstance(ref, ray.ObjectRef):
                frame = (frame[0], frame[1], Stored(ref, payload.nbytes))
        out.append(frame)
    return out


def put_for_reads(frames: list) -> None:
    """Put each payload of ``frames`` (in place) of at least
    :data:`~shoveling_ray.codec.OBJECT_STORE_BYTES` that is not in the object store yet there,
    owned by this actor."""
    for index, frame in enumerate(frames):
        if type(frame[2]) is np.ndarray and frame[2].nbytes >= OBJECT_STORE_BYTES:
            frames[index] = (frame[0], frame[1], _own(frame[2]))


def own_copies(frames: list) -> dict:
    """The copies :func:`put_for_reads` would make, made without changing ``frames``:
    ``{index: frame}`` (for the node's background thread, which puts them in place later)."""
    return {index: (f[0], f[1], _own(f[2])) for index, f in enumerate(frames)
            if type(f[2]) is np.ndarray and f[2].nbytes >= OBJECT_STORE_BYTES}


def _own(payload: np.ndarray) -> Stored:
    """``payload`` put into the object store by this process, which owns the object."""
    return Stored(ray.put(payload), payload.nbytes)


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
