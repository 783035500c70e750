"""Subbands in version 2 of GatewayLossless: enlarged images coded as one level of lifting.

The frames here are enlarged in the test itself, by interpolation (the
midpoint of two neighbours between them) or by repeating each sample, as
scanners, workstations and viewers enlarge images; the codec must find which
axes, which parity and which predictor, code them smaller than as they are,
and decode them bit-exactly, as the specification's decoder does.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gateway.codecs import _private_subbands as sb
from gateway.codecs import private
from gateway.codecs.base import FrameInfo
from gateway.errors import CorruptCodestreamError
from tests.images import enlarge
from tests.test_private import _spec_decode

PREDICTION = 11  # header byte


def _textured(rows: int, columns: int, seed: int = 0, top: int = 4000) -> np.ndarray:
    """A smooth field with texture and noise, values 0..top."""
    rng = np.random.default_rng(seed)
    field = np.cumsum(np.cumsum(rng.normal(0, 2, (rows, columns)), 0), 1) + rng.normal(0, 12, (rows, columns))
    field -= field.min()
    return (field * (top / max(1.0, field.max()))).astype(np.int64)


def _enlarge(image: np.ndarray, axis: int) -> np.ndarray:
    """`image` with the floor of the mean of each pair of neighbours along `axis` put between them."""
    return enlarge(image, axis)


def _enlarge_cubic(image: np.ndarray, axis: int) -> np.ndarray:
    """`image` with the rounded cubic midpoint of each pair of neighbours along `axis` put between
    them, clipped at 0."""
    return np.maximum(enlarge(image, axis, cubic=True), 0)


def _info(frame: np.ndarray, stored: int = 16, signed: bool = False) -> FrameInfo:
    return FrameInfo(rows=frame.shape[0], columns=frame.shape[1], bits_stored=stored,
                     pixel_representation=int(signed))


def _as_it_is(frame: np.ndarray, info: FrameInfo, monkeypatch: pytest.MonkeyPatch) -> bytes:
    with monkeypatch.context() as patch:
        patch.setattr(sb, "GATE", -1.0)  # no axis passes: the plane is coded as it is
        return private.encode(frame, info, version=2)


def test_one_line_follows_the_lifting_steps() -> None:
    # Worked by hand from section 9.8: x = 10 20 30 50, p = 0: high 20 - (10 + 30) / 2 = 0 and
    # 50 - (30 + 30) / 2 = 20 (the right edge mirrors 30); low 10 + (0 + 0 + 2) >> 2 = 10 and
    # 30 + (0 + 20 + 2) >> 2 = 35.  With p = 1 the first sample is high-pass.
    line = np.array([[10, 20, 30, 50]], np.int32)
    assert sb.forward(line, sb.ROWS).tolist() == [[10, 35, 0, 20]]
    # p = 1: high 10 - (20 + 20) / 2 = -10 and 30 - (20 + 50) / 2 = -5; low 20 + (-10 - 5 + 2) >> 2 = 16,
    # 50 + (-5 - 5 + 2) >> 2 = 48.
    assert sb.forward(line, sb.ROWS | sb.ROWS_ODD).tolist() == [[16, 48, -10, -5]]
    assert sb.forward(line.T.copy(), sb.COLUMNS).T.tolist() == [[10, 35, 0, 20]]


def test_one_line_with_four_neighbours() -> None:
    # x = 0 16 32 80 64 48, p = 0, four neighbours (reflected: x[-2] = x[2], x[6] = x[4], x[8] = x[2]):
    # k = 1: 16 - (9 (0 + 32) - (32 + 64) + 8) >> 4 = 16 - 12 = 4;  k = 3: 80 - (9 (32 + 64) - (0 + 64) + 8) >> 4
    # = 80 - 50 = 30;  k = 5: 48 - (9 (64 + 64) - (32 + 32) + 8) >> 4 = 48 - 68 = -20 (x[6] = x[4]).
    # Low: k = 0: 0 + (4 + 4 + 2) >> 2 = 2;  k = 2: 32 + (4 + 30 + 2) >> 2 = 41;  k = 4: 64 + (30 - 20 + 2) >> 2 = 67.
    line = np.array([[0, 16, 32, 80, 64, 48]], np.int32)
    assert sb.forward(line, sb.ROWS | sb.FOUR_TAP).tolist() == [[2, 41, 67, 4, 30, -20]]


def test_one_line_with_the_sample_before() -> None:
    # x = 10 10 30 31, p = 0, the sample before: high 10 - 10 = 0 and 31 - 30 = 1; low 10 + (0 + 0 + 2) >> 2
    # = 10 and 30 + (0 + 1 + 2) >> 2 = 30.  p = 1: high k = 0: 10 - x[1] = 0 (reflected), k = 2: 30 - 10 = 20;
    # low k = 1: 10 + (0 + 20 + 2) >> 2 = 15, k = 3: 31 + (20 + 20 + 2) >> 2 = 41 (x[4] = x[2]).
    line = np.array([[10, 10, 30, 31]], np.int32)
    assert sb.forward(line, sb.ROWS | sb.REPEAT).tolist() == [[10, 30, 0, 1]]
    assert sb.forward(line, sb.ROWS | sb.ROWS_ODD | sb.REPEAT).tolist() == [[15, 41, 0, 20]]
    assert sb.forward(line.T.copy(), sb.COLUMNS | sb.REPEAT).T.tolist() == [[10, 30, 0, 1]]


FLAG_SETS = [sb.ROWS, sb.COLUMNS, sb.ROWS | sb.COLUMNS, sb.ROWS | sb.ROWS_ODD, sb.COLUMNS | sb.COLUMNS_ODD,
             sb.ROWS | sb.COLUMNS | sb.ROWS_ODD | sb.COLUMNS_ODD]
FLAG_SETS += [flags | predictor for predictor in (sb.FOUR_TAP, sb.REPEAT) for flags in FLAG_SETS]


@settings(max_examples=60, deadline=None)
@given(flags=st.sampled_from(FLAG_SETS),
       plane=hnp.arrays(np.int32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=2, max_side=9),
                        elements=st.integers(-(1 << 17), 1 << 17)))
def test_lifting_is_exactly_reversible(flags: int, plane: np.ndarray) -> None:
    assume(sb.valid(flags, *plane.shape))
    coefficients = sb.forward(plane, flags)
    assert np.array_equal(sb.inverse(coefficients.copy(), flags), plane)  # (the inverse works in place)
    # The specification's plain-Python inverse agrees with ours.
    from tests.test_private import _spec_subbands

    assert np.array_equal(_spec_subbands(coefficients.tolist(), flags), plane)


CASES = {
    # name: (how the frame is made from a textured field, the flags the encoder must find)
    "both axes": (lambda f: _enlarge(_enlarge(f, 0), 1), sb.ROWS | sb.COLUMNS),
    "along rows": (lambda f: _enlarge(f, 1), sb.ROWS),
    "along columns": (lambda f: _enlarge(f, 0), sb.COLUMNS),
    "odd phase": (lambda f: _enlarge(_enlarge(f, 0), 1)[1:, 1:], sb.ROWS | sb.COLUMNS | sb.ROWS_ODD | sb.COLUMNS_ODD),
    "odd columns only": (lambda f: _enlarge(f, 1)[:, 1:], sb.ROWS | sb.ROWS_ODD),
    "cubic": (lambda f: _enlarge_cubic(_enlarge_cubic(f, 0), 1), sb.ROWS | sb.COLUMNS | sb.FOUR_TAP),
    "cubic along columns, odd": (lambda f: _enlarge_cubic(f, 0)[1:], sb.COLUMNS | sb.COLUMNS_ODD | sb.FOUR_TAP),
    "repeated": (lambda f: np.repeat(np.repeat(f, 2, 0), 2, 1), sb.ROWS | sb.COLUMNS | sb.REPEAT),
    "repeated along rows, odd": (lambda f: np.repeat(f, 2, 1)[:, 1:], sb.ROWS | sb.ROWS_ODD | sb.REPEAT),
    "repeated along columns": (lambda f: np.repeat(f, 2, 0), sb.COLUMNS | sb.REPEAT),
}


@pytest.mark.parametrize("shape", [(60, 70), (200, 330)], ids=["whole frame judged", "sample of rows judged"])
@pytest.mark.parametrize("case", list(CASES))
def test_enlarged_frames_are_coded_as_subbands(case: str, shape: tuple[int, int],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    make, flags = CASES[case]
    frame = make(_textured(*shape)).astype(np.uint16)
    info = _info(frame)
    assert (info.rows * info.columns >= private.SAMPLE_PIXELS) == (shape[0] > 100)
    data = private.encode(frame, info, version=2)
    assert data[PREDICTION] == private.PREDICT_SUBBANDS | flags
    assert private.is_intra(data)
    assert len(data) < 0.8 * len(_as_it_is(frame, info, monkeypatch))
    back = private.decode(data, info)
    assert back.dtype == frame.dtype and np.array_equal(back, frame)
    if shape[0] < 100:
        assert np.array_equal(_spec_decode(data, info), frame)


@pytest.mark.parametrize("signed", [False, True])
def test_full_range_frames_stay_within_the_plane_limits(signed: bool) -> None:
    """Extreme 16-bit values enlarged: the coefficients need 18 bits, which a plane carries."""
    rng = np.random.default_rng(3)
    small = rng.integers(0, 2, (24, 24)) * 65535
    frame = _enlarge(_enlarge(small, 0), 1)
    if signed:
        frame = (frame - 32768).astype(np.int16)
    else:
        frame = frame.astype(np.uint16)
    info = _info(frame, signed=signed)
    data = private.encode(frame, info, version=2)
    assert np.array_equal(private.decode(data, info), frame)
    assert np.array_equal(_spec_decode(data, info), frame) if data[5] == private.MODE_CODED else True


def test_images_not_interpolated_are_coded_as_they_are() -> None:
    for seed in range(3):
        frame = _textured(90, 110, seed).astype(np.uint16)
        assert private.encode(frame, _info(frame), version=2)[PREDICTION] == private.PREDICT_INTRA


def test_subbands_are_kept_only_where_they_code_smaller(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = _textured(64, 64, 5).astype(np.uint16)
    info = _info(frame)
    plain = _as_it_is(frame, info, monkeypatch)
    monkeypatch.setattr(sb, "GATE", 2.0)  # every axis passes the gate
    assert sb.interpolated(frame.astype(np.int32), np.zeros(1, np.int64), 64) & (sb.ROWS | sb.COLUMNS) == 3
    data = private.encode(frame, info, version=2)
    assert data == plain  # coded both ways, the plane as it is was smaller


@pytest.mark.parametrize("rows, sampled", [(1100, True), (300, False)])
def test_tall_frames_choose_on_a_sample_of_rows(rows: int, sampled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame whose sample of SUBBAND_BAND_ROWS-row bands is at most a quarter of it codes both
    codings on the sample first, then only the one the sample favours whole, whichever it is; a
    shorter frame codes both whole and keeps the smaller."""
    whole: list[int] = []
    real = private._whole_body

    def counted(coding: tuple, info: FrameInfo, version: int) -> bytes:
        whole.append(coding[1][0].shape[0])
        return real(coding, info, version)

    monkeypatch.setattr(private, "_whole_body", counted)
    y, x = np.mgrid[0:rows, 0:240]  # blocks with sharp edges: prediction codes them far better
    noise = np.random.default_rng(6).integers(0, 3, (rows, 240))
    plain = ((y // 37 * 7 + x // 23 * 13) % 17 * 200 + noise).astype(np.uint16)
    enlarged = _enlarge(_enlarge(_textured(rows // 2 + 1, 121, 6), 0), 1)[:rows, :240].astype(np.uint16)
    assert plain.shape == enlarged.shape and plain.size >= private.SAMPLE_PIXELS
    monkeypatch.setattr(sb, "GATE", 2.0)  # both are tried on the plain frame too
    for frame, subbands in ((plain, False), (enlarged, True)):
        whole.clear()
        data = private.encode(frame, _info(frame), version=2)
        assert bool(data[PREDICTION] & private.PREDICT_SUBBANDS) == subbands
        assert whole == [rows] * (1 if sampled else 2)  # coded whole: the one chosen, or both
        assert np.array_equal(private.decode(data, _info(frame)), frame)


def test_an_interpolated_frame_codes_on_its_own_where_that_is_smaller(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given the frame before, an interpolated frame weighs its subbands against the difference."""
    rng = np.random.default_rng(8)
    base = _textured(60, 70, 8)
    first, second = (_enlarge(_enlarge(base + rng.integers(0, 40, base.shape), 0), 1).astype(np.uint16)
                     for _ in range(2))
    info = _info(first)
    data = private.encode(second, info, first, version=2)
    assert data[PREDICTION] & private.PREDICT_SUBBANDS and private.is_intra(data)
    monkeypatch.setattr(private, "INTER_GAIN", 1e9)  # the difference, whatever it costs
    inter = private.encode(second, info, first, version=2)
    assert inter[PREDICTION] == private.PREDICT_PREVIOUS
    assert len(data) < len(inter)
    assert np.array_equal(private.decode(inter, info, first), second)


def test_version_one_and_inter_frames_do_not_use_subbands() -> None:
    frame = _enlarge(_enlarge(_textured(40, 40), 0), 1).astype(np.uint16)
    info = _info(frame)
    assert private.encode(frame, info, version=1)[PREDICTION] == private.PREDICT_INTRA
    second = frame.copy()
    second[10:20, 10:20] += 1
    streams = private.encode_frames([frame, second], info, version=2)
    assert streams[0][PREDICTION] & private.PREDICT_SUBBANDS
    assert streams[1][PREDICTION] == private.PREDICT_PREVIOUS
    assert all(np.array_equal(a, b) for a, b in zip(private.decode_frames(streams, info), [frame, second]))


def _with_prediction(data: bytes, value: int) -> bytes:
    return data[:PREDICTION] + bytes([value]) + data[PREDICTION + 1:]


@pytest.mark.parametrize("value", [0x10, 0x14, 0x18, 0x1C, 0x20, 0x30, 0x50, 0x71, 0x80, 0xFF])
def test_bad_subband_flags_are_corrupt(value: int) -> None:
    frame = _enlarge(_textured(30, 30), 1).astype(np.uint16)
    info = _info(frame)
    data = private.encode(frame, info, version=2)
    assert data[PREDICTION] == private.PREDICT_SUBBANDS | sb.ROWS
    with pytest.raises(CorruptCodestreamError):
        private.decode(_with_prediction(data, value), info)


def test_subbands_where_they_are_not_allowed_are_corrupt() -> None:
    frame = _enlarge(_textured(30, 30), 1).astype(np.uint16)
    info = _info(frame)
    subbands = private.PREDICT_SUBBANDS | sb.ROWS
    # Version 1, a stored frame, a reference CRC, three samples.
    noise = np.random.default_rng(0).integers(0, 1 << 16, frame.shape).astype(np.uint16)
    stored = private.encode(noise, info, version=2)
    assert stored[5] == private.MODE_STORED
    for data in (private.encode(frame, info, version=1), stored):
        with pytest.raises(CorruptCodestreamError, match="subband|stored"):
            private.decode(_with_prediction(data, subbands), info)
    data = private.encode(frame, info, version=2)
    with pytest.raises(CorruptCodestreamError):
        private.decode(data[:24] + b"\1\0\0\0" + data[28:], info)
    colour_info = FrameInfo(rows=30, columns=59, samples_per_pixel=3, bits_allocated=8, bits_stored=8,
                            photometric_interpretation="RGB")
    colour = np.stack([(frame >> 4).astype(np.uint8)] * 3, axis=-1)
    with pytest.raises(CorruptCodestreamError, match="subband"):
        private.decode(_with_prediction(private.encode(colour, colour_info, version=2), subbands), colour_info)
    # An axis of one sample cannot be lifted.
    row = np.arange(30, dtype=np.uint16)[np.newaxis]
    row_info = _info(row)
    data = private.encode(row, row_info, version=2)
    with pytest.raises(CorruptCodestreamError, match="subband"):
        private.decode(_with_prediction(data, private.PREDICT_SUBBANDS | sb.COLUMNS), row_info)


def test_coefficients_that_leave_the_range_are_corrupt() -> None:
    """A plane of coefficients whose inverse leaves the carried range: a clear error, no wrap-around."""
    frame = _enlarge(_textured(30, 30, top=65535), 1).astype(np.uint16)
    info = _info(frame)
    data = private.encode(frame, info, version=2)
    assert data[PREDICTION] & private.PREDICT_SUBBANDS
    # Raise the plane's offset: every coefficient grows, so the low-pass samples pass 65535.
    offset = int.from_bytes(data[28:32], "little", signed=True)
    shifted = data[:28] + (offset + 70000).to_bytes(4, "little", signed=True) + data[32:]
    with pytest.raises(CorruptCodestreamError, match="range"):
        private.decode(shifted, info)
