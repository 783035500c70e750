"""JPEG 2000 tier 2 (ITU-T T.800 Annex B): tile geometry, tag trees, packets and progression orders.

The geometry (:func:`tile_geometry`) partitions a tile-component into
resolutions, sub-bands, precincts and code-blocks, and places every
code-block in the Mallat array of :mod:`.dwt`.  Packet headers are written
by :func:`write_packets` (one layer, every code-block's passes in one
codeword segment) and read by :func:`read_packets` (any number of layers,
precincts, SOP / EPH markers, progression order changes, and the codeword
segments that the bypass and termination code-block styles make).  Neither
depends on the block coder: HTJ2K's reuses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gateway.codecs.jpeg2000 import codestream as cs
from gateway.codecs.jpeg2000 import dwt
from gateway.errors import CorruptCodestreamError, UnsupportedCodestreamError

MAX_PASSES = 3 * 32 - 2  # T.800 Table B.4 codes up to 164; more than the planes we accept is corrupt
_LBLOCK_LIMIT = 32


def _corrupt(message: str) -> CorruptCodestreamError:
    return CorruptCodestreamError(f"JPEG 2000: {message}")


# ----------------------------------------------------------------------------- geometry


class Block:
    """A code-block: its place in the Mallat array and, when decoding, what the packets said."""

    __slots__ = ("ax", "ay", "w", "h", "included", "lblock", "zero_planes", "passes", "segments")

    def __init__(self, ax: int, ay: int, w: int, h: int) -> None:
        self.ax, self.ay, self.w, self.h = ax, ay, w, h
        self.included = False
        self.lblock = 3
        self.zero_planes = 0
        self.passes = 0
        self.segments: list[list] = []  # [max passes, passes, [chunks]]


@dataclass
class PrecinctBand:
    """The code-blocks of one sub-band inside one precinct, in raster order, with their tag trees."""

    orient: int
    band_index: int  # index of the sub-band's exponent in QCD / QCC
    cols: int
    rows: int
    blocks: list[Block]
    inclusion: TagTree | None = None
    zero_planes: TagTree | None = None


@dataclass
class Resolution:
    level: int  # r, 0 = lowest
    x0: int
    y0: int
    x1: int
    y1: int
    ppx: int
    ppy: int
    px0: int  # index of the first precinct column on the whole grid
    py0: int
    npx: int
    npy: int
    precincts: list[list[PrecinctBand]] = field(default_factory=list)


@dataclass
class TileComponent:
    index: int
    x0: int
    y0: int
    x1: int
    y1: int
    style: cs.CodingStyle
    resolutions: list[Resolution]

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


def _cdiv(value: int, shift: int) -> int:
    return -((-value) >> shift)


def tile_component(index: int, rect: tuple[int, int, int, int], style: cs.CodingStyle) -> TileComponent:
    """Resolutions, precincts and code-blocks of one tile-component (T.800 B.5-B.7)."""
    x0, y0, x1, y1 = rect
    nl = style.levels
    resolutions = []
    for r in range(nl + 1):
        rx0, ry0, rx1, ry1 = _cdiv(x0, nl - r), _cdiv(y0, nl - r), _cdiv(x1, nl - r), _cdiv(y1, nl - r)
        ppx, ppy = style.precincts[r]
        px0, py0 = rx0 >> ppx, ry0 >> ppy
        npx = (_cdiv(rx1, ppx) - px0) if rx1 > rx0 else 0
        npy = (_cdiv(ry1, ppy) - py0) if ry1 > ry0 else 0
        res = Resolution(r, rx0, ry0, rx1, ry1, ppx, ppy, px0, py0, npx, npy)
        if r == 0:
            bands = [(0, nl, 0)]
        else:
            bands = [(o, nl - r + 1, 3 * (r - 1) + o) for o in (1, 2, 3)]
        bx_exp = ppx if r == 0 else ppx - 1
        by_exp = ppy if r == 0 else ppy - 1
        xcb, ycb = min(style.xcb, bx_exp), min(style.ycb, by_exp)
        geometry = []
        for orient, level, band_index in bands:
            xo, yo = orient & 1, orient >> 1
            if level == 0:
                bx0, by0, bx1, by1 = x0, y0, x1, y1
            else:
                bx0 = _cdiv(x0 - (xo << (level - 1)), level)
                by0 = _cdiv(y0 - (yo << (level - 1)), level)
                bx1 = _cdiv(x1 - (xo << (level - 1)), level)
                by1 = _cdiv(y1 - (yo << (level - 1)), level)
            ax, ay, aw, ah = dwt.band_rect(x0, y0, x1 - x0, y1 - y0, level, orient) if level else (0, 0, x1 - x0,
                                                                                                   y1 - y0)
            geometry.append((orient, band_index, bx0, by0, bx1, by1, ax, ay))
        for k in range(npx * npy):
            kx, ky = k % npx, k // npx
            parts = []
            for orient, band_index, bx0, by0, bx1, by1, ax, ay in geometry:
                cx0 = max(bx0, (px0 + kx) << bx_exp)
                cy0 = max(by0, (py0 + ky) << by_exp)
                cx1 = min(bx1, (px0 + kx + 1) << bx_exp)
                cy1 = min(by1, (py0 + ky + 1) << by_exp)
                blocks = []
                cols = rows = 0
                if cx1 > cx0 and cy1 > cy0:
                    gx0, gy0 = cx0 >> xcb, cy0 >> ycb
                    cols, rows = _cdiv(cx1, xcb) - gx0, _cdiv(cy1, ycb) - gy0
                    for j in range(rows):
                        for i in range(cols):
                            u0 = max(cx0, (gx0 + i) << xcb)
                            v0 = max(cy0, (gy0 + j) << ycb)
                            u1 = min(cx1, (gx0 + i + 1) << xcb)
                            v1 = min(cy1, (gy0 + j + 1) << ycb)
                            blocks.append(Block(ax + u0 - bx0, ay + v0 - by0, u1 - u0, v1 - v0))
                parts.append(PrecinctBand(orient, band_index, cols, rows, blocks))
            res.precincts.append(parts)
        resolutions.append(res)
    return TileComponent(index, x0, y0, x1, y1, style, resolutions)


def count_precincts(rect: tuple[int, int, int, int], style: cs.CodingStyle) -> int:
    """Number of precincts of a tile-component, computed without building it."""
    x0, y0, x1, y1 = rect
    total = 0
    for r in range(style.levels + 1):
        shift = style.levels - r
        rx0, ry0, rx1, ry1 = _cdiv(x0, shift), _cdiv(y0, shift), _cdiv(x1, shift), _cdiv(y1, shift)
        ppx, ppy = style.precincts[r]
        if rx1 > rx0 and ry1 > ry0:
            total += (_cdiv(rx1, ppx) - (rx0 >> ppx)) * (_cdiv(ry1, ppy) - (ry0 >> ppy))
    return total


# ----------------------------------------------------------------------------- tag trees


class TagTree:
    """A tag tree (T.800 B.10.2) over a ``cols x rows`` grid, for coding or decoding.

    Nodes of all levels live in flat lists (leaves first); each leaf's path
    to the root is computed once.
    """

    __slots__ = ("cols", "paths", "value", "low", "known", "_sizes_starts")

    def __init__(self, cols: int, rows: int, leaves: list[int] | None = None) -> None:
        sizes = [(cols, rows)]
        while sizes[-1] != (1, 1):
            c, r = sizes[-1]
            sizes.append(((c + 1) >> 1, (r + 1) >> 1))
        starts = [0]
        for c, r in sizes:
            starts.append(starts[-1] + c * r)
        self.cols = cols
        self.paths: dict[int, list[int]] = {}
        count = starts[-1]
        big = 1 << 40
        self.value = [big] * count
        self.low = [0] * count
        self.known = [False] * count
        self._sizes_starts = (sizes, starts)
        if leaves is not None:
            self.value[:len(leaves)] = leaves
            for level in range(1, len(sizes)):
                c, _ = sizes[level]
                pc, pr = sizes[level - 1]
                for y in range(pr):
                    for x in range(pc):
                        j = starts[level] + (y >> 1) * c + (x >> 1)
                        v = self.value[starts[level - 1] + y * pc + x]
                        if v < self.value[j]:
                            self.value[j] = v

    def _path(self, x: int, y: int) -> list[int]:
        """Node indices from the root down to leaf (x, y)."""
        key = y * self.cols + x
        path = self.paths.get(key)
        if path is None:
            sizes, starts = self._sizes_starts
            path = [starts[level] + (y >> level) * sizes[level][0] + (x >> level)
                    for level in range(len(sizes) - 1, -1, -1)]
            self.paths[key] = path
        return path

    def encode(self, out: BitWriter, x: int, y: int, threshold: int) -> None:
        low = 0
        value, lows, known = self.value, self.low, self.known
        for j in self._path(x, y):
            if low > lows[j]:
                lows[j] = low
            else:
                low = lows[j]
            while low < threshold:
                if low >= value[j]:
                    if not known[j]:
                        out.bit(1)
                        known[j] = True
                    break
                out.bit(0)
                low += 1
            lows[j] = low

    def decode(self, src: BitReader, x: int, y: int, threshold: int) -> bool:
        """Read bits until the leaf's value is known or at least `threshold`; True if below it."""
        low = 0
        value, lows = self.value, self.low
        j = 0
        for j in self._path(x, y):
            if low > lows[j]:
                lows[j] = low
            else:
                low = lows[j]
            known = value[j]
            while low < threshold and low < known:
                if src.bit():
                    known = value[j] = low
                else:
                    low += 1
            lows[j] = low
        return value[j] < threshold

    def leaf(self, x: int, y: int) -> int:
        return self.value[y * self.cols + x]


