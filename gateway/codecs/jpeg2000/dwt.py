"""The reversible 5/3 wavelet of JPEG 2000 (ITU-T T.800 Annex F), as numba kernels.

A tile-component is transformed in place into the Mallat layout: after each
level the low-pass samples of the current LL region move to its first half
(rows and columns) and the high-pass ones to its second half, so the
sub-bands of level ``l`` sit at the offsets :func:`band_offsets` gives.
Sample parity follows the tile-component's position on the canvas: a sample
at an even absolute coordinate is low-pass, so a tile starting at an odd
coordinate begins with a high-pass sample (T.800 F.3.7 / F.4.7, eq. F-7).

Forward: vertical then horizontal lifting per level (2D_SD, F.4.2); inverse:
horizontal then vertical (2D_SR, F.3.2), both with whole-sample symmetric
extension, so the two are exact inverses in integer arithmetic.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def ceil_div_pow2(value: int, shift: int) -> int:
    """``ceil(value / 2**shift)`` for integers."""
    return -((-value) >> shift)


def level_extent(x0: int, x1: int, level: int) -> tuple[int, int]:
    """Absolute start and size of the LL region after `level` decompositions of ``[x0, x1)``."""
    a, b = ceil_div_pow2(x0, level), ceil_div_pow2(x1, level)
    return a, b - a


# ----------------------------------------------------------------------------- one dimension
#
# Each pass reads one buffer and writes the other, lifting and
# (de)interleaving in the same loop: the forward transform lifts the columns
# of the tile into a scratch array and the rows back into the tile, the
# inverse the other way round, so no pass copies samples.  Indices are
# unsigned so that numba indexes without its negative-index test.


@njit(cache=True, nogil=True, inline="always")
def _u(i: int) -> np.uint64:
    return np.uint64(i)


@njit(cache=True, nogil=True, inline="always")
def _high(k: int, odd: int, low_count: int) -> int:
    """Index in the deinterleaved line of the high-pass sample at position `k` (``k % 2 != odd``)."""
    return low_count + ((k - 1 + odd) >> 1)


@njit(cache=True, nogil=True)
def _forward_line(src: np.ndarray, dst: np.ndarray, n: int, odd: int) -> None:
    """Lift ``src[:n]`` (first sample at an odd coordinate when `odd`) into ``dst[:n]``, low-pass half first.

    Predict: ``x[k] -= (x[k-1] + x[k+1]) >> 1`` on the high-pass samples;
    update: ``x[k] += (x[k-1] + x[k+1] + 2) >> 2`` on the low-pass ones,
    mirrored at the ends (whole-sample symmetric extension).
    """
    if n == 1:
        dst[0] = src[0] * 2 if odd else src[0]
        return
    nl = (n - odd + 1) >> 1
    j = nl
    for k in range(1 - odd, n, 2):
        left = k - 1 if k > 0 else 1
        right = k + 1 if k + 1 < n else n - 2
        dst[_u(j)] = src[_u(k)] - ((src[_u(left)] + src[_u(right)]) >> 1)
        j += 1
    j = 0
    for k in range(odd, n, 2):
        left = k - 1 if k > 0 else 1
        right = k + 1 if k + 1 < n else n - 2
        dst[_u(j)] = src[_u(k)] + ((dst[_u(_high(left, odd, nl))] + dst[_u(_high(right, odd, nl))] + 2) >> 2)
        j += 1


@njit(cache=True, nogil=True)
def _inverse_line(src: np.ndarray, dst: np.ndarray, n: int, odd: int) -> None:
    """Interleave ``src[:n]`` (low half first) into ``dst[:n]``, undoing the lifting."""
    if n == 1:
        v = src[0]
        dst[0] = (v // 2 if v >= 0 else -((-v) // 2)) if odd else v
        return
    nl = (n - odd + 1) >> 1
    j = 0
    for k in range(odd, n, 2):  # undo the update: low-pass samples
        left = k - 1 if k > 0 else 1
        right = k + 1 if k + 1 < n else n - 2
        dst[_u(k)] = src[_u(j)] - ((src[_u(_high(left, odd, nl))] + src[_u(_high(right, odd, nl))] + 2) >> 2)
        j += 1
    j = nl
    for k in range(1 - odd, n, 2):  # undo the prediction: high-pass samples
        left = k - 1 if k > 0 else 1
        right = k + 1 if k + 1 < n else n - 2
        dst[_u(k)] = src[_u(j)] + ((dst[_u(left)] + dst[_u(right)]) >> 1)
        j += 1


# ----------------------------------------------------------------------------- columns, row by row


@njit(cache=True, nogil=True)
def _forward_columns(src: np.ndarray, dst: np.ndarray, h: int, w: int, odd: int) -> None:
    """Vertical lifting of ``src[:h, :w]`` into ``dst``, whole rows at a time, low-pass rows first."""
    if h == 1:
        for x in range(w):
            dst[0, x] = src[0, x] * 2 if odd else src[0, x]
        return
    nl = (h - odd + 1) >> 1
    j = nl
    for k in range(1 - odd, h, 2):
        out, mid = dst[j], src[k]
        up, down = src[k - 1 if k > 0 else 1], src[k + 1 if k + 1 < h else h - 2]
        for x in range(w):
            out[_u(x)] = mid[_u(x)] - ((up[_u(x)] + down[_u(x)]) >> 1)
        j += 1
    j = 0
    for k in range(odd, h, 2):
        out, mid = dst[j], src[k]
        up = dst[_high(k - 1 if k > 0 else 1, odd, nl)]
        down = dst[_high(k + 1 if k + 1 < h else h - 2, odd, nl)]
        for x in range(w):
            out[_u(x)] = mid[_u(x)] + ((up[_u(x)] + down[_u(x)] + 2) >> 2)
        j += 1


@njit(cache=True, nogil=True)
def _inverse_columns(src: np.ndarray, dst: np.ndarray, h: int, w: int, odd: int) -> None:
    """Row interleaving of ``src[:h, :w]`` (low rows first) into ``dst``, undoing the vertical lifting."""
    if h == 1:
        for x in range(w):
            v = src[0, x]
            dst[0, x] = (v // 2 if v >= 0 else -((-v) // 2)) if odd else v
        return
    nl = (h - odd + 1) >> 1
    j = 0
    for k in range(odd, h, 2):
        out, mid = dst[k], src[j]
        up = src[_high(k - 1 if k > 0 else 1, odd, nl)]
        down = src[_high(k + 1 if k + 1 < h else h - 2, odd, nl)]
        for x in range(w):
            out[_u(x)] = mid[_u(x)] - ((up[_u(x)] + down[_u(x)] + 2) >> 2)
        j += 1
    j = nl
    for k in range(1 - odd, h, 2):
        out, mid = dst[k], src[j]
        up, down = dst[k - 1 if k > 0 else 1], dst[k + 1 if k + 1 < h else h - 2]
        for x in range(w):
            out[_u(x)] = mid[_u(x)] + ((up[_u(x)] + down[_u(x)]) >> 1)
        j += 1


# ----------------------------------------------------------------------------- two dimensions


@njit(cache=True, nogil=True)
def forward(a: np.ndarray, levels: int, x0: int, y0: int) -> None:
    """`levels` decompositions of the tile-component `a` whose first sample is at canvas (x0, y0)."""
    rows, cols = a.shape
    tmp = np.empty((rows, cols), dtype=a.dtype)
    for level in range(levels):
        u0 = -((-x0) >> level)
        v0 = -((-y0) >> level)
        w = -((-(x0 + cols)) >> level) - u0
        h = -((-(y0 + rows)) >> level) - v0
        if w == 0 or h == 0:
            return
        _forward_columns(a, tmp, h, w, v0 & 1)
        for y in range(h):
            _forward_line(tmp[y], a[y], w, u0 & 1)


@njit(cache=True, nogil=True)
def inverse(a: np.ndarray, levels: int, x0: int, y0: int) -> None:
    """Undo :func:`forward`."""
    rows, cols = a.shape
    tmp = np.empty((rows, cols), dtype=a.dtype)
    for level in range(levels - 1, -1, -1):
        u0 = -((-x0) >> level)
        v0 = -((-y0) >> level)
        w = -((-(x0 + cols)) >> level) - u0
        h = -((-(y0 + rows)) >> level) - v0
        if w == 0 or h == 0:
            continue
        for y in range(h):
            _inverse_line(a[y], tmp[y], w, u0 & 1)
        _inverse_columns(tmp, a, h, w, v0 & 1)


def band_rect(x0: int, y0: int, cols: int, rows: int, level: int, orient: int) -> tuple[int, int, int, int]:
    """``(x, y, width, height)`` in the Mallat array of the sub-band `orient` of decomposition `level`.

    `orient` is 0 (LL, only for the deepest level), 1 (HL), 2 (LH) or 3 (HH);
    (x0, y0) is the canvas position of the tile-component's first sample.
    """
    lx0, lw = level_extent(x0, x0 + cols, level)
    ly0, lh = level_extent(y0, y0 + rows, level)
    _, pw = level_extent(x0, x0 + cols, level - 1)
    _, ph = level_extent(y0, y0 + rows, level - 1)
    if orient == 0:
        return 0, 0, lw, lh
    x = lw if orient & 1 else 0
    y = lh if orient & 2 else 0
    return x, y, (pw - lw) if orient & 1 else lw, (ph - lh) if orient & 2 else lh
