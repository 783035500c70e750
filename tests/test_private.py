"""GatewayLosslessV1: round trips, stream structure, corruption detection, pydicom use."""

from __future__ import annotations

import multiprocessing
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest

from gateway.codecs import _private_predict as pred
from gateway.codecs import _private_rangecoder as rc
from gateway.codecs import _private_transforms as tf
from gateway.codecs import get_codec, private
from gateway.codecs.base import FrameInfo
from gateway.errors import CorruptCodestreamError, UnsupportedImageError
from gateway.pipeline.pixels import frame_info, iter_frames
from tests.corpus import corpus_params
from tests.images import reference_params
from tests.test_private_golden import _model_byte

REPO = Path(__file__).resolve().parent.parent
CODEC = private.CODEC


def _info(rows: int, cols: int, samples: int = 1, alloc: int = 16, stored: int = 16, signed: bool = False) -> FrameInfo:
    return FrameInfo(rows=rows, columns=cols, samples_per_pixel=samples, bits_allocated=alloc,
                     bits_stored=stored, pixel_representation=int(signed),
                     photometric_interpretation="RGB" if samples == 3 else "MONOCHROME2")


def _round_trip(frame: np.ndarray, info: FrameInfo) -> bytes:
    data = CODEC.encode_frame(frame, info)
    back = CODEC.decode_frame(data, info)
    assert back.dtype == frame.dtype and back.shape == frame.shape
    assert np.array_equal(back, frame)
    return data


def _mode(data: bytes) -> int:
    return data[5]


def _smooth(rng: np.random.Generator, info: FrameInfo) -> np.ndarray:
    low, high = info.value_range
    y, x = np.mgrid[0:info.rows, 0:info.columns]
    base = low + (high - low) * (0.5 + 0.3 * np.sin(y / 9.0) * np.cos(x / 13.0))
    values = base[..., None] + rng.normal(0, 2, info.shape if info.samples_per_pixel == 3 else info.shape + (1,))
    values = values if info.samples_per_pixel == 3 else values[..., 0]
    return np.clip(np.rint(values), low, high).astype(info.dtype)


# --- identity and registry -------------------------------------------------

def test_registered_identity() -> None:
    codec = get_codec(private.UID)
    assert codec is private.CODEC
    assert (codec.name, codec.keyword, codec.private) == ("gwl", "GatewayLosslessV1", True)
    assert get_codec("gwl") is codec and get_codec("GatewayLosslessV1") is codec


def test_supports() -> None:
    assert CODEC.supports(_info(4, 4)) is None
    assert CODEC.supports(_info(4, 4, alloc=32, stored=20)) is not None
    with pytest.raises(UnsupportedImageError):
        CODEC.encode_frame(np.zeros((4, 4), np.uint32), _info(4, 4, alloc=32, stored=20))


# --- round trips ----------------------------------------------------------

@pytest.mark.parametrize("info, frames", reference_params())
def test_reference_images(info: FrameInfo, frames: list[np.ndarray]) -> None:
    for frame in frames:
        _round_trip(frame, info)


@pytest.mark.parametrize("version", private.VERSIONS)
@pytest.mark.parametrize("row", corpus_params())
def test_corpus_round_trip(row: dict, version: int) -> None:
    ds = pydicom.dcmread(row["file"])
    info = frame_info(ds)
    if CODEC.supports(info):
        pytest.skip(f"not carried: {CODEC.supports(info)}")
    frames = list(iter_frames(ds))
    streams = private.encode_frames(frames, info, version=version)
    assert all(s[4] == version for s in streams)
    # In order, frame by frame, as a reader of the DICOM file decodes them.
    for stream, frame in zip(streams, frames):
        assert np.array_equal(CODEC.decode_frame(stream, info), frame)
    raw, compressed = info.frame_bytes * len(frames), sum(map(len, streams))
    assert compressed < raw  # every corpus image compresses


def test_constant_image_is_nearly_free() -> None:
    info = _info(512, 512)
    data = _round_trip(np.full(info.shape, 1234, np.uint16), info)
    assert _mode(data) == private.MODE_CODED and len(data) < 100


@pytest.mark.parametrize("alloc", [8, 16])
@pytest.mark.parametrize("signed", [False, True])
def test_full_range_noise(alloc: int, signed: bool) -> None:
    info = _info(61, 47, alloc=alloc, stored=alloc, signed=signed)
    low, high = info.value_range
    frame = np.random.default_rng(alloc).integers(low, high, info.shape, endpoint=True).astype(info.dtype)
    data = _round_trip(frame, info)
    # Incompressible data is stored, never expanded beyond the header.
    assert len(data) <= info.frame_bytes + private._HEADER.size


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (2, 1), (3, 5), (7, 1), (1, 9), (17, 33), (64, 3)])
@pytest.mark.parametrize("samples", [1, 3])
def test_odd_sizes(shape: tuple[int, int], samples: int) -> None:
    info = _info(*shape, samples=samples, alloc=8, stored=8)
    rng = np.random.default_rng(sum(shape))
    _round_trip(_smooth(rng, info), info)
    _round_trip(rng.integers(0, 255, info.shape, endpoint=True).astype(np.uint8), info)


@pytest.mark.parametrize("stored", [1, 2, 5, 8, 10, 12, 15, 16])
@pytest.mark.parametrize("signed", [False, True])
def test_bit_depths(stored: int, signed: bool) -> None:
    info = _info(40, 33, stored=stored, signed=signed)
    rng = np.random.default_rng(stored)
    _round_trip(_smooth(rng, info), info)
    low, high = info.value_range
    _round_trip(rng.integers(low, high, info.shape, endpoint=True).astype(info.dtype), info)
    _round_trip(np.full(info.shape, low, info.dtype), info)
    _round_trip(np.full(info.shape, high, info.dtype), info)


def test_two_bit_data_in_sixteen() -> None:
    info = _info(100, 90, stored=2)
    frame = np.random.default_rng(2).integers(0, 3, info.shape, endpoint=True).astype(np.uint16)
    data = _round_trip(frame, info)
    assert len(data) < info.frame_bytes / 6


def test_signed_minimum_values() -> None:
    info = _info(30, 30, stored=16, signed=True)
    frame = np.full(info.shape, -32768, np.int16)
    frame[::3, ::2] = 32767
    _round_trip(frame, info)


def test_values_above_bits_stored_survive() -> None:
    info = _info(20, 20, stored=12)
    frame = np.random.default_rng(5).integers(0, 4095, info.shape).astype(np.uint16)
    frame[3, 4] = 0xF000  # data in the unused high bits
    _round_trip(frame, info)


@pytest.mark.parametrize("alloc", [8, 16])
def test_three_samples(alloc: int) -> None:
    info = _info(50, 70, samples=3, alloc=alloc, stored=alloc)
    rng = np.random.default_rng(3)
    _round_trip(_smooth(rng, info), info)
    low, high = info.value_range
    _round_trip(rng.integers(low, high, info.shape, endpoint=True).astype(info.dtype), info)
    _round_trip(np.full(info.shape, high, info.dtype), info)


