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
and colour transform (here), wavelet (:mod:`.dwt`), code-blocks
(:mod:`.t1`, the only part HTJ2K replaces), packets (:mod:`.tier2`),
marker segments (:mod:`.codestream`).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gateway.codecs import register
from gateway.codecs.base import FrameInfo, FunctionCodec, check_frame
from gateway.codecs.jpeg2000 import codestream as cs
from gateway.codecs.jpeg2000 import dwt, t1, tier2
from gateway.dicom.uids import JPEG_2000_LOSSLESS
from gateway.errors import CorruptCodestreamError, UnsupportedCodestreamError, UnsupportedImageError

__all__ = ["CODEC", "supports", "encode", "decode", "levels_for", "DEFAULT_LEVELS"]

DEFAULT_LEVELS = 5  # the smallest corpus total: 4 levels +0.05 %, 6 or 7 levels no smaller
CODE_BLOCK = 6  # 64 x 64
GUARD_BITS = 2
PARALLEL_BYTES = 1 << 20  # frames at least this large use two threads for the code-blocks

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


def _style(levels: int) -> cs.CodingStyle:
    return cs.CodingStyle(levels, CODE_BLOCK, CODE_BLOCK, 0, True, ((15, 15),) * (levels + 1))


def _band_gains(levels: int) -> list[int]:
    """log2 of the 5/3 analysis gain of each sub-band, in QCD order (LL, then HL, LH, HH per level)."""
    return [0] + [g for _ in range(levels) for g in (1, 1, 2)]


# ----------------------------------------------------------------------------- encoder


def _forward_rct(planes: np.ndarray) -> None:
    r, g, b = planes[0].copy(), planes[1].copy(), planes[2].copy()
    planes[0] = (r + 2 * g + b) >> 2
    planes[1] = b - g
    planes[2] = r - g


