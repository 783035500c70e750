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
