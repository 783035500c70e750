"""What our encoders write, read back by decoders of other projects over the image parameters DICOM allows.

For each standard syntax we write (RLE, JPEG Lossless SV1, JPEG-LS, JPEG 2000,
HTJ2K) a grid of Bits Allocated / Bits Stored / Pixel Representation /
Samples per Pixel / Photometric Interpretation and edge sizes (1 x 1, a
single row or column, a width above 4096), each image as frames at the
extremes of its range, pure noise and a checkerboard of both extremes.  The
codestreams are decoded by the Python bindings of other projects (pylibjpeg's
RLE, libjpeg, OpenJPEG; CharLS; imagecodecs' libjpeg-turbo, CharLS, OpenJPEG,
OpenJPH) and, in a DICOM file, by the command-line tools an archive runs
(DCMTK's ``dcmdrle`` / ``dcmdjpeg`` / ``dcmdjpls``, GDCM's ``gdcmconv --raw``,
``opj_decompress``, ``ojph_expand``) and by pydicom's plugins.  Each must give
back the original values, as DICOM reads them: the low Bits Stored bits,
sign-extended for Pixel Representation 1.

Decoders' own limits, checked against the standard, are skipped with the
reason; what the gateway writes must not depend on any other.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from gateway.codecs import get_codec
from gateway.codecs.base import FrameInfo
from gateway.pipeline import recompress
from tests.images import make_dataset
from tests.tools import require, require_dcmtk

pytestmark = pytest.mark.interop

_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"  # GDCM writes no signed or multi-frame Secondary Capture
_US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
_NAMES = {RLELossless: "rle", JPEGLosslessSV1: "jpeg-lossless", JPEGLSLossless: "jpeg-ls",
          JPEG2000Lossless: "jpeg2000", HTJ2KLossless: "htj2k", HTJ2KLosslessRPCL: "htj2k-rpcl"}


# ---------------------------------------------------------------- images


def _masked(values: np.ndarray, info: FrameInfo) -> np.ndarray:
    """Values as DICOM reads them (PS3.5 8.1.1): the low Bits Stored bits, sign-extended when signed."""
    low = np.asarray(values).astype(np.int64) & ((1 << info.bits_stored) - 1)
    if info.signed:
        low -= (low >> (info.bits_stored - 1)) << info.bits_stored
    return low.reshape(info.shape)


def _frames(info: FrameInfo, seed: int) -> list[np.ndarray]:
    """The smallest and largest value, full-range noise, and a checkerboard of both extremes."""
    rng = np.random.default_rng(seed)
    low, high = info.value_range
    checker = np.where(np.indices(info.shape).sum(axis=0) % 2 == 0, low, high)
    frames = [np.full(info.shape, low), np.full(info.shape, high),
              rng.integers(low, high, size=info.shape, endpoint=True), checker]
    return [f.astype(info.dtype) for f in frames]


def _info(rows: int, columns: int, samples: int, allocated: int, stored: int, signed: bool,
          photometric: str | None = None) -> FrameInfo:
    photometric = photometric or ("RGB" if samples == 3 else "MONOCHROME2")
    return FrameInfo(rows, columns, samples, allocated, stored, int(signed), photometric)


_SIZES = [(1, 1), (7, 13), (65, 1), (2, 4097)]
_MONO = [(8, 2, False), (8, 5, True), (8, 7, True), (8, 8, False), (8, 8, True), (16, 2, True), (16, 2, False),
         (16, 5, True), (16, 7, False), (16, 8, True), (16, 8, False), (16, 9, False), (16, 12, True), (16, 13, False),
         (16, 15, True), (16, 16, False), (16, 16, True)]
_COLOUR = [(8, 8, "RGB"), (8, 6, "RGB"), (16, 8, "RGB"), (16, 12, "RGB"), (16, 16, "RGB"), (8, 8, "YBR_FULL"),
           (8, 7, "YBR_FULL")]


def _grid(syntax: str) -> list:
    infos = [_info(r, c, 1, a, s, signed) for a, s, signed in _MONO for r, c in _SIZES]
    infos += [_info(r, c, 3, a, s, False, p) for a, s, p in _COLOUR for r, c in ((1, 1), (7, 13), (2, 4097))]
    infos += [_info(7, 13, 1, 16, 12, False, "PALETTE COLOR"), _info(7, 13, 1, 16, 12, True, "MONOCHROME1")]
    if syntax == RLELossless:
        infos += [_info(7, 13, 1, a, s, signed) for a, s, signed in ((8, 1, False), (16, 1, False), (32, 32, True),
                                                                      (32, 24, True), (32, 32, False))]
    codec = get_codec(syntax)
    return [pytest.param(syntax, info, id=_ident(syntax, info)) for info in infos if codec.supports(info) is None]


def _ident(syntax: str, info: FrameInfo) -> str:
    photometric = info.photometric_interpretation.replace(" ", "_")
    return (f"{_NAMES[syntax]}-{info.rows}x{info.columns}-{info.bits_allocated}_{info.bits_stored}"
            f"{'s' if info.signed else 'u'}-{photometric}")


_ALL = [p for syntax in _NAMES for p in _grid(syntax)]


def _encode(syntax: str, info: FrameInfo, frames: list[np.ndarray]) -> list[bytes]:
    codec = get_codec(syntax)
    return [codec.encode_frame(frame, info) for frame in frames]


def _assert_same(decoded: list[np.ndarray], frames: list[np.ndarray], info: FrameInfo, who: str) -> None:
    assert len(decoded) == len(frames), f"{who}: {len(decoded)} frames, {len(frames)} written"
    for number, (got, want) in enumerate(zip(decoded, frames), start=1):
        got, want = _masked(got, info), _masked(want, info)
        if not np.array_equal(got, want):
            at = tuple(int(i) for i in np.argwhere(got != want)[0])
            pytest.fail(f"{who}: frame {number} differs at {at}: {got[at]} instead of {want[at]}")


# ---------------------------------------------------------------- decoders of other projects, in process


def _by_pixel(values: np.ndarray, info: FrameInfo, *, planes: bool) -> np.ndarray:
    """`values` in the frame's shape; with `planes` they come colour-by-plane (RLE segments, for one)."""
    if planes and info.samples_per_pixel == 3:
        return np.asarray(values).reshape(3, info.rows, info.columns).transpose(1, 2, 0)
    return np.asarray(values).reshape(info.shape)


