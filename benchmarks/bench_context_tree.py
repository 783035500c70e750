"""Design study: a context tree chosen by the encoder per image, against version 2's fixed classes.

Version 2 codes a residual's zero flag and token in fixed classes: a *coarse*
class (the part of the activity that comes from the neighbours' prediction
errors, flat neighbourhoods apart) mixed with a *fine* class that splits it
by the local gradient and the signal level (docs/private-codec.md 9.3).
JPEG-XL's modular mode lets the encoder choose the contexts per image: a
decision tree over local properties, sent in the header, whose leaves are the
contexts.  This study measures what such a tree would buy on top of context
model 7's prediction, which it keeps as it is (the prediction does not depend
on the coding contexts, so an encoder can predict first and choose after).

Per image (the first frame of every grey image, minus its smallest value;
the samples outside flat neighbourhoods, ``W = N = NE``, which model 7 codes
with its flat flag first):

1. context model 7's prediction (seven sub-predictors, gated bias
   correction) gives each sample its *symbol* (0 for a zero residual, else 1
   + the token of ``|r| - 1``), its coarse and fine class, and the
   properties a tree may ask about (:data:`PROPERTIES`);
2. the tree is grown greedily from one leaf, on every sample or on every
   k-th for large images (``--learn``): each leaf's best split is the property and
   threshold that lower the empirical entropy of its symbols most, and the
   leaf with the largest gain is split, while the gain exceeds the cost of
   a new table (bench_static_coding.py's estimate: 8 bits, and 5 bits a used
   symbol, times ``--penalty``) and up to ``--leaves`` leaves;
3. the symbols are then coded, *as version 2 codes tokens* (adaptive
   frequency tables, :data:`INCREMENT` added to a coded symbol, halved past
   :data:`TOTAL_LIMIT`; mixed: the sum of two tables' frequencies), in:

   * ``fine + coarse``: version 2's classes (the fine class mixed with its coarse
     class), the baseline;
   * ``coarse``: the coarse classes alone;
   * ``tree``: a table per leaf;
   * ``tree + coarse``: a leaf's table mixed with the coarse class's;
   * ``tree + parent``: a leaf's table mixed with its parent node's (which
     learns from both its children's samples).

   The size is the ideal adaptive cost, the sum of ``-log2(freq / total)``;
   a tree's description (11 bits a node) is added.  The raw low bits and the
   signs are the same in every coding and left out, so the change is that of
   the zero flags and tokens; the last column gives it against all the
   image's bits (raw bits and ideal signs in version 2's sign classes
   included);
4. the time of finding each sample's leaf, as a decoder would with the
   sample's properties at hand (best of three, processor time): by walking
   the tree from its root, or (``--table``, the tree then asking only about
   the coarse class, the fine class's gradient and level, and the errors at
   W and N up to 7) by one look-up in a table over those properties' values,
   made from the tree.

    python benchmarks/bench_context_tree.py [--folders CT MR | --images DIR ... [--unseen]]
        [--leaves N] [--penalty X] [--learn N] [--properties K ... | --table]
"""

from __future__ import annotations

import argparse
import functools
import heapq
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_prediction_cost import _entropy_bits, _image_planes  # noqa: E402
from benchmarks.bench_static_coding import WARM, grey_planes, keep_errors, wide_errors  # noqa: E402
from gateway.codecs._private_planes2 import (  # noqa: E402
    FRACTION_CLASSES, GATE_SHIFT, GRADIENT_CLASSES, GRADIENT_STEP, LEVEL_BITS, LEVEL_CLASSES,
    _fraction_class, _sign_class)
from gateway.codecs._private_predict import (  # noqa: E402
    N_BIAS_WIDE, N_CLASSES, N_SUB_WIDE, bias_context, bias_context_wide, bias_update, bit_length, blend_wide,
    correct, far_neighbours, neighbours, new_state, quantise_activity)
from gateway.codecs._private_symbols import INCREMENT, N_TOKENS, TOTAL_LIMIT, token_of  # noqa: E402

