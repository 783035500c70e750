"""Send: the association requestor the forwarders deliver with, over pynetdicom.

pynetdicom negotiates the association (presentation contexts, maximum PDU
length, and what DICOM TLS and storage commitment need next: a TLS socket,
SCP/SCU role selection, N-ACTION and N-EVENT-REPORT), runs the state machine
and reads every PDU.  This module adds what a forwarder needs on top:

* every wait is bounded: connection, ACSE, DIMSE and network (idle) timeouts
  all come from the destination's ``timeout_seconds``;
* TCP_NODELAY on the association's socket, set from the connection-open
  event before the A-ASSOCIATE-RQ leaves (pynetdicom leaves Nagle on, which
  costs a delayed-ACK round trip per small PDU);
* a C-STORE of an already encoded dataset, typically the stored file's bytes
  after its file meta, without parsing it.  pynetdicom's ``send_c_store``
  either parses the file (3.9 ms of CPU for a CT image, 17 ms for an MR one
  with a large header) or, with the process-wide
  ``_config.STORE_SEND_CHUNKED_DATASET`` set, streams it, which would change
  ``send_c_store`` for every other caller in the process.  Here the C-STORE
  request primitive carries the encoded bytes as its *Data Set* and goes
  through the association's DIMSE provider, paused against its reactor
  exactly as ``send_c_store`` does (see :meth:`Association._exchange`);
* failures as the gateway's typed errors: :class:`~gateway.errors.NetworkError`
  (cannot connect, timeout), :class:`~gateway.errors.AssociationRejectedError`,
  :class:`~gateway.errors.AssociationAbortedError` and
  :class:`~gateway.errors.PeerProtocolError` (a response that does not answer
  the request).  After any of them the association is closed.
"""

from __future__ import annotations

import queue
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom.uid import UID
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association as _PynetdicomAssociation
from pynetdicom.dimse_primitives import C_ECHO, C_STORE

from gateway import __version__
from gateway.dicom.validate import ae_title_problem, is_valid_uid
from gateway.errors import AssociationAbortedError, AssociationRejectedError, NetworkError, PeerProtocolError

__all__ = ["Association", "Context", "StoreResult", "associate", "IMPLEMENTATION_CLASS_UID",
           "IMPLEMENTATION_VERSION_NAME", "MAX_PDU_RECEIVED", "MAX_CONTEXTS"]

IMPLEMENTATION_CLASS_UID = "2.25.53897576694086526053863854056254947965"
IMPLEMENTATION_VERSION_NAME = f"GATEWAY_{__version__}"[:16]
VERIFICATION = "1.2.840.10008.1.1"
MAX_PDU_RECEIVED = 262_144
"""The largest P-DATA-TF variable field we announce (responses are tiny)."""
MAX_CONTEXTS = 128
"""Presentation contexts one association can carry (odd IDs 1..255, PS3.8 9.3.2.2)."""


@dataclass(frozen=True, slots=True)
class Context:
    """An accepted presentation context: one SOP class in one transfer syntax."""

    id: int
    abstract_syntax: str
    transfer_syntax: str


@dataclass(frozen=True, slots=True)
class StoreResult:
    """A DIMSE response: its status and the peer's error comment, if any."""

    status: int
    comment: str = ""


def _nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN: Nagle off on the requestor's socket, before the first PDU is sent."""
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket is not None else None
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # the connection is already gone: the association will fail on its own
            pass