def _pylibjpeg_rle(stream: bytes, info: FrameInfo) -> np.ndarray:
    from rle.rle import decode_frame

    raw = decode_frame(stream, info.rows * info.columns, info.bits_allocated, "<")
    return _by_pixel(np.frombuffer(raw, dtype=f"<u{info.bits_allocated // 8}"), info, planes=True)


def _imagecodecs_dicomrle(stream: bytes, info: FrameInfo) -> np.ndarray:
    imagecodecs = pytest.importorskip("imagecodecs", reason="imagecodecs is not installed")
    dtype = {8: "u1", 16: ">u2", 32: ">u4"}[info.bits_allocated]
    return _by_pixel(np.frombuffer(imagecodecs.dicomrle_decode(stream, dtype), dtype=dtype), info, planes=True)


def _libjpeg(stream: bytes, info: FrameInfo) -> np.ndarray:
    from libjpeg import decode

    return np.asarray(decode(stream, colour_transform=0)).reshape(info.shape)


def _charls(stream: bytes, info: FrameInfo) -> np.ndarray:
    from jpeg_ls import decode

    return np.asarray(decode(np.frombuffer(stream, dtype=np.uint8))).reshape(info.shape)


def _openjpeg(stream: bytes, info: FrameInfo) -> np.ndarray:
    from openjpeg import decode

    return np.asarray(decode(stream)).reshape(info.shape)


def _imagecodecs(name: str):
    def decode(stream: bytes, info: FrameInfo) -> np.ndarray:
        imagecodecs = pytest.importorskip("imagecodecs", reason="imagecodecs is not installed")
        # OpenJPH gives the components of a stream without colour transform (all but RGB) plane by plane.
        planes = name == "htj2k_decode" and info.photometric_interpretation != "RGB"
        return _by_pixel(getattr(imagecodecs, name)(stream), info, planes=planes)

    decode.__name__ = f"imagecodecs.{name}"
    return decode


