"""Large payloads through Ray's object store, owned by the node actor that holds them.

A frame payload of at least :data:`LARGE_PAYLOAD` bytes travels as a uint8 array out of band
(``codec`` and ``wire`` see to that): one copy into the writer's object store, then Ray's own
transfer to the actor's node, where the actor sees it without another copy. Then:

- ``adopt`` (actor): is put into the object store by the actor itself, so the actor owns it
  (it outlives the writer; Ray 2.56 removed ``ray.put(_owner=...)``) and it lives on the
  actor's node, where ``node_id`` says the data is.
- ``fetch`` (client): readers get references and one ``ray.get`` for all of them: zero-copy
  for numpy on the holder's node, Ray's own transfer elsewhere.

Small payloads stay inline in the actor's memory: an object-store round trip costs more than
copying them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray

from .codec import payload_size
from .errors import DataLost

#: Payloads of at least this many bytes go through the object store.
LARGE_PAYLOAD = 1 << 20


def adopt(frames: list) -> list:
    """Frames to store: large payloads as ``(codec, raw, ref, size)`` owned by this actor.

    Smaller arrays that arrived out of band are views into the writer's argument object, which
    Ray frees after the call: they are copied into the actor's memory.
    """
    out = []
    for frame in frames:
        payload = frame[2]
        size = payload_size(payload)
        if size >= LARGE_PAYLOAD:
            frame = (frame[0], frame[1], ray.put(payload), size)
        elif isinstance(payload, np.ndarray) and not payload.flags.owndata:
            frame = (frame[0], frame[1], payload.copy())
        out.append(frame)
    return out


def fetch(frame_lists: list[list]) -> list[list]:
    """Replace stored refs by their payloads, with one ``ray.get`` for all of them.

    Raises:
        DataLost: an object is gone (its node died).
    """
    refs = [f[2] for frames in frame_lists for f in frames if len(f) == 4]
    if not refs:
        return frame_lists
    try:
        values: Any = iter(ray.get(refs))
    except (ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError) as exc:
        raise DataLost(f"a stored value is gone with its node: {exc}") from exc
    return [[(f[0], f[1], next(values)) if len(f) == 4 else f for f in frames] for frames in frame_lists]
