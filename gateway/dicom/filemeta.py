"""The bytes of a DICOM file's preamble and File Meta Information (PS3.10 7.1).

Two hot paths need the file meta without a DICOM parser: the forwarders
send a stored object's dataset as it is on disk (they need where it starts
and its transfer syntax), and the worker writes a recompressed object as the
received file's bytes with only the transfer syntax and Pixel Data changed.
The meta group is always explicit VR little endian, so walking it takes a
few lines; anything that does not look like PS3.10 raises ValueError.

A file whose pixel data the gateway re-encoded was written by the gateway:
PS3.10 7.1 has its Implementation Class UID and Version Name identify "the
implementation that wrote this file and its content", and its Source
Application Entity Title the AE that wrote or last updated it, so that an
archive can trace an interchange problem to its writer.  Those of the
received file (the modality's, or pynetdicom's, which wrote the spool file)
would send it to someone else, so :func:`stamp` and ``with_transfer_syntax(...,
ours=True)`` name the gateway instead and drop the Source AE Title (Type 3;
the offline command has no AE title to put there).
"""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN

__all__ = ["DEFER_BYTES", "defer_size", "parse_file_meta", "read_file_meta", "with_transfer_syntax", "stamp",
           "stamped", "IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION_NAME", "WRITER_ELEMENTS"]

IMPLEMENTATION_CLASS_UID = "2.25.53897576694086526053863854056254947965"
"""The gateway's Implementation Class UID: in the files it writes, as in its association requests."""
IMPLEMENTATION_VERSION_NAME = f"GATEWAY_{__version__}"[:16]
WRITER_ELEMENTS = (0x00020012, 0x00020013, 0x00020016)
"""Implementation Class UID, Implementation Version Name, Source AE Title: who wrote the file."""

_PREAMBLE = 132  # 128-byte preamble and "DICM"
_READ = 16_384
_LIMIT = 16 * 1024 * 1024
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
SHORT_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN", b"SH",
             b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
_GROUP_LENGTH, _TRANSFER_SYNTAX = 0x0000, 0x0010
_CLASS_UID, _VERSION_NAME, _SOURCE_AE = 0x0012, 0x0013, 0x0016


def _elements(head: bytes) -> tuple[list[tuple[int, int, int, int]], int]:
    """(element, start, value start, end) of each meta element, and where the dataset starts."""
    if len(head) < _PREAMBLE or head[128:132] != b"DICM":
        raise ValueError("not a DICOM file: no 'DICM' after the 128-byte preamble")
    found = []
    pos = _PREAMBLE
    while True:
        if len(head) - pos < 8:
            raise ValueError("the file meta information is cut short")
        group, elem = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            return found, pos
        vr = bytes(head[pos + 4:pos + 6])
        if vr in LONG_VRS:
            if len(head) - pos < 12:
                raise ValueError("the file meta information is cut short")
            length = int(struct.unpack_from("<I", head, pos + 8)[0])
            value = pos + 12
        elif vr in SHORT_VRS:
            length = int(struct.unpack_from("<H", head, pos + 6)[0])
            value = pos + 8
        else:
            raise ValueError(f"file meta element (0002,{elem:04X}) has the unknown VR {vr!r}")
        if value + length > len(head):
            raise ValueError(f"file meta element (0002,{elem:04X}) runs past the data read")
        found.append((elem, pos, value, value + length))
        pos = value + length


def parse_file_meta(head: bytes) -> tuple[int, str]:
    """Offset of the dataset in a DICOM file starting with `head`, and its transfer syntax.

    `head` must hold at least the preamble, the whole file meta group and
    the next element's tag.
    """
    found, offset = _elements(head)
    for elem, _, value, end in found:
        if elem == _TRANSFER_SYNTAX:
            syntax = head[value:end].rstrip(b"\x00 ").decode("ascii", "replace")
            if syntax:
                return offset, syntax
    raise ValueError("the file meta information has no Transfer Syntax UID")


