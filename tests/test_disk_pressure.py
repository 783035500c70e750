"""A full disk: C-STOREs answered 0xA700 before their data is kept, and delivery goes on.

One test fills a real, small filesystem (a tmpfs mounted for it; CI runs as
root); the others inject ENOSPC where the gateway writes, or set a floor
above the free space of any disk.
"""

from __future__ import annotations

import errno
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

import gateway.net.sink
import gateway.worker
from gateway.errors import SpoolError
from gateway.net.sink import SinkPolicy, SpoolSink
from gateway.spool import DEAD, Spool, free_bytes
from tests.conftest import build_config, make_series, send, small_tmpfs, wait_until

_NO_FLOOR = 0
_ABOVE_ANY_DISK = 1 << 50


def _archive(root: Path) -> dict[str, Path]:
    return {p.stem: p for p in (root / "archive").rglob("*.dcm")}


def _tracebacks(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info]


# ----------------------------------------------------------------- the sink


def test_sink_below_the_floor_writes_nothing(tmp_path: Path) -> None:
    sink = SpoolSink(SinkPolicy(tmp_path, _ABOVE_ANY_DISK))
    assert sink.refused and "min_free_bytes" in sink.refused
    assert sink.write(b"x" * 1000) == 1000, "the data is read off the wire and dropped"
    sink.file.flush()
    sink.close()
    assert list(tmp_path.iterdir()) == []


def test_sink_keeps_data_privately_in_the_spool_folder(tmp_path: Path) -> None:
    sink = SpoolSink(SinkPolicy(tmp_path, _NO_FLOOR))
    sink.write(b"\0" * 128 + b"DICM")
    sink.file.flush()
    sink.close()
    assert sink.refused is None
    path = Path(sink.name)
    assert path.parent == tmp_path and path.read_bytes().endswith(b"DICM")
    assert path.stat().st_mode & 0o777 == 0o600


class _FillingHandle:
    """A file that takes `room` bytes, then fails as a full disk does."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.closed = False

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_sink_full_while_writing_removes_the_partial_file(tmp_path: Path, monkeypatch) -> None:
    def create(path: Path, mode: int = 0o600):
        path.write_bytes(b"partial")
        return _FillingHandle(100)

    monkeypatch.setattr(gateway.net.sink, "create_private", create)
    sink = SpoolSink(SinkPolicy(tmp_path, _NO_FLOOR))
    sink.write(b"a" * 60)
    assert sink.refused is None
    sink.write(b"b" * 60)
    assert sink.refused and "full" in sink.refused
    assert not Path(sink.name).exists()
    assert sink.write(b"c" * 60) == 60


# ------------------------------------------------------------ the receiver


def test_below_the_floor_every_store_gets_0xA700_and_the_association_lives(
        tmp_path: Path, gateway_factory, monkeypatch, caplog) -> None:
    # pynetdicom's own temporary files would go here and fail: the gateway must not use them.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-folder"))
    gw = gateway_factory(build_config(tmp_path, spool={"min_free_bytes": _ABOVE_ANY_DISK}))
    series = make_series(3)
    with caplog.at_level(logging.WARNING, logger="gateway"):
        assert send(gw.port, series) == [0xA700] * 3
    assert gw.spool.received() == [] and list(gw.spool.tmp.iterdir()) == []
    rejected = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected) == 3 and all("0xA700" in m and "min_free_bytes" in m for m in rejected)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", gw.port, ae_title="GATEWAY")
    try:
        assert int(assoc.send_c_echo().Status) == 0, "the service still answers"
    finally:
        assoc.release()


def test_stores_are_kept_whatever_tmpdir_says(tmp_path: Path, gateway_factory, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-folder"))
    gw = gateway_factory(build_config(tmp_path, spool={"min_free_bytes": _NO_FLOOR}))
    series = make_series(2)
    assert send(gw.port, series) == [0, 0]
    assert gw.wait_idle(60)
    assert set(_archive(tmp_path)) == {str(ds.SOPInstanceUID) for ds in series}


def test_disk_full_while_receiving_is_0xA700(tmp_path: Path, gateway_factory, monkeypatch) -> None:
    monkeypatch.setattr(gateway.net.sink, "create_private", lambda path, mode=0o600: _FillingHandle(4000))
    gw = gateway_factory(build_config(tmp_path, spool={"min_free_bytes": _NO_FLOOR}))
    assert send(gw.port, make_series(2, rows=64, columns=64)) == [0xA700, 0xA700]
    assert gw.spool.received() == []


# --------------------------------------------------------------- the worker


def test_no_room_for_the_recompressed_copy_forwards_the_original(
        tmp_path: Path, gateway_factory, monkeypatch, caplog) -> None:
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gateway.worker, "splice_write", full)
    gw = gateway_factory(build_config(tmp_path))
    sent = make_series(1)[0]
    with caplog.at_level(logging.INFO, logger="gateway"):
        assert send(gw.port, [sent]) == [0]
        assert gw.wait_idle(60)
    got = dcmread(_archive(tmp_path)[str(sent.SOPInstanceUID)])
    assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID and got.PixelData == sent.PixelData
    assert gw.spool.failing() == [] and gw.spool.counts()[DEAD] == 0
    lines = [r for r in caplog.records if "passed-through" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING and "no space" in lines[0].getMessage()
    assert _tracebacks(caplog) == []
    (row,) = gw.record.find(str(sent.SOPInstanceUID))
    assert "no space" in row["reason"] and row["pixel_hash"]


def test_failures_that_cannot_be_recorded_are_still_bounded(
        tmp_path: Path, gateway_factory, monkeypatch, caplog) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("injected fault")

    def cannot_record(self, ident, reason):
        raise SpoolError("cannot record: No space left on device")

    monkeypatch.setattr(gateway.worker, "splice_write", broken)
    monkeypatch.setattr(Spool, "record_failure", cannot_record)
    gw = gateway_factory(build_config(tmp_path, compression={"max_attempts": 3, "retry_seconds": 0.05}))
    sent = make_series(1)[0]
    with caplog.at_level(logging.INFO, logger="gateway"):
        assert send(gw.port, [sent]) == [0]
        assert wait_until(lambda: len(_archive(tmp_path)) == 1, timeout=60)
    attempts = [r for r in caplog.records if "failed (attempt" in r.getMessage()]
    assert len(attempts) == 2, [r.getMessage() for r in attempts]
    assert len(_tracebacks(caplog)) <= 1, "a traceback with the first failure at most"


# ------------------------------------------------------- a real full filesystem


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 40 MiB tmpfs mounted for the test (root only), unmounted afterwards."""
    with small_tmpfs(tmp_path, "40m") as mount:
        yield mount


