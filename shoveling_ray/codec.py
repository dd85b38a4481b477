"""Value encoding: raw bytes, numpy arrays and msgpack objects, with optional lz4 framing.

An encoded value is ``(kind, meta, frames)``:

- ``kind``: :data:`KIND_BYTES`, :data:`KIND_NUMPY` or :data:`KIND_MSGPACK`.
- ``meta``: ``b""``, or for numpy the msgpack of ``[dtype descr, shape]``.
- ``frames``: a list of :data:`Frame` ``(codec, raw_size, payload)``; ``codec`` is
  :data:`CODEC_RAW` or :data:`CODEC_LZ4` (an lz4 block without stored size), ``payload`` a
  bytes-like object, or a :class:`Stored` when the cache keeps the payload in Ray's object
  store (this module never looks inside its ``ref``). Values to compress are cut into frames
  of at most :data:`FRAME_BYTES` so lz4's 2 GiB block limit never applies; uncompressed values
  stay one frame. ``append`` adds frames, so actors never decompress or concatenate.

Frames stay plain tuples on purpose: a batch of ten thousand small values pickles three times
faster than with a named tuple per frame. The rare large payload carries its own type.

This module also owns the size thresholds that the wire format, the codec and the object
store path must agree on: :data:`OUT_OF_BAND_BYTES` and :data:`OBJECT_STORE_BYTES`.

Compression happens in the client, so less is moved and less is held. This module is plain
data in, plain data out: it imports no Ray and is unit-tested without a cluster. It does not
decide where values live (see ``placement``) nor how much memory they may use (``actors``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import lz4.block
import msgpack
import numpy as np

KIND_BYTES, KIND_NUMPY, KIND_MSGPACK = 0, 1, 2
CODEC_RAW, CODEC_LZ4 = 0, 1
COMPRESSIONS = ("auto", "lz4", None)

#: Largest compressed frame; larger values are split so each lz4 block stays far below 2 GiB.
FRAME_BYTES = 64 << 20
#: ``auto`` leaves values smaller than this uncompressed: lz4 rarely wins on them.
AUTO_MIN_BYTES = 256
#: ``auto`` compresses a sample of this size first and skips data that does not shrink.
AUTO_SAMPLE_BYTES = 64 << 10
#: ``auto`` keeps a compressed frame only if it is at most this fraction of the raw size.
AUTO_MAX_RATIO = 0.9
#: Payloads of at least this size travel out of band: the codec keeps them as uint8 arrays and
#: the wire format (``wire``) leaves them out of its pickle blob, so Ray moves them zero-copy.
OUT_OF_BAND_BYTES = 64 << 10
#: Payloads of at least this size are kept in Ray's object store by the node actor that holds
#: them (``objects``); smaller ones stay in the actor's memory.
OBJECT_STORE_BYTES = 1 << 20

Frame = tuple  # (codec: int, raw_size: int, payload: bytes-like | Stored)
Encoded = tuple  # (kind: int, meta: bytes, frames: list[Frame])


class Stored(NamedTuple):
    """A frame payload kept in Ray's object store.

    Attributes:
        ref: the ObjectRef; inside a packed reply, its index in the list of refs that travels
            beside the blob (refs never go inside a pickle blob, see ``wire``).
        size: bytes of the payload as stored.
    """

    ref: Any
    size: int


def is_stored(frame: Frame) -> bool:
    """Whether the frame's payload lives in Ray's object store."""
    return type(frame[2]) is Stored


def check_compression(compression: Any) -> None:
    """Raise ``ValueError`` unless ``compression`` is ``"auto"``, ``"lz4"`` or ``None``."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of 'auto', 'lz4' or None, not {compression!r}")


