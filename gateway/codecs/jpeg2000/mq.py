"""The MQ arithmetic coder of JPEG 2000 (ITU-T T.800 Annex C), as numba helpers.

The helpers are inlined into the tier-1 kernels (:mod:`.t1`); their state
travels in local integers, returned as tuples, so it stays in registers.
The encoder's byte output, due once every eight bits or so, is an ordinary
call rather than inlined at every coding site: that halves the time to
compile the encoding kernel at no measurable cost in speed.
A context's state is one integer, ``2 * index + MPS``, and the transition
tables below are indexed by it; a context holds that state with its Qe in
the bits above (``Qe << 8 | state``), so coding a decision reads one array
element for both and, when the state changes, one table element and one
store (the chain of dependent loads between two decisions in the same
context is two loads long, not three).  Renormalisation shifts by all the bits it needs at once
(counted with a leading-zero instruction), stopping only where a byte is
due.

Encoder state ``(a, c, ct, b, n)``: the interval register A, the code
register C, the bit counter CT, the byte B not yet committed to the output
(carries may still change it) and ``n``, the number of bytes emitted so far
counting B (``n == 0``: B is the dummy byte before the first one).  Byte
``k`` of a codeword lives at ``out[base + k]``; writes past the end of `out`
are dropped and the caller detects the overflow from ``n``.

Decoder state ``(a, c, ct, pos)`` over ``data[start:end]``: bytes past `end`
read as 0xFF, which the byte-in procedure turns into an endless run of 1
bits, as T.800 C.3.4 asks of a decoder that meets the end of a codeword.
"""

from __future__ import annotations

import numpy as np
from numba.cpython.unsafe.numbers import leading_zeros

from gateway.kernelcache import njit

# T.800 Table C.2: Qe, index after an MPS, index after an LPS, switch flag.
QE = np.array([
    0x5601, 0x3401, 0x1801, 0x0AC1, 0x0521, 0x0221, 0x5601, 0x5401, 0x4801, 0x3801,
    0x3001, 0x2401, 0x1C01, 0x1601, 0x5601, 0x5401, 0x5101, 0x4801, 0x3801, 0x3401,
    0x3001, 0x2801, 0x2401, 0x2201, 0x1C01, 0x1801, 0x1601, 0x1401, 0x1201, 0x1101,
    0x0AC1, 0x09C1, 0x08A1, 0x0521, 0x0441, 0x02A1, 0x0221, 0x0141, 0x0111, 0x0085,
    0x0049, 0x0025, 0x0015, 0x0009, 0x0005, 0x0001, 0x5601,
], dtype=np.int64)
NMPS = np.array([
    1, 2, 3, 4, 5, 38, 7, 8, 9, 10, 11, 12, 13, 29, 15, 16, 17, 18, 19, 20,
    21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
    41, 42, 43, 44, 45, 45, 46,
], dtype=np.int64)
NLPS = np.array([
    1, 6, 9, 12, 29, 33, 6, 14, 14, 14, 17, 18, 20, 21, 14, 14, 15, 16, 17, 18,
    19, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37,
    38, 39, 40, 41, 42, 43, 46,
], dtype=np.int64)
SWITCH = np.array([1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1] + [0] * 32, dtype=np.int64)

# The same tables indexed by a context state ``2 * index + MPS``.
S_QE = np.array([QE[s >> 1] for s in range(94)], dtype=np.int64)
S_NMPS = np.array([(NMPS[s >> 1] << 1) | (s & 1) for s in range(94)], dtype=np.int64)
S_NLPS = np.array([(NLPS[s >> 1] << 1) | ((s & 1) ^ SWITCH[s >> 1]) for s in range(94)], dtype=np.int64)
# Both transitions in one table: ``S_NEXT[2 * state + lps]``.
S_NEXT = np.array([t[s] for s in range(94) for t in (S_NMPS, S_NLPS)], dtype=np.int64)

