"""The reversible 5/3 wavelet of JPEG 2000 (ITU-T T.800 Annex F), as numba kernels.

A tile-component is transformed into the Mallat layout: after each level
the low-pass samples of the current LL region sit in its first half (rows
and columns) and the high-pass ones in its second half, so the sub-bands of
level ``l`` sit where :func:`band_rect` says.
Sample parity follows the tile-component's position on the canvas: a sample
at an even absolute coordinate is low-pass, so a tile starting at an odd
coordinate begins with a high-pass sample (T.800 F.3.7 / F.4.7, eq. F-7).

Forward: vertical then horizontal lifting per level (2D_SD, F.4.2); inverse:
horizontal then vertical (2D_SR, F.3.2), both with whole-sample symmetric
extension, so the two are exact inverses in integer arithmetic.  Each
level is one pass down its rows (see "one level, streamed" below).  The
forward's first pass also reads the frame's samples, level-shifts them
and folds their magnitudes for the range check, and every forward pass
folds each sub-band's coefficient magnitudes for the guard bits; the
inverse's last pass level-shifts, clips, range-checks and writes the
frame's samples.
"""

from __future__ import annotations

import itertools

import numpy as np

from gateway.kernelcache import njit


def ceil_div_pow2(value: int, shift: int) -> int:
    """``ceil(value / 2**shift)`` for integers."""
    return -((-value) >> shift)


def level_extent(x0: int, x1: int, level: int) -> tuple[int, int]:
    """Absolute start and size of the LL region after `level` decompositions of ``[x0, x1)``."""
    a, b = ceil_div_pow2(x0, level), ceil_div_pow2(x1, level)
    return a, b - a


# ----------------------------------------------------------------------------- one dimension
#
# A line is lifted from one buffer into two (the low-pass half and the
# high-pass half, which sit in different arrays when a level's LL quadrant
# is kept apart) and back.  Indices are unsigned so that numba indexes
# without its negative-index test.

INT32_LOW = -(1 << 31)
INT32_HIGH = (1 << 31) - 1


@njit(cache=True, nogil=True, inline="always")
def _u(i: int) -> np.uint64:
    return np.uint64(i)


@njit(cache=True, nogil=True)
def _forward_line(src: np.ndarray, lo: np.ndarray, hi: np.ndarray, n: int, odd: int) -> tuple[int, int]:
    """Lift ``src[:n]`` (first sample at an odd coordinate when `odd`) into ``lo`` (low-pass) and ``hi``.

    Predict: ``x[k] -= (x[k-1] + x[k+1]) >> 1`` on the high-pass samples;
    update: ``x[k] += (x[k-1] + x[k+1] + 2) >> 2`` on the low-pass ones,
    mirrored at the ends (whole-sample symmetric extension).  Returns the
    bitwise or of the low-pass and of the high-pass magnitudes written.
    The samples are first split by parity into `lo` and `hi`, so that the
    lifting loops read consecutive samples (which the compiler vectorises);
    the ends, which mirror, are done apart so that those loops have no tests.
    """
    if n == 1:
        if odd:
            v = src[0] * 2
            hi[0] = v
            return 0, abs(v)
        v = src[0]
        lo[0] = v
        return abs(v), 0
    nl = (n - odd + 1) >> 1
    nh = n - nl
    m = n >> 1
    if odd:
        for p in range(m):
            hi[_u(p)] = src[_u(2 * p)]
            lo[_u(p)] = src[_u(2 * p + 1)]
        if n & 1:
            hi[_u(m)] = src[_u(n - 1)]
    else:
        for p in range(m):
            lo[_u(p)] = src[_u(2 * p)]
            hi[_u(p)] = src[_u(2 * p + 1)]
        if n & 1:
            lo[_u(m)] = src[_u(n - 1)]
    low = 0
    high = 0
    # High-pass sample j (at k = 1 - odd + 2 j) has the low-pass neighbours j - odd and j - odd + 1;
    # the first mirrors when odd (k = 0), the one after the last low-pass sample when it exists.
    if odd:
        v = hi[0] - np.int64(lo[0])
        hi[0] = v
        high |= abs(v)
    last = min(nh, nl + odd - 1)
    for j in range(odd, last):
        v = hi[_u(j)] - ((np.int64(lo[_u(j - odd)]) + lo[_u(j - odd + 1)]) >> 1)
        hi[_u(j)] = v
        high |= abs(v)
    if last < nh:
        v = hi[_u(last)] - np.int64(lo[_u(nl - 1)])
        hi[_u(last)] = v
        high |= abs(v)
    # Low-pass sample i (at k = odd + 2 i) has the high-pass neighbours i + odd - 1 and i + odd;
    # the first mirrors when not odd (k = 0), the last when no high-pass sample follows it.
    if not odd:
        v = lo[0] + ((np.int64(hi[0]) * 2 + 2) >> 2)
        lo[0] = v
        low |= abs(v)
    last = min(nl, nh - odd)
    for i in range(1 - odd, last):
        v = lo[_u(i)] + ((np.int64(hi[_u(i + odd - 1)]) + hi[_u(i + odd)] + 2) >> 2)
        lo[_u(i)] = v
        low |= abs(v)
    if last < nl:
        v = lo[_u(last)] + ((np.int64(hi[_u(last + odd - 1)]) * 2 + 2) >> 2)
        lo[_u(last)] = v
        low |= abs(v)
    return low, high


