"""The recompression policy: every registered codec and the native targets
over corpus images, each pass-through reason on a real crafted dataset,
attribute preservation, and inputs in every transfer syntax we read."""

from __future__ import annotations

import copy
import struct
import time
from dataclasses import replace
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

import gateway.codecs as registry
import gateway.pipeline.policy as pipeline
from gateway.codecs import all_codecs, get_codec
from gateway.codecs.base import FrameInfo
from gateway.codecs.rle import encode
from gateway.errors import CodecNotFoundError, GatewayError
from gateway.pipeline import Outcome, recompress, recompress_file
from gateway.pipeline.decoders import VERIFYING_DECODERS
from gateway.pipeline.pixels import frame_info, iter_frames
from gateway.pipeline.verify import compare_pixels
from tests.conftest import pydicom_file
from tests.corpus import corpus_params
from tests.images import make_dataset

NATIVE = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
TARGETS = [pytest.param(c.uid, id=c.name) for c in all_codecs()] + [
    pytest.param(uid, id=uid.keyword) for uid in NATIVE
]
CHANGEABLE = {"PixelData", "PlanarConfiguration", "ExtendedOffsetTable", "ExtendedOffsetTableLengths"}

MONO = FrameInfo(rows=6, columns=9, bits_allocated=16, bits_stored=12)
_J2K_TARGETS = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202")
RGB = FrameInfo(rows=5, columns=4, samples_per_pixel=3, bits_allocated=8, bits_stored=8,
                photometric_interpretation="RGB")


def _testdata(name: str) -> Dataset:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not available")
    return pydicom.dcmread(path)


