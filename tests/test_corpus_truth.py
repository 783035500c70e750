"""Our reading of every corpus original agrees with MANIFEST.csv, a truth no code of ours computed.

The manifest's ``sha256_of_pixel_array`` hashes ``pydicom.dcmread(path).pixel_array``
(colour in YBR converted to RGB; none of the corpus files is).  The pipeline
reads originals through :func:`gateway.pipeline.pixels.iter_frames` and
records :func:`gateway.pipeline.pixel_hash` in the proof; both must agree
with the manifest on every image, or the proof would prove nothing.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from gateway.pipeline import pixel_hash, recompress
from gateway.pipeline.pixels import frame_decoder, frame_info, high_bits_used, iter_frames
from tests.corpus import corpus_params

pytestmark = pytest.mark.corpus


def _within_bits_stored(frame: np.ndarray, bits_stored: int) -> np.ndarray:
    """What ``pixel_array`` (not raw) makes of stored values: only the low Bits Stored bits, sign-extended."""
    unused = frame.dtype.itemsize * 8 - bits_stored
    if frame.dtype.kind == "i":
        return (frame << unused) >> unused
    return frame & ((1 << bits_stored) - 1)


@pytest.mark.parametrize("row", corpus_params())
def test_original_pixels_hash_to_the_manifest(row: dict) -> None:
    ds = pydicom.dcmread(row["file"])
    assert "YBR" not in str(ds.PhotometricInterpretation), "the manifest converted this one's colour"
    assert frame_decoder(ds)[0] == "native"
    info = frame_info(ds)
    frames = [_within_bits_stored(f, info.bits_stored) for f in iter_frames(ds)]
    assert pixel_hash(frames) == row["sha256_of_pixel_array"]


@pytest.mark.parametrize("row", corpus_params(limit_per_series=1))
def test_the_proof_records_the_manifest_hash(row: dict) -> None:
    ds = pydicom.dcmread(row["file"])
    info = frame_info(ds)
    hidden = any(high_bits_used(f, info) for f in iter_frames(ds))
    outcome = recompress(ds, "RLELossless", verify=True)
    if hidden:  # data above Bits Stored: carried as received, and its hash covers those bits too
        assert not outcome.recompressed and "bits above" in (outcome.reason or "")
        return
    assert outcome.pixel_hash == row["sha256_of_pixel_array"]
    if outcome.recompressed:
        assert [name for name, _ in outcome.verified_by] == ["ours/rle", "pylibjpeg-rle"]
        assert {digest for _, digest in outcome.verified_by} == {row["sha256_of_pixel_array"]}
