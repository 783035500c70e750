"""JPEG 2000 tier 2 (ITU-T T.800 Annex B): tile geometry, tag trees, packets and progression orders.

The geometry (:func:`tile_layout`) partitions the components of a tile into
resolutions, precincts, sub-bands and code-blocks, and places every
code-block in the Mallat array of :mod:`.dwt`.  It is held in flat integer
tables (:class:`Layout`) so that the packet coders run as numba kernels over
all code-blocks of a tile in one call: :func:`write_packets` (one layer,
every code-block's passes in one codeword segment) and :func:`read_packets`
(any number of layers, precincts, SOP / EPH markers, progression order
changes, and the codeword segments that the bypass and termination
code-block styles make).  Neither depends on the block coder: HTJ2K's
reuses them.

Tables of a :class:`Layout` (one row each, integer columns):

``blocks``
    ``comp, ay, ax, h, w, orient, pband`` -- the code-block's rectangle in
    the Mallat array of its component, its sub-band orientation and the
    precinct-band it belongs to.  Rows are in the order of the codestream's
    tier-1 data: component, resolution, precinct, sub-band, raster order.
``pbands``
    ``first block, blocks, cols, rows, band index, tree offset, precinct`` --
    the code-blocks of one sub-band inside one precinct (a grid of ``cols x
    rows``), the index of its exponent in QCD / QCC, and where its two tag
    trees live in the node arrays.
``precincts``
    ``first pband, pbands, comp, resolution, k`` -- a packet's worth of
    code-blocks (for one layer).
``resolutions``
    ``comp, r, px0, py0, npx, npy, ppx, ppy, first precinct``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from gateway.codecs.jpeg2000 import codestream as cs
from gateway.errors import CorruptCodestreamError, UnsupportedCodestreamError
from gateway.kernelcache import njit

MAX_PASSES = 3 * 32 - 2  # T.800 Table B.4 codes up to 164; more than the planes we accept is corrupt
_LBLOCK_LIMIT = 32
_BIG = 1 << 40  # a tag-tree node whose value is not known yet

# Column indices of the layout tables.
B_COMP, B_AY, B_AX, B_H, B_W, B_ORIENT, B_PBAND = range(7)
PB_FIRST, PB_COUNT, PB_COLS, PB_ROWS, PB_BAND, PB_TREE, PB_PRECINCT = range(7)
P_FIRST, P_COUNT, P_COMP, P_RES, P_K = range(5)
R_COMP, R_LEVEL, R_PX0, R_PY0, R_NPX, R_NPY, R_PPX, R_PPY, R_FIRST = range(9)

# Errors of the packet reader (negative status codes).
_READ_ERRORS: dict[int, tuple[type, str]] = {
    -1: (CorruptCodestreamError, "a packet header runs past the end of the tile data"),
    -2: (CorruptCodestreamError, "a packet header ends in 0xFF without its stuffed byte"),
    -3: (CorruptCodestreamError, "truncated SOP marker segment"),
    -4: (CorruptCodestreamError, "a code-block's zero bit-planes exceed its sub-band's bit-planes"),
    -5: (UnsupportedCodestreamError, "a code-block with HT SigProp / MagRef or placeholder passes "
                                     "(only the HT cleanup pass is decoded)"),
    -6: (CorruptCodestreamError, "a code-block length indicator grows beyond 32 bits"),
    -7: (CorruptCodestreamError, "a code-block has more coding passes than its bit-planes allow"),
    -8: (CorruptCodestreamError, "a packet body runs past the end of the tile data"),
}


def _corrupt(message: str) -> CorruptCodestreamError:
    return CorruptCodestreamError(f"JPEG 2000: {message}")


def _cdiv(value: int, shift: int) -> int:
    return -((-value) >> shift)


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Layout:
    """Flat geometry of a tile's components (see the module docstring for the tables)."""

    levels: tuple[int, ...]  # decomposition levels per component
    resolutions: np.ndarray
    precincts: np.ndarray
    pbands: np.ndarray
    blocks: np.ndarray
    tree_nodes: int  # nodes of one kind of tag tree over all precinct-bands

    def resolution(self, comp: int, r: int) -> np.ndarray:
        return self.resolutions[sum(n + 1 for n in self.levels[:comp]) + r]


@njit(cache=True, nogil=True, inline="always")
def _ndiv(value: int, shift: int) -> int:
    return -((-value) >> shift)


@njit(cache=True, nogil=True, inline="always")
def _tree_size(cols: int, rows: int) -> int:
    if cols == 0 or rows == 0:
        return 0
    total = cols * rows
    while cols > 1 or rows > 1:
        cols = (cols + 1) >> 1
        rows = (rows + 1) >> 1
        total += cols * rows
    return total


