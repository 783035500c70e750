"""The receiver's front door: every connection waits in a lobby until it has asked properly.

pynetdicom's server gives each accepted connection an association and two
threads at once, runs the TLS handshake inside its accept loop with no
deadline, and its upper layer reads whatever length a PDU header announces.
So an idle port scan holds association slots, one silent TLS client blocks
every other one, and one header announcing 4 GiB makes it allocate 4 GiB.

:class:`GuardedServer` keeps pynetdicom's DICOM upper layer and changes what
happens before and around it:

* The accept loop only accepts.  A connection is then *pending* in the lobby,
  one thread for all of them (a selector), until it has completed its TLS
  handshake and sent a whole A-ASSOCIATE-RQ, within
  ``association_request_seconds`` from the connection (PS3.8 9.1.5, ARTIM).
  Too slow, and it is closed; pynetdicom never sees it.
* The A-ASSOCIATE-RQ header is checked before its body is read: a first PDU
  that is not an A-ASSOCIATE-RQ, or one announcing more than the limit, is
  aborted unread.  An AE title bound to a certificate subject or to
  addresses (``allowed_callers``) is checked here against the verified
  certificate and the caller's address.
* Connections are counted, pending and associated, in total
  (``max_connections``) and per remote address
  (``max_connections_per_address``).  When a limit is reached, a new
  connection takes the place of the oldest *pending* one (an idle connection
  cannot keep a real sender out for long); when every counted connection is
  associated, the new one is refused.
* Once handed to pynetdicom, the socket is wrapped (:class:`_GuardedSocket`)
  so that the bytes the lobby read are replayed, every later PDU header is
  checked against ``max_pdu`` before its body is read (a larger one aborts
  the association), the command fragments of P-DATA-TF PDUs are counted
  against :data:`COMMAND_SET_LIMIT` (an endless command set aborts the
  association; data set fragments go to the spool, which has its own floor),
  and a PDU silent for ``idle_seconds`` ends the association.
"""

from __future__ import annotations

import gc
import ipaddress
import queue
import select
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from socketserver import ThreadingMixIn
from typing import Any

from pydicom.datadict import dictionary_description, tag_for_keyword
from pynetdicom import _config
from pynetdicom import timer as _pynetdicom_timer
from pynetdicom.association import Association
from pynetdicom.dimse_messages import _MESSAGE_TYPES
from pynetdicom.dimse_primitives import C_STORE, N_EVENT_REPORT
from pynetdicom.dsutils import decode
from pynetdicom.pdu import A_ASSOCIATE_RQ as AssociateRequestPDU
from pynetdicom.transport import (
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)

from gateway.config import CallerAddresses, CallerCertificate, ServerConfig, subject_pairs
from gateway.logs import get_logger
from gateway.net import sink

__all__ = ["A_ASSOCIATE_RQ", "COMMAND_SET_LIMIT", "CONTROL_PDU_LIMIT", "DATA_SET_LIMIT", "EVENT_REPORT_DATA_SET_LIMIT",
           "P_DATA_TF", "QUEUED_MESSAGES_LIMIT", "GuardedServer", "Limits"]

_log = get_logger("scp")


class _SteadyTime:
    """:mod:`time` as pynetdicom's timers see it: ``time()`` reads the steady clock.

    pynetdicom measures an association's ``network_timeout`` (our
    ``idle_seconds`` between PDUs) and its ARTIM timer with ``time.time()``,
    and only ever subtracts two readings: the wall clock stepped forward
    past ``idle_seconds`` expired every running timer at once (each idle
    association aborted), and set back a day, a silent association held its
    slot a day more.  A duration wants the steady clock.
    """

    time = staticmethod(time.monotonic)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


_pynetdicom_timer.time = _SteadyTime()  # type: ignore[assignment]

A_ASSOCIATE_RQ = 0x01
P_DATA_TF = 0x04
CONTROL_PDU_LIMIT = 256 * 1024
"""Largest PDU other than P-DATA-TF accepted whatever ``max_pdu`` says (an A-ASSOCIATE-RQ
proposing 128 contexts with many transfer syntaxes each can reach some 100 KB)."""
COMMAND_SET_LIMIT = 64 * 1024
"""Largest DIMSE command set accepted, over all its fragments.  pynetdicom keeps a command's
fragments in memory until the last one; a real command set is a few hundred bytes."""
DATA_SET_LIMIT = 64 * 1024
"""Largest data set accepted with a message other than a C-STORE request or an N-EVENT-REPORT
request.  pynetdicom keeps such a data set in memory; no other service offered here takes one."""
EVENT_REPORT_DATA_SET_LIMIT = 1024 * 1024
"""Largest data set accepted with an N-EVENT-REPORT request: a storage commitment report lists
one item of two UIDs (some 150 bytes) per instance, and the gateway asks for 32 at a time."""
QUEUED_MESSAGES_LIMIT = 64
"""Whole DIMSE messages an association may have waiting for its service thread before its socket
is no longer read (a sender waiting for each answer never has more than a few)."""

