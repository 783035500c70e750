"""Subbands of version 2 of the private codec: one level of reversible lifting for interpolated images.

An image enlarged by interpolation (a radiograph resampled to a finer pixel
spacing, an MR reconstructed on a doubled matrix) holds samples that are
averages of their neighbours on *both* sides.  Prediction from the causal
neighbours alone cannot see that; one level of reversible lifting turns
those samples into near-zero high-pass coefficients: the 5/3 of JPEG 2000
(T.800 Annex F), whose high-pass step predicts a sample by the mean of its
two neighbours (linear interpolation), or with :data:`FOUR_TAP` the
predictor ``(-1, 9, 9, -1) / 16`` of four neighbours (cubic interpolation).
An image enlarged by *repeating* each sample (pixel replication, the
nearest-neighbour zoom of viewers and secondary captures) holds samples
equal to the one before them: with :data:`REPEAT` the high-pass step
predicts a sample by the sample before it, and those samples become zero.
The frame's single plane is replaced by its coefficients in the Mallat
layout (low-pass first along each transformed axis, then high-pass), which
the plane coder codes like any plane.

The transform is named by flags in the stream header (docs/private-codec.md
section 9.8): :data:`ROWS` and/or :data:`COLUMNS` (along each row, along
each column), per axis whether the first sample is high-pass
(:data:`ROWS_ODD`, :data:`COLUMNS_ODD`: the interpolated samples may sit
at the odd or the even positions), and the predictor: two neighbours, or
:data:`FOUR_TAP`, or :data:`REPEAT`.  Forward: rows,
then columns; inverse: columns, then rows.
"""

from __future__ import annotations

import numpy as np

from gateway.kernelcache import njit

ROWS = 1
COLUMNS = 2
ROWS_ODD = 4
COLUMNS_ODD = 8
FOUR_TAP = 0x20
REPEAT = 0x40
FLAGS = ROWS | COLUMNS | ROWS_ODD | COLUMNS_ODD | FOUR_TAP | REPEAT
# The high-pass step's predictors: the mean of the two neighbours, the cubic midpoint of four, the
# sample before.
TWO, FOUR, BEFORE = 0, 1, 2
# The encoder tries the transform along an axis when the samples of one parity are predicted
# from their neighbours on both sides with at most GATE of the error of the other parity's
# (interpolated samples are, the others are not), on the sample of rows given; or, for
# REPEAT, from the sample before them with at most GATE of the other parity's error.
GATE = 0.7
LOOSE_GATE = 0.9
# A transformed axis needs at least two samples, four with FOUR_TAP (whose predictor reaches
# three samples away: the extension reflects at most three).
MIN_LENGTH = 2
MIN_LENGTH_FOUR = 4
MIN_BAND = 8  # rows of a band of the sample the encoder judges on: a row of each parity, three on each side


def valid(flags: int, rows: int, columns: int) -> bool:
    """Whether `flags` name a transform (at least one axis, a parity only with its axis, one
    predictor) for this size."""
    if flags & ~FLAGS or not flags & (ROWS | COLUMNS) or flags & FOUR_TAP and flags & REPEAT:
        return False
    if flags & ROWS_ODD and not flags & ROWS or flags & COLUMNS_ODD and not flags & COLUMNS:
        return False
    least = MIN_LENGTH_FOUR if flags & FOUR_TAP else MIN_LENGTH
    return (not flags & ROWS or columns >= least) and (not flags & COLUMNS or rows >= least)


@njit(cache=True, nogil=True, inline="always")
def _mirror(k, n):
    """Index `k` reflected into 0..n-1 (whole-sample symmetric extension; overhang at most n - 1)."""
    if k < 0:
        return -k
    if k >= n:
        return 2 * (n - 1) - k
    return k


def predictor(flags: int) -> int:
    """The high-pass step's predictor that `flags` name: TWO, FOUR or BEFORE."""
    return FOUR if flags & FOUR_TAP else BEFORE if flags & REPEAT else TWO


