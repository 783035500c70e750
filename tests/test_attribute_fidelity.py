"""Every attribute but the pixel data encoding reaches the archive as it arrived, whatever the encoding it came in.

A recompressed instance is written explicit VR little endian.  One that
arrived implicit VR or big endian must keep every other element's value
bytes (word-swapped from big endian), with the VR the standard gives it:
the worker's processed object is read here with an element parser of this
file's own, not with pydicom, which normalises what it reads.
"""

from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
)

from gateway.dicom.filemeta import parse_file_meta
from gateway.pipeline import recompress
from gateway.spool import Spool
from gateway.worker import process_instance
from tests.conftest import build_config, pydicom_file

_LONG = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_WORD = {"US": 2, "SS": 2, "OW": 2, "AT": 2, "UL": 4, "SL": 4, "FL": 4, "OL": 4, "OF": 4, "FD": 8, "OD": 8}
_UNDEFINED = 0xFFFFFFFF


def _elements(data: bytes, pos: int, end: int, implicit: bool, little: bool) -> tuple[dict, int]:
    """{tag: (VR or None, value bytes or a list of items)} of the elements from `pos` to `end` or an item's end."""
    order = "<" if little else ">"
    found: dict = {}
    while pos < end:
        group, element = struct.unpack_from(order + "HH", data, pos)
        tag = group << 16 | element
        if tag == 0xFFFEE00D:
            return found, pos + 8
        if implicit:
            vr, (length,), start = None, struct.unpack_from(order + "I", data, pos + 4), pos + 8
        elif data[pos + 4:pos + 6] in _LONG:
            vr, (length,), start = data[pos + 4:pos + 6], struct.unpack_from(order + "I", data, pos + 8), pos + 12
        else:
            vr, (length,), start = data[pos + 4:pos + 6], struct.unpack_from(order + "H", data, pos + 6), pos + 8
        if tag == 0x7FE00010:  # the pixel data is compared by its values elsewhere
            found[tag] = (vr, None)
            break
        if vr == b"SQ" or (vr is None and tag in _SEQUENCES):
            items, pos = _items(data, start, length, implicit, little)
            found[tag] = (vr, items)
            continue
        found[tag] = (vr, data[start:start + length])
        pos = start + length
    return found, pos


def _items(data: bytes, pos: int, length: int, implicit: bool, little: bool) -> tuple[list, int]:
    order = "<" if little else ">"
    end = len(data) if length == _UNDEFINED else pos + length
    items = []
    while pos < end:
        tag = struct.unpack_from(order + "HH", data, pos)
        size = struct.unpack_from(order + "I", data, pos + 4)[0]
        if tag == (0xFFFE, 0xE0DD):
            return items, pos + 8
        if size == _UNDEFINED:
            item, pos = _elements(data, pos + 8, len(data), implicit, little)
        else:
            item, _ = _elements(data, pos + 8, pos + 8 + size, implicit, little)
            pos += 8 + size
        items.append(item)
    return items, pos


_SEQUENCES = {0x00082218}  # Anatomic Region Sequence, in the implicit VR test dataset


def _parse(data: bytes) -> tuple[str, dict]:
    """The transfer syntax and the dataset elements of a DICOM file's bytes."""
    start, syntax = parse_file_meta(data[:65536])
    elements, _ = _elements(data, start, len(data), syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian)
    return syntax, elements


def _swapped(value: bytes, size: int) -> bytes:
    return b"".join(value[i:i + size][::-1] for i in range(0, len(value), size))


