"""JPEG 2000 codestream syntax (ITU-T T.800 Annex A): marker segments read and written.

Reading checks every field against the limits below before anything is
sized from it; a field outside them raises :class:`CorruptCodestreamError`
(bad data) or :class:`UnsupportedCodestreamError` (a valid feature we do not
implement).  The reader returns the main header and the tile-parts, grouped
by tile, with their own header segments; which coding style applies to a
tile-component follows the precedence of T.800 A.6 (:func:`tile_coding`).

Markers read: SOC, SIZ, COD, COC, QCD, QCC, POC, SOT, SOD, EOC; TLM, PLM,
PLT, CRG, COM and CAP/CPF (Part 15) are skipped; RGN (region of interest),
PPM / PPT (packed packet headers) are refused as unsupported, and so are
more tiles or progression changes than the decoder reads in the time that
the size of the codestream allows (``FREE_TILES``, ``TILE_BYTES``,
``MAX_PROGRESSION_CHANGES``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TypeVar

from gateway.errors import CorruptCodestreamError, UnsupportedCodestreamError

SOC, CAP, SIZ, COD, COC, TLM, CPF, PLM, PLT = 0xFF4F, 0xFF50, 0xFF51, 0xFF52, 0xFF53, 0xFF55, 0xFF59, 0xFF57, 0xFF58
QCD, QCC, RGN, POC, PPM, PPT, CRG, COM = 0xFF5C, 0xFF5D, 0xFF5E, 0xFF5F, 0xFF60, 0xFF61, 0xFF63, 0xFF64
SOT, SOP, EPH, SOD, EOC = 0xFF90, 0xFF91, 0xFF92, 0xFF93, 0xFFD9

HT_BLOCKS = 0x40  # code-block style bit: every code-block is HT coded (T.814 Table A.2)

# Progression orders (T.800 Table A.16).
LRCP, RLCP, RPCL, PCRL, CPRL = range(5)
PROGRESSION_NAMES = ("LRCP", "RLCP", "RPCL", "PCRL", "CPRL")

# Limits of the reader: T.800's own ranges, and ours where noted.
MAX_COMPONENTS = 4  # ours: DICOM frames carry 1 or 3 samples
MAX_PRECISION = 16  # ours: DICOM Bits Stored of the syntaxes we serve
MAX_LEVELS = 32  # T.800 A.6.1
MAX_LAYERS = 65535
MAX_TILES = 65535  # Isot is 16 bits
MAX_TILE_PARTS = 255
MAX_GUARD_BITS = 7
# Ours, so that decoding costs time in proportion to the data (each tile and each progression change
# costs the decoder work of its own, whatever bytes carry it): at most FREE_TILES tiles, and one more
# per TILE_BYTES of codestream, and at most MAX_PROGRESSION_CHANGES progression changes in a tile (as
# OpenJPEG, which refuses more than 31).  A codestream beyond them is unsupported, not corrupt.  Before
# them, 65,535 tiles of 1 x 1 in 900 KB took 15 s, and 9,000 POC entries over 16,000 layers (163 KB) as
# many times the work of every packet (40 s).
FREE_TILES = 64
TILE_BYTES = 1024
MAX_PROGRESSION_CHANGES = 32

_SKIPPED = {TLM, PLM, CRG, COM, CAP, CPF}

T = TypeVar("T")


def _corrupt(message: str) -> CorruptCodestreamError:
    return CorruptCodestreamError(f"JPEG 2000: {message}")


def _unsupported(message: str) -> UnsupportedCodestreamError:
    return UnsupportedCodestreamError(f"JPEG 2000: {message}")


@dataclass(frozen=True)
class Component:
    """One component of SIZ: precision in bits, sign and sub-sampling."""

    precision: int
    signed: bool
    dx: int = 1
    dy: int = 1


@dataclass(frozen=True)
class Size:
    """The SIZ segment: reference grid, tiling and components."""

    width: int  # Xsiz
    height: int  # Ysiz
    x0: int  # XOsiz
    y0: int  # YOsiz
    tile_width: int
    tile_height: int
    tile_x0: int
    tile_y0: int
    components: tuple[Component, ...]
    rsiz: int = 0

    @property
    def tiles_x(self) -> int:
        return -(-(self.width - self.tile_x0) // self.tile_width)

    @property
    def tiles_y(self) -> int:
        return -(-(self.height - self.tile_y0) // self.tile_height)

    def tile_rect(self, index: int) -> tuple[int, int, int, int]:
        """Canvas rectangle ``(tx0, ty0, tx1, ty1)`` of tile `index` (T.800 B.3)."""
        p, q = index % self.tiles_x, index // self.tiles_x
        tx0 = max(self.tile_x0 + p * self.tile_width, self.x0)
        ty0 = max(self.tile_y0 + q * self.tile_height, self.y0)
        tx1 = min(self.tile_x0 + (p + 1) * self.tile_width, self.width)
        ty1 = min(self.tile_y0 + (q + 1) * self.tile_height, self.height)
        return tx0, ty0, tx1, ty1


@dataclass(frozen=True)
class CodingStyle:
    """Per tile-component coding parameters (SPcod / SPcoc)."""

    levels: int
    xcb: int  # code-block width exponent
    ycb: int
    block_style: int
    reversible: bool  # 5/3 wavelet (else 9/7)
    precincts: tuple[tuple[int, int], ...]  # (PPx, PPy) per resolution, 0..levels


@dataclass(frozen=True)
class Coding:
    """The COD segment."""

    progression: int
    layers: int
    mct: int
    style: CodingStyle
    sop: bool = False
    eph: bool = False


@dataclass(frozen=True)
class Quantization:
    """QCD / QCC: quantisation style (0 none), guard bits and exponent per sub-band."""

    style: int
    guard: int
    exponents: tuple[int, ...]


@dataclass(frozen=True)
class ProgressionChange:
    """One entry of a POC segment (T.800 A.6.6); end values exclusive."""

    res_start: int
    comp_start: int
    layer_end: int
    res_end: int
    comp_end: int
    order: int


@dataclass
class Header:
    """Coding parameters from a main header or a tile's first tile-part header."""

    cod: Coding | None = None
    coc: dict[int, CodingStyle] = field(default_factory=dict)
    qcd: Quantization | None = None
    qcc: dict[int, Quantization] = field(default_factory=dict)
    poc: list[ProgressionChange] = field(default_factory=list)


