"""JPEG-LS lossless codec: round trips, conformance with decoders we did not
write (CharLS through pyjpegls and imagecodecs, pylibjpeg-libjpeg), and
decoding of streams that other encoders wrote."""

from __future__ import annotations

import struct

import imagecodecs  # noqa: E402
import jpeg_ls  # noqa: E402  (a test dependency: missing, the suite must fail, not skip)
import libjpeg  # noqa: E402
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import JPEGLSLossless

from gateway.codecs import _jpegls_kernels as kernels
from gateway.codecs import get_codec, jpegls
from gateway.codecs.base import FrameInfo
from gateway.errors import CorruptCodestreamError, UnsupportedImageError
from gateway.pipeline.pixels import frame_info, high_bits_used, iter_frames
from tests.corpus import corpus_params
from tests.images import make_dataset, reference_params

CODEC = get_codec(JPEGLSLossless)


def _supported(info: FrameInfo) -> bool:
    return CODEC.supports(info) is None


def _via_pydicom(info: FrameInfo, streams: list[bytes], plugin: str) -> list[np.ndarray]:
    """Decode our codestreams with another project's decoder through pydicom (which sign-extends)."""
    ds = make_dataset(info, streams, JPEGLSLossless)
    ds.pixel_array_options(decoding_plugin=plugin)
    array = np.asarray(ds.pixel_array).reshape((len(streams), *info.shape))
    return [np.ascontiguousarray(f, dtype=info.dtype) for f in array]


def _pattern(frame: np.ndarray, info: FrameInfo) -> np.ndarray:
    """The unsigned P-bit pattern a JPEG-LS decoder returns for `frame`."""
    return frame.astype(np.int64) & ((1 << jpegls.precision(info)) - 1)


def _raw_decoders(stream: bytes) -> dict[str, np.ndarray]:
    """CharLS (two bindings) and libjpeg, called directly: the unsigned P-bit patterns."""
    return {
        "charls": jpeg_ls.decode(np.frombuffer(stream, dtype=np.uint8)),
        "imagecodecs": imagecodecs.jpegls_decode(stream),
        "libjpeg": libjpeg.decode(stream),
    }


def _assert_others_decode(stream: bytes, frame: np.ndarray, info: FrameInfo) -> None:
    expected = _pattern(frame, info)
    for name, decoded in _raw_decoders(stream).items():
        assert np.array_equal(np.asarray(decoded).reshape(info.shape).astype(np.int64), expected), name


def _charls_encode(frame: np.ndarray, info: FrameInfo, ilv: int) -> bytes:
    """CharLS's codestream for `frame` at precision Bits Stored with interleave mode `ilv`."""
    data = (frame.astype(np.int64) & ((1 << info.bits_stored) - 1)).astype(
        np.uint8 if info.bits_stored <= 8 else np.uint16)  # CharLS takes bytes up to P = 8
    if info.samples_per_pixel == 3 and ilv == 0:
        data = np.moveaxis(data, 2, 0)  # pyjpegls takes colour-by-plane input for ILV 0
    return bytes(jpeg_ls.encode_buffer(
        np.ascontiguousarray(data).tobytes(), info.rows, info.columns, info.samples_per_pixel,
        info.bits_stored, 0, interleave_mode=ilv if info.samples_per_pixel == 3 else 0,
    ))


# ---------------------------------------------------------------- parameters and kernels


@pytest.mark.parametrize(
    ("precision", "expected"),
    [(2, (3, 2, 3, 3)), (6, (63, 2, 3, 5)), (8, (255, 3, 7, 21)), (10, (1023, 6, 19, 72)),
     (12, (4095, 18, 67, 276)), (16, (65535, 18, 67, 276))],
)
def test_default_thresholds(precision: int, expected: tuple[int, int, int, int]) -> None:
    maxval, t1, t2, t3, reset = jpegls.default_parameters(precision)
    assert (maxval, t1, t2, t3) == expected and reset == 64


