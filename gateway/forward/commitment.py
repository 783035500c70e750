"""Storage commitment, Push Model (PS3.4 Annex J): asking an archive to keep what it received.

A C-STORE Success says the archive received an instance, not that it keeps
it.  With ``storage_commitment = true`` a DICOM destination's instances count
as delivered only once the archive has committed them:

1. the instances of a batch are stored (C-STORE);
2. one N-ACTION-RQ (Action Type 1, "Request Storage Commitment") on the
   well-known SOP Instance names them in its Referenced SOP Sequence, under a
   new Transaction UID (J.3.2);
3. the archive answers with an N-EVENT-REPORT-RQ carrying that Transaction
   UID: Event Type 1 when every instance is committed, 2 when some failed,
   those in the Failed SOP Sequence with a Failure Reason (J.3.3, PS3.3
   C.14.1.1).  It may send it on the association that asked, or on one it
   opens to our receiver, acting as SCP of the SOP class through role
   selection (J.3.3.1); both are awaited.

Each failure reason decides what becomes of the instance
(:func:`classify_failure`).  No report within the destination's
``commitment_timeout_seconds`` is a transient failure: the instance is
stored and asked about again later.  :class:`CommitmentReports` hands
reports that arrive on our receiver to the sender waiting for them, and
accepts them only from the AE title the request went to.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from io import BytesIO

from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from gateway.errors import PeerProtocolError
from gateway.logs import get_logger

__all__ = [
    "STORAGE_COMMITMENT",
    "STORAGE_COMMITMENT_INSTANCE",
    "FAILURE_REASONS",
    "CommitmentResult",
    "CommitmentReports",
    "classify_failure",
    "request_bytes",
    "parse_report",
]

_log = get_logger("forward")

STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"  # Storage Commitment Push Model SOP Class
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # its well-known SOP Instance (PS3.4 J.3.5)
ACTION_REQUEST = 1  # Action Type ID: Request Storage Commitment (J.3.2)
EVENT_SUCCESS, EVENT_FAILURES = 1, 2  # Event Type IDs (J.3.3)

# PS3.3 C.14.1.1 Failure Reason values.
FAILURE_REASONS: dict[int, str] = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0213: "resource limitation",
    0x0122: "referenced SOP class not supported",
    0x0119: "class / instance conflict",
    0x0131: "duplicate transaction UID",
}
# What storing again and asking again may cure: the archive failed, lost the
# instance, lacked room, or our transaction UID clashed (a new one is made).
_TRANSIENT = frozenset({0x0110, 0x0112, 0x0213, 0x0131})

# N-EVENT-REPORT-RSP statuses (PS3.7 10.1.1.1.8) our receiver answers with.
STATUS_SUCCESS = 0x0000
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_NO_SUCH_EVENT_TYPE = 0x0113
STATUS_INVALID_ARGUMENT = 0x0115


def classify_failure(reason: int) -> str:
    """``"transient"`` or ``"permanent"`` for a storage commitment Failure Reason."""
    return "transient" if reason in _TRANSIENT else "permanent"


def describe_failure(reason: int) -> str:
    return f"0x{reason:04X} ({FAILURE_REASONS.get(reason, 'unknown reason')})"


def request_bytes(transaction_uid: str, instances: list[tuple[str, str]]) -> bytes:
    """The N-ACTION's Action Information, implicit VR little endian: Transaction UID and Referenced SOP Sequence."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_instance in instances:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = items
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    return buffer.getvalue()


@dataclass(frozen=True, slots=True)
class CommitmentResult:
    """What an archive reported for one transaction."""

    transaction_uid: str
    committed: frozenset[str]  # SOP Instance UIDs
    failed: dict[str, int] = field(default_factory=dict)  # SOP Instance UID -> Failure Reason


def decode_implicit(data: bytes) -> Dataset:
    """An implicit VR little endian dataset (the syntax of the commitment context we propose)."""
    return read_dataset(BytesIO(data), True, True)


