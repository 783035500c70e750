"""What one HTTP client may take of the web server: a deadline on its request, and a share of the connections.

uvicorn keeps a connection for as long as its client takes to send a
request: a client sending nothing, or a request head or body a byte at a
time, is held for ever, before any authentication (which needs the whole
head).  Each holds a file descriptor of the gateway's process, the one the
DICOM receiver, the spool and the proof record draw on too: some thousand
such clients from anywhere the console listens left modalities unable to
associate and filled the log with uvicorn's accept errors.  Over HTTPS, a
client that never finishes its TLS handshake (sending nothing, or its
ClientHello a byte at a time) is no HTTP connection yet, so it must be
counted before it becomes one.

:class:`BoundedH11Protocol` is uvicorn's HTTP/1.1 protocol with two bounds:

* a client must have sent its whole request (head and body) within
  ``request_seconds`` of connecting (over HTTPS: of completing its TLS
  handshake), or of the end of the previous response on a kept-alive
  connection; otherwise it is closed.  The time the application takes to
  answer does not count.
* at most ``max_connections`` connections are held, those still in their TLS
  handshake included; one more takes the place of the oldest one still
  waiting for its request or its handshake (an idle one cannot keep a real
  client out), or is closed at once when every held one is being served.

A connection closed for either bound is dropped at once: over TLS, a close
waits for the client to answer its closing alert, holding the descriptor up
to 30 s more.

Over HTTPS the server's protocol is :class:`TLSHandshake`: it counts the
connection from the moment it is accepted, makes it do its TLS handshake
(within ``request_seconds`` too) and hands it to :class:`BoundedH11Protocol`
once done.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Collection
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.logs import get_logger

__all__ = ["BoundedH11Protocol", "TLSHandshake", "bounded_protocol"]

_log = get_logger("web")
_THROTTLE_SECONDS = 10.0
_said: dict[tuple[str, str], tuple[float, int]] = {}  # (kind, client host) -> (last said, left unsaid since)


def _say(level: int, kind: str, client: Any, message: str) -> None:
    """One line per kind and client host every few seconds; the others are counted into the next one.

    Called from the server's event loop only (one thread).
    """
    host = str(client[0]) if isinstance(client, tuple) and client else "?"
    now = time.monotonic()
    last, hidden = _said.get((kind, host), (-1e9, 0))
    if now - last < _THROTTLE_SECONDS:
        _said[(kind, host)] = (last, hidden + 1)
        return
    _said[(kind, host)] = (now, 0)
    if len(_said) > 4096:
        for key in [k for k, v in _said.items() if now - v[0] >= _THROTTLE_SECONDS]:
            del _said[key]
    if hidden:
        message += f" ({hidden} more like it from {host} since the last line)"
    _log.log(level, message)


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request and a bound on connections (see the module)."""

    request_seconds = 10.0
    max_connections = 64
    handshakes: set[TLSHandshake] = set()  # of this server, still in their TLS handshake (one set per server)
    awaited = "a whole request"

    _deadline: asyncio.TimerHandle | None = None
    _waiting_since = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._waiting_since = self.loop.time()
        self._arm()
        _make_room(self, self.connections, self.handshakes, self.max_connections)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        self._waiting_since = self.loop.time()  # a kept-alive connection: the next request has its own time
        self._arm()
        super().on_response_complete()

    # -- the deadline

    def waiting(self) -> bool:
        """True while the client has not sent its whole request (nothing, part of the head, part of the body)."""
        return self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing()

    def evict(self) -> None:
        """Drops the connection at once (see the module)."""
        self.transport.abort()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_at(self._waiting_since + self.request_seconds, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if not self.waiting():  # the request is in: the application is answering, however long it takes
            return
        _say(20, "deadline", self.client,
             f"web connection from {_client(self.client)} closed: no whole request within {self.request_seconds:g} s")
        self.evict()


class TLSHandshake(asyncio.Protocol):
    """A connection to the HTTPS port while its TLS handshake lasts, then handed to :attr:`http` (see the module).

    asyncio's ``start_tls`` may read the first bytes of the request before it
    returns the TLS transport: they come here, and are passed on with it.
    """

    http: type[BoundedH11Protocol]
    context: ssl.SSLContext
    awaited = "a finished TLS handshake"

    def __init__(self, **uvicorn: Any) -> None:
        self._uvicorn = uvicorn  # what uvicorn gives its HTTP protocol: config, server_state, app_state
        self._early: list[bytes] = []
        self._eof = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.client = transport.get_extra_info("peername")
        transport.pause_reading()  # the ClientHello is start_tls's to read
        loop = asyncio.get_running_loop()
        self._waiting_since = loop.time()
        self.http.handshakes.add(self)
        self._handshake = loop.create_task(self._shake(loop))
        _make_room(self, self._uvicorn["server_state"].connections, self.http.handshakes, self.http.max_connections)

    async def _shake(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            tls = await loop.start_tls(self.transport, self, self.context, server_side=True,
                                       ssl_handshake_timeout=self.http.request_seconds,
                                       ssl_shutdown_timeout=self.http.request_seconds)
        except OSError:  # a failed handshake, one not done in time, a client gone: start_tls has closed it
            return
        finally:
            self.http.handshakes.discard(self)
        if tls is None:  # the connection was lost as the handshake ended
            return
        http = self.http(**self._uvicorn)
        tls.set_protocol(http)
        http.connection_made(tls)
        if tls.is_closing():  # refused there: its request is not to be served
            return
        for data in self._early:
            http.data_received(data)
        if self._eof:
            http.eof_received()

    def data_received(self, data: bytes) -> None:
        self._early.append(data)

    def eof_received(self) -> None:
        self._eof = True

    def waiting(self) -> bool:
        return not self.transport.is_closing()

    def evict(self) -> None:
        self.http.handshakes.discard(self)
        self._handshake.cancel()
        self.transport.abort()


def _make_room(newcomer: BoundedH11Protocol | TLSHandshake, connections: Collection[Any],
               handshakes: Collection[TLSHandshake], max_connections: int) -> None:
    """Past ``max_connections``, closes the oldest connection still waiting, or else `newcomer`."""
    if len(connections) + len(handshakes) <= max_connections:
        return
    waiting = [c for c in (*connections, *handshakes)
               if c is not newcomer and isinstance(c, (BoundedH11Protocol, TLSHandshake)) and c.waiting()]
    victim = min(waiting, key=lambda c: c._waiting_since, default=None)
    now = asyncio.get_running_loop().time()
    if victim is None:
        _say(30, "refused", newcomer.client, f"web connection from {_client(newcomer.client)} refused: "
             f"{max_connections} connections held, every one being served")
        newcomer.evict()
        return
    _say(20, "evicted", victim.client, f"web connection from {_client(victim.client)} closed after "
         f"{now - victim._waiting_since:.1f} s without {victim.awaited}: {max_connections} "
         f"connections held and {_client(newcomer.client)} is waiting")
    victim.evict()


def _client(address: Any) -> str:
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) and len(address) >= 2 else "?"


def bounded_protocol(request_seconds: float, max_connections: int,
                     tls: ssl.SSLContext | None = None) -> type[asyncio.Protocol]:
    """The protocol class for one server, with its bounds; over TLS with `tls`."""
    http = type("BoundedH11Protocol", (BoundedH11Protocol,),
                {"request_seconds": request_seconds, "max_connections": max_connections, "handshakes": set()})
    if tls is None:
        return http
    return type("TLSHandshake", (TLSHandshake,), {"http": http, "context": tls})
