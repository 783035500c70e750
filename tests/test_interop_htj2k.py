"""HTJ2K interop with decoders and encoders we did not write.

Ours -> OpenJPH (``ojph_expand``, and its library through imagecodecs, which
also covers signed samples that ``ojph_expand`` clamps when it writes) and
OpenJPEG (pylibjpeg-openjpeg) decode bit-exactly; ``ojph_compress`` (code-block
sizes, levels, tiles, offsets, precincts, every progression order, colour
transform on or off) and imagecodecs (OpenJPH: tiles, TLM, tile-parts) produce
reversible streams our decoder reads bit-exactly.  The same on the corpus.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import HTJ2KLossless, HTJ2KLosslessRPCL

from gateway.codecs import get_codec
from gateway.codecs.base import FrameInfo
from gateway.codecs.htj2k import decode
from gateway.pipeline.pixels import frame_info, high_bits_used, iter_frames
from tests.corpus import corpus_params

pytestmark = pytest.mark.interop

CODECS = [get_codec(HTJ2KLossless), get_codec(HTJ2KLosslessRPCL)]
_OPENJPH_TOOLS = "openjph-tools"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package '{_OPENJPH_TOOLS}')")
    return path


def _smooth(rng: np.random.Generator, info: FrameInfo) -> np.ndarray:
    low, high = info.value_range
    y, x = np.mgrid[0:info.rows, 0:info.columns]
    base = (np.sin(y / 9.0) + np.cos(x / 7.0) + 2.0) / 4.0 * (high - low) * 0.9 + low
    base = base + rng.integers(-(high - low) // 50 - 1, (high - low) // 50 + 1, base.shape)
    base[info.rows // 3:info.rows // 3 + 5] = low
    if info.samples_per_pixel == 3:
        base = np.stack([base, base[::-1], base[:, ::-1]], -1)
    return np.clip(base, low, high).astype(info.dtype)


def _cases(signed: bool = True) -> list:
    rng = np.random.default_rng(12)
    infos = [
        FrameInfo(67, 45, bits_stored=12),
        FrameInfo(64, 64, bits_stored=16),
        FrameInfo(30, 30, 1, 8, 8),
        FrameInfo(21, 17, 1, 16, 2),
        FrameInfo(37, 23, 3, 8, 8, 0, "RGB"),
        FrameInfo(1, 1, bits_stored=12),
        FrameInfo(1, 19, bits_stored=16),
        FrameInfo(19, 1, 1, 8, 8),
        FrameInfo(515, 300, bits_stored=14),
    ]
    if signed:
        infos += [FrameInfo(40, 33, bits_stored=16, pixel_representation=1),
                  FrameInfo(31, 29, bits_stored=13, pixel_representation=1)]
    params = []
    for info in infos:
        ident = f"{info.rows}x{info.columns}_{info.bits_stored}_{info.samples_per_pixel}_{'s' if info.signed else 'u'}"
        params.append(pytest.param(info, _smooth(rng, info), id=ident))
    noise = FrameInfo(50, 41, bits_stored=16)
    params.append(pytest.param(noise, rng.integers(0, 65535, noise.shape, endpoint=True).astype(np.uint16),
                               id="noise_16"))
    return params


def _write_pnm(path: Path, frame: np.ndarray, info: FrameInfo) -> None:
    kind = b"P6" if info.samples_per_pixel == 3 else b"P5"
    maximum = (1 << info.bits_stored) - 1
    body = frame.astype(">u2" if maximum > 255 else np.uint8).tobytes()
    path.write_bytes(kind + f"\n{info.columns} {info.rows}\n{maximum}\n".encode() + body)


def _read_pnm(path: Path, info: FrameInfo) -> np.ndarray:
    data = path.read_bytes()
    parts = data.split(b"\n", 3)
    maximum = int(parts[2])
    values = np.frombuffer(parts[3], dtype=">u2" if maximum > 255 else np.uint8)
    return values.reshape(info.shape).astype(info.dtype)


def _pnm_name(info: FrameInfo) -> str:
    return "x.ppm" if info.samples_per_pixel == 3 else "x.pgm"


# ---------------------------------------------------------------- ours -> theirs


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@pytest.mark.parametrize(("info", "frame"), _cases(signed=False))
def test_ojph_expand_reads_ours(tmp_path: Path, codec, info: FrameInfo, frame: np.ndarray) -> None:
    tool = _tool("ojph_expand")
    source, target = tmp_path / "ours.j2c", tmp_path / _pnm_name(info)
    source.write_bytes(codec.encode_frame(frame, info))
    done = subprocess.run([tool, "-i", str(source), "-o", str(target)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert np.array_equal(_read_pnm(target, info), frame)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@pytest.mark.parametrize(("info", "frame"), _cases())
def test_openjph_library_reads_ours(codec, info: FrameInfo, frame: np.ndarray) -> None:
    imagecodecs = pytest.importorskip("imagecodecs", reason="imagecodecs is not installed")
    if not imagecodecs.HTJ2K.available:
        pytest.skip("imagecodecs was built without OpenJPH")
    decoded = imagecodecs.htj2k_decode(codec.encode_frame(frame, info))
    assert np.array_equal(np.asarray(decoded).reshape(info.shape).astype(info.dtype), frame)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@pytest.mark.parametrize(("info", "frame"), _cases())
def test_openjpeg_reads_ours(codec, info: FrameInfo, frame: np.ndarray) -> None:
    openjpeg = pytest.importorskip("openjpeg", reason="pylibjpeg-openjpeg is not installed")
    decoded = np.asarray(openjpeg.decode(codec.encode_frame(frame, info)))
    assert np.array_equal(decoded.reshape(info.shape).astype(info.dtype), frame)


# ---------------------------------------------------------------- theirs -> ours


_OJPH_OPTIONS = {
    "default": [],
    "blocks-32x32": ["-block_size", "{32,32}"],
    "blocks-16x64": ["-block_size", "{16,64}"],
    "blocks-4x1024": ["-block_size", "{4,1024}", "-num_decomps", "2"],
    "levels-0": ["-num_decomps", "0"],
    "levels-1": ["-num_decomps", "1"],
    "levels-7": ["-num_decomps", "7"],
    "LRCP": ["-prog_order", "LRCP"],
    "RLCP": ["-prog_order", "RLCP"],
    "PCRL": ["-prog_order", "PCRL"],
    "CPRL": ["-prog_order", "CPRL"],
    "precincts": ["-precincts", "{64,64},{32,32}", "-prog_order", "PCRL"],
    "tiles": ["-tile_size", "{64,48}"],
    "tiles-offset": ["-tile_size", "{50,70}", "-tile_offset", "{3,7}", "-image_offset", "{5,9}"],
    "no-colour-transform": ["-colour_trans", "false"],
}


@pytest.mark.parametrize("option", list(_OJPH_OPTIONS))
@pytest.mark.parametrize(("info", "seed"), [
    (FrameInfo(203, 157, bits_stored=12), 1),
    (FrameInfo(130, 150, bits_stored=16), 2),
    (FrameInfo(97, 120, 3, 8, 8, 0, "RGB"), 3),
], ids=["12u", "16u", "rgb"])
def test_ours_reads_ojph_compress(tmp_path: Path, option: str, info: FrameInfo, seed: int) -> None:
    tool = _tool("ojph_compress")
    frame = _smooth(np.random.default_rng(seed), info)
    source, target = tmp_path / _pnm_name(info), tmp_path / "theirs.j2c"
    _write_pnm(source, frame, info)
    done = subprocess.run([tool, "-i", str(source), "-o", str(target), "-reversible", "true",
                           *_OJPH_OPTIONS[option]], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert np.array_equal(decode(target.read_bytes(), info), frame)


@pytest.mark.parametrize("options", [{}, {"tlm": True}, {"tile": (32, 32)},
                                     {"tile": (64, 48), "tlm": True, "tilepart": 1},
                                     {"tile": (64, 48), "tlm": True, "tilepart": 2}],
                         ids=["default", "tlm", "tiles", "tiles-tlm-tileparts-1", "tiles-tlm-tileparts-2"])
@pytest.mark.parametrize(("info", "frame"), _cases())
def test_ours_reads_imagecodecs_htj2k(info: FrameInfo, frame: np.ndarray, options: dict) -> None:
    imagecodecs = pytest.importorskip("imagecodecs", reason="imagecodecs is not installed")
    if not imagecodecs.HTJ2K.available:
        pytest.skip("imagecodecs was built without OpenJPH")
    data = frame if info.samples_per_pixel == 3 else frame.reshape(info.rows, info.columns)
    try:
        stream = imagecodecs.htj2k_encode(data, reversible=True, **options)
    except imagecodecs.Htj2kError as exc:
        pytest.skip(f"OpenJPH refuses these options for this image: {exc}")
    assert np.array_equal(decode(stream, info), frame)


# ---------------------------------------------------------------- the corpus


@pytest.mark.parametrize("row", corpus_params(limit_per_series=1))
def test_corpus_both_ways_with_openjph(tmp_path: Path, row: dict) -> None:
    imagecodecs = pytest.importorskip("imagecodecs", reason="imagecodecs is not installed")
    ds = pydicom.dcmread(row["file"])
    info = frame_info(ds)
    codec = CODECS[1]
    if codec.supports(info):
        pytest.skip(codec.supports(info))
    frame = next(iter_frames(ds))
    if high_bits_used(frame, info):
        pytest.skip("bits above Bits Stored hold data (passed through by the pipeline)")
    ours = codec.encode_frame(frame, info)
    assert np.array_equal(np.asarray(imagecodecs.htj2k_decode(ours)).reshape(info.shape).astype(info.dtype), frame)
    data = frame if info.samples_per_pixel == 3 else frame.reshape(info.rows, info.columns)
    theirs = imagecodecs.htj2k_encode(data, reversible=True)
    assert np.array_equal(decode(theirs, info), frame)
