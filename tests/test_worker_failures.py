"""An instance the worker fails on is retried a bounded number of times, then forwarded as received.

The failures are injected where the worker writes the recompressed object
(a fault outside the pipeline's own pass-through handling, as the private
syntax's transfer-syntax look-up once was).
"""

from __future__ import annotations

import errno
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import RLELossless as RLE

import gateway.worker
from gateway.cli import main as cli_main
from gateway.spool import DEAD, DONE, Job, Spool
from tests.conftest import (
    REPO,
    build_config,
    free_port,
    listening,
    make_series,
    pydicom_file,
    send,
    stop_process,
    wait_until,
)


def _archive(root: Path) -> list[Path]:
    return list((root / "archive").rglob("*.dcm"))


def _broken_splice(*args, **kwargs):
    raise RuntimeError("injected fault while writing the processed object")


def test_failing_instance_is_forwarded_as_received_after_the_last_attempt(
        tmp_path: Path, gateway_factory, monkeypatch, caplog) -> None:
    monkeypatch.setattr(gateway.worker, "splice_write", _broken_splice)
    config = build_config(tmp_path, compression={"max_attempts": 3, "retry_seconds": 0.05})
    gateway_ = gateway_factory(config)
    sent = pydicom_file("CT_small.dcm")
    with caplog.at_level(logging.INFO, logger="gateway"):
        assert send(gateway_.port, [sent]) == [0]
        assert wait_until(lambda: len(_archive(tmp_path)) == 1, timeout=60)
        assert gateway_.wait_idle(30)

    got = dcmread(_archive(tmp_path)[0])
    assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID, "the original, not re-encoded"
    assert got.PixelData == sent.PixelData
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "failed (attempt" in r.getMessage()]
    assert [r.getMessage().split("(attempt ")[1][:6] for r in warnings] == ["1 of 3", "2 of 3"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("passed-through" in m and str(sent.SOPInstanceUID) in m and "processing failed 3 times" in m
               and "injected fault" in m for m in errors), errors
    spool = gateway_.spool
    assert spool.received() == [] and spool.failing() == []
    done = list(spool.jobs_in(DONE))
    assert len(done) == 1 and "injected fault" in done[0].processing_failed


def test_failure_count_survives_a_restart(tmp_path: Path, gateway_factory, monkeypatch) -> None:
    """The count is in the spool: after a restart the limit is not granted anew."""
    config = build_config(tmp_path, compression={"max_attempts": 2, "retry_seconds": 30})
    spool = Spool(config.spool.directory)
    ds = pydicom_file("CT_small.dcm")
    ds.save_as(tmp_path / "in.dcm", enforce_file_format=True)
    ident = spool.store_received(tmp_path / "in.dcm", "MODALITY")
    assert spool.record_failure(ident, "first") == 1
    assert spool.record_failure(ident, "second") == 2
    assert Spool(config.spool.directory).failures_of(ident) == (2, "second")

    monkeypatch.setattr(gateway.worker, "splice_write", _broken_splice)  # would fail again if tried
    gateway_factory(config)
    # The file is in the archive a moment before its job is marked done.
    assert wait_until(lambda: len(_archive(tmp_path)) == 1 and spool.count_jobs(DONE) == 1, timeout=30)
    got = dcmread(_archive(tmp_path)[0])
    assert got.PixelData == ds.PixelData
    job = next(Spool(config.spool.directory).jobs_in(DONE))
    assert "processing failed 2 times" in job.processing_failed


def test_unreadable_instance_becomes_a_dead_letter_that_status_shows(
        tmp_path: Path, gateway_factory, capsys) -> None:
    """An instance whose header cannot even be read for routing leaves incoming/ as a dead letter."""
    config = build_config(tmp_path, compression={"max_attempts": 1, "retry_seconds": 0.05})
    spool = Spool(config.spool.directory)
    ident = spool.store_received(b"not a DICOM file " * 8, "MODALITY")
    gateway_ = gateway_factory(config)
    # The dead letter is written just before the instance leaves incoming/.
    assert wait_until(lambda: any(True for _ in spool.jobs_in(DEAD)) and spool.received() == [], timeout=30)
    dead: Job = next(spool.jobs_in(DEAD))
    assert dead.instance == ident and "cannot be forwarded as received either" in (dead.reason or "")
    assert "InvalidDicomError" in (dead.reason or "")
    gateway_.stop()

    toml = tmp_path / "gateway.toml"
    toml.write_text(f'[spool]\ndirectory = "{config.spool.directory}"\n'
                    '[[destinations]]\nname = "local"\nkind = "folder"\npath = "archive"\n')
    assert cli_main(["status", "--config", str(toml)]) == 0
    out = capsys.readouterr().out
    assert "dead letters:" in out and "cannot be forwarded as received either" in out


def test_worker_process_failure_is_counted_and_retried(tmp_path: Path, gateway_factory) -> None:
    """A worker process that dies is a failed attempt like any other: counted, retried, then delivered."""
    config = build_config(tmp_path, compression={"processes": 1, "max_attempts": 3, "retry_seconds": 1.0,
                                                 "transfer_syntax": "RLELossless"})
    gateway_ = gateway_factory(config)
    ds = pydicom_file("CT_small.dcm")
    # A child process that cannot read its spool: the object folder is replaced by a file.
    objects = gateway_.spool.objects
    for path in objects.iterdir():
        path.unlink()
    objects.rmdir()
    objects.write_bytes(b"")
    try:
        assert send(gateway_.port, [ds]) == [0]
        assert wait_until(lambda: gateway_.spool.failing() != [], timeout=60)
    finally:
        objects.unlink()
        objects.mkdir()
    assert wait_until(lambda: len(_archive(tmp_path)) == 1, timeout=60)
    got = dcmread(_archive(tmp_path)[0])
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5", "recompressed once the fault was gone"
    assert np.array_equal(got.pixel_array, ds.pixel_array)
    assert gateway_.spool.received() == [] and gateway_.spool.failing() == []


@pytest.mark.parametrize("key,value", [("max_attempts", 0), ("retry_seconds", -1)])
def test_worker_retry_settings_are_validated(tmp_path: Path, key: str, value: float) -> None:
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError, match=f"compression.{key}"):
        build_config(tmp_path, compression={key: value})


