"""A first run without surprises: kernels compiled before the service listens, start-up housekeeping."""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.uid import RLELossless
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from gateway.dicom.identity import Identity
from gateway.service import Gateway
from gateway.spool import Job, Spool
from gateway.warmup import CompileWatch, configured_syntaxes, warm_up
from gateway.worker import Worker
from tests.conftest import build_config, listening, pydicom_file, wait_until


def test_compile_watch_announces_once_and_counts_compilations() -> None:
    from numba import njit

    @njit(cache=False)
    def inner(x):
        return x * 3

    @njit(cache=False)
    def outer(a):
        total = 0
        for v in a:
            total += inner(v)
        return total

    calls = []
    with CompileWatch(lambda: calls.append(1)) as watch:
        assert outer(np.arange(4)) == 18
        assert outer(np.arange(4.0)) == 18.0  # a second specialisation
        assert outer(np.arange(4)) == 18  # compiled already
    assert calls == [1]
    assert watch.compiled == 2 and watch.seconds > 0  # nested compilations count with their caller
    with CompileWatch(lambda: calls.append(2)) as quiet:
        outer(np.arange(3))
    assert calls == [1] and quiet.compiled == 0


def test_configured_syntaxes_cover_targets_modalities_and_destination_ladders(tmp_path: Path) -> None:
    config = build_config(
        tmp_path,
        destinations=[{"name": "pacs", "kind": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": 104,
                       "transfer_syntaxes": ["JPEGLSLossless", "RLELossless"]},
                      {"name": "local", "kind": "folder", "path": "archive"}],
        compression={"transfer_syntax": "RLELossless", "modality": {"US": "gwl", "MG": "keep"}},
    )
    uids = configured_syntaxes(config)
    assert uids == ["1.2.840.10008.1.2.5", "2.25.98736700971092333592611877631001549337", "1.2.840.10008.1.2.4.80"]
    assert configured_syntaxes(config, forwarding=False) == uids[:2]


def test_warm_up_runs_each_codec_over_every_image_kind_it_supports() -> None:
    report = warm_up(["RLELossless", "keep", "1.2.840.10008.1.2.1", "rle"])
    assert report.codecs == ["rle"]  # native syntaxes and keep need no kernels; duplicates once
    again = warm_up(["RLELossless"])
    assert again.compiled == 0 and again.compile_seconds == 0.0  # everything is compiled in this process now


def test_gateway_warms_up_before_listening_and_sweeps_the_archive(tmp_path: Path, gateway_factory, caplog) -> None:
    archive = tmp_path / "archive" / "1.2" / "1.2.3"
    archive.mkdir(parents=True)
    stale = archive / f".1.2.3.4.dcm.{'d' * 32}.tmp"
    stale.write_bytes(b"half a copy")
    os.utime(stale, (time.time() - 60, time.time() - 60))
    config = build_config(tmp_path, spool={"keep_done_hours": 1})
    with caplog.at_level(logging.INFO, logger="gateway"):
        gateway = gateway_factory(config)
        for thread in gateway._housekeeping:
            if thread.name.startswith("sweep-"):
                thread.join(30)
    messages = [r.getMessage() for r in caplog.records]
    ready = next(i for i, m in enumerate(messages) if m.startswith("codec kernels ready in"))
    listening = next(i for i, m in enumerate(messages) if m.startswith("listening on"))
    assert ready < listening and "rle" in messages[ready]
    assert not stale.exists()
    assert any("folder archive local: 1 partial copy left by an interrupted write removed" in m for m in messages)


def test_worker_processes_are_ready_before_the_gateway_listens(tmp_path: Path, gateway_factory, caplog) -> None:
    config = build_config(tmp_path, compression={"processes": 1})
    with caplog.at_level(logging.INFO, logger="gateway"):
        gateway_factory(config)
    messages = [r.getMessage() for r in caplog.records]
    ready = next(i for i, m in enumerate(messages) if m.startswith("1 worker process(es) ready in"))
    listening = next(i for i, m in enumerate(messages) if m.startswith("listening on"))
    assert ready < listening


def test_a_codec_failing_its_warm_up_does_not_stop_the_gateway(tmp_path: Path, gateway_factory, caplog,
                                                               monkeypatch) -> None:
    import gateway.warmup

    def broken(syntaxes, **_):
        raise AssertionError("rle: warm-up round trip is not lossless")

    monkeypatch.setattr(gateway.warmup, "warm_up", broken)
    with caplog.at_level(logging.INFO, logger="gateway"):
        gateway = gateway_factory(build_config(tmp_path))
    assert gateway.server is not None
    failed = [r for r in caplog.records if r.getMessage().startswith("codec kernels could not be prepared")]
    assert failed and failed[0].levelno == logging.ERROR and "not lossless" in failed[0].exc_text


