"""Send: a small blocking DICOM Upper Layer requestor for C-STORE, C-ECHO and storage commitment.

The forwarders deliver every processed instance through this module.
pynetdicom's association runs two threads per association that poll their
queues every millisecond, and encodes and decodes every command set through
pydicom: about 1.5 ms of CPU per C-STORE of a CT image, taken from the same
cores that receive and recompress.  Here an association is one socket with
blocking I/O and timeouts, the command sets (PS3.7 9.3.1 and 9.3.5) are built
and read with :mod:`struct`, and the dataset is streamed from the stored file
without being parsed.  The receiving side (:mod:`gateway.net.scp`) stays
pynetdicom's.

Scope, PS3.8: the requestor's side of A-ASSOCIATE (presentation contexts,
maximum PDU length, implementation class UID and version name), P-DATA,
A-RELEASE and A-ABORT, over TCP or over TLS (PS3.15 B.12: the caller's
:class:`ssl.SSLContext` decides versions, ciphers and certificates; the
handshake runs under the connection timeout).  DIMSE, PS3.7: C-STORE,
C-ECHO, and for storage commitment (PS3.4 J) N-ACTION and the peer's
N-EVENT-REPORT on the same association, which needs no role selection.
Nothing asynchronous, no role selection or extended negotiation.  Why this
module rather than pynetdicom's requestor, measured: ``docs/dicom-client.md``.

Every byte from the peer is checked before it is used: a malformed or
unexpected PDU raises :class:`~gateway.errors.PeerProtocolError` and aborts the
association; transport failures and timeouts raise
:class:`~gateway.errors.NetworkError`.  After any of these the association is
closed and must not be used again.  A request this side cannot make (no
accepted context for it, an invalid UID, an unreadable file) raises
ValueError before anything is sent, and the association stays usable.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import socket
import ssl
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gateway.dicom.filemeta import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from gateway.errors import AssociationAbortedError, AssociationRejectedError, NetworkError, PeerProtocolError

__all__ = ["Association", "Context", "StoreResult", "EventReport", "IMPLEMENTATION_CLASS_UID",
           "IMPLEMENTATION_VERSION_NAME"]

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"

MAX_PDU_RECEIVED = 262_144
"""The largest P-DATA-TF variable field we announce (responses are tiny)."""
_PDU_LIMIT = 16 * 1024 * 1024
"""Any PDU announced longer than this is refused as hostile or broken."""
_FRAGMENT_UNLIMITED = 1 << 20
"""Fragment size when the peer announces no maximum (0)."""
_COMMAND_LIMIT = 64 * 1024  # a response's command set: a few hundred bytes in practice
_KEPT_DATASET_LIMIT = 16 * 1024 * 1024  # a storage commitment report: some 150 bytes an instance
_SEND_BATCH = 1 << 20
"""Bytes of PDUs gathered per system call."""

_A_ASSOCIATE_RQ, _A_ASSOCIATE_AC, _A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
_P_DATA_TF, _A_RELEASE_RQ, _A_RELEASE_RP, _A_ABORT = 0x04, 0x05, 0x06, 0x07
_RELEASE_RQ = bytes((_A_RELEASE_RQ, 0, 0, 0, 0, 4, 0, 0, 0, 0))
_RELEASE_RP = bytes((_A_RELEASE_RP, 0, 0, 0, 0, 4, 0, 0, 0, 0))
_ABORT = bytes((_A_ABORT, 0, 0, 0, 0, 4, 0, 0, 0, 0))

_C_STORE_RQ, _C_STORE_RSP, _C_ECHO_RQ, _C_ECHO_RSP = 0x0001, 0x8001, 0x0030, 0x8030
_N_EVENT_REPORT_RQ, _N_EVENT_REPORT_RSP, _N_ACTION_RQ, _N_ACTION_RSP = 0x0100, 0x8100, 0x0130, 0x8130
_NO_DATASET = 0x0101


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


@dataclass(frozen=True, slots=True)
class EventReport:
    """An N-EVENT-REPORT request the peer sent on the association (already answered with Success)."""

    sop_class: str
    sop_instance: str
    event_type: int
    dataset: bytes


# ----------------------------------------------------------------- encoding


def _item(kind: int, payload: bytes) -> bytes:
    if len(payload) > 0xFFFF:
        raise ValueError("an A-ASSOCIATE item cannot exceed 65535 bytes")
    return struct.pack(">BBH", kind, 0, len(payload)) + payload


def _uid_bytes(uid: str, what: str) -> bytes:
    if not uid or len(uid) > 64 or not all(c.isdigit() or c == "." for c in uid):
        raise ValueError(f"{what} {uid!r} is not a valid UID")
    return uid.encode("ascii")


def _ae_bytes(title: str, what: str) -> bytes:
    text = title.strip()
    if not 1 <= len(text) <= 16 or not all(32 <= ord(c) < 127 and c != "\\" for c in text):
        raise ValueError(f"{what} {title!r} is not a valid AE title (1-16 printable ASCII characters)")
    return text.encode("ascii").ljust(16, b" ")


def encode_associate_rq(called_ae: str, calling_ae: str, contexts: Sequence[tuple[int, str, str]],
                        max_pdu: int = MAX_PDU_RECEIVED) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) offering one transfer syntax per context."""
    items = [_item(0x10, APPLICATION_CONTEXT.encode())]
    for ident, abstract, transfer in contexts:
        body = struct.pack(">BBBB", ident, 0, 0, 0)
        body += _item(0x30, _uid_bytes(abstract, "abstract syntax"))
        body += _item(0x40, _uid_bytes(transfer, "transfer syntax"))
        items.append(_item(0x20, body))
    user = (_item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, IMPLEMENTATION_CLASS_UID.encode())
            + _item(0x55, IMPLEMENTATION_VERSION_NAME.encode()))
    items.append(_item(0x50, user))
    body = (struct.pack(">HH", 1, 0) + _ae_bytes(called_ae, "called AE title")
            + _ae_bytes(calling_ae, "calling AE title") + bytes(32) + b"".join(items))
    return struct.pack(">BBI", _A_ASSOCIATE_RQ, 0, len(body)) + body


