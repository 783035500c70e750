"""JPEG-LS lossless (ITU-T T.87, NEAR = 0), transfer syntax 1.2.840.10008.1.2.4.80.

Encoder
    Precision P = Bits Stored (2..16; 9 for Bits Stored <= 8 in 16-bit
    containers, see :func:`precision`; the registered codec writes at least
    P = 8, see :func:`encode_frame`), MAXVAL = 2**P - 1 and the default
    thresholds of T.87 C.2.4.1.1.1 (so no LSE segment), RESET = 64, regular
    and run mode.  One component: one scan.  Three components: one scan,
    line interleaved (ILV 1) by default, which codes smaller than sample
    interleaving on our corpus (contexts learn from all three colour planes
    and runs are per component); no colour transform.  The stream written is::

        SOI  SOF55(P, Y, X, Nf; H=V=1, Tq=0)  SOS(Ns, Ci..., NEAR=0, ILV, Al=Ah=0)
        <entropy-coded segment, 0xFF followed by a stuffed 0 bit>  EOI

Decoder
    Any ILV (0 none, 1 line, 2 sample) for one or three components, LSE
    type 1 (preset coding parameters MAXVAL, T1..T3, RESET), restart
    intervals (DRI / RSTm: each interval starts as the top of the image
    does, with fresh contexts and run indices and an all-zero line above),
    APPn and COM segments skipped, fill bytes before markers and a pad byte
    after EOI allowed.  Mapping tables (LSE 2/3), NEAR > 0, subsampling and
    point transforms are refused: for the lossless syntax such a stream is
    as wrong as a corrupt one, so every refusal of the decoder is a
    :class:`CorruptCodestreamError`.  Every header field is checked against
    the expected :class:`FrameInfo` before anything is allocated, and the
    kernels bound every loop by the input length.

Signed data (Pixel Representation 1)
    JPEG-LS has no sign: the encoder codes the two's complement bit pattern
    masked to P bits; decoders return that P-bit pattern and DICOM readers
    take its low Bits Stored bits and sign-extend them with Pixel
    Representation (as DCMTK, GDCM and pydicom do).  :func:`decode` does the
    same, and also accepts a precision above Bits Stored (other encoders use
    P = Bits Allocated).

The encoder can also write an LSE segment with other thresholds and restart
intervals (DRI / RSTm), so that other decoders can be tested on them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from gateway.codecs import _jpegls_kernels as _k
from gateway.codecs import register
from gateway.codecs.base import FrameInfo, FunctionCodec, check_frame, stored_values
from gateway.codecs.jpeg_markers import corrupt, marker_segment
from gateway.codecs.profiles import check_profile
from gateway.dicom.uids import JPEG_LS_LOSSLESS
from gateway.errors import CorruptCodestreamError, UnsupportedImageError

__all__ = [
    "CODEC", "supports", "encode", "encode_frame", "decode", "default_parameters", "precision", "ARCHIVE_PRECISION",
    "ILV_NONE", "ILV_LINE", "ILV_SAMPLE",
]

ILV_NONE, ILV_LINE, ILV_SAMPLE = 0, 1, 2

_SOI, _EOI, _SOF55, _LSE, _SOS, _DRI = 0xD8, 0xD9, 0xF7, 0xF8, 0xDA, 0xDD
_RESET = 64


def _corrupt(message: str) -> CorruptCodestreamError:
    return corrupt("JPEG-LS", message)


def supports(info: FrameInfo) -> str | None:
    """``None`` when a JPEG-LS lossless codestream can carry `info`, else why not."""
    reason = check_profile(JPEG_LS_LOSSLESS, info)
    if reason is None and (info.rows > 65535 or info.columns > 65535):
        reason = f"(0028,0010/0011) {info.rows} x {info.columns} exceeds the 65535 limit of a JPEG-LS header"
    return reason


def default_parameters(precision: int, maxval: int | None = None) -> tuple[int, int, int, int, int]:
    """MAXVAL, T1, T2, T3, RESET by default for `precision` (T.87 C.2.4.1.1.1)."""
    if maxval is None:
        maxval = (1 << precision) - 1

    def clamp(value: int, low: int) -> int:
        return low if value > maxval or value < low else value

    if maxval >= 128:
        factor = (min(maxval, 4095) + 128) // 256
        t1 = clamp(factor * (3 - 2) + 2, 1)
        t2 = clamp(factor * (7 - 3) + 3, t1)
        t3 = clamp(factor * (21 - 4) + 4, t2)
    else:
        factor = 256 // (maxval + 1)
        t1 = clamp(max(2, 3 // factor), 1)
        t2 = clamp(max(3, 7 // factor), t1)
        t3 = clamp(max(4, 21 // factor), t2)
    return maxval, t1, t2, t3, _RESET


def _kernel_parameters(maxval: int, t1: int, t2: int, t3: int, reset: int) -> np.ndarray:
    """The int64 vector the kernels read: MAXVAL, T1..T3, RESET, LIMIT, qbpp (T.87 A.2.1)."""
    qbpp = max(1, int(maxval).bit_length())  # ceil(log2(RANGE)) with RANGE = MAXVAL + 1
    bpp = max(2, int(maxval).bit_length())
    limit = 2 * (bpp + max(8, bpp))
    return np.array([maxval, t1, t2, t3, reset, limit, qbpp], dtype=np.int64)


# ----------------------------------------------------------------------------- encoder


def precision(info: FrameInfo) -> int:
    """The sample precision P we code `info` at: Bits Stored, but at least 9 in 16-bit containers.

    CharLS-based readers (DCMTK, GDCM, pyjpegls) return a P <= 8 stream as
    8-bit samples and then fail to fill a 16-bit frame, so 8-bit data in a
    16-bit container is coded at P = 9 (signed values as 9-bit two's
    complement), which every reader we test against places correctly.
    """
    if info.bits_allocated == 16 and info.bits_stored <= 8:
        return 9
    return info.bits_stored


def _to_work(frame: np.ndarray, info: FrameInfo, bits: int) -> np.ndarray:
    """Padded int32 planes ``(components, 1 + rows, 2 + columns)`` of the `bits`-bit patterns."""
    mask = (1 << bits) - 1
    unsigned = frame.view(f"u{frame.dtype.itemsize}") if info.signed else frame
    planes = unsigned.reshape(info.rows, info.columns, info.samples_per_pixel)
    work = np.zeros((info.samples_per_pixel, info.rows + 1, info.columns + 2), dtype=np.int32)
    np.bitwise_and(np.moveaxis(planes, 2, 0), mask, out=work[:, 1:, 1:-1], casting="unsafe")
    return work


@contextmanager
def _fresh_start(work: np.ndarray, components: list[int], r0: int) -> Iterator[None]:
    """Let a restart interval starting at padded row `r0` see an all-zero line above it.

    After RSTm every coder starts as at the top of the image (contexts, run
    indices and the line above are reset), so the row above is zeroed for
    the duration and then put back.
    """
    if r0 <= 1:
        yield
        return
    saved = work[components, r0 - 1].copy()
    work[components, r0 - 1] = 0
    try:
        yield
    finally:
        work[components, r0 - 1] = saved


def _headers_frame(info: FrameInfo, bits: int, preset: tuple[int, int, int, int, int] | None, restart: int) -> bytes:
    nc = info.samples_per_pixel
    sof = struct.pack(">BHHB", bits, info.rows, info.columns, nc)
    sof += b"".join(struct.pack(">BBB", c + 1, 0x11, 0) for c in range(nc))
    head = b"\xff\xd8" + struct.pack(">BBH", 0xFF, _SOF55, len(sof) + 2) + sof
    if preset is not None:
        head += struct.pack(">BBHB5H", 0xFF, _LSE, 13, 1, *preset)
    if restart:
        head += struct.pack(">BBHH", 0xFF, _DRI, 4, restart)
    return head


def _sos(components: list[int], ilv: int) -> bytes:
    body = struct.pack(">B", len(components)) + b"".join(struct.pack(">BB", c + 1, 0) for c in components)
    body += struct.pack(">BBB", 0, ilv, 0)
    return struct.pack(">BBH", 0xFF, _SOS, len(body) + 2) + body


def _encode_segment(work: np.ndarray, components: list[int], ilv: int, r0: int, r1: int, prm: np.ndarray) -> bytes:
    """Entropy-coded segment of padded rows ``r0..r1-1``; the buffer grows until it fits."""
    samples = (r1 - r0) * work.shape[2] * len(components)
    capacity = samples * 2 + 30 * work.shape[2] * len(components) + 1024
    comps = np.asarray(components, dtype=np.int64)
    while True:
        out = np.empty(capacity, dtype=np.uint8)
        lut, ctx = _k.state(prm)
        with _fresh_start(work, components, r0):
            if ilv == ILV_SAMPLE:
                size = _k.encode_samples(work, r0, r1, prm, lut, ctx, out)
            else:
                size = _k.encode_lines(work, comps, r0, r1, prm, lut, ctx, out)
        if size >= 0:
            return out[:size].tobytes()
        capacity *= 2


def _encode_scan(work: np.ndarray, components: list[int], ilv: int, prm: np.ndarray, restart: int) -> bytes:
    """One scan's entropy-coded data, with RSTm markers every `restart` lines when asked."""
    rows = work.shape[1] - 1
    step = restart or rows
    parts = []
    for index, r0 in enumerate(range(1, rows + 1, step)):
        if index:
            parts.append(bytes((0xFF, 0xD0 + (index - 1) % 8)))
        parts.append(_encode_segment(work, components, ilv, r0, min(r0 + step, rows + 1), prm))
    return b"".join(parts)


