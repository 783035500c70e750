"""Property and fuzz tests: no byte string makes the HTJ2K decoder crash, hang
or allocate beyond the expected frame; bad ones raise CorruptCodestreamError
(UnsupportedCodestreamError, a subclass, for valid features we refuse).  Seeds
are our encoder's streams (.201 and .202) and one written by OpenJPH when it
is installed."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.codecs import get_codec
from gateway.codecs.base import FrameInfo
from gateway.codecs.htj2k import encode
from tests.fuzzing import (
    EDITS,
    apply_edits,
    decode_or_corrupt,
    gradient_frame,
    j2k_packets_after_headers,
    prime,
)

CODEC = get_codec("HTJ2KLossless")
FUZZ = settings(max_examples=200, deadline=3000, suppress_health_check=[HealthCheck.too_slow])

_INFOS = [
    FrameInfo(17, 23, bits_stored=12),
    FrameInfo(9, 8, 3, 8, 8, 0, "RGB"),
    FrameInfo(16, 16, bits_stored=16, pixel_representation=1),
    FrameInfo(70, 40, bits_stored=12),
]


def _frame(info: FrameInfo, seed: int) -> np.ndarray:
    return gradient_frame(info, seed, noise=200)


def _ojph_seed(info: FrameInfo, frame: np.ndarray) -> bytes | None:
    tool = shutil.which("ojph_compress")
    if tool is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "in.pgm", Path(tmp) / "out.j2c"
        source.write_bytes(f"P5\n{info.columns} {info.rows}\n{(1 << info.bits_stored) - 1}\n".encode()
                           + frame.astype(">u2").tobytes())
        options = ["-reversible", "true", "-block_size", "{16,32}", "-tile_size", "{32,32}", "-num_decomps", "3"]
        done = subprocess.run([tool, "-i", str(source), "-o", str(target), *options], capture_output=True)
        return target.read_bytes() if done.returncode == 0 else None


def _seeds() -> list[tuple[FrameInfo, bytes]]:
    seeds = [(info, encode(_frame(info, k), info, rpcl=bool(k % 2))) for k, info in enumerate(_INFOS[:3])]
    theirs = _ojph_seed(_INFOS[3], _frame(_INFOS[3], 3))
    if theirs is not None:
        seeds.append((_INFOS[3], theirs))
    return seeds


SEEDS = _seeds()
prime(CODEC, SEEDS)
_decode_or_corrupt = partial(decode_or_corrupt, CODEC)


@FUZZ
@given(data=st.binary(max_size=600), index=st.integers(0, len(_INFOS) - 1))
def test_random_bytes(data: bytes, index: int) -> None:
    _decode_or_corrupt(data, _INFOS[index])


@FUZZ
@given(data=st.binary(max_size=600), index=st.integers(0, len(SEEDS) - 1))
def test_random_packets_after_valid_headers(data: bytes, index: int) -> None:
    info, stream = SEEDS[index]
    _decode_or_corrupt(j2k_packets_after_headers(stream, data), info)


@FUZZ
@given(index=st.integers(0, len(SEEDS) - 1), edits=EDITS)
def test_mutated_streams(index: int, edits: list[tuple[int, int, str]]) -> None:
    info, stream = SEEDS[index]
    _decode_or_corrupt(apply_edits(stream, edits), info)


@FUZZ
@given(index=st.integers(0, len(SEEDS) - 1), position=st.integers(0, 10**6), value=st.integers(0, 255))
def test_mutated_block_bytes(index: int, position: int, value: int) -> None:
    """One byte of the packet bodies changed: the block decoder meets every kind of bad segment."""
    info, stream = SEEDS[index]
    start = stream.index(b"\xff\x93") + 2
    data = bytearray(stream)
    data[start + position % (len(stream) - 2 - start)] = value
    _decode_or_corrupt(bytes(data), info)


@FUZZ
@given(index=st.integers(0, len(SEEDS) - 1), cut=st.integers(0, 10**6))
def test_truncated_streams(index: int, cut: int) -> None:
    info, stream = SEEDS[index]
    cut %= len(stream)
    _decode_or_corrupt(stream[:cut], info)


# No per-example deadline: the first example of each sample type compiles the kernels it uses (seconds on a
# fresh checkout), the others take about a millisecond.
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 40), cols=st.integers(1, 40), bits=st.integers(2, 16), signed=st.booleans(),
       seed=st.integers(0, 2**32 - 1), levels=st.integers(0, 6), rpcl=st.booleans())
def test_round_trip_property(rows: int, cols: int, bits: int, signed: bool, seed: int, levels: int,
                             rpcl: bool) -> None:
    info = FrameInfo(rows, cols, 1, 16 if bits > 8 else 8, bits, int(signed))
    low, high = info.value_range
    frame = np.random.default_rng(seed).integers(low, high, info.shape, endpoint=True).astype(info.dtype)
    if rpcl:
        levels = max(levels, (max(rows, cols) - 1).bit_length() - 6)
    stream = encode(frame, info, levels=levels, rpcl=rpcl)
    assert np.array_equal(CODEC.decode_frame(stream, info), frame)
