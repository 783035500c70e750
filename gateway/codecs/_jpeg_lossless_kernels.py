"""Numba kernels of the JPEG Lossless codec (ITU-T T.81 Annex H).

The public module :mod:`gateway.codecs.jpeg_lossless` validates its input and
parses marker segments; the per-sample work (prediction, Huffman coding, bit
I/O with byte stuffing) happens here.

Samples travel as ``uint16`` arrays of shape ``(rows, columns, components)``
holding the unsigned P-bit pattern of each sample.

Error codes returned by the decoder (negative values) are translated into
:class:`~gateway.errors.CorruptCodestreamError` by the caller.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Decoder error codes (returned as negative positions).
ERR_BAD_CODE = -1  #: a bit pattern that is no Huffman code of the table
ERR_TRUNCATED = -2  #: the scan needs more bits than the stream holds
ERR_NO_RESTART = -3  #: a restart marker is missing where the interval ends
ERR_BAD_SSSS = -4  #: a Huffman symbol outside 0..16

# Number of bits the decoder's Huffman look-up tables are indexed with.
LOOKUP_BITS = 16


@njit(cache=True, nogil=True)
def _ssss(diff: int) -> int:
    """Difference category: number of bits of |diff| (16 for -32768)."""
    a = diff if diff >= 0 else -diff
    n = 0
    while a:
        n += 1
        a >>= 1
    return n


@njit(cache=True, nogil=True)
def differences_sv1(samples: np.ndarray, precision: int) -> tuple[np.ndarray, np.ndarray]:
    """First-order (selection value 1) prediction differences and histograms.

    Returns ``diffs`` (int32, same shape as `samples`, each difference reduced
    modulo 2**16 to -32767..32768) and ``hist`` (components x 17 counts of the
    difference categories).
    """
    rows, cols, ncomp = samples.shape
    diffs = np.empty((rows, cols, ncomp), dtype=np.int32)
    hist = np.zeros((ncomp, 17), dtype=np.int64)
    initial = 1 << (precision - 1)
    for r in range(rows):
        for c in range(cols):
            for k in range(ncomp):
                x = np.int32(samples[r, c, k])
                if c > 0:
                    p = np.int32(samples[r, c - 1, k])
                elif r > 0:
                    p = np.int32(samples[r - 1, c, k])
                else:
                    p = np.int32(initial)
                d = (x - p) & 0xFFFF
                if d > 32768:
                    d -= 65536
                diffs[r, c, k] = d
                # category = bit length of |d|
                a = d if d >= 0 else -d
                n = 0
                while a:
                    n += 1
                    a >>= 1
                hist[k, n] += 1
    return diffs, hist


@njit(cache=True, nogil=True)
def encode_scan(
    diffs: np.ndarray, codes: np.ndarray, lengths: np.ndarray, table_of: np.ndarray, capacity: int
) -> np.ndarray:
    """Huffman-code the differences of one interleaved scan.

    `codes`/`lengths` are (tables x 17) code words and lengths per category;
    `table_of[k]` selects the table of component k.  Returns the entropy-coded
    segment with byte stuffing, padded with 1-bits to a byte boundary.
    """
    rows, cols, ncomp = diffs.shape
    out = np.empty(capacity, dtype=np.uint8)
    pos = 0
    acc = np.uint64(0)  # bits are appended at the low end
    nbits = 0
    for r in range(rows):
        for c in range(cols):
            for k in range(ncomp):
                d = diffs[r, c, k]
                a = d if d >= 0 else -d
                n = 0
                while a:
                    n += 1
                    a >>= 1
                t = table_of[k]
                length = lengths[t, n]
                word = np.uint64(codes[t, n])
                if n != 0 and n != 16:
                    extra = d if d > 0 else d - 1
                    word = (word << np.uint64(n)) | np.uint64(extra & ((1 << n) - 1))
                    length += n
                acc = (acc << np.uint64(length)) | word
                nbits += length
                while nbits >= 8:
                    nbits -= 8
                    b = np.uint8((acc >> np.uint64(nbits)) & np.uint64(0xFF))
                    out[pos] = b
                    pos += 1
                    if b == 0xFF:
                        out[pos] = 0
                        pos += 1
    if nbits > 0:
        pad = 8 - nbits
        b = np.uint8(((acc << np.uint64(pad)) | np.uint64((1 << pad) - 1)) & np.uint64(0xFF))
        out[pos] = b
        pos += 1
        if b == 0xFF:
            out[pos] = 0
            pos += 1
    return out[:pos]


@njit(cache=True, nogil=True)
def build_lookup(bits: np.ndarray, huffval: np.ndarray) -> np.ndarray:
    """A 2**16-entry table: (length << 8 | symbol) for every 16-bit prefix, 0 if none.

    `bits[i]` is the number of codes of length i+1 (T.81 BITS list) and
    `huffval` the symbols in code order (HUFFVAL), per Annex C.
    """
    table = np.zeros(1 << LOOKUP_BITS, dtype=np.int32)
    code = 0
    idx = 0
    for length in range(1, 17):
        for _ in range(bits[length - 1]):
            if idx >= huffval.shape[0]:
                return table
            span = 1 << (16 - length)
            start = code << (16 - length)
            if start + span > (1 << 16):
                return table
            entry = (length << 8) | huffval[idx]
            for j in range(start, start + span):
                table[j] = entry
            code += 1
            idx += 1
        code <<= 1
    return table


@njit(cache=True, nogil=True)
def _fill(data, pos, end, acc, nbits, pad, marker):
    """Top up the MSB-aligned bit accumulator to more than 56 bits.

    Stops at the first marker (0xFF not followed by 0x00) and feeds zero bits
    from then on, counting them in `pad`.
    """
    while nbits <= 56:
        if not marker and pos < end:
            b = data[pos]
            if b == 0xFF:
                if pos + 1 < end and data[pos + 1] == 0:
                    pos += 2
                else:
                    marker = True
                    continue
            else:
                pos += 1
            acc |= np.uint64(b) << np.uint64(56 - nbits)
        else:
            pad += 8
        nbits += 8
    return pos, acc, nbits, pad, marker


@njit(cache=True, nogil=True)
def decode_scan(
    data: np.ndarray,
    start: int,
    out: np.ndarray,
    comps: np.ndarray,
    lookups: np.ndarray,
    table_of: np.ndarray,
    predictor: int,
    point_transform: int,
    precision: int,
    restart_interval: int,
) -> int:
    """Decode one scan into `out` (uint16, rows x columns x components).

    `comps` lists the frame component indices of the scan in order;
    `table_of[i]` is the Huffman table (index into `lookups`) of comps[i].
    Returns the position where reading stopped (at the marker that ends the
    scan, or before it when the scan carries surplus bytes), or a negative
    error code.
    """
    rows = out.shape[0]
    cols = out.shape[1]
    ns = comps.shape[0]
    end = data.shape[0]
    pos = start
    acc = np.uint64(0)
    nbits = 0
    pad = 0
    marker = False
    initial = 1 << (precision - point_transform - 1)
    mask = (1 << (precision - point_transform)) - 1
    pt = point_transform
    first_line = True  # first line of the scan or of a restart interval
    todo = restart_interval
    for r in range(rows):
        for c in range(cols):
            reset = r == 0 and c == 0
            if restart_interval > 0:
                if todo == 0:
                    # Byte-align, check that only padding is left, find RSTn.
                    if nbits - pad >= 8:
                        return ERR_NO_RESTART
                    while pos + 1 < end and data[pos] == 0xFF and data[pos + 1] == 0xFF:
                        pos += 1  # fill bytes before the marker
                    if pos + 1 >= end or data[pos] != 0xFF or (data[pos + 1] & 0xF8) != 0xD0:
                        return ERR_NO_RESTART
                    pos += 2
                    acc = np.uint64(0)
                    nbits = 0
                    pad = 0
                    marker = False
                    first_line = True
                    todo = restart_interval
                    reset = True
                todo -= 1
            for i in range(ns):
                k = comps[i]
                if nbits <= 32:
                    pos, acc, nbits, pad, marker = _fill(data, pos, end, acc, nbits, pad, marker)
                entry = lookups[table_of[i], np.int64(acc >> np.uint64(48))]
                length = entry >> 8
                if length == 0:
                    return ERR_BAD_CODE
                s = entry & 0xFF
                acc <<= np.uint64(length)
                nbits -= length
                if s == 0:
                    diff = 0
                elif s == 16:
                    diff = 32768
                elif s > 16:
                    return ERR_BAD_SSSS
                else:
                    v = np.int64(acc >> np.uint64(64 - s))
                    acc <<= np.uint64(s)
                    nbits -= s
                    if v < (1 << (s - 1)):
                        v = v - (1 << s) + 1
                    diff = v
                # Prediction (T.81 H.1.2.1, Table H.1).
                if reset:
                    px = initial
                elif first_line:
                    px = np.int64(out[r, c - 1, k]) >> pt
                elif c == 0:
                    px = np.int64(out[r - 1, c, k]) >> pt
                else:
                    ra = np.int64(out[r, c - 1, k]) >> pt
                    if predictor == 1:
                        px = ra
                    else:
                        rb = np.int64(out[r - 1, c, k]) >> pt
                        if predictor == 2:
                            px = rb
                        else:
                            rc = np.int64(out[r - 1, c - 1, k]) >> pt
                            if predictor == 3:
                                px = rc
                            elif predictor == 4:
                                px = ra + rb - rc
                            elif predictor == 5:
                                px = ra + ((rb - rc) >> 1)
                            elif predictor == 6:
                                px = rb + ((ra - rc) >> 1)
                            else:
                                px = (ra + rb) >> 1
                x = (px + diff) & 0xFFFF & mask
                out[r, c, k] = np.uint16(x << pt)
        first_line = False
        if pad - nbits > 0:
            return ERR_TRUNCATED
    if pad - nbits > 0:
        return ERR_TRUNCATED
    return pos
