"""Property and fuzz tests: no byte string makes the JPEG Lossless decoder
crash, hang or allocate beyond the expected frame; bad ones raise
CorruptCodestreamError."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.codecs import get_codec
from gateway.codecs.base import FrameInfo
from gateway.errors import CorruptCodestreamError
from tests.fuzzing import (
    EDITS,
    after_scan_header,
    apply_edits,
    decode_or_corrupt,
    gradient_frame,
    prime,
)

CODEC = get_codec("JPEGLosslessSV1")
FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])

_INFOS = [
    FrameInfo(17, 23, bits_stored=12),
    FrameInfo(8, 9, 3, 8, 8, 0, "RGB"),
    FrameInfo(16, 16, bits_stored=16, pixel_representation=1),
]


def _seed(index: int) -> tuple[FrameInfo, bytes]:
    info = _INFOS[index]
    return info, CODEC.encode_frame(gradient_frame(info, index), info)


def _restart_seed() -> tuple[FrameInfo, bytes]:
    """A stream with restart markers every 2 rows (decoded by the general kernel)."""
    from tests.test_jpeg_lossless import _restart_stream

    info = FrameInfo(9, 11, bits_stored=10)
    frame = (np.indices(info.shape).sum(axis=0) * 29 % 1024).astype(np.uint16)
    return info, _restart_stream(frame, info, 2)


SEEDS = [_seed(i) for i in range(len(_INFOS))] + [_restart_seed()]
_INFOS.append(SEEDS[-1][0])
prime(CODEC, SEEDS)
_decode_or_corrupt = partial(decode_or_corrupt, CODEC)


@FUZZ
@given(data=st.binary(max_size=600), index=st.integers(0, len(_INFOS) - 1))
def test_random_bytes(data: bytes, index: int) -> None:
    _decode_or_corrupt(data, _INFOS[index])


@FUZZ
@given(data=st.binary(max_size=400), index=st.integers(0, len(_INFOS) - 1))
def test_random_entropy_data_after_valid_headers(data: bytes, index: int) -> None:
    info, stream = SEEDS[index]
    _decode_or_corrupt(after_scan_header(stream) + data, info)


@FUZZ
@given(
    index=st.integers(0, len(_INFOS) - 1),
    edits=EDITS,
)
def test_mutated_streams(index: int, edits: list[tuple[int, int, str]]) -> None:
    info, stream = SEEDS[index]
    _decode_or_corrupt(apply_edits(stream, edits), info)


@FUZZ
@given(index=st.integers(0, len(_INFOS) - 1), cut=st.integers(0, 10**6))
def test_truncated_streams_raise(index: int, cut: int) -> None:
    info, stream = SEEDS[index]
    cut %= len(stream) - 2  # anything shorter than the stream minus its EOI
    with pytest.raises(CorruptCodestreamError):
        CODEC.decode_frame(stream[:cut], info)


@pytest.mark.parametrize("rows", [0xFFFF, 1, 18])
def test_header_sizes_are_checked_before_allocating(rows: int) -> None:
    info, stream = SEEDS[0]
    sof = stream.index(b"\xff\xc3")
    data = bytearray(stream)
    data[sof + 5 : sof + 7] = rows.to_bytes(2, "big")
    data[sof + 7 : sof + 9] = (0xFFFF).to_bytes(2, "big")
    with pytest.raises(CorruptCodestreamError, match="expected"):
        CODEC.decode_frame(bytes(data), info)


def test_seeds_decode() -> None:
    for info, stream in SEEDS:
        assert CODEC.decode_frame(stream, info).shape == info.shape


def test_restart_marker_missing_raises() -> None:
    info, stream = SEEDS[-1]
    broken = stream.replace(b"\xff\xd1", b"\xff\x00", 1)
    with pytest.raises(CorruptCodestreamError):
        CODEC.decode_frame(broken, info)


def test_tiny_stream_claiming_a_huge_frame_is_refused_before_allocating() -> None:
    info = FrameInfo(65535, 65535, 3, 16, 16, 0, "RGB")  # 25 GB if allocated
    sof = b"\xff\xc3\x00\x11\x10\xff\xff\xff\xff\x03\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    with pytest.raises(CorruptCodestreamError, match="cannot hold"):
        CODEC.decode_frame(b"\xff\xd8" + sof + b"\x00" * 64 + b"\xff\xd9", info)
