"""A compact table of ids: what one node knows of each id that needs no Python object of its
own (an empty id held here, a placement record, a lost id), in a few bytes per id.

A Python ``dict`` from ``str`` to anything costs an id about 100-150 bytes before its value
(the string object, 49 bytes plus its characters; the dict's entry and index; the value object),
and a node keeps such an entry in several dicts. Here an id is a row: its UTF-8 name in one byte
array (with its end offset), the low 32 bits of its hash, and one integer per column
(0 means "nothing"; int16 unless the column is declared wider, and a column takes no memory
until some id sets it); an open-addressing index (linear probing, at most :data:`MAX_LOAD` full)
finds the row of a name. End offsets are 4 bytes each until the names pass 4 GiB, 8 after. The
hash is CRC-32 of the name's UTF-8 bytes, mixed (:mod:`shoveling_ray.idpack`): the same for a
str and for its bytes in a :class:`~shoveling_ray.idpack.PackedIds`, so that ``init``'s ids
need no string object here. About 21 bytes plus the name's characters per id, every array
allocated from anonymous memory maps, so that an array replaced when the table grows goes back
to the kernel at once (see :mod:`shoveling_ray.heap` for why small blocks are kept instead).

A row whose columns are all 0 is dead: lookups still find it (setting a column revives it),
and once dead rows outnumber live ones the table is rebuilt without them (when the last live
row dies, the table is as new).

Batch methods (:meth:`IdTable.rows`, :meth:`IdTable.add`, ...) take a list of str or a
:class:`~shoveling_ray.idpack.PackedIds` and do their work with numpy, which is what makes
``init`` of millions of ids take seconds. Plain Python and numpy, no Ray; the store
and the directory own the meaning of the columns, this module only their storage.
"""

from __future__ import annotations

import math
import mmap
import zlib
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from typing import Union

import numpy as np

from ..idpack import PackedIds, mix, mix_one

#: Ids as a batch method takes them.
Names = Union[Sequence[str], PackedIds]

#: The index is rebuilt larger once more than this share of it is taken, with as many slots
#: as make it :data:`GROWN_LOAD` full: 1.5 times as many. Its size is not a power of two (a
#: slot is ``hash * size >> 32``), so that its bytes per id stay between 6.7 and 10 (a
#: doubling index, always filled, spends 6.7 to 13.3: at 1 M ids on 3 nodes it held twice the
#: slots it needed, 24 bytes an id).
MAX_LOAD = 0.6
GROWN_LOAD = 0.4
_EMPTY = -1
_MIN_SLOTS = 64
#: Arrays of at least this many bytes come from a memory map of their own.
_MAPPED_BYTES = 1 << 16
#: Rows a rebuilt index takes at a time: the temporaries of inserting a million rows at once
#: (about 60 MB) would stay in the process as freed heap (see :mod:`shoveling_ray.heap`).
_INSERT_ROWS = 1 << 16
#: Names compared at a time by :meth:`IdTable.rows` (it makes an index per byte of them).
_COMPARE_ROWS = 4096
#: Names' bytes up to which end offsets fit in 4 bytes.
_SMALL_ENDS = np.iinfo(np.uint32).max


def new_array(count: int, dtype, fill: int | None = None) -> np.ndarray:
    """A numpy array of ``count`` items; large ones in an anonymous memory map (freed whole)."""
    dtype = np.dtype(dtype)
    nbytes = max(count, 1) * dtype.itemsize
    if nbytes >= _MAPPED_BYTES:
        # Private: a shared anonymous map (mmap's default) counts as shared memory (RssShmem),
        # beside Ray's object store pages, where the process's own memory (RssAnon) is this.
        mapped = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        out = np.frombuffer(mapped, dtype=dtype, count=max(count, 1))
    else:
        out = np.zeros(max(count, 1), dtype)
    if fill is not None:
        out.fill(fill)
    return out


def grown(old: np.ndarray, used: int, need: int) -> np.ndarray:
    """``old`` with room for ``need`` items, its first ``used`` kept (doubling)."""
    if need <= len(old):
        return old
    size = max(need, 2 * len(old), 1024)
    new = new_array(size, old.dtype)
    new[:used] = old[:used]
    return new


