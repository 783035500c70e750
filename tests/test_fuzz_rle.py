"""Fuzzing the RLE Lossless decoder: random bytes, random headers and mutated
valid streams must give a frame of the right form or CorruptCodestreamError,
never another exception, a hang or an outsized allocation.  Random arrays
must round-trip exactly."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gateway.codecs.base import FrameInfo
from gateway.codecs.rle import decode, encode, trailing_bytes
from gateway.errors import CorruptCodestreamError

_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def _infos(draw) -> FrameInfo:
    samples = draw(st.sampled_from([1, 3]))
    bits = draw(st.sampled_from([8, 16, 32]))
    signed = samples == 1 and draw(st.booleans())
    return FrameInfo(
        rows=draw(st.integers(1, 12)),
        columns=draw(st.integers(1, 12)),
        samples_per_pixel=samples,
        bits_allocated=bits,
        bits_stored=draw(st.integers(1, bits)),
        pixel_representation=int(signed),
        photometric_interpretation="RGB" if samples == 3 else "MONOCHROME2",
    )


def _check(data: bytes, info: FrameInfo) -> None:
    """Decoding `data` yields a frame of `info` or raises CorruptCodestreamError; so does finding the
    bytes after its last segment's data, which are part of `data`."""
    try:
        tail = trailing_bytes(data, info)
    except CorruptCodestreamError:
        tail = None
    else:
        assert data.endswith(tail) and len(tail) <= len(data) - 64
    try:
        frame = decode(data, info)
    except CorruptCodestreamError:
        return
    assert tail is not None, "decoded, so its last segment holds every pixel's byte"
    assert frame.shape == info.shape and frame.dtype == info.dtype
    low, high = info.value_range
    assert frame.size == 0 or (frame.min() >= low and frame.max() <= high)


@st.composite
def _frames(draw) -> tuple[FrameInfo, np.ndarray]:
    info = draw(_infos())
    low, high = info.value_range
    # Few distinct values make runs; the full range makes literals.
    narrow = draw(st.booleans())
    elements = st.integers(low, min(high, low + 3)) if narrow else st.integers(low, high)
    frame = draw(hnp.arrays(info.dtype, info.shape, elements=elements))
    return info, frame


@_SETTINGS
@given(_frames())
def test_random_frames_round_trip(case: tuple[FrameInfo, np.ndarray]) -> None:
    info, frame = case
    back = decode(encode(frame, info), info)
    assert back.dtype == frame.dtype and np.array_equal(back, frame)


@_SETTINGS
@given(_infos(), st.binary(max_size=600))
def test_random_bytes(info: FrameInfo, data: bytes) -> None:
    _check(data, info)


@_SETTINGS
@given(_infos(), st.lists(st.integers(0, 2**32 - 1), min_size=16, max_size=16), st.binary(max_size=400))
def test_random_headers(info: FrameInfo, header: list[int], body: bytes) -> None:
    # Mostly plausible segment counts, so that the offsets and runs get exercised.
    header[0] = header[0] % 16
    _check(struct.pack("<16I", *header) + body, info)


@_SETTINGS
@given(
    _frames(),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    st.integers(0, 10**6),
    st.booleans(),
)
def test_mutated_streams(case, edits: list[tuple[int, int]], cut: int, truncate: bool) -> None:
    info, frame = case
    data = bytearray(encode(frame, info))
    for position, value in edits:
        data[position % len(data)] = value
    if truncate:
        del data[cut % (len(data) + 1):]
    _check(bytes(data), info)
