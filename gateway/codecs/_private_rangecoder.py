"""Binary adaptive range coder of the private codec (numba kernels).

The coder state lives in local variables of the calling kernel and is passed
in and out as tuples, so that numba keeps it in registers:

* encoder: ``(low, rng, cache, pending, pos)`` — `low` is 33 bits wide
  (bit 32 is the carry), `rng` 32 bits, `cache` the byte held back for carry
  propagation, `pending` how many bytes (the cache and following 0xFF bytes)
  are held back, `pos` the write position in the output buffer, which the
  caller keeps large enough (:func:`grow`) and passes to every call;
* decoder: ``(code, rng, pos)`` reading from a fixed buffer; bytes past its
  end read as zero and the caller checks ``pos`` against a bound afterwards.

A context is a row ``(fast, slow, seen)`` of an int32 array: two 16-bit
estimates of the probability of a 0 bit and the number of bits coded so far
(capped).  The coded probability is the mean of the two estimates; each moves
towards the coded bit by a power-of-two fraction, 1/2 at first and slowing as
bits accumulate, to 1/64 (fast) and 1/512 (slow).  docs/private-codec.md gives
the exact arithmetic.
"""

from __future__ import annotations

import numpy as np

from gateway.kernelcache import njit

PROB_BITS = 16
PROB_INIT = 1 << (PROB_BITS - 1)
PROB_MAX = (1 << PROB_BITS) - 1  # target of a 0 bit; a 1 bit targets 1
FAST_SHIFT = 6
SLOW_SHIFT = 9
TOP = 1 << 24
# Shift of the slow estimate after n bits in the context: floor(log2(n + 2)), capped.
RATE_COUNT = 1 << SLOW_SHIFT
RATE = np.array([min(SLOW_SHIFT, (n + 2).bit_length() - 1) for n in range(RATE_COUNT)], np.int64)
MASK32 = 0xFFFFFFFF


def new_contexts(count: int) -> np.ndarray:
    """Fresh contexts: rows (fast estimate, slow estimate, bits seen), estimates at one half."""
    ctx = np.zeros((count, 3), np.int32)
    ctx[:, 0] = PROB_INIT
    ctx[:, 1] = PROB_INIT
    return ctx


@njit(cache=True, nogil=True, inline="always")
def _adapt(ctx, c, a, b, bit):
    """Move both estimates towards the coded bit; young contexts adapt faster."""
    n = ctx[c, 2]
    target = PROB_MAX - bit * (PROB_MAX - 1)
    shift = RATE[n]
    ctx[c, 0] = a + ((target - a) >> min(shift, FAST_SHIFT))
    ctx[c, 1] = b + ((target - b) >> shift)
    if n < RATE_COUNT - 1:
        ctx[c, 2] = n + 1


@njit(cache=True, nogil=True)
def grow(buf: np.ndarray, need: int) -> np.ndarray:
    """Return `buf`, or a copy at least twice as large when `need` bytes do not fit."""
    if need <= buf.shape[0]:
        return buf
    size = max(need, 2 * buf.shape[0])
    out = np.empty(size, np.uint8)
    # An element loop, not ``out[:n] = buf``: a slice assignment brings numba's
    # shape-mismatch error path, whose string formatting costs seconds to compile.
    for i in range(buf.shape[0]):
        out[i] = buf[i]
    return out


@njit(cache=True, nogil=True, inline="always")
def _shift_low(low, cache, pending, pos, buf):
    if low < 0xFF000000 or low > MASK32:
        carry = low >> 32
        temp = cache
        while True:
            buf[pos] = (temp + carry) & 0xFF
            pos += 1
            temp = 0xFF
            pending -= 1
            if pending == 0:
                break
        cache = (low >> 24) & 0xFF
    pending += 1
    low = (low & 0x00FFFFFF) << 8
    return low, cache, pending, pos


@njit(cache=True, nogil=True, inline="always")
def enc_bit(st, buf, ctx, c, bit):
    """Code `bit` (0/1) in context `c` and adapt the context."""
    low, rng, cache, pending, pos = st
    a = ctx[c, 0]
    b = ctx[c, 1]
    bound = (rng >> PROB_BITS) * ((a + b) >> 1)
    mask = -np.int64(bit)
    low += bound & mask
    rng = bound + ((rng - 2 * bound) & mask)
    _adapt(ctx, c, a, b, bit)
    while rng < TOP:
        rng <<= 8
        # _shift_low, written out: numba compiles the nested inline call poorly here.
        if low < 0xFF000000 or low > MASK32:
            carry = low >> 32
            temp = cache
            while True:
                buf[pos] = (temp + carry) & 0xFF
                pos += 1
                temp = 0xFF
                pending -= 1
                if pending == 0:
                    break
            cache = (low >> 24) & 0xFF
        pending += 1
        low = (low & 0x00FFFFFF) << 8
    return low, rng, cache, pending, pos