def as_buffer(data: Any) -> bytes | np.ndarray | None:
    """Input that exports a buffer (bytes, bytearray, memoryview, numpy arrays, ``array``,
    pyarrow buffers, ...) as ``bytes`` or a flat uint8 array over the same memory (no copy),
    else ``None``.

    Raises:
        ValueError: the buffer is not C-contiguous (its bytes are not one run of memory).
        TypeError: a numpy array of dtype object (its memory holds pointers, not data).
    """
    if isinstance(data, bytes):
        return data
    if isinstance(data, np.ndarray):
        if data.dtype.hasobject:
            raise TypeError("numpy arrays of dtype object cannot be stored; convert them first")
        if not data.flags.c_contiguous:
            raise ValueError(f"the array (shape {data.shape}) is not C-contiguous: pass np.ascontiguousarray(...) "
                             "of it (a copy)")
        return data.reshape(-1).view(np.uint8) if data.size else np.empty(0, np.uint8)
    try:
        view = memoryview(data)
    except TypeError:
        return None
    if not view.c_contiguous:
        raise ValueError(f"the {type(data).__name__} is not C-contiguous: pass bytes(...) of it (a copy)")
    return np.frombuffer(view.cast("B"), dtype=np.uint8)


def _nbytes(payload: Any) -> int:
    return payload.nbytes if isinstance(payload, np.ndarray) else len(payload)


def _frames(buf: Any, compression: str | None) -> list[Frame]:
    """Cut ``buf`` into frames and compress them as ``compression`` says."""
    size = _nbytes(buf)
    view = memoryview(buf).cast("B") if isinstance(buf, np.ndarray) else memoryview(buf)
    if compression is None or (compression == "auto" and not _worth_compressing(view, size)):
        return [(CODEC_RAW, size, _payload(buf, view, 1))]  # one frame: readers get it without a join
    chunks = [view[i : i + FRAME_BYTES] for i in range(0, size, FRAME_BYTES)] or [view[:0]]
    frames = []
    for chunk in chunks:
        packed = lz4.block.compress(chunk, store_size=False)
        if compression == "auto" and len(packed) > AUTO_MAX_RATIO * len(chunk):
            frames.append((CODEC_RAW, len(chunk), _payload(buf, chunk, len(chunks))))
        else:
            frames.append((CODEC_LZ4, len(chunk), _payload(packed, memoryview(packed), 1)))
    return frames


def _payload(buf: Any, chunk: memoryview, n_chunks: int) -> Any:
    """A picklable payload for ``chunk`` of ``buf``, without copying.

    Large payloads become uint8 arrays, which pickle protocol 5 (and so Ray) moves out of band;
    a memoryview cannot be pickled at all.
    """
    if n_chunks == 1 and (isinstance(buf, np.ndarray) or len(chunk) < OUT_OF_BAND_BYTES):
        return buf
    return np.frombuffer(chunk, dtype=np.uint8)


def _worth_compressing(view: memoryview, size: int) -> bool:
    if size < AUTO_MIN_BYTES:
        return False
    sample = view[:AUTO_SAMPLE_BYTES]
    return len(lz4.block.compress(sample, store_size=False)) <= AUTO_MAX_RATIO * len(sample)


