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
from pydicom.uid import JPEGLSLossless, RLELossless

from tests.conftest import REPO
from tests.worker_peak import write_multiframe


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident size from /proc")
@pytest.mark.parametrize("rle_source, target", [(False, RLELossless), (True, JPEGLSLossless)],
                         ids=["native source", "RLE source"])
def test_a_large_multiframe_image_is_processed_below_twice_its_size(tmp_path: Path, rle_source: bool,
                                                                     target: str) -> None:
    """Native frames are read from the file one at a time; compressed ones are decoded one at a time."""
    source = tmp_path / "multiframe.dcm"
    pixels = write_multiframe(source, 240, rle=rle_source)  # 126 MB of pixels
    size = source.stat().st_size
    (tmp_path / "gateway.toml").write_text(
        f'[spool]\ndirectory = "spool"\n[compression]\ntransfer_syntax = "{target}"\n'
        '[[destinations]]\nname = "folder"\nkind = "folder"\npath = "archive"\n')
    result = subprocess.run([sys.executable, "-m", "tests.worker_peak", str(tmp_path / "gateway.toml"), str(source)],
                            capture_output=True, text=True, cwd=REPO, env=dict(os.environ), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["syntax"] == target, "the image must have been recompressed for the bound to mean anything"
    growth = (got["peak"] - got["before"]) / size
    assert growth < 2.0, f"the worker grew by {growth:.2f}x the object's size: {got}"
    stored = dcmread(got["object"])
    assert stored.file_meta.TransferSyntaxUID == target
    assert np.array_equal(stored.pixel_array, pixels)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"])
def test_frames_left_in_the_file_equal_the_frames_read_in_memory(tmp_path: Path, syntax: str) -> None:
    from pydicom.uid import UID

    from gateway.pipeline.pixels import FileFrames, deferred_pixels, native_frames

    path = tmp_path / "mf.dcm"
    pixels = write_multiframe(path, 6)
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


def test_frames_decoded_on_each_pass_equal_the_frames_held(tmp_path: Path, monkeypatch) -> None:
    import gateway.pipeline.pixels as pixels_module
    from gateway.pipeline.pixels import DecodedFrames, decoded_frames

    path = tmp_path / "mf_rle.dcm"
    pixels = write_multiframe(path, 5, rle=True)
    ds = dcmread(path)
    assert isinstance(decoded_frames(ds), list), "small: held"
    monkeypatch.setattr(pixels_module, "HOLD_DECODED_BYTES", 512 * 512 * 2 * 4)
    frames = decoded_frames(ds)
    assert isinstance(frames, DecodedFrames), "larger than the limit: decoded on each pass"
    for _ in range(2):
        assert len(frames) == 5
        assert all(np.array_equal(frame, expected) for frame, expected in zip(frames, pixels, strict=True))
    assert np.array_equal(frames[-2], pixels[3]) and np.array_equal(frames[0], pixels[0])
    assert [np.array_equal(f, e) for f, e in zip(frames[1:3], pixels[1:3], strict=True)] == [True, True]
    with pytest.raises(IndexError):
        frames[5]
