"""Encapsulated originals whose items do not hold the frames their attributes describe are malformed.

A value with fewer frames than (0028,0008) 'Number of Frames' says, an RLE
frame spread over several items (PS3.5 A.4.2: one fragment per RLE frame,
and an RLE decoder stops once it has a frame's bytes, so the items after
the first would be dropped), or a frame count the written codestreams do
not match: recompressing would lose frames.  Each is forwarded exactly as
received, marked malformed, so that ``[policy] malformed = "hold"`` holds it.
"""

from __future__ import annotations

import re
import struct
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless, RLELossless

import gateway.pipeline.pixels as pixels
import gateway.pipeline.policy as policy
from gateway.codecs import get_codec
from gateway.codecs.base import FrameInfo
from gateway.errors import PixelDataError
from gateway.pipeline import recompress
from gateway.pipeline.pixels import iter_frames
from gateway.record import RECORD_FILE, ProofRecord
from gateway.spool import DEAD, Spool
from gateway.worker import process_instance
from tests.conftest import build_config
from tests.images import make_dataset

INFO = FrameInfo(rows=8, columns=8, bits_allocated=16, bits_stored=12)
_ITEM = b"\xfe\xff\x00\xe0"


def _value(streams: list[bytes], frame_starts: list[int]) -> bytes:
    """An encapsulated value: a Basic Offset Table naming the items `frame_starts` start frames at, the items."""
    items = [_ITEM + struct.pack("<I", len(s)) + s for s in streams]
    offsets = [sum(len(item) for item in items[:k]) for k in frame_starts]
    return _ITEM + struct.pack(f"<I{len(offsets)}I", 4 * len(offsets), *offsets) + b"".join(items)


def _original(source: str, declared: int | None, values: tuple[int, ...], frame_starts: list[int]) -> Dataset:
    """One item per value of `values` (a flat frame each) in `source`, Number of Frames `declared`."""
    codec = get_codec(source)
    streams = [codec.encode_frame(np.full(INFO.shape, v, INFO.dtype), INFO) for v in values]
    ds = make_dataset(INFO, streams[:1], source)
    ds.PixelData = _value(streams, frame_starts)
    if declared is not None:
        ds.NumberOfFrames = declared
    return ds


# (source, Number of Frames, the items' frame values, the items the offset table starts frames at, the reason)
CASES = {
    "jpeg-ls, 3 declared, 2 in the value": (JPEGLSLossless, 3, (100, 200), [0, 1],
                                            "holds 2 frame(s), (0028,0008) 'Number of Frames' says 3"),
    "rle, 3 declared, 2 in the value": (RLELossless, 3, (100, 200), [0, 1], "holds 2 items for 3 frame(s)"),
    "rle, 2 declared, 3 items, no offsets": (RLELossless, 2, (100, 200, 300), [], "holds 3 items for 2 frame(s)"),
    "rle, 2 declared, offsets for 2, 3 items": (RLELossless, 2, (100, 200, 300), [0, 1],
                                                "holds 3 items for 2 frame(s)"),
    "rle, 1 frame, 2 items": (RLELossless, None, (100, 200), [], "holds 2 items for 1 frame(s)"),
    "rle, 2 declared, 2 items, offsets for 1": (RLELossless, 2, (100, 200), [0], "frame 1 is in 2 items"),
}
PARAMS = [pytest.param(*case, id=name) for name, case in CASES.items()]


def _other(source: str) -> str:
    return RLELossless if source == JPEGLSLossless else JPEGLSLossless


@pytest.mark.parametrize("source, declared, values, starts, reason", PARAMS)
def test_iter_frames_raises_unless_the_value_holds_every_frame_in_its_own_items(
        source: str, declared: int | None, values: tuple[int, ...], starts: list[int], reason: str) -> None:
    with pytest.raises(PixelDataError, match=re.escape(reason)):
        list(iter_frames(_original(source, declared, values, starts)))