@dataclass
class Tile:
    """A tile: its header (from its tile-parts) and its packet data, tile-parts joined (a view of the
    codestream when the tile has one tile-part)."""

    index: int
    header: Header
    data: bytes | memoryview
    parts: int
    coding: TileCoding | None = field(default=None, repr=False, compare=False)  # tile_coding's, once computed


@dataclass
class Codestream:
    size: Size
    header: Header
    tiles: dict[int, Tile]


@dataclass(frozen=True)
class TileCoding:
    """What applies to one tile, after the precedence rules of T.800 A.6."""

    coding: Coding
    styles: tuple[CodingStyle, ...]  # per component
    quantizations: tuple[Quantization, ...]
    poc: tuple[ProgressionChange, ...]


# ----------------------------------------------------------------------------- reading


class _Reader:
    def __init__(self, body: bytes, name: str) -> None:
        self.body, self.pos, self.name = body, 0, name

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.body):
            raise _corrupt(f"{self.name} segment is too short")
        values = struct.unpack_from(fmt, self.body, self.pos)
        self.pos += size
        return values

    def rest(self) -> bytes:
        return self.body[self.pos:]


def _component_index(reader: _Reader, components: int) -> int:
    (index,) = reader.take(">B" if components < 257 else ">H")
    if index >= components:
        raise _corrupt(f"{reader.name} names component {index} of {components}")
    return index


def parse_siz(body: bytes) -> Size:
    r = _Reader(body, "SIZ")
    rsiz, xsiz, ysiz, xo, yo, xt, yt, xto, yto, csiz = r.take(">HIIIIIIIIH")
    if not 1 <= csiz <= MAX_COMPONENTS:
        raise _unsupported(f"{csiz} components (at most {MAX_COMPONENTS} supported)")
    if len(body) != 36 + 3 * csiz:
        raise _corrupt("SIZ segment length does not match its component count")
    if not (xo < xsiz and yo < ysiz and xt and yt and xto <= xo and yto <= yo
            and xto + xt > xo and yto + yt > yo):
        raise _corrupt(f"SIZ geometry is invalid (image {xsiz}x{ysiz} at {xo},{yo}; tiles {xt}x{yt} at {xto},{yto})")
    components = []
    for _ in range(csiz):
        ssiz, dx, dy = r.take(">BBB")
        precision = (ssiz & 0x7F) + 1
        if precision > 38 or not dx or not dy:
            raise _corrupt(f"SIZ component has precision {precision} and sub-sampling {dx}x{dy}")
        if precision > MAX_PRECISION:
            raise _unsupported(f"{precision}-bit components (at most {MAX_PRECISION} supported)")
        if dx != 1 or dy != 1:
            raise _unsupported(f"sub-sampled components ({dx}x{dy})")
        components.append(Component(precision, bool(ssiz & 0x80), dx, dy))
    size = Size(xsiz, ysiz, xo, yo, xt, yt, xto, yto, tuple(components), rsiz)
    if size.tiles_x * size.tiles_y > MAX_TILES:
        raise _corrupt(f"{size.tiles_x * size.tiles_y} tiles exceed the {MAX_TILES} that SOT can number")
    return size


