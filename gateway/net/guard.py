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
  aborted unread.  An AE title bound to a certificate subject
  (``allowed_callers``) is checked here against the verified certificate.
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
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any

from pynetdicom.transport import (
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)

from gateway.config import CallerCertificate, ServerConfig, subject_pairs
from gateway.logs import get_logger

__all__ = ["A_ASSOCIATE_RQ", "COMMAND_SET_LIMIT", "CONTROL_PDU_LIMIT", "P_DATA_TF", "GuardedServer", "Limits"]

_log = get_logger("scp")

A_ASSOCIATE_RQ = 0x01
P_DATA_TF = 0x04
CONTROL_PDU_LIMIT = 256 * 1024
"""Largest PDU other than P-DATA-TF accepted whatever ``max_pdu`` says (an A-ASSOCIATE-RQ
proposing 128 contexts with many transfer syntaxes each can reach some 100 KB)."""
COMMAND_SET_LIMIT = 64 * 1024
"""Largest DIMSE command set accepted, over all its fragments.  pynetdicom keeps a command's
fragments in memory until the last one; a real command set is a few hundred bytes."""

# A-ABORT, source 2 (service provider), reason 6 (invalid PDU parameter value): PS3.8 9.3.8.
_ABORT_INVALID = bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6))
# A-ASSOCIATE-RJ rejected-permanent, service user, calling AE title not recognized: PS3.8 9.3.4.
_REJECT_CALLING = bytes((0x03, 0, 0, 0, 0, 4, 0, 1, 1, 3))


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
    if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "UNSUPPORTED_PROTOCOL",
                  "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
        return f"the peer does not speak TLS (plain DICOM to the TLS port?) [{reason}]"
    if reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_REQUIRED"):
        return "the peer sent no certificate and one is required"
    if "CERTIFICATE" in reason or "UNKNOWN_CA" in reason:
        return f"certificate refused [{reason}]"
    return f"{reason or type(exc).__name__}: {exc}"


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
    _command_bytes: int  # of the command set being received, so far
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
        sock._command_bytes = 0
        sock._limits = limits
        sock._on_close = on_close
        sock._peer = peer
        sock._raw = sock.socket

    @property
    def ready(self) -> bool:
        if self._prefix and self.socket is not None:
            return True
        return bool(AssociationSocket.ready.fget(self))  # type: ignore[attr-defined]

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
            if self._p_data and whole and self._left == 0 and not self._count_commands(data):
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

    def _count_commands(self, body: bytearray) -> bool:
        """Add the command fragments of a whole P-DATA-TF body (PS3.8 9.3.5.1, E.2); False when too many.

        pynetdicom reads a PDU's body in one call, so a whole body is what
        arrives here; malformed items are left to pynetdicom to refuse.
        """
        offset = 0
        while offset + 6 <= len(body):
            length = int.from_bytes(body[offset:offset + 4], "big")
            control = body[offset + 5]
            if control & 0x01:  # a command fragment
                self._command_bytes += max(length - 2, 0)
                if self._command_bytes > COMMAND_SET_LIMIT:
                    _log.warning("association from %s aborted: a command set of more than %d bytes "
                                 "(fragments never marked last); not kept", self._peer, COMMAND_SET_LIMIT)
                    return False
                if control & 0x02:  # its last fragment
                    self._command_bytes = 0
            offset += 4 + length
        return True

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


class _GuardedHandler(RequestHandler):
    """pynetdicom's request handler, given a connection the lobby let through."""

    request: Any

    def setup(self) -> None:
        handover = self.request
        self.prefix = handover.prefix
        self.request = handover.sock

    def _create_association(self):  # type: ignore[no-untyped-def]
        assoc = super()._create_association()
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

    def __init__(self, ae: Any, address: tuple[str, int], ae_title: str, contexts: list, *,
                 limits: Limits, tls: ssl.SSLContext | None = None,
                 caller_certificates: tuple[CallerCertificate, ...] = (),
                 evt_handlers: list | None = None) -> None:
        self.limits = limits
        self.tls = tls
        self.set_caller_certificates(caller_certificates)
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
        except OSError as exc:
            _log.info("connection from %s failed before its association request: %s", _peer(pending.address), exc)
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
        """A whole A-ASSOCIATE-RQ: check a certificate-bound caller, then hand over to pynetdicom."""
        sock = pending.sock
        calling = bytes(pending.buffer[26:42]).decode("ascii", "replace").strip()
        allowed = self.server.bound_callers.get(calling)
        if allowed is not None:
            cert = sock.getpeercert() if isinstance(sock, ssl.SSLSocket) else None
            subject = subject_pairs(cert["subject"]) if cert and "subject" in cert else None
            if subject not in allowed:
                shown = ", ".join(f"{k}={v}" for k, v in subject) if subject else "no certificate"
                _log.warning("association rejected: calling=%s from %s: certificate subject (%s) is not one "
                             "bound to this AE title in allowed_callers", calling, _peer(pending.address), shown)
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