def _held_with_a_cut_object(config) -> tuple[Spool, str, str]:
    """A spool as a crash leaves it after an outage: a held instance, its pending job, its object cut short."""
    ds = pydicom_file("CT_small.dcm")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    spool = Spool(config.spool.directory)
    ident = spool.store_received(buffer.getvalue(), "MODALITY")
    spool.finish_received(ident)
    spool.store_object(ident, b"")
    identity = Identity(sop_class_uid=str(ds.SOPClassUID), sop_instance_uid=str(ds.SOPInstanceUID),
                        study_uid=str(ds.StudyInstanceUID), series_uid=str(ds.SeriesInstanceUID), modality="CT",
                        transfer_syntax=RLELossless)
    spool.add_jobs([Job(ident, "local", identity=identity, calling_ae="MODALITY", destinations=("local",))])
    return spool, ident, str(ds.SOPInstanceUID)


def _echo(port: int) -> bool:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEWAY")
    if not assoc.is_established:
        return False
    try:
        return int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()


def test_the_receiver_answers_while_the_held_instances_are_checked_and_nothing_is_sent_before(
        tmp_path: Path, gateway_factory, monkeypatch) -> None:
    """Checking every held instance after a restart reads each one (minutes for an outage's backlog): a
    modality is answered meanwhile, and no instance is sent before its object was checked."""
    config = build_config(tmp_path)
    _, ident, sop = _held_with_a_cut_object(config)
    release = threading.Event()
    checking = threading.Event()
    recover = Worker.recover

    def slow(self, *args, **kwargs):  # a backlog of tens of thousands
        checking.set()
        release.wait(60)
        return recover(self, *args, **kwargs)

    monkeypatch.setattr(Worker, "recover", slow)
    started: list = []
    starter = threading.Thread(target=lambda: started.append(gateway_factory(config)))
    starter.start()
    try:
        assert checking.wait(30)
        assert wait_until(lambda: listening(config.server.port), timeout=30), "not listening during the check"
        assert _echo(config.server.port)
        time.sleep(0.5)
        assert not list((tmp_path / "archive").rglob("*.dcm")), "sent before its object was checked"
    finally:
        release.set()
        starter.join(60)
    assert wait_until(lambda: bool(list((tmp_path / "archive").rglob("*.dcm"))), timeout=30)
    (delivered,) = (tmp_path / "archive").rglob("*.dcm")
    ds = dcmread(delivered)
    assert str(ds.SOPInstanceUID) == sop and ds.file_meta.TransferSyntaxUID == RLELossless
    assert ds.pixel_array.shape == (128, 128), "the object rebuilt by the check was sent, not the cut one"


def test_a_stop_during_the_check_of_the_held_instances_starts_no_forwarder(tmp_path: Path, monkeypatch) -> None:
    config = build_config(tmp_path)
    spool, ident, _ = _held_with_a_cut_object(config)
    checking = threading.Event()
    recover = Worker.recover

    def slow(self, idents=None, halt=None):
        checking.set()
        assert halt is not None and halt.wait(30)
        return recover(self, idents, halt=halt)

    monkeypatch.setattr(Worker, "recover", slow)
    gateway = Gateway(config).start()
    assert checking.wait(30)
    began = time.monotonic()
    gateway.stop()
    assert time.monotonic() - began < 8
    assert not gateway.forwarding and all(f.ident is None for f in gateway.forwarders["local"])
    assert spool.held_path(ident).exists() and not list((tmp_path / "archive").rglob("*.dcm"))


def test_checking_an_intact_held_instance_parses_no_dataset(tmp_path: Path, monkeypatch) -> None:
    """The check of the held instances at start parsed the received file and the object of each with pydicom
    (1.4 ms an instance: 77 s for 55,000 before forwarding resumed); the receiver's header walk now says that
    an object is whole and gives the identity (0.45 ms), pydicom reading only what needs rebuilding."""
    import gateway.worker
    from gateway.dicom.walk import walk_file
    from gateway.worker import process_instance

    config = build_config(tmp_path)
    spool = Spool(config.spool.directory)
    buffer = io.BytesIO()
    pydicom_file("CT_small.dcm").save_as(buffer, enforce_file_format=True)
    ident = spool.store_received(buffer.getvalue(), "MODALITY")
    (job,) = process_instance(config, spool, ident)
    assert spool.held_path(ident).exists() and job.identity.transfer_syntax == RLELossless
    parsed: list[str] = []
    dcmread_ = gateway.worker.dcmread
    monkeypatch.setattr(gateway.worker, "dcmread",
                        lambda path, *a, **k: (parsed.append(str(path)), dcmread_(path, *a, **k))[1])
    submitted: list[Job] = []
    worker = Worker(config, spool, submitted.append)
    assert worker.recover() == 0 and not submitted
    assert parsed == []
    whole = spool.object_path(ident).read_bytes()
    spool.object_path(ident).write_bytes(whole[:-10])  # cut short by a crash: rebuilt
    worker.recover()
    assert parsed and walk_file(spool.object_path(ident)).transfer_syntax == RLELossless
    assert dcmread(spool.object_path(ident)).pixel_array.shape == (128, 128)