def _parse_style(r: _Reader, precincts_defined: bool) -> CodingStyle:
    levels, xcb, ycb, block_style, transform = r.take(">BBBBB")
    if levels > MAX_LEVELS:
        raise _corrupt(f"{r.name} has {levels} decomposition levels (at most {MAX_LEVELS})")
    xcb, ycb = xcb + 2, ycb + 2
    if xcb > 10 or ycb > 10 or xcb + ycb > 12:
        raise _corrupt(f"{r.name} code-block size 2**{xcb} x 2**{ycb} exceeds T.800's limits")
    if transform not in (0, 1):
        raise _unsupported(f"{r.name} names wavelet transform {transform} (Part 2)")
    if block_style & 0x80:
        raise _unsupported(f"{r.name} code-block style 0x{block_style:02X} (mixed HT and Part 1 block coding)")
    if precincts_defined:
        precincts = []
        for res in range(levels + 1):
            (value,) = r.take(">B")
            ppx, ppy = value & 0xF, value >> 4
            if res and (ppx == 0 or ppy == 0):
                raise _corrupt(f"{r.name} precinct exponent 0 above resolution 0")
            precincts.append((ppx, ppy))
        precincts_t = tuple(precincts)
    else:
        precincts_t = ((15, 15),) * (levels + 1)
    if r.pos != len(r.body):
        raise _corrupt(f"{r.name} segment has trailing bytes")
    return CodingStyle(levels, xcb, ycb, block_style, transform == 1, precincts_t)


def parse_cod(body: bytes) -> Coding:
    r = _Reader(body, "COD")
    scod, progression, layers, mct = r.take(">BBHB")
    if scod & ~0x07:
        raise _unsupported(f"COD Scod 0x{scod:02X} (Part 2 options)")
    if progression > CPRL:
        raise _corrupt(f"COD progression order {progression}")
    if not 1 <= layers <= MAX_LAYERS:
        raise _corrupt(f"COD has {layers} layers")
    if mct > 1:
        raise _unsupported(f"COD multiple component transform {mct} (Part 2)")
    style = _parse_style(r, bool(scod & 1))
    return Coding(progression, layers, mct, style, bool(scod & 2), bool(scod & 4))


def parse_coc(body: bytes, components: int) -> tuple[int, CodingStyle]:
    r = _Reader(body, "COC")
    index = _component_index(r, components)
    (scoc,) = r.take(">B")
    if scoc & ~1:
        raise _unsupported(f"COC Scoc 0x{scoc:02X}")
    return index, _parse_style(r, bool(scoc & 1))


def _parse_quant(r: _Reader) -> Quantization:
    (sq,) = r.take(">B")
    style, guard = sq & 0x1F, sq >> 5
    rest = r.rest()
    if style == 0:
        exponents = tuple(b >> 3 for b in rest)
        if not exponents:
            raise _corrupt(f"{r.name} has no exponents")
    elif style in (1, 2):
        if len(rest) % 2 or not rest:
            raise _corrupt(f"{r.name} step sizes have an odd length")
        exponents = tuple(v >> 11 for v in struct.unpack(f">{len(rest) // 2}H", rest))
    else:
        raise _corrupt(f"{r.name} quantisation style {style}")
    return Quantization(style, guard, exponents)


def parse_qcd(body: bytes) -> Quantization:
    return _parse_quant(_Reader(body, "QCD"))


def parse_qcc(body: bytes, components: int) -> tuple[int, Quantization]:
    r = _Reader(body, "QCC")
    index = _component_index(r, components)
    return index, _parse_quant(r)


