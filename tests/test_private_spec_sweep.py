"""GatewayLossless against its specification over the corners of the format.

Streams are written by the encoder's own functions for each choice it can
make (version, context model, chained guides, colour transform, stripes,
inter frames, subbands), forced one at a time, and read by both the codec and
the plain decoder written from docs/private-codec.md (tests/test_private.py):
bit depths 1 to 16 in 8- and 16-bit containers, signed and unsigned, values at
the ends of the range, tiny and odd sizes.  Then the streams the specification
calls valid although the encoder never writes them, and the ones it calls
corrupt.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.codecs import _private_subbands as sb
from gateway.codecs import _private_transforms as tf
from gateway.codecs import private
from gateway.codecs.base import FrameInfo
from gateway.errors import CorruptCodestreamError
from tests.test_private import _info, _spec_decode

PLANE_MODELS = (0, 1, 2, 4, 5, 6, 7)
CODERS = [(1, 0)] + [(2, m) for m in PLANE_MODELS]  # (version, context model)


def _build(monkeypatch: pytest.MonkeyPatch, frame: np.ndarray, info: FrameInfo, version: int = 2,
           transform: int = tf.COLOUR_NONE, model: int = private.MODEL, stripe_rows: int | None = None,
           reference: np.ndarray | None = None, subbands: int = 0) -> bytes:
    """The stream the encoder writes for these choices, through its own functions."""
    tables, maps, reference_crc = 0, (), None
    if transform == tf.COLOUR_PALETTE:
        index, table = tf.colour_palette(frame, private.MAX_MATCHED_COLOURS)
        planes = [index] + [c[np.newaxis] for c in table]
        tables = 3
    elif transform == tf.COLOUR_RANKS:
        ranked = tf.channel_ranks(frame, private.PALETTE_DENSITY) or tf.channel_ranks(frame, 1.0)
        planes, maps = list(ranked[0]), ranked[1]
    else:
        planes = private._planes_of(frame, info, transform)
        if reference is not None:
            planes = planes - private._planes_of(reference, info, transform)
            reference_crc = private._crc(reference)
        if subbands:
            planes = sb.forward(planes[0], subbands)[np.newaxis]
        planes = [np.ascontiguousarray(p, dtype=np.int32) for p in planes]
    with monkeypatch.context() as patch:
        if stripe_rows is not None:
            patch.setattr(private, "_stripe_rows", lambda _: stripe_rows)
        body = private._coded_body(list(planes), info, version, tables, maps, model)
    return private._header(info, private.MODE_CODED, transform, private._crc(frame), reference_crc, version,
                           subbands) + body


def _agree(data: bytes, info: FrameInfo, frame: np.ndarray, reference: np.ndarray | None = None) -> None:
    assert np.array_equal(private.decode(data, info, reference), frame)
    assert np.array_equal(_spec_decode(data, info, reference), frame)


def _grey(kind: str, shape: tuple[int, int], low: int, high: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    if kind == "low":
        return np.full(shape, low)
    if kind == "high":
        return np.full(shape, high)
    if kind == "zero":  # 0, or -1 for signed data
        return np.full(shape, max(low, -1 if low < 0 else 0))
    if kind == "ends":  # only the two ends of the range, in runs and at random
        return np.where(((y // 2 + x // 3) % 2 == 0) | (rng.random(shape) < 0.2), low, high)
    if kind == "text":  # a two-level image
        return np.where((x * 7 + y * 3) % 11 < 3, high, low)
    if kind == "noise":
        return rng.integers(low, high, shape, endpoint=True)
    span = high - low
    return np.clip(np.rint(low + span * (0.5 + 0.45 * np.sin(y / 3) * np.cos(x / 4)) + rng.integers(-1, 2, shape)),
                   low, high)


KINDS = ("low", "high", "zero", "ends", "text", "noise", "smooth")
DEPTHS = [(8, 1, 0), (8, 2, 1), (8, 8, 1), (16, 9, 1), (16, 12, 0), (16, 16, 0), (16, 16, 1)]
SHAPES = [(1, 1), (1, 6), (6, 1), (2, 2), (3, 5), (7, 6)]


@pytest.mark.parametrize("alloc, stored, signed", DEPTHS)
@pytest.mark.parametrize("version, model", CODERS)
def test_grey_grid(monkeypatch: pytest.MonkeyPatch, version: int, model: int, alloc: int, stored: int,
                   signed: int) -> None:
    low, high = _info(1, 1, alloc=alloc, stored=stored, signed=bool(signed)).value_range
    rng = np.random.default_rng(alloc * 100 + stored * 2 + signed + 7 * model)
    for k, kind in enumerate(KINDS):
        shape = SHAPES[(k + stored) % len(SHAPES)]
        info = _info(*shape, alloc=alloc, stored=stored, signed=bool(signed))
        frame = _grey(kind, shape, low, high, rng).astype(info.dtype)
        stripe = None if version == 1 else int(rng.integers(1, shape[0] + 1))
        _agree(_build(monkeypatch, frame, info, version, model=model, stripe_rows=stripe), info, frame)


def _colour(kind: str, shape: tuple[int, int], low: int, high: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "few":
        table = rng.integers(low, high, (3, 3), endpoint=True)
        return table[rng.integers(0, 3, shape)]
    if kind == "channels":  # each channel of another kind, one at the ends of the range
        return np.stack([_grey(k, shape, low, high, rng) for k in ("ends", "smooth", "noise")], axis=-1)
    step = max(1, (high - low) // 5)  # channels quantised apart: channel ranks
    return np.clip(low + rng.integers(0, 6, shape + (3,)) * step, low, high)


@pytest.mark.parametrize("alloc, stored, signed", [(8, 8, 0), (8, 3, 1), (16, 12, 1)])
@pytest.mark.parametrize("kind", ["few", "channels", "quantised"])
def test_colour_grid(monkeypatch: pytest.MonkeyPatch, kind: str, alloc: int, stored: int, signed: int) -> None:
    """Every colour transform with every context model, with and without chained guides (the
    encoder chains them after T = 1 and 2 only, but the flag is valid with any plane model)."""
    low, high = _info(1, 1, alloc=alloc, stored=stored, signed=bool(signed)).value_range
    rng = np.random.default_rng(stored + 3 * signed + len(kind))
    shape = (5, 4) if kind == "few" else (4, 3)
    info = _info(*shape, samples=3, alloc=alloc, stored=stored, signed=bool(signed))
    frame = _colour(kind, shape, low, high, rng).astype(info.dtype)
    stripe = int(rng.integers(1, shape[0] + 1))
    for transform in (0, 1, 2):
        _agree(_build(monkeypatch, frame, info, 1, transform), info, frame)
        for model in PLANE_MODELS:
            for chained in (0, private.CHAINED) if transform == tf.COLOUR_SUBTRACT_GREEN else (0,):
                data = _build(monkeypatch, frame, info, 2, transform, model | chained, stripe)
                _agree(data, info, frame)
    _agree(_build(monkeypatch, frame, info, 2, tf.COLOUR_NONE, private.MODEL | private.CHAINED, stripe), info, frame)
    for version, model in [(1, 0), (2, 2), (2, 3), (2, 7), (2, 7 | private.CHAINED)]:
        _agree(_build(monkeypatch, frame, info, version, tf.COLOUR_PALETTE, model, stripe), info, frame)
    for model in PLANE_MODELS if kind == "quantised" else (private.MODEL,):  # (a map's bitmap: one bit a value)
        _agree(_build(monkeypatch, frame, info, 2, tf.COLOUR_RANKS, model | private.CHAINED, stripe), info, frame)


@pytest.mark.parametrize("samples", [1, 3])
@pytest.mark.parametrize("alloc, stored, signed", [(8, 8, 1), (16, 16, 0), (8, 1, 0)])
def test_inter_frames(monkeypatch: pytest.MonkeyPatch, samples: int, alloc: int, stored: int, signed: int) -> None:
    """A frame equal to its reference (every plane of maximum 0: empty version 2 segments, a 5-byte
    version 1 segment), one sample changed to the other end of the range, the range's ends swapped."""
    info = _info(4, 5, samples=samples, alloc=alloc, stored=stored, signed=bool(signed))
    low, high = info.value_range
    rng = np.random.default_rng(stored + samples)
    reference = rng.integers(low, high, info.shape, endpoint=True).astype(info.dtype)
    one = reference.copy()
    one.flat[7] = high if one.flat[7] != high else low
    swapped = np.where(reference == low, high, low).astype(info.dtype)
    for frame in (reference.copy(), one, swapped):
        for version, model in CODERS:
            for transform in (0, 1, 2) if samples == 3 and model == private.MODEL else (samples // 3,):
                data = _build(monkeypatch, frame, info, version, transform, model, 2 if version == 2 else None,
                              reference)
                assert not private.is_intra(data)
                _agree(data, info, frame, reference)


def _subband_flags() -> list[int]:
    flags = [axes | parity | kind for axes in (1, 2, 3) for parity in (0, 4, 8, 12) for kind in (0, sb.FOUR_TAP, sb.REPEAT)]
    return [f for f in flags if sb.valid(f, 100, 100)]


@pytest.mark.parametrize("flags", _subband_flags())
def test_subbands_at_their_smallest(monkeypatch: pytest.MonkeyPatch, flags: int) -> None:
    """Every valid set of subband flags, on lines as short as they allow (2 samples, 4 with the
    four-neighbour predictor, whose reflection then reaches the far end) and odd lengths."""
    least = sb.MIN_LENGTH_FOUR if flags & sb.FOUR_TAP else sb.MIN_LENGTH
    rng = np.random.default_rng(flags)
    for shape in [(least, least), (least + 1, least + 3), (least + 3, least + 2)]:
        info = _info(*shape, stored=12, signed=True)
        low, high = info.value_range
        for frame in (rng.integers(low, high, shape, endpoint=True), np.where(rng.random(shape) < 0.5, low, high)):
            frame = frame.astype(info.dtype)
            assert sb.valid(flags, *shape)
            data = _build(monkeypatch, frame, info, 2, model=private.MODEL, stripe_rows=1, subbands=flags)
            assert data[11] == 0x10 | flags
            _agree(data, info, frame)


SWEEP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])


