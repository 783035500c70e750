"""Residual coding of one plane (or one stripe of a plane) in version 2 of the private codec.

Prediction and context are version 1's (:mod:`._private_predict`: the same
blend, bias correction and activity class ``q``) but for the blend's
weights, taken from a table instead of five divisions (:func:`blend_v2`).
A frame names one of three *context models* for the coding class ``z`` of the
zero flag and the token, and for the sign:

* model 0: ``z`` is ``q``, or for the second and third plane of a colour
  image the class of the activity plus twice the first plane's error at the
  same position (the *guide*: edges and noise of one colour plane are where
  the others have theirs); the flat neighbourhoods (``W = N = NE``) have
  classes of their own;
* model 1: a *coarse* class, like model 0's but from the part of the activity
  that comes from the neighbours' prediction errors (the gradient weighs less),
  and a *fine* class that splits each coarse class by the local gradient and
  by the signal level (quarter of the plane's range the prediction lies in:
  noise grows with the signal in X-ray and CT images).  A fine class codes once
  it has seen enough samples, its coarse class until then; both learn from
  every sample, so many fine classes cost little on small images.  The bit
  below a token's leading bits is coded in an adaptive context per token;
* model 2: model 1's classes, but the coarse and the fine class code every
  sample together (*mixed*: the zero flag at the mean of their probabilities,
  the token with the sum of their tables), and the sign's context split by
  where the corrected prediction lies between two integers (``pred8 - 8 *
  pred``, in 1/8): a prediction rounded up from near the half makes a negative
  residual likelier, one rounded down a positive one (noise of a few units, as
  in the air around a CT patient, is where this pays).
* model 4: model 2 with two more sub-predictors in the blend, ``2N - NN`` and
  ``2W - WW`` (the slope of the two samples above and of the two to the left,
  carried on), every sub-predictor's error summed over WW too, and the bias
  correction's contexts split by NN and WW: smooth, filtered and resampled
  images (CT and MR slices) follow a slope further than the four neighbours
  see.
* model 5: model 4, and a *two-level* neighbourhood (W, N, NW and NE each
  the smallest or the largest of W, N and NE, at least TWO_LEVEL_MIN apart:
  text, rulers and labels burnt into an image, segmentation labels) first
  codes whether the sample is one of those two levels, and then which, before
  any residual: such a sample costs one or two adaptive decisions instead of
  a large token and its raw bits.
* model 6: model 5, and a *flat* neighbourhood (W = N = NE, where every
  model's prediction is W) first codes whether the sample repeats W, in
  contexts of its own (the blend's errors around it, the step from NW to W,
  the signal level).  A sample that does is done: no blend, bias correction
  or other context, so the flat parts of an image (the background of
  radiographs, mammograms and ultrasound, the padding around a CT's field of
  view) code several times faster; a sample that does not codes as in model 5,
  without the zero flag (its residual is not 0).
* model 7: model 6, and each bias context keeps a *gate* beside its bias
  estimate: the running difference between the blend's error and the
  corrected prediction's error there.  While the gate is below 0 (the
  correction has been taking the prediction away from the values), that
  context predicts with the blend alone.  Smooth images, such as
  scan-converted ultrasound and CT reconstructed on a small field of view,
  gain most.

The residual ``r = value - pred`` is coded as

1. a *zero flag*, one adaptive binary decision in context ``z``;
2. for ``r != 0``, the *token* of ``|r| - 1`` (:func:`._private_symbols.token_of`)
   with the token table ``z``: one multi-symbol step;
3. the raw low bits of ``|r| - 1`` the token leaves open, in chunks (model 1:
   the first of them as an adaptive decision);
4. the sign, as one adaptive binary decision in context ``(q, sign of the
   neighbours' errors)``, only when both signs are possible
   (``|r| <= pred`` and ``|r| <= maxv - pred``).

Encoding and decoding run one loop (:func:`_code_plane`), as in version 1.
"""

from __future__ import annotations

import numpy as np