_IN_PROCESS = {
    RLELossless: [_pylibjpeg_rle, _imagecodecs_dicomrle],
    # liblj92 (imagecodecs.ljpeg_decode) is left out: it reads only the first table of a DHT segment that
    # defines several, which T.81 B.2.4.2 allows and our three-component streams use.
    JPEGLosslessSV1: [_libjpeg, _imagecodecs("jpeg8_decode"), _imagecodecs("jpegsof3_decode")],
    JPEGLSLossless: [_charls, _libjpeg, _imagecodecs("jpegls_decode")],
    JPEG2000Lossless: [_openjpeg, _imagecodecs("jpeg2k_decode")],
    HTJ2KLossless: [_openjpeg, _imagecodecs("jpeg2k_decode"), _imagecodecs("htj2k_decode")],
    HTJ2KLosslessRPCL: [_openjpeg, _imagecodecs("jpeg2k_decode"), _imagecodecs("htj2k_decode")],
}
_PYDICOM_PLUGINS = {
    RLELossless: ["pydicom", "pylibjpeg"],
    JPEGLosslessSV1: ["pylibjpeg"],
    JPEGLSLossless: ["pyjpegls", "pylibjpeg"],
    JPEG2000Lossless: ["pylibjpeg"],
    HTJ2KLossless: ["pylibjpeg"],
    HTJ2KLosslessRPCL: ["pylibjpeg"],
}


@pytest.mark.parametrize(("syntax", "info"), _ALL)
def test_other_decoders_read_our_codestreams(syntax: str, info: FrameInfo) -> None:
    frames = _frames(info, info.rows * 131 + info.bits_stored)
    streams = _encode(syntax, info, frames)
    for decode in _IN_PROCESS[syntax]:
        _assert_same([decode(s, info) for s in streams], frames, info, decode.__name__)


# A noise frame can code to exactly its native size, which pydicom takes for a wrong transfer syntax.
@pytest.mark.filterwarnings("ignore:The number of bytes of compressed pixel data matches")
@pytest.mark.parametrize(("syntax", "info"), _ALL)
def test_pydicom_plugins_read_our_datasets(syntax: str, info: FrameInfo) -> None:
    from pydicom.pixels import iter_pixels

    frames = _frames(info, info.columns * 7 + info.bits_stored)
    ds = _dataset(info, _encode(syntax, info, frames), syntax)
    for plugin in _PYDICOM_PLUGINS[syntax]:
        decoded = [np.asarray(f) for f in iter_pixels(ds, decoding_plugin=plugin, raw=True)]
        _assert_same(decoded, frames, info, f"pydicom[{plugin}]")


# ---------------------------------------------------------------- the tools an archive runs, on files


def _dataset(info: FrameInfo, streams: list[bytes], syntax: str) -> Dataset:
    written = info
    if syntax in (JPEG2000Lossless, HTJ2KLossless, HTJ2KLosslessRPCL) and info.photometric_interpretation == "RGB":
        written = replace(info, photometric_interpretation="YBR_RCT")  # as the pipeline labels it (PS3.5 8.2.4)
    ds = make_dataset(written, streams, syntax)
    ds.NumberOfFrames = len(streams)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = _CT_IMAGE if info.samples_per_pixel == 1 \
        else _US_MULTIFRAME
    if info.photometric_interpretation == "PALETTE COLOR":
        entries = 1 << info.bits_stored
        for colour in ("Red", "Green", "Blue"):
            setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [entries % 65536, 0, 16])
            setattr(ds, f"{colour}PaletteColorLookupTableData", np.arange(entries, dtype="<u2").tobytes())
    return ds


