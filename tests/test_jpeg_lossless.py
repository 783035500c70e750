"""JPEG Lossless (Process 14) codec: round trips, conformance with decoders
we did not write, decoding of streams other encoders wrote, and interop with
DCMTK and GDCM."""

from __future__ import annotations

import subprocess
from pathlib import Path

import libjpeg  # noqa: E402
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import ExplicitVRLittleEndian, JPEGLossless, JPEGLosslessSV1

from gateway.codecs import _jpeg_lossless_kernels as kernels
from gateway.codecs import get_codec
from gateway.codecs.base import FrameInfo
from gateway.codecs.jpeg_lossless import _canonical, huffman_code_lengths
from gateway.errors import CorruptCodestreamError, UnsupportedImageError
from gateway.pipeline.pixels import frame_info, high_bits_used, iter_frames
from tests.corpus import corpus_params
from tests.images import make_dataset, reference_params
from tests.tools import require, require_dcmtk

CODEC = get_codec(JPEGLosslessSV1)


def _supported(info: FrameInfo) -> bool:
    return CODEC.supports(info) is None


def _frames_of(array: np.ndarray, info: FrameInfo, count: int) -> list[np.ndarray]:
    """Split a pydicom pixel_array into frames of the codec convention."""
    array = np.asarray(array).reshape((count, *info.shape))
    return [np.ascontiguousarray(f, dtype=info.dtype) for f in array]


def _libjpeg_via_pydicom(info: FrameInfo, streams: list[bytes]) -> list[np.ndarray]:
    """Decode our codestreams with pylibjpeg-libjpeg through pydicom, as an archive built on it does."""
    ds = make_dataset(info, streams, JPEGLosslessSV1)
    ds.pixel_array_options(decoding_plugin="pylibjpeg")
    return _frames_of(ds.pixel_array, info, len(streams))


# ---------------------------------------------------------------- Huffman


@pytest.mark.parametrize(
    "freq",
    [
        [1] + [0] * 16,
        [5, 5] + [0] * 15,
        [2**i for i in range(17)],  # Fibonacci-like skew: unlimited lengths exceed 16
        [1] * 17,
        [1000, 1, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3],
    ],
    ids=["one", "two", "skewed", "flat", "sparse"],
)
def test_code_lengths_are_a_valid_limited_code(freq: list[int]) -> None:
    lengths = huffman_code_lengths(np.array(freq))
    used = [i for i, f in enumerate(freq) if f]
    assert all(1 <= lengths[i] <= 16 for i in used)
    assert all(lengths[i] == 0 for i, f in enumerate(freq) if not f)
    # Kraft sum strictly below 1: the all-ones code word stays unused.
    assert sum(2.0 ** -int(lengths[i]) for i in used) < 1.0
    bits, huffval, codes = _canonical(lengths)
    assert sum(bits) == len(used) and sorted(huffval) == used
    assert all(codes[i] != (1 << int(lengths[i])) - 1 for i in used)


def test_code_lengths_are_optimal_when_short() -> None:
    # Huffman on counts 8,4,2,1 plus the reserved count 1: lengths 1,2,3,4 (4 for the reserved).
    lengths = huffman_code_lengths(np.array([8, 4, 2, 1] + [0] * 13))
    assert list(lengths[:4]) == [1, 2, 3, 4]


# ---------------------------------------------------------------- round trips and conformance


@pytest.mark.parametrize(("info", "frames"), reference_params(_supported))
def test_reference_round_trip_and_libjpeg(info: FrameInfo, frames: list[np.ndarray]) -> None:
    streams = [CODEC.encode_frame(f, info) for f in frames]
    for frame, stream in zip(frames, streams):
        assert np.array_equal(CODEC.decode_frame(stream, info), frame)
    for frame, theirs in zip(frames, _libjpeg_via_pydicom(info, streams)):
        assert np.array_equal(theirs, frame)