@njit(cache=True, nogil=True)
def _tile_layout(x0: int, y0: int, x1: int, y1: int, params: np.ndarray, pp: np.ndarray, fill: bool,
                 res_t: np.ndarray, prec_t: np.ndarray, pband_t: np.ndarray, block_t: np.ndarray
                 ) -> tuple[int, int, int, int]:
    """Count (``fill`` False) or fill the tables of every component of a tile, in one call.

    ``params[c]`` is ``levels, xcb, ycb`` of component `c`, ``pp[c, r]`` its
    precinct exponents at resolution `r`.  Returns the numbers of
    precincts, precinct-bands, code-blocks and tag-tree nodes.
    """
    n_res = 0
    n_prec = 0
    n_pband = 0
    n_block = 0
    n_tree = 0
    for comp in range(params.shape[0]):
        nl, xcb, ycb = params[comp, 0], params[comp, 1], params[comp, 2]
        for r in range(nl + 1):
            s = nl - r
            rx0, ry0, rx1, ry1 = _ndiv(x0, s), _ndiv(y0, s), _ndiv(x1, s), _ndiv(y1, s)
            ppx, ppy = pp[comp, r, 0], pp[comp, r, 1]
            px0, py0 = rx0 >> ppx, ry0 >> ppy
            npx = (_ndiv(rx1, ppx) - px0) if rx1 > rx0 else 0
            npy = (_ndiv(ry1, ppy) - py0) if ry1 > ry0 else 0
            if fill:
                res_t[n_res, 0] = comp
                res_t[n_res, 1] = r
                res_t[n_res, 2] = px0
                res_t[n_res, 3] = py0
                res_t[n_res, 4] = npx
                res_t[n_res, 5] = npy
                res_t[n_res, 6] = ppx
                res_t[n_res, 7] = ppy
                res_t[n_res, 8] = n_prec
            n_res += 1
            bx_exp = ppx if r == 0 else ppx - 1
            by_exp = ppy if r == 0 else ppy - 1
            cxcb = min(xcb, bx_exp)
            cycb = min(ycb, by_exp)
            o_first = 0 if r == 0 else 1
            o_last = 0 if r == 0 else 3
            level = nl if r == 0 else nl - r + 1
            # Where the sub-bands of this resolution start in the Mallat array: the high-pass halves
            # follow the low-pass ones, which are as wide and high as the next lower resolution.
            lw = _ndiv(x1, level) - _ndiv(x0, level)
            lh = _ndiv(y1, level) - _ndiv(y0, level)
            for k in range(npx * npy):
                kx = k % npx
                ky = k // npx
                if fill:
                    prec_t[n_prec, 0] = n_pband
                    prec_t[n_prec, 1] = o_last - o_first + 1
                    prec_t[n_prec, 2] = comp
                    prec_t[n_prec, 3] = r
                    prec_t[n_prec, 4] = k
                for orient in range(o_first, o_last + 1):
                    xo = orient & 1
                    yo = orient >> 1
                    if level == 0:
                        bx0, by0, bx1, by1 = x0, y0, x1, y1
                    else:
                        bx0 = _ndiv(x0 - (xo << (level - 1)), level)
                        by0 = _ndiv(y0 - (yo << (level - 1)), level)
                        bx1 = _ndiv(x1 - (xo << (level - 1)), level)
                        by1 = _ndiv(y1 - (yo << (level - 1)), level)
                    ax = lw if xo else 0
                    ay = lh if yo else 0
                    cx0 = max(bx0, (px0 + kx) << bx_exp)
                    cy0 = max(by0, (py0 + ky) << by_exp)
                    cx1 = min(bx1, (px0 + kx + 1) << bx_exp)
                    cy1 = min(by1, (py0 + ky + 1) << by_exp)
                    cols = 0
                    rows = 0
                    gx0 = 0
                    gy0 = 0
                    if cx1 > cx0 and cy1 > cy0:
                        gx0 = cx0 >> cxcb
                        gy0 = cy0 >> cycb
                        cols = _ndiv(cx1, cxcb) - gx0
                        rows = _ndiv(cy1, cycb) - gy0
                    nodes = _tree_size(cols, rows)
                    if fill:
                        pband_t[n_pband, 0] = n_block
                        pband_t[n_pband, 1] = cols * rows
                        pband_t[n_pband, 2] = cols
                        pband_t[n_pband, 3] = rows
                        pband_t[n_pband, 4] = 0 if r == 0 else 3 * (r - 1) + orient
                        pband_t[n_pband, 5] = n_tree
                        pband_t[n_pband, 6] = n_prec
                        for j in range(rows):
                            for i in range(cols):
                                u0 = max(cx0, (gx0 + i) << cxcb)
                                v0 = max(cy0, (gy0 + j) << cycb)
                                u1 = min(cx1, (gx0 + i + 1) << cxcb)
                                v1 = min(cy1, (gy0 + j + 1) << cycb)
                                b = n_block + j * cols + i
                                block_t[b, 0] = comp
                                block_t[b, 1] = ay + v0 - by0
                                block_t[b, 2] = ax + u0 - bx0
                                block_t[b, 3] = v1 - v0
                                block_t[b, 4] = u1 - u0
                                block_t[b, 5] = orient
                                block_t[b, 6] = n_pband
                    n_block += cols * rows
                    n_tree += nodes
                    n_pband += 1
                n_prec += 1
    return n_prec, n_pband, n_block, n_tree


