"""Residual coding of one plane of the private codec (numba kernels).

For each sample, in raster order, the prediction and context of
:mod:`._private_predict` give ``pred`` and an activity class ``q``.  The
residual ``r = value - pred`` lies in ``[-pred, maxv - pred]`` and is coded as

1. *zero flag* (context ``q``): 1 when ``r != 0``;
2. *sign* (context ``q`` and the sign of the neighbours' bias), skipped when
   only one sign is possible;
3. ``k = bit_length(|r|) - 1`` in unary, bit ``j`` in context ``(q, j)``,
   with no terminating bit once ``k`` reaches the largest class possible;
4. the ``k`` bits of ``|r|`` below its leading one, high first: the first in
   context ``(q, k)``, the second in context ``(q, k, first)``, the rest
   equiprobable.

The decoder returns a non-zero status instead of raising (kernels cannot
raise typed errors); the caller turns it into CorruptCodestreamError.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from gateway.codecs._private_predict import N_CLASSES, bit_length, predict, update
from gateway.codecs._private_rangecoder import dec_bit, dec_raw, enc_bit, enc_raw, grow

MAX_CLASS = 18  # classes k = 0..17 cover residual magnitudes below 2**18

# Layout of the context array of one plane.
CTX_ZERO = 0
CTX_SIGN = CTX_ZERO + N_CLASSES
CTX_UNARY = CTX_SIGN + 3 * N_CLASSES
CTX_MANT1 = CTX_UNARY + MAX_CLASS * N_CLASSES
CTX_MANT2 = CTX_MANT1 + MAX_CLASS * N_CLASSES
CTX_PER_PLANE = CTX_MANT2 + 2 * MAX_CLASS * N_CLASSES

# Bitmap of used values (palette): context = previous two bits.
CTX_BITMAP = 4

STATUS_OK = 0
STATUS_RANGE = 1


@njit(cache=True, nogil=True, inline="always")
def _sign_class(bias):
    if bias > 0:
        return 1
    if bias < 0:
        return 2
    return 0


@njit(cache=True, nogil=True)
def encode_plane(st, buf, plane, maxv, ctx, te, err, bm):
    """Code every sample of `plane` (values 0..maxv); returns the coder state and buffer."""
    rows, cols = plane.shape
    for y in range(rows):
        buf = grow(buf, st[4] + st[3] + 16 + cols * 96)
        for x in range(cols):
            value = np.int64(plane[y, x])
            pred, pred8, blend8, bctx, s0, s1, s2, s3, s4, q, bias = predict(plane, y, x, cols, te, err, bm)
            r = value - pred
            if r == 0:
                st = enc_bit(st, buf, ctx, CTX_ZERO + q, 0)
            else:
                st = enc_bit(st, buf, ctx, CTX_ZERO + q, 1)
                if r > 0:
                    mag = r
                    limit = maxv - pred
                    if pred > 0:
                        st = enc_bit(st, buf, ctx, CTX_SIGN + 3 * q + _sign_class(bias), 0)
                else:
                    mag = -r
                    limit = pred
                    if pred < maxv:
                        st = enc_bit(st, buf, ctx, CTX_SIGN + 3 * q + _sign_class(bias), 1)
                k = bit_length(mag) - 1
                kmax = bit_length(limit) - 1
                base = CTX_UNARY + MAX_CLASS * q
                for j in range(k):
                    st = enc_bit(st, buf, ctx, base + j, 1)
                if k < kmax:
                    st = enc_bit(st, buf, ctx, base + k, 0)
                if k >= 1:
                    c1 = CTX_MANT1 + MAX_CLASS * q + k
                    b1 = (mag >> (k - 1)) & 1
                    st = enc_bit(st, buf, ctx, c1, b1)
                    if k >= 2:
                        c2 = CTX_MANT2 + 2 * (MAX_CLASS * q + k) + b1
                        st = enc_bit(st, buf, ctx, c2, (mag >> (k - 2)) & 1)
                        if k >= 3:
                            st = enc_raw(st, buf, mag, k - 2)
            update(y, x, value, pred8, blend8, bctx, s0, s1, s2, s3, s4, te, err, bm)
    return st, buf


@njit(cache=True, nogil=True)
def decode_plane(st, data, plane, maxv, ctx, te, err, bm):
    """Decode every sample of `plane`; returns (state, status)."""
    rows, cols = plane.shape
    for y in range(rows):
        for x in range(cols):
            pred, pred8, blend8, bctx, s0, s1, s2, s3, s4, q, bias = predict(plane, y, x, cols, te, err, bm)
            st, nz = dec_bit(st, data, ctx, CTX_ZERO + q)
            if nz == 0:
                value = pred
            else:
                if pred == 0:
                    negative = 0
                elif pred == maxv:
                    negative = 1
                else:
                    st, negative = dec_bit(st, data, ctx, CTX_SIGN + 3 * q + _sign_class(bias))
                limit = pred if negative else maxv - pred
                kmax = bit_length(limit) - 1
                base = CTX_UNARY + MAX_CLASS * q
                k = 0
                while k < kmax:
                    st, more = dec_bit(st, data, ctx, base + k)
                    if more == 0:
                        break
                    k += 1
                mag = np.int64(1)
                if k >= 1:
                    c1 = CTX_MANT1 + MAX_CLASS * q + k
                    st, b1 = dec_bit(st, data, ctx, c1)
                    mag = (mag << 1) | b1
                    if k >= 2:
                        c2 = CTX_MANT2 + 2 * (MAX_CLASS * q + k) + b1
                        st, b2 = dec_bit(st, data, ctx, c2)
                        mag = (mag << 1) | b2
                        if k >= 3:
                            st, rest = dec_raw(st, data, k - 2)
                            mag = (mag << (k - 2)) | rest
                if mag > limit:
                    return st, STATUS_RANGE
                value = pred - mag if negative else pred + mag
            plane[y, x] = value
            update(y, x, value, pred8, blend8, bctx, s0, s1, s2, s3, s4, te, err, bm)
    return st, STATUS_OK


@njit(cache=True, nogil=True)
def encode_bitmap(st, buf, used, ctx):
    """Code the 0/1 array `used` (which values occur), context = previous two bits."""
    buf = grow(buf, st[4] + st[3] + 16 + used.shape[0] * 3)
    prev = 0
    for i in range(used.shape[0]):
        bit = np.int64(used[i])
        st = enc_bit(st, buf, ctx, prev, bit)
        prev = ((prev << 1) | bit) & 3
    return st, buf


@njit(cache=True, nogil=True)
def decode_bitmap(st, data, used, ctx):
    """Decode `used` (see :func:`encode_bitmap`); returns the state and the count of ones."""
    prev = 0
    ones = 0
    for i in range(used.shape[0]):
        st, bit = dec_bit(st, data, ctx, prev)
        used[i] = bit
        ones += bit
        prev = ((prev << 1) | bit) & 3
    return st, ones
