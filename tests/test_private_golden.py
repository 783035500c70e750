"""Golden GatewayLossless streams: archived streams decode bit-exactly forever.

The streams in ``tests/data/gwl_v1`` were written by the version 1 encoder,
those in ``tests/data/gwl_v2_model0`` by the first version 2 encoder (context
model 0), ``gwl_v2_model1`` and ``gwl_v2_model2`` by the version 2 encoders of
context models 1 and 2, from the same pixels (model 2's archive adds a case of
colour transform 4), ``gwl_v2_model3`` by the version 2 encoder of context
model 3 (indexed colour whose indices are matched to the neighbours'), ``gwl_v2_model4`` by the
version 2 encoder of context model 4 (model 2's pixels), ``gwl_v2_model5`` by that of context model 5
(model 4's pixels and a crop with burnt-in text), ``gwl_v2_subbands`` by the
version 2 encoder that codes interpolated frames as subbands, ``gwl_v2_repeat`` by that of context model 5
that codes frames enlarged by repeating samples as subbands, ``gwl_v2_chained`` by that of context
model 5 whose colour-difference planes are guided by the plane before them (the CHAINED flag),
``gwl_v2_model6`` by that of context model 6 (model 5's pixels and a CT crop on a field of padding),
``gwl_v2_model7`` by that of context model 7 (model 6's pixels and an ultrasound crop); the
pixels they must decode to were read by pydicom from its bundled test files (a source that is not our
code), and are checked against those files again here when pydicom has them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from gateway.codecs import private
from gateway.codecs.base import FrameInfo
from tests.images import enlarge

ROOT = Path(__file__).resolve().parent / "data"
DATA = ROOT / "gwl_v1"
CASES = json.loads((DATA / "cases.json").read_text())
# Archive name: (folder, cases); the version byte of its streams follows.
ARCHIVES = {name: (ROOT / name, json.loads((ROOT / name / "cases.json").read_text()))
            for name in ("gwl_v1", "gwl_v2_model0", "gwl_v2_model1", "gwl_v2_model2", "gwl_v2_model3",
                         "gwl_v2_model4", "gwl_v2_model5", "gwl_v2_subbands", "gwl_v2_repeat", "gwl_v2_chained",
                         "gwl_v2_model6", "gwl_v2_model7")}
VERSION_OF = {"gwl_v1": 1, "gwl_v2_model0": 2, "gwl_v2_model1": 2, "gwl_v2_model2": 2, "gwl_v2_model3": 2,
              "gwl_v2_model4": 2, "gwl_v2_model5": 2, "gwl_v2_subbands": 2, "gwl_v2_repeat": 2, "gwl_v2_chained": 2,
              "gwl_v2_model6": 2, "gwl_v2_model7": 2}
MODEL_OF = {"gwl_v2_model0": 0, "gwl_v2_model1": 1, "gwl_v2_model2": 2, "gwl_v2_model3": 3, "gwl_v2_model4": 4,
            "gwl_v2_model5": 5, "gwl_v2_subbands": 2, "gwl_v2_repeat": 5, "gwl_v2_chained": 5 | private.CHAINED,
            "gwl_v2_model6": 6, "gwl_v2_model7": 7}
ALL_CASES = [(name, case) for name, (_, cases) in ARCHIVES.items() for case in cases]


def _frames(data: Path, case: dict) -> tuple[FrameInfo, list[bytes], list[np.ndarray]]:
    info = FrameInfo(**case["info"])
    streams = [(data / f"{case['id']}_{k}.gwl").read_bytes() for k in range(case["frames"])]
    pixels = [np.load(data / f"{case['id']}_{k}.npy") for k in range(case["frames"])]
    return info, streams, pixels


@pytest.mark.parametrize("archive, case", ALL_CASES, ids=[f"{a}-{c['id']}" for a, c in ALL_CASES])
def test_golden_streams_decode(archive: str, case: dict) -> None:
    data, _ = ARCHIVES[archive]
    info, streams, pixels = _frames(data, case)
    assert [hashlib.sha256(s).hexdigest() for s in streams] == case["sha256"]  # the files are unchanged
    assert all(s[:5] == b"GWL1" + bytes([VERSION_OF[archive]]) for s in streams)
    if archive in ("gwl_v2_subbands", "gwl_v2_repeat"):
        assert all(s[11] == 0x10 | case["subbands"] for s in streams)
    if archive in MODEL_OF:  # (model 0: written before context models existed, the model byte is 0)
        # (Colour frames of the archives of models 6 and 7 carry the chained-guides flag, as the encoder writes them.)
        assert all(s[5] == private.MODE_STORED or MODEL_OF[archive] in (_model_byte(s, info),
                                                                         _model_byte(s, info) & ~private.CHAINED)
                   for s in streams)
    # In order, frame by frame, as a DICOM reader decodes them (inter frames find their reference).
    for stream, expected in zip(streams, pixels):
        back = private.decode(stream, info)
        assert back.dtype == info.dtype and np.array_equal(back, expected)
    assert all(np.array_equal(a, b) for a, b in zip(private.decode_frames(streams, info), pixels))
    # DICOM pads odd fragments with one zero byte.
    assert np.array_equal(private.decode(streams[0] + b"\0", info), pixels[0])


def _source_pixels(source: dict) -> np.ndarray | None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    try:
        path = get_testdata_file(source["file"], download=False)
    except TypeError:  # an older pydicom without the download flag
        path = None
    if path is None:
        return None
    ds = pydicom.dcmread(path)
    array = ds.pixel_array
    if source.get("lut"):
        from pydicom.pixels import apply_color_lut

        array = apply_color_lut(array, ds)
    (r0, r1), (c0, c1) = source["rows"], source["columns"]
    array = np.ascontiguousarray(array[r0:r1, c0:c1])
    for axis in source.get("enlarge", ()):  # a sample put between every two neighbours
        limits = np.iinfo(array.dtype)
        wider = enlarge(array, axis, cubic=source.get("cubic", False))
        array = np.ascontiguousarray(np.clip(wider, limits.min, limits.max).astype(array.dtype))
    for axis in source.get("repeat", ()):  # every sample repeated once
        array = np.ascontiguousarray(np.repeat(array, 2, axis))
    if source.get("trim"):
        array = np.ascontiguousarray(array[source["trim"][0]:, source["trim"][1]:])
    bits = source.get("quantise")
    if bits:  # each 8-bit channel quantised to `bits` bits and scaled back to 0..255
        top = (1 << bits) - 1
        array = (((array.astype(np.int64) >> (8 - bits)) * 255 + top // 2) // top).astype(array.dtype)
    pad = source.get("pad")
    if pad:  # put on a field of one value, as scanners pad the outside of a CT's field of view
        field = np.full(pad["shape"], pad["value"], array.dtype)
        y, x = pad["at"]
        field[y:y + array.shape[0], x:x + array.shape[1]] = array
        array = field
    return array


def _model_byte(stream: bytes, info: FrameInfo) -> int:
    planes = {3: 4, 4: 6}.get(stream[10], info.samples_per_pixel)
    return stream[28 + 12 * planes + 3]


@pytest.mark.parametrize("archive, case", ALL_CASES, ids=[f"{a}-{c['id']}" for a, c in ALL_CASES])
def test_golden_pixels_come_from_pydicom(archive: str, case: dict) -> None:
    """The expected pixels are pydicom's reading of its own test files, not our decoder's output."""
    _, _, pixels = _frames(ARCHIVES[archive][0], case)
    decoded: list[np.ndarray] = []
    for source, expected in zip(case["sources"], pixels):
        frame = _source_pixels(source)
        if frame is None:
            pytest.skip(f"pydicom's test file {source['file']} is not installed")
        paste = source.get("paste")
        if paste:
            base = decoded[paste["onto"]].copy()
            patch = _source_pixels({"file": source["file"], "rows": paste["rows"], "columns": paste["columns"]})
            y, x = paste["at"]
            base[y:y + patch.shape[0], x:x + patch.shape[1]] = patch
            frame = base
        assert frame.dtype == expected.dtype and np.array_equal(frame, expected)
        decoded.append(frame)