@njit(cache=True, nogil=True)
def _inverse_line(lo: np.ndarray, hi: np.ndarray, dst: np.ndarray, n: int, odd: int, low: np.ndarray) -> None:
    """Interleave ``lo`` (the low-pass half) and ``hi`` into ``dst[:n]``, undoing the lifting.

    The low-pass samples are first undone into the scratch line `low`, then
    written with the high-pass ones pair by pair (two neighbouring outputs
    per step, which the compiler vectorises, where one loop per parity
    would store every other sample); the ends, which mirror, are done apart.
    """
    if n == 1:
        if odd:
            v = hi[0]
            dst[0] = v // 2 if v >= 0 else -((-v) // 2)
        else:
            dst[0] = lo[0]
        return
    nl = (n - odd + 1) >> 1
    nh = n - nl
    # Undo the update: low-pass sample i (at k = odd + 2 i) from the high-pass ones odd + i - 1 and odd + i.
    first = 1 - odd
    last = nl - 1 if odd + 2 * (nl - 1) == n - 1 else nl
    if not odd:
        low[0] = lo[0] - ((np.int64(hi[0]) * 2 + 2) >> 2)
    for i in range(first, last):
        low[_u(i)] = lo[_u(i)] - ((np.int64(hi[_u(odd + i - 1)]) + hi[_u(odd + i)] + 2) >> 2)
    if last < nl and last >= first:
        low[_u(last)] = lo[_u(last)] - ((np.int64(hi[_u(odd + last - 1)]) * 2 + 2) >> 2)
    # Undo the prediction: high-pass sample j (at k = 1 - odd + 2 j) from the low-pass ones j - odd and
    # j + 1 - odd, written beside them.
    if not odd:
        for j in range(min(nh, nl - 1)):
            a = low[_u(j)]
            dst[_u(2 * j)] = a
            dst[_u(2 * j + 1)] = hi[_u(j)] + ((np.int64(a) + low[_u(j + 1)]) >> 1)
        if n % 2 == 0:  # the last sample is high-pass: it mirrors
            a = low[_u(nh - 1)]
            dst[_u(n - 2)] = a
            dst[_u(n - 1)] = hi[_u(nh - 1)] + np.int64(a)
        else:
            dst[_u(n - 1)] = low[_u(nl - 1)]
    else:
        dst[0] = hi[0] + np.int64(low[0])
        for j in range(1, min(nh, nl)):
            a = low[_u(j - 1)]
            dst[_u(2 * j - 1)] = a
            dst[_u(2 * j)] = hi[_u(j)] + ((np.int64(a) + low[_u(j)]) >> 1)
        if nh > nl:  # the last sample is high-pass: it mirrors
            a = low[_u(nl - 1)]
            dst[_u(n - 2)] = a
            dst[_u(n - 1)] = hi[_u(nl)] + np.int64(a)
        else:
            dst[_u(n - 1)] = low[_u(nl - 1)]