def test_a_really_full_spool_refuses_then_delivers_everything(
        tmp_path: Path, small_filesystem: Path, gateway_factory, peer_factory, caplog) -> None:
    peer = peer_factory()  # the archive is down while the spool fills up
    floor = 12 << 20
    config = build_config(
        tmp_path,
        destinations=[{"name": "pacs", "kind": "dicom", "ae_title": peer.ae_title, "host": "127.0.0.1",
                       "port": peer.port}],
        spool={"directory": str(small_filesystem / "spool"), "min_free_bytes": floor},
        compression={"transfer_syntax": "JPEGLSLossless"},
    )
    gw = gateway_factory(config)
    rng = np.random.default_rng(7)
    series = make_series(60, rows=512, columns=512)
    for ds in series:  # noise: hardly compressible, so the spool fills with both copies
        ds.PixelData = rng.integers(0, 4096, (512, 512), dtype=np.uint16).tobytes()
    with caplog.at_level(logging.INFO, logger="gateway"):
        statuses = send(gw.port, series)
        assert set(statuses) == {0, 0xA700}, statuses  # answers, never an abort
        kept = [ds for ds, status in zip(series, statuses) if status == 0]
        refused = [ds for ds, status in zip(series, statuses) if status == 0xA700]
        assert statuses == [0] * len(kept) + [0xA700] * len(refused), "refused once the floor is reached"
        # The worker finishes everything already received, though the disk is nearly full.
        assert wait_until(lambda: gw.spool.received() == [], timeout=120)
        assert free_bytes(small_filesystem) > 0
        peer.start()
        assert wait_until(lambda: len(peer.by_uid()) == len(kept), timeout=120)
        assert gw.wait_idle(60)
        # Delivered copies are kept (keep_after_delivery); they make room for what was refused.
        assert any(gw.spool.kept.iterdir())
        assert send(gw.port, refused) == [0] * len(refused)
        assert wait_until(lambda: len(peer.by_uid()) == len(series), timeout=120)
    got = peer.by_uid()
    for ds in series:
        assert np.array_equal(got[str(ds.SOPInstanceUID)].pixel_array, ds.pixel_array)
    assert _tracebacks(caplog) == []
