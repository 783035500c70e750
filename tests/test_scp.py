"""The receiver: durable C-STORE, statuses for bad input, association policy."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from gateway.config import ServerConfig
from gateway.errors import SpoolError
from gateway.net.scp import Receiver, accepted_syntaxes, start_receiver, tcp_nodelay
from gateway.spool import Spool
from tests.conftest import free_port, pydicom_file, send


@pytest.fixture
def receiver(tmp_path: Path):
    """A receiver on a free port with only MODALITY and OTHER allowed to call."""
    spool = Spool(tmp_path / "spool")
    notified: list[str] = []
    rec = Receiver(spool, on_received=notified.append)
    server_cfg = ServerConfig(ae_title="GATEWAY", host="127.0.0.1", port=free_port(),
                              allowed_callers=("MODALITY", "OTHER"))
    server = start_receiver(server_cfg, rec)
    yield SimpleNamespace(spool=spool, notified=notified, port=server_cfg.port, receiver=rec)
    server.shutdown()


def _echo(port: int, calling: str = "MODALITY", called: str = "GATEWAY") -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status) == 0


def test_echo_and_association_policy(receiver) -> None:
    assert _echo(receiver.port)
    assert not _echo(receiver.port, calling="STRANGER"), "unknown calling AE must be rejected"
    assert not _echo(receiver.port, called="NOT_US"), "wrong called AE must be rejected"
    assert _echo(receiver.port, calling="OTHER"), "server keeps serving after rejections"


def test_store_is_durable_before_success(receiver) -> None:
    ds = pydicom_file("CT_small.dcm")
    assert send(receiver.port, [ds]) == [0x0000]
    ids = receiver.spool.received()
    assert len(ids) == 1 and receiver.notified == ids
    stored = dcmread(receiver.spool.incoming_path(ids[0]))
    assert stored.SOPInstanceUID == ds.SOPInstanceUID
    assert stored.PixelData == ds.PixelData
    assert receiver.spool.calling_ae(ids[0]) == "MODALITY"
    assert list(receiver.spool.tmp.iterdir()) == []


def test_compressed_syntaxes_are_accepted_as_received(receiver) -> None:
    files = ["MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_gdcm.dcm", "MR_small_jpeg_ls_lossless.dcm"]
    datasets = [pydicom_file(name) for name in files]
    assert send(receiver.port, datasets) == [0] * len(files)
    stored = [dcmread(receiver.spool.incoming_path(i)) for i in receiver.spool.received()]
    got = {str(s.file_meta.TransferSyntaxUID): s for s in stored}
    for ds in datasets:  # each kept in the syntax it came in, bytes unchanged
        assert got[ds.file_meta.TransferSyntaxUID].PixelData == ds.PixelData


def test_accepted_syntaxes_cover_the_common_ones() -> None:
    syntaxes = accepted_syntaxes()
    for uid in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
                "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70",
                "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.201"):
        assert uid in syntaxes
    from gateway.codecs import all_codecs

    assert all(c.uid in syntaxes for c in all_codecs())


def _send_raw_file(port: int, path: Path, monkeypatch) -> int:
    """Send a file's bytes as they are (no re-encoding), as a broken sender would."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEWAY")
    assert assoc.is_established
    rsp = assoc.send_c_store(path)
    assoc.release()
    return int(rsp.Status)


def _ct_explicit(tmp_path: Path) -> Path:
    ds = pydicom_file("CT_small.dcm")
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("cut", [1000, 300, 3], ids=["in-pixel-data", "mid-dataset", "last-bytes"])
def test_truncated_dataset_cannot_be_understood_and_server_keeps_serving(
        receiver, tmp_path: Path, monkeypatch, cut: int) -> None:
    full = _ct_explicit(tmp_path)
    raw = full.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(raw[: len(raw) - cut] if cut != 300 else raw[:1500])
    assert _send_raw_file(receiver.port, truncated, monkeypatch) == 0xC210
    assert receiver.spool.received() == []
    assert _send_raw_file(receiver.port, full, monkeypatch) == 0x0000
    assert len(receiver.spool.received()) == 1


