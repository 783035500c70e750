"""EBCOT tier 1: the bit-plane coder of JPEG 2000 code-blocks (ITU-T T.800 Annex D).

This is the block coder of the Part 1 codec; the codestream, tier-2 and
wavelet modules do not depend on it, so another block coder (HTJ2K's) plugs
in beside it with the same two batch entry points:

``encode_blocks(coeffs, blocks, out, offsets, results)``
    codes every code-block listed in `blocks` (rows ``comp, y0, x0, h, w,
    orientation`` into ``coeffs[comp]``) with every coding pass in one
    terminated codeword, writes it at ``out[offsets[i]:]`` and sets
    ``results[i] = (length, passes, bit-planes)``.  Returns 0, or -1-i when
    the room given to block i (up to ``offsets[i + 1]``) was too small.

``decode_blocks(coeffs, blocks, segments, data)``
    decodes code-blocks (rows ``comp, y0, x0, h, w, orientation, bit-planes,
    style, first segment, segment count``) whose codeword segments are rows
    ``start, length, passes`` into `data`, and writes the coefficients into
    `coeffs`.  Any code-block style (T.800 Table A.19) is accepted: bypass,
    context reset, termination on each pass, vertical causal, predictable
    termination and segmentation symbols.  Returns 0, or the negative code
    of the first error (see ``ERRORS``).

The coder keeps one flag word per coefficient in a padded array (one border
sample all round): the significance of its eight neighbours, the signs of its
four direct neighbours, and its own state (significant, negative, coded in
this bit-plane's significance pass, refined).  A coefficient that becomes
significant updates its neighbours' words, so contexts are table look-ups.

Decoded magnitudes carry one extra bit below the last decoded bit-plane: a
coefficient becomes significant at plane p as 1.5 * 2**p and refinements
move it by half the interval, so a code-block whose last passes are missing
is reconstructed at the middle of the interval its bits leave open (T.800
E.1.1.2 with r = 1/2), and a complete one exactly.
"""

from __future__ import annotations

import numpy as np

from gateway.codecs.jpeg2000 import mq
from gateway.codecs.jpeg2000.mq import u
from gateway.kernelcache import njit

# Code-block style flags (T.800 Table A.19).
STYLE_BYPASS = 0x01
STYLE_RESET = 0x02
STYLE_TERMALL = 0x04
STYLE_VCAUSAL = 0x08
STYLE_PTERM = 0x10
STYLE_SEGSYM = 0x20

# Sub-band orientations, in packet order after LL.
LL, HL, LH, HH = 0, 1, 2, 3

# Flag word bits: neighbour significance (the four direct neighbours first),
# neighbour signs, own state.  The direct neighbours' significance (bits 0-3)
# and signs (bits 8-11) are in the same order, so the sign-coding index is two
# masks and a shift.
F_N, F_W, F_E, F_S, F_NW, F_NE, F_SW, F_SE = 1, 2, 4, 8, 16, 32, 64, 128
F_NEIGHBOURS = 0xFF
F_SGN_N, F_SGN_W, F_SGN_E, F_SGN_S = 256, 512, 1024, 2048
F_SIG, F_VISIT, F_REF, F_NEG = 4096, 8192, 16384, 32768
F_PAD = 1 << 16  # a padding row below a partial last stripe (see below)

CX_MR = 14  # first of the three magnitude refinement contexts

ERR_PASSES = -1  # more coding passes than bit-planes allow
ERR_PLANES = -2  # more bit-planes than the coefficient type holds
ERRORS = {
    ERR_PASSES: "a code-block has more coding passes than its bit-planes allow",
    ERR_PLANES: "a code-block has more magnitude bit-planes than supported",
}
MAX_PLANES = 30  # magnitudes (plus the half bit) fit an int32 coefficient

BLOCK_FIELDS_ENCODE = 6
BLOCK_FIELDS_DECODE = 10