# ----------------------------------------------------------------------------- one level, streamed
#
# A level is one pass down its rows.  The forward pass lifts each high-pass
# row of the (level-shifted) source vertically into a ring of two lines as
# soon as a low-pass row needs it, lifts the low-pass row beside them, and
# lifts each finished line horizontally straight into its sub-bands; the
# inverse pass does the same backwards, writing each finished row to its
# destination (the frame, level shifted and clipped, after the last level).
# Only a few lines are live, so a level reads its source and writes its
# result once, from cache, where separate horizontal and vertical passes
# would each stream the whole tile-component through memory.
#
# The low-pass rows ``ia:ib`` of a pass and the high-pass rows between them
# are independent of other rows' results, so two threads can share a level
# by rows; a range not starting at row 0 first remakes the lines it needs
# of the rows before it.
#
# A level's LL quadrant is read from (inverse) or written to (forward) its
# own array ``ll``, which is the next coarser level's result or source:
# the Mallat array itself only at the coarsest level, so that no pass
# overwrites a row it has still to read.


@njit(cache=True, nogil=True)
def _forward_level(src: np.ndarray, shift: int, a: np.ndarray, ll: np.ndarray, h: int, w: int, ox: int, oy: int,
                   ia: int, ib: int, quad: np.ndarray) -> int:
    """Low-pass rows ``ia:ib`` of one forward level of ``src[:h, :w] - shift`` (and the high-pass rows after
    each, all the rest when ``ib`` is the last), the LL quadrant to `ll`, the others to `a`.

    `src` may be the frame itself (any integer type; `shift` its DC level
    shift).  ``quad`` gets or-ed into it the magnitudes of the LL, HL, LH
    and HH coefficients written.  Returns the bitwise or of ``t ^ (t >>
    63)`` over the shifted samples ``t`` read, which is below ``2**(p-1)``
    exactly when every one of them is a ``p``-bit two's complement value.
    """
    nlx = (w - ox + 1) >> 1
    nly = (h - oy + 1) >> 1
    nhy = h - nly
    ring = np.empty((3, w), dtype=a.dtype)  # high-pass row j at j & 1, the low-pass row at 2
    seen = 0
    ll_mag = hl_mag = lh_mag = hh_mag = 0
    if h == 1:
        row, line = src[0], ring[2]
        for x in range(w):
            t = np.int64(row[_u(x)]) - shift
            seen |= t ^ (t >> 63)
            line[_u(x)] = t * 2 if oy else t
        if oy:
            lh_mag, hh_mag = _forward_line(line, a[0], a[0][nlx:], w, ox)
        else:
            ll_mag, hl_mag = _forward_line(line, ll[0], a[0][nlx:], w, ox)
    else:
        made = -1  # the last high-pass row lifted into the ring
        for i in range(ia, ib):
            # Low-pass row i (at k = oy + 2 i) needs the high-pass rows at k - 1 and k + 1, mirrored.
            down = i + oy if i + oy < nhy else i + oy - 1
            up = i + oy - 1 if i + oy > 0 else down
            for j in range(max(made + 1, up), down + 1):
                k = 1 - oy + 2 * j
                above, mid, below = src[k - 1 if k > 0 else 1], src[k], src[k + 1 if k + 1 < h else h - 2]
                line = ring[j & 1]
                for x in range(w):
                    t = np.int64(mid[_u(x)]) - shift
                    seen |= t ^ (t >> 63)
                    line[_u(x)] = t - ((np.int64(above[_u(x)]) + np.int64(below[_u(x)]) - 2 * shift) >> 1)
            made = max(made, down)
            mid, above, below, line = src[oy + 2 * i], ring[up & 1], ring[down & 1], ring[2]
            for x in range(w):
                t = np.int64(mid[_u(x)]) - shift
                seen |= t ^ (t >> 63)
                line[_u(x)] = t + ((np.int64(above[_u(x)]) + below[_u(x)] + 2) >> 2)
            low, high = _forward_line(line, ll[i], a[i][nlx:], w, ox)
            ll_mag |= low
            hl_mag |= high
            j = i + oy - 1  # the high-pass row no later low-pass row needs
            if j >= 0:
                low, high = _forward_line(ring[j & 1], a[nly + j], a[nly + j][nlx:], w, ox)
                lh_mag |= low
                hh_mag |= high
        if ib == nly:  # the high-pass rows after the last low-pass one
            for j in range(max(nly + oy - 1, 0), nhy):
                line = ring[j & 1]
                if j > made:
                    k = 1 - oy + 2 * j
                    above, mid, below = src[k - 1 if k > 0 else 1], src[k], src[k + 1 if k + 1 < h else h - 2]
                    for x in range(w):
                        t = np.int64(mid[_u(x)]) - shift
                        seen |= t ^ (t >> 63)
                        line[_u(x)] = t - ((np.int64(above[_u(x)]) + np.int64(below[_u(x)]) - 2 * shift) >> 1)
                    made = j
                low, high = _forward_line(line, a[nly + j], a[nly + j][nlx:], w, ox)
                lh_mag |= low
                hh_mag |= high
    quad[0] |= ll_mag
    quad[1] |= hl_mag
    quad[2] |= lh_mag
    quad[3] |= hh_mag
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