@SWEEP
@given(rows=st.integers(1, 7), cols=st.integers(1, 7), stored=st.integers(1, 16), signed=st.booleans(),
       coder=st.sampled_from(CODERS), seed=st.integers(0, 2**32 - 1), levels=st.integers(2, 6),
       data=st.data())
def test_random_frames(monkeypatch: pytest.MonkeyPatch, rows: int, cols: int, stored: int, signed: bool,
                       coder: tuple[int, int], seed: int, levels: int, data: st.DataObject) -> None:
    """Frames of a few levels drawn from the whole range (the ends included), any stripe height."""
    info = _info(rows, cols, alloc=8 if stored <= 8 else 16, stored=stored, signed=signed)
    low, high = info.value_range
    rng = np.random.default_rng(seed)
    values = np.concatenate([[low, high], rng.integers(low, high, levels, endpoint=True)])
    frame = values[rng.integers(0, len(values), info.shape)].astype(info.dtype)
    stripe = data.draw(st.integers(1, rows)) if coder[0] == 2 else None
    _agree(_build(monkeypatch, frame, info, coder[0], model=coder[1], stripe_rows=stripe), info, frame)


# --- streams the specification calls valid that the encoder does not write ---------------------

@pytest.mark.parametrize("version", private.VERSIONS)
def test_full_palette_bitmaps_are_valid(monkeypatch: pytest.MonkeyPatch, version: int) -> None:
    """A palette of every value 0..maxv (count = maxv + 1, 3.2): the encoder takes a palette only
    where at most 3/4 of them occur, but a decoder reads the full one."""
    monkeypatch.setattr(private, "PALETTE_DENSITY", 1.0)
    info = _info(5, 6, stored=3)
    frame = np.random.default_rng(1).permutation(np.arange(30) % 8).reshape(5, 6).astype(np.uint16)
    data = _build(monkeypatch, frame, info, version)
    assert private._PLANE.unpack_from(data, 28) == (0, 7, 8)
    _agree(data, info, frame)