# ----------------------------------------------------------------------------- bit I/O


class BitWriter:
    """Packet-header bits, with a 0 bit stuffed after every 0xFF byte (T.800 B.10.1)."""

    __slots__ = ("out", "acc", "count", "room")

    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.count = 0  # bits in acc
        self.room = 8  # bits the current byte holds: 7 after 0xFF

    def bit(self, value: int) -> None:
        self.acc = (self.acc << 1) | value
        self.count += 1
        if self.count == self.room:
            self.out.append(self.acc)
            self.room = 7 if self.acc == 0xFF else 8
            self.acc = self.count = 0

    def bits(self, value: int, count: int) -> None:
        while count:
            take = min(count, self.room - self.count)
            count -= take
            self.acc = (self.acc << take) | ((value >> count) & ((1 << take) - 1))
            self.count += take
            if self.count == self.room:
                self.out.append(self.acc)
                self.room = 7 if self.acc == 0xFF else 8
                self.acc = self.count = 0

    def finish(self) -> bytes:
        """Pad the last byte; a header never ends on 0xFF (its stuffed byte follows)."""
        if self.count:
            self.out.append(self.acc << (self.room - self.count))
        if self.out and self.out[-1] == 0xFF:
            self.out.append(0)
        return bytes(self.out)


class BitReader:
    """Packet-header bits from ``data[pos:end]``; reading past `end` is corruption."""

    __slots__ = ("data", "pos", "end", "acc", "left", "last")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end
        self.acc = 0
        self.left = 0
        self.last = 0

    def bit(self) -> int:
        if self.left == 0:
            if self.pos >= self.end:
                raise _corrupt("a packet header runs past the end of the tile data")
            byte = self.data[self.pos]
            self.pos += 1
            self.left = 7 if self.last == 0xFF else 8
            self.acc = byte & 0x7F if self.last == 0xFF else byte
            self.last = byte
        self.left -= 1
        return (self.acc >> self.left) & 1

    def bits(self, count: int) -> int:
        value = 0
        while count:
            if self.left == 0:
                self.bit()  # loads the next byte (and checks the end)
                self.left += 1
            take = min(count, self.left)
            self.left -= take
            count -= take
            value = (value << take) | ((self.acc >> self.left) & ((1 << take) - 1))
        return value

    def align(self) -> int:
        """Position after the header: the partial byte dropped, and a stuffed byte after 0xFF."""
        self.left = 0
        if self.last == 0xFF:
            if self.pos >= self.end:
                raise _corrupt("a packet header ends in 0xFF without its stuffed byte")
            self.pos += 1
        return self.pos


