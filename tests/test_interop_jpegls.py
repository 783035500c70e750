"""JPEG-LS interop with DCMTK and GDCM: they decode our DICOM files
bit-exactly (``dcmdjpls``, ``gdcmconv --raw``) and we decode theirs
(``dcmcjpls`` with each interleave mode and with preset parameters,
``gdcmconv --jpegls``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

from gateway.codecs import get_codec, jpegls
from gateway.codecs.base import FrameInfo
from gateway.pipeline.pixels import frame_info, high_bits_used, iter_frames, number_of_frames
from tests.corpus import corpus_params
from tests.images import make_dataset
from tests.tools import require, require_dcmtk

pytestmark = pytest.mark.interop

CODEC = get_codec(JPEGLSLossless)


def _images() -> list:
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:37, 0:29]
    smooth = (y * 50 + x * 30 + rng.integers(0, 40, (37, 29))).astype(np.int64)
    smooth[5:12, 3:20] = 700
    rgb = np.stack([smooth, smooth * 2, smooth[::-1]], -1)
    cases = [
        (FrameInfo(37, 29, bits_stored=16), (smooth * 20 % 65536).astype(np.uint16)),
        (FrameInfo(37, 29, bits_stored=12), (smooth % 4096).astype(np.uint16)),
        (FrameInfo(37, 29, bits_allocated=16, bits_stored=8), (smooth % 256).astype(np.uint16)),
        (FrameInfo(37, 29, bits_allocated=16, bits_stored=8, pixel_representation=1),
         (smooth % 256 - 128).astype(np.int16)),
        (FrameInfo(37, 29, bits_allocated=8, bits_stored=8), (smooth % 256).astype(np.uint8)),
        (FrameInfo(37, 29, 3, 8, 8, 0, "RGB"), (rgb % 256).astype(np.uint8)),
        (FrameInfo(37, 29, bits_stored=12, pixel_representation=1), (smooth % 4096 - 2048).astype(np.int16)),
        (FrameInfo(37, 29, bits_stored=16, pixel_representation=1),
         (smooth * 20 % 65536 - 32768).astype(np.int16)),
        (FrameInfo(1, 1, bits_stored=12), np.array([[4095]], np.uint16)),
        (FrameInfo(3, 1, 3, 8, 8, 0, "RGB"), np.array([[[1, 2, 3]], [[1, 2, 3]], [[250, 0, 9]]], np.uint8)),
    ]
    sign = {0: "u", 1: "s"}
    return [
        pytest.param(info, frame, id=f"{info.rows}x{info.columns}_{info.bits_allocated}_{info.bits_stored}_"
                                     f"{info.samples_per_pixel}_{sign[info.pixel_representation]}")
        for info, frame in cases
    ]


def _native_frames(path: Path) -> tuple[FrameInfo, list[np.ndarray]]:
    """Frames of a native file as DICOM defines them: the low Bits Stored bits, sign-extended if signed.

    (DCMTK's JPEG-LS decoder leaves the bits above Bits Stored of a signed
    value at zero, which is a valid native encoding of the same value.)
    """
    ds = pydicom.dcmread(path)
    assert not ds.file_meta.TransferSyntaxUID.is_compressed
    info = frame_info(ds)
    frames = []
    for frame in iter_frames(ds):
        values = frame.astype(np.int64) & ((1 << info.bits_stored) - 1)
        if info.signed:
            values -= (values >> (info.bits_stored - 1)) << info.bits_stored
        frames.append(values.astype(info.dtype))
    return info, frames


def _peer_decode(tool: str, source: Path, target: Path) -> None:
    if tool == "dcmdjpls":
        command = [require_dcmtk("dcmdjpls")]
    else:
        command = [require("gdcmconv", "gdcm"), "--raw"]
    subprocess.run([*command, str(source), str(target)], check=True, capture_output=True, timeout=300)


def _images_and_modes() -> list:
    """Each image with our default interleave mode; colour ones also with ILV 0 and 2."""
    params = []
    for param in _images():
        info, frame = param.values
        for ilv in (None, jpegls.ILV_NONE, jpegls.ILV_SAMPLE) if info.samples_per_pixel == 3 else (None,):
            suffix = "" if ilv is None else f"-ilv{ilv}"
            params.append(pytest.param(info, frame, ilv, id=f"{param.id}{suffix}"))
    return params


@pytest.mark.parametrize(("info", "frame", "ilv"), _images_and_modes())
@pytest.mark.parametrize("tool", ["dcmdjpls", "gdcmconv"])
def test_peers_decode_our_files(tmp_path: Path, tool: str, ilv: int | None, info: FrameInfo,
                                frame: np.ndarray) -> None:
    source, target = tmp_path / "ours.dcm", tmp_path / "raw.dcm"
    stream = jpegls.encode(frame, info, ilv)
    make_dataset(info, [stream], JPEGLSLossless).save_as(source, enforce_file_format=True)
    _peer_decode(tool, source, target)
    _, frames = _native_frames(target)
    assert np.array_equal(frames[0], frame)


_PEER_ENCODERS = [
    ["dcmcjpls", "+el"],
    ["dcmcjpls", "+el", "+is"],
    ["dcmcjpls", "+el", "+in"],
    ["dcmcjpls", "+el", "+t1", "5", "+t2", "9", "+t3", "30", "+rs", "40"],
    ["gdcmconv", "--jpegls"],
]


def _peer_encode(options: list[str], source: Path, target: Path) -> None:
    if options[0] == "dcmcjpls":
        command = [require_dcmtk("dcmcjpls"), *options[1:]]
    else:
        command = [require("gdcmconv", "gdcm"), *options[1:]]
    subprocess.run([*command, str(source), str(target)], check=True, capture_output=True, timeout=300)


def _our_decode(path: Path) -> list[np.ndarray]:
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == JPEGLSLossless
    info = frame_info(ds)
    return [CODEC.decode_frame(stream, info)
            for stream in generate_frames(ds.PixelData, number_of_frames=number_of_frames(ds))]


@pytest.mark.parametrize(("info", "frame"), _images())
@pytest.mark.parametrize("options", _PEER_ENCODERS, ids=lambda o: "-".join(o).replace("+", ""))
def test_we_decode_peer_files(tmp_path: Path, options: list[str], info: FrameInfo, frame: np.ndarray) -> None:
    if options[0] == "gdcmconv" and info.rows * info.columns < 16:
        pytest.skip("gdcmconv fails to JPEG-LS compress images of a few pixels (exit status 1)")
    source, target = tmp_path / "raw.dcm", tmp_path / "peer.dcm"
    make_dataset(info, [frame], ExplicitVRLittleEndian).save_as(source, enforce_file_format=True)
    _peer_encode(options, source, target)
    (decoded,) = _our_decode(target)
    assert np.array_equal(decoded, frame)


def _corpus_sample() -> list:
    return corpus_params(limit_per_series=1)


def _carried(path: Path) -> tuple[Dataset, FrameInfo, list[np.ndarray]]:
    """The corpus dataset, its frame description and raw frames; skip what the pipeline passes through."""
    ds = pydicom.dcmread(path)
    info = frame_info(ds)
    if CODEC.supports(info):
        pytest.skip(f"JPEG-LS Lossless cannot carry it: {CODEC.supports(info)}")
    frames = list(iter_frames(ds))
    if any(high_bits_used(f, info) for f in frames):
        pytest.skip("values in the unused high bits: the pipeline passes it through")
    # Sequences holding encapsulated pixel data inside a native file (icons, a
    # vendor's private copy) stop DCMTK before it reaches the image; they are
    # not what these tests are about.
    for element in list(ds):
        if element.VR == "SQ" and any("PixelData" in item for item in element.value):
            del ds[element.tag]
    return ds, info, frames


@pytest.mark.corpus
@pytest.mark.parametrize("row", _corpus_sample())
@pytest.mark.parametrize("tool", ["dcmdjpls", "gdcmconv"])
def test_peers_decode_our_corpus_files(tmp_path: Path, tool: str, row: dict) -> None:
    """The corpus dataset with its pixel data replaced by our codestreams, as the gateway forwards it."""
    ds, info, frames = _carried(row["file"])
    source, target = tmp_path / "ours.dcm", tmp_path / "raw.dcm"
    ds.PixelData = encapsulate([CODEC.encode_frame(f, info) for f in frames])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.save_as(source, enforce_file_format=True)
    _peer_decode(tool, source, target)
    _, decoded = _native_frames(target)
    assert len(decoded) == len(frames)
    assert all(np.array_equal(a, b) for a, b in zip(decoded, frames))


@pytest.mark.corpus
@pytest.mark.parametrize("row", _corpus_sample())
@pytest.mark.parametrize("options", [_PEER_ENCODERS[0], _PEER_ENCODERS[-1]], ids=lambda o: o[0])
def test_we_decode_peer_corpus_files(tmp_path: Path, options: list[str], row: dict) -> None:
    ds, info, frames = _carried(row["file"])
    source, target = tmp_path / "raw.dcm", tmp_path / "peer.dcm"
    ds.save_as(source, enforce_file_format=True)  # as pydicom writes it: a file every peer parses
    _peer_encode(options, source, target)
    decoded = _our_decode(target)
    assert len(decoded) == len(frames)
    assert all(np.array_equal(a, b) for a, b in zip(decoded, frames))
