"""Checks of cache ids and of the collections of them that the client takes.

Shared by :class:`~shoveling_ray.Cache` and the buffered writer, so that a bad id is a
``TypeError`` / ``ValueError`` before anything is sent, wherever it comes in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def check_id(cache_id: Any) -> str:
    """``cache_id`` if it is a non-empty str.

    Raises:
        TypeError: not a str.
        ValueError: empty.
    """
    if not isinstance(cache_id, str):
        raise TypeError(f"cache ids must be str, not {type(cache_id).__name__}")
    if not cache_id:
        raise ValueError("cache ids must not be empty")
    return cache_id


def check_ids(cache_ids: Any, what: str = "ids") -> list[str]:
    """``cache_ids`` as a list, each checked by :func:`check_id`; ``what`` names the argument.

    Raises:
        TypeError: not an iterable of str (a str itself is refused), or an id not a str.
        ValueError: an empty id.
    """
    if isinstance(cache_ids, (str, bytes)) or not isinstance(cache_ids, Iterable):
        raise TypeError(f"{what} must be an iterable of str ids, not {type(cache_ids).__name__}")
    ids = list(cache_ids)
    for cache_id in ids:
        check_id(cache_id)
    return ids


def check_mapping(mapping: Any) -> Mapping:
    """``mapping`` if it is a mapping whose keys pass :func:`check_id`.

    Raises:
        TypeError / ValueError: not a mapping, or a bad id.
    """
    if not isinstance(mapping, Mapping):
        raise TypeError(f"expected a mapping of id -> value, not {type(mapping).__name__}")
    check_ids(mapping.keys())
    return mapping
