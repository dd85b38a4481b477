"""The client's argument checks, so that a bad argument is a ``TypeError`` / ``ValueError``
before Ray is touched. Ids, id lists and mappings are checked by :mod:`shoveling_ray.ids`
(shared with the writer), settings by :mod:`shoveling_ray.settings`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .. import settings
from ..placement import check_strategy

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
#: What :meth:`Cache.node_id` can be asked for.
NODE_ID_STRATEGIES = ("default",)


def check_name(name: Any) -> str:
    """``name`` if it is a valid cache name.

    Raises:
        ValueError: not 1-128 characters of letters, digits, ``_``, ``.``, ``-`` (or not a str).
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"cache name must be 1-128 characters of letters, digits, '_', '.', '-', got {name!r}"
        )
    return name


def check_prefix(prefix: Any) -> None:
    """Raises:
        TypeError: ``prefix`` is not a str.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be str, not {type(prefix).__name__}")


def check_timeout(timeout: Any) -> float:
    """``timeout`` as a float.

    Raises:
        TypeError: not a number (a bool is refused).
        ValueError: not positive and finite.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if not 0 < timeout < math.inf:
        raise ValueError(f"timeout must be a positive, finite number of seconds, got {timeout}")
    return float(timeout)


def check_batch(batch: Any) -> None:
    """Raises:
        TypeError: ``batch`` (a page size) is not an int (a bool is refused).
        ValueError: below 1.
    """
    if isinstance(batch, bool) or not isinstance(batch, int):
        raise TypeError(f"batch must be int, not {type(batch).__name__}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, not {batch}")


def check_token(token: Any) -> None:
    """Raises:
        TypeError: ``token`` is neither a str nor ``None``.
    """
    if token is not None and not isinstance(token, str):
        raise TypeError(f"token must be a str or None, not {type(token).__name__}")


def check_init(strategy: Any, replicas: Any, scratch: Any) -> None:
    """The arguments of :meth:`Cache.init` other than the ids.

    Raises:
        ValueError: unknown strategy (names the valid ones), ``replicas`` below 1, or above 1
            with ``scratch``.
        TypeError: ``replicas`` not an int or ``scratch`` not a bool.
    """
    check_strategy(strategy)
    if replicas is not None:
        settings.check_replicas(replicas)
    if not isinstance(scratch, bool):
        raise TypeError(f"scratch must be a bool, not {type(scratch).__name__}")
    if scratch and replicas not in (None, 1):
        raise ValueError(f"scratch ids have one copy: replicas={replicas} cannot go with scratch=True")


def check_node_id_strategy(strategy: Any) -> None:
    """Raises:
        ValueError: ``strategy`` is not one of :data:`NODE_ID_STRATEGIES` (names them).
    """
    if strategy not in NODE_ID_STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid strategies: {', '.join(NODE_ID_STRATEGIES)}")
