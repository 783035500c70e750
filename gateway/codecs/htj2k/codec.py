"""HTJ2K lossless (ITU-T T.814, JPEG 2000 Part 15), transfer syntaxes 1.2.840.10008.1.2.4.201 and .202.

The codestream, tier 2 (packets, tag trees, progression orders) and the 5/3
wavelet are those of :mod:`gateway.codecs.jpeg2000`; only the block coder
differs (:mod:`.ht`).

Encoder
    One tile, one quality layer, 64 x 64 code-blocks coded by one HT
    cleanup pass each (COD code-block style 0x40), no precinct partition,
    the 5/3 reversible wavelet, the reversible colour transform for RGB, no
    quantisation.  SIZ declares Part 15 capabilities (Rsiz bit 14) and a
    CAP segment carries Pcap bit 15 and Ccap15.  ``HTJ2KLossless`` (.201):
    LRCP order and :func:`gateway.codecs.jpeg2000.levels_for` decomposition
    levels.  ``HTJ2KLosslessRPCL`` (.202, PS3.5 A.4.7): RPCL order, a TLM
    segment, and at least enough levels that the lowest resolution is at
    most 64 x 64::

        SOC  SIZ  COD  QCD  CAP  [TLM]  SOT  SOD  <packets>  EOC

Decoder
    Any reversible codestream whose code-blocks are all HT (what the Part 1
    decoder accepts: tiles, tile-parts, precincts, layers, every
    progression order, POC, SOP / EPH), with one HT cleanup segment per
    code-block; a code-block with HT SigProp or MagRef passes (or
    placeholder passes) raises :class:`UnsupportedCodestreamError`.  A
    codestream without HT code-blocks is a Part 1 codestream, which
    Part 15 allows, and goes to the Part 1 decoder.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from gateway.codecs import register
from gateway.codecs.base import FrameInfo, FunctionCodec, check_frame
from gateway.codecs.htj2k import ht
from gateway.codecs.jpeg2000 import codec as j2k
from gateway.codecs.jpeg2000 import codestream as cs
from gateway.codecs.jpeg2000 import dwt, tier2
from gateway.codecs.profiles import check_profile
from gateway.dicom.uids import HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL
from gateway.errors import CorruptCodestreamError, UnsupportedCodestreamError, UnsupportedImageError

__all__ = ["CODEC", "CODEC_RPCL", "supports", "encode", "decode", "levels_for"]

CODE_BLOCK = 6  # 64 x 64
GUARD_BITS = 2
RPCL_LOWEST = 64  # PS3.5: the lowest resolution of an RPCL stream is at most 64 x 64
RSIZ_PART15 = 0x4000  # Rsiz bit 14: the CAP segment says which Part 15 capabilities are used


def supports(info: FrameInfo, uid: str = HTJ2K_LOSSLESS) -> str | None:
    """``None`` when an HTJ2K lossless codestream can carry `info`, else why not (PS3.5 8.2.7 profiles)."""
    return check_profile(uid, info)


def levels_for(rows: int, columns: int, rpcl: bool = False) -> int:
    """Decomposition levels: those of JPEG 2000, and for RPCL enough for a lowest resolution of 64 x 64 at most."""
    levels = j2k.levels_for(rows, columns)
    if rpcl:
        while max(rows, columns) > RPCL_LOWEST << levels:
            levels += 1
    return levels


def _magnitude_planes(components: list[tier2.TileComponent], planes: np.ndarray, exponents: tuple[int, ...]
                      ) -> int:
    """Guard bits so that every sub-band's coefficients fit its Mb = guard + exponent - 1 bit-planes."""
    guard = GUARD_BITS
    for tc in components:
        for res in tc.resolutions:
            for band in res.precincts[0] if res.precincts else []:
                if not band.blocks:
                    continue
                x0 = min(b.ax for b in band.blocks)
                y0 = min(b.ay for b in band.blocks)
                x1 = max(b.ax + b.w for b in band.blocks)
                y1 = max(b.ay + b.h for b in band.blocks)
                region = planes[tc.index, y0:y1, x0:x1]
                need = int(np.abs(region).max()).bit_length()
                guard = max(guard, need - exponents[band.band_index] + 1)
    return guard


