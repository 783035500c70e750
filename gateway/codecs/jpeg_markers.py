"""What JPEG (ITU-T T.81), JPEG-LS (T.87) and JPEG 2000 (T.800) codestreams share: markers and marker segments.

Each is a sequence of two-byte markers (0xFF then a code, T.81 B.1.1.2,
T.800 A.1.1); most markers start a segment whose 16-bit big-endian length
counts itself and the parameters that follow (B.1.1.4).  The JPEG lossless
and JPEG-LS codecs read segments through :func:`marker_segment`, which
checks the length against the data before anything is sliced.
:func:`walk_markers` follows the markers of any of these codestreams without
decoding it, for the checks made before a decoder sees one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from gateway.errors import CorruptCodestreamError

__all__ = ["SOI", "EOI", "SOS", "DRI", "DNL", "corrupt", "marker_segment", "Marker", "walk_markers"]

SOI, EOI, SOS, DRI, DNL = 0xD8, 0xD9, 0xDA, 0xDD, 0xDC
_SOT, _SOD = 0x90, 0x93  # JPEG 2000, whose EOC is EOI's code


def corrupt(codec: str, message: str) -> CorruptCodestreamError:
    """The codec's error for a malformed codestream, naming the codec."""
    return CorruptCodestreamError(f"{codec}: {message}")


def marker_segment(data: bytes, pos: int, codec: str) -> tuple[bytes, int]:
    """Parameters of the marker segment whose length field starts at `pos`, and the position after it."""
    if pos + 2 > len(data):
        raise corrupt(codec, "truncated marker segment")
    length = (data[pos] << 8) | data[pos + 1]
    if length < 2 or pos + length > len(data):
        raise corrupt(codec, f"marker segment length {length} runs past the end of the codestream")
    return data[pos + 2:pos + length], pos + length


class Marker(NamedTuple):
    """A marker :func:`walk_markers` passed: its code (the byte after 0xFF), where it is, and where it ends.

    `end` follows the segment's length field (its parameters are
    ``data[offset + 4:end]``, and `end` may lie past the data), or the marker
    for one without a segment.  For EOI or EOC it is where the codestream
    ends; for a JPEG 2000 SOD, where its tile-part ends.
    """

    code: int
    offset: int
    end: int


def walk_markers(data: bytes) -> Iterator[Marker]:
    """The markers after the SOI or SOC starting `data` (a JPEG, JPEG-LS, JPEG 2000 or HTJ2K codestream), in
    order, up to its end marker; nothing for other data.

    JPEG and JPEG-LS (T.81 B.1.1, T.87 C.1): fill bytes are skipped, and
    the entropy-coded data after SOS runs up to the next 0xFF followed by a
    byte that is neither a stuffed 00 (JPEG), a stuffed bit (JPEG-LS: below
    0x80), a restart marker nor a fill byte.  JPEG 2000 (T.800 A.3): the
    main header's segments, then for each tile-part its header's segments
    and its data, up to the end its SOT's Psot gives (Psot 0: the EOC ending
    `data`).  The walk stops at a byte where a marker should be and is not,
    after a segment whose length is below 2 or runs past the data, and at a
    SOD whose tile-part ends before it: it never reads past `data` and each
    step goes forward.
    """
    if data[:2] == b"\xff\xd8":
        yield from _walk_jpeg(data)
    elif data[:2] == b"\xff\x4f":
        yield from _walk_j2k(data)


def _walk_jpeg(data: bytes) -> Iterator[Marker]:
    size = len(data)
    pos = 2
    while pos + 1 < size:
        if data[pos] != 0xFF:
            return
        code = data[pos + 1]
        if code == 0xFF:  # fill byte
            pos += 1
            continue
        offset, pos = pos, pos + 2
        if code == EOI:
            yield Marker(code, offset, pos)
            return
        if code == 0x01 or 0xD0 <= code <= 0xD8:  # markers without a segment
            yield Marker(code, offset, pos)
            continue
        if pos + 2 > size:
            return
        length = (data[pos] << 8) | data[pos + 1]
        pos += length
        yield Marker(code, offset, pos)
        if length < 2:
            return
        if code == SOS:  # entropy-coded data up to the next marker
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= size:
                    return
                following = data[pos + 1]
                if following >= 0x80 and not 0xD0 <= following <= 0xD7 and following != 0xFF:
                    break
                pos += 1


def _walk_j2k(data: bytes) -> Iterator[Marker]:
    size = len(data)
    tile_part: tuple[int, int] | None = None  # (where its SOT is, Psot)
    pos = 2
    while pos + 2 <= size and data[pos] == 0xFF:
        code = data[pos + 1]
        if code == EOI:  # EOC
            yield Marker(code, pos, pos + 2)
            return
        if code == _SOD:  # the tile-part's data, up to where its SOT says it ends
            if tile_part is None:
                return
            if tile_part[1] == 0:  # the last tile-part, up to the EOC
                ends = data[-2:] == b"\xff\xd9"
                yield Marker(code, pos, size - 2 if ends else size)
                if ends:
                    yield Marker(EOI, size - 2, size)
                return
            end = tile_part[0] + tile_part[1]
            if end < pos + 2:
                return
            yield Marker(code, pos, end)
            pos = end
            continue
        if pos + 4 > size:
            return
        length = (data[pos + 2] << 8) | data[pos + 3]
        if code == _SOT:
            if pos + 10 > size:
                return
            tile_part = (pos, int.from_bytes(data[pos + 6:pos + 10], "big"))
        yield Marker(code, pos, pos + 2 + length)
        if length < 2:
            return
        pos += 2 + length
