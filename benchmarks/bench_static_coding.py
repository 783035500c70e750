"""Design study: version 2's prediction with static per-image tables instead of adaptive coding.

Version 2 codes each residual with adaptive range coding: a zero flag at the
mean of two adaptive binary contexts, a token searched in the sum of two
adaptive frequency tables, raw bits and an adaptive sign.  This study asks
what the same prediction and classes would cost in size, and gain in
decoding time, if the encoder instead counted the image's symbols first and
sent one static table per class, and the decoder looked each symbol up in
one step (rANS, as JPEG-XL's modular mode codes):

* prediction and classes: context models 4 and 2, exactly (the blend of
  seven or five sub-predictors, bias correction, the coarse and fine coding
  classes, the sign's class), each against version 2's own kernels of that
  model;
* two *light* predictions, the cheapest that bench_prediction_cost.py found
  near the ratio target: model 2's blend (``light, 5``) or model 4's
  (``light, 7``) without the bias correction, the residual coded in its
  activity class (flat neighbourhoods apart) split by the signal level's
  quarter (224 classes, as the fine classes; the coarse class is the
  activity class), the sign in the activity class and the neighbours' bias.
  They have no adaptive kernels: their adaptive columns are model 4's;
* a symbol per sample: 0 for a zero residual, else 1 + the token of
  ``|r| - 1``; the raw low bits go to a separate plain bit stream; the sign,
  where both signs are possible, as a static binary decision per sign class;
* tables: per coarse class the encoder keeps one table, or one per fine
  class when that costs fewer bits (entropy plus an estimated 8 bits a table
  and 5 bits a used symbol); 12-bit frequencies; rANS with a 32-bit state
  and byte renormalisation; sign tables cost 12 bits each, the map from
  classes to tables a bit per coarse class and per fine class of a split
  one.  The sizes count the rANS bytes, the raw bits and that estimate of
  the tables ("of which tables": its share), not a finished stream syntax;
* a branch-free form of the static decoder, with the clustered tables: one
  look-up per symbol gives its frequency, start and value; rANS with 16-bit
  words, so that renormalisation reads at most one word and needs no loop;
  the raw bits read low bit first from a 64-bit window of 32-bit words; the
  sign always decoded, at frequency ``ONE`` where it is not coded (a step
  that leaves the state as it is), and the value formed without a branch.
  Its size column counts its own words and raw bytes and the clustered
  tables' estimate;
* time: processor time of the kernels alone, best of ``--repeat``, the two
  designs interleaved image by image: version 2's kernels; the static
  encoder's two passes (classes and symbols, then rANS and raw bits; the
  tables are counted and normalised in NumPy here, untimed); the static
  decoder; the branch-free static decoder; and the prediction alone (the
  decoding loop with each value read from the original instead of decoded:
  the floor that faster coding cannot go below).

A second table shows what a frame-by-frame choice would reach: per image
the fastest of ``light, 5``, ``light, 7`` and model 4 (static, clustered)
whose size is within a limit of model 4's, the sizes known as if the
encoder had coded each candidate (the time of choosing is not counted).

Every static round trip (both decoders) is checked sample for sample.
Planes are the first frame of every grey corpus image, minus its smallest
value.

    python benchmarks/bench_static_coding.py [--folders CT MR] [--repeat N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import load_corpus  # noqa: E402
from gateway.codecs import _private_planes2 as planes2  # noqa: E402
from gateway.codecs import _private_rangecoder as rc  # noqa: E402
from gateway.codecs import private  # noqa: E402
from gateway.codecs._private_planes2 import (  # noqa: E402
    FRACTION_CLASSES, GRADIENT_CLASSES, GRADIENT_STEP, LEVEL_BITS, LEVEL_CLASSES, N_COARSE, N_ZERO,
    _fraction_class, _sign_class)
from gateway.codecs._private_predict import (  # noqa: E402
    N_BIAS, N_BIAS_WIDE, N_CLASSES, N_SUB, N_SUB_WIDE, bias_context, bias_context_wide, bias_update, bit_length,
    blend_v2, blend_wide, correct, errors, far_neighbours, neighbours, new_state, quantise_activity)
from gateway.codecs._private_symbols import N_TOKENS, token_base, token_of  # noqa: E402

# The kernels compiled per model: 4 (seven sub-predictors), 2 (five), and two lighter predictions
# without bias correction, coded in activity classes split by level (see the text): LIGHT with
# model 2's blend, LIGHT_WIDE with model 4's.
LIGHT, LIGHT_WIDE = 6, 7
MODELS = (4, 2, LIGHT_WIDE, LIGHT)
LIGHTS = (LIGHT, LIGHT_WIDE)
PREC = 12
ONE = 1 << PREC
LOW = 1 << 23  # rANS state lower bound
LOW16 = 1 << 16  # the branch-free decoder's rANS state lower bound (16-bit renormalisation)
# Per symbol of the branch-free decoder: the smallest magnitude (0 for symbol 0) and its raw bit count.
FLAT_BASE = np.array([0] + [token_base(t)[0] + 1 for t in range(N_TOKENS)], np.int64)
FLAT_RAW = np.array([0] + [token_base(t)[1] for t in range(N_TOKENS)], np.int64)
N_SYMBOLS = N_TOKENS + 1
N_FINE = N_ZERO[2]
N_SIGN_CLASSES = FRACTION_CLASSES * 3 * (N_CLASSES // 2)
TABLE_BITS, SYMBOL_BITS, SIGN_TABLE_BITS = 8, 5, 12
NO_KEEP = np.empty((0, 0), np.int32)
NO_FIRSTS = np.empty(0, np.int64)


ANALYSE, PREDICT, DECODE, FLAT = 0, 1, 2, 3


@njit(cache=True, nogil=True, inline="always")
def wide_errors(te, err, r, p, x):
    """Context model 4's errors from the ring buffers of version 1's layout, which the studies'
    loops keep (the codec's loop keeps them otherwise, :func:`._private_planes2.new_plane_state`):
    :func:`errors` with each sum also over WW (two columns left, 0 before the second column), and
    those of sub-predictors 5 and 6."""
    te_w, te_n, te_nw, te_ne, e0, e1, e2, e3, e4 = errors(te, err, r, p, x)
    at_ww = max(x - 1, 0)  # the ring's index of column x - 2; index 0 is the zero pad
    e0 += err[0, r, at_ww]
    e1 += err[1, r, at_ww]
    e2 += err[2, r, at_ww]
    e3 += err[3, r, at_ww]
    e4 += err[4, r, at_ww]
    e5 = np.int64(err[5, p, x + 1]) + err[5, r, x] + err[5, p, x] + err[5, p, x + 2] + err[5, r, at_ww]
    e6 = np.int64(err[6, p, x + 1]) + err[6, r, x] + err[6, p, x] + err[6, p, x + 2] + err[6, r, at_ww]
    return te_w, te_n, te_nw, te_ne, e0, e1, e2, e3, e4, e5, e6


@njit(cache=True, nogil=True, inline="always")
def keep_errors(te, err, r, x, pred8, v8, s0, s1, s2, s3, s4, s5, s6, subs):
    """Keep a sample's errors (value ``v8 / 8``) in the ring buffers of version 1's layout, as the
    studies' loops keep them: the prediction's, and those of the first `subs` sub-predictors (3, 5
    or 7; a constant of the calling kernel, so the tests fold away)."""
    te[r, x + 1] = pred8 - v8
    err[0, r, x + 1] = abs(s0 - v8)
    err[1, r, x + 1] = abs(s1 - v8)
    err[2, r, x + 1] = abs(s2 - v8)
    if subs > 3:
        err[3, r, x + 1] = abs(s3 - v8)
        err[4, r, x + 1] = abs(s4 - v8)
    if subs > 5:
        err[5, r, x + 1] = abs(s5 - v8)
        err[6, r, x + 1] = abs(s6 - v8)


def _plane_loop(mode: int, model: int):
    """Context model `model`'s prediction and classes (4 or 2) over a plane, compiled for one
    `mode` and model (numba constants, as the codec compiles its kernels per direction and model):

    * ANALYSE, the encoder's pass: per sample into `fields`, its coarse and fine class, symbol,
      sign class, sign (-1 when not coded) and magnitude;
    * PREDICT: the decoder's loop with each value read from `source` instead of decoded;
    * DECODE: the static decoder;
    * FLAT: the branch-free static decoder (`lookup` holds each slot's packed frequency, start
      and symbol; `data16` the rANS words, `raw32` the raw bits).
    """

    wide = model in (4, LIGHT_WIDE)
    light = model in LIGHTS

    @njit(cache=True, nogil=True)
    def loop(plane, source, maxv, te, err, bm, fields, data, raw, table_of, freq, cum, lookup, sign_freq, firsts,
             data16, raw32):
        rows, cols = plane.shape
        level_shift = max(np.int64(0), bit_length(maxv) - LEVEL_BITS)
        state = np.int64(0)
        pos = 0
        if mode == DECODE:
            for _ in range(4):
                state = (state << 8) | data[pos]
                pos += 1
        elif mode == FLAT:
            state = (np.int64(data16[0]) << 16) | np.int64(data16[1])
            pos = 2
        acc = np.int64(0)
        held = 0
        raw_pos = 0
        seen = np.int64(0)
        met = 0
        i = 0
        for y in range(rows):
            r = y & 1
            p = r ^ 1
            for x in range(cols):
                w, n, nw, ne = neighbours(plane, y, x)
                if wide:
                    nn, ww = far_neighbours(plane, y, x, n, w)
                    te_w, te_n, te_nw, te_ne, e0, e1, e2, e3, e4, e5, e6 = wide_errors(te, err, r, p, x)
                    blend8, s0, s1, s2, s3, s4, s5, s6, activity, lo, hi = blend_wide(
                        n, w, nw, ne, nn, ww, te_w, te_n, te_nw, te_ne, e0, e1, e2, e3, e4, e5, e6)
                else:
                    te_w, te_n, te_nw, te_ne, e0, e1, e2, e3, e4 = errors(te, err, r, p, x)
                    blend8, s0, s1, s2, s3, s4, activity, lo, hi = blend_v2(n, w, nw, ne, te_w, te_n, te_nw, te_ne,
                                                                           e0, e1, e2, e3, e4)
                    s5 = s6 = nn = ww = np.int64(0)
                q = quantise_activity(activity)
                if light:
                    bctx = 0
                    bias = np.int64(0)
                    pred8, pred = blend8, (blend8 + 4) >> 3
                    sign_class = 3 * q + _sign_class(te_w + te_n)
                    coarse = q + N_CLASSES * np.int64(lo == hi)
                    fine = N_COARSE + coarse * LEVEL_CLASSES + (pred >> level_shift)
                else:
                    bctx = bias_context(q, n, w, nw, ne, blend8)
                    if wide:
                        bctx = bias_context_wide(bctx, n, w, nn, ww, blend8)
                    bias = np.int64(bm[bctx])
                    pred8, pred = correct(blend8, bias, lo, hi)
                    sign_class = (FRACTION_CLASSES * (3 * (q >> 1) + _sign_class(te_w + te_n))
                                  + _fraction_class(pred8 - (pred << 3)))
                    grad = abs(n - nw) + abs(w - nw) + abs(ne - n)
                    coarse = quantise_activity(activity - 2 * grad + (grad >> 1)) + N_CLASSES * np.int64(lo == hi)
                    gradient = quantise_activity(grad) // GRADIENT_STEP
                    fine = N_COARSE + (coarse * GRADIENT_CLASSES + gradient) * LEVEL_CLASSES
                    fine += pred >> level_shift
                if mode == ANALYSE:
                    value = np.int64(plane[y, x])
                    mag = abs(value - pred)
                    fields[i, 0] = coarse
                    fields[i, 1] = fine
                    fields[i, 2] = 0 if mag == 0 else token_of(mag - 1)[0] + 1
                    fields[i, 3] = sign_class
                    fields[i, 4] = np.int64(value < pred) if mag != 0 and mag <= pred and mag <= maxv - pred else -1
                    fields[i, 5] = mag
                    i += 1
                elif mode == PREDICT:
                    seen += table_of[fine] + sign_class
                    value = np.int64(source[y, x])
                    plane[y, x] = value
                elif mode == FLAT:
                    # The same static tables without a data-dependent branch: one look-up gives the
                    # symbol, its frequency and its start; 16-bit renormalisation needs at most one
                    # word; the raw bits come from a 64-bit window; the sign is always decoded, at
                    # frequency ONE (which leaves the state as it is) where it is not coded.
                    t = table_of[fine]
                    if t < 0:  # a class met for the first time (rare: the branch is predicted)
                        t = firsts[met]
                        met += 1
                        table_of[fine] = t
                    slot = state & (ONE - 1)
                    entry = lookup[t, slot]
                    s = entry & 0xFF
                    state = (entry >> 20) * (state >> PREC) + ((entry >> 8) & (ONE - 1))
                    need = np.int64(state < LOW16)
                    state = (state << (need << 4)) | (np.int64(data16[pos]) & -need)
                    pos += need
                    k = raw_pos >> 5
                    window = (np.int64(raw32[k + 1]) << 32) | np.int64(raw32[k])
                    mag = np.int64(FLAT_BASE[s]) + ((window >> (raw_pos & 31)) & ((1 << FLAT_RAW[s]) - 1))
                    raw_pos += FLAT_RAW[s]
                    negative_ok = np.int64(mag <= pred)
                    coded = np.int64(mag != 0) & negative_ok & np.int64(mag <= maxv - pred)
                    f0 = sign_freq[sign_class, 0] + ((ONE - sign_freq[sign_class, 0]) & -(coded ^ 1))
                    slot = state & (ONE - 1)
                    negative = np.int64(slot >= f0)
                    state = ((f0 + (sign_freq[sign_class, 1] - f0) * negative) * (state >> PREC) + slot
                             - (f0 & -negative))
                    need = np.int64(state < LOW16)
                    state = (state << (need << 4)) | (np.int64(data16[pos]) & -need)
                    pos += need
                    negative = negative | (negative_ok & (coded ^ 1))
                    value = pred + (mag ^ -negative) + negative
                    plane[y, x] = value
                else:
                    t = table_of[fine]
                    if t < 0:  # a class met for the first time: its table is the next one `firsts` names
                        t = firsts[met]
                        met += 1
                        table_of[fine] = t
                    slot = state & (ONE - 1)
                    s = np.int64(lookup[t, slot])
                    state = freq[t, s] * (state >> PREC) + slot - cum[t, s]
                    while state < LOW:
                        state = (state << 8) | data[pos]
                        pos += 1
                    value = pred
                    if s > 0:
                        mag, nraw = token_base(s - 1)
                        if nraw > 0:
                            while held < nraw:
                                acc = ((acc << 8) | raw[raw_pos]) & 0xFFFFFFFFFFFF
                                raw_pos += 1
                                held += 8
                            held -= nraw
                            mag += (acc >> held) & ((1 << nraw) - 1)
                        mag += 1
                        negative_ok = mag <= pred
                        positive_ok = mag <= maxv - pred
                        if negative_ok and positive_ok:
                            slot = state & (ONE - 1)
                            f0 = sign_freq[sign_class, 0]
                            negative = slot >= f0
                            if negative:
                                state = sign_freq[sign_class, 1] * (state >> PREC) + slot - f0
                            else:
                                state = f0 * (state >> PREC) + slot
                            while state < LOW:
                                state = (state << 8) | data[pos]
                                pos += 1
                        else:
                            negative = negative_ok
                        value = pred - mag if negative else pred + mag
                    plane[y, x] = value
                v8 = value << 3
                keep_errors(te, err, r, x, pred8, v8, s0, s1, s2, s3, s4, s5, s6, 7 if wide else 5)
                if not light:
                    bm[bctx] = bias_update(bias, v8, blend8)
        return seen

    return loop


_LOOPS = {model: [_plane_loop(mode, model) for mode in (ANALYSE, PREDICT, DECODE, FLAT)] for model in MODELS}


@njit(cache=True, nogil=True)
def _rans_encode(fields, table_of, freq, cum, sign_freq, out, low, word_bits):
    """rANS, last sample first (the decoder reads first sample first), the state in [low, 2**32)
    and renormalised in words of `word_bits` (8: bytes, at most two a symbol; 16: at most one, as
    the branch-free decoder reads them); returns where the words start in `out`."""
    state = np.int64(low)
    pos = out.shape[0]
    mask = (1 << word_bits) - 1
    for i in range(fields.shape[0] - 1, -1, -1):
        for part in range(2):
            if part == 0:
                if fields[i, 4] < 0:
                    continue
                c, s = fields[i, 3], fields[i, 4]
                f = sign_freq[c, s]
                start = 0 if s == 0 else sign_freq[c, 0]
            else:
                t, s = table_of[fields[i, 1]], fields[i, 2]
                f = freq[t, s]
                start = cum[t, s]
            limit = ((low >> PREC) << word_bits) * f
            while state >= limit:
                pos -= 1
                out[pos] = state & mask
                state >>= word_bits
            state = ((state // f) << PREC) + state % f + start
    for _ in range(32 // word_bits):
        pos -= 1
        out[pos] = state & mask
        state >>= word_bits
    return pos


@njit(cache=True, nogil=True)
def _raw_write(fields, out):
    """The raw low bits of every magnitude, first sample first, high bit first; returns the byte count."""
    acc = np.int64(0)
    held = 0
    pos = 0
    for i in range(fields.shape[0]):
        if fields[i, 2] > 0:
            nraw = token_base(fields[i, 2] - 1)[1]
            if nraw > 0:
                acc = ((acc << nraw) | ((fields[i, 5] - 1) & ((1 << nraw) - 1))) & 0xFFFFFFFFFFFF
                held += nraw
                while held >= 8:
                    held -= 8
                    out[pos] = (acc >> held) & 0xFF
                    pos += 1
    if held > 0:
        out[pos] = (acc << (8 - held)) & 0xFF
        pos += 1
    return pos


@njit(cache=True, nogil=True)
def _raw_write32(fields, out):
    """The raw low bits of every magnitude, first sample first, low bit first, into 32-bit words."""
    at = 0
    for i in range(fields.shape[0]):
        if fields[i, 2] > 0:
            nraw = token_base(fields[i, 2] - 1)[1]
            if nraw > 0:
                bits = (fields[i, 5] - 1) & ((1 << nraw) - 1)
                out[at >> 5] |= (bits << (at & 31)) & 0xFFFFFFFF
                if (at & 31) + nraw > 32:
                    out[(at >> 5) + 1] |= bits >> (32 - (at & 31))
                at += nraw
    return (at + 7) >> 3


def _entropy(counts: np.ndarray) -> float:
    counts = counts[counts > 0].astype(np.float64)
    return float(-(counts * np.log2(counts / counts.sum())).sum()) if counts.size else 0.0


def _table_cost(counts: np.ndarray) -> float:
    return _entropy(counts) + TABLE_BITS + SYMBOL_BITS * int((counts > 0).sum())


def _normalised(counts: np.ndarray) -> np.ndarray:
    """Frequencies summing to ONE, every counted symbol at least 1."""
    freq = np.zeros(len(counts), np.int64)
    used = counts > 0
    if not used.any():
        freq[0] = ONE
        return freq
    freq[used] = np.maximum(1, np.round(counts[used] * ONE / counts.sum())).astype(np.int64)
    freq[np.argmax(freq)] += ONE - freq.sum()
    return freq


def _split_tables(fields: np.ndarray, per_coarse: int) -> tuple[np.ndarray, list, int]:
    """Per coarse class its own table or one per fine class (`per_coarse` of them), whichever costs
    fewer bits: (table of each fine class, the tables' counts, bits of the map from classes to tables)."""
    coarse, fine, symbol = fields[:, 0], fields[:, 1], fields[:, 2]
    table_of = np.zeros(N_FINE, np.int64)
    counts = []
    map_bits = N_COARSE  # a bit per coarse class (split or not), and per fine class of a split one (seen or not)
    for c in np.unique(coarse):
        chosen = coarse == c
        whole = np.bincount(symbol[chosen], minlength=N_SYMBOLS)
        classes = np.unique(fine[chosen])
        split = [np.bincount(symbol[chosen & (fine == f)], minlength=N_SYMBOLS) for f in classes]
        if sum(map(_table_cost, split)) < _table_cost(whole):
            map_bits += per_coarse
            for f, row in zip(classes, split):
                table_of[f] = len(counts)
                counts.append(row)
        else:
            table_of[classes] = len(counts)
            counts.append(whole)
    return table_of, counts, map_bits


def _clustered_tables(fields: np.ndarray) -> tuple[np.ndarray, list, int]:
    """The fine classes clustered as JPEG-XL's modular mode clusters its contexts: in the order of
    their mean symbol, the neighbouring pair whose merge saves the most bits is merged, until no
    merge saves any.  The map names the cluster of each class the image meets, in the order the
    classes first come (the decoder reads the next one the first time it meets a class), a
    cluster number each."""
    fine, symbol = fields[:, 1].astype(np.int64), fields[:, 2].astype(np.int64)
    per_class = np.bincount(fine * N_SYMBOLS + symbol, minlength=N_FINE * N_SYMBOLS).reshape(N_FINE, N_SYMBOLS)
    seen = np.flatnonzero(per_class.sum(axis=1))
    order = np.argsort([(per_class[f] * np.arange(N_SYMBOLS)).sum() / per_class[f].sum() for f in seen], kind="stable")
    members = [[int(seen[i])] for i in order]
    rows = [per_class[seen[i]].copy() for i in order]
    costs = [_table_cost(row) for row in rows]

    def gain(i: int) -> float:
        return costs[i] + costs[i + 1] - _table_cost(rows[i] + rows[i + 1])

    gains = [gain(i) for i in range(len(rows) - 1)]
    while gains and max(gains) > 0:
        i = int(np.argmax(gains))
        rows[i] = rows[i] + rows.pop(i + 1)
        members[i] += members.pop(i + 1)
        costs.pop(i + 1)
        costs[i] = _table_cost(rows[i])
        gains.pop(i)
        if i < len(gains):
            gains[i] = gain(i)
        if i > 0:
            gains[i - 1] = gain(i - 1)
    table_of = np.zeros(N_FINE, np.int64)
    for cluster, classes in enumerate(members):
        table_of[classes] = cluster
    return table_of, rows, len(seen) * max(1, (len(rows) - 1).bit_length())


def _tables(fields: np.ndarray, model: int, clustered: bool = False):
    """The static tables of a plane coded with `model`'s classes (:func:`_split_tables` or
    :func:`_clustered_tables`), the sign tables, and the estimated bytes of their description."""
    if clustered:
        table_of, counts, map_bits = _clustered_tables(fields)
    else:
        table_of, counts, map_bits = _split_tables(fields, LEVEL_CLASSES if model in LIGHTS else
                                                   GRADIENT_CLASSES * LEVEL_CLASSES)
    freq = np.array([_normalised(row) for row in counts], np.int64)
    cum = np.zeros_like(freq)
    cum[:, 1:] = np.cumsum(freq, axis=1)[:, :-1]
    lookup = np.array([np.repeat(np.arange(N_SYMBOLS), row) for row in freq], np.uint8)
    coded = fields[:, 4] >= 0
    signs = np.zeros((N_SIGN_CLASSES, 2), np.int64)
    np.add.at(signs, (fields[coded, 3], fields[coded, 4]), 1)
    sign_freq = np.array([_normalised(row) if row.sum() else np.array([ONE // 2, ONE // 2]) for row in signs])
    sign_freq[:, 0] = np.clip(sign_freq[:, 0], 1, ONE - 1)
    sign_freq[:, 1] = ONE - sign_freq[:, 0]
    side_bits = (TABLE_BITS * len(freq) + SYMBOL_BITS * int((freq > 0).sum())
                 + SIGN_TABLE_BITS * int((signs.sum(axis=1) > 0).sum()) + map_bits)
    return table_of, freq, cum, lookup, sign_freq, (side_bits + 7) // 8


WARM = (np.arange(32 * 32, dtype=np.int32).reshape(32, 32) * 7) % 251  # a plane to compile on, outside the timing


def grey_planes(folders):
    """(folder, plane, maximum) of the first frame of every grey corpus image in `folders` (all
    when empty) with more than one value, minus its smallest value."""
    for item in load_corpus(folders=folders):
        if item.info.samples_per_pixel != 1:
            continue
        plane = item.frames[0].astype(np.int64)
        plane = (plane - plane.min()).astype(np.int32)
        if plane.max() > 0:
            yield item.folder, plane, int(plane.max())


def _best(function, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        function()
        best = min(best, time.process_time() - start)
    return best


def _adaptive(plane: np.ndarray, maxv: int, model: int, repeat: int) -> tuple[int, float, float]:
    """Version 2's kernels of context `model` on the plane: (bytes, encoding seconds, decoding seconds)."""
    coded = []

    def encode():
        tables, bins = private._model_state(model)
        te, err, bm = planes2.new_plane_state(plane.shape[1], model)
        buf = np.empty(plane.size * 3 + 1024, np.uint8)
        st, buf = planes2.encode_plane(rc.enc_start(), buf, plane, maxv, tables, bins, te, err, bm, NO_KEEP, NO_KEEP,
                                       model)
        buf, size = rc.enc_finish(st, buf)
        coded[:] = [buf[:size].copy()]

    encode_s = _best(encode, repeat)
    data = coded[0]
    out = np.zeros_like(plane)

    def decode():
        tables, bins = private._model_state(model)
        te, err, bm = planes2.new_plane_state(plane.shape[1], model)
        planes2.decode_plane(rc.dec_start(data, 0), data, out, maxv, tables, bins, te, err, bm, NO_KEEP, NO_KEEP,
                             model)

    decode_s = _best(decode, repeat)
    assert np.array_equal(out, plane)
    return data.size, encode_s, decode_s


def _static(plane: np.ndarray, maxv: int, model: int, repeat: int) -> tuple:
    """The static design with context `model`'s prediction and classes: (bytes, of which the
    tables' estimate, bytes with clustered tables, bytes of the branch-free coding, encoding seconds
    but for the tables, decoding seconds, branch-free decoding seconds, prediction-only seconds)."""
    analyse, predict, decode, flat = _LOOPS[model]

    def state():
        wide = model in (4, 5, LIGHT_WIDE)
        return new_state(plane.shape[1], N_SUB_WIDE if wide else N_SUB, N_BIAS_WIDE if wide else N_BIAS)

    fields = np.empty((plane.size, 6), np.int32)
    bytes_, table, lookup = np.empty(0, np.uint8), np.empty((0, 0), np.int64), np.empty((0, 0), np.uint8)
    no16, no32 = np.empty(0, np.uint16), np.empty(0, np.uint32)
    analyse_s = _best(lambda: analyse(plane, plane, maxv, *state(), fields, bytes_, bytes_, np.empty(0, np.int64),
                                      table, table, lookup, table, NO_FIRSTS, no16, no32), repeat)
    table_of, freq, cum, lookup, sign_freq, side = _tables(fields, model)
    out = np.empty(plane.size * 4 + 64, np.uint8)
    raw = np.zeros(plane.size * 3 + 16, np.uint8)
    start = raw_bytes = 0

    def code():
        nonlocal start, raw_bytes
        start = _rans_encode(fields, table_of, freq, cum, sign_freq, out, LOW, 8)
        raw_bytes = _raw_write(fields, raw)

    code_s = _best(code, repeat)
    data = out[start:].copy()
    decoded = np.zeros_like(plane)
    seconds = _best(lambda: decode(decoded, plane, maxv, *state(), fields, data, raw, table_of, freq, cum, lookup,
                                   sign_freq, NO_FIRSTS, no16, no32), repeat)
    if not np.array_equal(decoded, plane):
        raise AssertionError("static round trip differs")
    floor = _best(lambda: predict(decoded, plane, maxv, *state(), fields, data, raw, table_of, freq, cum, lookup,
                                  sign_freq, NO_FIRSTS, no16, no32), repeat)
    table_of, freq, cum, lookup, sign_freq, clustered_side = _tables(fields, model, clustered=True)
    clustered = out[_rans_encode(fields, table_of, freq, cum, sign_freq, out, LOW, 8):].copy()
    classes, first = np.unique(fields[:, 1], return_index=True)
    firsts = table_of[classes[np.argsort(first)]]  # the map: each class's table, in the order the classes come
    decoded[:] = 0
    decode(decoded, plane, maxv, *state(), fields, clustered, raw, np.full(N_FINE, -1, np.int64), freq, cum, lookup,
           sign_freq, firsts, no16, no32)
    if not np.array_equal(decoded, plane):
        raise AssertionError("static round trip with clustered tables differs")
    # The branch-free coding of the clustered tables: 16-bit rANS words (padded: the decoder reads
    # one word ahead), raw bits low bit first in 32-bit words, one packed entry per slot.
    words = np.zeros(plane.size * 4 + 64, np.uint16)
    at = _rans_encode(fields, table_of, freq, cum, sign_freq, words, LOW16, 16)
    data16 = np.concatenate([words[at:], np.zeros(2, np.uint16)])
    raw32 = np.zeros(plane.size + 4, np.uint32)
    flat_raw = _raw_write32(fields, raw32)
    packed = np.zeros((len(freq), ONE), np.int64)
    for t, row in enumerate(freq):
        symbols = np.repeat(np.arange(N_SYMBOLS), row)
        packed[t] = (row[symbols] << 20) | ((np.arange(ONE) - cum[t, symbols]) << 8) | symbols
    flat_s = _best(lambda: flat(decoded, plane, maxv, *state(), fields, bytes_, bytes_, np.full(N_FINE, -1, np.int64),
                                table, table, packed, sign_freq, firsts, data16, raw32), repeat)
    if not np.array_equal(decoded, plane):
        raise AssertionError("branch-free static round trip differs")
    return (len(data) + raw_bytes + side, side, len(clustered) + raw_bytes + clustered_side,
            2 * (len(data16) - 2) + flat_raw + clustered_side, analyse_s + code_s, seconds, flat_s, floor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folders", nargs="*", default=())
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    totals: dict[tuple[int, str], list[float]] = defaultdict(lambda: [0] * 13)
    images: list[dict] = []
    for model in MODELS:
        if model not in LIGHTS:
            _adaptive(WARM, 250, model, 1)
        _static(WARM, 250, model, 1)
    for folder, plane, maxv in grey_planes(args.folders):
        adaptive_runs = {}
        image = {"folder": folder, "samples": plane.size}
        images.append(image)
        for model in MODELS:
            # The light prediction has no adaptive kernels: its adaptive columns are model 4's.
            reference = 4 if model in LIGHTS else model
            if reference not in adaptive_runs:
                adaptive_runs[reference] = _adaptive(plane, maxv, reference, args.repeat)
            adaptive, adaptive_enc, adaptive_dec = adaptive_runs[reference]
            static, tables, clustered, flat, static_enc, static_dec, flat_dec, floor = _static(plane, maxv, model,
                                                                                               args.repeat)
            image["adaptive"] = adaptive_runs[4][0]
            image[model] = (clustered, static_enc, static_dec)
            for key in ((model, folder), (model, "ALL")):
                row = totals[key]
                for i, value in enumerate((1, plane.size, adaptive, static, tables, clustered, flat, adaptive_enc,
                                           static_enc, adaptive_dec, static_dec, flat_dec, floor)):
                    row[i] += value
    print("| model | folder | planes | adaptive bytes | static bytes | static vs adaptive | of which tables "
          "| clustered tables vs adaptive | branch-free vs adaptive | encode ns a sample: adaptive | static "
          "| decode ns a sample: adaptive | static | branch-free | prediction alone |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model, folder in sorted(totals, key=lambda k: (k[1] == "ALL", k[1], -k[0])):
        n, samples, a, s, tables, clustered, flat, *seconds = totals[model, folder]
        times = " | ".join(f"{1e9 * t / samples:.1f}" for t in seconds)
        label = {LIGHT: "light, 5", LIGHT_WIDE: "light, 7"}.get(model, model)
        print(f"| {label} | {folder} | {n} | {a} | {s} | {100 * (s / a - 1):+.2f} % | {100 * tables / a:.2f} % "
              f"| {100 * (clustered / a - 1):+.2f} % | {100 * (flat / a - 1):+.2f} % | {times} |")
    _print_choices(images)


CHOICE_LIMITS = (0.005, 0.01, 0.02, 0.03, 0.05)


def _print_choices(images: list[dict]) -> None:
    """Image by image the fastest of `light, 5`, `light, 7` and model 4 (static, clustered) whose size
    is within a limit of model 4's: what such a choice would reach, the sizes known as if the
    encoder had coded each candidate (the time of choosing not counted)."""
    order = [model for model in (LIGHT, LIGHT_WIDE, 4) if all(model in image for image in images)]
    if 4 not in order:
        return
    names = {LIGHT: "light, 5", LIGHT_WIDE: "light, 7", 4: "model 4"}
    print()
    print("| within | " + " | ".join(f"samples {names[m]}" for m in order)
          + " | size vs model 4 adaptive | largest loss of a folder | encode ns a sample | decode ns a sample |")
    print("|---:|" + "---:|" * (len(order) + 4))
    for limit in CHOICE_LIMITS:
        shares = dict.fromkeys(order, 0)
        size = adaptive = encode = decode = samples = 0.0
        by_folder: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for image in images:
            model = next(m for m in order if image[m][0] <= (1 + limit) * image[4][0])
            coded, encode_s, decode_s = image[model]
            shares[model] += image["samples"]
            size += coded
            adaptive += image["adaptive"]
            encode += encode_s
            decode += decode_s
            samples += image["samples"]
            by_folder[image["folder"]][0] += coded
            by_folder[image["folder"]][1] += image["adaptive"]
        worst = max(by_folder, key=lambda f: by_folder[f][0] / by_folder[f][1])
        loss = by_folder[worst][0] / by_folder[worst][1] - 1
        print(f"| {100 * limit:.1f} % | " + " | ".join(f"{100 * shares[m] / samples:.0f} %" for m in order)
              + f" | {100 * (size / adaptive - 1):+.2f} % | {worst} {100 * loss:+.2f} % "
              f"| {1e9 * encode / samples:.1f} | {1e9 * decode / samples:.1f} |")


if __name__ == "__main__":
    main()