_SERVE_CRASHING = """
import os, resource, signal, sys
import gateway.pipeline
from gateway.cli import main

recompress = gateway.pipeline.recompress

def crashing(ds, *args, **kwargs):  # as a decoder in C that crashes the process it runs in
    if str(ds.SOPInstanceUID).startswith("1.2.3.666."):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.kill(os.getpid(), signal.SIGSEGV)
    return recompress(ds, *args, **kwargs)

gateway.pipeline.recompress = crashing
sys.exit(main(["serve", "--config", sys.argv[1]]))
"""


def test_an_instance_that_crashes_the_service_is_forwarded_as_received_after_the_last_start(tmp_path: Path) -> None:
    """With processes = 0 a decoder's crash ends the service: the attempt is counted before it begins,
    so after max_attempts starts ended that way the instance is forwarded as received and the service
    stays up, instead of dying at every start."""
    port = free_port()
    toml = tmp_path / "gateway.toml"
    toml.write_text(f'[server]\nport = {port}\n[spool]\ndirectory = "spool"\n'
                    '[compression]\ntransfer_syntax = "RLELossless"\nprocesses = 0\nmax_attempts = 2\n'
                    'retry_seconds = 0.1\n[[destinations]]\nname = "local"\nkind = "folder"\npath = "archive"\n')
    poison = make_series(1, rows=64, columns=64)[0]
    poison.SOPInstanceUID = "1.2.3.666." + str(poison.SOPInstanceUID).split(".")[-1]
    poison.file_meta.MediaStorageSOPInstanceUID = poison.SOPInstanceUID
    poison.save_as(tmp_path / "in.dcm", enforce_file_format=True)
    ident = Spool(tmp_path / "spool").store_received(tmp_path / "in.dcm", "MODALITY")
    log = tmp_path / "serve.log"

    def serve() -> subprocess.Popen:
        with open(log, "ab") as handle:
            return subprocess.Popen([sys.executable, "-c", _SERVE_CRASHING, str(toml)], stdout=handle,
                                    stderr=subprocess.STDOUT, cwd=REPO)

    for start in (1, 2):
        process = serve()
        try:
            assert process.wait(180) == -signal.SIGSEGV, log.read_text()[-3000:]
        finally:
            stop_process(process, 10)
        attempts, reason = Spool(tmp_path / "spool").failures_of(ident)
        assert attempts == start and "interrupted" in (reason or ""), f"start {start}: {attempts} {reason}"

    process = serve()
    try:
        assert wait_until(lambda: len(_archive(tmp_path)) == 1, timeout=180), log.read_text()[-3000:]
        got = dcmread(_archive(tmp_path)[0])
        assert got.file_meta.TransferSyntaxUID == poison.file_meta.TransferSyntaxUID, "as received"
        assert got.PixelData == poison.PixelData
        assert wait_until(lambda: listening(port), timeout=60), "the service stays up"
        another = make_series(1, rows=64, columns=64, seed=1)[0]
        assert send(port, [another]) == [0]
        assert wait_until(lambda: len(_archive(tmp_path)) == 2, timeout=60), log.read_text()[-3000:]
        stored = dcmread(next(p for p in _archive(tmp_path) if p.stem == str(another.SOPInstanceUID)))
        assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    finally:
        assert stop_process(process, 60) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "processing failed 2 times, forwarded as received" in text and "interrupted" in text
    assert Spool(tmp_path / "spool").failing() == []


