"""Writing a recompressed instance as the received bytes with only Pixel Data and the syntax replaced.

The pipeline changes nothing but the pixel data encoding, so re-encoding
every other attribute (``dcmwrite``) is wasted work: tens of milliseconds for
a scanner header rich in private tags.  :func:`splice_write` copies the
original bytes around the Pixel Data element instead.
"""

from __future__ import annotations

import struct
from pathlib import Path

from pydicom import Dataset

from gateway.dicom.filemeta import parse_file_meta, with_transfer_syntax
from gateway.dicom.uids import is_explicit_little_endian

__all__ = ["pixel_span", "splice_write", "PIXEL_DATA"]

PIXEL_DATA = 0x7FE00010
_META_CHANGED = {0x00020000, 0x00020010}  # group length, transfer syntax
_PIXEL_GROUP_LENGTH = 0x7FE00000  # (7FE0,0000): counts the Pixel Data that is replaced
_SEQ_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # sequence delimitation item


def pixel_span(ds: Dataset) -> tuple[int, int] | None:
    """File offsets (start, end) of the still-unread Pixel Data element of explicit VR `ds`."""
    if PIXEL_DATA not in ds:
        return None
    raw = ds.get_item(PIXEL_DATA, keep_deferred=True)  # a value left in the file stays there
    tell, length, value = getattr(raw, "value_tell", None), getattr(raw, "length", None), getattr(raw, "value", None)
    if tell is None or length is None:
        return None
    if not isinstance(value, bytes) and not (value is None and length != 0xFFFFFFFF):  # None: left in the file
        return None
    start = tell - 12  # explicit VR OB/OW header: tag, VR, reserved, 32-bit length
    return start, (tell + length if length != 0xFFFFFFFF else tell + len(value) + 8)


def splice_write(src: Path, original: Dataset, new: Dataset, dst: Path, span: tuple[int, int] | None) -> bool:
    """Write `new` as `src`'s bytes with only the file meta and Pixel Data replaced.

    The pipeline changes nothing but the pixel data encoding, so re-encoding
    every other attribute (``dcmwrite``) is wasted work: tens of milliseconds
    for a scanner header rich in private tags.  This copies the original bytes
    around the Pixel Data element instead (`span`: its offsets, taken with
    :func:`pixel_span` before the pipeline read the element) and never reads
    the old pixel data.  It applies only when both syntaxes encode the
    dataset as explicit VR little endian, every other top-level element
    and every file meta element but the transfer syntax of `new` equals the
    original's, and no Group Length (7FE0,0000) would count the old Pixel
    Data; otherwise it returns False and writes nothing.
    """
    source = str(original.file_meta.get("TransferSyntaxUID", ""))
    target = str(new.file_meta.get("TransferSyntaxUID", ""))
    if not (is_explicit_little_endian(source) and is_explicit_little_endian(target)) or span is None:
        return False
    # The element dicts as they are: raw elements the pipeline shares with the
    # original are the same objects, so most comparisons are identity checks.
    # Tags compared as plain ints: BaseTag's own comparisons run in Python.
    before_items, after_items = original._dict, new._dict
    if _PIXEL_GROUP_LENGTH in before_items:  # it would be stale: dcmwrite drops the retired group lengths
        return False
    tags = [t for t in map(int, before_items) if t != PIXEL_DATA]
    if tags != [t for t in map(int, after_items) if t != PIXEL_DATA]:
        return False
    for tag in tags:
        before, after = before_items[tag], after_items[tag]
        if before is not after and original.get_item(tag) != new.get_item(tag):
            return False
    meta_before, meta_after = original.file_meta, new.file_meta
    meta_tags = list(map(int, meta_before.keys()))
    if meta_tags != list(map(int, meta_after.keys())):
        return False
    if any(meta_before[t] != meta_after[t] for t in meta_tags if t not in _META_CHANGED):
        return False
    element = new[PIXEL_DATA]
    value = element.value
    if element.VR not in ("OB", "OW") or not isinstance(value, bytes) or len(value) % 2:
        return False
    start, end = span
    with open(src, "rb") as handle:
        head = handle.read(min(start + 8, 65_536))
        try:
            meta_end, _ = parse_file_meta(head)
            meta = with_transfer_syntax(head, target)
        except ValueError:
            return False
        handle.seek(start)
        if handle.read(4) != b"\xe0\x7f\x10\x00":
            return False
        handle.seek(meta_end)
        middle = handle.read(start - meta_end)
        handle.seek(end)
        tail = handle.read()
    if element.is_undefined_length:
        header, trailer = struct.pack("<HH2sHI", 0x7FE0, 0x0010, element.VR.encode(), 0, 0xFFFFFFFF), _SEQ_END
    else:
        header, trailer = struct.pack("<HH2sHI", 0x7FE0, 0x0010, element.VR.encode(), 0, len(value)), b""
    with open(dst, "wb") as handle:
        handle.write(meta)
        handle.write(middle)
        handle.write(header)
        handle.write(value)
        handle.write(trailer)
        handle.write(tail)
    return True
