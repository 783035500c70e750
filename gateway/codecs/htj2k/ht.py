"""The HT block coder (ITU-T T.814): the cleanup pass, encoder and decoder, as numba kernels.

A code-block is coded in one HT cleanup segment, quads of 2 x 2 samples
scanned in pairs along rows of quads.  Three byte streams share the segment::

    [ MagSgn -> ][ MEL -> ... <- VLC ][ Scup: 12 bits in the last two bytes ]

* **MagSgn** (forward, bits lowest first, a 0 bit stuffed after each 0xFF):
  for every significant sample, the low ``m`` bits of ``v = 2 (mu - 1) + sign``.
* **MEL** (forward, bits highest first, stuffed after 0xFF): an adaptive
  run-length code (13 states, exponents ``0 0 0 1 1 1 2 2 2 3 3 4 5``) of
  the significance of quads whose context is 0 and, in the first row of
  quads, whether both quads of a pair have exponent offsets above 2.
* **VLC** (backward from the end, bits lowest first; after a byte above 0x8F
  a byte whose low seven bits are all ones carries only those seven): the
  CxtVLC codeword of each quad (its significance pattern ``rho``, whether
  ``u > 0`` and which samples reach the exponent bound) and the U-VLC codes
  of ``u`` (see :mod:`.tables`).

``Scup`` (the MEL and VLC bytes together, 2..4079) is in the low nibble of
the last-but-one byte and the whole last byte.  The exponent of a sample is
``E = bit length of (2 mu - 1)``; a quad's bound is ``U = u + kappa`` with
``kappa = 1`` in the first row and, elsewhere, ``max(1, max E above - 1)``
when two or more of its samples are significant.  A sample whose bit of
``e_k`` is set in the codeword sends ``U - 1`` bits, its top bit ``e_1``
implied; the others send ``U``.

Entry points, batch over the code-blocks of a frame like :mod:`..jpeg2000.t1`:

``encode_blocks(coeffs, blocks, out, offsets, results)``
    rows ``comp, y0, x0, h, w, orientation``; one cleanup pass per block,
    ``results[i] = (length, passes, bit-planes)`` with passes 0 (an all-zero
    block) or 1 and bit-planes 1 (the cleanup pass codes down to plane 0).
    Returns 0, or -1-i if block i did not fit its room.

``decode_blocks(coeffs, blocks, segments, data)``
    rows ``comp, y0, x0, h, w, orientation, bit-planes, style, first
    segment, segment count``; returns 0 or the negative code of the first
    error (``ERRORS``).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from gateway.codecs.htj2k import tables
from gateway.kernelcache import njit

BLOCK_FIELDS_ENCODE = 6
BLOCK_FIELDS_DECODE = 10
MAX_SCUP = 4079
MAX_BOUND = 30  # the largest exponent bound U decoded into 32-bit coefficients

ERRORS = {
    -1: "a cleanup segment is shorter than its Scup interface or Scup is outside 2..4079",
    -2: "a VLC bit pattern that no codeword of its context starts with",
    -3: "a quad's exponent bound exceeds 30 bit-planes",
    -4: "a code-block has more than one codeword segment or pass (SigProp / MagRef are not decoded)",
    -5: "a code-block is larger than 4096 samples or 1024 on a side",
}

_ENC0 = tables.encode_table(True)
_ENC1 = tables.encode_table(False)
_ENC = np.concatenate((_ENC1, _ENC0))  # the encoder's: other rows, then the initial row from 2048
_DEC0 = tables.decode_table(True)
_DEC1 = tables.decode_table(False)
_DEC = np.concatenate((_DEC1, _DEC0))  # the decoder's: other rows, then the initial row from 1024
TROW = 1024 + 8  # the decoder's row of t, padding included
_UVLC = tables.uvlc_table()
_UVLC_PAIR = tables.uvlc_pair_table()
_MEL_EXP = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5], dtype=np.int64)


@intrinsic
def _leading_zeros(typingctx, v):  # noqa: ARG001 (numba passes the typing context)
    """Leading zero bits of a 64-bit integer (64 for 0): one instruction instead of a chain of tests."""
    sig = types.int64(types.int64)

    def codegen(context, builder, signature, args):  # noqa: ARG001
        return builder.ctlz(args[0], ir.Constant(ir.IntType(1), 0))

    return sig, codegen


@intrinsic
def _address(typingctx, array):  # noqa: ARG001
    """The address of an array's first element, so that a kernel reads its bytes through :func:`_load8` and
    :func:`_load64` without an array value in its loops (numba counts references to those)."""
    sig = types.int64(array)

    def codegen(context, builder, signature, args):  # noqa: ARG001
        data = context.make_array(signature.args[0])(context, builder, value=args[0]).data
        return builder.ptrtoint(data, ir.IntType(64))

    return sig, codegen


@intrinsic
def _load8(typingctx, address):  # noqa: ARG001
    """The byte at `address`."""
    sig = types.int64(types.int64)

    def codegen(context, builder, signature, args):  # noqa: ARG001
        byte = builder.load(builder.inttoptr(args[0], ir.IntType(8).as_pointer()))
        return builder.zext(byte, ir.IntType(64))

    return sig, codegen


@intrinsic
def _load64(typingctx, address):  # noqa: ARG001
    """The eight bytes from `address` on as one little-endian 64-bit integer."""
    sig = types.int64(types.int64)

    def codegen(context, builder, signature, args):  # noqa: ARG001
        return builder.load(builder.inttoptr(args[0], ir.IntType(64).as_pointer()), align=1)

    return sig, codegen


@intrinsic
def _store64(typingctx, address, value):  # noqa: ARG001
    """`value` as the eight bytes from `address` on, little-endian."""
    sig = types.none(types.int64, types.int64)

    def codegen(context, builder, signature, args):  # noqa: ARG001
        builder.store(args[1], builder.inttoptr(args[0], ir.IntType(64).as_pointer()), align=1)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _prefetch(typingctx, address, write):  # noqa: ARG001
    """Ask for the cache line at `address` ahead of its use (`write`: the literal 1 to write it, else 0)."""
    if not isinstance(write, types.IntegerLiteral):
        return None
    rw = write.literal_value
    sig = types.none(types.int64, write)

    def codegen(context, builder, signature, args):  # noqa: ARG001
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = builder.module.declare_intrinsic("llvm.prefetch", fnty=ir.FunctionType(
            ir.VoidType(), [i8p, i32, i32, i32]))
        builder.call(fn, [builder.inttoptr(args[0], i8p), i32(rw), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def _prefetch_row(address: int, size: int) -> None:
    """:func:`_prefetch` every cache line of `size` bytes from `address`, to read."""
    for offset in range(0, size + 63, 64):
        _prefetch(address + offset, 0)


@njit(cache=True, nogil=True, inline="always")
def _prefetch_row_to_write(address: int, size: int) -> None:
    """:func:`_prefetch` every cache line of `size` bytes from `address`, to write."""
    for offset in range(0, size + 63, 64):
        _prefetch(address + offset, 1)


@intrinsic
def _byte_swap(typingctx, v):  # noqa: ARG001
    """The bytes of a 64-bit integer in reverse order."""
    sig = types.int64(types.int64)

    def codegen(context, builder, signature, args):  # noqa: ARG001
        return builder.bswap(args[0])

    return sig, codegen


def _has_bmi2() -> bool:
    """Whether the code numba generates may use BMI2 (PDEP): the host's features, or those numba is told to use."""
    import llvmlite.binding as llvm
    from numba.core import config

    if config.CPU_NAME is not None and config.CPU_NAME != "host":
        return "+bmi2" in (config.CPU_FEATURES or "")
    return "+bmi2" in llvm.get_host_cpu_features().flatten()