class _FullDisk:
    """Spool.add_jobs and add_job failing as on a full filesystem while `full` is set."""

    def __init__(self, monkeypatch) -> None:
        self.full = True
        for name in ("add_jobs", "add_job"):
            real = getattr(Spool, name)
            monkeypatch.setattr(Spool, name, self._failing(real))

    def _failing(self, real):
        def method(spool, *args, **kwargs):
            if self.full:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(spool, *args, **kwargs)
        return method


def test_a_full_spool_disk_makes_instances_wait_and_counts_no_attempt(tmp_path: Path, gateway_factory,
                                                                     monkeypatch) -> None:
    monkeypatch.setattr(gateway.worker, "_FULL_DISK_SECONDS", 0.2)
    disk = _FullDisk(monkeypatch)
    config = build_config(tmp_path, compression={"max_attempts": 2, "retry_seconds": 0.05})
    gateway_ = gateway_factory(config)
    assert send(gateway_.port, [pydicom_file("CT_small.dcm")]) == [0]
    [ident] = gateway_.spool.received()
    time.sleep(2)  # some ten tries, past max_attempts: none counted, nothing given up, no thread lost
    assert gateway_.stalled() is None
    assert gateway_.spool.failures_of(ident)[0] == 0 and gateway_.spool.received() == [ident]
    assert not list(gateway_.spool.jobs_in(DEAD))
    disk.full = False
    assert wait_until(lambda: len(_archive(tmp_path)) == 1, timeout=30)
    assert dcmread(_archive(tmp_path)[0]).file_meta.TransferSyntaxUID == RLE, "recompressed as usual"


def test_an_instance_given_up_on_a_full_disk_waits_to_become_a_dead_letter(tmp_path: Path, gateway_factory,
                                                                           monkeypatch) -> None:
    monkeypatch.setattr(gateway.worker, "_FULL_DISK_SECONDS", 0.2)
    disk = _FullDisk(monkeypatch)
    disk.full = False
    config = build_config(tmp_path, compression={"max_attempts": 1, "retry_seconds": 0.05})
    spool = Spool(config.spool.directory)
    ident = spool.store_received(b"not a DICOM file " * 8, "MODALITY")
    disk.full = True  # the dead letter it becomes cannot be written: it waits in incoming/
    gateway_ = gateway_factory(config)
    time.sleep(2)
    assert gateway_.stalled() is None and spool.received() == [ident]
    disk.full = False
    assert wait_until(lambda: spool.received() == [] and any(True for _ in spool.jobs_in(DEAD)), timeout=30)
    assert "cannot be forwarded as received either" in (next(spool.jobs_in(DEAD)).reason or "")


def test_a_full_disk_is_known_by_its_cause_or_by_the_error_a_worker_process_quoted() -> None:
    from gateway.errors import SpoolError

    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise full
        except OSError as exc:
            raise SpoolError(f"cannot store processed instance x: {exc}") from exc
    except SpoolError as chained:
        assert gateway.worker._out_of_space(chained)
    # from a worker process the cause is gone: its text remains
    assert gateway.worker._out_of_space(SpoolError(f"cannot store processed instance x: {full}"))
    assert gateway.worker._out_of_space(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not gateway.worker._out_of_space(SpoolError("cannot store processed instance x: [Errno 13] Permission denied"))
    assert not gateway.worker._out_of_space(ValueError("[Errno 28] in a pixel value"))


def test_an_attempt_cut_short_after_its_first_job_keeps_its_object_and_its_proof(
        tmp_path: Path, gateway_factory, monkeypatch) -> None:
    """The first destination may have sent the object already: the attempt after it sends the same one, and
    the proof record keeps describing it."""
    monkeypatch.setattr(gateway.worker, "_FULL_DISK_SECONDS", 0.5)
    real = Spool.add_jobs
    written: dict[str, tuple[int, int]] = {}

    def first_only(spool, jobs):
        if not written:  # the disk fills after the first job
            real(spool, jobs[:1])
            path = spool.object_path(jobs[0].instance)
            written["object"] = (path.stat().st_ino, path.stat().st_mtime_ns)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(spool, jobs)

    monkeypatch.setattr(Spool, "add_jobs", first_only)
    destinations = [{"name": "a", "kind": "folder", "path": "archive_a"},
                    {"name": "b", "kind": "folder", "path": "archive_b"}]
    gateway_ = gateway_factory(build_config(tmp_path, destinations=destinations))
    sent = pydicom_file("CT_small.dcm")
    assert send(gateway_.port, [sent]) == [0]
    [ident] = gateway_.spool.received()
    assert wait_until(lambda: all(list((tmp_path / f).rglob("*.dcm")) for f in ("archive_a", "archive_b")), 30)
    a, b = (next((tmp_path / f).rglob("*.dcm")).read_bytes() for f in ("archive_a", "archive_b"))
    assert a == b and dcmread(tmp_path / "archive_a" / next((tmp_path / "archive_a").rglob("*.dcm")))
    [entry] = gateway_.record.find(str(sent.SOPInstanceUID))
    assert entry["outcome"] == "recompressed" and len(entry["verified_by"]) == 2, entry