# ----------------------------------------------------------------------------- progression


def packet_order(components: list[TileComponent], layers: int, progression: int,
                 changes: tuple[cs.ProgressionChange, ...], tile_x0: int, tile_y0: int
                 ) -> list[tuple[int, int, int, int]]:
    """Packets of a tile as ``(layer, resolution, component, precinct)`` in stream order (T.800 B.12).

    Progression order changes are followed in turn, each packet appearing
    once; packets none of them reached come after, in the COD order.
    Position-driven orders visit a precinct where the canvas scan first
    meets its top-left corner (clipped to the tile).
    """
    hits: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for tc in components:
        nl = tc.style.levels
        for res in tc.resolutions:
            entries = []
            for k in range(res.npx * res.npy):
                kx, ky = k % res.npx, k // res.npx
                x = max(tile_x0, ((res.px0 + kx) << res.ppx) << (nl - res.level))
                y = max(tile_y0, ((res.py0 + ky) << res.ppy) << (nl - res.level))
                entries.append((y, x, k))
            hits[(tc.index, res.level)] = entries
    max_res = max(tc.style.levels for tc in components) + 1
    seen: set[tuple[int, int, int, int]] = set()
    order: list[tuple[int, int, int, int]] = []

    def emit(layer_end: int, r0: int, r1: int, c0: int, c1: int, prog: int) -> None:
        comps = [tc for tc in components if c0 <= tc.index < c1]
        r1 = min(r1, max_res)
        keyed = []
        for tc in comps:
            for r in range(r0, min(r1, tc.style.levels + 1)):
                for y, x, k in hits[(tc.index, r)]:
                    for layer in range(layer_end):
                        c = tc.index
                        if prog == cs.LRCP:
                            key = (layer, r, c, k)
                        elif prog == cs.RLCP:
                            key = (r, layer, c, k)
                        elif prog == cs.RPCL:
                            key = (r, y, x, c, layer)
                        elif prog == cs.PCRL:
                            key = (y, x, c, r, layer)
                        else:
                            key = (c, y, x, r, layer)
                        keyed.append((key, (layer, r, c, k)))
        keyed.sort()
        for _, packet in keyed:
            if packet not in seen:
                seen.add(packet)
                order.append(packet)

    for change in changes:
        emit(min(change.layer_end, layers), change.res_start, change.res_end, change.comp_start,
             change.comp_end, change.order)
    emit(layers, 0, max_res, 0, len(components), progression)
    return order