def associate(host: str, port: int, *, called_ae: str, calling_ae: str, contexts: Sequence[tuple[str, str]],
              timeout: float = 30.0, connect_timeout: float = 10.0,
              max_pdu: int = MAX_PDU_RECEIVED) -> Association:
    """Connect and negotiate; `contexts` are (SOP class, transfer syntax) pairs, one syntax per context.

    Returns the association, established, or closed with no accepted
    context when the peer accepted the association but none of the contexts
    (pynetdicom then aborts it; the caller sees ``contexts == []``).
    Raises ValueError before connecting for a request that cannot be made
    (bad AE title or UID, 0 or more than 128 contexts), and
    :class:`~gateway.errors.AssociationRejectedError`,
    :class:`~gateway.errors.AssociationAbortedError` or
    :class:`~gateway.errors.NetworkError` (cannot connect, timeout).
    """
    if not 1 <= len(contexts) <= MAX_CONTEXTS:
        raise ValueError(f"an association needs 1 to {MAX_CONTEXTS} presentation contexts, got {len(contexts)}")
    for what, title in (("called AE title", called_ae), ("calling AE title", calling_ae)):
        problem = ae_title_problem(title)
        if problem is not None:
            raise ValueError(f"{what} {problem}")
    for sop, ts in contexts:
        for what, uid in (("abstract syntax", sop), ("transfer syntax", ts)):
            if not is_valid_uid(uid):
                raise ValueError(f"{what} {uid!r} is not a valid UID")
    ae = AE(ae_title=calling_ae)
    ae.implementation_class_uid = UID(IMPLEMENTATION_CLASS_UID)
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.connection_timeout = connect_timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    requested = [build_context(sop, [ts]) for sop, ts in contexts]
    assoc = ae.associate(host, port, contexts=requested, ae_title=called_ae, max_pdu=max_pdu,
                         evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)])
    if assoc.is_established:
        return Association(assoc, timeout)
    answer = assoc.acceptor.primitive
    if assoc.is_rejected and answer is not None:
        raise AssociationRejectedError(int(answer.result), int(answer.result_source), int(answer.diagnostic))
    if answer is not None and answer.result == 0x00:  # accepted, but not one context: pynetdicom aborted it
        return Association(assoc, timeout)
    if assoc.is_aborted and answer is not None:
        raise AssociationAbortedError(f"{host}:{port} aborted the association request")
    raise NetworkError(f"cannot associate with {host}:{port}: no connection or no answer within "
                       f"{timeout:g} s (connect {connect_timeout:g} s)")


