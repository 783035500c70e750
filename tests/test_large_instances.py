"""Large, legitimate instances are recompressed within a few frames' worth of memory beside their output.

A breast tomosynthesis, an enhanced multi-frame CT or an ultrasound cine
loop is hundreds to thousands of frames, 0.5 to 2 GB.  Each test here
processes a smaller instance of the same shape (its Pixel Data above the
size the worker leaves in the file) and measures the peak of what Python
allocated (tracemalloc: numpy's arrays are counted too) against the size of
the pixel data: a path that holds the whole image, or a second copy of its
encoded form, shows up as a peak of that size.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, generate_uid

ROWS = COLUMNS = 512
FRAMES = 48
PIXEL_BYTES = ROWS * COLUMNS * 2 * FRAMES  # 24 MiB: above the 8 MiB the worker leaves in the file


def smooth_frames(frames: int = FRAMES) -> np.ndarray:
    """12-bit frames of gentle gradients that drift from frame to frame: every codec shrinks them many times."""
    y, x = np.mgrid[0:ROWS, 0:COLUMNS]
    return np.stack([((x + y + 3 * index) // 8 + 500).astype(np.uint16) for index in range(frames)])


def write_instance(path: Path, pixels: np.ndarray, syntax: str = ExplicitVRLittleEndian) -> Path:
    """A multi-frame CT-like object of `pixels` (frames, rows, columns) in native `syntax`."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "CT"
    ds.PatientName, ds.PatientID = "LARGE^INSTANCE", "L1"
    ds.Rows, ds.Columns, ds.NumberOfFrames = pixels.shape[1], pixels.shape[2], pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True, enforce_file_format=True)
    return path


def traced_peak(work: Callable[[], Any]) -> tuple[Any, int]:
    """What `work` returns and the peak of memory allocated while it ran, beyond what was allocated before."""
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = work()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak - base


def _process(tmp_path: Path, source: Path, target: str) -> tuple[Path, int]:
    """Store `source` in a spool and process it as the worker does; the processed object and the peak."""
    from gateway.spool import Spool
    from gateway.warmup import configured_syntaxes, warm_up
    from gateway.worker import process_instance
    from tests.conftest import build_config

    config = build_config(tmp_path, compression={"transfer_syntax": target})
    warm_up(configured_syntaxes(config, forwarding=False))  # the kernels' loading is no part of the peak
    spool = Spool(config.spool.directory)
    ident = spool.store_received(source, "MODALITY")
    jobs, peak = traced_peak(lambda: process_instance(config, spool, ident))
    assert jobs and jobs[0].identity.transfer_syntax == target, "recompressed, or the peak means nothing"
    return spool.object_path(ident), peak


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian], ids=["explicit", "implicit"])
def test_the_worker_never_reads_a_large_native_pixel_data_whole(tmp_path: Path, syntax: str) -> None:
    """Frames are read from the file one at a time: nothing may read the whole value besides.

    The check for an icon in a sequence read every top-level element, Pixel
    Data too, and a copy of an implicit VR dataset read it for its memo: the
    whole image stayed in memory until the instance was done.
    """
    pixels = smooth_frames()
    source = write_instance(tmp_path / "large.dcm", pixels, syntax)
    stored, peak = _process(tmp_path, source, RLELossless)
    assert peak < PIXEL_BYTES // 3, f"{peak} bytes allocated at the peak for {PIXEL_BYTES} bytes of pixels"
    assert np.array_equal(dcmread(stored).pixel_array, pixels)