def _cine(info: FrameInfo, count: int, seed: int) -> list[np.ndarray]:
    """Frames of a slowly moving smooth pattern: each close to the one before."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:info.rows, 0:info.columns]
    low, high = info.value_range
    frames = []
    texture = rng.integers(0, 40, (info.rows, info.columns))
    for t in range(count):
        base = low + (high - low) * (0.5 + 0.25 * np.sin((y + t) / 5.0) * np.cos(x / 7.0)) + texture
        if info.samples_per_pixel == 3:
            base = np.stack([base, base * 0.8, base * 0.6], axis=-1)
        frames.append(np.clip(np.rint(base + rng.integers(0, 2, base.shape)), low, high).astype(info.dtype))
    return frames


@pytest.mark.parametrize("samples, alloc", [(1, 16), (1, 8), (3, 8)])
def test_inter_frame_prediction(samples: int, alloc: int) -> None:
    info = _info(48, 40, samples=samples, alloc=alloc, stored=alloc if alloc == 8 else 12)
    frames = _cine(info, 6, samples)
    streams = CODEC.encode_frames(frames, info)
    intra = [CODEC.encode_frame(f, info) for f in frames]
    assert private.is_intra(streams[0]) and not all(private.is_intra(s) for s in streams[1:])
    assert sum(map(len, streams)) < sum(map(len, intra))
    back = CODEC.decode_frames(streams, info)
    assert all(np.array_equal(a, b) for a, b in zip(back, frames))
    # In-order decoding frame by frame (as pydicom and the pipeline do) finds each reference itself.
    assert all(np.array_equal(CODEC.decode_frame(s, info), f) for s, f in zip(streams, frames))
    # An explicit reference gives random access.
    k = next(i for i, s in enumerate(streams) if not private.is_intra(s))
    assert np.array_equal(private.decode(streams[k], info, reference=frames[k - 1]), frames[k])


def test_a_frame_decoded_again_keeps_the_one_before() -> None:
    """Decoding one frame of a cine several times (a verification retried, a benchmark's rounds)
    keeps the frame before it, which the next frame may also be predicted from."""
    info = _info(48, 40, stored=12)
    frames = _cine(info, 4, 0)
    streams = CODEC.encode_frames(frames, info)
    k = next(i for i in range(1, len(streams) - 1) if not private.is_intra(streams[i]))
    for stream in streams[:k]:
        CODEC.decode_frame(stream, info)
    for _ in range(private.RECENT_FRAMES + 1):
        assert np.array_equal(CODEC.decode_frame(streams[k], info), frames[k])


def test_inter_frame_without_reference_is_refused() -> None:
    info = _info(48, 40, stored=12)
    frames = _cine(info, 3, 0)
    streams = CODEC.encode_frames(frames, info)
    assert not private.is_intra(streams[2])
    other = _info(48, 40, stored=12)
    CODEC.decode_frame(CODEC.encode_frame(_smooth(np.random.default_rng(0), other), other), other)
    CODEC.decode_frame(CODEC.encode_frame(_smooth(np.random.default_rng(1), other), other), other)
    with pytest.raises(CorruptCodestreamError, match="decode the frames in order"):
        CODEC.decode_frame(streams[2], info)
    with pytest.raises(CorruptCodestreamError, match="not available"):
        private.decode(streams[2], info, reference=frames[0])  # the wrong frame
    # A remembered reference that its user modified is not used.
    first = CODEC.decode_frame(streams[0], info)
    first[0, 0] ^= 1
    with pytest.raises(CorruptCodestreamError, match="not available"):
        CODEC.decode_frame(streams[1], info)


def test_threads_code_independently() -> None:
    """The kernels release the GIL and share no state: parallel threads give the same streams."""
    from concurrent.futures import ThreadPoolExecutor

    info = _info(64, 48, stored=12)
    images = [_cine(info, 4, seed) for seed in range(6)]
    serial = [CODEC.encode_frames(frames, info) for frames in images]
    with ThreadPoolExecutor(3) as pool:
        parallel = list(pool.map(lambda frames: CODEC.encode_frames(frames, info), images))
        decoded = list(pool.map(lambda streams: [CODEC.decode_frame(s, info) for s in streams], parallel))
    assert parallel == serial
    for frames, back in zip(images, decoded):
        assert all(np.array_equal(a, b) for a, b in zip(frames, back))


def test_many_frames() -> None:
    info = _info(24, 20, stored=12)
    rng = np.random.default_rng(7)
    for _ in range(40):
        _round_trip(_smooth(rng, info), info)


def test_thirty_two_bit_allocation() -> None:
    info = _info(20, 21, alloc=32, stored=16, signed=True)
    frame = np.random.default_rng(1).integers(-3000, 3000, info.shape).astype(np.int32)
    _round_trip(frame, info)


def test_sparse_histogram_uses_a_palette() -> None:
    info = _info(80, 80, stored=16)
    rng = np.random.default_rng(11)
    levels = np.sort(rng.choice(60000, 50, replace=False)).astype(np.uint16)
    y, x = np.mgrid[0:80, 0:80]
    frame = levels[((y + x) // 4) % 50]
    data = _round_trip(frame, info)
    assert _mode(data) == private.MODE_CODED
    offset, maxv, count = struct.unpack_from("<iII", data, private._HEADER.size)
    used = np.unique(frame)
    assert count == len(used) and maxv == int(used[-1]) - int(used[0]) and offset == int(used[0])


@pytest.mark.parametrize("alloc", [8, 16])
def test_few_colours_use_indexed_colour(alloc: int) -> None:
    info = _info(60, 50, samples=3, alloc=alloc, stored=alloc)
    rng = np.random.default_rng(21)
    high = info.value_range[1]
    table = rng.integers(0, high, (37, 3), endpoint=True)
    y, x = np.mgrid[0:60, 0:50]
    frame = table[(y // 3 + x // 5) % 37].astype(info.dtype)
    data = _round_trip(frame, info)
    assert data[10] == tf.COLOUR_PALETTE and data[5] == private.MODE_CODED
    offset, maxv, count = struct.unpack_from("<iII", data, private._HEADER.size)
    assert (offset, maxv, count) == (0, len(np.unique(frame.reshape(-1, 3), axis=0)) - 1, 0)


@pytest.mark.parametrize("rare", [0, 3, 500, 5000])
def test_colour_table_holds_colours_a_sample_of_pixels_misses(rare: int) -> None:
    """The colour table lists every colour of the frame once, in its documented order, and the
    index plane rebuilds the frame, also when a few colours occur only at pixels between those
    that a sample of the frame sees; more colours than the table holds give no table."""
    rng = np.random.default_rng(rare)
    frame = rng.integers(0, 10, (300, 400, 3), dtype=np.uint16) * 7
    spots = rng.choice(frame.shape[0] * frame.shape[1], rare, replace=False)
    frame.reshape(-1, 3)[spots] = rng.integers(1000, 60000, (rare, 3))
    indexed = tf.colour_palette(frame, 4096)
    colours = {tuple(c) for c in frame.reshape(-1, 3).tolist()}
    if len(colours) > 4096:
        assert indexed is None
        return
    plane, (r, g, b) = indexed
    table = list(zip(r.tolist(), g.tolist(), b.tolist()))
    assert sorted(table) == sorted(colours)
    assert table == sorted(colours, key=lambda c: (c[0] + 2 * c[1] + c[2], c[0], c[1], c[2]))
    assert np.array_equal(np.stack([r, g, b], axis=-1)[plane], frame)


def test_indexed_colour_table_is_checked() -> None:
    info = _info(30, 30, samples=3, alloc=8, stored=8)
    table = np.random.default_rng(5).integers(0, 255, (20, 3), endpoint=True)
    y, x = np.mgrid[0:30, 0:30]
    frame = table[(y // 2 + x // 3) % 20].astype(np.uint8)
    data = bytearray(CODEC.encode_frame(frame, info))
    assert data[10] == tf.COLOUR_PALETTE
    struct.pack_into("<iII", data, private._HEADER.size, 0, 30 * 30, 0)  # more colours than pixels
    with pytest.raises(CorruptCodestreamError, match="index plane"):
        CODEC.decode_frame(bytes(data), info)


def _quantised_colour(info: FrameInfo, seed: int) -> np.ndarray:
    """A smooth 8-bit colour image quantised to 5 bits per channel and scaled back to 8 (sparse
    channels), whose R and B follow G exactly in 5-bit steps but not in 8-bit ones: what colour
    transform 4 is for."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:info.rows, 0:info.columns]
    level = 40 + 150 * (0.5 + 0.4 * np.sin(y / 7.0) * np.cos(x / 5.0))
    g5 = np.clip(np.rint(level / 8.2 * 0.7 + rng.normal(0, 0.6, x.shape)), 0, 23)
    r5 = g5 + np.rint(3 + 3 * np.sin(x / 17.0 + y / 23.0))
    b5 = g5 + 2
    return np.stack([(c * 255 + 15) // 31 for c in (r5, g5, b5)], axis=-1).astype(info.dtype)


def _screen(info: FrameInfo, seed: int) -> np.ndarray:
    """A screen capture: flat panels of a few colours and lines of text, whose glyphs (drawn from a
    small set, as letters are) have an anti-aliased edge colour between ink and background."""
    rng = np.random.default_rng(seed)
    high = info.value_range[1]
    colours = rng.integers(0, high, (6, 3), endpoint=True)
    frame = np.empty((info.rows, info.columns, 3), np.int64)
    frame[:] = colours[0]
    for _ in range(6):
        y, x = rng.integers(0, info.rows - 8), rng.integers(0, info.columns - 8)
        frame[y:y + rng.integers(8, 60), x:x + rng.integers(8, 90)] = colours[rng.integers(1, 6)]
    glyphs = rng.random((24, 9, 7)) < 0.35
    ink = colours[1]
    for top in range(4, info.rows - 12, 14):
        for left in range(3, info.columns - 9, 8):
            if rng.random() < 0.15:
                continue  # a space
            glyph = glyphs[rng.integers(0, 24)]
            cell = frame[top:top + 9, left:left + 7]
            edge = np.zeros_like(glyph)
            edge[:, 1:] |= glyph[:, :-1]
            cell[edge & ~glyph] = (cell[edge & ~glyph] + ink) // 2
            cell[glyph] = ink
    return frame.astype(info.dtype)


@pytest.mark.parametrize("alloc", [8, 16])
def test_screen_captures_use_the_index_model(monkeypatch: pytest.MonkeyPatch, alloc: int) -> None:
    """Version 2 codes a screen capture's colour indices as which neighbour's colour each pixel
    repeats (context model 3), much smaller than as values; the specification's decoder agrees, in
    one stripe and in several."""
    info = _info(120, 160, samples=3, alloc=alloc, stored=alloc)
    frame = _screen(info, alloc // 8 - 1)
    data = private.encode(frame, info, version=2)
    assert data[10] == tf.COLOUR_PALETTE and _model_byte(data, info) == private.INDEX_MODEL
    assert np.array_equal(private.decode(data, info), frame)
    assert np.array_equal(_spec_decode(data, info), frame)
    index, table = tf.colour_palette(frame, private.MAX_COLOURS)
    bodies = [private._coded_body([index.copy()] + [c[np.newaxis].copy() for c in table], info, 2, tables=3,
                                  model=model) for model in (private.MODEL, private.INDEX_MODEL)]
    assert len(bodies[1]) < 0.8 * len(bodies[0])  # the indices matched, against blended as values
    monkeypatch.setattr(private, "STRIPE_BYTES", info.frame_bytes // 6)
    striped = private.encode(frame, info, version=2)
    assert _stripe_rows(striped, 4) == 30 and _model_byte(striped, info) == private.INDEX_MODEL  # four stripes
    assert np.array_equal(private.decode(striped, info), frame)
    assert np.array_equal(_spec_decode(striped, info), frame)


def _whole_codings(monkeypatch: pytest.MonkeyPatch, info: FrameInfo) -> list[int]:
    """Record the context model (-1: not indexed colour) of every body coded from the whole frame."""
    seen: list[int] = []
    coded_body = private._coded_body

    def counting(planes, body_info, version, tables, maps=(), model=None):
        if body_info.rows == info.rows:
            seen.append(-1 if tables != 3 else model if model is not None else private.MODEL)
        return coded_body(planes, body_info, version, tables, maps, model)

    monkeypatch.setattr(private, "_coded_body", counting)
    return seen


def test_colour_coding_is_chosen_on_a_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """A large colour frame tries its codings on bands of rows and codes only the best whole: the
    same size as trying each one whole."""
    info = _info(384, 512, samples=3, alloc=8, stored=8)
    assert info.rows * info.columns >= private.SAMPLE_PIXELS
    frame = _screen(info, 7)
    with monkeypatch.context() as patch:
        patch.setattr(private, "SAMPLE_PIXELS", 1 << 40)
        every = _whole_codings(patch, info)
        exhaustive = private.encode(frame, info, version=2)
    # The colour transform, the indices with model 2 and with model 3, the channel ranks.
    assert every == [-1, private.MODEL, private.INDEX_MODEL, -1]
    whole = _whole_codings(monkeypatch, info)
    data = private.encode(frame, info, version=2)
    assert whole == [private.INDEX_MODEL]
    assert data == exhaustive
    assert np.array_equal(private.decode(data, info), frame)


def test_a_sample_that_misses_the_content_codes_every_coding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Text only in the rows the sample skips: the sample's choice (colour values, which code its
    blank bands to almost nothing) codes far above its estimate, so every coding is tried whole."""
    info = _info(384, 512, samples=3, alloc=8, stored=8)
    frame = _screen(info, 7)
    sampled = private._sample_rows(info.rows)
    frame[sampled] = frame[0, 0]
    whole = _whole_codings(monkeypatch, info)
    data = private.encode(frame, info, version=2)
    assert len(whole) == 4 and sorted(whole) == sorted([-1, -1, private.MODEL, private.INDEX_MODEL])
    assert data[10] == tf.COLOUR_PALETTE and _model_byte(data, info) == private.INDEX_MODEL
    assert np.array_equal(private.decode(data, info), frame)


def test_every_coding_within_the_margin_and_none_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    """All codings chosen on the sample and the choice not trusted: the smallest whole body is kept,
    each coding coded whole once."""
    info = _info(384, 512, samples=3, alloc=8, stored=8)
    frame = _screen(info, 7)
    with monkeypatch.context() as patch:
        patch.setattr(private, "SAMPLE_PIXELS", 1 << 40)
        exhaustive = private.encode(frame, info, version=2)
    monkeypatch.setattr(private, "SAMPLE_MARGIN", 1e9)
    monkeypatch.setattr(private, "SAMPLE_TRUST", 0.0)
    whole = _whole_codings(monkeypatch, info)
    data = private.encode(frame, info, version=2)
    assert sorted(whole) == sorted([-1, -1, private.MODEL, private.INDEX_MODEL])
    assert data == exhaustive
    assert np.array_equal(private.decode(data, info), frame)


def test_index_model_takes_more_colours() -> None:
    """A screen capture of more than 4096 colours (a panel of 4500 colours, each row shown twice) is
    indexed for context model 3, which allows 65536; the same table under model 2 is a corrupt
    stream."""
    info = _info(240, 200, samples=3, alloc=16, stored=16)
    frame = _screen(info, 1)
    panel = np.random.default_rng(5).integers(0, 65536, (25, 180, 3))
    frame[50:100, 10:190] = np.repeat(panel, 2, axis=0)
    colours = len(np.unique(frame.reshape(-1, 3), axis=0))
    assert private.MAX_COLOURS < colours <= private.MAX_MATCHED_COLOURS
    assert tf.repeated_colours(frame) >= private.MATCHED_REPEATS  # most pixels repeat a neighbour's colour
    data = bytearray(private.encode(frame, info, version=2))
    assert data[10] == tf.COLOUR_PALETTE and _model_byte(bytes(data), info) == private.INDEX_MODEL
    assert struct.unpack_from("<I", data, private._HEADER.size + 4)[0] == colours - 1
    assert np.array_equal(private.decode(bytes(data), info), frame)
    assert np.array_equal(_spec_decode(bytes(data), info), frame)
    data[28 + 12 * 4 + 3] = private.MODEL
    with pytest.raises(CorruptCodestreamError, match="colour index plane"):
        private.decode(bytes(data), info)
    assert private.encode(frame, info, version=1)[10] != tf.COLOUR_PALETTE  # version 1 keeps 4096


def test_photographs_are_not_indexed_for_many_colours(monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame of more than 4096 colours whose pixels seldom repeat a neighbour's colour (a
    photograph) is not searched for a colour table of up to 65536 colours, nor coded indexed; one
    whose pixels mostly repeat a neighbour's colour is searched."""
    info = _info(64, 80, samples=3, alloc=8, stored=8)
    rng = np.random.default_rng(12)
    photo = np.clip(_smooth(rng, info).astype(np.int64) + rng.integers(-6, 7, info.shape), 0, 255).astype(np.uint8)
    colours = len(np.unique(photo.reshape(-1, 3), axis=0))
    assert private.MAX_COLOURS < colours and tf.repeated_colours(photo) < 0.1
    limits: list[int] = []
    real = tf.colour_palette
    monkeypatch.setattr(tf, "colour_palette", lambda frame, most: limits.append(most) or real(frame, most))
    data = private.encode(photo, info, version=2)
    assert limits == [private.MAX_COLOURS] and data[10] != tf.COLOUR_PALETTE
    assert np.array_equal(private.decode(data, info), photo)
    # The photograph with each pixel shown as a 3 x 3 block: eight pixels in nine repeat a colour.
    limits.clear()
    blocks = np.ascontiguousarray(np.repeat(np.repeat(photo, 3, 0), 3, 1))
    assert tf.repeated_colours(blocks) >= private.MATCHED_REPEATS
    private.encode(blocks, _info(192, 240, samples=3, alloc=8, stored=8), version=2)
    assert limits == [private.MAX_COLOURS, private.MAX_MATCHED_COLOURS]


def test_repeated_colours_counts_the_four_neighbours() -> None:
    # Rows 1 and 2, columns 1 to 3 count (6 pixels): row 1 repeats W, N, then a new colour; row 2:
    # NE, a new colour, N.
    grey = np.array([[1, 2, 3, 4],
                     [9, 9, 3, 7],
                     [5, 3, 8, 7]])
    frame = np.stack([grey, grey * 2, grey * 3], axis=-1).astype(np.uint8)
    # (1,1) = W 9; (1,2) = N 3; (1,3) = 7: new; (2,1) = NE 3; (2,2) = 8: new; (2,3) = N 7.
    assert tf.repeated_colours(frame) == 4 / 6
    assert tf.repeated_colours(frame[:1]) == 0.0
    # Signed samples, the last channel the same negative value everywhere: the colours still differ.
    signed = np.stack([grey * 300 - 32768, grey - 20, np.full_like(grey, -5)], axis=-1).astype(np.int16)
    assert tf.repeated_colours(signed) == 4 / 6


@pytest.mark.parametrize("version", private.VERSIONS)
def test_signed_colour_is_indexed_losslessly(version: int) -> None:
    """Signed colour samples of few colours, the extremes of the 16-bit range among them, are coded
    as indexed colour and decode to themselves (each colour a key of its own, negative ones too)."""
    info = _info(40, 50, samples=3, alloc=16, stored=16, signed=True)
    table = np.array([[-32768, 0, 32767], [32767, -32768, -1], [-1, -1, -1], [0, 0, 0], [-300, 5, -32768],
                      [1, -2, 3]])
    y, x = np.mgrid[0:40, 0:50]
    frame = table[(y // 5 + x // 7) % 6].astype(np.int16)
    data = private.encode(frame, info, version=version)
    assert data[10] == tf.COLOUR_PALETTE
    assert np.array_equal(private.decode(data, info), frame)
    assert np.array_equal(_spec_decode(data, info), frame)


def test_index_model_is_for_indexed_colour_only() -> None:
    """A stream naming context model 3 without indexed colour is corrupt, not misread."""
    info = _info(24, 30, samples=3, alloc=8, stored=8)
    frame = _smooth(np.random.default_rng(8), info)
    data = bytearray(private.encode(frame, info, version=2))
    assert data[10] != tf.COLOUR_PALETTE and _model_byte(bytes(data), info) == private.MODEL
    data[28 + 12 * 3 + 3] = private.INDEX_MODEL
    with pytest.raises(CorruptCodestreamError, match="indexed colour"):
        private.decode(bytes(data), info)


def test_sparse_channels_use_channel_ranks() -> None:
    """Version 2 codes colour quantised per channel as ranks (transform 4) and decodes it."""
    info = _info(30, 40, samples=3, alloc=8, stored=8)
    frame = _quantised_colour(info, 4)
    data = private.encode(frame, info, version=2)
    assert data[5] == private.MODE_CODED and data[10] == tf.COLOUR_RANKS
    assert len(data) < len(private.encode(frame, info, version=1))  # version 1 has no transform 4
    maps = [struct.unpack_from("<iII", data, private._HEADER.size + private._PLANE.size * i) for i in range(3, 6)]
    for c, (offset, maxv, count) in enumerate(maps):
        used = np.unique(frame[..., c])
        assert offset == used[0] and maxv == used[-1] - used[0]
        assert count in (0, used.size)
    assert maps[0][2] == np.unique(frame[..., 0]).size  # R is sparse: it has a bitmap
    assert np.array_equal(private.decode(data, info), frame)
    assert np.array_equal(_spec_decode(data, info), frame)
    # A frame of the same image after it is coded intra (transform 4 has no inter form).
    following = private.encode_frames([frame, frame], info, version=2)[1]
    assert private.is_intra(following) or following[10] != tf.COLOUR_RANKS
    assert np.array_equal(private.decode_frames([data, following], info)[1], frame)


def test_channel_ranks_are_checked() -> None:
    info = _info(30, 40, samples=3, alloc=8, stored=8)
    data = private.encode(_quantised_colour(info, 8), info, version=2)
    assert data[10] == tf.COLOUR_RANKS
    version_1 = bytearray(data)
    version_1[4] = 1
    with pytest.raises(CorruptCodestreamError, match="colour transform"):
        private.decode(bytes(version_1), info)
    inter = bytearray(data)
    inter[11] = private.PREDICT_PREVIOUS
    struct.pack_into("<I", inter, 24, 1)
    with pytest.raises(CorruptCodestreamError, match="prediction"):
        private.decode(bytes(inter), info)
    # G's map without its bitmap: segment 0 no longer holds what the descriptors announce.
    unmapped = bytearray(data)
    at = private._HEADER.size + private._PLANE.size * 4
    offset, maxv, count = struct.unpack_from("<iII", unmapped, at)
    assert count > 0
    struct.pack_into("<iII", unmapped, at, offset, maxv, 0)
    with pytest.raises(CorruptCodestreamError):
        private.decode(bytes(unmapped), info)


def test_channel_ranks_outside_their_map_are_corrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream whose G map (no bitmap) is narrower than the G ranks its planes hold."""
    info = _info(30, 40, samples=3, alloc=8, stored=8)
    frame = _quantised_colour(info, 8)
    real = tf.channel_ranks

    def narrow_green(frame, density):
        planes, maps = real(frame, density)
        offset, _, _ = maps[1]
        return planes, [maps[0], (offset, int(planes[0].max()) - 1, None), maps[2]]

    monkeypatch.setattr(tf, "channel_ranks", narrow_green)
    data = private.encode(frame, info, version=2)
    assert data[10] == tf.COLOUR_RANKS
    with pytest.raises(CorruptCodestreamError, match="channel rank"):
        private.decode(data, info)


# --- transforms and kernels against plain references -------------------------

@pytest.mark.parametrize("transform", tf.COLOUR_TRANSFORMS)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_colour_transforms_are_reversible(transform: int, dtype: type) -> None:
    high = np.iinfo(dtype).max
    frame = np.random.default_rng(transform).integers(0, high, (9, 11, 3), endpoint=True).astype(dtype)
    frame[0, 0] = (0, high, 0)
    frame[0, 1] = (high, 0, high)
    planes = tf.forward_colour(frame, transform)
    assert planes.dtype == np.int32 and int(np.ptp(planes)) <= private.MAX_PLANE_VALUE
    assert np.array_equal(tf.inverse_colour(planes, transform), frame)


def test_bit_length_and_activity_classes() -> None:
    for v in list(range(0, 5000)) + [2**k + d for k in range(12, 33) for d in (-1, 0, 1)]:  # valid below 2**33
        assert pred.bit_length(v) == v.bit_length()
    classes = [pred.quantise_activity(a) for a in range(0, 1 << 20, 7)]
    assert classes == sorted(classes) and classes[0] == 0 and max(classes) == pred.N_ACTIVITY - 1


def test_activity_class_follows_the_specification() -> None:
    values = list(range(0, 1 << 14)) + [2**k + d for k in range(14, 40) for d in (-1, 0, 1, 2**k // 2)]
    for a in values:
        assert pred.quantise_activity(a) == _spec_class(a), a


def test_sign_and_fraction_classes_follow_the_specification() -> None:
    from gateway.codecs import _private_planes as planes1
    from gateway.codecs import _private_planes2 as planes2

    for bias in (-(1 << 21), -5, -1, 0, 1, 7, 1 << 21):
        expected = 1 if bias > 0 else 2 if bias < 0 else 0
        assert planes1._sign_class(bias) == expected and planes2._sign_class(bias) == expected
    table = {-4: 0, -3: 0, -2: 1, -1: 1, 0: 2, 1: 3, 2: 3, 3: 4}  # section 9's table of class_φ
    for pred8 in range(-40, 200):
        fraction = pred8 - 8 * ((pred8 + 4) >> 3)
        assert planes2._fraction_class(fraction) == table[fraction]


def test_range_coder_round_trip() -> None:
    from numba import njit

    @njit(cache=False)
    def _encode(bits, contexts, raws, buf):
        ctx = np.zeros((8, 3), np.int32)
        ctx[:, :2] = rc.PROB_INIT
        st = rc.enc_start()
        for i in range(bits.shape[0]):
            st = rc.enc_bit(st, buf, ctx, contexts[i], bits[i])
            st = rc.enc_raw(st, buf, raws[i], 5)
        return rc.enc_finish(st, buf)

    @njit(cache=False)
    def _decode(data, n, contexts, out_bits, out_raws):
        ctx = np.zeros((8, 3), np.int32)
        ctx[:, :2] = rc.PROB_INIT
        st = rc.dec_start(data, 0)
        for i in range(n):
            st, out_bits[i] = rc.dec_bit(st, data, ctx, contexts[i])
            st, out_raws[i] = rc.dec_raw(st, data, 5)
        return st[2]

    rng = np.random.default_rng(9)
    n = 20000
    contexts = rng.integers(0, 8, n)
    # Context c emits ones with probability c/7: from never to always.
    bits = (rng.random(n) < contexts / 7).astype(np.int64)
    raws = rng.integers(0, 32, n)
    buf, size = _encode(bits, contexts, raws, np.empty(n * 4, np.uint8))  # enc_bit does not grow
    data = buf[:size].copy()
    out_bits, out_raws = np.zeros(n, np.int64), np.zeros(n, np.int64)
    _decode(data, n, contexts, out_bits, out_raws)
    assert np.array_equal(out_bits, bits) and np.array_equal(out_raws, raws)
    assert size < n * (5 + 0.8) / 8  # the skewed contexts compress


# --- stream structure and corruption ---------------------------------------

@pytest.mark.parametrize("version, model, size, digest", [
    (1, None, 676, "46d463522debe351b2e1809e0b457024d2c11c38ac7bdd90831948aaac643929"),
    (2, 2, 690, "3c0f53c77aa03125f88da633cdfb99385a1210966e710918bf04b508f7cebfe3"),
    (2, 4, 708, "985912610d62d0b642f438bab198ce0a0072c1b859f9cdac9620a744cdb50ed4"),
])
def test_golden_stream(monkeypatch: pytest.MonkeyPatch, version: int, model: int | None, size: int,
                       digest: str) -> None:
    """The bitstream is a storage format: a change of the encoder's output must be deliberate."""
    import hashlib

    if model is not None:
        monkeypatch.setattr(private, "MODEL", model)
    info = _info(24, 20, stored=12)
    y, x = np.mgrid[0:24, 0:20]
    frame = ((y * 37 + x * 11) % 97 * 40 + (y * x) % 7).astype(np.uint16)
    data = private.encode(frame, info, version=version)
    assert data[4] == version
    assert (len(data), hashlib.sha256(data).hexdigest()) == (size, digest)
    assert np.array_equal(CODEC.decode_frame(data, info), frame)



def test_header_fields() -> None:
    info = _info(13, 17, stored=12)
    frame = _smooth(np.random.default_rng(1), info)
    data = CODEC.encode_frame(frame, info)
    fields = private._HEADER.unpack_from(data)
    assert fields[0] == private.MAGIC and fields[1] == private.VERSION
    assert fields[2:9] == (private.MODE_CODED, 1, 16, 12, 0, 0, 0)
    assert fields[9:11] == (13, 17)
    assert fields[11] == zlib.crc32(frame.astype("<u2").tobytes())


def test_checksum_mismatch_is_detected() -> None:
    info = _info(40, 40, stored=12)
    frame = _smooth(np.random.default_rng(4), info)
    data = bytearray(CODEC.encode_frame(frame, info))
    data[20] ^= 0x01  # the CRC field
    with pytest.raises(CorruptCodestreamError, match="CRC"):
        CODEC.decode_frame(bytes(data), info)


@pytest.mark.parametrize("version", private.VERSIONS)
def test_payload_change_is_detected(version: int) -> None:
    info = _info(40, 40, stored=12)
    frame = _smooth(np.random.default_rng(4), info)
    data = private.encode(frame, info, version=version)
    start = private._HEADER.size + private._PLANE.size
    positions = range(start, len(data), max(1, (len(data) - start) // 40))
    detected = 0
    for position in positions:
        corrupt = bytearray(data)
        corrupt[position] ^= 0x40
        try:
            back = CODEC.decode_frame(bytes(corrupt), info)
        except CorruptCodestreamError:
            detected += 1
        else:  # a change that does not alter any decision (last bytes) leaves the frame intact
            assert np.array_equal(back, frame)
    assert detected >= len(positions) - 2
    assert np.array_equal(CODEC.decode_frame(data + b"\0", info), frame)  # DICOM fragment padding
    with pytest.raises(CorruptCodestreamError, match="follow the end"):
        CODEC.decode_frame(data + b"\1", info)
    with pytest.raises(CorruptCodestreamError, match="follow the end"):
        CODEC.decode_frame(data + b"\0\0", info)


def test_stored_frame_corruption_is_detected() -> None:
    info = _info(8, 8, alloc=8, stored=8)
    frame = np.random.default_rng(0).integers(0, 255, info.shape, endpoint=True).astype(np.uint8)
    data = bytearray(_round_trip(frame, info))
    assert _mode(data) == private.MODE_STORED
    data[-1] ^= 0xFF
    with pytest.raises(CorruptCodestreamError, match="CRC"):
        CODEC.decode_frame(bytes(data), info)
    with pytest.raises(CorruptCodestreamError):
        CODEC.decode_frame(bytes(data[:-1]), info)


@pytest.mark.parametrize(
    "other",
    [_info(41, 40, stored=12), _info(40, 41, stored=12), _info(40, 40, stored=11),
     _info(40, 40, stored=12, signed=True), _info(40, 40, alloc=32, stored=12), _info(40, 40, samples=3, stored=12)],
)
def test_header_must_match_the_dataset(other: FrameInfo) -> None:
    info = _info(40, 40, stored=12)
    data = CODEC.encode_frame(_smooth(np.random.default_rng(4), info), info)
    with pytest.raises(CorruptCodestreamError, match="does not match"):
        CODEC.decode_frame(data, other)


def test_truncation_is_detected() -> None:
    info = _info(64, 64, stored=12)
    data = CODEC.encode_frame(_smooth(np.random.default_rng(8), info), info)
    for size in (0, 3, 10, 23, 24, 30, 36, len(data) // 2, len(data) - 1):
        with pytest.raises(CorruptCodestreamError):
            CODEC.decode_frame(data[:size], info)


def test_hostile_descriptor_is_rejected_before_allocation() -> None:
    info = _info(16, 16, stored=12)
    data = bytearray(CODEC.encode_frame(_smooth(np.random.default_rng(8), info), info))
    struct.pack_into("<iII", data, private._HEADER.size, 0, 0xFFFFFFFF, 0xFFFFFFFF)
    with pytest.raises(CorruptCodestreamError, match="limits"):
        CODEC.decode_frame(bytes(data), info)


# --- memory ------------------------------------------------------------------

@pytest.mark.parametrize("version, interpolated", [(1, False), (2, False), (2, True)],
                         ids=["version 1", "version 2", "version 2 subbands"])
def test_large_frame_memory_is_bounded(version: int, interpolated: bool) -> None:
    """A 4k x 4k 16-bit frame codes within a few times its own size (peak RSS, fresh process);
    version 2 codes it as four stripes in threads, and an interpolated one as subbands."""
    program = f"VERSION = {version}\nINTERPOLATED = {interpolated}\n" + """
import resource, numpy as np
from gateway.codecs.private import encode, decode
from gateway.codecs.base import FrameInfo
small = FrameInfo(rows=8, columns=8, bits_stored=12)
ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 37) % 4000
decode(encode(ramp, small, version=VERSION), small)  # compiles (or loads) the kernels before the baseline
info = FrameInfo(rows=4096, columns=4096, bits_stored=12)
frame = np.empty((4096, 4096), np.uint16)
row = np.arange(4096, dtype=np.uint16)
rng = np.random.default_rng(0)
for y in range(4096):  # no frame-sized temporaries before the baseline
    frame[y] = (row + 3 * y) % 4000 + rng.integers(0, 8, 4096, dtype=np.uint16)
    if INTERPOLATED:  # each odd column the mean of its neighbours, as a row enlarged twice
        frame[y, 1:-1:2] = (frame[y, 0:-2:2].astype(np.uint32) + frame[y, 2::2]) >> 1
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
data = encode(frame, info, version=VERSION)
assert data[4] == VERSION and bool(data[11] & 0x10) == INTERPOLATED
back = decode(data, info)
assert np.array_equal(back, frame)
del back
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((peak - before) * 1024 / frame.nbytes)
"""
    out = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    # Measured: 3.5 (the int32 plane and the output); subbands 6.9 (the plane and its coefficients,
    # int32 each, and the coefficients' palette ranks while they are coded).
    assert float(out.stdout.strip()) < (7.5 if interpolated else 4.5), out.stdout


# --- pydicom -------------------------------------------------------------------

def test_plain_pydicom_reads_our_syntax(tmp_path: Path) -> None:
    """A file in our syntax decodes with ds.pixel_array in a fresh process that only imports gateway."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    info = _info(30, 20, stored=12)
    rng = np.random.default_rng(12)
    frames = [_smooth(rng, info) for _ in range(3)]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = private.UID
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.NumberOfFrames = 30, 20, 1, 3
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = encapsulate([CODEC.encode_frame(f, info) for f in frames])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "gwl.dcm"
    ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=True)
    np.save(tmp_path / "expected.npy", np.stack(frames))
    program = f"""
import numpy as np, pydicom
import gateway
ds = pydicom.dcmread({str(path)!r})
assert np.array_equal(ds.pixel_array, np.load({str(tmp_path / 'expected.npy')!r}))
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# --- a second decoder, written from docs/private-codec.md alone ----------------

class _SpecDecoder:
    """Plain-Python decoder of the specification (slow: for small frames)."""

    def __init__(self, data: bytes, start: int) -> None:
        if data[start] != 0:
            raise ValueError("segment must start with 0")
        self.data, self.pos = data, start + 5
        self.code = int.from_bytes(data[start + 1:start + 5], "big")
        self.rng = 0xFFFFFFFF

    def _byte(self) -> int:
        value = self.data[self.pos] if self.pos < len(self.data) else 0
        self.pos += 1
        return value

    def _normalise(self) -> None:
        while self.rng < 1 << 24:
            self.rng <<= 8
            self.code = ((self.code << 8) | self._byte()) & 0xFFFFFFFF

    def bit(self, context: list[int], other: list[int] | None = None) -> int:
        """A bit in `context`; with `other` (model 2's zero flag), at the mean of both contexts'
        probabilities, both adapting."""
        p = (context[0] + context[1]) >> 1 if other is None else (sum(context[:2]) + sum(other[:2])) >> 2
        bound = (self.rng >> 16) * p
        if self.code < bound:
            bit, self.rng = 0, bound
        else:
            bit = 1
            self.code -= bound
            self.rng -= bound
        for c in (context,) if other is None else (context, other):
            _spec_adapt_bit(c, bit)
        self._normalise()
        return bit

    def raw(self, nbits: int) -> int:
        value = 0
        for _ in range(nbits):
            self.rng >>= 1
            bit = int(self.code >= self.rng)
            if bit:
                self.code -= self.rng
            value = (value << 1) | bit
            self._normalise()
        return value

    # Version 2 (docs/private-codec.md section 9.3).
    def token(self, table: list[int], other: list[int] | None = None) -> int:
        """A token with an adaptive frequency table (its last entry is the total); with `other`
        (model 2), with the sum of both tables, both adapting."""
        mixed = table if other is None else [f + g for f, g in zip(table, other)]
        total = mixed[-1]
        r = self.rng // total
        target = min(self.code // r, total - 1)
        s, cum = 0, 0
        while cum + mixed[s] <= target:
            cum += mixed[s]
            s += 1
        self.code -= r * cum
        self.rng = r * mixed[s]
        for t in (table,) if other is None else (table, other):
            _spec_adapt_table(t, s)
        self._normalise()
        return s

    def chunks(self, nbits: int) -> int:
        """`nbits` equiprobable bits, coded in chunks of at most 8."""
        value = 0
        while nbits > 0:
            n = min(nbits, 8)
            nbits -= n
            self.rng >>= n
            x = min(self.code // self.rng, (1 << n) - 1)
            self.code -= x * self.rng
            value = (value << n) | x
            self._normalise()
        return value


def _spec_adapt_bit(context: list[int], bit: int) -> None:
    """Section 4.2's adaptation of a binary context."""
    a, b, n = context
    t = 65535 if bit == 0 else 1
    s = min(9, (n + 2).bit_length() - 1)
    context[0] = a + ((t - a) >> min(s, 6))
    context[1] = b + ((t - b) >> s)
    context[2] = min(n + 1, 511)


def _spec_adapt_table(table: list[int], s: int) -> None:
    """Section 9.5's adaptation of a token table after token `s`."""
    table[s] += 24
    table[-1] += 24
    if table[-1] > 1 << 15:
        table[:-1] = [(f + 1) >> 1 for f in table[:-1]]
        table[-1] = sum(table[:-1])


def _spec_token_base(token: int) -> tuple[int, int]:
    """Smallest value of a version 2 token and its number of raw bits (section 9.4)."""
    if token < 8:
        return token, 0
    k = (token - 8) // 2 + 3
    return (2 + (token - 8) % 2) << (k - 1), k - 1


def _spec_class(a: int) -> int:
    """class(a) as docs/private-codec.md states it."""
    if a == 0:
        return 0
    length = a.bit_length()
    q = 2 * length - 1 + (1 if length >= 2 and (a >> (length - 2)) & 1 else 0)
    return min(q, 27)


def _spec_weight(e: int, version: int) -> int:
    """Weight of a sub-predictor of summed error `e` (sections 5.2 and 9.5)."""
    if version == 1:
        return (1 << 24) // (e + 1)
    shift = max(0, (e + 1).bit_length() - 9)
    return ((1 << 24) // ((e + 1) >> shift)) >> shift


_FINE_USES: list[int] = [0]  # samples whose zero flag or token a model 1 fine class coded
_LEVEL_USES: list[int] = [0]  # samples model 5 decoded as one of their two-level neighbourhood's levels
_FLAT_USES: list[int] = [0]  # samples model 6 decoded as repeating their flat neighbourhood
_GATED_USES: list[int] = [0]  # samples model 7 predicted by the blend, their bias context's gate closed


def _spec_plane(dec: _SpecDecoder, rows: int, cols: int, top: int, version: int = 1,
                guide: list[list[int]] | None = None, keep: list[list[int]] | None = None,
                model: int = 0) -> list[list[int]]:
    """Decode a plane; `guide` gives version 2's guide values, `keep` receives |TE|."""
    wide = model in (4, 5, 6, 7)  # section 9.3, model 4: model 2 with sub-predictors 5 and 6
    levels = model in (5, 6, 7)  # model 5: model 4 with two-level neighbourhoods
    flat = model in (6, 7)  # model 6: model 5 with the flat flag
    gated = model == 7  # model 7: model 6 with the bias correction's gates
    model = 2 if wide else model
    contexts = [[32768, 32768, 0]
                for _ in range(2128 if version == 1 else (140, 2418, 2544)[model] + 72 * levels + 256 * flat)]
    tables = []
    for z in range(56 if model == 0 else 2296):  # section 9.5: a prior around the token class a expects
        a = z if z < 56 else (z - 56) // 40
        centre = max(0, a % 28 - 11)
        table = [1 + (32 >> min(abs(t - centre), 6)) for t in range(38)]
        tables.append(table + [sum(table)])
    sign_base = 56 if model == 0 else 2296
    half_base = 2380 if model == 1 else 2506
    bias = [0] * (112 * 16 if wide else 112)
    gates = [0] * len(bias)
    v = [[0] * cols for _ in range(rows)]
    te = [[0] * cols for _ in range(rows)]
    errs = [[[0] * cols for _ in range(rows)] for _ in range(7 if wide else 5)]

    def at(table, y, x):
        return table[y][x] if 0 <= y and 0 <= x < cols else 0

    for y in range(rows):
        for x in range(cols):
            w, n, nw, ne = _spec_neighbours(v, y, x, cols)
            te_w, te_n, te_nw, te_ne = at(te, y, x - 1), at(te, y - 1, x), at(te, y - 1, x - 1), at(te, y - 1, x + 1)
            s = [8 * (n + w - nw), 8 * n - (((te_w + te_n + te_ne) * 5) >> 4),
                 8 * w - (((te_w + te_n + te_nw) * 5) >> 4), 8 * (w + ne - n), 4 * (n + ne)]
            if wide:
                nn = v[y - 2][x] if y >= 2 else n
                ww = v[y][x - 2] if x >= 2 else w
                s += [8 * (2 * n - nn), 8 * (2 * w - ww)]
            e = [at(t, y - 1, x) + at(t, y, x - 1) + at(t, y - 1, x - 1) + at(t, y - 1, x + 1) for t in errs]
            if wide:  # model 4: each error summed over WW too
                e = [ei + at(t, y, x - 2) for ei, t in zip(e, errs)]
            lo, hi = min(w, n, ne), max(w, n, ne)
            flat_miss = False
            if flat and lo == hi:  # model 6: whether the sample repeats its flat neighbourhood
                near = abs(te_w) + abs(te_n) + abs(te_nw) + abs(te_ne) + (0 if guide is None else 2 * guide[y][x])
                level = w >> max(0, top.bit_length() - 2)
                flat_ctx = 2616 + (min(near.bit_length(), 15) * 4 + min(abs(w - nw).bit_length(), 3)) * 4 + level
                flat_miss = bool(dec.bit(contexts[flat_ctx]))
                if not flat_miss:  # v = W; the updates of 5.5 (pred8 = 8W) but the bias estimate's
                    _FLAT_USES[0] += 1
                    v[y][x], te[y][x] = w, 0
                    if keep is not None:
                        keep[y][x] = 0
                    for t, si in zip(errs, s):
                        t[y][x] = abs(si - 8 * w)
                    continue
            if lo == hi:
                blend8 = 8 * lo
            else:
                weights = [_spec_weight(ei, version) for ei in e]
                total = sum(weights)
                blend8 = (sum(wi * si for wi, si in zip(weights, s)) + total // 2) // total
                blend8 = min(max(blend8, 8 * lo), 8 * hi)
            grad = 4 * (abs(n - nw) + abs(w - nw) + abs(ne - n))
            activity = (abs(te_w) + abs(te_n) + abs(te_nw) + abs(te_ne) + min(e[:5]) + grad) // 2
            q = _spec_class(activity)
            texture = (8 * n > blend8) + 2 * (8 * w > blend8) + 4 * (8 * nw > blend8) + 8 * (8 * ne > blend8)
            bctx = (q >> 2) * 16 + texture
            if wide:  # model 4: split by NN and WW against the blend, and by the slopes' signs
                bctx = 16 * bctx + 4 * ((8 * nn > blend8) + 2 * (8 * ww > blend8)) + (n > nn) + 2 * (w > ww)
            corrected8 = min(max(blend8 + (bias[bctx] >> 4), 8 * lo), 8 * hi)
            pred8 = corrected8
            if gated and gates[bctx] < 0:  # model 7: the gate is closed, the blend predicts alone
                pred8 = blend8
                _GATED_USES[0] += 1
            pred = (pred8 + 4) >> 3
            sigma = 1 if te_w + te_n > 0 else 2 if te_w + te_n < 0 else 0
            two_level = levels and hi - lo >= 8 and all(u in (lo, hi) for u in (w, n, nw, ne))
            pattern = (n == w) + 2 * (nw == w) + 4 * (ne == w)
            spread = min((hi - lo).bit_length() - 4, 7)
            if two_level and dec.bit(contexts[2544 + 8 * spread + pattern]):  # one of the two levels
                value = lo + hi - w if dec.bit(contexts[2608 + pattern]) else w
                _LEVEL_USES[0] += 1
            elif version == 2:
                value = pred
                other = other_table = None
                if model == 0:
                    zq = q if guide is None else _spec_class(activity + 2 * guide[y][x])
                    zq += 28 * (lo == hi)
                    table = zq
                else:  # section 9.3, models 1 and 2
                    g = grad // 4
                    rho = activity - 2 * g + g // 2 + (0 if guide is None else 2 * guide[y][x])
                    z = _spec_class(rho) + 28 * (lo == hi)
                    f = 56 + (z * 10 + _spec_class(g) // 3) * 4 + (pred >> max(0, top.bit_length() - 2))
                    zq, other = (f, z) if contexts[f][2] >= 256 else (z, f)
                    table, other_table = (f, z) if tables[f][-1] >= 4096 else (z, f)
                    _FINE_USES[0] += (zq == f) + (table == f) if model == 1 else 2
                if flat_miss:  # model 6: no zero flag (the residual is not 0)
                    nonzero = 1
                elif model == 2:  # mixed: z and f code together
                    nonzero = dec.bit(contexts[z], contexts[f])
                else:
                    nonzero = dec.bit(contexts[zq])
                    if other is not None:
                        _spec_adapt_bit(contexts[other], nonzero)
                if nonzero:
                    if model == 2:
                        token = dec.token(tables[z], tables[f])
                    else:
                        token = dec.token(tables[table])
                        if other_table is not None:
                            _spec_adapt_table(tables[other_table], token)
                    base, nraw = _spec_token_base(token)
                    if model > 0:
                        if nraw > 0:
                            nraw -= 1
                            base += dec.bit(contexts[half_base + token]) << nraw
                    mag = base + dec.chunks(nraw) + 1
                    negative_ok, positive_ok = mag <= pred, mag <= top - pred
                    assert negative_ok or positive_ok
                    if negative_ok and positive_ok and model < 2:
                        negative = dec.bit(contexts[sign_base + 3 * q + sigma])
                    elif negative_ok and positive_ok:  # model 2: and where pred8 lies between integers
                        phi = pred8 - 8 * pred
                        phi_class = 0 if phi <= -3 else 1 if phi <= -1 else 2 if phi == 0 else 3 if phi <= 2 else 4
                        negative = dec.bit(contexts[2296 + 5 * (3 * (q // 2) + sigma) + phi_class])
                    else:
                        negative = int(negative_ok)
                    value = pred - mag if negative else pred + mag
            elif dec.bit(contexts[q]) == 0:
                value = pred
            else:
                if pred == 0:
                    negative = 0
                elif pred == top:
                    negative = 1
                else:
                    negative = dec.bit(contexts[28 + 3 * q + sigma])
                limit = pred if negative else top - pred
                kmax = limit.bit_length() - 1
                assert kmax >= 0
                k = 0
                while k < kmax and dec.bit(contexts[112 + 18 * q + k]):
                    k += 1
                mag = 1
                if k >= 1:
                    m1 = dec.bit(contexts[616 + 18 * q + k])
                    mag = 2 * mag + m1
                    if k >= 2:
                        mag = 2 * mag + dec.bit(contexts[1120 + 2 * (18 * q + k) + m1])
                        if k >= 3:
                            mag = (mag << (k - 2)) + dec.raw(k - 2)
                assert mag <= limit
                value = pred - mag if negative else pred + mag
            v[y][x] = value
            te[y][x] = pred8 - 8 * value
            if keep is not None:
                keep[y][x] = abs(te[y][x])
            for t, si in zip(errs, s):
                t[y][x] = abs(si - 8 * value)
            if gated:  # model 7: did the correction bring the prediction closer to the value?
                gates[bctx] += abs(blend8 - 8 * value) - abs(corrected8 - 8 * value) - (gates[bctx] >> 5)
            bias[bctx] += (16 * (8 * value - blend8) - bias[bctx]) >> 5
    return v


def _spec_neighbours(v: list[list[int]], y: int, x: int, cols: int) -> tuple[int, int, int, int]:
    """W, N, NW, NE of the sample at (y, x) with section 5.1's edge rules."""
    if y > 0:
        n = v[y - 1][x]
        w = v[y][x - 1] if x > 0 else n
        nw = v[y - 1][x - 1] if x > 0 else n
        ne = v[y - 1][x + 1] if x + 1 < cols else n
        return w, n, nw, ne
    w = v[0][x - 1] if x > 0 else 0
    return w, w, w, w


def _spec_index_plane(dec: _SpecDecoder, rows: int, cols: int, top: int) -> list[list[int]]:
    """Decode an index plane of context model 3 (section 9.7)."""
    contexts = [[32768, 32768, 0] for _ in range(960)]
    table = [1 + (32 >> min(t, 6)) for t in range(38)]
    table.append(sum(table))
    recent: list[int] = []  # the recent escapes, at most 64
    memory: list[int | None] = [None] * min(64 * (top + 1), 1 << 18)  # the escape memory, empty
    v = [[0] * cols for _ in range(rows)]
    for y in range(rows):
        answer = 0
        for x in range(cols):
            w, n, nw, ne = _spec_neighbours(v, y, x, cols)
            pattern = (w == n) + 2 * (w == nw) + 4 * (n == ne) + 8 * (n == nw) + 16 * (w == ne)
            base = (6 * pattern + answer) * 5
            slot = (131 * w + n) % len(memory)
            answer, asked = 5, []
            for j, candidate in enumerate((w, n, ne, nw, memory[slot])):
                if candidate is None or candidate in asked:
                    continue
                asked.append(candidate)
                if dec.bit(contexts[base + j]):
                    answer, value = j, candidate
                    break
            if answer == 5:
                k, nraw = _spec_token_base(dec.token(table))
                k += dec.chunks(nraw)
                value = recent.pop(k) if k < len(recent) else k - len(recent)
                assert value <= top
                recent = [value] + recent[:64 - 1] if len(recent) == 64 else [value] + recent
                memory[slot] = value
            v[y][x] = value
    return v


def _spec_decode(data: bytes, info: FrameInfo, reference: np.ndarray | None = None) -> np.ndarray:
    """Decode a coded-mode stream following docs/private-codec.md step by step."""
    assert data[:4] == b"GWL1" and data[4] in (1, 2) and data[5] == 1
    version, transform, prediction = data[4], data[10], data[11]
    count = {3: 4, 4: 6}.get(transform, info.samples_per_pixel)
    images = {3: 1, 4: 3}.get(transform, count)  # planes of rows x columns (section 9.1)
    descriptors = [struct.unpack_from("<iII", data, 28 + 12 * i) for i in range(count)]
    start = 28 + 12 * count
    model, chained = 0, False
    if version == 2:
        field = struct.unpack_from("<I", data, start)[0]
        stripe_rows, model = field & 0xFFFFFF, field >> 24
        chained, model = bool(model & 0x10), model & ~0x10  # section 9.3: the chained-guides flag
        assert model in (0, 1, 2, 4, 5, 6, 7) or (model == 3 and transform == 3 and not chained)
        stripes = -(-info.rows // stripe_rows)
        lengths = struct.unpack_from(f"<{stripes + 1}I", data, start + 4)
        start += 4 * (stripes + 2)
        ends = list(np.cumsum(lengths) + start)
        assert ends[-1] == len(data)  # the segments fill the stream
        segments = [_SpecDecoder(data[:end], begin) if end > begin else None  # empty: codes nothing
                    for begin, end in zip([start] + ends[:-1], ends)]
    else:
        segments = [_SpecDecoder(data, start)]
    dec = segments[0]
    bitmaps = []
    for offset, maxv, used in descriptors:
        if used:
            ctx = [[32768, 32768, 0] for _ in range(4)]
            prev, bits = 0, []
            for _ in range(maxv + 1):
                bit = dec.bit(ctx[prev])
                bits.append(bit)
                prev = ((prev << 1) | bit) & 3
            bitmaps.append([i for i, b in enumerate(bits) if b])
        else:
            bitmaps.append(None)
    shapes = [(info.rows, info.columns)] * count
    if transform == 3:
        shapes = [(info.rows, info.columns)] + [(1, descriptors[0][1] + 1)] * 3
    planes = []
    order = list(range(count))
    if version == 2 and transform == 3:
        order = [1, 2, 3, 0]  # the colour table lives in the first segment, before the stripes
    coded_planes: dict[int, list[list[int]]] = {}
    for i in order:
        (offset, maxv, used), (rows, cols) = descriptors[i], shapes[i]
        top = used - 1 if used else maxv
        if version == 2 and (i < images or transform == 4):
            coded_planes[i] = []  # an image plane, decoded stripe by stripe below, or a channel map
        elif top == 0:
            coded_planes[i] = [[0] * cols for _ in range(rows)]
        else:
            coded_planes[i] = _spec_plane(dec, rows, cols, top, version, model=2 if model == 3 else model)
    if version == 2:
        for j, stripe in enumerate(segments[1:]):
            first, last = j * stripe_rows, min(info.rows, (j + 1) * stripe_rows)
            # |TE| of each image plane (section 9.3): plane 0's guides the others; chained, each
            # plane's guides the plane after it.
            kept = [[[0] * info.columns for _ in range(last - first)] for _ in range(images)]
            for i in range(images):
                top = descriptors[i][2] - 1 if descriptors[i][2] else descriptors[i][1]
                guide = None if i == 0 else kept[i - 1] if chained else kept[0]
                keep = kept[i] if chained or i == 0 else None
                if top > 0 and model == 3:  # the index plane (section 9.7)
                    coded_planes[i] += _spec_index_plane(stripe, last - first, info.columns, top)
                elif top > 0:
                    coded_planes[i] += _spec_plane(stripe, last - first, info.columns, top, 2,
                                                   guide=guide, keep=keep, model=model)
                else:
                    coded_planes[i] += [[0] * info.columns for _ in range(last - first)]
    for i in range(count):
        (offset, maxv, used), table = descriptors[i], bitmaps[i]
        planes.append(np.array([[offset + (table[c] if table else c) for c in row] for row in coded_planes[i]],
                               np.int64))
    for segment in filter(None, segments):
        assert segment.pos == len(segment.data)  # every segment ends exactly at its end
    if transform == 3:
        samples = np.stack([p[0] for p in planes[1:]], axis=-1)[planes[0]]
    elif transform == 4:  # section 3.1: ranks of R, G, B through the channel maps 3, 4, 5
        assert version == 2 and prediction == 0
        g = planes[0]
        channels = []
        for rank, (offset, maxv, used), table in zip((planes[1] + g, g, planes[2] + g), descriptors[3:],
                                                     bitmaps[3:]):
            assert 0 <= rank.min() and rank.max() < (used if used else maxv + 1)
            channels.append(offset + (np.array(table)[rank] if table else rank))
        samples = np.stack(channels, axis=-1)
    else:
        if prediction == 1:
            planes = [p + b for p, b in zip(planes, tf.forward_colour(reference, transform)
                                             if info.samples_per_pixel == 3 else [reference.astype(np.int64)])]
        if prediction >= 0x10:  # section 9.8: subbands of one lifting level
            assert version == 2 and info.samples_per_pixel == 1 and prediction < 0x80
            samples = _spec_subbands(planes[0].tolist(), prediction & 0x6F)
        elif info.samples_per_pixel == 1:
            samples = planes[0]
        elif transform == 0:
            samples = np.stack(planes, axis=-1)
        elif transform == 1:
            g = planes[0]
            samples = np.stack([planes[1] + g, g, planes[2] + g], axis=-1)
        else:
            y, co, cg = planes
            t = y - (cg >> 1)
            g = cg + t
            b = t - (co >> 1)
            samples = np.stack([b + co, g, b], axis=-1)
    frame = samples.astype(info.dtype).reshape(info.shape)
    assert zlib.crc32(frame.astype(frame.dtype.newbyteorder("<")).tobytes()) == struct.unpack_from("<I", data, 20)[0]
    return frame


def _spec_inverse_line(line: list[int], p: int, four: bool = False, before: bool = False) -> list[int]:
    """Section 9.8, one line: low-pass values first, then high-pass; sample k is high-pass when k + p is odd;
    `four`: the high-pass prediction of four neighbours; `before`: the sample before."""
    n = len(line)
    assert n >= (4 if four else 2)
    lows = [k for k in range(n) if (k + p) % 2 == 0]
    highs = [k for k in range(n) if (k + p) % 2 == 1]
    assert len(lows) == (n - p + 1) // 2
    x = [0] * n
    for value, k in zip(line, lows + highs):
        x[k] = value

    def m(k: int) -> int:
        return -k if k < 0 else 2 * (n - 1) - k if k >= n else k

    for k in lows:
        x[k] -= (x[m(k - 1)] + x[m(k + 1)] + 2) >> 2
    for k in highs:
        if before:
            x[k] += x[m(k - 1)]
        elif four:
            x[k] += (9 * x[m(k - 1)] + 9 * x[m(k + 1)] - x[m(k - 3)] - x[m(k + 3)] + 8) >> 4
        else:
            x[k] += (x[m(k - 1)] + x[m(k + 1)]) >> 1
    return x


def _spec_subbands(c: list[list[int]], flags: int) -> np.ndarray:
    """Section 9.8: the columns' inverse lifting (bit 1), then the rows' (bit 0); bit 5: four neighbours;
    bit 6: the sample before."""
    assert flags & 3 and not (flags & 4 and not flags & 1) and not (flags & 8 and not flags & 2)
    four, before = bool(flags & 0x20), bool(flags & 0x40)
    assert not (four and before)
    if flags & 2:
        columns = [_spec_inverse_line([row[x] for row in c], (flags >> 3) & 1, four, before) for x in range(len(c[0]))]
        c = [[columns[x][y] for x in range(len(c[0]))] for y in range(len(c))]
    if flags & 1:
        c = [_spec_inverse_line(row, (flags >> 2) & 1, four, before) for row in c]
    return np.array(c, np.int64)


@pytest.mark.parametrize("version", private.VERSIONS)
@pytest.mark.parametrize(
    "info, kind",
    [(_info(9, 11, stored=12), "smooth"), (_info(16, 12, stored=16, signed=True), "noise"),
     (_info(8, 9, samples=3, alloc=8, stored=8), "smooth"), (_info(6, 7, samples=3, alloc=8, stored=8), "indexed"),
     (_info(10, 8, stored=16), "sparse"), (_info(1, 60, stored=12), "smooth"),
     (_info(50, 1, stored=10), "smooth"), (_info(5, 5, stored=12), "inter")],
)
def test_specification_decoder_agrees(info: FrameInfo, kind: str, version: int) -> None:
    """The plain decoder written from the specification decodes our streams to the same frames."""
    rng = np.random.default_rng(len(kind))
    reference = None
    if kind == "noise":
        frame = rng.integers(-300, 300, info.shape).astype(info.dtype)
    elif kind == "indexed":
        table = rng.integers(0, 255, (6, 3), endpoint=True)
        y, x = np.mgrid[0:info.rows, 0:info.columns]
        frame = table[(y + x) % 6].astype(info.dtype)
    elif kind == "sparse":
        frame = (rng.integers(0, 9, info.shape) * 4099).astype(info.dtype)
    elif kind == "inter":
        reference = _smooth(rng, info)
        frame = (reference + rng.integers(0, 2, info.shape)).astype(info.dtype)
    else:
        frame = _smooth(rng, info)
    data = private.encode(frame, info, reference, version=version)
    assert data[4] == version and data[5] == private.MODE_CODED
    if kind == "indexed":
        assert data[10] == tf.COLOUR_PALETTE
    if kind == "inter":
        assert not private.is_intra(data)
    assert np.array_equal(_spec_decode(data, info, reference), frame)


@pytest.mark.parametrize("archive", ["gwl_v1", "gwl_v2_model0", "gwl_v2_model1", "gwl_v2_model2", "gwl_v2_model3",
                                     "gwl_v2_model4", "gwl_v2_model5", "gwl_v2_subbands", "gwl_v2_repeat",
                                     "gwl_v2_chained", "gwl_v2_model6", "gwl_v2_model7"])
def test_specification_decoder_reads_golden_streams(archive: str) -> None:
    """The archived streams decode with the plain decoder too (pixels read by pydicom)."""
    from tests.test_private_golden import ARCHIVES, _frames

    data, cases = ARCHIVES[archive]
    for case in cases:
        info, streams, pixels = _frames(data, case)
        previous = None
        for stream, expected in zip(streams, pixels):
            if stream[5] == private.MODE_CODED:
                assert np.array_equal(_spec_decode(stream, info, previous), expected), case["id"]
            previous = expected


def _uses_decoding(data: bytes, info: FrameInfo, frame: np.ndarray, uses: list[int]) -> int:
    """Decode `data` with the codec and with the specification's decoder, each to `frame`; return how
    many samples the specification's decoder took the path `uses` counts for."""
    assert np.array_equal(private.decode(data, info), frame)
    before = uses[0]
    assert np.array_equal(_spec_decode(data, info), frame)
    return uses[0] - before


@pytest.mark.parametrize("model", [1, 2, 4, 5, 6, 7])
@pytest.mark.parametrize("info", [_info(64, 64, stored=12), _info(40, 40, samples=3, alloc=8, stored=8)])
def test_specification_decoder_follows_fine_classes(monkeypatch: pytest.MonkeyPatch, info: FrameInfo,
                                                    model: int) -> None:
    """Frames large enough for the fine classes of context models 1, 2, 4, 5, 6 and 7 to take over from the
    coarse ones."""
    rng = np.random.default_rng(11)
    frame = _smooth(rng, info)
    noise = rng.integers(0, 6 if info.bits_allocated == 8 else 40, info.shape)
    frame = np.clip(frame.astype(np.int64) + noise, 0, (1 << info.bits_stored) - 1).astype(info.dtype)
    if model != private.MODEL:
        monkeypatch.setattr(private, "MODEL", model)
    data = private.encode(frame, info, version=2)
    chained = private.CHAINED if data[10] in (tf.COLOUR_SUBTRACT_GREEN, tf.COLOUR_YCOCG_R) else 0
    assert _stripe_field(data, info.samples_per_pixel)[1] == model | chained
    assert _uses_decoding(data, info, frame, _FINE_USES) > 100  # fine classes coded many samples


def test_two_level_neighbourhoods_code_burnt_in_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """Model 5 codes the samples of a two-level neighbourhood (text burnt into a real ultrasound image,
    read by pydicom) as one of the levels: the specification's decoder takes that path for most of the
    text's edges, and the stream is smaller than model 4's."""
    from pydicom.data import get_testdata_file

    pixels = pydicom.dcmread(get_testdata_file("examples_palette.dcm")).pixel_array
    frame = np.ascontiguousarray(pixels[50:90, 290:370])
    info = _info(40, 80, alloc=8, stored=8)
    for model in (5, 6, 7):  # model 6 is model 5 with the flat flag, model 7 model 6 with the gates
        monkeypatch.setattr(private, "MODEL", model)
        data = private.encode(frame, info, version=2)
        assert _stripe_field(data, 1)[1] == model
        assert _uses_decoding(data, info, frame, _LEVEL_USES) > 200
    monkeypatch.setattr(private, "MODEL", 4)
    assert len(data) < 0.95 * len(private.encode(frame, info, version=2))


def _flat_frame() -> tuple[FrameInfo, np.ndarray]:
    """A real CT slice (read by pydicom) on a field of padding: the slice's own air and the padding
    are flat neighbourhoods, the slice's edges and a few stray samples in the padding break them."""
    from pydicom.data import get_testdata_file

    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array
    frame = np.full((96, 112), -2000, np.int16)
    frame[16:80, 24:88] = ct[32:96, 32:96]
    frame[4, 5::17] = -1990  # stray samples: a flat neighbourhood whose sample is not W
    frame[90, 3::11] = -1024
    return _info(96, 112, stored=16, signed=True), frame


def test_flat_neighbourhoods_code_one_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    """Models 6 and 7 code a sample of a flat neighbourhood (W = N = NE) that repeats it with one
    decision and nothing else: the specification's decoder takes that path for the padding around a
    real CT slice, decodes the stray samples there through the residual, and the stream is no larger
    than model 5's."""
    info, frame = _flat_frame()
    data = private.encode(frame, info, version=2)
    assert _stripe_field(data, 1)[1] == private.MODEL == 7
    assert _uses_decoding(data, info, frame, _FLAT_USES) > 0.5 * frame.size
    monkeypatch.setattr(private, "MODEL", 5)
    assert len(data) <= len(private.encode(frame, info, version=2))


def test_bias_gates_close_where_the_correction_does_not_help(monkeypatch: pytest.MonkeyPatch) -> None:
    """Model 7 predicts with the blend alone in the bias contexts whose correction has been taking the
    prediction away from the values: on a real ultrasound image (read by pydicom) the
    specification's decoder takes that path for many samples, and the stream is smaller than
    model 6's, which corrects every sample."""
    from pydicom.data import get_testdata_file

    frame = np.ascontiguousarray(pydicom.dcmread(get_testdata_file("examples_palette.dcm")).pixel_array)
    info = _info(*frame.shape, alloc=8, stored=8)
    data = private.encode(frame, info, version=2)
    assert _stripe_field(data, 1)[1] == private.MODEL == 7
    assert _uses_decoding(data, info, frame, _GATED_USES) > 0.01 * frame.size
    monkeypatch.setattr(private, "MODEL", 6)
    assert len(data) < 0.99 * len(private.encode(frame, info, version=2))


def test_unknown_context_model_is_corrupt() -> None:
    info = _info(12, 10, stored=12)
    data = bytearray(private.encode(_smooth(np.random.default_rng(2), info), info, version=2))
    start = private._HEADER.size + private._PLANE.size
    rows, model = _stripe_field(bytes(data), 1)
    assert (rows, model) == (12, 7)
    struct.pack_into("<I", data, start, rows | 3 << 24)
    with pytest.raises(CorruptCodestreamError, match="context model"):
        private.decode(bytes(data), info)
    for model in (8, 3 | private.CHAINED, 8 | private.CHAINED, 0x20 | 7):
        struct.pack_into("<I", data, start, rows | model << 24)
        with pytest.raises(CorruptCodestreamError, match="context model"):
            private.decode(bytes(data), info)
    # The flag names no other plane to guide a grey frame's plane: the same pixels.
    struct.pack_into("<I", data, start, rows | (7 | private.CHAINED) << 24)
    assert np.array_equal(private.decode(bytes(data), info), _smooth(np.random.default_rng(2), info))


@pytest.mark.parametrize("transform", [tf.COLOUR_SUBTRACT_GREEN, tf.COLOUR_YCOCG_R])
def test_colour_differences_chain_their_guides(monkeypatch: pytest.MonkeyPatch, transform: int) -> None:
    """After subtract green and YCoCg-R the third plane is guided by the second's errors (the
    CHAINED flag): a photograph decoded from a JPEG (chroma planes that share their edges) codes
    smaller than with plane 0 guiding both, in four stripes, and the specification's decoder agrees."""
    import imagecodecs

    rng = np.random.default_rng(5)
    info = _info(96, 96, samples=3, alloc=8, stored=8)
    y, x = np.mgrid[0:info.rows, 0:info.columns] / info.rows
    scene = np.stack([np.sin(6 * x + c) * np.cos(5 * y - c) for c in (0, 1, 2)], axis=-1)
    scene = np.clip(128 + 90 * scene + rng.normal(0, 12, scene.shape), 0, 255).astype(np.uint8)
    frame = imagecodecs.jpeg8_decode(imagecodecs.jpeg8_encode(scene, level=90, subsampling="420"))
    monkeypatch.setattr(private._tf, "choose_colour", lambda _: transform)
    _striped(monkeypatch, info.frame_bytes // 4)
    data = private.encode(frame, info, version=2)
    assert data[10] == transform and _stripe_rows(data, 3) == 24
    assert _stripe_field(data, 3)[1] == private.MODEL | private.CHAINED
    assert np.array_equal(private.decode(data, info), frame)
    assert np.array_equal(_spec_decode(data, info), frame)
    monkeypatch.setattr(private, "CHAIN_GUIDES", False)
    first = private.encode(frame, info, version=2)
    assert _stripe_field(first, 3)[1] == private.MODEL
    assert np.array_equal(private.decode(first, info), frame)
    assert len(data) < len(first)


# --- version 2: stripes, threads, the segment table ---------------------------------

def _striped(monkeypatch: pytest.MonkeyPatch, stripe_bytes: int) -> None:
    """Let small frames be cut into stripes (the encoder cuts frames of 1 MiB and more)."""
    monkeypatch.setattr(private, "STRIPE_BYTES", stripe_bytes)


def _stripe_field(data: bytes, planes: int) -> tuple[int, int]:
    """(stripe rows, context model) of a version 2 stream."""
    field = struct.unpack_from("<I", data, private._HEADER.size + private._PLANE.size * planes)[0]
    return field & 0xFFFFFF, field >> 24


def _stripe_rows(data: bytes, planes: int) -> int:
    return _stripe_field(data, planes)[0]


@pytest.mark.parametrize("info, kind", [
    (_info(13, 9, stored=12), "smooth"), (_info(20, 16, samples=3, alloc=8, stored=8), "smooth"),
    (_info(9, 8, samples=3, alloc=8, stored=8), "indexed"), (_info(10, 6, stored=16), "sparse"),
    (_info(32, 40, samples=3, alloc=8, stored=8), "ranks"),
])
def test_specification_decoder_agrees_on_stripes(monkeypatch: pytest.MonkeyPatch, info: FrameInfo,
                                                 kind: str) -> None:
    _striped(monkeypatch, 48)
    rng = np.random.default_rng(3)
    if kind == "indexed":
        table = rng.integers(0, 255, (5, 3), endpoint=True)
        y, x = np.mgrid[0:info.rows, 0:info.columns]
        frame = table[(y * 2 + x) % 5].astype(info.dtype)
    elif kind == "sparse":
        frame = (rng.integers(0, 9, info.shape) * 4099).astype(info.dtype)
    elif kind == "ranks":
        frame = _quantised_colour(info, 3)
    else:
        frame = _smooth(rng, info)
    data = private.encode(frame, info, version=2)
    planes = {tf.COLOUR_PALETTE: 4, tf.COLOUR_RANKS: 6}.get(data[10], info.samples_per_pixel)
    assert (data[10] == tf.COLOUR_RANKS) == (kind == "ranks")
    assert data[5] == private.MODE_CODED and _stripe_rows(data, planes) < info.rows
    if kind == "indexed":
        assert data[10] == tf.COLOUR_PALETTE
    assert np.array_equal(private.decode(data, info), frame)
    assert np.array_equal(_spec_decode(data, info), frame)


def test_large_frames_are_striped_and_threads_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame of several MiB is cut into stripes; one thread or several give the same stream."""
    info = _info(1024, 1536, stored=12)
    frame = _smooth(np.random.default_rng(6), info)
    data = private.encode(frame, info, version=2)
    assert _stripe_rows(data, 1) == 256  # 3 MiB: one stripe per 512 KiB, at most four, 1024 / 4 rows each
    monkeypatch.setattr(private, "STRIPE_THREADS", 1)
    assert private.encode(frame, info, version=2) == data
    assert np.array_equal(private.decode(data, info), frame)


def _code_in_child(frame: np.ndarray, info: FrameInfo, expected: bytes) -> None:
    data = private.encode(frame, info, version=2)
    os._exit(0 if data == expected and np.array_equal(private.decode(data, info), frame) else 1)


def test_a_forked_process_codes_stripes_in_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process forked after the stripe threads started (as a bulk fork server's workers are) starts
    threads of its own instead of waiting forever on its parent's pool, which came without them."""
    monkeypatch.setattr(private, "STRIPE_THREADS", 2)
    info = _info(1024, 1024, stored=12)
    frame = _smooth(np.random.default_rng(9), info)
    data = private.encode(frame, info, version=2)
    assert _stripe_rows(data, 1) < info.rows and private._pool is not None  # the pool is running
    child = multiprocessing.get_context("fork").Process(target=_code_in_child, args=(frame, info, data))
    child.start()
    child.join(120)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail("the forked process did not finish coding its stripes")
    assert child.exitcode == 0


def test_stripes_cost_little() -> None:
    info = _info(256, 256, stored=12)
    frame = _smooth(np.random.default_rng(2), info)
    whole = len(private.encode(frame, info, version=2))
    old = private.STRIPE_BYTES
    try:
        private.STRIPE_BYTES = info.frame_bytes // 4
        striped = private.encode(frame, info, version=2)
    finally:
        private.STRIPE_BYTES = old
    assert _stripe_rows(striped, 1) == 64
    assert whole < len(striped) < whole * 1.03
    assert np.array_equal(private.decode(striped, info), frame)


@pytest.mark.parametrize("stripe_rows", [0, 41, 2**24 - 1, 1 << 24 | 41, 2**32 - 1])
def test_hostile_stripe_rows_are_rejected(stripe_rows: int) -> None:
    info = _info(40, 40, stored=12)
    data = bytearray(private.encode(_smooth(np.random.default_rng(4), info), info, version=2))
    struct.pack_into("<I", data, private._HEADER.size + private._PLANE.size, stripe_rows)
    with pytest.raises(CorruptCodestreamError, match="per stripe|context model"):
        private.decode(bytes(data), info)


def test_too_many_stripes_are_rejected() -> None:
    info = _info(private.MAX_STRIPES + 1, 2, stored=12)
    data = bytearray(private.encode(_smooth(np.random.default_rng(4), info), info, version=2))
    struct.pack_into("<I", data, private._HEADER.size + private._PLANE.size, 1)
    with pytest.raises(CorruptCodestreamError, match="out of limits"):
        private.decode(bytes(data), info)


def test_segment_lengths_must_fill_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    _striped(monkeypatch, 400)
    info = _info(40, 40, stored=12)
    frame = _smooth(np.random.default_rng(4), info)
    data = private.encode(frame, info, version=2)
    table = private._HEADER.size + private._PLANE.size + 4
    count = 1 + -(-40 // _stripe_rows(data, 1))
    lengths = list(struct.unpack_from(f"<{count}I", data, table))
    assert count == 5 and all(lengths[1:])
    for i, change in [(1, 1), (1, -1), (2, 2**31), (0, 5), (4, -3)]:
        mutated = bytearray(data)
        struct.pack_into("<I", mutated, table + 4 * i, (lengths[i] + change) % 2**32)
        with pytest.raises(CorruptCodestreamError):
            private.decode(bytes(mutated), info)
    # Two stripes swapped: each decodes, but the frame is not the same: the CRC tells.
    segments, position = [], table + 4 * count
    for length in lengths:
        segments.append(data[position:position + length])
        position += length
    swapped = data[:table + 4 * count] + b"".join([segments[0], segments[2], segments[1]] + segments[3:])
    with pytest.raises(CorruptCodestreamError):
        private.decode(swapped, info)


@pytest.mark.parametrize("info, frames", reference_params())
def test_version_2_round_trips(info: FrameInfo, frames: list[np.ndarray]) -> None:
    """Version 2 (written on request) round trips every reference image."""
    streams = private.encode_frames(frames, info, version=2)
    assert all(s[4] == 2 for s in streams)
    assert all(np.array_equal(a, b) for a, b in zip(private.decode_frames(streams, info), frames))


def test_unknown_version_is_refused() -> None:
    info = _info(8, 8, stored=12)
    frame = _smooth(np.random.default_rng(1), info)
    with pytest.raises(ValueError, match="version"):
        private.encode(frame, info, version=3)
    data = bytearray(private.encode(frame, info, version=2))
    data[4] = 3
    with pytest.raises(CorruptCodestreamError, match="version"):
        private.decode(bytes(data), info)



def test_a_frame_of_another_image_never_stands_in_for_a_reference() -> None:
    """References are found among the frames decoded last, by CRC-32: an instance whose first frame is
    inter-coded and names the CRC of another instance's frame must not decode from that instance's pixels."""
    from pydicom.uid import ExplicitVRLittleEndian

    from gateway.pipeline import recompress
    from tests.images import make_dataset

    info = _info(30, 20, stored=12)
    other = np.random.default_rng(7).integers(0, 4096, (30, 20)).astype(np.uint16)  # another patient's image
    stream = private.encode(other, info, version=2)
    crc = struct.unpack_from("<I", stream, 20)[0]
    # "The previous frame plus nothing": one plane of maximum 0, the frame's CRC and its reference's that one.
    inter = private._HEADER.pack(b"GWL1", 1, 1, 1, 16, 12, 0, 0, 1, 30, 20, crc, crc) + private._PLANE.pack(0, 0, 0)
    inter += b"\0" * 5
    assert np.array_equal(private.decode(stream, info), other)  # now the last frame decoded in this thread
    assert np.array_equal(private.decode(inter, info), other), "a frame of the same image may refer to it"
    first = recompress(make_dataset(info, [stream], private.UID), ExplicitVRLittleEndian)
    assert first.recompressed
    crafted = recompress(make_dataset(info, [inter], private.UID), ExplicitVRLittleEndian)
    assert not crafted.recompressed and "not available" in crafted.reason
