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

from gateway.kernelcache import njit

# Decoder error codes (returned as negative positions).
ERR_BAD_CODE = -1  #: a bit pattern that is no Huffman code of the table
ERR_TRUNCATED = -2  #: the scan needs more bits than the stream holds
ERR_NO_RESTART = -3  #: a restart marker is missing where the interval ends
ERR_BAD_SSSS = -4  #: a Huffman symbol outside 0..16

# Number of bits the decoder's first-level Huffman look-up is indexed with;
# longer codes (rare) are decoded with the MAXCODE/VALPTR method of T.81 F.2.2.3.
LOOKUP_BITS = 10
_MAXCODE = 1 << LOOKUP_BITS
_VALOFF = _MAXCODE + 17
_HUFFVAL = _VALOFF + 17
_TABLE_SIZE = _HUFFVAL + 17


# Bit length of 0..255; the category of |d| < 65536 is _NBITS[a] or 8 + _NBITS[a >> 8].
_NBITS = np.array([0] + [int(v).bit_length() for v in range(1, 256)], dtype=np.int64)


@njit(cache=True, nogil=True, inline="always")
def _category(a: int) -> int:
    if a < 256:
        return _NBITS[a]
    if a < 65536:
        return 8 + _NBITS[a >> 8]
    return 16 + _NBITS[a >> 16]


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
                hist[k, _category(d if d >= 0 else -d)] += 1
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
                n = _category(d if d >= 0 else -d)
                t = table_of[k]
                # Code word, then nb extra bits: the low bits of d, or of
                # d - 1 when d < 0 (none for categories 0 and 16).
                nb = n if n < 16 else 0
                extra = (d + (d >> 31)) & ((1 << nb) - 1)
                word = (np.uint64(codes[t, n]) << np.uint64(nb)) | np.uint64(extra)
                length = lengths[t, n] + nb
                acc = (acc << np.uint64(length)) | word
                nbits += length
                if nbits >= 32:
                    # Emit 32 bits; stuff a zero after each 0xFF byte.
                    nbits -= 32
                    w = np.uint32((acc >> np.uint64(nbits)) & np.uint64(0xFFFFFFFF))
                    x = ~w
                    if ((x - np.uint32(0x01010101)) & ~x & np.uint32(0x80808080)) == 0:
                        out[pos] = np.uint8(w >> np.uint32(24))
                        out[pos + 1] = np.uint8((w >> np.uint32(16)) & np.uint32(0xFF))
                        out[pos + 2] = np.uint8((w >> np.uint32(8)) & np.uint32(0xFF))
                        out[pos + 3] = np.uint8(w & np.uint32(0xFF))
                        pos += 4
                    else:
                        for shift in (24, 16, 8, 0):
                            b = np.uint8((w >> np.uint32(shift)) & np.uint32(0xFF))
                            out[pos] = b
                            pos += 1
                            if b == 0xFF:
                                out[pos] = 0
                                pos += 1
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
    """Decoding table of one Huffman table (T.81 Annex C / F.2.2.3), packed in one array.

    `bits[i]` is the number of codes of length i+1 (BITS) and `huffval` the
    symbols in code order (HUFFVAL).  Layout (int32):

    * ``[0, 2**LOOKUP_BITS)``: for each LOOKUP_BITS-bit prefix,
      ``length << 8 | symbol`` of the code it starts with, 0 if that code is
      longer (or does not exist);
    * ``_MAXCODE + L`` (L = 0..16): largest code of length L, -1 if none;
    * ``_VALOFF + L``: index into HUFFVAL minus the smallest code of length L;
    * ``_HUFFVAL + j``: HUFFVAL.
    """
    table = np.zeros(_TABLE_SIZE, dtype=np.int32)
    for L in range(17):
        table[_MAXCODE + L] = -1
    n = min(huffval.shape[0], 17)
    for j in range(n):
        table[_HUFFVAL + j] = huffval[j]
    code = 0
    idx = 0
    for length in range(1, 17):
        count = bits[length - 1]
        if count > 0:
            table[_VALOFF + length] = idx - code
            for _ in range(count):
                if idx >= n:
                    return table
                if length <= LOOKUP_BITS:
                    span = 1 << (LOOKUP_BITS - length)
                    start = code << (LOOKUP_BITS - length)
                    if start + span > (1 << LOOKUP_BITS):
                        return table
                    entry = (length << 8) | huffval[idx]
                    for j in range(start, start + span):
                        table[j] = entry
                code += 1
                idx += 1
            table[_MAXCODE + length] = code - 1
        code <<= 1
    return table


