"""Process one instance as a worker does, in a fresh interpreter, and print its memory as JSON.

``python -m tests.worker_peak CONFIG FILE``: the configured codecs are warmed
up first, then `FILE` is stored in the spool and processed.  The line printed
holds the resident size before processing (``before``), the process's peak
(``peak``, VmHWM: ``ru_maxrss`` would keep the size of the parent from before
the exec), the processed object's path and size, and the syntax it was stored
in.  :func:`write_multiframe` makes a large object to measure.  Used by the worker
memory test and the end-to-end benchmark.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def write_multiframe(path: Path, frames: int, seed: int = 3, *, rle: bool = False) -> np.ndarray:
    """Write a 12-bit 512 x 512 multi-frame US object of `frames` frames (0.5 MB each) to `path`.

    Returns its pixels.  Smooth waves that drift from frame to frame, with noise: it compresses.
    With `rle` the pixel data is RLE Lossless, one fragment per frame.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:512, 0:512]
    pixels = np.empty((frames, 512, 512), np.uint16)
    for index in range(frames):
        pixels[index] = np.clip(900 + 300 * np.sin((x + index) / 9.0) * np.cos(y / 13.0)
                                + rng.normal(0, 8, (512, 512)), 0, 4095)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = RLELossless if rle else ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # US multi-frame
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "US"
    ds.Rows = ds.Columns = 512
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.NumberOfFrames = 1, "MONOCHROME2", frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if rle:
        from gateway.codecs.base import FrameInfo
        from gateway.codecs.rle import encode

        info = FrameInfo(512, 512, 1, 16, 12, 0, "MONOCHROME2")
        ds.PixelData = encapsulate([encode(frame, info) for frame in pixels])
        ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    else:
        ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return pixels


def _status(field: str) -> int:
    return int(Path("/proc/self/status").read_text().split(f"{field}:")[1].split()[0]) * 1024


def main(config_path: str, file: str) -> None:
    from gateway.config import load_config
    from gateway.spool import Spool
    from gateway.warmup import configured_syntaxes, warm_up
    from gateway.worker import process_instance

    config = load_config(Path(config_path))
    warm_up(configured_syntaxes(config, forwarding=False))
    spool = Spool(config.spool.directory)
    ident = spool.store_received(Path(file), "MODALITY")
    before = _status("VmRSS")
    jobs = process_instance(config, spool, ident)
    peak = _status("VmHWM")
    stored = spool.object_path(ident)
    print(json.dumps({"before": before, "peak": peak, "object": str(stored), "stored": stored.stat().st_size,
                      "syntax": jobs[0].identity.transfer_syntax if jobs else None}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