def parse_poc(body: bytes, components: int) -> list[ProgressionChange]:
    wide = components >= 257
    entry = 9 if wide else 7
    if not body or len(body) % entry:
        raise _corrupt("POC segment length is not a whole number of progressions")
    changes = []
    fmt = ">BHHBHB" if wide else ">BBHBBB"
    for offset in range(0, len(body), entry):
        rs, cs, lye, re, ce, order = struct.unpack_from(fmt, body, offset)
        ce = ce or (256 if not wide else 16384)
        if order > CPRL or re <= rs or ce <= cs or lye == 0:
            raise _corrupt(f"POC progression ({rs},{cs},{lye},{re},{ce},{order}) is empty or invalid")
        changes.append(ProgressionChange(rs, cs, lye, re, ce, order))
    return changes


def _segments(data: bytes, pos: int, stop_at: tuple[int, ...]) -> tuple[list[tuple[int, bytes]], int, int]:
    """Marker segments from `pos` up to one of `stop_at`; returns them, that marker and its position."""
    found = []
    while True:
        if pos + 2 > len(data):
            raise _corrupt("the codestream ends inside a header")
        (marker,) = struct.unpack_from(">H", data, pos)
        if marker in stop_at:
            return found, marker, pos
        if marker < 0xFF30:
            raise _corrupt(f"marker expected at byte {pos}, found 0x{marker:04X}")
        if pos + 4 > len(data):
            raise _corrupt("the codestream ends inside a marker segment")
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2 or pos + 2 + length > len(data):
            raise _corrupt(f"marker segment 0x{marker:04X} at byte {pos} runs past the end of the data")
        found.append((marker, data[pos + 4:pos + 2 + length]))
        pos += 2 + length


SEGMENT_MEMORY = 64  # the last segments read of each kind, remembered with what they say
SEGMENT_REMEMBERED = 256  # bytes: longer segment bodies are read anew each time


def _remembered(parser: Callable[..., T]) -> Callable[..., T]:
    """`parser` of a segment body, remembering the results of the last bodies read (the frames of a
    series repeat their header segments); only valid segments are remembered, and what parsers return is
    immutable, so it can be shared."""
    cached = lru_cache(maxsize=SEGMENT_MEMORY)(parser)

    def parse(body: bytes, *args: int) -> T:
        if len(body) > SEGMENT_REMEMBERED:
            return parser(body, *args)
        return cached(body, *args)

    parse.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    return parse


_parse_siz = _remembered(parse_siz)
_parse_cod = _remembered(parse_cod)
_parse_coc = _remembered(parse_coc)
_parse_qcd = _remembered(parse_qcd)
_parse_qcc = _remembered(parse_qcc)


def _add_progression_changes(header: Header, changes: list[ProgressionChange]) -> None:
    if len(header.poc) + len(changes) > MAX_PROGRESSION_CHANGES:
        raise _unsupported(f"{len(header.poc) + len(changes)} progression changes (POC) in one header "
                           f"(at most {MAX_PROGRESSION_CHANGES} are read)")
    header.poc.extend(changes)


def _read_header(segments: list[tuple[int, bytes]], components: int, header: Header, main: bool) -> None:
    for marker, body in segments:
        if marker == COD:
            if header.cod is not None:
                raise _corrupt("a second COD segment in one header")
            header.cod = _parse_cod(body)
        elif marker == COC:
            index, style = _parse_coc(body, components)
            header.coc[index] = style
        elif marker == QCD:
            header.qcd = _parse_qcd(body)
        elif marker == QCC:
            index, quant = _parse_qcc(body, components)
            header.qcc[index] = quant
        elif marker == POC:
            _add_progression_changes(header, parse_poc(body, components))
        elif marker == RGN:
            raise _unsupported("region of interest (RGN) coding")
        elif marker in (PPM, PPT):
            raise _unsupported("packed packet headers (PPM / PPT)")
        elif marker in _SKIPPED or (marker == PLT and not main):
            continue
        elif marker == SIZ:
            raise _corrupt("a second SIZ segment")
        else:
            raise _corrupt(f"unexpected marker 0x{marker:04X} in a {'main' if main else 'tile-part'} header")


_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
MAX_JP2_BOXES = 64


