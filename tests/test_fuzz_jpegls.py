"""Property and fuzz tests: no byte string makes the JPEG-LS decoder crash,
hang or allocate beyond the expected frame; bad ones raise
CorruptCodestreamError.  Also a round-trip property over random images."""

from __future__ import annotations

from functools import partial

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.codecs import get_codec, jpegls
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

CODEC = get_codec("JPEGLSLossless")
FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])

# (info, interleave mode, options): run mode, regular mode, colour, LSE and restart markers all appear.
_CASES = [
    (FrameInfo(17, 23, bits_stored=12), None, {}),
    (FrameInfo(8, 9, 3, 8, 8, 0, "RGB"), jpegls.ILV_SAMPLE, {}),
    (FrameInfo(8, 9, 3, 8, 8, 0, "RGB"), jpegls.ILV_LINE, {"restart": 3}),
    (FrameInfo(9, 8, 3, 16, 16, 0, "RGB"), jpegls.ILV_NONE, {"preset": (4, 8, 30)}),
    (FrameInfo(16, 16, bits_stored=16, pixel_representation=1), None, {"restart": 5}),
]


def _seed(index: int) -> tuple[FrameInfo, bytes]:
    info, ilv, options = _CASES[index]
    frame = gradient_frame(info, index)
    frame[2:4] = info.value_range[0] + 5  # a flat band for run mode
    return info, jpegls.encode(frame, info, ilv, **options)


SEEDS = [_seed(i) for i in range(len(_CASES))]
prime(CODEC, SEEDS)
_decode_or_corrupt = partial(decode_or_corrupt, CODEC)


@FUZZ
@given(data=st.binary(max_size=600), index=st.integers(0, len(_CASES) - 1))
def test_random_bytes(data: bytes, index: int) -> None:
    _decode_or_corrupt(data, _CASES[index][0])


@FUZZ
@given(data=st.binary(max_size=400), index=st.integers(0, len(_CASES) - 1))
def test_random_entropy_data_after_valid_headers(data: bytes, index: int) -> None:
    info, stream = SEEDS[index]
    _decode_or_corrupt(after_scan_header(stream) + data, info)


@FUZZ
@given(
    index=st.integers(0, len(_CASES) - 1),
    edits=EDITS,
)
def test_mutated_streams(index: int, edits: list[tuple[int, int, str]]) -> None:
    info, stream = SEEDS[index]
    _decode_or_corrupt(apply_edits(stream, edits), info)


@FUZZ
@given(index=st.integers(0, len(_CASES) - 1), cut=st.integers(0, 10**6))
def test_truncated_streams(index: int, cut: int) -> None:
    info, stream = SEEDS[index]
    cut %= len(stream) - 1
    try:
        CODEC.decode_frame(stream[:cut], info)
    except CorruptCodestreamError:
        return
    raise AssertionError(f"a stream cut at byte {cut} of {len(stream)} decoded")


@settings(max_examples=150, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.integers(1, 12),
    columns=st.integers(1, 12),
    samples=st.sampled_from([1, 3]),
    precision=st.integers(2, 16),
    wide=st.booleans(),
    signed=st.booleans(),
    ilv=st.sampled_from([0, 1, 2]),
    seed=st.integers(0, 2**32 - 1),
    spread=st.integers(0, 16),
)
def test_round_trip_of_random_images(
    rows: int, columns: int, samples: int, precision: int, wide: bool, signed: bool, ilv: int, seed: int,
    spread: int,
) -> None:
    """Any image the codec supports comes back bit-exactly (runs, escapes, wrap-around all included)."""
    alloc = 16 if wide or precision > 8 else 8
    info = FrameInfo(rows, columns, samples, alloc, precision, int(signed and samples == 1),
                     "RGB" if samples == 3 else "MONOCHROME2")
    rng = np.random.default_rng(seed)
    low, high = info.value_range
    # Small spreads give runs and small errors, large ones give escape codes.
    width = min(high - low, (1 << spread) - 1)
    start = int(rng.integers(low, high - width, endpoint=True))
    frame = (start + rng.integers(0, width, size=info.shape, endpoint=True)).astype(info.dtype)
    stream = jpegls.encode(frame, info, ilv)
    assert np.array_equal(CODEC.decode_frame(stream, info), frame)