def encode(
    frame: np.ndarray,
    info: FrameInfo,
    ilv: int | None = None,
    *,
    preset: tuple[int, int, int] | None = None,
    restart: int = 0,
    bits: int | None = None,
) -> bytes:
    """Encode one frame as a JPEG-LS lossless codestream.

    Parameters
    ----------
    ilv
        Interleave mode for three components (default: line, ILV 1).
    preset
        Thresholds ``(T1, T2, T3)`` other than the defaults, written in an
        LSE segment (for tests of decoders; the defaults code best).
    restart
        Restart interval in lines (0: none), written in a DRI segment.
    bits
        Sample precision P, from Bits Stored up to Bits Allocated (16 at
        most); default :func:`precision`.  Signed values are coded as P-bit
        two's complement.
    """
    reason = supports(info)
    if reason is not None:
        raise UnsupportedImageError(reason)
    frame = check_frame(frame, info)
    nc = info.samples_per_pixel
    if ilv is None:
        ilv = ILV_LINE if nc == 3 else ILV_NONE
    if nc == 1:
        ilv = ILV_NONE
    if ilv not in (ILV_NONE, ILV_LINE, ILV_SAMPLE):
        raise ValueError(f"interleave mode must be 0, 1 or 2, got {ilv}")
    if not 0 <= restart <= 65535:
        raise ValueError(f"restart interval must be 0..65535 lines, got {restart}")
    low, high = info.value_range
    if info.bits_stored < info.bits_allocated and (int(frame.min()) < low or int(frame.max()) > high):
        raise UnsupportedImageError(f"values outside the {info.bits_stored}-bit range of (0028,0101) 'Bits Stored'")
    if bits is None:
        bits = precision(info)
    elif not info.bits_stored <= bits <= min(16, info.bits_allocated):
        raise ValueError(f"precision must be {info.bits_stored}..{min(16, info.bits_allocated)} bits, got {bits}")
    maxval, t1, t2, t3, reset = default_parameters(bits)
    lse = None
    if preset is not None:
        t1, t2, t3 = preset
        if not 1 <= t1 <= t2 <= t3 <= maxval:
            raise ValueError(f"thresholds must satisfy 1 <= T1 <= T2 <= T3 <= {maxval}, got {preset}")
        lse = (maxval, t1, t2, t3, reset)
    prm = _kernel_parameters(maxval, t1, t2, t3, reset)
    work = _to_work(frame, info, bits)
    parts = [_headers_frame(info, bits, lse, restart)]
    if ilv == ILV_NONE:
        for c in range(nc):
            parts += [_sos([c], ILV_NONE), _encode_scan(work, [c], ILV_NONE, prm, restart)]
    else:
        parts += [_sos(list(range(nc)), ilv), _encode_scan(work, list(range(nc)), ilv, prm, restart)]
    parts.append(b"\xff\xd9")
    return b"".join(parts)


