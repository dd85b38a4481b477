import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoveling_ray import codec


def roundtrip(value, compression="auto"):
    return codec.decode(*codec.encode(value, compression))


@pytest.mark.parametrize("compression", ["auto", "lz4", None])
@pytest.mark.parametrize(
    "value", [b"", b"x", b"abc" * 1000, bytearray(b"q" * 500), memoryview(b"0123456789" * 40), os.urandom(5000)]
)
def test_bytes_like_come_back_as_equal_bytes(value, compression):
    out = roundtrip(value, compression)
    assert type(out) is bytes
    assert out == bytes(value)


@pytest.mark.parametrize("encoder", [codec.encode, codec.encode_append])
def test_a_buffer_that_is_not_c_contiguous_is_refused_naming_it(encoder):
    arr = np.arange(100, dtype=np.uint8)
    with pytest.raises(ValueError, match="memoryview is not C-contiguous"):
        encoder(memoryview(arr)[::2])
    with pytest.raises(ValueError, match=r"array \(shape \(2, 5\)\) is not C-contiguous"):
        codec.encode_append(arr[:10].reshape(5, 2).T)


def test_any_c_contiguous_buffer_is_taken_without_a_copy():
    import array

    arr = np.arange(12, dtype=np.float64).reshape(3, 4)
    for frames in (codec.encode_append(arr, compression=None), codec.encode(array.array("d", arr.ravel()), None)[2]):
        assert frames[0][1] == arr.nbytes and codec.decode(codec.KIND_BYTES, b"", frames) == arr.tobytes()
    payload = codec.encode_append(arr, compression=None)[0][2]
    assert np.shares_memory(payload, arr)  # the array's own memory: no copy
    assert codec.decode(*codec.encode(memoryview(arr))) == arr.tobytes()  # a memoryview is bytes, not an array
    with pytest.raises(TypeError, match="dtype object"):
        codec.encode_append(np.array([b"x", None], dtype=object))


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(12, dtype=np.int32).reshape(3, 4),
        np.zeros((2, 0, 3)),
        np.array(3.5),
        np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
        np.arange(20)[::3],
        np.array([(b"key", 1.5), (b"k2", 2.5)], dtype=[("k", "S10"), ("v", "<f8")]),
        np.array([True, False]),
        np.ones(300_000, dtype=">i8"),
    ],
    ids=["int2d", "empty", "scalar", "fortran", "strided", "structured", "bool", "bigendian-big"],
)
@pytest.mark.parametrize("compression", ["auto", "lz4", None])
def test_numpy_keeps_dtype_shape_values(arr, compression):
    out = roundtrip(arr, compression)
    assert isinstance(out, np.ndarray)
    assert out.dtype == arr.dtype
    assert out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("value", [None, True, 0, -(2**63), 2**64 - 1, 1.5, "héllo", [1, "a", [b"b"]], {"k": {"n": [1.0]}}, {1: 2}])
def test_msgpack_values_roundtrip(value):
    assert roundtrip(value) == value


@pytest.mark.parametrize("scalar", [np.float64(1.5), np.float32(2.0), np.int64(3), np.bool_(True)])
def test_numpy_scalars_come_back_as_their_number_not_their_bytes(scalar):
    """``cache.set("loss", arr.mean())`` stores the number (a numpy scalar also exports a
    buffer; its 8 raw bytes are not what the user stored)."""
    value = codec.decode(*codec.encode(scalar, "auto"))
    assert value == scalar.item() and type(value) is type(scalar.item())


def test_tuples_come_back_as_lists():
    assert roundtrip((1, 2)) == [1, 2]


@pytest.mark.parametrize("value", [object(), {1, 2}, np.array([object()]), 1 + 2j])
def test_unsupported_values_raise_type_error(value):
    with pytest.raises(TypeError):
        codec.encode(value)


def test_int_too_large_is_value_error():
    with pytest.raises(ValueError, match="msgpack"):
        codec.encode(2**70)


