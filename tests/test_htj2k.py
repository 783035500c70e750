"""HTJ2K lossless codec: the code tables against T.814's rules, the block coder on
hard blocks, round trips whose truth is a decoder we did not write
(pylibjpeg-openjpeg), the .201 / .202 codestream syntax, typed refusals and the
pydicom plugin in a plain program."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import HTJ2KLossless, HTJ2KLosslessRPCL

from gateway.codecs import get_codec
from gateway.codecs.base import FrameInfo
from gateway.codecs.htj2k import codec as htc
from gateway.codecs.htj2k import ht, tables
from gateway.codecs.jpeg2000 import codestream as cs
from gateway.codecs.jpeg2000 import decode as j2k_decode
from gateway.codecs.jpeg2000 import encode as j2k_encode
from gateway.errors import CorruptCodestreamError, UnsupportedCodestreamError, UnsupportedImageError
from gateway.pipeline.pixels import frame_info, high_bits_used, iter_frames
from tests.corpus import corpus_params
from tests.images import make_dataset

openjpeg = pytest.importorskip("openjpeg", reason="pylibjpeg-openjpeg is not installed")

REPO = Path(__file__).resolve().parent.parent
CODECS = [get_codec(HTJ2KLossless), get_codec(HTJ2KLosslessRPCL)]


def _openjpeg(stream: bytes, info: FrameInfo) -> np.ndarray:
    """OpenJPEG's decoding of `stream` as a frame of `info`."""
    return np.asarray(openjpeg.decode(stream)).reshape(info.shape).astype(info.dtype)


