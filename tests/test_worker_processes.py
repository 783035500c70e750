"""Several worker processes: every one takes instances, and the guarantees hold as with one."""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import signal
import threading
import time
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.uid import JPEGLSLossless, RLELossless

import gateway.worker
from gateway.spool import DEAD, DONE, Spool
from tests.conftest import build_config, make_series, send, wait_until
from tests.images import enlarge


def test_two_worker_processes_share_a_series(tmp_path: Path, gateway_factory) -> None:
    config = build_config(tmp_path, compression={"transfer_syntax": "JPEGLSLossless", "processes": 2})
    gateway = gateway_factory(config)
    series = make_series(24, rows=256, columns=256)
    assert send(gateway.port, series) == [0] * len(series)
    assert gateway.wait_idle(180)

    assert gateway.worker is not None
    by_process = gateway.worker.processed_by
    assert len(by_process) == 2, f"instances per worker process: {dict(by_process)}"
    assert sum(by_process.values()) == len(series)
    stored = {p.stem: dcmread(p) for p in (tmp_path / "archive").rglob("*.dcm")}
    assert len(stored) == len(series)
    for ds in series:
        got = stored[str(ds.SOPInstanceUID)]
        assert got.file_meta.TransferSyntaxUID == JPEGLSLossless
        assert np.array_equal(got.pixel_array, ds.pixel_array)
    counts = gateway.spool.counts()
    assert counts[DONE] == len(series) and counts[DEAD] == 0
    assert counts["received"] == 0


def test_the_private_version_reaches_the_worker_processes(tmp_path: Path, gateway_factory) -> None:
    """The configured version of our private syntax (2 by default; the codec module's own default is 1)
    is what a worker process writes: the configuration crosses into the process, no global state.
    An image enlarged by interpolation, and one enlarged by repeating each sample, are written as
    subbands there (prediction byte 11; the second with the predictor of the sample before)."""
    from pydicom.encaps import generate_frames

    from gateway.codecs import _private_subbands as sb
    from gateway.codecs import private

    config = build_config(tmp_path, compression={"transfer_syntax": "gwl", "processes": 1})
    assert config.compression.private_version == 2 != private.VERSION
    gateway = gateway_factory(config)
    series = make_series(3, rows=128, columns=128, seed=4)
    enlarged = enlarge(enlarge(series[0].pixel_array, 0), 1).astype(np.uint16)
    series[0].Rows, series[0].Columns = enlarged.shape
    series[0].PixelData = enlarged.tobytes()
    repeated = np.repeat(np.repeat(series[1].pixel_array, 2, 0), 2, 1)
    series[1].Rows, series[1].Columns = repeated.shape
    series[1].PixelData = repeated.tobytes()
    assert send(gateway.port, series) == [0] * len(series)
    assert gateway.wait_idle(180)

    assert gateway.worker is not None and sum(gateway.worker.processed_by.values()) == len(series)
    stored = {p.stem: dcmread(p) for p in (tmp_path / "archive").rglob("*.dcm")}
    assert len(stored) == len(series)
    for ds in series:
        got = stored[str(ds.SOPInstanceUID)]
        assert got.file_meta.TransferSyntaxUID == private.UID
        [stream] = generate_frames(got.PixelData, number_of_frames=1)
        assert stream[4] == 2
        assert bool(stream[11] & private.PREDICT_SUBBANDS) == (ds is not series[2])
        assert bool(stream[11] & sb.REPEAT) == (ds is series[1])
        assert np.array_equal(got.pixel_array, ds.pixel_array)


# A worker process that crashes or never returns on one instance: real processes, real faults.
# The service pickles gateway.worker._child_process by name, so patching it here makes every worker
# process (spawned: it imports this module) run the faulty one below instead.

POISON = "1.2.3.666."
"""SOP Instance UIDs starting with this make the faulty worker process crash or hang."""

_CHILD_PROCESS = gateway.worker._child_process


def _poisoned(ident: str) -> bool:
    assert gateway.worker._CHILD is not None
    spool = gateway.worker._CHILD[1]
    return POISON.encode() in spool.source_path(ident).read_bytes()


