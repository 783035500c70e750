"""JPEG 2000 lossless codec: tables against T.800, kernels against plain-numpy
references, round trips whose truth is a decoder we did not write
(pylibjpeg-openjpeg), pydicom's JPEG 2000 test files, typed refusals and
the registry / pydicom plugin wiring."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from gateway.codecs import get_codec
from gateway.codecs.base import FrameInfo
from gateway.codecs.htj2k import codec as htj2k
from gateway.codecs.jpeg2000 import codec as j2k_codec
from gateway.codecs.jpeg2000 import codestream as cs
from gateway.codecs.jpeg2000 import dwt, mq, t1, tier2
from gateway.codecs.jpeg2000.codec import decode, encode, levels_for
from gateway.errors import (
    CorruptCodestreamError,
    UnsupportedCodestreamError,
    UnsupportedImageError,
)
from gateway.pipeline.pixels import frame_info, high_bits_used, iter_frames
from tests.corpus import corpus_params
from tests.images import make_dataset, reference_params

openjpeg = pytest.importorskip("openjpeg", reason="pylibjpeg-openjpeg is not installed")

CODEC = get_codec(JPEG2000Lossless)


def _supported(info: FrameInfo) -> bool:
    return CODEC.supports(info) is None


def _openjpeg(stream: bytes, info: FrameInfo) -> np.ndarray:
    """OpenJPEG's decoding of `stream`, as a frame of `info` (it returns the stream's own sign)."""
    return np.asarray(openjpeg.decode(stream)).reshape(info.shape).astype(info.dtype)


# ---------------------------------------------------------------- tables of T.800


def test_mq_table_is_t800_table_c2() -> None:
    # (Qe, NMPS, NLPS, SWITCH) of a sample of states, as printed in T.800 Table C.2.
    rows = {0: (0x5601, 1, 1, 1), 5: (0x0221, 38, 33, 0), 6: (0x5601, 7, 6, 1), 13: (0x1601, 29, 21, 0),
            14: (0x5601, 15, 14, 1), 29: (0x1101, 30, 27, 0), 38: (0x0111, 39, 36, 0),
            45: (0x0001, 45, 43, 0), 46: (0x5601, 46, 46, 0)}
    for state, row in rows.items():
        assert (mq.QE[state], mq.NMPS[state], mq.NLPS[state], mq.SWITCH[state]) == row
    assert len(mq.QE) == len(mq.NMPS) == len(mq.NLPS) == len(mq.SWITCH) == 47
    assert set(np.flatnonzero(mq.SWITCH)) == {0, 6, 14}
    # Qe decreases along the MPS chain from state 14 to 45 (the "fast" states 0-13 join it).
    chain = [14]
    while mq.NMPS[chain[-1]] != chain[-1]:
        chain.append(int(mq.NMPS[chain[-1]]))
    assert chain[-1] == 45 and all(mq.QE[a] >= mq.QE[b] for a, b in zip(chain, chain[1:]))


def test_initial_contexts_are_t800_table_d7() -> None:
    states = np.ones(mq.N_CONTEXTS, np.int64)
    mq.reset_contexts(states)
    expected = np.zeros(19, np.int64)
    expected[[0, 17, 18]] = [4, 3, 46]
    # Each context holds Qe << 8 | 2 * index + MPS.
    assert np.array_equal((states & 0xFF) >> 1, expected) and not (states & 1).any()  # index, MPS
    assert np.array_equal(states >> 8, mq.QE[expected])


def test_packed_context_transitions_follow_table_c2() -> None:
    for state in range(94):
        index, mps = state >> 1, state & 1
        assert mq.S_QE[state] == mq.QE[index]
        assert mq.S_NMPS[state] == 2 * mq.NMPS[index] + mps
        assert mq.S_NLPS[state] == 2 * mq.NLPS[index] + (1 - mps if mq.SWITCH[index] else mps)
        # The words contexts hold: Qe above the state, and the words of the states after an MPS and an LPS.
        assert mq.W_STATE[state] == (mq.QE[index] << 8) | state
        assert mq.W_NEXT[2 * state] == mq.W_STATE[mq.S_NMPS[state]]
        assert mq.W_NEXT[2 * state + 1] == mq.W_STATE[mq.S_NLPS[state]]


def _pattern(h: int = 0, v: int = 0, d: int = 0) -> int:
    bits = [t1.F_W, t1.F_E][:h] + [t1.F_N, t1.F_S][:v] + [t1.F_NW, t1.F_NE, t1.F_SW, t1.F_SE][:d]
    return sum(bits)


@pytest.mark.parametrize(("h", "v", "d", "ll_lh", "hl", "hh"), [
    # T.800 Table D.1 rows: neighbour counts and the context of each orientation.
    (2, 0, 0, 8, 4, 2), (1, 1, 0, 7, 7, 2), (1, 0, 1, 6, 3, 4), (1, 0, 0, 5, 3, 1),
    (0, 2, 0, 4, 8, 2), (0, 1, 0, 3, 5, 1), (0, 0, 2, 2, 2, 6), (0, 0, 1, 1, 1, 3),
    (0, 0, 0, 0, 0, 0), (0, 0, 3, 2, 2, 8), (0, 1, 2, 3, 6, 7), (2, 2, 4, 8, 8, 8), (1, 0, 2, 6, 3, 7),
])
def test_zero_coding_contexts_are_t800_table_d1(h: int, v: int, d: int, ll_lh: int, hl: int, hh: int) -> None:
    pattern = _pattern(h, v, d)
    assert t1.ZC[t1.LL, pattern] == ll_lh and t1.ZC[t1.LH, pattern] == ll_lh
    assert t1.ZC[t1.HL, pattern] == hl
    assert t1.ZC[t1.HH, pattern] == hh


@pytest.mark.parametrize(("h", "v", "context", "xor"), [
    # T.800 Table D.3: horizontal and vertical contributions -> context and XOR bit.
    (1, 1, 13, 0), (1, 0, 12, 0), (1, -1, 11, 0), (0, 1, 10, 0), (0, 0, 9, 0),
    (0, -1, 10, 1), (-1, 1, 11, 1), (-1, 0, 12, 1), (-1, -1, 13, 1),
])
def test_sign_contexts_are_t800_table_d3(h: int, v: int, context: int, xor: int) -> None:
    def side(value: int, first: int, second: int) -> int:
        # significance bits (N, W, E, S at 0..3), sign bits at 4..7: one neighbour per sign, or none.
        return {1: 1 << first, -1: (1 << first) | (1 << (first + 4)), 0: 0}[value]

    index = side(h, 1, 2) | side(v, 0, 3)
    assert (t1.SC_CONTEXT[index], t1.SC_XOR[index]) == (context, xor)
    # A positive and a negative neighbour cancel (W positive, E negative).
    both = (1 << 1) | (1 << 2) | (1 << 6) | side(v, 0, 3)
    assert t1.SC_CONTEXT[both] == t1.SC_CONTEXT[side(0, 1, 2) | side(v, 0, 3)]


# ---------------------------------------------------------------- kernels


def _reference_53(x: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain-numpy 1D forward 5/3 (T.800 F.4.8.2): samples at canvas ``start..``, returns (low, high)."""
    n = len(x)
    ext = {i: int(v) for i, v in enumerate(x)}

    def get(values: dict, i: int) -> int:
        while i < 0 or i >= n:
            i = -i if i < 0 else 2 * (n - 1) - i
        return values[i]

    if n == 1:
        return (x.copy(), np.array([], x.dtype)) if start % 2 == 0 else (np.array([], x.dtype), x * 2)
    y = dict(ext)
    for i in range(n):
        if (start + i) % 2:
            y[i] = ext[i] - (get(ext, i - 1) + get(ext, i + 1)) // 2
    out = dict(y)
    for i in range(n):
        if (start + i) % 2 == 0:
            out[i] = y[i] + (get(y, i - 1) + get(y, i + 1) + 2) // 4
    low = [out[i] for i in range(n) if (start + i) % 2 == 0]
    high = [out[i] for i in range(n) if (start + i) % 2]
    return np.array(low, np.int64), np.array(high, np.int64)


