"""Numba kernels of the RLE Lossless codec (PackBits byte segments).

The public, validating API is :mod:`gateway.codecs.rle`; these functions
trust their arguments (array sizes are computed there) and report bad data
as negative return codes instead of raising, so that compiled code never
allocates from header values and never loops without consuming input.

Both kernels work on the frame as its little-endian bytes, interleaved as in
native colour-by-pixel data: byte ``b`` (0 = least significant) of sample
``k`` of pixel ``p`` sits at ``(p * samples + k) * nbytes + b``.  Segment
``s`` (Annex G order: per sample, most significant byte first) therefore
reads every ``stride = samples * nbytes``-th byte starting at
``k * nbytes + (nbytes - 1 - s % nbytes)`` with ``k = s // nbytes``.
"""

from __future__ import annotations

import numpy as np

from gateway.kernelcache import njit

# Error codes returned by ``decode_segments`` (negative so they cannot be a length).
ERR_SHORT = -1       # a segment ends before it produced a byte for every pixel
ERR_LITERAL = -2     # a literal run reaches past the end of its segment
ERR_REPEAT = -3      # a replicate run has no byte to repeat


def encoded_bound(rows: int, columns: int, segments: int) -> int:
    """Largest possible encoded frame: header plus worst-case PackBits of every row.

    A row of ``n`` bytes never grows beyond ``n + n // 128 + 1`` bytes with the
    run/literal choice of :func:`_encode_row`; one pad byte per segment.
    """
    per_row = columns + columns // 128 + 2
    return 64 + segments * (rows * per_row + 2)


@njit(cache=True, nogil=True, inline="always")
def _flush_literal(src, first, start, stride, count, out, o):
    """Write ``count`` literal bytes from element ``first`` on, in chunks of at most 128."""
    while count > 0:
        chunk = count if count < 128 else 128
        out[o] = chunk - 1
        o += 1
        q = start + first * stride
        for t in range(o, o + chunk):
            out[t] = src[q]
            q += stride
        o += chunk
        first += chunk
        count -= chunk
    return o


@njit(cache=True, nogil=True, inline="always")
def _encode_row(src, start, stride, n, out, o):
    """PackBits-encode ``n`` bytes ``src[start + i * stride]`` into ``out`` at ``o``.

    Runs of three or more equal bytes become replicate runs; a run of two
    does too when no literal is pending (it then costs no more than a
    literal); everything else is gathered into literal runs.  A literal is
    therefore extended up to the first three equal bytes, which one pass with
    two comparisons per byte finds.
    """
    i = 0
    while i < n:
        q = start + i * stride
        value = src[q]
        j = i + 1
        limit = i + 128 if i + 128 < n else n
        q += stride
        while j < limit and src[q] == value:
            j += 1
            q += stride
        if j - i >= 2:
            out[o] = 257 - (j - i)
            out[o + 1] = value
            o += 2
            i = j
            continue
        # A literal starts at i and ends where three equal bytes begin.
        k = i + 1
        if k + 2 < n:
            p = start + (k + 2) * stride
            a = src[p - 2 * stride]
            b = src[p - stride]
            last = start + (n - 1) * stride
            while p <= last:
                c = src[p]
                if a == b and b == c:
                    break
                a = b
                b = c
                p += stride
            k = (p - start) // stride - 2
        if k + 2 >= n:
            k = n
        o = _flush_literal(src, i, start, stride, k - i, out, o)
        i = k
    return o


@njit(cache=True, nogil=True)
def encode_segments(src, rows, columns, samples, nbytes, out):
    """Encode a frame's interleaved little-endian bytes `src` into `out`.

    Writes the 64-byte header and every segment (each row encoded on its
    own, each segment padded with a zero byte to an even length) and
    returns the number of bytes written.  `out` must hold
    :func:`encoded_bound` bytes.
    """
    segments = samples * nbytes
    stride = segments
    for t in range(64):
        out[t] = 0
    out[0] = segments
    o = 64
    for s in range(segments):
        offset = o
        out[4 + 4 * s] = offset & 0xFF
        out[5 + 4 * s] = (offset >> 8) & 0xFF
        out[6 + 4 * s] = (offset >> 16) & 0xFF
        out[7 + 4 * s] = (offset >> 24) & 0xFF
        k = s // nbytes
        lane = k * nbytes + (nbytes - 1 - s % nbytes)
        for r in range(rows):
            o = _encode_row(src, lane + r * columns * stride, stride, columns, out, o)
        if (o - offset) & 1:
            out[o] = 0
            o += 1
    return o


