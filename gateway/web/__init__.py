"""The gateway's HTTP side: the console, Prometheus metrics and health probes (starlette, served by uvicorn).

Off unless ``[web]`` is configured.  Routes stay thin: they read what the
collector and the service's probe functions compute.

* the console's pages (:mod:`gateway.web.console`), when the service hands
  in a :class:`~gateway.web.console.ConsoleBackend` (``docs/console.md``);
* ``/metrics``: Prometheus text format (:mod:`gateway.metrics`);
* ``/healthz``: 200 while the process runs;
* ``/readyz``: 200 only while the receiver listens, its TLS certificate (if
  any) is valid now (neither expired nor not yet valid), the spool is writable
  and no destination has been failing for longer than ``[web]
  unready_after_seconds``; 503 with the reason otherwise.

With a token (required when the host is not a loopback address) every
request must carry ``Authorization: Bearer <token>`` or the console's session
cookie; see :mod:`gateway.web.access` for that and for cross-site requests.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gateway.config import TLS12_CIPHERS
from gateway.errors import GatewayError
from gateway.web.access import LOOPBACK_HOSTS, Access, Keys
from gateway.web.bounds import bounded_protocol

if TYPE_CHECKING:
    from gateway.web.console import ConsoleBackend

__all__ = ["make_app", "WebServer"]


def make_app(registry: CollectorRegistry, ready: Callable[[], str | None], token: str | None = None, *,
             console: ConsoleBackend | None = None, host: str = "127.0.0.1") -> Starlette:
    """The application: `ready` returns None when ready, else why not; `console` adds the console's pages.

    Without a token the server listens on the loopback address `host`, and
    only requests naming a loopback host (or `host`) are answered.
    """

    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    def readyz(request: Request) -> Response:
        reason = ready()
        if reason is None:
            return PlainTextResponse("ready\n")
        return PlainTextResponse(f"not ready: {reason}\n", status_code=503)

    keys = Keys(token)
    routes = [Route("/metrics", metrics), Route("/healthz", healthz), Route("/readyz", readyz)]
    if console is not None:
        from gateway.web.console import console_routes

        routes += console_routes(console, keys)
    allowed = None if token else LOOPBACK_HOSTS | {host}
    app = Starlette(routes=routes, middleware=[Middleware(Access, keys=keys, allowed_hosts=allowed)])
    app.state.keys = keys  # a reload sets ``keys.token`` when the token file holds a new token
    return app


def _tls_context(certificate: Path, private_key: Path | None) -> ssl.SSLContext:
    """The console's TLS: TLS 1.2 at least, AEAD suites with ephemeral keys, no compression nor renegotiation
    (BCP 195), as DICOM TLS; no client certificate asked for."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, private_key)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


class WebServer:
    """uvicorn serving `app` in a thread of its own, over HTTPS when given a certificate and its key.

    A client must send its whole request within :attr:`request_seconds` (over
    HTTPS, complete its TLS handshake within as much, then send its request
    within as much again), and at most :attr:`max_connections` are held, those
    still in their TLS handshake included (:mod:`gateway.web.bounds`), with a
    listen backlog of :attr:`backlog` (uvicorn's default, 2048, lets a burst of
    connections take that many descriptors at once): the descriptors of the
    gateway's process are the DICOM receiver's and the spool's too.
    """

    request_seconds = 10.0
    max_connections = 64
    backlog = 128  # asyncio accepts up to this many at each wake-up, each a descriptor before any is closed

    def __init__(self, app: Starlette, host: str, port: int, *, certificate: Path | None = None,
                 private_key: Path | None = None) -> None:
        tls = None if certificate is None else _tls_context(certificate, private_key)
        protocol = bounded_protocol(self.request_seconds, self.max_connections, tls)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
                                http=protocol, ws="none", backlog=self.backlog)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="web", daemon=True)
        self.host = host
        self.scheme = "http" if tls is None else "https"

    @property
    def port(self) -> int:
        """The port listened on (useful when configured as 0)."""
        for server in self._server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        raise GatewayError("the web server is not listening")

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self, timeout: float = 30.0) -> WebServer:
        self._thread.start()
        for _ in range(int(timeout / 0.02)):
            if self._server.started:
                return self
            if not self._thread.is_alive():
                break
            threading.Event().wait(0.02)
        raise GatewayError(f"the web server did not start on {self.host}")

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