def test_channel_ranks_without_bitmaps_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """Colour transform 4 whose three channel maps are all plain offsets (count 0)."""
    info = _info(4, 5, samples=3, alloc=8, stored=8)
    frame = np.random.default_rng(2).integers(0, 256, info.shape).astype(np.uint8)
    maps = [(int(frame[..., c].min()), int(frame[..., c].max() - frame[..., c].min()), None) for c in range(3)]
    r, g, b = (frame[..., c].astype(np.int32) - maps[c][0] for c in range(3))
    body = private._coded_body([g, r - g, b - g], info, 2, 0, maps, private.MODEL)
    _agree(private._header(info, private.MODE_CODED, tf.COLOUR_RANKS, private._crc(frame), None, 2) + body,
           info, frame)


@pytest.mark.parametrize("version", private.VERSIONS)
def test_only_samples_of_the_frame_are_range_checked(monkeypatch: pytest.MonkeyPatch, version: int) -> None:
    """Section 6 checks the carried range on the frame's samples: a colour table entry no pixel uses
    may lie outside it, as may a channel map's values that no rank selects."""
    info = _info(2, 3, samples=3, alloc=8, stored=8)
    index = np.array([[0, 2, 0], [2, 2, 0]], np.int32)
    table = [np.array([[10, 300, 20]], np.int32), np.array([[0, 5, 9]], np.int32), np.array([[1, 2, 3]], np.int32)]
    frame = np.stack([t[0][index] for t in table], axis=-1).astype(np.uint8)
    monkeypatch.setattr(private, "PALETTE_DENSITY", 0.0)  # the index plane keeps its values
    body = private._coded_body([index] + table, info, version, 3, (), private.MODEL)
    _agree(private._header(info, private.MODE_CODED, tf.COLOUR_PALETTE, private._crc(frame), None, version) + body,
           info, frame)
    if version == 2:
        info = _info(2, 2, samples=3, alloc=8, stored=8)
        frame = np.array([[[10, 1, 2], [12, 1, 3]], [[10, 4, 2], [14, 4, 2]]], np.uint8)
        maps = [(10, 400, None), (1, 3, None), (2, 1, None)]  # R's map reaches 410
        r, g, b = (frame[..., c].astype(np.int32) - maps[c][0] for c in range(3))
        body = private._coded_body([g, r - g, b - g], info, 2, 0, maps, private.MODEL)
        _agree(private._header(info, private.MODE_CODED, tf.COLOUR_RANKS, private._crc(frame), None, 2) + body,
               info, frame)


