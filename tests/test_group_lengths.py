"""Group Length elements (gggg,0000) reach the archive as they arrived, and correct wherever the gateway changes a group.

They are retired (PS3.5 7.2) and pydicom drops every one it writes, but an
archive comparing what it was sent with what it stores sees them vanish.
The worker keeps them: a group it writes as received keeps its group length
byte for byte (even a wrong one: receivers must not rely on it), a group
whose content changes (7FE0 always, 0028 when Planar Configuration or
Photometric Interpretation change, every group of a dataset re-encoded from
implicit VR or big endian) gets the length of what was written.  Outputs are
read here with an element walker of this file's own.
"""

from __future__ import annotations

import struct
import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

import gateway.worker
from gateway.dicom.filemeta import parse_file_meta
from tests.test_attribute_fidelity import _compare, _parse, _process
from tests.tools import dcmtk

_UNDEFINED = 0xFFFFFFFF
_LONG = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_TARGETS = ["RLELossless", "JPEGLSLossless", "JPEGLosslessSV1", "JPEG2000Lossless"]


# ---------------------------------------------------------------- reading element headers


def _header(data: bytes, pos: int, implicit: bool) -> tuple[int, int, int]:
    """(tag, value length, value offset) of the little endian element at `pos`."""
    group, element = struct.unpack_from("<HH", data, pos)
    if implicit or group == 0xFFFE:
        return group << 16 | element, struct.unpack_from("<I", data, pos + 4)[0], pos + 8
    if data[pos + 4:pos + 6] in _LONG:
        return group << 16 | element, struct.unpack_from("<I", data, pos + 8)[0], pos + 12
    return group << 16 | element, struct.unpack_from("<H", data, pos + 6)[0], pos + 8


def _undefined_end(data: bytes, pos: int, implicit: bool) -> int:
    """Where an undefined length value starting at `pos` ends: after its sequence delimiter."""
    while True:
        tag, length, value = _header(data, pos, True)
        if tag == 0xFFFEE0DD:
            return value
        if length != _UNDEFINED:
            pos = value + length
            continue
        pos = value
        while True:  # the elements of an item of undefined length, up to its delimiter
            tag, length, value = _header(data, pos, implicit)
            if tag == 0xFFFEE00D:
                pos = value
                break
            pos = _undefined_end(data, value, implicit) if length == _UNDEFINED else value + length


def _top_level(data: bytes, implicit: bool) -> list[tuple[int, int, int, int]]:
    """(tag, start, value start, end) of the top-level elements of a little endian DICOM file."""
    pos, _ = parse_file_meta(data[:65536])
    found = []
    while pos < len(data):
        tag, length, value = _header(data, pos, implicit)
        end = _undefined_end(data, value, implicit) if length == _UNDEFINED else value + length
        found.append((tag, pos, value, end))
        pos = end
    return found


def _lengths(data: bytes, implicit: bool = False) -> dict[int, tuple[int, int]]:
    """{group: (its group length's value, the bytes of the group's elements after it)}."""
    entries = _top_level(data, implicit)
    found = {}
    for index, (tag, _, value, end) in enumerate(entries):
        if tag & 0xFFFF == 0 and tag >> 16 > 2:
            following = [e for e in entries[index + 1:]]
            actual = 0
            for other, start, _, stop in following:
                if other >> 16 != tag >> 16:
                    break
                actual += stop - start
            found[tag >> 16] = (struct.unpack_from("<I", data, value)[0], actual)
    return found


def _with_group_lengths(data: bytes, implicit: bool = False, wrong: dict[int, int] | None = None) -> bytes:
    """`data` (little endian) with a group length before each group of its top-level dataset.

    Each is the group's length, or the value `wrong` gives for the group.
    """
    wrong = wrong or {}
    entries = _top_level(data, implicit)
    sizes: dict[int, int] = {}
    for tag, start, _, end in entries:
        sizes[tag >> 16] = sizes.get(tag >> 16, 0) + end - start
    out, pos, previous = [], entries[0][1], None
    out.append(data[:pos])
    for tag, start, _, end in entries:
        group = tag >> 16
        if group != previous:
            value = wrong.get(group, sizes[group])
            out.append(struct.pack("<HHII", group, 0, 4, value) if implicit
                       else struct.pack("<HH2sHI", group, 0, b"UL", 4, value))
        out.append(data[start:end])
        previous = group
    return b"".join(out)


def _bytes(ds, implicit: bool = False) -> bytes:
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True, implicit_vr=implicit)
    return buffer.getvalue()


def _planar(name: str) -> bytes:
    """A bundled colour image of pydicom, its pixels stored colour-by-plane (Planar Configuration 1)."""
    ds = dcmread(get_testdata_file(name))
    ds.PixelData = np.ascontiguousarray(ds.pixel_array.transpose(2, 0, 1)).tobytes()
    ds.PlanarConfiguration = 1
    return _bytes(ds)


