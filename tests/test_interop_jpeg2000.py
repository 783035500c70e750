"""JPEG 2000 interop with decoders and encoders we did not write.

Ours -> OpenJPEG (``opj_decompress``), GDCM (``gdcmconv --raw``) and
imagecodecs decode bit-exactly; ``opj_compress`` (tiles, tile-parts,
precincts, layers, each progression order, POC, SOP/EPH, image offsets, the
code-block styles of ``-M``), ``gdcmconv --j2k`` and imagecodecs produce
streams our decoder reads bit-exactly.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from gateway.codecs import get_codec
from gateway.codecs.base import FrameInfo
from gateway.codecs.jpeg2000 import decode
from gateway.pipeline.pixels import iter_frames
from tests.images import make_dataset
from tests.tools import require

pytestmark = pytest.mark.interop

CODEC = get_codec(JPEG2000Lossless)
_OPENJPEG_TOOLS = "libopenjp2-tools"


def _require_opj(name: str) -> str:
    import shutil

    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package '{_OPENJPEG_TOOLS}')")
    return path


def _smooth(rng: np.random.Generator, info: FrameInfo) -> np.ndarray:
    low, high = info.value_range
    y, x = np.mgrid[0:info.rows, 0:info.columns]
    base = (np.sin(y / 9.0) + np.cos(x / 7.0) + 2.0) / 4.0 * (high - low) * 0.9 + low
    base = base + rng.integers(-(high - low) // 50 - 1, (high - low) // 50 + 1, base.shape)
    base[info.rows // 3:info.rows // 3 + 5] = low  # a flat band: run mode
    if info.samples_per_pixel == 3:
        base = np.stack([base, base[::-1], base[:, ::-1]], -1)
    return np.clip(base, low, high).astype(info.dtype)


def _cases() -> list:
    rng = np.random.default_rng(11)
    infos = [
        FrameInfo(67, 45, bits_stored=12),
        FrameInfo(64, 64, bits_stored=16),
        FrameInfo(40, 33, bits_stored=16, pixel_representation=1),
        FrameInfo(31, 29, bits_stored=13, pixel_representation=1),
        FrameInfo(30, 30, 1, 8, 8),
        FrameInfo(21, 17, 1, 16, 2),
        FrameInfo(37, 23, 3, 8, 8, 0, "RGB"),
        FrameInfo(1, 1, bits_stored=12),
        FrameInfo(1, 19, bits_stored=16),
        FrameInfo(19, 1, 1, 8, 8),
    ]
    params = []
    for info in infos:
        frame = _smooth(rng, info)
        ident = f"{info.rows}x{info.columns}_{info.bits_allocated}_{info.bits_stored}_{info.samples_per_pixel}" \
                f"_{'s' if info.signed else 'u'}"
        params.append(pytest.param(info, frame, id=ident))
    noise = FrameInfo(50, 41, bits_stored=16)
    params.append(pytest.param(noise, rng.integers(0, 65535, noise.shape, endpoint=True).astype(np.uint16),
                               id="noise_16"))
    return params


def _read_raw(path: Path, info: FrameInfo, precision: int, signed: bool) -> np.ndarray:
    """What ``opj_decompress -o x.rawl`` writes: little endian, component planes one after another.

    Signed samples come as their `precision`-bit two's complement pattern.
    """
    dtype = "<u1" if precision <= 8 else "<u2"
    planes = np.fromfile(path, dtype=dtype).astype(np.int64) & ((1 << precision) - 1)
    if signed:
        planes -= (planes >> (precision - 1)) << precision
    planes = planes.reshape(info.samples_per_pixel, info.rows, info.columns)
    return np.moveaxis(planes, 0, 2).reshape(info.shape).astype(info.dtype)


# ---------------------------------------------------------------- ours -> theirs


@pytest.mark.parametrize(("info", "frame"), _cases())
def test_opj_decompress_reads_ours(tmp_path: Path, info: FrameInfo, frame: np.ndarray) -> None:
    tool = _require_opj("opj_decompress")
    source, target = tmp_path / "ours.j2k", tmp_path / "back.rawl"
    source.write_bytes(CODEC.encode_frame(frame, info))
    subprocess.run([tool, "-i", str(source), "-o", str(target)], check=True, capture_output=True, timeout=120)
    assert np.array_equal(_read_raw(target, info, info.bits_stored, info.signed), frame)


@pytest.mark.parametrize(("info", "frame"), _cases())
def test_imagecodecs_reads_ours(info: FrameInfo, frame: np.ndarray) -> None:
    imagecodecs = pytest.importorskip("imagecodecs", reason="imagecodecs is not installed")
    decoded = imagecodecs.jpeg2k_decode(CODEC.encode_frame(frame, info))
    assert np.array_equal(np.asarray(decoded).reshape(info.shape).astype(info.dtype), frame)


@pytest.mark.parametrize(("info", "frame"), _cases())
def test_gdcmconv_reads_our_files(tmp_path: Path, info: FrameInfo, frame: np.ndarray) -> None:
    tool = require("gdcmconv", "gdcm")
    frames = [frame]  # GDCM refuses to write multi-frame signed Secondary Capture
    ds = make_dataset(info, [CODEC.encode_frame(f, info) for f in frames], JPEG2000Lossless)
    source, target = tmp_path / "ours.dcm", tmp_path / "raw.dcm"
    ds.save_as(source, enforce_file_format=True)
    subprocess.run([tool, "--raw", str(source), str(target)], check=True, capture_output=True, timeout=120)
    back = pydicom.dcmread(target)
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert all(np.array_equal(a, b) for a, b in zip(iter_frames(back), frames))


# ---------------------------------------------------------------- theirs -> ours


_OPJ_OPTIONS = {
    "default": [],
    "tiles": ["-t", "64,48"],
    "tiles-offset-RPCL": ["-t", "50,50", "-d", "7,3", "-T", "3,1", "-p", "RPCL", "-n", "3"],
    "image-offset": ["-d", "3,5"],
    "tile-parts-R": ["-TP", "R", "-p", "RLCP"],
    "tile-parts-C-tiles": ["-TP", "C", "-t", "96,64", "-p", "CPRL", "-n", "4"],
    "LRCP": ["-p", "LRCP"],
    "RLCP": ["-p", "RLCP"],
    "RPCL-precincts": ["-p", "RPCL", "-c", "[32,32],[32,32],[64,64]"],
    "PCRL-precincts": ["-p", "PCRL", "-c", "[64,64]"],
    "CPRL-precincts": ["-p", "CPRL", "-c", "[64,32],[128,64]"],
    "layers": ["-r", "40,10,1"],
    "layers-RLCP": ["-r", "30,8,3,1", "-p", "RLCP"],
    "POC": ["-n", "4", "-r", "20,1", "-POC", "T0=0,0,2,3,3,CPRL/T0=0,0,2,5,3,LRCP"],
    "SOP-EPH": ["-SOP", "-EPH", "-r", "10,1"],
    "blocks-32x16": ["-b", "32,16"],
    "blocks-4x4": ["-b", "4,4", "-n", "2"],
    "levels-0": ["-n", "1"],
    "levels-6": ["-n", "6"],
    "bypass": ["-M", "1"],
    "reset": ["-M", "2"],
    "termall": ["-M", "4"],
    "vcausal": ["-M", "8"],
    "pterm": ["-M", "16"],
    "segsym": ["-M", "32"],
    "all-styles": ["-M", "63"],
    "all-styles-layers": ["-M", "63", "-r", "20,4,1", "-p", "RPCL", "-c", "[64,64]"],
    "bypass-termall-layers": ["-M", "5", "-r", "50,12,1"],
}


def _opj_inputs(tmp_path: Path, info: FrameInfo, frame: np.ndarray) -> tuple[Path, list[str]]:
    """A raw input file for opj_compress and the -F option that describes it."""
    path = tmp_path / "in.rawl"
    planes = np.moveaxis(frame.reshape(info.rows, info.columns, info.samples_per_pixel), 2, 0)
    planes.astype(planes.dtype.newbyteorder("<")).tofile(path)
    sign = "s" if info.signed else "u"
    return path, ["-F", f"{info.columns},{info.rows},{info.samples_per_pixel},{info.bits_stored},{sign}"]


@pytest.mark.parametrize("option", list(_OPJ_OPTIONS))
@pytest.mark.parametrize(("info", "seed"), [
    (FrameInfo(203, 157, bits_stored=12), 1),
    (FrameInfo(130, 150, bits_stored=16, pixel_representation=1), 2),
    (FrameInfo(97, 120, 3, 8, 8, 0, "RGB"), 3),
], ids=["12u", "16s", "rgb"])
def test_ours_reads_opj_compress(tmp_path: Path, option: str, info: FrameInfo, seed: int) -> None:
    tool = _require_opj("opj_compress")
    frame = _smooth(np.random.default_rng(seed), info)
    source, described = _opj_inputs(tmp_path, info, frame)
    target = tmp_path / "theirs.j2k"
    result = subprocess.run([tool, "-i", str(source), "-o", str(target), *described, *_OPJ_OPTIONS[option]],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert np.array_equal(decode(target.read_bytes(), info), frame)


@pytest.mark.parametrize(("info", "frame"), _cases())
def test_ours_reads_imagecodecs(info: FrameInfo, frame: np.ndarray) -> None:
    imagecodecs = pytest.importorskip("imagecodecs", reason="imagecodecs is not installed")
    if min(info.rows, info.columns) < 2:
        pytest.skip("OpenJPEG's encoder refuses images narrower than its resolution count")
    data = frame if info.samples_per_pixel == 3 else frame.reshape(info.rows, info.columns)
    if info.bits_stored <= 8:  # the values fit a byte, and newer imagecodecs take only bytes for them
        data = data.astype(np.int8 if info.pixel_representation else np.uint8)
    stream = imagecodecs.jpeg2k_encode(data, level=0, reversible=True, codecformat="J2K",
                                       bitspersample=info.bits_stored,
                                       resolutions=max(1, min(6, min(info.rows, info.columns).bit_length())))
    assert np.array_equal(decode(stream, info), frame)


@pytest.mark.parametrize(("info", "frame"), _cases())
def test_ours_reads_gdcmconv_j2k(tmp_path: Path, info: FrameInfo, frame: np.ndarray) -> None:
    tool = require("gdcmconv", "gdcm")
    if min(info.rows, info.columns) < 2:
        pytest.skip("gdcmconv --j2k crashes on images one pixel wide")
    frames = [frame]  # GDCM refuses to write multi-frame signed Secondary Capture
    source, target = tmp_path / "native.dcm", tmp_path / "j2k.dcm"
    make_dataset(info, frames, ExplicitVRLittleEndian).save_as(source, enforce_file_format=True)
    result = subprocess.run([tool, "--j2k", str(source), str(target)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    ds = pydicom.dcmread(target)
    assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
    photometric = str(ds.PhotometricInterpretation)
    streams = list(generate_frames(ds.PixelData, number_of_frames=len(frames)))
    for stream, expected in zip(streams, frames):
        assert np.array_equal(decode(stream, info), expected), photometric
