"""JPEG 2000 lossless (ITU-T T.800 Part 1, reversible path), transfer syntax 1.2.840.10008.1.2.4.90.

Encoder
    One tile, one quality layer, LRCP progression, no precinct partition,
    64 x 64 code-blocks without style flags, the 5/3 reversible wavelet with
    :func:`levels_for` decomposition levels, the reversible colour transform
    for RGB, no quantisation (QCD style 0, two guard bits unless the data
    needs more).  Precision and sign in SIZ are Bits Stored and Pixel
    Representation.  The codestream written is::

        SOC  SIZ  COD  QCD  SOT  SOD  <packets>  EOC

Decoder
    Any Part 1 codestream on the reversible path: several tiles and
    tile-parts, precincts, layers, all five progression orders and POC,
    COC / QCC, SOP / EPH markers, every code-block style (see :mod:`.t1`),
    code-blocks truncated before their last pass (mid-point
    reconstruction).  The irreversible 9/7 wavelet, quantisation, ROI,
    packed packet headers and sub-sampled components raise
    :class:`UnsupportedCodestreamError`; bad data raises
    :class:`CorruptCodestreamError`.  Header fields are checked against the
    expected :class:`FrameInfo` before any image buffer is allocated.

The pipeline of a frame, and the modules that do each step: DC level shift
and colour transform (here, or in the wavelet's first and last passes for
one component), wavelet (:mod:`.dwt`), code-blocks
(:mod:`.t1`, the only part HTJ2K replaces), packets (:mod:`.tier2`),
marker segments (:mod:`.codestream`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, reduce

import numpy as np

from gateway.codecs import register
from gateway.codecs.base import FrameInfo, FunctionCodec, check_frame
from gateway.codecs.jpeg2000 import codestream as cs
from gateway.codecs.jpeg2000 import dwt, t1, tier2
from gateway.dicom.uids import JPEG_2000_LOSSLESS
from gateway.errors import (
    CorruptCodestreamError,
    UnsupportedCodestreamError,
    UnsupportedImageError,
)
from gateway.kernelcache import njit

__all__ = ["CODEC", "supports", "encode", "decode", "levels_for", "DEFAULT_LEVELS"]

DEFAULT_LEVELS = 5  # the smallest corpus total: 4 levels +0.05 %, 6 or 7 levels no smaller
CODE_BLOCK = 6  # 64 x 64
GUARD_BITS = 2
PARALLEL_BYTES = 1 << 20  # frames at least this large use two threads for the code-blocks and the wavelet
PARTS = 8  # runs of code-blocks the two threads share

# Photometric interpretation -> samples per pixel, pixel representations allowed.
_PROFILES: dict[str, tuple[int, tuple[int, ...]]] = {
    "MONOCHROME1": (1, (0, 1)),
    "MONOCHROME2": (1, (0, 1)),
    "PALETTE COLOR": (1, (0,)),
    "RGB": (3, (0,)),
    "YBR_RCT": (3, (0,)),
    "YBR_FULL": (3, (0,)),
}
_COLOUR_TRANSFORMED = ("RGB", "YBR_RCT")  # coded with the reversible colour transform

_pool: ThreadPoolExecutor | None = None


def _threads() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="j2k")
    return _pool


def supports(info: FrameInfo) -> str | None:
    """``None`` when a JPEG 2000 lossless codestream can carry `info`, else why not."""
    profile = _PROFILES.get(info.photometric_interpretation)
    if profile is None:
        return f"(0028,0004) '{info.photometric_interpretation}' is not allowed with JPEG 2000 Lossless"
    samples, representations = profile
    if info.samples_per_pixel != samples:
        return (f"(0028,0002) 'Samples per Pixel' {info.samples_per_pixel} does not suit "
                f"'{info.photometric_interpretation}' in JPEG 2000 Lossless")
    if info.pixel_representation not in representations:
        return f"(0028,0103) signed '{info.photometric_interpretation}' is not allowed with JPEG 2000 Lossless"
    if info.bits_allocated not in (8, 16):
        return f"(0028,0100) 'Bits Allocated' {info.bits_allocated} is not carried by our JPEG 2000 codec"
    if not 2 <= info.bits_stored <= 16:
        return f"(0028,0101) 'Bits Stored' {info.bits_stored} is outside 2..16 for JPEG 2000 Lossless"
    return None


def levels_for(rows: int, columns: int) -> int:
    """Decomposition levels: five, fewer for small images (each level must halve both sides)."""
    small = min(rows, columns)
    return max(0, min(DEFAULT_LEVELS, small.bit_length() - 1))


def _band_gains(levels: int) -> list[int]:
    """log2 of the 5/3 analysis gain of each sub-band, in QCD order (LL, then HL, LH, HH per level)."""
    return [0] + [g for _ in range(levels) for g in (1, 1, 2)]


# ----------------------------------------------------------------------------- the frame driver


@dataclass(frozen=True)
class BlockCoder:
    """The block coder of a JPEG 2000 family codec: all the frame driver needs to know of it.

    ``encode_blocks(coeffs, rows, out, offsets, results)`` codes the rows
    ``comp, y0, x0, h, w, orientation`` into ``out[offsets[i]:offsets[i+1]]``,
    ``results[i] = (length, passes, bit-planes)``, and returns 0 or ``-1 - i``
    when block ``i`` did not fit; ``decode_blocks(coeffs, blocks, segments,
    data)`` decodes the rows :func:`tier2.read_packets` gives and returns 0 or
    a negative code of `errors`.  Codes in `unsupported` are valid streams
    the coder does not decode.
    """

    name: str  # "JPEG 2000" or "HTJ2K", the prefix of error messages
    block_style: int  # COD code-block style written
    encode_blocks: Callable[..., int]
    decode_blocks: Callable[..., int]
    errors: dict[int, str]
    room: tuple[int, int]  # first guess of coded bytes per coefficient: (bits + a) // b
    unsupported: tuple[int, ...] = ()


PART1 = BlockCoder("JPEG 2000", 0, t1.encode_blocks, t1.decode_blocks, t1.ERRORS, (2, 4))


@njit(cache=True, nogil=True)
def _component_planes(frame: np.ndarray, planes: np.ndarray, ya: int, yb: int, shift: int, mct: bool) -> int:
    """``planes[c] = frame[..., c] - shift`` on rows ``ya:yb``, through the reversible colour transform when
    `mct`.

    Returns the bitwise or of ``t ^ (t >> 63)`` over the shifted samples
    ``t`` (the range fold of :func:`dwt.forward`).
    """
    _, cols, nc = frame.shape
    seen = 0
    for y in range(ya, yb):
        row = frame[y]
        if mct:
            p0, p1, p2 = planes[0, y], planes[1, y], planes[2, y]
            for x in range(cols):
                r = np.int64(row[x, 0]) - shift
                g = np.int64(row[x, 1]) - shift
                b = np.int64(row[x, 2]) - shift
                seen |= (r ^ (r >> 63)) | (g ^ (g >> 63)) | (b ^ (b >> 63))
                p0[x] = (r + 2 * g + b) >> 2
                p1[x] = b - g
                p2[x] = r - g
        else:
            for c in range(nc):
                plane = planes[c, y]
                for x in range(cols):
                    t = np.int64(row[x, c]) - shift
                    seen |= t ^ (t >> 63)
                    plane[x] = t
    return seen


def _each_component(work: Callable[[int], None], components: int, parallel: bool) -> None:
    """`work` for each component, the components shared between two threads when `parallel`."""
    if parallel and components > 1:
        dwt.shared(_threads(), work, [(c,) for c in range(components)])
    else:
        for c in range(components):
            work(c)


def _parts(sizes: np.ndarray) -> list[slice]:
    """Rows of code-blocks of these sizes cut into PARTS runs of about equal work.

    The two threads take the runs one after the other, so a thread slowed by
    other processes takes fewer of them (two fixed halves wait for the slower).
    """
    cuts = np.searchsorted(np.cumsum(sizes), sizes.sum() * np.arange(1, PARTS) / PARTS)
    edges = np.unique(np.concatenate([[0], np.clip(cuts, 1, len(sizes) - 1), [len(sizes)]]))
    return [slice(int(a), int(b)) for a, b in zip(edges, edges[1:])]


def _encode_blocks(coder: BlockCoder, coeffs: np.ndarray, rows: np.ndarray, bits: int, parallel: bool,
                   sizes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every code-block coded by `coder`, in one kernel call (two threads for large frames).

    `bits` is one more than the bit length of the largest magnitude; `sizes`
    the samples of each code-block, if known.
    """
    sizes = rows[:, 3] * rows[:, 4] if sizes is None else sizes
    a, b = coder.room
    room = sizes * (bits + a) // b + 64  # codewords rarely exceed the raw bits; retried if they do

    def run(part: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sub = rows[part]
        extra = room[part].copy()
        while True:
            offsets = np.zeros(len(sub) + 1, dtype=np.int64)
            np.cumsum(extra, out=offsets[1:])
            out = np.empty(int(offsets[-1]), dtype=np.uint8)
            results = np.zeros((len(sub), 3), dtype=np.int64)
            status = coder.encode_blocks(coeffs, sub, out, offsets, results)
            if status == 0:
                return out, offsets, results
            extra[-1 - status] *= 4

    if not parallel or len(rows) < 2:
        return run(slice(None))
    parts = dwt.shared(_threads(), run, [(part,) for part in _parts(sizes)])  # time follows the coefficient count
    starts = np.cumsum([0] + [part[1][-1] for part in parts])
    out = np.concatenate([part[0] for part in parts])
    offsets = np.concatenate([part[1][:-1] + start for part, start in zip(parts, starts)] + [starts[-1:]])
    results = np.concatenate([part[2] for part in parts])
    return out, offsets, results


def _band_magnitudes(bands: np.ndarray, levels: int) -> list[int]:
    """The or of the coefficient magnitudes of each sub-band, in QCD order, from :func:`dwt.forward`'s `bands`
    of every component."""
    # LL, HL, LH, HH of each level, first level first
    quads = (bands[0] if len(bands) == 1 else np.bitwise_or.reduce(bands, axis=0)).tolist()
    if levels == 0:
        return [quads[0][0]]
    return [quads[levels - 1][0]] + [m for level in range(levels - 1, -1, -1) for m in quads[level][1:]]


def _guard_bits(magnitudes: list[int], exponents: tuple[int, ...]) -> int:
    """Guard bits so that every sub-band's coefficients fit its Mb = guard + exponent - 1 bit-planes."""
    return max([GUARD_BITS] + [m.bit_length() - e + 1 for m, e in zip(magnitudes, exponents)])


# Plans of tiles, shared by the frames of a series (a CT or MR series is hundreds of frames of one geometry):
# decoding keys them on the tile's rectangle and its whole TileCoding, encoding on all encode_planes derives
# them from.  Bounded in entries and bytes.
PLAN_ENTRIES = 128  # a tile each: enough for the tiles of most tiled streams too
PLAN_BYTES = 32 << 20
_decode_plans = tier2.PlanCache(PLAN_ENTRIES, PLAN_BYTES)
_encode_plans = tier2.PlanCache(PLAN_ENTRIES, PLAN_BYTES)


@dataclass(frozen=True)
class EncodePlan:
    """What :func:`encode_planes` derives from a frame's geometry alone (one tile at the origin, one layer)."""

    codings: tuple[cs.Coding, cs.Coding]  # COD without and with the colour transform
    gains: tuple[int, ...]  # :func:`_band_gains`
    layout: tier2.Layout
    order: np.ndarray
    blocks: np.ndarray  # the block coder's rows: comp, y0, x0, h, w, orientation
    sizes: np.ndarray  # samples of each code-block
    pband_gains: np.ndarray  # the gain of each precinct-band's sub-band

    @property
    def nbytes(self) -> int:
        layout = self.layout
        return sum(a.nbytes for a in (layout.resolutions, layout.precincts, layout.pbands, layout.blocks,
                                      self.order, self.blocks, self.sizes, self.pband_gains))


def _encode_plan(rows: int, cols: int, components: int, levels: int, progression: int,
                 block_style: int) -> EncodePlan:
    key = (rows, cols, components, levels, progression, block_style)
    plan = _encode_plans.get(key)
    if plan is None:
        style = cs.CodingStyle(levels, CODE_BLOCK, CODE_BLOCK, block_style, True, ((15, 15),) * (levels + 1))
        layout = tier2.tile_layout((0, 0, cols, rows), (style,) * components)
        order = tier2.packet_order(layout, 1, progression, (), 0, 0)
        gains = tuple(_band_gains(levels))
        blocks = np.ascontiguousarray(layout.blocks[:, :tier2.B_PBAND])
        plan = EncodePlan((cs.Coding(progression, 1, 0, style), cs.Coding(progression, 1, 1, style)), gains,
                          layout, order, blocks, blocks[:, 3] * blocks[:, 4],
                          np.array(gains, dtype=np.int64)[layout.pbands[:, tier2.PB_BAND]])
        _encode_plans.put(key, plan, plan.nbytes)
    return plan


def _decode_plan(coder: BlockCoder, rect: tuple[int, int, int, int], coding: cs.TileCoding, index: int,
                 data_bytes: int) -> tier2.Plan:
    """The plan of a tile, its coding first checked (:func:`_check_tile`) and its packet count checked
    against the size of its data before anything is sized from its headers."""
    components = len(coding.styles)
    key = (coder.name, coder.block_style, rect, coding)  # all the checks and the plan depend on
    plan = _decode_plans.get(key)
    layers = coding.coding.layers
    if plan is None:
        _check_tile(coder, coding, index, components)
        packets = layers * sum(tier2.count_precincts(rect, style) for style in coding.styles)
    else:
        packets = plan.packets
    if packets > data_bytes + 4096:
        raise CorruptCodestreamError(f"{coder.name}: tile {index} declares {packets} packets in {data_bytes} bytes")
    if plan is None:
        limits = tuple(tuple(q.guard + e - 1 for e in q.exponents) for q in coding.quantizations)
        plan = tier2.tile_plan(rect, coding.styles, layers, coding.coding.progression, coding.poc, limits)
        _decode_plans.put(key, plan, plan.nbytes)
    return plan


@lru_cache(maxsize=16)
def _component_ranges(components: tuple[cs.Component, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per component: DC level shift, and the lowest and highest value of its precision (never written)."""
    shifts = np.array([0 if comp.signed else 1 << (comp.precision - 1) for comp in components], np.int64)
    lows = np.array([-(1 << (comp.precision - 1)) if comp.signed else 0 for comp in components], np.int64)
    highs = lows + (1 << np.array([comp.precision for comp in components], np.int64)) - 1
    return shifts, lows, highs


@dataclass(frozen=True)
class EncodedTile:
    """What the frame driver made of a frame: the packets of its one tile and the main header's segments."""

    size: cs.Size
    coding: cs.Coding
    quantization: cs.Quantization
    packets: bytes
    magnitude_bits: int  # the most magnitude bit-planes of any sub-band


def encode_planes(frame: np.ndarray, info: FrameInfo, coder: BlockCoder, levels: int, progression: int,
                  parallel: bool, rsiz: int = 0) -> EncodedTile:
    """Level shift, colour transform, wavelet, block coder and packets of one frame (one tile, one layer).

    `frame` is already checked against `info` (shape and type).
    Values outside Bits Stored raise :class:`UnsupportedImageError` before
    any code-block is coded (found while the samples are read, see
    :func:`dwt.forward`).
    """
    rows, cols, nc = info.rows, info.columns, info.samples_per_pixel
    planes = np.empty((nc, rows, cols), dtype=np.int32)
    shift = 0 if info.signed else 1 << (info.bits_stored - 1)
    mct = int(nc == 3 and info.photometric_interpretation in _COLOUR_TRANSFORMED)
    bands = np.zeros((nc, max(levels, 1), 4), dtype=np.int64)
    if nc == 1:  # the level shift and the range check in the wavelet's first pass
        seen = dwt.forward(planes[0], levels, 0, 0, frame.reshape(rows, cols), shift, bands[0],
                           _threads() if parallel else None)
        _check_seen(seen, info)
    else:
        pixels = frame.reshape(rows, cols, nc)
        samples = np.empty_like(planes)
        _check_seen(max(dwt.shared(_threads() if parallel else None,
                                   lambda ya, yb: _component_planes(pixels, samples, ya, yb, shift, bool(mct)),
                                   dwt.halves(rows, 1))), info)
        _each_component(lambda c: dwt.forward(planes[c], levels, 0, 0, samples[c], 0, bands[c]), nc, parallel)
    plan = _encode_plan(rows, cols, nc, levels, progression, coder.block_style)
    exponents = tuple(info.bits_stored + g for g in plan.gains)
    magnitudes = _band_magnitudes(bands, levels)
    guard = _guard_bits(magnitudes, exponents)
    if guard > cs.MAX_GUARD_BITS:
        raise UnsupportedImageError("wavelet coefficients exceed what seven guard bits can describe")
    limits = plan.pband_gains + (guard + info.bits_stored - 1)  # Mb = guard + exponent - 1 of each precinct-band
    bits = reduce(operator.or_, magnitudes).bit_length() + 1
    out, offsets, results = _encode_blocks(coder, planes, plan.blocks, bits, parallel, plan.sizes)
    packets = tier2.write_packets(plan.layout, plan.order, limits, results[:, 0], results[:, 1], results[:, 2], out,
                                  offsets)
    return EncodedTile(_size(cols, rows, info.bits_stored, info.signed, nc, rsiz), plan.codings[mct],
                       cs.Quantization(0, guard, exponents), packets, guard + max(exponents) - 1)


@lru_cache(maxsize=16)
def _size(cols: int, rows: int, precision: int, signed: bool, components: int, rsiz: int) -> cs.Size:
    """The SIZ of one tile at the origin."""
    return cs.Size(cols, rows, 0, 0, cols, rows, 0, 0, (cs.Component(precision, signed),) * components, rsiz)


def check_levels(levels: int) -> None:
    if not 0 <= levels <= cs.MAX_LEVELS:
        raise ValueError(f"decomposition levels must be 0..{cs.MAX_LEVELS}, got {levels}")


def _values_error(info: FrameInfo) -> UnsupportedImageError:
    return UnsupportedImageError(f"values outside the {info.bits_stored}-bit range of (0028,0101) 'Bits Stored'")


def _check_seen(seen: int, info: FrameInfo) -> None:
    """Refuse the frame when the fold of its level-shifted samples says one is not a Bits Stored value."""
    if seen >> (info.bits_stored - 1):
        raise _values_error(info)


def encode(frame: np.ndarray, info: FrameInfo, *, levels: int | None = None,
           parallel: bool | None = None) -> bytes:
    """Encode one frame as a JPEG 2000 lossless codestream (see the module docstring).

    Parameters
    ----------
    levels
        Decomposition levels (default :func:`levels_for`); 0..32.
    parallel
        Code the code-blocks and compute the wavelet on two threads (default: for frames of 1 MB or more).
    """
    reason = supports(info)
    if reason is not None:
        raise UnsupportedImageError(reason)
    frame = check_frame(frame, info)
    if levels is None:
        levels = levels_for(info.rows, info.columns)
    check_levels(levels)
    if parallel is None:
        parallel = info.frame_bytes >= PARALLEL_BYTES
    tile = encode_planes(frame, info, PART1, levels, cs.LRCP, parallel)
    return cs.write_codestream(tile.size, tile.coding, tile.quantization, [tile.packets])


# ----------------------------------------------------------------------------- decoder


def _check_tile(coder: BlockCoder, coding: cs.TileCoding, tile: int, components: int) -> None:
    ht = bool(coder.block_style & cs.HT_BLOCKS)
    for c, (style, quant) in enumerate(zip(coding.styles, coding.quantizations)):
        if bool(style.block_style & cs.HT_BLOCKS) != ht:
            if ht:
                raise UnsupportedCodestreamError(
                    f"HTJ2K: tile {tile} component {c} mixes Part 1 and HT code-blocks")
            raise UnsupportedCodestreamError(
                f"JPEG 2000: tile {tile} component {c} uses HT code-blocks (HTJ2K, ITU-T T.814)")
        if not style.reversible:
            raise UnsupportedCodestreamError(
                f"{coder.name}: tile {tile} component {c} uses the irreversible 9/7 wavelet (lossy); "
                "only the reversible 5/3 path is decoded")
        if quant.style != 0:
            raise UnsupportedCodestreamError(
                f"{coder.name}: tile {tile} component {c} is quantised (QCD style {quant.style}): not reversible")
        if len(quant.exponents) < 3 * style.levels + 1:
            raise CorruptCodestreamError(f"{coder.name}: tile {tile} component {c} lacks sub-band exponents")
        if ht and style.xcb + style.ycb > 12:
            raise CorruptCodestreamError(f"HTJ2K: tile {tile} component {c} code-blocks exceed 4096 samples")
    if coding.coding.mct and components < 3:
        raise CorruptCodestreamError(f"{coder.name}: a colour transform with fewer than three components")


def _decode_blocks(coder: BlockCoder, coeffs: np.ndarray, blocks: np.ndarray, segments: np.ndarray,
                   data: np.ndarray, parallel: bool) -> int:
    """Every code-block decoded by `coder`, split between two threads for large tiles."""
    if not parallel or len(blocks) < 2:
        return coder.decode_blocks(coeffs, blocks, segments, data)
    parts = [blocks[part] for part in _parts(blocks[:, 3] * blocks[:, 4])]
    statuses = dwt.shared(_threads(), lambda part: coder.decode_blocks(coeffs, part, segments, data),
                          [(part,) for part in parts])
    return next((s for s in statuses if s), 0)


def _decode_tile(coder: BlockCoder, stream: cs.Codestream, index: int, image: np.ndarray, lowest: int,
                 highest: int, parallel: bool) -> int:
    """Decode tile `index` into its region of ``image[rows, columns, components]``; 1 when a value written
    (level shifted and clipped to its component's precision) is outside ``[lowest, highest]``, else 0."""
    size = stream.size
    tile = stream.tiles[index]
    coding = cs.tile_coding(stream, tile)
    nc = len(size.components)
    rect = size.tile_rect(index)
    tx0, ty0, tx1, ty1 = rect
    plan = _decode_plan(coder, rect, coding, index, len(tile.data))
    blocks, segments, data = tier2.read_packets(tile.data, plan, coding.coding.sop, coding.coding.eph, coder.name)
    coeffs = np.zeros((nc, ty1 - ty0, tx1 - tx0), dtype=np.int32)
    status = _decode_blocks(coder, coeffs, blocks, segments, data, parallel)
    if status:
        kind = UnsupportedCodestreamError if status in coder.unsupported else CorruptCodestreamError
        raise kind(f"{coder.name}: tile {index}: {coder.errors.get(status, status)}")
    region = image[ty0 - size.y0:ty1 - size.y0, tx0 - size.x0:tx1 - size.x0]
    # Per component: DC level shift, then the clip to its precision's range.
    pool = _threads() if parallel else None
    if nc == 1 and coding.styles[0].levels:  # all in the wavelet's last pass
        comp = size.components[0]
        low = -(1 << (comp.precision - 1)) if comp.signed else 0
        finish = (0 if comp.signed else 1 << (comp.precision - 1), low, low + (1 << comp.precision) - 1, lowest,
                  highest)
        return dwt.inverse(coeffs[0], coding.styles[0].levels, tx0, ty0, region[:, :, 0], finish, pool)
    shifts, lows, highs = _component_ranges(size.components)
    samples = np.empty_like(coeffs)
    _each_component(lambda c: dwt.inverse(coeffs[c], coding.styles[c].levels, tx0, ty0, samples[c]), nc, parallel)
    mct = bool(coding.coding.mct)
    return max(dwt.shared(pool, lambda ya, yb: dwt.finish_rows(samples, region, ya, yb, mct, shifts, lows, highs,
                                                                 lowest, highest), dwt.halves(ty1 - ty0, 1)))


def decode_stream(stream: cs.Codestream, info: FrameInfo, coder: BlockCoder, parallel: bool | None) -> np.ndarray:
    """Decode a parsed codestream whose code-blocks `coder` decodes into a frame of the form `info` describes."""
    size = stream.size
    name = coder.name
    rows, cols = size.height - size.y0, size.width - size.x0
    if (rows, cols) != (info.rows, info.columns):
        raise CorruptCodestreamError(f"{name}: image is {rows} x {cols}, {info.rows} x {info.columns} expected")
    if len(size.components) != info.samples_per_pixel:
        raise CorruptCodestreamError(f"{name}: {len(size.components)} components, {info.samples_per_pixel} expected")
    for comp in size.components:
        if comp.precision > info.bits_allocated:
            raise CorruptCodestreamError(
                f"{name}: {comp.precision}-bit component in (0028,0100) 'Bits Allocated' {info.bits_allocated}")
    if parallel is None:
        parallel = info.frame_bytes >= PARALLEL_BYTES
    nc = info.samples_per_pixel
    if all(comp.signed == info.signed for comp in size.components):
        # The tiles write the frame itself, checking the range as they go.
        frame = np.empty(info.shape, dtype=info.dtype)
        lowest, highest = info.value_range
        bad = 0
        for index in sorted(stream.tiles):
            bad |= _decode_tile(coder, stream, index, frame.reshape(rows, cols, nc), lowest, highest, parallel)
        if bad:
            raise _range_error(info, name)
        return frame
    image = np.empty((rows, cols, nc), dtype=np.int32)
    for index in sorted(stream.tiles):
        _decode_tile(coder, stream, index, image, dwt.INT32_LOW, dwt.INT32_HIGH, parallel)
    return _to_frame(np.moveaxis(image, 2, 0), size.components, info, name)


def decode(data: bytes, info: FrameInfo, *, parallel: bool | None = None) -> np.ndarray:
    """Decode a reversible JPEG 2000 codestream into a frame of the form `info` describes.

    Serves 1.2.840.10008.1.2.4.90 and the reversible streams of .91; see the
    module docstring for what is refused.  `parallel` decodes the
    code-blocks and computes the wavelet on two threads (default: for
    frames of 1 MB or more).
    """
    return decode_stream(cs.parse(bytes(data)), info, PART1, parallel)


def _to_frame(image: np.ndarray, components: tuple[cs.Component, ...], info: FrameInfo,
              name: str = "JPEG 2000") -> np.ndarray:
    """The frame array from decoded component values, reconciling the stream's sign with the dataset's.

    A stream whose sign differs from Pixel Representation carries the Bits
    Stored two's complement pattern (as DICOM readers interpret it).
    """
    values = np.moveaxis(image, 0, 2) if info.samples_per_pixel == 3 else image[0]
    low, high = info.value_range
    stored = info.bits_stored
    signed_stream = components[0].signed
    if signed_stream != info.signed:
        if info.signed:
            values = values & ((1 << stored) - 1) if components[0].precision <= stored else values
            values = values - ((values >> (stored - 1) & 1) << stored)
        elif values.size and int(values.min()) >= -(1 << (stored - 1)):
            values = values & ((1 << stored) - 1)
    if values.size and (int(values.min()) < low or int(values.max()) > high):
        raise _range_error(info, name)
    return np.ascontiguousarray(values, dtype=info.dtype)


def _range_error(info: FrameInfo, name: str) -> CorruptCodestreamError:
    return CorruptCodestreamError(f"{name}: decoded values exceed the range of {info.bits_stored} Bits Stored")


CODEC = register(FunctionCodec("jpeg2000", JPEG_2000_LOSSLESS, "JPEG2000Lossless", supports, encode, decode))
