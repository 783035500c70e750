"""Prediction and context formation of the private codec (numba kernels).

A plane holds integers ``0..maxv``.  Each sample is predicted by a blend of
five sub-predictors (seven in version 2's context model 4), in units of 1/8
sample, weighted by the inverse of their recent absolute errors around the
sample; the blend is then clamped between the smallest and largest of the W,
N and NE neighbours.  The coding context
comes from the errors the final prediction made at the neighbours.

The plane loops (:mod:`._private_planes`) gather the neighbours and errors
and call these scalar-only functions.  Per-row state is kept in ring buffers
of two rows with one column of padding on each side (index ``x + 1`` holds
column ``x``; the pads stay zero):

* ``te[row & 1, x + 1]``: signed error ``pred8 - 8 * value`` of the (corrected) prediction;
* ``err[i, row & 1, x + 1]``: absolute error of sub-predictor ``i`` (1/8 units)
  in version 1; version 2's loop keeps them interleaved, a row in one array,
  and sums the row above before each row (:func:`._private_planes2.new_plane_state`).

docs/private-codec.md specifies every step exactly.
"""

from __future__ import annotations

import numpy as np
from numba.cpython.unsafe.numbers import leading_zeros

from gateway.kernelcache import njit

N_SUB = 5
# Context model 4 of version 2 adds two sub-predictors that extend the slope two samples away
# along each axis: 2N - NN and 2W - WW (smooth and resampled images, CT and MR slices).
N_SUB_WIDE = 7
WEIGHT_ONE = 1 << 24
# Context quantisation: half-octave steps of the activity measure.
N_ACTIVITY = 28
N_CLASSES = N_ACTIVITY
# Bias contexts: which of N, W, NW, NE exceed the blend (4 bits) x activity class / 4.
N_BIAS = 16 * ((N_ACTIVITY + 3) // 4)
# Context model 4 splits each bias context 16 ways by NN and WW: whether each exceeds the blend,
# and whether N exceeds NN and W exceeds WW (the sign of the slope they carry on).
N_BIAS_WIDE = 16 * N_BIAS
BIAS_SHIFT = 5  # the bias estimate moves 1/32 of the way to each new error


def new_state(columns: int, subs: int = N_SUB, biases: int = N_BIAS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zeroed ring buffers (``te``, ``err`` of `subs` sub-predictors) for a plane `columns` wide
    and `biases` bias estimates."""
    return (np.zeros((2, columns + 2), np.int32), np.zeros((subs, 2, columns + 2), np.int32),
            np.zeros(biases, np.int32))


@njit(cache=True, nogil=True, inline="always")
def bit_length(v):
    """Number of bits of the integer `v`, 0 <= v < 2**63 (0 for 0): one count-leading-zeros instruction."""
    return np.int64(64) - np.int64(leading_zeros(np.uint64(v)))


@njit(cache=True, nogil=True, inline="always")
def quantise_activity(a):
    """Activity class: 0 for 0, then two classes per octave, capped at N_ACTIVITY - 1.

    Without branches: whether the bit below the leading one is set is a coin
    toss in noisy images, and a mispredicted branch costs more than the
    arithmetic."""
    b = bit_length(a)
    half = ((a >> max(b - 2, np.int64(0))) & 1) & np.int64(b >= 2)
    return min(max(2 * b - 1 + half, np.int64(0)), np.int64(N_ACTIVITY - 1))


@njit(cache=True, nogil=True, inline="always")
def sign_class(bias):
    """Class of the neighbours' error sum `bias` for the sign's context: 0 for 0, 1 positive, 2
    negative; without branches (the sign is a coin toss in noisy images)."""
    return np.int64(bias > 0) + 2 * np.int64(bias < 0)


@njit(cache=True, nogil=True, inline="always")
def neighbours(plane, y, x):
    """W, N, NW and NE of sample (y, x) of `plane`, with the edge rules of section 5.1 of
    docs/private-codec.md: in the first row N, NW and NE are W (0 for the first sample), in the
    first column W and NW are N, past the last column NE is N."""
    if y > 0:
        n = np.int64(plane[y - 1, x])
        if x > 0:
            w = np.int64(plane[y, x - 1])
            nw = np.int64(plane[y - 1, x - 1])
        else:
            w = n
            nw = n
        ne = np.int64(plane[y - 1, x + 1]) if x + 1 < plane.shape[1] else n
    else:
        w = np.int64(plane[y, x - 1]) if x > 0 else np.int64(0)
        n = w
        nw = w
        ne = w
    return w, n, nw, ne


@njit(cache=True, nogil=True, inline="always")
def far_neighbours(plane, y, x, n, w):
    """NN and WW of sample (y, x): two rows above and two columns left, else N and W (which
    follow their own edge rules)."""
    nn = np.int64(plane[y - 2, x]) if y >= 2 else n
    ww = np.int64(plane[y, x - 2]) if x >= 2 else w
    return nn, ww


@njit(cache=True, nogil=True, inline="always")
def errors(te, err, r, p, x):
    """The blend's errors at W, N, NW and NE, and each sub-predictor's error summed over them,
    from the ring buffers (row `r` the current one, `p` the one above)."""
    te_w = np.int64(te[r, x])
    te_n = np.int64(te[p, x + 1])
    te_nw = np.int64(te[p, x])
    te_ne = np.int64(te[p, x + 2])
    e0 = np.int64(err[0, p, x + 1]) + err[0, r, x] + err[0, p, x] + err[0, p, x + 2]
    e1 = np.int64(err[1, p, x + 1]) + err[1, r, x] + err[1, p, x] + err[1, p, x + 2]
    e2 = np.int64(err[2, p, x + 1]) + err[2, r, x] + err[2, p, x] + err[2, p, x + 2]
    e3 = np.int64(err[3, p, x + 1]) + err[3, r, x] + err[3, p, x] + err[3, p, x + 2]
    e4 = np.int64(err[4, p, x + 1]) + err[4, r, x] + err[4, p, x] + err[4, p, x + 2]
    return te_w, te_n, te_nw, te_ne, e0, e1, e2, e3, e4


@njit(cache=True, nogil=True, inline="always")
def _floor_div(a, b):
    """Exactly ``a // b`` for 0 < b and |a| < 2**52, through one double division.

    The quotient of such integers is either an integer or at least 1/b away
    from one, a relative distance of at least 2**-52, larger than the rounding
    error of the division; so flooring the rounded quotient is exact.  (A
    double division is several times cheaper than a 64-bit integer one.)
    """
    return np.int64(np.floor(np.float64(a) / np.float64(b)))


@njit(cache=True, nogil=True, inline="always")
def sub_predictions(n, w, nw, ne, te_w, te_n, te_nw, te_ne):
    """The five sub-predictors of section 5.2 (1/8 units) and the clamp range (lo, hi) of W, N, NE."""
    s0 = (n + w - nw) << 3
    s1 = (n << 3) - (((te_w + te_n + te_ne) * 5) >> 4)
    s2 = (w << 3) - (((te_w + te_n + te_nw) * 5) >> 4)
    s3 = (w + ne - n) << 3
    s4 = (n + ne) << 2
    return s0, s1, s2, s3, s4, min(w, min(n, ne)), max(w, max(n, ne))


@njit(cache=True, nogil=True, inline="always")
def activity_of(n, w, nw, ne, te_w, te_n, te_nw, te_ne, least):
    """The activity of section 5.3, `least` the smallest summed sub-predictor error."""
    grad = (abs(n - nw) + abs(w - nw) + abs(ne - n)) << 2
    return (abs(te_w) + abs(te_n) + abs(te_nw) + abs(te_ne) + least + grad) >> 1


@njit(cache=True, nogil=True, inline="always")
def blend(n, w, nw, ne, te_w, te_n, te_nw, te_ne, e0, e1, e2, e3, e4):
    """Blend the sub-predictors; returns (blend8, s0, s1, s2, s3, s4, class, lo, hi).

    Scalars only: the plane loops gather the neighbours and errors with :func:`neighbours`
    and :func:`errors`.
    """
    blend8, s0, s1, s2, s3, s4, activity, lo, hi = blend_activity(n, w, nw, ne, te_w, te_n, te_nw, te_ne,
                                                                 e0, e1, e2, e3, e4)
    return blend8, s0, s1, s2, s3, s4, quantise_activity(activity), lo, hi


# Version 2 weights: 2**24 / (e + 1) from a table of RECIP_SIZE entries, e + 1 scaled into it by a shift.
RECIP_BITS = 9
RECIP = np.array([0] + [WEIGHT_ONE // k for k in range(1, 1 << RECIP_BITS)], np.int64)


@njit(cache=True, nogil=True, inline="always")
def weight_v2(e):
    """Weight of a sub-predictor of summed error `e` >= 0 (version 2): about 2**24 / (e + 1), no division."""
    d = e + 1
    shift = max(np.int64(0), bit_length(d) - RECIP_BITS)
    return RECIP[d >> shift] >> shift


@njit(cache=True, nogil=True, inline="always")
def _weighted_v2(s0, s1, s2, s3, s4, e0, e1, e2, e3, e4):
    """The five sub-predictors weighted by their errors (:func:`weight_v2`): (sum of w_i s_i, sum of w_i)."""
    w0 = weight_v2(e0)
    w1 = weight_v2(e1)
    w2 = weight_v2(e2)
    w3 = weight_v2(e3)
    w4 = weight_v2(e4)
    return w0 * s0 + w1 * s1 + w2 * s2 + w3 * s3 + w4 * s4, w0 + w1 + w2 + w3 + w4


@njit(cache=True, nogil=True, inline="always")
def blend_v2(n, w, nw, ne, te_w, te_n, te_nw, te_ne, e0, e1, e2, e3, e4):
    """Version 2's blend: :func:`blend_activity` with table weights (:func:`weight_v2`)."""
    s0, s1, s2, s3, s4, lo, hi = sub_predictions(n, w, nw, ne, te_w, te_n, te_nw, te_ne)
    if lo == hi:
        blend8 = lo << 3
    else:
        weighted, total = _weighted_v2(s0, s1, s2, s3, s4, e0, e1, e2, e3, e4)
        blend8 = min(max(_floor_div(weighted + (total >> 1), total), lo << 3), hi << 3)
    activity = activity_of(n, w, nw, ne, te_w, te_n, te_nw, te_ne, min(min(e0, e1), min(min(e2, e3), e4)))
    return blend8, s0, s1, s2, s3, s4, activity, lo, hi


@njit(cache=True, nogil=True, inline="always")
def blend_wide(n, w, nw, ne, nn, ww, te_w, te_n, te_nw, te_ne, e0, e1, e2, e3, e4, e5, e6):
    """Context model 4's blend: :func:`blend_v2` with sub-predictors 5 (``2N - NN``) and 6
    (``2W - WW``) weighted in by their errors `e5` and `e6` as the others (every error summed
    over WW too, docs/private-codec.md 9.3); returns (blend8, s0 .. s6, activity, lo, hi).  The activity takes the
    smallest of the first five errors, as :func:`blend_v2`."""
    s0, s1, s2, s3, s4, lo, hi = sub_predictions(n, w, nw, ne, te_w, te_n, te_nw, te_ne)
    s5 = (2 * n - nn) << 3
    s6 = (2 * w - ww) << 3
    if lo == hi:
        blend8 = lo << 3
    else:
        weighted, total = _weighted_v2(s0, s1, s2, s3, s4, e0, e1, e2, e3, e4)
        w5 = weight_v2(e5)
        w6 = weight_v2(e6)
        weighted += w5 * s5 + w6 * s6
        total += w5 + w6
        blend8 = min(max(_floor_div(weighted + (total >> 1), total), lo << 3), hi << 3)
    activity = activity_of(n, w, nw, ne, te_w, te_n, te_nw, te_ne, min(min(e0, e1), min(min(e2, e3), e4)))
    return blend8, s0, s1, s2, s3, s4, s5, s6, activity, lo, hi


@njit(cache=True, nogil=True, inline="always")
def blend_activity(n, w, nw, ne, te_w, te_n, te_nw, te_ne, e0, e1, e2, e3, e4):
    """:func:`blend` returning the activity measure itself instead of its class."""
    s0, s1, s2, s3, s4, lo, hi = sub_predictions(n, w, nw, ne, te_w, te_n, te_nw, te_ne)
    if lo == hi:
        # The clamp below would give this whatever the blend: skip computing it.
        blend8 = lo << 3
    else:
        w0 = _floor_div(WEIGHT_ONE, e0 + 1)
        w1 = _floor_div(WEIGHT_ONE, e1 + 1)
        w2 = _floor_div(WEIGHT_ONE, e2 + 1)
        w3 = _floor_div(WEIGHT_ONE, e3 + 1)
        w4 = _floor_div(WEIGHT_ONE, e4 + 1)
        total = w0 + w1 + w2 + w3 + w4
        blend8 = _floor_div(w0 * s0 + w1 * s1 + w2 * s2 + w3 * s3 + w4 * s4 + (total >> 1), total)
        blend8 = min(max(blend8, lo << 3), hi << 3)
    activity = activity_of(n, w, nw, ne, te_w, te_n, te_nw, te_ne, min(min(e0, e1), min(min(e2, e3), e4)))
    return blend8, s0, s1, s2, s3, s4, activity, lo, hi


@njit(cache=True, nogil=True, inline="always")
def bias_context(q, n, w, nw, ne, blend8):
    """Index of the bias estimate: which neighbours exceed the blend, and the class / 4."""
    texture = (
        np.int64((n << 3) > blend8) | (np.int64((w << 3) > blend8) << 1)
        | (np.int64((nw << 3) > blend8) << 2) | (np.int64((ne << 3) > blend8) << 3)
    )
    return (q >> 2) * 16 + texture


@njit(cache=True, nogil=True, inline="always")
def bias_context_wide(bctx, n, w, nn, ww, blend8):
    """Context model 4's bias context: :func:`bias_context`'s split by NN and WW."""
    far = np.int64((nn << 3) > blend8) | (np.int64((ww << 3) > blend8) << 1)
    slope = np.int64(n > nn) | (np.int64(w > ww) << 1)
    return bctx * 16 + far * 4 + slope


@njit(cache=True, nogil=True, inline="always")
def correct(blend8, bias, lo, hi):
    """The blend corrected by the bias estimate and clamped; returns (pred8, pred)."""
    pred8 = min(max(blend8 + (bias >> 4), lo << 3), hi << 3)
    return pred8, (pred8 + 4) >> 3


@njit(cache=True, nogil=True, inline="always")
def bias_update(bias, value8, blend8):
    """The bias estimate moved towards the blend's error."""
    return bias + ((((value8 - blend8) << 4) - bias) >> BIAS_SHIFT)
