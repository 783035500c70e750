"""Writing a recompressed instance as the received bytes with only Pixel Data and the syntax replaced.

The pipeline changes nothing but the pixel data encoding, so re-encoding
every other attribute (``dcmwrite``) is wasted work: tens of milliseconds for
a scanner header rich in private tags.  :func:`splice_write` copies the
original bytes around the Pixel Data element instead.

It also keeps the Group Length elements (gggg,0000) of the dataset, which
``dcmwrite`` drops wherever it finds them.  They are retired (PS3.5 7.2) and
dropping them is allowed, but an archive comparing the attributes it was sent
with those it stores sees them disappear.  The rule, the same on every path:

* a group whose elements are written as received keeps its group length as
  received, byte for byte, even one that was wrong: the gateway changes no
  attribute it need not, and a receiver must not rely on the value (PS3.5
  7.2);
* a group whose content changes gets its group length recomputed from the
  bytes written, whatever it said before: group 7FE0 always (Pixel Data is
  replaced, its offset tables may come or go), group 0028 when Planar
  Configuration or Photometric Interpretation change, every group of a
  dataset re-encoded from implicit VR or big endian.  Such a group length
  whose header is not a 4-byte UL (nothing could be written into it) is
  dropped, that one alone.

Only the top-level dataset is concerned: the items of a sequence copied from
the received bytes keep theirs; those of a dataset re-encoded by pydicom lose
theirs.
"""

from __future__ import annotations

import contextlib
import copy as copying
import io
import os
import shutil
import mmap
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import Dataset
from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_data_element

from gateway.dicom.filemeta import WRITER_ELEMENTS, parse_file_meta, stamped, with_transfer_syntax
from gateway.dicom.uids import IMPLICIT_VR_LITTLE_ENDIAN, is_explicit_little_endian
from gateway.dicom.walk import _UNDEFINED, _Walker

__all__ = ["pixel_span", "splice_write", "written_bytes", "write_dataset", "PIXEL_DATA"]

PIXEL_DATA = 0x7FE00010
_META_CHANGED = {0x00020000, 0x00020010, *WRITER_ELEMENTS}  # group length, transfer syntax, who wrote the file
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


def _top_level(data: mmap.mmap | bytes, start: int, implicit: bool = False) -> list[tuple[int, int, int, int]]:
    """(tag, start, value start, end) of each top-level element of the dataset from `start` to the end.

    Values are skipped by their lengths, sequences and encapsulated values of
    undefined length walked to their delimiters.  Raises ValueError where the
    bytes do not walk as one dataset.
    """
    walker = _Walker(data)
    size = len(data)
    found = []
    pos = start
    while pos < size:
        tag, vr, length, value = walker.header(pos, implicit)
        if tag >> 16 in (0x0000, 0x0002, 0xFFFE):
            raise ValueError(f"unexpected element ({tag >> 16:04X},{tag & 0xFFFF:04X}) in the dataset")
        if length == _UNDEFINED:
            if vr is not None and vr not in (b"SQ", b"UN", b"OB", b"OW"):
                raise ValueError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {vr!r} has undefined length")
            opaque = vr in (b"OB", b"OW") or (vr is None and tag == PIXEL_DATA)
            end = walker.items(value, implicit or vr == b"UN", 1, opaque)
        else:
            end = value + length
            if end > size:
                raise ValueError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) runs past the end of the file")
        found.append((tag, pos, value, end))
        pos = end
    return found


def _same(original: Dataset, new: Dataset, tag: int) -> bool:
    before, after = original.get_item(tag), new.get_item(tag)
    if before is after or before == after:
        return True
    if isinstance(before, RawDataElement) != isinstance(after, RawDataElement):  # one side parsed since
        return bool(original[tag] == new[tag])
    return False


def _encoded(new: Dataset, tag: int) -> bytes:
    """The element `tag` of `new` as explicit VR little endian bytes, as ``dcmwrite`` writes it."""
    element = new.get_item(tag)
    if element.VR is None or " or " in element.VR:
        element = new[tag]
        if " or " in element.VR:
            raise ValueError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) has the ambiguous VR {element.VR}")
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_data_element(buffer, element, new.get("SpecificCharacterSet", default_encoding))
    return buffer.getvalue()


def _group_length(group: int, length: int, implicit: bool) -> bytes:
    if implicit:
        return struct.pack("<HHII", group, 0, 4, length)
    return struct.pack("<HH2sHI", group, 0, b"UL", 4, length)