# ----------------------------------------------------------------------------- decoder


def _segment(data: bytes, pos: int) -> tuple[bytes, int]:
    return marker_segment(data, pos, "JPEG-LS")


class _Frame:
    """What the SOF55 segment said."""

    def __init__(self, precision: int, ids: list[int]) -> None:
        self.precision = precision
        self.ids = ids

    def kernel_parameters(self, preset: tuple[int, int, int, int, int]) -> np.ndarray:
        """Coding parameters from an LSE preset (zero fields take their defaults)."""
        maxval, t1, t2, t3, reset = preset
        full = (1 << self.precision) - 1
        maxval = maxval or full
        if maxval > full:
            raise _corrupt(f"LSE MAXVAL {maxval} exceeds the {self.precision}-bit precision")
        _, d1, d2, d3, _ = default_parameters(self.precision, maxval)
        t1, t2, t3 = t1 or d1, t2 or d2, t3 or d3
        if not 1 <= t1 <= t2 <= t3 <= maxval:
            raise _corrupt(f"LSE thresholds T1={t1} T2={t2} T3={t3} are not ordered within 1..MAXVAL={maxval}")
        reset = reset or _RESET
        if not 3 <= reset <= max(255, maxval):
            raise _corrupt(f"LSE RESET {reset} is outside 3..{max(255, maxval)}")
        return _kernel_parameters(maxval, t1, t2, t3, reset)