@njit(cache=True, nogil=True, inline="always")
def _emit(line: np.ndarray, out: np.ndarray, k: int, w: int, final: bool, finish: tuple) -> bool:
    """Row `k` of `out` from the finished ``line``: finished as ``finish`` says when `final`, else copied."""
    if final:
        return _finish_row(line, out[k], 0, w, finish[0], finish[1], finish[2], finish[3], finish[4])
    row = out[k]
    for x in range(w):
        row[_u(x)] = line[_u(x)]
    return False


@njit(cache=True, nogil=True, inline="always")
def _undone(value: int, above: int, below: int, low: bool) -> np.int32:
    """One vertical lifting step undone on `value` with its neighbours: the update (`low`) or the prediction."""
    if low:
        return np.int32(value - ((np.int64(above) + below + 2) >> 2))
    return np.int32(value + ((np.int64(above) + below) >> 1))


@njit(cache=True, nogil=True, inline="always")
def _lifted_row(line: np.ndarray, above: np.ndarray, below: np.ndarray, out: np.ndarray, k: int, w: int,
                final: bool, finish: tuple, low: bool) -> bool:
    """Row `k` of `out` undoing one vertical lifting step on ``line`` with its neighbours ``above`` and
    ``below``: the update (``low``: the result also kept in ``line``) or the prediction.

    Finished as :func:`_emit` says, in the same loop.
    """
    row = out[k]
    bad = False
    if final:
        shift, lowest_kept, highest_kept, lowest, highest = finish
        for x in range(w):
            v = _undone(line[_u(x)], above[_u(x)], below[_u(x)], low)
            if low:
                line[_u(x)] = v
            s = np.int32(v + shift)
            s = lowest_kept if s < lowest_kept else (highest_kept if s > highest_kept else s)
            bad |= (s < lowest) | (s > highest)
            row[_u(x)] = s
    else:
        for x in range(w):
            v = _undone(line[_u(x)], above[_u(x)], below[_u(x)], low)
            if low:
                line[_u(x)] = v
            row[_u(x)] = v
    return bad