@njit(cache=True, nogil=True, inline="always")
def _predicted(line, k, n, kind):
    """The high-pass step's prediction of sample `k` from its low-pass neighbours (predictor `kind`)."""
    if kind == BEFORE:
        return line[_mirror(k - 1, n)]
    if kind == FOUR:
        outer = line[_mirror(k - 3, n)] + line[_mirror(k + 3, n)]
        return (9 * (line[_mirror(k - 1, n)] + line[_mirror(k + 1, n)]) - outer + 8) >> 4
    return (line[_mirror(k - 1, n)] + line[_mirror(k + 1, n)]) >> 1


@njit(cache=True, nogil=True, inline="always")
def _lift(line, out, n, odd, kind, backward):
    """One lifting level of `line` (int64, n samples) into `out`: forward, from the samples to the
    low-pass then high-pass coefficients; `backward`, the inverse.  Sample k is high-pass when
    k + `odd` is odd.  `line` is modified."""
    lows = (n - odd + 1) // 2
    if backward:
        for j, k in enumerate(range(odd, n, 2)):
            out[k] = line[j]
        for j, k in enumerate(range(1 - odd, n, 2)):
            out[k] = line[lows + j]
        for k in range(odd, n, 2):
            out[k] -= (out[_mirror(k - 1, n)] + out[_mirror(k + 1, n)] + 2) >> 2
        for k in range(1 - odd, n, 2):
            out[k] += _predicted(out, k, n, kind)
        return
    for k in range(1 - odd, n, 2):  # high-pass: the sample less its prediction from the neighbours
        line[k] -= _predicted(line, k, n, kind)
    for k in range(odd, n, 2):  # low-pass: the sample plus a quarter of the neighbours' high-pass
        line[k] += (line[_mirror(k - 1, n)] + line[_mirror(k + 1, n)] + 2) >> 2
    for j, k in enumerate(range(odd, n, 2)):
        out[j] = line[k]
    for j, k in enumerate(range(1 - odd, n, 2)):
        out[lows + j] = line[k]


@njit(cache=True, nogil=True)
def _lift_rows(a, odd, kind, backward):
    """:func:`_lift` along every row of the int32 array `a`, in place (the columns of an array:
    its transposed view)."""
    rows, n = a.shape
    line = np.empty(n, np.int64)
    out = np.empty(n, np.int64)
    for y in range(rows):
        for k in range(n):
            line[k] = a[y, k]
        _lift(line, out, n, odd, kind, backward)
        for k in range(n):
            a[y, k] = out[k]


def forward(plane: np.ndarray, flags: int) -> np.ndarray:
    """The int32 coefficients of `plane` (rows x columns) in the Mallat layout of `flags` (a new array)."""
    out = np.array(plane, dtype=np.int32, order="C", copy=True)
    kind = predictor(flags)
    if flags & ROWS:
        _lift_rows(out, int(bool(flags & ROWS_ODD)), kind, False)
    if flags & COLUMNS:
        _lift_rows(out.T, int(bool(flags & COLUMNS_ODD)), kind, False)
    return out


def inverse(coefficients: np.ndarray, flags: int) -> np.ndarray:
    """The plane whose :func:`forward` under `flags` is `coefficients` (int32, transformed in place).

    Coefficients within the plane limits (|value| < 2**19) stay below 2**24 through both passes,
    so nothing wraps: a corrupt stream's values come out of range, where the caller rejects them.
    """
    out = np.ascontiguousarray(coefficients, dtype=np.int32)
    kind = predictor(flags)
    if flags & COLUMNS:
        _lift_rows(out.T, int(bool(flags & COLUMNS_ODD)), kind, True)
    if flags & ROWS:
        _lift_rows(out, int(bool(flags & ROWS_ODD)), kind, True)
    return out