@pytest.mark.parametrize(("n", "start"), [(1, 0), (1, 1), (2, 0), (2, 1), (7, 0), (7, 3), (16, 1), (33, 2)])
def test_dwt_rows_match_a_plain_reference(n: int, start: int) -> None:
    rng = np.random.default_rng(n * 10 + start)
    row = rng.integers(-5000, 5000, (1, n)).astype(np.int32)
    work = row.copy()
    dwt.forward(work, 1, start, 0)
    low, high = _reference_53(row[0].astype(np.int64), start)
    assert np.array_equal(work[0], np.concatenate([low, high]))


@pytest.mark.parametrize(("rows", "cols", "x0", "y0", "levels"),
                         [(17, 13, 0, 0, 3), (17, 13, 3, 5, 4), (1, 9, 1, 0, 2), (9, 1, 0, 1, 3), (64, 64, 7, 9, 6)])
def test_dwt_inverts_exactly(rows: int, cols: int, x0: int, y0: int, levels: int) -> None:
    rng = np.random.default_rng(rows + cols)
    a = rng.integers(-40000, 40000, (rows, cols)).astype(np.int32)
    b = a.copy()
    dwt.forward(b, levels, x0, y0)
    dwt.inverse(b, levels, x0, y0)
    assert np.array_equal(a, b)