def parse_report(event_type: int, ds: Dataset) -> CommitmentResult:
    """The result an N-EVENT-REPORT carries; :class:`PeerProtocolError` when it is not a valid one."""
    if event_type not in (EVENT_SUCCESS, EVENT_FAILURES):
        raise PeerProtocolError(f"storage commitment report with Event Type ID {event_type}, expected 1 or 2")
    try:
        uid = str(ds.get("TransactionUID", "") or "")
        committed = frozenset(str(item.ReferencedSOPInstanceUID)
                              for item in ds.get("ReferencedSOPSequence", None) or [])
        failed = {str(item.ReferencedSOPInstanceUID): int(item.get("FailureReason", 0x0110) or 0x0110)
                  for item in ds.get("FailedSOPSequence", None) or []}
    except (AttributeError, TypeError, ValueError, KeyError) as exc:  # a malformed item
        raise PeerProtocolError(f"malformed storage commitment report: {type(exc).__name__}: {exc}") from exc
    if not uid:
        raise PeerProtocolError("storage commitment report without a Transaction UID")
    if event_type == EVENT_SUCCESS and failed:
        raise PeerProtocolError("storage commitment report of Event Type 1 lists failures")
    return CommitmentResult(uid, committed, failed)


class _Waiting:
    __slots__ = ("ae_title", "done", "result")

    def __init__(self, ae_title: str) -> None:
        self.ae_title = ae_title
        self.done = threading.Event()
        self.result: CommitmentResult | None = None


class CommitmentReports:
    """Storage commitment results that archives send on associations of their own to our receiver.

    A sender registers each transaction it asks about (:meth:`expect`); the
    receiver hands every N-EVENT-REPORT to :meth:`deliver`, which accepts it
    only for a registered transaction and from the AE title the request went
    to.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, _Waiting] = {}

    def expect(self, transaction_uid: str, ae_title: str) -> None:
        with self._lock:
            self._waiting[transaction_uid] = _Waiting(ae_title)

    def forget(self, transaction_uid: str) -> None:
        with self._lock:
            self._waiting.pop(transaction_uid, None)

    def wait(self, transaction_uid: str, timeout: float) -> CommitmentResult | None:
        """The transaction's result if it arrived within `timeout` seconds, else None."""
        with self._lock:
            waiting = self._waiting.get(transaction_uid)
        if waiting is None or not waiting.done.wait(max(0.0, timeout)):
            return None
        return waiting.result

    def deliver(self, calling_ae: str, event_type: int, ds: Dataset | None) -> int:
        """Take an N-EVENT-REPORT of the Storage Commitment Push Model; return the N-EVENT-REPORT-RSP status."""
        if ds is None:
            return STATUS_INVALID_ARGUMENT
        try:
            result = parse_report(event_type, ds)
        except PeerProtocolError as exc:
            _log.warning("storage commitment report from %s refused: %s", calling_ae, exc)
            return STATUS_NO_SUCH_EVENT_TYPE if event_type not in (EVENT_SUCCESS, EVENT_FAILURES) \
                else STATUS_INVALID_ARGUMENT
        with self._lock:
            waiting = self._waiting.get(result.transaction_uid)
            if waiting is None:
                _log.warning("storage commitment report from %s for transaction %s, which nobody awaits "
                             "(answered after the timeout, or not ours); its instances are asked about again",
                             calling_ae, result.transaction_uid)
                return STATUS_SUCCESS  # received; the instances stay undelivered until a later commitment
            if calling_ae.strip() != waiting.ae_title.strip():
                _log.warning("storage commitment report for transaction %s came from %s, not from %s; refused",
                             result.transaction_uid, calling_ae, waiting.ae_title)
                return STATUS_PROCESSING_FAILURE
            waiting.result = result
            waiting.done.set()
        return STATUS_SUCCESS