def _slots_for(rows: int) -> int:
    """Index slots for ``rows`` rows, :data:`GROWN_LOAD` full."""
    return max(_MIN_SLOTS, math.ceil(rows / GROWN_LOAD))


def _slots_of(hashes: np.ndarray, size: int) -> np.ndarray:
    """The index slot of each 32-bit hash: ``hash * size >> 32`` (as uniform as the hash, with
    no division, for any ``size``)."""
    return ((hashes.astype(np.uint64) * np.uint64(size)) >> np.uint64(32)).astype(np.int64)


def _next(slots: np.ndarray, size: int) -> np.ndarray:
    """The slots after ``slots`` (linear probing, wrapping at ``size``)."""
    slots = slots + 1
    slots[slots == size] = 0
    return slots


def _packed(names: Names) -> PackedIds:
    return names if isinstance(names, PackedIds) else PackedIds.of(names)


def _hash(encoded: bytes) -> int:
    """The table's hash of one name's UTF-8 bytes (:func:`_hashes` of one)."""
    return mix_one(zlib.crc32(encoded))


def _hashes(ids: PackedIds) -> np.ndarray:
    return mix(ids.crc32())


class IdTable:
    """Ids with a few small integers each.

    Args:
        columns: the column names; each holds an int16 per id, 0 meaning unset.
        wide: the dtype of columns that hold more than an int16 (``{"small": np.int64}``).
    """

    def __init__(self, columns: Sequence[str], wide: dict | None = None) -> None:
        self.columns = tuple(columns)
        self._dtypes = {c: np.dtype((wide or {}).get(c, np.int16)) for c in self.columns}
        self._clear()

    def _clear(self) -> None:
        self._rows = 0  # rows used (live and dead)
        self._live = 0
        self._names = new_array(0, np.uint8)  # the names' UTF-8 bytes, one after another
        self._names_used = 0
        self._ends = new_array(0, np.uint32)  # end of each row's name in _names (int64 past 4 GiB)
        self._hash = new_array(0, np.uint32)
        # A column's array once some id set it (``None`` before: it reads as zeros).
        self._cols: dict[str, np.ndarray | None] = dict.fromkeys(self.columns)
        self._counts = dict.fromkeys(self.columns, 0)
        self._index = new_array(_MIN_SLOTS, np.int32, _EMPTY)

    # -- size --------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Live rows (ids with some column set)."""
        return self._live

    def count(self, column: str) -> int:
        """Ids with ``column`` set."""
        return self._counts[column]

    @property
    def nbytes(self) -> int:
        """Memory the table takes (the parts of its arrays in use, and its whole index)."""
        per_row = self._ends.itemsize + 4 + sum(c.itemsize for c in self._cols.values() if c is not None)
        return self._rows * per_row + self._names_used + self._index.nbytes

    # -- one id ------------------------------------------------------------------------------

    def _name(self, row: int) -> bytes:
        start = int(self._ends[row - 1]) if row else 0
        return self._names[start:int(self._ends[row])].tobytes()

    def row(self, name: str) -> int:
        """The row of ``name``, or -1."""
        encoded = name.encode()
        h = _hash(encoded)
        index, hashes = self._index, self._hash
        size = len(index)
        slot = (h * size) >> 32
        while True:
            row = int(index[slot])
            if row == _EMPTY:
                return -1
            if hashes[row] == h and self._name(row) == encoded:
                return row
            slot = slot + 1 if slot + 1 < size else 0

    def _wide_ends(self, names_bytes: int) -> None:
        """End offsets 8 bytes wide once the names take ``names_bytes`` past 4 GiB."""
        if names_bytes > _SMALL_ENDS and self._ends.dtype != np.int64:
            wide = new_array(len(self._ends), np.int64)
            wide[:self._rows] = self._ends[:self._rows]
            self._ends = wide

    def _column(self, column: str) -> np.ndarray:
        """The array of ``column``, made (zeros, as long as the rows' arrays) if no id set it yet."""
        col = self._cols[column]
        if col is None:
            col = self._cols[column] = new_array(len(self._hash), self._dtypes[column])
        return col

    def _set_columns(self) -> list[np.ndarray]:
        return [c for c in self._cols.values() if c is not None]

    def get(self, name: str, column: str) -> int:
        """``column`` of ``name`` (0 if unset or absent)."""
        col = self._cols[column]
        if col is None:
            return 0
        row = self.row(name)
        return 0 if row < 0 else int(col[row])

    def fields(self, name: str, columns: Sequence[str]) -> tuple[int, ...]:
        """``columns`` of ``name`` (0 where unset or absent), with one lookup."""
        return self.fields_at(self.row(name), columns)

    def fields_at(self, row: int, columns: Sequence[str]) -> tuple[int, ...]:
        """:meth:`fields` of the id at ``row`` (from :meth:`row`, -1: absent)."""
        cols = self._cols
        return tuple(0 if row < 0 or cols[c] is None else int(cols[c][row]) for c in columns)

    def set(self, name: str, column: str, value: int) -> None:
        """Set ``column`` of ``name`` (0 unsets it; an id with nothing set is dropped)."""
        self.set_at(self.row(name), name, column, value)

    def set_at(self, row: int, name: str, column: str, value: int) -> None:
        """:meth:`set` of ``name`` at ``row``, its :meth:`row` since the table last changed."""
        if row < 0:
            if value:
                self._append_one(name, column, value)
            return
        col = self._column(column)
        old = int(col[row])
        if bool(old) == bool(value):
            col[row] = value
            return
        alive = any(c[row] for c in self._set_columns())
        col[row] = value
        self._counts[column] += 1 if value else -1
        if alive != any(c[row] for c in self._set_columns()):
            self._live += -1 if alive else 1
            if alive and not self._live:
                self._clear()  # its last id went: nothing stays behind
            elif alive and self._rows - self._live > max(1 << 16, self._live):
                self._rebuild(len(self._index))  # it died

    def _append_one(self, name: str, column: str, value: int) -> None:
        """Add a row for ``name`` (absent) with ``column`` set: without numpy's per-call cost."""
        encoded = name.encode()
        row, used = self._rows, self._names_used
        self._names = grown(self._names, used, used + len(encoded))
        self._names[used:used + len(encoded)] = np.frombuffer(encoded, np.uint8)
        self._names_used = used + len(encoded)
        self._wide_ends(self._names_used)
        self._ends = grown(self._ends, row, row + 1)
        self._hash = grown(self._hash, row, row + 1)
        h = _hash(encoded)
        self._ends[row], self._hash[row] = used + len(encoded), h
        self._column(column)
        for c, col in self._cols.items():
            if col is not None:
                self._cols[c] = col = grown(col, row, row + 1)
                col[row] = value if c == column else 0
        self._rows, self._live = row + 1, self._live + 1
        self._counts[column] += 1
        if self._rows > MAX_LOAD * len(self._index):
            self._reindex(_slots_for(self._rows))
            return
        index = self._index
        size = len(index)
        slot = (h * size) >> 32
        while index[slot] != _EMPTY:
            slot = slot + 1 if slot + 1 < size else 0
        index[slot] = row

    def _put(self, rows: np.ndarray, column: str, value) -> None:
        """Set ``column`` of existing ``rows`` (distinct) to ``value`` (a scalar or an array)."""
        if not len(rows):
            return
        col = self._column(column)
        before = self._alive(rows)
        was = col[rows] != 0
        col[rows] = value
        now = col[rows] != 0
        self._counts[column] += int(now.sum()) - int(was.sum())
        after = self._alive(rows)
        self._live += int(after.sum()) - int(before.sum())
        if not self._live:
            self._clear()  # its last id went: nothing stays behind
        elif self._rows - self._live > max(1 << 16, self._live):
            self._rebuild(len(self._index))

    def _alive(self, rows: np.ndarray) -> np.ndarray:
        alive = np.zeros(len(rows), bool)
        for col in self._set_columns():
            alive |= col[rows] != 0
        return alive

    # -- many ids ----------------------------------------------------------------------------

    def rows(self, names: Names) -> np.ndarray:
        """The row of each name (-1 where absent), as an int64 array."""
        return self._rows_of(_packed(names))[0]

    def _rows_of(self, ids: PackedIds) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`rows` of a pack, and the ids' hashes (``None`` if the table is empty)."""
        count = len(ids)
        out = np.full(count, -1, np.int64)
        if not count or not self._rows:
            return out, None
        hashes = _hashes(ids)
        query, query_ends = ids.blob, ids.ends
        index, size = self._index, len(self._index)
        slots = _slots_of(hashes, size)
        pending = np.arange(count)
        while len(pending):
            found = index[slots[pending]].astype(np.int64)
            probing = found != _EMPTY
            pending, found = pending[probing], found[probing]
            matched = self._hash[found] == hashes[pending]
            if matched.any():
                candidates = np.nonzero(matched)[0]
                matched[candidates] = self._same(found[candidates], query, query_ends, pending[candidates])
                out[pending[matched]] = found[matched]
            pending = pending[~matched]
            slots[pending] = _next(slots[pending], size)
        return out, hashes

    def _same(self, rows: np.ndarray, query: np.ndarray, query_ends: np.ndarray, asked: np.ndarray) -> np.ndarray:
        """Whether the name of each row equals the asked name (``query``'s bytes up to
        ``query_ends``, number ``asked``)."""
        ends = self._ends[rows].astype(np.int64)
        starts = np.where(rows > 0, self._ends[rows - 1], 0).astype(np.int64)
        query_starts = np.where(asked > 0, query_ends[asked - 1], 0)
        lengths = ends - starts
        same = lengths == query_ends[asked] - query_starts
        to_check = np.nonzero(same & (lengths > 0))[0]
        for first in range(0, len(to_check), _COMPARE_ROWS):  # an index per byte: a few at a time
            check = to_check[first:first + _COMPARE_ROWS]
            sizes = lengths[check]
            offsets = np.repeat(np.cumsum(sizes) - sizes, sizes)
            within = np.arange(int(sizes.sum())) - offsets
            stored = self._names[np.repeat(starts[check], sizes) + within]
            asked_bytes = query[np.repeat(query_starts[check], sizes) + within]
            differ = np.add.reduceat((stored != asked_bytes).astype(np.int64), np.cumsum(sizes) - sizes)
            same[check] = differ == 0
        return same

    def values(self, names: Names, column: str) -> np.ndarray:
        """``column`` of each name (0 where unset or absent), as an int16 array."""
        return self.lookup(names, (column,))[column]

    def lookup(self, names: Names, columns: Sequence[str]) -> dict[str, np.ndarray]:
        """``{column: its value for each name}`` (0 where unset or absent), arrays of the
        columns' dtypes."""
        rows = self.rows(names)
        known = rows >= 0
        out = {}
        for column in columns:
            out[column] = values = np.zeros(len(names), self._dtypes[column])
            if self._cols[column] is not None:
                values[known] = self._cols[column][rows[known]]
        return out

    def unset_many(self, names: Names, column: str) -> None:
        """Unset ``column`` of the ids in ``names`` that have it."""
        if self._cols[column] is None:
            return
        rows = self.rows(names)
        rows = rows[rows >= 0]
        rows = np.unique(rows[self._cols[column][rows] != 0])
        self._put(rows, column, 0)

    def add(self, names: Names, column: str, value) -> None:
        """Set ``column`` of every name in ``names`` to ``value`` (a scalar, or an array of one
        per name; a name given twice takes its last), adding the names that are absent."""
        ids = _packed(names)
        rows, hashes = self._rows_of(ids)
        values = np.broadcast_to(np.asarray(value, self._dtypes[column]), (len(ids),))
        missing = np.nonzero(rows < 0)[0]
        if len(missing):
            hashes = _hashes(ids) if hashes is None else hashes
            if len(np.unique(hashes[missing])) == len(missing):  # no name twice: rows in order
                asked = ids if len(missing) == len(ids) else ids.take(missing)
                first = self._append(asked, hashes[missing])
                rows[missing] = np.arange(first, first + len(missing))
            else:  # some name twice (or a hash shared): as str, the first of each new row
                asked = ids.take(missing).names()
                fresh = list(dict.fromkeys(asked))
                first = self._append(PackedIds.of(fresh))
                where = dict(zip(fresh, range(first, first + len(fresh))))
                rows[missing] = [where[n] for n in asked]
        unique, last = np.unique(rows[::-1], return_index=True)  # a repeated name: its last value
        self._put(unique, column, values[::-1][last])

    def unset(self, column: str) -> None:
        """Unset ``column`` of every id."""
        if self._cols[column] is not None:
            self._put(np.nonzero(self._cols[column][:self._rows])[0], column, 0)

    def _append(self, ids: PackedIds, hashes: np.ndarray | None = None) -> int:
        """Add rows for ``ids`` (distinct, absent, all columns 0; ``hashes``: theirs, if known);
        returns the first row."""
        blob, ends = ids.blob, ids.ends
        first, count = self._rows, len(ids)
        self._names = grown(self._names, self._names_used, self._names_used + len(blob))
        self._names[self._names_used:self._names_used + len(blob)] = blob
        self._wide_ends(self._names_used + len(blob))
        self._ends = grown(self._ends, first, first + count)
        self._hash = grown(self._hash, first, first + count)
        self._ends[first:first + count] = self._names_used + ends
        self._hash[first:first + count] = _hashes(ids) if hashes is None else hashes
        for column, col in self._cols.items():
            if col is not None:
                self._cols[column] = col = grown(col, first, first + count)
                col[first:first + count] = 0
        self._names_used += len(blob)
        self._rows += count
        if self._rows > MAX_LOAD * len(self._index):
            self._reindex(_slots_for(self._rows))
        else:
            self._insert(np.arange(first, first + count))
        return first

    def _insert(self, rows: np.ndarray) -> None:
        """Put ``rows`` (not in the index yet) into the index."""
        index, size = self._index, len(self._index)
        slots = _slots_of(self._hash[rows], size)
        while len(rows):
            free = index[slots] == _EMPTY
            taken, first = np.unique(slots[free], return_index=True)  # one row per free slot
            winners = np.nonzero(free)[0][first]
            index[taken] = rows[winners]
            left = np.ones(len(rows), bool)
            left[winners] = False
            rows, slots = rows[left], _next(slots[left], size)

    def _rebuild(self, size: int) -> None:
        """The table rebuilt without its dead rows, and its index with ``size`` slots or fewer."""
        live = self._alive(np.arange(self._rows))
        if not live.all():
            ends = self._ends[:self._rows]
            lengths = np.diff(ends, prepend=0)
            keep_bytes = np.repeat(live, lengths)
            names = self._names[:self._names_used][keep_bytes]
            keep = np.nonzero(live)[0]
            rows = len(keep)
            self._names = new_array(max(len(names), 1), np.uint8)
            self._names[:len(names)] = names
            self._names_used = len(names)
            new_ends = new_array(rows, self._ends.dtype)
            new_ends[:rows] = np.cumsum(lengths[keep])
            new_hash = new_array(rows, np.uint32)
            new_hash[:rows] = self._hash[keep]
            self._ends, self._hash = new_ends, new_hash
            for column, col in self._cols.items():
                if col is not None:
                    new = new_array(rows, col.dtype)
                    new[:rows] = col[keep]
                    self._cols[column] = new
            self._rows = rows
        self._reindex(size)

    def _reindex(self, size: int) -> None:
        """The index rebuilt with ``size`` slots (fewer if the rows fit in a quarter of it)."""
        if self._rows < MAX_LOAD * size / 4:
            size = _slots_for(self._rows)
        self._index = new_array(size, np.int32, _EMPTY)
        for start in range(0, self._rows, _INSERT_ROWS):
            self._insert(np.arange(start, min(start + _INSERT_ROWS, self._rows)))

    def remap(self, column: str, change: Callable[[np.ndarray], np.ndarray]) -> None:
        """Put ``change(values)`` (as many values, none 0) in place of the set values of
        ``column`` (given in row order)."""
        col = self._cols[column]
        if col is not None and self._counts[column]:
            rows = np.nonzero(col[:self._rows])[0]
            col[rows] = change(col[rows])

    # -- listing -----------------------------------------------------------------------------

    def items(self, column: str) -> list[tuple[str, int]]:
        """``(name, value)`` of every id with ``column`` set (a snapshot)."""
        if not self._counts[column]:
            return []
        col = self._cols[column][:self._rows]
        rows = np.nonzero(col)[0]
        ends = self._ends
        starts = np.where(rows > 0, ends[rows - 1], 0).tolist()
        names = self._names[:self._names_used].tobytes()
        return [(names[a:b].decode(), v) for a, b, v in zip(starts, ends[rows].tolist(), col[rows].tolist())]

    def clear(self) -> None:
        """Forget every id."""
        self._clear()