# Shapes large enough that their first levels are shared between two threads, odd sizes and offsets.
_SPLIT_SHAPES = [(300, 260, 0, 0, 5), (317, 229, 3, 5, 4), (263, 301, 1, 0, 1), (1, 70000, 0, 0, 3),
                 (70000, 1, 0, 1, 2), (257, 513, 0, 0, 0)]


@pytest.mark.parametrize(("rows", "cols", "x0", "y0", "levels"), _SPLIT_SHAPES)
def test_dwt_on_two_threads_equals_one_thread(rows: int, cols: int, x0: int, y0: int, levels: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    assert rows * cols >= dwt.SPLIT_SAMPLES
    rng = np.random.default_rng(rows * cols + levels)
    src = rng.integers(0, 4096, (rows, cols)).astype(np.uint16)
    one, two = np.empty((rows, cols), np.int32), np.empty((rows, cols), np.int32)
    bands_one, bands_two = np.zeros((max(levels, 1), 4), np.int64), np.zeros((max(levels, 1), 4), np.int64)
    with ThreadPoolExecutor(2) as pool:
        seen_one = dwt.forward(one, levels, x0, y0, src, 2048, bands_one)
        seen_two = dwt.forward(two, levels, x0, y0, src, 2048, bands_two, pool)
        assert seen_one == seen_two and np.array_equal(one, two) and np.array_equal(bands_one, bands_two)
        reference = src.astype(np.int32) - 2048
        dwt.forward(reference, levels, x0, y0)  # in place, no fused shift
        assert np.array_equal(one, reference)
        if not levels:
            return
        finish = (2048, 0, 4095, 0, 4095)
        out_one, out_two = np.empty((rows, cols), np.uint16), np.empty((rows, cols), np.uint16)
        assert dwt.inverse(one, levels, x0, y0, out_one, finish) == 0
        assert dwt.inverse(two, levels, x0, y0, out_two, finish, pool) == 0
    assert np.array_equal(out_one, src) and np.array_equal(out_two, src)


def test_dwt_range_fold_covers_the_samples_only() -> None:
    """The range fold of the forward wavelet sees the frame's samples, not the coarser levels' LL coefficients,
    also when two threads share the levels: 3 x 3 squares of 0 and 4095 make LL coefficients beyond 12 bits."""
    from concurrent.futures import ThreadPoolExecutor

    rows, cols = 600, 520  # two levels large enough to share
    assert (rows // 2) * (cols // 2) >= dwt.SPLIT_SAMPLES
    y, x = np.mgrid[0:rows, 0:cols]
    src = np.where((x // 3 + y // 3) % 2 == 0, 0, 4095).astype(np.uint16)
    bands = np.zeros((5, 4), np.int64)
    with ThreadPoolExecutor(2) as pool:
        for executor in (None, pool):
            seen = dwt.forward(np.empty((rows, cols), np.int32), 5, 0, 0, src, 2048, bands, executor)
            assert seen == 2047  # every sample a 12-bit value once shifted, 0 and 4095 both present
    assert int(bands[0, 0]).bit_length() > 12  # the level-1 LL coefficients the second level reads


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize(("rows", "cols", "x0", "y0", "levels"), [(17, 13, 3, 5, 4), (1, 9, 1, 0, 2), *_SPLIT_SHAPES])
def test_dwt_folds_band_magnitudes_and_sample_range(rows: int, cols: int, x0: int, y0: int, levels: int,
                                                    pool: bool) -> None:
    """The magnitudes the forward wavelet folds per sub-band equal numpy's maxima over the sub-band rectangles."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(rows + cols + levels)
    src = rng.integers(-3000, 3000, (rows, cols)).astype(np.int16)
    src[rows // 2, cols // 3] = 4095  # one sample beyond 12 bits
    a = np.empty((rows, cols), np.int32)
    bands = np.zeros((max(levels, 1), 4), np.int64)
    with ThreadPoolExecutor(2) as executor:
        seen = dwt.forward(a, levels, x0, y0, src, 0, bands, executor if pool else None)
    assert seen >> 12 == 0 and seen >> 11 == 1  # every sample a 13-bit value, not every one a 12-bit value
    for level in range(1, levels + 1):
        for orient in (1, 2, 3):
            x, y, w, h = dwt.band_rect(x0, y0, cols, rows, level, orient)
            region = a[y:y + h, x:x + w]
            expected = int(np.abs(region.astype(np.int64)).max()) if region.size else 0
            assert int(bands[level - 1, orient]).bit_length() == expected.bit_length()
    x, y, w, h = dwt.band_rect(x0, y0, cols, rows, levels, 0) if levels else (0, 0, cols, rows)
    region = a[y:y + h, x:x + w]
    expected = int(np.abs(region.astype(np.int64)).max()) if region.size else 0
    assert int(bands[max(levels, 1) - 1, 0]).bit_length() == expected.bit_length()


def test_tag_tree_round_trip() -> None:
    """Tag-tree kernels: a 5 x 3 tree coded at rising thresholds (as over layers) reads back bit-exactly."""
    rng = np.random.default_rng(3)
    values = rng.integers(0, 6, 5 * 3)
    widths, starts = np.zeros(64, dtype=np.int64), np.zeros(65, dtype=np.int64)
    levels = tier2.tree_levels(5, 3, widths, starts)
    assert levels == 4 and starts[levels] == 15 + 6 + 2 + 1
    tree = np.full(starts[levels], 1 << 40, dtype=np.int64)
    tree[:15] = values
    tier2.tree_build(tree, 0, widths, starts, levels)
    assert tree[-1] == values.min()
    out = np.zeros(256, dtype=np.uint8)
    state = np.array([0, 0, 0, 8], dtype=np.int64)
    lows, known = np.zeros(len(tree), dtype=np.int64), np.zeros(len(tree), dtype=np.uint8)
    for threshold in range(1, 8):
        for j in range(15):
            tier2.tree_encode(out, state, tree, lows, known, 0, widths, starts, levels, j % 5, j // 5, threshold)
    tier2.finish_header(out, state)
    data = out[:state[0]]
    reader = np.array([0, len(data), 0, 0, 0, 0], dtype=np.int64)
    back = np.full(len(tree), 1 << 40, dtype=np.int64)
    back_lows = np.zeros(len(tree), dtype=np.int64)
    for threshold in range(1, 8):
        for j in range(15):
            below = tier2.tree_decode(data, reader, back, back_lows, 0, widths, starts, levels, j % 5, j // 5,
                                      threshold)
            assert below == (values[j] < threshold)
    assert back[:15].tolist() == values.tolist()
    assert reader[5] == 0  # never read past the end


def test_levels_from_image_size() -> None:
    assert levels_for(512, 512) == 5
    assert levels_for(1, 97) == 0
    assert levels_for(20, 24) == 4
    assert levels_for(3000, 2000) == 5


# ---------------------------------------------------------------- round trips, checked by OpenJPEG


@pytest.mark.parametrize(("info", "frames"), reference_params(_supported))
def test_reference_images_round_trip(info: FrameInfo, frames: list[np.ndarray]) -> None:
    for frame in frames:
        stream = CODEC.encode_frame(frame, info)
        assert np.array_equal(_openjpeg(stream, info), frame)
        assert np.array_equal(CODEC.decode_frame(stream, info), frame)


@pytest.mark.parametrize("row", corpus_params(limit_per_series=2))
def test_corpus_round_trip(row: dict) -> None:
    ds = pydicom.dcmread(row["file"])
    info = frame_info(ds)
    if not _supported(info):
        pytest.skip(CODEC.supports(info))
    for number, frame in enumerate(iter_frames(ds)):
        if number >= 3:
            break
        if high_bits_used(frame, info):
            pytest.skip("bits above Bits Stored hold data (passed through by the pipeline)")
        stream = CODEC.encode_frame(frame, info)
        assert np.array_equal(_openjpeg(stream, info), frame)
        assert np.array_equal(CODEC.decode_frame(stream, info), frame)


@pytest.mark.parametrize("levels", [0, 1, 3, 8])
def test_levels_option(levels: int) -> None:
    info = FrameInfo(70, 45, bits_stored=14, pixel_representation=1)
    frame = np.random.default_rng(levels).integers(-8192, 8191, info.shape, endpoint=True).astype(np.int16)
    stream = encode(frame, info, levels=levels)
    assert np.array_equal(_openjpeg(stream, info), frame)
    assert np.array_equal(decode(stream, info), frame)


def test_two_threads_give_the_same_stream() -> None:
    info = FrameInfo(300, 260, bits_stored=16)
    frame = np.random.default_rng(9).integers(0, 65535, info.shape, endpoint=True).astype(np.uint16)
    assert encode(frame, info, parallel=True) == encode(frame, info, parallel=False)


def test_stream_layout() -> None:
    info = FrameInfo(40, 30, 3, 8, 8, 0, "RGB")
    frame = np.random.default_rng(1).integers(0, 255, info.shape, endpoint=True).astype(np.uint8)
    stream = encode(frame, info)
    parsed = cs.parse(stream)
    assert stream[:4] == b"\xff\x4f\xff\x51" and stream[-2:] == b"\xff\xd9"
    assert parsed.size.components == (cs.Component(8, False),) * 3
    assert parsed.header.cod.mct == 1 and parsed.header.cod.layers == 1
    assert parsed.header.cod.style.reversible and parsed.header.qcd.style == 0
    assert (parsed.header.cod.style.xcb, parsed.header.cod.style.ycb) == (6, 6)


# ---------------------------------------------------------------- other encoders' streams


def _testdata_frames(name: str) -> tuple[FrameInfo, list[bytes], pydicom.Dataset]:
    ds = pydicom.dcmread(get_testdata_file(name))
    n = int(ds.get("NumberOfFrames", 1) or 1)
    return frame_info(ds), list(generate_frames(ds.PixelData, number_of_frames=n)), ds


def test_mr_small_jp2klossless_decodes_to_the_original() -> None:
    # A decoder without the mid-point reconstruction rule gets a quarter of these pixels wrong.
    info, (stream,), _ = _testdata_frames("MR_small_jp2klossless.dcm")
    original = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    assert np.array_equal(decode(stream, info), original)


@pytest.mark.parametrize("name", ["J2K_pixelrep_mismatch.dcm", "examples_jpeg2k.dcm", "693_J2KI.dcm",
                                  "GDCMJ2K_TextGBR.dcm"])
def test_pydicom_files_match_openjpeg(name: str) -> None:
    info, streams, ds = _testdata_frames(name)
    ds.pixel_array_options(decoding_plugin="pylibjpeg")
    expected = ds.pixel_array.reshape((len(streams), *info.shape))
    for stream, frame in zip(streams, expected):
        assert np.array_equal(decode(stream, info), frame)


def test_irreversible_stream_is_refused_with_a_typed_error() -> None:
    info, (stream,), _ = _testdata_frames("JPEG2000.dcm")
    with pytest.raises(UnsupportedCodestreamError, match="9/7"):
        decode(stream, info)
    # Both families see it: a decoding failure, and an image we pass through.
    assert issubclass(UnsupportedCodestreamError, CorruptCodestreamError)
    assert issubclass(UnsupportedCodestreamError, UnsupportedImageError)


# ---------------------------------------------------------------- refusals


def test_encoder_refusals() -> None:
    with pytest.raises(UnsupportedImageError, match="Bits Stored"):
        encode(np.full((4, 4), 4096, np.uint16), FrameInfo(4, 4, bits_stored=12))
    assert "YBR_FULL_422" in CODEC.supports(FrameInfo(4, 4, 3, 8, 8, 0, "YBR_FULL_422"))
    assert "Bits Allocated" in CODEC.supports(FrameInfo(4, 4, 1, 32, 32))
    assert "signed" in CODEC.supports(FrameInfo(4, 4, 3, 8, 8, 1, "RGB"))


_RANGE_CASES = [FrameInfo(37, 29, bits_stored=12), FrameInfo(31, 23, bits_stored=13, pixel_representation=1),
                FrameInfo(300, 260, 1, 8, 7), FrameInfo(29, 33, 3, 8, 7, 0, "RGB"),
                FrameInfo(1100, 1000, bits_stored=10), FrameInfo(600, 900, 3, 8, 6, 0, "RGB")]


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("info", _RANGE_CASES, ids=lambda i: f"{i.rows}x{i.columns}x{i.samples_per_pixel}_"
                         f"{i.bits_stored}{'s' if i.signed else 'u'}")
def test_values_beyond_bits_stored_are_refused_before_coding(info: FrameInfo, parallel: bool,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.codecs.htj2k import codec as htj2k
    from gateway.codecs.jpeg2000 import codec as j2k

    low, high = info.value_range
    frame = np.random.default_rng(info.rows).integers(low, high, info.shape, endpoint=True).astype(info.dtype)
    frame.flat[0], frame.flat[-1] = low, high
    for codec in (j2k.encode, htj2k.encode):  # the extremes of the range pass
        assert np.array_equal(htj2k.decode(codec(frame, info, parallel=parallel), info), frame)

    def no_coding(*args, **kwargs):
        raise AssertionError("code-blocks coded for a refused frame")

    monkeypatch.setattr(j2k, "_encode_blocks", no_coding)
    beyond = [high + 1] + ([low - 1] if info.signed else [])
    for value in beyond:
        for index in (0, frame.size // 2 + 1, frame.size - 1):
            bad = frame.copy()
            bad.flat[index] = value
            for codec in (j2k.encode, htj2k.encode):
                with pytest.raises(UnsupportedImageError, match="Bits Stored"):
                    codec(bad, info, parallel=parallel)


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("info", [FrameInfo(300, 260, bits_stored=16), FrameInfo(37, 29, 3, 16, 16, 0, "RGB"),
                                  FrameInfo(300, 261, bits_stored=16, pixel_representation=1)],
                         ids=["mono", "rgb", "signed"])
def test_decoded_values_beyond_bits_stored_are_corrupt(info: FrameInfo, parallel: bool) -> None:
    """A 16-bit stream declared as 12 Bits Stored: values beyond 12 bits are refused, those within decode."""
    low, high = info.value_range
    rng = np.random.default_rng(4)
    frame = rng.integers(low >> 4, high >> 4, info.shape, endpoint=True).astype(info.dtype)
    narrow = dataclasses.replace(info, bits_stored=12)
    assert np.array_equal(decode(encode(frame, info), narrow, parallel=parallel), frame)
    frame.flat[frame.size // 2] = high
    with pytest.raises(CorruptCodestreamError, match="range of 12 Bits Stored"):
        decode(encode(frame, info), narrow, parallel=parallel)


@pytest.mark.parametrize("levels", [0, 1, 5])
@pytest.mark.parametrize("info", [FrameInfo(300, 261, 1, 8, 8), FrameInfo(257, 263, bits_stored=16,
                                                                         pixel_representation=1),
                                  FrameInfo(261, 255, 3, 8, 8, 0, "RGB"), FrameInfo(259, 257, 3, 8, 8, 0, "YBR_FULL"),
                                  FrameInfo(301, 257, bits_stored=11)],
                         ids=["u8", "s16", "rgb", "ybr_full", "u11"])
def test_two_threads_round_trip_checked_by_openjpeg(info: FrameInfo, levels: int) -> None:
    low, high = info.value_range
    rng = np.random.default_rng(levels)
    frame = rng.integers(low, high, info.shape, endpoint=True).astype(info.dtype)
    stream = encode(frame, info, levels=levels, parallel=True)
    assert stream == encode(frame, info, levels=levels, parallel=False)
    assert np.array_equal(_openjpeg(stream, info), frame)
    for parallel in (False, True):
        decoded = decode(stream, info, parallel=parallel)
        assert decoded.dtype == info.dtype and np.array_equal(decoded, frame)


def test_decoder_checks_the_frame_description() -> None:
    info = FrameInfo(16, 12, bits_stored=12)
    stream = encode(np.arange(192, dtype=np.uint16).reshape(16, 12), info)
    with pytest.raises(CorruptCodestreamError, match="16 x 12"):
        decode(stream, FrameInfo(12, 16, bits_stored=12))
    with pytest.raises(CorruptCodestreamError, match="components"):
        decode(stream, FrameInfo(16, 12, 3, 16, 12, 0, "RGB"))
    with pytest.raises(CorruptCodestreamError, match="Bits Allocated"):
        decode(stream, FrameInfo(16, 12, 1, 8, 8))
    for cut in (0, 3, 20, len(stream) // 2, len(stream) - 1):
        with pytest.raises(CorruptCodestreamError):
            decode(stream[:cut], info)


# ---------------------------------------------------------------- plans of tiles (caches)


def _clear_plans() -> None:
    j2k_codec._decode_plans.clear()
    j2k_codec._encode_plans.clear()


def _plan_cases() -> list[tuple[FrameInfo, dict, np.ndarray]]:
    """Frames whose plans differ: by rectangle, and on one rectangle by levels, exponents, colour and coder."""
    infos = [(FrameInfo(64, 48, bits_stored=12), {}), (FrameInfo(48, 64, bits_stored=12), {}),
             (FrameInfo(64, 48, bits_stored=12), {"levels": 1}),
             (FrameInfo(64, 48, bits_stored=16, pixel_representation=1), {}),
             (FrameInfo(64, 48, 3, 8, 8, 0, "RGB"), {}),
             (FrameInfo(64, 48, bits_stored=12), {"ht": True}),
             (FrameInfo(64, 48, bits_stored=12), {"ht": True, "rpcl": True})]
    rng = np.random.default_rng(21)
    cases = []
    for info, options in infos:
        low, high = info.value_range
        cases.append((info, options, rng.integers(low, high, info.shape, endpoint=True).astype(info.dtype)))
    return cases


def _plan_encode(frame: np.ndarray, info: FrameInfo, options: dict) -> bytes:
    if options.get("ht"):
        return htj2k.encode(frame, info, rpcl=options.get("rpcl", False))
    return encode(frame, info, levels=options.get("levels"))


def _plan_decode(stream: bytes, info: FrameInfo, options: dict, parallel: bool = False) -> np.ndarray:
    return (htj2k.decode if options.get("ht") else decode)(stream, info, parallel=parallel)


def test_interleaved_geometries_and_codings_each_get_their_own_plan() -> None:
    """Frames of several geometries and codings, interleaved: each stream is the one a cold cache gives,
    OpenJPEG decodes it to the frame, and so do we, round after round."""
    cases = _plan_cases()
    cold = []
    for info, options, frame in cases:
        _clear_plans()
        cold.append(_plan_encode(frame, info, options))
    for stream, (info, _, frame) in zip(cold, cases):
        assert np.array_equal(_openjpeg(stream, info), frame)
    _clear_plans()
    for _ in range(3):
        for stream, (info, options, frame) in zip(cold, cases):
            assert _plan_encode(frame, info, options) == stream
            assert np.array_equal(_plan_decode(stream, info, options), frame)
    assert len(j2k_codec._decode_plans) == len(cases)  # one per geometry and coding, none shared wrongly
    # What the frames used is what a fresh derivation gives: nothing wrote to the shared arrays.
    stream = cs.parse(cold[0])
    coding = cs.tile_coding(stream, stream.tiles[0])
    rect = stream.size.tile_rect(0)
    shared = j2k_codec._decode_plans.get(("JPEG 2000", 0, rect, coding))
    limits = tuple(tuple(q.guard + e - 1 for e in q.exponents) for q in coding.quantizations)
    fresh = tier2.tile_plan(rect, coding.styles, 1, coding.coding.progression, coding.poc, limits)
    for name in ("resolutions", "precincts", "pbands", "blocks"):
        assert np.array_equal(getattr(shared.layout, name), getattr(fresh.layout, name))
    assert np.array_equal(shared.order, fresh.order) and np.array_equal(shared.limits, fresh.limits)


def test_plan_caches_stay_bounded() -> None:
    _clear_plans()
    rng = np.random.default_rng(22)
    for n in range(j2k_codec.PLAN_ENTRIES + 9):
        info = FrameInfo(8 + n, 9, bits_stored=10)
        frame = rng.integers(0, 1023, info.shape, endpoint=True).astype(info.dtype)
        assert np.array_equal(decode(encode(frame, info), info), frame)
        for cache in (j2k_codec._decode_plans, j2k_codec._encode_plans):
            assert len(cache) <= j2k_codec.PLAN_ENTRIES and cache.nbytes <= j2k_codec.PLAN_BYTES
    assert len(j2k_codec._decode_plans) == j2k_codec.PLAN_ENTRIES


def test_plan_cache_evicts_the_least_recently_used_and_keeps_within_its_bytes() -> None:
    cache = tier2.PlanCache(3, 400)
    for key in "abc":
        cache.put(key, key.upper(), 10)
    assert cache.get("a") == "A"  # now the most recently used
    cache.put("d", "D", 10)
    assert cache.get("b") is None and [cache.get(k) for k in "acd"] == ["A", "C", "D"]
    cache.put("big", "X", 101)  # more than a quarter of the budget: not kept
    assert cache.get("big") is None and len(cache) == 3
    cache.put("e", "E", 100)
    cache.put("f", "F", 100)
    cache.put("g", "G", 100)
    cache.put("h", "H", 100)
    assert cache.nbytes <= 400 and len(cache) <= 3 and cache.get("h") == "H"
    cache.put("h", "H2", 50)  # replacing a value counts its bytes once
    assert cache.get("h") == "H2" and cache.nbytes == sum(v[1] for v in cache._items.values())


def test_two_threads_decoding_interleaved_geometries() -> None:
    cases = _plan_cases()
    streams = [_plan_encode(frame, info, options) for info, options, frame in cases]
    _clear_plans()

    def work(offset: int) -> bool:
        ok = True
        for k in range(60):
            i = (k + offset) % len(cases)
            info, options, frame = cases[i]
            ok &= np.array_equal(_plan_decode(streams[i], info, options), frame)
        return ok

    with ThreadPoolExecutor(max_workers=2) as pool:
        assert all(pool.map(work, [0, 3]))


# ---------------------------------------------------------------- registry and pydicom


def test_registry_names() -> None:
    assert get_codec("jpeg2000") is CODEC and get_codec("1.2.840.10008.1.2.4.90") is CODEC
    assert (CODEC.name, CODEC.keyword, CODEC.private) == ("jpeg2000", "JPEG2000Lossless", False)


def test_pydicom_plugins() -> None:
    from gateway.plugins import register

    register()  # our decoders for standard syntaxes: a program asks for them

    info = FrameInfo(33, 20, 1, 16, 12, 1)
    frames = [np.random.default_rng(k).integers(-2048, 2047, info.shape, endpoint=True).astype(np.int16)
              for k in range(3)]
    ds = make_dataset(info, frames, ExplicitVRLittleEndian)
    ds.compress(JPEG2000Lossless, encoding_plugin="gateway")
    assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
    ds.pixel_array_options(decoding_plugin="pylibjpeg")
    assert np.array_equal(ds.pixel_array, np.stack(frames))
    ds.pixel_array_options(decoding_plugin="gateway")
    assert np.array_equal(ds.pixel_array, np.stack(frames))


def test_pipeline_config_keyword() -> None:
    from gateway.codecs import resolve_uid

    assert resolve_uid("JPEG2000Lossless") == "1.2.840.10008.1.2.4.90"


def test_pydicom_plugin_decodes_reversible_jpeg2000_91() -> None:
    from gateway.plugins import register

    register()  # our decoders for standard syntaxes: a program asks for them

    ds = pydicom.dcmread(get_testdata_file("693_J2KI.dcm"))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"
    ds.pixel_array_options(decoding_plugin="pylibjpeg")
    expected = ds.pixel_array.copy()
    ds = pydicom.dcmread(get_testdata_file("693_J2KI.dcm"))
    ds.pixel_array_options(decoding_plugin="gateway")
    assert np.array_equal(ds.pixel_array, expected)


def test_pydicom_plugin_refuses_irreversible_jpeg2000_91() -> None:
    from gateway.plugins import register

    register()  # our decoders for standard syntaxes: a program asks for them

    ds = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
    ds.pixel_array_options(decoding_plugin="gateway")
    with pytest.raises(Exception, match="9/7"):
        ds.pixel_array  # noqa: B018