@pytest.mark.parametrize(
    "info",
    [
        FrameInfo(4, 4, bits_allocated=8, bits_stored=1),
        FrameInfo(4, 4, bits_allocated=32, bits_stored=16),
        FrameInfo(4, 4, 3, 8, 8, 1, "RGB"),
        FrameInfo(4, 4, 1, 16, 12, 1, "PALETTE COLOR"),
        FrameInfo(4, 4, 3, 8, 8, 0, "YBR_FULL_422"),
        FrameInfo(4, 4, 1, 8, 8, 0, "RGB"),
    ],
    ids=["bits-stored-1", "alloc-32", "signed-rgb", "signed-palette", "ybr-422", "rgb-1-sample"],
)
def test_forbidden_combinations(info: FrameInfo) -> None:
    assert CODEC.supports(info)
    if info.bits_allocated in (8, 16):
        with pytest.raises(UnsupportedImageError):
            CODEC.encode_frame(np.zeros(info.shape, info.dtype), info)


def test_values_outside_bits_stored_are_refused() -> None:
    info = FrameInfo(2, 2, bits_stored=12)
    frame = np.array([[0, 1], [4096, 3]], dtype=np.uint16)
    with pytest.raises(UnsupportedImageError):
        CODEC.encode_frame(frame, info)


def test_signed_is_the_masked_twos_complement_pattern() -> None:
    info = FrameInfo(1, 4, bits_stored=12, pixel_representation=1)
    frame = np.array([[-2048, -1, 0, 2047]], dtype=np.int16)
    raw = libjpeg.decode(CODEC.encode_frame(frame, info))
    assert raw.ravel().tolist() == [0x800, 0xFFF, 0, 0x7FF]


def test_registered_for_both_lossless_syntaxes() -> None:
    assert get_codec("JPEGLosslessSV1").uid == JPEGLosslessSV1
    assert get_codec(JPEGLossless).uid == JPEGLossless
    assert get_codec("jpeg-lossless") is CODEC


@pytest.mark.corpus
@pytest.mark.parametrize("row", corpus_params())
def test_corpus_round_trip_and_libjpeg(row: dict) -> None:
    ds = pydicom.dcmread(row["file"])
    info = frame_info(ds)
    if CODEC.supports(info):
        pytest.skip(f"JPEG Lossless cannot carry it: {CODEC.supports(info)}")
    for frame in iter_frames(ds):
        if high_bits_used(frame, info):
            pytest.skip("values in the unused high bits: the pipeline passes it through")
        stream = CODEC.encode_frame(frame, info)
        assert np.array_equal(CODEC.decode_frame(stream, info), frame)
        assert np.array_equal(_libjpeg_via_pydicom(info, [stream])[0], frame)


# ---------------------------------------------------------------- streams written by others


