"""Is a received file one complete DICOM dataset, and which instance is it?

The receiver answers each C-STORE only after checking this, so the check is
paid once per image while the sender waits.  A full parse with pydicom builds
an element object for every attribute of the header (scanners write hundreds)
and costs more than everything else the receiver does; the walk here reads
only element headers and the five identifying values, skipping every other
value, nested sequences included, by its length.

It covers the encodings nearly every sender uses: implicit and explicit VR
little endian and the encapsulated (compressed) syntaxes, ours included.
For anything else (big endian, deflated, unknown syntaxes), or anything that
does not walk cleanly (an unknown VR, a length running past the end, a
truncated header...), :func:`walk_file` returns None or raises ValueError and
the caller decides with pydicom, so no file is refused here that pydicom
would accept.
"""

from __future__ import annotations

import mmap
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.dicom.filemeta import LONG_VRS as _LONG
from gateway.dicom.filemeta import SHORT_VRS as _SHORT
from gateway.dicom.filemeta import parse_file_meta
from gateway.dicom.identity import Identity
from gateway.dicom.uids import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    is_explicit_little_endian,
    is_known,
)
from gateway.dicom.validate import is_valid_uid

if TYPE_CHECKING:
    from pydicom import Dataset

__all__ = ["Identity", "MAX_ELEMENTS", "TooManyElements", "walk_file", "check_complete"]

# Elements of a dataset at most, those in sequences counted: a scanner writes hundreds, an enhanced
# multi-frame object of thousands of frames some hundred thousand.  pydicom, which reads the dataset
# again to recompress it, takes some 350 bytes an element, however short its value.
MAX_ELEMENTS = 1_000_000

_IMPLICIT, _EXPLICIT = IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_CHARSET = 0x00080005
_PLAIN = re.compile(rb"[ -~]*\x00?")  # printable ASCII, a UI's padding NUL
_MAX_DEPTH = 64

_WANTED = {
    0x00080016: "sop_class_uid",
    0x00080018: "sop_instance_uid",
    0x00080060: "modality",
    0x0020000D: "study_uid",
    0x0020000E: "series_uid",
}


def _walkable(syntax: str) -> bool | None:
    """True for implicit VR LE, False for explicit VR LE, None for what this module leaves to pydicom."""
    if syntax == _IMPLICIT:
        return True
    if syntax == _EXPLICIT:
        return False
    return False if is_known(syntax) and is_explicit_little_endian(syntax) else None


class TooManyElements(ValueError):
    """A dataset holds more than :data:`MAX_ELEMENTS` elements: whole, but more than the gateway takes."""


