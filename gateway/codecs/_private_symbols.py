"""Adaptive multi-symbol range coding for version 2 of the private codec (numba kernels).

Version 2 codes a residual's magnitude as one *token* from an alphabet of
:data:`N_TOKENS` symbols instead of a chain of binary decisions: one coding
step per sample instead of five to fifteen.  It uses the same range coder
state as :mod:`._private_rangecoder` (so binary decisions and raw bits mix
freely with tokens in one segment):

* a *token table* is a row of an int32 array: ``N_TOKENS`` frequencies
  followed by their total.  Coding token ``s`` narrows the range to the
  slice ``[cum(s), cum(s) + freq(s))`` of ``total``; then ``freq(s)`` and the
  total grow by :data:`INCREMENT`, and once the total exceeds
  :data:`TOTAL_LIMIT` every frequency is halved (rounding up, so none
  reaches zero): the table follows the recent statistics of its context;
* *raw chunks* code up to :data:`CHUNK_BITS` equiprobable bits in one step.

Divisions go through doubles (exact here, see :func:`_div`), several times
cheaper than 64-bit integer division.  docs/private-codec.md (section 9)
gives the exact arithmetic.
"""

from __future__ import annotations

import numpy as np

from gateway.codecs._private_predict import bit_length
from gateway.codecs._private_rangecoder import MASK32, TOP
from gateway.kernelcache import njit

# Values below DIRECT_TOKENS are their own token; above, a token holds the
# bit length and the MANTISSA_BITS bits below the leading one (the rest is raw).
DIRECT_BITS = 3
DIRECT_TOKENS = 1 << DIRECT_BITS
MANTISSA_BITS = 1
MAX_MAGNITUDE_BITS = 18  # values below 2**18 (plane values are at most 2**18 - 1)
N_TOKENS = DIRECT_TOKENS + (MAX_MAGNITUDE_BITS - DIRECT_BITS << MANTISSA_BITS)
TOTAL = N_TOKENS  # column of the total in a token table row
INCREMENT = 24
TOTAL_LIMIT = 1 << 15
CHUNK_BITS = 8


PRIOR_PEAK = 32  # initial frequency of a table's expected token, above the floor of 1
PRIOR_OFFSET = 11  # class c expects token max(0, c - PRIOR_OFFSET)
PRIOR_CLASSES = 28


_fresh: dict[tuple[int, int], np.ndarray] = {}


def new_tables(count: int, coarse: int = 0, group: int = 1) -> np.ndarray:
    """Fresh token tables for coding classes 0..count-1, the prior set by the activity class
    ``a = class mod 28`` for the first `coarse` classes, ``a = ((class - coarse) // group) mod 28``
    for the others: frequency ``1 + (PRIOR_PEAK >> min(|t - centre|, 6))``
    around the token ``centre = max(0, a - PRIOR_OFFSET)`` that class expects."""
    key = (count, coarse, group)
    tables = _fresh.get(key)
    if tables is None:
        tables = np.ones((count, N_TOKENS + 1), np.int32)
        tokens = np.arange(N_TOKENS)
        for c in range(count):
            a = c if c < coarse else (c - coarse) // group
            centre = max(0, a % PRIOR_CLASSES - PRIOR_OFFSET)
            tables[c, :N_TOKENS] = 1 + (PRIOR_PEAK >> np.minimum(np.abs(tokens - centre), 6))
        tables[:, TOTAL] = tables[:, :N_TOKENS].sum(axis=1)
        tables.flags.writeable = False
        _fresh[key] = tables
    return tables.copy()


@njit(cache=True, nogil=True, inline="always")
def _div(a, b):
    """``a // b`` for 0 <= a < 2**40 and 0 < b < 2**40 through one double division.

    A non-integer quotient is at least ``1/b`` from an integer, a relative
    distance above 2**-52: flooring the correctly rounded double is exact.
    """
    return np.int64(np.float64(a) / np.float64(b))


@njit(cache=True, nogil=True, inline="always")
def token_of(mag):
    """Token of a magnitude ``0 <= mag < 2**18``; returns (token, raw bit count)."""
    if mag < DIRECT_TOKENS:
        return mag, np.int64(0)
    k = bit_length(mag) - 1
    top = (mag >> (k - MANTISSA_BITS)) & ((1 << MANTISSA_BITS) - 1)
    return DIRECT_TOKENS + ((k - DIRECT_BITS) << MANTISSA_BITS) + top, k - MANTISSA_BITS


@njit(cache=True, nogil=True, inline="always")
def token_base(token):
    """Smallest magnitude of `token` and its number of raw bits."""
    if token < DIRECT_TOKENS:
        return np.int64(token), np.int64(0)
    k = ((token - DIRECT_TOKENS) >> MANTISSA_BITS) + DIRECT_BITS
    top = (1 << MANTISSA_BITS) + ((token - DIRECT_TOKENS) & ((1 << MANTISSA_BITS) - 1))
    return np.int64(top << (k - MANTISSA_BITS)), np.int64(k - MANTISSA_BITS)