# --- streams the specification calls corrupt -------------------------------------------------

def _corrupt(data: bytes | bytearray, info: FrameInfo, reference: np.ndarray | None = None) -> None:
    with pytest.raises(CorruptCodestreamError):
        private.decode(bytes(data), info, reference)


@pytest.mark.parametrize("version", private.VERSIONS)
def test_header_rules(monkeypatch: pytest.MonkeyPatch, version: int) -> None:
    info = _info(6, 5, stored=12)
    frame = np.random.default_rng(5).permutation(30).reshape(6, 5).astype(np.uint16)
    good = _build(monkeypatch, frame, info, version)
    _agree(good, info, frame)
    assert np.array_equal(private.decode(good + b"\0", info), frame)  # one pad byte
    for tail in (b"\1", b"\0\0", b"\1\0"):
        _corrupt(good + tail, info)
    reference_crc = bytearray(good)
    struct.pack_into("<I", reference_crc, 24, 0x1234)  # an intra frame names no reference
    _corrupt(reference_crc, info)
    for value in (2, 3, 0x0F, 0x10, 0x14, 0x18, 0x20, 0x71, 0x80, 0x91, 0xFF):
        prediction = bytearray(good)
        prediction[11] = value
        _corrupt(prediction, info)
    for descriptor in [(-(1 << 18) - 1, 40, 0), ((1 << 18) + 1, 40, 0), (0, 1 << 18, 0), (0, 5, 7), (0, 5, 1),
                       (0, 0, 2)]:
        mutated = bytearray(good)
        private._PLANE.pack_into(mutated, 28, *descriptor)
        _corrupt(mutated, info)
    for n in range(len(good)):
        _corrupt(good[:n], info)