@njit(cache=True, nogil=True, inline="always")
def _symbol(lookups: np.ndarray, t: int, acc: np.uint64) -> tuple[int, int]:
    """(code length, symbol) of the code at the top of `acc`; length 0 if invalid."""
    entry = lookups[t, np.int64(acc >> np.uint64(64 - LOOKUP_BITS))]
    if entry != 0:
        return entry >> 8, entry & 0xFF
    word = np.int64(acc >> np.uint64(48))
    for length in range(LOOKUP_BITS + 1, 17):
        code = word >> (16 - length)
        if code <= lookups[t, _MAXCODE + length]:
            j = lookups[t, _VALOFF + length] + code
            if j < 0 or j >= 17:
                return 0, 0
            return length, lookups[t, _HUFFVAL + j]
    return 0, 0


@njit(cache=True, nogil=True, inline="always")
def _difference(acc: np.uint64, length: int, s: int) -> tuple[int, int]:
    """Difference coded by category `s` after a `length`-bit code at the top of `acc`.

    Returns (difference, bits used including the code).  Branch-free: nb
    extra bits (none for SSSS 0 and 16); a value v below 2**(nb-1) stands for
    the negative difference v - (2**nb - 1) (T.81 F.1.2.1.1, H.1.2.2).
    """
    nb = s if s < 16 else 0
    v = np.int64(((acc << np.uint64(length)) >> np.uint64(32)) >> np.uint64(32 - nb))
    ones = (1 << nb) - 1
    diff = v - (((v - ((ones + 1) >> 1)) >> 63) & ones) + ((s >> 4) << 15)
    return diff, length + nb


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
                length, s = _symbol(lookups, table_of[i], acc)
                if length == 0:
                    return ERR_BAD_CODE
                if s > 16:
                    return ERR_BAD_SSSS
                diff, used = _difference(acc, length, s)
                acc <<= np.uint64(used)
                nbits -= used
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


@njit(cache=True, nogil=True)
def decode_scan_sv1(
    data: np.ndarray,
    start: int,
    out: np.ndarray,
    comps: np.ndarray,
    lookups: np.ndarray,
    table_of: np.ndarray,
    point_transform: int,
    precision: int,
) -> int:
    """:func:`decode_scan` for the common case: predictor 1, no restart interval.

    The previous sample of each component is kept in a register-like local
    instead of being read back from `out`.
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
    pt = point_transform
    mask = (1 << (precision - pt)) - 1
    prev = np.full(ns, 1 << (precision - pt - 1), dtype=np.int64)
    above = prev.copy()
    for r in range(rows):
        for c in range(cols):
            for i in range(ns):
                if nbits <= 32:
                    pos, acc, nbits, pad, marker = _fill(data, pos, end, acc, nbits, pad, marker)
                length, s = _symbol(lookups, table_of[i], acc)
                if length == 0:
                    return ERR_BAD_CODE
                if s > 16:
                    return ERR_BAD_SSSS
                diff, used = _difference(acc, length, s)
                acc <<= np.uint64(used)
                nbits -= used
                if c == 0:
                    x = (above[i] + diff) & 0xFFFF & mask
                    above[i] = x
                else:
                    x = (prev[i] + diff) & 0xFFFF & mask
                prev[i] = x
                out[r, c, comps[i]] = np.uint16(x << pt)
        if pad - nbits > 0:
            return ERR_TRUNCATED
    if pad - nbits > 0:
        return ERR_TRUNCATED
    return pos
