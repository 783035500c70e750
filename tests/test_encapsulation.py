"""The encapsulated Pixel Data value built one codestream at a time equals pydicom's, byte for byte."""

from __future__ import annotations

import pytest
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames

from gateway.pipeline import policy

STREAMS = [b"\x01\x02\x03", b"\x06\x07", b"\x04" * 10, b"\x05" * 7]  # odd, even, even, odd


def _built(streams: list[bytes]):
    value = policy._Encapsulation(len(streams))
    for stream in streams:
        value.add(stream)
    return value.finish()


def test_basic_offset_table_matches_pydicom() -> None:
    value, extended = _built(STREAMS)
    assert extended is None
    assert isinstance(value, bytes) and value == encapsulate(STREAMS, fragments_per_frame=1, has_bot=True)
    frames = list(generate_frames(value, number_of_frames=len(STREAMS)))
    assert frames == [s + b"\x00" * (len(s) & 1) for s in STREAMS]


def test_offsets_beyond_the_basic_table_go_to_the_extended_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy, "_BOT_LIMIT", 20)  # the third item starts at 22: beyond
    value, extended = _built(STREAMS)
    assert extended is not None
    expected, offsets, lengths = encapsulate_extended(STREAMS)
    assert bytes(value) == expected
    assert extended == (offsets, lengths)


def test_fewer_codestreams_than_reserved_shrink_the_table() -> None:
    value = policy._Encapsulation(4)
    for stream in STREAMS[:2]:
        value.add(stream)
    data, extended = value.finish()
    assert extended is None
    assert bytes(data) == encapsulate(STREAMS[:2], fragments_per_frame=1, has_bot=True)


def test_an_extended_table_from_the_start_matches_pydicom() -> None:
    value = policy._Encapsulation(len(STREAMS), extended=True)
    for stream in STREAMS:
        value.add(stream)
    data, extended = value.finish()
    expected, offsets, lengths = encapsulate_extended(STREAMS)
    assert isinstance(data, bytes) and data == expected
    assert extended == (offsets, lengths)