@pytest.mark.parametrize("lazy", [False, True], ids=["held", "decoded-per-pass"])
@pytest.mark.parametrize("same", [False, True], ids=["other-syntax", "target-syntax"])
@pytest.mark.parametrize("source, declared, values, starts, reason", PARAMS)
def test_frames_missing_or_spread_over_items_are_kept_as_malformed(
        source: str, declared: int | None, values: tuple[int, ...], starts: list[int], reason: str, same: bool,
        lazy: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recompressed or already in the target syntax, small or decoded on each pass (an image above
    HOLD_DECODED_BYTES): never written with frames lost, always said to be malformed."""
    if lazy:
        monkeypatch.setattr(pixels, "HOLD_DECODED_BYTES", 0)
    ds = _original(source, declared, values, starts)
    received = ds.PixelData
    outcome = recompress(ds, source if same else _other(source))
    assert not outcome.recompressed and outcome.dataset is ds and ds.PixelData == received
    assert outcome.malformed and reason in outcome.reason, outcome.reason
    assert outcome.verified_by == ()


def test_one_fragment_per_frame_is_still_recompressed() -> None:
    """The check is no obstacle to what is well formed: RLE frames with and without offsets."""
    for starts in ([0, 1, 2], []):
        ds = _original(RLELossless, 3, (100, 200, 300), starts)
        outcome = recompress(ds, JPEGLSLossless)
        assert outcome.recompressed, outcome.reason
        assert [int(f[0, 0]) for f in iter_frames(outcome.dataset)] == [100, 200, 300]


def test_an_rle_item_holding_more_than_its_frame_is_malformed() -> None:
    """An RLE decoder stops once it has a frame's bytes: a second frame joined to the first in its item
    would be dropped unseen.  The padding encoders write after a segment is no such thing."""
    codec = get_codec(RLELossless)
    first, second = (codec.encode_frame(np.full(INFO.shape, v, INFO.dtype), INFO) for v in (100, 200))
    for tail, kept in ((second, True), (b"\x00", False), (b"\x00" * 4, False)):
        ds = make_dataset(INFO, [first + tail], RLELossless)
        outcome = recompress(ds, JPEGLSLossless)
        if kept:
            assert not outcome.recompressed and outcome.malformed
            assert "bytes follow the data of its last RLE segment" in outcome.reason, outcome.reason
        else:
            assert outcome.recompressed, (tail, outcome.reason)


@pytest.mark.parametrize("source, declared, values, starts, reason", PARAMS)
def test_the_worker_holds_them_as_received(tmp_path: Path, source: str, declared: int | None,
                                            values: tuple[int, ...], starts: list[int], reason: str) -> None:
    """With ``[policy] malformed = "hold"`` none is forwarded; the proof record says why, with no proof."""
    config = build_config(tmp_path, compression={"transfer_syntax": _other(source)}, policy={"malformed": "hold"})
    buffer = BytesIO()
    ds = _original(source, declared, values, starts)
    ds.save_as(buffer, enforce_file_format=True)
    spool = Spool(config.spool.directory)
    record = ProofRecord(config.spool.directory / RECORD_FILE)
    ident = spool.store_received(buffer.getvalue(), "MODALITY")
    assert process_instance(config, spool, ident, record=record) == []
    assert spool.object_path(ident).read_bytes() == buffer.getvalue()
    [held] = list(spool.jobs_in(DEAD))
    assert held.reason.startswith("held: malformed pixel data") and reason in held.reason
    [entry] = record.find(str(ds.SOPInstanceUID))
    assert entry["outcome"] == "passed-through" and entry["reason"].startswith("decoding failed")
    assert not entry["verified_by"]


def test_verification_counts_the_frames_number_of_frames_declares() -> None:
    """Codestreams written for fewer frames than the output's Number of Frames are not verified, even
    when they match the frames the caller decoded."""
    frames = [np.full(INFO.shape, v, INFO.dtype) for v in (100, 200)]
    codec = get_codec(RLELossless)
    new = make_dataset(INFO, [codec.encode_frame(f, INFO) for f in frames], RLELossless)
    new.PixelData = encapsulate([codec.encode_frame(f, INFO) for f in frames], has_bot=True)
    new.NumberOfFrames = 3
    proof: list[tuple[str, str]] = []
    reason = policy._verify(RLELossless, codec, new, 2, frames, INFO, "digest", proof)
    assert reason and reason.startswith("verification failed") and "'Number of Frames' 3" in reason, reason
    assert proof == []
    new.NumberOfFrames = 2
    assert policy._verify(RLELossless, codec, new, 2, frames, INFO, "digest", proof) is None
    assert [name for name, _ in proof] == ["ours/rle", "pylibjpeg-rle"]


def test_a_file_read_back_holds_the_frames_it_says() -> None:
    """What the pipeline writes from a well-formed multi-frame original reads back frame for frame."""
    ds = pydicom.dcmread(BytesIO(_bytes(_original(JPEGLSLossless, 2, (100, 200), [0, 1]))))
    outcome = recompress(ds, RLELossless)
    assert outcome.recompressed, outcome.reason
    back = pydicom.dcmread(BytesIO(_bytes(outcome.dataset)))
    assert [int(f[0, 0]) for f in iter_frames(back)] == [100, 200]


def _bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