@pytest.mark.parametrize("precision", [2, 5, 8, 12, 16])
def test_quantiser_matches_the_plain_definition(precision: int) -> None:
    maxval, t1, t2, t3, _ = jpegls.default_parameters(precision)
    lut = kernels.quantiser(maxval, t1, t2, t3)

    def q(d: int) -> int:
        for bound, value in ((-t3, -4), (-t2, -3), (-t1, -2)):
            if d <= bound:
                return value
        if d < 0:
            return -1
        if d == 0:
            return 0
        for bound, value in ((t1, 1), (t2, 2), (t3, 3)):
            if d < bound:
                return value
        return 4

    assert [int(v) for v in lut] == [q(d) for d in range(-maxval, maxval + 1)]


# ---------------------------------------------------------------- round trips and conformance


@pytest.mark.parametrize(("info", "frames"), reference_params(_supported))
def test_reference_round_trip_and_other_decoders(info: FrameInfo, frames: list[np.ndarray]) -> None:
    modes = [None] if info.samples_per_pixel == 1 else [jpegls.ILV_NONE, jpegls.ILV_LINE, jpegls.ILV_SAMPLE]
    for ilv in modes:
        streams = [jpegls.encode(f, info, ilv) for f in frames]
        for frame, stream in zip(frames, streams):
            assert np.array_equal(CODEC.decode_frame(stream, info), frame)
            _assert_others_decode(stream, frame, info)
    # The DICOM view: pydicom with CharLS or libjpeg gives back the exact (sign-extended) values.
    streams = [CODEC.encode_frame(f, info) for f in frames]
    for plugin in ("pyjpegls", "pylibjpeg"):
        for frame, theirs in zip(frames, _via_pydicom(info, streams, plugin)):
            assert np.array_equal(theirs, frame), plugin