def tile_layout(rect: tuple[int, int, int, int], styles: list[cs.CodingStyle] | tuple[cs.CodingStyle, ...]
                ) -> Layout:
    """Resolutions, precincts, sub-bands and code-blocks of every component of a tile (T.800 B.5-B.7)."""
    x0, y0, x1, y1 = rect
    levels = tuple(s.levels for s in styles)
    params = np.array([(s.levels, s.xcb, s.ycb) for s in styles], dtype=np.int64).reshape(len(styles), 3)
    pp = np.zeros((len(styles), max(levels, default=0) + 1, 2), dtype=np.int64)
    for comp, style in enumerate(styles):
        pp[comp, :style.levels + 1] = style.precincts
    empty = np.zeros((0, 9), dtype=np.int64)
    n_prec, n_pband, n_block, n_tree = _tile_layout(x0, y0, x1, y1, params, pp, False, empty, empty, empty, empty)
    res = np.empty((sum(levels) + len(levels), 9), dtype=np.int64)
    prec = np.empty((n_prec, 5), dtype=np.int64)
    pband = np.empty((n_pband, 7), dtype=np.int64)
    block = np.empty((n_block, 7), dtype=np.int64)
    _tile_layout(x0, y0, x1, y1, params, pp, True, res, prec, pband, block)
    return Layout(levels, res, prec, pband, block, n_tree)


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


# ----------------------------------------------------------------------------- progression


def packet_order(layout: Layout, layers: int, progression: int, changes: tuple[cs.ProgressionChange, ...],
                 tile_x0: int, tile_y0: int) -> np.ndarray:
    """Packets of a tile as rows ``(layer, precinct)`` in stream order (T.800 B.12).

    Progression order changes are followed in turn, each packet appearing
    once; packets none of them reached come after, in the COD order.
    Position-driven orders visit a precinct where the canvas scan first
    meets its top-left corner (clipped to the tile).
    """
    res = layout.resolutions
    nprec = len(layout.precincts)
    # Per precinct: component, resolution, k, and the canvas position where the scan meets it.
    comp = layout.precincts[:, P_COMP]
    level = layout.precincts[:, P_RES]
    k = layout.precincts[:, P_K]
    if nprec:
        starts = np.cumsum([0] + [n + 1 for n in layout.levels])[:-1]
        rows = res[starts[comp] + level]
        nls = np.array(layout.levels, dtype=np.int64)[comp]
        kx, ky = k % np.maximum(rows[:, R_NPX], 1), k // np.maximum(rows[:, R_NPX], 1)
        x = np.maximum(tile_x0, ((rows[:, R_PX0] + kx) << rows[:, R_PPX]) << (nls - level))
        y = np.maximum(tile_y0, ((rows[:, R_PY0] + ky) << rows[:, R_PPY]) << (nls - level))
    else:
        x = y = np.zeros(0, dtype=np.int64)
    max_res = max(layout.levels) + 1
    seen = np.zeros((layers, nprec), dtype=bool)
    parts: list[np.ndarray] = []

    def emit(layer_end: int, r0: int, r1: int, c0: int, c1: int, prog: int) -> None:
        r1 = min(r1, max_res)
        pick = np.flatnonzero((comp >= c0) & (comp < c1) & (level >= r0) & (level < r1))
        if not len(pick) or layer_end <= 0:
            return
        lay = np.repeat(np.arange(layer_end, dtype=np.int64), len(pick))
        p = np.tile(pick, layer_end)
        # Only the packets no earlier change reached are sorted (lexsort is stable: their order is the same
        # as sorting all and dropping the others after), so changes that repeat others cost no sort.
        fresh = ~seen[lay, p]
        lay, p = lay[fresh], p[fresh]
        if not len(p):
            return
        c, r, kk, yy, xx = comp[p], level[p], k[p], y[p], x[p]
        if prog == cs.LRCP:
            keys = (kk, c, r, lay)
        elif prog == cs.RLCP:
            keys = (kk, c, lay, r)
        elif prog == cs.RPCL:
            keys = (lay, c, xx, yy, r)
        elif prog == cs.PCRL:
            keys = (lay, r, c, xx, yy)
        else:
            keys = (lay, r, xx, yy, c)
        sel = np.lexsort(keys)
        lay, p = lay[sel], p[sel]
        seen[lay, p] = True
        parts.append(np.stack([lay, p], axis=1))

    for change in changes:
        emit(min(change.layer_end, layers), change.res_start, change.res_end, change.comp_start,
             change.comp_end, change.order)
    emit(layers, 0, max_res, 0, len(layout.levels), progression)
    if not parts:
        return np.zeros((0, 2), dtype=np.int64)
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.int64)


# ----------------------------------------------------------------------------- plans of tiles


@dataclass(frozen=True)
class Plan:
    """All that reading or writing a tile's packets takes besides the packets: its layout, packet order, the
    Mb of each precinct-band (:func:`pband_limits`) and the code-block style of each component.

    Plans are shared between the frames of a series (:class:`PlanCache`):
    nothing writes to their arrays.
    """

    layout: Layout
    order: np.ndarray
    limits: np.ndarray
    styles: np.ndarray

    @property
    def packets(self) -> int:
        return len(self.order)

    @property
    def nbytes(self) -> int:
        layout = self.layout
        return sum(a.nbytes for a in (layout.resolutions, layout.precincts, layout.pbands, layout.blocks,
                                      self.order, self.limits, self.styles))