C_STORE_RQ = 0x0001
N_EVENT_REPORT_RQ = 0x0100
NO_DATA_SET = 0x0101  # (0000,0800) Command Data Set Type: no data set follows

# A-ABORT, source 2 (service provider), reason 6 (invalid PDU parameter value): PS3.8 9.3.8.
_ABORT_INVALID = bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6))
# A-ASSOCIATE-RJ rejected-permanent, service user, calling (called) AE title not recognized: PS3.8 9.3.4.
_REJECT_CALLING = bytes((0x03, 0, 0, 0, 0, 4, 0, 1, 1, 3))
_REJECT_CALLED = bytes((0x03, 0, 0, 0, 0, 4, 0, 1, 1, 7))


@dataclass(frozen=True, slots=True)
class Limits:
    """What one peer may take of the receiver (``[server]`` keys of the same names)."""

    max_pdu: int = 1_048_576
    association_request_seconds: float = 10.0
    idle_seconds: float = 60.0
    max_connections: int = 256
    max_connections_per_address: int = 32

    @classmethod
    def of(cls, server: ServerConfig) -> Limits:
        return cls(max_pdu=server.max_pdu, association_request_seconds=server.association_request_seconds,
                   idle_seconds=server.idle_seconds, max_connections=server.max_connections,
                   max_connections_per_address=server.max_connections_per_address)

    def pdu_limit(self, pdu_type: int) -> int:
        """Largest announced length accepted for a PDU of `pdu_type`."""
        return self.max_pdu if pdu_type == P_DATA_TF else max(self.max_pdu, CONTROL_PDU_LIMIT)


def _peer(address: Any) -> str:
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) and len(address) >= 2 else str(address)


def _tls_reason(exc: BaseException) -> str:
    """A TLS failure in words an operator can act on."""
    verify = getattr(exc, "verify_message", None)
    reason = getattr(exc, "reason", None) or ""
    if verify:
        hint = " (not signed by a CA of ca_certificates)" if "issuer" in verify else ""
        return f"certificate refused: {verify}{hint}"
    if reason in ("UNSUPPORTED_PROTOCOL", "VERSION_TOO_LOW", "TLSV1_ALERT_PROTOCOL_VERSION"):
        return f"the peer offers only versions older than TLS 1.2, which are refused (PS3.15 B.12) [{reason}]"
    if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL",
                  "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
        return f"the peer does not speak TLS (plain DICOM to the TLS port?) [{reason}]"
    if reason == "NO_SHARED_CIPHER":
        return ("no cipher suite in common: the peer offers none of the TLS 1.2 suites accepted (ECDHE or DHE "
                f"with AES-GCM or ChaCha20-Poly1305) [{reason}]")
    if reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_REQUIRED"):
        return "the peer sent no certificate and one is required"
    if "ALERT" in reason and ("CERTIFICATE" in reason or "UNKNOWN_CA" in reason):
        # an alert is the peer's word, and a certificate alert from a caller is about ours
        return (f"the peer refused the gateway's certificate (its CA unknown to the peer, out of date, or naming "
                f"another host?) [{reason}]")
    if "CERTIFICATE" in reason or "UNKNOWN_CA" in reason:
        return f"certificate refused [{reason}]"
    return f"{reason or type(exc).__name__}: {exc}"