@contextlib.contextmanager
def _output(dst: Path | BinaryIO) -> Iterator[BinaryIO]:
    """`dst` to write to: a path is created (or emptied), a stream is written at its position and left open."""
    if isinstance(dst, Path):
        with open(dst, "wb") as out:
            yield out
    else:
        yield dst


def written_bytes(src: Path, original: Dataset, new: Dataset) -> bytes:
    """The file the worker writes for `new`, the recompressed `original` read whole from `src`, as bytes.

    Spliced where :func:`splice_write` applies (the received bytes and group
    lengths kept around what changed), else written by ``dcmwrite``: what
    ``compress`` writes is what the live gateway writes.
    """
    buffer = io.BytesIO()
    if not splice_write(src, original, new, buffer, None):
        buffer = io.BytesIO()  # a refusal may have left a part behind
        write_dataset(buffer, new)
    return buffer.getvalue()


def splice_write(src: Path, original: Dataset, new: Dataset, dst: Path | BinaryIO,
                 span: tuple[int, int] | None) -> bool:
    """Write `new` as `src`'s bytes with only what the pipeline changed replaced, group lengths kept.

    The pipeline changes nothing but the pixel data encoding, so re-encoding
    every other attribute (``dcmwrite``) is wasted work: tens of milliseconds
    for a scanner header rich in private tags.  When both syntaxes encode the
    dataset as explicit VR little endian and every file meta element of `new`
    but the transfer syntax and those naming the file's writer (the pipeline
    names the gateway: :func:`gateway.dicom.filemeta.stamp`) equals the
    original's, this copies the original
    bytes around the Pixel Data element instead (`span`: its offsets, taken
    with :func:`pixel_span` before the pipeline read the element) and never
    reads the old pixel data.  `original` may hold only some of the file's
    elements (:func:`gateway.dicom.lean.read_lean`): those it lacks are
    written as received.

    Top-level elements other than Pixel Data that `new` sets, changes or
    deletes (Planar Configuration, Photometric Interpretation, the offset
    tables) are written as ``dcmwrite`` writes them, the others copied; the
    group lengths follow the module's rule.  Such an output is written only
    when the file holds a group length to keep: without one ``dcmwrite``
    writes the same bytes.

    A dataset read implicit VR or big endian, re-encoded by the pipeline
    (`original` must then be the whole dataset), is written by ``dcmwrite``
    with the group lengths of the original's groups added back, recomputed.

    Returns False, writing nothing, where none of this applies: the caller
    writes `new` itself.
    """
    source = str(original.file_meta.get("TransferSyntaxUID", ""))
    target = str(new.file_meta.get("TransferSyntaxUID", ""))
    if not is_explicit_little_endian(source):
        return _rewrite(original, new, dst, target)
    if not is_explicit_little_endian(target):
        return False
    meta_before, meta_after = original.file_meta, new.file_meta
    meta_tags = [t for t in map(int, meta_before.keys()) if t not in _META_CHANGED]
    if meta_tags != [t for t in map(int, meta_after.keys()) if t not in _META_CHANGED]:
        return False
    if any(meta_before[t] != meta_after[t] for t in meta_tags):
        return False
    ours = stamped(meta_after)  # the pipeline names the gateway as the writer of what it re-encoded
    if not ours and any(meta_before.get(t) != meta_after.get(t) for t in WRITER_ELEMENTS):
        return False
    if PIXEL_DATA not in new:
        return False
    pixels = _pixel_element(new, False)
    if pixels is None:
        return False
    # The element dicts as they are: raw elements the pipeline shares with the
    # original are the same objects, so most comparisons are identity checks.
    # Tags compared as plain ints: BaseTag's own comparisons run in Python.
    before_items, after_items = original._dict, new._dict
    try:
        changed = {tag: tag in after_items for tag in map(int, set(before_items) | set(after_items))
                   if tag != PIXEL_DATA and (tag not in before_items or tag not in after_items
                                             or not _same(original, new, tag))}
    except Exception:  # noqa: BLE001 - pydicom parses a value to compare it: a damaged one raises anything
        return False
    with open(src, "rb") as handle:
        head = handle.read(65_536)
        try:
            meta_end, _ = parse_file_meta(head)
            meta = with_transfer_syntax(head, target, ours)
        except ValueError:
            return False
        if not changed and _PIXEL_GROUP_LENGTH not in before_items and span is not None:
            # Only Pixel Data changes and no group length counts it: the bytes around it are copied.
            start, end = span
            handle.seek(start)
            if handle.read(4) != b"\xe0\x7f\x10\x00":
                return False
            handle.seek(meta_end)
            middle = handle.read(start - meta_end)
            handle.seek(end)
            tail = handle.read()
            with _output(dst) as out:
                for part in (meta, middle, *pixels, tail):
                    _write(out, part)
            return True
        if handle.seek(0, 2) <= meta_end:
            return False
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            try:
                pieces = _pieces(data, meta_end, original, new, changed, span, pixels)
            except Exception:  # noqa: BLE001 - a walk that fails, a value pydicom cannot write: dcmwrite decides
                return False
            if pieces is None:
                return False
            with _output(dst) as out:
                out.write(meta)
                copy: tuple[int, int] | None = None  # a run of received bytes, written at once
                for piece in pieces:
                    if isinstance(piece, tuple):
                        if copy is not None and copy[1] == piece[0]:
                            copy = (copy[0], piece[1])
                            continue
                        if copy is not None:
                            out.write(data[copy[0]:copy[1]])
                        copy = piece
                        continue
                    if copy is not None:
                        out.write(data[copy[0]:copy[1]])
                        copy = None
                    _write(out, piece)
                if copy is not None:
                    out.write(data[copy[0]:copy[1]])
    return True