def tile_plan(rect: tuple[int, int, int, int], styles: tuple[cs.CodingStyle, ...], layers: int, progression: int,
              changes: tuple[cs.ProgressionChange, ...], limits: tuple[tuple[int, ...], ...]) -> Plan:
    """The :class:`Plan` of a tile; `limits[c][band index]` is Mb of each sub-band of component `c`."""
    layout = tile_layout(rect, styles)
    order = packet_order(layout, layers, progression, changes, rect[0], rect[1])
    return Plan(layout, order, pband_limits(layout, limits), np.array([s.block_style for s in styles], dtype=np.int64))


class PlanCache:
    """A bounded map (least recently used out first) from what determines a derived value to the value.

    At most `entries` values of at most `budget` bytes in all; a value larger
    than a quarter of the budget is not kept.  Keys must hold everything the
    value is computed from.  The lock makes it safe for threads that decode
    at the same time; two of them missing the same key both compute it,
    and the values are equal.
    """

    def __init__(self, entries: int, budget: int) -> None:
        self.entries, self.budget = entries, budget
        self._items: OrderedDict[object, tuple[object, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: object) -> object | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: object, value: object, nbytes: int) -> None:
        if nbytes > self.budget // 4:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (value, nbytes)
            self._bytes += nbytes
            while len(self._items) > self.entries or self._bytes > self.budget:
                _, (_, size) = self._items.popitem(last=False)
                self._bytes -= size

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


# ----------------------------------------------------------------------------- tag trees and bits (kernels)

# The helpers that read or write bits and tag trees take arrays but allocate none: they are compiled without
# the runtime's reference counting (``_nrt=False``), which would otherwise add an atomic increment and
# decrement of every array argument at every call, once per header bit, and cost more than the bits.
# Bit writer state (an int64 array): output position, bits pending, their count, bits the current byte holds.
_W_POS, _W_ACC, _W_COUNT, _W_ROOM = 0, 1, 2, 3
# Bit reader state: position, end, bits left in the byte, the byte, the previous byte, overrun flag.
_R_POS, _R_END, _R_LEFT, _R_ACC, _R_LAST, _R_OVER = 0, 1, 2, 3, 4, 5


@njit(cache=True, nogil=True, _nrt=False)
def _put_bit(out: np.ndarray, wr: np.ndarray, value: int) -> None:
    """One packet-header bit; a 0 bit is stuffed after every 0xFF byte (T.800 B.10.1)."""
    acc = (wr[_W_ACC] << 1) | value
    count = wr[_W_COUNT] + 1
    if count == wr[_W_ROOM]:
        out[wr[_W_POS]] = acc
        wr[_W_POS] += 1
        wr[_W_ROOM] = 7 if acc == 0xFF else 8
        acc = 0
        count = 0
    wr[_W_ACC] = acc
    wr[_W_COUNT] = count


@njit(cache=True, nogil=True, _nrt=False)
def _put_bits(out: np.ndarray, wr: np.ndarray, value: int, count: int) -> None:
    while count:
        count -= 1
        _put_bit(out, wr, (value >> count) & 1)


@njit(cache=True, nogil=True, _nrt=False)
def finish_header(out: np.ndarray, wr: np.ndarray) -> None:
    """Pad the last byte; a header never ends on 0xFF (its stuffed byte follows)."""
    if wr[_W_COUNT]:
        out[wr[_W_POS]] = wr[_W_ACC] << (wr[_W_ROOM] - wr[_W_COUNT])
        wr[_W_POS] += 1
    if out[wr[_W_POS] - 1] == 0xFF:
        out[wr[_W_POS]] = 0
        wr[_W_POS] += 1
    wr[_W_ACC] = 0
    wr[_W_COUNT] = 0
    wr[_W_ROOM] = 8


@njit(cache=True, nogil=True, _nrt=False)
def _get_bit(data: np.ndarray, rd: np.ndarray) -> int:
    """One packet-header bit; past the end it reads 0 and sets the overrun flag."""
    if rd[_R_LEFT] == 0:
        pos = rd[_R_POS]
        if pos >= rd[_R_END]:
            rd[_R_OVER] = 1
            return 0
        byte = data[pos]
        rd[_R_POS] = pos + 1
        if rd[_R_LAST] == 0xFF:
            rd[_R_LEFT] = 7
            rd[_R_ACC] = byte & 0x7F
        else:
            rd[_R_LEFT] = 8
            rd[_R_ACC] = byte
        rd[_R_LAST] = byte
    rd[_R_LEFT] -= 1
    return (rd[_R_ACC] >> rd[_R_LEFT]) & 1


@njit(cache=True, nogil=True, _nrt=False)
def _get_bits(data: np.ndarray, rd: np.ndarray, count: int) -> int:
    value = 0
    for _ in range(count):
        value = (value << 1) | _get_bit(data, rd)
    return value


