"""Forward: deliver processed instances to each destination, durably and at least once.

The modules: :mod:`~gateway.forward.loop` (one forwarder thread per
destination and association: due jobs, retry with backoff, dead letters),
:mod:`~gateway.forward.base` (the sender protocol), one sender per destination
kind that only moves bytes and reports a typed outcome
(:mod:`~gateway.forward.folder`, :mod:`~gateway.forward.dicom`,
:mod:`~gateway.forward.dicomweb`), :mod:`~gateway.forward.commitment`
(storage commitment: its request, its report, the reports reaching our
receiver) and :mod:`~gateway.forward.transcode` (re-encoding an object,
verified, for a destination that refuses its stored syntax).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config import Destination
from gateway.errors import GatewayError
from gateway.forward.base import Sender
from gateway.forward.commitment import CommitmentReports
from gateway.forward.dicom import DicomSender, classify_status, ladder_for
from gateway.forward.dicomweb import DicomWebSender
from gateway.forward.folder import FolderSender
from gateway.forward.loop import Forwarder
from gateway.forward.transcode import encode_for
from gateway.logs import get_logger, stage
from gateway.record import ProofRecord
from gateway.spool import Job, Spool

__all__ = ["Sender", "FolderSender", "DicomSender", "DicomWebSender", "Forwarder", "CommitmentReports",
           "make_sender", "classify_status", "ladder_for"]

_log = get_logger("forward")


def make_sender(destination: Destination, calling_ae: str, verify: bool, *, spool: Spool | None = None,
                record: ProofRecord | None = None, reports: CommitmentReports | None = None,
                encode_options: Mapping[str, Mapping[str, Any]] | None = None) -> Sender:
    """The sender for a destination's kind.

    An instance re-encoded for a destination that refuses its stored syntax
    is verified as `verify` says and written with `encode_options` (the
    configured ``[compression]`` ones).  With `spool`, the DICOMweb sender
    and a DICOM sender with storage commitment send a whole batch at its
    first instance (they find the others' objects in the spool); `record`
    gets the commitment states and `reports` brings the archive's reports
    that reach our receiver.
    """
    def transcode(path, stored, target):  # type: ignore[no-untyped-def]
        def proven(outcome):  # type: ignore[no-untyped-def]
            ident = Path(path).stem  # the spool's object is named by the instance's id
            sop = str(outcome.dataset.get("SOPInstanceUID", "")) or ident
            stage(_log, "encoded", sop, destination=destination.name, syntax=target,
                  bytes=outcome.encoded_pixel_bytes, seconds=outcome.encode_seconds)
            if outcome.verified_by:
                stage(_log, "verified", sop, destination=destination.name, syntax=target,
                      decoders=",".join(decoder for decoder, _ in outcome.verified_by),
                      seconds=outcome.verify_seconds)
            if record is not None and spool is not None:
                try:
                    record.reencoded(ident, destination.name, syntax=target, verified_by=outcome.verified_by)
                except GatewayError as exc:  # the object is verified; only its record is missing
                    _log.error("proof record: sop=%s id=%s: %s", sop, ident, exc)

        return encode_for(path, stored, target, verify=verify, encode_options=encode_options, proven=proven)

    def locate(job: Job):  # type: ignore[no-untyped-def]
        assert spool is not None
        return spool.object_path(job.instance)

    if destination.kind == "folder":
        return FolderSender(destination)
    if destination.kind == "dicomweb":
        return DicomWebSender(destination, transcode=transcode, locate=locate if spool is not None else None)
    return DicomSender(destination, calling_ae=calling_ae, transcode=transcode,
                       locate=locate if spool is not None else None, reports=reports, record=record)