class _Walker:
    """Element headers of one dataset in a buffer; values skipped by length."""

    def __init__(self, data: mmap.mmap | bytes) -> None:
        self.data = data
        self.size = len(data)
        self.found: dict[int, bytes] = {}
        self.left = MAX_ELEMENTS

    def header(self, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
        """(tag, VR or None, value length, value offset) of the element at `pos`."""
        data = self.data
        if self.size - pos < 8:
            raise ValueError(f"dataset truncated: {self.size - pos} byte(s) at {pos} do not form an element")
        group, elem = struct.unpack_from("<HH", data, pos)
        tag = group << 16 | elem
        if implicit or group == 0xFFFE:
            return tag, None, struct.unpack_from("<I", data, pos + 4)[0], pos + 8
        vr = bytes(data[pos + 4:pos + 6])
        if vr in _SHORT:
            return tag, vr, struct.unpack_from("<H", data, pos + 6)[0], pos + 8
        if vr in _LONG:
            if self.size - pos < 12:
                raise ValueError(f"dataset truncated inside the header of ({group:04X},{elem:04X})")
            return tag, vr, struct.unpack_from("<I", data, pos + 8)[0], pos + 12
        raise ValueError(f"element ({group:04X},{elem:04X}) has the unknown VR {vr!r}")

    def elements(self, pos: int, implicit: bool, depth: int, end: int | None) -> int:
        """Walk elements from `pos` to `end` (None: to the item delimiter); return the position after."""
        if depth > _MAX_DEPTH:
            raise ValueError(f"sequences nested deeper than {_MAX_DEPTH} levels")
        stop = self.size if end is None else end
        while pos < stop:
            tag, vr, length, value = self.header(pos, implicit)
            if tag == _ITEM_END and end is None and depth:
                return value
            self.left -= 1
            if self.left < 0:
                raise TooManyElements(f"the dataset holds more than {MAX_ELEMENTS} elements")
            if tag >> 16 in (0x0000, 0x0002, 0xFFFE):  # command, file meta or delimiter: not dataset elements
                raise ValueError(f"unexpected element ({tag >> 16:04X},{tag & 0xFFFF:04X}) at {pos}")
            if length == _UNDEFINED:
                if vr is not None and vr not in (b"SQ", b"UN", b"OB", b"OW"):
                    raise ValueError(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) {vr!r} has undefined length")
                # Encapsulated pixel data holds opaque fragments; a sequence (or an
                # undefined-length UN, whose content is implicit VR: PS3.5 6.2.2) datasets.
                opaque = vr in (b"OB", b"OW") or (vr is None and tag == _PIXEL_DATA)
                pos = self.items(value, implicit or vr == b"UN", depth + 1, opaque)
                continue
            pos = value + length
            if pos > stop:
                raise ValueError(f"dataset truncated: element ({tag >> 16:04X},{tag & 0xFFFF:04X}) runs "
                                 f"{pos - stop} byte(s) past the end")
            if tag == _CHARSET and b"\x00" in self.data[value:pos]:  # pydicom cannot look such a name up
                raise ValueError("(0008,0005) Specific Character Set holds a NUL byte")
            if depth == 0 and tag in _WANTED:
                found = bytes(self.data[value:pos])
                if b"\\" in found or not _PLAIN.fullmatch(found):  # pydicom's reading decides
                    raise ValueError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is not one plain ASCII value")
                self.found[tag] = found
        if end is None and depth:
            raise ValueError("dataset truncated inside a sequence item")
        return pos

    def items(self, pos: int, implicit: bool, depth: int, opaque: bool) -> int:
        """Walk the items of an undefined-length value up to its sequence delimiter.

        The items of an `opaque` value (fragments) are skipped, those of a
        sequence walked as datasets.
        """
        while True:
            tag, _, length, value = self.header(pos, True)
            if tag == _SEQUENCE_END:
                return value
            if tag != _ITEM:
                raise ValueError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) where an item or delimiter belongs")
            if length == _UNDEFINED:
                if opaque:
                    raise ValueError("a fragment of encapsulated data has undefined length")
                pos = self.elements(value, implicit, depth, None)
                continue
            pos = value + length
            if pos > self.size:
                raise ValueError(f"dataset truncated: an item runs {pos - self.size} byte(s) past the end")
            if not opaque:
                self.elements(value, implicit, depth, pos)


def _text(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", "replace").strip()


def walk_file(path: Path) -> Identity | None:
    """Walk the DICOM file at `path`.

    Returns its identity, or None when its transfer syntax is one this module
    leaves to pydicom.  Raises ValueError when the file does not walk as one
    complete dataset, or lacks a valid SOP Class or SOP Instance UID.
    """
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        if size < 140:
            raise ValueError(f"file of {size} bytes is too short to be DICOM")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            head = data[:min(size, 65_536)]
            offset, syntax = parse_file_meta(head)
            if head[132:136] == b"\x02\x00\x00\x00" and offset != 144 + struct.unpack_from("<I", head, 140)[0]:
                raise ValueError("the file meta group length does not match its elements")
            implicit = _walkable(syntax)
            if implicit is None:
                return None
            walker = _Walker(data)
            if offset >= size:
                raise ValueError("the dataset holds no elements")
            walker.elements(offset, implicit, 0, None)
    values = {name: _text(walker.found.get(tag, b"")) for tag, name in _WANTED.items()}
    for name in ("sop_class_uid", "sop_instance_uid"):
        if not is_valid_uid(values[name]):
            raise ValueError(f"{name.replace('_uid', '').replace('_', ' ')} UID {values[name]!r} is not a valid UID")
    return Identity(transfer_syntax=syntax, **values)


def check_complete(ds: Dataset, size: int) -> None:
    """Raise ValueError when the dataset ends before the file's bytes do or vice versa.

    pydicom silently shortens a truncated last value and stops at a partial
    element header, so a cut-off transfer would otherwise pass as valid.
    """
    keys = list(ds.keys())
    if not keys:
        raise ValueError("the dataset holds no elements")
    elem = ds.get_item(keys[-1], keep_deferred=True)  # a deferred value is not read: its length is known
    tell = getattr(elem, "value_tell", None)
    length = getattr(elem, "length", None)
    if tell is None or length is None:
        return  # already converted: nothing to compare against
    value = elem.value
    if length != 0xFFFFFFFF:
        if value is not None and len(value) != length:
            raise ValueError(f"dataset truncated: element {elem.tag} has {len(value)} of {length} bytes")
        end = tell + length
    elif isinstance(value, bytes):
        end = tell + len(value) + 8  # the sequence delimitation item
    else:
        return
    if end < size:
        raise ValueError(f"dataset truncated: {size - end} byte(s) after element {elem.tag} do not form an element")
    if end > size:
        raise ValueError(f"dataset truncated: element {elem.tag} runs {end - size} byte(s) past the end")
