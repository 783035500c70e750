"""The marker walk of JPEG-family codestreams, and the checks made with it before a decoder sees one.

Seeds are our encoders' streams (JPEG Lossless, JPEG-LS with restart
markers, JPEG 2000, HTJ2K), one in two tile-parts, and an irreversible one
written by OpenJPEG.  No byte string makes the walk raise, go back or step
past the data.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.codecs import get_codec, jpegls
from gateway.codecs.base import FrameInfo
from gateway.codecs.jpeg_markers import EOI, SOS, walk_markers
from gateway.pipeline.pixels import codestream_end, codestream_size, irreversible_wavelet
from tests.fuzzing import EDITS, apply_edits, gradient_frame

FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
INFO = FrameInfo(17, 23, bits_stored=12)
FRAME = gradient_frame(INFO, 1)


def _two_tile_parts(stream: bytes) -> bytes:
    """A JPEG 2000 `stream` of one tile-part as two tile-parts of its tile, the second with a COM segment."""
    sot = stream.index(b"\xff\x90")
    sod = stream.index(b"\xff\x93", sot)
    header, data = stream[sot + 12:sod], stream[sod + 2:-2]
    half = len(data) // 2
    com = b"\xff\x64\x00\x05\x00\x01a"
    first = b"\xff\x90" + struct.pack(">HHIBB", 10, 0, 14 + len(header) + half, 0, 2) + header
    second = b"\xff\x90" + struct.pack(">HHIBB", 10, 0, 14 + len(com) + len(data) - half, 1, 2) + com
    return stream[:sot] + first + b"\xff\x93" + data[:half] + second + b"\xff\x93" + data[half:] + b"\xff\xd9"


SEEDS = {
    "jpeg-lossless": get_codec("JPEGLosslessSV1").encode_frame(FRAME, INFO),
    "jpeg-ls": jpegls.encode(FRAME, INFO, restart=3),
    "jpeg2000": get_codec("JPEG2000Lossless").encode_frame(FRAME, INFO),
    "htj2k": get_codec("HTJ2KLossless").encode_frame(FRAME, INFO),
}
SEEDS["jpeg2000-tile-parts"] = _two_tile_parts(SEEDS["jpeg2000"])
STREAMS = list(SEEDS.values())


@pytest.mark.parametrize("name", SEEDS)
def test_a_whole_codestream_is_walked_to_its_end_marker(name: str) -> None:
    stream = SEEDS[name]
    markers = list(walk_markers(stream))
    assert markers[-1] == (EOI, len(stream) - 2, len(stream))
    assert codestream_end(stream) == len(stream)
    assert codestream_end(stream + b"\x00") == len(stream)
    assert codestream_size(stream) == (INFO.rows, INFO.columns)
    assert not irreversible_wavelet(stream)


def test_entropy_coded_data_is_passed_over() -> None:
    """A marker in a scan is one that ends it: restart markers and stuffed bytes are part of the data."""
    stream = SEEDS["jpeg-ls"]
    codes = [marker.code for marker in walk_markers(stream)]
    assert codes.count(SOS) == 1 and not any(0xD0 <= code <= 0xD7 for code in codes)
    assert b"\xff\xd0" in stream  # restart markers were written, and passed over


def test_a_second_codestream_after_the_first_is_not_walked() -> None:
    stream = SEEDS["jpeg2000-tile-parts"]
    assert codestream_end(stream + SEEDS["jpeg2000"]) == len(stream)


def test_the_9_7_wavelet_is_found() -> None:
    imagecodecs = pytest.importorskip("imagecodecs")
    stream = imagecodecs.jpeg2k_encode(FRAME, level=30, reversible=False, codecformat="J2K")
    assert irreversible_wavelet(stream)
    assert codestream_end(stream) == len(stream)


def test_other_data_has_no_markers() -> None:
    for data in (b"", b"\xff", b"\x00\x01\x02\x03", b"\xff\xd9", b"\xff\x51\xff\x52"):
        assert list(walk_markers(data)) == []
        assert codestream_end(data) is None and codestream_size(data) is None


def _check_walk(data: bytes) -> None:
    """The walk goes forward, never starts a marker past the data, and the checks made with it do not raise."""
    previous = -1
    for marker in walk_markers(data):
        assert previous < marker.offset and marker.offset + 2 <= len(data) and marker.end >= marker.offset + 2
        previous = marker.offset
    end = codestream_end(data)
    assert end is None or 0 < end <= len(data)
    size = codestream_size(data)
    assert size is None or len(size) == 2
    assert irreversible_wavelet(data) in (True, False)


@FUZZ
@given(index=st.integers(0, len(STREAMS) - 1), edits=EDITS)
def test_mutated_streams(index: int, edits: list[tuple[int, int, str]]) -> None:
    _check_walk(apply_edits(STREAMS[index], edits))


@FUZZ
@given(start=st.sampled_from([b"\xff\xd8", b"\xff\x4f", b"\xff\x4f\xff\x51"]),
       data=st.lists(st.sampled_from([0x00, 0x01, 0x02, 0x0A, 0x0C, 0x4F, 0x51, 0x52, 0x53, 0x90, 0x93, 0xC3,
                                      0xD0, 0xD8, 0xD9, 0xDA, 0xF7, 0xFF]) | st.integers(0, 255), max_size=80))
def test_marker_soup(start: bytes, data: list[int]) -> None:
    _check_walk(start + bytes(data))