def _zc_tables() -> np.ndarray:
    """Zero-coding context per orientation and neighbour pattern (T.800 Table D.1)."""
    table = np.zeros((4, 256), dtype=np.int64)
    for pattern in range(256):
        h = bool(pattern & F_W) + bool(pattern & F_E)
        v = bool(pattern & F_N) + bool(pattern & F_S)
        d = bool(pattern & F_NW) + bool(pattern & F_NE) + bool(pattern & F_SW) + bool(pattern & F_SE)
        for orient in (LL, HL, LH, HH):
            if orient == HH:
                hv = h + v
                if d >= 3:
                    cx = 8
                elif d == 2:
                    cx = 7 if hv >= 1 else 6
                elif d == 1:
                    cx = 5 if hv >= 2 else 4 if hv == 1 else 3
                else:
                    cx = 2 if hv >= 2 else hv
            else:
                # LL and LH (vertically high-pass) code with H first; HL swaps H and V.
                a, b = (v, h) if orient == HL else (h, v)
                if a == 2:
                    cx = 8
                elif a == 1:
                    cx = 7 if b >= 1 else 6 if d >= 1 else 5
                elif b == 2:
                    cx = 4
                elif b == 1:
                    cx = 3
                else:
                    cx = 2 if d >= 2 else d
            table[orient, pattern] = cx
    return table


def _sc_tables() -> tuple[np.ndarray, np.ndarray]:
    """Sign-coding context and XOR bit per neighbour pattern (T.800 Tables D.2 and D.3).

    The index packs the significance of the N, W, E, S neighbours (bits 0-3)
    and their signs (bits 4-7).
    """
    context = np.zeros(256, dtype=np.int64)
    xor = np.zeros(256, dtype=np.int64)
    by_hv = {(1, 1): (13, 0), (1, 0): (12, 0), (1, -1): (11, 0), (0, 1): (10, 0), (0, 0): (9, 0),
             (0, -1): (10, 1), (-1, 1): (11, 1), (-1, 0): (12, 1), (-1, -1): (13, 1)}
    for index in range(256):
        sig = [(index >> k) & 1 for k in range(4)]  # N, W, E, S
        neg = [(index >> (4 + k)) & 1 for k in range(4)]
        contribution = [s * (-1 if n else 1) for s, n in zip(sig, neg)]
        h = max(-1, min(1, contribution[1] + contribution[2]))
        v = max(-1, min(1, contribution[0] + contribution[3]))
        context[index], xor[index] = by_hv[(h, v)]
    return context, xor


ZC = _zc_tables()
SC_CONTEXT, SC_XOR = _sc_tables()


@njit(cache=True, nogil=True, inline="always")
def _sign_index(f: int) -> int:
    return (f & 0xF) | ((f >> 4) & 0xF0)


@njit(cache=True, nogil=True, inline="always")
def _significant(flags: np.ndarray, i: int, stride: int, negative: int, vcausal_top: bool, counts: np.ndarray,
                 stripe: int) -> None:
    """Mark coefficient `i` significant and tell its eight neighbours (not the row above in causal mode).

    ``counts[stripe]`` counts the significant coefficients of each stripe
    (index 1 is the first stripe; 0 and the last are always zero).
    """
    counts[u(stripe)] += 1
    flags[u(i)] |= F_SIG | (F_NEG if negative else 0)
    if not vcausal_top:
        flags[u(i - stride - 1)] |= F_SE
        flags[u(i - stride)] |= F_S | (F_SGN_S if negative else 0)
        flags[u(i - stride + 1)] |= F_SW
    flags[u(i - 1)] |= F_E | (F_SGN_E if negative else 0)
    flags[u(i + 1)] |= F_W | (F_SGN_W if negative else 0)
    flags[u(i + stride - 1)] |= F_NE
    flags[u(i + stride)] |= F_N | (F_SGN_N if negative else 0)
    flags[u(i + stride + 1)] |= F_NW


# ----------------------------------------------------------------------------- encoder
#
# The passes skip whole stripes first: a significance pass has nothing to
# code in a stripe when no coefficient of it or of the stripes above and
# below is significant (per-stripe counts), or when all of it is; a
# refinement pass when none of it is.  Inside a stripe, a column's four flag
# words are tested together the same way, and its four rows are written out.
# A partial last stripe is padded to four rows with rows marked
# ``F_PAD | F_SIG``: every pass skips them, no run is ever tried in their
# columns, and no coefficient sees them as significant, so full and partial
# stripes share one code path.


