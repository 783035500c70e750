"""Design study: what each part of version 2's prediction costs in time and buys in size.

Version 2's context model 4 predicts a sample by blending seven
sub-predictors weighted by their recent errors (summed over N, W, NW, NE and
WW), corrects the blend by an adaptive bias, and codes the residual in fine
classes (activity, gradient and signal level) with a sign class split by the
prediction's fraction.  Faster coding alone cannot reach 50 MB/s on one
thread while this prediction takes about 37 ns a sample (bench_static_coding.py),
so this study takes the prediction apart.  Each variant leaves one part out,
or several together:

* ``full``: context model 4 as the codec runs it;
* ``no bias``: the blend without the bias correction;
* ``light bias``: the bias correction with one estimate per activity class
  instead of model 4's contexts (which neighbours exceed the blend);
* ``gated bias``: context model 7's bias correction, applied only while its
  context's gate is not negative (the corrected prediction has been closer
  to the values than the blend, docs/private-codec.md 9.3);
* ``clamped bias``: the bias estimates moved by the blend's error clamped to
  one sample either way, so that an edge moves them no more than noise;
* ``five``: without sub-predictors 5 and 6 (``2N - NN``, ``2W - WW``);
* ``no WW``: every error summed over N, W, NW and NE only;
* ``three``: sub-predictors 0, 1 and 2 only (``N + W - NW`` and the two
  error-corrected ones);
* ``activity classes``: the residual coded in its activity class alone (28
  classes, flat neighbourhoods apart) and the sign in its neighbour-bias
  class, instead of the fine classes and the fraction;
* ``level``: the activity classes split by the signal level as the fine
  classes split them (the quarter of the plane's range the prediction lies in);
* and combinations of these.

Per variant:

* time: processor time of the prediction loop alone (every value read from
  the image, as a decoder that decodes for free would have it; best of
  ``--repeat``, the variants interleaved image by image);
* size: the ideal static coding of the variant's residuals, the bits that
  per-image static tables would reach before their own description: the
  empirical entropy of the symbols (0, or 1 + the token of ``|r| - 1``) in
  each coding class, the raw low bits, and the entropy of the coded signs in
  each sign class; as a change against ``full``.  Fewer classes need fewer
  tables, so a second column adds the estimate of bench_static_coding.py for
  a table per class the image meets (8 bits a table, 5 bits a used symbol,
  12 bits a sign class), without clustering.

Planes are the first frame of every grey corpus image, minus its smallest value
(``--images``: of the grey images in those files or folders, as bench_private.py
reads them, in a folder named by the file's parent folder; ``--unseen`` as there).

    python benchmarks/bench_prediction_cost.py [--folders CT MR | --images DIR ...] [--repeat N]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import load_images  # noqa: E402
from benchmarks.bench_static_coding import WARM, _best, grey_planes, keep_errors, wide_errors  # noqa: E402
from gateway.codecs._private_planes2 import (  # noqa: E402
    FRACTION_CLASSES, GATE_SHIFT, GRADIENT_CLASSES, GRADIENT_STEP, LEVEL_BITS, LEVEL_CLASSES, N_COARSE,
    _fraction_class, _sign_class)
from gateway.codecs._private_predict import (  # noqa: E402
    N_BIAS_WIDE, N_CLASSES, N_SUB_WIDE, _floor_div, activity_of, bias_context, bias_context_wide, bias_update,
    bit_length, blend_v2, blend_wide, correct, errors, far_neighbours, neighbours, new_state, quantise_activity,
    sub_predictions, weight_v2)
from gateway.codecs._private_symbols import N_TOKENS, token_of  # noqa: E402

N_SYMBOLS = N_TOKENS + 1
TABLE_BITS, SYMBOL_BITS, SIGN_TABLE_BITS = 8, 5, 12  # the table estimate of bench_static_coding.py
# Variant flags: the parts a variant leaves out or changes.
NO_BIAS, FIVE, NO_WW, THREE, ACTIVITY_CLASSES, LEVEL, LIGHT_BIAS, GATED_BIAS, CLAMPED_BIAS = 1, 2, 4, 8, 16, 32, 64, 128, 256
VARIANTS = {
    "full": 0,
    "no bias": NO_BIAS,
    "gated bias": GATED_BIAS,
    "clamped bias": CLAMPED_BIAS,
    "five": FIVE,
    "no WW": NO_WW,
    "three": THREE,
    "activity classes": ACTIVITY_CLASSES,
    "activity classes, level": ACTIVITY_CLASSES | LEVEL,
    "five, no bias": FIVE | NO_BIAS,
    "light bias, activity classes, level": LIGHT_BIAS | ACTIVITY_CLASSES | LEVEL,
    "no bias, activity classes, level": NO_BIAS | ACTIVITY_CLASSES | LEVEL,
    "five, no bias, activity classes, level": FIVE | NO_BIAS | ACTIVITY_CLASSES | LEVEL,
    "three, no bias, activity classes, level": THREE | NO_BIAS | ACTIVITY_CLASSES | LEVEL,
}


def _prediction_loop(flags: int, analyse: bool):
    """The prediction of context model 4 without the parts `flags` names, compiled for those
    flags (numba constants, as the codec compiles a kernel per model); with `analyse`, each
    sample's coding class, symbol, sign class, sign (-1 when not coded) and raw bit count go
    to `fields`, else only a checksum of the classes is kept (the time of the prediction alone)."""
    bias_on = not flags & NO_BIAS
    light_bias = bool(flags & LIGHT_BIAS)
    three = bool(flags & THREE)
    seven = not (flags & (FIVE | THREE))
    subs = 3 if three else 7 if seven else 5
    far_sums = not flags & NO_WW
    fine_classes = not flags & ACTIVITY_CLASSES
    level = bool(flags & LEVEL)
    gated = bool(flags & GATED_BIAS)
    clamped = bool(flags & CLAMPED_BIAS)

    @njit(cache=True, nogil=True)
    def loop(plane, source, maxv, te, err, bm, fields):
        rows, cols = plane.shape
        gates = np.zeros(bm.shape[0], np.int64)
        level_shift = max(np.int64(0), bit_length(maxv) - LEVEL_BITS)
        seen = np.int64(0)
        i = 0
        for y in range(rows):
            r = y & 1
            p = r ^ 1
            for x in range(cols):
                w, n, nw, ne = neighbours(plane, y, x)
                nn, ww = far_neighbours(plane, y, x, n, w)
                if far_sums:
                    te_w, te_n, te_nw, te_ne, e0, e1, e2, e3, e4, e5, e6 = wide_errors(te, err, r, p, x)
                else:
                    te_w, te_n, te_nw, te_ne, e0, e1, e2, e3, e4 = errors(te, err, r, p, x)
                    e5 = np.int64(err[5, p, x + 1]) + err[5, r, x] + err[5, p, x] + err[5, p, x + 2]
                    e6 = np.int64(err[6, p, x + 1]) + err[6, r, x] + err[6, p, x] + err[6, p, x + 2]
                if seven:
                    blend8, s0, s1, s2, s3, s4, s5, s6, activity, lo, hi = blend_wide(
                        n, w, nw, ne, nn, ww, te_w, te_n, te_nw, te_ne, e0, e1, e2, e3, e4, e5, e6)
                elif not three:
                    blend8, s0, s1, s2, s3, s4, activity, lo, hi = blend_v2(n, w, nw, ne, te_w, te_n, te_nw, te_ne,
                                                                           e0, e1, e2, e3, e4)
                    s5 = s6 = np.int64(0)
                else:  # model 2's blend of the first three sub-predictors only
                    s0, s1, s2, s3, s4, lo, hi = sub_predictions(n, w, nw, ne, te_w, te_n, te_nw, te_ne)
                    s5 = s6 = np.int64(0)
                    w0, w1, w2 = weight_v2(e0), weight_v2(e1), weight_v2(e2)
                    total = w0 + w1 + w2
                    blend8 = lo << 3 if lo == hi else min(max(
                        _floor_div(w0 * s0 + w1 * s1 + w2 * s2 + (total >> 1), total), lo << 3), hi << 3)
                    activity = activity_of(n, w, nw, ne, te_w, te_n, te_nw, te_ne, min(min(e0, e1), e2))
                q = quantise_activity(activity)
                if bias_on:
                    if light_bias:
                        bctx = q
                    else:
                        bctx = bias_context_wide(bias_context(q, n, w, nw, ne, blend8), n, w, nn, ww, blend8)
                    bias = np.int64(bm[bctx])
                    pred8, pred = correct(blend8, bias, lo, hi)
                    corrected8 = pred8
                    if gated and gates[bctx] < 0:
                        pred8, pred = blend8, (blend8 + 4) >> 3
                else:
                    bctx = 0
                    bias = np.int64(0)
                    pred8, pred = blend8, (blend8 + 4) >> 3
                if fine_classes:
                    sign_class = (FRACTION_CLASSES * (3 * (q >> 1) + _sign_class(te_w + te_n))
                                  + _fraction_class(pred8 - (pred << 3)))
                    grad = abs(n - nw) + abs(w - nw) + abs(ne - n)
                    coarse = quantise_activity(activity - 2 * grad + (grad >> 1)) + N_CLASSES * np.int64(lo == hi)
                    gradient = quantise_activity(grad) // GRADIENT_STEP
                    cls = N_COARSE + (coarse * GRADIENT_CLASSES + gradient) * LEVEL_CLASSES
                    cls += pred >> level_shift
                else:
                    sign_class = 3 * q + _sign_class(te_w + te_n)
                    cls = q + N_CLASSES * np.int64(lo == hi)
                    if level:
                        cls = cls * LEVEL_CLASSES + (pred >> level_shift)
                value = np.int64(source[y, x])
                plane[y, x] = value
                if analyse:
                    mag = abs(value - pred)
                    token, nraw = token_of(mag - 1) if mag else (np.int64(-1), np.int64(0))
                    fields[i, 0] = cls
                    fields[i, 1] = token + 1
                    fields[i, 2] = sign_class
                    fields[i, 3] = np.int64(value < pred) if mag != 0 and mag <= pred and mag <= maxv - pred else -1
                    fields[i, 4] = nraw
                    i += 1
                else:
                    seen += cls + sign_class
                v8 = value << 3
                keep_errors(te, err, r, x, pred8, v8, s0, s1, s2, s3, s4, s5, s6, subs)
                if bias_on:
                    if gated:
                        gates[bctx] += abs(blend8 - v8) - abs(corrected8 - v8) - (gates[bctx] >> GATE_SHIFT)
                    if clamped:
                        v8 = min(max(v8, blend8 - 8), blend8 + 8)
                    bm[bctx] = bias_update(bias, v8, blend8)
        return seen

    return loop


_LOOPS = {name: (_prediction_loop(flags, True), _prediction_loop(flags, False)) for name, flags in VARIANTS.items()}


def _entropy_bits(keys: np.ndarray, symbols: np.ndarray, n_symbols: int) -> float:
    """Bits of coding each symbol with the empirical distribution of its key's symbols."""
    counts = np.bincount(keys.astype(np.int64) * n_symbols + symbols, minlength=(int(keys.max()) + 1) * n_symbols)
    counts = counts.reshape(-1, n_symbols).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(counts > 0, counts * np.log2(np.where(counts > 0, counts / totals, 1.0)), 0.0)
    return float(-terms.sum())


