"""Reversible sample transforms of the private codec: colour and value maps.

Colour transforms turn the three samples of a pixel into three planes (the
first plane is the one the others are best predicted from):

* 0, none: ``(R, G, B)``;
* 1, subtract green: ``(G, R - G, B - G)``;
* 2, YCoCg-R: ``Co = R - B``, ``t = B + (Co >> 1)``, ``Cg = G - t``,
  ``Y = t + (Cg >> 1)``; planes ``(Y, Co, Cg)``;
* 3, indexed colour: a plane of indices into a table of the colours used,
  sorted by brightness; the table is coded as three one-row planes;
* 4, channel ranks (version 2): each sample replaced by its rank among the
  values its channel uses (a *channel map*: the channel's offset and, when
  few values occur, the bitmap of those used), then subtract green on the
  ranks.  Colour images quantised per channel (e.g. 5-bit R and G scaled to
  8 bits) keep their colour decorrelation without the gaps between values.

Each plane is then shifted to start at 0 (its minimum is stored) and, when
few of the values between its minimum and maximum occur, mapped to the rank
of each value among those used (a monotone palette; the set of used values is
coded as a bitmap).  All operations are vectorised numpy on int32 arrays, but for one small
numba loop.
"""

from __future__ import annotations

import itertools

import numpy as np

from gateway.kernelcache import njit

COLOUR_NONE = 0
COLOUR_SUBTRACT_GREEN = 1
COLOUR_YCOCG_R = 2
COLOUR_TRANSFORMS = (COLOUR_NONE, COLOUR_SUBTRACT_GREEN, COLOUR_YCOCG_R)
COLOUR_PALETTE = 3  # indexed colour: one plane of indices and a table of colours
COLOUR_RANKS = 4  # channel ranks, then subtract green (version 2)
COLOUR_MODES = COLOUR_TRANSFORMS + (COLOUR_PALETTE, COLOUR_RANKS)


def forward_colour(frame: np.ndarray, transform: int) -> np.ndarray:
    """(rows, cols, 3) samples -> (3, rows, cols) int32 planes."""
    r = frame[..., 0].astype(np.int32)
    g = frame[..., 1].astype(np.int32)
    b = frame[..., 2].astype(np.int32)
    if transform == COLOUR_NONE:
        return np.stack([r, g, b])
    if transform == COLOUR_SUBTRACT_GREEN:
        return np.stack([g, r - g, b - g])
    co = r - b
    t = b + (co >> 1)
    cg = g - t
    y = t + (cg >> 1)
    return np.stack([y, co, cg])


def inverse_colour(planes: "np.ndarray | list[np.ndarray]", transform: int) -> np.ndarray:
    """Three (rows, cols) int32 planes -> (rows, cols, 3) int32 samples."""
    p0, p1, p2 = planes
    if transform == COLOUR_NONE:
        r, g, b = p0, p1, p2
    elif transform == COLOUR_SUBTRACT_GREEN:
        g = p0
        r = p1 + g
        b = p2 + g
    else:
        t = p0 - (p2 >> 1)
        g = p2 + t
        b = t - (p1 >> 1)
        r = b + p1
    return np.stack([r, g, b], axis=-1)


def _plane_cost(plane: np.ndarray) -> float:
    """A cheap estimate of the coded size of `plane`: sum of log2(1 + |gradient residual|)."""
    if plane.shape[0] < 2 or plane.shape[1] < 2:
        return 0.0
    p = plane.astype(np.int64)
    residual = p[1:, 1:] - (p[1:, :-1] + p[:-1, 1:] - p[:-1, :-1])
    return float(np.log2(1.0 + np.abs(residual)).sum())


