"""The worker's lean reading: only the elements recompression reads, the rest spliced from the received bytes.

Every processed object written through :func:`gateway.dicom.lean.read_lean`
must be byte for byte the one the whole-file reading writes, including the
outputs that cannot be spliced (an attribute of the image pixel module
changes), and the files it does not cover must be left to pydicom.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

import gateway.dicom.lean
import gateway.worker
from gateway.codecs.base import FrameInfo
from gateway.dicom.lean import KEPT_GROUPS, KEPT_TAGS, read_lean, restore
from gateway.spool import Spool
from gateway.worker import process_instance
from tests.conftest import build_config, pydicom_file
from tests.fuzzing import EDITS, apply_edits
from tests.images import make_dataset


def _rich(info: FrameInfo, frames: list, uid: str = ExplicitVRLittleEndian) -> Dataset:
    """A dataset with what a scanner's header has around the pixels: a sequence, private tags, a trailing element."""
    ds = make_dataset(info, frames, uid)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", "1.2.3.4.5"
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = "T-D1100", "SRT"
    ds.AnatomicRegionSequence = Sequence([item])
    block = ds.private_block(0x0029, "LEAN TEST", create=True)
    block.add_new(0x10, "LO", "private value")
    block.add_new(0x11, "OB", bytes(range(64)))
    after = ds.private_block(0x7FE1, "LEAN TEST", create=True)  # elements after Pixel Data
    after.add_new(0x10, "OB", b"\x00\x01")
    return ds


def _bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _grey(rows=48, cols=40, frames=1) -> Dataset:
    rng = np.random.default_rng(3)
    info = FrameInfo(rows, cols, 1, 16, 12, 0, "MONOCHROME2")
    y, x = np.mgrid[0:rows, 0:cols]
    return _rich(info, [(1000 + 20 * x + 10 * y + rng.integers(0, 8, (rows, cols))).astype(np.uint16)
                        for _ in range(frames)])


def _rgb() -> Dataset:
    info = FrameInfo(24, 30, 3, 8, 8, 0, "RGB")  # smooth, so that every codec shrinks it
    y, x = np.mgrid[0:24, 0:30]
    return _rich(info, [np.stack([4 * x, 5 * y, 2 * (x + y)], axis=-1).astype(np.uint8)])


def _process(tmp: Path, data: bytes, target: str) -> bytes:
    config = build_config(tmp, compression={"transfer_syntax": target})
    spool = Spool(config.spool.directory)
    ident = spool.store_received(data, "MODALITY")
    jobs = process_instance(config, spool, ident)
    assert jobs, "the instance got its job"
    return spool.object_path(ident).read_bytes()


CASES = [
    ("CT_small", lambda: _bytes(pydicom_file("CT_small.dcm")), "RLELossless"),
    ("MR_small", lambda: _bytes(pydicom_file("MR_small.dcm")), "JPEGLSLossless"),
    ("grey multi-frame", lambda: _bytes(_grey(frames=3)), "JPEGLSLossless"),
    ("grey to native", lambda: _bytes(_grey()), "ImplicitVRLittleEndian"),
    ("RLE source", lambda: _bytes(_grey_rle()), "JPEGLSLossless"),
    # JPEG 2000 writes RGB as YBR_RCT: the pixel module changes, the splice cannot apply.
    ("RGB to JPEG 2000", lambda: _bytes(_rgb()), "JPEG2000Lossless"),
    ("RGB to RLE", lambda: _bytes(_rgb()), "RLELossless"),
]


def _grey_rle() -> Dataset:
    ds = _grey()
    ds.compress(RLELossless, encoding_plugin="pydicom")
    return ds


@pytest.mark.parametrize("make, target", [(m, t) for _, m, t in CASES], ids=[c[0] for c in CASES])
def test_lean_reading_writes_what_the_whole_reading_writes(tmp_path: Path, monkeypatch, make, target) -> None:
    data = make()
    used = []

    def spying(path):
        lean = read_lean(path)
        used.append(lean is not None)
        return lean

    restored = []

    def restoring(full, before, after):
        restored.append(True)
        return restore(full, before, after)

    monkeypatch.setattr(gateway.worker, "read_lean", spying)
    monkeypatch.setattr(gateway.worker, "restore", restoring)
    lean_output = _process(tmp_path / "lean", data, target)
    assert used == [True], "the lean reading applied"
    # The JPEG 2000 output changes the pixel module, an implicit VR output every element's encoding:
    # the whole dataset is written, with the outcome's changes.
    assert restored == ([True] if target in ("JPEG2000Lossless", "ImplicitVRLittleEndian") else [])
    monkeypatch.setattr(gateway.worker, "read_lean", lambda path: None)
    whole_output = _process(tmp_path / "whole", data, target)
    assert lean_output == whole_output

    sent, got = dcmread(BytesIO(data)), dcmread(BytesIO(lean_output))
    assert got.file_meta.TransferSyntaxUID != sent.file_meta.TransferSyntaxUID, "recompressed"
    assert np.array_equal(got.pixel_array, sent.pixel_array)
    for element in sent:
        if element.tag == 0x7FE00010 or (target == "JPEG2000Lossless" and element.keyword in (
                "PhotometricInterpretation",)):
            continue
        if element.tag.is_private and target == "ImplicitVRLittleEndian":
            continue  # implicit VR: a private element's VR is not written, it reads back as UN
        assert got[element.tag] == element, f"{element.tag} kept"