def unwrap_jp2(data: bytes) -> bytes:
    """The codestream of a JP2 file (its ``jp2c`` box); any other data unchanged.

    DICOM asks for a bare codestream, but some encoders wrapped it in JP2.
    """
    if not data.startswith(_JP2_SIGNATURE):
        return data
    pos = 0
    for _ in range(MAX_JP2_BOXES):
        if pos + 8 > len(data):
            break
        length, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if length == 1:
            if pos + 16 > len(data):
                break
            (length,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif length == 0:
            length = len(data) - pos
        if length < header or pos + length > len(data):
            raise _corrupt(f"JP2 box {kind!r} at byte {pos} has length {length}")
        if kind == b"jp2c":
            return data[pos + header:pos + length]
        pos += length
    raise _corrupt("JP2 file without a codestream box")


def parse(data: bytes) -> Codestream:
    """Read a whole codestream: headers checked, tile-parts joined per tile."""
    data = unwrap_jp2(data)
    if len(data) < 4 or data[:2] != b"\xff\x4f" or data[2:4] != b"\xff\x51":
        raise _corrupt("the codestream does not start with SOC and SIZ")
    (length,) = struct.unpack_from(">H", data, 4) if len(data) >= 6 else (0,)
    if length < 2 or 4 + length > len(data):
        raise _corrupt("SIZ segment runs past the end of the data")
    size = _parse_siz(data[6:4 + length])
    segments, marker, pos = _segments(data, 4 + length, (SOT, EOC))
    header = Header()
    _read_header(segments, len(size.components), header, True)
    if header.cod is None or header.qcd is None:
        raise _corrupt("the main header lacks COD or QCD")
    n_tiles = size.tiles_x * size.tiles_y
    if n_tiles > FREE_TILES + len(data) // TILE_BYTES:
        raise _unsupported(f"{n_tiles} tiles in {len(data)} bytes (at most {FREE_TILES} and one per "
                           f"{TILE_BYTES} bytes are read)")
    tiles: dict[int, Tile] = {}
    chunks: dict[int, list[memoryview]] = {}
    view = memoryview(data)
    while marker == SOT:
        if pos + 12 > len(data):
            raise _corrupt("truncated SOT segment")
        lsot, isot, psot, tpsot, tnsot = struct.unpack_from(">HHIBB", data, pos + 2)
        if lsot != 10 or isot >= n_tiles:
            raise _corrupt(f"SOT segment names tile {isot} of {n_tiles} (Lsot {lsot})")
        start = pos
        segments, marker, pos = _segments(data, pos + 12, (SOD,))
        if psot == 0:
            end = len(data) - 2 if data[-2:] == b"\xff\xd9" else len(data)
        else:
            end = start + psot
            if end > len(data) or end < pos + 2:
                raise _corrupt(f"tile-part of tile {isot} claims {psot} bytes, beyond the data")
        tile = tiles.get(isot)
        if tile is None:
            if tpsot != 0:
                raise _corrupt(f"tile {isot} starts with tile-part {tpsot}")
            tile = tiles[isot] = Tile(isot, Header(), b"", 0)
            chunks[isot] = []
            _read_header(segments, len(size.components), tile.header, False)
        else:
            if tpsot != tile.parts or tile.parts >= MAX_TILE_PARTS:
                raise _corrupt(f"tile {isot}: tile-part {tpsot} out of order")
            for seg_marker, body in segments:
                if seg_marker == POC:
                    _add_progression_changes(tile.header, parse_poc(body, len(size.components)))
                elif seg_marker in (PPT,):
                    raise _unsupported("packed packet headers (PPT)")
                elif seg_marker not in (PLT, COM):
                    raise _corrupt(f"marker 0x{seg_marker:04X} in a later tile-part header")
        tile.parts += 1
        chunks[isot].append(view[pos + 2:end])
        pos = end
        if pos + 2 > len(data):
            break
        (marker,) = struct.unpack_from(">H", data, pos)
        if marker not in (SOT, EOC):
            raise _corrupt(f"SOT or EOC expected at byte {pos}, found 0x{marker:04X}")
    if marker != EOC and pos + 2 <= len(data):
        raise _corrupt("the codestream does not end with EOC")
    if pos + 2 > len(data):
        raise _corrupt("the codestream ends without EOC")
    if len(tiles) != n_tiles:
        raise _corrupt(f"{n_tiles - len(tiles)} of {n_tiles} tiles are missing")
    for index, tile in tiles.items():
        parts = chunks[index]
        tile.data = parts[0] if len(parts) == 1 else b"".join(parts)
    return Codestream(size, header, tiles)


def tile_coding(stream: Codestream, tile: Tile) -> TileCoding:
    """The coding style, quantisation and progression changes of `tile` (T.800 A.6 precedence).

    Computed once per tile of a parsed codestream (its headers do not change after :func:`parse`).
    """
    if tile.coding is None:
        tile.coding = _tile_coding(stream, tile)
    return tile.coding


def _tile_coding(stream: Codestream, tile: Tile) -> TileCoding:
    main, local = stream.header, tile.header
    components = len(stream.size.components)
    coding = local.cod or main.cod
    assert coding is not None and main.qcd is not None
    styles = []
    quants = []
    for c in range(components):
        if c in local.coc:
            styles.append(local.coc[c])
        elif local.cod is not None:
            styles.append(local.cod.style)
        else:
            styles.append(main.coc.get(c, coding.style))
        if c in local.qcc:
            quants.append(local.qcc[c])
        elif local.qcd is not None:
            quants.append(local.qcd)
        else:
            quants.append(main.qcc.get(c, main.qcd))
    poc = tuple(local.poc) if local.poc else tuple(main.poc)
    return TileCoding(coding, tuple(styles), tuple(quants), poc)


# ----------------------------------------------------------------------------- writing


def _segment(marker: int, body: bytes) -> bytes:
    return struct.pack(">HH", marker, len(body) + 2) + body


def write_siz(size: Size) -> bytes:
    body = struct.pack(">HIIIIIIIIH", size.rsiz, size.width, size.height, size.x0, size.y0, size.tile_width,
                       size.tile_height, size.tile_x0, size.tile_y0, len(size.components))
    for comp in size.components:
        body += struct.pack(">BBB", (comp.precision - 1) | (0x80 if comp.signed else 0), comp.dx, comp.dy)
    return _segment(SIZ, body)


def write_cod(coding: Coding) -> bytes:
    style = coding.style
    precincts = any(p != (15, 15) for p in style.precincts)
    scod = int(precincts) | (2 if coding.sop else 0) | (4 if coding.eph else 0)
    body = struct.pack(">BBHBBBBBB", scod, coding.progression, coding.layers, coding.mct, style.levels,
                       style.xcb - 2, style.ycb - 2, style.block_style, 1 if style.reversible else 0)
    if precincts:
        body += bytes((ppy << 4) | ppx for ppx, ppy in style.precincts)
    return _segment(COD, body)


def write_qcd(quant: Quantization) -> bytes:
    if quant.style != 0:
        raise ValueError("only the reversible path (no quantisation) is written")
    body = bytes([quant.guard << 5]) + bytes(e << 3 for e in quant.exponents)
    return _segment(QCD, body)


def write_cap_ht(reversible: bool, magnitude_bits: int) -> bytes:
    """A CAP segment declaring Part 15 (Pcap bit 15) with its Ccap15 word (T.814 A.3).

    Ccap15: HT code-blocks only, a single HT set per block, no ROI,
    homogeneous, bit 5 set for the irreversible path, and the low five bits
    the code of B, the most magnitude bit-planes of any sub-band.
    """
    if magnitude_bits <= 8:
        code = 0
    elif magnitude_bits < 28:
        code = magnitude_bits - 8
    elif magnitude_bits < 48:
        code = 13 + (magnitude_bits >> 2)
    else:
        code = 31
    ccap15 = (0 if reversible else 0x20) | code
    return _segment(CAP, struct.pack(">IH", 1 << (32 - 15), ccap15))


def write_tlm(lengths: list[int]) -> bytes:
    """A TLM segment (Ztlm 0, 16-bit tile indices, 32-bit lengths) for tile-parts in order."""
    body = bytes([0, 0x60]) + b"".join(struct.pack(">HI", i, n) for i, n in enumerate(lengths))
    return _segment(TLM, body)


def write_tile_part(index: int, data: bytes, part: int = 0, parts: int = 1) -> bytes:
    """SOT, SOD and the packet data of one tile-part."""
    return struct.pack(">HHHIBB", SOT, 10, index, 14 + len(data), part, parts) + struct.pack(">H", SOD) + data


def write_codestream(size: Size, coding: Coding, quant: Quantization, tiles: list[bytes],
                     extra: bytes = b"") -> bytes:
    """A complete codestream: main header (plus `extra` segments), one tile-part per tile, EOC."""
    parts = [struct.pack(">H", SOC), write_siz(size), write_cod(coding), write_qcd(quant), extra]
    for i, data in enumerate(tiles):  # the packets are copied once, into the codestream
        parts.append(struct.pack(">HHHIBBH", SOT, 10, i, 14 + len(data), 0, 1, SOD))
        parts.append(data)
    parts.append(struct.pack(">H", EOC))
    return b"".join(parts)
