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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from io import BytesIO
from pathlib import Path

from pydicom import Dataset
from pydicom.filewriter import dcmwrite

from gateway.config import Destination
from gateway.dicom.filemeta import parse_file_meta, read_file_meta
from gateway.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from gateway.errors import AssociationRejectedError, NetworkError, PermanentForwardError, TransientForwardError
from gateway.forward.transcode import encode_for
from gateway.logs import get_logger
from gateway.net.scu import Association
from gateway.spool import Job

__all__ = ["DicomSender", "classify_status", "ladder_for", "Transcode"]

_log = get_logger("forward")

_MAX_CONTEXTS = 128
_SUCCESS = {0x0000, 0xB000, 0xB006, 0xB007}

Transcode = Callable[[Path, str, str], "Dataset | None"]
"""(object path, stored syntax, target syntax) -> the dataset in the target syntax, or None."""


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
                 transcode: Transcode | None = None, associate: Callable[..., Association] | None = None) -> None:
        self.destination = destination
        self.calling_ae = calling_ae
        self.transcode: Transcode = transcode or (lambda path, stored, target: encode_for(path, stored, target))
        self._associate = associate or Association.request  # another requestor only for measuring (bench_client)
        self.assoc: Association | None = None
        self._proposed: set[tuple[str, str]] = set()
        self._tls = destination.tls.context(f"destination {destination.name}: tls") if destination.tls else None

    def _wanted(self, jobs: Iterable[Job]) -> dict[str, list[str]]:
        wanted: dict[str, list[str]] = {}
        for job in jobs:
            ladder = wanted.setdefault(job.identity.sop_class_uid, [])
            for uid in ladder_for(self.destination, job.identity.transfer_syntax):
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

    def send(self, job: Job, path: Path) -> str:
        sop_class = job.identity.sop_class_uid
        try:
            offset, stored = read_file_meta(path)
        except ValueError as exc:
            raise PermanentForwardError(f"processed object {path.name} is not a DICOM file: {exc}") from exc
        except OSError as exc:
            raise TransientForwardError(f"cannot read processed object {path.name}: {exc}") from exc
        if self.assoc is None or not self.assoc.is_established or (sop_class, stored) not in self._proposed:
            self.prepare([replace(job, identity=job.identity.with_syntax(stored))])
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
            encoded = self.transcode(path, stored, ts)
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
            result = self.assoc.c_store(job.identity.sop_class_uid, job.identity.sop_instance_uid,
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