# ----------------------------------------------------------------------------- packets: reading


def _segment_room(style: int, start: int) -> int:
    """Most passes a codeword segment starting at pass `start` may hold (T.800 D.4.1, Table D.9)."""
    if style & 0x04:  # termination on each pass
        return 1
    if style & 0x01:  # bypass
        if start < 10:
            return 10 - start
        return 2 if (start - 10) % 3 == 0 else 1
    return 1 << 30


def _read_passes(src: BitReader) -> int:
    """Number of coding passes (T.800 Table B.4)."""
    if not src.bit():
        return 1
    if not src.bit():
        return 2
    v = src.bits(2)
    if v != 3:
        return 3 + v
    v = src.bits(5)
    if v != 31:
        return 6 + v
    return 37 + src.bits(7)


def read_packets(data: bytes, order: list[tuple[int, int, int, int]], components: list[TileComponent],
                 planes_limit: list[list[int]], sop: bool, eph: bool) -> None:
    """Read every packet of a tile, filling each code-block's zero planes, passes and segments.

    `planes_limit[c][band_index]` is Mb, the most magnitude bit-planes of a
    sub-band.  Packets missing at the end of the data count as empty.
    """
    pos, end = 0, len(data)
    for layer, r, c, k in order:
        if pos >= end:
            return
        if sop and data[pos:pos + 2] == b"\xff\x91":
            if pos + 6 > end:
                raise _corrupt("truncated SOP marker segment")
            pos += 6
        tc = components[c]
        style = tc.style.block_style
        bands = tc.resolutions[r].precincts[k]
        src = BitReader(data, pos, end)
        contributions: list[tuple[Block, list[tuple[list, int, int]]]] = []
        if src.bit():
            for band in bands:
                if not band.blocks:
                    continue
                if band.inclusion is None:
                    band.inclusion = TagTree(band.cols, band.rows)
                    band.zero_planes = TagTree(band.cols, band.rows)
                limit = planes_limit[c][band.band_index]
                for j, block in enumerate(band.blocks):
                    x, y = j % band.cols, j // band.cols
                    if block.included:
                        if not src.bit():
                            continue
                    else:
                        if not band.inclusion.decode(src, x, y, layer + 1):
                            continue
                        # One walk with the largest threshold reads the whole value (B.10.2).
                        if not band.zero_planes.decode(src, x, y, limit + 1):
                            raise _corrupt("a code-block's zero bit-planes exceed its sub-band's bit-planes")
                        block.zero_planes = band.zero_planes.leaf(x, y)
                        block.included = True
                    passes = _read_passes(src)
                    if style & cs.HT_BLOCKS and block.passes + passes > 1:
                        raise UnsupportedCodestreamError(
                            "HTJ2K: a code-block with HT SigProp / MagRef or placeholder passes "
                            "(only the HT cleanup pass is decoded)")
                    while src.bit():
                        block.lblock += 1
                        if block.lblock > _LBLOCK_LIMIT:
                            raise _corrupt("a code-block length indicator grows beyond 32 bits")
                    if block.passes + passes > 3 * max(limit - block.zero_planes, 0) - 2 or \
                            block.passes + passes > MAX_PASSES:
                        raise _corrupt("a code-block has more coding passes than its bit-planes allow")
                    parts = []
                    left = passes
                    while left:
                        if block.segments and block.segments[-1][1] < block.segments[-1][0]:
                            segment = block.segments[-1]
                        else:
                            segment = [_segment_room(style, block.passes), 0, []]
                            block.segments.append(segment)
                        take = min(left, segment[0] - segment[1])
                        length = src.bits(block.lblock + take.bit_length() - 1)
                        parts.append((segment, take, length))
                        segment[1] += take
                        block.passes += take
                        left -= take
                    contributions.append((block, parts))
        pos = src.align()
        if eph and data[pos:pos + 2] == b"\xff\x92":
            pos += 2
        for _block, parts in contributions:
            for segment, _take, length in parts:
                if pos + length > end:
                    raise _corrupt("a packet body runs past the end of the tile data")
                segment[2].append(data[pos:pos + length])
                pos += length