def _element(elem: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00"  # UI values are padded with a NUL to even length
    return struct.pack("<HHI", 0x0000, elem, len(value)) + value


def _command(elements: list[tuple[int, bytes]]) -> bytes:
    """A command set in implicit VR little endian, group length first (PS3.7 6.3.1)."""
    body = b"".join(_element(elem, value) for elem, value in elements)
    return _element(0x0000, struct.pack("<I", len(body))) + body


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def store_command(message_id: int, sop_class: str, sop_instance: str, priority: int = 0) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1)."""
    return _command([
        (0x0002, _uid_bytes(sop_class, "SOP Class UID")),
        (0x0100, _us(_C_STORE_RQ)),
        (0x0110, _us(message_id)),
        (0x0700, _us(priority)),
        (0x0800, _us(0x0001)),  # a dataset follows
        (0x1000, _uid_bytes(sop_instance, "SOP Instance UID")),
    ])


def echo_command(message_id: int) -> bytes:
    """A C-ECHO-RQ command set (PS3.7 9.3.5.1)."""
    return _command([
        (0x0002, VERIFICATION.encode()),
        (0x0100, _us(_C_ECHO_RQ)),
        (0x0110, _us(message_id)),
        (0x0800, _us(_NO_DATASET)),
    ])


def n_action_command(message_id: int, sop_class: str, sop_instance: str, action_type: int) -> bytes:
    """An N-ACTION-RQ command set with an Action Information dataset following (PS3.7 10.3.4.1)."""
    return _command([
        (0x0003, _uid_bytes(sop_class, "Requested SOP Class UID")),
        (0x0100, _us(_N_ACTION_RQ)),
        (0x0110, _us(message_id)),
        (0x0800, _us(0x0001)),
        (0x1001, _uid_bytes(sop_instance, "Requested SOP Instance UID")),
        (0x1008, _us(action_type)),
    ])


def n_event_report_response(message_id: int, sop_class: str, sop_instance: str, event_type: int,
                            status: int = 0x0000) -> bytes:
    """An N-EVENT-REPORT-RSP command set, no dataset (PS3.7 10.3.1.2)."""
    return _command([
        (0x0002, _uid_bytes(sop_class, "Affected SOP Class UID")),
        (0x0100, _us(_N_EVENT_REPORT_RSP)),
        (0x0120, _us(message_id)),
        (0x0800, _us(_NO_DATASET)),
        (0x0900, _us(status)),
        (0x1000, _uid_bytes(sop_instance, "Affected SOP Instance UID")),
        (0x1002, _us(event_type)),
    ])


# ----------------------------------------------------------------- decoding


def parse_command(data: bytes) -> dict[int, bytes]:
    """The elements of an implicit VR little endian command set, by element number."""
    elements: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 8:
            raise PeerProtocolError(f"command set ends inside an element header at byte {pos}")
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        pos += 8
        if group != 0x0000:
            raise PeerProtocolError(f"command set holds element ({group:04X},{elem:04X}) outside group 0000")
        if length > end - pos:
            raise PeerProtocolError(f"command element (0000,{elem:04X}) runs past the end of the command set")
        elements[elem] = data[pos:pos + length]
        pos += length
    return elements


def _command_us(elements: dict[int, bytes], elem: int, what: str) -> int:
    value = elements.get(elem)
    if value is None or len(value) != 2:
        raise PeerProtocolError(f"response lacks a valid {what} (0000,{elem:04X})")
    return int(struct.unpack("<H", value)[0])


def _text(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", "replace")


def _items(data: bytes, start: int, what: str) -> Iterator[tuple[int, bytes]]:
    """(type, value) of each item, or sub-item, of `data` from `start` on, each checked against the end."""
    pos = start
    while pos < len(data):
        if len(data) - pos < 4:
            raise PeerProtocolError(f"{what} ends inside an item header")
        kind, _, length = struct.unpack_from(">BBH", data, pos)
        pos += 4
        if length > len(data) - pos:
            raise PeerProtocolError(f"{what}: item 0x{kind:02X} runs past the end")
        yield kind, data[pos:pos + length]
        pos += length


def parse_associate_ac(body: bytes) -> tuple[dict[int, tuple[int, str]], int]:
    """Presentation context results {id: (result, transfer syntax)} and the peer's maximum PDU length."""
    if len(body) < 68:
        raise PeerProtocolError("A-ASSOCIATE-AC is shorter than its fixed fields")
    results: dict[int, tuple[int, str]] = {}
    max_pdu = 0
    for kind, value in _items(body, 68, "A-ASSOCIATE-AC"):
        if kind == 0x21:
            if len(value) < 4:
                raise PeerProtocolError("presentation context item is too short")
            syntax = ""
            for sub_kind, sub in _items(value, 4, "presentation context item"):
                if sub_kind == 0x40:
                    syntax = _text(sub)
            results[value[0]] = (value[2], syntax)
        elif kind == 0x50:
            for sub_kind, sub in _items(value, 0, "user information item"):
                if sub_kind == 0x51:
                    if len(sub) != 4:
                        raise PeerProtocolError("maximum length sub-item is not 4 bytes long")
                    max_pdu = int(struct.unpack(">I", sub)[0])
    return results, max_pdu


