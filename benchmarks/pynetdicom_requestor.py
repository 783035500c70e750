"""pynetdicom's requestor, made as cheap as we could, for :mod:`bench_client` to measure against ``gateway.net.scu``.

Not used by the gateway (``docs/dicom-client.md`` says why).  It is the
best pynetdicom route found for what a forwarder does, so the comparison is
fair to pynetdicom:

* every wait is bounded: connection, ACSE, DIMSE and network (idle) timeouts
  all come from the destination's ``timeout_seconds``;
* TCP_NODELAY on the association's socket, set from the connection-open
  event before the A-ASSOCIATE-RQ leaves (pynetdicom leaves Nagle on);
* a C-STORE of an already encoded dataset, the stored file's bytes after its
  file meta, without parsing it.  pynetdicom's ``send_c_store`` either parses
  the file (3.9 ms of CPU for a CT image, 17 ms for an MR one with a large
  header) or, with the process-wide ``_config.STORE_SEND_CHUNKED_DATASET``
  set, streams it, which would change ``send_c_store`` for every other
  caller in the process.  Here the C-STORE request primitive carries the
  encoded bytes as its *Data Set* and goes through the association's DIMSE
  provider; the answer is taken from the EVT_DIMSE_RECV event (see
  :meth:`Association._exchange` for why);
* failures as the gateway's typed errors, the same as ``gateway.net.scu``'s.
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
    received: queue.Queue[_Response] = queue.Queue()
    assoc = ae.associate(host, port, contexts=requested, ae_title=called_ae, max_pdu=max_pdu,
                         evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay), (evt.EVT_DIMSE_RECV, _on_message, [received])])
    if assoc.is_established:
        return Association(assoc, timeout, received)
    answer = assoc.acceptor.primitive
    if assoc.is_rejected and answer is not None:
        raise AssociationRejectedError(int(answer.result), int(answer.result_source), int(answer.diagnostic))
    if answer is not None and answer.result == 0x00:  # accepted, but not one context: pynetdicom aborted it
        return Association(assoc, timeout, received)
    if assoc.is_aborted and answer is not None:
        raise AssociationAbortedError(f"{host}:{port} aborted the association request")
    raise NetworkError(f"cannot associate with {host}:{port}: no connection or no answer within "
                       f"{timeout:g} s (connect {connect_timeout:g} s)")


class Association:
    """An association made by :func:`associate`.

    Not thread-safe: one forwarder thread owns it.
    """

    def __init__(self, assoc: _PynetdicomAssociation, timeout: float, received: queue.Queue[_Response]) -> None:
        self._assoc = assoc
        self._received = received
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
        return self._exchange(context, request, 0x8030)

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
        return self._exchange(context, request, 0x8001)

    def _next_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def _exchange(self, context: Context, request: C_STORE | C_ECHO, expected: int) -> StoreResult:
        """Send `request` on `context` and wait (bounded) for its response.

        The response is taken from the association's EVT_DIMSE_RECV event,
        which pynetdicom's DUL thread fires for every complete message
        before it queues it.  The association's reactor thread also takes
        messages off that queue; it is paused for the exchange, as
        pynetdicom's own ``send_c_*`` do, but the pause is not airtight (the
        reactor may run one more loop after it is asked to stop), so the
        event, not the queue, is what this side waits on.
        """
        assoc = self._assoc
        if not assoc.is_established:
            raise NetworkError("the association is closed")
        deadline = time.monotonic() + self.timeout
        while not self._received.empty():  # leftovers of an exchange that failed are not this answer
            self._received.get_nowait()
        assoc._reactor_checkpoint.clear()
        try:
            while not assoc._is_paused:
                if time.monotonic() > deadline or not assoc.is_alive():
                    raise NetworkError("the association's reactor did not pause")
                time.sleep(0.0001)
            assoc.dimse.send_msg(request, context.id)
            outcome = self._wait_response(deadline)
            if isinstance(outcome, _Response):
                self._take_queued()
        finally:
            assoc._reactor_checkpoint.set()  # the reactor answers a release request, notices an abort
        if outcome == "released":
            self._stop()
            raise AssociationAbortedError("the peer released the association before answering")
        if outcome == "aborted":
            self._stop()
            raise AssociationAbortedError("the peer aborted or closed the association before answering")
        if outcome == "timeout":
            self._fail_closed()
            raise NetworkError(f"timed out: no response within {self.timeout:g} s")
        assert isinstance(outcome, _Response)
        problem = outcome.problem(request.MessageID, context.id, expected)
        if problem is not None:
            self._fail_closed()
            raise PeerProtocolError(problem)
        return StoreResult(int(outcome.status), outcome.comment)  # type: ignore[arg-type]

    def _wait_response(self, deadline: float) -> _Response | str:
        """The next message from the peer, or "released", "aborted" (also: connection closed), "timeout"."""
        assoc = self._assoc
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            try:
                return self._received.get(timeout=min(remaining, 0.02))
            except queue.Empty:
                pass
            if assoc.acse.is_release_requested():  # taken off the DUL's queue: answered here
                assoc.acse.send_release(is_response=True)
                assoc.is_established = False
                assoc.kill()
                return "released"
            if assoc.acse.is_aborted() or not assoc.dul.is_alive():
                return "aborted"

    def _take_queued(self) -> None:
        """Take the response the DUL queues just after the event, so the reactor does not find it later."""
        until = time.monotonic() + 0.5
        while time.monotonic() < until:
            try:
                self._assoc.dimse.msg_queue.get_nowait()
                return
            except queue.Empty:
                time.sleep(0.0002)

    def _fail_closed(self) -> None:
        """After a broken exchange nothing on the association can be trusted: abort it."""
        if self._assoc.is_established:
            self._assoc.abort()
        self._stop()


@dataclass(frozen=True, slots=True)
class _Response:
    """The fields of a received DIMSE message that answer a request."""

    context_id: int | None
    command_field: int | None
    answered: int | None
    status: int | None
    comment: str

    def problem(self, message_id: int, context_id: int, expected: int) -> str | None:
        """What is wrong with this message as the answer to request `message_id`, or None."""
        if self.command_field != expected:
            field = "none" if self.command_field is None else f"0x{self.command_field:04X}"
            return f"expected response command 0x{expected:04X}, got {field}"
        if self.context_id != context_id:
            return f"response on presentation context {self.context_id}, request on {context_id}"
        if self.answered != message_id:
            return f"response to message {self.answered}, expected {message_id}"
        if self.status is None:
            return "response lacks a Status (0000,0900)"
        return None


def _on_message(event: evt.Event, received: queue.Queue[_Response]) -> None:
    """EVT_DIMSE_RECV (in the DUL thread): the fields of every complete message, for the waiting exchange."""
    command = event.message.command_set

    def number(keyword: str) -> int | None:
        value = command.get(keyword)
        return None if value is None else int(value)

    comment = command.get("ErrorComment")
    received.put(_Response(event.message.context_id, number("CommandField"), number("MessageIDBeingRespondedTo"),
                           number("Status"), str(comment or "")))