# What a context holds: its state with its Qe above, ``Qe << 8 | state``, so
# that coding a decision needs one load for both; ``W_NEXT[2 * state + lps]``
# is the word of the next state.
W_STATE = (S_QE << 8) | np.arange(94, dtype=np.int64)
W_NEXT = W_STATE[S_NEXT]



@njit(cache=True, nogil=True, inline="always")
def u(i: int) -> np.uint64:
    """An index as unsigned, so that numba indexes without the negative-index wraparound test."""
    return np.uint64(i)


# The 19 contexts of the bit-plane coder (T.800 Table D.7 gives their initial states).
N_CONTEXTS = 19
CX_RL = 17  # run-length
CX_UNI = 18  # uniform


@njit(cache=True, nogil=True)
def reset_contexts(states: np.ndarray) -> None:
    """Initial states of T.800 Table D.7: all 0 with MPS 0, except UNIFORM 46, RL 3, ZC 0 4 (as words)."""
    for i in range(N_CONTEXTS):
        states[i] = W_STATE[0]
    states[0] = W_STATE[4 << 1]
    states[CX_RL] = W_STATE[3 << 1]
    states[CX_UNI] = W_STATE[46 << 1]


# ----------------------------------------------------------------------------- encoder


@njit(cache=True, nogil=True, inline="always")
def _put(out: np.ndarray, at: int, value: int) -> None:
    if at < out.size:
        out[u(at)] = value


@njit(cache=True, nogil=True)
def _byteout(c: int, ct: int, b: int, n: int, out: np.ndarray, base: int) -> tuple[int, int, int, int]:
    """BYTEOUT of T.800 Figure C.8, with bit stuffing after 0xFF and carry propagation into B."""
    if b == 0xFF:
        if n > 0:
            _put(out, base + n - 1, b)
        n += 1
        b = c >> 20
        c &= 0xFFFFF
        ct = 7
    elif c < 0x8000000:
        if n > 0:
            _put(out, base + n - 1, b)
        n += 1
        b = c >> 19
        c &= 0x7FFFF
        ct = 8
    else:
        b += 1
        if b == 0xFF:
            c &= 0x7FFFFFF
            if n > 0:
                _put(out, base + n - 1, b)
            n += 1
            b = c >> 20
            c &= 0xFFFFF
            ct = 7
        else:
            if n > 0:
                _put(out, base + n - 1, b)
            n += 1
            b = c >> 19
            c &= 0x7FFFF
            ct = 8
    return c, ct, b, n


@njit(cache=True, nogil=True, inline="always")
def encode(bit: int, cx: int, states: np.ndarray, a: int, c: int, ct: int, b: int, n: int,
           out: np.ndarray, base: int) -> tuple[int, int, int, int, int]:
    """Code one decision `bit` in context `cx` (CODEMPS / CODELPS with RENORME, T.800 C.2.5-C.2.7).

    Written without a branch on the decision: both codings either add Qe to
    C and keep A, or set A to Qe ("conditional exchange"), and which one
    depends on ``A - Qe < Qe`` and on whether the symbol is the MPS; masks
    pick the result, so only the renormalisation test branches (rarely
    mispredicted: most symbols are MPS that need none).
    """
    s = states[u(cx)]
    qe = s >> 8
    s &= 0xFF
    a -= qe
    lps = bit ^ (s & 1)
    keep = (1 if a < qe else 0) ^ lps ^ 1  # 1: C += Qe and A stays; 0: A = Qe
    mask = -keep
    c += qe & mask
    a = qe ^ ((a ^ qe) & mask)
    if a & 0x8000:
        return a, c, ct, b, n
    states[u(cx)] = W_NEXT[u(2 * s + lps)]
    shift = leading_zeros(np.uint32(a)) - 16
    while shift >= ct:
        a <<= ct
        c <<= ct
        shift -= ct
        c, ct, b, n = _byteout(c, 0, b, n, out, base)
    return a << shift, c << shift, ct - shift, b, n