from gateway.codecs._private_predict import (
    N_CLASSES,
    N_BIAS,
    N_BIAS_WIDE,
    bias_context,
    bias_context_wide,
    bias_update,
    bit_length,
    blend_v2,
    blend_wide,
    correct,
    far_neighbours,
    neighbours,
    new_state,
    quantise_activity,
    sign_class as _sign_class,
    sub_predictions,
)
from gateway.codecs._private_rangecoder import _adapt as _adapt_bit
from gateway.codecs._private_rangecoder import dec_bit, dec_bit_mixed, enc_bit, enc_bit_mixed, grow
from gateway.codecs._private_symbols import (
    N_TOKENS,
    TOTAL,
    dec_chunks,
    dec_token,
    dec_token_mixed,
    enc_chunks,
    enc_token,
    enc_token_mixed,
    token_base,
    token_of,
)
from gateway.codecs._private_symbols import _adapt as _adapt_table
from gateway.kernelcache import njit

GUIDE_WEIGHT = 2  # weight of the first plane's error at the same position in a later plane's class
# Context models (the segment table names the one a frame uses):
# 0: the coding class is the activity class, apart for flat neighbourhoods (W = N = NE);
# 1: the class of the residual part of the activity, apart for flat neighbourhoods, crossed
#    with the class of the local gradient (GRADIENT_CLASSES) and the signal level
#    (LEVEL_CLASSES quarters of the plane's power-of-two range).
# 2: model 1's classes mixed, and the sign's context split by where the prediction lies between
#    two integers;
# 4: model 2 with two more sub-predictors in the blend, 2N - NN and 2W - WW, the errors summed
#    over WW too and the bias contexts split by NN and WW (WIDE_MODEL).
# (3 is not a plane model: it is model 2 but for the index plane of indexed colour.)
# 5: model 4, and two-level neighbourhoods code whether and which of the two levels a sample
#    repeats before any residual (TWO_LEVEL_MODEL).
# 6: model 5, and a flat neighbourhood (W = N = NE) codes whether the sample repeats them first,
#    in contexts of its own (FLAT_MODEL): a sample that does costs no blend, bias correction or
#    other context.
# 7: model 6, and each bias context applies its correction only while the correction has been
#    bringing the prediction closer to the values there (GATED_MODEL).
MODELS = (0, 1, 2, 4, 5, 6, 7)
WIDE_MODEL = 4
TWO_LEVEL_MODEL = 5
FLAT_MODEL = 6
GATED_MODEL = 7
GATE_SHIFT = 5  # a gate forgets 1/32 of its sum at each sample of its context
GRADIENT_STEP = 3  # activity classes per gradient class
GRADIENT_CLASSES = (N_CLASSES + GRADIENT_STEP - 1) // GRADIENT_STEP
LEVEL_BITS = 2
LEVEL_CLASSES = 1 << LEVEL_BITS
# Binary contexts of a plane: the zero flag per coding class (model 1: the coarse classes,
# then the fine ones), the sign per activity class and neighbour bias, (model 1) the bit
# below a token's leading bits per token.  As many token tables as zero flag contexts; a
# table's prior follows its activity class (a fine class: its coarse class).
N_COARSE = 2 * N_CLASSES
CLASS_GROUP = (1, GRADIENT_CLASSES * LEVEL_CLASSES)
N_ZERO = (N_COARSE, N_COARSE + N_COARSE * GRADIENT_CLASSES * LEVEL_CLASSES)
FINE_BITS = 256  # zero flags a fine class must have seen before it codes them
FINE_TOTAL = 4096  # total a fine token table must reach before it codes tokens
CTX_ZERO = 0
N_ZERO += (N_ZERO[1],)
CLASS_GROUP += (CLASS_GROUP[1],)
# Sign contexts, per model: activity class x neighbour bias (models 0, 1); model 2: activity
# class / 2 x neighbour bias x FRACTION_CLASSES places of the prediction between two integers.
FRACTION_CLASSES = 5
N_SIGN = (3 * N_CLASSES, 3 * N_CLASSES, FRACTION_CLASSES * 3 * (N_CLASSES // 2))
N_BINARY = (N_ZERO[0] + N_SIGN[0], N_ZERO[1] + N_SIGN[1] + N_TOKENS, N_ZERO[2] + N_SIGN[2] + N_TOKENS)
N_TABLES = N_ZERO  # token tables of a plane, per model
# Model 5's two-level neighbourhoods: the levels lo and hi at least TWO_LEVEL_MIN apart.  The level
# flag's context: TWO_LEVEL_CLASSES classes of bitlength(hi - lo) (from TWO_LEVEL_MIN's) x the 8
# patterns of which of N, NW and NE equal W; the choice between the levels: the pattern.
TWO_LEVEL_MIN = 8
TWO_LEVEL_CLASSES = 8
TWO_LEVEL_PATTERNS = 8
N_TWO_LEVEL = TWO_LEVEL_CLASSES * TWO_LEVEL_PATTERNS + TWO_LEVEL_PATTERNS
# Model 6's flat flag: FLAT_CLASSES classes of bitlength(the blend's errors at W, N, NW, NE, and the
# guide) x FLAT_STEPS classes of bitlength(|W - NW|) x the LEVEL_CLASSES quarters of the range W is in.
FLAT_CLASSES = 16
FLAT_STEPS = 4
N_FLAT = FLAT_CLASSES * FLAT_STEPS * LEVEL_CLASSES


WIDE_MODELS = (WIDE_MODEL, TWO_LEVEL_MODEL, FLAT_MODEL, GATED_MODEL)  # the models with model 4's blend
LEVEL_MODELS = (TWO_LEVEL_MODEL, FLAT_MODEL, GATED_MODEL)  # the models with model 5's two-level neighbourhoods
FLAT_MODELS = (FLAT_MODEL, GATED_MODEL)  # the models with model 6's flat flag


def context_model(model: int) -> int:
    """The model whose classes, contexts and tables a plane of context `model` uses: models 4
    to 7 code as model 2 (4 and 7 change only the blend and the bias correction; 5 adds its
    two-level contexts after model 2's, 6 its flat contexts after those, :func:`binary_contexts`)."""
    return 2 if model in WIDE_MODELS else model


def binary_contexts(model: int) -> int:
    """Number of binary contexts of a plane coded with context `model`."""
    return (N_BINARY[context_model(model)] + (N_TWO_LEVEL if model in LEVEL_MODELS else 0)
            + (N_FLAT if model in FLAT_MODELS else 0))


# The sub-predictors' errors of a row, LANES to a column (one lane unused): slot x + 2 of a row
# holds column x; slots 0, 1 and columns + 2 are pads that stay zero.
LANES = 8
PADS = 3


def new_plane_state(columns: int, model: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fresh prediction state of a plane `columns` wide coded with context `model`: the ring of the
    blend's errors and the bias estimates (:func:`._private_predict.new_state`; model 7: followed by
    as many gates, ``bm[N_BIAS_WIDE + bctx]``), and the errors of
    the sub-predictors as the plane loop keeps them: ``err[row & 1]`` the errors of a row,
    interleaved (``err[k, (x + 2) * LANES + i]``: sub-predictor i at column x), and ``err[2]``
    each sub-predictor's errors at NW, N and NE summed, for the whole row at once before it is
    coded.  The loop reads a sample's errors from two rows of one array instead of fifteen, which
    keeps the loop's pointers in registers."""
    wide = model in WIDE_MODELS
    te, _, bm = new_state(columns, 0, (N_BIAS_WIDE if wide else N_BIAS) * (2 if model == GATED_MODEL else 1))
    return te, np.zeros((3, (columns + PADS) * LANES), np.int32), bm


STATUS_OK = 0
STATUS_RANGE = 1


@njit(cache=True, nogil=True, inline="always")
def _two_level(w, n, nw, ne, lo, hi):
    """Whether W, N, NW and NE are each `lo` or `hi` (the smallest and largest of W, N and NE), at
    least TWO_LEVEL_MIN apart: the middle one of W, N and NE and NW are each one of them.  Without
    branches: in noisy images the answer is no at random, and a mispredicted branch costs more."""
    middle = w + n + ne - lo - hi
    return (hi - lo >= TWO_LEVEL_MIN) & ((middle == lo) | (middle == hi)) & ((nw == lo) | (nw == hi))


@njit(cache=True, nogil=True)
def _encode_level(est, buf, bins, flag_ctx, which_ctx, levelled, other):
    """Code model 5's level flag and, when it is set, the choice between the levels.  A function
    call rather than inlined: two-level samples are rare in most images, and two more inlined
    range coder steps in the plane loop slow every other sample down."""
    est = enc_bit(est, buf, bins, flag_ctx, levelled)
    if levelled:
        est = enc_bit(est, buf, bins, which_ctx, other)
    return est


@njit(cache=True, nogil=True)
def _decode_level(dst, data, bins, flag_ctx, which_ctx):
    """Decode model 5's level flag and the choice (0 when the flag is not set): (state, flag, choice)."""
    dst, flag = dec_bit(dst, data, bins, flag_ctx)
    other = np.int64(0)
    if flag:
        dst, other = dec_bit(dst, data, bins, which_ctx)
    return dst, flag, other


@njit(cache=True, nogil=True, inline="always")
def _keep_errors(cur, o, v8, s0, s1, s2, s3, s4, s5, s6, wide):
    """Keep each sub-predictor's error at a sample of value ``v8 / 8`` in its row's slots from `o`
    (5.5; sub-predictors 5 and 6 only with model 4's blend, `wide`)."""
    cur[o] = abs(s0 - v8)
    cur[o + 1] = abs(s1 - v8)
    cur[o + 2] = abs(s2 - v8)
    cur[o + 3] = abs(s3 - v8)
    cur[o + 4] = abs(s4 - v8)
    if wide:
        cur[o + 5] = abs(s5 - v8)
        cur[o + 6] = abs(s6 - v8)


@njit(cache=True, nogil=True, inline="always")
def _flat_class(near, step, level):
    """Model 6's flat flag context (less its base): the class of `near`, the blend's errors at W, N,
    NW and NE (and the guide), the class of `step`, W - NW, and the `level` quarter of the range."""
    near_class = min(bit_length(near), np.int64(FLAT_CLASSES - 1))
    step_class = min(bit_length(abs(step)), np.int64(FLAT_STEPS - 1))
    return ((near_class * FLAT_STEPS + step_class) << LEVEL_BITS) + level


# Class of pred8 - 8 * pred (-4..3) at index pred8 - 8 * pred + 4: -4, -3 | -2, -1 | 0 | 1, 2 | 3.
FRACTION_CLASS = np.array([0, 0, 1, 1, 2, 3, 3, 4], np.int64)


@njit(cache=True, nogil=True, inline="always")
def _fraction_class(fraction):
    """Class of ``pred8 - 8 * pred`` (-4..3): a table look-up, not a chain of branches on a value
    that is a coin toss in noisy images."""
    return FRACTION_CLASS[np.uint64(fraction + 4)]


def _plane_coder(encoding: bool, plane_model: int):
    """The plane loop compiled for one direction and one context model.

    Both are constants to numba (closure variables), so each of the fourteen
    kernels keeps only its own branches: the encoders run about 14 % faster
    than one loop that tests them at every sample.

    NumPy's error model: no test for a zero divisor before each division (the
    tests cost about a tenth of the encoder's time).  No divisor here can be
    zero: a token table's total is at least N_TOKENS, and the blend's total
    weight is at least sub-predictor 4's, which is at least 1 (``(N + NE) / 2``
    is at most ``maxv < 2**18`` from the value, so its error summed over five
    neighbours stays below ``40 * 2**18 < 2**24`` eighths).
    """
    model = context_model(plane_model)
    wide = plane_model in WIDE_MODELS
    levels = plane_model in LEVEL_MODELS
    flat = plane_model in FLAT_MODELS
    gated = plane_model == GATED_MODEL
    spread_shift = TWO_LEVEL_MIN.bit_length()

    @njit(cache=True, nogil=True, error_model="numpy")
    def code_plane(est, buf, dst, data, plane, maxv, tables, bins, te, err, bm, guide, keep):
        """Encode (`encoding`) or decode every sample of `plane`; returns (encoder state, buffer,
        decoder state, status), the state of the other direction passing through untouched."""
        rows, cols = plane.shape
        status = STATUS_OK
        guided = guide.shape[0] > 0
        keeping = keep.shape[0] > 0
        level_shift = max(np.int64(0), bit_length(maxv) - LEVEL_BITS)
        mixed = model >= 2
        ctx_sign = N_ZERO[model]
        ctx_mantissa = ctx_sign + N_SIGN[model]
        ctx_level = ctx_mantissa + N_TOKENS
        ctx_which = ctx_level + TWO_LEVEL_CLASSES * TWO_LEVEL_PATTERNS
        ctx_flat = ctx_which + TWO_LEVEL_PATTERNS
        up = err[2]
        for y in range(rows):
            r = y & 1
            p = r ^ 1
            if encoding:
                buf = grow(buf, est[4] + est[3] + 16 + cols * 12)
            cur = err[r]
            above = err[p]
            for k in range(cols * LANES):  # every column's errors at NW, N and NE, summed
                up[k] = above[k + LANES] + above[k + 2 * LANES] + above[k + 3 * LANES]
            te_w = np.int64(0)  # the blend's error at W: the zero pad in the first column
            for x in range(cols):
                w, n, nw, ne = neighbours(plane, y, x)
                te_n = np.int64(te[p, x + 1])
                te_nw = np.int64(te[p, x])
                te_ne = np.int64(te[p, x + 2])
                u = x * LANES  # up's column x; cur's column x - 1 at u + LANES, x - 2 at u
                flat_miss = False  # model 6: a flat neighbourhood whose sample is not W (its residual is not 0)
                if flat and w == n and n == ne:
                    # Model 6: whether the sample repeats W, N and NE, before (and, when it does,
                    # instead of) the blend, the bias correction and every other context.
                    near = abs(te_w) + abs(te_n) + abs(te_nw) + abs(te_ne)
                    if guided:
                        near += GUIDE_WEIGHT * np.int64(guide[y, x])
                    flat_ctx = ctx_flat + _flat_class(near, w - nw, w >> level_shift)
                    if encoding:
                        flat_miss = np.int64(plane[y, x]) != w
                        est = enc_bit(est, buf, bins, flat_ctx, np.int64(flat_miss))
                    else:
                        dst, miss = dec_bit(dst, data, bins, flat_ctx)
                        flat_miss = miss != 0
                        if not flat_miss:
                            plane[y, x] = w
                    if not flat_miss:
                        # The prediction is W (8W in eighths), so the blend's error is 0; each
                        # sub-predictor's error is kept as after any sample (5.5).
                        te[r, x + 1] = 0
                        if keeping:
                            keep[y, x] = 0
                        s0, s1, s2, s3, s4, _, _ = sub_predictions(n, w, nw, ne, te_w, te_n, te_nw, te_ne)
                        nn, ww = far_neighbours(plane, y, x, n, w)
                        _keep_errors(cur, u + 2 * LANES, w << 3, s0, s1, s2, s3, s4, (2 * n - nn) << 3,
                                     (2 * w - ww) << 3, True)
                        te_w = np.int64(0)
                        continue
                e0 = np.int64(up[u]) + cur[u + LANES]
                e1 = np.int64(up[u + 1]) + cur[u + LANES + 1]
                e2 = np.int64(up[u + 2]) + cur[u + LANES + 2]
                e3 = np.int64(up[u + 3]) + cur[u + LANES + 3]
                e4 = np.int64(up[u + 4]) + cur[u + LANES + 4]
                if wide:
                    nn, ww = far_neighbours(plane, y, x, n, w)
                    e0 += cur[u]
                    e1 += cur[u + 1]
                    e2 += cur[u + 2]
                    e3 += cur[u + 3]
                    e4 += cur[u + 4]
                    e5 = np.int64(up[u + 5]) + cur[u + LANES + 5] + cur[u + 5]
                    e6 = np.int64(up[u + 6]) + cur[u + LANES + 6] + cur[u + 6]
                    blend8, s0, s1, s2, s3, s4, s5, s6, activity, lo, hi = blend_wide(
                        n, w, nw, ne, nn, ww, te_w, te_n, te_nw, te_ne, e0, e1, e2, e3, e4, e5, e6)
                else:
                    blend8, s0, s1, s2, s3, s4, activity, lo, hi = blend_v2(n, w, nw, ne, te_w, te_n, te_nw, te_ne,
                                                                           e0, e1, e2, e3, e4)
                    s5 = s6 = nn = ww = np.int64(0)
                q = quantise_activity(activity)
                bctx = bias_context(q, n, w, nw, ne, blend8)
                if wide:
                    bctx = bias_context_wide(bctx, n, w, nn, ww, blend8)
                bias = np.int64(bm[bctx])
                pred8, pred = correct(blend8, bias, lo, hi)
                if gated:
                    corrected8 = pred8
                    gate = np.int64(bm[N_BIAS_WIDE + bctx])
                    if gate < 0:
                        pred8, pred = blend8, (blend8 + 4) >> 3
                if model < 2:
                    sign_ctx = ctx_sign + 3 * q + _sign_class(te_w + te_n)
                else:
                    sign_ctx = ctx_sign + FRACTION_CLASSES * (3 * (q >> 1) + _sign_class(te_w + te_n))
                    sign_ctx += _fraction_class(pred8 - (pred << 3))
                zo = -1
                to = -1
                if model == 0:
                    cq = q
                    if guided:
                        cq = quantise_activity(activity + GUIDE_WEIGHT * np.int64(guide[y, x]))
                    zq = cq + N_CLASSES * np.int64(lo == hi)
                    tq = zq
                else:
                    grad = abs(n - nw) + abs(w - nw) + abs(ne - n)
                    residual = activity - 2 * grad + (grad >> 1)
                    if guided:
                        residual += GUIDE_WEIGHT * np.int64(guide[y, x])
                    zc = quantise_activity(residual) + N_CLASSES * np.int64(lo == hi)
                    zf = (zc * GRADIENT_CLASSES + quantise_activity(grad) // GRADIENT_STEP) * LEVEL_CLASSES
                    zf += N_COARSE + (pred >> level_shift)
                    # Model 1: the fine class codes once it has learnt enough; until then its coarse
                    # parent does.  Model 2 codes with both (mixed).  Both learn from every sample.
                    if mixed:
                        zq, zo, tq, to = zc, zf, zc, zf
                    else:
                        if bins[zf, 2] >= FINE_BITS:
                            zq, zo = zf, zc
                        else:
                            zq, zo = zc, zf
                        if tables[zf, TOTAL] >= FINE_TOTAL:
                            tq, to = zf, zc
                        else:
                            tq, to = zc, zf
                # Model 5: in a two-level neighbourhood, whether the sample is one of the levels
                # (flag context: the levels' distance and the pattern), and which (W's or the other).
                levelled = False
                if levels:
                    if _two_level(w, n, nw, ne, lo, hi):
                        pattern = np.int64(n == w) | (np.int64(nw == w) << 1) | (np.int64(ne == w) << 2)
                        spread = min(bit_length(hi - lo) - spread_shift, TWO_LEVEL_CLASSES - 1)
                        flag_ctx = ctx_level + spread * TWO_LEVEL_PATTERNS + pattern
                        if encoding:
                            value = np.int64(plane[y, x])
                            levelled = value == lo or value == hi
                            est = _encode_level(est, buf, bins, flag_ctx, ctx_which + pattern, np.int64(levelled),
                                                np.int64(value != w))
                        else:
                            dst, flag, other = _decode_level(dst, data, bins, flag_ctx, ctx_which + pattern)
                            if flag:
                                value = lo + hi - w if other else w
                                plane[y, x] = value
                                levelled = True
                if levelled:
                    pass
                elif encoding:
                    value = np.int64(plane[y, x])
                    res = value - pred
                    mag = abs(res)
                    if flat_miss:
                        pass
                    elif mixed:
                        est = enc_bit_mixed(est, buf, bins, zq, zo, np.int64(mag != 0))
                    else:
                        est = enc_bit(est, buf, bins, CTX_ZERO + zq, np.int64(mag != 0))
                        if zo >= 0:
                            _adapt_bit(bins, zo, bins[zo, 0], bins[zo, 1], np.int64(mag != 0))
                    if mag != 0:
                        token, nraw = token_of(mag - 1)
                        if mixed:
                            est = enc_token_mixed(est, buf, tables, tq, to, token)
                        else:
                            est = enc_token(est, buf, tables, tq, token)
                            if zo >= 0:
                                _adapt_table(tables, to, token)
                        if zo >= 0:
                            if nraw > 0:
                                nraw -= 1
                                est = enc_bit(est, buf, bins, ctx_mantissa + token, ((mag - 1) >> nraw) & 1)
                        if nraw > 0:
                            est = enc_chunks(est, buf, mag - 1, nraw)
                        if mag <= pred and mag <= maxv - pred:
                            est = enc_bit(est, buf, bins, sign_ctx, np.int64(res < 0))
                else:
                    if flat_miss:
                        nonzero = np.int64(1)
                    elif mixed:
                        dst, nonzero = dec_bit_mixed(dst, data, bins, zq, zo)
                    else:
                        dst, nonzero = dec_bit(dst, data, bins, CTX_ZERO + zq)
                        if zo >= 0:
                            _adapt_bit(bins, zo, bins[zo, 0], bins[zo, 1], nonzero)
                    value = pred
                    if nonzero:
                        if mixed:
                            dst, token = dec_token_mixed(dst, data, tables, tq, to)
                        else:
                            dst, token = dec_token(dst, data, tables, tq)
                            if zo >= 0:
                                _adapt_table(tables, to, token)
                        mag, nraw = token_base(token)
                        if zo >= 0:
                            if nraw > 0:
                                nraw -= 1
                                dst, half = dec_bit(dst, data, bins, ctx_mantissa + token)
                                mag += half << nraw
                        if nraw > 0:
                            dst, low_bits = dec_chunks(dst, data, nraw)
                            mag += low_bits
                        mag += 1
                        neg_ok = mag <= pred
                        pos_ok = mag <= maxv - pred
                        if neg_ok and pos_ok:
                            dst, negative = dec_bit(dst, data, bins, sign_ctx)
                        elif neg_ok:
                            negative = 1
                        elif pos_ok:
                            negative = 0
                        else:
                            return est, buf, dst, STATUS_RANGE
                        value = pred - mag if negative else pred + mag
                    plane[y, x] = value
                v8 = value << 3
                te_w = pred8 - v8
                te[r, x + 1] = te_w
                if keeping:
                    keep[y, x] = abs(te_w)
                _keep_errors(cur, u + 2 * LANES, v8, s0, s1, s2, s3, s4, s5, s6, wide)
                if gated:
                    bm[N_BIAS_WIDE + bctx] = gate + abs(blend8 - v8) - abs(corrected8 - v8) - (gate >> GATE_SHIFT)
                bm[bctx] = bias_update(bias, v8, blend8)
        return est, buf, dst, status

    return code_plane


_ENCODERS = {model: _plane_coder(True, model) for model in MODELS}
_DECODERS = {model: _plane_coder(False, model) for model in MODELS}
_NO_ENCODER = (0, 0, 0, 0, 0)
_NO_DECODER = (0, 0, 0)
_NO_BYTES = np.empty(0, np.uint8)


def encode_plane(st, buf, plane, maxv, tables, bins, te, err, bm, guide, keep, model):
    """Code every sample of `plane` (values 0..maxv); returns the coder state and buffer."""
    st, buf, _, _ = _ENCODERS[model](st, buf, _NO_DECODER, _NO_BYTES, plane, maxv, tables, bins, te, err, bm,
                                     guide, keep)
    return st, buf


def decode_plane(st, data, plane, maxv, tables, bins, te, err, bm, guide, keep, model):
    """Decode every sample of `plane`; returns (state, status)."""
    _, _, st, status = _DECODERS[model](_NO_ENCODER, _NO_BYTES, st, data, plane, maxv, tables, bins, te, err, bm,
                                        guide, keep)
    return st, status