def _within(host: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """True when the address `host` lies in one of `networks` (an IPv4 address mapped into IPv6 as itself)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def _ae_title_problem(field: bytes) -> str | None:
    """What pynetdicom would refuse in an A-ASSOCIATE-RQ's AE title field (PS3.8 9.3.2, VR AE), or None.

    Leading and trailing spaces are not significant; what is left must be
    ASCII, printable and without backslash.
    """
    try:
        text = field.decode("ascii").strip()
    except UnicodeDecodeError:
        return "holds bytes that are not ASCII"
    if not text:
        return "is empty (spaces only)"
    if "\\" in text or not text.isprintable():
        return "holds a control character or a backslash"
    return None


def _request_problem(pdu: bytes) -> str | None:
    """Why pynetdicom could not take this A-ASSOCIATE-RQ (decoded as it decodes it), or None.

    pynetdicom fails on such a request only after giving it an association:
    the association waits its ACSE timeout (30 s), unanswered when the
    failure kills its reader thread, and holds one of ``max_associations``
    meanwhile.
    """
    try:
        request = AssociateRequestPDU()
        request.decode(pdu)
        request.to_primitive()
    except Exception as exc:  # noqa: BLE001 - pynetdicom and pydicom raise many kinds on malformed items
        return f"{type(exc).__name__}: {str(exc)[:120]}"
    return None


class _Throttle:
    """One log line per (kind, address) every `every` seconds; the others are counted in it."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def log(self, level: int, kind: str, host: str, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            last, hidden = self._last.get((kind, host), (-1e9, 0))
            if now - last < self.every:
                self._last[(kind, host)] = (last, hidden + 1)
                return
            self._last[(kind, host)] = (now, 0)
            if len(self._last) > 4096:
                self._last = {k: v for k, v in self._last.items() if now - v[0] < self.every}
        if hidden:
            message += f" ({hidden} more like it from {host} in the last {now - last:.0f} s)"
        _log.log(level, message)


class _Pending:
    """A connection in the lobby: TLS handshake, then the A-ASSOCIATE-RQ, under one deadline."""

    __slots__ = ("address", "buffer", "deadline", "events", "handshaking", "host", "need", "sock")

    def __init__(self, sock: socket.socket, address: Any, deadline: float, handshaking: bool) -> None:
        self.sock = sock
        self.address = address
        self.host = str(address[0]) if isinstance(address, tuple) else str(address)
        self.deadline = deadline
        self.handshaking = handshaking
        self.buffer = bytearray()
        self.need = 6
        self.events = 0


class _Handover:
    """A pending connection that asked properly: its socket and the bytes already read."""

    __slots__ = ("prefix", "sock")

    def __init__(self, sock: socket.socket, prefix: bytes) -> None:
        self.sock = sock
        self.prefix = prefix

    def fileno(self) -> int:
        return self.sock.fileno()


class _GuardedSocket(AssociationSocket):
    """pynetdicom's socket wrapper, with replay of the lobby's bytes and a PDU length check."""

    _prefix: bytearray
    _left: int
    _p_data: bool  # the PDU being read is a P-DATA-TF
    _command: bytearray  # the command set being received, so far (as pynetdicom keeps it)
    _data_due: bool  # a whole command set announced a data set, not yet wholly received
    _data_limit: int | None  # bytes of that data set kept in memory at most; None: it goes to the spool
    _data_bytes: int  # of that data set, so far
    _completed: bool  # the last presentation data value item read completed a message
    _limits: Limits
    _on_close: Callable[[socket.socket], None]
    _peer: str
    _raw: socket.socket | None

    @classmethod
    def adopt(cls, sock: AssociationSocket, prefix: bytes, limits: Limits,
              on_close: Callable[[socket.socket], None], peer: str) -> None:
        """Turn the wrapper pynetdicom made for an accepted connection into one of ours.

        Changing the class of the existing object (rather than making a new
        one) keeps the transport-connection event pynetdicom queued for it.
        """
        sock.__class__ = cls
        assert isinstance(sock, _GuardedSocket)
        sock._prefix = bytearray(prefix)
        sock._left = 0
        sock._p_data = False
        sock._limits = limits
        sock._on_close = on_close
        sock._peer = peer
        sock._raw = sock.socket
        sock._message_done()

    @property
    def ready(self) -> bool:
        """True when a read would not block: bytes, the end of the stream or an error.

        pynetdicom asks ``select.select()``, which raises for a descriptor of 1024
        or more; it then takes the connection for closed, so once the process
        holds that many descriptors no new association would work.  ``poll()``
        has no such limit.
        """
        if self._backlogged():
            return False
        sock = self.socket
        if sock is None or self._is_connected is False:
            return False
        if self._prefix:
            return True
        if not hasattr(select, "poll"):
            return bool(AssociationSocket.ready.fget(self))  # type: ignore[attr-defined]
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # decrypted bytes already buffered, which the descriptor does not show
        try:
            poller = select.poll()
            poller.register(sock, select.POLLIN | select.POLLPRI)
            return bool(poller.poll(0))  # POLLHUP and POLLERR are reported whatever is asked
        except (OSError, ValueError):  # closed meanwhile: as pynetdicom, Evt17 (transport connection closed)
            self.event_queue.put("Evt17")
            return False

    def _backlogged(self) -> bool:
        """True while the association has more whole messages waiting than it may (nothing is read then).

        pynetdicom reads as fast as the peer sends and queues every message without bound;
        not reading leaves the rest in the kernel's buffers, and TCP flow control stops the peer.
        """
        dimse = getattr(self.assoc, "dimse", None)
        waiting: queue.Queue | None = getattr(dimse, "msg_queue", None)
        if waiting is None:
            return False
        if waiting.qsize() + getattr(self.assoc, "event_reports_in_service", 0) <= QUEUED_MESSAGES_LIMIT:
            return False
        timer = getattr(self.assoc.dul, "_idle_timer", None)
        if timer is not None:
            timer.restart()  # the wait is ours, not the peer's silence
        return True

    def _read(self, count: int) -> bytearray:
        data = bytearray()
        if self._prefix:
            data += self._prefix[:count]
            del self._prefix[:count]
        if len(data) < count:
            try:
                data += super().recv(count - len(data))
            except TimeoutError:
                _log.warning("association from %s: nothing received for %g s in the middle of a PDU; closed",
                             self._peer, self._limits.idle_seconds)
                return bytearray() if self._left == 0 else data
            except OSError:
                return bytearray() if self._left == 0 else data  # reset: pynetdicom sees the connection closed
        return data

    def recv(self, nr_bytes: int) -> bytearray:
        if self._left > 0:  # inside a PDU's body
            whole = nr_bytes >= self._left
            data = self._read(min(nr_bytes, self._left))
            self._left -= len(data)
            if self._p_data and whole and self._left == 0 and not self._check_p_data(data):
                self._refuse()
                return bytearray()
            return data
        data = self._read(nr_bytes)
        if nr_bytes == 6 and len(data) == 6:  # a PDU header: type, reserved, 4-byte length
            kind, length = data[0], int.from_bytes(data[2:6], "big")
            limit = self._limits.pdu_limit(kind)
            if length > limit:
                _log.warning("association from %s aborted: PDU type 0x%02X announces %d bytes, more than the "
                             "limit of %d (max_pdu); not read", self._peer, kind, length, limit)
                self._refuse()
                return bytearray()  # pynetdicom reads a closed connection (no decode, no buffer)
            self._left = length
            self._p_data = kind == P_DATA_TF
        return data

    def _message_done(self) -> None:
        self._command = bytearray()
        self._data_due = False
        self._data_limit = DATA_SET_LIMIT
        self._data_bytes = 0
        self._completed = True

    def _check_p_data(self, body: bytearray) -> bool:
        """Follow the DIMSE messages of a whole P-DATA-TF body (PS3.8 9.3.5.1, E.2); False to abort.

        pynetdicom reads a PDU's body in one call, so a whole body is what arrives
        here, before pynetdicom decodes it.  What pynetdicom would keep in memory
        without bound, or what would raise inside its reader thread (which then
        dies, leaving the association hanging), is refused here instead.

        pynetdicom decodes a P-DATA-TF only up to the item that completes a
        message and silently drops the items after it, so from there on this
        count and its own would differ (a C-STORE command it never saw, whose
        data set it would then keep in memory).  PS3.8 allows a second message
        in the same P-DATA-TF, but the senders known here (dcm4che, fo-dicom,
        pynetdicom, DCMTK's storescu and echoscu) end each message's last PDU
        with it: such a P-DATA-TF is aborted.
        """
        offset = 0
        while offset < len(body):
            if self._completed and offset:
                return self._abort("a presentation data value item in a P-DATA-TF after the one that completes "
                                   "a message (a message per P-DATA-TF at most)")
            self._completed = False
            if offset + 6 > len(body):
                return self._abort("a P-DATA-TF ends inside a presentation data value item header")
            length = int.from_bytes(body[offset:offset + 4], "big")
            if length < 2 or offset + 4 + length > len(body):
                return self._abort(f"a presentation data value item of length {length} does not fit its P-DATA-TF")
            context_id, control = body[offset + 4], body[offset + 5]
            size = length - 2
            if control & 0x01:
                if not self._command_fragment(body[offset + 6:offset + 4 + length], context_id, bool(control & 0x02)):
                    return False
            elif not self._data_fragment(size, bool(control & 0x02)):
                return False
            offset += 4 + length
        return True

    def _command_fragment(self, fragment: bytearray, context_id: int, last: bool) -> bool:
        if self._data_due:  # pynetdicom would append it to the decoded command set and decode it all again
            return self._abort("a command fragment where the data set of the previous command was due")
        self._command += fragment
        if len(self._command) > COMMAND_SET_LIMIT:
            return self._abort(f"a command set of more than {COMMAND_SET_LIMIT} bytes "
                               "(fragments never marked last); not kept")
        if not last:
            return True
        try:  # as pynetdicom decodes it next (DIMSEMessage.decode_msg)
            command = decode(BytesIO(bytes(self._command)), True, True)
            field = command.get("CommandField")
            data_set_type = command.get("CommandDataSetType")
        except Exception as exc:  # pydicom raises many kinds on malformed bytes
            return self._abort(f"a command set that cannot be decoded ({type(exc).__name__})")
        if field not in _MESSAGE_TYPES:
            return self._abort(f"a command set whose Command Field is {field!r}, not a DIMSE message")
        if data_set_type is None:
            return self._abort("a command set without Command Data Set Type (0000,0800)")
        if data_set_type == NO_DATA_SET:
            self._message_done()
            return True
        self._data_due = True
        if field == N_EVENT_REPORT_RQ:
            self._data_limit = EVENT_REPORT_DATA_SET_LIMIT
        elif field == C_STORE_RQ and _config.STORE_RECV_CHUNKED_DATASET:
            # pynetdicom writes the file meta from these and the context's transfer syntax; a missing one raises
            if not command.get("AffectedSOPClassUID") or not command.get("AffectedSOPInstanceUID"):
                return self._abort("a C-STORE request without Affected SOP Class UID (0000,0002) "
                                   "or Affected SOP Instance UID (0000,1000)")
            # pynetdicom opens the data set's file now, then drops a request lacking any of these unanswered
            for keyword in C_STORE.REQUEST_KEYWORDS:
                tag = tag_for_keyword(keyword)
                if tag is not None and command.get(keyword) is None:
                    return self._abort(f"a C-STORE request without {dictionary_description(tag)} "
                                       f"({tag >> 16:04X},{tag & 0xFFFF:04X})")
            accepted = getattr(self.assoc, "_accepted_cx", None)
            if accepted is not None and context_id not in accepted:
                return self._abort(f"a C-STORE request on presentation context {context_id}, not one accepted")
            self._data_limit = None
        return True

    def _data_fragment(self, size: int, last: bool) -> bool:
        if not self._data_due:
            return self._abort("a data set fragment with no command set before it")
        if self._data_limit is not None:
            self._data_bytes += size
            if self._data_bytes > self._data_limit:
                return self._abort(f"a data set of more than {self._data_limit} bytes with a message other "
                                   "than a C-STORE request; not kept")
        if last:
            self._message_done()
        return True

    def _abort(self, why: str) -> bool:
        _log.warning("association from %s aborted: %s", self._peer, why)
        return False

    def _refuse(self) -> None:
        raw = self.socket
        if raw is None:
            return
        try:
            raw.settimeout(1.0)
            raw.sendall(_ABORT_INVALID)
        except OSError:
            pass
        self._shutdown_socket()

    def _shutdown_socket(self) -> None:
        raw = self._raw
        super()._shutdown_socket()
        if raw is not None:
            try:
                raw.close()  # pynetdicom skips close() when shutdown() fails
            except OSError:
                pass
            self._on_close(raw)


class _GuardedAssociation(Association):
    """pynetdicom's association, which leaves nothing behind when its thread ends.

    pynetdicom serves each N-EVENT-REPORT request in a thread of its own as soon
    as it is decoded, outside the message queue; those still being served are
    counted here (:attr:`event_reports_in_service`), so that they wait against
    the same limit as queued messages (:meth:`_GuardedSocket._backlogged`).
    """

    event_reports_in_service = 0
    _service_lock = threading.Lock()

    def _serve_request(self, msg: Any, context_id: int) -> None:
        if isinstance(msg, C_STORE):
            try:
                super()._serve_request(msg, context_id)
            finally:
                # pynetdicom may leave a request to another service or drop it (during a release, say)
                # without the C-STORE handler seeing it; its file would stay open until the association ends
                sink.finish(msg)
            return
        if not isinstance(msg, N_EVENT_REPORT):
            super()._serve_request(msg, context_id)
            return
        with self._service_lock:
            self.event_reports_in_service += 1
        try:
            super()._serve_request(msg, context_id)
        finally:
            with self._service_lock:
                self.event_reports_in_service -= 1

    def run(self) -> None:
        try:
            super().run()
        finally:
            self._leave_nothing()

    def _leave_nothing(self) -> None:
        """Close the socket and delete the files of data sets no C-STORE handler took.

        After a release or an abort the socket is closed already; after an
        exception in pynetdicom's reader thread it is not, and nothing else
        would close it.  Partial files would otherwise wait in the spool's
        ``tmp/`` until the next start.
        """
        guarded = self.dul.socket
        if isinstance(guarded, _GuardedSocket):
            try:
                guarded.close()
            except OSError:
                pass
        try:
            left = sink.discard(self)
        except OSError as exc:
            _log.error("association from %s: cannot delete its unfinished data sets: %s",
                       getattr(guarded, "_peer", "?"), exc)
            return
        if left:
            _log.info("association from %s ended with %d data set(s) not received whole; deleted from the spool",
                      getattr(guarded, "_peer", "?"), left)


class _GuardedHandler(RequestHandler):
    """pynetdicom's request handler, given a connection the lobby let through."""

    request: Any

    def setup(self) -> None:
        handover = self.request
        self.prefix = handover.prefix
        self.request = handover.sock

    def handle(self) -> None:
        """Refuse, here, a request pynetdicom could not take; let pynetdicom have the others."""
        server = self.server
        assert isinstance(server, GuardedServer)
        problem = _request_problem(self.prefix)
        if problem is None:
            super().handle()
            return
        sock = self.request
        host = str(self.client_address[0]) if isinstance(self.client_address, tuple) else str(self.client_address)
        server.throttle.log(30, "protocol", host, f"association request from {_peer(self.client_address)} "
                            f"aborted: it cannot be decoded ({problem})")
        try:
            sock.settimeout(1.0)
            sock.sendall(_ABORT_INVALID)
        except OSError:
            pass
        server.release(sock)
        _close_quietly(sock)

    def _create_association(self):  # type: ignore[no-untyped-def]
        assoc = super()._create_association()
        assoc.__class__ = _GuardedAssociation  # not yet started: its run() is ours
        server = self.server
        assert isinstance(server, GuardedServer)
        _GuardedSocket.adopt(assoc.dul.socket, self.prefix, server.limits, server.release,
                             _peer(self.client_address))
        return assoc


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server behind the lobby (see the module docstring)."""

    request_queue_size = 1024  # listen backlog (capped by the kernel's somaxconn): a full one drops SYNs,
    # and a real sender's dropped SYN costs it 1, 3, 7 s of TCP retransmission
    gc_every_seconds = 30.0
    accept_thread: threading.Thread | None = None  # runs serve_forever (set by whoever starts it)

    def stalled(self) -> str | None:
        """None while the threads that take connections run, else which one has stopped."""
        if self.accept_thread is not None and not self.accept_thread.is_alive():
            return "the receiver's accept thread has stopped"
        if not self.lobby.is_alive():
            return "the receiver's lobby thread has stopped"
        return None

    def __init__(self, ae: Any, address: tuple[str, int], ae_title: str, contexts: list, *,
                 limits: Limits, tls: ssl.SSLContext | None = None,
                 caller_certificates: tuple[CallerCertificate, ...] = (),
                 caller_addresses: tuple[CallerAddresses, ...] = (),
                 evt_handlers: list | None = None) -> None:
        self.limits = limits
        self.tls = tls
        self.set_caller_certificates(caller_certificates)
        self.set_caller_addresses(caller_addresses)
        self._lock = threading.Lock()
        self._held: dict[int, str] = {}  # id(socket) -> remote host, for every counted connection
        self._per_host: dict[str, int] = {}
        self.throttle = _Throttle()
        super().__init__(ae, address, ae_title, contexts, None, evt_handlers=evt_handlers,
                         request_handler=_GuardedHandler)
        self.lobby = _Lobby(self)
        self._burst: list[tuple[socket.socket, Any]] = []  # accepted after the connection being processed
        self.lobby.start()

    # -- configuration that a reload changes

    def set_caller_certificates(self, bound: tuple[CallerCertificate, ...]) -> None:
        table: dict[str, list[tuple[tuple[str, str], ...]]] = {}
        for entry in bound:
            table.setdefault(entry.ae_title, []).append(entry.certificate_subject)
        self.bound_callers = table

    def set_caller_addresses(self, placed: tuple[CallerAddresses, ...]) -> None:
        table: dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {}
        for entry in placed:
            table.setdefault(entry.ae_title, []).extend(ipaddress.ip_network(n) for n in entry.networks)
        self.placed_callers = table

    # -- counting

    def counts(self) -> tuple[int, dict[str, int]]:
        """Connections held (pending and associated): in total, and per remote host."""
        with self._lock:
            return len(self._held), dict(self._per_host)

    def hold(self, sock: socket.socket, host: str) -> None:
        with self._lock:
            self._held[id(sock)] = host
            self._per_host[host] = self._per_host.get(host, 0) + 1

    def release(self, sock: socket.socket) -> None:
        """The connection is over; idempotent."""
        with self._lock:
            host = self._held.pop(id(sock), None)
            if host is None:
                return
            left = self._per_host.get(host, 1) - 1
            if left > 0:
                self._per_host[host] = left
            else:
                self._per_host.pop(host, None)

    # -- socketserver hooks

    def server_bind(self) -> None:
        super().server_bind()
        self.socket.setblocking(False)  # get_request drains a burst without blocking
        self._gc_at = time.monotonic() + self.gc_every_seconds

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept one connection, and every other one the kernel already holds (no TLS here).

        The others follow the first into the lobby (:meth:`process_request`), in the order
        they came: when room must be made, the oldest pending connection is the one closed.
        """
        first = self.socket.accept()
        for _ in range(self.request_queue_size):
            try:
                self._burst.append(self.socket.accept())
            except OSError:
                break
        return first

    def service_actions(self) -> None:
        """pynetdicom collects garbage every 60 loops of the accept loop; under a connection flood
        that is many full collections a second, holding the GIL.  Here: at most every 30 s."""
        now = time.monotonic()
        if now >= self._gc_at:
            self._gc_at = now + self.gc_every_seconds
            gc.collect()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Called by the accept loop: to the lobby, no thread, no association yet."""
        self.lobby.add(request, client_address)
        burst, self._burst = self._burst, []
        for sock, address in burst:
            self.lobby.add(sock, address)

    def hand_over(self, sock: socket.socket, address: Any, prefix: bytes) -> None:
        """The lobby is done with `sock`: pynetdicom takes it, in a thread of its own."""
        ThreadingMixIn.process_request(self, _Handover(sock, prefix), address)

    def shutdown_request(self, request: Any) -> None:
        sock = request.sock if isinstance(request, _Handover) else request
        self.release(sock)
        super().shutdown_request(sock)

    def shutdown(self) -> None:
        self.lobby.stop()
        super().shutdown()
        burst, self._burst = self._burst, []
        for sock, _ in burst:
            _close_quietly(sock)


class _Lobby(threading.Thread):
    """One thread holding every connection that has not yet sent its whole A-ASSOCIATE-RQ."""

    def __init__(self, server: GuardedServer) -> None:
        super().__init__(name="dicom-lobby", daemon=True)
        self.server = server
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self.incoming: deque[tuple[socket.socket, Any]] = deque()
        self.pending: dict[int, _Pending] = {}  # by id(socket), oldest first
        self._stopping = threading.Event()

    def add(self, sock: socket.socket, address: Any) -> None:
        self.incoming.append((sock, address))
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # the buffer is full: the lobby is awake anyway

    def stop(self) -> None:
        self._stopping.set()
        self._wake()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(5)

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                timeout = 0.5
                if self.pending:
                    timeout = max(0.0, min(timeout, next(iter(self.pending.values())).deadline - now))
                for key, _ in self.selector.select(timeout):
                    if key.data is None:
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except OSError:
                            pass
                        continue
                    self._progress(key.data)
                while self.incoming:
                    self._admit(*self.incoming.popleft())
                self._expire(time.monotonic())
        finally:
            for pending in list(self.pending.values()):
                self._close(pending)
            while self.incoming:
                sock, _ = self.incoming.popleft()
                sock.close()
            self.selector.close()
            self._wake_r.close()
            self._wake_w.close()

    # -- admission

    def _admit(self, sock: socket.socket, address: Any) -> None:
        server, limits = self.server, self.server.limits
        host = str(address[0]) if isinstance(address, tuple) else str(address)
        total, per_host = server.counts()
        over = None
        if per_host.get(host, 0) >= limits.max_connections_per_address:
            over = ("max_connections_per_address", limits.max_connections_per_address, host)
        elif total >= limits.max_connections:
            over = ("max_connections", limits.max_connections, None)
        if over is not None:
            victim = next((p for p in self.pending.values() if over[2] is None or p.host == over[2]), None)
            if victim is None:
                server.throttle.log(30, "refused", host, f"connection from {_peer(address)} refused: {over[0]} "
                                    f"({over[1]}) reached, every one of them associated")
                _close_quietly(sock)
                return
            server.throttle.log(20, "evicted", victim.host,
                                f"connection from {_peer(victim.address)} closed after "
                                f"{time.monotonic() - victim.deadline + limits.association_request_seconds:.1f} s "
                                f"without an association request: {over[0]} ({over[1]}) reached and "
                                f"{_peer(address)} is waiting")
            self._close(victim)
        tls = server.tls
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            if tls is not None:
                sock = tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            _log.info("connection from %s closed at once: %s", _peer(address), exc)
            _close_quietly(sock)
            return
        server.hold(sock, host)
        pending = _Pending(sock, address, time.monotonic() + limits.association_request_seconds, tls is not None)
        self.pending[id(sock)] = pending
        self._wait(pending, selectors.EVENT_READ)
        self._progress(pending)

    # -- one step of a pending connection

    def _wait(self, pending: _Pending, events: int) -> None:
        if pending.events == events:
            return
        if pending.events:
            self.selector.modify(pending.sock, events, pending)
        else:
            self.selector.register(pending.sock, events, pending)
        pending.events = events

    def _progress(self, pending: _Pending) -> None:
        if id(pending.sock) not in self.pending:
            return
        sock = pending.sock
        try:
            if pending.handshaking:
                assert isinstance(sock, ssl.SSLSocket)
                try:
                    sock.do_handshake()
                except ssl.SSLWantReadError:
                    self._wait(pending, selectors.EVENT_READ)
                    return
                except ssl.SSLWantWriteError:
                    self._wait(pending, selectors.EVENT_WRITE)
                    return
                pending.handshaking = False
                _log.debug("TLS from %s: %s %s", _peer(pending.address), sock.version(), sock.cipher())
            while True:
                try:
                    chunk = sock.recv(pending.need - len(pending.buffer))
                except (ssl.SSLWantReadError, BlockingIOError):
                    self._wait(pending, selectors.EVENT_READ)
                    return
                except ssl.SSLWantWriteError:
                    self._wait(pending, selectors.EVENT_WRITE)
                    return
                if not chunk:
                    _log.debug("connection from %s closed by the peer before its association request (%d bytes)",
                               _peer(pending.address), len(pending.buffer))
                    self._close(pending)
                    return
                pending.buffer += chunk
                if pending.need == 6 and len(pending.buffer) == 6:
                    if not self._header(pending):
                        return
                if len(pending.buffer) == pending.need:
                    self._ready(pending)
                    return
        except ssl.SSLError as exc:
            reason = _tls_reason(exc)
            self.server.throttle.log(30, f"tls {reason}", pending.host, f"TLS handshake with "
                                     f"{_peer(pending.address)} failed: {reason}; connection closed")
            self._close(pending)
        except OSError as exc:  # a TCP health check closing with a reset, say: every few seconds, for months
            self.server.throttle.log(20, f"failed {type(exc).__name__}", pending.host,
                                     f"connection from {_peer(pending.address)} failed before its association "
                                     f"request: {exc}")
            self._close(pending)

    def _header(self, pending: _Pending) -> bool:
        kind, length = pending.buffer[0], int.from_bytes(pending.buffer[2:6], "big")
        limit = self.server.limits.pdu_limit(kind)
        if kind != A_ASSOCIATE_RQ:
            problem = f"sent PDU type 0x{kind:02X} where an A-ASSOCIATE-RQ (0x01) was due"
        elif length > limit:
            problem = f"announced an A-ASSOCIATE-RQ of {length} bytes, more than the limit of {limit}; not read"
        else:
            pending.need = 6 + length
            return True
        self.server.throttle.log(30, "protocol", pending.host,
                                 f"connection from {_peer(pending.address)} aborted: {problem}")
        self._send_and_close(pending, _ABORT_INVALID)
        return False

    def _ready(self, pending: _Pending) -> None:
        """A whole A-ASSOCIATE-RQ: check its AE titles and a certificate-bound caller, then hand over."""
        sock = pending.sock
        for name, field, refusal in (("called", bytes(pending.buffer[10:26]), _REJECT_CALLED),
                                     ("calling", bytes(pending.buffer[26:42]), _REJECT_CALLING)):
            problem = _ae_title_problem(field)
            if problem is not None:
                self.server.throttle.log(30, "protocol", pending.host,
                                         f"association request from {_peer(pending.address)} rejected: its "
                                         f"{name} AE title {field!r} {problem}")
                self._send_and_close(pending, refusal)
                return
        calling = bytes(pending.buffer[26:42]).decode("ascii").strip()
        networks = self.server.placed_callers.get(calling)
        if networks is not None and not _within(pending.host, networks):
            self.server.throttle.log(30, f"rejected {calling}", pending.host,
                                     f"association rejected: calling={calling} from {_peer(pending.address)}: not an "
                                     "address allowed_callers binds to this AE title")
            self._send_and_close(pending, _REJECT_CALLING)
            return
        allowed = self.server.bound_callers.get(calling)
        if allowed is not None:
            cert = sock.getpeercert() if isinstance(sock, ssl.SSLSocket) else None
            subject = subject_pairs(cert["subject"]) if cert and "subject" in cert else None
            if subject not in allowed:
                shown = ", ".join(f"{k}={v}" for k, v in subject) if subject else "no certificate"
                self.server.throttle.log(30, f"rejected {calling} {shown}", pending.host,
                                         f"association rejected: calling={calling} from {_peer(pending.address)}: "
                                         f"certificate subject ({shown}) is not one bound to this AE title in "
                                         "allowed_callers")
                self._send_and_close(pending, _REJECT_CALLING)
                return
        self._forget(pending)
        try:
            sock.setblocking(True)
            sock.settimeout(self.server.limits.idle_seconds)
        except OSError:
            self.server.release(sock)
            _close_quietly(sock)
            return
        self.server.hand_over(sock, pending.address, bytes(pending.buffer))

    # -- ending

    def _expire(self, now: float) -> None:
        for pending in list(self.pending.values()):
            if pending.deadline > now:
                break  # oldest first: the rest are younger
            stage = "TLS handshake" if pending.handshaking else "association request"
            self.server.throttle.log(20, "deadline", pending.host,
                                     f"connection from {_peer(pending.address)} closed: no complete {stage} within "
                                     f"{self.server.limits.association_request_seconds:g} s "
                                     f"({len(pending.buffer)} bytes received)")
            self._close(pending)

    def _forget(self, pending: _Pending) -> None:
        self.pending.pop(id(pending.sock), None)
        if pending.events:
            try:
                self.selector.unregister(pending.sock)
            except (KeyError, ValueError):
                pass
            pending.events = 0

    def _close(self, pending: _Pending) -> None:
        self._forget(pending)
        self.server.release(pending.sock)
        _close_quietly(pending.sock)

    def _send_and_close(self, pending: _Pending, pdu: bytes) -> None:
        try:
            pending.sock.send(pdu)
        except OSError:
            pass
        self._close(pending)


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