# -------------------------------------------------------------- association


class Association:
    """An established association; use :meth:`request` to make one.

    Not thread-safe: one forwarder thread owns it.
    """

    def __init__(self, sock: socket.socket, contexts: list[Context], peer_max_pdu: int, timeout: float) -> None:
        self._sock: socket.socket | None = sock
        self.contexts = contexts
        self.peer_max_pdu = peer_max_pdu
        self.timeout = timeout
        self._message_id = 0
        # A peer's maximum is a limit, not a size to read at once: a dataset is sent in fragments of
        # 1 MiB at most, read from its file as they go, whatever the peer announces (up to 4 GiB).
        self._fragment = max(1, min(peer_max_pdu - 6, _FRAGMENT_UNLIMITED)) if peer_max_pdu else _FRAGMENT_UNLIMITED

    # -- set-up and tear-down

    @classmethod
    def request(cls, host: str, port: int, *, called_ae: str, calling_ae: str,
                contexts: Sequence[tuple[str, str]], timeout: float = 30.0,
                connect_timeout: float = 10.0, tls: ssl.SSLContext | None = None,
                server_hostname: str | None = None) -> Association:
        """Connect and negotiate; `contexts` are (SOP class, transfer syntax) pairs, at most 128.

        With `tls`, the connection is wrapped in TLS before the
        A-ASSOCIATE-RQ is sent; `server_hostname` (default: `host`) is the
        name the peer's certificate must carry when the context checks
        host names.  A failed handshake or certificate check is a
        :class:`~gateway.errors.NetworkError` naming the reason.

        Raises :class:`~gateway.errors.AssociationRejectedError`,
        :class:`~gateway.errors.AssociationAbortedError`,
        :class:`~gateway.errors.PeerProtocolError` or
        :class:`~gateway.errors.NetworkError` (cannot connect, timeout).
        """
        if not 1 <= len(contexts) <= 128:
            raise ValueError(f"an association needs 1 to 128 presentation contexts, got {len(contexts)}")
        proposed = [(2 * index + 1, str(sop), str(ts)) for index, (sop, ts) in enumerate(contexts)]
        pdu = encode_associate_rq(called_ae, calling_ae, proposed)
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as exc:
            raise NetworkError(f"cannot connect to {host}:{port}: {exc}") from exc
        if tls is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock = tls.wrap_socket(sock, server_hostname=server_hostname or host)  # handshake: connect_timeout
            except (OSError, ValueError) as exc:  # ssl.SSLError and certificate errors are OSErrors
                sock.close()
                raise NetworkError(f"TLS handshake with {host}:{port} failed: {exc}") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(timeout)
            sock.sendall(pdu)
            kind, body = _read_pdu(sock, time.monotonic() + timeout)
            if kind == _A_ASSOCIATE_RJ:
                if len(body) != 4:
                    raise PeerProtocolError("A-ASSOCIATE-RJ is not 4 bytes long")
                raise AssociationRejectedError(body[1], body[2], body[3])
            if kind == _A_ABORT:
                raise AssociationAbortedError(f"{host}:{port} aborted the association request")
            if kind != _A_ASSOCIATE_AC:
                raise PeerProtocolError(f"expected A-ASSOCIATE-AC, got PDU type 0x{kind:02X}")
            results, peer_max = parse_associate_ac(body)
            if 0 < peer_max < 8:
                raise PeerProtocolError(f"peer announces an unusable maximum PDU length of {peer_max}")
        except BaseException as exc:
            if isinstance(exc, PeerProtocolError):
                _quietly(sock.sendall, _ABORT)
            sock.close()
            if isinstance(exc, (OSError, TimeoutError)) and not isinstance(exc, NetworkError):
                raise NetworkError(f"association request to {host}:{port} failed: {exc}") from exc
            raise
        accepted = [Context(ident, sop, ts) for ident, sop, ts in proposed
                    if results.get(ident, (1, ""))[0] == 0 and results[ident][1] == ts]
        return cls(sock, accepted, peer_max, timeout)

    @property
    def is_established(self) -> bool:
        """True while the association can carry a request.

        Between requests the peer has nothing to say, so anything readable
        on the idle socket is an A-ABORT, an A-RELEASE-RQ or the connection
        closing (an archive's idle timeout): the association is then closed
        here, and the next send opens a fresh one instead of failing.
        """
        sock = self._sock
        if sock is None:
            return False
        # Over TLS, bytes already decrypted and buffered count too; a record
        # without application data (a key update, say) also reads as the
        # peer speaking: the next send then opens a new association, as
        # after an idle timeout.
        if (isinstance(sock, ssl.SSLSocket) and sock.pending()) or _readable(sock):
            self._sock = None
            sock.close()
            return False
        return True

    def has_incoming(self) -> bool:
        """True when the peer has sent something not read yet (e.g. an N-EVENT-REPORT); never blocks."""
        sock = self._sock
        if sock is None:
            return False
        return bool(isinstance(sock, ssl.SSLSocket) and sock.pending()) or _readable(sock)

    def accepted_syntaxes(self, sop_class: str) -> list[str]:
        """Transfer syntaxes the peer accepted for `sop_class`, in the order proposed."""
        return [cx.transfer_syntax for cx in self.contexts if cx.abstract_syntax == sop_class]

    def context_for(self, sop_class: str, transfer_syntax: str) -> Context | None:
        for cx in self.contexts:
            if cx.abstract_syntax == sop_class and cx.transfer_syntax == transfer_syntax:
                return cx
        return None

    def release(self) -> None:
        """A-RELEASE: ask, wait for the answer (within the timeout), close.  Never raises."""
        sock = self._sock
        if sock is None:
            return
        self._sock = None
        try:
            sock.settimeout(self.timeout)
            sock.sendall(_RELEASE_RQ)
            deadline = time.monotonic() + self.timeout
            while True:
                kind, _ = _read_pdu(sock, deadline)
                if kind in (_A_RELEASE_RP, _A_ABORT):
                    break
                if kind == _A_RELEASE_RQ:  # release collision (PS3.8 7.2.2): answer and go
                    sock.sendall(_RELEASE_RP)
                    break
        except (OSError, NetworkError):
            pass
        finally:
            sock.close()

    def abort(self) -> None:
        """A-ABORT and close.  Never raises."""
        sock, self._sock = self._sock, None
        if sock is not None:
            _quietly(sock.sendall, _ABORT)
            sock.close()

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
        context = self.context_for(VERIFICATION, "1.2.840.10008.1.2") or next(
            (cx for cx in self.contexts if cx.abstract_syntax == VERIFICATION), None)
        if context is None:
            raise ValueError("the peer accepted no Verification presentation context")
        message_id = self._next_id()
        return self._exchange(context, echo_command(message_id), None, message_id, _C_ECHO_RSP)

    def c_store(self, sop_class: str, sop_instance: str, transfer_syntax: str,
                dataset: bytes | memoryview | tuple[Path, int], priority: int = 0) -> StoreResult:
        """Send one dataset (encoded in `transfer_syntax`); return the peer's response.

        `dataset` is the encoded dataset, or ``(path, offset)``: the file's
        bytes from `offset` to its end (the dataset after the file meta).
        """
        context = self.context_for(sop_class, transfer_syntax)
        if context is None:
            raise ValueError(f"no accepted presentation context for {sop_class} in {transfer_syntax}")
        message_id = self._next_id()
        command = store_command(message_id, sop_class, sop_instance, priority)
        return self._exchange(context, command, dataset, message_id, _C_STORE_RSP, (sop_class, sop_instance))

    def n_action(self, sop_class: str, sop_instance: str, action_type: int, dataset: bytes) -> StoreResult:
        """N-ACTION (e.g. a storage commitment request, PS3.4 J.3.2); `dataset` is the Action
        Information, encoded in the syntax of the first context accepted for `sop_class`."""
        context = next((cx for cx in self.contexts if cx.abstract_syntax == sop_class), None)
        if context is None:
            raise ValueError(f"no accepted presentation context for {sop_class}")
        message_id = self._next_id()
        command = n_action_command(message_id, sop_class, sop_instance, action_type)
        return self._exchange(context, command, dataset, message_id, _N_ACTION_RSP, (sop_class, sop_instance))

    def event_report(self, sop_class: str, timeout: float) -> EventReport:
        """Wait up to `timeout` seconds for the peer's N-EVENT-REPORT on `sop_class`'s context and answer it.

        This is how the archive reports a storage commitment result on the
        association that asked for it (PS3.4 J.3.3); the answer is Success
        (the report was received).  Anything else than that request
        breaks the association as a malformed response would.
        """
        context = next((cx for cx in self.contexts if cx.abstract_syntax == sop_class), None)
        if context is None:
            raise ValueError(f"no accepted presentation context for {sop_class}")
        sock = self._sock
        if sock is None:
            raise NetworkError("the association is closed")
        with self._breaks_on_error(sock):
            elements, dataset = self._read_message(sock, context.id, time.monotonic() + timeout, keep_dataset=True)
            field = _command_us(elements, 0x0100, "Command Field")
            if field != _N_EVENT_REPORT_RQ:
                raise PeerProtocolError(f"expected N-EVENT-REPORT-RQ, got command 0x{field:04X}")
            affected = _text(elements.get(0x0002, b""))
            if affected != sop_class:
                raise PeerProtocolError(f"N-EVENT-REPORT for SOP class {affected!r}, expected {sop_class}")
            message_id = _command_us(elements, 0x0110, "Message ID")
            event_type = _command_us(elements, 0x1002, "Event Type ID")
            instance = _text(elements.get(0x1000, b""))
            answer = n_event_report_response(message_id, sop_class, instance, event_type)
            self._send_pdvs(sock, context.id, 0x01, io.BytesIO(answer), len(answer))
            return EventReport(sop_class, instance, event_type, dataset)

    def _next_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def _exchange(self, context: Context, command: bytes, dataset: bytes | memoryview | tuple[Path, int] | None,
                  message_id: int, expected: int, affected: tuple[str, str] | None = None) -> StoreResult:
        sock = self._sock
        if sock is None:
            raise NetworkError("the association is closed")
        with _open_dataset(dataset) as (source, size), self._breaks_on_error(sock):
            # (problems with the file show before anything is sent)
            sock.settimeout(self.timeout)  # reading the last response may have left a shorter one
            self._send_pdvs(sock, context.id, 0x01, io.BytesIO(command), len(command))
            if source is not None:
                self._send_pdvs(sock, context.id, 0x00, source, size)
            return self._response(sock, context.id, message_id, expected, affected)

    @contextlib.contextmanager
    def _breaks_on_error(self, sock: socket.socket) -> Iterator[None]:
        """An exchange broken half-way leaves nothing on the association to trust: close it."""
        try:
            yield
        except AssociationAbortedError:
            self._sock = None
            sock.close()
            raise
        except BaseException as exc:
            self.abort()
            if isinstance(exc, OSError):
                raise NetworkError(f"DIMSE exchange failed: {exc}") from exc
            raise

    def _send_pdvs(self, sock: socket.socket, context_id: int, control: int, source: BinaryIO, total: int) -> None:
        """Send `total` bytes of `source` as P-DATA-TF PDUs of one PDV each, the last one flagged.

        Several PDUs go out per system call: a peer announcing 16 KiB PDUs
        would otherwise cost one call (and with TCP_NODELAY one packet) per
        16 KiB.
        """
        fragment = self._fragment
        sent = 0
        while sent < total:
            parts = []
            batch = 0
            while sent < total and batch < _SEND_BATCH:
                data = source.read(min(fragment, total - sent))
                if not data:
                    raise NetworkError(f"the dataset ended after {sent} of {total} bytes while it was sent")
                sent += len(data)
                flags = control | (0x02 if sent >= total else 0x00)
                parts.append(struct.pack(">BBIIBB", _P_DATA_TF, 0, len(data) + 6, len(data) + 2, context_id, flags))
                parts.append(data)
                batch += len(data)
            sock.sendall(b"".join(parts))

    def _read_message(self, sock: socket.socket, context_id: int, deadline: float, *,
                      keep_dataset: bool = False) -> tuple[dict[int, bytes], bytes]:
        """Read P-DATA on `context_id` until a message (command set and any dataset) is complete.

        Returns the command's elements and, with `keep_dataset`, the
        dataset (no response we ask for carries one: it is discarded).
        """
        dataset = bytearray()
        command = bytearray()
        elements: dict[int, bytes] = {}
        command_done = False
        dataset_expected = False
        dataset_done = False
        while not (command_done and (dataset_done or not dataset_expected)):
            kind, body = _read_pdu(sock, deadline)
            if kind == _A_ABORT:
                raise AssociationAbortedError("the peer aborted the association while we waited for a response")
            if kind == _A_RELEASE_RQ:
                _quietly(sock.sendall, _RELEASE_RP)
                raise AssociationAbortedError("the peer released the association before answering")
            if kind != _P_DATA_TF:
                raise PeerProtocolError(f"expected P-DATA-TF, got PDU type 0x{kind:02X}")
            pos = 0
            while pos < len(body):
                if len(body) - pos < 6:
                    raise PeerProtocolError("P-DATA-TF ends inside a PDV item header")
                length, pdv_context, flags = struct.unpack_from(">IBB", body, pos)
                if length < 2 or length > len(body) - pos - 4:
                    raise PeerProtocolError(f"PDV item length {length} does not fit its PDU")
                if pdv_context != context_id:
                    raise PeerProtocolError(f"message on presentation context {pdv_context}, "
                                            f"expected on {context_id}")
                data = body[pos + 6:pos + 4 + length]
                pos += 4 + length
                if flags & 0x01:
                    if command_done:
                        raise PeerProtocolError("a second command set arrived before the first was finished")
                    command += data
                    if len(command) > _COMMAND_LIMIT:
                        raise PeerProtocolError(f"a command set of more than {_COMMAND_LIMIT} bytes")
                    if flags & 0x02:
                        command_done = True
                        elements = parse_command(bytes(command))
                        dataset_expected = _command_us(elements, 0x0800, "Command Data Set Type") != _NO_DATASET
                else:
                    if not command_done or not dataset_expected:
                        raise PeerProtocolError("a dataset fragment arrived where none was expected")
                    dataset_done = bool(flags & 0x02)
                    if keep_dataset:
                        dataset += data
                        if len(dataset) > _KEPT_DATASET_LIMIT:
                            raise PeerProtocolError(f"a dataset of more than {_KEPT_DATASET_LIMIT} bytes")
        return elements, bytes(dataset)

    def _response(self, sock: socket.socket, context_id: int, message_id: int, expected: int,
                  affected: tuple[str, str] | None = None) -> StoreResult:
        """Read P-DATA until the response command set is complete; return its status.

        `affected`: the request's SOP Class and Instance UIDs, which the
        response's Affected SOP Class / Instance UID must equal where it
        gives them (PS3.7 9.3.1.2, 10.3.4.2: U(=)); a response about another
        instance is no answer about ours.
        """
        elements, _ = self._read_message(sock, context_id, time.monotonic() + self.timeout)
        field = _command_us(elements, 0x0100, "Command Field")
        if field != expected:
            raise PeerProtocolError(f"expected response command 0x{expected:04X}, got 0x{field:04X}")
        answered = _command_us(elements, 0x0120, "Message ID Being Responded To")
        if answered != message_id:
            raise PeerProtocolError(f"response to message {answered}, expected {message_id}")
        if affected is not None:
            for tag, name, value in ((0x0002, "SOP Class", affected[0]), (0x1000, "SOP Instance", affected[1])):
                given = _text(elements.get(tag, b""))
                if given and given != value:
                    raise PeerProtocolError(f"response about Affected {name} UID {given!r}, not {value}")
        status = _command_us(elements, 0x0900, "Status")
        return StoreResult(status, _text(elements.get(0x0902, b"")))