@njit(cache=True, nogil=True)
def _parity_errors(plane, starts, height, kind):
    """Mean |sample - its prediction| by predictor `kind` (from the two or four neighbours on both
    sides, or the sample before) over the bands of rows ``starts[i] .. starts[i] + height - 1``:
    ``means[axis, parity]``, axis 0 along the rows (parity of the column), 1 along the columns
    (parity of the row); -1 where there is no such sample.  Only samples whose neighbours all lie
    inside count."""
    rows, cols = plane.shape
    reach = 3 if kind == FOUR else 1
    sums = np.zeros((2, 2), np.int64)
    counts = np.zeros((2, 2), np.int64)
    line = np.empty(max(rows, cols), np.int64)
    for start in starts:
        end = min(rows, start + height)
        for y in range(start, end):
            for x in range(cols):
                line[x] = plane[y, x]
            for x in range(reach, cols - reach):
                sums[0, x & 1] += abs(line[x] - _predicted(line, x, cols, kind))
                counts[0, x & 1] += 1
        for x in range(cols):
            for y in range(start, end):
                line[y - start] = plane[y, x]
            for k in range(reach, end - start - reach):
                sums[1, (start + k) & 1] += abs(line[k] - _predicted(line, k, end - start, kind))
                counts[1, (start + k) & 1] += 1
    means = np.full((2, 2), -1.0)
    for a in range(2):
        for p in range(2):
            if counts[a, p] > 0:
                means[a, p] = sums[a, p] / counts[a, p]
    return means


def _contrast(even_error: float, odd_error: float) -> float:
    """The smaller of two parities' mean errors over the larger (1: no contrast, or no samples)."""
    if min(even_error, odd_error) < 0 or max(even_error, odd_error) == 0:
        return 1.0
    return min(even_error, odd_error) / max(even_error, odd_error)


def _passing(means: list[np.ndarray]) -> tuple[int, list[float]]:
    """The axes (and their parities) where one parity's samples are far better predicted than the
    other's by the last of the predictors whose errors `means` holds (:func:`_parity_errors`), that
    parity high-pass; and per predictor, its mean error at the high-pass samples summed over those
    axes."""
    flags = 0
    error = [0.0] * len(means)
    for axis, (along, odd) in enumerate(((ROWS, ROWS_ODD), (COLUMNS, COLUMNS_ODD))):
        passed = [m[axis] for m in means if _contrast(*m[axis]) <= GATE]
        if not passed:
            continue
        even_high = passed[-1][0] < passed[-1][1]  # that parity holds the interpolated samples
        flags |= along | (odd if even_high else 0)
        for kind, m in enumerate(means):
            high = m[axis, 0 if even_high else 1]
            error[kind] += high if high >= 0 else np.inf
    return flags, error


def _axes(flags: int) -> int:
    return bool(flags & ROWS) + bool(flags & COLUMNS)


def interpolated(plane: np.ndarray, starts: np.ndarray, height: int) -> int:
    """Flags of the transform worth trying on `plane` (0: none), judged on bands of its rows: the
    axes where one parity's samples are far better predicted from their neighbours on both sides
    than the other's, that parity high-pass, and the predictor (two or four neighbours) with the
    smaller error there; or the axes where one parity's samples are far closer to the sample
    before them than the other's (REPEAT).  The four neighbours' errors are measured only where the
    two neighbours' show some contrast (below LOOSE_GATE): an image enlarged by a cubic kernel
    shows it with either.  When both kinds pass, the one with more axes, then with the smaller
    error at the high-pass samples, is tried."""
    plane = np.ascontiguousarray(plane)
    starts = starts.astype(np.int64)
    means = [_parity_errors(plane, starts, height, TWO)]
    if min(_contrast(*means[0][axis]) for axis in (0, 1)) <= LOOSE_GATE:
        means.append(_parity_errors(plane, starts, height, FOUR))
    flags, error = _passing(means)
    chosen = error[0]
    if flags and len(means) == 2 and error[1] < error[0]:
        flags |= FOUR_TAP
        chosen = error[1]
    repeated, (repeat_error,) = _passing([_parity_errors(plane, starts, height, BEFORE)])
    if _axes(repeated) > _axes(flags) or repeated and _axes(repeated) == _axes(flags) and repeat_error < chosen:
        return repeated | REPEAT
    return flags
