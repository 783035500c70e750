"""Pixel comparison across transfer syntaxes: equal images are equal whatever
their encoding, and every difference is named by frame and position."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from gateway.codecs.base import FrameInfo
from gateway.codecs.rle import encode
from gateway.pipeline.verify import compare_pixels, first_difference, frames_equal
from tests.test_rle import make_dataset

INFO = FrameInfo(rows=5, columns=7, bits_allocated=16, bits_stored=12)
RGB = FrameInfo(rows=4, columns=3, samples_per_pixel=3, bits_allocated=8, bits_stored=8,
                photometric_interpretation="RGB")


def _frames(info: FrameInfo, count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    low, high = info.value_range
    return [rng.integers(low, high, size=info.shape, endpoint=True).astype(info.dtype) for _ in range(count)]


@pytest.mark.parametrize("info", [INFO, RGB], ids=["mono16", "rgb8"])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless])
def test_same_pixels_in_another_syntax_are_equal(info: FrameInfo, syntax: str) -> None:
    frames = _frames(info, 3)
    native = make_dataset(info, frames)
    other = make_dataset(info, [encode(f, info) for f in frames] if syntax == RLELossless else frames, syntax)
    assert compare_pixels(native, other) is None
    assert compare_pixels(other, native) is None


def test_planar_configuration_does_not_matter_only_values() -> None:
    frames = _frames(RGB, 1)
    pixel = make_dataset(RGB, frames)
    plane = make_dataset(RGB, frames)
    plane.PlanarConfiguration = 1
    plane.PixelData = frames[0].transpose(2, 0, 1).tobytes()
    assert compare_pixels(pixel, plane) is None


def test_difference_names_frame_and_position() -> None:
    frames = _frames(INFO, 3)
    changed = [f.copy() for f in frames]
    changed[1][2, 4] ^= 1
    reason = compare_pixels(make_dataset(INFO, frames), make_dataset(INFO, changed))
    assert reason is not None
    assert "frame 2" in reason and "row 2, column 4" in reason and "1 value(s)" in reason


def test_sample_position_is_named_for_colour() -> None:
    frames = _frames(RGB, 1)
    changed = [frames[0].copy()]
    changed[0][3, 1, 2] ^= 0x80
    reason = compare_pixels(make_dataset(RGB, frames), make_dataset(RGB, changed))
    assert reason is not None and "row 3, column 1, sample 2" in reason


def test_frame_count_difference() -> None:
    frames = _frames(INFO, 3)
    reason = compare_pixels(make_dataset(INFO, frames), make_dataset(INFO, frames[:2]))
    assert reason is not None and "frame count" in reason


def test_shape_and_dtype_differences() -> None:
    a = np.zeros((2, 3), np.uint16)
    assert "shape" in first_difference([a], [np.zeros((3, 2), np.uint16)])
    assert "dtype" in first_difference([a], [np.zeros((2, 3), np.int16)])
    assert first_difference([], []) == "no frames to compare"
    assert frames_equal([a, a + 1], iter([a.copy(), a + 1]))
    assert not frames_equal([a], [a + 1])


def test_undecodable_dataset_is_reported_not_raised() -> None:
    frames = _frames(INFO, 1)
    good = make_dataset(INFO, frames)
    broken = make_dataset(INFO, [b"not an RLE frame"], RLELossless)
    assert "second image cannot be decoded" in compare_pixels(good, broken)
    assert "first image cannot be decoded" in compare_pixels(broken, good)
    short = make_dataset(INFO, frames)
    short.PixelData = short.PixelData[:10]
    assert "cannot be decoded" in compare_pixels(good, short)


def test_real_files_in_different_syntaxes() -> None:
    pairs = [("MR_small.dcm", "MR_small_RLE.dcm"), ("MR_small.dcm", "MR_small_bigendian.dcm"),
             ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm")]
    for a, b in pairs:
        assert compare_pixels(dcmread(get_testdata_file(a)), dcmread(get_testdata_file(b))) is None
    assert compare_pixels(dcmread(get_testdata_file("MR_small.dcm")),
                          dcmread(get_testdata_file("CT_small.dcm"))) is not None


def test_wrong_argument_types_raise() -> None:
    with pytest.raises(TypeError):
        compare_pixels("a.dcm", "b.dcm")  # type: ignore[arg-type]
