"""What the decoders' fuzz tests share: seed frames, byte-level mutations, the check of an outcome."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from hypothesis import strategies as st

from gateway.codecs.base import Codec, FrameInfo
from gateway.errors import CorruptCodestreamError

# Up to eight edits: (position, byte value, kind) with kind s = set, i = insert, d = delete.
EDITS = st.lists(
    st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.sampled_from("sid")), min_size=1, max_size=8
)


def apply_edits(stream: bytes, edits: list[tuple[int, int, str]]) -> bytes:
    """`stream` with each edit applied in turn (positions wrap around its length)."""
    data = bytearray(stream)
    for where, value, kind in edits:
        where %= max(1, len(data))
        if kind == "s":
            data[where] = value
        elif kind == "i":
            data[where:where] = bytes([value])
        elif len(data) > 1:
            del data[where]
    return bytes(data)


def gradient_frame(info: FrameInfo, seed: int, noise: int = 20) -> np.ndarray:
    """A diagonal ramp with uniform noise of +-`noise`, clipped to the range Bits Stored allows."""
    rng = np.random.default_rng(seed)
    low, high = info.value_range
    values = np.indices(info.shape).sum(axis=0) * 37 + rng.integers(-noise, noise, info.shape) + low
    return np.clip(values, low, high).astype(info.dtype)


def prime(codec: Codec, seeds: Iterable[tuple[FrameInfo, bytes]]) -> None:
    """Decode every seed once: it checks them and compiles the kernels (with a cold numba
    cache) before Hypothesis starts timing examples."""
    for info, stream in seeds:
        codec.decode_frame(stream, info)


def decode_or_corrupt(codec: Codec, data: bytes, info: FrameInfo) -> None:
    """Decoding `data` either gives a frame of the form `info` describes, within its value
    range, or raises the codecs' error for bad data."""
    try:
        frame = codec.decode_frame(data, info)
    except CorruptCodestreamError:
        return
    assert frame.shape == info.shape and frame.dtype == info.dtype
    low, high = info.value_range
    assert frame.min() >= low and frame.max() <= high


def after_scan_header(stream: bytes) -> bytes:
    """A JPEG or JPEG-LS stream up to the end of its first SOS marker segment."""
    start = stream.index(b"\xff\xda")
    return stream[:start + 2 + int.from_bytes(stream[start + 2:start + 4], "big")]


def j2k_packets_after_headers(stream: bytes, packets: bytes) -> bytes:
    """A JPEG 2000 codestream's main and first tile-part headers, then `packets`, then EOC.

    Psot is set to 0 (the tile-part runs to EOC), so any length of `packets` is well framed.
    """
    sot = stream.index(b"\xff\x90")
    start = stream.index(b"\xff\x93") + 2  # after the first SOD
    return stream[:sot + 6] + b"\0\0\0\0" + stream[sot + 10:start] + packets + b"\xff\xd9"