N_SYMBOLS = N_TOKENS + 1
TABLE_BITS, SYMBOL_BITS = 8, 5  # bench_static_coding.py's estimate of a table's description
NODE_BITS = 11  # a tree node: leaf or not, property (5 bits), threshold (5 bits)
# The properties a tree may ask about (each a small integer, compared with a threshold).
PROPERTIES = (
    "coarse class",  # version 2's coarse class (flat neighbourhoods apart)
    "activity",  # the activity class q
    "gradient",  # class of |N - NW| + |W - NW| + |NE - N|
    "level",  # sixteenth of the plane's power-of-two range the prediction lies in
    "|err W|",  # bit length of the blend's error at W (in eighths)
    "|err N|",
    "|err NW| + |err NE|",
    "sign of err W + err N",
    "|W - NW|",  # bit lengths of the neighbours' differences
    "|N - NW|",
    "|NE - N|",
    "|N - NN|",
    "|W - WW|",
    "max - min of W, N, NE",
    "fraction",  # where the prediction lies between two integers (version 2's five classes)
    "column",  # sixteenth of the width
    "row",  # sixteenth of the height
)
N_ASKED = len(PROPERTIES)  # the properties a tree asks about unless told otherwise
# Coarser forms of some of them, whose product with the coarse class is small enough for a table
# that gives a sample's leaf in one look-up (``--table``): the fine class's gradient and level, and
# the errors at W and N up to TABLE_ERRORS - 1.
TABLE_ERRORS = 8
PROPERTIES += ("gradient / 3", "level / 4", "|err W| to 7", "|err N| to 7")
N_PROPERTIES = len(PROPERTIES)
TABLE_PROPERTIES = (0, N_ASKED, N_ASKED + 1, N_ASKED + 2, N_ASKED + 3)
TABLE_SIZES = (2 * N_CLASSES, GRADIENT_CLASSES, LEVEL_CLASSES, TABLE_ERRORS, TABLE_ERRORS)
CAP = 31  # bit lengths above it are counted as it (a threshold takes 5 bits)
F_SYMBOL, F_COARSE, F_FINE, F_SIGN_CLASS, F_SIGN, F_RAW, F_FLAT = range(7)


