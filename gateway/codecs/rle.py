"""RLE Lossless (``1.2.840.10008.1.2.5``, DICOM PS3.5 Annex G).

The format, as this module writes and reads it
==============================================

A frame is split into *byte segments*, each PackBits-compressed::

    +-----------------------------+----------------+-----+----------------+
    | header: 16 x uint32 LE      | RLE segment 1  | ... | RLE segment n  |
    +-----------------------------+----------------+-----+----------------+
      [0]      number of segments n (1..15)
      [1..n]   byte offset of each segment from the start of the frame
               (segment 1 starts at 64, right after the header)
      [n+1..15] zero

Byte segments (G.2): for each sample of a pixel in turn (R, G, B for
colour), one segment per byte of the Bits-Allocated value, most significant
byte first.  16-bit RGB has 6 segments: R-high, R-low, G-high, G-low,
B-high, B-low.  A segment holds that byte of every pixel, row by row, so
the stream is always colour-by-plane whatever Planar Configuration says.

RLE segments (G.3, the PackBits scheme): a sequence of runs, each starting
with a signed control byte ``c``::

    c = 0..127      literal: the next c + 1 bytes are copied as they are
    c = -1..-127    replicate: the next byte is repeated 1 - c times (2..128)
    c = -128        no operation

The encoder codes each row on its own (a run never crosses a row), replicates
runs of three or more equal bytes (two when no literal is pending, where it
costs no more) and pads a segment of odd length with one zero byte.

Decoding checks every header field against the frame the dataset describes
before touching the data: the segment count must be samples x bytes per
sample, offsets must be at least 64, non-decreasing and inside the frame,
and every segment long enough for one byte per pixel at PackBits' best
(128 bytes per 2).  The only allocation is the frame itself, made once the
data could fill it.  A segment that runs out before it
has produced one byte per pixel is corrupt; bytes left over after that
(padding, or a final run that overshoots) are ignored, as other decoders do.

Values: the bytes carry the Bits-Allocated value as stored.  The decoder
returns values within the Bits Stored range (signed values sign-extended
from Bits Stored, unsigned ones masked to it), the form
:mod:`gateway.codecs.base` promises; the encoder refuses frames with data
above Bits Stored, which that form could not give back.
"""

from __future__ import annotations

import struct

import numpy as np

from gateway.codecs import _rle_kernels as _k
from gateway.codecs import register
from gateway.codecs.base import FrameInfo, FunctionCodec, check_frame
from gateway.codecs.profiles import check_profile
from gateway.dicom.uids import RLE_LOSSLESS
from gateway.errors import CorruptCodestreamError, UnsupportedImageError

__all__ = ["CODEC", "supports", "encode", "decode", "trailing_bytes", "HEADER_BYTES", "MAX_SEGMENTS"]

HEADER_BYTES = 64
MAX_SEGMENTS = 15

_ERRORS = {
    -_k.ERR_SHORT: "segment ends before every pixel has a byte",
    -_k.ERR_LITERAL: "literal run reaches past the end of the segment",
    -_k.ERR_REPEAT: "replicate run has no byte to repeat",
}


def _corrupt(message: str) -> CorruptCodestreamError:
    return CorruptCodestreamError(f"RLE Lossless: {message}")


def supports(info: FrameInfo) -> str | None:
    """``None`` when RLE Lossless can carry `info`, else why not."""
    return check_profile(RLE_LOSSLESS, info)


def _segments(info: FrameInfo) -> tuple[int, int]:
    """Bytes per sample and number of segments of a frame like `info`."""
    if info.bits_allocated not in (8, 16, 32):
        raise UnsupportedImageError(
            f"(0028,0100) 'Bits Allocated' {info.bits_allocated} is not 8, 16 or 32"
        )
    nbytes = info.bits_allocated // 8
    segments = nbytes * info.samples_per_pixel
    if segments > MAX_SEGMENTS:  # not reachable with 1 or 3 samples, kept as the rule
        raise UnsupportedImageError(f"{segments} byte segments exceed the RLE limit of 15")
    return nbytes, segments


def _frame_bytes(frame: np.ndarray) -> np.ndarray:
    """The frame's values as little-endian bytes, colour-by-pixel, in one flat array."""
    little = frame.astype(frame.dtype.newbyteorder("<"), copy=False)
    return np.ascontiguousarray(little).reshape(-1).view(np.uint8)