@pytest.mark.parametrize("cut", [0, 2, 1000, 300_000], ids=["complete", "2-bytes", "1000-bytes", "most-pixels"])
def test_check_sees_truncation_inside_a_deferred_pixel_data(tmp_path: Path, cut: int) -> None:
    """Pixel Data above the parse's defer size is never read, yet a cut inside it is found."""
    ds = pydicom_file("CT_small.dcm")
    ds.Rows = ds.Columns = 512
    ds.PixelData = np.arange(512 * 512, dtype="<u2").tobytes()
    if 0xFFFCFFFC in ds:
        del ds[0xFFFCFFFC]  # trailing padding: Pixel Data is the last element
    full = tmp_path / "big.dcm"
    ds.save_as(full, enforce_file_format=True)
    raw = full.read_bytes()
    path = tmp_path / "received.dcm"
    path.write_bytes(raw[: len(raw) - cut])
    if cut == 0:
        receipt = Receiver._check(path, ExplicitVRLittleEndian)
        assert receipt.sop_instance_uid == ds.SOPInstanceUID
        return
    with pytest.raises(ValueError, match="past the end"):
        Receiver._check(path, ExplicitVRLittleEndian)


@pytest.mark.filterwarnings("ignore:Expected explicit VR")
def test_garbage_dataset_cannot_be_understood(receiver, tmp_path: Path, monkeypatch) -> None:
    path = _ct_explicit(tmp_path)
    raw = bytearray(path.read_bytes())
    meta_end = raw.index(b"\x08\x00\x05\x00")  # first dataset element
    raw[meta_end:] = np.random.default_rng(1).integers(0, 256, 600, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(raw))
    assert _send_raw_file(receiver.port, path, monkeypatch) == 0xC210
    assert _echo(receiver.port)


def test_spool_failure_answers_out_of_resources(receiver, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise SpoolError("disk full")

    monkeypatch.setattr(receiver.spool, "admit", broken)
    assert send(receiver.port, [pydicom_file("CT_small.dcm")]) == [0xA700]
    assert receiver.spool.received() == [] and list(receiver.spool.tmp.iterdir()) == []
    monkeypatch.undo()
    assert send(receiver.port, [pydicom_file("CT_small.dcm")]) == [0x0000]


def test_large_multiframe_is_streamed_intact(receiver) -> None:
    ds = pydicom_file("CT_small.dcm")
    frames = 120
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 4096, (frames, ds.Rows, ds.Columns), dtype=np.uint16)
    ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset(ds.file_meta)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    assert send(receiver.port, [ds]) == [0x0000]
    (ident,) = receiver.spool.received()
    stored = dcmread(receiver.spool.incoming_path(ident))
    assert np.array_equal(stored.pixel_array, pixels)


def test_tcp_nodelay_is_set_on_the_association_socket() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        event = SimpleNamespace(assoc=SimpleNamespace(dul=SimpleNamespace(socket=SimpleNamespace(socket=sock))))
        tcp_nodelay(event)  # type: ignore[arg-type]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        sock.close()


# ------------------------------------------------------------------ datasets sent as raw bytes


def _encoded(ds, syntax: str) -> bytes:
    """`ds` without file meta, encoded in `syntax` (Deflated: explicit little endian, then raw deflate)."""
    from io import BytesIO

    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_dataset

    buffer = BytesIO()
    out = DicomFileLike(buffer)
    out.is_little_endian = syntax != "1.2.840.10008.1.2.2"
    out.is_implicit_VR = syntax == "1.2.840.10008.1.2"
    write_dataset(out, ds)
    return buffer.getvalue()


def _store_bytes(port: int, sop_class: str, sop_instance: str, syntax: str, data: bytes) -> int:
    """C-STORE `data` as it is, under a command naming `sop_class` and `sop_instance`."""
    from gateway.net.scu import Association

    with Association.request("127.0.0.1", port, called_ae="GATEWAY", calling_ae="MODALITY",
                             contexts=[(sop_class, syntax), (Verification, "1.2.840.10008.1.2")],
                             timeout=20) as assoc:
        return assoc.c_store(sop_class, sop_instance, syntax, data).status


def _deflate(raw: bytes) -> bytes:
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(raw) + packer.flush()


