"""Regressions of a fuzzing review of the decoders, and the sweep that found the first of them.

The review mutated valid streams of every codec and mode (in forked processes, with numba's bounds
checks on, and peak memory measured per case) and gave each decoder FrameInfos that disagree with its
stream, as a DICOM header may.  What it found:

* RLE carries no dimensions: Rows x Columns of 65535 x 65535 over a few bytes of data allocated the
  whole frame before reading a byte (tests/test_rle.py holds that regression; the sweep below finds it);
* JPEG 2000 and HTJ2K decode every tile and every progression change with work of its own, whatever
  the bytes that carry it: 65,535 tiles of 1 x 1 in 900 KB took 15 s, and POC segments repeating a
  progression change made the packet order cost (changes x packets): 9,000 changes of 16,000 layers of
  packets in 163 KB, 40 s.  The reader now
  refuses, as unsupported, more tiles than 64 and one per KiB of codestream, and more than 32 progression
  changes in a tile (OpenJPEG refuses more than 31).
"""

from __future__ import annotations

import dataclasses
import struct
import time
import tracemalloc

import numpy as np
import pytest

from gateway.codecs import get_codec, jpeg_lossless, jpegls, private, rle
from gateway.codecs.base import FrameInfo
from gateway.codecs.htj2k import codec as htj2k
from gateway.codecs.jpeg2000 import codec as j2k
from gateway.codecs.jpeg2000 import codestream as cs
from gateway.errors import GatewayError, UnsupportedCodestreamError

J2K = get_codec("JPEG2000Lossless")
HTJ2K = get_codec("HTJ2KLossless")


def _segment(marker: int, body: bytes) -> bytes:
    return struct.pack(">HH", marker, len(body) + 2) + body


