"""JPEG Lossless, Non-Hierarchical, Process 14 (ITU-T T.81 Annex H).

Encoder
    Selection value 1 (first-order prediction, predictor ``Px = Ra``), point
    transform 0, precision P = Bits Stored (2..16; 9 for Bits Stored <= 8 in
    16-bit containers, see :func:`precision`), one or three components in
    a single interleaved scan (RGB stays RGB: no colour transform), and one
    Huffman table per component, optimised for the image (two passes: count
    the difference categories SSSS, then build the length-limited code of
    T.81 Annex K.2).  The stream written is::

        SOI  DHT(tables 0..Nf-1)  SOF3(P, Y, X, Nf; H=V=1)  SOS(Ss=1, Se=0, Ah=Al=0)
        <entropy-coded segment, byte-stuffed>  EOI

Decoder
    SOF3 with any predictor 1..7 and point transform, restart intervals
    (DRI / RSTn), several DHT segments and tables, interleaved and
    non-interleaved scans, byte stuffing and fill bytes before markers.  Every
    header field is checked against the expected :class:`FrameInfo` before
    anything is allocated, and a stream shorter than one bit per sample is
    refused, so a hostile stream never costs more than 16 bytes of memory per
    byte of input.

Signed data (Pixel Representation 1)
    JPEG has no notion of sign.  The encoder codes the two's complement bit
    pattern masked to P bits; a conformant decoder returns that unsigned
    P-bit pattern and the reader takes its low Bits Stored bits and
    sign-extends them using Pixel Representation (as DCMTK, GDCM and pydicom
    do).  Where P is above Bits Stored the pattern is the value sign-extended
    to P bits, so a reader that goes by the precision instead reads the same
    value.  :func:`decode` accepts both a P-bit two's complement and a
    pattern of Bits Stored bits at a wider precision (other encoders write
    either).

Bits Stored <= 8 in 16-bit containers
    Coded at P = 9 (T.81 allows 2..16 for lossless): decoders return a
    P <= 8 stream as 8-bit samples, which pydicom's "pylibjpeg" plugin
    cannot place in a 16-bit frame ("buffer size must be a multiple of
    element size"); at P = 9 every decoder (libjpeg, libjpeg-turbo through
    imagecodecs, DCMTK, GDCM, pydicom) gives 16-bit samples.  8-bit
    containers keep P = Bits Stored.

The codec is registered for ``1.2.840.10008.1.2.4.70`` (JPEGLosslessSV1) and,
for decoding archives, for ``1.2.840.10008.1.2.4.57`` (JPEGLossless, any
predictor); an SV1 stream is valid for both syntaxes, so both encode the same.
"""

from __future__ import annotations

import struct

import numpy as np

from gateway.codecs import _jpeg_lossless_kernels as _k
from gateway.codecs import register
from gateway.codecs.base import FrameInfo, FunctionCodec, check_frame, stored_values
from gateway.codecs.jpeg_markers import corrupt, marker_segment
from gateway.codecs.profiles import check_profile
from gateway.dicom.uids import JPEG_LOSSLESS, JPEG_LOSSLESS_SV1
from gateway.errors import CorruptCodestreamError, UnsupportedImageError

__all__ = ["CODEC", "CODEC_ANY_PREDICTOR", "huffman_code_lengths", "encode", "decode", "precision"]

