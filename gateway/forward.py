"""Forward: deliver processed instances to each destination, durably and at least once.

One :class:`Forwarder` thread per destination and association (a DICOM
destination gets ``associations`` of them, each owning a fixed share of the
instances), so a slow or absent archive never blocks the others, and an
archive that stores one instance at a time per association is kept busy.
It takes due pending jobs from the spool, sends them through a
:class:`Sender` and records the outcome:

* success: the job is done (the object is deleted once all its jobs are);
* :class:`~gateway.errors.TransientForwardError` (connection refused,
  timeout, abort, status 0xA7xx, ...): retried after an exponential backoff
  ``min(cap, base * 2**(attempts-1))``, dead after ``max_attempts``;
* :class:`~gateway.errors.PermanentForwardError` (status 0xCxxx, SOP class
  refused, no way to encode for the destination): straight to dead letters,
  with the reason.

:class:`DicomSender` proposes, for every SOP class at hand, one presentation
context per transfer syntax of a preference ladder (the destination's
configured ladder, then the syntax of the stored object, then explicit and
implicit little endian), so the peer's answer tells exactly which syntaxes it
takes; each instance goes in the best accepted one.  When that is not the
stored syntax, the instance is re-encoded (verified) by the pipeline first.
Associations (:mod:`gateway.scu`) are kept open across instances and
released when idle; a stored object is sent straight from its file.

:class:`FolderSender` writes ``<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``
atomically with fsync.
"""

from __future__ import annotations

import heapq
import re
import threading
import time
import zlib
from collections.abc import Iterable
from dataclasses import replace
from io import BytesIO
from pathlib import Path
from typing import Protocol

from pydicom import Dataset, dcmread
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from gateway.config import Destination, RetryConfig
from gateway.errors import AssociationRejectedError, NetworkError, PermanentForwardError, TransientForwardError
from gateway.filemeta import parse_file_meta, read_file_meta
from gateway.logs import get_logger, stage
from gateway.scu import Association
from gateway.spool import DEAD, DONE, INFLIGHT, PENDING, Job, Spool, atomic_copy

__all__ = ["Sender", "FolderSender", "DicomSender", "Forwarder", "make_sender", "classify_status", "ladder_for"]

_log = get_logger("forward")

_MAX_CONTEXTS = 128
_SUCCESS = {0x0000, 0xB000, 0xB006, 0xB007}
_NATIVE_LE = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class Sender(Protocol):
    """Delivers one job's object; returns the transfer syntax it was sent in."""

    def prepare(self, jobs: list[Job]) -> None:
        """Hint: these jobs are about to be sent (lets a sender open one association)."""

    def send(self, job: Job, path: Path) -> str:
        """Deliver; raise Transient/PermanentForwardError on failure."""

    def close(self) -> None:
        """Release connections; called when idle and at shutdown."""


# --------------------------------------------------------------------- folder


def _safe_uid(value: str, what: str) -> str:
    if not _UID_RE.match(value or "") or len(value) > 64:
        raise PermanentForwardError(f"{what} {value!r} is not a valid UID; cannot build a file path")
    return value


class FolderSender:
    """Writes each instance into a folder tree: Study / Series / SOP Instance."""

    def __init__(self, destination: Destination) -> None:
        assert destination.path is not None
        self.root = destination.path

    def prepare(self, jobs: list[Job]) -> None:
        pass

    def send(self, job: Job, path: Path) -> str:
        info = job.info
        folder = (self.root / _safe_uid(info.get("study_uid", ""), "Study Instance UID")
                  / _safe_uid(info.get("series_uid", ""), "Series Instance UID"))
        target = folder / f"{_safe_uid(info.get('sop_instance_uid', ''), 'SOP Instance UID')}.dcm"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_copy(path, target)
        except OSError as exc:
            raise TransientForwardError(f"cannot write {target}: {exc}") from exc
        return str(info.get("transfer_syntax", ""))

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------- dicom


def classify_status(status: int) -> str:
    """``"success"``, ``"transient"`` or ``"permanent"`` for a C-STORE status."""
    if status in _SUCCESS or 0xB000 <= status <= 0xBFFF:
        return "success"
    if 0xA700 <= status <= 0xA7FF or status in (0x0110, 0x0212, 0x0213):
        return "transient"
    return "permanent"


