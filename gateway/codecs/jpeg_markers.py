"""What JPEG (ITU-T T.81) and JPEG-LS (ITU-T T.87) codestreams share: markers and marker segments.

Both are a sequence of two-byte markers (0xFF then a code, T.81 B.1.1.2);
most markers start a segment whose 16-bit big-endian length counts itself
and the parameters that follow (B.1.1.4).  The JPEG lossless and JPEG-LS
codecs read segments through :func:`marker_segment`, which checks the length
against the data before anything is sliced.
"""

from __future__ import annotations

from gateway.errors import CorruptCodestreamError

__all__ = ["SOI", "EOI", "SOS", "DRI", "DNL", "corrupt", "marker_segment"]

SOI, EOI, SOS, DRI, DNL = 0xD8, 0xD9, 0xDA, 0xDD, 0xDC


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