_BMI2 = _has_bmi2()


def _deposit_bits(v: int, mask: int) -> int:
    """The low bits of `v`, one by one, into the set bits of `mask` from the lowest (PDEP without BMI2)."""
    out = 0
    bit = 1
    while mask:
        low = mask & -mask
        if v & bit:
            out |= low
        mask ^= low
        bit <<= 1
    return out


def _extract_bits(v: int, mask: int) -> int:
    """The bits of `v` under the set bits of `mask`, lowest first, packed into the low bits (PEXT without
    BMI2)."""
    out = 0
    bit = 1
    while mask:
        low = mask & -mask
        if v & low:
            out |= bit
        mask ^= low
        bit <<= 1
    return out


def _bmi2_instruction(name: str):
    """An intrinsic ``(v, mask) -> int64`` compiled to the BMI2 instruction `name` ("pdep" or "pext")."""

    @intrinsic
    def instruction(typingctx, v, mask):  # noqa: ARG001
        sig = types.int64(types.int64, types.int64)

        def codegen(context, builder, signature, args):  # noqa: ARG001
            i64 = ir.IntType(64)
            fn = builder.module.declare_intrinsic(f"llvm.x86.bmi.{name}.64", fnty=ir.FunctionType(i64, [i64, i64]))
            return builder.call(fn, args)

        return sig, codegen

    return instruction


# PDEP and PEXT: the instructions where the generated code may use BMI2, else the loops.
_pdep = _bmi2_instruction("pdep") if _BMI2 else njit(cache=True, nogil=True, inline="always")(_deposit_bits)
_pext = _bmi2_instruction("pext") if _BMI2 else njit(cache=True, nogil=True, inline="always")(_extract_bits)


@intrinsic
def _popcount(typingctx, v):  # noqa: ARG001
    """Set bits of a 64-bit integer."""
    sig = types.int64(types.int64)

    def codegen(context, builder, signature, args):  # noqa: ARG001
        return builder.ctpop(args[0])

    return sig, codegen


