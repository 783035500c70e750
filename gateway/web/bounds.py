"""What one HTTP client may take of the web server: a deadline on its request, and a share of the connections.

uvicorn keeps a connection for as long as its client takes to send a
request: a client sending nothing, or a request head or body a byte at a
time, is held for ever, before any authentication (which needs the whole
head).  Each holds a file descriptor of the gateway's process, the one the
DICOM receiver, the spool and the proof record draw on too: some thousand
such clients from anywhere the console listens left modalities unable to
associate and filled the log with uvicorn's accept errors.

:class:`BoundedH11Protocol` is uvicorn's HTTP/1.1 protocol with two bounds:

* a client must have sent its whole request (head and body) within
  ``request_seconds`` of connecting, or of the end of the previous response
  on a kept-alive connection; otherwise it is closed.  The time the
  application takes to answer does not count.
* at most ``max_connections`` connections are held; one more takes the place
  of the oldest one still waiting for its request (an idle one cannot keep a
  real client out), or is closed at once when every held one is being served.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.logs import get_logger

__all__ = ["BoundedH11Protocol", "bounded_protocol"]

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

    _deadline: asyncio.TimerHandle | None = None
    _waiting_since = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._waiting_since = self.loop.time()
        self._arm()
        if len(self.connections) > self.max_connections:
            self._make_room()

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
        self.transport.close()

    # -- the bound on connections

    def _make_room(self) -> None:
        waiting = [c for c in self.connections if c is not self and isinstance(c, BoundedH11Protocol) and c.waiting()]
        victim = min(waiting, key=lambda c: c._waiting_since, default=None)
        if victim is None:
            _say(30, "refused", self.client, f"web connection from {_client(self.client)} refused: "
                 f"{self.max_connections} connections held, every one being served")
            self.transport.close()
            return
        _say(20, "evicted", victim.client, f"web connection from {_client(victim.client)} closed after "
             f"{self.loop.time() - victim._waiting_since:.1f} s without a whole request: {self.max_connections} "
             f"connections held and {_client(self.client)} is waiting")
        victim.transport.close()


def _client(address: Any) -> str:
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) and len(address) >= 2 else "?"


def bounded_protocol(request_seconds: float, max_connections: int) -> type[BoundedH11Protocol]:
    """The protocol class for one server, with its bounds."""
    return type("BoundedH11Protocol", (BoundedH11Protocol,),
                {"request_seconds": request_seconds, "max_connections": max_connections})