@njit(cache=True, nogil=True, inline="always")
def enc_raw(st, buf, value, nbits):
    """Code the low `nbits` bits of `value` at probability one half, high bit first."""
    low, rng, cache, pending, pos = st
    for i in range(nbits - 1, -1, -1):
        rng >>= 1
        if (value >> i) & 1:
            low += rng
        while rng < TOP:
            rng <<= 8
            if low < 0xFF000000 or low > MASK32:  # _shift_low, written out
                carry = low >> 32
                temp = cache
                while True:
                    buf[pos] = (temp + carry) & 0xFF
                    pos += 1
                    temp = 0xFF
                    pending -= 1
                    if pending == 0:
                        break
                cache = (low >> 24) & 0xFF
            pending += 1
            low = (low & 0x00FFFFFF) << 8
    return low, rng, cache, pending, pos


@njit(cache=True, nogil=True)
def enc_start():
    """Initial encoder state (writing from position 0)."""
    return np.int64(0), np.int64(MASK32), np.int64(0), np.int64(1), np.int64(0)


@njit(cache=True, nogil=True)
def enc_finish(st, buf):
    """Flush the state; return the (possibly grown) buffer and the number of bytes written."""
    low, rng, cache, pending, pos = st
    buf = grow(buf, pos + pending + 8)
    for _ in range(5):
        low, cache, pending, pos = _shift_low(low, cache, pending, pos, buf)
    return buf, pos


@njit(cache=True, nogil=True, inline="always")
def _next_byte(data, pos):
    if pos < data.shape[0]:
        return np.int64(data[pos])
    return np.int64(0)


@njit(cache=True, nogil=True)
def dec_start(data, pos):
    """Decoder state for a coded segment starting at `pos` (its first byte is always 0)."""
    code = np.int64(0)
    for i in range(1, 5):
        code = (code << 8) | _next_byte(data, pos + i)
    return code, np.int64(MASK32), np.int64(pos + 5)


@njit(cache=True, nogil=True, inline="always")
def dec_bit(st, data, ctx, c):
    """Decode one bit in context `c` and adapt the context; returns (state, bit)."""
    code, rng, pos = st
    a = ctx[c, 0]
    b = ctx[c, 1]
    bound = (rng >> PROB_BITS) * ((a + b) >> 1)
    bit = np.int64(code >= bound)
    mask = -bit
    code -= bound & mask
    rng = bound + ((rng - 2 * bound) & mask)
    _adapt(ctx, c, a, b, bit)
    while rng < TOP:
        rng <<= 8
        code = ((code << 8) | _next_byte(data, pos)) & MASK32
        pos += 1
    return (code, rng, pos), bit


@njit(cache=True, nogil=True, inline="always")
def dec_raw(st, data, nbits):
    """Decode `nbits` equiprobable bits, high bit first; returns (state, value)."""
    code, rng, pos = st
    value = 0
    for _ in range(nbits):
        rng >>= 1
        value <<= 1
        if code >= rng:
            code -= rng
            value |= 1
        while rng < TOP:
            rng <<= 8
            code = ((code << 8) | _next_byte(data, pos)) & MASK32
            pos += 1
    return (code, rng, pos), value


@njit(cache=True, nogil=True, inline="always")
def enc_bit_mixed(st, buf, ctx, c, d, bit):
    """Code `bit` at the mean of the probabilities of contexts `c` and `d`; adapt both."""
    low, rng, cache, pending, pos = st
    a = ctx[c, 0]
    b = ctx[c, 1]
    a2 = ctx[d, 0]
    b2 = ctx[d, 1]
    bound = (rng >> PROB_BITS) * ((a + b + a2 + b2) >> 2)
    mask = -np.int64(bit)
    low += bound & mask
    rng = bound + ((rng - 2 * bound) & mask)
    _adapt(ctx, c, a, b, bit)
    _adapt(ctx, d, a2, b2, bit)
    while rng < TOP:
        rng <<= 8
        if low < 0xFF000000 or low > MASK32:  # _shift_low, written out
            carry = low >> 32
            temp = cache
            while True:
                buf[pos] = (temp + carry) & 0xFF
                pos += 1
                temp = 0xFF
                pending -= 1
                if pending == 0:
                    break
            cache = (low >> 24) & 0xFF
        pending += 1
        low = (low & 0x00FFFFFF) << 8
    return low, rng, cache, pending, pos


@njit(cache=True, nogil=True, inline="always")
def dec_bit_mixed(st, data, ctx, c, d):
    """Decode a bit coded by :func:`enc_bit_mixed`; returns (state, bit)."""
    code, rng, pos = st
    a = ctx[c, 0]
    b = ctx[c, 1]
    a2 = ctx[d, 0]
    b2 = ctx[d, 1]
    bound = (rng >> PROB_BITS) * ((a + b + a2 + b2) >> 2)
    bit = np.int64(code >= bound)
    mask = -bit
    code -= bound & mask
    rng = bound + ((rng - 2 * bound) & mask)
    _adapt(ctx, c, a, b, bit)
    _adapt(ctx, d, a2, b2, bit)
    while rng < TOP:
        rng <<= 8
        code = ((code << 8) | _next_byte(data, pos)) & MASK32
        pos += 1
    return (code, rng, pos), bit