def _parse_sof(body: bytes, info: FrameInfo) -> _Frame:
    if len(body) < 6:
        raise _corrupt("SOF55 segment too short")
    precision, rows, columns, nf = struct.unpack_from(">BHHB", body)
    if rows == 0:
        raise _corrupt("a frame with its height in a DNL segment is not supported")
    if (rows, columns) != (info.rows, info.columns):
        raise _corrupt(f"frame is {rows} x {columns}, {info.rows} x {info.columns} expected")
    if nf != info.samples_per_pixel:
        raise _corrupt(f"frame has {nf} components, {info.samples_per_pixel} expected")
    if not 2 <= precision <= 16 or precision > info.bits_allocated:
        raise _corrupt(f"precision {precision} does not fit 2..16 and Bits Allocated {info.bits_allocated}")
    if len(body) != 6 + 3 * nf:
        raise _corrupt("SOF55 segment length does not match its component count")
    ids = []
    for c in range(nf):
        cid, sampling, _ = struct.unpack_from(">BBB", body, 6 + 3 * c)
        if sampling != 0x11:
            raise _corrupt("subsampled components are not supported")
        ids.append(cid)
    if len(set(ids)) != nf:
        raise _corrupt("component identifiers repeat")
    return _Frame(precision, ids)


def _parse_lse(body: bytes) -> tuple[int, int, int, int, int]:
    """MAXVAL, T1, T2, T3, RESET of an LSE preset parameters segment (type 1)."""
    if not body:
        raise _corrupt("empty LSE segment")
    if body[0] != 1:
        raise _corrupt(f"LSE segment of type {body[0]} (mapping tables or oversize) not supported")
    if len(body) != 11:
        raise _corrupt("LSE preset parameters segment has the wrong length")
    return struct.unpack_from(">HHHHH", body, 1)


