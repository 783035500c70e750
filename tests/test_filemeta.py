"""File meta bytes: locating the dataset, reading only a file's head, patching the transfer syntax."""

from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import dcmwrite, write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless, RLELossless

from gateway.dicom.filemeta import parse_file_meta, read_file_meta, with_transfer_syntax
from tests.conftest import pydicom_file
from tests.fuzzing import EDITS, apply_edits

EXPLICIT, IMPLICIT = str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)
RLE, JPEG_LS = str(RLELossless), str(JPEGLSLossless)
SAMPLES = ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "SC_rgb_rle.dcm", "MR_small_implicit.dcm"]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _write(folder: Path, ds: Dataset, name: str = "x.dcm") -> Path:
    path = folder / name
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def _meta_head() -> bytes:
    buffer = BytesIO()
    dcmwrite(buffer, pydicom_file("MR_small_RLE.dcm"), enforce_file_format=True)
    return buffer.getvalue()[:600]


VALID_HEAD = _meta_head()


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_parse_file_meta(data: bytes) -> None:
    for head in (data, bytes(128) + b"DICM" + data):
        try:
            offset, syntax = parse_file_meta(head)
        except ValueError:
            continue
        assert 132 <= offset <= len(head) and syntax


@FUZZ
@given(EDITS)
def test_fuzz_parse_file_meta_mutations(edits: list[tuple[int, int, str]]) -> None:
    try:
        parse_file_meta(apply_edits(VALID_HEAD, [(128 + where % 472, value, kind) for where, value, kind in edits]))
    except ValueError:
        pass


# ------------------------------------------------------------ read_file_meta


@pytest.mark.parametrize("name", SAMPLES + ["rtplan.dcm"])
def test_read_file_meta_of_pydicom_files(tmp_path: Path, name: str) -> None:
    original = pydicom_file(name)
    path = _write(tmp_path, original)
    offset, syntax = read_file_meta(path)
    assert syntax == original.file_meta.TransferSyntaxUID
    data = path.read_bytes()
    assert struct.unpack_from("<H", data, offset)[0] != 0x0002
    got = read_dataset(BytesIO(data[offset:]), syntax == IMPLICIT, True)
    assert got == dcmread(path)