def ladder_for(destination: Destination, stored_syntax: str) -> list[str]:
    """Syntaxes to offer for an object stored in `stored_syntax`, best first."""
    ladder: list[str] = []
    for uid in (*destination.transfer_syntaxes, stored_syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        if uid and uid not in ladder:
            ladder.append(str(uid))
    return ladder


class DicomSender:
    """C-STORE SCU to one DICOM destination, reusing its association (see :mod:`gateway.scu`)."""

    def __init__(self, destination: Destination, calling_ae: str = "GATEWAY", verify: bool = True) -> None:
        self.destination = destination
        self.calling_ae = calling_ae
        self.verify = verify
        self.assoc: Association | None = None
        self._proposed: set[tuple[str, str]] = set()

    def _wanted(self, jobs: Iterable[Job]) -> dict[str, list[str]]:
        wanted: dict[str, list[str]] = {}
        for job in jobs:
            ladder = wanted.setdefault(job.info.get("sop_class_uid", ""), [])
            for uid in ladder_for(self.destination, job.info.get("transfer_syntax", "")):
                if uid not in ladder:
                    ladder.append(uid)
        return wanted

    def prepare(self, jobs: list[Job]) -> None:
        wanted = self._wanted(jobs)
        needed = {(sop, ts) for sop, ladder in wanted.items() for ts in ladder}
        if self.assoc is not None and self.assoc.is_established and needed <= self._proposed:
            return
        self.close()
        contexts: list[tuple[str, str]] = []
        for sop, ladder in wanted.items():
            if contexts and len(contexts) + len(ladder) > _MAX_CONTEXTS:
                break  # the remaining SOP classes get their own association later
            contexts.extend((sop, ts) for ts in ladder[:_MAX_CONTEXTS])
        dest = self.destination
        try:
            assoc = Association.request(dest.host, dest.port, called_ae=dest.ae_title, calling_ae=self.calling_ae,
                                        contexts=contexts, timeout=dest.timeout_seconds,
                                        connect_timeout=min(10.0, dest.timeout_seconds))
        except AssociationRejectedError as exc:
            raise TransientForwardError(f"association with {dest.ae_title}@{dest.host}:{dest.port} "
                                        f"could not be established: {exc}") from exc
        except NetworkError as exc:
            raise TransientForwardError(f"cannot associate with {dest.ae_title}@{dest.host}:{dest.port}: {exc}") from exc
        except ValueError as exc:  # a UID or AE title that cannot be put on the wire
            raise PermanentForwardError(f"cannot request an association with {dest.name}: {exc}") from exc
        self.assoc = assoc
        self._proposed = set(contexts)

    def _encode_for(self, path: Path, stored: str, target: str) -> Dataset | None:
        """The object re-encoded (verified) in `target`, or None if it cannot be.

        Between the two little endian syntaxes only the element encoding
        changes, the pixel bytes stay; anything else goes through the pipeline.
        """
        ds = dcmread(path)
        if stored in _NATIVE_LE and target in _NATIVE_LE:
            ds.file_meta.TransferSyntaxUID = UID(target)
            ds.set_original_encoding(target == ImplicitVRLittleEndian, True, ds.original_character_set)
            return ds
        from gateway.pipeline import recompress

        try:
            outcome = recompress(ds, target, verify=self.verify)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - includes a Rust decoder's PanicException
            _log.warning("re-encoding %s to %s failed: %s: %s", path.name, target, type(exc).__name__, exc)
            return None
        if str(outcome.transfer_syntax) != target:
            return None
        new = outcome.dataset
        new.set_original_encoding(target == ImplicitVRLittleEndian, True, new.original_character_set)
        return new

    def send(self, job: Job, path: Path) -> str:
        sop_class = job.info.get("sop_class_uid", "")
        try:
            offset, stored = read_file_meta(path)
        except ValueError as exc:
            raise PermanentForwardError(f"processed object {path.name} is not a DICOM file: {exc}") from exc
        except OSError as exc:
            raise TransientForwardError(f"cannot read processed object {path.name}: {exc}") from exc
        if self.assoc is None or not self.assoc.is_established or (sop_class, stored) not in self._proposed:
            self.prepare([replace(job, info={**job.info, "transfer_syntax": stored})])
        assert self.assoc is not None
        accepted = self.assoc.accepted_syntaxes(sop_class)
        if not accepted:
            self.close()
            raise PermanentForwardError(f"{self.destination.name} does not accept SOP class {sop_class}")
        chosen: str | None = None
        payload: bytes | memoryview | tuple[Path, int] | None = None
        for ts in ladder_for(self.destination, stored):
            if ts not in accepted:
                continue
            if ts == stored:
                chosen, payload = ts, (path, offset)
                break
            encoded = self._encode_for(path, stored, ts)
            if encoded is not None:
                chosen, payload = ts, _dataset_bytes(encoded)
                break
        if chosen is None or payload is None:
            raise PermanentForwardError(
                f"{self.destination.name} accepts {', '.join(accepted)} for {sop_class}; "
                f"the instance (stored as {stored}) could not be encoded in any of them")
        status = self._store(job, chosen, payload)
        kind = classify_status(status)
        if kind == "success":
            return chosen
        message = f"{self.destination.name} answered C-STORE status 0x{status:04X}"
        if kind == "transient":
            raise TransientForwardError(message)
        raise PermanentForwardError(message)

    def _store(self, job: Job, syntax: str, payload: bytes | memoryview | tuple[Path, int]) -> int:
        assert self.assoc is not None
        try:
            result = self.assoc.c_store(job.info.get("sop_class_uid", ""), job.info.get("sop_instance_uid", ""),
                                        syntax, payload)
        except NetworkError as exc:
            self.close()
            raise TransientForwardError(f"C-STORE to {self.destination.name} failed: {exc}") from exc
        except ValueError as exc:  # the object or its UIDs cannot be sent as they are
            raise PermanentForwardError(f"cannot send to {self.destination.name}: {exc}") from exc
        if result.comment:
            _log.info("%s answered 0x%04X: %s", self.destination.name, result.status, result.comment)
        return result.status

    def close(self) -> None:
        if self.assoc is not None:
            self.assoc.release()
        self.assoc = None
        self._proposed = set()


def _dataset_bytes(ds: Dataset) -> memoryview:
    """`ds` encoded in its file meta's transfer syntax, without preamble and file meta."""
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    data = buffer.getvalue()
    offset, _ = parse_file_meta(data)
    return memoryview(data)[offset:]


def make_sender(destination: Destination, calling_ae: str, verify: bool) -> Sender:
    """The sender for a destination's kind."""
    if destination.kind == "folder":
        return FolderSender(destination)
    return DicomSender(destination, calling_ae=calling_ae, verify=verify)


# ------------------------------------------------------------------- forwarder


class Forwarder(threading.Thread):
    """Sends one destination's jobs in a thread of its own."""

    def __init__(self, destination: Destination, spool: Spool, retry: RetryConfig, sender: Sender,
                 *, batch: int = 32, idle_seconds: float = 5.0, rescan_seconds: float = 30.0,
                 partition: tuple[int, int] = (0, 1)) -> None:
        super().__init__(name=f"forward-{destination.name}-{partition[0]}", daemon=True)
        self.partition = partition
        self.destination = destination
        self.spool = spool
        self.retry = retry
        self.sender = sender
        self.batch = batch
        self.idle_seconds = idle_seconds
        self.rescan_seconds = rescan_seconds
        self._heap: list[tuple[float, str, str]] = []  # (due, key, instance)
        self._queued: set[str] = set()
        self._cond = threading.Condition()
        self._halt = threading.Event()

    # -- feeding

    def owns(self, instance: str) -> bool:
        """True when this forwarder's partition of the destination's jobs holds `instance`."""
        index, count = self.partition
        return count == 1 or zlib.crc32(instance.encode()) % count == index

    def submit(self, job: Job) -> None:
        """Queue a pending job (called by the worker, and at start-up from disk)."""
        if not self.owns(job.instance):
            return
        with self._cond:
            if job.key in self._queued:
                return
            self._queued.add(job.key)
            heapq.heappush(self._heap, (job.next_retry_at, job.key, job.instance))
            self._cond.notify()

    def _rescan(self) -> None:
        for job in self.spool.jobs_in(PENDING, self.destination.name):
            self.submit(job)

    def stop(self) -> None:
        self._halt.set()
        with self._cond:
            self._cond.notify()

    # -- loop

    def _due(self) -> tuple[list[str], float | None]:
        """Instance ids due now (up to `batch`) and the time of the next later one."""
        now = time.time()
        due: list[str] = []
        with self._cond:
            while self._heap and self._heap[0][0] <= now and len(due) < self.batch:
                _, key, instance = heapq.heappop(self._heap)
                self._queued.discard(key)
                due.append(instance)
            nxt = self._heap[0][0] if self._heap else None
        return due, nxt

    def run(self) -> None:
        self._rescan()
        last_scan = time.monotonic()
        idle_since = time.monotonic()
        try:
            while not self._halt.is_set():
                due, nxt = self._due()
                if due:
                    self._deliver(due)
                    idle_since = time.monotonic()
                    continue
                if time.monotonic() - idle_since > self.idle_seconds:
                    self.sender.close()
                if time.monotonic() - last_scan > self.rescan_seconds:
                    self._rescan()
                    last_scan = time.monotonic()
                    continue
                wait = self.rescan_seconds if nxt is None else max(0.0, min(self.rescan_seconds, nxt - time.time()))
                wait = min(wait, self.idle_seconds)
                with self._cond:
                    if not self._heap or self._heap[0][0] > time.time():
                        self._cond.wait(timeout=wait)
        finally:
            self.sender.close()

    def _deliver(self, instances: list[str]) -> None:
        jobs = []
        for instance in instances:
            job = self.spool.find_job(instance, self.destination.name)
            if job is not None and job.state == PENDING:
                jobs.append(self.spool.move(job, INFLIGHT))
        if not jobs:
            return
        try:
            self.sender.prepare(jobs)
        except TransientForwardError as exc:
            for job in jobs:  # the destination is unreachable: every job of the batch waits
                self._failed(job, exc, transient=True)
            return
        for index, job in enumerate(jobs):
            if self._halt.is_set():
                for rest in jobs[index:]:
                    self.spool.move(rest, PENDING)
                return
            self._send_one(job)

    def _send_one(self, job: Job) -> None:
        path = self.spool.object_path(job.instance)
        sop = job.info.get("sop_instance_uid", job.instance)
        if not path.exists():
            if self.spool.held_path(job.instance).exists():  # the cache is rebuilt at the next start
                self._failed(job, TransientForwardError(f"processed object {path.name} is missing; "
                                                        "it is rebuilt from the held instance at restart"),
                             transient=True)
            else:
                self._failed(job, PermanentForwardError(f"instance {job.instance} is gone from the spool"),
                             transient=False)
            return
        started = time.perf_counter()
        try:
            syntax = self.sender.send(job, path)
        except TransientForwardError as exc:
            self._failed(job, exc, transient=True)
            return
        except PermanentForwardError as exc:
            self._failed(job, exc, transient=False)
            return
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - a bug in one send must not stop the destination
            self.sender.close()
            self._failed(job, TransientForwardError(f"{type(exc).__name__}: {exc}"), transient=True)
            return
        self.spool.move(job, DONE)
        stage(_log, "forwarded", sop, study=job.info.get("study_uid"), destination=self.destination.name,
              syntax=syntax, seconds=time.perf_counter() - started)

    def _failed(self, job: Job, exc: Exception, *, transient: bool) -> None:
        attempts = job.attempts + 1
        sop = job.info.get("sop_instance_uid", job.instance)
        if transient and attempts < self.retry.max_attempts:
            due = time.time() + self.retry.delay(attempts)
            moved = self.spool.move(job, PENDING, attempts=attempts, next_retry_at=due, reason=str(exc))
            stage(_log, "retry", sop, destination=self.destination.name, attempts=attempts,
                  delay=self.retry.delay(attempts), reason=str(exc))
            self.submit(moved)
            return
        reason = str(exc) if not transient else f"gave up after {attempts} attempts: {exc}"
        self.spool.move(job, DEAD, attempts=attempts, reason=reason)
        stage(_log, "dead", sop, level=40, destination=self.destination.name, reason=reason)