def _pydicom(name: str) -> bytes:
    """One of pydicom's test files as it is, bundled or from pydicom-data (skipped when not there)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is in pydicom-data, which is not installed")
    return Path(path).read_bytes()


# ---------------------------------------------------------------- what must hold of every output


_PIXEL_MODULE = {0x00280004, 0x00280006}  # Photometric Interpretation, Planar Configuration


def _check(tmp_path: Path, data: bytes, target: str, *, lean: bool, monkeypatch) -> tuple[dict, dict, bytes]:
    """Process `data`; check what every output must be; return the input's and output's group lengths."""
    if not lean:
        monkeypatch.setattr(gateway.worker, "read_lean", lambda path: None)
    out = _process(tmp_path, data, target)
    _, syntax = parse_file_meta(data[:65536])
    _, written = parse_file_meta(out[:65536])
    assert written != syntax, "recompressed"
    implicit, little = syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian
    before = _lengths(data, implicit) if little else {}
    after = _lengths(out)
    # Every other element is as it arrived: the pixel module's changes and the group lengths are checked apart.
    _, elements_in = _parse(data)
    _, elements_out = _parse(out)
    changed = {tag for tag in _PIXEL_MODULE if elements_in.get(tag) != elements_out.get(tag)}
    skip = changed | {tag for tag in elements_in if tag & 0xFFFF == 0}
    assert _compare({t: v for t, v in elements_in.items() if t not in skip},
                    {t: v for t, v in elements_out.items() if t not in skip}, little, implicit) == []
    assert {t for t in elements_in if t & 0xFFFF == 0} == {t for t in elements_out if t & 0xFFFF == 0}, \
        "every group length kept"
    assert np.array_equal(dcmread(BytesIO(out)).pixel_array, dcmread(BytesIO(data)).pixel_array)
    dump = dcmtk("dcmdump")
    if dump is not None:
        path = tmp_path / "out.dcm"
        path.write_bytes(out)
        done = subprocess.run([dump, "+L", str(path)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and not done.stderr.strip(), done.stderr
        assert done.stdout.count("GroupLength") == len(after) + 1  # and the file meta's
    return before, after, out


def _changed_groups(data: bytes, out: bytes) -> set[int]:
    _, elements_in = _parse(data)
    _, elements_out = _parse(out)
    return {0x7FE0} | {tag >> 16 for tag in _PIXEL_MODULE if elements_in.get(tag) != elements_out.get(tag)}


_SOURCES = {
    "CT_small": lambda: _with_group_lengths(_bytes(dcmread(get_testdata_file("CT_small.dcm")))),
    "MR_small": lambda: _with_group_lengths(_bytes(dcmread(get_testdata_file("MR_small.dcm")))),
    "rgb-planar": lambda: _with_group_lengths(_planar("examples_rgb_color.dcm")),
    "rgb": lambda: _with_group_lengths(_bytes(dcmread(get_testdata_file("examples_rgb_color.dcm")))),
    "693_UNCR": lambda: _pydicom("693_UNCR.dcm"),
    "693_UNCI": lambda: _pydicom("693_UNCI.dcm"),
    "color-pl": lambda: _pydicom("color-pl.dcm"),
    "color-px": lambda: _pydicom("color-px.dcm"),
}


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "whole"])
@pytest.mark.parametrize("target", _TARGETS)
@pytest.mark.parametrize("source", list(_SOURCES))
def test_explicit_little_endian_keeps_its_group_lengths(tmp_path: Path, monkeypatch, source: str, target: str,
                                                         lean: bool) -> None:
    """Spliced or with the pixel module changed: the groups left alone keep their group length as it was,
    the others get their true length (693_UNCR's (7FE0,0000) and 693_UNCI's (0008,0000) and (0028,0000)
    are wrong as sent)."""
    data = _SOURCES[source]()
    before, after, out = _check(tmp_path, data, target, lean=lean, monkeypatch=monkeypatch)
    assert set(after) == set(before)
    changed = _changed_groups(data, out)
    for group, (stated, actual) in after.items():
        if group in changed:
            assert stated == actual, f"({group:04X},0000) {stated}, the group takes {actual}"
        else:
            assert stated == before[group][0], f"({group:04X},0000) kept as received"
            assert actual == before[group][1], f"group {group:04X} written as received"


def test_a_wrong_group_length_is_kept_where_its_group_is_and_recomputed_where_it_changes(
        tmp_path: Path, monkeypatch) -> None:
    wrong = {0x0008: 12, 0x0028: 3, 0x7FE0: 1}
    data = _with_group_lengths(_planar("examples_rgb_color.dcm"), wrong=wrong)
    before, after, out = _check(tmp_path, data, "JPEG2000Lossless", lean=True, monkeypatch=monkeypatch)
    assert dcmread(BytesIO(out)).PhotometricInterpretation == "YBR_RCT"
    assert after[0x0008] == (12, before[0x0008][1]), "untouched: as received"
    assert after[0x0028][0] == after[0x0028][1] == before[0x0028][1] + 4, "'YBR_RCT ' is 4 bytes longer than 'RGB '"
    assert after[0x7FE0][0] == after[0x7FE0][1]
    assert all(after[g] == before[g] for g in before if g not in wrong), "the correct ones stay correct"

    grey = _with_group_lengths(_bytes(dcmread(get_testdata_file("CT_small.dcm"))), wrong=wrong)
    before, after, _ = _check(tmp_path / "grey", grey, "JPEGLSLossless", lean=True, monkeypatch=monkeypatch)
    assert after[0x0008] == (12, before[0x0008][1]) and after[0x0028] == (3, before[0x0028][1])
    assert after[0x7FE0][0] == after[0x7FE0][1]


def test_a_pixel_group_length_that_is_no_ul_is_dropped_alone(tmp_path: Path, monkeypatch) -> None:
    data = _with_group_lengths(_bytes(dcmread(get_testdata_file("CT_small.dcm"))))
    at = data.index(b"\xe0\x7f\x00\x00UL\x04\x00")
    data = data[:at] + b"\xe0\x7f\x00\x00UN\x00\x00\x04\x00\x00\x00" + data[at + 8:]
    assert dcmread(BytesIO(data))[0x7FE00000].VR == "UN"
    out = _process(tmp_path, data, "RLELossless")
    assert 0x7FE0 not in _lengths(out)
    assert set(_lengths(out)) == set(_lengths(data)) - {0x7FE0}
    assert all(stated == actual for stated, actual in _lengths(out).values())


@pytest.mark.parametrize("target", _TARGETS)
def test_big_endian_keeps_its_group_lengths(tmp_path: Path, monkeypatch, target: str) -> None:
    """pydicom's ExplVR_BigEnd (RGB, colour-by-plane): re-encoded little endian, every group length recomputed."""
    data = _pydicom("ExplVR_BigEnd.dcm")
    sent = dcmread(BytesIO(data))
    expected = {int(tag) >> 16: sent[tag].value for tag in sent.keys() if tag.element == 0}
    _, after, _ = _check(tmp_path, data, target, lean=False, monkeypatch=monkeypatch)
    assert set(after) == set(expected)
    for group, (stated, actual) in after.items():
        assert stated == actual, f"({group:04X},0000) {stated}, the group takes {actual}"
        if group not in (0x0028, 0x7FE0):
            assert stated == expected[group], "the same bytes little endian"