def _hand_written(path: Path, ds: Dataset, meta: FileMetaDataset, group_length: bool) -> int:
    """Write preamble, meta (with or without group length) and `ds`; return the dataset's offset."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta, enforce_standard=False)
    encoded_meta = buffer.getvalue()
    if not group_length and encoded_meta[:4] == b"\x02\x00\x00\x00":
        encoded_meta = encoded_meta[12:]
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    dataset = body.getvalue()
    path.write_bytes(bytes(128) + b"DICM" + encoded_meta + dataset)
    return 132 + len(encoded_meta)


def _meta(ds: Dataset, extra: int = 0) -> FileMetaDataset:
    meta = FileMetaDataset()
    if extra:
        meta.FileMetaInformationGroupLength = 0
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = EXPLICIT
    meta.ImplementationClassUID = "1.2.3.4"
    if extra:
        meta.SourceApplicationEntityTitle = "MODALITY"
        meta.PrivateInformationCreatorUID = "1.2.3.4.5"
        meta.PrivateInformation = b"\xAB" * extra
    return meta


@pytest.mark.parametrize("group_length", [True, False])
@pytest.mark.parametrize("extra", [0, 10, 40_000])
def test_read_file_meta_with_and_without_group_length(tmp_path: Path, group_length: bool, extra: int) -> None:
    ds = pydicom_file("CT_small.dcm")
    ds.file_meta = FileMetaDataset()
    path = tmp_path / "x.dcm"
    meta = _meta(ds, extra)
    if group_length:
        meta.FileMetaInformationGroupLength = 0  # fixed by pydicom on writing
    offset = _hand_written(path, ds, meta, group_length)
    data = path.read_bytes()
    assert (data[132:136] == b"\x02\x00\x00\x00") is group_length
    assert read_file_meta(path) == (offset, EXPLICIT)
    got = read_dataset(BytesIO(data[offset:]), False, True)
    assert got.PixelData == ds.PixelData and got.SOPInstanceUID == ds.SOPInstanceUID


@pytest.mark.parametrize("content", [
    b"", b"hello, not DICOM\n" * 40, bytes(128) + b"DICX" + bytes(100),
    bytes(128) + b"DICM" + b"\x02\x00\x01\x00OB\x00\x00\x02\x00\x00\x00\x00\x01" + b"\x08\x00\x05\x00CS\x00\x00",
    bytes(128) + b"DICM" + b"\x02\x00\x10\x00UI\x40\x00" + b"1.2.840",
], ids=["empty", "text", "no DICM", "no transfer syntax", "meta cut short"])
def test_read_file_meta_refuses_what_is_not_dicom(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        read_file_meta(path)


# ------------------------------------------------------- with_transfer_syntax


def _meta_bytes(meta: FileMetaDataset) -> bytes:
    """Preamble and meta as pydicom writes them."""
    buffer = DicomBytesIO()
    buffer.write(bytes(128) + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()


@pytest.mark.parametrize("name", SAMPLES)
@pytest.mark.parametrize("target", [RLE, JPEG_LS, "1.2.3.45678", "2.25.98736700971092333592611877631001549337"])
def test_with_transfer_syntax_writes_what_pydicom_writes(tmp_path: Path, name: str, target: str) -> None:
    """Odd and even UID lengths, a group length recomputed: equal to pydicom's own encoding."""
    original = pydicom_file(name)
    data = _write(tmp_path, original).read_bytes()
    patched = with_transfer_syntax(data[:4096], target)
    offset, _ = parse_file_meta(data)
    meta = dcmread(BytesIO(data), stop_before_pixels=True).file_meta
    meta.TransferSyntaxUID = target
    assert patched[:128] == data[:128]  # the preamble is kept
    assert patched[128:] == _meta_bytes(meta)[128:]
    assert parse_file_meta(patched + data[offset:]) == (len(patched), target)


@pytest.mark.parametrize("extra", [0, 10, 40_000])
def test_with_transfer_syntax_keeps_other_meta_elements_byte_for_byte(extra: int) -> None:
    ds = pydicom_file("CT_small.dcm")
    meta = _meta(ds, extra)
    head = _meta_bytes(meta) + b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100"
    patched = with_transfer_syntax(head, RLE)
    got = dcmread(BytesIO(patched + head[parse_file_meta(head)[0]:]), force=True).file_meta
    assert got.TransferSyntaxUID == RLE
    for keyword in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "ImplementationClassUID"):
        assert got[keyword].value == meta[keyword].value
    if extra:
        assert got.PrivateInformation == b"\xAB" * extra
    assert struct.unpack_from("<I", patched, 140)[0] == len(patched) - 144


def test_with_transfer_syntax_without_group_length(tmp_path: Path) -> None:
    ds = pydicom_file("CT_small.dcm")
    ds.file_meta = FileMetaDataset()
    path = tmp_path / "x.dcm"
    offset = _hand_written(path, ds, _meta(ds), group_length=False)
    data = path.read_bytes()
    patched = with_transfer_syntax(data[:offset + 8], RLE)
    assert patched[132:136] != b"\x02\x00\x00\x00"
    assert parse_file_meta(patched + data[offset:]) == (len(patched), RLE)


@pytest.mark.parametrize("uid", ["", "1.2.x", "1." * 40, "1.2.840 "])
def test_with_transfer_syntax_refuses_invalid_uids(uid: str) -> None:
    with pytest.raises(ValueError, match="not a valid UID"):
        with_transfer_syntax(VALID_HEAD, uid)


@FUZZ
@given(EDITS)
def test_fuzz_with_transfer_syntax_mutations(edits: list[tuple[int, int, str]]) -> None:
    head = apply_edits(VALID_HEAD, [(128 + where % 472, value, kind) for where, value, kind in edits])
    try:
        patched = with_transfer_syntax(head, RLE)
    except ValueError:
        return
    assert parse_file_meta(patched + b"\x08\x00\x05\x00CS\x00\x00")[1] == RLE