_SOI, _EOI, _SOF3, _DHT, _SOS, _DRI, _DNL = 0xD8, 0xD9, 0xC3, 0xC4, 0xDA, 0xDD, 0xDC
# SOF markers of processes other than lossless Huffman (SOF3).
_OTHER_SOF = {0xC0, 0xC1, 0xC2, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def supports(info: FrameInfo) -> str | None:
    """``None`` when a lossless JPEG (process 14) codestream can carry `info`, else why not."""
    reason = check_profile(JPEG_LOSSLESS_SV1, info)
    if reason is None and (info.rows > 65535 or info.columns > 65535):
        reason = f"(0028,0010/0011) {info.rows} x {info.columns} exceeds the 65535 limit of a JPEG frame header"
    return reason


def precision(info: FrameInfo) -> int:
    """The sample precision P we code `info` at: Bits Stored, but at least 9 in 16-bit containers.

    Decoders return the samples of a P <= 8 stream as bytes, which a reader
    expecting a 16-bit frame cannot place (pydicom's "pylibjpeg" plugin
    fails on them), so 8-bit data in a 16-bit container is coded at P = 9,
    signed values as 9-bit two's complement.
    """
    if info.bits_allocated == 16 and info.bits_stored <= 8:
        return 9
    return info.bits_stored


# ---------------------------------------------------------------- Huffman


def huffman_code_lengths(freq: np.ndarray, limit: int = 16) -> np.ndarray:
    """Optimal code lengths for symbols 0..len(freq)-1, at most `limit` bits (T.81 K.2).

    A reserved symbol of count 1 keeps the all-ones code word unused, as
    T.81 requires; unused symbols get length 0.
    """
    n = len(freq)
    f = [int(v) for v in freq] + [1]  # last entry: the reserved symbol
    size = [0] * (n + 1)
    others = [-1] * (n + 1)
    while True:
        live = [i for i in range(n + 1) if f[i] > 0]
        if len(live) < 2:
            break
        # Least frequent, ties to the larger symbol (Figure K.1).
        v1 = min(live, key=lambda i: (f[i], -i))
        v2 = min((i for i in live if i != v1), key=lambda i: (f[i], -i))
        f[v1] += f[v2]
        f[v2] = 0
        size[v1] += 1
        while others[v1] != -1:
            v1 = others[v1]
            size[v1] += 1
        others[v1] = v2
        size[v2] += 1
        while others[v2] != -1:
            v2 = others[v2]
            size[v2] += 1
    longest = max(max(size), limit)
    bits = [0] * (longest + 1)
    for s in size:
        if s:
            bits[s] += 1
    # Figure K.3: move codes longer than `limit` up the tree.
    i = longest
    while i > limit:
        while bits[i] > 0:
            j = i - 2
            while bits[j] == 0:
                j -= 1
            bits[i] -= 2
            bits[i - 1] += 1
            bits[j + 1] += 2
            bits[j] -= 1
        i -= 1
    # Remove the reserved code word from the longest length.
    i = limit
    while bits[i] == 0:
        i -= 1
    bits[i] -= 1
    # Hand lengths out again: shortest codes to the most frequent symbols,
    # keeping the order of the unlimited code (Figure K.4 sorts by size).
    order = sorted((i for i in range(n) if size[i]), key=lambda i: (size[i], i))
    lengths = np.zeros(n, dtype=np.int64)
    it = iter(order)
    for length in range(1, limit + 1):
        for _ in range(bits[length]):
            lengths[next(it)] = length
    return lengths


def _canonical(lengths: np.ndarray) -> tuple[list[int], list[int], np.ndarray]:
    """BITS, HUFFVAL and per-symbol code words of the canonical code (T.81 Annex C)."""
    bits = [int(np.count_nonzero(lengths == n)) for n in range(1, 17)]
    huffval = sorted((s for s in range(len(lengths)) if lengths[s]), key=lambda s: (lengths[s], s))
    codes = np.zeros(len(lengths), dtype=np.int64)
    code = 0
    prev = 0
    for s in huffval:
        code <<= int(lengths[s]) - prev
        prev = int(lengths[s])
        codes[s] = code
        code += 1
    return bits, huffval, codes


# ---------------------------------------------------------------- encode


def encode(frame: np.ndarray, info: FrameInfo) -> bytes:
    """Encode one frame as a JPEG Lossless SV1 codestream."""
    reason = supports(info)
    if reason:
        raise UnsupportedImageError(reason)
    frame = check_frame(frame, info)
    lo, hi = info.value_range
    if frame.size and (int(frame.min()) < lo or int(frame.max()) > hi):
        raise UnsupportedImageError(
            f"values outside the {info.bits_stored}-bit range of (0028,0101) 'Bits Stored'"
        )
    sample_bits = precision(info)
    ncomp = info.samples_per_pixel
    unsigned = frame.view(frame.dtype.str.replace("i", "u"))
    samples = (unsigned & ((1 << sample_bits) - 1)).astype(np.uint16, copy=False)
    samples = samples.reshape(info.rows, info.columns, ncomp)

    diffs, hist = _k.differences_sv1(samples, sample_bits)
    lengths = np.zeros((ncomp, 17), dtype=np.int64)
    codes = np.zeros((ncomp, 17), dtype=np.int64)
    dht = bytearray()
    for k in range(ncomp):
        lengths[k] = huffman_code_lengths(hist[k])
        bits, huffval, codes[k] = _canonical(lengths[k])
        dht += bytes([k]) + bytes(bits) + bytes(huffval)
    extra = np.array([0] + list(range(1, 16)) + [0], dtype=np.int64)
    total_bits = int((hist * (lengths + extra)).sum())
    capacity = 2 * ((total_bits + 7) // 8) + 2
    table_of = np.arange(ncomp, dtype=np.int64)
    scan = _k.encode_scan(diffs, codes, lengths, table_of, capacity)

    out = bytearray(b"\xff\xd8")
    out += struct.pack(">BBH", 0xFF, _DHT, 2 + len(dht)) + dht
    sof = struct.pack(">BHHB", sample_bits, info.rows, info.columns, ncomp)
    for k in range(ncomp):
        sof += bytes([k + 1, 0x11, 0])
    out += struct.pack(">BBH", 0xFF, _SOF3, 2 + len(sof)) + sof
    sos = bytes([ncomp])
    for k in range(ncomp):
        sos += bytes([k + 1, k << 4])
    sos += bytes([1, 0, 0])  # Ss = selection value 1, Se = 0, Ah = Al = 0
    out += struct.pack(">BBH", 0xFF, _SOS, 2 + len(sos)) + sos
    out += scan.tobytes()
    out += b"\xff\xd9"
    return bytes(out)


# ---------------------------------------------------------------- decode


class _Frame:
    """Frame header (SOF3) fields."""

    __slots__ = ("precision", "rows", "columns", "ids")

    def __init__(self, precision: int, rows: int, columns: int, ids: list[int]) -> None:
        self.precision = precision
        self.rows = rows
        self.columns = columns
        self.ids = ids


def _corrupt(message: str) -> CorruptCodestreamError:
    return corrupt("JPEG Lossless", message)


def _segment(data: bytes, pos: int) -> tuple[bytes, int]:
    return marker_segment(data, pos, "JPEG Lossless")


def _parse_dht(body: bytes, tables: dict[int, np.ndarray]) -> None:
    i = 0
    while i < len(body):
        if i + 17 > len(body):
            raise _corrupt("truncated DHT segment")
        tc, th = body[i] >> 4, body[i] & 0x0F
        if tc != 0 or th > 3:
            raise _corrupt(f"DHT class {tc} / destination {th} is not a lossless DC table")
        bits = np.frombuffer(body, dtype=np.uint8, count=16, offset=i + 1).astype(np.int64)
        count = int(bits.sum())
        if count == 0 or count > 17 or i + 17 + count > len(body):
            raise _corrupt("DHT segment has a bad number of codes")
        # Kraft: the code must fit in 16 bits.
        if sum(int(b) << (16 - n) for n, b in enumerate(bits, 1)) > (1 << 16):
            raise _corrupt("DHT code lengths overflow 16 bits")
        huffval = np.frombuffer(body, dtype=np.uint8, count=count, offset=i + 17).astype(np.int64)
        if int(huffval.max()) > 16:
            raise _corrupt("DHT symbol above 16 in a lossless table")
        tables[th] = _k.build_lookup(bits, huffval)
        i += 17 + count


def _parse_sof(body: bytes, info: FrameInfo) -> _Frame:
    if len(body) < 6:
        raise _corrupt("truncated SOF3 segment")
    precision, rows, columns, nf = struct.unpack(">BHHB", body[:6])
    if len(body) != 6 + 3 * nf:
        raise _corrupt("SOF3 length does not match its component count")
    if not 2 <= precision <= 16:
        raise _corrupt(f"precision {precision} is outside 2..16")
    if precision > info.bits_allocated:
        raise _corrupt(f"precision {precision} exceeds Bits Allocated {info.bits_allocated}")
    if rows == 0:
        raise _corrupt("frame height 0 (DNL) is not supported")
    if (rows, columns) != (info.rows, info.columns):
        raise _corrupt(f"frame is {rows} x {columns}, expected {info.rows} x {info.columns}")
    if nf != info.samples_per_pixel:
        raise _corrupt(f"frame has {nf} components, expected {info.samples_per_pixel}")
    ids = []
    for k in range(nf):
        ci, hv = body[6 + 3 * k], body[7 + 3 * k]
        if ci in ids:
            raise _corrupt(f"duplicate component id {ci}")
        if hv != body[7]:
            raise _corrupt("components with different sampling factors are not supported")
        if nf > 1 and hv != 0x11:
            raise _corrupt("subsampled colour components are not supported")
        ids.append(ci)
    return _Frame(precision, rows, columns, ids)


def decode(data: bytes, info: FrameInfo) -> np.ndarray:
    """Decode one JPEG Lossless (Process 14) codestream into a frame array."""
    data = bytes(data)
    buf = np.frombuffer(data, dtype=np.uint8)
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != _SOI:
        raise _corrupt("no SOI marker at the start")
    tables: dict[int, np.ndarray] = {}
    frame: _Frame | None = None
    out: np.ndarray | None = None
    done: set[int] = set()
    restart = 0
    pos = 2
    while True:
        # Find the next marker, skipping fill bytes (and surplus scan bytes).
        pos = data.find(b"\xff", pos)
        if pos < 0:
            pos = n
        while pos + 1 < n and data[pos + 1] == 0xFF:
            pos += 1
        if pos + 1 >= n:
            if frame is not None and len(done) == len(frame.ids):
                break  # tolerate a missing EOI after complete scans
            raise _corrupt("stream ends before EOI")
        marker = data[pos + 1]
        pos += 2
        if marker == 0x00:
            continue  # stuffed byte outside a scan: not a marker
        if marker == _EOI:
            break
        if marker in (_SOI, _DNL) or 0xD0 <= marker <= 0xD7 or marker == 0x01:
            raise _corrupt(f"unexpected marker 0xFF{marker:02X}")
        body, pos = _segment(data, pos)
        if marker == _DHT:
            _parse_dht(body, tables)
        elif marker == _DRI:
            if len(body) != 2:
                raise _corrupt("DRI segment length is not 4")
            restart = (body[0] << 8) | body[1]
        elif marker == _SOF3:
            if frame is not None:
                raise _corrupt("second SOF marker")
            frame = _parse_sof(body, info)
            # Every sample costs at least one bit (shortest Huffman code), so a
            # stream too short for the frame is refused before allocating it.
            if 8 * n < frame.rows * frame.columns * len(frame.ids):
                raise _corrupt(f"{n} bytes cannot hold a {frame.rows} x {frame.columns} frame")
            # Every pixel is written by the scans, which must cover all components.
            out = np.empty((frame.rows, frame.columns, len(frame.ids)), dtype=np.uint16)
        elif marker in _OTHER_SOF:
            raise _corrupt(f"SOF marker 0xFF{marker:02X} is not lossless Huffman (SOF3)")
        elif marker == _SOS:
            if frame is None or out is None:
                raise _corrupt("SOS before SOF3")
            pos = _decode_scan(body, buf, pos, frame, out, tables, restart, done)
        # Other segments (APPn, COM, DQT, ...) carry nothing we need.
    if frame is None or out is None:
        raise _corrupt("no SOF3 frame header")
    if len(done) != len(frame.ids):
        raise _corrupt("not every component was coded in a scan")
    return _to_frame(out, frame.precision, info)


def _decode_scan(
    body: bytes,
    buf: np.ndarray,
    pos: int,
    frame: _Frame,
    out: np.ndarray,
    tables: dict[int, np.ndarray],
    restart: int,
    done: set[int],
) -> int:
    if len(body) < 4:
        raise _corrupt("truncated SOS segment")
    ns = body[0]
    if ns < 1 or len(body) != 4 + 2 * ns:
        raise _corrupt("SOS length does not match its component count")
    comps = np.empty(ns, dtype=np.int64)
    table_of = np.empty(ns, dtype=np.int64)
    used: list[int] = []
    for i in range(ns):
        cs, tdta = body[1 + 2 * i], body[2 + 2 * i]
        if cs not in frame.ids:
            raise _corrupt(f"scan component {cs} is not in the frame")
        k = frame.ids.index(cs)
        if k in done or k in comps[:i]:
            raise _corrupt(f"component {cs} coded twice")
        td = tdta >> 4
        if td not in tables:
            raise _corrupt(f"Huffman table {td} used before it is defined")
        comps[i] = k
        if td not in used:
            used.append(td)
        table_of[i] = used.index(td)
    predictor, se, ahal = body[1 + 2 * ns], body[2 + 2 * ns], body[3 + 2 * ns]
    al = ahal & 0x0F
    if not 1 <= predictor <= 7:
        raise _corrupt(f"predictor {predictor} is outside 1..7")
    if se != 0 or ahal >> 4 != 0 or al >= frame.precision:
        raise _corrupt("bad Se / Ah / Al in SOS")
    lookups = np.stack([tables[t] for t in used])
    if predictor == 1 and restart == 0:
        end = _k.decode_scan_sv1(buf, pos, out, comps, lookups, table_of, al, frame.precision)
    else:
        end = _k.decode_scan(
            buf, pos, out, comps, lookups, table_of, predictor, al, frame.precision, restart
        )
    if end < 0:
        reason = {
            _k.ERR_BAD_CODE: "invalid Huffman code",
            _k.ERR_TRUNCATED: "entropy-coded data is truncated",
            _k.ERR_NO_RESTART: "restart marker missing",
            _k.ERR_BAD_SSSS: "difference category above 16",
        }.get(end, "bad entropy-coded data")
        raise _corrupt(reason)
    done.update(int(k) for k in comps)
    return end


def _to_frame(out: np.ndarray, precision: int, info: FrameInfo) -> np.ndarray:
    """Turn decoded P-bit patterns into the frame array convention of `info`."""
    if precision > info.bits_allocated:
        raise _corrupt(f"precision {precision} does not fit Bits Allocated {info.bits_allocated}")
    if precision > info.bits_stored:
        values = stored_values(out, precision, info, "JPEG Lossless")
        return values.reshape(info.rows, info.columns) if info.samples_per_pixel == 1 else values
    if info.bits_allocated == 8:
        out = out.astype(np.uint8)
    elif info.bits_allocated == 32:
        out = out.astype(np.uint32)
    if info.signed:
        # Sign-extend the low Bits Stored bits: shift them to the top of the
        # container, reinterpret as signed, shift back arithmetically.
        shift = np.array(info.bits_allocated - info.bits_stored, dtype=out.dtype)
        result = (out << shift).view(info.dtype) >> shift.astype(info.dtype) if shift else out.view(info.dtype)
    else:
        result = out
    if info.samples_per_pixel == 1:
        result = result.reshape(info.rows, info.columns)
    return np.ascontiguousarray(result)


# ---------------------------------------------------------------- codecs


CODEC = register(FunctionCodec("jpeg-lossless", JPEG_LOSSLESS_SV1, "JPEGLosslessSV1", supports, encode, decode))
# Process 14 with any selection value: decoded (predictors 1..7), written as SV1.
CODEC_ANY_PREDICTOR = register(
    FunctionCodec("jpeg-lossless-p14", JPEG_LOSSLESS, "JPEGLossless", supports, encode, decode))