def decode(data: bytes, info: FrameInfo) -> np.ndarray:
    """Decode one JPEG-LS lossless codestream into a frame of the form `info` describes."""
    data = bytes(data)
    if len(data) < 4 or data[0] != 0xFF or data[1] != _SOI:
        raise _corrupt("the codestream does not start with SOI")
    buffer = np.frombuffer(data, dtype=np.uint8)
    frame: _Frame | None = None
    work: np.ndarray | None = None
    restart = 0
    preset = (0, 0, 0, 0, 0)
    top = -1  # the largest MAXVAL of the scans
    done = np.zeros(info.samples_per_pixel, dtype=bool)
    pos = 2
    while True:
        # Markers may be preceded by any number of 0xFF fill bytes.
        if pos >= len(data) or data[pos] != 0xFF:
            raise _corrupt(f"marker expected at byte {pos}")
        while pos < len(data) and data[pos] == 0xFF:
            pos += 1
        if pos >= len(data):
            raise _corrupt("codestream ends inside a marker")
        marker = data[pos]
        pos += 1
        if marker == _EOI:
            break
        if marker == _SOI or 0xD0 <= marker <= 0xD7:
            raise _corrupt(f"unexpected marker 0xFF{marker:02X}")
        body, pos = _segment(data, pos)
        if marker == _SOF55:
            if frame is not None:
                raise _corrupt("a second SOF segment")
            frame = _parse_sof(body, info)
            work = np.zeros((info.samples_per_pixel, info.rows + 1, info.columns + 2), dtype=np.int32)
        elif marker == _LSE:
            preset = _parse_lse(body)
        elif marker == _DRI:
            if len(body) not in (2, 3, 4):
                raise _corrupt("DRI segment has the wrong length")
            restart = int.from_bytes(body, "big")
        elif marker == _SOS:
            if frame is None or work is None:
                raise _corrupt("SOS before SOF55")
            prm = frame.kernel_parameters(preset)
            top = max(top, int(prm[_k.P_MAXVAL]))
            pos = _decode_scan(buffer, pos, body, frame.ids, prm, work, done, restart, info)
        elif 0xE0 <= marker <= 0xEF or marker == 0xFE:
            continue
        elif 0xC0 <= marker <= 0xCF or marker == 0xF7 or 0xF0 <= marker <= 0xFD:
            raise _corrupt(f"marker 0xFF{marker:02X} is not a JPEG-LS lossless frame")
        else:
            raise _corrupt(f"unexpected marker 0xFF{marker:02X}")
    if frame is None or work is None or not done.all():
        raise _corrupt("the codestream ends before every component was decoded")
    return _to_frame(work, frame.precision, top, info)