def test_implicit_vr_keeps_its_group_lengths_for_its_explicit_vr_output(tmp_path: Path, monkeypatch) -> None:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    del ds.OtherPatientIDsSequence  # this file's walker knows no sequence by its tag alone
    data = _with_group_lengths(_bytes(ds, implicit=True), implicit=True)
    before, after, _ = _check(tmp_path, data, "JPEGLSLossless", lean=False, monkeypatch=monkeypatch)
    assert set(after) == set(before)
    for group, (stated, actual) in after.items():
        assert stated == actual, f"({group:04X},0000) {stated}, the group takes {actual}"


def test_without_group_lengths_none_appear(tmp_path: Path) -> None:
    for name, target in (("CT_small.dcm", "RLELossless"), ("examples_rgb_color.dcm", "JPEG2000Lossless")):
        out = _process(tmp_path / name, _bytes(dcmread(get_testdata_file(name))), target)
        assert _lengths(out) == {}


def test_native_target_keeps_the_group_lengths(tmp_path: Path, monkeypatch) -> None:
    data = _with_group_lengths(_bytes(dcmread(get_testdata_file("CT_small.dcm"))))
    rle = _process(tmp_path / "rle", data, "RLELossless")
    _, after, _ = _check(tmp_path / "native", rle, ExplicitVRLittleEndian, lean=True, monkeypatch=monkeypatch)
    assert all(stated == actual for stated, actual in after.values())


@pytest.mark.parametrize("source", ["CT_small", "rgb-planar"])
@pytest.mark.parametrize("folder", [False, True], ids=["file", "folder"])
def test_compress_writes_what_the_gateway_writes(tmp_path: Path, source: str, folder: bool) -> None:
    """``dicom-gateway compress``, on one file or a folder: the same bytes as the live gateway's worker, group
    lengths kept where their groups are untouched and recomputed where they change."""
    from gateway.cli import main

    data = _SOURCES[source]()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.dcm").write_bytes(data)
    args = ([str(tmp_path / "in"), str(tmp_path / "out"), "--workers", "1"] if folder
            else [str(tmp_path / "in" / "a.dcm"), str(tmp_path / "out.dcm")])
    assert main(["compress", *args, "--transfer-syntax", "JPEGLSLossless"]) == 0
    out = (tmp_path / "out" / "a.dcm" if folder else tmp_path / "out.dcm").read_bytes()
    assert out == _process(tmp_path / "gateway", data, "JPEGLSLossless")
    after = _lengths(out)
    assert after.keys() == _lengths(data).keys() and all(value == actual for value, actual in after.values())