@njit(cache=True, nogil=True, inline="always")
def _enc_sp(i: int, m: int, p: int, orient: int, flags: np.ndarray, mags: np.ndarray, stride: int,
            counts: np.ndarray, stripe: int, states: np.ndarray, a: int, c: int, ct: int, b: int, n: int,
            out: np.ndarray, base: int) -> tuple[int, int, int, int, int]:
    """Significance propagation for one coefficient."""
    f = flags[u(i)]
    if f & F_SIG or not f & F_NEIGHBOURS:
        return a, c, ct, b, n
    bit = (mags[u(m)] >> p) & 1
    a, c, ct, b, n = mq.encode(bit, ZC[u(orient), u(f & F_NEIGHBOURS)], states, a, c, ct, b, n, out, base)
    if bit:
        si = _sign_index(f)
        neg = 1 if f & F_NEG else 0
        a, c, ct, b, n = mq.encode(neg ^ SC_XOR[u(si)], SC_CONTEXT[u(si)], states, a, c, ct, b, n, out, base)
        _significant(flags, i, stride, neg, False, counts, stripe)
    flags[u(i)] |= F_VISIT
    return a, c, ct, b, n


@njit(cache=True, nogil=True, inline="always")
def _enc_mr(i: int, m: int, p: int, flags: np.ndarray, mags: np.ndarray, states: np.ndarray, a: int, c: int,
            ct: int, b: int, n: int, out: np.ndarray, base: int) -> tuple[int, int, int, int, int]:
    """Magnitude refinement for one coefficient."""
    f = flags[u(i)]
    if f & (F_SIG | F_VISIT | F_PAD) != F_SIG:
        return a, c, ct, b, n
    cx = 16 if f & F_REF else (15 if f & F_NEIGHBOURS else 14)
    a, c, ct, b, n = mq.encode((mags[u(m)] >> p) & 1, cx, states, a, c, ct, b, n, out, base)
    flags[u(i)] = f | F_REF
    return a, c, ct, b, n


@njit(cache=True, nogil=True, inline="always")
def _enc_cu(i: int, m: int, p: int, orient: int, flags: np.ndarray, mags: np.ndarray, stride: int,
            counts: np.ndarray, stripe: int, states: np.ndarray, a: int, c: int, ct: int, b: int, n: int,
            out: np.ndarray, base: int) -> tuple[int, int, int, int, int]:
    """Cleanup coding of one coefficient (outside run mode)."""
    f = flags[u(i)]
    if f & (F_SIG | F_VISIT):
        flags[u(i)] = f & ~F_VISIT
        return a, c, ct, b, n
    bit = (mags[u(m)] >> p) & 1
    a, c, ct, b, n = mq.encode(bit, ZC[u(orient), u(f & F_NEIGHBOURS)], states, a, c, ct, b, n, out, base)
    if bit:
        si = _sign_index(f)
        neg = 1 if f & F_NEG else 0
        a, c, ct, b, n = mq.encode(neg ^ SC_XOR[u(si)], SC_CONTEXT[u(si)], states, a, c, ct, b, n, out, base)
        _significant(flags, i, stride, neg, False, counts, stripe)
    return a, c, ct, b, n


@njit(cache=True, nogil=True, inline="always")
def _enc_run(i: int, m: int, w: int, p: int, flags: np.ndarray, mags: np.ndarray, stride: int, counts: np.ndarray,
             stripe: int, states: np.ndarray, a: int, c: int, ct: int, b: int, n: int, out: np.ndarray,
             base: int) -> tuple[int, int, int, int, int, int]:
    """Run mode on one full column: returns the row after the coefficient that became significant (4: none)."""
    # The first row whose bit is set, without a loop (helpers inlined into loops stay loop-free).
    if (mags[u(m)] >> p) & 1:
        k = 0
    elif (mags[u(m + w)] >> p) & 1:
        k = 1
    elif (mags[u(m + 2 * w)] >> p) & 1:
        k = 2
    elif (mags[u(m + 3 * w)] >> p) & 1:
        k = 3
    else:
        k = 4
    if k == 4:
        a, c, ct, b, n = mq.encode(0, mq.CX_RL, states, a, c, ct, b, n, out, base)
        return 4, a, c, ct, b, n
    a, c, ct, b, n = mq.encode(1, mq.CX_RL, states, a, c, ct, b, n, out, base)
    a, c, ct, b, n = mq.encode(k >> 1, mq.CX_UNI, states, a, c, ct, b, n, out, base)
    a, c, ct, b, n = mq.encode(k & 1, mq.CX_UNI, states, a, c, ct, b, n, out, base)
    j = i + k * stride
    f = flags[u(j)]
    si = _sign_index(f)
    neg = 1 if f & F_NEG else 0
    a, c, ct, b, n = mq.encode(neg ^ SC_XOR[u(si)], SC_CONTEXT[u(si)], states, a, c, ct, b, n, out, base)
    _significant(flags, j, stride, neg, False, counts, stripe)
    return k + 1, a, c, ct, b, n


