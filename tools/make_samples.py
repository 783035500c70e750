"""Regenerate the sample images: a few of pydicom's bundled test files and a generated CT series.

    python tools/make_samples.py

Writes, into ``sample_dicom/`` at the top of the checkout, ``single/`` (CT_small, MR_small and a small odd-sized RGB secondary
capture, all uncompressed so any storescu can send them) and ``series/`` (a 24-slice 128x128 CT series with smooth
synthetic anatomy: new UIDs, no patient data).  The output is
deterministic except for the generated UIDs.  The script lives outside
``sample_dicom/`` so that the folder holds nothing but DICOM files: the
README's ``storescu ... sample_dicom/ -r`` sends every file it finds.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SAMPLES = Path(__file__).resolve().parent.parent / "sample_dicom"
BUNDLED = ["CT_small.dcm", "MR_small.dcm", "SC_rgb_small_odd.dcm"]


def copy_bundled(folder: Path) -> None:
    """Copy small files from pydicom's own test data (MIT licensed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in BUNDLED:
        shutil.copyfile(get_testdata_file(name), folder / name)


def make_series(folder: Path, slices: int = 24, size: int = 128) -> None:
    """A CT series: a smooth 12-bit phantom, one slice per file, fresh UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2026)
    template = dcmread(get_testdata_file("CT_small.dcm"))
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    y, x = np.mgrid[0:size, 0:size] - size / 2
    for index in range(slices):
        ds = copy.deepcopy(template)
        z = index - slices / 2
        body = (x**2 + y**2 + (2 * z) ** 2) < (0.42 * size) ** 2
        bone = np.abs(np.hypot(x, y) - 0.3 * size) < 2
        pixels = np.where(body, 1040, 24) + np.where(bone & body, 900, 0)
        pixels = np.clip(pixels + rng.normal(0, 8, pixels.shape), 0, 4095).astype(np.uint16)
        ds.PatientName, ds.PatientID = "SAMPLE^SERIES", "SAMPLE-0001"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SeriesDescription = "generated sample series"
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [-64.0, -64.0, float(2 * z)]
        ds.SliceLocation = float(2 * z)
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
            if keyword in ds:
                del ds[keyword]
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"slice_{index + 1:03d}.dcm", enforce_file_format=True)


def main() -> None:
    copy_bundled(SAMPLES / "single")
    make_series(SAMPLES / "series")
    print(f"samples written under {SAMPLES}")


if __name__ == "__main__":
    main()
