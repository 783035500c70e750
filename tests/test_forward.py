"""Forwarding: status classes, syntax ladder, retries, dead letters, fallback re-encoding."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.filewriter import dcmwrite
from pydicom.uid import generate_uid

from gateway.config import Destination, RetryConfig
from gateway.dicom.identity import Identity
from gateway.errors import PermanentForwardError, TransientForwardError
from gateway.forward import DicomSender, FolderSender, Forwarder, classify_status, ladder_for
from gateway.pipeline import recompress
from gateway.pipeline.pixels import frame_info
from gateway.spool import DEAD, DONE, INFLIGHT, PENDING, Job, Spool
from tests.conftest import pydicom_file, wait_until

RLE = "1.2.840.10008.1.2.5"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"


@pytest.mark.parametrize("status, kind", [
    (0x0000, "success"), (0xB000, "success"), (0xB007, "success"),
    (0x0001, "success"), (0x0107, "success"), (0x0116, "success"),  # PS3.7 C.4 warnings: the archive stored it
    (0xA700, "transient"), (0xA7FF, "transient"), (0x0110, "transient"),
    (0xA900, "permanent"), (0xC000, "permanent"), (0xC210, "permanent"), (0x0122, "permanent"),
])
def test_status_classes(status: int, kind: str) -> None:
    assert classify_status(status) == kind


def test_ladder_prefers_configured_then_stored_then_native() -> None:
    dest = Destination("d", "dicom", "A", "h", 1, transfer_syntaxes=("1.2.840.10008.1.2.4.80", RLE))
    assert ladder_for(dest, RLE) == ["1.2.840.10008.1.2.4.80", RLE, EXPLICIT, IMPLICIT]
    plain = Destination("d", "dicom", "A", "h", 1)
    assert ladder_for(plain, IMPLICIT) == [IMPLICIT, EXPLICIT]


def _stage(spool: Spool, ds: Dataset, destination: str, target: str | None = RLE) -> Job:
    """Put `ds` (recompressed to `target`) into the spool with one pending job."""
    if target is not None:
        outcome = recompress(ds, target)
        assert outcome.recompressed, outcome.reason
        ds = outcome.dataset
    ident = spool.new_id()
    tmp = spool.temp_path()
    dcmwrite(tmp, ds, enforce_file_format=True)
    spool.store_object(ident, tmp)
    job = Job(ident, destination, identity=Identity(
        sop_class_uid=str(ds.SOPClassUID), sop_instance_uid=str(ds.SOPInstanceUID),
        study_uid=str(ds.StudyInstanceUID), series_uid=str(ds.SeriesInstanceUID),
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID)))
    spool.add_job(job)
    return spool.find_job(ident, destination)


class ScriptedSender:
    """A sender that fails as scripted, then succeeds."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = list(failures)
        self.sent: list[str] = []
        self.closed = 0

    def prepare(self, jobs):
        pass

    def send(self, job, path):
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(job.instance)
        return RLE

    def close(self):
        self.closed += 1


def _run(forwarder: Forwarder, until) -> None:
    forwarder.start()
    try:
        assert wait_until(until, timeout=20)
    finally:
        forwarder.stop()
        forwarder.join(5)


FAST = RetryConfig(max_attempts=4, base_seconds=0.05, cap_seconds=0.1, probe_seconds=0.05)