def _rgb_and_mono_samples() -> list[tuple[FrameInfo, np.ndarray]]:
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:37, 0:29]
    smooth = (y * 50 + x * 30 + rng.integers(0, 40, (37, 29))).astype(np.int64)
    return [
        (FrameInfo(37, 29, bits_stored=16), (smooth * 20 % 65536).astype(np.uint16)),
        (FrameInfo(37, 29, bits_stored=12), (smooth % 4096).astype(np.uint16)),
        (FrameInfo(37, 29, bits_allocated=8, bits_stored=8), (smooth % 256).astype(np.uint8)),
        (
            FrameInfo(37, 29, 3, 8, 8, 0, "RGB"),
            np.stack([smooth % 256, (smooth // 3) % 256, 255 - smooth % 256], -1).astype(np.uint8),
        ),
    ]


@pytest.mark.parametrize("predictor", range(1, 8))
@pytest.mark.parametrize("index", range(4), ids=["u16", "u12", "u8", "rgb8"])
def test_decodes_imagecodecs_predictors(index: int, predictor: int) -> None:
    import imagecodecs
    info, frame = _rgb_and_mono_samples()[index]
    if info.bits_allocated == 8:
        colour = {"colorspace": "RGB", "outcolorspace": "RGB"} if info.samples_per_pixel == 3 else {}
        stream = imagecodecs.jpeg8_encode(frame, lossless=True, predictor=predictor, **colour)
    else:
        stream = imagecodecs.ljpeg_encode(frame, bitspersample=info.bits_stored) if predictor == 1 else None
        if stream is None:
            stream = imagecodecs.jpeg8_encode(
                frame, lossless=True, predictor=predictor, bitspersample=info.bits_stored
            )
    assert np.array_equal(libjpeg.decode(stream).reshape(info.shape), frame)
    assert np.array_equal(CODEC.decode_frame(stream, info), frame)


def _restart_stream(frame: np.ndarray, info: FrameInfo, rows_per_interval: int) -> bytes:
    """An SV1 stream with a restart marker every `rows_per_interval` rows.

    Each interval is predicted like a new image (T.81 H.1.2.1), all share one
    Huffman table built from the joint histogram.
    """
    samples = frame.astype(np.uint16).reshape(info.rows, info.columns, 1)
    strips = [samples[r : r + rows_per_interval] for r in range(0, info.rows, rows_per_interval)]
    parts = [kernels.differences_sv1(np.ascontiguousarray(s), info.bits_stored) for s in strips]
    hist = sum(h for _, h in parts)
    lengths = huffman_code_lengths(hist[0])
    bits, huffval, codes = _canonical(lengths)
    body = b""
    for i, (diffs, _) in enumerate(parts):
        if i:
            body += bytes([0xFF, 0xFF, 0xD0 + (i - 1) % 8])  # with one fill byte
        body += kernels.encode_scan(
            diffs, codes[None, :], lengths[None, :], np.zeros(1, np.int64), 8 * diffs.size + 16
        ).tobytes()
    dht = bytes([0]) + bytes(bits) + bytes(huffval)
    mcus = rows_per_interval * info.columns
    return (
        b"\xff\xd8"
        + b"\xff\xc4" + (2 + len(dht)).to_bytes(2, "big") + dht
        + b"\xff\xdd\x00\x04" + mcus.to_bytes(2, "big")
        + b"\xff\xc3\x00\x0b" + bytes([info.bits_stored]) + info.rows.to_bytes(2, "big")
        + info.columns.to_bytes(2, "big") + b"\x01\x01\x11\x00"
        + b"\xff\xda\x00\x08\x01\x01\x00\x01\x00\x00"
        + body + b"\xff\xd9"
    )


@pytest.mark.parametrize("rows_per_interval", [1, 3, 8])
def test_restart_intervals(rows_per_interval: int) -> None:
    info, frame = _rgb_and_mono_samples()[1]
    stream = _restart_stream(frame, info, rows_per_interval)
    assert np.array_equal(libjpeg.decode(stream), frame)
    assert np.array_equal(CODEC.decode_frame(stream, info), frame)


def _scan(samples: np.ndarray, precision: int, table: int) -> tuple[bytes, bytes]:
    """DHT segment (one table, id `table`) and entropy-coded data for an SV1 scan of `samples`."""
    diffs, hist = kernels.differences_sv1(np.ascontiguousarray(samples), precision)
    lengths = huffman_code_lengths(hist.sum(axis=0))
    bits, huffval, codes = _canonical(lengths)
    body = bytes([table]) + bytes(bits) + bytes(huffval)
    dht = b"\xff\xc4" + (2 + len(body)).to_bytes(2, "big") + body
    tables = np.zeros(samples.shape[2], np.int64)
    data = kernels.encode_scan(diffs, codes[None, :], lengths[None, :], tables, 8 * diffs.size + 16)
    return dht, data.tobytes()


def _sof3(precision: int, info: FrameInfo) -> bytes:
    n = info.samples_per_pixel
    body = bytes([precision]) + info.rows.to_bytes(2, "big") + info.columns.to_bytes(2, "big") + bytes([n])
    body += b"".join(bytes([k + 1, 0x11, 0]) for k in range(n))
    return b"\xff\xc3" + (2 + len(body)).to_bytes(2, "big") + body


def _sos(components: list[int], point_transform: int = 0) -> bytes:
    body = bytes([len(components)]) + b"".join(bytes([k + 1, 0]) for k in components)
    body += bytes([1, 0, point_transform])
    return b"\xff\xda" + (2 + len(body)).to_bytes(2, "big") + body


def test_non_interleaved_scans_with_redefined_tables() -> None:
    """One scan per component, each preceded by its own DHT for table 0, with an APP and COM segment."""
    info, frame = _rgb_and_mono_samples()[3]
    samples = frame.astype(np.uint16)
    stream = b"\xff\xd8" + b"\xff\xe0\x00\x04ab" + _sof3(8, info)
    for k in range(3):
        dht, data = _scan(samples[:, :, k : k + 1], 8, 0)
        stream += b"\xff\xfe\x00\x05xyz" + dht + _sos([k]) + data
    stream += b"\xff\xd9"
    assert np.array_equal(libjpeg.decode(stream), frame)
    assert np.array_equal(CODEC.decode_frame(stream, info), frame)


@pytest.mark.parametrize("point_transform", [1, 3])
def test_point_transform(point_transform: int) -> None:
    info, frame = _rgb_and_mono_samples()[1]
    shifted = (frame >> point_transform).astype(np.uint16).reshape(info.rows, info.columns, 1)
    dht, data = _scan(shifted, info.bits_stored - point_transform, 0)
    stream = b"\xff\xd8" + dht + _sof3(info.bits_stored, info) + _sos([0], point_transform) + data + b"\xff\xd9"
    expected = (frame >> point_transform) << point_transform
    # libjpeg-turbo as the independent decoder here: pylibjpeg-libjpeg starts
    # the prediction at 2**(P-1) instead of T.81's 2**(P-Pt-1).
    import imagecodecs
    assert np.array_equal(imagecodecs.jpeg8_decode(stream), expected)
    assert np.array_equal(CODEC.decode_frame(stream, info), expected)


# pydicom's JPEG Lossless test files (bundled or in its download cache) and
# pylibjpeg-data's, where installed; the ones absent here are skipped.
_PYDICOM_LOSSLESS = [
    "SC_rgb_jpeg_gdcm.dcm",
    "JPEG-LL.dcm",
    "SC_rgb_jpeg_lossless_gdcm.dcm",
    "JPGLosslessP14SV1_1s_1f_8b.dcm",
    "MG1_JPLL.dcm",
    "RG1_JPLL.dcm",
    "RG2_JPLL.dcm",
    "US1_JPLL.dcm",
    "CT1_JPLL.dcm",
    "MR1_JPLL.dcm",
]


def _foreign_files() -> list:
    from pydicom.data import get_testdata_file

    params = [pytest.param(get_testdata_file(name, download=False), id=name) for name in _PYDICOM_LOSSLESS]
    try:
        import ljdata  # pylibjpeg-data

        root = Path(ljdata.__file__).parent / "ds"
        for folder in ("JPEGLossless", "JPEGLosslessSV1", "JPEGLosslessP14", "JPEGLosslessP14SV1"):
            params += [pytest.param(str(f), id=f.name) for f in sorted((root / folder).glob("*.dcm"))]
    except ImportError:
        pass
    return params


@pytest.mark.parametrize("path", _foreign_files())
def test_decodes_pydicom_and_pylibjpeg_data_files(path: str | None) -> None:
    if path is None:
        pytest.skip("test file not available offline (pydicom downloads it on demand)")
    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID not in (JPEGLossless, JPEGLosslessSV1) or "PixelData" not in ds:
        pytest.skip("not a JPEG Lossless image")
    info = frame_info(ds)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    from pydicom.pixels import pixel_array

    # raw: no colour conversion, as our decoder returns the stored samples.
    expected = _frames_of(pixel_array(ds, raw=True, decoding_plugin="pylibjpeg"), info, count)
    codec = get_codec(ds.file_meta.TransferSyntaxUID)
    for stream, frame in zip(generate_frames(ds.PixelData, number_of_frames=count), expected):
        assert np.array_equal(codec.decode_frame(stream, info), frame)


# ---------------------------------------------------------------- interop with DCMTK and GDCM


def _interop_images() -> list:
    rng = np.random.default_rng(11)
    params = []
    for info, frame in _rgb_and_mono_samples():
        params.append(pytest.param(info, frame, id=f"{info.bits_allocated}_{info.bits_stored}_{info.samples_per_pixel}"))
    for stored in (8, 2):
        small = FrameInfo(23, 31, bits_stored=stored)
        params.append(
            pytest.param(
                small, rng.integers(0, 1 << stored, small.shape).astype(np.uint16), id=f"16_{stored}_1"
            )
        )
    signed = FrameInfo(23, 31, bits_stored=12, pixel_representation=1)
    params.append(
        pytest.param(signed, rng.integers(-2048, 2048, signed.shape).astype(np.int16), id="16_12_1_signed")
    )
    signed16 = FrameInfo(23, 31, bits_stored=16, pixel_representation=1)
    params.append(
        pytest.param(signed16, rng.integers(-32768, 32768, signed16.shape).astype(np.int16), id="16_16_1_signed")
    )
    return params


def _read_frame(path: Path, info: FrameInfo) -> np.ndarray:
    ds = pydicom.dcmread(path)
    assert not ds.file_meta.TransferSyntaxUID.is_compressed
    return _frames_of(ds.pixel_array, info, 1)[0]


@pytest.mark.interop
@pytest.mark.parametrize(("info", "frame"), _interop_images())
@pytest.mark.parametrize("tool", ["dcmdjpeg", "gdcmconv"])
def test_peers_decode_our_files(tmp_path: Path, tool: str, info: FrameInfo, frame: np.ndarray) -> None:
    if tool == "dcmdjpeg":
        command = [require_dcmtk("dcmdjpeg")]
    else:
        command = [require("gdcmconv", "gdcm"), "--raw"]
    source, target = tmp_path / "ours.dcm", tmp_path / "raw.dcm"
    make_dataset(info, [CODEC.encode_frame(frame, info)], JPEGLosslessSV1).save_as(source, enforce_file_format=True)
    subprocess.run([*command, str(source), str(target)], check=True, capture_output=True, timeout=120)
    assert np.array_equal(_read_frame(target, info), frame)


@pytest.mark.interop
@pytest.mark.parametrize(("info", "frame"), _interop_images())
@pytest.mark.parametrize(
    "options",
    [["dcmcjpeg", "+e1"]] + [["dcmcjpeg", "+el", "+sv", str(sv)] for sv in range(1, 8)] + [["gdcmconv", "--jpeg"]],
    ids=lambda o: "-".join(o).replace("+", ""),
)
def test_we_decode_peer_files(tmp_path: Path, options: list[str], info: FrameInfo, frame: np.ndarray) -> None:
    if options[0] == "dcmcjpeg":
        command = [require_dcmtk("dcmcjpeg"), *options[1:]]
    else:
        command = [require("gdcmconv", "gdcm"), *options[1:]]
    source, target = tmp_path / "raw.dcm", tmp_path / "peer.dcm"
    make_dataset(info, [frame], ExplicitVRLittleEndian).save_as(source, enforce_file_format=True)
    subprocess.run([*command, str(source), str(target)], check=True, capture_output=True, timeout=120)
    ds = pydicom.dcmread(target)
    uid = ds.file_meta.TransferSyntaxUID
    assert uid in (JPEGLossless, JPEGLosslessSV1)
    stream = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert np.array_equal(get_codec(uid).decode_frame(stream, frame_info(ds)), frame)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("stream", "info"),
    [
        (b"", FrameInfo(2, 2)),
        (b"\xff\xd8\xff\xd9", FrameInfo(2, 2)),
        (b"\xff\xd8\xff\xc3\x00\x0b\x10\x00\x02\x00\x02\x01\x01\x11\x00\xff\xd9", FrameInfo(2, 2)),
        (b"\xff\xd8\xff\xc3\x00\x0b\x10\xff\xff\xff\xff\x01\x01\x11\x00", FrameInfo(2, 2)),
        (b"\xff\xd8\xff\xc0\x00\x0b\x08\x00\x02\x00\x02\x01\x01\x11\x00", FrameInfo(2, 2)),
    ],
    ids=["empty", "no-frame", "no-scan", "size-mismatch", "baseline-sof"],
)
def test_bad_streams_raise(stream: bytes, info: FrameInfo) -> None:
    with pytest.raises(CorruptCodestreamError):
        CODEC.decode_frame(stream, info)


def test_truncated_stream_raises() -> None:
    info, frame = _rgb_and_mono_samples()[0]
    stream = CODEC.encode_frame(frame, info)
    for cut in (len(stream) // 2, len(stream) - 40, 30):
        with pytest.raises(CorruptCodestreamError):
            CODEC.decode_frame(stream[:cut], info)


# ---------------------------------------------------------------- interop on real images


def _ours_as_file(ds: Dataset, path: Path) -> list[np.ndarray]:
    """Rewrite `ds` (in place) as JPEG Lossless SV1 with our encoder; return its frames."""
    info = frame_info(ds)
    frames = list(iter_frames(ds))
    ds.PixelData = encapsulate([CODEC.encode_frame(f, info) for f in frames])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    if info.samples_per_pixel == 3:
        ds.PlanarConfiguration = 0
    ds.save_as(path, enforce_file_format=True)
    return frames


def _stored_value(frame: np.ndarray, info: FrameInfo) -> np.ndarray:
    """The values a reader takes from the low Bits Stored bits (sign-extended if signed).

    dcmdjpeg writes signed samples with Bits Stored < Bits Allocated as the
    bare Bits-Stored pattern (high bits zero); DICOM readers mask and
    sign-extend, so that is what is compared.
    """
    if not info.signed or info.bits_stored == info.bits_allocated:
        return frame
    values = frame.astype(np.int64) & ((1 << info.bits_stored) - 1)
    values -= (values & (1 << (info.bits_stored - 1))) << 1
    return values.astype(info.dtype)


@pytest.mark.interop
@pytest.mark.corpus
@pytest.mark.parametrize("row", corpus_params(limit_per_series=1))
@pytest.mark.parametrize("tool", ["dcmdjpeg", "gdcmconv"])
def test_peers_decode_our_corpus_files(tmp_path: Path, tool: str, row: dict) -> None:
    command = [require_dcmtk("dcmdjpeg")] if tool == "dcmdjpeg" else [require("gdcmconv", "gdcm"), "--raw"]
    ds = pydicom.dcmread(row["file"])
    info = frame_info(ds)
    if CODEC.supports(info):
        pytest.skip(f"JPEG Lossless cannot carry it: {CODEC.supports(info)}")
    if any(high_bits_used(f, info) for f in iter_frames(ds)):
        pytest.skip("values in the unused high bits: the pipeline passes it through")
    ours, raw = tmp_path / "ours.dcm", tmp_path / "raw.dcm"
    frames = _ours_as_file(ds, ours)
    subprocess.run([*command, str(ours), str(raw)], check=True, capture_output=True, timeout=300)
    back = [_stored_value(f, info) for f in iter_frames(pydicom.dcmread(raw))]
    assert len(back) == len(frames)
    assert all(np.array_equal(a, b) for a, b in zip(back, frames))


@pytest.mark.interop
@pytest.mark.corpus
@pytest.mark.parametrize("row", corpus_params(limit_per_series=1))
@pytest.mark.parametrize("options", [["+e1"], ["+el", "+sv", "6"]], ids=["sv1", "sv6"])
def test_we_decode_dcmcjpeg_corpus_files(tmp_path: Path, options: list[str], row: dict) -> None:
    dcmcjpeg = require_dcmtk("dcmcjpeg")
    original = pydicom.dcmread(row["file"])
    info = frame_info(original)
    if CODEC.supports(info):
        pytest.skip(f"JPEG Lossless cannot carry it: {CODEC.supports(info)}")
    frames = list(iter_frames(original))
    if any(high_bits_used(f, info) for f in frames):
        pytest.skip("values in the unused high bits: the pipeline passes it through")
    source, target = tmp_path / "native.dcm", tmp_path / "dcmtk.dcm"
    original.save_as(source, enforce_file_format=True)
    done = subprocess.run([dcmcjpeg, *options, str(source), str(target)], capture_output=True, timeout=300)
    if done.returncode != 0:
        pytest.skip(f"dcmcjpeg cannot compress this file: {done.stderr.decode(errors='replace')[:200]}")
    ds = pydicom.dcmread(target)
    uid = ds.file_meta.TransferSyntaxUID
    streams = list(generate_frames(ds.PixelData, number_of_frames=len(frames)))
    for stream, frame in zip(streams, frames):
        assert np.array_equal(get_codec(uid).decode_frame(stream, info), frame)


def _at_precision(stream: bytes, precision: int) -> bytes:
    data = bytearray(stream)
    data[data.index(b"\xff\xc3") + 4] = precision  # SOF3: length (2), then P
    return bytes(data)


@pytest.mark.parametrize("name", ["jpeg-lossless", "jpeg-lossless-p14"])
@pytest.mark.parametrize("signed", [False, True])
def test_samples_above_bits_stored_are_corrupt_not_returned(name: str, signed: bool) -> None:
    """A codestream at a precision above Bits Stored whose samples do not fit the stored range: our decoder
    raises, as the JPEG-LS one does, rather than returning values no Bits Stored can hold."""
    codec = get_codec(name)
    info = FrameInfo(rows=16, columns=16, bits_allocated=16, bits_stored=12, pixel_representation=int(signed))
    low, high = info.value_range
    frame = np.random.default_rng(3).integers(low, high + 1, (16, 16)).astype(info.dtype)
    raised = 0
    for shift in range(4):  # the 12-bit patterns read as 16-bit ones, shifted up to hit the high bits
        stream = codec.encode_frame(frame, info)
        assert np.array_equal(codec.decode_frame(stream, info), frame)
        wide = FrameInfo(rows=16, columns=16, bits_allocated=16, bits_stored=16)
        patterns = ((frame.astype(np.int64) & 0xFFF) << shift).astype(np.uint16)
        try:
            decoded = codec.decode_frame(_at_precision(codec.encode_frame(patterns, wide), 16), info)
        except CorruptCodestreamError:
            raised += 1
            continue
        low_bits = (patterns.astype(np.int64) & 0xFFF)
        expected = low_bits - ((low_bits >> 11) << 12) if signed else low_bits
        assert shift == 0 and np.array_equal(decoded, expected.astype(info.dtype))
    assert raised == 3


def test_a_signed_value_at_a_wider_precision_is_its_twos_complement() -> None:
    """-5 in 12 Bits Stored, coded at precision 16 as 0xFFFB: the value in range it stands for."""
    codec = get_codec("jpeg-lossless")
    info = FrameInfo(rows=4, columns=4, bits_allocated=16, bits_stored=12, pixel_representation=1)
    values = np.array([-5, 7, -2048, 2047] * 4, np.int16).reshape(4, 4)
    wide = FrameInfo(rows=4, columns=4, bits_allocated=16, bits_stored=16)
    stream = codec.encode_frame(values.view(np.uint16), wide)
    assert np.array_equal(codec.decode_frame(stream, info), values)


# ---------------------------------------------------------------- precision of 8-bit data in 16-bit containers


def _precision_of(stream: bytes) -> int:
    return stream[stream.index(b"\xff\xc3") + 4]


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("stored", [2, 5, 8])
def test_bytes_in_16_bit_containers_are_coded_at_precision_9(stored: int, signed: bool) -> None:
    """Decoders return a P <= 8 stream as bytes, which pydicom cannot place in a 16-bit frame: P = 9, signed
    values as their 9-bit two's complement, so a reader going by P or by Bits Stored reads the same."""
    info = FrameInfo(9, 11, bits_allocated=16, bits_stored=stored, pixel_representation=int(signed))
    low, high = info.value_range
    frame = np.random.default_rng(stored).integers(low, high, info.shape, endpoint=True).astype(info.dtype)
    frame.flat[:2] = low, high
    stream = CODEC.encode_frame(frame, info)
    assert _precision_of(stream) == 9
    raw = np.asarray(libjpeg.decode(stream)).astype(np.int64).reshape(info.shape)
    assert np.array_equal(raw, frame.astype(np.int64) & 0x1FF), "the 9-bit patterns of the values"
    assert np.array_equal(CODEC.decode_frame(stream, info), frame)
    assert np.array_equal(_libjpeg_via_pydicom(info, [stream])[0], frame)


@pytest.mark.parametrize("stored", [2, 7, 8])
def test_8_bit_containers_keep_precision_bits_stored(stored: int) -> None:
    info = FrameInfo(5, 6, bits_allocated=8, bits_stored=stored)
    frame = np.random.default_rng(stored).integers(0, 1 << stored, info.shape).astype(np.uint8)
    stream = CODEC.encode_frame(frame, info)
    assert _precision_of(stream) == stored
    assert np.array_equal(CODEC.decode_frame(stream, info), frame)


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_streams_at_precision_bits_stored_in_16_bit_containers_still_decode(signed: bool) -> None:
    """What the encoder wrote before (P = Bits Stored = 8 in a 16-bit container) and other encoders write."""
    info = FrameInfo(6, 7, bits_allocated=16, bits_stored=8, pixel_representation=int(signed))
    low, high = info.value_range
    frame = np.random.default_rng(5).integers(low, high, info.shape, endpoint=True).astype(info.dtype)
    patterns = (frame.view(np.uint16) & 0xFF).reshape(info.rows, info.columns, 1)
    dht, data = _scan(patterns, 8, 0)
    stream = b"\xff\xd8" + dht + _sof3(8, info) + _sos([0]) + data + b"\xff\xd9"
    assert np.array_equal(CODEC.decode_frame(stream, info), frame)