def test_samples_outside_the_carried_range_are_corrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    info = _info(3, 3, alloc=8, stored=8)
    frame = np.full(info.shape, 200, np.uint8)
    data = bytearray(_build(monkeypatch, frame, info))
    private._PLANE.pack_into(data, 28, 300, 0, 0)  # every sample 300
    _corrupt(data, info)


@pytest.mark.parametrize("prediction", [0x10, 0x14, 0x18, 0x1C, 0x70, 0x73, 0x90, 0x93, 0xB3, 0x17])
def test_bad_subband_flags_are_corrupt(monkeypatch: pytest.MonkeyPatch, prediction: int) -> None:
    """No axis, a parity without its axis, both predictors, bit 4 or 7 set (9.8)."""
    info = _info(6, 6, stored=12)
    frame = np.repeat(np.repeat(np.arange(9).reshape(3, 3) * 400, 2, 0), 2, 1).astype(np.uint16)
    data = bytearray(_build(monkeypatch, frame, info, subbands=sb.ROWS | sb.COLUMNS | sb.REPEAT))
    _agree(bytes(data), info, frame)
    data[11] = prediction
    _corrupt(data, info)


def test_subbands_need_their_line_length(monkeypatch: pytest.MonkeyPatch) -> None:
    info = _info(3, 6, stored=12)
    frame = np.zeros(info.shape, np.uint16)
    data = bytearray(_build(monkeypatch, frame, info, subbands=sb.ROWS))
    data[11] = 0x10 | sb.COLUMNS | sb.FOUR_TAP  # columns of 3 samples: four neighbours need 4
    _corrupt(data, info)
    data[11] = 0x10 | sb.ROWS | sb.FOUR_TAP  # rows of 6: valid
    _agree(bytes(data), info, frame)
    for field in (1, 2):  # subbands with version 1, with a reference
        mutated = bytearray(data)
        if field == 1:
            mutated[4] = 1
        else:
            struct.pack_into("<I", mutated, 24, 1)
        _corrupt(mutated, info)


def test_indexed_colour_and_channel_ranks_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    info = _info(4, 4, samples=3, alloc=8, stored=8)
    table = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)
    frame = table[np.random.default_rng(6).integers(0, 3, (4, 4))]
    for version in private.VERSIONS:
        data = _build(monkeypatch, frame, info, version, tf.COLOUR_PALETTE)
        _agree(data, info, frame)
        for descriptor in [(1, 2, 0), (0, 2, 2), (0, 16, 0)]:  # offset, palette, more colours than pixels
            mutated = bytearray(data)
            private._PLANE.pack_into(mutated, 28, *descriptor)
            _corrupt(mutated, info)
        inter = bytearray(data)
        inter[11] = 1
        struct.pack_into("<I", inter, 24, 1)
        _corrupt(inter, info, frame)
    ranks = _build(monkeypatch, frame, info, 2, tf.COLOUR_RANKS)
    _agree(ranks, info, frame)
    for offset, value in [(4, 1), (11, 1)]:  # channel ranks in version 1, as an inter frame
        mutated = bytearray(ranks)
        mutated[offset] = value
        _corrupt(mutated, info, frame)


