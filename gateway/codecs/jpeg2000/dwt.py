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

import itertools

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
#
# The passes also do what the frame driver would otherwise do in passes of
# its own: the forward's first (vertical) pass reads the frame's samples,
# level-shifts them and folds their magnitudes for the range check, and its
# horizontal passes fold each sub-band's coefficient magnitudes for the guard
# bits; the inverse's last (vertical) pass level-shifts, clips, range-checks
# and writes the frame's samples.  Each pass takes a range of columns or
# rows, so two threads can share one tile-component.

INT32_LOW = -(1 << 31)
INT32_HIGH = (1 << 31) - 1


@njit(cache=True, nogil=True, inline="always")
def _u(i: int) -> np.uint64:
    return np.uint64(i)


@njit(cache=True, nogil=True, inline="always")
def _high(k: int, odd: int, low_count: int) -> int:
    """Index in the deinterleaved line of the high-pass sample at position `k` (``k % 2 != odd``)."""
    return low_count + ((k - 1 + odd) >> 1)


@njit(cache=True, nogil=True)
def _forward_line(src: np.ndarray, dst: np.ndarray, n: int, odd: int) -> tuple[int, int]:
    """Lift ``src[:n]`` (first sample at an odd coordinate when `odd`) into ``dst[:n]``, low-pass half first.

    Predict: ``x[k] -= (x[k-1] + x[k+1]) >> 1`` on the high-pass samples;
    update: ``x[k] += (x[k-1] + x[k+1] + 2) >> 2`` on the low-pass ones,
    mirrored at the ends (whole-sample symmetric extension).  Returns the
    bitwise or of the low-pass and of the high-pass magnitudes written.
    The samples at the ends, which mirror, are done apart so that the loops
    over the others have no tests.
    """
    if n == 1:
        if odd:
            v = src[0] * 2
            dst[0] = v
            return 0, abs(v)
        v = src[0]
        dst[0] = v
        return abs(v), 0
    nl = (n - odd + 1) >> 1
    nh = n - nl
    low = 0
    high = 0
    # High-pass sample i is at k = 1 - odd + 2 i; it mirrors when k = 0 (i = 0, odd) or k = n - 1.
    first = odd
    last = nh - 1 if 1 - odd + 2 * (nh - 1) == n - 1 else nh
    if odd:
        v = np.int64(src[0]) - src[1]
        dst[_u(nl)] = v
        high |= abs(v)
    for i in range(first, last):
        k = 1 - odd + 2 * i
        v = src[_u(k)] - ((np.int64(src[_u(k - 1)]) + src[_u(k + 1)]) >> 1)
        dst[_u(nl + i)] = v
        high |= abs(v)
    if last < nh and last >= first:
        v = np.int64(src[_u(n - 1)]) - src[_u(n - 2)]
        dst[_u(nl + last)] = v
        high |= abs(v)
    # Low-pass sample i is at k = odd + 2 i, its neighbours the high-pass ones odd + i - 1 and odd + i;
    # it mirrors when k = 0 (i = 0, not odd) or k = n - 1.
    base = nl + odd
    first = 1 - odd
    last = nl - 1 if odd + 2 * (nl - 1) == n - 1 else nl
    if not odd:
        v = src[0] + ((np.int64(dst[_u(nl)]) * 2 + 2) >> 2)
        dst[0] = v
        low |= abs(v)
    for i in range(first, last):
        v = src[_u(odd + 2 * i)] + ((np.int64(dst[_u(base + i - 1)]) + dst[_u(base + i)] + 2) >> 2)
        dst[_u(i)] = v
        low |= abs(v)
    if last < nl and last >= first:
        v = src[_u(n - 1)] + ((np.int64(dst[_u(base + last - 1)]) * 2 + 2) >> 2)
        dst[_u(last)] = v
        low |= abs(v)
    return low, high