def _native_frames(path: Path, info: FrameInfo, count: int) -> list[np.ndarray]:
    """The frames of a native file a tool wrote, read from its bytes."""
    ds = pydicom.dcmread(path)
    assert not ds.file_meta.TransferSyntaxUID.is_compressed, f"still {ds.file_meta.TransferSyntaxUID.name}"
    values = np.frombuffer(ds.PixelData, dtype=f"<u{int(ds.BitsAllocated) // 8}")
    size = info.rows * info.columns * info.samples_per_pixel
    planar = int(ds.get("PlanarConfiguration", 0) or 0)
    return [_by_pixel(values[number * size:(number + 1) * size], info, planes=planar == 1) for number in range(count)]


def _tools(syntax: str) -> list[str]:
    return {
        RLELossless: ["dcmdrle", "gdcmconv"],
        JPEGLosslessSV1: ["dcmdjpeg", "gdcmconv"],
        JPEGLSLossless: ["dcmdjpls", "gdcmconv"],
        JPEG2000Lossless: ["gdcmconv", "opj_decompress"],
        HTJ2KLossless: ["opj_decompress", "ojph_expand"],
        HTJ2KLosslessRPCL: ["opj_decompress", "ojph_expand"],
    }[syntax]


_TOOL_CASES = [pytest.param(*p.values, tool, id=f"{p.id}-{tool}") for p in _ALL for tool in _tools(p.values[0])]


def _tool_limit(tool: str, syntax: str, info: FrameInfo) -> str | None:
    """Why `tool` cannot read an image of `info` whoever wrote it, or None."""
    if tool == "gdcmconv" and syntax == RLELossless and info.samples_per_pixel == 3 and info.bits_allocated == 16:
        return "GDCM 3.0 misplaces the bytes of 16-bit colour RLE (PS3.5 G.2), its own streams as well"
    if tool == "gdcmconv" and syntax in (RLELossless, JPEGLosslessSV1) and info.bits_allocated == 8 \
            and info.bits_stored < 8:
        return ("GDCM 3.0 asserts Bits Allocated == Bits Stored for 8-bit RLE and JPEG data "
                "(its own streams alike, at any JPEG precision)")
    if tool == "gdcmconv" and info.bits_allocated == 32:
        return "GDCM 3.0 asserts on 32-bit RLE data"
    if tool == "ojph_expand" and info.signed:
        return "ojph_expand clamps negative samples when it writes PGM"
    return None


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{Path(command[0]).name} failed: {(done.stderr or done.stdout).strip()[-400:]}"


def _codestream_tool(tool: str, path: str, stream: bytes, info: FrameInfo, folder: Path) -> np.ndarray:
    """opj_decompress or ojph_expand on one codestream; the values it wrote."""
    source = folder / "frame.j2c"
    source.write_bytes(stream)
    if tool == "opj_decompress":
        target = folder / "frame.rawl"  # little endian, component planes one after another
        _run([path, "-i", str(source), "-o", str(target)])
        return _by_pixel(np.fromfile(target, dtype="<u1" if info.bits_stored <= 8 else "<u2"), info, planes=True)
    target = folder / ("frame.ppm" if info.samples_per_pixel == 3 else "frame.pgm")
    _run([path, "-i", str(source), "-o", str(target)])
    header = target.read_bytes().split(b"\n", 3)
    values = np.frombuffer(header[3], dtype=">u2" if int(header[2]) > 255 else np.uint8)
    return values.reshape(info.shape)


@pytest.mark.parametrize(("syntax", "info", "tool"), _TOOL_CASES)
def test_archive_tools_read_our_files(tmp_path: Path, syntax: str, info: FrameInfo, tool: str) -> None:
    if tool.startswith("dcmd"):
        path = require_dcmtk(tool)
    elif tool == "gdcmconv":
        path = require(tool, "gdcm")
    else:
        path = shutil.which(tool)
        if path is None:
            package = "libopenjp2-tools" if tool == "opj_decompress" else "openjph-tools"
            pytest.skip(f"{tool} is not installed (Debian package '{package}')")
    limit = _tool_limit(tool, syntax, info)
    if limit:
        pytest.skip(limit)
    frames = _frames(info, info.rows + info.columns + info.bits_stored)
    streams = _encode(syntax, info, frames)
    if tool in ("opj_decompress", "ojph_expand"):
        decoded = [_codestream_tool(tool, path, s, info, tmp_path) for s in streams]
    else:
        source, target = tmp_path / "ours.dcm", tmp_path / "native.dcm"
        _dataset(info, streams, syntax).save_as(source, enforce_file_format=True)
        # dcmdjpeg converts YBR_FULL to RGB unless told not to: a choice of its own, not a reading.
        options = ["--conv-never"] if tool == "dcmdjpeg" else ["--raw"] if tool == "gdcmconv" else []
        _run([path, *options, str(source), str(target)])
        decoded = _native_frames(target, info, len(frames))
    _assert_same(decoded, frames, info, tool)