def test_lean_dataset_holds_the_kept_elements_and_the_pixel_data_offsets(tmp_path: Path) -> None:
    path = tmp_path / "rich.dcm"
    path.write_bytes(_bytes(_grey()))
    lean = read_lean(path)
    assert lean is not None
    tags = {int(tag) for tag in lean.dataset.keys()}
    assert tags and all(tag >> 16 in KEPT_GROUPS or tag in KEPT_TAGS for tag in tags)
    assert {0x00280010, 0x00280011, 0x00280100, 0x7FE00010, 0x00080018} <= tags
    full = dcmread(path)
    for tag in tags:
        assert lean.dataset[tag] == full[tag]
    start, end = lean.pixel_span
    data = path.read_bytes()
    assert data[start:start + 4] == b"\xe0\x7f\x10\x00"
    assert data[end:end + 4] == b"\xe1\x7f\x10\x00", "the span ends where the next element starts"


def test_files_the_lean_reading_does_not_cover_are_left_to_pydicom(tmp_path: Path, monkeypatch) -> None:
    implicit = tmp_path / "implicit.dcm"
    implicit.write_bytes(_bytes(_rich(FrameInfo(8, 8, 1, 16, 12, 0, "MONOCHROME2"),
                                      [np.zeros((8, 8), np.uint16)], ImplicitVRLittleEndian)))
    assert read_lean(implicit) is None
    explicit = tmp_path / "explicit.dcm"
    data = _bytes(_grey())
    explicit.write_bytes(data)
    assert read_lean(explicit) is not None
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[:-3])
    assert read_lean(truncated) is None
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(data[:400] + bytes(range(256)) * 4)
    assert read_lean(garbage) is None
    monkeypatch.setattr(gateway.dicom.lean, "MAX_LEAN_BYTES", len(data) - 1)
    assert read_lean(explicit) is None, "large files: pydicom leaves Pixel Data in the file"


_SEED = _bytes(_grey())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(edits=EDITS)
def test_damaged_files_are_read_lean_or_left_to_pydicom(tmp_path: Path, edits) -> None:
    """Any bytes: the lean reading returns a dataset whose Pixel Data lies inside the file, or None; never raises."""
    data = apply_edits(_SEED, edits)
    path = tmp_path / "damaged.dcm"
    path.write_bytes(data)
    lean = read_lean(path)
    if lean is not None and lean.pixel_span is not None:
        start, end = lean.pixel_span
        assert 0 <= start < end <= len(data) and data[start:start + 4] == b"\xe0\x7f\x10\x00"


def test_a_group_length_of_the_pixel_data_is_not_left_stale(tmp_path: Path) -> None:
    """(7FE0,0000) counts the Pixel Data that recompression replaces: the output states the new length, not
    the old; the lean and the whole reading write the same file."""
    import struct

    data = _bytes(_grey())
    at = data.rindex(b"\xe0\x7f\x10\x00OW")
    pixel_element = 12 + struct.unpack_from("<I", data, at + 8)[0]
    data = data[:at] + struct.pack("<HH2sHI", 0x7FE0, 0x0000, b"UL", 4, pixel_element) + data[at:]
    assert dcmread(BytesIO(data))[0x7FE00000].value == pixel_element
    lean_output = _process(tmp_path / "lean", data, "JPEGLSLossless")
    got = dcmread(BytesIO(lean_output))
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    from tests.test_group_lengths import _lengths  # walked by the test's own parser, not the code under test

    stated, actual = _lengths(lean_output)[0x7FE0]
    assert got[0x7FE00000].value == stated == actual != pixel_element, "the group length follows the new Pixel Data"
    assert np.array_equal(got.pixel_array, dcmread(BytesIO(data)).pixel_array)


@pytest.mark.parametrize("private", [False, True], ids=["icon-sequence", "private-sequence"])
def test_pixel_data_nested_in_a_sequence_sends_the_worker_to_the_whole_file(tmp_path: Path, private: bool) -> None:
    """The lean reading keeps no sequence of the header: an encapsulated icon in one would go unseen, and be
    left in the received syntax under the new one.  Such a file is read whole, and kept as received."""
    from tests.test_pipeline import _with_icon

    buffer = BytesIO()
    _with_icon(encapsulated=True, private=private).save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    path = tmp_path / "icon.dcm"
    path.write_bytes(data)
    assert read_lean(path) is None
    assert _process(tmp_path / "spool", data, "RLELossless") == data, "kept as received, byte for byte"
