"""A large multi-frame image is processed one frame at a time: the worker never holds it twice over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from tests.conftest import REPO


def _multiframe(path: Path, frames: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:512, 0:512]
    pixels = np.empty((frames, 512, 512), np.uint16)
    for index in range(frames):
        pixels[index] = np.clip(900 + 300 * np.sin((x + index) / 9.0) * np.cos(y / 13.0)
                                + rng.normal(0, 8, (512, 512)), 0, 4095)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "US"
    ds.Rows = ds.Columns = 512
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.NumberOfFrames = 1, "MONOCHROME2", frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return pixels


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident size from /proc")
def test_a_large_multiframe_image_is_processed_below_twice_its_size(tmp_path: Path) -> None:
    source = tmp_path / "multiframe.dcm"
    pixels = _multiframe(source, 240)  # 126 MB
    size = source.stat().st_size
    (tmp_path / "gateway.toml").write_text(
        '[spool]\ndirectory = "spool"\n[compression]\ntransfer_syntax = "RLELossless"\n'
        '[[destinations]]\nname = "folder"\nkind = "folder"\npath = "archive"\n')
    result = subprocess.run([sys.executable, "-m", "tests.worker_peak", str(tmp_path / "gateway.toml"), str(source)],
                            capture_output=True, text=True, cwd=REPO, env=dict(os.environ), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["syntax"] == RLELossless, "the image must have been recompressed for the bound to mean anything"
    growth = (got["peak"] - got["before"]) / size
    assert growth < 2.0, f"the worker grew by {growth:.2f}x the object's size: {got}"
    stored = dcmread(got["object"])
    assert stored.file_meta.TransferSyntaxUID == RLELossless
    assert np.array_equal(stored.pixel_array, pixels)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"])
def test_frames_left_in_the_file_equal_the_frames_read_in_memory(tmp_path: Path, syntax: str) -> None:
    from pydicom.uid import UID

    from gateway.pipeline.pixels import FileFrames, deferred_pixels, native_frames

    path = tmp_path / "mf.dcm"
    pixels = _multiframe(path, 6)
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.save_as(path, implicit_vr=syntax == "1.2.840.10008.1.2", little_endian=True, enforce_file_format=True)
    left = dcmread(path, defer_size=1 << 20)
    frames = native_frames(left)
    if syntax.endswith(".99"):  # deflated: offsets are into the inflated bytes, never read from the file
        assert deferred_pixels(left) is None and not isinstance(frames, FileFrames)
    else:
        assert deferred_pixels(left) is not None and isinstance(frames, FileFrames)
    for _ in range(2):  # a sequence that reads again on every pass
        assert len(frames) == 6
        assert all(np.array_equal(frame, expected) for frame, expected in zip(frames, pixels, strict=True))
    assert np.array_equal(frames[-1], pixels[-1])