def _crashing_child_process(ident: str):
    """As a decoder in C that crashes: SIGSEGV, once the next instance waits in the pool too."""
    if _poisoned(ident):
        time.sleep(0.5)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
        os.kill(os.getpid(), signal.SIGSEGV)
    return _CHILD_PROCESS(ident)


def _hanging_child_process(ident: str):
    """As a decoder that never returns; says so in a file named after the process beside the spool."""
    if _poisoned(ident):
        assert gateway.worker._CHILD is not None
        (gateway.worker._CHILD[1].root.parent / f"hung.{os.getpid()}").touch()
        while True:
            time.sleep(1)
    return _CHILD_PROCESS(ident)


def _spool_series(config, count: int, poison_at: int) -> tuple[dict[str, Dataset], str]:
    """`count` instances received before the gateway starts (all queued at once); the one at `poison_at` marked."""
    spool = Spool(config.spool.directory)
    series = make_series(count, rows=64, columns=64)
    poison = series[poison_at]
    poison.SOPInstanceUID = POISON + str(poison.SOPInstanceUID).split(".")[-1]
    poison.file_meta.MediaStorageSOPInstanceUID = poison.SOPInstanceUID
    by_ident = {}
    for ds in series:
        path = config.spool.directory.parent / "in.dcm"
        ds.save_as(path, enforce_file_format=True)
        by_ident[spool.store_received(path, "MODALITY")] = ds
    return by_ident, next(ident for ident, ds in by_ident.items() if ds is poison)


def _check_delivered(root: Path, by_ident: dict[str, Dataset], poison: str, spool: Spool, why: str,
                     records) -> None:
    """Every other instance recompressed and never counted as failed; the poisoned one forwarded as received."""
    stored = {p.stem: dcmread(p) for p in (root / "archive").rglob("*.dcm")}
    assert len(stored) == len(by_ident)
    for ident, ds in by_ident.items():
        got = stored[str(ds.SOPInstanceUID)]
        if ident == poison:
            assert got.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID, "forwarded as received"
            assert got.PixelData == ds.PixelData
        else:
            assert got.file_meta.TransferSyntaxUID == RLELossless, f"{ident} was not recompressed"
            assert np.array_equal(got.pixel_array, ds.pixel_array)
    blamed = {ident for ident in by_ident for r in records
              if r.levelno >= logging.WARNING and f"processing {ident} failed" in r.getMessage()}
    assert blamed == {poison}, "only the instance at fault counts failed attempts"
    [job] = [job for job in spool.jobs_in(DONE) if job.instance == poison]
    assert "processing failed 2 times" in job.processing_failed and why in job.processing_failed
    assert spool.received() == [] and spool.failing() == []


def test_a_crashing_instance_takes_no_other_down(tmp_path: Path, gateway_factory, monkeypatch, caplog) -> None:
    """A worker process that dies breaks the pool under every instance in it: only the one that crashes
    again when processed alone is counted; the others, processed again alone, are recompressed."""
    monkeypatch.setattr(gateway.worker, "_child_process", _crashing_child_process)
    config = build_config(tmp_path, compression={"processes": 1, "max_attempts": 2, "retry_seconds": 0.2})
    by_ident, poison = _spool_series(config, 6, poison_at=0)
    with caplog.at_level(logging.INFO, logger="gateway"):
        gateway_ = gateway_factory(config)
        assert wait_until(lambda: len(list((tmp_path / "archive").rglob("*.dcm"))) == len(by_ident), timeout=180)
        assert gateway_.wait_idle(60)
    _check_delivered(tmp_path, by_ident, poison, gateway_.spool, "BrokenProcessPool", caplog.records)
    again = [r.getMessage() for r in caplog.records if "processing it again alone" in r.getMessage()]
    assert any(poison not in m for m in again), "an instance beside the crashing one was in the broken pool"


def _kill_children_since(before: set) -> None:
    """Kill the worker processes a failed test leaves stuck, so that the session can end."""
    for child in set(multiprocessing.active_children()) - before:
        child.kill()