# ---------------------------------------------------------------- JPEG-LS of fewer than 8 bits in bytes


_FEW_BITS = [pytest.param(_info(rows, columns, samples, 8, stored, signed, photometric),
                          id=f"{rows}x{columns}-{stored}{'s' if signed else 'u'}-{photometric}")
             for stored in range(2, 8) for signed in (False, True)
             for rows, columns, samples, photometric in ((64, 64, 1, "MONOCHROME2"), (1, 65, 1, "MONOCHROME2"))]
_FEW_BITS += [pytest.param(_info(33, 33, 3, 8, stored, False, photometric), id=f"33x33-{stored}u-{photometric}")
              for stored in (2, 6, 7) for photometric in ("RGB", "YBR_FULL")]


@pytest.mark.parametrize("info", _FEW_BITS)
def test_dcmdjpls_reads_our_jpegls_of_few_bits_in_bytes(tmp_path: Path, info: FrameInfo) -> None:
    """DCMTK's CharLS 1.x (``dcmdjpls``, Orthanc) refuses a precision below 6 and reads one of 6 or 7 with the
    wrong default thresholds (T.87 C.2.4.1.1.1 has its own formulas for MAXVAL < 128): what we forward must
    not need them."""
    tool = require_dcmtk("dcmdjpls")
    frames = _frames(info, info.bits_stored)
    source, target = tmp_path / "ours.dcm", tmp_path / "native.dcm"
    _dataset(info, _encode(JPEGLSLossless, info, frames), JPEGLSLossless).save_as(source, enforce_file_format=True)
    _run([tool, str(source), str(target)])
    _assert_same(_native_frames(target, info, len(frames)), frames, info, "dcmdjpls")


def test_the_pipeline_forwards_jpegls_of_few_bits_that_dcmdjpls_reads(tmp_path: Path) -> None:
    tool = require_dcmtk("dcmdjpls")
    info = _info(64, 64, 1, 8, 7, True)
    frames = _frames(info, 77)
    outcome = recompress(make_dataset(info, frames), JPEGLSLossless)
    assert outcome.recompressed, outcome.reason
    source, target = tmp_path / "ours.dcm", tmp_path / "native.dcm"
    outcome.dataset.save_as(source, enforce_file_format=True)
    _run([tool, str(source), str(target)])
    _assert_same(_native_frames(target, info, len(frames)), frames, info, "dcmdjpls")


# ---------------------------------------------------------------- what no encoder of ours carries


_NOT_CARRIED = [
    pytest.param(syntax, info, id=f"{_NAMES[syntax]}-{label}")
    for label, info in (("1bit", _info(7, 13, 1, 8, 1, False)), ("signed-rgb", _info(7, 13, 3, 16, 12, True)),
                        ("32bit", _info(7, 13, 1, 32, 32, True)))
    for syntax in (JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless, HTJ2KLossless)
]


@pytest.mark.parametrize(("syntax", "info"), _NOT_CARRIED)
def test_what_a_syntax_cannot_carry_is_kept_as_received(syntax: str, info: FrameInfo) -> None:
    ds = make_dataset(info, _frames(info, 3)[:2])
    before = bytes(ds.PixelData)
    outcome = recompress(ds, syntax)
    assert not outcome.recompressed and outcome.dataset is ds and outcome.reason
    assert bytes(ds.PixelData) == before and ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