@njit(cache=True, nogil=True, _nrt=False)
def tree_levels(cols: int, rows: int, widths: np.ndarray, starts: np.ndarray) -> int:
    """Width and first node of each level of a ``cols x rows`` tag tree (leaves first); the level count."""
    n = 0
    start = 0
    while True:
        widths[n] = cols
        starts[n] = start
        start += cols * rows
        n += 1
        if cols == 1 and rows == 1:
            starts[n] = start
            return n
        cols = (cols + 1) >> 1
        rows = (rows + 1) >> 1


@njit(cache=True, nogil=True, _nrt=False)
def tree_encode(out: np.ndarray, wr: np.ndarray, value: np.ndarray, lows: np.ndarray, known: np.ndarray,
                base: int, widths: np.ndarray, starts: np.ndarray, levels: int, x: int, y: int,
                threshold: int) -> None:
    """Code leaf (x, y) of a tag tree up to `threshold` (T.800 B.10.2); nodes at ``base + ...``."""
    low = 0
    for level in range(levels - 1, -1, -1):
        j = base + starts[level] + (y >> level) * widths[level] + (x >> level)
        if low > lows[j]:
            lows[j] = low
        else:
            low = lows[j]
        while low < threshold:
            if low >= value[j]:
                if not known[j]:
                    _put_bit(out, wr, 1)
                    known[j] = 1
                break
            _put_bit(out, wr, 0)
            low += 1
        lows[j] = low


@njit(cache=True, nogil=True, _nrt=False)
def tree_decode(data: np.ndarray, rd: np.ndarray, value: np.ndarray, lows: np.ndarray, base: int,
                widths: np.ndarray, starts: np.ndarray, levels: int, x: int, y: int, threshold: int) -> bool:
    """Read bits until leaf (x, y) is known or at least `threshold`; True if below it."""
    low = 0
    j = base
    for level in range(levels - 1, -1, -1):
        j = base + starts[level] + (y >> level) * widths[level] + (x >> level)
        if low > lows[j]:
            lows[j] = low
        else:
            low = lows[j]
        known = value[j]
        while low < threshold and low < known:
            if _get_bit(data, rd):
                known = low
                value[j] = low
            else:
                low += 1
        lows[j] = low
    return value[j] < threshold


@njit(cache=True, nogil=True, _nrt=False)
def tree_build(value: np.ndarray, base: int, widths: np.ndarray, starts: np.ndarray, levels: int) -> None:
    """Fill the inner nodes of a tag tree from its leaves: each node the least of its children."""
    for level in range(1, levels):
        c = widths[level]
        pc = widths[level - 1]
        below = base + starts[level - 1]
        here = base + starts[level]
        for j in range(starts[level + 1] - starts[level]):
            value[here + j] = _BIG
        pr = (starts[level] - starts[level - 1]) // pc
        for y in range(pr):
            for x in range(pc):
                j = here + (y >> 1) * c + (x >> 1)
                v = value[below + y * pc + x]
                if v < value[j]:
                    value[j] = v


# ----------------------------------------------------------------------------- packets: writing


@njit(cache=True, nogil=True, _nrt=False)
def _write_passes(out: np.ndarray, wr: np.ndarray, n: int) -> None:
    """Number of coding passes (T.800 Table B.4)."""
    if n == 1:
        _put_bit(out, wr, 0)
    elif n == 2:
        _put_bits(out, wr, 0b10, 2)
    elif n <= 5:
        _put_bits(out, wr, 0b1100 | (n - 3), 4)
    elif n <= 36:
        _put_bits(out, wr, 0b111100000 | (n - 6), 9)
    else:
        _put_bits(out, wr, 0b1111111110000000 | (n - 37), 16)


@njit(cache=True, nogil=True, inline="always")
def _bit_length(v: int) -> int:
    n = 0
    while v:
        v >>= 1
        n += 1
    return n