@njit(cache=True, nogil=True)
def _inverse_level(ll: np.ndarray, a: np.ndarray, h: int, w: int, ox: int, oy: int, out: np.ndarray,
                   final: bool, finish: tuple, ia: int, ib: int) -> int:
    """Low-pass rows ``ia:ib`` of one inverse level (and the high-pass rows after each, all the rest when
    ``ib`` is the last) from the sub-bands in `a` and the LL quadrant in `ll`, into ``out[:h, :w]``.

    When `final`, `out` is the frame (any integer type) and the rows are
    level shifted and clipped as ``finish = (shift, low, high, lowest,
    highest)`` says; the result is then 1 when a value written is outside
    ``[lowest, highest]``, else 0.
    """
    nlx = (w - ox + 1) >> 1
    nly = (h - oy + 1) >> 1
    nhy = h - nly
    ring = np.empty((4, w), dtype=a.dtype)  # high-pass row j at j & 1, low-pass row i at 2 + (i & 1)
    low = np.empty(w // 2 + 1, dtype=a.dtype)
    bad = False
    if h == 1:
        line = ring[0]
        if oy:  # one high-pass row: X = Y / 2
            _inverse_line(a[0], a[0][nlx:], line, w, ox, low)
            for x in range(w):
                v = line[_u(x)]
                line[_u(x)] = v // 2 if v >= 0 else -((-v) // 2)
        else:
            _inverse_line(ll[0], a[0][nlx:], line, w, ox, low)
        return int(_emit(line, out, 0, w, final, finish))
    made = -1  # the last high-pass row interleaved into the ring
    for i in range(ia - 1 if ia > 0 else 0, ib):
        # Low-pass row i (at k = oy + 2 i) needs the high-pass rows at k - 1 and k + 1, mirrored.
        down = i + oy if i + oy < nhy else i + oy - 1
        up = i + oy - 1 if i + oy > 0 else down
        for j in range(max(made + 1, up), down + 1):
            _inverse_line(a[nly + j], a[nly + j][nlx:], ring[j & 1], w, ox, low)
        made = max(made, down)
        line, above, below = ring[2 + (i & 1)], ring[up & 1], ring[down & 1]
        _inverse_line(ll[i], a[i][nlx:], line, w, ox, low)
        if i < ia:  # the row before the range, remade for the high-pass row after it
            for x in range(w):
                line[_u(x)] = line[_u(x)] - ((np.int64(above[_u(x)]) + below[_u(x)] + 2) >> 2)
            continue
        bad |= _lifted_row(line, above, below, out, oy + 2 * i, w, final, finish, True)
        j = i + oy - 1  # the high-pass row between low-pass rows i - 1 and i (i alone when first)
        if j >= 0:
            above = ring[2 + ((i - 1) & 1)] if j >= oy else line
            bad |= _lifted_row(ring[j & 1], above, line, out, 1 - oy + 2 * j, w, final, finish, False)
    if ib == nly:  # the high-pass rows after the last low-pass one, which they mirror about
        line = ring[2 + ((nly - 1) & 1)]
        for j in range(max(nly + oy - 1, 0), nhy):
            high = ring[j & 1]
            if j > made:
                _inverse_line(a[nly + j], a[nly + j][nlx:], high, w, ox, low)
                made = j
            bad |= _lifted_row(high, line, line, out, 1 - oy + 2 * j, w, final, finish, False)
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


def _scratch(a: np.ndarray, x0: int, y0: int, levels: int) -> np.ndarray:
    """Two arrays for the LL quadrants between levels, alternately (see :func:`_forward_all`)."""
    _, _, w, h = _extent(x0, y0, a.shape[1], a.shape[0], 1)
    return np.empty((2, h if levels > 1 else 0, w if levels > 1 else 0), dtype=a.dtype)


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
def _forward_all(a: np.ndarray, scratch: np.ndarray, src: np.ndarray, shift: int, first: int, levels: int, x0: int,
                 y0: int, bands: np.ndarray) -> int:
    """Levels ``first`` to ``levels - 1`` of :func:`forward` on one thread.

    Level ``l`` reads the frame (``l = 0``) or ``scratch[(l - 1) & 1]`` and
    writes its LL quadrant to ``scratch[l & 1]``, or to `a` when it is the
    last level.
    """
    rows, cols = a.shape
    seen = 0
    for level in range(first, levels):
        u0 = -((-x0) >> level)
        v0 = -((-y0) >> level)
        w = -((-(x0 + cols)) >> level) - u0
        h = -((-(y0 + rows)) >> level) - v0
        if w == 0 or h == 0:
            return seen
        ll = a if level == levels - 1 else scratch[level & 1]
        nly = (h - (v0 & 1) + 1) >> 1
        if level == 0:
            seen = _forward_level(src, shift, a, ll, h, w, u0 & 1, v0 & 1, 0, nly, bands[level])
        else:
            _forward_level(scratch[(level - 1) & 1], 0, a, ll, h, w, u0 & 1, v0 & 1, 0, nly, bands[level])
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
    `pool` (an executor) shares the rows of the large levels between the
    calling thread and one of the pool's.
    """
    if src is None:
        src = a.copy() if levels else a  # a level writes rows of `a` it has not read yet
    if bands is None:
        bands = np.zeros((max(levels, 1), 4), dtype=np.int64)
    rows, cols = a.shape
    if levels == 0:
        return _copy(src, a, shift, bands[0])
    if not rows or not cols:
        return 0
    scratch = _scratch(a, x0, y0, levels)
    if pool is None or rows * cols < SPLIT_SAMPLES:
        return _forward_all(a, scratch, src, shift, 0, levels, x0, y0, bands)
    seen = 0
    for level in range(levels):
        u0, v0, w, h = _extent(x0, y0, cols, rows, level)
        if w == 0 or h == 0:
            break
        if w * h < SPLIT_SAMPLES:  # the rest on this thread
            seen |= _forward_all(a, scratch, src, shift, level, levels, x0, y0, bands)
            break
        source, s = (src, shift) if level == 0 else (scratch[(level - 1) & 1], 0)
        ll = a if level == levels - 1 else scratch[level & 1]
        parts = halves((h - (v0 & 1) + 1) >> 1, 1)
        quads = np.zeros((len(parts), 4), dtype=np.int64)
        for got in shared(pool, lambda ia, ib, i: _forward_level(source, s, a, ll, h, w, u0 & 1, v0 & 1, ia, ib,
                                                                  quads[i]),
                          [(ia, ib, i) for i, (ia, ib) in enumerate(parts)]):
            if level == 0:
                seen |= got
        bands[level] |= np.bitwise_or.reduce(quads, axis=0)
    return int(seen)


@njit(cache=True, nogil=True)
def _inverse_all(a: np.ndarray, scratch: np.ndarray, stop: int, levels: int, x0: int, y0: int, out: np.ndarray,
                 finish: tuple) -> int:
    """Levels ``levels - 1`` down to `stop` of :func:`inverse` on one thread.

    Level ``l`` reads its LL quadrant from `a` (the last level) or
    ``scratch[l & 1]`` and writes ``scratch[(l - 1) & 1]``, or `out` (level 0).
    """
    rows, cols = a.shape
    bad = 0
    for level in range(levels - 1, stop - 1, -1):
        u0 = -((-x0) >> level)
        v0 = -((-y0) >> level)
        w = -((-(x0 + cols)) >> level) - u0
        h = -((-(y0 + rows)) >> level) - v0
        if w == 0 or h == 0:
            continue
        ll = a if level == levels - 1 else scratch[level & 1]
        nly = (h - (v0 & 1) + 1) >> 1
        if level == 0:
            bad = _inverse_level(ll, a, h, w, u0 & 1, v0 & 1, out, True, finish, 0, nly)
        else:
            _inverse_level(ll, a, h, w, u0 & 1, v0 & 1, scratch[(level - 1) & 1], False, finish, 0, nly)
    return bad


@njit(cache=True, nogil=True)
def _finish_all(a: np.ndarray, out: np.ndarray, finish: tuple) -> int:
    """`out` from `a` without a wavelet level, finished as :func:`inverse` says."""
    bad = False
    for y in range(a.shape[0]):
        bad |= _finish_row(a[y], out[y], 0, a.shape[1], finish[0], finish[1], finish[2], finish[3], finish[4])
    return int(bad)


NO_FINISH = (0, INT32_LOW, INT32_HIGH, INT32_LOW, INT32_HIGH)


def inverse(a: np.ndarray, levels: int, x0: int, y0: int, out: np.ndarray | None = None,
            finish: tuple[int, int, int, int, int] = NO_FINISH, pool=None) -> int:
    """Undo :func:`forward`.

    The samples are written to `out` (same shape as `a`, any integer type;
    `a` itself when None, then left unchanged by ``finish``), DC level
    shifted and clipped as ``finish = (shift, low, high, lowest, highest)``
    says; returns 1 when one of them is outside ``[lowest, highest]``, else
    0.  `a` is left with intermediate values.  `pool` shares the rows of
    the large levels between the calling thread and one of the pool's.
    """
    rows, cols = a.shape
    finish = tuple(int(v) for v in finish)
    if not rows or not cols:
        return 0
    if not levels:
        return 0 if out is None else _finish_all(a, out, finish)
    target = np.empty_like(a) if out is None else out
    scratch = _scratch(a, x0, y0, levels)
    if pool is None or rows * cols < SPLIT_SAMPLES:
        bad = _inverse_all(a, scratch, 0, levels, x0, y0, target, finish)
    else:
        small = levels  # levels below this one are large enough to share
        while small > 0 and _extent(x0, y0, cols, rows, small - 1)[2] * _extent(x0, y0, cols, rows, small - 1)[3] \
                < SPLIT_SAMPLES:
            small -= 1
        bad = 0
        if small < levels:  # the small levels on this thread
            bad = _inverse_all(a, scratch, small, levels, x0, y0, target, finish)
        for level in range(small - 1, -1, -1):
            u0, v0, w, h = _extent(x0, y0, cols, rows, level)
            if w == 0 or h == 0:
                continue
            ll = a if level == levels - 1 else scratch[level & 1]
            dst, last = (target, True) if level == 0 else (scratch[(level - 1) & 1], False)
            for got in shared(pool, lambda ia, ib: _inverse_level(ll, a, h, w, u0 & 1, v0 & 1, dst, last, finish,
                                                                   ia, ib),
                              halves((h - (v0 & 1) + 1) >> 1, 1)):
                bad |= got
    if out is None:
        a[...] = target
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
        # The three values of a pixel are made in one loop over consecutive samples (vectorised) into three
        # lines, then interleaved into the row by a second loop.
        lines = np.empty((3, w), dtype=np.int32)
        red, green, blue = lines[0], lines[1], lines[2]
        s0, s1, s2 = shifts[0], shifts[1], shifts[2]
        low0, low1, low2 = lows[0], lows[1], lows[2]
        high0, high1, high2 = highs[0], highs[1], highs[2]
        for y in range(ya, yb):
            p0, p1, p2, o = planes[0, y], planes[1, y], planes[2, y], out[y]
            for x in range(w):
                cb, cr = np.int64(p1[_u(x)]), np.int64(p2[_u(x)])
                g = p0[_u(x)] - ((cb + cr) >> 2)
                r = min(max(np.int32(np.int32(cr + g) + s0), low0), high0)
                gg = min(max(np.int32(np.int32(g) + s1), low1), high1)
                b = min(max(np.int32(np.int32(cb + g) + s2), low2), high2)
                bad |= (r < lowest) | (r > highest) | (gg < lowest) | (gg > highest) | (b < lowest) | (b > highest)
                red[_u(x)] = r
                green[_u(x)] = gg
                blue[_u(x)] = b
            for x in range(w):
                o[x, 0] = red[_u(x)]
                o[x, 1] = green[_u(x)]
                o[x, 2] = blue[_u(x)]
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