@pytest.mark.parametrize("damage", ["inside-last-element", "stream-cut", "two bytes after", "none", "padded"])
def test_deflated_dataset_must_be_complete(receiver, damage: str) -> None:
    """A well-formed deflate stream of a cut dataset, a cut deflate stream, bytes after its end: 0xC210, not
    forwarded.  A stream of odd length padded with one 00 byte (PS3.5 A.5) is whole."""
    ds = pydicom_file("CT_small.dcm")
    raw = _encoded(ds, "1.2.840.10008.1.2.1")
    while damage == "padded" and len(_deflate(raw)) % 2 == 0:  # a dataset whose deflate stream is odd
        ds.ImageComments = str(ds.get("ImageComments", "")) + "x"
        raw = _encoded(ds, "1.2.840.10008.1.2.1")
    if damage == "inside-last-element":
        data = _deflate(raw[:-1000])
    elif damage == "stream-cut":
        data = _deflate(raw)[:-200]
    elif damage == "two bytes after":
        data = _deflate(raw) + b"\0\0"
    elif damage == "padded":
        data = _deflate(raw) + b"\0"
    else:
        data = _deflate(raw)
    whole = damage in ("none", "padded")
    status = _store_bytes(receiver.port, ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1.99", data)
    assert status == (0x0000 if whole else 0xC210)
    assert len(receiver.spool.received()) == (1 if whole else 0)
    assert list(receiver.spool.tmp.iterdir()) == []


def test_a_deflated_dataset_inflating_past_the_limit_is_refused_unread(receiver, monkeypatch) -> None:
    """pydicom inflates a Deflated data set whole: a small stream of a huge one is refused before it does."""
    import gateway.net.scp

    ds = pydicom_file("CT_small.dcm")
    raw = _encoded(ds, "1.2.840.10008.1.2.1")
    monkeypatch.setattr(gateway.net.scp, "INFLATED_LIMIT", len(raw) - 1)
    status = _store_bytes(receiver.port, ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1.99", _deflate(raw))
    assert status == 0xA700
    assert receiver.spool.received() == [] and list(receiver.spool.tmp.iterdir()) == []
    monkeypatch.setattr(gateway.net.scp, "INFLATED_LIMIT", len(raw))
    assert _store_bytes(receiver.port, ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1.99",
                        _deflate(raw)) == 0x0000


def test_dataset_nested_too_deep_cannot_be_understood(receiver, caplog) -> None:
    """Sequences nested 2000 deep (RecursionError in pydicom): 0xC210 and one line, no traceback."""
    import struct

    ds = pydicom_file("CT_small.dcm")
    raw = _encoded(ds, "1.2.840.10008.1.2.1")
    undefined = struct.pack("<I", 0xFFFFFFFF)
    opening = struct.pack("<HH", 0x0040, 0xA730) + b"SQ\0\0" + undefined + struct.pack("<HH", 0xFFFE, 0xE000) + undefined
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    at = raw.index(struct.pack("<HH", 0x7FE0, 0x0010))  # (0040,A730) goes before Pixel Data
    data = raw[:at] + opening * 2000 + closing * 2000 + raw[at:]
    with caplog.at_level("INFO", logger="gateway"):
        status = _store_bytes(receiver.port, ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1", data)
    assert status == 0xC210
    assert receiver.spool.received() == [] and list(receiver.spool.tmp.iterdir()) == []
    rejected = [r for r in caplog.records if "status=0xC210" in r.getMessage()]
    assert len(rejected) == 1 and "RecursionError" in rejected[0].getMessage() and rejected[0].exc_info is None
    assert _echo(receiver.port)


@pytest.mark.parametrize("differs", ["instance", "class"])
def test_command_and_dataset_must_name_the_same_instance(receiver, caplog, differs: str) -> None:
    ds = pydicom_file("CT_small.dcm")
    other = generate_uid()
    sop_class = "1.2.840.10008.5.1.4.1.1.4" if differs == "class" else ds.SOPClassUID  # MR Image Storage
    sop_instance = other if differs == "instance" else ds.SOPInstanceUID
    with caplog.at_level("INFO", logger="gateway"):
        status = _store_bytes(receiver.port, sop_class, sop_instance, "1.2.840.10008.1.2.1",
                              _encoded(ds, "1.2.840.10008.1.2.1"))
    assert status == 0xA900
    assert receiver.spool.received() == [] and list(receiver.spool.tmp.iterdir()) == []
    line = next(r.getMessage() for r in caplog.records if "status=0xA900" in r.getMessage())
    assert (other if differs == "instance" else sop_class) in line
    assert str(ds.PatientName) not in line and str(ds.PatientID) not in line
    assert send(receiver.port, [ds]) == [0x0000]
