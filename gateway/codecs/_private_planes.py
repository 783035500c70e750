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

Encoding and decoding run the same loop (:func:`_code_plane`), so the model
cannot drift apart between the two directions.  The decoder returns a
non-zero status instead of raising (kernels cannot raise typed errors); the
caller turns it into CorruptCodestreamError.

Numba note: the per-sample helpers are ``inline="always"``.  The two that
read arrays (:func:`._private_predict.neighbours` and ``errors``) compile to
the same machine code as the reads written out in the loop, without atomic
reference counting (checked on the kernels' assembly: the same atomic
operations, a handful more instructions in 4 500); the writes stay in the loop.
"""

from __future__ import annotations

import numpy as np

from gateway.codecs._private_predict import (
    N_CLASSES,
    bias_context,
    bias_update,
    bit_length,
    blend,
    correct,
    errors,
    neighbours,
    sign_class as _sign_class,
)
from gateway.codecs._private_rangecoder import dec_bit, dec_raw, enc_bit, enc_raw, grow
from gateway.kernelcache import njit

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


@njit(cache=True, nogil=True)
def _code_plane(encoding, est, buf, dst, data, plane, maxv, ctx, te, err, bm):
    """Encode (`encoding`) or decode every sample of `plane`: one loop, so that
    both directions share the model by construction.

    Returns (encoder state, buffer, decoder state, status); the state of the
    other direction passes through untouched.
    """
    rows, cols = plane.shape
    status = STATUS_OK
    for y in range(rows):
        r = y & 1
        p = r ^ 1
        if encoding:
            buf = grow(buf, est[4] + est[3] + 16 + cols * 96)
        for x in range(cols):
            # Neighbours and the errors made there (docs/private-codec.md 5.1).
            w, n, nw, ne = neighbours(plane, y, x)
            te_w, te_n, te_nw, te_ne, e0, e1, e2, e3, e4 = errors(te, err, r, p, x)
            blend8, s0, s1, s2, s3, s4, q, lo, hi = blend(n, w, nw, ne, te_w, te_n, te_nw, te_ne, e0, e1, e2, e3, e4)
            bctx = bias_context(q, n, w, nw, ne, blend8)
            bias = np.int64(bm[bctx])
            pred8, pred = correct(blend8, bias, lo, hi)
            sign_ctx = CTX_SIGN + 3 * q + _sign_class(te_w + te_n)
            if encoding:
                value = np.int64(plane[y, x])
                est = _encode_residual(est, buf, ctx, value - pred, pred, maxv, q, sign_ctx)
            else:
                dst, value = _decode_residual(dst, data, ctx, pred, maxv, q, sign_ctx)
                if value < 0:
                    status = STATUS_RANGE
                    return est, buf, dst, status
                plane[y, x] = value
            v8 = value << 3
            te[r, x + 1] = pred8 - v8
            err[0, r, x + 1] = abs(s0 - v8)
            err[1, r, x + 1] = abs(s1 - v8)
            err[2, r, x + 1] = abs(s2 - v8)
            err[3, r, x + 1] = abs(s3 - v8)
            err[4, r, x + 1] = abs(s4 - v8)
            bm[bctx] = bias_update(bias, v8, blend8)
    return est, buf, dst, status


@njit(cache=True, nogil=True, inline="always")
def _encode_residual(st, buf, ctx, r, pred, maxv, q, sign_ctx):
    if r == 0:
        return enc_bit(st, buf, ctx, CTX_ZERO + q, 0)
    st = enc_bit(st, buf, ctx, CTX_ZERO + q, 1)
    if r > 0:
        mag = r
        limit = maxv - pred
        if pred > 0:
            st = enc_bit(st, buf, ctx, sign_ctx, 0)
    else:
        mag = -r
        limit = pred
        if pred < maxv:
            st = enc_bit(st, buf, ctx, sign_ctx, 1)
    k = bit_length(mag) - 1
    kmax = bit_length(limit) - 1
    base = CTX_UNARY + MAX_CLASS * q
    for j in range(k):
        st = enc_bit(st, buf, ctx, base + j, 1)
    if k < kmax:
        st = enc_bit(st, buf, ctx, base + k, 0)
    if k >= 1:
        b1 = (mag >> (k - 1)) & 1
        st = enc_bit(st, buf, ctx, CTX_MANT1 + MAX_CLASS * q + k, b1)
        if k >= 2:
            st = enc_bit(st, buf, ctx, CTX_MANT2 + 2 * (MAX_CLASS * q + k) + b1, (mag >> (k - 2)) & 1)
            if k >= 3:
                st = enc_raw(st, buf, mag, k - 2)
    return st


@njit(cache=True, nogil=True, inline="always")
def _decode_residual(st, data, ctx, pred, maxv, q, sign_ctx):
    """Returns (state, value), value -1 when the magnitude exceeds the range."""
    st, nz = dec_bit(st, data, ctx, CTX_ZERO + q)
    if nz == 0:
        return st, pred
    if pred == 0:
        negative = 0
    elif pred == maxv:
        negative = 1
    else:
        st, negative = dec_bit(st, data, ctx, sign_ctx)
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
        st, b1 = dec_bit(st, data, ctx, CTX_MANT1 + MAX_CLASS * q + k)
        mag = (mag << 1) | b1
        if k >= 2:
            st, b2 = dec_bit(st, data, ctx, CTX_MANT2 + 2 * (MAX_CLASS * q + k) + b1)
            mag = (mag << 1) | b2
            if k >= 3:
                st, rest = dec_raw(st, data, k - 2)
                mag = (mag << (k - 2)) | rest
    if mag > limit:
        return st, np.int64(-1)
    return st, pred - mag if negative else pred + mag


@njit(cache=True, nogil=True)
def encode_plane(st, buf, plane, maxv, ctx, te, err, bm):
    """Code every sample of `plane` (values 0..maxv); returns the coder state and buffer."""
    none = (np.int64(0), np.int64(0), np.int64(0))
    st, buf, _, _ = _code_plane(True, st, buf, none, np.empty(0, np.uint8), plane, maxv, ctx, te, err, bm)
    return st, buf


@njit(cache=True, nogil=True)
def decode_plane(st, data, plane, maxv, ctx, te, err, bm):
    """Decode every sample of `plane`; returns (state, status)."""
    none = (np.int64(0), np.int64(0), np.int64(0), np.int64(0), np.int64(0))
    _, _, st, status = _code_plane(False, none, np.empty(0, np.uint8), st, data, plane, maxv, ctx, te, err, bm)
    return st, status


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