def _encode_blocks(coeffs: np.ndarray, rows: np.ndarray, parallel: bool) -> tuple[np.ndarray, np.ndarray,
                                                                                    np.ndarray]:
    """Code-blocks coded by the tier-1 kernel, split between two threads for large frames."""
    sizes = rows[:, 3] * rows[:, 4]
    bits = int(np.abs(coeffs).max()).bit_length() + 1 if coeffs.size else 1
    room = sizes * (bits + 2) // 4 + 64  # codewords rarely exceed the raw bits; retried if they do

    def run(part: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sub = rows[part]
        extra = room[part].copy()
        while True:
            offsets = np.zeros(len(sub) + 1, dtype=np.int64)
            np.cumsum(extra, out=offsets[1:])
            out = np.empty(int(offsets[-1]), dtype=np.uint8)
            results = np.zeros((len(sub), 3), dtype=np.int64)
            status = t1.encode_blocks(coeffs, sub, out, offsets, results)
            if status == 0:
                return out, offsets, results
            extra[-1 - status] *= 4

    if not parallel or len(rows) < 2:
        return run(slice(None))
    # Balance by coefficient count: the kernel's time follows it.
    half = int(np.searchsorted(np.cumsum(sizes), sizes.sum() / 2))
    half = min(max(half, 1), len(rows) - 1)
    first, second = _threads().map(run, [slice(0, half), slice(half, None)])
    out = np.concatenate([first[0], second[0]])
    offsets = np.concatenate([first[1][:-1], second[1] + first[1][-1]])
    results = np.concatenate([first[2], second[2]])
    return out, offsets, results


def encode(frame: np.ndarray, info: FrameInfo, *, levels: int | None = None,
           parallel: bool | None = None) -> bytes:
    """Encode one frame as a JPEG 2000 lossless codestream (see the module docstring).

    Parameters
    ----------
    levels
        Decomposition levels (default :func:`levels_for`); 0..32.
    parallel
        Code the code-blocks on two threads (default: for frames of 1 MB or more).
    """
    reason = supports(info)
    if reason is not None:
        raise UnsupportedImageError(reason)
    frame = check_frame(frame, info)
    low, high = info.value_range
    if info.bits_stored < info.bits_allocated and frame.size and (int(frame.min()) < low or int(frame.max()) > high):
        raise UnsupportedImageError(f"values outside the {info.bits_stored}-bit range of (0028,0101) 'Bits Stored'")
    rows, cols, nc = info.rows, info.columns, info.samples_per_pixel
    if levels is None:
        levels = levels_for(rows, cols)
    if not 0 <= levels <= cs.MAX_LEVELS:
        raise ValueError(f"decomposition levels must be 0..{cs.MAX_LEVELS}, got {levels}")
    if parallel is None:
        parallel = info.frame_bytes >= PARALLEL_BYTES
    planes = np.empty((nc, rows, cols), dtype=np.int32)
    planes[:] = np.moveaxis(frame.reshape(rows, cols, nc), 2, 0)
    if not info.signed:
        planes -= 1 << (info.bits_stored - 1)
    mct = int(nc == 3 and info.photometric_interpretation in _COLOUR_TRANSFORMED)
    if mct:
        _forward_rct(planes)
    style = _style(levels)
    components = []
    for c in range(nc):
        dwt.forward(planes[c], levels, 0, 0)
        components.append(tier2.tile_component(c, (0, 0, cols, rows), style))
    # Bit-planes each sub-band needs, and the guard bits that make room for them.
    gains = _band_gains(levels)
    exponents = tuple(info.bits_stored + g for g in gains)
    guard = GUARD_BITS
    for c in range(nc):
        for res in components[c].resolutions:
            for band in res.precincts[0] if res.precincts else []:
                if not band.blocks:
                    continue
                x0 = min(b.ax for b in band.blocks)
                y0 = min(b.ay for b in band.blocks)
                x1 = max(b.ax + b.w for b in band.blocks)
                y1 = max(b.ay + b.h for b in band.blocks)
                region = planes[c, y0:y1, x0:x1]
                need = int(np.abs(region).max()).bit_length()
                guard = max(guard, need - exponents[band.band_index] + 1)
    if guard > cs.MAX_GUARD_BITS:
        raise UnsupportedImageError("wavelet coefficients exceed what seven guard bits can describe")
    limits = [[guard + e - 1 for e in exponents] for _ in range(nc)]
    # Tier 1 on every code-block in one kernel call (two for large frames).
    blocks: list[tier2.Block] = []
    table = []
    for tc in components:
        for res in tc.resolutions:
            for bands in res.precincts:
                for band in bands:
                    for block in band.blocks:
                        blocks.append(block)
                        table.append((tc.index, block.ay, block.ax, block.h, block.w, band.orient))
    block_rows = np.array(table, dtype=np.int64).reshape(-1, t1.BLOCK_FIELDS_ENCODE)
    out, offsets, results = _encode_blocks(planes, block_rows, parallel)
    coded = {}
    for k, block in enumerate(blocks):
        start = int(offsets[k])
        length, passes, nbp = (int(v) for v in results[k])
        coded[id(block)] = (out[start:start + length].tobytes(), passes, nbp)
    order = tier2.packet_order(components, 1, cs.LRCP, (), 0, 0)
    packets = tier2.write_packets(components, order, coded, limits)
    size = cs.Size(cols, rows, 0, 0, cols, rows, 0, 0,
                   tuple(cs.Component(info.bits_stored, info.signed) for _ in range(nc)))
    coding = cs.Coding(cs.LRCP, 1, mct, style)
    quant = cs.Quantization(0, guard, exponents)
    return cs.write_codestream(size, coding, quant, [packets])


# ----------------------------------------------------------------------------- decoder


def _check_tile(coding: cs.TileCoding, tile: int, components: int) -> None:
    for c, (style, quant) in enumerate(zip(coding.styles, coding.quantizations)):
        if style.block_style & cs.HT_BLOCKS:
            raise UnsupportedCodestreamError(
                f"JPEG 2000: tile {tile} component {c} uses HT code-blocks (HTJ2K, ITU-T T.814)")
        if not style.reversible:
            raise UnsupportedCodestreamError(
                f"JPEG 2000: tile {tile} component {c} uses the irreversible 9/7 wavelet (lossy); "
                "only the reversible 5/3 path is decoded")
        if quant.style != 0:
            raise UnsupportedCodestreamError(
                f"JPEG 2000: tile {tile} component {c} is quantised (QCD style {quant.style}): not reversible")
        if len(quant.exponents) < 3 * style.levels + 1:
            raise CorruptCodestreamError(f"JPEG 2000: tile {tile} component {c} lacks sub-band exponents")
    if coding.coding.mct and components < 3:
        raise CorruptCodestreamError("JPEG 2000: a colour transform with fewer than three components")


def _decode_blocks(coeffs: np.ndarray, blocks: np.ndarray, segments: np.ndarray, data: np.ndarray,
                   parallel: bool) -> int:
    """Tier-1 decoding of every code-block, split between two threads for large tiles."""
    if not parallel or len(blocks) < 2:
        return t1.decode_blocks(coeffs, blocks, segments, data)
    sizes = np.cumsum(blocks[:, 3] * blocks[:, 4])
    half = min(max(int(np.searchsorted(sizes, sizes[-1] / 2)), 1), len(blocks) - 1)
    parts = [blocks[:half], blocks[half:]]
    statuses = list(_threads().map(lambda part: t1.decode_blocks(coeffs, part, segments, data), parts))
    return next((s for s in statuses if s), 0)


def _decode_tile(stream: cs.Codestream, index: int, image: np.ndarray, parallel: bool) -> None:
    size = stream.size
    tile = stream.tiles[index]
    coding = cs.tile_coding(stream, tile)
    nc = len(size.components)
    _check_tile(coding, index, nc)
    tx0, ty0, tx1, ty1 = size.tile_rect(index)
    rect = (tx0, ty0, tx1, ty1)
    layers = coding.coding.layers
    packets = layers * sum(tier2.count_precincts(rect, coding.styles[c]) for c in range(nc))
    if packets > len(tile.data) + 4096:
        raise CorruptCodestreamError(
            f"JPEG 2000: tile {index} declares {packets} packets in {len(tile.data)} bytes")
    components = [tier2.tile_component(c, rect, coding.styles[c]) for c in range(nc)]
    limits = []
    for c in range(nc):
        guard = coding.quantizations[c].guard
        bands = [guard + e - 1 for e in coding.quantizations[c].exponents]
        limits.append(bands)
    order = tier2.packet_order(components, layers, coding.coding.progression, coding.poc, tx0, ty0)
    tier2.read_packets(tile.data, order, components, limits, coding.coding.sop, coding.coding.eph)
    blocks, segments, data = tier2.gather_blocks(components, limits)
    coeffs = np.zeros((nc, ty1 - ty0, tx1 - tx0), dtype=np.int32)
    status = _decode_blocks(coeffs, blocks, segments, data, parallel)
    if status:
        raise CorruptCodestreamError(f"JPEG 2000: tile {index}: {t1.ERRORS.get(status, status)}")
    for c in range(nc):
        dwt.inverse(coeffs[c], coding.styles[c].levels, tx0, ty0)
    if coding.coding.mct:
        y, cb, cr = coeffs[0].astype(np.int64), coeffs[1].astype(np.int64), coeffs[2].astype(np.int64)
        g = y - ((cb + cr) >> 2)
        coeffs[0] = cr + g
        coeffs[1] = g
        coeffs[2] = cb + g
    for c, comp in enumerate(size.components):
        plane = coeffs[c]
        if not comp.signed:
            plane += 1 << (comp.precision - 1)
            np.clip(plane, 0, (1 << comp.precision) - 1, out=plane)
        else:
            np.clip(plane, -(1 << (comp.precision - 1)), (1 << (comp.precision - 1)) - 1, out=plane)
        image[c, ty0 - size.y0:ty1 - size.y0, tx0 - size.x0:tx1 - size.x0] = plane


def decode(data: bytes, info: FrameInfo, *, parallel: bool | None = None) -> np.ndarray:
    """Decode a reversible JPEG 2000 codestream into a frame of the form `info` describes.

    Serves 1.2.840.10008.1.2.4.90 and the reversible streams of .91; see the
    module docstring for what is refused.  `parallel` decodes the
    code-blocks on two threads (default: for frames of 1 MB or more).
    """
    stream = cs.parse(bytes(data))
    size = stream.size
    rows, cols = size.height - size.y0, size.width - size.x0
    if (rows, cols) != (info.rows, info.columns):
        raise CorruptCodestreamError(f"JPEG 2000: image is {rows} x {cols}, {info.rows} x {info.columns} expected")
    if len(size.components) != info.samples_per_pixel:
        raise CorruptCodestreamError(
            f"JPEG 2000: {len(size.components)} components, {info.samples_per_pixel} expected")
    for comp in size.components:
        if comp.precision > info.bits_allocated:
            raise CorruptCodestreamError(
                f"JPEG 2000: {comp.precision}-bit component in (0028,0100) 'Bits Allocated' {info.bits_allocated}")
    image = np.empty((info.samples_per_pixel, rows, cols), dtype=np.int32)
    if parallel is None:
        parallel = info.frame_bytes >= PARALLEL_BYTES
    for index in sorted(stream.tiles):
        _decode_tile(stream, index, image, parallel)
    return _to_frame(image, size.components, info)


def _to_frame(image: np.ndarray, components: tuple[cs.Component, ...], info: FrameInfo) -> np.ndarray:
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
        raise CorruptCodestreamError(f"JPEG 2000: decoded values exceed the range of {stored} Bits Stored")
    return np.ascontiguousarray(values, dtype=info.dtype)


CODEC = register(FunctionCodec("jpeg2000", JPEG_2000_LOSSLESS, "JPEG2000Lossless", supports, encode, decode))