def read_file_meta(path: Path) -> tuple[int, str]:
    """:func:`parse_file_meta` of the file at `path` (reading only its head)."""
    with open(path, "rb") as handle:
        head = handle.read(_READ)
        if len(head) >= 144 and head[132:136] == b"\x02\x00\x00\x00":  # group length: the exact size
            wanted = 144 + int(struct.unpack_from("<I", head, 140)[0]) + 8
            if wanted > len(head):
                head += handle.read(min(wanted, _LIMIT) - len(head))
        elif len(head) == _READ and head[128:132] == b"DICM":  # no group length: read on if the meta is longer
            with contextlib.suppress(ValueError):
                return parse_file_meta(head)
            head += handle.read(_LIMIT - len(head))
    return parse_file_meta(head)


DEFER_BYTES = 8 << 20
"""Values at least this large are read from the file when used, not when the header is parsed."""


def defer_size(path: Path) -> int | None:
    """pydicom's ``defer_size`` for the file at `path`: :data:`DEFER_BYTES` where its values can stay there.

    That is a file whose dataset is stored as it is read (little endian, not
    deflated): a large multi-frame image is then read one frame at a time.
    A deflated dataset is read from its inflated bytes, and a big endian one
    is re-encoded whole: offsets into them are not offsets into the file, so
    nothing of them is left there (None).
    """
    try:
        _, syntax = read_file_meta(path)
    except (OSError, ValueError):
        return None
    return DEFER_BYTES if syntax in (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN) else None


def _ui(value: str) -> bytes:
    """A UI value padded to even length with NUL (PS3.5 6.2)."""
    data = value.encode("ascii")
    return data + b"\x00" if len(data) % 2 else data


def _element(elem: int, vr: bytes, value: bytes) -> bytes:
    """A short-form meta element (0002,`elem`)."""
    return struct.pack("<HH2sH", 0x0002, elem, vr, len(value)) + value


def with_transfer_syntax(head: bytes, uid: str, ours: bool = False) -> bytes:
    """Preamble and file meta of `head` with the Transfer Syntax UID set to `uid`.

    Every other meta element is kept byte for byte, unless `ours`: then the
    Implementation Class UID and Version Name are the gateway's and the
    Source AE Title is dropped (see the module's docstring), as :func:`stamp`
    does to a pydicom file meta.  The group length, when present, is
    recomputed.  Returns the bytes up to where the dataset starts.
    """
    if not uid or len(uid) > 64 or not all(c.isdigit() or c == "." for c in uid):
        raise ValueError(f"{uid!r} is not a valid UID")
    found, _ = _elements(head)
    parts: list[tuple[int, bytes]] = []
    for elem, start, _value, end in found:
        if elem == _TRANSFER_SYNTAX:
            parts.append((elem, _element(elem, b"UI", _ui(uid))))
        elif not (ours and elem in (_CLASS_UID, _VERSION_NAME, _SOURCE_AE)):
            parts.append((elem, head[start:end]))
    if not any(elem == _TRANSFER_SYNTAX for elem, _ in parts):
        raise ValueError("the file meta information has no Transfer Syntax UID")
    if ours:  # in their places among the others: PS3.5 7.1 wants ascending tags
        version = IMPLEMENTATION_VERSION_NAME.encode("ascii")
        parts += [(_CLASS_UID, _element(_CLASS_UID, b"UI", _ui(IMPLEMENTATION_CLASS_UID))),
                  (_VERSION_NAME, _element(_VERSION_NAME, b"SH", version + b" " * (len(version) % 2)))]
        parts.sort(key=lambda part: part[0])
    body = [part for _, part in parts]
    if parts[0][0] == _GROUP_LENGTH:
        body[0] = struct.pack("<HH2sHI", 0x0002, _GROUP_LENGTH, b"UL", 4, sum(map(len, body[1:])))
    return head[:_PREAMBLE] + b"".join(body)


def stamp(meta: Any) -> None:
    """Name the gateway as the writer in a pydicom file meta, as ``with_transfer_syntax(..., ours=True)`` does."""
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if "SourceApplicationEntityTitle" in meta:
        del meta.SourceApplicationEntityTitle


def stamped(meta: Any) -> bool:
    """Whether a pydicom file meta names the gateway as its writer (:func:`stamp`)."""
    return (str(meta.get("ImplementationClassUID", "")) == IMPLEMENTATION_CLASS_UID
            and str(meta.get("ImplementationVersionName", "")) == IMPLEMENTATION_VERSION_NAME
            and "SourceApplicationEntityTitle" not in meta)