class Interned:
    """Node ids as small integers (1, 2, ...; 0 is none), for the table's columns."""

    def __init__(self) -> None:
        self._names: list[str] = []
        self._numbers: dict[str, int] = {}

    def number(self, node: str) -> int:
        found = self._numbers.get(node)
        if found is None:
            if len(self._names) >= np.iinfo(np.int16).max:
                raise ValueError("too many distinct nodes for an id table")
            self._names.append(node)
            found = self._numbers[node] = len(self._names)
        return found

    def name(self, number: int) -> str:
        return self._names[number - 1]

    def names(self) -> list[str | None]:
        """The node of each number, ``None`` for 0."""
        return [None, *self._names]


class NodeColumn(MutableMapping):
    """One column of an :class:`IdTable` as a ``{id: node id}`` mapping (the node ids
    interned), for code written against a dict.

    Args:
        table: the table.
        column: the column's name.
        nodes: the node ids' numbers, shared by the columns of one table.
    """

    def __init__(self, table: IdTable, column: str, nodes: Interned) -> None:
        self.table, self.column, self.nodes = table, column, nodes

    def __getitem__(self, cache_id: str) -> str:
        number = self.table.get(cache_id, self.column)
        if not number:
            raise KeyError(cache_id)
        return self.nodes.name(number)

    def get(self, cache_id: str, default=None):
        number = self.table.get(cache_id, self.column)
        return self.nodes.name(number) if number else default

    def __contains__(self, cache_id: object) -> bool:
        return isinstance(cache_id, str) and self.table.get(cache_id, self.column) != 0

    def __setitem__(self, cache_id: str, node: str) -> None:
        self.table.set(cache_id, self.column, self.nodes.number(node))

    def __delitem__(self, cache_id: str) -> None:
        if not self.table.get(cache_id, self.column):
            raise KeyError(cache_id)
        self.table.set(cache_id, self.column, 0)

    def pop(self, cache_id: str, *default):
        number = self.table.get(cache_id, self.column)
        if not number:
            if default:
                return default[0]
            raise KeyError(cache_id)
        self.table.set(cache_id, self.column, 0)
        return self.nodes.name(number)

    def __iter__(self) -> Iterator[str]:
        return iter([name for name, _ in self.table.items(self.column)])

    def __len__(self) -> int:
        return self.table.count(self.column)

    def items(self) -> list[tuple[str, str]]:  # type: ignore[override]
        """A snapshot of ``(id, node)`` pairs (changing the column while iterating is safe)."""
        name = self.nodes.name
        return [(i, name(n)) for i, n in self.table.items(self.column)]

    def set_many(self, cache_ids: Sequence[str], nodes: Iterable[str] | str) -> None:
        """Set many ids at once (one node for all, or one per id)."""
        if isinstance(nodes, str):
            value = self.nodes.number(nodes)
        else:
            nodes = list(nodes)
            numbers = {n: self.nodes.number(n) for n in set(nodes)}
            value = np.fromiter(map(numbers.__getitem__, nodes), np.int16, len(cache_ids))
        self.table.add(cache_ids, self.column, value)

    def get_many(self, cache_ids: Sequence[str]) -> list[str | None]:
        """The node of each id (``None`` where unset)."""
        names = self.nodes.names()
        return [names[n] for n in self.table.values(cache_ids, self.column).tolist()]

    def unset_many(self, cache_ids: Sequence[str]) -> None:
        """Forget the ids given (those without a value are skipped)."""
        self.table.unset_many(cache_ids, self.column)

    def clear(self) -> None:
        self.table.unset(self.column)