def _pieces(data: mmap.mmap, meta_end: int, original: Dataset, new: Dataset, changed: dict[int, bool],
            span: tuple[int, int] | None, pixels: tuple[bytes, Any, bytes]) -> list | None:
    """The output dataset as bytes and (start, end) runs of `data`; None when it need not be written here."""
    entries = _top_level(data, meta_end)
    in_file = {tag for tag, *_ in entries}
    if any(int(tag) not in in_file for tag in original._dict):
        return None  # the dataset was not read from these bytes
    located = [(start, end) for tag, start, _, end in entries if tag == PIXEL_DATA]
    if len(located) != 1 or (span is not None and located[0] != tuple(span)):
        return None
    if changed and not any(tag & 0xFFFF == 0 for tag in in_file):
        return None  # no group length to keep: dcmwrite writes the same bytes
    regrouped = {tag >> 16 for tag in changed} | {PIXEL_DATA >> 16}
    added = sorted(tag for tag, kept in changed.items() if kept and tag not in in_file)
    # (group, bytes or a (start, end) run), one or more per element written, in order.
    out: list[tuple[int, bytes | tuple[int, int]]] = []
    lengths: list[int] = []  # indexes in `out` of the group lengths to fill in
    for tag, start, value, end in entries:
        while added and added[0] < tag:
            extra = added.pop(0)
            out.append((extra >> 16, _encoded(new, extra)))
        group = tag >> 16
        if tag == PIXEL_DATA:
            out.extend((group, part) for part in pixels)
        elif tag in changed:
            if changed[tag]:
                out.append((group, _encoded(new, tag)))
        elif tag & 0xFFFF == 0 and group in regrouped:
            if bytes(data[start + 4:start + 8]) == b"UL\x04\x00" and end - value == 4:
                lengths.append(len(out))
                out.append((group, bytes(data[start:value])))
        else:
            out.append((group, (start, end)))
    out.extend((tag >> 16, _encoded(new, tag)) for tag in added)
    for index in lengths:
        group = out[index][0]
        total = 0
        for other, piece in out[index + 1:]:
            if other != group:
                break
            total += piece[1] - piece[0] if isinstance(piece, tuple) else _size(piece)
        out[index] = (group, _group_length(group, total, False))
    return [piece for _, piece in out]


def _rewrite(original: Dataset, new: Dataset, dst: Path, target: str) -> bool:
    """``dcmwrite`` of a re-encoded `new` with the original's top-level group lengths added back, recomputed."""
    groups = {int(tag) >> 16 for tag in original._dict if not int(tag) & 0xFFFF and int(tag) >> 16 > 2}
    if not groups:
        return False
    return _write_split(new, dst, target, groups)


def write_dataset(dst: Path | BinaryIO, ds: Dataset) -> None:
    """``dcmwrite(dst, ds, enforce_file_format=True)``, the same bytes, without a second copy of Pixel Data.

    ``dcmwrite`` writes each element into a buffer of its own before the
    file: a large image's Pixel Data is then held twice.  Here the dataset
    is written without it and its element is written from its value in its
    place; where that does not apply (a syntax other than little endian not
    deflated, a value that is not plain bytes) ``dcmwrite`` writes it all.
    """
    target = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if PIXEL_DATA in ds and _write_split(ds, dst, target, set()):
        return
    if PIXEL_DATA in ds and _is_file(ds[PIXEL_DATA].value):  # dcmwrite writes no encapsulated value from a file
        kept = ds[PIXEL_DATA].value
        kept.seek(0)
        ds[PIXEL_DATA].value = kept.read()
    dcmwrite(dst, ds, enforce_file_format=True)


