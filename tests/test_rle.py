"""RLE Lossless codec: golden streams, round trips over reference and corpus
images, conformance with decoders we did not write (pylibjpeg-rle, pydicom's
own, DCMTK, GDCM), decoding of streams other encoders wrote, and the error
paths of the decoder."""

from __future__ import annotations

import struct
import subprocess
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.encaps import generate_frames
from pydicom.uid import RLELossless

from gateway.codecs import _rle_kernels as kernels
from gateway.codecs import get_codec
from gateway.codecs.base import FrameInfo
from gateway.codecs.rle import decode, encode, supports
from gateway.errors import CorruptCodestreamError, UnsupportedImageError
from gateway.pipeline.pixels import frame_info, high_bits_used, iter_frames
from tests.corpus import corpus_params
from tests.images import make_dataset, reference_params
from tests.tools import require, require_dcmtk

CODEC = get_codec(RLELossless)


def _info(rows: int, columns: int, samples: int = 1, bits: int = 8, stored: int | None = None,
          signed: bool = False) -> FrameInfo:
    return FrameInfo(
        rows=rows, columns=columns, samples_per_pixel=samples, bits_allocated=bits,
        bits_stored=stored or bits, pixel_representation=int(signed),
        photometric_interpretation="RGB" if samples == 3 else "MONOCHROME2",
    )


def _header(*offsets: int) -> bytes:
    return struct.pack("<16I", len(offsets), *offsets, *([0] * (15 - len(offsets))))


def _frames_of(array: np.ndarray, info: FrameInfo, count: int) -> list[np.ndarray]:
    array = np.asarray(array).reshape((count, *info.shape))
    return [np.ascontiguousarray(f, dtype=info.dtype) for f in array]


def _python_unpack(segment: bytes, size: int) -> tuple[bytes, list[int]]:
    """Plain-Python PackBits decoder (the reference for the kernel); also
    returns the output position after each run, to check row boundaries."""
    out = bytearray()
    ends = []
    pos = 0
    while len(out) < size:
        control = segment[pos]
        pos += 1
        if control < 128:
            out += segment[pos : pos + control + 1]
            pos += control + 1
        elif control > 128:
            out += bytes([segment[pos]]) * (257 - control)
            pos += 1
        ends.append(len(out))
    return bytes(out), ends


# ---------------------------------------------------------------- registry and profile


def test_registered_under_uid_keyword_and_name() -> None:
    assert get_codec("rle") is CODEC and get_codec("RLELossless") is CODEC
    assert (CODEC.name, CODEC.uid, CODEC.keyword, CODEC.private) == ("rle", RLELossless, "RLELossless", False)


@pytest.mark.parametrize(
    "info, allowed",
    [
        (_info(4, 4, 1, 8), True),
        (_info(4, 4, 1, 16, 12, signed=True), True),
        (_info(4, 4, 1, 32), True),
        (_info(4, 4, 3, 8), True),
        (_info(4, 4, 3, 16), True),
        (_info(4, 4, 3, 32), True),
        (FrameInfo(4, 4, 3, 8, 8, 0, "YBR_FULL"), True),
        (FrameInfo(4, 4, 3, 8, 8, 0, "YBR_FULL_422"), False),
        (FrameInfo(4, 4, 3, 8, 8, 1, "RGB"), False),
        (FrameInfo(4, 4, 1, 32, 32, 0, "PALETTE COLOR"), False),
        (FrameInfo(4, 4, 1, 8, 8, 0, "RGB"), False),
        (FrameInfo(4, 4, 1, 1, 1, 0, "MONOCHROME2"), False),
    ],
    ids=["m8", "m16s", "m32", "rgb8", "rgb16", "rgb32", "ybr_full", "ybr422", "signed_rgb", "palette32",
         "rgb_one_sample", "1bit"],
)
def test_supports_follows_the_profile_table(info: FrameInfo, allowed: bool) -> None:
    reason = supports(info)
    assert (reason is None) == allowed
    if not allowed:
        assert "(0028," in reason
        with pytest.raises(UnsupportedImageError):
            encode(np.zeros(info.shape, np.uint8), info)