def _decode_scan(
    buffer: np.ndarray, pos: int, body: bytes, ids: list[int], prm: np.ndarray, work: np.ndarray,
    done: np.ndarray, restart: int, info: FrameInfo,
) -> int:
    """Decode the scan whose SOS body is `body`; return the position of the marker after it."""
    if len(body) < 1:
        raise _corrupt("empty SOS segment")
    ns = body[0]
    if not 1 <= ns <= len(ids) or len(body) != 1 + 2 * ns + 3:
        raise _corrupt("SOS segment length does not match its component count")
    components = []
    for i in range(ns):
        cid, table = body[1 + 2 * i], body[2 + 2 * i]
        if cid not in ids:
            raise _corrupt(f"SOS names component {cid}, absent from SOF55")
        if table != 0:
            raise _corrupt("mapping tables are not supported")
        components.append(ids.index(cid))
    near, ilv, transform = body[1 + 2 * ns], body[2 + 2 * ns], body[3 + 2 * ns]
    if near != 0:
        raise _corrupt(f"NEAR={near} is near-lossless, not lossless")
    if transform != 0:
        raise _corrupt("point transforms are not supported")
    if ilv > 2 or (ilv == 0 and ns != 1) or (ilv != 0 and ns == 1):
        raise _corrupt(f"interleave mode {ilv} does not suit a scan of {ns} components")
    if ilv == ILV_SAMPLE and ns != 3:
        raise _corrupt("sample interleaving of other than three components")
    if len(set(components)) != ns or done[components].any():
        raise _corrupt("a component is coded twice")
    comps = np.asarray(components, dtype=np.int64)
    rows = info.rows
    step = restart if restart else rows
    scan_work = work if ilv != ILV_SAMPLE or components == [0, 1, 2] else work[components]
    row = 1
    index = 0
    while True:
        end = _k.segment_end(buffer, pos)
        last = min(row + step, rows + 1)
        lut, ctx = _k.state(prm)
        if ilv == ILV_SAMPLE:
            with _fresh_start(scan_work, [0, 1, 2], row):
                status = _k.decode_samples(buffer, pos, end, scan_work, row, last, prm, lut, ctx)
        else:
            with _fresh_start(work, components, row):
                status = _k.decode_lines(buffer, pos, end, work, comps, row, last, prm, lut, ctx)
        if status < 0:
            raise _corrupt(_k.ERRORS.get(status, f"error {status}"))
        row = last
        pos = end
        if row > rows:
            break
        # A restart marker RSTm (m = interval number mod 8) ends the interval.
        if pos + 1 >= len(buffer) or buffer[pos + 1] != 0xD0 + (index % 8):
            raise _corrupt(f"restart marker RST{index % 8} expected at byte {pos}")
        pos += 2
        index += 1
    if scan_work is not work:
        work[components] = scan_work
    done[components] = True
    return pos


def _to_frame(work: np.ndarray, precision: int, maxval: int, info: FrameInfo) -> np.ndarray:
    """The frame array from the padded planes of P-bit samples (each at most `maxval`).

    A sample below ``2**BitsStored`` is the stored value (sign-extended from
    Bits Stored when signed, as a DICOM reader does).  A larger one is only
    valid for signed data coded at a precision above Bits Stored: the P-bit
    two's complement of a value in range.  Anything else cannot be carried.
    """
    planes = work[:, 1:, 1:-1]
    values = np.moveaxis(planes, 0, 2) if info.samples_per_pixel == 3 else planes[0]
    stored = info.bits_stored
    if maxval < (1 << stored):
        # Every sample fits Bits Stored (the kernels check 0..MAXVAL): no range check needed.
        if info.signed:
            values = values - ((values >> (stored - 1)) << stored)
        return np.ascontiguousarray(values, dtype=info.dtype)
    return stored_values(values, precision, info, "JPEG-LS")


ARCHIVE_PRECISION = 8
"""The smallest sample precision the registered codec writes (:func:`encode_frame`)."""


def encode_frame(frame: np.ndarray, info: FrameInfo) -> bytes:
    """Encode one frame as the gateway forwards it: as :func:`encode`, at a precision P of at least 8 bits.

    Data of fewer than 8 Bits Stored in an 8-bit container is coded at
    P = 8 (signed values as 8-bit two's complement, i.e. as stored), as
    :func:`precision` widens 16-bit containers to 9 bits.  T.87 allows any P
    from 2, but the CharLS 1.x inside DCMTK (``dcmdjpls`` and the archives built on it)
    refuses P below 6 ("unsupported compression parameters") and, for
    MAXVAL below 128 (P of 6 and 7), uses the default thresholds of
    C.2.4.1.1.1 meant for MAXVAL of 128 and more: it misreads such a stream
    or rejects it as corrupt.  At P = 8 every decoder codes alike.
    """
    return encode(frame, info, bits=max(precision(info), ARCHIVE_PRECISION))


CODEC = register(FunctionCodec("jpeg-ls", JPEG_LS_LOSSLESS, "JPEGLSLossless", supports, encode_frame, decode))