def test_transient_failures_are_retried_then_delivered(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    job = _stage(spool, pydicom_file("CT_small.dcm"), "x")
    sender = ScriptedSender([TransientForwardError("refused"), TransientForwardError("0xA700")])
    forwarder = Forwarder(Destination("x", "folder", path=tmp_path), spool, FAST, sender)
    # Done, and the object deleted by the spool's collector once no job needs it.
    _run(forwarder, lambda: spool.find_job(job.instance, "x").state == DONE
         and not spool.object_path(job.instance).exists())
    assert sender.sent == [job.instance]
    assert spool.find_job(job.instance, "x").attempts == 2  # two failed attempts on record


def test_permanent_failure_is_a_dead_letter_with_reason(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    job = _stage(spool, pydicom_file("CT_small.dcm"), "x")
    sender = ScriptedSender([PermanentForwardError("status 0xC000")])
    _run(Forwarder(Destination("x", "folder", path=tmp_path), spool, FAST, sender),
         lambda: spool.find_job(job.instance, "x").state == DEAD)
    dead = spool.find_job(job.instance, "x")
    assert dead.reason == "status 0xC000" and dead.attempts == 1
    assert spool.object_path(job.instance).exists(), "a dead letter keeps its object for retry"


def test_transient_failures_give_up_after_max_attempts(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    job = _stage(spool, pydicom_file("CT_small.dcm"), "x")
    sender = ScriptedSender([TransientForwardError("refused")] * 10)
    _run(Forwarder(Destination("x", "folder", path=tmp_path), spool, FAST, sender),
         lambda: spool.find_job(job.instance, "x").state == DEAD)
    dead = spool.find_job(job.instance, "x")
    assert dead.attempts == FAST.max_attempts and "gave up after 4 attempts: refused" in dead.reason


def test_the_backoff_of_a_long_outage_stays_at_its_cap() -> None:
    retry = RetryConfig(max_attempts=1_000_000, base_seconds=2.0, cap_seconds=300.0)
    assert [retry.delay(n) for n in (1, 2, 9, 1025, 999_999)] == [2.0, 4.0, 300.0, 300.0, 300.0]


class BuggySender(ScriptedSender):
    """A sender whose `prepare` raises what no sender should, `bugs` times."""

    def __init__(self, bugs: int) -> None:
        super().__init__([])
        self.bugs = bugs

    def prepare(self, jobs):
        if self.bugs:
            self.bugs -= 1
            raise RuntimeError("a bug in the sender")


def test_an_unexpected_error_does_not_stop_the_destination(tmp_path: Path, caplog) -> None:
    spool = Spool(tmp_path)
    job = _stage(spool, pydicom_file("CT_small.dcm"), "x")
    forwarder = Forwarder(Destination("x", "folder", path=tmp_path), spool, FAST, BuggySender(2))
    _run(forwarder, lambda: spool.find_job(job.instance, "x").state == DONE)
    assert forwarder.is_alive() is False  # stopped by _run, not by the bugs
    assert sum("failed unexpectedly" in r.getMessage() for r in caplog.records) == 2


def test_a_job_state_the_disk_refuses_is_kept_in_memory_and_tried_again(tmp_path: Path, monkeypatch,
                                                                        caplog) -> None:
    """A full disk (the folder archive's filesystem is often the spool's) fails the delivery and then the
    write of the job's new state: the job is renamed back to pending and the destination goes on."""
    import errno

    spool = Spool(tmp_path)
    job = _stage(spool, pydicom_file("CT_small.dcm"), "x")
    refused = []
    write_job = Spool._write_job

    def full(self, new):
        if len(refused) < 2:
            refused.append(new.key)
            raise OSError(errno.ENOSPC, "No space left on device")
        write_job(self, new)

    monkeypatch.setattr(Spool, "_write_job", full)
    sender = ScriptedSender([TransientForwardError("the archive's filesystem is full")] * 2)
    forwarder = Forwarder(Destination("x", "folder", path=tmp_path), spool, FAST, sender)
    _run(forwarder, lambda: spool.find_job(job.instance, "x").state == DONE)
    assert refused == [job.key] * 2 and sender.sent == [job.instance]
    assert sum("cannot be written" in r.getMessage() for r in caplog.records) == 2


class SpoolWatchingRecord:
    """A proof record that notes, for each delivery it is told of, the job's state in the spool then."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.seen: list[tuple[str, str]] = []

    def delivery(self, ident: str, destination: str, *, outcome: str, **details: object) -> None:
        self.seen.append((outcome, self.spool.find_job(ident, destination).state))


@pytest.mark.parametrize("failures, outcome, final", [
    ([], "delivered", DONE), ([PermanentForwardError("status 0xC000")], "dead", DEAD)])
def test_the_record_hears_of_an_outcome_before_the_spool_shows_it(tmp_path: Path, failures, outcome,
                                                                   final) -> None:
    """Whoever sees a job done or dead finds its delivery on record already; a crash in between repeats a
    delivery, never leaves one unrecorded."""
    spool = Spool(tmp_path)
    job = _stage(spool, pydicom_file("CT_small.dcm"), "x")
    record = SpoolWatchingRecord(spool)
    forwarder = Forwarder(Destination("x", "folder", path=tmp_path), spool, FAST, ScriptedSender(failures),
                          record=record)
    _run(forwarder, lambda: spool.find_job(job.instance, "x").state == final)
    assert record.seen == [(outcome, INFLIGHT)]


def test_folder_sender_writes_study_series_instance(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    ds = pydicom_file("CT_small.dcm")
    job = _stage(spool, ds, "f")
    FolderSender(Destination("f", "folder", path=tmp_path / "out")).send(job, spool.object_path(job.instance))
    target = tmp_path / "out" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    assert np.array_equal(dcmread(target).pixel_array, ds.pixel_array)
    assert [p.name for p in target.parent.iterdir()] == [target.name], "no temp files left behind"


def test_folder_sender_refuses_unsafe_uids(tmp_path: Path) -> None:
    sender = FolderSender(Destination("f", "folder", path=tmp_path))
    job = Job("i", "f", identity=Identity(study_uid="../../etc", series_uid="1.2", sop_instance_uid="1.3"))
    with pytest.raises(PermanentForwardError, match="Study Instance UID"):
        sender.send(job, tmp_path / "x.dcm")


def _dicom_destination(peer, **kwargs) -> Destination:
    return Destination("pacs", "dicom", ae_title=peer.ae_title, host="127.0.0.1", port=peer.port,
                       timeout_seconds=10, **kwargs)


def test_fallback_reencodes_when_first_choice_is_refused(tmp_path: Path, peer_factory) -> None:
    peer = peer_factory(syntaxes=[EXPLICIT]).start()  # takes no compressed syntax at all
    spool = Spool(tmp_path)
    originals = [pydicom_file("CT_small.dcm"), pydicom_file("MR_small.dcm")]
    jobs = [_stage(spool, ds, "pacs") for ds in originals]
    forwarder = Forwarder(_dicom_destination(peer), spool, FAST, DicomSender(_dicom_destination(peer)))
    _run(forwarder, lambda: all(spool.find_job(j.instance, "pacs").state == DONE for j in jobs))
    got = peer.by_uid()
    for ds in originals:
        received = got[ds.SOPInstanceUID]
        assert received.file_meta.TransferSyntaxUID == EXPLICIT
        assert np.array_equal(received.pixel_array, ds.pixel_array)
    assert peer.associations == 1, "one association for the whole batch"


def test_an_association_the_archive_dropped_while_idle_is_reopened_not_retried(tmp_path: Path, peer_factory) -> None:
    """An archive that aborts silent associations: the next instance goes out at once on a new one."""
    peer = peer_factory(idle_timeout=0.3).start()
    spool = Spool(tmp_path)
    sender = DicomSender(_dicom_destination(peer))
    first, second = pydicom_file("CT_small.dcm"), pydicom_file("CT_small.dcm")
    second.SOPInstanceUID = second.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # same SOP class and syntax
    job = _stage(spool, first, "pacs")
    sender.prepare([job])
    assert sender.send(job, spool.object_path(job.instance)) == RLE
    time.sleep(1.5)  # the archive gives up on the silent association meanwhile
    job = _stage(spool, second, "pacs")
    assert sender.send(job, spool.object_path(job.instance)) == RLE  # raises if the dead one were used
    sender.close()
    assert set(peer.by_uid()) == {first.SOPInstanceUID, second.SOPInstanceUID}
    assert peer.associations == 2


def test_preferred_syntax_is_used_when_accepted(tmp_path: Path, peer_factory) -> None:
    peer = peer_factory().start()
    spool = Spool(tmp_path)
    ds = pydicom_file("CT_small.dcm")
    job = _stage(spool, ds, "pacs")
    _run(Forwarder(_dicom_destination(peer), spool, FAST, DicomSender(_dicom_destination(peer))),
         lambda: spool.find_job(job.instance, "pacs").state == DONE)
    received = peer.by_uid()[ds.SOPInstanceUID]
    assert received.file_meta.TransferSyntaxUID == RLE
    assert np.array_equal(received.pixel_array, ds.pixel_array)


def test_configured_ladder_reencodes_to_the_destinations_choice(tmp_path: Path, peer_factory) -> None:
    peer = peer_factory().start()
    spool = Spool(tmp_path)
    ds = pydicom_file("CT_small.dcm")
    job = _stage(spool, ds, "pacs")
    dest = _dicom_destination(peer, transfer_syntaxes=("1.2.840.10008.1.2.4.70",))
    _run(Forwarder(dest, spool, FAST, DicomSender(dest)), lambda: spool.find_job(job.instance, "pacs").state == DONE)
    received = peer.by_uid()[ds.SOPInstanceUID]
    assert received.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    assert np.array_equal(received.pixel_array, ds.pixel_array)


@pytest.mark.parametrize("version", [1, 2])
def test_reencoding_for_a_destination_writes_the_configured_private_version(tmp_path: Path, version: int) -> None:
    """A sender re-encodes an object the destination refuses with the configured encoder options."""
    from pydicom.encaps import generate_frames

    from gateway.codecs import private
    from gateway.config import private_options
    from gateway.forward import make_sender

    spool = Spool(tmp_path)
    ds = pydicom_file("CT_small.dcm")
    job = _stage(spool, ds, "pacs")  # stored RLE
    dest = Destination("pacs", "dicom", "PACS", "127.0.0.1", 104, transfer_syntaxes=(private.UID,))
    sender = make_sender(dest, "GATEWAY", True, encode_options=private_options(version))
    encoded = sender.transcode(spool.object_path(job.instance), RLE, private.UID)
    assert encoded is not None and encoded.file_meta.TransferSyntaxUID == private.UID
    [stream] = generate_frames(encoded.PixelData, number_of_frames=1)
    assert stream[4] == version
    assert np.array_equal(private.decode(stream, frame_info(encoded)), ds.pixel_array)


@pytest.mark.parametrize("status, state", [(0xA700, PENDING), (0xC123, DEAD)])
def test_peer_status_decides_retry_or_dead_letter(tmp_path: Path, peer_factory, status: int, state: str) -> None:
    peer = peer_factory(status=status).start()
    spool = Spool(tmp_path)
    job = _stage(spool, pydicom_file("CT_small.dcm"), "pacs")
    slow = RetryConfig(max_attempts=5, base_seconds=30, cap_seconds=30)
    _run(Forwarder(_dicom_destination(peer), spool, slow, DicomSender(_dicom_destination(peer))),
         lambda: (j := spool.find_job(job.instance, "pacs")).attempts == 1 and j.state == state)
    assert f"0x{status:04X}" in spool.find_job(job.instance, "pacs").reason


def test_unreachable_destination_is_transient(tmp_path: Path) -> None:
    from tests.conftest import free_port

    dest = Destination("pacs", "dicom", ae_title="X", host="127.0.0.1", port=free_port(), timeout_seconds=2)
    sender = DicomSender(dest)
    started = time.monotonic()
    with pytest.raises(TransientForwardError, match="could not be established|cannot associate"):
        sender.prepare([Job("i", "pacs", identity=Identity(sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                                                           transfer_syntax=RLE))])
    assert time.monotonic() - started < 10


class AnsweringSender(ScriptedSender):
    """Answers each instance as scripted for it (delivered when its script is empty), and notes whether its
    forwarder held the destination for failing at each send."""

    def __init__(self, scripts: dict[str, list[Exception]]) -> None:
        super().__init__([])
        self.scripts = scripts
        self.forwarder: Forwarder | None = None
        self.failing_when_sent: dict[str, bool] = {}

    def send(self, job, path):
        assert self.forwarder is not None
        self.failing_when_sent[job.instance] = self.forwarder.failing_since is not None
        script = self.scripts.get(job.instance, [])
        if script:
            raise script.pop(0)
        self.sent.append(job.instance)
        return RLE


def test_a_refusal_is_an_answer_the_destination_is_not_failing(tmp_path: Path) -> None:
    """A connection reset, then the archive refuses the instance for good: it answers, so it is not failing
    (``/readyz`` would say so for hours), and what waits for it goes at once, as after a success."""
    spool = Spool(tmp_path)
    refused = _stage(spool, pydicom_file("CT_small.dcm"), "x")
    waiting = _stage(spool, pydicom_file("MR_small.dcm"), "x")
    waiting = spool.move(waiting, PENDING, next_retry_at=time.time() + 60)  # an earlier failure's backoff
    sender = AnsweringSender({refused.instance: [TransientForwardError("connection reset"),
                                                 PermanentForwardError("answered C-STORE status 0xA900")]})
    retry = RetryConfig(max_attempts=4, base_seconds=30, cap_seconds=30, probe_seconds=0.05)
    forwarder = Forwarder(Destination("x", "folder", path=tmp_path), spool, retry, sender)
    sender.forwarder = forwarder
    _run(forwarder, lambda: spool.find_job(waiting.instance, "x").state == DONE)
    assert spool.find_job(refused.instance, "x").state == DEAD
    assert sender.failing_when_sent == {refused.instance: True, waiting.instance: False}
    assert forwarder.failing_since is None
    assert [state["failing_since"] for state in spool.destination_states("x")] == [None]


def test_a_destination_with_nothing_left_to_send_is_not_failing(tmp_path: Path) -> None:
    """Its last instance a dead letter after transient failures: nothing is probed any more, nothing waits."""
    spool = Spool(tmp_path)
    job = _stage(spool, pydicom_file("CT_small.dcm"), "x")
    sender = ScriptedSender([TransientForwardError("connection refused")] * 2)
    retry = RetryConfig(max_attempts=2, base_seconds=0.05, cap_seconds=0.1, probe_seconds=0.05)
    forwarder = Forwarder(Destination("x", "folder", path=tmp_path), spool, retry, sender)
    _run(forwarder, lambda: spool.find_job(job.instance, "x").state == DEAD and forwarder.failing_since is None
         and [state["failing_since"] for state in spool.destination_states("x")] == [None])
    assert forwarder.last_error == "connection refused", "what went wrong stays shown"


def test_an_unsendable_instance_says_nothing_of_a_failing_destination(tmp_path: Path) -> None:
    """An archive that does not answer, then an instance the sender cannot even read: its dead letter is
    found before anyone is asked, so the archive stays failing and what waits for it keeps its backoff
    (no new attempt charged to it by a false recovery)."""
    from gateway.forward import DicomWebSender
    from tests.conftest import free_port

    spool = Spool(tmp_path / "spool")
    dest = Destination("web", "dicomweb", url=f"http://127.0.0.1:{free_port()}/dicom-web", timeout_seconds=2)
    waiting = _stage(spool, pydicom_file("CT_small.dcm"), "web")
    retry = RetryConfig(max_attempts=5, base_seconds=60, cap_seconds=60, probe_seconds=1.0)
    forwarder = Forwarder(dest, spool, retry, DicomWebSender(dest))
    forwarder.start()
    try:
        assert wait_until(lambda: spool.find_job(waiting.instance, "web").attempts == 1
                          and forwarder.failing_since is not None, timeout=20)
        failing_since = forwarder.failing_since
        broken = _stage(spool, pydicom_file("MR_small.dcm"), "web")
        spool.object_path(broken.instance).write_bytes(b"not a DICOM file at all")
        forwarder.submit(broken)
        assert wait_until(lambda: spool.find_job(broken.instance, "web").state == DEAD, timeout=20)
        time.sleep(0.5)  # a false recovery would send the waiting instance now
    finally:
        forwarder.stop()
        forwarder.join(5)
    assert "not a DICOM file" in spool.find_job(broken.instance, "web").reason
    assert forwarder.failing_since == failing_since
    assert spool.find_job(waiting.instance, "web").attempts == 1


def test_a_rescan_reads_only_the_manifests_of_jobs_the_forwarder_does_not_hold(tmp_path: Path, monkeypatch) -> None:
    """Every [forwarding] rescan_seconds a forwarder looks for pending jobs it was not handed; with an outage's
    backlog in the queue it read every manifest each time (50,000: 1.3 to 3.2 s per forwarder every 30 s), and
    those of the other associations' share too."""
    spool = Spool(tmp_path)
    jobs = [Job(f"{index:020d}-{index:012x}-4d4f44", "pacs", identity=Identity(sop_instance_uid=f"1.2.3.{index}"),
                destinations=("pacs",)) for index in range(200)]
    spool.add_jobs(jobs)
    spool.add_jobs([Job(job.instance, "other", destinations=("pacs", "other")) for job in jobs[:50]])
    destination = Destination("pacs", "dicom", "PACS", "127.0.0.1", 104, associations=2)
    forwarders = [Forwarder(destination, spool, FAST, ScriptedSender([]), partition=(index, 2)) for index in (0, 1)]
    reads: list[str] = []
    read = Spool._read

    def counted(path):
        reads.append(path.name)
        return read(path)

    monkeypatch.setattr(Spool, "_read", staticmethod(counted))
    for forwarder in forwarders:
        forwarder._rescan()
        assert len(reads) == len(forwarder._heap), "only its own share's manifests are read"
        reads.clear()
    assert sorted(key for f in forwarders for _, key, _ in f._heap) == sorted(job.key for job in jobs)
    late = Job("99999999999999999999-000000000000-4d4f44", "pacs", destinations=("pacs",))
    spool.add_job(late)
    reads.clear()
    for forwarder in forwarders:
        forwarder._rescan()  # everything it holds already: not read again
    assert reads == [f"{late.key}.json"]


def _backlog(spool: Spool, count: int, destination: str) -> list[Job]:
    """`count` pending jobs for `destination`, each with its own object (one image, encoded once)."""
    first = _stage(spool, pydicom_file("CT_small.dcm"), destination)
    data = spool.object_path(first.instance).read_bytes()
    jobs = [first]
    for _ in range(count - 1):
        ident = spool.new_id()
        tmp = spool.temp_path()
        tmp.write_bytes(data)
        spool.store_object(ident, tmp)
        spool.add_job(Job(ident, destination, identity=first.identity))
        jobs.append(spool.find_job(ident, destination))
    return jobs


class DownSender(ScriptedSender):
    """A destination that refuses every association while `down`, counting the attempts it sees."""

    def __init__(self) -> None:
        super().__init__([])
        self.down = True
        self.attempts = 0

    def prepare(self, jobs):
        if self.down:
            self.attempts += 1
            raise TransientForwardError("connection refused")

    def send(self, job, path):
        if self.down:
            self.attempts += 1
            raise TransientForwardError("connection refused")
        self.sent.append(job.instance)
        return RLE


def test_an_outage_costs_one_attempt_per_probe_not_one_per_queued_job(tmp_path: Path) -> None:
    """While a destination is down, a backlog of N jobs each waiting out its own backoff meant N attempts (N
    manifests rewritten, N log lines) at every backoff, and every job a dead letter after `max_attempts`
    backoffs whatever the outage's cause (50,000 queued: 50,000 retries every 300 s, all given up after
    about 4 hours).  Now one job is tried per probe interval, in turn, and the backlog survives."""
    spool = Spool(tmp_path)
    jobs = _backlog(spool, 60, "x")
    sender = DownSender()
    retry = RetryConfig(max_attempts=3, base_seconds=0.02, cap_seconds=0.02, probe_seconds=0.25)
    forwarder = Forwarder(Destination("x", "folder", path=tmp_path), spool, retry, sender, batch=16)
    forwarder.start()
    try:
        started = time.monotonic()
        assert wait_until(lambda: forwarder.failing_since is not None, timeout=10)
        cpu = time.process_time()
        time.sleep(1.5)
        assert time.process_time() - cpu < 0.5, "the forwarder waits for its next probe, it does not spin"
        elapsed = time.monotonic() - started
        tried = sum(spool.find_job(job.instance, "x").attempts for job in jobs)
        assert sender.attempts <= 2 + elapsed / retry.probe_seconds, sender.attempts
        assert tried == sender.attempts, "each attempt the destination saw is one job's, and only those count"
        assert spool.count_jobs(DEAD, "x") == 0, "an outage alone wears no job out"
        sender.down = False
        assert wait_until(lambda: spool.count_jobs(DONE, "x") == len(jobs), timeout=20)
    finally:
        forwarder.stop()
        forwarder.join(5)
    assert sorted(sender.sent) == sorted(job.instance for job in jobs)
    assert forwarder.failing_since is None


class PoisonSender(ScriptedSender):
    """An archive that aborts on one instance, every time, and stores the others."""

    def __init__(self, poison: str) -> None:
        super().__init__([])
        self.poison = poison

    def send(self, job, path):
        if job.instance == self.poison:
            raise TransientForwardError("association aborted")
        self.sent.append(job.instance)
        return RLE


def test_an_instance_that_fails_on_its_own_holds_up_no_other_and_is_given_up(tmp_path: Path) -> None:
    """Its failure makes the destination failing; the probe passes to the next job, whose success sends the
    rest, and the instance itself is tried until `max_attempts` and becomes a dead letter."""
    spool = Spool(tmp_path)
    jobs = _backlog(spool, 12, "x")
    poison = jobs[0].instance  # the oldest: first in every batch, first probed
    sender = PoisonSender(poison)
    forwarder = Forwarder(Destination("x", "folder", path=tmp_path), spool, FAST, sender, batch=4)
    _run(forwarder, lambda: spool.count_jobs(DONE, "x") == len(jobs) - 1 and spool.count_jobs(DEAD, "x") == 1)
    dead = spool.find_job(poison, "x")
    assert dead.attempts == FAST.max_attempts and "association aborted" in dead.reason
    assert sorted(sender.sent) == sorted(job.instance for job in jobs[1:])


def test_an_instance_that_fails_on_its_own_keeps_its_backoff_and_holds_the_backlog_one_probe_at_most(
        tmp_path: Path) -> None:
    """The answer that ended the failure made the poison instance due with the rest; sent first again, it failed
    again and held the whole backlog for another probe interval, each time: the backlog went out at one instance
    per probe interval until the poison's attempts ran out (119 instances behind one answered 0xA700 every time:
    30 s with a probe of 1 s, against 1.7 s).  It keeps its own backoff now; the others go at once."""
    spool = Spool(tmp_path)
    jobs = _backlog(spool, 40, "x")
    poison = jobs[0].instance  # the oldest and the smallest key: first in the batch, first once all are due
    sender = PoisonSender(poison)
    retry = RetryConfig(max_attempts=50, base_seconds=60.0, cap_seconds=60.0, probe_seconds=0.3)
    forwarder = Forwarder(Destination("x", "folder", path=tmp_path), spool, retry, sender, batch=8)
    forwarder.start()
    try:
        started = time.monotonic()
        assert wait_until(lambda: spool.count_jobs(DONE, "x") == len(jobs) - 1, timeout=15)
        took = time.monotonic() - started
        held = spool.find_job(poison, "x")
    finally:
        forwarder.stop()
        forwarder.join(5)
    # One probe interval lost to the poison's one failure, not one per instance (39 x 0.3 s = 11.7 s before).
    assert took < 4 * retry.probe_seconds + 1.5, took
    assert held.state == PENDING and held.attempts == 1, (held.state, held.attempts)
    assert sorted(sender.sent) == sorted(job.instance for job in jobs[1:])


def test_a_job_that_waited_out_an_outage_alone_goes_as_soon_as_another_ones_answer_ends_it(tmp_path: Path) -> None:
    """A failure that outlasted several probes was the destination's, not the one job's that failed in it: when
    a job that arrived since ends it, that job goes too, not after its own backoff."""
    spool = Spool(tmp_path)
    (alone,) = _backlog(spool, 1, "x")
    sender = DownSender()
    retry = RetryConfig(max_attempts=50, base_seconds=60.0, cap_seconds=60.0, probe_seconds=0.1)
    forwarder = Forwarder(Destination("x", "folder", path=tmp_path), spool, retry, sender)
    forwarder.start()
    try:
        assert wait_until(lambda: forwarder.failing_since is not None and sender.attempts >= 4, timeout=10)
        assert spool.find_job(alone.instance, "x").attempts == 1  # its backoff is 60 s away
        late = _stage(spool, pydicom_file("CT_small.dcm"), "x")
        sender.down = False
        forwarder.submit(late)
        assert wait_until(lambda: spool.count_jobs(DONE, "x") == 2, timeout=5), spool.find_job(alone.instance, "x")
    finally:
        forwarder.stop()
        forwarder.join(5)


def test_a_clock_set_back_does_not_hold_a_retry_for_the_steps_length(tmp_path: Path) -> None:
    """Due times are wall-clock times; one further ahead than any backoff can set is taken as due."""
    spool = Spool(tmp_path)
    job = _stage(spool, pydicom_file("CT_small.dcm"), "x")
    spool.move(job, PENDING, attempts=1, next_retry_at=time.time() + 3600)  # failed, then the clock went back 1 h
    sender = ScriptedSender([])
    _run(Forwarder(Destination("x", "folder", path=tmp_path), spool, FAST, sender),
         lambda: spool.find_job(job.instance, "x").state == DONE)
    assert sender.sent == [job.instance]