# ---------------------------------------------------------------- golden streams


def test_golden_8bit_row() -> None:
    info = _info(1, 10)
    frame = np.array([[0, 0, 0, 1, 2, 3, 3, 3, 3, 9]], np.uint8)
    stream = encode(frame, info)
    # replicate 3 x 0, literal [1 2], replicate 4 x 3, literal [9], pad to even
    body = bytes([0xFE, 0x00, 0x01, 0x01, 0x02, 0xFD, 0x03, 0x00, 0x09, 0x00])
    assert stream == _header(64) + body
    assert np.array_equal(decode(stream, info), frame)


def test_golden_16bit_segments_most_significant_byte_first() -> None:
    info = _info(1, 2, bits=16)
    frame = np.array([[0x1234, 0x1234]], np.uint16)
    stream = encode(frame, info)
    # Segment 1 = high bytes (0x12 twice), segment 2 = low bytes (0x34 twice).
    assert stream == _header(64, 66) + bytes([0xFF, 0x12, 0xFF, 0x34])


def test_golden_rgb_segments_per_sample() -> None:
    info = _info(1, 1, samples=3)
    stream = encode(np.array([[[10, 20, 30]]], np.uint8), info)
    assert stream == _header(64, 66, 68) + bytes([0x00, 10, 0x00, 20, 0x00, 30])


def test_a_run_of_two_after_a_literal_stays_literal() -> None:
    info = _info(1, 4)
    stream = encode(np.array([[5, 7, 7, 8]], np.uint8), info)
    assert stream[64:] == bytes([0x03, 5, 7, 7, 8, 0x00])


def test_long_runs_and_literals_split_at_128() -> None:
    info = _info(1, 300)
    frame = np.zeros((1, 300), np.uint8)
    frame[0, 200:] = np.arange(1, 101)
    stream = encode(frame, info)
    body = bytes([257 - 128, 0, 257 - 72, 0]) + bytes([99]) + bytes(range(1, 101))
    assert stream == _header(64) + body + b"\x00"
    assert np.array_equal(decode(stream, info), frame)


def test_rows_are_encoded_separately_and_segments_are_even() -> None:
    info = _info(7, 33, bits=16)
    frame = np.full(info.shape, 0x0303, np.uint16)  # one value everywhere: a run could cross every row
    stream = encode(frame, info)
    count, *offsets = struct.unpack_from("<16I", stream)
    assert count == 2 and offsets[0] == 64 and offsets[2:] == [0] * 13
    bounds = offsets[:2] + [len(stream)]
    for start, end in zip(bounds, bounds[1:]):
        assert (end - start) % 2 == 0
        _, ends = _python_unpack(stream[start:end], info.rows * info.columns)
        row_ends = set(range(info.columns, info.rows * info.columns + 1, info.columns))
        assert row_ends <= set(ends), "a run crosses a row boundary"