@njit(cache=True, nogil=True)
def _write_packets(order: np.ndarray, precincts: np.ndarray, pbands: np.ndarray, limits: np.ndarray,
                   tree_nodes: int, lengths: np.ndarray, passes: np.ndarray, planes: np.ndarray, code: np.ndarray,
                   code_offsets: np.ndarray, out: np.ndarray) -> int:
    """The packets of a one-layer tile into `out`; returns their length."""
    inclusion = np.empty(tree_nodes, dtype=np.int64)
    zeros = np.empty(tree_nodes, dtype=np.int64)
    inc_low = np.zeros(tree_nodes, dtype=np.int64)
    zero_low = np.zeros(tree_nodes, dtype=np.int64)
    inc_known = np.zeros(tree_nodes, dtype=np.uint8)
    zero_known = np.zeros(tree_nodes, dtype=np.uint8)
    widths = np.zeros(64, dtype=np.int64)
    starts = np.zeros(65, dtype=np.int64)
    nblocks = lengths.shape[0]
    lblock = np.full(nblocks, 3, dtype=np.int64)
    wr = np.zeros(4, dtype=np.int64)
    wr[_W_ROOM] = 8
    for q in range(order.shape[0]):
        p = order[q, 1]
        first_pb = precincts[p, P_FIRST]
        n_pb = precincts[p, P_COUNT]
        present = False
        for pb in range(first_pb, first_pb + n_pb):
            b0 = pbands[pb, PB_FIRST]
            for b in range(b0, b0 + pbands[pb, PB_COUNT]):
                if passes[b]:
                    present = True
        _put_bit(out, wr, 1 if present else 0)
        if present:
            for pb in range(first_pb, first_pb + n_pb):
                count = pbands[pb, PB_COUNT]
                if count == 0:
                    continue
                cols = pbands[pb, PB_COLS]
                base = pbands[pb, PB_TREE]
                b0 = pbands[pb, PB_FIRST]
                limit = limits[pb]
                levels = tree_levels(cols, pbands[pb, PB_ROWS], widths, starts)
                for j in range(count):
                    b = b0 + j
                    inclusion[base + j] = 0 if passes[b] else 1
                    zeros[base + j] = limit - planes[b] if passes[b] else limit
                tree_build(inclusion, base, widths, starts, levels)
                tree_build(zeros, base, widths, starts, levels)
                for j in range(count):
                    b = b0 + j
                    x = j % cols
                    y = j // cols
                    tree_encode(out, wr, inclusion, inc_low, inc_known, base, widths, starts, levels, x, y, 1)
                    n = passes[b]
                    if not n:
                        continue
                    tree_encode(out, wr, zeros, zero_low, zero_known, base, widths, starts, levels, x, y,
                                limit - planes[b] + 1)
                    _write_passes(out, wr, n)
                    nbits = _bit_length(n) - 1
                    bits = max(_bit_length(lengths[b]), 1) - nbits
                    increase = max(0, bits - lblock[b])
                    _put_bits(out, wr, ((1 << increase) - 1) << 1, increase + 1)
                    lblock[b] += increase
                    _put_bits(out, wr, lengths[b], lblock[b] + nbits)
        finish_header(out, wr)
        pos = wr[_W_POS]
        if present:
            for pb in range(first_pb, first_pb + n_pb):
                b0 = pbands[pb, PB_FIRST]
                for b in range(b0, b0 + pbands[pb, PB_COUNT]):
                    if passes[b]:
                        start = code_offsets[b]
                        n = lengths[b]
                        for i in range(n):  # vectorised (unsigned indices); a slice copy goes byte by byte
                            out[np.uint64(pos + i)] = code[np.uint64(start + i)]
                        pos += n
        wr[_W_POS] = pos
    return wr[_W_POS]


def write_packets(layout: Layout, order: np.ndarray, limits: np.ndarray, lengths: np.ndarray,
                  passes: np.ndarray, planes: np.ndarray, code: np.ndarray, code_offsets: np.ndarray) -> bytes:
    """The packets of a one-layer tile.

    Code-block ``i`` (a row of ``layout.blocks``) has ``passes[i]`` coding
    passes coding ``planes[i]`` bit-planes, in ``code[code_offsets[i]:][:lengths[i]]``.
    `limits` (int64) holds Mb, the most magnitude bit-planes, of each
    precinct-band's sub-band (:func:`pband_limits`).
    """
    room = len(code) + 64 * len(lengths) + 16 * len(order) + 64  # the code-blocks' bytes are in `code`
    out = np.empty(room, dtype=np.uint8)
    # No copies: the arguments are columns of the block coder's results.
    n = _write_packets(order, layout.precincts, layout.pbands, limits, max(layout.tree_nodes, 1),
                       np.asarray(lengths, dtype=np.int64), np.asarray(passes, dtype=np.int64),
                       np.asarray(planes, dtype=np.int64), code, np.asarray(code_offsets, dtype=np.int64), out)
    return out[:n].tobytes()


def pband_limits(layout: Layout, limits: list[list[int]] | tuple[tuple[int, ...], ...]) -> np.ndarray:
    """Mb of each precinct-band's sub-band, from `limits[c][band index]`."""
    comp = layout.precincts[layout.pbands[:, PB_PRECINCT], P_COMP] if len(layout.pbands) else \
        np.zeros(0, dtype=np.int64)
    width = max(len(band) for band in limits)
    table = np.zeros((len(limits), width), dtype=np.int64)
    for c, bands in enumerate(limits):
        table[c, :len(bands)] = bands
    return np.ascontiguousarray(table[comp, layout.pbands[:, PB_BAND]], dtype=np.int64)


# ----------------------------------------------------------------------------- packets: reading

# Per code-block reading state.
_S_INCLUDED, _S_LBLOCK, _S_ZERO, _S_PASSES, _S_SEGMENTS, _S_ROOM, _S_SEG_PASSES = range(7)
# A chunk of a codeword segment: block, segment number in the block, position in the tile data, length, passes.
_C_BLOCK, _C_SEG, _C_POS, _C_LEN, _C_PASSES = range(5)


@njit(cache=True, nogil=True, inline="always")
def _segment_room(style: int, start: int) -> int:
    """Most passes a codeword segment starting at pass `start` may hold (T.800 D.4.1, Table D.9)."""
    if style & 0x04:  # termination on each pass
        return 1
    if style & 0x01:  # bypass
        if start < 10:
            return 10 - start
        return 2 if (start - 10) % 3 == 0 else 1
    return 1 << 30