def _frame(info: FrameInfo, seed: int, smooth: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low, high = info.value_range
    if not smooth:
        return rng.integers(low, high, info.shape, endpoint=True).astype(info.dtype)
    y, x = np.mgrid[0:info.rows, 0:info.columns]
    base = (np.sin(y / 7.0) + np.cos(x / 5.0) + 2.0) / 4.0 * (high - low) + low
    base = base + rng.integers(-(high - low) // 40 - 1, (high - low) // 40 + 1, base.shape)
    base[info.rows // 2:info.rows // 2 + 3] = low
    if info.samples_per_pixel == 3:
        base = np.stack([base, base[::-1], base[:, ::-1]], -1)
    return np.clip(base, low, high).astype(info.dtype)


# ---------------------------------------------------------------- tables of T.814 Annex C


@pytest.mark.parametrize("initial", [True, False], ids=["initial-row", "other-rows"])
def test_cxtvlc_code_of_each_context_is_complete_and_prefix_free(initial: bool) -> None:
    rows = tables.entries(initial)
    for context in range(8):
        mine = [r for r in rows if r[0] == context]
        assert sum(2.0 ** -r[6] for r in mine) == 1.0, context  # Kraft: a complete code
        for i, a in enumerate(mine):
            assert 1 <= a[6] <= 7 and a[5] < 1 << a[6]
            for b in mine[i + 1:]:
                shortest = min(a[6], b[6])
                assert (a[5] ^ b[5]) & ((1 << shortest) - 1), (context, a, b)
    tables.decode_table(initial)  # raises on overlap


@pytest.mark.parametrize("initial", [True, False], ids=["initial-row", "other-rows"])
def test_cxtvlc_entries_obey_the_rules_of_t814(initial: bool) -> None:
    rows = tables.entries(initial)
    for context, rho, u_off, e_k, e_1, _cwd, _length in rows:
        assert e_1 & ~e_k == 0 and e_k & ~rho == 0, (context, rho)  # e_1 within e_k within rho
        if u_off == 0:
            assert e_k == 0 and e_1 == 0
    for context in range(8):
        for rho in range(16):
            if context == 0 and rho == 0:
                # In context 0 an insignificant quad is coded by the MEL, never by the VLC.
                assert not [r for r in rows if r[0] == 0 and r[1] == 0]
                continue
            mine = [r for r in rows if r[0] == context and r[1] == rho]
            assert len([r for r in mine if r[2] == 0]) == 1, (context, rho)
            # Every pattern of samples reaching the bound (a non-empty subset of rho) has a codeword.
            emb = rho
            while emb:
                assert any(r[2] == 1 and emb & r[3] == r[4] for r in mine), (context, rho, emb)
                emb = (emb - 1) & rho


def test_cxtvlc_rows_as_printed_in_t814() -> None:
    # A sample of rows: (c_q, rho, u_off, e_k, e_1, codeword, length), Table C.1 and C.2.
    first = set(tables.entries(True))
    assert {(0, 1, 0, 0, 0, 0x06, 4), (0, 2, 0, 0, 0, 0x00, 3), (1, 0, 0, 0, 0, 0x00, 2),
            (3, 0xF, 1, 0xF, 1, 0x1C, 5), (7, 0xF, 1, 0xF, 4, 0x08, 4), (7, 0xF, 1, 0xF, 1, 0x00, 4)} <= first
    other = set(tables.entries(False))
    assert {(0, 1, 0, 0, 0, 0x00, 3), (1, 0, 0, 0, 0, 0x00, 1), (4, 0, 0, 0, 0, 0x00, 1),
            (7, 0xF, 0, 0, 0, 0x00, 3), (7, 0xF, 1, 0xF, 4, 0x1C, 5)} <= other
    assert len(first) == 444 and len(other) == 358


def test_uvlc_is_t814_table_c3() -> None:
    # (prefix bits as sent, suffix bits, suffix, extension bits, extension), bits sent lowest first.
    assert tables.uvlc_code(1) == (0b1, 1, 0, 0, 0, 0)
    assert tables.uvlc_code(2) == (0b10, 2, 0, 0, 0, 0)
    assert tables.uvlc_code(3) == (0b100, 3, 0, 1, 0, 0)
    assert tables.uvlc_code(4) == (0b100, 3, 1, 1, 0, 0)
    assert tables.uvlc_code(5) == (0, 3, 0, 5, 0, 0)
    assert tables.uvlc_code(32) == (0, 3, 27, 5, 0, 0)
    assert tables.uvlc_code(33) == (0, 3, 28, 5, 0, 4)
    assert tables.uvlc_code(74) == (0, 3, 29, 5, 10, 4)
    for u in range(33, 75):  # suffix 28..31 carries the extension: u = 33 + (suffix - 28) + 4 * ext
        _, _, suffix, _, ext, _ = tables.uvlc_code(u)
        assert 33 + (suffix - 28) + 4 * ext == u
    with pytest.raises(ValueError):
        tables.uvlc_code(0)


class _Bits:
    """Bits of an integer, lowest first, read one by one (as the VLC reader sees them)."""

    def __init__(self, value: int) -> None:
        self.value, self.read = value, 0

    def take(self, n: int) -> int:
        v = (self.value >> self.read) & ((1 << n) - 1)
        self.read += n
        return v


def _c3_prefix(bits: _Bits) -> int:
    """Table C.3's prefixes as sent: 1 -> 1, 01 -> 2, 001 -> 3 (3..4), 000 -> 5 (5..)."""
    for value in (1, 2, 3):
        if bits.take(1):
            return value
    return 5


def test_uvlc_pair_table_sends_prefixes_then_suffixes_then_extensions() -> None:
    # Read back with Table C.3 as printed: u = prefix value + suffix (1 bit after 3, 5 bits after 5), and
    # a 5-bit suffix of 28..31 is followed by 4 extension bits: u = 33 + (suffix - 28) + 4 * extension.
    table = tables.uvlc_pair_table()
    for u0 in range(75):
        for u1 in range(75):
            bits = _Bits(int(table[u0 * 75 + u1]) & 0xFFFFFFFF)
            prefixes = [_c3_prefix(bits) if u else 0 for u in (u0, u1)]
            values = [p + bits.take({3: 1, 5: 5}.get(p, 0)) for p in prefixes]
            values = [v + 4 * bits.take(4) if v >= 33 else v for v in values]
            assert values == [u0, u1] and bits.read == int(table[u0 * 75 + u1]) >> 32, (u0, u1)


def test_uvlc_prefix_table_reads_table_c3_prefixes() -> None:
    table = tables.uvlc_prefix_table()
    for mode in range(4):
        for six in range(64):
            bits = _Bits(six)
            pre0 = _c3_prefix(bits) if mode & 1 else 0
            pre1 = _c3_prefix(bits) if mode & 2 else 0
            assert int(table[mode << 6 | six]) == pre0 | pre1 << 4 | bits.read << 8, (mode, six)


# ---------------------------------------------------------------- the block coder


def _block_round_trip(block: np.ndarray) -> bytes:
    h, w = block.shape
    coeffs = block.reshape(1, h, w).astype(np.int32)
    rows = np.array([[0, 0, 0, h, w, 1]], dtype=np.int64)
    out = np.zeros(h * w * 4 + 256, dtype=np.uint8)
    offsets = np.array([0, out.size], dtype=np.int64)
    results = np.zeros((1, 3), dtype=np.int64)
    assert ht.encode_blocks(coeffs, rows, out, offsets, results) == 0
    length = int(results[0, 0])
    back = np.zeros_like(coeffs)
    if length:
        blocks = np.array([[0, 0, 0, h, w, 1, 1, 0x40, 0, 1]], dtype=np.int64)
        segments = np.array([[0, length, 1]], dtype=np.int64)
        data = np.concatenate([out[:length], np.zeros(1, np.uint8)])
        assert ht.decode_blocks(back, blocks, segments, data) == 0
    assert np.array_equal(back[0], block)
    return out[:length].tobytes()


@pytest.mark.parametrize(("h", "w"), [(1, 1), (1, 64), (64, 1), (2, 3), (3, 2), (5, 7), (64, 64), (32, 128),
                                      (16, 256), (4, 1024)])
def test_block_round_trip_shapes(h: int, w: int) -> None:
    rng = np.random.default_rng(h * 1000 + w)
    for scale in (1, 3, 200, 1 << 16, 1 << 20):
        block = rng.integers(-scale, scale, (h, w), endpoint=True)
        block[rng.random((h, w)) < 0.4] = 0
        _block_round_trip(block)


def test_block_patterns_that_stress_mel_and_uvlc() -> None:
    rng = np.random.default_rng(7)
    zero = np.zeros((64, 64), dtype=np.int64)
    assert _block_round_trip(zero) == b""  # an all-zero block has no codeword at all
    single = zero.copy()
    single[63, 63] = -1
    _block_round_trip(single)
    # Long zero runs then bursts (MEL runs of every length), huge exponents next to small ones (U-VLC, kappa).
    block = zero.copy()
    block[::9, ::5] = rng.integers(-(1 << 21), 1 << 21, block[::9, ::5].shape)
    block[0, :] = rng.integers(-(1 << 21), 1 << 21, 64)
    block[1, ::2] = 1
    _block_round_trip(block)
    # Bytes of all ones in every stream: magnitudes 2**k - 1 and runs of significant quads.
    _block_round_trip(np.full((64, 64), 255, dtype=np.int64))
    _block_round_trip(np.full((64, 64), -(1 << 20) + 1, dtype=np.int64))
    for seed in range(20):
        r = np.random.default_rng(seed)
        block = r.integers(-(1 << r.integers(1, 22)), 1 << r.integers(1, 22), (64, 64))
        block[r.random((64, 64)) < r.random()] = 0
        segment = _block_round_trip(block)
        scup = (segment[-1] << 4) | (segment[-2] & 0xF)
        assert 2 <= scup <= min(len(segment), 4079)


@pytest.mark.parametrize("zero_planes", [1, 2, 5, 9])
def test_block_decoded_above_zero_planes(zero_planes: int) -> None:
    """A cleanup pass above `zero_planes` uncoded planes gives each magnitude mu the midpoint of what remains,
    ``(2 mu + 1) << (zero_planes - 1)``; a bound that no longer fits 30 planes is refused."""
    rng = np.random.default_rng(zero_planes)
    block = rng.integers(-300, 300, (64, 64), endpoint=True)
    block[rng.random((64, 64)) < 0.4] = 0
    block[40:, :] = 0
    segment = _block_round_trip(block)
    blocks = np.array([[0, 0, 0, 64, 64, 1, 1 + zero_planes, 0x40, 0, 1]], dtype=np.int64)
    segments = np.array([[0, len(segment), 1]], dtype=np.int64)
    data = np.frombuffer(segment + b"\0", dtype=np.uint8)
    back = np.zeros((1, 64, 64), np.int32)
    assert ht.decode_blocks(back, blocks, segments, data) == 0
    magnitude = (2 * np.abs(block) + 1) << (zero_planes - 1)
    assert np.array_equal(back[0], np.where(block == 0, 0, np.sign(block) * magnitude))
    blocks[0, 6] = 1 + 30  # every significant quad's bound (at least 1) above 30 - 30 planes
    assert ht.decode_blocks(np.zeros((1, 64, 64), np.int32), blocks, segments, data) == -3


def test_decoder_checks_scup() -> None:
    segment = _block_round_trip(np.arange(64).reshape(8, 8) - 32)
    assert len(segment) < 256
    blocks = np.array([[0, 0, 0, 8, 8, 1, 1, 0x40, 0, 1]], dtype=np.int64)
    # Too short for Scup; Scup 1 (below 2); 4095 (above 4079); 256 (beyond the segment).
    for bad in (segment[:1], segment[:-2] + b"\x01\x00", segment[:-2] + b"\xff\xff", segment[:-2] + b"\x00\x10"):
        data = np.frombuffer(bad + b"\0", dtype=np.uint8)
        segments = np.array([[0, len(bad), 1]], dtype=np.int64)
        assert ht.decode_blocks(np.zeros((1, 8, 8), np.int32), blocks, segments, data) == -1, bad[-2:]


def test_bit_deposit_and_extract() -> None:
    """PDEP / PEXT as the kernels use them (one instruction with BMI2, else a loop): bits of a value spread into
    the set bits of a mask, lowest first, and gathered back."""
    from numba import njit

    @njit
    def both(v: int, mask: int) -> tuple[int, int]:
        return ht._pdep(v, mask), ht._pext(v, mask)

    # 0b101 into bits 1, 3 and 4 of the mask: 1 at bit 1, 0 at bit 3, 1 at bit 4.
    assert ht._deposit_bits(0b101, 0b11010) == 0b10010
    assert ht._extract_bits(0b10010, 0b11010) == 0b101
    assert ht._deposit_bits(0x1234, 0xFFFF0000) == 0x12340000
    assert ht._extract_bits(0x7FFF_0001_8000_FFFF, 0x0001_0001_0001_0001) == 0b1101  # lanes 0, 2, 3 odd
    assert both(0b101, 0b11010)[0] == 0b10010
    assert both(0b10010, 0b11010)[1] == 0b101
    rng = np.random.default_rng(5)
    for _ in range(2000):
        v, mask = (int(x) for x in rng.integers(0, 1 << 62, 2))
        mask &= int(rng.integers(0, 1 << 62))
        deposited, extracted = both(v, mask)
        assert deposited == ht._deposit_bits(v, mask)
        assert extracted == ht._extract_bits(v, mask)
        assert ht._extract_bits(deposited, mask) == v & ((1 << bin(mask).count("1")) - 1)


def _stress_blocks() -> list[np.ndarray]:
    """Blocks whose quads take every MagSgn path: bounds up to 14 (PDEP / PEXT in 16-bit lanes), above 14 and
    up to 28, above 28; partial quads at the right and bottom edges."""
    rng = np.random.default_rng(11)
    blocks = []
    for bits in (2, 8, 13, 14, 15, 20, 29):
        for shape in ((64, 64), (7, 9)):
            block = rng.integers(-(1 << bits) + 1, 1 << bits, shape)
            block[rng.random(shape) < 0.3] = 0
            blocks.append(block)
    return blocks


_WITHOUT_BMI2 = """
import numpy as np
from gateway.codecs.htj2k import ht
from tests.test_htj2k import _block_round_trip, _stress_blocks
assert not ht._BMI2
for block in _stress_blocks():
    print(_block_round_trip(block).hex())
"""


def test_block_coder_without_bmi2_writes_the_same_bytes() -> None:
    """The kernels compiled for a processor without BMI2 (the bit loops instead of PDEP / PEXT) code every
    block to the same bytes, and decode them back."""
    import os

    ours = [_block_round_trip(block).hex() for block in _stress_blocks()]
    env = dict(os.environ, NUMBA_CPU_NAME="generic", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", _WITHOUT_BMI2], cwd=REPO, capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ours


# ---------------------------------------------------------------- codec round trips


def _cases() -> list:
    infos = [
        FrameInfo(1, 1, bits_stored=12),
        FrameInfo(1, 37, 1, 8, 8),
        FrameInfo(41, 1, bits_stored=16),
        FrameInfo(2, 2, 1, 8, 2),
        FrameInfo(67, 45, bits_stored=12),
        FrameInfo(64, 64, bits_stored=16),
        FrameInfo(129, 65, bits_stored=16, pixel_representation=1),
        FrameInfo(31, 29, bits_stored=13, pixel_representation=1),
        FrameInfo(30, 30, 1, 8, 8, 1),
        FrameInfo(21, 17, 1, 16, 2),
        FrameInfo(37, 23, 3, 8, 8, 0, "RGB"),
        FrameInfo(33, 18, 3, 16, 16, 0, "RGB"),
        FrameInfo(19, 26, 3, 8, 8, 0, "YBR_FULL"),
        FrameInfo(300, 260, bits_stored=16),
    ]
    params = []
    for k, info in enumerate(infos):
        ident = f"{info.rows}x{info.columns}_{info.bits_allocated}_{info.bits_stored}_{info.samples_per_pixel}" \
                f"_{'s' if info.signed else 'u'}_{info.photometric_interpretation}"
        params.append(pytest.param(info, _frame(info, k), id=ident))
    noise = FrameInfo(50, 41, bits_stored=16)
    params.append(pytest.param(noise, _frame(noise, 99, smooth=False), id="noise_16"))
    extreme = FrameInfo(40, 40, bits_stored=16, pixel_representation=1)
    checker = np.where(np.indices(extreme.shape).sum(0) % 2, 32767, -32768).astype(np.int16)
    params.append(pytest.param(extreme, checker, id="checkerboard_16s"))
    return params


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@pytest.mark.parametrize(("info", "frame"), _cases())
def test_round_trip_checked_by_openjpeg(codec, info: FrameInfo, frame: np.ndarray) -> None:
    stream = codec.encode_frame(frame, info)
    assert np.array_equal(_openjpeg(stream, info), frame)
    assert np.array_equal(codec.decode_frame(stream, info), frame)


@pytest.mark.parametrize("levels", [0, 1, 3, 8])
def test_levels_option(levels: int) -> None:
    info = FrameInfo(70, 45, bits_stored=14, pixel_representation=1)
    frame = _frame(info, levels, smooth=False)
    stream = htc.encode(frame, info, levels=levels)
    assert np.array_equal(_openjpeg(stream, info), frame)
    assert np.array_equal(htc.decode(stream, info), frame)


def test_two_threads_give_the_same_stream() -> None:
    info = FrameInfo(300, 260, bits_stored=16)
    frame = _frame(info, 5)
    single = htc.encode(frame, info, parallel=False)
    assert htc.encode(frame, info, parallel=True) == single
    assert np.array_equal(htc.decode(single, info, parallel=True), frame)


@pytest.mark.parametrize("row", corpus_params(limit_per_series=2))
def test_corpus_round_trip(row: dict) -> None:
    ds = pydicom.dcmread(row["file"])
    info = frame_info(ds)
    codec = CODECS[1]
    if codec.supports(info):
        pytest.skip(codec.supports(info))
    for number, frame in enumerate(iter_frames(ds)):
        if number >= 2:
            break
        if high_bits_used(frame, info):
            pytest.skip("bits above Bits Stored hold data (passed through by the pipeline)")
        stream = codec.encode_frame(frame, info)
        assert np.array_equal(_openjpeg(stream, info), frame)
        assert np.array_equal(codec.decode_frame(stream, info), frame)


# ---------------------------------------------------------------- codestream syntax


def _main_header(stream: bytes) -> dict[int, bytes]:
    segments, pos = {}, 4 + int.from_bytes(stream[4:6], "big")
    segments[cs.SIZ] = stream[6:4 + int.from_bytes(stream[4:6], "big")]
    while stream[pos:pos + 2] != b"\xff\x90":
        marker, length = int.from_bytes(stream[pos:pos + 2], "big"), int.from_bytes(stream[pos + 2:pos + 4], "big")
        segments[marker] = stream[pos + 4:pos + 2 + length]
        pos += 2 + length
    return segments


@pytest.mark.parametrize(("rows", "columns"), [(512, 512), (3000, 2000), (4097, 33), (10, 5000)])
def test_rpcl_syntax(rows: int, columns: int) -> None:
    info = FrameInfo(rows, columns, 1, 8, 8)
    frame = _frame(info, 3)
    stream = CODECS[1].encode_frame(frame, info)
    header = _main_header(stream)
    stream_info = cs.parse(stream)
    coding = stream_info.header.cod
    assert coding.progression == cs.RPCL and coding.style.block_style == 0x40
    assert (coding.style.xcb, coding.style.ycb) == (6, 6)
    levels = coding.style.levels
    assert -(-rows >> levels) <= 64 and -(-columns >> levels) <= 64  # PS3.5: lowest resolution 64 x 64 at most
    assert stream_info.size.rsiz & 0x4000
    assert int.from_bytes(header[cs.CAP][:4], "big") == 1 << 17  # Pcap: Part 15 only
    assert int.from_bytes(header[cs.CAP][4:6], "big") & 0xFFE0 == 0  # HT only, single set, reversible
    tlm = header[cs.TLM]
    assert tlm[:2] == b"\x00\x60"  # Ztlm 0, 16-bit tile index, 32-bit length
    sot = stream.index(b"\xff\x90")
    assert int.from_bytes(tlm[4:8], "big") == len(stream) - 2 - sot
    assert np.array_equal(_openjpeg(stream, info), frame)


def test_201_is_lrcp_with_jpeg2000_levels() -> None:
    info = FrameInfo(600, 400, bits_stored=12)
    stream = CODECS[0].encode_frame(_frame(info, 1), info)
    coding = cs.parse(stream).header.cod
    assert coding.progression == cs.LRCP and coding.style.levels == 5 and coding.style.block_style == 0x40
    assert cs.TLM not in _main_header(stream) and cs.CAP in _main_header(stream)


def test_magnitude_bound_in_ccap15() -> None:
    # B <= 8 -> 0, 9..27 -> B - 8, 28..47 -> 13 + B // 4, else 31 (T.814 Table A.4).
    codes = {b: int.from_bytes(cs.write_cap_ht(True, b)[8:10], "big") for b in (1, 8, 9, 20, 27, 28, 47, 48)}
    assert codes == {1: 0, 8: 0, 9: 1, 20: 12, 27: 19, 28: 20, 47: 24, 48: 31}
    assert int.from_bytes(cs.write_cap_ht(False, 8)[8:10], "big") == 0x20


# ---------------------------------------------------------------- refusals and cross-decoding


def test_part1_decoder_refuses_ht_streams_and_ht_decoder_reads_part1() -> None:
    info = FrameInfo(40, 30, bits_stored=12)
    frame = _frame(info, 2)
    with pytest.raises(UnsupportedCodestreamError, match="HT code-blocks"):
        j2k_decode(htc.encode(frame, info), info)
    assert np.array_equal(htc.decode(j2k_encode(frame, info), info), frame)


def test_sigprop_magref_passes_are_refused(monkeypatch) -> None:
    """A code-block that declares passes after its cleanup pass raises the unsupported error."""
    original = htc.CODER.encode_blocks

    def with_refinement_passes(coeffs, rows, out, offsets, results):
        status = original(coeffs, rows, out, offsets, results)
        coded = results[:, 1] > 0
        results[coded, 1] = 3  # cleanup + SigProp + MagRef, one plane below
        results[coded, 2] = 2
        return status

    monkeypatch.setattr(htc, "CODER", dataclasses.replace(htc.CODER, encode_blocks=with_refinement_passes))
    info = FrameInfo(20, 20, bits_stored=12)
    stream = htc.encode(_frame(info, 4), info)
    with pytest.raises(UnsupportedCodestreamError, match="SigProp"):
        htc.decode(stream, info)


def test_unsupported_images_are_refused() -> None:
    for info in (FrameInfo(4, 4, 1, 32, 20), FrameInfo(4, 4, 3, 8, 8, 1, "RGB"), FrameInfo(4, 4, 1, 16, 1)):
        assert CODECS[0].supports(info) is not None
        with pytest.raises(UnsupportedImageError):
            CODECS[0].encode_frame(np.zeros(info.shape, info.dtype), info)


def test_wrong_frame_description_is_corrupt() -> None:
    info = FrameInfo(20, 20, bits_stored=12)
    stream = CODECS[0].encode_frame(_frame(info, 1), info)
    with pytest.raises(CorruptCodestreamError):
        CODECS[0].decode_frame(stream, FrameInfo(20, 21, bits_stored=12))
    with pytest.raises(CorruptCodestreamError):
        CODECS[0].decode_frame(stream, FrameInfo(20, 20, 3, 16, 12, 0, "RGB"))


# ---------------------------------------------------------------- pydicom, in a plain program


@pytest.mark.parametrize("keyword", ["HTJ2KLossless", "HTJ2KLosslessRPCL"])
def test_plain_pydicom_program_compresses_with_our_plugin(keyword: str, tmp_path: Path) -> None:
    info = FrameInfo(45, 38, bits_stored=12)
    frames = [_frame(info, 1), _frame(info, 2)]
    source = tmp_path / "native.dcm"
    make_dataset(info, frames).save_as(source, enforce_file_format=True)
    np.save(tmp_path / "expected.npy", np.stack(frames))
    program = f"""
import numpy as np, pydicom
from pydicom.uid import {keyword}
ds = pydicom.dcmread({str(source)!r})
ds.compress({keyword}, encoding_plugin="gateway")
ds.save_as({str(tmp_path / "ht.dcm")!r}, enforce_file_format=True)
back = pydicom.dcmread({str(tmp_path / "ht.dcm")!r})
assert back.file_meta.TransferSyntaxUID == {keyword}
back.pixel_array_options(decoding_plugin="pylibjpeg")
assert np.array_equal(back.pixel_array, np.load({str(tmp_path / "expected.npy")!r}))
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ---------------------------------------------------------------- configuration


def test_configuration_accepts_both_htj2k_syntaxes(tmp_path: Path) -> None:
    import copy

    from gateway.config import parse_config
    from tests.test_config import GOOD

    data = copy.deepcopy(GOOD)
    data["compression"]["transfer_syntax"] = "HTJ2KLosslessRPCL"
    data["compression"]["modality"] = {"CR": "htj2k"}
    data["destinations"][0]["transfer_syntaxes"] = ["HTJ2KLossless", "1.2.840.10008.1.2.4.202"]
    config = parse_config(data, tmp_path)
    assert config.compression.transfer_syntax == "1.2.840.10008.1.2.4.202"
    assert config.compression.target_for("CR") == "1.2.840.10008.1.2.4.201"
    assert config.destinations[0].transfer_syntaxes == ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202")
