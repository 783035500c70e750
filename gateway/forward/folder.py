"""The folder destination: ``<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``, atomically and with fsync."""

from __future__ import annotations

from pathlib import Path

from gateway.config import Destination
from gateway.dicom.validate import is_valid_uid
from gateway.errors import PermanentForwardError, TransientForwardError
from gateway.spool import Job, atomic_copy, is_out_of_space, make_dirs

__all__ = ["FolderSender"]


def _safe_uid(value: str, what: str) -> str:
    if not is_valid_uid(value):
        raise PermanentForwardError(f"{what} {value!r} is not a valid UID; cannot build a file path")
    return value


class FolderSender:
    """Writes each instance into a folder tree: Study / Series / SOP Instance."""

    def __init__(self, destination: Destination) -> None:
        assert destination.path is not None
        self.root = destination.path
        self.file_mode = destination.file_mode
        self.directory_mode = destination.directory_mode

    def prepare(self, jobs: list[Job]) -> None:
        pass

    def send(self, job: Job, path: Path) -> str:
        identity = job.identity
        folder = (self.root / _safe_uid(identity.study_uid, "Study Instance UID")
                  / _safe_uid(identity.series_uid, "Series Instance UID"))
        target = folder / f"{_safe_uid(identity.sop_instance_uid, 'SOP Instance UID')}.dcm"
        try:
            make_dirs(folder, self.directory_mode)
            atomic_copy(path, target, mode=self.file_mode)
        except OSError as exc:
            why = "the archive's filesystem is full" if is_out_of_space(exc) else str(exc)
            raise TransientForwardError(f"cannot write {target}: {why}") from exc
        return identity.transfer_syntax

    def close(self) -> None:
        pass