def _sample_rows(rows: int, max_rows: int) -> np.ndarray | None:
    """Indices of up to `max_rows` rows in adjacent pairs spread over the image (None: all)."""
    if rows <= max_rows:
        return None
    starts = np.linspace(0, rows - 2, max_rows // 2).astype(np.int64)
    return np.unique(np.concatenate([starts, starts + 1]))


def estimate_cost(planes: np.ndarray, max_rows: int = 96) -> float:
    """Estimated coded size of (planes, rows, cols) from a sample of row pairs."""
    rows = _sample_rows(planes.shape[1], max_rows)
    sample = planes if rows is None else planes[:, rows]
    return sum(_plane_cost(p) for p in sample)


def choose_colour(frame: np.ndarray, max_rows: int = 96) -> int:
    """Pick the colour transform with the lowest estimated cost on a sample of row pairs."""
    rows = _sample_rows(frame.shape[0], max_rows)
    sample = frame if rows is None else frame[rows]
    costs = [sum(_plane_cost(p) for p in forward_colour(sample, t)) for t in COLOUR_TRANSFORMS]
    return int(np.argmin(costs))


# Pixels of a frame, or of those whose colours are not yet known, that each round of
# :func:`colour_palette` samples; after PALETTE_ROUNDS rounds it takes them all.
PALETTE_SAMPLE = 20000
PALETTE_ROUNDS = 8


# A colour's key packs its three samples, each plus KEY_OFFSET (signed 16-bit samples too: every
# sample then lies in 0 .. 2**17 - 1), into 17 bits each of one int64.
KEY_OFFSET = 1 << 15
KEY_BITS = 17
KEY_MASK = (1 << KEY_BITS) - 1


def _colour_keys(frame: np.ndarray) -> np.ndarray:
    """One int64 key per pixel of a (..., 3) frame, equal exactly where the colours are."""
    flat = frame.astype(np.int64) + KEY_OFFSET
    return (flat[..., 0] << 2 * KEY_BITS) | (flat[..., 1] << KEY_BITS) | flat[..., 2]


def colour_palette(frame: np.ndarray, max_colours: int) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """Indexed form of a (rows, cols, 3) frame with few colours, else None.

    Returns the int32 index plane and the three int32 columns of the colour
    table, ordered by R + 2G + B (then R, G, B) so that neighbouring
    brightness gets neighbouring indices.
    """
    keys = _colour_keys(frame.reshape(-1, 3))
    # The colours of a sample of the pixels, completed by those of samples of the pixels not
    # found among them, index the frame by a binary search: several times faster than sorting
    # the frame, and a frame of too many colours (a photograph) is told in a few rounds.
    colours = np.unique(keys[:: max(1, keys.size // PALETTE_SAMPLE)])
    for round_ in itertools.count():
        if colours.size > max_colours:
            return None
        index = np.minimum(np.searchsorted(colours, keys), colours.size - 1)
        missed = keys[colours[index] != keys]
        if missed.size == 0:
            break
        step = max(1, missed.size // PALETTE_SAMPLE) if round_ < PALETTE_ROUNDS else 1
        colours = np.union1d(colours, missed[::step])
    r = (colours >> 2 * KEY_BITS) - KEY_OFFSET
    g = ((colours >> KEY_BITS) & KEY_MASK) - KEY_OFFSET
    b = (colours & KEY_MASK) - KEY_OFFSET
    order = np.lexsort((b, g, r, r + 2 * g + b))
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    plane = rank[index].astype(np.int32).reshape(frame.shape[:2])
    return plane, [r[order].astype(np.int32), g[order].astype(np.int32), b[order].astype(np.int32)]


def repeated_colours(frame: np.ndarray) -> float:
    """Share of the pixels of a (rows, cols, 3) frame, but its first row and column, whose colour
    is that of W, N, NW or NE: near 1 in screen captures, far lower in photographs, whose colours
    indexed colour cannot code in fewer bits."""
    if frame.shape[0] < 2 or frame.shape[1] < 2:
        return 0.0
    keys = _colour_keys(frame)
    above, here = keys[:-1], keys[1:]
    pixel = here[:, 1:]
    same = (pixel == here[:, :-1]) | (pixel == above[:, 1:]) | (pixel == above[:, :-1])
    same[:, :-1] |= pixel[:, :-1] == above[:, 2:]
    return float(same.mean())


def channel_ranks(frame: np.ndarray, density: float) -> tuple[np.ndarray, list[tuple[int, int, np.ndarray | None]]] | None:
    """Colour transform 4 of a (rows, cols, 3) frame, or None when no channel is sparse.

    Returns the three int32 planes (G, R - G, B - G of the ranks) and per channel
    R, G, B its map ``(offset, maxv, used)``: ``used`` is the bitmap of the values
    ``0..maxv`` above the offset that occur when at most `density` of them do
    (the rank is then the value's rank among them), else None (rank = value - offset).
    """
    ranks, maps = [], []
    for c in range(3):
        channel = frame[..., c].astype(np.int32)
        offset = int(channel.min())
        maxv = int(channel.max()) - offset
        channel -= np.int32(offset)
        used = used_values(channel, maxv)
        if maxv > 0 and int(used.sum()) <= density * (maxv + 1):
            channel = to_palette(channel, used)
        else:
            used = None
        ranks.append(channel)
        maps.append((offset, maxv, used))
    if all(used is None for _, _, used in maps):
        return None
    r, g, b = ranks
    return np.stack([g, r - g, b - g]), maps


def inverse_ranks(planes: "list[np.ndarray]", maps: "list[tuple[int, int, np.ndarray | None]]") -> np.ndarray | None:
    """Inverse of :func:`channel_ranks`: (rows, cols, 3) int32 samples, or None when a rank
    lies outside its channel's map."""
    g = planes[0]
    channels = []
    for rank, (offset, maxv, used) in zip((planes[1] + g, g, planes[2] + g), maps):
        values = np.flatnonzero(used).astype(np.int32) if used is not None else None
        top = maxv if values is None else values.size - 1
        if rank.size and (int(rank.min()) < 0 or int(rank.max()) > top):
            return None
        channels.append((rank if values is None else values[rank]) + np.int32(offset))
    return np.stack(channels, axis=-1)


def used_values(plane: np.ndarray, maxv: int) -> np.ndarray:
    """0/1 array of length maxv + 1: which values of the (shifted) plane occur."""
    used = np.zeros(maxv + 1, np.uint8)
    _mark_used(plane.reshape(-1), used)
    return used


@njit(cache=True, nogil=True)
def _mark_used(values: np.ndarray, used: np.ndarray) -> None:
    # A loop instead of np.bincount, which would first copy the plane to int64.
    for i in range(values.shape[0]):
        used[values[i]] = 1


def to_palette(plane: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Replace each value by its rank among the used values."""
    ranks = (np.cumsum(used, dtype=np.int64) - 1).astype(np.int32)
    return ranks[plane]


def from_palette(plane: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_palette`."""
    values = np.flatnonzero(used).astype(np.int32)
    return values[plane]