@njit(cache=True, nogil=True)
def _unpack_segment(data, pos, end, plane, pixels):
    """PackBits-decode ``data[pos:end]`` into ``plane[:pixels]``; 0 or an ERR_* code."""
    n = 0
    while n < pixels:
        if pos >= end:
            return ERR_SHORT
        control = data[pos]
        pos += 1
        if control < 128:
            count = control + 1
            if pos + count > end:
                return ERR_LITERAL
            if count > pixels - n:
                count = pixels - n
            # Element loops, not slice assignments: those bring numba's
            # shape-mismatch error path, whose string formatting costs
            # seconds to compile on the first run.
            for t in range(count):
                plane[n + t] = data[pos + t]
            pos += control + 1
            n += count
        elif control > 128:
            if pos >= end:
                return ERR_REPEAT
            count = 257 - control
            if count > pixels - n:
                count = pixels - n
            value = data[pos]
            for t in range(n, n + count):
                plane[t] = value
            pos += 1
            n += count
        # control == 128 is a no-op.
    return 0


@njit(cache=True, nogil=True)
def segment_end(data, pos, end, pixels):
    """Where the PackBits data of ``data[pos:end]`` for ``pixels`` bytes ends, as the decoders read it.

    A run reaching past `pixels` is read whole, as :func:`_unpack_segment`
    reads it; -1 when the data ends first.
    """
    n = 0
    while n < pixels:
        if pos >= end:
            return -1
        control = data[pos]
        pos += 1
        if control < 128:
            pos += control + 1
            n += control + 1
        elif control > 128:
            pos += 1
            n += 257 - control
    return min(pos, end)


@njit(cache=True, nogil=True)
def decode_segments(data, offsets, ends, pixels, samples, nbytes, out, plane):
    """Decode every segment of `data` into the interleaved bytes `out`.

    ``offsets[s]``/``ends[s]`` bound segment ``s`` within `data`; each must
    produce ``pixels`` bytes.  Bytes after that (padding, or a run that
    overshoots) are ignored, as decoders of this format customarily do.
    Returns 0, or on bad data the negative value ``ERR_* * 16 - segment``
    (unpack with ``divmod(-result, 16)``: the error number and the segment).
    A single-segment frame is decoded in place; otherwise each segment goes
    through the buffer `plane` (``pixels`` bytes, given by the caller: an
    allocation inside the kernel costs seconds of compilation) and is then
    spread to its byte lane.
    """
    segments = samples * nbytes
    if segments == 1:
        status = _unpack_segment(data, offsets[0], ends[0], out, pixels)
        return status * 16 if status else 0
    for s in range(segments):
        status = _unpack_segment(data, offsets[s], ends[s], plane, pixels)
        if status:
            return status * 16 - s
        k = s // nbytes
        q = k * nbytes + (nbytes - 1 - s % nbytes)  # this segment's byte lane
        for p in range(pixels):
            out[q] = plane[p]
            q += segments
    return 0


@njit(cache=True, nogil=True)
def decode_wide(data, offsets, ends, pixels, samples, nbytes, values, planes):
    """Decode a frame of 16- or 32-bit samples straight into native integers.

    `values` (``uint16`` or ``uint32``, ``pixels * samples`` long, colour by
    pixel) receives each sample composed from its byte segments, most
    significant first (Annex G order).  Unpacking every segment into a plane
    and composing whole integers in one contiguous pass is much faster than
    scattering single bytes into the interleaved frame.  `planes` is the
    caller's ``(segments, pixels)`` uint8 buffer.  Returns 0 or an error code
    as :func:`decode_segments` does.
    """
    segments = samples * nbytes
    for s in range(segments):
        status = _unpack_segment(data, offsets[s], ends[s], planes[s], pixels)
        if status:
            return status * 16 - s
    for k in range(samples):
        first = k * nbytes
        q = k
        if nbytes == 2:
            high, low = planes[first], planes[first + 1]
            for p in range(pixels):
                values[q] = (np.uint32(high[p]) << 8) | low[p]
                q += samples
        else:
            b3, b2, b1, b0 = planes[first], planes[first + 1], planes[first + 2], planes[first + 3]
            for p in range(pixels):
                values[q] = (np.uint32(b3[p]) << 24) | (np.uint32(b2[p]) << 16) | (np.uint32(b1[p]) << 8) | b0[p]
                q += samples
    return 0