def _write_split(new: Dataset, dst: Path | BinaryIO, target: str, groups: set[int]) -> bool:
    """Write `new` as ``dcmwrite`` does, its Pixel Data element from its value, with a group length for each of
    `groups` (top level, recomputed); False, writing nothing, where that does not apply.

    The dataset is written by ``dcmwrite`` into memory without its Pixel
    Data, whose element is then written from its value as ``dcmwrite``
    writes it: a large image's value is never copied into a second buffer.
    """
    implicit = target == IMPLICIT_VR_LITTLE_ENDIAN
    if not (implicit or is_explicit_little_endian(target)):
        return False
    pixels = _pixel_element(new, implicit)
    if pixels is None and (PIXEL_DATA in new or not groups):
        return False
    head = new
    if pixels is not None:
        head = copying.copy(new)  # the instance attributes; the element dict without Pixel Data
        head._dict = {tag: element for tag, element in new._dict.items() if tag != PIXEL_DATA}
    buffer = io.BytesIO()
    try:
        dcmwrite(buffer, head, enforce_file_format=True)
        data = buffer.getbuffer()
        meta_end, written = parse_file_meta(bytes(data[:65_536]))
        if written != target:
            return False
        entries = _top_level(data, meta_end, implicit)
    except Exception:  # noqa: BLE001 - what the caller's own dcmwrite would raise, it raises there
        return False
    pieces: list[tuple[int, tuple[int, int] | None]] = [(tag, (start, end)) for tag, start, _, end in entries]
    if pixels is not None:
        at = next((index for index, (tag, _) in enumerate(pieces) if tag > PIXEL_DATA), len(pieces))
        pieces.insert(at, (PIXEL_DATA, None))
    pixel_size = sum(_size(part) for part in pixels) if pixels is not None else 0
    sizes: dict[int, int] = {}
    for tag, span in pieces:
        if tag >> 16 in groups and not tag & 0xFFFF:
            return False  # written by dcmwrite: not the pydicom this was made for
        sizes[tag >> 16] = sizes.get(tag >> 16, 0) + (span[1] - span[0] if span is not None else pixel_size)
    groups = set(groups)
    with _output(dst) as out:
        out.write(data[:meta_end])
        previous = None
        for tag, span in pieces:
            group = tag >> 16
            if group != previous and group in groups:
                out.write(_group_length(group, sizes[group], implicit))
                groups.discard(group)  # a group written in two runs (out of order) gets one
            previous = group
            if span is None:
                for part in pixels or ():
                    _write(out, part)
            else:
                out.write(data[span[0]:span[1]])
    return True


def _pixel_element(new: Dataset, implicit: bool) -> tuple[bytes, Any, bytes] | None:
    """Pixel Data of `new` as (header, value, trailer) written as ``dcmwrite`` writes it, else None.

    The value is ``bytes``, or the file an encoded value was kept in
    (:func:`gateway.pipeline.recompress` with a scratch folder), copied from
    its start when written.  None when there is none, or it is not such a
    value of even length (OB or OW) that these three parts write exactly:
    ``dcmwrite`` writes it then.
    """
    if PIXEL_DATA not in new:
        return None
    element = new[PIXEL_DATA]
    value = element.value
    if element.VR not in ("OB", "OW") or not (isinstance(value, bytes) or _is_file(value)) or _size(value) % 2:
        return None
    if element.is_undefined_length:
        if implicit:
            return None
        return struct.pack("<HH2sHI", 0x7FE0, 0x0010, element.VR.encode(), 0, _UNDEFINED), value, _SEQ_END
    if implicit:
        return struct.pack("<HHI", 0x7FE0, 0x0010, _size(value)), value, b""
    return struct.pack("<HH2sHI", 0x7FE0, 0x0010, element.VR.encode(), 0, _size(value)), value, b""


def _is_file(value: Any) -> bool:
    """True for a value kept in a file (a buffered element value)."""
    return hasattr(value, "fileno") and hasattr(value, "seek") and hasattr(value, "read")


def _size(part: Any) -> int:
    """Size of a part written: bytes, or a file whose whole content is written."""
    return os.fstat(part.fileno()).st_size if _is_file(part) else len(part)


def _write(out: BinaryIO, part: Any) -> None:
    """Write `part`: bytes as they are, a file's content from its start, in pieces of 1 MiB."""
    if not _is_file(part):
        out.write(part)
        return
    part.seek(0)
    shutil.copyfileobj(part, out, 1 << 20)