@intrinsic
def _store_quad(typingctx, coeffs, top, bottom, lanes, significant):  # noqa: ARG001
    """The samples of a quad into two adjacent elements of `coeffs` at `top` and at `bottom` (addresses).

    `lanes` holds the MagSgn values ``v`` of the quad's four samples (top
    left, bottom left, top right, bottom right) in 16-bit lanes, lowest
    first, and `significant` 0xFFFF in the lanes of its significant samples;
    each becomes ``mu = (v >> 1) + 1``, negative where bit 0 of v is set,
    0 where not significant, in one vector.
    """
    if not isinstance(coeffs, types.Array) or not isinstance(coeffs.dtype, types.Integer) or coeffs.layout != "C":
        return None
    sig = types.none(coeffs, types.int64, types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, args):  # noqa: ARG001
        _, top, bottom, lanes, significant = args
        i16x4 = ir.VectorType(ir.IntType(16), 4)
        i32 = ir.IntType(32)
        i32x4 = ir.VectorType(i32, 4)
        elem = context.get_data_type(signature.args[0].dtype)

        def splat(value):
            return ir.Constant(i32x4, [value] * 4)

        v = builder.zext(builder.bitcast(lanes, i16x4), i32x4)
        mu = builder.add(builder.lshr(v, splat(1)), splat(1))
        sign = builder.sub(splat(0), builder.and_(v, splat(1)))
        c = builder.sub(builder.xor(mu, sign), sign)
        c = builder.and_(c, builder.sext(builder.bitcast(significant, i16x4), i32x4))
        for address, pick in ((top, (0, 2)), (bottom, (1, 3))):
            pair = builder.shuffle_vector(c, c, ir.Constant(ir.VectorType(i32, 2), list(pick)))
            pair_type = ir.VectorType(elem, 2)
            if elem.width < 32:
                pair = builder.trunc(pair, pair_type)
            elif elem.width > 32:
                pair = builder.sext(pair, pair_type)
            builder.store(pair, builder.inttoptr(address, pair_type.as_pointer()), align=elem.width // 8)
        return context.get_dummy_value()

    return sig, codegen


ONES = 0x0101010101010101
HIGHS = -0x7F7F7F7F7F7F7F80  # 0x8080808080808080 as a signed 64-bit integer
LANES = 0x0001000100010001  # bit 0 of each 16-bit lane
# The 16-bit lanes of a quad's significant samples (0xFFFF in lane k where bit k of rho is set); a table, as the
# product of the spread rho by 0xFFFF would overflow a signed 64-bit integer for the fourth sample.
_LANE_MASKS = np.array([sum(0xFFFF << (16 * k) for k in range(4) if rho >> k & 1) for rho in range(16)],
                       dtype=np.uint64).view(np.int64)


@njit(cache=True, nogil=True, inline="always")
def _zero_bytes(v: int) -> int:
    """Nonzero where `v` has a zero byte (the lowest one marked exactly; those above it may be marked too)."""
    return (v - ONES) & ~v & HIGHS


@njit(cache=True, nogil=True, inline="always")
def _u(i: int) -> np.uint64:
    """An index numba takes as is, without the test for a negative index."""
    return np.uint64(i)


@njit(cache=True, nogil=True, inline="always")
def _bit_length(v: int) -> int:
    """Bits of ``v >= 0`` (0 for 0)."""
    return 64 - _leading_zeros(np.int64(v))


@njit(cache=True, nogil=True, inline="always")
def _mel_bit(buf: np.ndarray, pos: int, free: int, tmp: int, bit: int) -> tuple[int, int, int]:
    """One MEL bit, highest first; a byte after 0xFF holds seven.  State: (pos, free bits of the byte, byte)."""
    tmp = (tmp << 1) | bit
    free -= 1
    if free == 0:
        buf[pos] = tmp
        pos += 1
        free = 7 if tmp == 0xFF else 8
        tmp = 0
    return pos, free, tmp


@njit(cache=True, nogil=True)
def _mel_code(events: np.ndarray, count: int, buf: np.ndarray) -> tuple[int, int, int, int]:
    """The MEL code of a block's events, in order: (bytes, free bits of the last byte, its bits, pending run).

    Each symbol is a 1 (a full run of zero events) or a 0 and the run so far
    in ``_MEL_EXP[k]`` bits, written highest bit first (the bit writer is in
    the loop: numba would count references to `buf` on every bit handed to
    a function).
    """
    pos, free, tmp, run, k = 0, 8, 0, 0, 0
    for i in range(count):
        nb = 0
        symbol = 0
        if events[_u(i)] == 0:
            run += 1
            if run >= (1 << _MEL_EXP[k]):
                symbol, nb = 1, 1
                run = 0
                k = k + 1 if k < 12 else 12  # min and max written out: numba calls a function for those
        else:
            nb = _MEL_EXP[k] + 1  # a 0, then the run (below 2**exp) in exp bits
            symbol = run
            run = 0
            k = k - 1 if k > 0 else 0
        while nb > 0:
            nb -= 1
            tmp = (tmp << 1) | ((symbol >> nb) & 1)
            free -= 1
            if free == 0:
                buf[_u(pos)] = tmp
                pos += 1
                free = 7 if tmp == 0xFF else 8
                tmp = 0
    return pos, free, tmp, run


@njit(cache=True, nogil=True, inline="always")
def _vlc_bytes(buf: np.ndarray, pos: int, acc: int, n: int, high: int) -> tuple[int, int, int, int]:
    """The whole bytes of the VLC accumulator, into bytes that run backward from the segment's end (stored
    forward here).

    State: (position, pending bits lowest first, their count, whether the last byte written exceeds
    0x8F).  After such a byte, a byte whose low seven bits are all ones holds only those seven.
    """
    while n >= 8:
        if high and (acc & 0x7F) == 0x7F:
            byte = 0x7F
            acc >>= 7
            n -= 7
        else:
            byte = acc & 0xFF
            acc >>= 8
            n -= 8
        buf[pos] = byte
        pos += 1
        high = 1 if byte > 0x8F else 0
    return pos, acc, n, high


@njit(cache=True, nogil=True)
def _ms_flush(buf: np.ndarray, pos: int, room: int, used: int, acc: int) -> tuple[int, int, int, int]:
    """Whole MagSgn bytes out of the accumulator; a byte after 0xFF holds seven.  State: (pos, room, used, acc)."""
    while used >= room:
        byte = acc & ((1 << room) - 1)
        buf[pos] = byte
        pos += 1
        acc >>= room
        used -= room
        room = 7 if byte == 0xFF else 8
    return pos, room, used, acc


@njit(cache=True, nogil=True, inline="always")
def _uvlc_code(uvlc: np.ndarray, u0: int, u1: int, first: int, second: int, single_bit: bool) -> tuple[int, int]:
    """Prefixes, suffixes and extensions of two quads' u (indices into the U-VLC table), as one bit string."""
    cwd = uvlc[first, 0]
    n = uvlc[first, 1]
    if single_bit:
        cwd |= (u1 - 1) << n
        n += 1
    else:
        cwd |= uvlc[second, 0] << n
        n += uvlc[second, 1]
    cwd |= uvlc[first, 2] << n
    n += uvlc[first, 3]
    if not single_bit:
        cwd |= uvlc[second, 2] << n
        n += uvlc[second, 3]
    cwd |= uvlc[first, 4] << n
    n += uvlc[first, 5]
    if not single_bit:
        cwd |= uvlc[second, 4] << n
        n += uvlc[second, 5]
    return cwd, n


@njit(cache=True, nogil=True, inline="always")
def _samples(row: np.ndarray, v: np.ndarray, t: np.ndarray) -> None:
    """``v = 2 (mu - 1) + sign`` and ``t = 2 mu - 1`` (0 where mu = 0) of one row of samples."""
    for x in range(row.size):
        c = np.int64(row[x])
        mag = abs(c)
        t[x] = 2 * mag - 1 if mag else 0
        v[x] = 2 * mag - 2 + (c < 0)


@njit(cache=True, nogil=True)
def _encode_block(coeffs: np.ndarray, comp: int, y0: int, x0: int, h: int, w: int, ms: np.ndarray,
                  mel: np.ndarray, vlc: np.ndarray, t_prev: np.ndarray, t_cur: np.ndarray, v0: np.ndarray,
                  v1: np.ndarray, t0: np.ndarray, t1: np.ndarray, mel_events: np.ndarray, enc: np.ndarray,
                  uvlc: np.ndarray, uvlc_pair: np.ndarray, out: np.ndarray) -> int:
    """Code one block's cleanup pass into `out`; its length, 0 for an all-zero block, -1 if `out` is too small.

    Each row of quads is first turned into v and t = 2 mu - 1 per sample
    (``v0``, ``t0`` its top row, ``v1``, ``t1`` its bottom row, zero beyond
    the block to a whole pair of quads), so the quad loop reads its
    neighbours without bounds tests and takes one bit length per quad.
    ``t_prev`` holds t of the bottom samples of the row of quads above,
    one column of padding on the left.
    """
    # An all-zero block (most of a flat image's high-pass blocks) is found by a plain scan, row by row until a
    # nonzero coefficient: its cleanup pass is left out.
    nonzero = 0
    for y in range(y0, y0 + h):
        for x in range(x0, x0 + w):
            nonzero |= coeffs[_u(comp), _u(y), _u(x)]
        if nonzero:
            break
    if nonzero == 0:
        return 0
    w4 = (w + 3) & ~3
    # vlc[_u(0)] is the last byte of the segment, which holds Scup; the low nibble of the next one is Scup's too.
    v_pos, v_acc, v_n, v_high = 1, 0xF, 4, 1
    ms_pos, ms_room, ms_used, ms_acc = 0, 8, 0, 0
    events = 0
    any_significant = 0
    t_prev[:w4 + 2] = 0
    t_cur[:w4 + 2] = 0
    v0[w:w4] = 0
    v1[w:w4] = 0
    t0[w:w4] = 0
    t1[w:w4] = 0
    ms_address = _address(ms)
    vlc_address = _address(vlc)
    first = _address(coeffs) + comp * coeffs.strides[0] + y0 * coeffs.strides[1] + x0 * coeffs.strides[2]
    for y in range(0, h, 2):
        initial = y == 0
        lut = 2048 if initial else 0
        # The next two rows from memory while this pair of rows is coded.
        for ahead in range(y + 2, y + 4 if y + 4 < h else h):
            _prefetch_row(first + ahead * coeffs.strides[1], w * coeffs.strides[2])
        _samples(coeffs[comp, y0 + y, x0:x0 + w], v0[:w], t0[:w])
        if y + 1 < h:
            _samples(coeffs[comp, y0 + y + 1, x0:x0 + w], v1[:w], t1[:w])
        else:
            v1[:w] = 0
            t1[:w] = 0
        rho_left = 0
        for x in range(0, w, 4):
            # The two quads of the pair (the second if the block has it); the left neighbour of the second is
            # the first.  The writers are written out in the loop: numba counts references to an array
            # handed to a function, which would cost more than the writing.
            if rho_left == 0 and (t0[_u(x)] | t1[_u(x)] | t0[_u(x + 1)] | t1[_u(x + 1)] | t0[_u(x + 2)] | t1[_u(x + 2)] | t0[_u(x + 3)]
                                  | t1[_u(x + 3)]) == 0 and (initial or (t_prev[_u(x)] | t_prev[_u(x + 1)] | t_prev[_u(x + 2)]
                                                                     | t_prev[_u(x + 3)] | t_prev[_u(x + 4)]
                                                                     | t_prev[_u(x + 5)]) == 0):
                # Nothing significant in the pair nor around it: context 0, so a MEL event 0 per quad only.
                mel_events[_u(events)] = 0
                mel_events[_u(events + 1)] = 0
                events += 2 if x + 2 < w else 1
                t_cur[_u(x + 1)] = 0
                t_cur[_u(x + 2)] = 0
                t_cur[_u(x + 3)] = 0
                t_cur[_u(x + 4)] = 0
                continue
            cwd = 0
            n = 0
            u0 = 0
            u1 = 0
            for q in range(2):
                qx = x + 2 * q
                if q and qx >= w:
                    break
                a, b, c, d = t0[_u(qx)], t1[_u(qx)], t0[_u(qx + 1)], t1[_u(qx + 1)]
                rho = (a != 0) | (b != 0) << 1 | (c != 0) << 2 | (d != 0) << 3
                emax = _bit_length(a | b | c | d)  # the bit length of the largest is that of the OR
                kappa = 1
                if initial:
                    cq = (rho_left >> 1) | (rho_left & 1)
                else:
                    cq = (((t_prev[_u(qx)] | t_prev[_u(qx + 1)]) != 0) | (((rho_left >> 2) | (rho_left >> 3)) & 1) << 1
                          | ((t_prev[_u(qx + 2)] | t_prev[_u(qx + 3)]) != 0) << 2)
                    if rho & (rho - 1):
                        # max(1, E - 1) of the largest E above: the bit length of the OR with 2, less one.
                        kappa = _bit_length(t_prev[_u(qx)] | t_prev[_u(qx + 1)] | t_prev[_u(qx + 2)]
                                            | t_prev[_u(qx + 3)] | 2) - 1
                bound = emax if emax > kappa else kappa  # min and max written out: numba calls a function
                u = bound - kappa
                emb = 0
                if u > 0:
                    # A sample's E reaches the quad's largest when its t is at least 2**(E - 1).
                    top = 1 << (emax - 1)
                    emb = (a >= top) | (b >= top) << 1 | (c >= top) << 2 | (d >= top) << 3
                code = enc[_u(lut | (cq << 8) | (rho << 4) | emb)]
                cwd |= (code & 0xFF) << n
                n += (code >> 8) & 0xF
                mel_events[_u(events)] = rho != 0
                events += cq == 0
                if rho:
                    # MagSgn: the low U (U - 1 where e_k is set) bits of v of each significant sample.  The
                    # accumulator holds fewer than 8 bits between quads.
                    ek = code >> 12
                    if bound <= 14:
                        # The quad's v in 16-bit lanes, their bits (56 at most) taken out with one PEXT.
                        mask = ((1 << bound) - 1) * LANES & ~(_pdep(ek, LANES) << (bound - 1)) & _LANE_MASKS[rho]
                        lanes = ((v0[_u(qx)] & 0xFFFF) | (v1[_u(qx)] & 0xFFFF) << 16 | (v0[_u(qx + 1)] & 0xFFFF) << 32
                                 | (v1[_u(qx + 1)] & 0xFFFF) << 48)
                        ms_acc |= _pext(lanes, mask) << ms_used
                        ms_used += _popcount(mask)
                    else:
                        # Sample by sample, whole bytes out once 32 bits are pending, so 31 more always fit.
                        for k in range(4):
                            m = (bound - ((ek >> k) & 1)) * ((rho >> k) & 1)
                            v = v1[_u(qx + (k >> 1))] if k & 1 else v0[_u(qx + (k >> 1))]
                            ms_acc |= (v & ((1 << m) - 1)) << ms_used
                            ms_used += m
                            if ms_used >= 32:
                                ms_pos, ms_room, ms_used, ms_acc = _ms_flush(ms, ms_pos, ms_room, ms_used, ms_acc)
                    whole = ms_used >> 3
                    if ms_room == 8 and _zero_bytes(~ms_acc) & HIGHS & ((1 << (8 * whole)) - 1) == 0:
                        # The whole bytes (7 at most) in one store when none is 0xFF (nor follows one).
                        _store64(ms_address + ms_pos, ms_acc)
                        ms_pos += whole
                        ms_acc >>= 8 * whole
                        ms_used &= 7
                    elif whole:
                        ms_pos, ms_room, ms_used, ms_acc = _ms_flush(ms, ms_pos, ms_room, ms_used, ms_acc)
                t_cur[_u(qx + 1)] = b
                t_cur[_u(qx + 2)] = d
                if q:
                    u1 = u
                else:
                    u0 = u
                any_significant |= rho
                rho_left = rho
            if initial and u0 > 0 and u1 > 0:
                both = u0 > 2 and u1 > 2
                mel_events[_u(events)] = both
                events += 1
                if both:
                    ucwd, un = _uvlc_code(uvlc, u0, u1, u0 - 2, u1 - 2, False)
                elif u0 > 2:
                    ucwd, un = _uvlc_code(uvlc, u0, u1, u0, u1, True)
                else:
                    ucwd, un = _uvlc_code(uvlc, u0, u1, u0, u1, False)
            else:
                pair = uvlc_pair[_u(u0 * 75 + u1)]
                ucwd, un = pair & 0xFFFFFFFF, pair >> 32
            # VLC bits of the pair (38 at most); bytes written once 24 bits are pending.
            v_acc |= (cwd | ucwd << n) << v_n
            v_n += n + un
            if v_n >= 24:
                whole = v_n >> 3
                if (_zero_bytes((v_acc & 0x7F7F7F7F7F7F7F7F) ^ 0x7F7F7F7F7F7F7F7F) & HIGHS
                        & ((1 << (8 * whole)) - 1)) == 0:
                    # No byte has its low seven bits all ones, so none holds fewer than eight: the whole bytes
                    # (7 at most) in one store.
                    _store64(vlc_address + v_pos, v_acc)
                    v_pos += whole
                    v_high = 1 if ((v_acc >> (8 * whole - 8)) & 0xFF) > 0x8F else 0
                    v_acc >>= 8 * whole
                    v_n &= 7
                while v_n >= 8:
                    if v_high and (v_acc & 0x7F) == 0x7F:
                        byte = 0x7F
                        v_acc >>= 7
                        v_n -= 7
                    else:
                        byte = v_acc & 0xFF
                        v_acc >>= 8
                        v_n -= 8
                    vlc[_u(v_pos)] = byte
                    v_pos += 1
                    v_high = 1 if byte > 0x8F else 0
        t_prev, t_cur = t_cur, t_prev
    if not any_significant:
        return 0
    v_pos, v_acc, v_n, v_high = _vlc_bytes(vlc, v_pos, v_acc, v_n, v_high)
    mel_pos, mel_free, mel_tmp, mel_run = _mel_code(mel_events, events, mel)
    # A last seven bits of ones after a byte above 0x8F make a byte of their own.
    if v_high and v_n >= 7 and (v_acc & 0x7F) == 0x7F:
        vlc[_u(v_pos)] = 0x7F
        v_pos += 1
        v_acc >>= 7
        v_n -= 7
    # Terminate MEL and VLC, fusing their last bytes where their bits agree.
    if mel_run > 0:
        mel_pos, mel_free, mel_tmp = _mel_bit(mel, mel_pos, mel_free, mel_tmp, 1)
    mel_last = (mel_tmp << mel_free) & 0xFF
    mel_mask = (0xFF << mel_free) & 0xFF
    vlc_mask = 0xFF >> (8 - v_n)
    if mel_mask | vlc_mask:
        vlc_last = v_acc
        fuse = mel_last | vlc_last
        if ((fuse ^ mel_last) & mel_mask) == 0 and ((fuse ^ vlc_last) & vlc_mask) == 0 and fuse != 0xFF \
                and v_pos > 1:
            mel[mel_pos] = fuse
            mel_pos += 1
        else:
            mel[mel_pos] = mel_last
            mel_pos += 1
            vlc[_u(v_pos)] = vlc_last
            v_pos += 1
    # Terminate MagSgn: pad with ones; a last byte of all ones (or a dangling 0xFF) is left out.
    ms_pos, ms_room, ms_used, ms_acc = _ms_flush(ms, ms_pos, ms_room, ms_used, ms_acc)
    if ms_used:
        last = ms_acc | (((1 << (ms_room - ms_used)) - 1) << ms_used)
        if last != 0xFF:
            ms[_u(ms_pos)] = last
            ms_pos += 1
    elif ms_room == 7:
        ms_pos -= 1
    n_ms, n_mel, n_vlc = ms_pos, mel_pos, v_pos
    scup = n_mel + n_vlc
    total = n_ms + scup
    if total > out.size or scup > MAX_SCUP:
        return -1
    out[:n_ms] = ms[:n_ms]
    out[n_ms:n_ms + n_mel] = mel[:n_mel]
    for i in range(n_vlc):
        out[total - 1 - i] = vlc[_u(i)]
    out[total - 1] = scup >> 4
    out[total - 2] = (out[total - 2] & 0xF0) | (scup & 0xF)
    return total


@njit(cache=True, nogil=True)
def encode_blocks(coeffs: np.ndarray, blocks: np.ndarray, out: np.ndarray, offsets: np.ndarray,
                  results: np.ndarray) -> int:
    """Code every listed code-block (see the module docstring); 0, or -1-i if block i overflowed."""
    most = 4
    widest = 4
    for k in range(blocks.shape[0]):
        most = max(most, blocks[k, 3] * blocks[k, 4], blocks[k, 4] + 8)
        widest = max(widest, blocks[k, 4])
    ms = np.empty(most * 5 + 16, dtype=np.uint8)
    mel = np.empty(most + 16, dtype=np.uint8)
    vlc = np.empty(most * 4 + 16, dtype=np.uint8)
    t_prev = np.zeros(widest + 8, dtype=np.int64)
    t_cur = np.zeros(widest + 8, dtype=np.int64)
    v0 = np.zeros(widest + 4, dtype=np.int64)
    v1 = np.zeros(widest + 4, dtype=np.int64)
    t0 = np.zeros(widest + 4, dtype=np.int64)
    t1 = np.zeros(widest + 4, dtype=np.int64)
    mel_events = np.zeros(most + 16, dtype=np.uint8)
    for k in range(blocks.shape[0]):
        comp, y0, x0, h, w = blocks[k, 0], blocks[k, 1], blocks[k, 2], blocks[k, 3], blocks[k, 4]
        window = out[offsets[k]:offsets[k + 1]]
        length = _encode_block(coeffs, comp, y0, x0, h, w, ms, mel, vlc, t_prev, t_cur, v0, v1, t0, t1,
                               mel_events, _ENC, _UVLC, _UVLC_PAIR, window)
        if length < 0:
            return -1 - k
        results[k, 0] = length
        results[k, 1] = 1 if length else 0
        results[k, 2] = 1
    return 0


# ----------------------------------------------------------------------------- decoder

_UVLC_PREFIX = tables.uvlc_prefix_table()
_SUFFIX_BITS = np.array([0, 0, 0, 1, 0, 5], dtype=np.int64)  # U-VLC suffix bits after each prefix value


@njit(cache=True, nogil=True)
def _mel_event(base: int, end: int, pos: int, byte: int, bits: int, ff: int, k: int, run: int, one: int
               ) -> tuple[int, int, int, int, int, int, int, int]:
    """The next MEL event: (event, pos, byte, bits, ff, k, run of zero events left, a one event pending).

    Bits are read highest first, seven from a byte after 0xFF, 0xFF past
    the end; a symbol is a 1 (a run of ``2**exp`` zero events) or a 0 and a
    run of ``exp`` bits followed by a one event.
    """
    while True:
        if run > 0:
            return 0, pos, byte, bits, ff, k, run - 1, one
        if one:
            return 1, pos, byte, bits, ff, k, run, 0
        e = _MEL_EXP[k]
        if bits == 0:
            byte = _load8(base + pos) if pos < end else 0xFF
            pos += 1
            bits = 7 if ff else 8
            ff = 1 if byte == 0xFF else 0
        bits -= 1
        if (byte >> bits) & 1:
            run = 1 << e
            k = k + 1 if k < 12 else 12  # min and max written out: numba calls a function for those
        else:
            run = 0
            for _ in range(e):
                if bits == 0:
                    byte = _load8(base + pos) if pos < end else 0xFF
                    pos += 1
                    bits = 7 if ff else 8
                    ff = 1 if byte == 0xFF else 0
                bits -= 1
                run = (run << 1) | ((byte >> bits) & 1)
            one = 1
            k = k - 1 if k > 0 else 0


@njit(cache=True, nogil=True, inline="always")
def _uvlc_prefix(acc: int, bits: int) -> tuple[int, int, int]:
    """The U-VLC prefix: 1, 2, 3 (3 or 4, one suffix bit follows) or 5 (5.., five suffix bits follow)."""
    if acc & 1:
        return 1, acc >> 1, bits - 1
    if acc & 2:
        return 2, acc >> 2, bits - 2
    if acc & 4:
        return 3, acc >> 3, bits - 3
    return 5, acc >> 3, bits - 3


@njit(cache=True, nogil=True, inline="always")
def _uvlc_suffix(acc: int, bits: int, prefix: int) -> tuple[int, int, int]:
    if prefix == 3:
        return 3 + (acc & 1), acc >> 1, bits - 1
    if prefix == 5:
        return 5 + (acc & 31), acc >> 5, bits - 5
    return prefix, acc, bits


@njit(cache=True, nogil=True, inline="always")
def _uvlc_extension(acc: int, bits: int, u: int) -> tuple[int, int, int]:
    if u >= 33:  # a five-bit suffix of 28..31 is followed by four bits of extension
        return u + ((acc & 15) << 2), acc >> 4, bits - 4
    return u, acc, bits


@njit(cache=True, nogil=True, inline="always")
def _uvlc_pair(acc: int, bits: int, mode: int) -> tuple[int, int, int, int]:
    """u of the quads of a pair that send one (`mode` bit 0: the first, bit 1: the second), table-driven:
    prefixes, suffixes, extensions.  (u0, u1, acc, bits)."""
    entry = _UVLC_PREFIX[(mode << 6) | (acc & 63)]
    pre0 = entry & 0xF
    pre1 = (entry >> 4) & 0xF
    used = entry >> 8
    n0 = _SUFFIX_BITS[pre0]
    n1 = _SUFFIX_BITS[pre1]
    u0 = pre0 + ((acc >> used) & ((1 << n0) - 1))
    used += n0
    u1 = pre1 + ((acc >> used) & ((1 << n1) - 1))
    used += n1
    x0 = 4 if u0 >= 33 else 0  # a five-bit suffix of 28..31 is followed by four bits of extension
    x1 = 4 if u1 >= 33 else 0
    u0 += ((acc >> used) & ((1 << x0) - 1)) << 2
    used += x0
    u1 += ((acc >> used) & ((1 << x1) - 1)) << 2
    used += x1
    return u0, u1, acc >> used, bits - used


@njit(cache=True, nogil=True, inline="always")
def _ms_refill(base: int, pos: int, end: int, acc: int, bits: int, ff: int) -> tuple[int, int, int, int]:
    """MagSgn bits up to 56..63 pending (bits lowest first; a byte after 0xFF holds seven, 0xFF past the end).

    State: (pos, acc, bits, whether the last byte read is 0xFF).  While
    eight bytes remain and none of those taken is 0xFF, they come in one load.
    """
    if ff == 0 and pos + 8 <= end:
        take = (63 - bits) >> 3
        word = _load64(base + pos)
        if _zero_bytes(~word) & HIGHS & ((1 << (8 * take)) - 1) == 0:
            return pos + take, acc | (word & ((1 << (8 * take)) - 1)) << bits, bits + 8 * take, 0
    while bits <= 55:
        d = _load8(base + pos) if pos < end else 0xFF
        pos += 1
        if ff:
            acc |= (d & 0x7F) << bits
            bits += 7
        else:
            acc |= d << bits
            bits += 8
        ff = 1 if d == 0xFF else 0
    return pos, acc, bits, ff


@njit(cache=True, nogil=True, inline="always")
def _vlc_refill(base: int, pos: int, start: int, acc: int, bits: int, high: int) -> tuple[int, int, int, int]:
    """VLC bits up to 49..63 pending, read backward from `pos` (zeros before `start`); after a byte above 0x8F a
    byte whose low seven bits are all ones holds those seven.

    State: (pos, acc, bits, whether the last byte read exceeds 0x8F).  While
    eight bytes remain and none of those taken has its low seven bits all
    ones, they come in one load.
    """
    if pos - 7 >= start:
        take = (63 - bits) >> 3
        word = _byte_swap(_load64(base + pos - 7))  # the byte at pos lowest
        keep = (1 << (8 * take)) - 1
        if _zero_bytes((word & 0x7F7F7F7F7F7F7F7F) ^ 0x7F7F7F7F7F7F7F7F) & HIGHS & keep == 0:
            return pos - take, acc | (word & keep) << bits, bits + 8 * take, 1 if ((word >> (8 * take - 8)) & 0xFF) > 0x8F else 0
    while bits <= 48:
        d = _load8(base + pos) if pos >= start else 0
        pos -= 1
        if high and (d & 0x7F) == 0x7F:
            acc |= (d & 0x7F) << bits
            bits += 7
        else:
            acc |= d << bits
            bits += 8
        high = 1 if d > 0x8F else 0
    return pos, acc, bits, high


@njit(cache=True, nogil=True, inline="always")
def _sample(v: int) -> int:
    """The coefficient ``mu = (v >> 1) + 1``, negative where bit 0 is set, of a sample with MagSgn value `v` (its
    implied top bit included); no branch."""
    sign = -(v & 1)
    return (((v >> 1) + 1) ^ sign) - sign


@njit(cache=True, nogil=True)
def _below_zero_planes(coeffs: np.ndarray, comp: int, y0: int, x0: int, h: int, w: int, p: int) -> None:
    """Magnitudes ``mu`` of a block decoded above `p` > 0 zero planes made ``(2 mu + 1) << (p - 1)``, in place."""
    for y in range(y0, y0 + h):
        for x in range(x0, x0 + w):
            c = np.int64(coeffs[comp, y, x])
            if c:
                mu = ((2 * abs(c) + 1) << (p - 1))
                coeffs[comp, y, x] = -mu if c < 0 else mu


@njit(cache=True, nogil=True)
def _decode_block(coeffs: np.ndarray, comp: int, y0: int, x0: int, h: int, w: int, data: np.ndarray, start: int,
                  length: int, p: int, t: np.ndarray, dec: np.ndarray) -> int:
    """Decode one cleanup segment into the zeroed ``coeffs[comp, y0:y0 + h, x0:x0 + w]``; 0 or an error code.

    ``t[tp:]`` holds ``t = 2 mu - 1`` of the bottom samples of the row of
    quads above (0 where not significant), one column of padding on the left,
    and ``t[tc:]`` those of this row; `dec` the CxtVLC look-ups of the other
    rows and then of the initial row (:data:`_DEC`).  Offsets, not arrays
    nor views, change from row to row: numba would count references to those.
    """
    if length < 2:
        return -1
    end = start + length
    base = _address(data)
    scup = (_load8(base + end - 1) << 4) | (_load8(base + end - 2) & 0xF)
    if scup < 2 or scup > length or scup > MAX_SCUP:
        return -1
    mel_pos, mel_byte, mel_bits, mel_ff, mel_k, mel_run, mel_one = end - scup, 0, 0, 0, 0, 0, 0
    ms_end = end - scup
    ms_pos, ms_acc, ms_bits, ms_ff = start, 0, 0, 0
    # The VLC starts in the upper nibble of the last-but-one byte.
    d = _load8(base + end - 2) >> 4
    v_bits = 3 if (d & 7) == 7 else 4
    v_acc = d & ((1 << v_bits) - 1)
    v_high = 1 if (_load8(base + end - 2) | 0xF) > 0x8F else 0
    v_pos = end - 3
    v_start = end - scup
    w4 = (w + 3) & ~3
    limit = MAX_BOUND - p  # the largest bound U
    tp, tc = 0, TROW
    for i in range(w4 + 2):
        t[_u(tp + i)] = 0
    first = _address(coeffs) + comp * coeffs.strides[0] + y0 * coeffs.strides[1] + x0 * coeffs.strides[2]
    for y in range(0, h, 2):
        initial = y == 0
        lut = 1024 if initial else 0
        # The next two rows of coefficients into the cache while this pair of rows is decoded.
        for ahead in range(y + 2, y + 4 if y + 4 < h else h):
            _prefetch_row_to_write(first + ahead * coeffs.strides[1], w * coeffs.strides[2])
        for i in range(w4 + 2):
            t[_u(tc + i)] = 0
        below = y + 1 < h
        r0 = _u(y0 + y)
        r1 = _u(y0 + y + 1)
        row = first + y * coeffs.strides[1]
        rho_left = 0
        for x in range(0, w, 4):
            has1 = x + 2 < w
            if rho_left == 0 and mel_run > has1 and (initial or (t[_u(tp + x)] | t[_u(tp + x + 1)] | t[_u(tp + x + 2)]
                                                                 | t[_u(tp + x + 3)] | t[_u(tp + x + 4)]
                                                                 | t[_u(tp + x + 5)]) == 0):
                # Nothing significant around the pair and MEL zero events pending for both quads (context 0).
                mel_run -= 2 if has1 else 1
                continue
            # Enough VLC bits for both codewords and both U-VLC codes of the pair (at most 14 + 24), read
            # backward (zeros before the start).  The readers take the address of the bytes, not the array:
            # numba would count references to an array handed to a function.
            if v_bits <= 48:
                v_pos, v_acc, v_bits, v_high = _vlc_refill(base, v_pos, v_start, v_acc, v_bits, v_high)
            if initial:
                cq0 = (rho_left >> 1) | (rho_left & 1)
            else:
                cq0 = (((t[_u(tp + x)] | t[_u(tp + x + 1)]) != 0) | (((rho_left >> 2) | (rho_left >> 3)) & 1) << 1
                       | ((t[_u(tp + x + 2)] | t[_u(tp + x + 3)]) != 0) << 2)
            entry0 = 0
            event = 1
            if cq0 == 0:
                if mel_run > 0:
                    mel_run -= 1
                    event = 0
                elif mel_one:
                    mel_one = 0
                else:
                    event, mel_pos, mel_byte, mel_bits, mel_ff, mel_k, mel_run, mel_one = _mel_event(
                        base, end, mel_pos, mel_byte, mel_bits, mel_ff, mel_k, mel_run, mel_one)
            entry0 = dec[_u(lut | (cq0 << 7) | (v_acc & 0x7F))]
            if (entry0 == 0) & (event != 0):
                return -2
            entry0 &= -event  # no codeword without an event: no branch
            v_acc >>= entry0 & 0xF
            v_bits -= entry0 & 0xF
            rho0 = (entry0 >> 4) & 0xF
            entry1 = 0
            rho1 = 0
            if has1:
                if initial:
                    cq1 = (rho0 >> 1) | (rho0 & 1)
                else:
                    cq1 = (((t[_u(tp + x + 2)] | t[_u(tp + x + 3)]) != 0) | (((rho0 >> 2) | (rho0 >> 3)) & 1) << 1
                           | ((t[_u(tp + x + 4)] | t[_u(tp + x + 5)]) != 0) << 2)
                event = 1
                if cq1 == 0:
                    if mel_run > 0:
                        mel_run -= 1
                        event = 0
                    elif mel_one:
                        mel_one = 0
                    else:
                        event, mel_pos, mel_byte, mel_bits, mel_ff, mel_k, mel_run, mel_one = _mel_event(
                            base, end, mel_pos, mel_byte, mel_bits, mel_ff, mel_k, mel_run, mel_one)
                entry1 = dec[_u(lut | (cq1 << 7) | (v_acc & 0x7F))]
                if (entry1 == 0) & (event != 0):
                    return -2
                entry1 &= -event  # no codeword without an event: no branch
                v_acc >>= entry1 & 0xF
                v_bits -= entry1 & 0xF
                rho1 = (entry1 >> 4) & 0xF
            mode = ((entry0 >> 8) & 1) | ((entry1 >> 7) & 2)
            if initial and mode == 3:
                event, mel_pos, mel_byte, mel_bits, mel_ff, mel_k, mel_run, mel_one = _mel_event(
                    base, end, mel_pos, mel_byte, mel_bits, mel_ff, mel_k, mel_run, mel_one)
                add = 2 if event else 0
                if add == 0 and (v_acc & 3) == 0:
                    # A first prefix of 3 or more: the second quad's u is 1 or 2, in one bit.
                    pre0, v_acc, v_bits = _uvlc_prefix(v_acc, v_bits)
                    u1 = 1 + (v_acc & 1)
                    v_acc >>= 1
                    v_bits -= 1
                    u0, v_acc, v_bits = _uvlc_suffix(v_acc, v_bits, pre0)
                    u0, v_acc, v_bits = _uvlc_extension(v_acc, v_bits, u0)
                else:
                    u0, u1, v_acc, v_bits = _uvlc_pair(v_acc, v_bits, mode)
                    u0 += add
                    u1 += add
            else:
                # Mode 0 reads nothing and gives u = 0: no branch.
                u0, u1, v_acc, v_bits = _uvlc_pair(v_acc, v_bits, mode)
            # Exponent bounds, then the samples.
            kappa0 = 1
            kappa1 = 1
            if not initial:
                # The largest E above is the bit length of the OR of the t above; max(1, E - 1) is that of
                # the OR with 2, less one.
                middle = t[_u(tp + x + 2)] | t[_u(tp + x + 3)]
                if rho0 & (rho0 - 1):
                    kappa0 = _bit_length(t[_u(tp + x)] | t[_u(tp + x + 1)] | middle | 2) - 1
                if rho1 & (rho1 - 1):
                    kappa1 = _bit_length(middle | t[_u(tp + x + 4)] | t[_u(tp + x + 5)] | 2) - 1
            bound0 = u0 + kappa0
            bound1 = u1 + kappa1
            if bound0 > limit or bound1 > limit:
                return -3
            for q in range(2):
                entry = entry1 if q else entry0
                rho = (entry >> 4) & 0xF
                if rho == 0:
                    continue
                bound = bound1 if q else bound0
                qx = x + 2 * q
                ek = (entry >> 9) & 0xF
                e = (entry >> 13) & ek
                if bound <= 14:
                    # The quad's MagSgn bits (56 at most, so one refill serves it) go into 16-bit lanes at once:
                    # each significant sample takes its low m bits, and the implied bit e_1 above them.
                    significant = _LANE_MASKS[rho]
                    mask = ((1 << bound) - 1) * LANES & ~(_pdep(ek, LANES) << (bound - 1)) & significant
                    need = _popcount(mask)
                    if ms_bits < need:
                        ms_pos, ms_acc, ms_bits, ms_ff = _ms_refill(base, ms_pos, ms_end, ms_acc, ms_bits, ms_ff)
                    lanes = _pdep(ms_acc, mask) | ((mask + _pdep(e, LANES)) & ~mask)
                    ms_acc >>= need
                    ms_bits -= need
                    # The next row of quads looks at the exponents of the bottom samples only (E = bit length of t).
                    t[_u(tc + qx + 1)] = (((lanes >> 16) & 0xFFFF) | 1) & -((rho >> 1) & 1)
                    t[_u(tc + qx + 2)] = ((lanes >> 48) | 1) & -((rho >> 3) & 1)
                    if qx + 1 < w and below:
                        address = row + qx * coeffs.strides[2]
                        _store_quad(coeffs, address, address + coeffs.strides[1], lanes, significant)
                        continue
                    v0 = lanes & 0xFFFF
                    v1 = (lanes >> 16) & 0xFFFF
                    v2 = (lanes >> 32) & 0xFFFF
                    v3 = lanes >> 48
                else:
                    # MagSgn bits sample by sample: at least 56 after a refill, so two refills serve a quad with U
                    # of 28 or less, else one per sample (30 bits at most).
                    m0 = (bound - (ek & 1)) * (rho & 1)
                    m1 = (bound - ((ek >> 1) & 1)) * ((rho >> 1) & 1)
                    m2 = (bound - ((ek >> 2) & 1)) * ((rho >> 2) & 1)
                    m3 = (bound - ((ek >> 3) & 1)) * ((rho >> 3) & 1)
                    need = m0 + m1 if bound <= 28 else m0
                    if ms_bits < need:
                        ms_pos, ms_acc, ms_bits, ms_ff = _ms_refill(base, ms_pos, ms_end, ms_acc, ms_bits, ms_ff)
                    v0 = ms_acc & ((1 << m0) - 1)
                    ms_acc >>= m0
                    ms_bits -= m0
                    if bound > 28 and ms_bits < m1:
                        ms_pos, ms_acc, ms_bits, ms_ff = _ms_refill(base, ms_pos, ms_end, ms_acc, ms_bits, ms_ff)
                    v1 = ms_acc & ((1 << m1) - 1)
                    ms_acc >>= m1
                    ms_bits -= m1
                    need = m2 + m3 if bound <= 28 else m2
                    if ms_bits < need:
                        ms_pos, ms_acc, ms_bits, ms_ff = _ms_refill(base, ms_pos, ms_end, ms_acc, ms_bits, ms_ff)
                    v2 = ms_acc & ((1 << m2) - 1)
                    ms_acc >>= m2
                    ms_bits -= m2
                    if bound > 28 and ms_bits < m3:
                        ms_pos, ms_acc, ms_bits, ms_ff = _ms_refill(base, ms_pos, ms_end, ms_acc, ms_bits, ms_ff)
                    v3 = ms_acc & ((1 << m3) - 1)
                    ms_acc >>= m3
                    ms_bits -= m3
                    v0 |= (e & 1) << m0
                    v1 |= ((e >> 1) & 1) << m1
                    v2 |= ((e >> 2) & 1) << m2
                    v3 |= ((e >> 3) & 1) << m3
                    # The next row of quads looks at the exponents of the bottom samples only (E = bit length of t).
                    t[_u(tc + qx + 1)] = (v1 | 1) & -((rho >> 1) & 1)
                    t[_u(tc + qx + 2)] = (v3 | 1) & -((rho >> 3) & 1)
                right = qx + 1 < w
                if right and below:  # the whole quad is inside: no test per sample (0 where not significant)
                    coeffs[_u(comp), r0, _u(x0 + qx)] = _sample(v0) & -(rho & 1)
                    coeffs[_u(comp), r1, _u(x0 + qx)] = _sample(v1) & -((rho >> 1) & 1)
                    coeffs[_u(comp), r0, _u(x0 + qx + 1)] = _sample(v2) & -((rho >> 2) & 1)
                    coeffs[_u(comp), r1, _u(x0 + qx + 1)] = _sample(v3) & -((rho >> 3) & 1)
                    continue
                if rho & 1:
                    coeffs[_u(comp), r0, _u(x0 + qx)] = _sample(v0)
                if rho & 2 and below:
                    coeffs[_u(comp), r1, _u(x0 + qx)] = _sample(v1)
                if rho & 4 and right:
                    coeffs[_u(comp), r0, _u(x0 + qx + 1)] = _sample(v2)
                if rho & 8 and below and right:
                    coeffs[_u(comp), r1, _u(x0 + qx + 1)] = _sample(v3)
            rho_left = rho1 if has1 else rho0
        tp, tc = tc, tp
    if p:
        _below_zero_planes(coeffs, comp, y0, x0, h, w, p)
    return 0


@njit(cache=True, nogil=True)
def decode_blocks(coeffs: np.ndarray, blocks: np.ndarray, segments: np.ndarray, data: np.ndarray) -> int:
    """Decode every listed code-block's cleanup segment into `coeffs`, zero beforehand (see the module
    docstring)."""
    t = np.zeros(2 * TROW, dtype=np.int64)
    for k in range(blocks.shape[0]):
        comp, y0, x0, h, w = blocks[k, 0], blocks[k, 1], blocks[k, 2], blocks[k, 3], blocks[k, 4]
        planes, first, count = blocks[k, 6], blocks[k, 8], blocks[k, 9]
        if count == 0:
            continue
        if count != 1 or segments[first, 2] != 1:
            return -4
        if h * w > 4096 or h > 1024 or w > 1024:
            return -5
        status = _decode_block(coeffs, comp, y0, x0, h, w, data, segments[first, 0], segments[first, 1],
                               planes - 1, t, _DEC)
        if status:
            return status
    return 0