def _ideal_bytes(fields: np.ndarray) -> tuple[float, float]:
    """Bytes of the ideal static coding of a variant's fields, and the estimate of its tables
    (see the module's text)."""
    signs = fields[:, 3] >= 0
    bits = _entropy_bits(fields[:, 0], fields[:, 1].astype(np.int64), N_SYMBOLS)
    bits += float(fields[:, 4].sum())
    if signs.any():
        bits += _entropy_bits(fields[signs, 2], fields[signs, 3].astype(np.int64), 2)
    pairs = np.unique(fields[:, 0].astype(np.int64) * N_SYMBOLS + fields[:, 1])
    table_bits = TABLE_BITS * len(np.unique(pairs // N_SYMBOLS)) + SYMBOL_BITS * len(pairs)
    table_bits += SIGN_TABLE_BITS * len(np.unique(fields[signs, 2]))
    return bits / 8, table_bits / 8


def _measure(plane: np.ndarray, maxv: int, name: str, repeat: int) -> tuple[float, float, float]:
    """(ideal bytes, the tables' estimated bytes, seconds of the prediction alone) of variant `name`
    on the plane."""
    analyse, predict = _LOOPS[name]
    out = np.zeros_like(plane)
    fields = np.empty((plane.size, 5), np.int32)

    def state():
        return new_state(plane.shape[1], N_SUB_WIDE, N_BIAS_WIDE)

    analyse(out, plane, maxv, *state(), fields)
    if not np.array_equal(out, plane):
        raise AssertionError("the prediction loop did not pass every value through")
    seconds = _best(lambda: predict(out, plane, maxv, *state(), fields), repeat)
    return (*_ideal_bytes(fields), seconds)


def _image_planes(paths, unseen):
    """(folder, plane, maximum) of the first frame of every grey image in `paths` (`unseen`: as
    bench_private.py's ``--unseen`` chooses them), as grey_planes gives the corpus's."""
    for item in load_images(paths, unseen):
        if item.info.samples_per_pixel == 1:
            plane = item.frames[0].astype(np.int64)
            plane = (plane - plane.min()).astype(np.int32)
            if plane.max() > 0:
                yield item.folder, plane, int(plane.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folders", nargs="*", default=())
    parser.add_argument("--images", nargs="*", default=(), help="image files or folders instead of the corpus")
    parser.add_argument("--unseen", action="store_true", help="with --images: as bench_private.py's --unseen")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for name in VARIANTS:
        _measure(WARM, 250, name, 1)
    totals: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for folder, plane, maxv in (_image_planes(args.images, args.unseen) if args.images else grey_planes(args.folders)):
        for name in VARIANTS:
            size, tables, seconds = _measure(plane, maxv, name, args.repeat)
            for key in ((name, folder), (name, "ALL")):
                row = totals[key]
                row[0] += plane.size
                row[1] += size
                row[2] += tables
                row[3] += seconds
    folders = sorted({folder for _, folder in totals}, key=lambda f: (f == "ALL", f))
    print("| variant | folder | size vs full | with tables vs full with tables | prediction ns a sample |")
    print("|---|---|---:|---:|---:|")
    for folder in folders:
        _, full, full_tables, _ = totals["full", folder]
        for name in VARIANTS:
            samples, size, tables, seconds = totals[name, folder]
            print(f"| {name} | {folder} | {100 * (size / full - 1):+.2f} % "
                  f"| {100 * ((size + tables) / (full + full_tables) - 1):+.2f} % | {1e9 * seconds / samples:.1f} |")


if __name__ == "__main__":
    main()
