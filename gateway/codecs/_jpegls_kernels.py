"""Numba kernels of the JPEG-LS lossless codec (ITU-T T.87, NEAR = 0).

Private: :mod:`gateway.codecs.jpegls` validates every argument before calling
these.  Integer arithmetic only, one compiled function per scan (or restart
interval), bit I/O state carried in local integers, helpers inlined.  The
kernels are compiled without numba's reference counting (``_nrt=False``):
all their arrays come from the caller (:func:`state` makes the context
table), so no atomic reference-count update sits in the inner loop, which
alone made them two to three times slower.

The image lives in a padded work array ``work[component, 1 + y, 1 + x]``
(int32): row 0 is the all-zero line above the first line, column 0 and column
``W + 1`` hold the edge samples that T.87 A.2.1 defines (``Ra`` of the first
sample is the sample above it, ``Rc`` is the ``Ra`` of the line above, ``Rd``
of the last sample is the sample above it), set just before each line is
coded, so the inner loops have no edge branches.

Kernel results: encoders return the number of bytes written, or -1 when the
output buffer is too small; decoders return 0, or a negative error code
(see ``ERRORS``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba.cpython.unsafe.numbers import leading_zeros

from gateway.kernelcache import njit

# T.87 Table A.2: order of the run-length codes, by RUNindex.
J = np.array(
    [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    dtype=np.int64,
)
# Leading zero bits of a byte (8 for zero).
_LZ8 = np.array([8 - int(i).bit_length() for i in range(256)], dtype=np.int64)

# Indices into the int64 parameter vector handed to every kernel.
P_MAXVAL, P_T1, P_T2, P_T3, P_RESET, P_LIMIT, P_QBPP = range(7)

ERR_GOLOMB = -1  # a Golomb code longer than LIMIT allows
ERR_RANGE = -2  # a reconstructed sample outside 0..MAXVAL
ERR_OVERRUN = -3  # the scan needs more bits than its entropy-coded segment holds
ERR_RUN = -4  # a run longer than the rest of its line
ERRORS = {
    ERR_GOLOMB: "a Golomb code exceeds the length limit LIMIT",
    ERR_RANGE: "a decoded sample lies outside 0..MAXVAL",
    ERR_OVERRUN: "the entropy-coded segment ends before the scan does",
    ERR_RUN: "a run is longer than the rest of its line",
}

_N_CONTEXTS = 367  # 365 regular contexts, then the two run-interruption contexts


@njit(cache=True)
def quantiser(maxval: int, t1: int, t2: int, t3: int) -> np.ndarray:
    """Gradient quantisation Q(d) of T.87 A.3.3 for d in -MAXVAL..MAXVAL, at index d + MAXVAL."""
    lut = np.empty(2 * maxval + 1, dtype=np.int8)
    for i in range(2 * maxval + 1):
        d = i - maxval
        if d <= -t3:
            v = -4
        elif d <= -t2:
            v = -3
        elif d <= -t1:
            v = -2
        elif d < 0:
            v = -1
        elif d == 0:
            v = 0
        elif d < t1:
            v = 1
        elif d < t2:
            v = 2
        elif d < t3:
            v = 3
        else:
            v = 4
        lut[i] = v
    return lut


@lru_cache(maxsize=32)
def _cached_quantiser(maxval: int, t1: int, t2: int, t3: int) -> np.ndarray:
    """The quantiser, built once per parameter set (131071 entries at 16 bits) and never written."""
    lut = quantiser(maxval, t1, t2, t3)
    lut.flags.writeable = False
    return lut


def state(prm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fresh coder state for a scan or restart interval.

    Returns the gradient quantiser and the context table: rows A, B, C, N
    and Nn initialised as T.87 A.2.1 prescribes (columns 0..364 regular
    contexts, 365 and 366 the run-interruption ones), then a row of RUNindex
    per component.
    """
    maxval = int(prm[P_MAXVAL])
    lut = _cached_quantiser(maxval, int(prm[P_T1]), int(prm[P_T2]), int(prm[P_T3]))
    ctx = np.zeros((6, _N_CONTEXTS), dtype=np.int64)
    ctx[0] = max(2, (maxval + 1 + 32) // 64)
    ctx[3] = 1
    return lut, ctx


@njit(cache=True, _nrt=False, inline="always")
def _predict(ra: int, rb: int, rc: int) -> int:
    """The median edge detector of T.87 A.4.1."""
    mx = max(ra, rb)
    mn = min(ra, rb)
    inner = ra + rb - rc
    edge = mn if rc >= mx else mx
    return edge if rc >= mx or rc <= mn else inner


@njit(cache=True, _nrt=False, inline="always")
def _update(A, B, C, N, q: int, err: int, reset: int) -> None:
    """Context update and bias correction of T.87 A.6.1 and A.6.2."""
    b = B[q] + err
    A[q] += abs(err)
    n = N[q]
    if n == reset:
        A[q] >>= 1
        b >>= 1
        n >>= 1
    n += 1
    N[q] = n
    if b <= -n:
        b += n
        if C[q] > -128:
            C[q] -= 1
        if b <= -n:
            b = -n + 1
    elif b > 0:
        b -= n
        if C[q] < 127:
            C[q] += 1
        if b > 0:
            b = 0
    B[q] = b


@njit(cache=True, _nrt=False, inline="always")
def _golomb_k(n: int, a: int) -> int:
    """The smallest k with ``n << k >= a`` (T.87 A.5.1), from the bit lengths of n and a."""
    if n >= a:
        return 0
    k = leading_zeros(n) - leading_zeros(a)
    if (n << k) < a:
        k += 1
    return k


@njit(cache=True, _nrt=False, inline="always")
def _ri_k(A, N, q: int, ritype: int) -> int:
    temp = A[q] + (N[q] >> 1) if ritype else A[q]
    return _golomb_k(N[q], temp)


@njit(cache=True, _nrt=False, inline="always")
def _ri_update(A, N, Nn, q: int, err: int, em: int, ritype: int, reset: int) -> None:
    """Run-interruption context update of T.87 A.7.2.2."""
    Nn[q] -= err >> 63  # one more negative error
    A[q] += (em + 1 - ritype) >> 1
    if N[q] == reset:
        A[q] >>= 1
        N[q] >>= 1
        Nn[q] >>= 1
    N[q] += 1


# --------------------------------------------------------------------------- writer


@njit(cache=True, _nrt=False, inline="always")
def _drain(out, pos: int, acc: int, nb: int, ff: bool) -> tuple[int, int, bool]:
    """Move whole bytes from the bit accumulator to `out`, stuffing a 0 bit after 0xFF."""
    while True:
        if ff:
            if nb < 7:
                break
            b = (acc >> (nb - 7)) & 0x7F
            nb -= 7
        else:
            if nb < 8:
                break
            b = (acc >> (nb - 8)) & 0xFF
            nb -= 8
        out[pos] = b
        pos += 1
        ff = b == 0xFF
    return pos, nb, ff


@njit(cache=True, _nrt=False, inline="always")
def _put(out, pos: int, acc: int, nb: int, ff: bool, value: int, n: int) -> tuple[int, int, int, bool]:
    """Append the `n` (<= 31) low bits of `value`, most significant first."""
    acc = (acc << n) | value
    nb += n
    if nb >= 32:
        pos, nb, ff = _drain(out, pos, acc, nb, ff)
    return pos, acc, nb, ff


@njit(cache=True, _nrt=False, inline="always")
def _put_golomb(out, pos, acc, nb, ff, value: int, k: int, limit: int, qbpp: int):
    """Limited-length Golomb code LG(k, limit) of T.87 A.5.3."""
    hi = value >> k
    if hi < limit - qbpp - 1:
        if hi + k < 31:
            return _put(out, pos, acc, nb, ff, (1 << k) | (value & ((1 << k) - 1)), hi + k + 1)
        while hi > 24:
            pos, acc, nb, ff = _put(out, pos, acc, nb, ff, 0, 24)
            hi -= 24
        pos, acc, nb, ff = _put(out, pos, acc, nb, ff, 1, hi + 1)
        if k > 16:
            pos, acc, nb, ff = _put(out, pos, acc, nb, ff, (value >> 16) & ((1 << (k - 16)) - 1), k - 16)
            k = 16
        return _put(out, pos, acc, nb, ff, value & ((1 << k) - 1), k)
    z = limit - qbpp - 1
    while z > 24:
        pos, acc, nb, ff = _put(out, pos, acc, nb, ff, 0, 24)
        z -= 24
    pos, acc, nb, ff = _put(out, pos, acc, nb, ff, 1, z + 1)
    return _put(out, pos, acc, nb, ff, (value - 1) & ((1 << qbpp) - 1), qbpp)


@njit(cache=True, _nrt=False, inline="always")
def _finish(out, pos: int, acc: int, nb: int, ff: bool) -> int:
    """Pad the last byte with zero bits; a final 0xFF gets its stuffed byte."""
    pos, nb, ff = _drain(out, pos, acc, nb, ff)
    if nb > 0:
        width = 7 if ff else 8
        acc <<= width - nb
        pos, nb, ff = _drain(out, pos, acc, width, ff)
    if ff:
        out[pos] = 0
        pos += 1
    return pos


@njit(cache=True, _nrt=False, inline="always")
def _encode_regular(out, pos, acc, nb, ff, ix, ra, rb, rc, rd, lut, A, B, C, N, maxval, limit, qbpp, reset):
    """Code one sample in regular mode (T.87 A.3 to A.6); `ix` is the actual value."""
    q = 81 * lut[rd - rb + maxval] + 9 * lut[rb - rc + maxval] + lut[rc - ra + maxval]
    # Context sign (T.87 A.3.4) as a mask, 0 or -1, without a branch: it is data-dependent.
    neg = q >> 63
    q = (q ^ neg) - neg
    sign = neg | 1
    px = _predict(ra, rb, rc) + sign * C[q]
    if px < 0:
        px = 0
    elif px > maxval:
        px = maxval
    err = (ix - px) * sign
    rng = maxval + 1
    # Modulo reduction (T.87 A.4.5) into -RANGE/2 .. RANGE/2 - 1, branch-free.
    err += rng & (err >> 63)
    err -= rng & ((((rng + 1) >> 1) - 1 - err) >> 63)
    n = N[q]
    a = A[q]
    k = _golomb_k(n, a)
    # Error mapping (T.87 A.5.2), branch-free: 2|e| or 2|e| - 1 by sign, one more in the special case.
    special = 1 if k == 0 and 2 * B[q] <= -n else 0
    merr = ((err << 1) ^ (err >> 63)) ^ special
    pos, acc, nb, ff = _put_golomb(out, pos, acc, nb, ff, merr, k, limit, qbpp)
    _update(A, B, C, N, q, err, reset)
    return pos, acc, nb, ff


@njit(cache=True, _nrt=False, inline="always")
def _encode_interruption(out, pos, acc, nb, ff, ix, ra, rb, ritype, ri, A, N, Nn, maxval, limit, qbpp, reset):
    """Code a run-interruption sample (T.87 A.7.2) in context 365 + `ritype`."""
    rng = maxval + 1
    if ritype:
        err = ix - ra
    else:
        err = ix - rb
        if ra > rb:
            err = -err
    if err < 0:
        err += rng
    if err >= (rng + 1) >> 1:
        err -= rng
    q = 365 + ritype
    k = _ri_k(A, N, q, ritype)
    n = N[q]
    if k == 0 and err > 0 and 2 * Nn[q] < n:
        mp = 1
    elif err < 0 and 2 * Nn[q] >= n:
        mp = 1
    elif err < 0 and k != 0:
        mp = 1
    else:
        mp = 0
    em = 2 * abs(err) - ritype - mp
    pos, acc, nb, ff = _put_golomb(out, pos, acc, nb, ff, em, k, limit - J[ri] - 1, qbpp)
    _ri_update(A, N, Nn, q, err, em, ritype, reset)
    return pos, acc, nb, ff


@njit(cache=True, _nrt=False)
def encode_lines(work, comps, r0, r1, prm, lut, ctx, out) -> int:
    """Encode lines ``r0..r1-1`` (padded row numbers) with ILV 0 (one component) or 1 (line interleaved).

    Contexts are shared by the components of the scan, RUNindex is kept per
    component (T.87 A.2.1 and B.3); `ctx` holds both, fresh from
    :func:`state` at the start of a scan or restart interval.
    """
    maxval, limit, qbpp, reset = prm[P_MAXVAL], prm[P_LIMIT], prm[P_QBPP], prm[P_RESET]
    W = work.shape[2] - 2
    nc = comps.shape[0]
    A, B, C, N, Nn, runindex = ctx[0], ctx[1], ctx[2], ctx[3], ctx[4], ctx[5]
    margin = 10 * W + 64
    cap = out.shape[0]
    pos = 0
    acc = 0
    nb = 0
    ff = False
    for r in range(r0, r1):
        if pos + margin * nc > cap:
            return -1
        for ci in range(nc):
            plane = work[comps[ci]]
            prev = plane[r - 1]
            cur = plane[r]
            cur[0] = prev[1]
            prev[W + 1] = prev[W]
            ri = runindex[ci]
            x = 1
            while x <= W:
                ra = np.int64(cur[x - 1])
                rb = np.int64(prev[x])
                rc = np.int64(prev[x - 1])
                rd = np.int64(prev[x + 1])
                if rd == rb and rb == rc and rc == ra:
                    # Run mode (T.87 A.7.1): all three gradients are zero.
                    cnt = 0
                    while x <= W and cur[x] == ra:
                        cnt += 1
                        x += 1
                    while cnt >= (1 << J[ri]):
                        pos, acc, nb, ff = _put(out, pos, acc, nb, ff, 1, 1)
                        cnt -= 1 << J[ri]
                        if ri < 31:
                            ri += 1
                    if x > W:
                        if cnt > 0:
                            pos, acc, nb, ff = _put(out, pos, acc, nb, ff, 1, 1)
                        break
                    pos, acc, nb, ff = _put(out, pos, acc, nb, ff, cnt, J[ri] + 1)
                    rb = np.int64(prev[x])
                    ritype = 1 if ra == rb else 0
                    pos, acc, nb, ff = _encode_interruption(
                        out, pos, acc, nb, ff, np.int64(cur[x]), ra, rb, ritype, ri, A, N, Nn, maxval, limit, qbpp, reset
                    )
                    if ri > 0:
                        ri -= 1
                else:
                    pos, acc, nb, ff = _encode_regular(
                        out, pos, acc, nb, ff, np.int64(cur[x]), ra, rb, rc, rd, lut, A, B, C, N, maxval, limit, qbpp, reset
                    )
                x += 1
            runindex[ci] = ri
    return _finish(out, pos, acc, nb, ff)


@njit(cache=True, _nrt=False)
def encode_samples(work, r0, r1, prm, lut, ctx, out) -> int:
    """Encode one scan of three components with ILV 2 (sample interleaved).

    A pixel goes to run mode when the gradients of every component are zero;
    a run-interruption pixel codes each component in context 365 with
    ``Px = Rb`` (the form CharLS and libjpeg use for sample interleaving).
    """
    maxval, limit, qbpp, reset = prm[P_MAXVAL], prm[P_LIMIT], prm[P_QBPP], prm[P_RESET]
    W = work.shape[2] - 2
    A, B, C, N, Nn = ctx[0], ctx[1], ctx[2], ctx[3], ctx[4]
    ri = 0
    margin = 30 * W + 64
    cap = out.shape[0]
    pos = 0
    acc = 0
    nb = 0
    ff = False
    p0 = work[0]
    p1 = work[1]
    p2 = work[2]
    for r in range(r0, r1):
        if pos + margin > cap:
            return -1
        for c in range(3):
            work[c, r, 0] = work[c, r - 1, 1]
            work[c, r - 1, W + 1] = work[c, r - 1, W]
        x = 1
        while x <= W:
            flat = True
            for c in range(3):
                if not (work[c, r - 1, x + 1] == work[c, r - 1, x]
                        and work[c, r - 1, x] == work[c, r - 1, x - 1]
                        and work[c, r - 1, x - 1] == work[c, r, x - 1]):
                    flat = False
                    break
            if flat:
                a0 = p0[r, x - 1]
                a1 = p1[r, x - 1]
                a2 = p2[r, x - 1]
                cnt = 0
                while x <= W and p0[r, x] == a0 and p1[r, x] == a1 and p2[r, x] == a2:
                    cnt += 1
                    x += 1
                while cnt >= (1 << J[ri]):
                    pos, acc, nb, ff = _put(out, pos, acc, nb, ff, 1, 1)
                    cnt -= 1 << J[ri]
                    if ri < 31:
                        ri += 1
                if x > W:
                    if cnt > 0:
                        pos, acc, nb, ff = _put(out, pos, acc, nb, ff, 1, 1)
                    break
                pos, acc, nb, ff = _put(out, pos, acc, nb, ff, cnt, J[ri] + 1)
                for c in range(3):
                    pos, acc, nb, ff = _encode_interruption(
                        out, pos, acc, nb, ff, np.int64(work[c, r, x]), np.int64(work[c, r, x - 1]),
                        np.int64(work[c, r - 1, x]), 0, ri, A, N, Nn, maxval, limit, qbpp, reset,
                    )
                if ri > 0:
                    ri -= 1
            else:
                for c in range(3):
                    pos, acc, nb, ff = _encode_regular(
                        out, pos, acc, nb, ff, np.int64(work[c, r, x]), np.int64(work[c, r, x - 1]),
                        np.int64(work[c, r - 1, x]), np.int64(work[c, r - 1, x - 1]),
                        np.int64(work[c, r - 1, x + 1]), lut, A, B, C, N, maxval, limit, qbpp, reset,
                    )
            x += 1
    return _finish(out, pos, acc, nb, ff)


# --------------------------------------------------------------------------- reader


@njit(cache=True)
def segment_end(data, start: int) -> int:
    """Index of the first marker (0xFF then a byte >= 0x80) at or after `start`, or len(data)."""
    n = data.shape[0]
    i = start
    while i + 1 < n:
        if data[i] == 0xFF and data[i + 1] >= 0x80:
            return i
        i += 1
    return n


@njit(cache=True, _nrt=False, inline="always")
def _fill(data, end: int, pos: int, acc: int, nb: int, ff: bool) -> tuple[int, int, int, bool]:
    """Top the bit accumulator up to more than 48 bits; past `end`, feed zero bytes."""
    while nb <= 48:
        b = np.int64(data[pos]) if pos < end else 0
        pos += 1
        if ff:
            acc = (acc << 7) | b
            nb += 7
        else:
            acc = (acc << 8) | b
            nb += 8
        ff = b == 0xFF
    return pos, acc, nb, ff


@njit(cache=True, _nrt=False, inline="always")
def _get_golomb(data, end, pos, acc, nb, ff, k: int, limit: int, qbpp: int):
    """Read a limited-length Golomb code; the value is -1 when the code is too long."""
    if nb < 32:
        pos, acc, nb, ff = _fill(data, end, pos, acc, nb, ff)
    q = 0
    while True:
        top = (acc >> (nb - 8)) & 0xFF
        if top != 0:
            z = _LZ8[top]
            q += z
            nb -= z + 1
            break
        q += 8
        nb -= 8
        if q > limit:
            return -1, pos, acc, nb, ff
        if nb < 8:
            pos, acc, nb, ff = _fill(data, end, pos, acc, nb, ff)
    qmax = limit - qbpp - 1
    if q < qmax:
        if k == 0:
            return q, pos, acc, nb, ff
        if nb < k:
            pos, acc, nb, ff = _fill(data, end, pos, acc, nb, ff)
        v = (q << k) | ((acc >> (nb - k)) & ((1 << k) - 1))
        return v, pos, acc, nb - k, ff
    if q == qmax:
        if nb < qbpp:
            pos, acc, nb, ff = _fill(data, end, pos, acc, nb, ff)
        v = ((acc >> (nb - qbpp)) & ((1 << qbpp) - 1)) + 1
        return v, pos, acc, nb - qbpp, ff
    return -1, pos, acc, nb, ff


@njit(cache=True, _nrt=False, inline="always")
def _decode_regular(data, end, pos, acc, nb, ff, ra, rb, rc, rd, lut, A, B, C, N, maxval, limit, qbpp, reset):
    """Decode one regular-mode sample; the value is negative on error."""
    q = 81 * lut[rd - rb + maxval] + 9 * lut[rb - rc + maxval] + lut[rc - ra + maxval]
    # Context sign (T.87 A.3.4) as a mask, 0 or -1, without a branch: it is data-dependent.
    neg = q >> 63
    q = (q ^ neg) - neg
    sign = neg | 1
    px = _predict(ra, rb, rc) + sign * C[q]
    if px < 0:
        px = 0
    elif px > maxval:
        px = maxval
    n = N[q]
    a = A[q]
    k = _golomb_k(n, a)
    merr, pos, acc, nb, ff = _get_golomb(data, end, pos, acc, nb, ff, k, limit, qbpp)
    if merr < 0:
        return ERR_GOLOMB, pos, acc, nb, ff
    # Inverse error mapping (T.87 A.5.2), branch-free: the parity of MErrval is random.
    special = 1 if k == 0 and 2 * B[q] <= -n else 0
    err = (merr >> 1) ^ -((merr & 1) ^ special)
    _update(A, B, C, N, q, err, reset)
    ix = px + sign * err
    if ix < 0:
        ix += maxval + 1
    elif ix > maxval:
        ix -= maxval + 1
    if ix < 0 or ix > maxval:
        return ERR_RANGE, pos, acc, nb, ff
    return ix, pos, acc, nb, ff


@njit(cache=True, _nrt=False, inline="always")
def _decode_interruption(data, end, pos, acc, nb, ff, ra, rb, ritype, ri, A, N, Nn, maxval, limit, qbpp, reset):
    """Decode a run-interruption sample; the value is negative on error."""
    q = 365 + ritype
    k = _ri_k(A, N, q, ritype)
    em, pos, acc, nb, ff = _get_golomb(data, end, pos, acc, nb, ff, k, limit - J[ri] - 1, qbpp)
    if em < 0:
        return ERR_GOLOMB, pos, acc, nb, ff
    t = em + ritype
    mp = t & 1
    mag = (t + mp) >> 1
    # Sign of the error and reconstruction, branch-free (both depend on the data).
    flip = (1 if k != 0 or 2 * Nn[q] >= N[q] else 0) ^ mp ^ 1
    err = (mag ^ -flip) + flip
    _ri_update(A, N, Nn, q, err, em, ritype, reset)
    base = ra if ritype else rb
    neg = -1 if ritype == 0 and ra > rb else 0
    ix = base + ((err ^ neg) - neg)
    if ix < 0:
        ix += maxval + 1
    elif ix > maxval:
        ix -= maxval + 1
    if ix < 0 or ix > maxval:
        return ERR_RANGE, pos, acc, nb, ff
    return ix, pos, acc, nb, ff


@njit(cache=True, _nrt=False, inline="always")
def _overrun(end: int, pos: int, nb: int) -> bool:
    """True when more bits were consumed than the segment holds (zero bytes fed past its end)."""
    return pos > end and (pos - end) * 8 > nb


@njit(cache=True, _nrt=False)
def decode_lines(data, start, end, work, comps, r0, r1, prm, lut, ctx) -> int:
    """Decode lines ``r0..r1-1`` (padded row numbers) of a scan with ILV 0 or 1.

    `data[start:end]` is one entropy-coded segment (a whole scan, or one
    restart interval); `ctx` is fresh from :func:`state`.
    """
    maxval, limit, qbpp, reset = prm[P_MAXVAL], prm[P_LIMIT], prm[P_QBPP], prm[P_RESET]
    W = work.shape[2] - 2
    nc = comps.shape[0]
    A, B, C, N, Nn, runindex = ctx[0], ctx[1], ctx[2], ctx[3], ctx[4], ctx[5]
    pos = start
    acc = 0
    nb = 0
    ff = False
    for r in range(r0, r1):
        if pos - end > 8:
            return ERR_OVERRUN
        for ci in range(nc):
            plane = work[comps[ci]]
            prev = plane[r - 1]
            cur = plane[r]
            cur[0] = prev[1]
            prev[W + 1] = prev[W]
            ri = runindex[ci]
            x = 1
            ra = np.int64(cur[0])
            rb = np.int64(prev[1])
            rc = np.int64(prev[0])
            while x <= W:
                rd = np.int64(prev[x + 1])
                if rd == rb and rb == rc and rc == ra:
                    # Run mode: read run-length bits until a 0 or the end of the line.
                    left = W - x + 1
                    cnt = 0
                    while True:
                        if nb < 8:
                            pos, acc, nb, ff = _fill(data, end, pos, acc, nb, ff)
                        nb -= 1
                        if (acc >> nb) & 1 == 0:
                            break
                        step = 1 << J[ri]
                        if step > left - cnt:
                            step = left - cnt
                        else:
                            if ri < 31:
                                ri += 1
                        cnt += step
                        if cnt == left:
                            break
                    if cnt < left:
                        j = J[ri]
                        if j > 0:
                            if nb < 32:
                                pos, acc, nb, ff = _fill(data, end, pos, acc, nb, ff)
                            cnt += (acc >> (nb - j)) & ((1 << j) - 1)
                            nb -= j
                        if cnt >= left:
                            return ERR_RUN
                    cur[x:x + cnt] = ra  # a slice: plain stores (an indexed loop became scatters)
                    x += cnt
                    if x > W:
                        break
                    rb = np.int64(prev[x])
                    ritype = 1 if ra == rb else 0
                    ix, pos, acc, nb, ff = _decode_interruption(
                        data, end, pos, acc, nb, ff, ra, rb, ritype, ri, A, N, Nn, maxval, limit, qbpp, reset
                    )
                    if ix < 0:
                        return ix
                    if ri > 0:
                        ri -= 1
                    cur[x] = ix
                    x += 1
                    ra = ix
                    rc = rb
                    rb = np.int64(prev[x])
                else:
                    ix, pos, acc, nb, ff = _decode_regular(
                        data, end, pos, acc, nb, ff, ra, rb, rc, rd, lut, A, B, C, N, maxval, limit, qbpp, reset
                    )
                    if ix < 0:
                        return ix
                    cur[x] = ix
                    x += 1
                    ra = ix
                    rc = rb
                    rb = rd
            runindex[ci] = ri
    if _overrun(end, pos, nb):
        return ERR_OVERRUN
    return 0


@njit(cache=True, _nrt=False)
def decode_samples(data, start, end, work, r0, r1, prm, lut, ctx) -> int:
    """Decode lines ``r0..r1-1`` of a three-component scan with ILV 2 (sample interleaved)."""
    maxval, limit, qbpp, reset = prm[P_MAXVAL], prm[P_LIMIT], prm[P_QBPP], prm[P_RESET]
    W = work.shape[2] - 2
    A, B, C, N, Nn = ctx[0], ctx[1], ctx[2], ctx[3], ctx[4]
    ri = 0
    pos = start
    acc = 0
    nb = 0
    ff = False
    for r in range(r0, r1):
        if pos - end > 8:
            return ERR_OVERRUN
        for c in range(3):
            work[c, r, 0] = work[c, r - 1, 1]
            work[c, r - 1, W + 1] = work[c, r - 1, W]
        x = 1
        while x <= W:
            flat = True
            for c in range(3):
                if not (work[c, r - 1, x + 1] == work[c, r - 1, x]
                        and work[c, r - 1, x] == work[c, r - 1, x - 1]
                        and work[c, r - 1, x - 1] == work[c, r, x - 1]):
                    flat = False
                    break
            if flat:
                left = W - x + 1
                cnt = 0
                while True:
                    if nb < 8:
                        pos, acc, nb, ff = _fill(data, end, pos, acc, nb, ff)
                    nb -= 1
                    if (acc >> nb) & 1 == 0:
                        break
                    step = 1 << J[ri]
                    if step > left - cnt:
                        step = left - cnt
                    else:
                        if ri < 31:
                            ri += 1
                    cnt += step
                    if cnt == left:
                        break
                if cnt < left:
                    j = J[ri]
                    if j > 0:
                        if nb < 32:
                            pos, acc, nb, ff = _fill(data, end, pos, acc, nb, ff)
                        cnt += (acc >> (nb - j)) & ((1 << j) - 1)
                        nb -= j
                    if cnt >= left:
                        return ERR_RUN
                for c in range(3):
                    work[c, r, x:x + cnt] = work[c, r, x - 1]
                x += cnt
                if x > W:
                    break
                for c in range(3):
                    ix, pos, acc, nb, ff = _decode_interruption(
                        data, end, pos, acc, nb, ff, np.int64(work[c, r, x - 1]),
                        np.int64(work[c, r - 1, x]), 0, ri, A, N, Nn, maxval, limit, qbpp, reset,
                    )
                    if ix < 0:
                        return ix
                    work[c, r, x] = ix
                if ri > 0:
                    ri -= 1
            else:
                for c in range(3):
                    ix, pos, acc, nb, ff = _decode_regular(
                        data, end, pos, acc, nb, ff, np.int64(work[c, r, x - 1]),
                        np.int64(work[c, r - 1, x]), np.int64(work[c, r - 1, x - 1]),
                        np.int64(work[c, r - 1, x + 1]), lut, A, B, C, N, maxval, limit, qbpp, reset,
                    )
                    if ix < 0:
                        return ix
                    work[c, r, x] = ix
            x += 1
    if _overrun(end, pos, nb):
        return ERR_OVERRUN
    return 0
