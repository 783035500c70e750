"""Fuzzing the GatewayLossless decoder (versions 1 and 2): random, mutated and truncated streams.

Whatever the bytes, decoding returns the exact frame or raises
CorruptCodestreamError: never another exception, a crash or a hang.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.codecs import private
from gateway.codecs.base import FrameInfo
from gateway.errors import CorruptCodestreamError
from tests.fuzzing import EDITS, apply_edits

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

INFOS = [
    FrameInfo(rows=23, columns=19, bits_stored=12),
    FrameInfo(rows=16, columns=16, bits_stored=16, pixel_representation=1),
    FrameInfo(rows=9, columns=14, samples_per_pixel=3, bits_allocated=8, bits_stored=8,
              photometric_interpretation="RGB"),
    FrameInfo(rows=1, columns=1, bits_allocated=8, bits_stored=8),
]


def _frame(info: FrameInfo, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low, high = info.value_range
    y, x = np.mgrid[0:info.rows, 0:info.columns]
    base = (y * 7 + x * 3) % max(2, (high - low) // 4)
    if info.samples_per_pixel == 3:
        base = np.stack([base, base // 2, (base * 3) % (high - low + 1)], axis=-1)
    noise = rng.integers(0, 3, base.shape)
    return np.clip(low + base + noise, low, high).astype(info.dtype)


def _streams(version: int) -> list[tuple[FrameInfo, np.ndarray, bytes]]:
    out = []
    for seed, info in enumerate(INFOS):
        frame = _frame(info, seed)
        out.append((info, frame, private.encode(frame, info, version=version)))
    # A palette stream and a stored stream too.
    info = FrameInfo(rows=20, columns=20, bits_stored=16)
    frame = (np.arange(400).reshape(20, 20) % 7 * 9000).astype(np.uint16)
    out.append((info, frame, private.encode(frame, info, version=version)))
    info = FrameInfo(rows=6, columns=6, bits_allocated=8, bits_stored=8)
    frame = np.random.default_rng(1).integers(0, 256, (6, 6)).astype(np.uint8)
    out.append((info, frame, private.encode(frame, info, version=version)))
    # Indexed colour.
    info = FrameInfo(rows=12, columns=10, samples_per_pixel=3, bits_allocated=8, bits_stored=8,
                     photometric_interpretation="RGB")
    table = np.array([[0, 0, 0], [250, 10, 10], [10, 250, 10], [128, 128, 128]], np.uint8)
    frame = table[(np.arange(120).reshape(12, 10) // 7) % 4]
    data = private.encode(frame, info, version=version)
    assert data[10] == 3
    out.append((info, frame, data))
    if version == 2:  # channel ranks (colour transform 4): channel maps and their bitmaps
        from tests.test_private import _quantised_colour

        info = FrameInfo(rows=30, columns=40, samples_per_pixel=3, bits_allocated=8, bits_stored=8,
                         photometric_interpretation="RGB")
        frame = _quantised_colour(info, 4)
        data = private.encode(frame, info, version=2)
        assert data[10] == 4
        out.append((info, frame, data))
        out.append(_screen_stream())
        out.append(_text_stream())
        out.append(_flat_stream())
        out += _subband_streams()
        out.append(_chained_stream())
    return out


def _chained_stream() -> tuple[FrameInfo, np.ndarray, bytes]:
    """A real colour crop after subtract green, its third plane guided by the second (CHAINED)."""
    from tests.test_private_golden import ARCHIVES, _frames, _model_byte

    data, cases = ARCHIVES["gwl_v2_chained"]
    info, streams, pixels = _frames(data, cases[0])
    assert streams[0][10] == 1 and _model_byte(streams[0], info) == 5 | private.CHAINED
    return info, pixels[0], streams[0]


def _subband_streams() -> list[tuple[FrameInfo, np.ndarray, bytes]]:
    """Enlarged frames coded as subbands (section 9.8): interpolated, both axes at odd phase with
    two neighbours, and the predictor of four along the columns; repeated along both axes, the
    predictor the sample before."""
    from tests.test_private_subbands import _enlarge, _enlarge_cubic, _textured

    out = []
    for frame, flags in ((_enlarge(_enlarge(_textured(12, 10, 4, top=60000), 0), 1)[1:, 1:], 15),
                         (_enlarge_cubic(_textured(9, 14, 5, top=60000), 0), 0x22),
                         (np.repeat(np.repeat(_textured(8, 11, 6, top=60000), 2, 0), 2, 1), 0x43)):
        frame = frame.astype(np.uint16)
        info = FrameInfo(rows=frame.shape[0], columns=frame.shape[1], bits_stored=16)
        data = private.encode(frame, info, version=2)
        assert data[11] == private.PREDICT_SUBBANDS | flags
        out.append((info, frame, data))
    return out


def _screen_stream() -> tuple[FrameInfo, np.ndarray, bytes]:
    """A screen capture: indexed colour whose index plane context model 3 codes."""
    from tests.test_private import _screen
    from tests.test_private_golden import _model_byte

    info = FrameInfo(rows=40, columns=48, samples_per_pixel=3, bits_allocated=8, bits_stored=8,
                     photometric_interpretation="RGB")
    frame = _screen(info, 0)
    data = private.encode(frame, info, version=2)
    assert data[10] == 3 and _model_byte(data, info) == private.INDEX_MODEL
    return info, frame, data


def _text_stream() -> tuple[FrameInfo, np.ndarray, bytes]:
    """Text burnt into a real ultrasound image (read by pydicom): context model 7 codes its edges as
    one of the two levels of their neighbourhoods (as model 5), and its black background as flat."""
    import pydicom
    from pydicom.data import get_testdata_file

    from tests.test_private_golden import _model_byte

    frame = np.ascontiguousarray(pydicom.dcmread(get_testdata_file("examples_palette.dcm")).pixel_array[50:74, 290:338])
    info = FrameInfo(rows=24, columns=48, bits_allocated=8, bits_stored=8)
    data = private.encode(frame, info, version=2)
    assert _model_byte(data, info) == private.MODEL == 7
    return info, frame, data


def _flat_stream() -> tuple[FrameInfo, np.ndarray, bytes]:
    """A real CT slice on a field of padding with stray samples: the flat flag (models 6 and 7), both ways."""
    from tests.test_private import _flat_frame

    info, frame = _flat_frame()
    return info, frame, private.encode(frame, info, version=2)


def _striped_streams() -> list[tuple[FrameInfo, np.ndarray, bytes]]:
    """Version 2 streams cut into several stripes (small frames, a lowered stripe size)."""
    old = private.STRIPE_BYTES
    private.STRIPE_BYTES = 100
    try:
        out = []
        for seed, info in enumerate(INFOS[:3]):
            frame = _frame(info, seed)
            data = private.encode(frame, info, version=2)
            stripes = struct.unpack_from("<I", data, private._HEADER.size + private._PLANE.size
                                         * info.samples_per_pixel)[0] & 0xFFFFFF
            assert data[5] == private.MODE_CODED and stripes < info.rows
            out.append((info, frame, data))
        out.append(_screen_stream())
        return out
    finally:
        private.STRIPE_BYTES = old


def _older_model_streams() -> list[tuple[FrameInfo, np.ndarray, bytes]]:
    """Version 2 streams of the context models the encoder wrote before model 7 (0, 1, 2, 4, 5, 6): archives
    hold them, so their decoders face hostile bytes too."""
    from tests.test_private_golden import _model_byte

    old = private.MODEL
    out = []
    try:
        for model in (0, 1, 2, 4, 5, 6):
            private.MODEL = model
            for seed, info in ((0, INFOS[0]), (2, INFOS[2])):
                frame = _frame(info, seed)
                data = private.encode(frame, info, version=2)
                assert data[5] == private.MODE_CODED and _model_byte(data, info) == model
                out.append((info, frame, data))
    finally:
        private.MODEL = old
    return out


def _inter_stream(version: int) -> tuple[FrameInfo, np.ndarray, np.ndarray, bytes]:
    info = FrameInfo(rows=20, columns=24, bits_stored=12)
    rng = np.random.default_rng(3)
    first = rng.integers(0, 4096, (20, 24)).astype(np.uint16)
    second = (first + rng.integers(0, 2, (20, 24))).astype(np.uint16)
    data = private.encode(second, info, reference=first, version=version)
    assert not private.is_intra(data)
    return info, first, second, data


INTERS = [_inter_stream(1), _inter_stream(2)]


# Version 1 and version 2 streams, version 2 streams with several stripes and of older context models.
STREAMS = _streams(1) + _streams(2) + _striped_streams() + _older_model_streams()


def _decode_or_corrupt(data: bytes, info: FrameInfo, original: np.ndarray | None = None) -> None:
    try:
        back = private.decode(data, info)
    except CorruptCodestreamError:
        return
    assert back.shape == info.shape and back.dtype == info.dtype
    if original is not None:
        # A change the decoder accepted must have left the frame intact (the CRC proves it).
        assert np.array_equal(back, original)


@FUZZ
@given(data=st.binary(max_size=400), which=st.integers(0, len(INFOS) - 1))
def test_random_bytes(data: bytes, which: int) -> None:
    _decode_or_corrupt(data, INFOS[which])


@FUZZ
@given(body=st.binary(max_size=300), which=st.integers(0, len(STREAMS) - 1))
def test_random_body_after_valid_header(body: bytes, which: int) -> None:
    info, _, data = STREAMS[which]
    _decode_or_corrupt(data[: private._HEADER.size] + body, info)


@FUZZ
@given(
    which=st.integers(0, len(STREAMS) - 1),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_mutated_streams(which: int, edits: list[tuple[int, int]]) -> None:
    info, frame, data = STREAMS[which]
    mutated = bytearray(data)
    for position, value in edits:
        mutated[position % len(mutated)] = value
    _decode_or_corrupt(bytes(mutated), info, frame)


@FUZZ
@given(which=st.integers(0, len(STREAMS) - 1), cut=st.integers(0, 10**6), tail=st.binary(max_size=8))
def test_truncated_or_extended_streams(which: int, cut: int, tail: bytes) -> None:
    info, frame, data = STREAMS[which]
    _decode_or_corrupt(data[: cut % (len(data) + 1)] + tail, info, frame)


@FUZZ
@given(
    which=st.integers(0, len(STREAMS) - 1),
    offset=st.integers(-(2**31), 2**31 - 1),
    maxv=st.integers(0, 2**32 - 1),
    count=st.integers(0, 2**32 - 1),
)
def test_hostile_plane_descriptors(which: int, offset: int, maxv: int, count: int) -> None:
    info, frame, data = STREAMS[which]
    if data[5] != private.MODE_CODED:
        return
    mutated = bytearray(data)
    struct.pack_into("<iII", mutated, private._HEADER.size, offset, maxv, count)
    _decode_or_corrupt(bytes(mutated), info, frame)


@FUZZ
@given(
    which=st.integers(0, len(STREAMS) - 1),
    index=st.integers(0, 300),
    value=st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2, 5, 2**31, 2**32 - 1])),
)
def test_hostile_stripe_table(which: int, index: int, value: int) -> None:
    """Any word of a version 2 stripe table (stripe rows, segment lengths) set to anything."""
    info, frame, data = STREAMS[which]
    if data[4] != 2 or data[5] != private.MODE_CODED:
        return
    planes = 4 if data[10] == 3 else info.samples_per_pixel
    start = private._HEADER.size + private._PLANE.size * planes
    stripe_rows = struct.unpack_from("<I", data, start)[0] & 0xFFFFFF  # the top byte is the context model
    words = 2 + -(-info.rows // stripe_rows)
    mutated = bytearray(data)
    struct.pack_into("<I", mutated, start + 4 * (index % words), value)
    _decode_or_corrupt(bytes(mutated), info, frame)


@FUZZ
@given(which=st.integers(0, len(STREAMS) - 1), edits=EDITS)
def test_inserted_and_deleted_bytes(which: int, edits: list) -> None:
    info, frame, data = STREAMS[which]
    _decode_or_corrupt(apply_edits(data, edits), info, frame)


@FUZZ
@given(version=st.sampled_from([1, 2]),
       edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_inter_frame_stream(version: int, edits: list[tuple[int, int]]) -> None:
    info, first, second, data = INTERS[version - 1]
    mutated = bytearray(data)
    for position, value in edits:
        mutated[position % len(mutated)] = value
    try:
        back = private.decode(bytes(mutated), info, reference=first)
    except CorruptCodestreamError:
        return
    assert np.array_equal(back, second)


@pytest.mark.parametrize("index", range(len(STREAMS)))
def test_streams_decode(index: int) -> None:
    info, frame, data = STREAMS[index]
    assert np.array_equal(private.decode(data, info), frame)