@njit(cache=True, nogil=True, _nrt=False)
def _encode_block(coef: np.ndarray, orient: int, flags: np.ndarray, mags: np.ndarray, counts: np.ndarray,
                  states: np.ndarray, out: np.ndarray, base: int) -> tuple[int, int, int]:
    """All coding passes of one code-block in one codeword: ``(bytes, passes, bit-planes)``."""
    h, w = coef.shape
    stride = w + 2
    s2, s3 = 2 * stride, 3 * stride
    h4 = (h + 3) & ~3
    for i in range((h4 + 2) * stride):
        flags[u(i)] = 0
    for y in range(h, h4):
        for x in range(w):
            flags[u((y + 1) * stride + x + 1)] = F_PAD | F_SIG
    for i in range(h4 // 4 + 2):
        counts[u(i)] = 0
    top = 0
    for y in range(h):
        for x in range(w):
            v = coef[y, x]
            m = -v if v < 0 else v
            mags[u(y * w + x)] = m
            top |= m
            if v < 0:
                flags[u((y + 1) * stride + x + 1)] = F_NEG
    planes = 0
    while top >> planes:
        planes += 1
    if planes == 0:
        return 0, 0, 0
    mq.reset_contexts(states)
    a, c, ct, b, n = 0x8000, 0, 12, 0, 0
    for p in range(planes - 1, -1, -1):
        if p != planes - 1:
            for y0 in range(0, h, 4):  # significance propagation
                stripe = (y0 >> 2) + 1
                size = min(4, h - y0) * w
                if counts[u(stripe - 1)] + counts[u(stripe)] + counts[u(stripe + 1)] == 0 or counts[u(stripe)] == size:
                    continue
                row = (y0 + 1) * stride + 1
                for x in range(w):
                    i = row + x
                    f0, f1, f2, f3 = flags[u(i)], flags[u(i + stride)], flags[u(i + s2)], flags[u(i + s3)]
                    if not (f0 | f1 | f2 | f3) & F_NEIGHBOURS or f0 & f1 & f2 & f3 & F_SIG:
                        continue
                    m = y0 * w + x
                    a, c, ct, b, n = _enc_sp(i, m, p, orient, flags, mags, stride, counts, stripe, states,
                                             a, c, ct, b, n, out, base)
                    a, c, ct, b, n = _enc_sp(i + stride, m + w, p, orient, flags, mags, stride, counts, stripe,
                                             states, a, c, ct, b, n, out, base)
                    a, c, ct, b, n = _enc_sp(i + s2, m + 2 * w, p, orient, flags, mags, stride, counts, stripe,
                                             states, a, c, ct, b, n, out, base)
                    a, c, ct, b, n = _enc_sp(i + s3, m + 3 * w, p, orient, flags, mags, stride, counts, stripe,
                                             states, a, c, ct, b, n, out, base)
            for y0 in range(0, h, 4):  # magnitude refinement
                if counts[u((y0 >> 2) + 1)] == 0:
                    continue
                row = (y0 + 1) * stride + 1
                for x in range(w):
                    i = row + x
                    if not (flags[u(i)] | flags[u(i + stride)] | flags[u(i + s2)] | flags[u(i + s3)]) & F_SIG:
                        continue
                    m = y0 * w + x
                    a, c, ct, b, n = _enc_mr(i, m, p, flags, mags, states, a, c, ct, b, n, out, base)
                    a, c, ct, b, n = _enc_mr(i + stride, m + w, p, flags, mags, states, a, c, ct, b, n, out, base)
                    a, c, ct, b, n = _enc_mr(i + s2, m + 2 * w, p, flags, mags, states, a, c, ct, b, n, out, base)
                    a, c, ct, b, n = _enc_mr(i + s3, m + 3 * w, p, flags, mags, states, a, c, ct, b, n, out, base)
        for y0 in range(0, h, 4):  # cleanup
            stripe = (y0 >> 2) + 1
            row = (y0 + 1) * stride + 1
            for x in range(w):
                i = row + x
                f0, f1, f2, f3 = flags[u(i)], flags[u(i + stride)], flags[u(i + s2)], flags[u(i + s3)]
                if f0 & f1 & f2 & f3 & F_SIG:
                    flags[u(i)] = f0 & ~F_VISIT
                    flags[u(i + stride)] = f1 & ~F_VISIT
                    flags[u(i + s2)] = f2 & ~F_VISIT
                    flags[u(i + s3)] = f3 & ~F_VISIT
                    continue
                m = y0 * w + x
                k = 0
                if not (f0 | f1 | f2 | f3) & (F_SIG | F_VISIT | F_NEIGHBOURS):
                    k, a, c, ct, b, n = _enc_run(i, m, w, p, flags, mags, stride, counts, stripe, states,
                                                 a, c, ct, b, n, out, base)
                    if k == 4:
                        continue
                if k == 0:
                    a, c, ct, b, n = _enc_cu(i, m, p, orient, flags, mags, stride, counts, stripe, states,
                                             a, c, ct, b, n, out, base)
                if k <= 1:
                    a, c, ct, b, n = _enc_cu(i + stride, m + w, p, orient, flags, mags, stride, counts, stripe,
                                             states, a, c, ct, b, n, out, base)
                if k <= 2:
                    a, c, ct, b, n = _enc_cu(i + s2, m + 2 * w, p, orient, flags, mags, stride, counts, stripe,
                                             states, a, c, ct, b, n, out, base)
                a, c, ct, b, n = _enc_cu(i + s3, m + 3 * w, p, orient, flags, mags, stride, counts, stripe,
                                         states, a, c, ct, b, n, out, base)
    length = mq.flush(a, c, ct, b, n, out, base)
    return length, 3 * planes - 2, planes


@njit(cache=True, nogil=True)
def encode_blocks(coeffs: np.ndarray, blocks: np.ndarray, out: np.ndarray, offsets: np.ndarray,
                  results: np.ndarray) -> int:
    """Code every listed code-block (see the module docstring); 0, or -1-i if block i overflowed."""
    flags = np.empty(66 * 66, dtype=np.uint32)
    mags = np.empty(64 * 64, dtype=np.int32)
    counts = np.empty(1024 // 4 + 3, dtype=np.int32)  # a code-block is at most 1024 high
    states = np.empty(mq.N_CONTEXTS, dtype=np.int32)
    for k in range(blocks.shape[0]):
        comp, y0, x0, h, w, orient = blocks[k, 0], blocks[k, 1], blocks[k, 2], blocks[k, 3], blocks[k, 4], blocks[k, 5]
        if (((h + 3) & ~3) + 2) * (w + 2) > flags.size or h * w > mags.size:
            flags = np.empty((((h + 3) & ~3) + 2) * (w + 2), dtype=np.uint32)
            mags = np.empty(h * w, dtype=np.int32)
        room = offsets[k + 1] - offsets[k]
        window = out[offsets[k]:offsets[k] + room]
        length, passes, planes = _encode_block(coeffs[comp, y0:y0 + h, x0:x0 + w], orient, flags, mags, counts,
                                               states, window, 0)
        if length > room:
            return -1 - k
        results[k, 0] = length
        results[k, 1] = passes
        results[k, 2] = planes
    return 0


# ----------------------------------------------------------------------------- decoder
#
# The same stripe and column skipping, padding and written-out rows as the
# encoder.  Raw (bypass) passes are decoded by a separate, not inlined,
# kernel: they are rare, and keeping them out of the main kernel keeps its
# code (and compile time) small.  ``causal`` is true for the first row of a
# stripe in vertically causal mode, whose significance the row above must
# not see.


@njit(cache=True, nogil=True, inline="always")
def _dec_sp(i: int, m: int, half: int, zc: np.ndarray, flags: np.ndarray, vals: np.ndarray, stride: int,
            counts: np.ndarray, stripe: int, causal: bool, states: np.ndarray, a: int, c: int, ct: int,
            pos: int, data: np.ndarray, end: int) -> tuple[int, int, int, int]:
    """Significance propagation for one coefficient."""
    f = flags[u(i)]
    if f & F_SIG or not f & F_NEIGHBOURS:
        return a, c, ct, pos
    bit, a, c, ct, pos = mq.decode(zc[u(f & F_NEIGHBOURS)], states, a, c, ct, pos, data, end)
    if bit:
        si = _sign_index(f)
        neg, a, c, ct, pos = mq.decode(SC_CONTEXT[u(si)], states, a, c, ct, pos, data, end)
        neg ^= SC_XOR[u(si)]
        _significant(flags, i, stride, neg, causal, counts, stripe)
        vals[u(m)] = 3 * half
    flags[u(i)] |= F_VISIT
    return a, c, ct, pos


@njit(cache=True, nogil=True, inline="always")
def _dec_mr(i: int, m: int, half: int, flags: np.ndarray, vals: np.ndarray, states: np.ndarray,
            a: int, c: int, ct: int, pos: int, data: np.ndarray, end: int) -> tuple[int, int, int, int]:
    """Magnitude refinement for one coefficient: the value moves by half the interval."""
    f = flags[u(i)]
    if f & (F_SIG | F_VISIT | F_PAD) != F_SIG:
        return a, c, ct, pos
    cx = 16 if f & F_REF else (15 if f & F_NEIGHBOURS else 14)
    bit, a, c, ct, pos = mq.decode(cx, states, a, c, ct, pos, data, end)
    vals[u(m)] += half if bit else -half
    flags[u(i)] = f | F_REF
    return a, c, ct, pos


@njit(cache=True, nogil=True, inline="always")
def _dec_cu(i: int, m: int, half: int, zc: np.ndarray, flags: np.ndarray, vals: np.ndarray, stride: int,
            counts: np.ndarray, stripe: int, causal: bool, states: np.ndarray, a: int, c: int, ct: int, pos: int,
            data: np.ndarray, end: int) -> tuple[int, int, int, int]:
    """Cleanup decoding of one coefficient (outside run mode)."""
    f = flags[u(i)]
    if f & (F_SIG | F_VISIT):
        flags[u(i)] = f & ~F_VISIT
        return a, c, ct, pos
    bit, a, c, ct, pos = mq.decode(zc[u(f & F_NEIGHBOURS)], states, a, c, ct, pos, data, end)
    if bit:
        si = _sign_index(f)
        neg, a, c, ct, pos = mq.decode(SC_CONTEXT[u(si)], states, a, c, ct, pos, data, end)
        neg ^= SC_XOR[u(si)]
        _significant(flags, i, stride, neg, causal, counts, stripe)
        vals[u(m)] = 3 * half
    return a, c, ct, pos


@njit(cache=True, nogil=True, inline="always")
def _dec_run(i: int, m: int, w: int, half: int, flags: np.ndarray, vals: np.ndarray, stride: int,
             counts: np.ndarray, stripe: int, vcausal: bool, states: np.ndarray, a: int, c: int, ct: int, pos: int,
             data: np.ndarray, end: int) -> tuple[int, int, int, int, int]:
    """Run mode on one full column: returns the row after the coefficient that became significant (4: none)."""
    bit, a, c, ct, pos = mq.decode(mq.CX_RL, states, a, c, ct, pos, data, end)
    if not bit:
        return 4, a, c, ct, pos
    hi, a, c, ct, pos = mq.decode(mq.CX_UNI, states, a, c, ct, pos, data, end)
    lo, a, c, ct, pos = mq.decode(mq.CX_UNI, states, a, c, ct, pos, data, end)
    k = hi * 2 + lo
    j = i + k * stride
    si = _sign_index(flags[u(j)])
    neg, a, c, ct, pos = mq.decode(SC_CONTEXT[u(si)], states, a, c, ct, pos, data, end)
    neg ^= SC_XOR[u(si)]
    _significant(flags, j, stride, neg, vcausal and k == 0, counts, stripe)
    vals[u(m + k * w)] = 3 * half
    return k + 1, a, c, ct, pos


@njit(cache=True, nogil=True)
def _raw_pass(kind: int, h: int, w: int, half: int, flags: np.ndarray, vals: np.ndarray, counts: np.ndarray,
              vcausal: bool, c: int, ct: int, pos: int, data: np.ndarray, end: int) -> tuple[int, int, int]:
    """A significance (`kind` 0) or refinement (1) pass of raw bits (bypass style, T.800 D.6)."""
    stride = w + 2
    for y0 in range(0, h, 4):
        stripe = (y0 >> 2) + 1
        if kind == 0:
            size = min(4, h - y0) * w
            if counts[u(stripe - 1)] + counts[u(stripe)] + counts[u(stripe + 1)] == 0 or counts[u(stripe)] == size:
                continue
        elif counts[u(stripe)] == 0:
            continue
        row = (y0 + 1) * stride + 1
        for x in range(w):
            i = row + x
            m = y0 * w + x
            for k in range(4):
                f = flags[u(i)]
                if kind == 0:
                    if not (f & F_SIG or not f & F_NEIGHBOURS):
                        bit, c, ct, pos = mq.raw_bit(c, ct, pos, data, end)
                        if bit:
                            neg, c, ct, pos = mq.raw_bit(c, ct, pos, data, end)
                            _significant(flags, i, stride, neg, vcausal and k == 0, counts, stripe)
                            vals[u(m)] = 3 * half
                        flags[u(i)] |= F_VISIT
                elif f & (F_SIG | F_VISIT | F_PAD) == F_SIG:
                    bit, c, ct, pos = mq.raw_bit(c, ct, pos, data, end)
                    vals[u(m)] += half if bit else -half
                    flags[u(i)] = f | F_REF
                i += stride
                m += w
    return c, ct, pos


@njit(cache=True, nogil=True, _nrt=False)
def _decode_block(coef: np.ndarray, orient: int, planes: int, style: int, segs: np.ndarray, data: np.ndarray,
                  flags: np.ndarray, vals: np.ndarray, counts: np.ndarray, states: np.ndarray) -> int:
    """Decode one code-block's segments into `coef` (signed values); 0 or an error code."""
    h, w = coef.shape
    stride = w + 2
    s2, s3 = 2 * stride, 3 * stride
    h4 = (h + 3) & ~3
    for i in range((h4 + 2) * stride):
        flags[u(i)] = 0
    for y in range(h, h4):
        for x in range(w):
            flags[u((y + 1) * stride + x + 1)] = F_PAD | F_SIG
    for i in range(h * w):
        vals[u(i)] = 0
    for i in range(h4 // 4 + 2):
        counts[u(i)] = 0
    total = 0
    for s in range(segs.shape[0]):
        total += segs[s, 2]
    if total == 0:
        for y in range(h):
            for x in range(w):
                coef[y, x] = 0
        return 0
    if planes > MAX_PLANES:
        return ERR_PLANES
    if planes < 1 or total > 3 * planes - 2:
        return ERR_PASSES
    vcausal = style & STYLE_VCAUSAL != 0
    bypass = style & STYLE_BYPASS != 0
    zc = ZC[orient]
    mq.reset_contexts(states)
    p = planes - 1
    kind = 2  # 0 significance propagation, 1 magnitude refinement, 2 cleanup
    pass_index = 0
    for s in range(segs.shape[0]):
        start = segs[s, 0]
        end = start + segs[s, 1]
        raw = bypass and pass_index >= 10 and kind != 2
        if raw:
            a, c, ct, pos = 0, 0, 0, start
        else:
            a, c, ct, pos = mq.init_decoder(data, start, end)
        for _ in range(segs[s, 2]):
            half = 1 << p
            if raw:
                c, ct, pos = _raw_pass(kind, h, w, half, flags, vals, counts, vcausal, c, ct, pos, data, end)
            elif kind == 0:
                for y0 in range(0, h, 4):
                    stripe = (y0 >> 2) + 1
                    size = min(4, h - y0) * w
                    if counts[u(stripe - 1)] + counts[u(stripe)] + counts[u(stripe + 1)] == 0 or counts[u(stripe)] == size:
                        continue
                    row = (y0 + 1) * stride + 1
                    for x in range(w):
                        i = row + x
                        f0, f1, f2, f3 = flags[u(i)], flags[u(i + stride)], flags[u(i + s2)], flags[u(i + s3)]
                        if not (f0 | f1 | f2 | f3) & F_NEIGHBOURS or f0 & f1 & f2 & f3 & F_SIG:
                            continue
                        m = y0 * w + x
                        a, c, ct, pos = _dec_sp(i, m, half, zc, flags, vals, stride, counts, stripe, vcausal,
                                                states, a, c, ct, pos, data, end)
                        a, c, ct, pos = _dec_sp(i + stride, m + w, half, zc, flags, vals, stride, counts, stripe,
                                                False, states, a, c, ct, pos, data, end)
                        a, c, ct, pos = _dec_sp(i + s2, m + 2 * w, half, zc, flags, vals, stride, counts, stripe,
                                                False, states, a, c, ct, pos, data, end)
                        a, c, ct, pos = _dec_sp(i + s3, m + 3 * w, half, zc, flags, vals, stride, counts, stripe,
                                                False, states, a, c, ct, pos, data, end)
            elif kind == 1:
                for y0 in range(0, h, 4):
                    if counts[u((y0 >> 2) + 1)] == 0:
                        continue
                    row = (y0 + 1) * stride + 1
                    for x in range(w):
                        i = row + x
                        if not (flags[u(i)] | flags[u(i + stride)] | flags[u(i + s2)] | flags[u(i + s3)]) & F_SIG:
                            continue
                        m = y0 * w + x
                        a, c, ct, pos = _dec_mr(i, m, half, flags, vals, states, a, c, ct, pos, data, end)
                        a, c, ct, pos = _dec_mr(i + stride, m + w, half, flags, vals, states, a, c, ct, pos,
                                                data, end)
                        a, c, ct, pos = _dec_mr(i + s2, m + 2 * w, half, flags, vals, states, a, c, ct, pos,
                                                data, end)
                        a, c, ct, pos = _dec_mr(i + s3, m + 3 * w, half, flags, vals, states, a, c, ct, pos,
                                                data, end)
            else:
                for y0 in range(0, h, 4):
                    stripe = (y0 >> 2) + 1
                    row = (y0 + 1) * stride + 1
                    for x in range(w):
                        i = row + x
                        f0, f1, f2, f3 = flags[u(i)], flags[u(i + stride)], flags[u(i + s2)], flags[u(i + s3)]
                        if f0 & f1 & f2 & f3 & F_SIG:
                            flags[u(i)] = f0 & ~F_VISIT
                            flags[u(i + stride)] = f1 & ~F_VISIT
                            flags[u(i + s2)] = f2 & ~F_VISIT
                            flags[u(i + s3)] = f3 & ~F_VISIT
                            continue
                        m = y0 * w + x
                        k = 0
                        if not (f0 | f1 | f2 | f3) & (F_SIG | F_VISIT | F_NEIGHBOURS):
                            k, a, c, ct, pos = _dec_run(i, m, w, half, flags, vals, stride, counts, stripe,
                                                        vcausal, states, a, c, ct, pos, data, end)
                            if k == 4:
                                continue
                        if k == 0:
                            a, c, ct, pos = _dec_cu(i, m, half, zc, flags, vals, stride, counts, stripe, vcausal,
                                                    states, a, c, ct, pos, data, end)
                        if k <= 1:
                            a, c, ct, pos = _dec_cu(i + stride, m + w, half, zc, flags, vals, stride, counts,
                                                    stripe, False, states, a, c, ct, pos, data, end)
                        if k <= 2:
                            a, c, ct, pos = _dec_cu(i + s2, m + 2 * w, half, zc, flags, vals, stride, counts,
                                                    stripe, False, states, a, c, ct, pos, data, end)
                        a, c, ct, pos = _dec_cu(i + s3, m + 3 * w, half, zc, flags, vals, stride, counts, stripe,
                                                False, states, a, c, ct, pos, data, end)
                if style & STYLE_SEGSYM:
                    for _k in range(4):
                        _bit, a, c, ct, pos = mq.decode(mq.CX_UNI, states, a, c, ct, pos, data, end)
            if style & STYLE_RESET:
                mq.reset_contexts(states)
            pass_index += 1
            if kind == 2:
                kind = 0
                p -= 1
            else:
                kind += 1
    for y in range(h):
        for x in range(w):
            v = vals[u(y * w + x)] >> 1
            coef[y, x] = -v if flags[u((y + 1) * stride + x + 1)] & F_NEG else v
    return 0


@njit(cache=True, nogil=True)
def decode_blocks(coeffs: np.ndarray, blocks: np.ndarray, segments: np.ndarray, data: np.ndarray) -> int:
    """Decode every listed code-block (see the module docstring); 0 or the first error code."""
    flags = np.empty(66 * 66, dtype=np.uint32)
    vals = np.empty(64 * 64, dtype=np.int32)
    counts = np.empty(1024 // 4 + 3, dtype=np.int32)  # a code-block is at most 1024 high
    states = np.empty(mq.N_CONTEXTS, dtype=np.int32)
    for k in range(blocks.shape[0]):
        comp, y0, x0, h, w = blocks[k, 0], blocks[k, 1], blocks[k, 2], blocks[k, 3], blocks[k, 4]
        if (((h + 3) & ~3) + 2) * (w + 2) > flags.size or h * w > vals.size:
            flags = np.empty((((h + 3) & ~3) + 2) * (w + 2), dtype=np.uint32)
            vals = np.empty(h * w, dtype=np.int32)
        first, count = blocks[k, 8], blocks[k, 9]
        status = _decode_block(coeffs[comp, y0:y0 + h, x0:x0 + w], blocks[k, 5], blocks[k, 6], blocks[k, 7],
                               segments[first:first + count], data, flags, vals, counts, states)
        if status:
            return status
    return 0
