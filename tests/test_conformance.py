"""The files the gateway writes, read as an archive's validators read them: PS3.10 file meta,
PS3.5 Annex A encapsulation, the codestream headers against the attributes, and dciodvfy.

Every file goes through the real path (``dicom-gateway compress``) and is read
back by parsers written here from the standard, not by the gateway's own
readers.  PS3.10 7.1 has the Implementation Class UID and Version Name of a
file identify the implementation that wrote it and its content, and its
Source AE Title the AE that wrote it: once the gateway has re-encoded the
pixel data those are the gateway's, not the modality's nor pynetdicom's
(which wrote the spool file).  dicom3tools' ``dciodvfy`` must find nothing
in what we wrote that it did not find in what we were given.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from gateway import __version__
from gateway.cli import main
from gateway.codecs.base import FrameInfo
from tests.images import make_dataset

OUR_CLASS_UID = "2.25.53897576694086526053863854056254947965"  # the one our association requests announce
FOREIGN = {"class": "1.2.826.0.1.3680043.9.3811.3.0.4", "version": "PYNETDICOM_304", "source": "CT_SCANNER_7"}
RLE, JPEG_SV1, JPEG_LS, J2K, HTJ2K, HTJ2K_RPCL = (
    "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202")
SYNTAXES = [RLE, JPEG_SV1, JPEG_LS, J2K, HTJ2K, HTJ2K_RPCL]
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def _image(kind: str) -> tuple[FrameInfo, list[np.ndarray]]:
    """Small images with what encapsulation gets wrong first: odd sizes, several frames, sign, colour."""
    rng = np.random.default_rng(7)
    if kind == "ct":  # signed 12 bits in 16, 3 frames of 37 x 53
        info = FrameInfo(rows=37, columns=53, samples_per_pixel=1, bits_allocated=16, bits_stored=12,
                         pixel_representation=1, photometric_interpretation="MONOCHROME2")
        ramp = np.add.outer(np.arange(37) * 40, np.arange(53) * 30) - 2000
        frames = [(ramp + k * 7 + rng.integers(-3, 4, ramp.shape)).astype(np.int16) for k in range(3)]
    elif kind == "rgb":  # one frame of 31 x 45, 8-bit colour
        info = FrameInfo(rows=31, columns=45, samples_per_pixel=3, bits_allocated=8, bits_stored=8,
                         pixel_representation=0, photometric_interpretation="RGB")
        base = np.add.outer(np.arange(31) // 4 * 12, np.arange(45) // 8 * 20)  # runs RLE shrinks too
        frames = [np.stack([base, base // 2 + 20, 200 - base // 2], axis=-1).astype(np.uint8)]
    elif kind == "mono8":  # 6 bits in 8, 2 frames of 29 x 33
        info = FrameInfo(rows=29, columns=33, samples_per_pixel=1, bits_allocated=8, bits_stored=6,
                         pixel_representation=0, photometric_interpretation="MONOCHROME2")
        frames = [((np.add.outer(np.arange(29) // 4, np.arange(33) // 8) * 5 + k) % 64).astype(np.uint8)
                  for k in range(2)]
    else:  # noise no lossless coder shrinks
        info = FrameInfo(rows=64, columns=64, samples_per_pixel=1, bits_allocated=8, bits_stored=8,
                         pixel_representation=0, photometric_interpretation="MONOCHROME2")
        frames = [rng.integers(0, 256, (64, 64)).astype(np.uint8)]
    return info, frames


def _source(folder: Path, kind: str, syntax: str = ExplicitVRLittleEndian) -> Path:
    """A file of `kind` in `syntax` whose file meta names another writer, as received files do."""
    info, frames = _image(kind)
    ds = make_dataset(info, frames, syntax)
    ds.file_meta.ImplementationClassUID = FOREIGN["class"]
    ds.file_meta.ImplementationVersionName = FOREIGN["version"]
    ds.file_meta.SourceApplicationEntityTitle = FOREIGN["source"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _compress(src: Path, out: Path, syntax: str) -> Path:
    assert main(["compress", "--transfer-syntax", syntax, str(src), str(out)]) == 0  # one file: in this process
    return out


def _file_meta(data: bytes) -> tuple[list[tuple[int, bytes, bytes]], int]:
    """(element, VR, value) of each meta element as PS3.10 7.1 lays them out, and where the dataset starts."""
    assert data[128:132] == b"DICM"
    elements, pos = [], 132
    while struct.unpack_from("<H", data, pos)[0] == 0x0002:
        elem, vr = struct.unpack_from("<H", data, pos + 2)[0], data[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            length, start = struct.unpack_from("<I", data, pos + 8)[0], pos + 12
        else:
            length, start = struct.unpack_from("<H", data, pos + 6)[0], pos + 8
        elements.append((elem, vr, data[start:start + length]))
        pos = start + length
    return elements, pos


@pytest.mark.parametrize("source", [ExplicitVRLittleEndian, ImplicitVRLittleEndian], ids=["explicit", "implicit"])
@pytest.mark.parametrize("syntax", SYNTAXES)
def test_a_file_we_re_encoded_names_the_gateway_as_its_writer(tmp_path: Path, syntax: str, source: str) -> None:
    # explicit VR sources are spliced byte for byte, implicit ones re-encoded by pydicom: both paths
    out = _compress(_source(tmp_path / "in", "ct", source), tmp_path / "out.dcm", syntax)
    elements, dataset_start = _file_meta(out.read_bytes())
    meta = {elem: (vr, value) for elem, vr, value in elements}
    assert meta[0x0010] == (b"UI", syntax.encode() + b"\x00" * (len(syntax) % 2))
    assert meta[0x0012] == (b"UI", OUR_CLASS_UID.encode() + b"\x00")  # 43 characters and a NUL
    version = f"GATEWAY_{__version__}"[:16].encode()
    assert meta[0x0013] == (b"SH", version + b" " * (len(version) % 2))
    assert 0x0016 not in meta, "the Source AE Title names the AE that wrote the file: not the one we read"
    assert [elem for elem, _, _ in elements] == sorted(elem for elem, _, _ in elements)
    assert all(len(value) % 2 == 0 for _, _, value in elements)
    assert struct.unpack("<I", meta[0x0000][1])[0] == dataset_start - 144
    assert meta[0x0001][1] == b"\x00\x01"


def test_a_file_we_pass_through_keeps_its_writer(tmp_path: Path) -> None:
    src = _source(tmp_path / "in", "noise")
    out = _compress(src, tmp_path / "out.dcm", RLE)
    assert out.read_bytes() == src.read_bytes()  # noise: RLE would not shrink it, so the original is copied
    meta = {elem: value for elem, _, value in _file_meta(out.read_bytes())[0]}
    assert meta[0x0012].rstrip(b"\x00").decode() == FOREIGN["class"]
    assert meta[0x0016].rstrip(b" ").decode() == FOREIGN["source"]


def _items(value: bytes) -> list[tuple[int, bytes]]:
    """(offset in `value`, content) of each item of an encapsulated Pixel Data value (PS3.5 A.4)."""
    items, pos = [], 0
    while pos < len(value):
        group, elem, length = struct.unpack_from("<HHI", value, pos)
        assert (group, elem) == (0xFFFE, 0xE000), f"({group:04X},{elem:04X}) where an item belongs"
        assert length != 0xFFFFFFFF and length % 2 == 0, f"item at {pos}: length {length:#x}"
        items.append((pos, value[pos + 8:pos + 8 + length]))
        pos += 8 + length
    assert pos == len(value)
    return items


def _j2k_siz(stream: bytes) -> tuple[int, int, int, list[int]]:
    """Xsiz, Ysiz, Csiz and each component's Ssiz of a raw JPEG 2000 codestream (T.800 A.5.1)."""
    assert stream[:4] == b"\xff\x4f\xff\x51", "a raw codestream: SOC then SIZ"
    x, y = struct.unpack_from(">II", stream, 8)
    components = struct.unpack_from(">H", stream, 40)[0]
    return x, y, components, [stream[42 + 3 * k] for k in range(components)]