@contextlib.contextmanager
def _open_dataset(dataset: bytes | memoryview | tuple[Path, int] | None) -> Iterator[tuple[BinaryIO | None, int]]:
    """The dataset to send as a readable stream and its size in bytes."""
    if dataset is None:
        yield None, 0
        return
    if isinstance(dataset, tuple):
        path, offset = dataset
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size - offset
            if size <= 0:
                raise ValueError(f"{path} holds no dataset after byte {offset}")
            handle.seek(offset)
            yield handle, size
        return
    if not len(dataset):
        raise ValueError("an empty dataset cannot be stored")
    yield io.BytesIO(dataset), len(dataset)


def _recv_exact(sock: socket.socket, count: int, deadline: float) -> bytes:
    buffer = bytearray(count)
    view = memoryview(buffer)
    got = 0
    while got < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NetworkError("timed out waiting for the peer")
        sock.settimeout(remaining)
        try:
            n = sock.recv_into(view[got:], count - got)
        except TimeoutError as exc:
            raise NetworkError("timed out waiting for the peer") from exc
        if n == 0:
            raise AssociationAbortedError("the peer closed the connection")
        got += n
    return bytes(buffer)


def _read_pdu(sock: socket.socket, deadline: float) -> tuple[int, bytes]:
    """(PDU type, variable part) of the next PDU."""
    kind, _, length = struct.unpack(">BBI", _recv_exact(sock, 6, deadline))
    if kind not in (_A_ASSOCIATE_RQ, _A_ASSOCIATE_AC, _A_ASSOCIATE_RJ, _P_DATA_TF, _A_RELEASE_RQ,
                    _A_RELEASE_RP, _A_ABORT):
        raise PeerProtocolError(f"unknown PDU type 0x{kind:02X}")
    if length > _PDU_LIMIT:
        raise PeerProtocolError(f"PDU of {length} bytes exceeds the {_PDU_LIMIT}-byte limit")
    return kind, _recv_exact(sock, length, deadline)


def _readable(sock: socket.socket) -> bool:
    """True when reading `sock` would not block (data, end of stream or error); never raises."""
    try:
        if hasattr(select, "poll"):  # no limit on descriptor numbers, unlike select()
            poller = select.poll()
            poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _quietly(func, *args) -> None:  # type: ignore[no-untyped-def]
    try:
        func(*args)
    except OSError:
        pass