def test_auto_compresses_compressible_and_skips_random():
    kind, meta, frames = codec.encode(b"a" * 100_000, "auto")
    assert codec.stored_size(frames) < 1000
    assert codec.raw_size(frames) == 100_000
    kind, meta, frames = codec.encode(os.urandom(100_000), "auto")
    assert [f[0] for f in frames] == [codec.CODEC_RAW]
    assert codec.stored_size(frames) == 100_000


def test_small_values_stay_raw_under_auto_but_lz4_forces():
    assert codec.encode(b"a" * 100, "auto")[2][0][0] == codec.CODEC_RAW
    assert codec.encode(b"a" * 100, "lz4")[2][0][0] == codec.CODEC_LZ4
    assert codec.encode(b"a" * 100_000, None)[2][0][0] == codec.CODEC_RAW


def test_large_values_are_cut_into_frames(monkeypatch):
    monkeypatch.setattr(codec, "FRAME_BYTES", 1000)
    data = bytes(range(256)) * 20
    kind, meta, frames = codec.encode(data, "lz4")
    assert len(frames) == 6
    assert codec.decode(kind, meta, frames) == data
    arr = np.arange(1000, dtype=np.int64)
    enc = codec.encode(arr, "lz4")
    assert len(enc[2]) == 8
    np.testing.assert_array_equal(codec.decode(*enc), arr)
    assert len(codec.encode(arr, None)[2]) == 1  # uncompressed values stay one frame


def test_appended_frames_concatenate():
    frames = []
    for chunk in [b"abc", b"d" * 1000, bytearray(b"ef"), os.urandom(300)]:
        frames += codec.encode_append(chunk)
    out = codec.decode(codec.KIND_BYTES, b"", frames)
    assert out.startswith(b"abc" + b"d" * 1000 + b"ef")
    assert len(out) == 3 + 1000 + 2 + 300


@pytest.mark.parametrize("data", ["text", 5, None, [b"x"]])
def test_append_rejects_what_exports_no_buffer(data):
    with pytest.raises(TypeError, match="exporting a buffer"):
        codec.encode_append(data)


def test_check_compression():
    for ok in ("auto", "lz4", None):
        codec.check_compression(ok)
    with pytest.raises(ValueError, match="compression"):
        codec.check_compression("zstd")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=5000), st.sampled_from(["auto", "lz4", None]))
def test_any_bytes_roundtrip(data, compression):
    assert roundtrip(data, compression) == data


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(json_like)
def test_any_msgpack_value_roundtrips(value):
    assert roundtrip(value) == value


def _as_read_back(value):
    """What a value reads back as: msgpack turns tuples into lists."""
    if isinstance(value, (list, tuple)):
        return [_as_read_back(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_read_back(v) for k, v in value.items()}
    return value


hashables = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=5) | st.binary(max_size=5)
anything = st.recursive(
    hashables | st.floats(allow_nan=False) | st.sets(st.integers(), max_size=3),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(hashables | st.tuples(hashables, hashables) | st.frozensets(st.integers(), max_size=2), children, max_size=4)
    ),
    max_leaves=15,
)


@settings(max_examples=500, deadline=None)
@given(anything)
def test_whatever_encode_accepts_decodes_to_the_same_value(value):
    try:
        encoded = codec.encode(value)
    except (TypeError, ValueError):
        return  # refused before anything is stored: that is allowed
    assert codec.decode(*encoded) == _as_read_back(value)


@pytest.mark.parametrize("value", [{(1, 2): 3}, {"a": [{(1,): None}]}, {frozenset({1}): 1}])
def test_values_that_would_not_read_back_are_refused(value):
    with pytest.raises(TypeError, match="would not read it back|cannot store"):
        codec.encode(value)


def test_large_uncompressed_bytes_travel_out_of_band():
    payload = codec.encode(b"x" * codec.OUT_OF_BAND_BYTES, None)[2][0][2]
    assert isinstance(payload, np.ndarray)  # pickle protocol 5 moves it out of band
    assert type(codec.encode(b"x" * 100, None)[2][0][2]) is bytes
