"""What ``Cache.init`` returns for many ids: ``{id: node}`` without a dict entry per id.

A dict of ten million ids costs its caller about a gigabyte (its entries and index; the ids'
strings are the caller's already). :class:`Placed` keeps the ids in the list ``init`` made of
them and a 2-byte node number per id: about 10 bytes an id. It is a read-only
:class:`~collections.abc.Mapping`, so iterating, ``len``, ``items()``, ``values()`` and
equality with a dict work as with the dict; the first lookup by id (``placed[id]``, ``in``,
``get``) builds a position index, which costs what a dict would. ``init`` returns a plain dict
for calls of at most :data:`DICT_IDS` ids. Plain Python and numpy, no Ray.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import ItemsView, Iterator, Mapping, ValuesView

import numpy as np

#: ``init`` calls with at most this many ids return a dict.
DICT_IDS = 100_000


class _Items(ItemsView):
    def __iter__(self):
        return zip(self._mapping._ids, self._mapping._node_list())


class _Values(ValuesView):
    def __iter__(self):
        return iter(self._mapping._node_list())


class Placed(Mapping):
    """``{id: node id}`` of the ids an ``init`` call placed, in the order given.

    Args:
        ids: the ids, distinct (kept, not copied).
        nodes: the node of each id.
    """

    def __init__(self, ids: list[str], nodes: list[str]) -> None:
        names = list(dict.fromkeys(nodes))
        number = {n: k for k, n in enumerate(names)}
        self._ids, self._names = ids, names
        self._numbers = np.fromiter(map(number.__getitem__, nodes), np.uint16, len(ids))
        self._where: dict[str, int] | None = None

    def _node_list(self) -> list[str]:
        names = self._names
        return [names[k] for k in self._numbers.tolist()]

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __getitem__(self, cache_id: str) -> str:
        if self._where is None:
            self._where = {i: k for k, i in enumerate(self._ids)}
        return self._names[self._numbers[self._where[cache_id]]]

    def items(self) -> ItemsView:
        return _Items(self)

    def values(self) -> ValuesView:
        return _Values(self)

    def counts(self) -> dict[str, int]:
        """How many of the ids each node got."""
        return {self._names[k]: n for k, n in Counter(self._numbers.tolist()).items()}

    def __repr__(self) -> str:
        return f"<Placed: {len(self)} ids on {len(self._names)} nodes>"