def _j2k_main_header(stream: bytes) -> dict[int, bytes]:
    """The main header's marker segments (T.800 A.2), by marker, up to the first SOT."""
    segments, pos = {}, 2
    while True:
        marker, length = struct.unpack_from(">HH", stream, pos)
        if marker == 0xFF90:
            return segments
        segments[marker] = stream[pos + 4:pos + 2 + length]
        pos += 2 + length


def _jpeg_frame_header(stream: bytes) -> tuple[int, int, int, int, int]:
    """(SOF marker, P, Y, X, Nf) of a JPEG or JPEG-LS stream (T.81 B.2.2, T.87 C.2.2)."""
    assert stream[:2] == b"\xff\xd8"
    pos = 2
    while True:
        marker, length = struct.unpack_from(">HH", stream, pos)
        if marker in (0xFFC3, 0xFFF7):
            precision, rows, columns, components = struct.unpack_from(">BHHB", stream, pos + 4)
            return marker, precision, rows, columns, components
        pos += 2 + length


@pytest.mark.parametrize("kind", ["ct", "rgb", "mono8"])
@pytest.mark.parametrize("syntax", SYNTAXES)
def test_encapsulation_and_headers_agree_with_the_attributes(tmp_path: Path, syntax: str, kind: str) -> None:
    info, frames = _image(kind)
    out = _compress(_source(tmp_path / "in", kind), tmp_path / "out.dcm", syntax)
    data = out.read_bytes()
    ds = dcmread(out)
    assert ds.file_meta.TransferSyntaxUID == syntax
    value = ds.PixelData
    assert data.find(value + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00") != -1, "a zero-length sequence delimiter"
    (_, table), *fragments = _items(value)
    # PS3.5 A.4: one fragment per frame here, and the Basic Offset Table points at each frame's item
    assert len(fragments) == len(frames)
    first = fragments[0][0]
    assert list(struct.unpack(f"<{len(table) // 4}I", table)) == [pos - first for pos, _ in fragments]
    assert "ExtendedOffsetTable" not in ds
    if info.samples_per_pixel == 3:
        assert ds.PlanarConfiguration == 0
    assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (
        info.rows, info.columns, info.bits_allocated, info.bits_stored, info.bits_stored - 1,
        info.pixel_representation)
    for _, stream in fragments:
        if syntax == RLE:  # PS3.5 G.5: one segment per byte of each sample
            assert struct.unpack_from("<I", stream)[0] == info.samples_per_pixel * info.bits_allocated // 8
        elif syntax in (JPEG_SV1, JPEG_LS):
            marker, precision, rows, columns, components = _jpeg_frame_header(stream)
            assert marker == (0xFFC3 if syntax == JPEG_SV1 else 0xFFF7)
            assert (rows, columns, components) == (info.rows, info.columns, info.samples_per_pixel)
            # the precision holds Bits Stored; wider only within Bits Allocated (the codecs' documented choice)
            assert info.bits_stored <= precision <= info.bits_allocated
        else:
            x, y, components, ssiz = _j2k_siz(stream)
            assert (y, x, components) == (info.rows, info.columns, info.samples_per_pixel)
            # PS3.5 8.2.4: the precision is Bits Stored, and the sign bit is Pixel Representation
            assert ssiz == [(info.pixel_representation << 7) | (info.bits_stored - 1)] * components
            header = _j2k_main_header(stream)
            scod, progression, _layers, mct = struct.unpack_from(">BBHB", header[0xFF52])
            assert header[0xFF52][9] == 1, "the reversible 5-3 wavelet"
            assert (mct == 1) == (ds.PhotometricInterpretation == "YBR_RCT")
            assert ds.PhotometricInterpretation == ("YBR_RCT" if mct else info.photometric_interpretation)
            if syntax in (HTJ2K, HTJ2K_RPCL):
                assert 0xFF50 in header, "HTJ2K declares itself in a CAP segment"
            if syntax == HTJ2K_RPCL:  # PS3.5 10.18: RPCL, a base resolution of 64 or less, TLM segments
                levels = header[0xFF52][5]
                assert progression == 2 and 0xFF55 in header
                assert max(-(-x // 2 ** levels), -(-y // 2 ** levels)) <= 64


def _dciodvfy(path: Path) -> set[str]:
    done = subprocess.run([shutil.which("dciodvfy") or "dciodvfy", "-new", str(path)], capture_output=True,
                          text=True, timeout=60)
    return {line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()}


@pytest.mark.interop
@pytest.mark.parametrize("kind", ["ct", "rgb"])
@pytest.mark.parametrize("syntax", [RLE, JPEG_SV1, JPEG_LS, J2K])  # dicom3tools 2022 does not know HTJ2K
def test_dciodvfy_finds_nothing_new_in_what_we_write(tmp_path: Path, syntax: str, kind: str) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed (Debian package 'dicom3tools')")
    src = _source(tmp_path / "in", kind)
    out = _compress(src, tmp_path / "out.dcm", syntax)
    before, after = _dciodvfy(src), _dciodvfy(out)
    assert any(line.startswith(("Error", "Warning")) for line in before), "dciodvfy read nothing"
    # JPEG 2000 writes RGB as YBR_RCT (PS3.5 8.2.4): a message naming the value is the same message
    assert {line.replace("<YBR_RCT>", "<RGB>") for line in after} - before == set()


@pytest.mark.parametrize("codec", ["htj2k", "jpeg2000"])
def test_a_folder_run_reports_the_codec_by_its_name(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    codec: str) -> None:
    # the report groups reasons with their numbers as N: a codec's name is no number
    _source(tmp_path / "in", "noise")
    assert main(["compress", "--workers", "0", "--transfer-syntax", codec, str(tmp_path / "in"),
                 str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"{codec} would not shrink the pixel data; kept as received" in out, out
