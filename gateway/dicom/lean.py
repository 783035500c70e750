"""The attributes the pipeline reads, from a received file, without parsing the rest of its header.

Recompression reads the image pixel module (group 0028), Pixel Data and its
offset tables (group 7FE0), the identifying UIDs and the modality; it
changes nothing else, and the processed object is written as the received
bytes with Pixel Data replaced (:func:`gateway.dicom.splice.splice_write`).
A scanner's header holds hundreds of other elements, and building a pydicom
element for each of them costs more than encoding a small image.
:func:`read_lean` walks the element headers (values skipped by their
lengths, as the receiver's check does) and hands pydicom only the elements
that matter, with the file offsets of Pixel Data for the splice.

It applies to explicit VR little endian files (every encapsulated syntax
included) of moderate size; anything else (implicit VR, whose output must
be re-encoded as a whole, big endian, deflated, very large values left in
their file, Pixel Data nested in a sequence, which the pipeline must see)
or anything that does not walk cleanly returns None, and the caller reads
the whole file with pydicom.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_dataset

from gateway.dicom.filemeta import parse_file_meta
from gateway.dicom.uids import is_explicit_little_endian
from gateway.dicom.walk import _UNDEFINED, _Walker

__all__ = ["Lean", "read_lean", "KEPT_GROUPS", "KEPT_TAGS", "MAX_LEAN_BYTES", "restore"]

# (7FE0,0010) as its tag's bytes: a sequence holding them may nest Pixel Data, which the pipeline must see.
_NESTED_PIXEL_DATA = b"\xe0\x7f\x10\x00"

KEPT_GROUPS = frozenset({0x0028, 0x7FE0})
"""Groups kept whole: the image pixel module, Pixel Data and its offset tables, float pixel data."""

KEPT_TAGS = frozenset({
    0x00080005,  # Specific Character Set
    0x00080016,  # SOP Class UID
    0x00080018,  # SOP Instance UID
    0x00080060,  # Modality
    0x0020000D,  # Study Instance UID
    0x0020000E,  # Series Instance UID
})

MAX_LEAN_BYTES = 8 << 20
"""Larger files are read by pydicom, which leaves a large Pixel Data value in the file."""

_PIXEL_DATA = 0x7FE00010


@dataclass(frozen=True)
class Lean:
    """A dataset of the kept elements only, and the file offsets (start, end) of its Pixel Data element."""

    dataset: Dataset
    pixel_span: tuple[int, int] | None


def read_lean(path: Path) -> Lean | None:
    """The kept elements of the file at `path`, or None where the whole file must be read (see the module).

    The file is mapped, not read: the walk touches the element headers, and
    the Pixel Data value is copied out once, straight into its element.  The
    dataset's file meta holds only the transfer syntax: the processed
    object's file meta is the received one's bytes with that syntax changed.
    """
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_LEAN_BYTES or size < 144:
                return None
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                offset, syntax = parse_file_meta(data[:65_536])
                if not is_explicit_little_endian(syntax):
                    return None
                walker = _Walker(data)
                parts: list[bytes] = []
                pixels: DataElement | None = None
                span: tuple[int, int] | None = None
                pos = offset
                while pos < size:
                    tag, vr, length, value = walker.header(pos, False)
                    if tag >> 16 in (0x0000, 0x0002, 0xFFFE):
                        return None
                    undefined = length == _UNDEFINED
                    if undefined:
                        if vr not in (b"SQ", b"UN", b"OB", b"OW"):
                            return None
                        end = walker.items(value, vr == b"UN", 1, vr in (b"OB", b"OW"))
                    else:
                        end = value + length
                        if end > size:
                            return None
                    if vr in (b"SQ", b"UN") and data.find(_NESTED_PIXEL_DATA, value, end) != -1:
                        return None  # Pixel Data in a sequence (an icon): the pipeline sees it in the whole file
                    if tag == _PIXEL_DATA:
                        if vr not in (b"OB", b"OW"):
                            return None
                        # An undefined length value ends with the sequence delimitation item (8 bytes).
                        pixels = DataElement(tag, vr.decode(), data[value:end - 8 if undefined else end],
                                             is_undefined_length=undefined)
                        span = (pos, end)
                    elif tag >> 16 in KEPT_GROUPS or tag in KEPT_TAGS:
                        parts.append(data[pos:end])
                    pos = end
        ds = read_dataset(BytesIO(b"".join(parts)), False, True)
        if pixels is not None:
            ds[_PIXEL_DATA] = pixels
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
    except (OSError, ValueError, EOFError):
        return None
    except Exception:  # noqa: BLE001 - pydicom rejects a kept element in its own ways: the full reading decides
        return None
    return Lean(ds, span)


def restore(full: Dataset, before: Dataset, after: Dataset) -> Dataset:
    """`full` with the changes that turned the lean `before` into `after` (elements set or deleted, file meta).

    For an output that cannot be spliced from the received bytes (an
    attribute of the image pixel module changed as well as Pixel Data): the
    whole dataset is then written, with exactly the lean outcome's changes.
    """
    old, new = before._dict, after._dict
    for tag in [t for t in old if t not in new]:
        del full[tag]
    for tag, element in new.items():
        if old.get(tag) is not element:
            full[tag] = after[tag]
    meta_before, meta_after = before.file_meta, after.file_meta  # the syntax, and the writer's names
    for tag in [t for t in meta_before.keys() if t not in meta_after and t in full.file_meta]:
        del full.file_meta[tag]
    for element in meta_after:
        if element.tag not in meta_before or meta_before[element.tag].value != element.value:
            full.file_meta[element.tag] = element
    return full