def _frames(info: FrameInfo, count: int = 1, seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    low, high = info.value_range
    return [rng.integers(low, high, size=info.shape, endpoint=True).astype(info.dtype) for _ in range(count)]


def _reread(ds: Dataset) -> Dataset:
    """Write `ds` as a DICOM file and read it back, as the next hop would."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _values(ds: Dataset) -> dict:
    return {elem.keyword or str(elem.tag): elem.value for elem in ds if elem.keyword not in CHANGEABLE}


def _assert_recompressed(ds: Dataset, outcome: Outcome, target: str) -> None:
    """The outcome is a faithful recompression of `ds` into `target`."""
    assert outcome.recompressed and outcome.reason is None
    out = outcome.dataset
    assert out is not ds
    assert outcome.transfer_syntax == target == out.file_meta.TransferSyntaxUID
    assert outcome.original_pixel_bytes == len(ds.PixelData)
    assert outcome.encoded_pixel_bytes == len(out.PixelData)
    assert compare_pixels(ds, out) is None
    # Every attribute except the pixel data and its layout is unchanged.
    expected, actual = _values(ds), _values(out)
    photometric = ds.get("PhotometricInterpretation")
    if photometric in ("YBR_RCT", "YBR_ICT"):
        photometric = "RGB"  # JPEG 2000 decoders undo the colour transform
    if target in _J2K_TARGETS and photometric == "RGB":
        photometric = "YBR_RCT"  # our JPEG 2000 and HTJ2K streams code RGB through the reversible colour transform
    if photometric != ds.get("PhotometricInterpretation"):
        assert actual.pop("PhotometricInterpretation") == photometric
        expected.pop("PhotometricInterpretation")
    assert actual == expected
    # PS3.10 7.1: the writer of the file is named in its meta; the rest stays as received
    writer = ("ImplementationClassUID", "ImplementationVersionName", "SourceApplicationEntityTitle")
    skip = ("TransferSyntaxUID", "FileMetaInformationGroupLength", *writer)
    meta_in = {e.keyword: e.value for e in ds.file_meta if e.keyword not in skip}
    meta_out = {e.keyword: e.value for e in out.file_meta if e.keyword not in skip}
    assert meta_out == meta_in
    assert out.file_meta.ImplementationClassUID == "2.25.53897576694086526053863854056254947965"
    assert str(out.file_meta.ImplementationVersionName).startswith("GATEWAY_")
    assert "SourceApplicationEntityTitle" not in out.file_meta
    if target not in NATIVE:
        assert out["PixelData"].VR == "OB" and out["PixelData"].is_undefined_length
        if int(ds.get("SamplesPerPixel", 1)) == 3:
            assert out.PlanarConfiguration == 0
    # What the next hop reads is still the same image.
    assert compare_pixels(ds, _reread(out)) is None


def _assert_passed(ds: Dataset, outcome: Outcome, *reason_parts: str) -> None:
    assert not outcome.recompressed
    assert outcome.dataset is ds
    assert outcome.reason and all(part in outcome.reason for part in reason_parts), outcome.reason
    assert outcome.encoded_pixel_bytes == outcome.original_pixel_bytes


# ---------------------------------------------------------------- corpus x targets


# The corpus images every target must pass through, with the reason; all the
# others are recompressed to every target (their source syntax excepted).
CORPUS_PASS_THROUGH = {
    "MR/siemens_12bit_signed.dcm": "bits above (0028,0101) 'Bits Stored' 12 hold data",
    # Encapsulated icons in a native file (its own syntax cannot describe them): DCMTK and GDCM read the file as
    # it is, and fail on the icons once the file names a compressed syntax.
    "MG/ge_mammo_screening.dcm": "'IconImageSequence' holds encapsulated Pixel Data (an icon)",
}


@pytest.mark.corpus
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("row", corpus_params(limit_per_series=2))
def test_corpus_images(row: dict, target: str) -> None:
    ds = pydicom.dcmread(row["file"])
    before = copy.deepcopy(ds)
    outcome = recompress(ds, target)
    source = str(ds.file_meta.TransferSyntaxUID)
    reason = "already in target syntax" if source == target else CORPUS_PASS_THROUGH.get(row["path"])
    if reason is None:
        _assert_recompressed(ds, outcome, target)
    else:
        _assert_passed(ds, outcome, reason)
    assert ds == before, "the input dataset was modified"


# ---------------------------------------------------------------- inputs in every syntax we read


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(
    "name",
    [
        "MR_small_bigendian.dcm",  # explicit VR big endian, 16 bit signed
        "SC_rgb_small_odd_big_endian.dcm",  # big endian colour, odd size
        "rtdose_expb.dcm",  # big endian, 32 bit, multi-frame
        "image_dfl.dcm",  # deflated
        "MR_small_RLE.dcm",  # RLE from another encoder
        "SC_rgb_rle_16bit_2frame.dcm",
        "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless SV1 colour
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
        "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
        "GDCMJ2K_TextGBR.dcm",  # JPEG 2000 lossless, YBR_RCT colour
        "MR_small_implicit.dcm",
        "examples_palette.dcm",
    ],
)
def test_inputs_of_every_syntax(name: str, target: str) -> None:
    ds = _testdata(name)
    outcome = recompress(ds, target)
    if str(ds.file_meta.TransferSyntaxUID) == target:
        _assert_passed(ds, outcome, "already in target syntax")
        return
    info = frame_info(ds)
    if info.photometric_interpretation == "YBR_RCT":
        info = replace(info, photometric_interpretation="RGB")
    if target not in NATIVE and get_codec(target).supports(info):
        _assert_passed(ds, outcome, "cannot carry this image")
        return
    _assert_recompressed(ds, outcome, target)
    if info.photometric_interpretation == "RGB" and name.startswith("GDCMJ2K"):  # YBR_RCT decoded as RGB
        assert outcome.dataset.PhotometricInterpretation == ("YBR_RCT" if target in _J2K_TARGETS else "RGB")


@pytest.mark.parametrize("target", TARGETS)
def test_pydicom_compressed_input(target: str) -> None:
    import jpeg_ls  # noqa: F401  (pydicom writes JPEG-LS with it)
    ds = make_dataset(MONO, _frames(MONO, 3))
    ds.compress(JPEGLSLossless, encoding_plugin="pyjpegls")
    outcome = recompress(ds, target)
    if target == JPEGLSLossless:
        _assert_passed(ds, outcome, "already in target syntax")
    else:
        _assert_recompressed(ds, outcome, target)


def test_big_endian_word_data_outside_pixels_is_swapped() -> None:
    """OW values (here Overlay Data) read from a big endian file keep their 16-bit words.

    PS3.5 7.3: OW is a stream of 16-bit words in the syntax's byte order, so
    writing them little endian swaps each word's bytes.
    """
    ds = make_dataset(MONO, _frames(MONO))
    words = np.arange(0x0102, 0x0102 + 8 * 0x0101, 0x0101, dtype=np.uint16)
    ds.add_new(0x60003000, "OW", words.astype(">u2").tobytes())
    ds.add_new(0x00091010, "OB", b"\x01\x02\x03\x04")  # bytes: never swapped
    icon = Dataset()
    icon.Rows, icon.Columns, icon.BitsAllocated = 2, 4, 16
    icon.PixelData = words.astype(">u2").tobytes()
    icon["PixelData"].VR = "OW"
    ds.IconImageSequence = [icon]
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.PixelData = b"".join(f.astype(">u2").tobytes() for f in _frames(MONO))
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=False, little_endian=False)
    buffer.seek(0)
    big = pydicom.dcmread(buffer)
    before = big[0x60003000].value
    for target in (RLELossless, ExplicitVRLittleEndian):
        outcome = recompress(big, target)
        assert outcome.recompressed and compare_pixels(big, outcome.dataset) is None
        back = _reread(outcome.dataset)
        assert np.array_equal(np.frombuffer(back[0x60003000].value, "<u2"), words)
        assert back[0x00091010].value == b"\x01\x02\x03\x04"
        assert np.array_equal(np.frombuffer(back.IconImageSequence[0].PixelData, "<u2"), words)
        assert big[0x60003000].value == before, "the input dataset was modified"


@pytest.mark.parametrize("codec", [pytest.param(c, id=c.name) for c in all_codecs()])
@pytest.mark.parametrize("info", [RGB, FrameInfo(rows=3, columns=5, bits_allocated=8, bits_stored=8)],
                         ids=["rgb8", "mono8_odd"])
def test_codecs_read_fragments_padded_to_even_length(codec, info: FrameInfo) -> None:
    """PS3.5 A.4: an odd-length codestream is stored with one trailing pad byte,
    and that is what every reader (and the pipeline's verification) gets back."""
    if codec.supports(info):
        pytest.skip(f"{codec.name} does not carry {info}")
    frame = _frames(info)[0]
    stream = codec.encode_frame(frame, info)
    padded = stream + b"\x00" * (len(stream) & 1)
    assert np.array_equal(codec.decode_frame(padded, info), frame)


# ---------------------------------------------------------------- every pass-through reason


def test_float_pixel_data() -> None:
    ds = make_dataset(MONO, _frames(MONO))
    del ds.PixelData
    ds.BitsAllocated = 32
    ds.FloatPixelData = np.zeros(MONO.rows * MONO.columns, np.float32).tobytes()
    _assert_passed(ds, recompress(ds, RLELossless), "floating point")


def test_one_bit_pixel_data() -> None:
    info = FrameInfo(rows=8, columns=8, bits_allocated=8, bits_stored=1)
    ds = make_dataset(info, [np.zeros((8, 8), np.uint8)])
    ds.BitsAllocated = 1
    ds.PixelData = b"\x55" * 8
    _assert_passed(ds, recompress(ds, RLELossless), "'Bits Allocated' 1")


def test_real_one_bit_file() -> None:
    ds = _testdata("liver_1frame.dcm")
    _assert_passed(ds, recompress(ds, RLELossless), "'Bits Allocated' 1")


@pytest.mark.parametrize("target", TARGETS)
def test_data_above_bits_stored(target: str) -> None:
    frames = _frames(MONO)
    frames[0][2, 3] = 0xF123  # 12-bit image with data in the top 4 bits
    ds = make_dataset(MONO, frames)
    outcome = recompress(ds, target)
    if target == ExplicitVRLittleEndian:
        _assert_passed(ds, outcome, "already in target syntax")
    else:
        _assert_passed(ds, outcome, "frame 1", "Bits Stored")


def test_signed_data_not_sign_extended_is_kept() -> None:
    info = FrameInfo(rows=2, columns=2, bits_allocated=16, bits_stored=12, pixel_representation=1)
    frames = [np.array([[-1, 5], [0x07FF, 0x0800]], np.int16)]  # 0x0800 is not a sign-extended 12-bit value
    ds = make_dataset(info, frames)
    _assert_passed(ds, recompress(ds, RLELossless), "Bits Stored")


# Values of a 12-bit image with data in the four bits above Bits Stored: a codec at precision 12 drops them.
_HIGH_WORDS = np.array([[0xF673, 0x0001], [0x8FFF, 0x0123]], np.uint16)


def _encoded_words(uid: str, words: np.ndarray) -> bytes:
    """`words` coded as 16-bit values, every bit of them, by our encoder of `uid` (an independent decoder reads it)."""
    full = FrameInfo(rows=words.shape[0], columns=words.shape[1], bits_allocated=16, bits_stored=16)
    return get_codec(uid).encode_frame(words, full)


@pytest.mark.parametrize("uid", [RLELossless, JPEGLosslessSV1])
def test_compressed_data_above_bits_stored_is_kept(uid: str) -> None:
    """As native data with such bits is: decoded and masked to Bits Stored, the loss would not even show."""
    info = FrameInfo(rows=2, columns=2, bits_allocated=16, bits_stored=12)
    ds = make_dataset(info, [_encoded_words(uid, _HIGH_WORDS)], uid)
    _assert_passed(ds, recompress(ds, JPEGLSLossless), "bits above (0028,0101) 'Bits Stored' 12 hold data")


def test_signed_rle_not_sign_extended_is_kept_as_native_data_is() -> None:
    """RLE carries every bit of a word, as native data does: 0x0800 is not a sign-extended 12-bit value."""
    info = FrameInfo(rows=2, columns=2, bits_allocated=16, bits_stored=12, pixel_representation=1)
    words = np.array([[0xFFFF, 0x0005], [0x07FF, 0x0800]], np.uint16)
    ds = make_dataset(info, [_encoded_words(RLELossless, words)], RLELossless)
    _assert_passed(ds, recompress(ds, JPEGLSLossless), "Bits Stored")


def test_signed_jpeg_ls_at_its_precision_is_recompressed() -> None:
    """A JPEG-family codestream has no sign: a 12-bit signed image holds 12-bit patterns, which are no hidden data."""
    import jpeg_ls

    values = np.random.default_rng(5).integers(-2048, 2048, (16, 16)).astype(np.int16)
    values[0, :2] = -2048, 2047
    patterns = (values.astype(np.int32) & 0x0FFF).astype(np.uint16)
    info = FrameInfo(rows=16, columns=16, bits_allocated=16, bits_stored=12, pixel_representation=1)
    ds = make_dataset(info, [bytes(jpeg_ls.encode(patterns))], JPEGLSLossless)  # CharLS: precision of the values
    outcome = recompress(ds, RLELossless)
    _assert_recompressed(ds, outcome, RLELossless)
    assert np.array_equal(next(iter_frames(_reread(outcome.dataset))), values)


@pytest.mark.parametrize("extra, kept", [(0, False), (2, True), (2048, True)])
def test_native_pixel_data_longer_than_its_attributes_say_is_kept(extra: int, kept: bool) -> None:
    """Bytes past the frames the attributes describe (a second frame without Number of Frames, say) would be
    dropped by recompressing the described ones; only an odd length's pad byte may follow them."""
    info = FrameInfo(rows=3, columns=5, bits_allocated=8, bits_stored=8)  # 15 bytes: one pad byte
    frames = _frames(info)
    ds = make_dataset(info, frames)
    ds.PixelData = frames[0].tobytes() + b"\0" + b"\1" * extra
    outcome = recompress(ds, RLELossless)
    if kept:
        _assert_passed(ds, outcome, f"has {16 + extra} bytes, 15 expected")
    else:
        _assert_recompressed(ds, outcome, RLELossless)


@pytest.mark.parametrize("offsets, reason", [(False, "follow the end of its codestream"),
                                              (True, "more frames than (0028,0008) 'Number of Frames' 1")])
def test_a_second_codestream_where_one_frame_is_declared_is_kept(offsets: bool, reason: str) -> None:
    """Without offsets a frame's fragments are one codestream, and a decoder stops at its end marker; with
    offsets listing two frames the second is not the image's either: recompressing would drop or add one."""
    info = FrameInfo(rows=4, columns=4, bits_allocated=8, bits_stored=8)
    first, second = _frames(info, 2)
    codec = get_codec(JPEGLSLossless)
    ds = make_dataset(info, [codec.encode_frame(first, info)], JPEGLSLossless)
    ds.PixelData = encapsulate([codec.encode_frame(first, info), codec.encode_frame(second, info)], has_bot=offsets)
    _assert_passed(ds, recompress(ds, RLELossless), reason)


def test_an_irreversible_codestream_labelled_lossless_is_kept() -> None:
    """The 9-7 wavelet is lossy whatever the transfer syntax says: its decoded values are not the original's."""
    import imagecodecs

    info = FrameInfo(rows=32, columns=32, bits_allocated=16, bits_stored=16)
    [frame] = _frames(info)
    stream = imagecodecs.jpeg2k_encode(frame, level=30, reversible=False, codecformat="J2K")
    ds = make_dataset(info, [stream], JPEG2000Lossless)
    _assert_passed(ds, recompress(ds, RLELossless), "irreversible 9-7 wavelet")


_JPEG_LOSSLESS_LABELS = [pytest.param("1.2.840.10008.1.2.4.57", id="JPEGLossless"),
                         pytest.param(JPEGLosslessSV1, id="JPEGLosslessSV1")]


def _scan_header_byte(stream: bytes, back: int, value: int) -> bytes:
    """`stream` with the byte `back` bytes before the end of its SOS segment set to `value`.

    The SOS segment ends with Ss, Se, Ah|Al (T.81 B.2.3) or NEAR, ILV, Ah|Al (T.87 C.2.3).
    """
    data = bytearray(stream)
    at = data.index(b"\xff\xda")
    data[at + 2 + ((data[at + 2] << 8) | data[at + 3]) - back] = value
    return bytes(data)


def _textured(info: FrameInfo) -> np.ndarray:
    y, x = np.mgrid[0:info.rows, 0:info.columns]
    noise = np.random.default_rng(0).integers(0, 50, info.shape)
    return (1000 + 20 * x + 7 * y + noise).astype(info.dtype)


def _assert_kept_as_lossy(ds: Dataset, *reason_parts: str) -> None:
    """Kept as received, whatever the target (its own syntax included), and not taken for damage."""
    for target in (RLELossless, str(ds.file_meta.TransferSyntaxUID)):
        outcome = recompress(ds, target)
        _assert_passed(ds, outcome, *reason_parts)
        assert not outcome.malformed and outcome.reason.startswith("unsupported image"), outcome.reason


def test_a_near_lossless_jpeg_ls_codestream_labelled_lossless_is_kept() -> None:
    """NEAR = 3 in the scan header: each decoded value may be 3 away from the original, whatever the
    syntax says; re-encoding them losslessly would pass the altered values off as the original ones."""
    import jpeg_ls

    info = FrameInfo(rows=32, columns=32, bits_allocated=16, bits_stored=12)
    frame = _textured(info)
    stream = bytes(jpeg_ls.encode(frame, lossy_error=3))
    assert not np.array_equal(jpeg_ls.decode(np.frombuffer(stream, np.uint8)), frame), "lossy, as meant"
    _assert_kept_as_lossy(make_dataset(info, [stream], JPEGLSLossless), "NEAR=3")
    lossless = make_dataset(info, [bytes(jpeg_ls.encode(frame))], JPEGLSLossless)  # the same, NEAR = 0
    assert recompress(lossless, RLELossless).recompressed


@pytest.mark.parametrize("uid", [*_JPEG_LOSSLESS_LABELS, pytest.param(JPEGLSLossless, id="JPEGLSLossless")])
def test_a_point_transform_under_a_lossless_label_is_kept(uid: str) -> None:
    """Pt (Al of the scan header) != 0 codes each value shifted right by Pt (T.81 H.1.2.1): the decoder
    gives back ``original >> Pt << Pt``, not the original."""
    info = FrameInfo(rows=16, columns=16, bits_allocated=16, bits_stored=12)
    frame = _textured(info)
    stream = get_codec(uid).encode_frame(frame, info)
    assert recompress(make_dataset(info, [stream], uid), RLELossless).recompressed
    _assert_kept_as_lossy(make_dataset(info, [_scan_header_byte(stream, 1, 0x01)], uid), "point transform Pt=1")


@pytest.mark.parametrize("name, sof", [("SC_rgb_jpeg_dcmtk.dcm", "SOF0"), ("JPEG-lossy.dcm", "SOF1")])
@pytest.mark.parametrize("uid", [*_JPEG_LOSSLESS_LABELS, pytest.param(JPEGLSLossless, id="JPEGLSLossless")])
def test_a_dct_codestream_under_a_lossless_label_is_kept(uid: str, name: str, sof: str) -> None:
    """A DCT codestream's frame header says it is lossy, whatever the label: libjpeg decodes a baseline
    one (SOF0) labelled lossless all the same, and refuses an extended one (SOF1), which is not damaged."""
    ds = _testdata(name)
    ds.file_meta.TransferSyntaxUID = uid
    _assert_kept_as_lossy(ds, f"frame header is {sof} (DCT: lossy)")


@pytest.mark.parametrize("uid", _JPEG_LOSSLESS_LABELS)
def test_an_arithmetic_coded_lossless_codestream_under_a_huffman_label_is_kept_and_not_called_lossy(uid: str) -> None:
    """SOF11 is lossless too (T.81 Table B.1), but not the process its label names: kept as received, for
    what it is."""
    info = FrameInfo(rows=16, columns=16, bits_allocated=16, bits_stored=12)
    stream = bytearray(get_codec(uid).encode_frame(_textured(info), info))
    at = stream.index(b"\xff\xc3")
    stream[at + 1] = 0xCB  # the frame header of the arithmetic-coded lossless process
    _assert_kept_as_lossy(make_dataset(info, [bytes(stream)], uid), "frame header is SOF11 (lossless), not the SOF3")
    outcome = recompress(make_dataset(info, [bytes(stream)], uid), RLELossless)
    assert "lossy" not in outcome.reason


def test_a_codestream_whose_markers_cannot_be_followed_is_not_taken_for_lossless() -> None:
    """Bytes where a marker should be end the walk through the headers, yet a decoder may skip them:
    what lies beyond (a near-lossless scan) is never seen, so nothing shows the stream is lossless."""
    import jpeg_ls

    info = FrameInfo(rows=32, columns=32, bits_allocated=16, bits_stored=12)
    for near in (3, 0):
        stream = bytes(jpeg_ls.encode(_textured(info), lossy_error=near))
        at = stream.index(b"\xff\xda")
        _assert_kept_as_lossy(make_dataset(info, [stream[:at] + b"\x00\x11\x22" + stream[at:]], JPEGLSLossless),
                              "cannot be followed")


def _declaring(stream: bytes, rows: int, columns: int) -> bytes:
    """A JPEG-LS `stream` whose SOF55 segment declares `rows` x `columns` samples."""
    data = bytearray(stream)
    at = data.index(b"\xff\xf7")
    data[at + 5:at + 9] = rows.to_bytes(2, "big") + columns.to_bytes(2, "big")
    return bytes(data)


def test_a_codestream_declaring_a_huge_image_is_not_decoded() -> None:
    """A decoder allocates what the codestream declares: a few bytes declaring 60000 x 60000 samples would
    take 7 GB.  It is checked against the attributes before any decoder sees it."""
    info = FrameInfo(rows=8, columns=8, bits_allocated=16, bits_stored=16)
    stream = _declaring(get_codec(JPEGLSLossless).encode_frame(_frames(info)[0], info), 60000, 60000)
    ds = make_dataset(info, [stream], JPEGLSLossless)
    started = time.perf_counter()
    _assert_passed(ds, recompress(ds, RLELossless), "declares 60000 x 60000 samples, the attributes 8 x 8")
    assert time.perf_counter() - started < 5


def test_attributes_declaring_a_frame_above_the_bound_are_not_decoded() -> None:
    info = FrameInfo(rows=8, columns=8, bits_allocated=16, bits_stored=16)
    stream = _declaring(get_codec(JPEGLSLossless).encode_frame(_frames(info)[0], info), 60000, 60000)
    ds = make_dataset(info, [stream], JPEGLSLossless)
    ds.Rows = ds.Columns = 60000
    started = time.perf_counter()
    _assert_passed(ds, recompress(ds, RLELossless), "7200000000 bytes, above the 268435456 a frame may take")
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("codec", [pytest.param(c, id=c.name) for c in all_codecs()])
def test_codec_refuses_the_image(codec) -> None:
    ds = _testdata("SC_ybr_full_422_uncompressed.dcm")
    outcome = recompress(ds, codec.uid)
    # Refused by the codec's profile, or by the decoder of subsampled native data.
    _assert_passed(ds, outcome, "YBR_FULL_422")


@pytest.mark.parametrize("codec", [pytest.param(c, id=c.name) for c in all_codecs()])
def test_codec_refuses_the_bit_depth(codec) -> None:
    info = FrameInfo(rows=4, columns=4, bits_allocated=32, bits_stored=32)
    if codec.supports(info) is None:
        pytest.skip(f"{codec.name} carries 32-bit data")
    ds = make_dataset(info, _frames(info))
    _assert_passed(ds, recompress(ds, codec.uid), "cannot carry this image", "32")


def test_ybr_422_to_native_is_kept() -> None:
    ds = _testdata("SC_ybr_full_422_uncompressed.dcm")
    _assert_passed(ds, recompress(ds, ImplicitVRLittleEndian), "YBR_FULL_422")


@pytest.mark.parametrize(
    "name",
    ["SC_rgb_jpeg_dcmtk.dcm", "JPGExtended.dcm", "JPEG2000.dcm", "693_J2KI.dcm", "JPEGLSNearLossless_16.dcm"],
)
@pytest.mark.parametrize("target", TARGETS)
def test_lossy_sources_are_kept(name: str, target: str) -> None:
    ds = _testdata(name)
    _assert_passed(ds, recompress(ds, target), "lossy-compressed source")


def test_unknown_source_syntax() -> None:
    ds = make_dataset(MONO, [b"\x00" * 64], RLELossless)
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6"
    _assert_passed(ds, recompress(ds, ExplicitVRLittleEndian), "unknown transfer syntax 1.2.3.4.5.6")


def test_no_pixel_data() -> None:
    ds = _testdata("test-SR.dcm")
    outcome = recompress(ds, RLELossless)
    _assert_passed(ds, outcome, "no pixel data")
    assert outcome.original_pixel_bytes == 0


def test_already_in_target_syntax() -> None:
    ds = make_dataset(MONO, [encode(f, MONO) for f in _frames(MONO)], RLELossless)
    for name in (RLELossless, "RLELossless", "rle"):
        _assert_passed(ds, recompress(ds, name), "already in target syntax")


def test_corrupt_compressed_input() -> None:
    ds = make_dataset(MONO, [b"\x01\x00\x00\x00" + b"\x00" * 60 + b"\x05\x01"], RLELossless)
    _assert_passed(ds, recompress(ds, ExplicitVRLittleEndian), "decoding failed")


def test_short_native_input() -> None:
    ds = make_dataset(MONO, _frames(MONO))
    ds.PixelData = ds.PixelData[:20]
    _assert_passed(ds, recompress(ds, RLELossless), "decoding failed", "7FE0,0010")


def test_missing_attributes_and_meta() -> None:
    ds = make_dataset(MONO, _frames(MONO))
    del ds.Rows
    _assert_passed(ds, recompress(ds, RLELossless), "decoding failed", "Rows")
    ds = make_dataset(MONO, _frames(MONO))
    del ds.file_meta.TransferSyntaxUID
    outcome = recompress(ds, RLELossless)
    _assert_passed(ds, outcome, "decoding failed", "Transfer Syntax UID")
    assert outcome.transfer_syntax == ""


@settings(max_examples=80, deadline=None)
@given(st.binary(min_size=2, max_size=300), st.booleans(), st.sampled_from([ExplicitVRLittleEndian, "rle"]))
def test_garbage_pixel_data_never_raises(data: bytes, as_fragment: bool, target: str) -> None:
    ds = make_dataset(MONO, [data], RLELossless)
    if not as_fragment:  # not even a valid item structure
        ds.PixelData = data + b"\x00" * (len(data) & 1)
    outcome = recompress(ds, target)
    if outcome.recompressed:  # the bytes happened to be a valid frame
        assert compare_pixels(ds, outcome.dataset) is None
    else:
        assert outcome.dataset is ds and outcome.reason


def test_verification_mismatch_of_reference_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    real = VERIFYING_DECODERS[RLELossless]

    def off_by_one(data: bytes, info: FrameInfo) -> np.ndarray:
        frame = real(data, info)
        frame[0, 0] ^= 1
        return frame

    monkeypatch.setitem(VERIFYING_DECODERS, RLELossless, off_by_one)
    ds = make_dataset(MONO, _frames(MONO, 2))
    outcome = recompress(ds, RLELossless)
    _assert_passed(ds, outcome, "verification failed", "(off_by_one)", "frame 1", "row 0, column 0")
    assert outcome.verify_seconds > 0


def test_verification_mismatch_of_our_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    codec = get_codec(RLELossless)

    def wrong(data: bytes, info: FrameInfo) -> np.ndarray:
        frame = codec.decode_frame(data, info)
        frame[-1, -1] = frame[-1, -1] ^ 2
        return frame

    monkeypatch.setitem(registry._REGISTRY, codec.uid, replace(codec, decode_frame=wrong))
    ds = make_dataset(MONO, _frames(MONO))
    _assert_passed(ds, recompress(ds, RLELossless), "verification failed", "(ours/rle)")


def test_reference_decoder_that_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(data: bytes, info: FrameInfo) -> np.ndarray:
        raise ValueError("cannot decode")

    monkeypatch.setitem(VERIFYING_DECODERS, RLELossless, broken)
    ds = make_dataset(MONO, _frames(MONO))
    _assert_passed(ds, recompress(ds, RLELossless), "verification failed", "ValueError")


def test_proof_names_the_decoders_and_hashes_what_each_decoded() -> None:
    """The pixel hash is pydicom's raw pixel_array hashed; ours and the reference decoder each decoded that."""
    import hashlib

    from pydicom.pixels import pixel_array

    ds = pydicom_file("MR_small_jpeg_ls_lossless.dcm")
    truth = hashlib.sha256(np.ascontiguousarray(pixel_array(ds, raw=True, decoding_plugin="pylibjpeg"))
                           .tobytes()).hexdigest()
    outcome = recompress(ds, RLELossless)
    assert outcome.recompressed
    assert outcome.source_decoder == "pylibjpeg-libjpeg"
    assert outcome.pixel_hash == truth
    assert outcome.verified_by == (("ours/rle", truth), ("pylibjpeg-rle", truth))


def test_original_is_never_decoded_by_our_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    """A JPEG-LS original is read by libjpeg: our JPEG-LS decoder, broken here, is not consulted."""
    codec = get_codec("JPEGLSLossless")

    def refuse(data: bytes, info: FrameInfo) -> np.ndarray:
        raise AssertionError("our decoder must not read an original")

    monkeypatch.setitem(registry._REGISTRY, codec.uid, replace(codec, decode_frame=refuse))
    ds = pydicom_file("MR_small_jpeg_ls_lossless.dcm")
    outcome = recompress(ds, RLELossless)
    assert outcome.recompressed, outcome.reason
    assert outcome.source_decoder == "pylibjpeg-libjpeg"


def test_native_original_and_native_target_are_named() -> None:
    ds = pydicom_file("CT_small.dcm")
    outcome = recompress(ds, "ImplicitVRLittleEndian")
    assert outcome.recompressed and outcome.source_decoder == "native"
    assert [name for name, _ in outcome.verified_by] == ["native"]


def test_verify_false_skips_verification(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(data: bytes, info: FrameInfo) -> np.ndarray:
        raise AssertionError("must not be called")

    monkeypatch.setitem(VERIFYING_DECODERS, RLELossless, broken)
    ds = make_dataset(MONO, _frames(MONO))
    outcome = recompress(ds, RLELossless, verify=False)
    assert outcome.recompressed and outcome.verify_seconds == 0.0 and outcome.verified_by == ()
    monkeypatch.undo()
    assert compare_pixels(ds, outcome.dataset) is None


# ---------------------------------------------------------------- caller mistakes raise


def test_wrong_argument_types_raise() -> None:
    ds = make_dataset(MONO, _frames(MONO))
    with pytest.raises(TypeError):
        recompress("file.dcm", RLELossless)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        recompress(ds, 5)  # type: ignore[arg-type]


@pytest.mark.parametrize("target", ["NoSuchSyntax", "1.2.840.10008.1.2.4.203"], ids=["unknown", "no_codec"])
def test_unusable_target_raises(target: str) -> None:
    with pytest.raises(CodecNotFoundError):
        recompress(make_dataset(MONO, _frames(MONO)), target)


# ---------------------------------------------------------------- encapsulation and layout


def test_encapsulation_one_even_fragment_per_frame_with_offset_table() -> None:
    frames = _frames(RGB, 5)
    ds = make_dataset(RGB, frames)
    outcome = recompress(ds, RLELossless)
    _assert_recompressed(ds, outcome, RLELossless)
    value = outcome.dataset.PixelData
    # Basic Offset Table item, then one item per frame.
    tag, length = struct.unpack_from("<II", value)
    assert tag == 0xE000FFFE and length == 4 * 5
    offsets = struct.unpack_from("<5I", value, 8)
    position, items = 8 + length, []
    while position < len(value):
        tag, length = struct.unpack_from("<II", value, position)
        if tag == 0xE0DDFFFE:
            break
        assert tag == 0xE000FFFE and length % 2 == 0
        items.append(position - 8 - 4 * 5)
        position += 8 + length
    assert tuple(items) == offsets
    assert "ExtendedOffsetTable" not in outcome.dataset


def test_extended_offset_table_when_offsets_overflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "_BOT_LIMIT", 64)
    frames = _frames(MONO, 4)
    ds = make_dataset(MONO, frames)
    outcome = recompress(ds, RLELossless)
    _assert_recompressed(ds, outcome, RLELossless)
    out = outcome.dataset
    offsets = np.frombuffer(out.ExtendedOffsetTable, "<u8")
    lengths = np.frombuffer(out.ExtendedOffsetTableLengths, "<u8")
    assert len(offsets) == len(lengths) == 4 and offsets[0] == 0
    streams = list(generate_frames(out.PixelData, number_of_frames=4))
    assert [len(s) for s in streams] == [int(n) for n in lengths]
    assert np.array_equal(_reread(out).pixel_array, np.stack(frames))


def test_old_extended_offset_table_is_dropped() -> None:
    frames = _frames(MONO, 2)
    ds = make_dataset(MONO, [encode(f, MONO) for f in frames], RLELossless)
    value, offsets, lengths = encapsulate_extended([encode(f, MONO) for f in frames])
    ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = value, offsets, lengths
    outcome = recompress(ds, ExplicitVRLittleEndian)
    assert outcome.recompressed
    assert "ExtendedOffsetTable" not in outcome.dataset and "ExtendedOffsetTableLengths" not in outcome.dataset


def test_planar_configuration() -> None:
    frames = _frames(RGB, 2)
    ds = make_dataset(RGB, frames)
    ds.PlanarConfiguration = 1
    ds.PixelData = b"".join(f.transpose(2, 0, 1).tobytes() for f in frames)
    rle = recompress(ds, RLELossless)
    _assert_recompressed(ds, rle, RLELossless)
    assert rle.dataset.PlanarConfiguration == 0
    assert np.array_equal(_reread(rle.dataset).pixel_array, np.stack(frames))
    # Back to native: colour-by-pixel, as the RLE dataset now says.
    native = recompress(rle.dataset, ImplicitVRLittleEndian)
    _assert_recompressed(rle.dataset, native, ImplicitVRLittleEndian)
    assert native.dataset.PlanarConfiguration == 0
    assert native.dataset.PixelData == b"".join(f.tobytes() for f in frames)
    # Native to native keeps the planar layout the dataset declares.
    planar = recompress(ds, ImplicitVRLittleEndian)
    assert planar.dataset.PlanarConfiguration == 1 and planar.dataset.PixelData == ds.PixelData


def test_odd_length_native_output_is_padded() -> None:
    info = FrameInfo(rows=3, columns=3, bits_allocated=8, bits_stored=8)
    frames = _frames(info)
    ds = make_dataset(info, [encode(f, info) for f in frames], RLELossless)
    outcome = recompress(ds, ExplicitVRLittleEndian)
    _assert_recompressed(ds, outcome, ExplicitVRLittleEndian)
    assert outcome.dataset.PixelData == frames[0].tobytes() + b"\x00"
    assert outcome.dataset["PixelData"].VR == "OB"


def test_lossy_history_and_identity_are_kept() -> None:
    ds = make_dataset(MONO, _frames(MONO))
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = "8.5"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    outcome = recompress(ds, RLELossless)
    _assert_recompressed(ds, outcome, RLELossless)
    out = outcome.dataset
    assert out.LossyImageCompression == "01" and out.LossyImageCompressionMethod == "ISO_10918_1"
    assert out.SOPInstanceUID == ds.SOPInstanceUID == out.file_meta.MediaStorageSOPInstanceUID


def test_output_attributes_are_independent_of_the_input() -> None:
    ds = make_dataset(RGB, _frames(RGB))
    ds.PatientName  # accessed: a parsed element, not raw bytes
    ds.ReferencedImageSequence = [Dataset()]
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3"
    before = copy.deepcopy(ds)
    outcome = recompress(ds, RLELossless)
    out = outcome.dataset
    out.PatientName = "Other^Name"
    out.PlanarConfiguration = 1
    out.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    assert ds == before and ds.file_meta == before.file_meta
    # Sequences are shared by design (Outcome's docstring): not copied.
    assert out.ReferencedImageSequence[0] is ds.ReferencedImageSequence[0]


# ---------------------------------------------------------------- files


def test_recompress_file(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.dcm", tmp_path / "out.dcm"
    make_dataset(MONO, _frames(MONO, 2)).save_as(src, enforce_file_format=True)
    outcome = recompress_file(src, dst, "rle")
    assert outcome.recompressed
    written = pydicom.dcmread(dst)
    assert written.file_meta.TransferSyntaxUID == RLELossless
    assert compare_pixels(pydicom.dcmread(src), written) is None
    assert {p.name for p in tmp_path.iterdir()} == {"in.dcm", "out.dcm"}  # no partial file left


def test_recompress_file_passes_bytes_through(tmp_path: Path) -> None:
    src, dst = Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")), tmp_path / "out.dcm"
    outcome = recompress_file(src, dst, RLELossless)
    assert not outcome.recompressed and "lossy" in outcome.reason
    assert dst.read_bytes() == src.read_bytes()


def test_recompress_file_unreadable_raises(tmp_path: Path) -> None:
    src = tmp_path / "junk.dcm"
    src.write_bytes(b"not dicom at all")
    with pytest.raises((pydicom.errors.InvalidDicomError, GatewayError, OSError)):
        recompress_file(src, tmp_path / "out.dcm", RLELossless)
    assert not (tmp_path / "out.dcm").exists()


# ---------------------------------------------------------------- size policy


def test_encoding_that_would_inflate_is_dropped_when_asked() -> None:
    """Full-range noise grows under RLE: with allow_larger=False the original stays."""
    info = FrameInfo(rows=32, columns=32, bits_allocated=8, bits_stored=8)
    ds = make_dataset(info, _frames(info))
    grown = recompress(ds, RLELossless)
    _assert_recompressed(ds, grown, RLELossless)
    assert grown.encoded_pixel_bytes >= grown.original_pixel_bytes
    _assert_passed(ds, recompress(ds, RLELossless, allow_larger=False), "would not shrink")


def test_size_policy_keeps_encodings_that_shrink_and_native_targets() -> None:
    info = FrameInfo(rows=32, columns=32, bits_allocated=16, bits_stored=12)
    smooth = make_dataset(info, [np.full(info.shape, 100, np.uint16)])
    _assert_recompressed(smooth, recompress(smooth, RLELossless, allow_larger=False), RLELossless)
    noisy = make_dataset(info, _frames(info))
    compressed = recompress(noisy, JPEGLSLossless)
    assert compressed.recompressed
    # Decoding to a native syntax always grows the data and is never refused for it.
    back = recompress(compressed.dataset, ExplicitVRLittleEndian, allow_larger=False)
    _assert_recompressed(compressed.dataset, back, ExplicitVRLittleEndian)


# ---------------------------------------------------------------- the version of our private syntax written


def _smooth_frames(info: FrameInfo, count: int, seed: int = 11) -> list[np.ndarray]:
    """Smooth 12-bit frames with a little noise and drift: what a scanner sends, and what gwl shrinks."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:info.rows, 0:info.columns]
    return [np.clip(2000 + 1500 * np.sin((x + 4 * k) / 37.0) * np.cos(y / 53.0) + rng.normal(0, 6, info.shape),
                    0, 4095).astype(info.dtype) for k in range(count)]


def _stream_versions(ds: Dataset) -> list[int]:
    """The version byte (header offset 4) of every frame's GatewayLossless stream."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return [fragment[4] for fragment in generate_frames(ds.PixelData, number_of_frames=frames)]


def test_the_pipeline_writes_the_private_version_its_options_name() -> None:
    from gateway.codecs import private
    from gateway.config import private_options

    frames = _frames(MONO, 3) + _smooth_frames(MONO, 2)
    ds = make_dataset(MONO, frames)
    for options, written in [(None, private.VERSION), (private_options(1), 1), (private_options(2), 2)]:
        outcome = recompress(ds, "gwl", encode_options=options)
        _assert_recompressed(ds, outcome, private.UID)
        assert _stream_versions(outcome.dataset) == [written] * len(frames)
        assert outcome.encode_options == (() if options is None else (("version", written),))
        back = list(iter_frames(_reread(outcome.dataset)))
        assert all(np.array_equal(a, b) for a, b in zip(back, frames, strict=True))
    # Options of other syntaxes are not the target's business; a native target takes none.
    outcome = recompress(ds, RLELossless, encode_options=private_options(2))
    assert outcome.recompressed and outcome.encode_options == ()
    assert recompress(ds, ExplicitVRLittleEndian, encode_options=private_options(2)).encode_options == ()


def test_an_option_the_target_codec_does_not_take_is_a_caller_mistake() -> None:
    ds = make_dataset(MONO, _frames(MONO))
    with pytest.raises(TypeError, match="takes no encoder option 'version'"):
        recompress(ds, RLELossless, encode_options={RLELossless: {"version": 2}})
    with pytest.raises(TypeError, match="takes no encoder option 'level'"):
        recompress(ds, "gwl", encode_options={get_codec("gwl").uid: {"level": 9}})


@pytest.mark.parametrize("setting, written", [(None, 2), (1, 1), (2, 2)], ids=["default", "1", "2"])
def test_an_instance_carries_the_configured_private_version(tmp_path: Path, setting: int | None,
                                                            written: int, caplog) -> None:
    """The worker recompresses a received instance into the version `[compression] private_version`
    names (2 unless configured), bit-exact, and the proof record and the log say which."""
    import logging

    caplog.set_level(logging.INFO, logger="gateway")
    from gateway.codecs import private
    from gateway.record import RECORD_FILE, ProofRecord
    from gateway.spool import Spool
    from gateway.worker import process_instance
    from tests.conftest import build_config

    compression = {"transfer_syntax": "gwl"} | ({} if setting is None else {"private_version": setting})
    config = build_config(tmp_path, compression=compression)
    # Frames of 1 MiB: version 2 codes each in stripes; the later frames are coded from the previous one.
    info = FrameInfo(rows=1024, columns=512, bits_allocated=16, bits_stored=12)
    frames = _smooth_frames(info, 3)
    ds = make_dataset(info, frames)
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    spool = Spool(config.spool.directory)
    record = ProofRecord(config.spool.directory / RECORD_FILE)
    ident = spool.store_received(buffer.getvalue(), "MODALITY")
    assert process_instance(config, spool, ident, record=record)

    stored = pydicom.dcmread(spool.object_path(ident))
    assert stored.file_meta.TransferSyntaxUID == private.UID
    assert _stream_versions(stored) == [written] * len(frames)
    back = list(iter_frames(stored))
    assert len(back) == len(frames) and all(np.array_equal(a, b) for a, b in zip(back, frames, strict=True))
    assert compare_pixels(ds, stored) is None
    [entry] = record.find(str(ds.SOPInstanceUID))
    assert (entry["outcome"], entry["target_syntax"]) == ("recompressed", private.UID)
    assert entry["encode_options"] == f"version={written}"
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("encoded ")]
    assert f" syntax={private.UID} version={written} ratio=" in line


# ---------------------------------------------------------------- encapsulated pixel data in sequences

_JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"


def _icon(encapsulated: bool) -> Dataset:
    """An 8-bit 16 x 16 icon, its Pixel Data a JPEG Lossless codestream or native bytes."""
    icon = Dataset()
    icon.SamplesPerPixel, icon.PhotometricInterpretation, icon.Rows, icon.Columns = 1, "MONOCHROME2", 16, 16
    icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 8, 7, 0
    values = (np.arange(256, dtype=np.uint8) % 61).reshape(16, 16)
    if encapsulated:
        stream = get_codec(_JPEG_LOSSLESS).encode_frame(values, FrameInfo(16, 16, bits_allocated=8, bits_stored=8))
        icon.PixelData = encapsulate([stream])
        icon["PixelData"].VR, icon["PixelData"].is_undefined_length = "OB", True
    else:
        icon.PixelData = values.tobytes()
        icon["PixelData"].VR = "OB"
    return icon


def _with_icon(encapsulated: bool, *, private: bool = False) -> Dataset:
    """A JPEG Lossless CT-like image with an icon in the Icon Image Sequence or in a private sequence, read back
    from its bytes (its sequences raw, as the worker reads them)."""
    info = FrameInfo(32, 48, bits_stored=12)
    frame = (np.arange(32 * 48).reshape(32, 48) * 7 % 4096).astype(np.uint16)
    ds = make_dataset(info, [get_codec(_JPEG_LOSSLESS).encode_frame(frame, info)], _JPEG_LOSSLESS)
    if private:
        block = ds.private_block(0x0029, "ACME ICONS", create=True)
        block.add_new(0x10, "SQ", pydicom.Sequence([_icon(encapsulated)]))
    else:
        ds.IconImageSequence = pydicom.Sequence([_icon(encapsulated)])
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(BytesIO(buffer.getvalue()))


@pytest.mark.parametrize("target", ["RLELossless", "JPEGLSLossless", "JPEG2000Lossless", "ExplicitVRLittleEndian"])
@pytest.mark.parametrize("private", [False, True], ids=["icon-sequence", "private-sequence"])
def test_an_encapsulated_icon_keeps_the_instance_as_received(target: str, private: bool) -> None:
    """A file has one transfer syntax: an icon encapsulated in the received one would be read as the new one
    (DCMTK's dcmdrle and dcmdjpls, GDCM fail on the whole file), so the instance goes as received, with the
    hash of its pixels in the proof."""
    ds = _with_icon(encapsulated=True, private=private)
    outcome = recompress(ds, target)
    assert not outcome.recompressed
    assert "holds encapsulated Pixel Data (an icon)" in (outcome.reason or "")
    assert ("IconImageSequence" in outcome.reason) != private
    assert outcome.dataset is ds
    assert outcome.pixel_hash == pipeline.pixel_hash(list(iter_frames(ds)))


def test_a_native_icon_is_carried_as_it_is() -> None:
    ds = _with_icon(encapsulated=False)
    outcome = recompress(ds, "RLELossless")
    assert outcome.recompressed, outcome.reason
    assert outcome.dataset.IconImageSequence[0].PixelData == ds.IconImageSequence[0].PixelData


def test_an_encapsulated_icon_in_the_same_syntax_is_not_a_reason_to_keep() -> None:
    ds = _with_icon(encapsulated=True)
    outcome = recompress(ds, _JPEG_LOSSLESS)
    assert outcome.reason == "already in target syntax"
