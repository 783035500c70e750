"""The DICOM destination: C-STORE over reused associations, with a transfer syntax ladder.

:class:`DicomSender` proposes, for every SOP class at hand, one presentation
context per transfer syntax of a preference ladder (the destination's
configured ladder, then the syntax of the stored object, then explicit and
implicit little endian), so the peer's answer tells exactly which syntaxes it
takes; each instance goes in the best accepted one.  When that is not the
stored syntax, the instance is re-encoded (verified) by the transcoder it was
given (:func:`gateway.forward.transcode.encode_for`).  Associations
(:mod:`gateway.net.scu`) are kept open across instances and released when
idle; a stored object is sent straight from its file.

With ``storage_commitment = true`` (PS3.4 Annex J, see
:mod:`gateway.forward.commitment`), the first :meth:`DicomSender.send` of a
batch stores every instance :meth:`DicomSender.prepare` announced, asks the
archive to commit them in one N-ACTION and waits for its N-EVENT-REPORT (on
this association or on one the archive opens to our receiver); each later
``send`` of the batch returns that instance's outcome.  An instance counts as
delivered only once committed.  A transient failure to store one instance
ends the storing: those stored before it are asked about, and the rest of
the batch is left to the forwarder, untried, as without commitment.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from io import BytesIO
from pathlib import Path

from pydicom import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import generate_uid

from gateway.config import Destination
from gateway.dicom.filemeta import parse_file_meta
from gateway.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from gateway.errors import (AssociationAbortedError, AssociationRejectedError, ForwardError, GatewayError, NetworkError,
                            PermanentForwardError, TransientForwardError)
from gateway.forward.commitment import (ACTION_REQUEST, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE,
                                        CommitmentReports, CommitmentResult, classify_failure, decode_implicit,
                                        describe_failure, parse_report, request_bytes)
from gateway.forward.transcode import Ladder, Transcode, encode_for, stored_syntax
from gateway.logs import get_logger
from gateway.net.scu import Association
from gateway.record import ProofRecord
from gateway.spool import Job

__all__ = ["DicomSender", "classify_status", "ladder_for"]

_log = get_logger("forward")

_MAX_CONTEXTS = 128
# Success, and the warnings of a C-STORE (PS3.4 B.2.3: coercion, elements discarded, data set does not match
# the SOP class; PS3.7 C.4: 0001 optional attributes not supported, 0107 attribute list error, 0116 attribute
# value out of range): the archive stored the instance.
_SUCCESS = {0x0000, 0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007}


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
    for uid in (*destination.transfer_syntaxes, stored_syntax, EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN):
        if uid and uid not in ladder:
            ladder.append(str(uid))
    return ladder


class DicomSender:
    """C-STORE SCU to one DICOM destination, reusing its association (see :mod:`gateway.net.scu`)."""

    def __init__(self, destination: Destination, calling_ae: str = "GATEWAY",
                 transcode: Transcode | None = None, associate: Callable[..., Association] | None = None,
                 *, locate: Callable[[Job], Path] | None = None, reports: CommitmentReports | None = None,
                 record: ProofRecord | None = None) -> None:
        self.destination = destination
        self.calling_ae = calling_ae
        self._ladder = Ladder(transcode or (lambda path, stored, target: encode_for(path, stored, target)),
                              _dataset_bytes)
        self._associate = associate or Association.request  # another requestor only for measuring (bench_client)
        self.assoc: Association | None = None
        self._proposed: set[tuple[str, str]] = set()
        self._tls = destination.tls.context(f"destination {destination.name}: tls") if destination.tls else None
        # Storage commitment: the batch announced by prepare(), where each job's object is, and the
        # outcome of each job already stored and asked about (a syntax or the error to raise).
        self._locate = locate
        self.reports = reports
        self.record = record
        self._batch: list[Job] = []
        self._outcomes: dict[str, str | ForwardError] = {}

    @property
    def transcode(self) -> Transcode:
        """How an object is re-encoded for a syntax it is not stored in (see :mod:`gateway.forward.transcode`)."""
        return self._ladder.transcode

    def sent_bytes(self, job: Job) -> int | None:
        """The size of the data set sent for `job` when it was re-encoded, else None (the stored object's)."""
        return self._ladder.sent_bytes(job)

    def _wanted(self, jobs: Iterable[Job]) -> dict[str, list[str]]:
        wanted: dict[str, list[str]] = {}
        for job in jobs:
            ladder = wanted.setdefault(job.identity.sop_class_uid, [])
            for uid in ladder_for(self.destination, job.identity.transfer_syntax):
                if uid not in ladder:
                    ladder.append(uid)
        return wanted

    def prepare(self, jobs: list[Job]) -> None:
        self._batch = list(jobs)
        self._outcomes = {}
        self._ladder.forget()
        self._open(jobs)

    def _open(self, jobs: list[Job]) -> None:
        wanted = self._wanted(jobs)
        needed = {(sop, ts) for sop, ladder in wanted.items() for ts in ladder}
        if self.destination.storage_commitment:
            needed.add((STORAGE_COMMITMENT, IMPLICIT_VR_LITTLE_ENDIAN))
        if self.assoc is not None and self.assoc.is_established and needed <= self._proposed:
            return
        self.close()
        contexts: list[tuple[str, str]] = []
        if self.destination.storage_commitment:
            contexts.append((STORAGE_COMMITMENT, IMPLICIT_VR_LITTLE_ENDIAN))
        for sop, ladder in wanted.items():
            if contexts and len(contexts) + len(ladder) > _MAX_CONTEXTS:
                break  # the remaining SOP classes get their own association later
            contexts.extend((sop, ts) for ts in ladder[:_MAX_CONTEXTS])
        dest = self.destination
        secure = {"tls": self._tls} if self._tls is not None else {}  # DICOM TLS, PS3.15 B.12
        try:
            assoc = self._associate(dest.host, dest.port, called_ae=dest.ae_title, calling_ae=self.calling_ae,
                                    contexts=contexts, timeout=dest.timeout_seconds,
                                    connect_timeout=min(10.0, dest.timeout_seconds), **secure)
        except AssociationRejectedError as exc:
            raise TransientForwardError(f"association with {dest.ae_title}@{dest.host}:{dest.port} "
                                        f"could not be established: {exc}") from exc
        except NetworkError as exc:
            raise TransientForwardError(f"cannot associate with {dest.ae_title}@{dest.host}:{dest.port}: {exc}") from exc
        except ValueError as exc:  # a UID or AE title that cannot be put on the wire
            raise PermanentForwardError(f"cannot request an association with {dest.name}: {exc}") from exc
        self.assoc = assoc
        self._proposed = set(contexts)

    def has_outcome(self, job: Job) -> bool:
        return job.key in self._outcomes  # only with storage commitment: each instance is sent at its send()

    def send(self, job: Job, path: Path) -> str:
        if not self.destination.storage_commitment:
            return self._store_one(job, path)
        if job.key not in self._outcomes:
            self._store_and_commit(job, path)
        outcome = self._outcomes.pop(job.key)
        if isinstance(outcome, ForwardError):
            raise outcome
        return outcome

    def _store_one(self, job: Job, path: Path) -> str:
        """C-STORE one instance in the best syntax the peer accepts; return that syntax."""
        sop_class = job.identity.sop_class_uid
        offset, stored = stored_syntax(path)
        if self.assoc is None or not self.assoc.is_established or (sop_class, stored) not in self._proposed:
            self._open([replace(job, identity=job.identity.with_syntax(stored))])
        assert self.assoc is not None
        accepted = self.assoc.accepted_syntaxes(sop_class)
        if not accepted:
            self.close()
            raise PermanentForwardError(f"{self.destination.name} does not accept SOP class {sop_class}")
        ladder = [ts for ts in ladder_for(self.destination, stored) if ts in accepted]
        chosen, data = self._ladder.choose(
            job, path, stored, ladder, f"{self.destination.name} accepts {', '.join(accepted)} for {sop_class}; "
            f"the instance (stored as {stored}) could not be encoded in any of them")
        payload: bytes | memoryview | tuple[Path, int] = (path, offset) if data is None else data
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
            result = self.assoc.c_store(job.identity.sop_class_uid, job.identity.sop_instance_uid,
                                        syntax, payload)
        except NetworkError as exc:
            self.close()
            raise TransientForwardError(f"C-STORE to {self.destination.name} failed: {exc}") from exc
        except ValueError as exc:  # the object or its UIDs cannot be sent as they are
            raise PermanentForwardError(f"cannot send to {self.destination.name}: {exc}") from exc
        if result.comment:
            # Archives quote the instance in their Error Comment (a patient's name and ID in a conflict of
            # patient data): its length is logged, never its text.
            _log.info("%s answered 0x%04X for sop=%s with an Error Comment of %d character(s), not logged: it may "
                      "quote patient data", self.destination.name, result.status, job.identity.sop_instance_uid,
                      len(result.comment))
        return result.status

    # -- storage commitment

    def _store_and_commit(self, first: Job, path: Path) -> None:
        """Store `first` and the rest of the announced batch, have them committed; fill ``_outcomes``."""
        rest = [job for job in self._batch if job.key != first.key and job.key not in self._outcomes]
        if self._locate is None or first.key not in {job.key for job in self._batch}:
            rest = []
        stored: dict[str, tuple[Job, str]] = {}  # SOP Instance UID -> job, syntax sent
        for job, job_path in [(first, path), *((job, self._locate(job)) for job in rest if self._locate)]:
            if job.identity.sop_instance_uid in stored:
                continue  # the same instance received twice: asked about in a later batch
            if job is not first and not job_path.exists():
                continue  # the forwarder reports it when it comes to it
            try:
                syntax = self._store_one(job, job_path)
            except TransientForwardError as exc:
                # The archive is gone, hung or full: the rest of the batch is not tried (each would cost a
                # new association and a timeout, and an attempt of its own); the forwarder puts it back.
                self._outcomes[job.key] = exc
                break
            except ForwardError as exc:
                self._outcomes[job.key] = exc
                continue
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - one instance's trouble is not the rest of the batch's
                self.close()  # whatever state the association was left in
                _log.exception("storing %s on %s failed unexpectedly", job.sop, self.destination.name)
                self._outcomes[job.key] = TransientForwardError(f"{type(exc).__name__}: {exc}")
                continue
            stored[job.identity.sop_instance_uid] = (job, syntax)
        self._batch = [job for job in self._batch if job.key not in self._outcomes and
                       job.identity.sop_instance_uid not in stored]  # what is left to send
        if not stored:
            return
        dest = self.destination
        uid = str(generate_uid())
        for job, _ in stored.values():
            self._note(job, "pending", uid)
        try:
            result = self._commit(uid, [(job.identity.sop_class_uid, sop) for sop, (job, _) in stored.items()])
        except ForwardError as exc:
            for job, _ in stored.values():
                self._outcomes[job.key] = exc
                self._note(job, "failed", uid, str(exc))
            return
        for sop, (job, syntax) in stored.items():
            if sop in result.committed and sop not in result.failed:
                self._outcomes[job.key] = syntax
                self._note(job, "committed", uid)
                continue
            reason = result.failed.get(sop)
            if reason is None:
                message = f"{dest.name} left instance {sop} out of its storage commitment report"
                error: ForwardError = TransientForwardError(message)
            else:
                message = f"{dest.name} did not commit instance {sop}: {describe_failure(reason)}"
                error = (TransientForwardError(message) if classify_failure(reason) == "transient"
                         else PermanentForwardError(message))
            self._outcomes[job.key] = error
            self._note(job, "failed", uid, message)

    def _commit(self, uid: str, instances: list[tuple[str, str]]) -> CommitmentResult:
        """N-ACTION for `instances` under Transaction UID `uid`, then the archive's report, on either channel."""
        dest = self.destination
        assoc = self.assoc
        if assoc is None or not assoc.is_established:
            self._open([])
            assoc = self.assoc
        assert assoc is not None
        if assoc.context_for(STORAGE_COMMITMENT, IMPLICIT_VR_LITTLE_ENDIAN) is None:
            self.close()
            raise PermanentForwardError(f"{dest.name} does not accept the Storage Commitment Push Model SOP class")
        if self.reports is not None:
            self.reports.expect(uid, dest.ae_title)
        try:
            try:
                answer = assoc.n_action(STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, ACTION_REQUEST,
                                        request_bytes(uid, instances))
            except (NetworkError, ValueError) as exc:
                self.close()
                raise TransientForwardError(f"storage commitment request to {dest.name} failed: {exc}") from exc
            if answer.status != 0x0000:
                message = f"{dest.name} answered the storage commitment request with status 0x{answer.status:04X}"
                if answer.status in (0x0213, 0x0110) or 0xA700 <= answer.status <= 0xA7FF:
                    raise TransientForwardError(message)
                raise PermanentForwardError(message)
            return self._await_report(assoc, uid)
        finally:
            if self.reports is not None:
                self.reports.forget(uid)

    def _await_report(self, assoc: Association, uid: str) -> CommitmentResult:
        dest = self.destination
        deadline = time.monotonic() + dest.commitment_timeout_seconds
        ours: Association | None = assoc  # None once the archive has closed it: the report comes to our receiver
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:  # checked first: an archive reporting on other transactions must not hold us
                self.close()  # a late report on this association must not meet the next request
                raise TransientForwardError(f"{dest.name} sent no storage commitment report within "
                                            f"{dest.commitment_timeout_seconds:g} s")
            if ours is not None and ours.has_incoming():  # reported on this association (or the peer closes it)
                try:
                    report = ours.event_report(STORAGE_COMMITMENT, timeout=remaining)
                    result = parse_report(report.event_type, decode_implicit(report.dataset))
                except AssociationAbortedError as exc:
                    self.close()
                    if self.reports is None:
                        raise TransientForwardError(f"storage commitment report from {dest.name}: {exc}") from exc
                    # An archive may close an idle association and report on one of its own (PS3.4 J.3.3.1).
                    _log.info("%s closed the association before reporting on transaction %s (%s); waiting for "
                              "the report on an association of its own", dest.name, uid, exc)
                    ours = None
                    continue
                except (GatewayError, ValueError, EOFError) as exc:  # also a malformed dataset
                    self.close()
                    raise TransientForwardError(f"storage commitment report from {dest.name}: {exc}") from exc
                if result.transaction_uid == uid:
                    return result
                _log.warning("%s reported on storage commitment transaction %s, not %s", dest.name,
                             result.transaction_uid, uid)
                continue
            if self.reports is not None:
                result = self.reports.wait(uid, min(0.02, remaining))
                if result is not None:
                    return result
            else:
                time.sleep(min(0.02, remaining))

    def _note(self, job: Job, state: str, transaction: str, reason: str | None = None) -> None:
        if self.record is None:
            return
        try:
            self.record.commitment(job.instance, self.destination.name, state=state, transaction_uid=transaction,
                                   reason=reason)
        except GatewayError as exc:  # the outcome stands; only its record is missing
            _log.error("proof record: sop=%s id=%s: %s", job.sop, job.instance, exc)

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