@njit(cache=True, nogil=True)
def _inverse_line(src: np.ndarray, dst: np.ndarray, n: int, odd: int, low: np.ndarray) -> None:
    """Interleave ``src[:n]`` (low half first) into ``dst[:n]``, undoing the lifting.

    The low-pass samples are first undone into the scratch line `low`, then
    written with the high-pass ones pair by pair (two neighbouring outputs
    per step, which the compiler vectorises, where one loop per parity
    would store every other sample); the ends, which mirror, are done apart.
    """
    if n == 1:
        v = src[0]
        dst[0] = (v // 2 if v >= 0 else -((-v) // 2)) if odd else v
        return
    nl = (n - odd + 1) >> 1
    nh = n - nl
    base = nl + odd
    # Undo the update: low-pass sample i (at k = odd + 2 i) from the high-pass ones odd + i - 1 and odd + i.
    first = 1 - odd
    last = nl - 1 if odd + 2 * (nl - 1) == n - 1 else nl
    if not odd:
        low[0] = src[0] - ((np.int64(src[_u(nl)]) * 2 + 2) >> 2)
    for i in range(first, last):
        low[_u(i)] = src[_u(i)] - ((np.int64(src[_u(base + i - 1)]) + src[_u(base + i)] + 2) >> 2)
    if last < nl and last >= first:
        low[_u(last)] = src[_u(last)] - ((np.int64(src[_u(base + last - 1)]) * 2 + 2) >> 2)
    # Undo the prediction: high-pass sample j (at k = 1 - odd + 2 j) from the low-pass ones j - odd and
    # j + 1 - odd, written beside them.
    if not odd:
        for j in range(min(nh, nl - 1)):
            a = low[_u(j)]
            dst[_u(2 * j)] = a
            dst[_u(2 * j + 1)] = src[_u(nl + j)] + ((np.int64(a) + low[_u(j + 1)]) >> 1)
        if n % 2 == 0:  # the last sample is high-pass: it mirrors
            a = low[_u(nh - 1)]
            dst[_u(n - 2)] = a
            dst[_u(n - 1)] = src[_u(nl + nh - 1)] + np.int64(a)
        else:
            dst[_u(n - 1)] = low[_u(nl - 1)]
    else:
        dst[0] = src[_u(nl)] + np.int64(low[0])
        for j in range(1, min(nh, nl)):
            a = low[_u(j - 1)]
            dst[_u(2 * j - 1)] = a
            dst[_u(2 * j)] = src[_u(nl + j)] + ((np.int64(a) + low[_u(j)]) >> 1)
        if nh > nl:  # the last sample is high-pass: it mirrors
            a = low[_u(nl - 1)]
            dst[_u(n - 2)] = a
            dst[_u(n - 1)] = src[_u(nl + nl)] + np.int64(a)
        else:
            dst[_u(n - 1)] = low[_u(nl - 1)]


# ----------------------------------------------------------------------------- rows and columns


@njit(cache=True, nogil=True)
def _forward_rows(src: np.ndarray, dst: np.ndarray, ya: int, yb: int, w: int, odd: int, low_rows: int,
                  bands: np.ndarray) -> None:
    """Horizontal lifting of rows ``ya:yb`` of `src` into `dst`; ors the magnitudes into ``bands``.

    ``bands`` gets LL, HL, LH, HH in this order; rows below `low_rows` are low-pass ones.
    """
    ll = hl = lh = hh = 0
    for y in range(ya, yb):
        low, high = _forward_line(src[y], dst[y], w, odd)
        if y < low_rows:
            ll |= low
            hl |= high
        else:
            lh |= low
            hh |= high
    bands[0] |= ll
    bands[1] |= hl
    bands[2] |= lh
    bands[3] |= hh


@njit(cache=True, nogil=True)
def _inverse_rows(src: np.ndarray, dst: np.ndarray, ya: int, yb: int, w: int, odd: int) -> None:
    low = np.empty(w // 2 + 1, dtype=src.dtype)
    for y in range(ya, yb):
        _inverse_line(src[y], dst[y], w, odd, low)


@njit(cache=True, nogil=True)
def _forward_columns(src: np.ndarray, dst: np.ndarray, h: int, xa: int, xb: int, odd: int, shift: int) -> int:
    """Vertical lifting of ``src[:h, xa:xb] - shift`` into `dst`, whole rows at a time, low-pass rows first.

    `src` may be the frame itself (any integer type; `shift` its DC level
    shift).  Returns the bitwise or of ``t ^ (t >> 63)`` over the shifted
    samples ``t`` read, which is below ``2**(p-1)`` exactly when every one
    of them is a ``p``-bit two's complement value.
    """
    seen = 0
    if h == 1:
        row, out = src[0], dst[0]
        for x in range(xa, xb):
            t = np.int64(row[_u(x)]) - shift
            seen |= t ^ (t >> 63)
            out[_u(x)] = t * 2 if odd else t
        return seen
    nl = (h - odd + 1) >> 1
    j = nl
    for k in range(1 - odd, h, 2):
        out, mid = dst[j], src[k]
        up, down = src[k - 1 if k > 0 else 1], src[k + 1 if k + 1 < h else h - 2]
        for x in range(xa, xb):
            t = np.int64(mid[_u(x)]) - shift
            seen |= t ^ (t >> 63)
            out[_u(x)] = t - ((np.int64(up[_u(x)]) + np.int64(down[_u(x)]) - 2 * shift) >> 1)
        j += 1
    j = 0
    for k in range(odd, h, 2):
        out, mid = dst[j], src[k]
        up = dst[_high(k - 1 if k > 0 else 1, odd, nl)]
        down = dst[_high(k + 1 if k + 1 < h else h - 2, odd, nl)]
        for x in range(xa, xb):
            t = np.int64(mid[_u(x)]) - shift
            seen |= t ^ (t >> 63)
            out[_u(x)] = t + ((up[_u(x)] + down[_u(x)] + 2) >> 2)
        j += 1
    return seen


@njit(cache=True, nogil=True, inline="always")
def _finish_row(row: np.ndarray, out: np.ndarray, xa: int, xb: int, shift: int, low: int, high: int, lowest: int,
                highest: int) -> bool:
    """``out[xa:xb]`` from the int32 ``row``: DC level shift (in int32), clip to ``[low, high]``; True when
    a value is outside ``[lowest, highest]``."""
    bad = False
    for x in range(xa, xb):
        s = np.int32(row[_u(x)] + shift)
        s = low if s < low else (high if s > high else s)
        bad |= (s < lowest) | (s > highest)
        out[_u(x)] = s
    return bad


@njit(cache=True, nogil=True)
def _inverse_columns(src: np.ndarray, dst: np.ndarray, h: int, xa: int, xb: int, odd: int, out: np.ndarray,
                     done: bool, finish: tuple) -> int:
    """Row interleaving of ``src[:h, xa:xb]`` (low rows first) into `dst`, undoing the vertical lifting.

    When `done`, each row, once final, is also written to `out` (the
    frame, any integer type) level shifted and clipped as ``finish =
    (shift, low, high, lowest, highest)`` says, the row just made still in
    cache; the result is then 1 when a value written is outside ``[lowest,
    highest]``, else 0.
    """
    bad = False
    if h == 1:
        row, res = src[0], dst[0]
        for x in range(xa, xb):
            v = row[_u(x)]
            res[_u(x)] = (v // 2 if v >= 0 else -((-v) // 2)) if odd else v
        if done:
            bad |= _finish_row(res, out[0], xa, xb, finish[0], finish[1], finish[2], finish[3], finish[4])
        return int(bad)
    nl = (h - odd + 1) >> 1
    j = 0
    for k in range(odd, h, 2):
        res, mid = dst[k], src[j]
        up = src[_high(k - 1 if k > 0 else 1, odd, nl)]
        down = src[_high(k + 1 if k + 1 < h else h - 2, odd, nl)]
        for x in range(xa, xb):
            res[_u(x)] = mid[_u(x)] - ((up[_u(x)] + down[_u(x)] + 2) >> 2)
        j += 1
    j = nl
    for k in range(1 - odd, h, 2):
        res, mid = dst[k], src[j]
        up, down = dst[k - 1 if k > 0 else 1], dst[k + 1 if k + 1 < h else h - 2]
        for x in range(xa, xb):
            res[_u(x)] = mid[_u(x)] + ((up[_u(x)] + down[_u(x)]) >> 1)
        j += 1
        if done:  # rows k - 1 (low-pass, final since the first loop) and k are final
            if k > 0:
                bad |= _finish_row(up, out[k - 1], xa, xb, finish[0], finish[1], finish[2], finish[3], finish[4])
            bad |= _finish_row(res, out[k], xa, xb, finish[0], finish[1], finish[2], finish[3], finish[4])
    if done and (h - 1 - odd) % 2 == 0:  # the last row is low-pass: no high-pass row after it
        bad |= _finish_row(dst[h - 1], out[h - 1], xa, xb, finish[0], finish[1], finish[2], finish[3], finish[4])
    return int(bad)


# ----------------------------------------------------------------------------- two dimensions


def halves(n: int, align: int, pieces: int = 4) -> list[tuple[int, int]]:
    """``[0, n)`` in up to `pieces` runs of about equal length, the cuts at multiples of `align`."""
    cuts = sorted({min(n, (n * i // pieces + align - 1) // align * align) for i in range(1, pieces)} - {0, n})
    edges = [0, *cuts, n]
    return list(zip(edges, edges[1:]))


SPLIT_SAMPLES = 1 << 16  # levels smaller than this are not shared between threads


def shared(pool, work, parts: list) -> list:
    """``[work(*part) for part in parts]``, the parts taken in turn by this thread and one of `pool`'s.

    The two take runs one after the other, so a thread slowed by other
    processes takes fewer of them; if the pool's thread has not started
    when this one has done them all, it is not waited for.
    """
    if pool is None or len(parts) < 2:
        return [work(*part) for part in parts]
    results = [None] * len(parts)
    turns = itertools.count()  # next() on it is atomic

    def take() -> None:
        while (i := next(turns)) < len(parts):
            results[i] = work(*parts[i])

    helper = pool.submit(take)
    take()
    if not helper.cancel():
        helper.result()
    return results


def _extent(x0: int, y0: int, cols: int, rows: int, level: int) -> tuple[int, int, int, int]:
    u0 = -((-x0) >> level)
    v0 = -((-y0) >> level)
    w = -((-(x0 + cols)) >> level) - u0
    h = -((-(y0 + rows)) >> level) - v0
    return u0, v0, w, h


@njit(cache=True, nogil=True)
def _copy(src: np.ndarray, a: np.ndarray, shift: int, quad: np.ndarray) -> int:
    """``a = src - shift`` without a wavelet level: the range fold of :func:`forward`, the magnitudes in ``quad[0]``."""
    rows, cols = a.shape
    seen = 0
    mags = 0
    for y in range(rows):
        row, out = src[y], a[y]
        for x in range(cols):
            t = np.int64(row[_u(x)]) - shift
            seen |= t ^ (t >> 63)
            mags |= abs(t)
            out[_u(x)] = t
    quad[0] |= mags
    return seen


@njit(cache=True, nogil=True)
def _forward_all(a: np.ndarray, tmp: np.ndarray, src: np.ndarray, shift: int, first: int, levels: int, x0: int,
                 y0: int, bands: np.ndarray) -> int:
    """Levels ``first`` to ``levels - 1`` of :func:`forward` on one thread."""
    rows, cols = a.shape
    seen = 0
    for level in range(first, levels):
        u0 = -((-x0) >> level)
        v0 = -((-y0) >> level)
        w = -((-(x0 + cols)) >> level) - u0
        h = -((-(y0 + rows)) >> level) - v0
        if w == 0 or h == 0:
            return seen
        if level == 0:
            seen = _forward_columns(src, tmp, h, 0, w, v0 & 1, shift)
        else:
            _forward_columns(a, tmp, h, 0, w, v0 & 1, 0)
        _forward_rows(tmp, a, 0, h, w, u0 & 1, (h - (v0 & 1) + 1) >> 1, bands[level])
    return seen


def forward(a: np.ndarray, levels: int, x0: int, y0: int, src: np.ndarray | None = None, shift: int = 0,
            bands: np.ndarray | None = None, pool=None) -> int:
    """`levels` decompositions of the tile-component `a` whose first sample is at canvas (x0, y0).

    With `src` (same shape as `a`, any integer type) the samples are read
    from ``src - shift`` instead of `a`'s own (the DC level shift fused in
    the first pass); returns the bitwise or of ``t ^ (t >> 63)`` over those
    samples ``t``, which is below ``2**(p-1)`` exactly when all are
    ``p``-bit two's complement values.  `bands`, an int64 array of
    ``max(levels, 1)`` rows of four, gets or-ed into it the magnitudes of
    each level's LL, HL, LH and HH coefficients (the last level's LL is the
    final one; without levels, ``bands[0, 0]`` those of the samples).
    `pool` (an executor) shares each pass of the large levels between the
    calling thread and one of the pool's.
    """
    if src is None:
        src = a
    if bands is None:
        bands = np.zeros((max(levels, 1), 4), dtype=np.int64)
    rows, cols = a.shape
    if levels == 0:
        return _copy(src, a, shift, bands[0])
    tmp = np.empty((rows, cols), dtype=a.dtype)
    if pool is None or rows * cols < SPLIT_SAMPLES:
        return _forward_all(a, tmp, src, shift, 0, levels, x0, y0, bands)
    seen = 0
    for level in range(levels):
        u0, v0, w, h = _extent(x0, y0, cols, rows, level)
        if w == 0 or h == 0:
            break
        if w * h < SPLIT_SAMPLES:  # the rest on this thread
            seen |= _forward_all(a, tmp, src, shift, level, levels, x0, y0, bands)
            break
        first, s = (src, shift) if level == 0 else (a, 0)
        for got in shared(pool, lambda xa, xb: _forward_columns(first, tmp, h, xa, xb, v0 & 1, s),
                          halves(w, 16)):
            if level == 0:
                seen |= got
        parts = halves(h, 1)
        quads = np.zeros((len(parts), 4), dtype=np.int64)
        low_rows = (h - (v0 & 1) + 1) >> 1
        shared(pool, lambda ya, yb, i: _forward_rows(tmp, a, ya, yb, w, u0 & 1, low_rows, quads[i]),
                [(ya, yb, i) for i, (ya, yb) in enumerate(parts)])
        bands[level] |= np.bitwise_or.reduce(quads, axis=0)
    return int(seen)


@njit(cache=True, nogil=True)
def _inverse_all(a: np.ndarray, tmp: np.ndarray, stop: int, levels: int, x0: int, y0: int, out: np.ndarray,
                 done: bool, finish: tuple) -> int:
    """Levels ``levels - 1`` down to `stop` of :func:`inverse` on one thread."""
    rows, cols = a.shape
    bad = 0
    for level in range(levels - 1, stop - 1, -1):
        u0 = -((-x0) >> level)
        v0 = -((-y0) >> level)
        w = -((-(x0 + cols)) >> level) - u0
        h = -((-(y0 + rows)) >> level) - v0
        if w == 0 or h == 0:
            continue
        _inverse_rows(a, tmp, 0, h, w, u0 & 1)
        if level == 0:
            bad = _inverse_columns(tmp, a, h, 0, w, v0 & 1, out, done, finish)
        else:
            _inverse_columns(tmp, a, h, 0, w, v0 & 1, a, False, finish)
    return bad


NO_FINISH = (0, 0, 0, 0, 0)


def inverse(a: np.ndarray, levels: int, x0: int, y0: int, out: np.ndarray | None = None,
            finish: tuple[int, int, int, int, int] = NO_FINISH, pool=None) -> int:
    """Undo :func:`forward`.

    With `out` (same shape as `a`, any integer type) the samples are also
    written to `out` in the last pass, DC level shifted and clipped as
    ``finish = (shift, low, high, lowest, highest)`` says; returns 1 when
    one of them is outside ``[lowest, highest]``, else 0.  Needs at least
    one level for that.  `pool` shares the large levels' passes between the
    calling thread and one of the pool's.
    """
    rows, cols = a.shape
    done = out is not None
    if out is None:
        out = a
    if not rows or not cols or not levels:
        return 0
    tmp = np.empty((rows, cols), dtype=a.dtype)
    finish = tuple(int(v) for v in finish)
    if pool is None or rows * cols < SPLIT_SAMPLES:
        return _inverse_all(a, tmp, 0, levels, x0, y0, out, done, finish)
    small = levels  # levels below this one are large enough to share
    while small > 0 and _extent(x0, y0, cols, rows, small - 1)[2] * _extent(x0, y0, cols, rows, small - 1)[3] \
            < SPLIT_SAMPLES:
        small -= 1
    bad = 0
    if small < levels:  # the small levels on this thread
        bad = _inverse_all(a, tmp, small, levels, x0, y0, out, done, finish)
    for level in range(small - 1, -1, -1):
        u0, v0, w, h = _extent(x0, y0, cols, rows, level)
        if w == 0 or h == 0:
            continue
        shared(pool, lambda ya, yb: _inverse_rows(a, tmp, ya, yb, w, u0 & 1), halves(h, 1))
        last = level == 0
        target = out if last else a
        for got in shared(pool, lambda xa, xb: _inverse_columns(tmp, a, h, xa, xb, v0 & 1, target, done and last,
                                                                 finish), halves(w, 16)):
            bad |= got
    return bad


@njit(cache=True, nogil=True)
def finish_rows(planes: np.ndarray, out: np.ndarray, ya: int, yb: int, mct: bool, shifts: np.ndarray,
                lows: np.ndarray, highs: np.ndarray, lowest: int, highest: int) -> int:
    """Rows ``ya:yb`` of the frame region `out` (rows, columns, components) from the decoded ``planes``.

    The inverse reversible colour transform when `mct` (in int64, stored as
    int32), then per component the DC level shift (in int32) and the clip to
    ``[lows[c], highs[c]]``; 1 when a value is outside ``[lowest,
    highest]``, else 0.
    """
    nc, _, w = planes.shape
    bad = False
    if mct:
        s0, s1, s2 = shifts[0], shifts[1], shifts[2]
        for y in range(ya, yb):
            p0, p1, p2, o = planes[0, y], planes[1, y], planes[2, y], out[y]
            for x in range(w):
                cb, cr = np.int64(p1[_u(x)]), np.int64(p2[_u(x)])
                g = p0[_u(x)] - ((cb + cr) >> 2)
                r = np.int32(np.int32(cr + g) + s0)
                gg = np.int32(np.int32(g) + s1)
                b = np.int32(np.int32(cb + g) + s2)
                r = lows[0] if r < lows[0] else (highs[0] if r > highs[0] else r)
                gg = lows[1] if gg < lows[1] else (highs[1] if gg > highs[1] else gg)
                b = lows[2] if b < lows[2] else (highs[2] if b > highs[2] else b)
                bad |= (r < lowest) | (r > highest) | (gg < lowest) | (gg > highest) | (b < lowest) | (b > highest)
                o[x, 0] = r
                o[x, 1] = gg
                o[x, 2] = b
        return int(bad)
    for c in range(nc):
        for y in range(ya, yb):
            bad |= _finish_row(planes[c, y], out[y, :, c], 0, w, shifts[c], lows[c], highs[c], lowest, highest)
    return int(bad)


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