@njit(cache=True, nogil=True, _nrt=False)
def _read_passes(data: np.ndarray, rd: np.ndarray) -> int:
    """Number of coding passes (T.800 Table B.4)."""
    if not _get_bit(data, rd):
        return 1
    if not _get_bit(data, rd):
        return 2
    v = _get_bits(data, rd, 2)
    if v != 3:
        return 3 + v
    v = _get_bits(data, rd, 5)
    if v != 31:
        return 6 + v
    return 37 + _get_bits(data, rd, 7)


@njit(cache=True, nogil=True)
def _read_packets(data: np.ndarray, order: np.ndarray, precincts: np.ndarray, pbands: np.ndarray,
                  limits: np.ndarray, styles: np.ndarray, tree_nodes: int, nblocks: int, sop: bool, eph: bool,
                  state: np.ndarray) -> tuple[int, np.ndarray, int]:
    """Read every packet header; returns (status, chunks, chunk count).  Status 0 or an error code."""
    inclusion = np.full(tree_nodes, _BIG, dtype=np.int64)
    zeros = np.full(tree_nodes, _BIG, dtype=np.int64)
    inc_low = np.zeros(tree_nodes, dtype=np.int64)
    zero_low = np.zeros(tree_nodes, dtype=np.int64)
    widths = np.zeros(64, dtype=np.int64)
    starts = np.zeros(65, dtype=np.int64)
    chunks = np.zeros((max(16, nblocks), 5), dtype=np.int64)
    n_chunks = 0
    rd = np.zeros(6, dtype=np.int64)
    pos = 0
    end = data.shape[0]
    for q in range(order.shape[0]):
        layer = order[q, 0]
        p = order[q, 1]
        if pos >= end:
            break
        if sop and pos + 1 < end and data[pos] == 0xFF and data[pos + 1] == 0x91:
            if pos + 6 > end:
                return -3, chunks, n_chunks
            pos += 6
        style = styles[precincts[p, P_COMP]]
        rd[_R_POS] = pos
        rd[_R_END] = end
        rd[_R_LEFT] = 0
        rd[_R_LAST] = 0
        first_chunk = n_chunks
        if _get_bit(data, rd):
            for pb in range(precincts[p, P_FIRST], precincts[p, P_FIRST] + precincts[p, P_COUNT]):
                count = pbands[pb, PB_COUNT]
                if count == 0:
                    continue
                cols = pbands[pb, PB_COLS]
                base = pbands[pb, PB_TREE]
                b0 = pbands[pb, PB_FIRST]
                limit = limits[pb]
                levels = tree_levels(cols, pbands[pb, PB_ROWS], widths, starts)
                for j in range(count):
                    b = b0 + j
                    x = j % cols
                    y = j // cols
                    if state[b, _S_INCLUDED]:
                        if not _get_bit(data, rd):
                            continue
                    else:
                        if not tree_decode(data, rd, inclusion, inc_low, base, widths, starts, levels, x, y,
                                           layer + 1):
                            if rd[_R_OVER]:
                                return -1, chunks, n_chunks
                            continue
                        # One walk with the largest threshold reads the whole value (B.10.2).
                        if not tree_decode(data, rd, zeros, zero_low, base, widths, starts, levels, x, y, limit + 1):
                            return (-1 if rd[_R_OVER] else -4), chunks, n_chunks
                        state[b, _S_ZERO] = zeros[base + j]
                        state[b, _S_INCLUDED] = 1
                    passes = _read_passes(data, rd)
                    if rd[_R_OVER]:
                        return -1, chunks, n_chunks
                    if style & 0x40 and state[b, _S_PASSES] + passes > 1:
                        return -5, chunks, n_chunks
                    while _get_bit(data, rd):
                        state[b, _S_LBLOCK] += 1
                        if state[b, _S_LBLOCK] > _LBLOCK_LIMIT:
                            return -6, chunks, n_chunks
                    if rd[_R_OVER]:
                        return -1, chunks, n_chunks
                    total = state[b, _S_PASSES] + passes
                    if total > 3 * max(limit - state[b, _S_ZERO], 0) - 2 or total > MAX_PASSES:
                        return -7, chunks, n_chunks
                    left = passes
                    while left:
                        if state[b, _S_SEGMENTS] == 0 or state[b, _S_SEG_PASSES] >= state[b, _S_ROOM]:
                            state[b, _S_SEGMENTS] += 1
                            state[b, _S_ROOM] = _segment_room(style, state[b, _S_PASSES])
                            state[b, _S_SEG_PASSES] = 0
                        take = min(left, state[b, _S_ROOM] - state[b, _S_SEG_PASSES])
                        length = _get_bits(data, rd, state[b, _S_LBLOCK] + _bit_length(take) - 1)
                        if n_chunks == chunks.shape[0]:
                            grown = np.zeros((2 * n_chunks, 5), dtype=np.int64)
                            grown[:n_chunks] = chunks
                            chunks = grown
                        chunks[n_chunks, _C_BLOCK] = b
                        chunks[n_chunks, _C_SEG] = state[b, _S_SEGMENTS] - 1
                        chunks[n_chunks, _C_LEN] = length
                        chunks[n_chunks, _C_PASSES] = take
                        n_chunks += 1
                        state[b, _S_SEG_PASSES] += take
                        state[b, _S_PASSES] += take
                        left -= take
                    if rd[_R_OVER]:
                        return -1, chunks, n_chunks
        if rd[_R_OVER]:
            return -1, chunks, n_chunks
        # The header's end: the partial byte dropped, and a stuffed byte after 0xFF.
        pos = rd[_R_POS]
        if rd[_R_LAST] == 0xFF:
            if pos >= end:
                return -2, chunks, n_chunks
            pos += 1
        if eph and pos + 1 < end and data[pos] == 0xFF and data[pos + 1] == 0x92:
            pos += 2
        for c in range(first_chunk, n_chunks):
            length = chunks[c, _C_LEN]
            if pos + length > end:
                return -8, chunks, n_chunks
            chunks[c, _C_POS] = pos
            pos += length
    return 0, chunks, n_chunks