def _python_pack(row: bytes) -> bytes:
    """Plain-Python PackBits of one row with the encoder's documented choices.

    At each position the run of equal bytes (up to 128) is measured: three
    or more, or two with no literal pending, make a replicate run; anything
    else joins the pending literal, written in chunks of at most 128.
    """
    out = bytearray()
    literal: list[int] = []

    def flush() -> None:
        for start in range(0, len(literal), 128):
            chunk = literal[start:start + 128]
            out.append(len(chunk) - 1)
            out.extend(chunk)
        literal.clear()

    i = 0
    while i < len(row):
        run = 1
        while i + run < len(row) and run < 128 and row[i + run] == row[i]:
            run += 1
        if run >= 3 or (run == 2 and not literal):
            flush()
            out += bytes([257 - run, row[i]])
        else:
            literal.extend(row[i:i + run])
        i += run
    flush()
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4), st.integers(1, 300), st.integers(2, 256), st.integers(0, 2**32 - 1))
def test_encoder_makes_the_documented_run_and_literal_choices(rows: int, columns: int, alphabet: int,
                                                              seed: int) -> None:
    """Byte for byte what a plain-Python PackBits with the same rule writes, row by row."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, alphabet, size=(rows, columns))
    repeats = rng.integers(1, 6, size=(rows, columns))  # runs of every length
    frame = np.array([np.repeat(v, r)[:columns] for v, r in zip(values, repeats)], np.uint8)
    stream = encode(frame, _info(rows, columns))
    expected = b"".join(_python_pack(bytes(row)) for row in frame)
    assert stream[64:64 + len(expected)] == expected
    assert len(stream) - 64 - len(expected) == len(expected) % 2  # the even-length pad


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("info, frames", reference_params())
def test_round_trip_reference_images(info: FrameInfo, frames: list[np.ndarray]) -> None:
    for frame in frames:
        stream = encode(frame, info)
        assert len(stream) <= kernels.encoded_bound(info.rows, info.columns, info.samples_per_pixel * info.bits_allocated // 8)
        back = CODEC.decode_frame(stream, info)
        assert back.dtype == frame.dtype and back.shape == frame.shape
        assert np.array_equal(back, frame)


@pytest.mark.parametrize("info, frames", reference_params())
def test_kernel_matches_plain_python_decoder(info: FrameInfo, frames: list[np.ndarray]) -> None:
    frame = frames[0]
    stream = encode(frame, info)
    count, *offsets = struct.unpack_from("<16I", stream)
    bounds = offsets[:count] + [len(stream)]
    nbytes = info.bits_allocated // 8
    planes = np.ascontiguousarray(frame.astype(frame.dtype.newbyteorder("<"))).view(np.uint8)
    planes = planes.reshape(info.rows * info.columns, info.samples_per_pixel, nbytes)
    for s in range(count):
        sample, byte = divmod(s, nbytes)
        expected = planes[:, sample, nbytes - 1 - byte].tobytes()
        got, _ = _python_unpack(stream[bounds[s] : bounds[s + 1]], info.rows * info.columns)
        assert got == expected


@pytest.mark.corpus
@pytest.mark.parametrize("row", corpus_params())
def test_round_trip_corpus(row: dict) -> None:
    ds = pydicom.dcmread(row["file"])
    info = frame_info(ds)
    frames = list(iter_frames(ds))
    if any(high_bits_used(f, info) for f in frames):
        pytest.skip("bits above Bits Stored hold data: the pipeline passes this image through")
    check = _as_rle_profile(info)
    for frame in frames:
        stream = encode(frame, check)
        assert np.array_equal(decode(stream, check), frame)
        # The independent decoder agrees on every corpus image as well.
        assert np.array_equal(_pylibjpeg_rle(stream, check), frame)


def _as_rle_profile(info: FrameInfo) -> FrameInfo:
    """RLE carries YBR_FULL only at 8 bits; other colour data is tested as RGB (same bytes)."""
    if supports(info) is None or info.samples_per_pixel == 1:
        return info
    return replace(info, photometric_interpretation="RGB")


# ---------------------------------------------------------------- conformance: others decode ours


def _pylibjpeg_rle(stream: bytes, info: FrameInfo) -> np.ndarray:
    from rle.rle import decode_frame

    raw = decode_frame(stream, info.rows * info.columns, info.bits_allocated, "<")
    planes = np.frombuffer(raw, dtype=info.dtype.newbyteorder("<"))
    if info.samples_per_pixel == 3:
        planes = planes.reshape(3, info.rows, info.columns).transpose(1, 2, 0)
    return planes.reshape(info.shape).astype(info.dtype)


@pytest.mark.parametrize("info, frames", reference_params())
def test_pylibjpeg_rle_decodes_ours(info: FrameInfo, frames: list[np.ndarray]) -> None:
    for frame in frames:
        assert np.array_equal(_pylibjpeg_rle(encode(frame, info), info), frame)


@pytest.mark.parametrize("plugin", ["pydicom", "pylibjpeg"])
@pytest.mark.parametrize("info, frames", reference_params())
def test_pydicom_decodes_ours(plugin: str, info: FrameInfo, frames: list[np.ndarray]) -> None:
    ds = make_dataset(info, [encode(f, info) for f in frames], RLELossless)
    ds.pixel_array_options(decoding_plugin=plugin)
    assert np.array_equal(np.stack(_frames_of(ds.pixel_array, info, len(frames))), np.stack(frames))


# ---------------------------------------------------------------- we decode others


@pytest.mark.parametrize("info, frames", reference_params())
def test_we_decode_pydicom_encoder_output(info: FrameInfo, frames: list[np.ndarray]) -> None:
    from pydicom.pixels.encoders import RLELosslessEncoder

    for frame in frames:
        # pydicom narrows the array to Bits Stored before splitting it into
        # Bits-Allocated segments, so it is given the container width: the
        # bytes of in-range values are the same.
        stream = RLELosslessEncoder.encode(
            frame, encoding_plugin="pydicom", rows=info.rows, columns=info.columns,
            samples_per_pixel=info.samples_per_pixel, bits_allocated=info.bits_allocated,
            bits_stored=info.bits_allocated, pixel_representation=info.pixel_representation,
            photometric_interpretation=info.photometric_interpretation, planar_configuration=0,
            number_of_frames=1,
        )
        assert np.array_equal(decode(stream, info), frame)


@pytest.mark.parametrize("info, frames", reference_params())
def test_we_decode_pylibjpeg_rle_output(info: FrameInfo, frames: list[np.ndarray]) -> None:
    from rle.rle import encode_frame

    for frame in frames:
        little = np.ascontiguousarray(frame.astype(frame.dtype.newbyteorder("<")))
        stream = encode_frame(little.tobytes(), info.rows, info.columns, info.samples_per_pixel,
                              info.bits_allocated, "<")
        assert np.array_equal(decode(stream, info), frame)


def test_we_decode_pydicoms_sample_files() -> None:
    from pydicom.data import get_testdata_file

    for name in ("MR_small_RLE.dcm", "SC_rgb_rle.dcm", "SC_rgb_rle_16bit_2frame.dcm",
                 "SC_rgb_rle_32bit_2frame.dcm", "rtdose_rle.dcm"):
        path = get_testdata_file(name)
        if path is None:
            continue
        ds = pydicom.dcmread(path)
        info = frame_info(ds)
        count = int(ds.get("NumberOfFrames", 1) or 1)
        ours = [decode(f, info) for f in generate_frames(ds.PixelData, number_of_frames=count)]
        assert np.array_equal(np.stack(ours), np.stack(_frames_of(ds.pixel_array, info, count))), name


# ---------------------------------------------------------------- decoder leniency and normalisation


def test_padding_and_overshooting_final_run_are_ignored() -> None:
    info = _info(1, 3)
    # literal of 2 then a replicate of 4 where only 1 byte is needed, then junk.
    stream = _header(64) + bytes([0x01, 1, 2, 0xFD, 7, 0x80, 0x00, 0x00])
    assert decode(stream, info).tolist() == [[1, 2, 7]]


def test_no_op_control_byte_is_skipped() -> None:
    info = _info(1, 2)
    stream = _header(64) + bytes([0x80, 0x01, 4, 5])
    assert decode(stream, info).tolist() == [[4, 5]]


def test_signed_values_are_sign_extended_from_bits_stored() -> None:
    info = _info(1, 2, bits=16, stored=12, signed=True)
    # Another encoder stored the 12-bit pattern 0x800 (-2048) without extension.
    stream = _header(64, 66) + bytes([0xFF, 0x08, 0xFF, 0x00])
    assert decode(stream, info).tolist() == [[-2048, -2048]]


def test_unsigned_values_are_masked_to_bits_stored() -> None:
    info = _info(1, 1, bits=16, stored=12)
    stream = _header(64, 66) + bytes([0x00, 0xF1, 0x00, 0x23])
    assert decode(stream, info).tolist() == [[0x123]]


def test_encoder_refuses_data_above_bits_stored() -> None:
    info = _info(2, 2, bits=16, stored=12)
    with pytest.raises(UnsupportedImageError, match="Bits Stored"):
        encode(np.full((2, 2), 0x1000, np.uint16), info)


@pytest.mark.parametrize(
    "frame",
    [np.zeros((3, 3), np.uint16), np.zeros((2, 2), np.uint8), np.zeros((2, 2, 3), np.uint8)],
    ids=["shape", "dtype", "samples"],
)
def test_encoder_checks_the_array(frame: np.ndarray) -> None:
    with pytest.raises(UnsupportedImageError):
        encode(frame, _info(2, 2, bits=16))


# ---------------------------------------------------------------- corrupt streams


@pytest.mark.parametrize(
    "stream, message",
    [
        (b"", "shorter than the 64-byte header"),
        (b"\x01" + b"\x00" * 40, "shorter than the 64-byte header"),
        (_header(64, 70) + b"\x00" * 10, "lists 2 segments"),
        (_header(12) + b"\x00" * 10, "inside the header"),
        (_header(200) + b"\x00" * 10, "not ascending"),
        (_header(64) + bytes([0x05, 1, 2]), "literal run reaches past"),
        (_header(64) + bytes([0x00, 1]), "segment ends before every pixel"),
        (_header(64) + bytes([0x00, 1, 0xFE]), "replicate run has no byte"),
        (_header(64) + bytes([0x80, 0x80]), "segment ends before every pixel"),
        (_header(), "lists 0 segments"),
    ],
    ids=["empty", "short_header", "count", "inside_header", "past_end", "literal", "short", "replicate",
         "only_no_ops", "zero_segments"],
)
def test_corrupt_streams_raise(stream: bytes, message: str) -> None:
    with pytest.raises(CorruptCodestreamError, match=message):
        decode(stream, _info(1, 3))


def test_descending_offsets_raise() -> None:
    stream = _header(80, 64) + b"\x00" * 40
    with pytest.raises(CorruptCodestreamError, match="not ascending"):
        decode(stream, _info(1, 3, bits=16))


def test_hostile_header_costs_no_more_than_the_frame() -> None:
    info = _info(64, 64, bits=16)
    stream = struct.pack("<16I", 2, 64, 0xFFFFFFF0, *([0xFFFFFFFF] * 13)) + bytes([0x81, 0]) * 100
    tracemalloc.start()
    try:
        with pytest.raises(CorruptCodestreamError):
            decode(stream, info)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < info.frame_bytes + 4 * len(stream) + 65536


@pytest.mark.parametrize(("samples", "bits"), [(1, 8), (1, 16), (3, 8)])
def test_rows_and_columns_the_data_cannot_fill_cost_nothing(samples: int, bits: int) -> None:
    """A DICOM header claiming 65535 x 65535 over a frame of a few bytes (found by fuzzing the
    FrameInfo against valid streams): PackBits gives at most 128 bytes per 2, so the frame is
    refused before it is allocated (it was: 4 to 12 GiB, or MemoryError)."""
    info = _info(65535, 65535, samples, bits)
    segments = samples * bits // 8
    stream = _header(*range(64, 64 + 4 * segments, 4)) + bytes([0x81, 7, 0x81, 7]) * segments
    tracemalloc.start()
    try:
        with pytest.raises(CorruptCodestreamError, match="segment ends before every pixel"):
            decode(stream, info)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    # The longest a segment's bytes can unpack to is still decoded.
    info = _info(2, 128, samples, bits)
    stream = _header(*range(64, 64 + 4 * segments, 4)) + bytes([0x81, 7, 0x81, 7]) * segments
    assert (decode(stream, info) == 7 * sum(1 << 8 * b for b in range(bits // 8))).all()


# ---------------------------------------------------------------- interop with DCMTK and GDCM


def _interop_frames() -> list:
    return reference_params(lambda i: i.bits_allocated in (8, 16) and i.rows * i.columns > 1)


@pytest.mark.interop
@pytest.mark.parametrize("info, frames", _interop_frames())
def test_dcmtk_dcmdrle_decodes_ours(info: FrameInfo, frames: list[np.ndarray], tmp_path: Path) -> None:
    dcmdrle = require_dcmtk("dcmdrle")
    src, dst = tmp_path / "rle.dcm", tmp_path / "native.dcm"
    make_dataset(info, [encode(f, info) for f in frames], RLELossless).save_as(src, enforce_file_format=True)
    done = subprocess.run([dcmdrle, str(src), str(dst)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = pydicom.dcmread(dst)
    assert np.array_equal(np.stack(list(iter_frames(out))), np.stack(frames))


@pytest.mark.interop
@pytest.mark.parametrize("info, frames", _interop_frames())
def test_we_decode_dcmtk_dcmcrle_output(info: FrameInfo, frames: list[np.ndarray], tmp_path: Path) -> None:
    dcmcrle = require_dcmtk("dcmcrle")
    src, dst = tmp_path / "native.dcm", tmp_path / "rle.dcm"
    make_dataset(info, frames).save_as(src, enforce_file_format=True)
    done = subprocess.run([dcmcrle, str(src), str(dst)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = pydicom.dcmread(dst)
    assert out.file_meta.TransferSyntaxUID == RLELossless
    streams = list(generate_frames(out.PixelData, number_of_frames=len(frames)))
    assert np.array_equal(np.stack([decode(s, info) for s in streams]), np.stack(frames))


def _gdcm_encoder_frames() -> list:
    # GDCM's RLE encoder aborts on an assertion for odd pixel counts of
    # colour images and for single-column images; those are left out.
    return reference_params(
        lambda i: i.bits_allocated in (8, 16) and i.columns > 1 and i.rows > 1
        and (i.samples_per_pixel == 1 or (i.rows * i.columns) % 2 == 0)
    )


def _gdcm_decoder_frames() -> list:
    # GDCM's RLE decoder scrambles 16-bit colour (also pydicom's own
    # SC_rgb_rle_16bit.dcm sample), so that case is left out.
    return reference_params(
        lambda i: i.bits_allocated in (8, 16) and i.rows * i.columns > 1
        and not (i.samples_per_pixel == 3 and i.bits_allocated == 16)
    )


@pytest.mark.interop
@pytest.mark.parametrize("info, frames", _gdcm_encoder_frames())
def test_we_decode_gdcmconv_rle_output(info: FrameInfo, frames: list[np.ndarray], tmp_path: Path) -> None:
    gdcmconv = require("gdcmconv", "gdcm")
    src, dst = tmp_path / "native.dcm", tmp_path / "rle.dcm"
    make_dataset(info, frames).save_as(src, enforce_file_format=True)
    done = subprocess.run([gdcmconv, "--rle", str(src), str(dst)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = pydicom.dcmread(dst)
    assert out.file_meta.TransferSyntaxUID == RLELossless
    streams = list(generate_frames(out.PixelData, number_of_frames=len(frames)))
    assert np.array_equal(np.stack([decode(s, info) for s in streams]), np.stack(frames))


@pytest.mark.interop
@pytest.mark.parametrize("info, frames", _gdcm_decoder_frames())
def test_gdcmconv_decodes_ours(info: FrameInfo, frames: list[np.ndarray], tmp_path: Path) -> None:
    gdcmconv = require("gdcmconv", "gdcm")
    src, dst = tmp_path / "rle.dcm", tmp_path / "native.dcm"
    make_dataset(info, [encode(f, info) for f in frames], RLELossless).save_as(src, enforce_file_format=True)
    done = subprocess.run([gdcmconv, "--raw", str(src), str(dst)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = pydicom.dcmread(dst)
    assert np.array_equal(np.stack(list(iter_frames(out))), np.stack(frames))