def _encode_blocks(coeffs: np.ndarray, rows: np.ndarray, parallel: bool) -> tuple[np.ndarray, np.ndarray,
                                                                                    np.ndarray]:
    sizes = rows[:, 3] * rows[:, 4]
    bits = int(np.abs(coeffs).max()).bit_length() + 1 if coeffs.size else 1
    room = sizes * (bits + 3) // 6 + 64  # retried larger if a block does not fit

    def run(part: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sub = rows[part]
        extra = room[part].copy()
        while True:
            offsets = np.zeros(len(sub) + 1, dtype=np.int64)
            np.cumsum(extra, out=offsets[1:])
            out = np.empty(int(offsets[-1]), dtype=np.uint8)
            results = np.zeros((len(sub), 3), dtype=np.int64)
            status = ht.encode_blocks(coeffs, sub, out, offsets, results)
            if status == 0:
                return out, offsets, results
            extra[-1 - status] *= 4

    if not parallel or len(rows) < 2:
        return run(slice(None))
    half = int(np.searchsorted(np.cumsum(sizes), sizes.sum() / 2))
    half = min(max(half, 1), len(rows) - 1)
    first, second = j2k._threads().map(run, [slice(0, half), slice(half, None)])
    out = np.concatenate([first[0], second[0]])
    offsets = np.concatenate([first[1][:-1], second[1] + first[1][-1]])
    results = np.concatenate([first[2], second[2]])
    return out, offsets, results


def encode(frame: np.ndarray, info: FrameInfo, *, rpcl: bool = False, levels: int | None = None,
           parallel: bool | None = None) -> bytes:
    """Encode one frame as an HTJ2K lossless codestream (see the module docstring).

    Parameters
    ----------
    rpcl
        Write the .202 form: RPCL, TLM, lowest resolution at most 64 x 64.
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
        levels = levels_for(rows, cols, rpcl)
    if not 0 <= levels <= cs.MAX_LEVELS:
        raise ValueError(f"decomposition levels must be 0..{cs.MAX_LEVELS}, got {levels}")
    if rpcl and max(rows, cols) > RPCL_LOWEST << levels:
        raise ValueError(f"{levels} levels leave a lowest resolution above {RPCL_LOWEST} x {RPCL_LOWEST}")
    if parallel is None:
        parallel = info.frame_bytes >= j2k.PARALLEL_BYTES
    planes = np.empty((nc, rows, cols), dtype=np.int32)
    planes[:] = np.moveaxis(frame.reshape(rows, cols, nc), 2, 0)
    if not info.signed:
        planes -= 1 << (info.bits_stored - 1)
    mct = int(nc == 3 and info.photometric_interpretation in j2k._COLOUR_TRANSFORMED)
    if mct:
        j2k._forward_rct(planes)
    style = cs.CodingStyle(levels, CODE_BLOCK, CODE_BLOCK, cs.HT_BLOCKS, True, ((15, 15),) * (levels + 1))
    components = []
    for c in range(nc):
        dwt.forward(planes[c], levels, 0, 0)
        components.append(tier2.tile_component(c, (0, 0, cols, rows), style))
    exponents = tuple(info.bits_stored + g for g in j2k._band_gains(levels))
    guard = _magnitude_planes(components, planes, exponents)
    if guard > cs.MAX_GUARD_BITS:
        raise UnsupportedImageError("wavelet coefficients exceed what seven guard bits can describe")
    limits = [[guard + e - 1 for e in exponents] for _ in range(nc)]
    blocks: list[tier2.Block] = []
    table = []
    for tc in components:
        for res in tc.resolutions:
            for bands in res.precincts:
                for band in bands:
                    for block in band.blocks:
                        blocks.append(block)
                        table.append((tc.index, block.ay, block.ax, block.h, block.w, band.orient))
    block_rows = np.array(table, dtype=np.int64).reshape(-1, ht.BLOCK_FIELDS_ENCODE)
    out, offsets, results = _encode_blocks(planes, block_rows, parallel)
    coded = {}
    for k, block in enumerate(blocks):
        start = int(offsets[k])
        length, passes, nbp = (int(v) for v in results[k])
        coded[id(block)] = (out[start:start + length].tobytes(), passes, nbp)
    progression = cs.RPCL if rpcl else cs.LRCP
    order = tier2.packet_order(components, 1, progression, (), 0, 0)
    packets = tier2.write_packets(components, order, coded, limits)
    size = cs.Size(cols, rows, 0, 0, cols, rows, 0, 0,
                   tuple(cs.Component(info.bits_stored, info.signed) for _ in range(nc)), RSIZ_PART15)
    coding = cs.Coding(progression, 1, mct, style)
    quant = cs.Quantization(0, guard, exponents)
    extra = cs.write_cap_ht(True, max(limits[0]))
    if rpcl:
        extra += cs.write_tlm([14 + len(packets)])
    return cs.write_codestream(size, coding, quant, [packets], extra)


# ----------------------------------------------------------------------------- decoder


def _decode_tile(stream: cs.Codestream, index: int, image: np.ndarray, parallel: bool) -> None:
    size = stream.size
    tile = stream.tiles[index]
    coding = cs.tile_coding(stream, tile)
    nc = len(size.components)
    for c, (style, quant) in enumerate(zip(coding.styles, coding.quantizations)):
        if not style.block_style & cs.HT_BLOCKS:
            raise UnsupportedCodestreamError(f"HTJ2K: tile {index} component {c} mixes Part 1 and HT code-blocks")
        if not style.reversible or quant.style != 0:
            raise UnsupportedCodestreamError(
                f"HTJ2K: tile {index} component {c} is irreversible or quantised (lossy)")
        if len(quant.exponents) < 3 * style.levels + 1:
            raise CorruptCodestreamError(f"HTJ2K: tile {index} component {c} lacks sub-band exponents")
        if style.xcb + style.ycb > 12:
            raise CorruptCodestreamError(f"HTJ2K: tile {index} component {c} code-blocks exceed 4096 samples")
    if coding.coding.mct and nc < 3:
        raise CorruptCodestreamError("HTJ2K: a colour transform with fewer than three components")
    tx0, ty0, tx1, ty1 = size.tile_rect(index)
    rect = (tx0, ty0, tx1, ty1)
    layers = coding.coding.layers
    packets = layers * sum(tier2.count_precincts(rect, coding.styles[c]) for c in range(nc))
    if packets > len(tile.data) + 4096:
        raise CorruptCodestreamError(f"HTJ2K: tile {index} declares {packets} packets in {len(tile.data)} bytes")
    components = [tier2.tile_component(c, rect, coding.styles[c]) for c in range(nc)]
    limits = [[coding.quantizations[c].guard + e - 1 for e in coding.quantizations[c].exponents]
              for c in range(nc)]
    order = tier2.packet_order(components, layers, coding.coding.progression, coding.poc, tx0, ty0)
    tier2.read_packets(tile.data, order, components, limits, coding.coding.sop, coding.coding.eph)
    blocks, segments, data = tier2.gather_blocks(components, limits)
    coeffs = np.zeros((nc, ty1 - ty0, tx1 - tx0), dtype=np.int32)
    if not parallel or len(blocks) < 2:
        status = ht.decode_blocks(coeffs, blocks, segments, data)
    else:
        sizes = np.cumsum(blocks[:, 3] * blocks[:, 4])
        half = min(max(int(np.searchsorted(sizes, sizes[-1] / 2)), 1), len(blocks) - 1)
        statuses = list(j2k._threads().map(lambda part: ht.decode_blocks(coeffs, part, segments, data),
                                           [blocks[:half], blocks[half:]]))
        status = next((s for s in statuses if s), 0)
    if status == -4:
        raise UnsupportedCodestreamError(f"HTJ2K: tile {index}: {ht.ERRORS[status]}")
    if status:
        raise CorruptCodestreamError(f"HTJ2K: tile {index}: {ht.ERRORS.get(status, status)}")
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


def _has_ht_blocks(stream: cs.Codestream) -> bool:
    return any(style.block_style & cs.HT_BLOCKS
               for tile in stream.tiles.values() for style in cs.tile_coding(stream, tile).styles)


def decode(data: bytes, info: FrameInfo, *, parallel: bool | None = None) -> np.ndarray:
    """Decode an HTJ2K (or Part 1) reversible codestream into a frame of the form `info` describes."""
    stream = cs.parse(bytes(data))
    if not _has_ht_blocks(stream):
        return j2k.decode(data, info, parallel=parallel)
    size = stream.size
    rows, cols = size.height - size.y0, size.width - size.x0
    if (rows, cols) != (info.rows, info.columns):
        raise CorruptCodestreamError(f"HTJ2K: image is {rows} x {cols}, {info.rows} x {info.columns} expected")
    if len(size.components) != info.samples_per_pixel:
        raise CorruptCodestreamError(f"HTJ2K: {len(size.components)} components, {info.samples_per_pixel} expected")
    for comp in size.components:
        if comp.precision > info.bits_allocated:
            raise CorruptCodestreamError(
                f"HTJ2K: {comp.precision}-bit component in (0028,0100) 'Bits Allocated' {info.bits_allocated}")
    image = np.empty((info.samples_per_pixel, rows, cols), dtype=np.int32)
    if parallel is None:
        parallel = info.frame_bytes >= j2k.PARALLEL_BYTES
    for index in sorted(stream.tiles):
        _decode_tile(stream, index, image, parallel)
    try:
        return j2k._to_frame(image, size.components, info)
    except CorruptCodestreamError as exc:
        raise CorruptCodestreamError(str(exc).replace("JPEG 2000", "HTJ2K")) from None


CODEC = register(FunctionCodec("htj2k", HTJ2K_LOSSLESS, "HTJ2KLossless", supports, encode, decode))
CODEC_RPCL = register(FunctionCodec(
    "htj2k-rpcl", HTJ2K_LOSSLESS_RPCL, "HTJ2KLosslessRPCL",
    partial(supports, uid=HTJ2K_LOSSLESS_RPCL), partial(encode, rpcl=True), decode))