def test_an_instance_past_the_time_limit_is_killed_and_forwarded_as_received(
        tmp_path: Path, gateway_factory, monkeypatch, caplog) -> None:
    """A decoder that never returns holds its worker process until [compression] timeout_seconds: then
    the process is killed, the instance counted, and the others go on."""
    monkeypatch.setattr(gateway.worker, "_child_process", _hanging_child_process)
    config = build_config(tmp_path, compression={"processes": 1, "max_attempts": 2, "retry_seconds": 0.2,
                                                 "timeout_seconds": 3})
    by_ident, poison = _spool_series(config, 4, poison_at=0)
    before = set(multiprocessing.active_children())
    try:
        with caplog.at_level(logging.INFO, logger="gateway"):
            gateway_ = gateway_factory(config)
            assert wait_until(lambda: len(list((tmp_path / "archive").rglob("*.dcm"))) == len(by_ident),
                              timeout=180)
            assert gateway_.wait_idle(60)
        hung = [int(p.suffix[1:]) for p in tmp_path.glob("hung.*")]
        assert len(hung) == 3, "hung in the shared pool, then twice alone"
        assert not any(child.pid in hung for child in multiprocessing.active_children()), "killed"
        _check_delivered(tmp_path, by_ident, poison, gateway_.spool, "ProcessingTimeout", caplog.records)
    finally:
        _kill_children_since(before)


def test_the_stop_does_not_wait_for_a_worker_process_that_never_returns(
        tmp_path: Path, gateway_factory, monkeypatch) -> None:
    """Within its time limit (600 s by default) an instance in hand holds its worker process; a stop
    waits for it for the stop's own timeout only, then kills the process.  The instance stays received,
    its attempt not counted, for the next start."""
    monkeypatch.setattr(gateway.worker, "_child_process", _hanging_child_process)
    config = build_config(tmp_path, compression={"processes": 1})
    assert config.compression.timeout_seconds == 600
    _, poison = _spool_series(config, 2, poison_at=0)
    before = set(multiprocessing.active_children())
    try:
        gateway_ = gateway_factory(config)
        assert wait_until(lambda: any(tmp_path.glob("hung.*")), timeout=120)
        [pid] = [int(p.suffix[1:]) for p in tmp_path.glob("hung.*")]
        stopping = threading.Thread(target=gateway_.stop, kwargs={"timeout": 2.0}, daemon=True)
        started = time.monotonic()
        stopping.start()
        stopping.join(30)
        assert not stopping.is_alive(), "the stop waits for the stuck worker process"
        assert time.monotonic() - started < 20
        assert pid not in [child.pid for child in multiprocessing.active_children()], "the process was killed"
        spool = Spool(config.spool.directory)
        assert poison in spool.received() and spool.failures_of(poison) == (0, None)
    finally:
        _kill_children_since(before)


def _second_is_slow(started) -> None:
    """A pool initialiser: the second process to start takes two seconds more, as one still compiling its
    kernels does."""
    with started.get_lock():
        started.value += 1
        order = started.value
    if order == 2:
        time.sleep(2.0)


def test_ready_is_said_once_every_worker_process_has_answered(caplog) -> None:
    """The first process ready took every "ready?" task while the second still compiled: the service said
    "1 worker process(es) ready" (and told systemd READY=1) with the other not ready."""
    from concurrent.futures import ProcessPoolExecutor
    from types import SimpleNamespace

    context = multiprocessing.get_context("spawn")
    started = context.Value("i", 0)
    pool = ProcessPoolExecutor(max_workers=2, mp_context=context, initializer=_second_is_slow, initargs=(started,))
    try:
        with caplog.at_level(logging.INFO, logger="gateway"):
            gateway.worker.Worker._wait_for_processes(SimpleNamespace(processes=2), pool, timeout=120)
    finally:
        pool.shutdown()
    assert started.value == 2
    assert [r.getMessage().split(" in ")[0] for r in caplog.records
            if "ready in" in r.getMessage()] == ["2 worker process(es) ready"]