def _tiled(rows: int, cols: int, tile: int, *, levels: int = 0, layers: int = 1, ht: bool = False,
           poc: int = 0, tile_poc: int = 0, parts: int = 1) -> bytes:
    """An 8-bit grey codestream of `tile` x `tile` tiles whose tile-parts hold no packet data (every
    code-block empty: the image is mid-grey), with `poc` progression changes in the main header and
    `tile_poc` in the header of each tile-part."""
    siz = struct.pack(">HIIIIIIIIH", 0x4000 if ht else 0, cols, rows, 0, 0, tile, tile, 0, 0, 1) + bytes([7, 1, 1])
    cod = struct.pack(">BBHBBBBBB", 0, cs.LRCP, layers, 0, levels, 4, 4, cs.HT_BLOCKS if ht else 0, 1)
    qcd = bytes([2 << 5]) + bytes([10 << 3]) * (3 * levels + 1)
    out = b"\xff\x4f" + _segment(cs.SIZ, siz) + _segment(cs.COD, cod) + _segment(cs.QCD, qcd)
    if ht:
        out += _segment(cs.CAP, struct.pack(">IH", 1 << 14, 0))

    def changes(count: int) -> bytes:
        return _segment(cs.POC, b"".join(struct.pack(">BBHBBB", 0, 0, layers, 33, 0, i % 5) for i in range(count)))

    if poc:
        out += changes(poc)
    for index in range(-(-rows // tile) * -(-cols // tile)):
        for part in range(parts):
            header = changes(tile_poc) if tile_poc else b""
            out += _segment(cs.SOT, struct.pack(">HIBB", index, 14 + len(header), part, parts)) + header + b"\xff\x93"
    return out + b"\xff\xd9"


GREY = FrameInfo(64, 64, bits_allocated=8, bits_stored=8)


@pytest.mark.parametrize("codec", [J2K, HTJ2K], ids=lambda c: c.name)
def test_tiles_the_codestream_does_not_pay_for_are_unsupported(codec) -> None:
    """4,096 tiles of 1 x 1 at 32 levels in 57 KB: 3.6 s of decoding before, now refused at once (the
    pipeline passes such an image through)."""
    stream = _tiled(64, 64, 1, levels=32, ht=codec is HTJ2K)
    start = time.perf_counter()
    with pytest.raises(UnsupportedCodestreamError, match="4096 tiles in 57"):
        codec.decode_frame(stream, GREY)
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("codec", [J2K, HTJ2K], ids=lambda c: c.name)
def test_tiles_within_the_limit_decode(codec) -> None:
    """64 tiles in any codestream, and one more per KiB: 64 tiles of 8 x 8, each in 255 tile-parts."""
    stream = _tiled(64, 64, 8, levels=3, ht=codec is HTJ2K, parts=255)
    assert (codec.decode_frame(stream, GREY) == 128).all()
    info = FrameInfo(65, 64, bits_allocated=8, bits_stored=8)  # 72 tiles: 8 more than the free 64
    stream = _tiled(65, 64, 8, ht=codec is HTJ2K)
    with pytest.raises(UnsupportedCodestreamError, match="72 tiles"):
        codec.decode_frame(stream, info)
    padded = stream[:-2] + b"".join(_segment(cs.SOT, struct.pack(">HIBB", 0, 14 + 1030, part, 0))
                                    + _segment(cs.COM, b"\x00\x01" + bytes(1024)) + b"\xff\x93" for part in range(1, 9))
    assert (codec.decode_frame(padded + b"\xff\xd9", info) == 128).all()


@pytest.mark.parametrize("where", ["main", "tile"])
@pytest.mark.parametrize("codec", [J2K, HTJ2K], ids=lambda c: c.name)
def test_more_than_32_progression_changes_are_unsupported(codec, where: str) -> None:
    """9,000 POC entries over 16,000 layers of packets (163 KB) cost 40 s before: each change sorted every
    packet again.  32 are read, as OpenJPEG reads 31."""
    ht = codec is HTJ2K
    for count in (1, 32):
        stream = _tiled(16, 16, 16, levels=2, layers=3, ht=ht, **{"poc" if where == "main" else "tile_poc": count})
        assert (codec.decode_frame(stream, FrameInfo(16, 16, bits_allocated=8, bits_stored=8)) == 128).all()
    stream = _tiled(16, 16, 16, levels=2, layers=3, ht=ht, **{"poc" if where == "main" else "tile_poc": 33})
    with pytest.raises(UnsupportedCodestreamError, match="33 progression changes"):
        codec.decode_frame(stream, FrameInfo(16, 16, bits_allocated=8, bits_stored=8))
    # A tile's changes replace the main header's; those of its tile-parts add up, as two segments do.
    small = FrameInfo(16, 16, bits_allocated=8, bits_stored=8)
    assert (codec.decode_frame(_tiled(16, 16, 16, levels=2, layers=3, ht=ht, poc=30, tile_poc=20), small) == 128).all()
    with pytest.raises(UnsupportedCodestreamError, match="40 progression changes"):
        codec.decode_frame(_tiled(16, 16, 16, levels=2, layers=3, ht=ht, tile_poc=20, parts=2), small)
    main = _tiled(16, 16, 16, levels=2, layers=3, ht=ht, poc=20)
    poc, sot = main.index(b"\xff\x5f"), main.index(b"\xff\x90")
    with pytest.raises(UnsupportedCodestreamError, match="40 progression changes"):
        codec.decode_frame(main[:sot] + main[poc:sot] + main[sot:], small)


# ---------------------------------------------------------------- FrameInfo against the stream


def _frame(info: FrameInfo, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low, high = info.value_range
    values = np.indices(info.shape).sum(axis=0) * 5 + rng.integers(0, 4, info.shape) + low
    return np.clip(values, low, high).astype(info.dtype)


def _seeds() -> list[tuple[str, object, FrameInfo, bytes]]:
    mono, rgb = FrameInfo(13, 11, bits_stored=12), FrameInfo(9, 7, 3, 8, 8, 0, "RGB")
    out = []
    for info in (mono, rgb):
        frame = _frame(info, info.samples_per_pixel)
        out += [("rle", rle.decode, info, rle.encode(frame, info)),
                ("jpeg-lossless", jpeg_lossless.decode, info, jpeg_lossless.encode(frame, info)),
                ("jpeg-ls", jpegls.decode, info, jpegls.encode(frame, info)),
                ("jpeg-ls-restart", jpegls.decode, info, jpegls.encode(frame, info, restart=2)),
                ("j2k", j2k.decode, info, j2k.encode(frame, info)),
                ("htj2k", htj2k.decode, info, htj2k.encode(frame, info)),
                ("gwl-1", private.decode, info, private.encode(frame, info, version=1)),
                ("gwl-2", private.decode, info, private.encode(frame, info, version=2))]
    return out


def _variants(info: FrameInfo) -> list[FrameInfo]:
    fields = dataclasses.asdict(info)
    changes = [{"rows": info.rows + 1}, {"columns": info.columns - 1}, {"rows": info.columns, "columns": info.rows},
               {"rows": 65535, "columns": 65535}, {"rows": 1 << 20, "columns": 1 << 20}, {"rows": 1, "columns": 1},
               {"bits_stored": 8}, {"bits_stored": 16}, {"bits_allocated": 8, "bits_stored": 8},
               {"bits_allocated": 32, "bits_stored": 32}, {"pixel_representation": 1 - info.pixel_representation},
               {"samples_per_pixel": 4 - info.samples_per_pixel,
                "photometric_interpretation": "RGB" if info.samples_per_pixel == 1 else "MONOCHROME2"},
               {"photometric_interpretation": "YBR_FULL_422"}, {"photometric_interpretation": "PALETTE COLOR"}]
    out = []
    for change in changes:
        try:
            out.append(FrameInfo(**{**fields, **change}))
        except GatewayError:
            pass
    return out


@pytest.mark.parametrize(("name", "decode", "info", "stream"), _seeds(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_a_frame_description_other_than_the_streams(name: str, decode, info: FrameInfo, stream: bytes) -> None:
    """Rows, columns, bits, sign or samples from a DICOM header that the codestream does not have: a typed
    error or a frame of the form described, and never an allocation the stream could not fill."""
    for other in _variants(info):
        try:
            decode(stream, other)  # a first time for the kernels to compile: numba's allocations are traced
        except GatewayError:
            pass
        tracemalloc.start()
        try:
            frame = decode(stream, other)
        except GatewayError:
            frame = None
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        if frame is not None:
            assert frame.shape == other.shape and frame.dtype == other.dtype, (name, other)
        assert peak < 64 * len(stream) + 16 * info.frame_bytes + (1 << 20), (name, other, peak)