def encode(value: Any, compression: str | None = "auto") -> Encoded:
    """Encode a value for storage.

    Args:
        value: a numpy array of a non-object dtype (kept with its dtype and shape; one that
            is not C-contiguous is copied), any other object exporting a C-contiguous buffer
            (bytes, bytearray, memoryview, ``array.array``, ...: stored as its bytes, without
            a copy), or any msgpack-able value (None, bool, int, float, str, list, tuple, dict;
            numpy scalars such as ``np.float32(1.5)`` are stored as their Python number).
        compression: ``"auto"`` (compress when it pays), ``"lz4"`` (always) or ``None``.

    Returns:
        ``(kind, meta, frames)`` as described in the module docstring.

    Raises:
        TypeError: the value is of an unsupported type (an object array, a set, a custom
            class), or it would not read back (a dict key that msgpack turns into a list).
        ValueError: msgpack cannot represent the value (an int outside 64 bits, say), or a
            buffer other than a numpy array is not C-contiguous.
    """
    if type(value) is bytes and len(value) < AUTO_MIN_BYTES and compression != "lz4":
        return KIND_BYTES, b"", [(CODEC_RAW, len(value), value)]  # the common small case, fast
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError("numpy arrays of dtype object cannot be stored; convert them first")
        arr = value if value.flags.c_contiguous else value.copy(order="C")
        meta = msgpack.packb([np.lib.format.dtype_to_descr(arr.dtype), list(arr.shape)])
        flat = arr.reshape(-1).view(np.uint8) if arr.size else np.empty(0, np.uint8)
        return KIND_NUMPY, meta, _frames(flat, compression)
    if isinstance(value, np.generic):
        value = value.item()  # a numpy scalar (``arr.mean()``) is its number, not its buffer
    buf = as_buffer(value)
    if buf is not None:
        return KIND_BYTES, b"", _frames(buf, compression)
    try:
        packed = msgpack.packb(value, use_bin_type=True)
    except TypeError as exc:
        raise TypeError(
            f"cannot store a value of type {type(value).__name__}: use bytes, a numpy array "
            f"or a msgpack-able value (None, bool, int, float, str, list, dict) ({exc})"
        ) from None
    except (OverflowError, ValueError) as exc:
        raise ValueError(f"cannot encode value with msgpack: {exc}") from None
    _check_reads_back(packed)
    return KIND_MSGPACK, b"", _frames(packed, compression)


def _check_reads_back(packed: bytes) -> None:
    """Refuse what msgpack writes but cannot read back, so a stored value is always readable.

    Tuple keys are the case seen: msgpack turns ``{(1, 2): 3}`` into a map with a list key,
    which no Python dict can hold.
    """
    try:
        _unpack(packed)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cannot store this value: msgpack would not read it back ({exc}); "
                        "use str, int, float or bytes dict keys") from None


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def encode_append(data: Any, compression: str | None = "auto") -> list[Frame]:
    """Encode ``data`` for ``append``: the bytes of any object exporting a C-contiguous buffer
    (bytes, bytearray, memoryview, a numpy array in C order, ...), without a copy.

    Raises:
        TypeError: ``data`` exports no buffer (a str, a list, ...), or is a numpy array of
            dtype object.
        ValueError: its buffer is not C-contiguous.
    """
    buf = as_buffer(data)
    if buf is None:
        raise TypeError(f"append takes data exporting a buffer (bytes, bytearray, memoryview, a numpy array, ...), "
                        f"not {type(data).__name__}")
    return _frames(buf, compression)


def _raw_payload(frame: Frame) -> Any:
    codec, raw_size, payload = frame
    if codec == CODEC_LZ4:
        return lz4.block.decompress(payload, uncompressed_size=raw_size)
    return payload


def decode(kind: int, meta: bytes, frames: list[Frame]) -> Any:
    """Inverse of :func:`encode` (and of a sequence of :func:`encode_append`)."""
    parts = [_raw_payload(f) for f in frames]
    if kind == KIND_NUMPY:
        descr, shape = msgpack.unpackb(meta, raw=False)
        dtype = np.lib.format.descr_to_dtype(descr)
        if len(parts) == 1 and isinstance(parts[0], np.ndarray):
            flat = parts[0]
        else:
            flat = np.frombuffer(b"".join(parts), dtype=np.uint8)
        return flat.view(dtype).reshape(tuple(shape))
    if len(parts) == 1 and isinstance(parts[0], bytes):
        data = parts[0]
    else:
        data = b"".join(parts)
    if kind == KIND_MSGPACK:
        return _unpack(data)
    return data


def payload_size(payload: Any) -> int:
    """Bytes of a bytes-like or numpy payload."""
    return _nbytes(payload)


def stored_size(frames: list[Frame]) -> int:
    """Bytes the frames occupy as stored (after compression)."""
    return sum(f[2].size if type(f[2]) is Stored else _nbytes(f[2]) for f in frames)


def raw_size(frames: list[Frame]) -> int:
    """Bytes the frames stand for before compression."""
    return sum(f[1] for f in frames)