def encode(frame: np.ndarray, info: FrameInfo) -> bytes:
    """Encode one frame (codec array form) as an RLE Lossless frame."""
    reason = supports(info)
    if reason:
        raise UnsupportedImageError(reason)
    frame = check_frame(frame, info)
    low, high = info.value_range
    if info.bits_stored < info.bits_allocated and (int(frame.min()) < low or int(frame.max()) > high):
        raise UnsupportedImageError(
            f"values outside the {info.bits_stored}-bit range of (0028,0101) 'Bits Stored'"
        )
    nbytes, segments = _segments(info)
    src = _frame_bytes(frame)
    out = np.empty(_k.encoded_bound(info.rows, info.columns, segments), dtype=np.uint8)
    size = _k.encode_segments(src, info.rows, info.columns, info.samples_per_pixel, nbytes, out)
    return out[:size].tobytes()


def _parse_header(data: bytes, segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of each segment, checked against the frame size."""
    if len(data) < HEADER_BYTES:
        raise _corrupt(f"frame of {len(data)} bytes is shorter than the 64-byte header")
    header = struct.unpack_from("<16I", data)
    count = header[0]
    if count != segments:
        raise _corrupt(f"header lists {count} segments, the image needs {segments}")
    starts = np.array(header[1 : 1 + count], dtype=np.int64)
    ends = np.empty(count, dtype=np.int64)
    ends[:-1] = starts[1:]
    ends[-1] = len(data)
    if starts[0] < HEADER_BYTES:
        raise _corrupt(f"first segment offset {starts[0]} is inside the header")
    if np.any(ends < starts) or ends[-1] < starts[-1]:
        raise _corrupt(f"segment offsets {list(map(int, starts))} are not ascending within {len(data)} bytes")
    return starts, ends


def trailing_bytes(data: bytes | bytearray | memoryview, info: FrameInfo) -> bytes:
    """The bytes of a frame after its last segment's data: padding, or data that no decoder reads.

    Raises CorruptDataError where :func:`decode` would for the header or the last segment.
    """
    _, segments = _segments(info)
    data = bytes(data)
    starts, ends = _parse_header(data, segments)
    stop = _k.segment_end(np.frombuffer(data, dtype=np.uint8), starts[-1], ends[-1], info.rows * info.columns)
    if stop < 0:
        raise _corrupt(f"segment {segments}: {_ERRORS[-_k.ERR_SHORT]}")
    return data[stop:]


def decode(data: bytes | bytearray | memoryview, info: FrameInfo) -> np.ndarray:
    """Decode one RLE Lossless frame into the codec array form of `info`."""
    nbytes, segments = _segments(info)
    dtype = info.dtype
    data = bytes(data)
    starts, ends = _parse_header(data, segments)
    pixels = info.rows * info.columns
    # A PackBits run of two bytes gives at most 128: a segment too short for the frame's pixels is
    # refused before the frame that the dataset's Rows x Columns describe is allocated (a header
    # claiming 65535 x 65535 over a few bytes of data would otherwise cost gigabytes, or MemoryError).
    short = np.flatnonzero((ends - starts) // 2 * 128 < pixels)
    if short.size:
        raise _corrupt(f"segment {int(short[0]) + 1}: {ends[short[0]] - starts[short[0]]} bytes cannot hold "
                       f"{pixels} pixels ({_ERRORS[-_k.ERR_SHORT]})")
    stream = np.frombuffer(data, dtype=np.uint8)
    if nbytes == 1:
        out = np.empty(pixels * segments, dtype=np.uint8)
        plane = np.empty(pixels if segments > 1 else 0, dtype=np.uint8)
        status = _k.decode_segments(stream, starts, ends, pixels, info.samples_per_pixel, nbytes, out, plane)
    else:  # composed as native integers: no byte order to fix afterwards
        out = np.empty(pixels * info.samples_per_pixel, dtype=f"u{nbytes}")
        planes = np.empty((segments, pixels), dtype=np.uint8)
        status = _k.decode_wide(stream, starts, ends, pixels, info.samples_per_pixel, nbytes, out, planes)
    if status:
        error, segment = divmod(-status, 16)
        raise _corrupt(f"segment {segment + 1}: {_ERRORS.get(error, 'bad data')}")
    frame = out.view(dtype).reshape(info.shape)
    return _normalise(frame, info)


def _normalise(frame: np.ndarray, info: FrameInfo) -> np.ndarray:
    """Bring values into the Bits Stored range: sign-extend or mask the stored bits."""
    unused = info.bits_allocated - info.bits_stored
    if unused == 0:
        return frame
    if info.signed:
        frame <<= unused
        frame >>= unused
    else:
        frame &= (1 << info.bits_stored) - 1
    return frame


CODEC = register(FunctionCodec("rle", RLE_LOSSLESS, "RLELossless", supports, encode, decode))