@njit(cache=True, nogil=True)
def flush(a: int, c: int, ct: int, b: int, n: int, out: np.ndarray, base: int) -> int:
    """Terminate the codeword (T.800 C.2.9, with SETBITS); return its length in bytes."""
    temp = c + a
    c |= 0xFFFF
    if c >= temp:
        c -= 0x8000
    c <<= ct
    c, ct, b, n = _byteout(c, ct, b, n, out, base)
    c <<= ct
    c, ct, b, n = _byteout(c, ct, b, n, out, base)
    if b != 0xFF:
        _put(out, base + n - 1, b)
        return n
    return n - 1  # a final 0xFF is not needed by the decoder


# ----------------------------------------------------------------------------- decoder


@njit(cache=True, nogil=True, inline="always")
def _byte(data: np.ndarray, pos: int, end: int) -> int:
    return int(data[u(pos)]) if pos < end else 0xFF


@njit(cache=True, nogil=True, inline="always")
def _bytein(c: int, ct: int, pos: int, data: np.ndarray, end: int) -> tuple[int, int, int]:
    """BYTEIN of T.800 Figure C.19: a marker (0xFF above 0x8F) feeds 1 bits."""
    if _byte(data, pos, end) == 0xFF:
        if _byte(data, pos + 1, end) > 0x8F:
            c += 0xFF00
            ct = 8
        else:
            pos += 1
            c += _byte(data, pos, end) << 9
            ct = 7
    else:
        pos += 1
        c += _byte(data, pos, end) << 8
        ct = 8
    return c, ct, pos


@njit(cache=True, nogil=True)
def init_decoder(data: np.ndarray, start: int, end: int) -> tuple[int, int, int, int]:
    """INITDEC of T.800 Figure C.20 on ``data[start:end]``."""
    pos = start
    c = _byte(data, pos, end) << 16
    c, ct, pos = _bytein(c, 0, pos, data, end)
    c = (c << 7) & 0xFFFFFFFF
    ct -= 7
    return 0x8000, c, ct, pos


@njit(cache=True, nogil=True, inline="always")
def decode(cx: int, states: np.ndarray, a: int, c: int, ct: int, pos: int,
           data: np.ndarray, end: int) -> tuple[int, int, int, int, int]:
    """Decode one decision in context `cx` (T.800 C.3.2); returns ``(bit, a, c, ct, pos)``.

    Branch-free like :func:`encode`: the decision is the MPS flipped once for
    each of ``C_high < Qe`` and ``A - Qe < Qe``, and masks apply the
    interval update of either sub-interval.
    """
    s = states[u(cx)]
    qe = s >> 8
    s &= 0xFF
    a -= qe
    low = 1 if (c >> 16) < qe else 0  # the code value lies in the lower (Qe) sub-interval
    d = (s & 1) ^ low ^ (1 if a < qe else 0)
    mask = -low
    c -= (qe << 16) & ~mask
    a ^= (a ^ qe) & mask
    if a & 0x8000:
        return d, a, c, ct, pos
    states[u(cx)] = W_NEXT[u(2 * s + (d ^ (s & 1)))]
    shift = leading_zeros(np.uint32(a)) - 16
    while shift > ct:
        a <<= ct
        c = (c << ct) & 0xFFFFFFFF
        shift -= ct
        c, ct, pos = _bytein(c, 0, pos, data, end)
    return d, a << shift, (c << shift) & 0xFFFFFFFF, ct - shift, pos


@njit(cache=True, nogil=True, inline="always")
def raw_bit(c: int, ct: int, pos: int, data: np.ndarray, end: int) -> tuple[int, int, int, int]:
    """One bit of a raw (bypass) segment: MSB first, 7 bits in the byte after 0xFF (T.800 D.6).

    ``c`` holds the current byte; returns ``(bit, c, ct, pos)``.  Past the
    end, or at a marker, 1 bits are fed.
    """
    if ct == 0:
        if c == 0xFF:
            if _byte(data, pos, end) > 0x8F:
                c = 0xFF
                ct = 8
            else:
                c = _byte(data, pos, end)
                pos += 1
                ct = 7
        else:
            c = _byte(data, pos, end)
            pos += 1
            ct = 8
    ct -= 1
    return (c >> ct) & 1, c, ct, pos