@njit(cache=True, nogil=True)
def _analyse(plane, maxv, te, err, bm, fields, props):
    """Context model 7's prediction over `plane`; each sample's symbol, classes, sign and raw bit
    count to `fields`, its properties to `props` (the values are read from the plane, as a decoder
    has them; the coarser forms after the first N_ASKED are left to :func:`_coarser`)."""
    rows, cols = plane.shape
    gates = np.zeros(bm.shape[0], np.int64)
    level_shift = max(np.int64(0), bit_length(maxv) - LEVEL_BITS)
    fine_shift = max(np.int64(0), bit_length(maxv) - 4)
    i = 0
    for y in range(rows):
        r = y & 1
        p = r ^ 1
        for x in range(cols):
            w, n, nw, ne = neighbours(plane, y, x)
            nn, ww = far_neighbours(plane, y, x, n, w)
            te_w, te_n, te_nw, te_ne, e0, e1, e2, e3, e4, e5, e6 = wide_errors(te, err, r, p, x)
            blend8, s0, s1, s2, s3, s4, s5, s6, activity, lo, hi = blend_wide(
                n, w, nw, ne, nn, ww, te_w, te_n, te_nw, te_ne, e0, e1, e2, e3, e4, e5, e6)
            q = quantise_activity(activity)
            bctx = bias_context_wide(bias_context(q, n, w, nw, ne, blend8), n, w, nn, ww, blend8)
            bias = np.int64(bm[bctx])
            pred8, pred = correct(blend8, bias, lo, hi)
            corrected8 = pred8
            if gates[bctx] < 0:
                pred8, pred = blend8, (blend8 + 4) >> 3
            fraction = _fraction_class(pred8 - (pred << 3))
            sign_class = FRACTION_CLASSES * (3 * (q >> 1) + _sign_class(te_w + te_n)) + fraction
            grad = abs(n - nw) + abs(w - nw) + abs(ne - n)
            coarse = quantise_activity(activity - 2 * grad + (grad >> 1)) + N_CLASSES * np.int64(lo == hi)
            gradient = quantise_activity(grad)
            fine = (coarse * GRADIENT_CLASSES + gradient // GRADIENT_STEP) * LEVEL_CLASSES + (pred >> level_shift)
            value = np.int64(plane[y, x])
            mag = abs(value - pred)
            token, nraw = token_of(mag - 1) if mag else (np.int64(-1), np.int64(0))
            fields[i, F_SYMBOL] = token + 1
            fields[i, F_COARSE] = coarse
            fields[i, F_FINE] = fine
            fields[i, F_SIGN_CLASS] = sign_class
            fields[i, F_SIGN] = np.int64(value < pred) if mag != 0 and mag <= pred and mag <= maxv - pred else -1
            fields[i, F_RAW] = nraw
            fields[i, F_FLAT] = np.int64(w == n) & np.int64(n == ne)
            props[i, 0] = coarse
            props[i, 1] = q
            props[i, 2] = gradient
            props[i, 3] = pred >> fine_shift
            props[i, 4] = min(bit_length(abs(te_w)), CAP)
            props[i, 5] = min(bit_length(abs(te_n)), CAP)
            props[i, 6] = min(bit_length(abs(te_nw) + abs(te_ne)), CAP)
            props[i, 7] = _sign_class(te_w + te_n)
            props[i, 8] = min(bit_length(abs(w - nw)), CAP)
            props[i, 9] = min(bit_length(abs(n - nw)), CAP)
            props[i, 10] = min(bit_length(abs(ne - n)), CAP)
            props[i, 11] = min(bit_length(abs(n - nn)), CAP)
            props[i, 12] = min(bit_length(abs(w - ww)), CAP)
            props[i, 13] = min(bit_length(hi - lo), CAP)
            props[i, 14] = fraction
            props[i, 15] = (x * 16) // cols
            props[i, 16] = (y * 16) // rows
            i += 1
            v8 = value << 3
            keep_errors(te, err, r, x, pred8, v8, s0, s1, s2, s3, s4, s5, s6, 7)
            gates[bctx] += abs(blend8 - v8) - abs(corrected8 - v8) - (gates[bctx] >> GATE_SHIFT)
            bm[bctx] = bias_update(bias, v8, blend8)


@njit(cache=True, nogil=True)
def _adaptive_bits(symbols, ctx, other, n_ctx, n_other):
    """Ideal cost in bits of coding `symbols` as version 2 codes tokens: with the table of `ctx`,
    mixed with that of `other` when `n_other` > 0 (frequencies and totals summed); both adapt."""
    tables = np.ones((n_ctx + max(n_other, 1), N_SYMBOLS + 1), np.int64)
    tables[:, N_SYMBOLS] = N_SYMBOLS
    bits = 0.0
    for i in range(symbols.shape[0]):
        s = symbols[i]
        c = ctx[i]
        if n_other > 0:
            d = n_ctx + other[i]
            bits -= np.log2((tables[c, s] + tables[d, s]) / (tables[c, N_SYMBOLS] + tables[d, N_SYMBOLS]))
        else:
            d = -1
            bits -= np.log2(tables[c, s] / tables[c, N_SYMBOLS])
        for t in (c, d):
            if t < 0:
                continue
            tables[t, s] += INCREMENT
            total = tables[t, N_SYMBOLS] + INCREMENT
            if total > TOTAL_LIMIT:
                total = 0
                for k in range(N_SYMBOLS):
                    tables[t, k] = (tables[t, k] + 1) >> 1
                    total += tables[t, k]
            tables[t, N_SYMBOLS] = total
    return bits


def _xlogx(counts: np.ndarray) -> np.ndarray:
    """Sum of c * log2(c) over the last axis."""
    c = counts.astype(np.float64)
    return (c * np.log2(np.where(c > 0, c, 1.0))).sum(axis=-1)


def _cost(counts: np.ndarray) -> np.ndarray:
    """Static entropy in bits of histograms (last axis the symbols)."""
    n = counts.sum(axis=-1).astype(np.float64)
    return n * np.log2(np.where(n > 0, n, 1.0)) - _xlogx(counts)


def _table_bits(counts: np.ndarray) -> np.ndarray:
    return TABLE_BITS + SYMBOL_BITS * (counts > 0).sum(axis=-1)


def _best_split(props: np.ndarray, symbols: np.ndarray, index: np.ndarray, scale: float, penalty: float,
                limits: np.ndarray, allowed):
    """(gain in bits net of the new table, property, threshold) of the best split of the samples
    `index` (``props[:, k] <= threshold`` to the left), their entropies counted `scale` times (the
    samples each one taken stands for); gain <= 0 when no split pays."""
    sym = symbols[index]
    whole = np.bincount(sym, minlength=N_SYMBOLS)
    base = scale * _cost(whole) + penalty * _table_bits(whole)
    best = (0.0, -1, -1)
    for k in allowed:
        values = props[index, k]
        v = int(limits[k])
        if v < 2:
            continue
        hist = np.bincount(values * N_SYMBOLS + sym, minlength=v * N_SYMBOLS).reshape(v, N_SYMBOLS)
        left = np.cumsum(hist, axis=0)[:-1]
        right = whole - left
        used = (left.sum(axis=1) > 0) & (right.sum(axis=1) > 0)
        if not used.any():
            continue
        cost = scale * (_cost(left) + _cost(right)) + penalty * (_table_bits(left) + _table_bits(right))
        gains = np.where(used, base - cost, -np.inf)
        t = int(np.argmax(gains))
        if gains[t] > best[0]:
            best = (float(gains[t]), k, t)
    return best


def grow_tree(props: np.ndarray, symbols: np.ndarray, leaves: int, penalty: float, learn: int,
              allowed=range(N_ASKED)):
    """The tree greedily grown on the samples (every k-th, for at most `learn`), asking only about the
    `allowed` properties: a list of nodes, each ``[property, threshold, left, right, parent]``
    (property -1 for a leaf)."""
    n = symbols.shape[0]
    step = max(1, -(-n // learn))
    index = np.arange(0, n, step)
    scale = n / index.shape[0]
    limits = props.max(axis=0).astype(np.int64) + 1
    props = props.astype(np.int64)
    symbols = symbols.astype(np.int64)
    nodes = [[-1, -1, -1, -1, -1]]
    heap = []
    gain, k, t = _best_split(props, symbols, index, scale, penalty, limits, allowed)
    if gain > 0:
        heap.append((-gain, 0, k, t, index))
    count = 1
    while heap and count < leaves:
        _, node, k, t, idx = heapq.heappop(heap)
        goes_left = props[idx, k] <= t
        nodes[node][:2] = [k, t]
        for side, part in ((2, idx[goes_left]), (3, idx[~goes_left])):
            nodes[node][side] = len(nodes)
            nodes.append([-1, -1, -1, -1, node])
            g, kk, tt = _best_split(props, symbols, part, scale, penalty, limits, allowed)
            if g > 0:
                heapq.heappush(heap, (-g, nodes[node][side], kk, tt, part))
        count += 1
    return nodes


def leaves_of(nodes, props: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(leaf number of each sample, its parent's number among the inner nodes, inner nodes)."""
    node = np.zeros(props.shape[0], np.int64)
    for i, (k, t, left, right, _) in enumerate(nodes):
        if k >= 0:
            here = node == i
            node[here] = np.where(props[here, k] <= t, left, right)
    is_leaf = np.array([nd[0] < 0 for nd in nodes])
    leaf_number = np.cumsum(is_leaf) - 1
    inner_number = np.cumsum(~is_leaf) - 1
    parents = np.array([nd[4] for nd in nodes])
    parent = parents[node]
    return leaf_number[node], np.where(parent >= 0, inner_number[np.maximum(parent, 0)], 0), int((~is_leaf).sum())


@njit(cache=True, nogil=True)
def _walk(nodes, props, leaf):
    """Each sample's leaf, found by walking the tree from its root (as a decoder would, its
    properties at hand); returns the number of inner nodes visited."""
    visited = 0
    for i in range(props.shape[0]):
        node = 0
        k = nodes[0, 0]
        while k >= 0:  # a node's right child follows its left one: no branch on the comparison
            node = nodes[node, 2] + np.int64(props[i, k] > nodes[node, 1])
            k = nodes[node, 0]
            visited += 1
        leaf[i] = node
    return visited


def walk_time(nodes, props: np.ndarray, repeat: int = 3) -> tuple[float, int, np.ndarray]:
    """(best seconds of finding every sample's leaf, nodes visited, each sample's leaf node)."""
    table = np.array([nd[:4] for nd in nodes], np.int64)
    leaf = np.empty(props.shape[0], np.int64)
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        visited = _walk(table, props, leaf)
        best = min(best, time.process_time() - start)
    return best, visited, leaf


def _coarser(props: np.ndarray) -> None:
    """Fill the coarser forms of the properties (``--table``) from the others."""
    props[:, N_ASKED] = props[:, 2] // GRADIENT_STEP
    props[:, N_ASKED + 1] = props[:, 3] >> 2
    props[:, N_ASKED + 2] = np.minimum(props[:, 4], TABLE_ERRORS - 1)
    props[:, N_ASKED + 3] = np.minimum(props[:, 5], TABLE_ERRORS - 1)


@njit(cache=True, nogil=True)
def _look_up(table, props, leaf):
    """Each sample's leaf from the table over TABLE_PROPERTIES, as a decoder would find it."""
    for i in range(props.shape[0]):
        key = props[i, 0] * GRADIENT_CLASSES + props[i, N_ASKED]
        key = (key * LEVEL_CLASSES + props[i, N_ASKED + 1]) * TABLE_ERRORS + props[i, N_ASKED + 2]
        leaf[i] = table[key * TABLE_ERRORS + props[i, N_ASKED + 3]]


@functools.cache
def _table_cells() -> np.ndarray:
    """Every cell of the table over TABLE_PROPERTIES, in the table's order, as rows of properties."""
    grid = np.zeros((int(np.prod(TABLE_SIZES)), N_PROPERTIES), np.int64)
    for k, axis in zip(TABLE_PROPERTIES, np.indices(TABLE_SIZES).reshape(len(TABLE_SIZES), -1)):
        grid[:, k] = axis
    return grid


def look_up_time(nodes, props: np.ndarray, repeat: int = 3) -> tuple[float, np.ndarray]:
    """(best seconds of finding every sample's leaf in a table made from a tree over
    TABLE_PROPERTIES, each sample's leaf number)."""
    numbers = leaves_of(nodes, _table_cells())[0]
    table = numbers.astype(np.int16 if numbers.max() < 1 << 15 else np.int32)
    leaf = np.empty(props.shape[0], table.dtype)
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        _look_up(table, props, leaf)
        best = min(best, time.process_time() - start)
    return best, leaf


CODINGS = ("fine + coarse", "coarse", "tree", "tree + coarse", "tree + parent")


def measure(plane: np.ndarray, maxv: int, leaves: int, penalty: float, learn: int,
            allowed=range(N_ASKED), table: bool = False) -> dict:
    """Bits of each coding (:data:`CODINGS`) of the plane's zero flags and tokens, the bits of its
    raw low bits and signs, the tree's leaves and the seconds of growing it."""
    fields = np.empty((plane.size, 7), np.int32)
    props = np.empty((plane.size, N_PROPERTIES), np.int32)
    te, err, bm = new_state(plane.shape[1], N_SUB_WIDE, N_BIAS_WIDE)
    _analyse(plane, maxv, te, err, bm, fields, props)
    _coarser(props)
    outside = fields[:, F_FLAT] == 0  # model 7 codes flat neighbourhoods with its flat flag first
    fields, props = fields[outside], props[outside]
    if fields.shape[0] == 0:
        return {name: 0.0 for name in (*CODINGS, "other", "leaves", "seconds", "walk", "depth", "samples")} | {"used": []}
    symbols = fields[:, F_SYMBOL].astype(np.int64)
    coarse = fields[:, F_COARSE].astype(np.int64)
    fine = fields[:, F_FINE].astype(np.int64)
    start = time.process_time()
    nodes = grow_tree(props, symbols, leaves, penalty, learn, allowed)
    seconds = time.process_time() - start
    leaf, parent, inner = leaves_of(nodes, props.astype(np.int64))
    n_leaves = len(nodes) - inner
    tree_bits = NODE_BITS * len(nodes)
    n_coarse = int(coarse.max()) + 1
    result = {
        "fine + coarse": _adaptive_bits(symbols, fine, coarse, int(fine.max()) + 1, n_coarse),
        "coarse": _adaptive_bits(symbols, coarse, coarse, n_coarse, 0),
        "tree": _adaptive_bits(symbols, leaf, leaf, n_leaves, 0) + tree_bits,
        "tree + coarse": _adaptive_bits(symbols, leaf, coarse, n_leaves, n_coarse) + tree_bits,
        "tree + parent": (_adaptive_bits(symbols, leaf, parent, n_leaves, max(inner, 1)) + tree_bits
                          if inner else _adaptive_bits(symbols, leaf, leaf, n_leaves, 0) + tree_bits),
    }
    signs = fields[:, F_SIGN] >= 0
    other = float(fields[:, F_RAW].sum())
    if signs.any():
        other += _entropy_bits(fields[signs, F_SIGN_CLASS], fields[signs, F_SIGN].astype(np.int64), 2)
    result["other"] = other
    result["leaves"] = n_leaves
    result["seconds"] = seconds
    result["used"] = [nd[0] for nd in nodes if nd[0] >= 0]
    result["walk"], result["depth"], walked = walk_time(nodes, props)
    is_leaf = np.array([nd[0] < 0 for nd in nodes])
    if not np.array_equal((np.cumsum(is_leaf) - 1)[walked], leaf):
        raise AssertionError("the walk and the tree's masks found different leaves")
    if table:
        result["walk"], looked_up = look_up_time(nodes, props)
        if not np.array_equal(looked_up, leaf):
            raise AssertionError("the table and the tree's masks found different leaves")
    result["samples"] = symbols.shape[0]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folders", nargs="*", default=())
    parser.add_argument("--images", nargs="*", default=(), help="image files or folders instead of the corpus")
    parser.add_argument("--unseen", action="store_true", help="with --images: as bench_private.py's --unseen")
    parser.add_argument("--leaves", type=int, default=256, help="most leaves a tree may have")
    parser.add_argument("--penalty", type=float, default=1.0, help="times the static table estimate a split must gain")
    parser.add_argument("--learn", type=int, default=1 << 19, help="most samples a tree is grown on (every k-th sample)")
    parser.add_argument("--properties", nargs="*", type=int, default=range(N_ASKED),
                        help=f"the properties a tree may ask about, by number (default: 0 to {N_ASKED - 1})")
    parser.add_argument("--table", action="store_true",
                        help="ask only about the properties a table can hold, and find each leaf in the table")
    args = parser.parse_args()
    allowed = list(TABLE_PROPERTIES) if args.table else sorted(set(args.properties))
    measure(WARM, 250, 4, args.penalty, args.learn, allowed, args.table)
    totals: dict[str, dict] = defaultdict(lambda: defaultdict(float))
    asked = np.zeros(N_PROPERTIES, np.int64)
    planes = _image_planes(args.images, args.unseen) if args.images else grey_planes(args.folders)
    for folder, plane, maxv in planes:
        result = measure(plane, maxv, args.leaves, args.penalty, args.learn, allowed, args.table)
        np.add.at(asked, result.pop("used"), 1)
        for key in (folder, "ALL"):
            row = totals[key]
            row["images"] += 1
            for name, value in result.items():
                row[name] += value
    folders = sorted(totals, key=lambda f: (f == "ALL", f))
    print(f"leaves at most {args.leaves}, penalty {args.penalty:g}, learning on at most {args.learn} samples, "
          f"properties: {', '.join(PROPERTIES[k] for k in allowed)}")
    print()
    print("| folder | images | fine + coarse (bytes) | " + " | ".join(CODINGS[1:])
          + f" | tree + parent, all bits | leaves / image | growing ms / image | nodes a sample "
          f"| {'look-up' if args.table else 'walk'} ns a sample |")
    print("|---|---:|---:|" + "---:|" * (len(CODINGS) - 1) + "---:|---:|---:|---:|---:|")
    for folder in folders:
        row = totals[folder]
        base = row["fine + coarse"]
        cells = [f"{100 * (row[name] / base - 1):+.2f} %" for name in CODINGS[1:]]
        whole = 100 * (row["tree + parent"] - base) / (base + row["other"])
        print(f"| {folder} | {int(row['images'])} | {base / 8:,.0f} | " + " | ".join(cells)
              + f" | {whole:+.2f} % | {row['leaves'] / row['images']:.0f} | {1e3 * row['seconds'] / row['images']:.0f} "
              f"| {row['depth'] / row['samples']:.1f} | {1e9 * row['walk'] / row['samples']:.1f} |")
    print()
    print("Splits on each property, over all images: "
          + ", ".join(f"{PROPERTIES[k]} {asked[k]}" for k in np.argsort(-asked) if asked[k]))


if __name__ == "__main__":
    main()
