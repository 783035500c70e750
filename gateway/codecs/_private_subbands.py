"""Subbands of version 2 of the private codec: one level of reversible 5/3 lifting for interpolated images.

An image enlarged by interpolation (a radiograph resampled to a finer pixel
spacing, an MR reconstructed on a doubled matrix) holds samples that are
averages of their neighbours on *both* sides.  Prediction from the causal
neighbours alone cannot see that; one level of the reversible 5/3 lifting
(the integer wavelet of JPEG 2000, T.800 Annex F) turns those samples into
near-zero high-pass coefficients.  The frame's single plane is replaced by
its coefficients in the Mallat layout (low-pass first along each transformed
axis, then high-pass), which the plane coder codes like any plane.

The transform is named by flags in the stream header (docs/private-codec.md
section 9.8): :data:`ROWS` and/or :data:`COLUMNS` (along each row, along
each column), and per axis whether the first sample is high-pass
(:data:`ROWS_ODD`, :data:`COLUMNS_ODD`): the interpolated samples may sit
at the odd or the even positions.  Forward: rows, then columns; inverse:
columns, then rows.
"""

from __future__ import annotations

import numpy as np
from numba import njit

ROWS = 1
COLUMNS = 2
ROWS_ODD = 4
COLUMNS_ODD = 8
FLAGS = 0xF
# The encoder tries the transform along an axis when the samples of one parity are predicted
# from both neighbours with at most GATE of the error of the other parity's (interpolated
# samples are averages of their neighbours, the others are not), on the sample of rows given.
GATE = 0.7
MIN_LENGTH = 2  # a transformed axis needs at least two samples
MIN_BAND = 4  # rows of a band of the sample the encoder judges on: two rows, one of each parity, between two


def valid(flags: int, rows: int, columns: int) -> bool:
    """Whether `flags` name a transform (at least one axis, a parity only with its axis) for this size."""
    if flags & ~FLAGS or not flags & (ROWS | COLUMNS):
        return False
    if flags & ROWS_ODD and not flags & ROWS or flags & COLUMNS_ODD and not flags & COLUMNS:
        return False
    return (not flags & ROWS or columns >= MIN_LENGTH) and (not flags & COLUMNS or rows >= MIN_LENGTH)


@njit(cache=True, nogil=True, inline="always")
def _mirror(k, n):
    """Index `k` reflected into 0..n-1 (whole-sample symmetric extension; |overhang| <= 1, n >= 2)."""
    if k < 0:
        return -k
    if k >= n:
        return 2 * (n - 1) - k
    return k


@njit(cache=True, nogil=True)
def _forward_rows(src, odd):
    """One lifting level along every row of `src`; sample k is high-pass when k + `odd` is odd."""
    rows, n = src.shape
    out = np.empty((rows, n), np.int32)
    line = np.empty(n, np.int64)
    lows = (n - odd + 1) // 2
    for y in range(rows):
        for k in range(n):
            line[k] = src[y, k]
        for k in range(1 - odd, n, 2):  # high-pass: the sample less the mean of its neighbours
            line[k] -= (line[_mirror(k - 1, n)] + line[_mirror(k + 1, n)]) >> 1
        for k in range(odd, n, 2):  # low-pass: the sample plus a quarter of the neighbours' high-pass
            line[k] += (line[_mirror(k - 1, n)] + line[_mirror(k + 1, n)] + 2) >> 2
        for j, k in enumerate(range(odd, n, 2)):
            out[y, j] = line[k]
        for j, k in enumerate(range(1 - odd, n, 2)):
            out[y, lows + j] = line[k]
    return out


@njit(cache=True, nogil=True)
def _inverse_rows(src, odd):
    """Undo :func:`_forward_rows`; int64 output (a corrupt stream's values may leave any range)."""
    rows, n = src.shape
    out = np.empty((rows, n), np.int64)
    line = np.empty(n, np.int64)
    lows = (n - odd + 1) // 2
    for y in range(rows):
        for j, k in enumerate(range(odd, n, 2)):
            line[k] = src[y, j]
        for j, k in enumerate(range(1 - odd, n, 2)):
            line[k] = src[y, lows + j]
        for k in range(odd, n, 2):
            line[k] -= (line[_mirror(k - 1, n)] + line[_mirror(k + 1, n)] + 2) >> 2
        for k in range(1 - odd, n, 2):
            line[k] += (line[_mirror(k - 1, n)] + line[_mirror(k + 1, n)]) >> 1
        for k in range(n):
            out[y, k] = line[k]
    return out


def forward(plane: np.ndarray, flags: int) -> np.ndarray:
    """The int32 coefficients of `plane` (rows x columns) in the Mallat layout of `flags`."""
    out = np.ascontiguousarray(plane, dtype=np.int32)
    if flags & ROWS:
        out = _forward_rows(out, int(bool(flags & ROWS_ODD)))
    if flags & COLUMNS:
        out = np.ascontiguousarray(_forward_rows(np.ascontiguousarray(out.T), int(bool(flags & COLUMNS_ODD))).T)
    return out


def inverse(coefficients: np.ndarray, flags: int) -> np.ndarray:
    """The plane (int64) whose :func:`forward` under `flags` is `coefficients`."""
    out = np.ascontiguousarray(coefficients, dtype=np.int64)
    if flags & COLUMNS:
        out = np.ascontiguousarray(_inverse_rows(np.ascontiguousarray(out.T), int(bool(flags & COLUMNS_ODD))).T)
    if flags & ROWS:
        out = _inverse_rows(out, int(bool(flags & ROWS_ODD)))
    return out


@njit(cache=True, nogil=True)
def _parity_errors(plane, starts, height):
    """Mean |sample - floor(mean of its two neighbours)| over the bands of rows ``starts[i] ..
    starts[i] + height - 1``, along rows for even and odd columns, along columns for even and odd
    rows (-1 where there is no such sample)."""
    rows, cols = plane.shape
    sums = np.zeros(4, np.int64)  # along rows: even, odd columns; along columns: even, odd rows
    counts = np.zeros(4, np.int64)
    for start in starts:
        end = min(rows, start + height)
        for y in range(start, end):
            for x in range(1, cols - 1):
                sums[x & 1] += abs(np.int64(plane[y, x]) - ((np.int64(plane[y, x - 1]) + plane[y, x + 1]) >> 1))
                counts[x & 1] += 1
            if start < y < end - 1:
                for x in range(cols):
                    sums[2 + (y & 1)] += abs(np.int64(plane[y, x]) - ((np.int64(plane[y - 1, x]) + plane[y + 1, x]) >> 1))
                    counts[2 + (y & 1)] += 1
    means = np.full(4, -1.0)
    for i in range(4):
        if counts[i] > 0:
            means[i] = sums[i] / counts[i]
    return means


def interpolated(plane: np.ndarray, starts: np.ndarray, height: int) -> int:
    """Flags of the transform worth trying on `plane` (0: none), judged on bands of its rows."""
    means = _parity_errors(np.ascontiguousarray(plane), starts.astype(np.int64), height)
    flags = 0
    for axis, odd, (even_error, odd_error) in ((ROWS, ROWS_ODD, means[:2]), (COLUMNS, COLUMNS_ODD, means[2:])):
        if min(even_error, odd_error) >= 0 and max(even_error, odd_error) > 0 and (
            min(even_error, odd_error) <= GATE * max(even_error, odd_error)
        ):
            # The parity with the smaller error holds the interpolated samples: it becomes high-pass.
            flags |= axis | (odd if even_error < odd_error else 0)
    return flags
