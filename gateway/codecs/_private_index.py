"""The index plane of an indexed colour frame in context model 3 of version 2 (numba kernels).

Screen captures, reports and diagrams stored as secondary captures are mostly
flat areas and sharp edges: a pixel's colour is nearly always the colour of
one of its neighbours.  The blend of :mod:`._private_planes2` predicts a value
between its neighbours' values, which for colour table indices is no colour
in particular.  This model instead asks, neighbour by neighbour, whether the
pixel has that neighbour's index:

* the candidates are W, N, NE and NW (section 5.1's neighbours) and the
  index that last escaped after the same W and N (hashed: anti-aliased
  edges of text repeat the same steps from background to ink), each asked
  once (a candidate equal to an earlier one is skipped), in one adaptive
  binary context per candidate, per pattern of equalities among the four
  neighbours and per answer of the pixel before in the row;
* when none matches (an *escape*), the index is coded, as a token and raw
  chunks (:mod:`._private_symbols`), as its place in a list of the
  :data:`RECENT` indices escaped last (most recent first), or when it is not
  there as its value after the list's places.  The list is bounded, so that
  an escape costs at most :data:`RECENT` steps whatever the colour table's
  size.

docs/private-codec.md (section 9.7) specifies it exactly.  Encoding and
decoding run one loop, as the other plane kernels do.
"""

from __future__ import annotations

import numpy as np

from gateway.codecs._private_predict import neighbours
from gateway.codecs._private_rangecoder import dec_bit, enc_bit, grow
from gateway.codecs._private_symbols import (
    dec_chunks,
    dec_token,
    enc_chunks,
    enc_token,
    token_base,
    token_of,
)
from gateway.kernelcache import njit

CANDIDATES = 5  # W, N, NE, NW, the index that last escaped after the same W and N
ESCAPE = CANDIDATES  # the answer of a pixel matching none of them
PATTERNS = 32  # equalities W = N, W = NW, N = NE, N = NW, W = NE
N_CONTEXTS = PATTERNS * (ESCAPE + 1) * CANDIDATES
TRANSITIONS = 64  # entries of the escape memory per colour table entry, up to MEMORY_LIMIT
MEMORY_LIMIT = 1 << 18
TRANSITION_STEP = 131  # the memory's slot of W and N: (W * TRANSITION_STEP + N) mod its size
RECENT = 64  # indices the list of recent escapes holds
ROW_BYTES = 16  # bytes a pixel may code at most, reserved in the output before each row
N_TABLES = 1  # the token table of escaped ranks

STATUS_OK = 0
STATUS_RANGE = 1


def new_state(maxv: int) -> tuple[np.ndarray, np.ndarray]:
    """The (empty) list of recent escapes and the empty escape memory of a plane of indices 0..maxv."""
    return np.empty(RECENT, np.int32), np.full(min(TRANSITIONS * (maxv + 1), MEMORY_LIMIT), -1, np.int32)


@njit(cache=True, nogil=True, inline="always")
def _pattern(w, n, nw, ne):
    return (np.int64(w == n) | (np.int64(w == nw) << 1) | (np.int64(n == ne) << 2) | (np.int64(n == nw) << 3)
            | (np.int64(w == ne) << 4))


@njit(cache=True, nogil=True, inline="always")
def _code_index(encoding, est, buf, dst, data, plane, maxv, bins, tables, recent, memory):
    rows, cols = plane.shape
    filled = 0  # entries of `recent` in use
    for y in range(rows):
        if encoding:  # a pixel codes at most 5 decisions and a token (16 bits each) and 18 raw bits
            buf = grow(buf, est[4] + est[3] + 16 + cols * ROW_BYTES)
        answer = 0
        for x in range(cols):
            w, n, nw, ne = neighbours(plane, y, x)
            context = (_pattern(w, n, nw, ne) * (ESCAPE + 1) + answer) * CANDIDATES
            slot = (w * TRANSITION_STEP + n) % memory.shape[0]
            learnt = np.int64(memory[slot])
            value = np.int64(plane[y, x]) if encoding else np.int64(-1)
            answer = ESCAPE
            for j in range(CANDIDATES):
                if j == 0:
                    candidate = w
                elif j == 1:
                    candidate = n
                    if n == w:
                        continue
                elif j == 2:
                    candidate = ne
                    if ne == w or ne == n:
                        continue
                elif j == 3:
                    candidate = nw
                    if nw == w or nw == n or nw == ne:
                        continue
                else:
                    candidate = learnt
                    if learnt < 0 or learnt == w or learnt == n or learnt == ne or learnt == nw:
                        continue
                if encoding:
                    hit = np.int64(value == candidate)
                    est = enc_bit(est, buf, bins, context + j, hit)
                else:
                    dst, hit = dec_bit(dst, data, bins, context + j)
                if hit:
                    answer = j
                    value = candidate
                    break
            if answer == ESCAPE:
                if encoding:
                    place = filled
                    for i in range(filled):
                        if recent[i] == value:
                            place = i
                            break
                    code = place if place < filled else filled + value
                    token, nraw = token_of(code)
                    est = enc_token(est, buf, tables, 0, token)
                    if nraw > 0:
                        est = enc_chunks(est, buf, code, nraw)
                else:
                    dst, token = dec_token(dst, data, tables, 0)
                    code, nraw = token_base(token)
                    if nraw > 0:
                        dst, low_bits = dec_chunks(dst, data, nraw)
                        code += low_bits
                    if code < filled:
                        place = code
                        value = np.int64(recent[place])
                    else:
                        place = filled
                        value = code - filled
                        if value > maxv:
                            return est, buf, dst, STATUS_RANGE
                if place == filled and filled < RECENT:
                    filled += 1
                for i in range(min(place, RECENT - 1), 0, -1):
                    recent[i] = recent[i - 1]
                recent[0] = value
                memory[slot] = value
            if not encoding:
                plane[y, x] = value
    return est, buf, dst, STATUS_OK


@njit(cache=True, nogil=True)
def encode_index(st, buf, plane, maxv, bins, tables, recent, memory):
    """Code the index plane `plane` (values 0..maxv); returns the coder state and buffer."""
    none = (np.int64(0), np.int64(0), np.int64(0))
    st, buf, _, _ = _code_index(True, st, buf, none, np.empty(0, np.uint8), plane, maxv, bins, tables, recent, memory)
    return st, buf


@njit(cache=True, nogil=True)
def decode_index(st, data, plane, maxv, bins, tables, recent, memory):
    """Decode an index plane coded by :func:`encode_index`; returns (state, status)."""
    none = (np.int64(0), np.int64(0), np.int64(0), np.int64(0), np.int64(0))
    _, _, st, status = _code_index(False, none, np.empty(0, np.uint8), st, data, plane, maxv, bins, tables, recent,
                                   memory)
    return st, status