def test_stripe_table_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    info = _info(10, 4, stored=12)
    frame = np.random.default_rng(8).permutation(40).reshape(10, 4).astype(np.uint16)
    good = _build(monkeypatch, frame, info, stripe_rows=3)
    _agree(good, info, frame)
    start = 28 + 12
    lengths = list(struct.unpack_from("<5I", good, start + 4))
    assert lengths[0] == 0 and all(lengths[1:])  # no bitmap: the side segment is empty
    for field in (0, 11, 3 | 3 << 24, 3 | 8 << 24, 3 | 0x13 << 24, 3 | 0x27 << 24):
        mutated = bytearray(good)
        struct.pack_into("<I", mutated, start, field)
        _corrupt(mutated, info)
    segments = good[start + 24:]
    # A segment that codes nothing must be empty; one that codes something has 5 bytes at least.
    _corrupt(good[:start + 4] + struct.pack("<5I", 5, *lengths[1:]) + b"\0" * 5 + segments, info)
    _corrupt(good[:start + 4] + struct.pack("<5I", 0, 4, lengths[1] + lengths[2] - 4, *lengths[3:]) + segments, info)
    position = start + 24
    for length in lengths[1:]:
        mutated = bytearray(good)
        mutated[position] = 1  # a segment starts with 0
        _corrupt(mutated, info)
        position += length


def test_index_escapes_the_encoder_never_writes_decode_as_they_say() -> None:
    """Model 3 (9.7): an escape whose index equals a candidate already asked, and one that takes the
    recent list's entry back to its front, decode as what they say, in both decoders."""
    from gateway.codecs import _private_index as ix
    from gateway.codecs import _private_planes2 as p2
    from gateway.codecs import _private_rangecoder as rc
    from gateway.codecs import _private_symbols as sy

    info = _info(1, 3, samples=3, alloc=8, stored=8)
    frame = np.array([[[10, 20, 30], [10, 20, 30], [40, 50, 60]]], np.uint8)
    bins, tables, state, buf = rc.new_contexts(ix.N_CONTEXTS), sy.new_tables(1), rc.enc_start(), np.zeros(256, np.uint8)
    for answer, k in [(0, 0), (5, 0), (5, 2)]:  # W (index 0) refused, then escapes: index 0, L[0] = 0, 2 - |L| = 1
        state = rc.enc_bit(state, buf, bins, (6 * 31 + answer) * 5, 0)
        state = sy.enc_token(state, buf, tables, 0, k)
    buf, size = rc.enc_finish(state, buf)
    index_segment = buf[:size].tobytes()
    state, buf = rc.enc_start(), np.zeros(256, np.uint8)
    for _ in range(3):  # the colour table: each channel's two entries, offset and 30 above it
        te, err, bm = p2.new_plane_state(2, 2)
        state, buf = p2.encode_plane(state, buf, np.array([[0, 30]], np.int32), 30, *private._model_state(3), te, err,
                                     bm, private._NO_GUIDE, private._NO_GUIDE, 2)
    buf, size = rc.enc_finish(state, buf)
    side = buf[:size].tobytes()
    data = (private._header(info, private.MODE_CODED, tf.COLOUR_PALETTE, private._crc(frame), None, 2)
            + private._PLANE.pack(0, 1, 0) + b"".join(private._PLANE.pack(o, 30, 0) for o in (10, 20, 30))
            + struct.pack("<III", 1 | private.INDEX_MODEL << private.MODEL_SHIFT, len(side), len(index_segment))
            + side + index_segment)
    _agree(data, info, frame)