class Association:
    """An association made by :func:`associate`.

    Not thread-safe: one forwarder thread owns it.
    """

    def __init__(self, assoc: _PynetdicomAssociation, timeout: float) -> None:
        self._assoc = assoc
        self.timeout = timeout
        self._message_id = 0
        self.contexts = [Context(int(cx.context_id), str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                         for cx in assoc.accepted_contexts]
        self.peer_max_pdu = int(assoc.acceptor.maximum_length or 0)

    @property
    def is_established(self) -> bool:
        """True while the association can carry a request.

        pynetdicom's reactor notices an A-ABORT, an A-RELEASE-RQ (which it
        answers) or the connection closing while the association is idle,
        e.g. an archive's idle timeout: the next send then opens a fresh
        association instead of failing.
        """
        return bool(self._assoc.is_established)

    def accepted_syntaxes(self, sop_class: str) -> list[str]:
        """Transfer syntaxes the peer accepted for `sop_class`, in the order proposed."""
        return [cx.transfer_syntax for cx in self.contexts if cx.abstract_syntax == sop_class]

    def context_for(self, sop_class: str, transfer_syntax: str) -> Context | None:
        for cx in self.contexts:
            if cx.abstract_syntax == sop_class and cx.transfer_syntax == transfer_syntax:
                return cx
        return None

    def release(self) -> None:
        """A-RELEASE, waiting at most the ACSE timeout for the answer.  Never raises."""
        if self._assoc.is_established:
            self._assoc.release()
        self._stop()

    def abort(self) -> None:
        """A-ABORT and close.  Never raises."""
        if self._assoc.is_established:
            self._assoc.abort()
        self._stop()

    def _stop(self) -> None:
        """Wait (bounded) for the association's threads to end, so its socket is closed on return."""
        self._assoc.join(self.timeout + 5)

    def __enter__(self) -> Association:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.release()
        else:
            self.abort()

    # -- DIMSE

    def c_echo(self) -> StoreResult:
        """C-ECHO on the verification context (which must have been proposed and accepted)."""
        context = next((cx for cx in self.contexts if cx.abstract_syntax == VERIFICATION), None)
        if context is None:
            raise ValueError("the peer accepted no Verification presentation context")
        request = C_ECHO()
        request.MessageID = self._next_id()
        request.AffectedSOPClassUID = VERIFICATION
        return self._exchange(context, request)

    def c_store(self, sop_class: str, sop_instance: str, transfer_syntax: str,
                dataset: bytes | memoryview | tuple[Path, int], priority: int = 0) -> StoreResult:
        """Send one dataset encoded in `transfer_syntax`; return the peer's response.

        `dataset` is the encoded dataset, or ``(path, offset)``: the file's
        bytes from `offset` to its end (the dataset after the file meta),
        read as they are.  A request this side cannot make (no accepted
        context, an invalid UID, an empty dataset, an unreadable file)
        raises ValueError or OSError before anything is sent, and the
        association stays usable.
        """
        context = self.context_for(sop_class, transfer_syntax)
        if context is None:
            raise ValueError(f"no accepted presentation context for {sop_class} in {transfer_syntax}")
        if not is_valid_uid(sop_instance):
            raise ValueError(f"SOP Instance UID {sop_instance!r} is not a valid UID")
        if isinstance(dataset, tuple):
            path, offset = dataset
            with open(path, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
            if not data:
                raise ValueError(f"{path} holds no dataset after byte {offset}")
        else:
            data = bytes(dataset)
            if not data:
                raise ValueError("an empty dataset cannot be stored")
        request = C_STORE()
        request.MessageID = self._next_id()
        request.AffectedSOPClassUID = sop_class
        request.AffectedSOPInstanceUID = sop_instance
        request.Priority = priority
        request.DataSet = BytesIO(data)
        return self._exchange(context, request)

    def _next_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def _exchange(self, context: Context, request: C_STORE | C_ECHO) -> StoreResult:
        """Send `request` on `context` and wait (bounded) for its response.

        The association's reactor thread also takes messages off the DIMSE
        queue; like pynetdicom's own ``send_c_*`` it is paused for the
        exchange, or it could take the response first.
        """
        assoc = self._assoc
        if not assoc.is_established:
            raise NetworkError("the association is closed")
        deadline = time.monotonic() + self.timeout
        assoc._reactor_checkpoint.clear()
        try:
            while not assoc._is_paused:
                if time.monotonic() > deadline or not assoc.is_alive():
                    raise NetworkError("the association's reactor did not pause")
                time.sleep(0.0001)
            assoc.dimse.send_msg(request, context.id)
            answered_on, response, released = self._wait_response(deadline)
        finally:
            assoc._reactor_checkpoint.set()  # the reactor answers a release request, notices an abort
        if released:
            self._stop()
            raise AssociationAbortedError("the peer released the association before answering")
        if response is None:
            if not assoc.is_established or not assoc.is_alive():
                self._stop()
                raise AssociationAbortedError("the peer aborted or closed the association before answering")
            self._fail_closed()
            raise NetworkError(f"timed out: no response within {self.timeout:g} s")
        problem = _response_problem(request, response, answered_on, context.id)
        if problem is not None:
            self._fail_closed()
            raise PeerProtocolError(problem)
        return StoreResult(int(response.Status), str(getattr(response, "ErrorComment", None) or ""))

    def _wait_response(self, deadline: float) -> tuple[int | None, object | None, bool]:
        """(context ID, response, False); (None, None, False) on abort, close or timeout;
        (None, None, True) when the peer asks for release instead of answering."""
        assoc = self._assoc
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, None, False
            try:
                answered_on, response = assoc.dimse.msg_queue.get(timeout=min(remaining, 0.05))
            except queue.Empty:
                if assoc.acse.is_release_requested():  # taken off the DUL's queue: answered here
                    assoc.acse.send_release(is_response=True)
                    assoc.is_established = False
                    assoc.kill()
                    return None, None, True
                continue
            return answered_on, response, False

    def _fail_closed(self) -> None:
        """After a broken exchange nothing on the association can be trusted: abort it."""
        if self._assoc.is_established:
            self._assoc.abort()
        self._stop()


def _response_problem(request: C_STORE | C_ECHO, response: object, answered_on: int | None,
                      context_id: int) -> str | None:
    """What is wrong with `response` as the answer to `request`, or None."""
    if type(response) is not type(request) or not response.is_valid_response:  # type: ignore[attr-defined]
        return f"expected a {type(request).__name__} response, got {type(response).__name__}"
    if answered_on != context_id:
        return f"response on presentation context {answered_on}, request on {context_id}"
    answered = response.MessageIDBeingRespondedTo  # type: ignore[attr-defined]
    if answered != request.MessageID:
        return f"response to message {answered}, expected {request.MessageID}"
    if response.Status is None:  # type: ignore[attr-defined]
        return "response lacks a Status (0000,0900)"
    return None
