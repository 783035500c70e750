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


@njit(cache=True, nogil=True, inline="always")
def _mirror(k: int, n: int) -> int:
    if k < 0:
        return -k
    if k >= n:
        return 2 * (n - 1) - k
    return k


@njit(cache=True, nogil=True, inline="always")
def _lift(x: np.ndarray, n: int, first: int, predict: bool) -> None:
    """One lifting step on samples ``first, first + 2, ...`` of ``x[:n]`` (n >= 2), mirrored at the ends.

    Predict: ``x[k] -= (x[k-1] + x[k+1]) >> 1``; update: ``x[k] += (x[k-1] + x[k+1] + 2) >> 2``.
    """
    k = first
    if k == 0:  # left neighbour mirrored: x[-1] = x[1]
        v = x[1] + x[1]
        x[0] = x[0] - (v >> 1) if predict else x[0] + ((v + 2) >> 2)
        k = 2
    last = n - 1
    if predict:
        while k < last:
            x[k] -= (x[k - 1] + x[k + 1]) >> 1
            k += 2
    else:
        while k < last:
            x[k] += (x[k - 1] + x[k + 1] + 2) >> 2
            k += 2
    if k == last:  # right neighbour mirrored: x[n] = x[n-2]
        v = x[k - 1] + x[k - 1]
        x[k] = x[k] - (v >> 1) if predict else x[k] + ((v + 2) >> 2)


@njit(cache=True, nogil=True)
def _forward_line(x: np.ndarray, n: int, odd: int, tmp: np.ndarray) -> None:
    """Lift ``x[:n]`` (first sample at an odd coordinate when `odd`) and deinterleave it."""
    if n == 1:
        if odd:
            x[0] *= 2
        return
    _lift(x, n, 1 - odd, True)  # predict: high-pass samples
    _lift(x, n, odd, False)  # update: low-pass samples
    j = 0
    for k in range(odd, n, 2):
        tmp[j] = x[k]
        j += 1
    for k in range(1 - odd, n, 2):
        tmp[j] = x[k]
        j += 1
    x[:n] = tmp[:n]


@njit(cache=True, nogil=True)
def _inverse_line(x: np.ndarray, n: int, odd: int, tmp: np.ndarray) -> None:
    """Interleave ``x[:n]`` (low half first) and undo the lifting."""
    if n == 1:
        if odd:
            v = x[0]
            x[0] = v // 2 if v >= 0 else -((-v) // 2)
        return
    j = 0
    for k in range(odd, n, 2):
        tmp[k] = x[j]
        j += 1
    for k in range(1 - odd, n, 2):
        tmp[k] = x[j]
        j += 1
    # Undo the update (subtract it from the low-pass samples), then the prediction.
    k = odd
    if k == 0:
        tmp[0] -= (tmp[1] + tmp[1] + 2) >> 2
        k = 2
    while k < n - 1:
        tmp[k] -= (tmp[k - 1] + tmp[k + 1] + 2) >> 2
        k += 2
    if k == n - 1:
        tmp[k] -= (tmp[k - 1] + tmp[k - 1] + 2) >> 2
    k = 1 - odd
    if k == 0:
        tmp[0] += (tmp[1] + tmp[1]) >> 1
        k = 2
    while k < n - 1:
        tmp[k] += (tmp[k - 1] + tmp[k + 1]) >> 1
        k += 2
    if k == n - 1:
        tmp[k] += (tmp[k - 1] + tmp[k - 1]) >> 1
    x[:n] = tmp[:n]


# ----------------------------------------------------------------------------- columns, row by row


@njit(cache=True, nogil=True)
def _forward_columns(a: np.ndarray, h: int, w: int, odd: int, tmp: np.ndarray) -> None:
    """Vertical lifting of ``a[:h, :w]``, whole rows at a time, then row deinterleaving."""
    if h == 1:
        if odd:
            for x in range(w):
                a[0, x] *= 2
        return
    for k in range(1 - odd, h, 2):
        up, down = _mirror(k - 1, h), _mirror(k + 1, h)
        for x in range(w):
            a[k, x] -= (a[up, x] + a[down, x]) >> 1
    for k in range(odd, h, 2):
        up, down = _mirror(k - 1, h), _mirror(k + 1, h)
        for x in range(w):
            a[k, x] += (a[up, x] + a[down, x] + 2) >> 2
    j = 0
    for k in range(odd, h, 2):
        tmp[j, :w] = a[k, :w]
        j += 1
    for k in range(1 - odd, h, 2):
        tmp[j, :w] = a[k, :w]
        j += 1
    for k in range(h):
        a[k, :w] = tmp[k, :w]


@njit(cache=True, nogil=True)
def _inverse_columns(a: np.ndarray, h: int, w: int, odd: int, tmp: np.ndarray) -> None:
    """Row interleaving of ``a[:h, :w]`` (low rows first), then inverse vertical lifting."""
    if h == 1:
        if odd:
            for x in range(w):
                v = a[0, x]
                a[0, x] = v // 2 if v >= 0 else -((-v) // 2)
        return
    j = 0
    for k in range(odd, h, 2):
        tmp[k, :w] = a[j, :w]
        j += 1
    for k in range(1 - odd, h, 2):
        tmp[k, :w] = a[j, :w]
        j += 1
    for k in range(odd, h, 2):
        up, down = _mirror(k - 1, h), _mirror(k + 1, h)
        for x in range(w):
            tmp[k, x] -= (tmp[up, x] + tmp[down, x] + 2) >> 2
    for k in range(1 - odd, h, 2):
        up, down = _mirror(k - 1, h), _mirror(k + 1, h)
        for x in range(w):
            tmp[k, x] += (tmp[up, x] + tmp[down, x]) >> 1
    for k in range(h):
        a[k, :w] = tmp[k, :w]


# ----------------------------------------------------------------------------- two dimensions


@njit(cache=True, nogil=True)
def forward(a: np.ndarray, levels: int, x0: int, y0: int) -> None:
    """`levels` decompositions of the tile-component `a` whose first sample is at canvas (x0, y0)."""
    rows, cols = a.shape
    tmp = np.empty((rows, cols), dtype=a.dtype)
    line = np.empty(cols, dtype=a.dtype)
    for level in range(levels):
        u0 = -((-x0) >> level)
        v0 = -((-y0) >> level)
        w = -((-(x0 + cols)) >> level) - u0
        h = -((-(y0 + rows)) >> level) - v0
        if w == 0 or h == 0:
            return
        _forward_columns(a, h, w, v0 & 1, tmp)
        for y in range(h):
            _forward_line(a[y], w, u0 & 1, line)


@njit(cache=True, nogil=True)
def inverse(a: np.ndarray, levels: int, x0: int, y0: int) -> None:
    """Undo :func:`forward`."""
    rows, cols = a.shape
    tmp = np.empty((rows, cols), dtype=a.dtype)
    line = np.empty(cols, dtype=a.dtype)
    for level in range(levels - 1, -1, -1):
        u0 = -((-x0) >> level)
        v0 = -((-y0) >> level)
        w = -((-(x0 + cols)) >> level) - u0
        h = -((-(y0 + rows)) >> level) - v0
        if w == 0 or h == 0:
            continue
        for y in range(h):
            _inverse_line(a[y], w, u0 & 1, line)
        _inverse_columns(a, h, w, v0 & 1, tmp)


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
