"""Frames from datasets of every encoding, and the checks made before any codec runs."""

from __future__ import annotations

import struct

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from gateway.codecs.base import FrameInfo
from gateway.errors import PixelDataError, UnsupportedImageError
from gateway.pipeline.pixels import frame_info, high_bits_used, irreversible_wavelet, iter_frames, number_of_frames
from tests.images import make_dataset

# Bundled pydicom files: native little/big endian (OB and OW, 8-bit words swapped),
# deflated, RLE, JPEG-LS, JPEG Lossless, JPEG 2000, multi-frame.
BUNDLED = [
    "CT_small.dcm",
    "MR_small_bigendian.dcm",
    "SC_rgb_small_odd_big_endian.dcm",
    "ExplVR_BigEnd.dcm",
    "image_dfl.dcm",
    "SC_rgb_rle_32bit_2frame.dcm",
    "rtdose_rle.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "JPEG2000.dcm",
]


def _bundled(name: str) -> pydicom.Dataset:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not available")
    return pydicom.dcmread(path)


@pytest.mark.parametrize("name", BUNDLED)
def test_frames_equal_pydicoms_pixel_array(name: str) -> None:
    ds = _bundled(name)
    frames = list(iter_frames(ds))
    info = frame_info(ds)
    assert len(frames) == number_of_frames(ds)
    assert all(f.shape == info.shape and f.dtype == info.dtype and f.flags.c_contiguous for f in frames)
    expected = ds.pixel_array
    assert np.array_equal(np.stack(frames) if len(frames) > 1 else frames[0], expected)


def test_planar_configuration_one_is_returned_colour_by_pixel() -> None:
    info = FrameInfo(rows=3, columns=5, samples_per_pixel=3, bits_allocated=8, bits_stored=8,
                     photometric_interpretation="RGB")
    frame = np.arange(45, dtype=np.uint8).reshape(info.shape)
    ds = make_dataset(info, [frame])
    ds.PlanarConfiguration = 1
    ds.PixelData = frame.transpose(2, 0, 1).tobytes() + b"\0"
    assert np.array_equal(next(iter_frames(ds)), frame)


def test_native_values_are_not_masked() -> None:
    """Data above Bits Stored reaches the caller, so it can be kept rather than lost."""
    info = FrameInfo(rows=2, columns=2, bits_allocated=16, bits_stored=12)
    ds = make_dataset(info, [np.array([[1, 2], [3, 4]], np.uint16)])
    ds.PixelData = np.array([1, 2, 3, 0xF004], "<u2").tobytes()
    frame = next(iter_frames(ds))
    assert frame[1, 1] == 0xF004
    assert high_bits_used(frame, info)


@pytest.mark.parametrize(
    ("values", "signed", "used"),
    [
        ([0, 4095], False, False),
        ([0, 4096], False, True),
        ([-2048, 2047], True, False),
        ([-2049, 0], True, True),
        ([0x0FFB, 0], True, True),  # a negative 12-bit value without sign extension
    ],
)
def test_high_bits_used(values: list[int], signed: bool, used: bool) -> None:
    info = FrameInfo(rows=1, columns=2, bits_allocated=16, bits_stored=12, pixel_representation=int(signed))
    assert high_bits_used(np.array([values], info.dtype), info) is used


def test_full_width_data_never_has_high_bits() -> None:
    info = FrameInfo(rows=1, columns=2, bits_allocated=16, bits_stored=16)
    assert not high_bits_used(np.array([[0, 65535]], np.uint16), info)


def test_short_native_pixel_data() -> None:
    info = FrameInfo(rows=4, columns=4, bits_allocated=16, bits_stored=16)
    ds = make_dataset(info, [np.zeros(info.shape, np.uint16)])
    ds.PixelData = ds.PixelData[:-4]
    with pytest.raises(PixelDataError, match="bytes expected|expected for"):
        list(iter_frames(ds))


def test_float_and_one_bit_and_subsampled_are_unsupported() -> None:
    info = FrameInfo(rows=2, columns=2, bits_allocated=16, bits_stored=16)
    ds = make_dataset(info, [np.zeros(info.shape, np.uint16)])
    ds.FloatPixelData = b"\0" * 16
    with pytest.raises(UnsupportedImageError, match="floating point"):
        frame_info(ds)
    ybr = make_dataset(FrameInfo(rows=2, columns=2, samples_per_pixel=3, bits_allocated=8, bits_stored=8,
                                 photometric_interpretation="RGB"), [np.zeros((2, 2, 3), np.uint8)])
    ybr.PhotometricInterpretation = "YBR_FULL_422"
    with pytest.raises(UnsupportedImageError, match="subsampled"):
        list(iter_frames(ybr))


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [("Rows", None, "'Rows' is missing"), ("SamplesPerPixel", 2, "'Samples per Pixel' must be 1 or 3"),
     ("NumberOfFrames", 0, "at least 1"), ("PhotometricInterpretation", "", "missing")],
)
def test_bad_attributes_name_the_tag(keyword: str, value, message: str) -> None:
    info = FrameInfo(rows=2, columns=2, bits_allocated=8, bits_stored=8)
    ds = make_dataset(info, [np.zeros(info.shape, np.uint8)])
    if value is None:
        del ds[keyword]
    else:
        setattr(ds, keyword, value)
    with pytest.raises(PixelDataError, match=message):
        list(iter_frames(ds))


def test_a_panicking_reference_decoder_becomes_a_typed_error() -> None:
    """pylibjpeg-rle panics (a BaseException) on some damaged streams; we raise PixelDataError."""
    ds = _bundled("MR_small_RLE.dcm")
    broken = bytearray(ds.PixelData)
    broken[100:400] = np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes()
    ds.PixelData = bytes(broken)
    with pytest.raises(PixelDataError, match="could not be decoded"):
        list(iter_frames(ds))


def test_a_tile_part_ending_before_its_sod_ends_the_wavelet_walk() -> None:
    """Psot 12 ends the tile-part at its own SOD: jumping there would find that SOD again, forever."""
    sot = b"\xff\x90" + struct.pack(">HHIBB", 10, 0, 12, 0, 1)
    assert irreversible_wavelet(b"\xff\x4f" + sot + b"\xff\x93\x00\x00\x00\x00\xff\xd9") is False