def gather_blocks(components: list[TileComponent], planes_limit: list[list[int]]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block, segment and data arrays for :func:`t1.decode_blocks` from what the packets said."""
    rows, segments, chunks = [], [], []
    offset = 0
    for tc in components:
        style = tc.style.block_style
        for res in tc.resolutions:
            for bands in res.precincts:
                for band in bands:
                    limit = planes_limit[tc.index][band.band_index]
                    for block in band.blocks:
                        first = len(segments)
                        for _room, passes, parts in block.segments:
                            if not passes:
                                continue
                            length = sum(len(p) for p in parts)
                            segments.append((offset, length, passes))
                            chunks.extend(parts)
                            offset += length
                        rows.append((tc.index, block.ay, block.ax, block.h, block.w, band.orient,
                                     limit - block.zero_planes, style, first, len(segments) - first))
    blocks = np.array(rows, dtype=np.int64).reshape(-1, 10)
    segs = np.array(segments, dtype=np.int64).reshape(-1, 3)
    data = np.frombuffer(b"".join(chunks) + b"\0", dtype=np.uint8)
    return blocks, segs, data


# ----------------------------------------------------------------------------- packets: writing


def _write_passes(out: BitWriter, n: int) -> None:
    if n == 1:
        out.bit(0)
    elif n == 2:
        out.bits(0b10, 2)
    elif n <= 5:
        out.bits(0b1100 | (n - 3), 4)
    elif n <= 36:
        out.bits(0b111100000 | (n - 6), 9)
    else:
        out.bits(0b1111111110000000 | (n - 37), 16)


def write_packets(components: list[TileComponent], order: list[tuple[int, int, int, int]],
                  coded: dict[int, tuple[bytes, int, int]], planes_limit: list[list[int]]) -> bytes:
    """The packets of a one-layer tile; `coded` maps ``id(block)`` to (codeword, passes, bit-planes)."""
    out = []
    for _layer, r, c, k in order:
        bands = components[c].resolutions[r].precincts[k]
        present = any(coded[id(b)][1] for band in bands for b in band.blocks)
        head = BitWriter()
        body = []
        head.bit(int(present))
        if present:
            for band in bands:
                if not band.blocks:
                    continue
                limit = planes_limit[c][band.band_index]
                info = [coded[id(b)] for b in band.blocks]
                inclusion = TagTree(band.cols, band.rows, [0 if passes else 1 for _, passes, _ in info])
                zeros = TagTree(band.cols, band.rows, [limit - planes if passes else limit
                                                       for _, passes, planes in info])
                for j, (block, (data, passes, planes)) in enumerate(zip(band.blocks, info)):
                    x, y = j % band.cols, j // band.cols
                    inclusion.encode(head, x, y, 1)
                    if not passes:
                        continue
                    zeros.encode(head, x, y, limit - planes + 1)
                    _write_passes(head, passes)
                    bits = max(len(data).bit_length(), 1) - (passes.bit_length() - 1)
                    increase = max(0, bits - block.lblock)
                    head.bits(((1 << increase) - 1) << 1, increase + 1)
                    block.lblock += increase
                    head.bits(len(data), block.lblock + passes.bit_length() - 1)
                    body.append(data)
        out.append(head.finish())
        out.extend(body)
    return b"".join(out)