@njit(cache=True, nogil=True, inline="always")
def _adapt(tables, c, s):
    tables[c, s] += INCREMENT
    total = tables[c, TOTAL] + INCREMENT
    if total > TOTAL_LIMIT:
        total = 0
        for i in range(N_TOKENS):
            f = (tables[c, i] + 1) >> 1
            tables[c, i] = f
            total += f
    tables[c, TOTAL] = total


@njit(cache=True, nogil=True, inline="always")
def enc_token(st, buf, tables, c, s):
    """Code token `s` with table `c` and adapt the table."""
    low, rng, cache, pending, pos = st
    cum = np.int64(0)
    for i in range(s):
        cum += tables[c, i]
    r = _div(rng, tables[c, TOTAL])
    low += r * cum
    rng = r * tables[c, s]
    _adapt(tables, c, s)
    while rng < TOP:
        rng <<= 8
        if low < 0xFF000000 or low > MASK32:  # _shift_low of the binary coder, written out
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
def dec_token(st, data, tables, c):
    """Decode a token with table `c` and adapt the table; returns (state, token)."""
    code, rng, pos = st
    r = _div(rng, tables[c, TOTAL])
    # As dec_token_mixed: the token by comparing r * cum with `code`, no second division.
    s = 0
    cum = np.int64(0)
    f = np.int64(tables[c, 0])
    while s < N_TOKENS - 1 and r * (cum + f) <= code:
        cum += f
        s += 1
        f = tables[c, s]
    code -= r * cum
    rng = r * f
    _adapt(tables, c, s)
    while rng < TOP:
        rng <<= 8
        code = ((code << 8) | (np.int64(data[pos]) if pos < data.shape[0] else 0)) & MASK32
        pos += 1
    return (code, rng, pos), s


@njit(cache=True, nogil=True, inline="always")
def enc_chunks(st, buf, value, nbits):
    """Code the low `nbits` bits of `value` as equiprobable, in chunks of up to CHUNK_BITS, high first."""
    low, rng, cache, pending, pos = st
    while nbits > 0:
        n = min(nbits, CHUNK_BITS)
        nbits -= n
        rng >>= n
        low += ((value >> nbits) & ((1 << n) - 1)) * rng
        while rng < TOP:
            rng <<= 8
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
def dec_chunks(st, data, nbits):
    """Decode `nbits` equiprobable bits coded by :func:`enc_chunks`; returns (state, value)."""
    code, rng, pos = st
    value = np.int64(0)
    while nbits > 0:
        n = min(nbits, CHUNK_BITS)
        nbits -= n
        rng >>= n
        x = _div(code, rng)
        top = (1 << n) - 1
        if x > top:  # only in a corrupt stream
            x = top
        code -= x * rng
        value = (value << n) | x
        while rng < TOP:
            rng <<= 8
            code = ((code << 8) | (np.int64(data[pos]) if pos < data.shape[0] else 0)) & MASK32
            pos += 1
    return (code, rng, pos), value


@njit(cache=True, nogil=True, inline="always")
def enc_token_mixed(st, buf, tables, c, d, s):
    """Code token `s` with the sum of tables `c` and `d` (frequencies and totals added) and adapt both."""
    low, rng, cache, pending, pos = st
    cum = np.int64(0)
    for i in range(s):
        cum += tables[c, i] + tables[d, i]
    r = _div(rng, np.int64(tables[c, TOTAL]) + tables[d, TOTAL])
    low += r * cum
    rng = r * (np.int64(tables[c, s]) + tables[d, s])
    _adapt(tables, c, s)
    _adapt(tables, d, s)
    while rng < TOP:
        rng <<= 8
        if low < 0xFF000000 or low > MASK32:  # _shift_low of the binary coder, written out
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
def dec_token_mixed(st, data, tables, c, d):
    """Decode a token coded by :func:`enc_token_mixed` and adapt both tables; returns (state, token)."""
    code, rng, pos = st
    total = np.int64(tables[c, TOTAL]) + tables[d, TOTAL]
    r = _div(rng, total)
    # The token s with cum(s) <= code // r < cum(s + 1), found by comparing r * cum with `code`
    # instead of dividing `code` by r: the same token (r * k <= code exactly when k <= code // r)
    # without a second division on the chain from one sample to the next.  In a corrupt stream
    # code // r may reach the total: the last token, as when it is clamped to total - 1.
    s = 0
    cum = np.int64(0)
    f = np.int64(tables[c, 0]) + tables[d, 0]
    while s < N_TOKENS - 1 and r * (cum + f) <= code:
        cum += f
        s += 1
        f = np.int64(tables[c, s]) + tables[d, s]
    code -= r * cum
    rng = r * f
    _adapt(tables, c, s)
    _adapt(tables, d, s)
    while rng < TOP:
        rng <<= 8
        code = ((code << 8) | (np.int64(data[pos]) if pos < data.shape[0] else 0)) & MASK32
        pos += 1
    return (code, rng, pos), s
