"""Property and fuzz tests: no byte string makes the JPEG 2000 decoder crash,
hang or allocate beyond the expected frame; bad ones raise
CorruptCodestreamError (UnsupportedCodestreamError for valid features we
refuse).  Seeds cover our encoder's streams and a stream with layers,
precincts, SOP/EPH and every code-block style, written by OpenJPEG when it
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
from gateway.codecs.jpeg2000 import encode
from tests.fuzzing import (
    EDITS,
    apply_edits,
    decode_or_corrupt,
    gradient_frame,
    j2k_packets_after_headers,
    prime,
)

CODEC = get_codec("JPEG2000Lossless")
FUZZ = settings(max_examples=200, deadline=3000, suppress_health_check=[HealthCheck.too_slow])

_INFOS = [
    FrameInfo(17, 23, bits_stored=12),
    FrameInfo(9, 8, 3, 8, 8, 0, "RGB"),
    FrameInfo(16, 16, bits_stored=16, pixel_representation=1),
    FrameInfo(33, 40, bits_stored=12),
]


def _frame(info: FrameInfo, seed: int) -> np.ndarray:
    return gradient_frame(info, seed, noise=20)


def _opj_seed(info: FrameInfo, frame: np.ndarray) -> bytes | None:
    tool = shutil.which("opj_compress")
    if tool is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "in.rawl", Path(tmp) / "out.j2k"
        frame.astype("<u2").tofile(source)
        options = ["-F", f"{info.columns},{info.rows},1,{info.bits_stored},u", "-n", "3", "-r", "8,2,1",
                   "-M", "63", "-p", "RPCL", "-c", "[16,16]", "-SOP", "-EPH", "-t", "24,20"]
        done = subprocess.run([tool, "-i", str(source), "-o", str(target), *options], capture_output=True)
        return target.read_bytes() if done.returncode == 0 else None


def _seeds() -> list[tuple[FrameInfo, bytes]]:
    seeds = [(info, encode(_frame(info, k), info)) for k, info in enumerate(_INFOS[:3])]
    theirs = _opj_seed(_INFOS[3], _frame(_INFOS[3], 3))
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
@given(index=st.integers(0, len(SEEDS) - 1), cut=st.integers(0, 10**6))
def test_truncated_streams(index: int, cut: int) -> None:
    info, stream = SEEDS[index]
    cut %= len(stream)
    _decode_or_corrupt(stream[:cut], info)


# No per-example deadline: the first example of each sample type compiles the kernels it uses (seconds on a
# fresh checkout), the others take about a millisecond.
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 40), cols=st.integers(1, 40), bits=st.integers(2, 16), signed=st.booleans(),
       seed=st.integers(0, 2**32 - 1), levels=st.integers(0, 6))
def test_round_trip_property(rows: int, cols: int, bits: int, signed: bool, seed: int, levels: int) -> None:
    info = FrameInfo(rows, cols, 1, 16 if bits > 8 else 8, bits, int(signed))
    low, high = info.value_range
    frame = np.random.default_rng(seed).integers(low, high, info.shape, endpoint=True).astype(info.dtype)
    assert np.array_equal(CODEC.decode_frame(encode(frame, info, levels=levels), info), frame)