@njit(cache=True, nogil=True)
def _gather(blocks: np.ndarray, pbands: np.ndarray, limits: np.ndarray, styles: np.ndarray, state: np.ndarray,
            chunks: np.ndarray, n_chunks: int, data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block rows, segments ``(offset, length, passes)`` and their data joined, for the block decoders."""
    nb = blocks.shape[0]
    seg_first = np.zeros(nb + 1, dtype=np.int64)
    for b in range(nb):
        seg_first[b + 1] = seg_first[b] + state[b, _S_SEGMENTS]
    nseg = seg_first[nb]
    segs = np.zeros((nseg, 3), dtype=np.int64)
    for c in range(n_chunks):
        s = seg_first[chunks[c, _C_BLOCK]] + chunks[c, _C_SEG]
        segs[s, 1] += chunks[c, _C_LEN]
        segs[s, 2] += chunks[c, _C_PASSES]
    offset = 0
    for s in range(nseg):
        segs[s, 0] = offset
        offset += segs[s, 1]
    joined = np.zeros(offset + 1, dtype=np.uint8)
    cursor = segs[:, 0].copy()
    for c in range(n_chunks):
        s = seg_first[chunks[c, _C_BLOCK]] + chunks[c, _C_SEG]
        n = chunks[c, _C_LEN]
        p = chunks[c, _C_POS]
        at = cursor[s]
        for i in range(n):  # vectorised (unsigned indices); a slice copy goes byte by byte
            joined[np.uint64(at + i)] = data[np.uint64(p + i)]
        cursor[s] += n
    rows = np.zeros((nb, 10), dtype=np.int64)
    for b in range(nb):
        pb = blocks[b, B_PBAND]
        rows[b, 0] = blocks[b, B_COMP]
        rows[b, 1] = blocks[b, B_AY]
        rows[b, 2] = blocks[b, B_AX]
        rows[b, 3] = blocks[b, B_H]
        rows[b, 4] = blocks[b, B_W]
        rows[b, 5] = blocks[b, B_ORIENT]
        rows[b, 6] = limits[pb] - state[b, _S_ZERO]
        rows[b, 7] = styles[blocks[b, B_COMP]]
        rows[b, 8] = seg_first[b]
        rows[b, 9] = seg_first[b + 1] - seg_first[b]
    return rows, segs, joined


@njit(cache=True, nogil=True)
def _read_tile(data: np.ndarray, order: np.ndarray, precincts: np.ndarray, pbands: np.ndarray, blocks: np.ndarray,
               limits: np.ndarray, styles: np.ndarray, tree_nodes: int, sop: bool, eph: bool
               ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_read_packets` then :func:`_gather` in one call; the status and, when it is 0, their arrays."""
    nb = blocks.shape[0]
    state = np.zeros((nb, 7), dtype=np.int64)
    for b in range(nb):
        state[b, _S_LBLOCK] = 3
    status, chunks, n_chunks = _read_packets(data, order, precincts, pbands, limits, styles, tree_nodes, nb, sop,
                                             eph, state)
    if status:
        return status, np.zeros((0, 10), dtype=np.int64), np.zeros((0, 3), dtype=np.int64), \
            np.zeros(1, dtype=np.uint8)
    rows, segs, joined = _gather(blocks, pbands, limits, styles, state, chunks, n_chunks, data)
    return 0, rows, segs, joined


def read_packets(data: bytes, plan: Plan, sop: bool, eph: bool, name: str = "JPEG 2000"
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read every packet of a tile; the block, segment and data arrays the block decoders take.

    Packets missing at the end of the data count as empty.  Block rows are
    ``comp, y0, x0, h, w, orientation, bit-planes, style, first segment,
    segment count``; segments ``offset, length, passes`` into the returned
    data (the segments' chunks joined, one zero byte after).
    """
    layout = plan.layout
    status, rows, segs, joined = _read_tile(np.frombuffer(data, dtype=np.uint8), plan.order, layout.precincts,
                                            layout.pbands, layout.blocks, plan.limits, plan.styles,
                                            max(layout.tree_nodes, 1), sop, eph)
    if status:
        kind, message = _READ_ERRORS[status]
        prefix = "HTJ2K" if status == -5 else name
        raise kind(f"{prefix}: {message}")
    return rows, segs, joined