@pytest.mark.parametrize("ilv", [0, 1, 2])
@pytest.mark.parametrize("precision", [2, 3, 5, 8, 10, 12, 13, 16])
def test_byte_identical_to_charls(precision: int, ilv: int) -> None:
    """Same image, same parameters: CharLS and we write the same bytes (defaults need no LSE)."""
    alloc = 8 if precision <= 8 else 16
    info = FrameInfo(23, 31, 3, alloc, precision, 0, "RGB")
    rng = np.random.default_rng(precision)
    y, x = np.mgrid[0:23, 0:31]
    base = (y * 7 + x * 3) % (1 << precision)
    frame = np.stack([base, base // 2, (base + rng.integers(0, 3, base.shape)) % (1 << precision)], -1)
    frame[5:9] = 1
    frame = frame.astype(info.dtype)
    theirs = _charls_encode(frame, info, ilv)
    lse = theirs.find(b"\xff\xf8\x00\x0d\x01")
    if lse >= 0:
        # CharLS spells the parameters out from 13 bits on: they must be our defaults.
        assert struct.unpack_from(">5H", theirs, lse + 5) == jpegls.default_parameters(precision)
        theirs = theirs[:lse] + theirs[lse + 15:]
    assert jpegls.encode(frame, info, ilv) == theirs


def test_signed_is_the_masked_twos_complement_pattern() -> None:
    info = FrameInfo(1, 4, bits_stored=12, pixel_representation=1)
    frame = np.array([[-2048, -1, 0, 2047]], dtype=np.int16)
    stream = CODEC.encode_frame(frame, info)
    assert libjpeg.decode(stream).ravel().tolist() == [0x800, 0xFFF, 0, 0x7FF]
    assert np.array_equal(CODEC.decode_frame(stream, info), frame)


@pytest.mark.parametrize(
    "options", [{"restart": 1}, {"restart": 7}, {"preset": (5, 9, 30)}, {"preset": (1, 2, 4), "restart": 3}],
    ids=["restart-1", "restart-7", "lse", "lse-restart-3"],
)
@pytest.mark.parametrize("ilv", [0, 1, 2])
def test_restart_intervals_and_lse_are_read_alike(options: dict, ilv: int) -> None:
    """Streams with DRI/RSTm or an LSE segment: CharLS, libjpeg and we agree on them."""
    info = FrameInfo(29, 21, 3, 16, 12, 0, "RGB")
    rng = np.random.default_rng(ilv)
    frame = (rng.integers(0, 40, info.shape) + np.arange(29)[:, None, None] * 100).astype(np.uint16)
    frame[10:14] = 77
    stream = jpegls.encode(frame, info, ilv, **options)
    assert (b"\xff\xd0" in stream) == (options.get("restart", 29) < 29)
    assert np.array_equal(CODEC.decode_frame(stream, info), frame)
    _assert_others_decode(stream, frame, info)


@pytest.mark.corpus
@pytest.mark.parametrize("row", corpus_params())
def test_corpus_round_trip_and_other_decoders(row: dict) -> None:
    ds = pydicom.dcmread(row["file"])
    info = frame_info(ds)
    if CODEC.supports(info):
        pytest.skip(f"JPEG-LS Lossless cannot carry it: {CODEC.supports(info)}")
    for frame in iter_frames(ds):
        if high_bits_used(frame, info):
            pytest.skip("values in the unused high bits: the pipeline passes it through")
        stream = CODEC.encode_frame(frame, info)
        assert np.array_equal(CODEC.decode_frame(stream, info), frame)
        _assert_others_decode(stream, frame, info)


# ---------------------------------------------------------------- streams written by others


def _samples() -> list[tuple[FrameInfo, np.ndarray]]:
    rng = np.random.default_rng(11)
    y, x = np.mgrid[0:37, 0:29]
    smooth = (y * 50 + x * 30 + rng.integers(0, 40, (37, 29))).astype(np.int64)
    flat = smooth.copy()
    flat[8:20] = 9
    rgb = np.stack([smooth, smooth * 2, smooth[::-1]], -1)
    return [
        (FrameInfo(37, 29, bits_stored=16), (smooth * 20 % 65536).astype(np.uint16)),
        (FrameInfo(37, 29, bits_stored=12), (flat % 4096).astype(np.uint16)),
        (FrameInfo(37, 29, bits_allocated=8, bits_stored=8), (flat % 256).astype(np.uint8)),
        (FrameInfo(37, 29, bits_allocated=8, bits_stored=4), (flat % 16).astype(np.uint8)),
        (FrameInfo(37, 29, bits_allocated=16, bits_stored=8), (flat % 256).astype(np.uint16)),
        (FrameInfo(37, 29, 3, 8, 8, 0, "RGB"), (rgb % 256).astype(np.uint8)),
        (FrameInfo(37, 29, 3, 16, 16, 0, "RGB"), (rgb * 37 % 65536).astype(np.uint16)),
    ]


def _charls_params() -> list:
    return [
        pytest.param(info, frame, ilv, id=f"{info.samples_per_pixel}x{info.bits_allocated}_{info.bits_stored}-ilv{ilv}")
        for info, frame in _samples()
        for ilv in ((0, 1, 2) if info.samples_per_pixel == 3 else (0,))
    ]


@pytest.mark.parametrize(("info", "frame", "ilv"), _charls_params())
def test_decodes_charls_streams(info: FrameInfo, frame: np.ndarray, ilv: int) -> None:
    assert np.array_equal(CODEC.decode_frame(_charls_encode(frame, info, ilv), info), frame)


@pytest.mark.parametrize(("info", "frame"), _samples(), ids=lambda v: "" if isinstance(v, np.ndarray) else
                         f"{v.samples_per_pixel}x{v.bits_allocated}_{v.bits_stored}")
def test_decodes_imagecodecs_streams(info: FrameInfo, frame: np.ndarray) -> None:
    stream = bytes(imagecodecs.jpegls_encode(frame))
    # imagecodecs codes at the container's precision; read it as such.
    precision = struct.unpack_from(">B", stream, stream.index(b"\xff\xf7") + 4)[0]
    wide = FrameInfo(info.rows, info.columns, info.samples_per_pixel, info.bits_allocated,
                     precision, 0, info.photometric_interpretation)
    assert np.array_equal(CODEC.decode_frame(stream, wide), frame)


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm"])
def test_decodes_pydicom_test_files(name: str) -> None:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom's test file {name} is not available here")
    ds = pydicom.dcmread(path)
    info = frame_info(ds)
    ds.pixel_array_options(decoding_plugin="pyjpegls")
    expected = np.asarray(ds.pixel_array).reshape((-1, *info.shape))
    count = int(ds.get("NumberOfFrames", 1) or 1)
    for frame, stream in zip(expected, generate_frames(ds.PixelData, number_of_frames=count)):
        assert np.array_equal(CODEC.decode_frame(stream, info), frame)


# ---------------------------------------------------------------- what the codec refuses


@pytest.mark.parametrize(
    "info",
    [
        FrameInfo(4, 4, bits_allocated=8, bits_stored=1),
        FrameInfo(4, 4, bits_allocated=32, bits_stored=16),
        FrameInfo(4, 4, 3, 8, 8, 1, "RGB"),
        FrameInfo(4, 4, 1, 16, 12, 1, "PALETTE COLOR"),
        FrameInfo(4, 4, 3, 16, 12, 0, "YBR_FULL"),
        FrameInfo(4, 4, 3, 8, 8, 0, "YBR_FULL_422"),
        FrameInfo(4, 4, 1, 8, 8, 0, "RGB"),
    ],
    ids=["bits-stored-1", "alloc-32", "signed-rgb", "signed-palette", "ybr-full-16", "ybr-422", "rgb-1-sample"],
)
def test_forbidden_combinations(info: FrameInfo) -> None:
    reason = CODEC.supports(info)
    assert isinstance(reason, str) and reason
    if info.bits_allocated in (8, 16):
        with pytest.raises(UnsupportedImageError):
            CODEC.encode_frame(np.zeros(info.shape, info.dtype), info)


def test_values_outside_bits_stored_are_refused() -> None:
    info = FrameInfo(2, 2, bits_stored=12)
    frame = np.array([[0, 1], [4096, 3]], dtype=np.uint16)
    with pytest.raises(UnsupportedImageError):
        CODEC.encode_frame(frame, info)


def test_registered() -> None:
    assert get_codec("JPEGLSLossless") is CODEC
    assert get_codec("jpeg-ls") is CODEC
    assert CODEC.uid == "1.2.840.10008.1.2.4.80" and not CODEC.private


def _sample_stream() -> tuple[FrameInfo, np.ndarray, bytes]:
    info = FrameInfo(20, 24, bits_stored=12)
    frame = (np.indices(info.shape).sum(axis=0) * 40 % 4096).astype(np.uint16)
    return info, frame, CODEC.encode_frame(frame, info)


@pytest.mark.parametrize(
    "other",
    [FrameInfo(21, 24, bits_stored=12), FrameInfo(20, 25, bits_stored=12),
     FrameInfo(20, 24, 3, 16, 12, 0, "RGB"), FrameInfo(20, 24, bits_allocated=8, bits_stored=8)],
    ids=["rows", "columns", "samples", "precision"],
)
def test_header_must_match_the_expected_frame(other: FrameInfo) -> None:
    _, _, stream = _sample_stream()
    with pytest.raises(CorruptCodestreamError):
        CODEC.decode_frame(stream, other)


def test_every_truncation_is_refused() -> None:
    info, frame, stream = _sample_stream()
    for end in range(len(stream) - 2):
        try:
            decoded = CODEC.decode_frame(stream[:end], info)
        except CorruptCodestreamError:
            continue
        pytest.fail(f"a stream cut at byte {end} of {len(stream)} decoded: equal={np.array_equal(decoded, frame)}")


def test_near_lossless_scan_is_refused() -> None:
    info, _, stream = _sample_stream()
    sos = stream.index(b"\xff\xda")
    near = sos + 4 + 1 + 2 * 1  # after Ls, Ns and one (Ci, Tm) pair
    damaged = stream[:near] + b"\x02" + stream[near + 1:]
    with pytest.raises(CorruptCodestreamError, match="NEAR"):
        CODEC.decode_frame(damaged, info)


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_byte_data_in_16_bit_containers(signed: bool) -> None:
    """Bits Stored <= 8 in 16 bits: coded at P = 9 so that CharLS-based readers fill 16-bit frames."""
    info = FrameInfo(19, 23, bits_allocated=16, bits_stored=8, pixel_representation=int(signed))
    low, high = info.value_range
    frame = (np.indices(info.shape).sum(axis=0) * 11 % 256 + low).astype(info.dtype)
    frame[3:6] = low
    stream = CODEC.encode_frame(frame, info)
    assert stream[stream.index(b"\xff\xf7") + 4] == 9
    assert np.array_equal(CODEC.decode_frame(stream, info), frame)
    for plugin in ("pyjpegls", "pylibjpeg"):
        assert np.array_equal(_via_pydicom(info, [stream], plugin)[0], frame), plugin


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_precision_above_bits_stored_is_read_as_dicom_does(signed: bool) -> None:
    """Other encoders code 12-bit data at P = 16: signed values as 16-bit two's complement."""
    info = FrameInfo(9, 11, bits_stored=12, pixel_representation=int(signed))
    low, high = info.value_range
    frame = np.linspace(low, high, info.rows * info.columns).astype(info.dtype).reshape(info.shape)
    wide = FrameInfo(9, 11, bits_stored=16)
    stream = jpegls.encode(frame.view(np.uint16), wide)
    assert np.array_equal(CODEC.decode_frame(stream, info), frame)
    # A 16-bit value beyond the 12-bit range cannot be carried by the frame.
    beyond = frame.view(np.uint16).copy()
    beyond[0, 0] = 0x1000 if not signed else 0x8000
    with pytest.raises(CorruptCodestreamError):
        CODEC.decode_frame(jpegls.encode(beyond, wide), info)


def test_padding_and_skipped_segments() -> None:
    """A DICOM fragment's even-length pad byte, fill bytes before markers, APPn and COM segments are harmless."""
    info, frame, stream = _sample_stream()
    assert np.array_equal(CODEC.decode_frame(stream + b"\x00", info), frame)
    extra = b"\xff\xe5\x00\x06abcd" + b"\xff\xfe\x00\x05hi!" + b"\xff\xff"
    assert np.array_equal(CODEC.decode_frame(stream[:2] + extra + stream[2:], info), frame)


def test_restart_markers_must_come_in_order() -> None:
    info, frame, _ = _sample_stream()
    stream = jpegls.encode(frame, info, restart=4)
    assert np.array_equal(CODEC.decode_frame(stream, info), frame)
    first = stream.index(b"\xff\xd0")
    with pytest.raises(CorruptCodestreamError, match="RST0"):
        CODEC.decode_frame(stream[:first] + b"\xff\xd3" + stream[first + 2:], info)


def test_lse_before_the_frame_header_is_read() -> None:
    """T.87 lets preset parameters come before SOF55; they apply all the same."""
    info, frame, _ = _sample_stream()
    stream = jpegls.encode(frame, info, preset=(4, 9, 31))
    lse = stream.index(b"\xff\xf8")
    segment = stream[lse:lse + 15]
    moved = stream[:2] + segment + stream[2:lse] + stream[lse + 15:]
    assert np.array_equal(CODEC.decode_frame(moved, info), frame)
    # Without the segment the thresholds differ and the decoder cannot give the frame back.
    try:
        wrong = CODEC.decode_frame(stream[:lse] + stream[lse + 15:], info)
    except CorruptCodestreamError:
        return
    assert not np.array_equal(wrong, frame)
