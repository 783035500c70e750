"""The spool: durable receive, job state changes and recovery after a crash."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gateway.dicom.identity import Identity
from gateway.errors import SpoolError
from gateway.spool import DEAD, DONE, INFLIGHT, PENDING, UNROUTED, Job, Spool


def test_store_received_from_bytes_and_temp_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first = spool.store_received(b"DICM-bytes", "CT1")
    tmp = spool.temp_path()
    tmp.write_bytes(b"from-temp")
    second = spool.store_received(tmp, "CT1")
    assert not tmp.exists()  # moved, not copied
    assert spool.received() == sorted([first, second])
    assert spool.incoming_path(first).read_bytes() == b"DICM-bytes"
    assert spool.incoming_path(second).read_bytes() == b"from-temp"
    assert spool.calling_ae(second) == "CT1"
    assert list(spool.tmp.iterdir()) == []


def test_store_received_copies_foreign_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    outside = tmp_path / "outside.dcm"
    outside.write_bytes(b"x" * 1000)
    ident = spool.store_received(outside, "CT1")
    assert outside.exists() and spool.incoming_path(ident).read_bytes() == b"x" * 1000


def test_calling_ae_survives_in_the_id(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for title in ("CT1", "A/B C", ""):
        ident = spool.store_received(b"x", title)
        assert spool.calling_ae(ident) == title
        assert "/" not in ident


def test_job_lifecycle_and_object_collection(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    ident = spool.store_received(b"received", "CT1")
    spool.store_object(ident, spool.incoming_path(ident))
    a, b = Job(ident, "a"), Job(ident, "b")
    assert spool.add_job(a) and spool.add_job(b)
    assert not spool.add_job(a)  # idempotent on replay
    spool.finish_received(ident)
    assert spool.received() == [] and spool.held_ids() == [ident]
    assert spool.source_path(ident) == spool.held_path(ident)
    assert spool.counts()[PENDING] == 2

    a = spool.move(spool.find_job(ident, "a"), INFLIGHT)
    assert spool.find_job(ident, "a").state == INFLIGHT
    spool.move(a, DONE)
    assert spool.object_path(ident).exists(), "object deleted while job b still pending"
    b = spool.move(spool.find_job(ident, "b"), PENDING, attempts=3, next_retry_at=5.0, reason="refused")
    assert (b.attempts, b.reason) == (3, "refused")
    assert spool.move(spool.move(b, INFLIGHT), DONE).attempts == 3  # plain renames keep the manifest
    assert not spool.object_path(ident).exists() and not spool.held_path(ident).exists()
    assert spool.counts() == {"received": 0, "held": 0, PENDING: 0, INFLIGHT: 0, DONE: 2, DEAD: 0}


def test_finish_leaves_the_deletions_to_the_collector_after_an_fsync_of_done(tmp_path: Path, monkeypatch) -> None:
    """A forwarder's finish does not wait for the done/ fsync; the files go only once it has run."""
    import threading
    import time

    spool = Spool(tmp_path)
    release, synced = threading.Event(), []
    real_sync = spool.done_sync.sync

    def slow_sync() -> None:
        assert release.wait(30)
        real_sync()
        synced.append(True)

    monkeypatch.setattr(spool.done_sync, "sync", slow_sync)
    idents = []
    for _ in range(5):
        ident = spool.store_received(b"received", "CT1")
        spool.store_object(ident, b"object")
        spool.add_jobs([Job(ident, "a", destinations=("a", "b")), Job(ident, "b", destinations=("a", "b"))])
        spool.finish_received(ident)
        idents.append(ident)
    for ident in idents:
        spool.finish(spool.move(spool.find_job(ident, "a"), INFLIGHT))
    started = time.monotonic()
    finished = [spool.finish(spool.move(spool.find_job(ident, "b"), INFLIGHT)) for ident in idents]
    assert time.monotonic() - started < 5, "finish waited for the fsync"
    assert all(job.state == DONE for job in finished) and spool.counts()[DONE] == 10
    assert all(spool.held_path(i).exists() and spool.object_path(i).exists() for i in idents), \
        "nothing deleted before done/ is on disk"
    release.set()
    deadline = time.monotonic() + 30
    while (spool.held_ids() or any(spool.object_path(i).exists() for i in idents)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert spool.held_ids() == [] and not any(spool.object_path(i).exists() for i in idents)
    # The first fsync waited for the release; the finishes meanwhile were all covered by the next one.
    assert 1 <= len(synced) <= 2, synced


def test_claim_takes_only_a_pending_job(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.add_job(Job("i1", "a", attempts=2, identity=Identity(sop_instance_uid="1.2.3")))
    spool.add_job(Job("i2", "a"))
    spool.move(spool.find_job("i2", "a"), DEAD, reason="refused")
    claimed = spool.claim("i1", "a")
    assert (claimed.state, claimed.attempts, claimed.identity.sop_instance_uid) == (INFLIGHT, 2, "1.2.3")
    assert spool.find_job("i1", "a").state == INFLIGHT
    assert spool.claim("i1", "a") is None, "in flight already"
    assert spool.claim("i2", "a") is None and spool.find_job("i2", "a").state == DEAD
    assert spool.claim("i3", "a") is None


def test_object_kept_while_the_worker_still_holds_the_instance(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    ident = spool.store_received(b"r", "CT1")
    spool.store_object(ident, b"object")
    spool.add_job(Job(ident, "a"))
    spool.move(spool.find_job(ident, "a"), DONE)  # delivered before the worker added job b
    assert spool.object_path(ident).exists()
    spool.add_job(Job(ident, "b"))
    spool.finish_received(ident)
    spool.collect(ident)
    assert spool.object_path(ident).exists()


def test_recover_requeues_inflight_and_resolves_duplicates(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.add_job(Job("i1", "a"))
    spool.add_job(Job("i2", "a"))
    spool.move(spool.find_job("i1", "a"), INFLIGHT)
    # A crash between writing the new state and removing the old leaves two copies.
    done = Job("i2", "a", state=DONE)
    (spool.jobs / DONE / f"{done.key}.json").write_text(json.dumps(
        {"instance": "i2", "destination": "a", "state": DONE, "attempts": 1, "next_retry_at": 0.0,
         "reason": None, "created_at": 0.0, "updated_at": 0.0, "info": {}}))
    (spool.tmp / "partial.dcm").write_bytes(b"half")
    (spool.jobs / PENDING / "i3@a.json").write_bytes(b"")  # a manifest the crash cut short
    fixed = Spool(tmp_path).recover()
    assert fixed == {"temp_removed": 1, "duplicates": 1, "requeued": 1, "damaged": 1, "orphans_removed": 0}
    assert spool.find_job("i3", "a") is None
    assert spool.find_job("i1", "a").state == PENDING
    assert spool.find_job("i2", "a").state == DONE
    assert not (spool.jobs / PENDING / "i2@a.json").exists()


def test_dead_letters_are_listed_and_requeued(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.add_job(Job("i1", "pacs"))
    spool.move(spool.find_job("i1", "pacs"), DEAD, attempts=7, reason="status 0xC000")
    dead = list(spool.jobs_in(DEAD))
    assert [(j.instance, j.reason, j.attempts) for j in dead] == [("i1", "status 0xC000", 7)]
    moved = spool.requeue_dead()
    assert [j.state for j in moved] == [PENDING]
    job = spool.find_job("i1", "pacs")
    assert (job.state, job.attempts, job.reason) == (PENDING, 0, None)


def test_unrouted_dead_letter_goes_back_to_the_worker(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.held_path("i9").write_bytes(b"object")
    spool.add_job(Job("i9", UNROUTED, state=DEAD, reason="no route", identity=Identity(sop_instance_uid="1.9")))
    spool.requeue_dead()
    assert spool.received() == ["i9"]
    assert spool.incoming_path("i9").read_bytes() == b"object"
    assert spool.counts()[DEAD] == 0


def test_corrupt_manifest_is_a_spool_error(tmp_path: Path) -> None:
    from gateway.errors import SpoolError

    spool = Spool(tmp_path)
    (spool.jobs / PENDING / "x@a.json").write_text("{not json")
    with pytest.raises(SpoolError, match="unreadable"):
        list(spool.jobs_in(PENDING))


def test_unwritable_spool_is_a_spool_error(tmp_path: Path) -> None:
    from gateway.errors import SpoolError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SpoolError):
        Spool(blocker / "spool")


# ------------------------------------------------------------------ admit, as the receiver calls it


def _received_file(spool: Spool, data: bytes) -> Path:
    tmp = spool.temp_path()
    tmp.write_bytes(data)
    return tmp


def test_admit_moves_the_file_in_and_returns_the_checks_result(tmp_path: Path) -> None:
    """The receiver's call: a temp file, the calling AE, a check that parses the final path."""
    spool = Spool(tmp_path / "spool")
    tmp = _received_file(spool, b"instance bytes")
    seen: list[Path] = []

    def check(path: Path) -> str:
        seen.append(path)
        assert path.read_bytes() == b"instance bytes"  # the check reads the file in its final place
        return "identity"

    ident, result = spool.admit(tmp, "CT_SCANNER", check)
    assert result == "identity"
    assert seen == [spool.incoming_path(ident)]
    assert not tmp.exists() and spool.received() == [ident]
    assert Spool.calling_ae(ident) == "CT_SCANNER"
    assert spool.incoming_path(ident).read_bytes() == b"instance bytes"


def test_admit_removes_what_the_check_refuses(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    tmp = _received_file(spool, b"not DICOM")

    def check(path: Path) -> None:
        raise ValueError("not a dataset")

    with pytest.raises(ValueError, match="not a dataset"):
        spool.admit(tmp, "CT_SCANNER", check)
    assert spool.received() == [] and not tmp.exists()
    assert list(spool.incoming.iterdir()) == []


def test_admit_of_a_missing_file_is_a_spool_error(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(SpoolError):
        spool.admit(spool.temp_path(), "CT_SCANNER", lambda path: None)


def test_a_manifest_written_before_jobs_had_a_typed_identity_still_reads(tmp_path: Path) -> None:
    """Spools of an earlier version keep the instance's values in an untyped ``info`` dict."""
    spool = Spool(tmp_path)
    (spool.jobs / PENDING / "i1@a.json").write_text(json.dumps({
        "instance": "i1", "destination": "a", "state": PENDING, "attempts": 0, "next_retry_at": 0.0,
        "reason": None, "created_at": 0.0, "updated_at": 0.0,
        "info": {"sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "sop_instance_uid": "1.2.3", "study_uid": "1.2",
                 "series_uid": "1.2.4", "modality": "CT", "calling_ae": "CT1", "transfer_syntax": "1.2.840.10008.1.2.5",
                 "received_at": 5.0, "destinations": ["a", "b"]}}))
    job = spool.find_job("i1", "a")
    assert job.identity == Identity("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2", "1.2.4", "CT", "1.2.840.10008.1.2.5")
    assert (job.calling_ae, job.received_at, job.destinations) == ("CT1", 5.0, ("a", "b"))
    spool.move(job, DONE, attempts=1)
    assert spool.find_job("i1", "a").identity == job.identity  # rewritten in the typed form, same values


def test_recover_removes_orphan_objects_and_counts_them(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    kept = spool.store_received(b"received", "CT1")
    spool.store_object(kept, b"object of a received instance")
    held = spool.store_received(b"held", "CT1")
    spool.store_object(held, b"object of a held instance")
    spool.finish_received(held)
    spool.object_path("00000000000000000001-aaaaaaaaaaaa-4354").write_bytes(b"source deleted, object not")
    (spool.objects / "half.partial").write_bytes(b"x")
    fixed = Spool(tmp_path).recover()
    assert fixed["orphans_removed"] == 1 and fixed["temp_removed"] == 1
    assert sorted(p.name for p in spool.objects.iterdir()) == sorted([f"{kept}.dcm", f"{held}.dcm"])


def test_remove_partial_copies_takes_only_its_own_stale_temporaries(tmp_path: Path) -> None:
    import os
    import time

    from gateway.spool import atomic_copy, remove_partial_copies

    study = tmp_path / "1.2" / "1.2.3"
    study.mkdir(parents=True)
    source = tmp_path / "src.dcm"
    source.write_bytes(b"dicom")
    atomic_copy(source, study / "1.2.3.4.dcm")
    stale = study / f".1.2.3.5.dcm.{'a' * 32}.tmp"  # what a crash during atomic_copy leaves
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 60, time.time() - 60))
    fresh = study / f".1.2.3.6.dcm.{'b' * 32}.tmp"  # a copy in progress now
    fresh.write_bytes(b"half")
    foreign = [study / ".notes.tmp", study / "report.tmp", tmp_path / f".x.{'c' * 31}.tmp"]
    for path in foreign:
        path.write_bytes(b"not ours")
    assert remove_partial_copies(tmp_path, before=time.time() - 1) == 1
    assert not stale.exists() and fresh.exists() and all(p.exists() for p in foreign)
    assert (study / "1.2.3.4.dcm").read_bytes() == b"dicom"
    assert remove_partial_copies(tmp_path) == 1 and not fresh.exists()


def test_finished_jobs_are_pruned_by_when_they_finished(tmp_path: Path) -> None:
    import time

    spool = Spool(tmp_path)
    for name in ("i1", "i2"):
        spool.add_job(Job(name, "a"))
        spool.move(spool.find_job(name, "a"), DONE)
    spool.add_job(Job("i3", "a"))
    now = time.time()
    assert spool.prune_done(3600, now=now) == 0  # finished just now
    assert spool.prune_done(3600, now=now + 7200) == 2
    assert spool.counts()[DONE] == 0 and spool.counts()[PENDING] == 1


def test_the_record_of_a_delivery_stays_while_its_instance_is_held(tmp_path: Path) -> None:
    """Pruned, the done job of an instance another destination still waits for would be made again by the
    next start's recovery, and the instance delivered again."""
    import time

    spool = Spool(tmp_path)
    for name in ("i1", "i2"):
        spool.add_job(Job(name, "a"))
        spool.move(spool.find_job(name, "a"), DONE)
    spool.held_path("i1").write_bytes(b"held: destination b has yet to take it")
    assert spool.prune_done(3600, now=time.time() + 7200) == 1
    assert spool.find_job("i1", "a").state == DONE and spool.find_job("i2", "a") is None


def test_an_instance_stays_while_a_configured_destination_has_a_job_its_other_jobs_do_not_name(
        tmp_path: Path) -> None:
    """Destination b added to the configuration while i waited for a: the restart made b's job, and a's
    job still names a alone."""
    spool = Spool(tmp_path)
    spool.destination_names = frozenset({"a", "b"})
    spool.held_path("i").write_bytes(b"held")
    spool.add_job(Job("i", "a", destinations=("a",)))
    spool.add_job(Job("i", "b", destinations=("a", "b")))
    spool.move(spool.find_job("i", "a"), DONE)
    assert spool.held_path("i").exists(), "b has yet to take it"
    spool.move(spool.find_job("i", "b"), DONE)
    assert not spool.held_path("i").exists()


def test_jobs_are_counted_without_reading_their_manifests(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for n in range(5):
        spool.add_job(Job(f"i{n}", "pacs" if n % 2 else "archive"))
    (spool.jobs / PENDING / "i9@pacs.json").write_text("{cut short by a crash")  # counted, never parsed
    assert spool.count_jobs(PENDING) == 6
    assert spool.count_jobs(PENDING, "pacs") == 3 and spool.count_jobs(PENDING, "archive") == 3
    assert spool.counts()[PENDING] == 6


def test_folder_fsync_is_shared_and_never_returns_before_covering_the_caller(tmp_path: Path, monkeypatch) -> None:
    """Group commit: callers at once share fsyncs; each returns only after one that began after its call."""
    import threading
    import time as clock

    from gateway import spool as spool_module

    started: list[float] = []
    real = spool_module.fsync_dir

    def slow_fsync(path: Path) -> None:
        started.append(clock.monotonic())
        clock.sleep(0.05)
        real(path)

    monkeypatch.setattr(spool_module, "fsync_dir", slow_fsync)
    folder = spool_module.FolderSync(tmp_path)
    calls: list[tuple[float, float]] = []
    lock = threading.Lock()

    def caller() -> None:
        called = clock.monotonic()
        folder.sync()
        with lock:
            calls.append((called, clock.monotonic()))

    threads = [threading.Thread(target=caller) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 16
    assert folder.count == len(started) < 16, f"{folder.count} fsyncs for 16 callers"
    for called, returned in calls:  # an fsync began after the call and had time to end before the return
        assert any(called <= begun and begun + 0.05 <= returned for begun in started)


def test_a_failed_folder_fsync_raises_and_the_next_caller_tries_again(tmp_path: Path, monkeypatch) -> None:
    from gateway import spool as spool_module

    outcomes = iter([OSError(5, "Input/output error"), None])

    def flaky(path: Path) -> None:
        problem = next(outcomes)
        if problem is not None:
            raise problem

    monkeypatch.setattr(spool_module, "fsync_dir", flaky)
    folder = spool_module.FolderSync(tmp_path)
    with pytest.raises(OSError):
        folder.sync()
    folder.sync()
    assert folder.count == 1


def test_moving_many_jobs_fsyncs_their_folders_once_per_batch(tmp_path: Path, monkeypatch) -> None:
    """`retry` of 5,000 dead letters made three fsyncs per letter (5.8 s from the command line, 10 s from the
    console), and retiring a removed destination's queue as many: now one per manifest and one per folder and
    batch, each manifest still durable before the one it replaces is removed."""
    spool = Spool(tmp_path)
    count = 300
    spool.add_jobs([Job(f"{index:020d}-{index:012x}-4d4f44", "pacs", state=DEAD, attempts=50, reason="gave up")
                    for index in range(count)])
    fsyncs: list[int] = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), fsync(fd))[1])
    moved = spool.requeue_dead()
    assert len(moved) == count and spool.count_jobs(PENDING) == count and spool.count_jobs(DEAD) == 0
    assert all(job.attempts == 0 and job.reason is None for job in spool.jobs_in(PENDING))
    assert len(fsyncs) <= count + 2 * 2  # two batches, two folders each
    fsyncs.clear()
    retired = spool.retire_destinations({"other"})
    assert len(retired) == count and spool.count_jobs(DEAD) == count and spool.count_jobs(PENDING) == 0
    assert {job.reason for job in spool.jobs_in(DEAD)} == {
        "destination 'pacs' is no longer in the configuration; configure it again and retry to send"}
    assert len(fsyncs) <= count + 2 * 2


def test_recover_reads_no_record_of_a_finished_delivery(tmp_path: Path, monkeypatch) -> None:
    """Done manifests stay a week (keep_done_hours) as records: 100,000 of them were read at every start
    (1.5 s of a 3.6 s spool recovery with a warm cache, more from disk), though only one whose instance is still
    held or received can matter to anything."""
    spool = Spool(tmp_path)
    spool.add_jobs([Job(f"{index:020d}-{index:012x}-4d4f44", "pacs", state=DONE) for index in range(200)])
    held = "99999999999999999999-000000000000-4d4f44"
    spool.held_path(held).write_bytes(b"DICM")
    (spool.jobs / DONE / f"{held}@pacs.json").write_bytes(b"{")  # cut short by a crash
    spool.add_job(Job(held, "other"))
    reads: list[str] = []
    read = Spool._read
    monkeypatch.setattr(Spool, "_read", staticmethod(lambda path: (reads.append(path.name), read(path))[1]))
    fixed = Spool(tmp_path).recover()
    assert fixed["damaged"] == 1 and not (spool.jobs / DONE / f"{held}@pacs.json").exists()
    assert sorted(reads) == [f"{held}@other.json", f"{held}@pacs.json"]
    assert spool.count_jobs(DONE) == 200