def _rich(syntax: str) -> bytes:
    """A small CT-like image in `syntax` whose header holds what pydicom would normalise if left to it."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.3680043.8.498.3"
    ds.Modality = "CT"
    ds.InstitutionName = "PLACEHOLDER"  # value bytes set below
    ds.PatientName = "PLACEHOLDER"
    ds.SliceThickness = "1"
    ds.PixelSpacing = [0.5, 0.5]
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "T-D1100", "SRT", "PLACEHOLDER"
    ds.AnatomicRegionSequence = Sequence([item])
    block = ds.private_block(0x0029, "FIDELITY TEST", create=True)
    block.add_new(0x10, "OB", b"\x01\x02\x03\x04\x05\x06")  # no dictionary knows it: UN when explicit
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 32, 32, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
    ds.SmallestImagePixelValue, ds.LargestImagePixelValue = -100, 1900  # US or SS: SS here
    y, x = np.mgrid[0:32, 0:32]
    pixels = ((x // 8) * 400 + (y // 8) * 100 - 100).astype("<i2")  # flat blocks: every codec shrinks them
    ds.PixelData = (pixels.byteswap() if syntax == ExplicitVRBigEndian else pixels).tobytes()
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian,
             little_endian=syntax != ExplicitVRBigEndian)
    data = buffer.getvalue()
    # Values pydicom would not write itself: trailing spaces, bytes that are not UTF-8, padded numbers.
    for new in (b"ACME        ", b"Head        ", b"Ab\xff\xfe^X      "):  # in the order of their tags
        data = data.replace(b"PLACEHOLDER ", new, 1)
    data = data.replace(b"1 ", b" 1", 1)  # (0018,0050) DS with a leading space
    return data


def _process(tmp_path: Path, data: bytes, target: str) -> bytes:
    config = build_config(tmp_path, compression={"transfer_syntax": target})
    spool = Spool(config.spool.directory)
    ident = spool.store_received(data, "MODALITY")
    assert process_instance(config, spool, ident), "the instance got its job"
    return spool.object_path(ident).read_bytes()


def _compare(before: dict, after: dict, little: bool, implicit: bool) -> list[str]:
    """Differences between the original's elements and the explicit VR little endian output's."""
    problems = []
    if set(before) != set(after):
        problems.append(f"tags differ: {sorted(set(before) ^ set(after))}")
    for tag in sorted(set(before) & set(after)):
        (vr_a, a), (vr_b, b) = before[tag], after[tag]
        where = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        if not implicit and vr_a != vr_b and tag != 0x7FE00010:
            problems.append(f"{where} VR {vr_a} became {vr_b}")
        if isinstance(a, list):
            if not isinstance(b, list) or len(a) != len(b):
                problems.append(f"{where} items differ")
                continue
            for item_a, item_b in zip(a, b, strict=True):
                problems += [f"{where} item: {p}" for p in _compare(item_a, item_b, little, implicit)]
            continue
        if a is None or b is None:
            continue
        size = _WORD.get((vr_b or b"").decode())
        expected = a if little or size is None else _swapped(a, size)
        if expected != b:
            problems.append(f"{where} {expected!r} became {b!r}")
    return problems


# pydicom warns as it replaces what it cannot decode: the outcome is what counts, not the warning.
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_values_keep_their_bytes_from_another_encoding(tmp_path: Path, syntax: str) -> None:
    """Trailing spaces, bytes invalid in the character set and padded numbers survive implicit VR and big
    endian sources; ambiguous and unknown VRs get the VR the standard says."""
    data = _rich(syntax)
    out = _process(tmp_path, data, "RLELossless")
    target, after = _parse(out)
    assert target == RLELossless
    _, before = _parse(data)
    assert _compare(before, after, syntax != ExplicitVRBigEndian, syntax == ImplicitVRLittleEndian) == []
    assert after[0x00080080] == (b"LO", b"ACME        ")
    assert after[0x00100010] == (b"PN", b"Ab\xff\xfe^X      ")
    assert after[0x00180050][1] == b" 1"
    assert after[0x00280106][0] == b"SS" and after[0x00280107][0] == b"SS"
    assert after[0x00291010][0] == (b"UN" if syntax == ImplicitVRLittleEndian else b"OB")
    assert after[0x00082218][1][0][0x00080104] == (b"LO", b"Head        ")
    # The pixel values are those sent.
    assert np.array_equal(dcmread(BytesIO(out)).pixel_array, dcmread(BytesIO(data)).pixel_array)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_native_target_keeps_value_bytes(syntax: str) -> None:
    """Decoding into explicit or implicit VR little endian, as a destination may ask, keeps them too."""
    data = _rich(syntax)
    for target in {ExplicitVRLittleEndian, ImplicitVRLittleEndian} - {syntax}:
        outcome = recompress(dcmread(BytesIO(data)), target)
        assert outcome.recompressed, outcome.reason
        buffer = BytesIO()
        dcmwrite(buffer, outcome.dataset, enforce_file_format=True)
        _, after = _parse(buffer.getvalue())
        assert after[0x00080080][1] == b"ACME        "
        assert after[0x00100010][1] == b"Ab\xff\xfe^X      "


def test_original_sequences_untouched(tmp_path: Path) -> None:
    """Re-expressing the copy in another encoding leaves the dataset it came from as it was read."""
    ds = dcmread(BytesIO(_rich(ImplicitVRLittleEndian)))
    outcome = recompress(ds, JPEGLSLossless)
    assert outcome.recompressed, outcome.reason
    assert ds.original_encoding == (True, True)
    assert ds.AnatomicRegionSequence[0].original_encoding == (True, True)
    assert outcome.dataset.AnatomicRegionSequence[0] is not ds.AnatomicRegionSequence[0]


def test_pydicom_big_endian_file(tmp_path: Path) -> None:
    """pydicom's own big endian MR keeps every element's bytes, swapped per word."""
    source = pydicom_file("MR_small_bigendian.dcm")
    buffer = BytesIO()
    dcmwrite(buffer, source, enforce_file_format=True)
    data = buffer.getvalue()
    out = _process(tmp_path, data, "JPEGLSLossless")
    _, before = _parse(data)
    _, after = _parse(out)
    assert _compare(before, after, False, False) == []
