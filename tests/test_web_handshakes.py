"""The HTTPS console against clients that connect and never finish their TLS handshake: each held a
descriptor of the gateway's process, uncounted by the console's bound on connections, for as long as the
handshake deadline (10 s), so a few thousand of them took the process past the descriptors the DICOM
receiver needs.  Now they count against that bound as the HTTP connections do."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gateway.web import WebServer, bounds, make_app
from tests.conftest import free_port, wait_until
from tests.test_tls import pki  # noqa: F401 - the session's test CA

BOUND = 8
ATTACKERS = 60


class SmallConsole(WebServer):
    max_connections = BOUND


def _held(port: int) -> int:
    """Sockets this process holds on the server side of `port`: its listening one and those it accepted."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    held = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            held += os.readlink(f"/proc/self/fd/{fd}") in inodes
        except OSError:  # closed since listed
            pass
    return held


def _closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(4096) == b""
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    except OSError:
        return True


def _connect(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=3) for _ in range(count)]


def _serve(app: Starlette, pki: Path) -> SmallConsole:  # noqa: F811
    if not Path("/proc/net/tcp").exists():
        pytest.skip("counts the server's sockets in /proc (Linux)")
    return SmallConsole(app, "127.0.0.1", free_port(), certificate=pki / "gateway.pem",
                        private_key=pki / "gateway.key").start()


@pytest.fixture
def console(pki: Path, monkeypatch) -> Iterator[int]:  # noqa: F811
    monkeypatch.setattr(bounds, "_said", {})  # log lines said by earlier tests do not hold these back
    server = _serve(make_app(CollectorRegistry(), lambda: None), pki)
    yield server.port
    server.stop()


@pytest.fixture
def trust(pki: Path) -> ssl.SSLContext:  # noqa: F811
    return ssl.create_default_context(cafile=str(pki / "ca.pem"))


def test_connections_that_never_finish_their_handshake_are_bounded_and_a_real_client_is_served(
        console: int, trust: ssl.SSLContext, caplog) -> None:
    """Before, all of them were held until the handshake deadline, 60 + 60 descriptors for a bound of 8."""
    started = time.monotonic()
    silent: list[socket.socket] = []
    hello: list[socket.socket] = []
    with caplog.at_level(logging.INFO, logger="gateway.web"):
        try:
            silent += _connect(console, ATTACKERS)
            hello += _connect(console, ATTACKERS)
            for sock in hello:
                sock.sendall(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello's record header and its first byte
            assert wait_until(lambda: sum(not _closed(sock) for sock in silent + hello) <= BOUND, timeout=3)
            assert wait_until(lambda: _held(console) <= 1 + BOUND, timeout=3), _held(console)
            answer = httpx.get(f"https://127.0.0.1:{console}/healthz", verify=trust, timeout=3)
            assert answer.status_code == 200 and answer.text == "ok\n"
        finally:
            for sock in silent + hello:
                sock.close()
    assert time.monotonic() - started < 8
    said = [r.getMessage() for r in caplog.records]
    assert any("without a finished TLS handshake: 8 connections held and 127.0.0.1:" in m for m in said), said
    assert len(said) <= 3  # one line per kind and address every 10 s, not one per connection


def test_handshakes_and_connections_waiting_for_their_request_share_the_bound(console: int,
                                                                            trust: ssl.SSLContext) -> None:
    """A connection past its handshake but silent since is the oldest waiting one: it makes room first."""
    idle = [trust.wrap_socket(sock, server_hostname="127.0.0.1") for sock in _connect(console, BOUND)]
    silent: list[socket.socket] = []
    try:
        assert wait_until(lambda: _held(console) == 1 + BOUND, timeout=3)
        silent = _connect(console, ATTACKERS)
        assert wait_until(lambda: _held(console) <= 1 + BOUND, timeout=3), _held(console)
        assert wait_until(lambda: all(_closed(sock) for sock in idle), timeout=3)
        answer = httpx.get(f"https://127.0.0.1:{console}/healthz", verify=trust, timeout=3)
        assert answer.status_code == 200
    finally:
        for sock in idle + silent:
            sock.close()


def test_a_new_handshake_is_refused_at_once_while_every_held_connection_is_being_served(
        pki: Path, trust: ssl.SSLContext, monkeypatch, caplog) -> None:  # noqa: F811
    """Nothing waits to be evicted then: the newcomer is closed before its handshake, answers still go out."""
    monkeypatch.setattr(bounds, "_said", {})
    serving = 0
    release = threading.Event()

    async def slow(request: Request) -> PlainTextResponse:
        nonlocal serving
        serving += 1
        while not release.is_set():
            await asyncio.sleep(0.02)
        return PlainTextResponse("done\n")

    server = _serve(Starlette(routes=[Route("/slow", slow)]), pki)
    answers: list[int] = []

    def ask() -> None:
        answers.append(httpx.get(f"https://127.0.0.1:{server.port}/slow", verify=trust, timeout=5).status_code)

    askers = [threading.Thread(target=ask) for _ in range(BOUND)]
    silent: list[socket.socket] = []
    try:
        for asker in askers:
            asker.start()
        assert wait_until(lambda: serving == BOUND, timeout=3)
        with caplog.at_level(logging.INFO, logger="gateway.web"):
            silent = _connect(server.port, ATTACKERS)
            assert wait_until(lambda: all(_closed(sock) for sock in silent), timeout=3)
            assert _held(server.port) <= 1 + BOUND
    finally:
        release.set()
        for asker in askers:
            asker.join(5)
        for sock in silent:
            sock.close()
        server.stop()
    assert answers == [200] * BOUND
    assert any("refused: 8 connections held, every one being served" in r.getMessage() for r in caplog.records)


class QuickConsole(SmallConsole):
    request_seconds = 0.5


def test_a_client_that_never_answers_the_closing_alert_is_dropped_after_the_deadline(
        pki: Path, trust: ssl.SSLContext, monkeypatch) -> None:  # noqa: F811
    """asyncio waits 30 s for a client's answer to TLS's closing alert by default: a served client that
    never sends it held its connection, counted in the bound, for that long."""
    monkeypatch.setattr(bounds, "_said", {})
    if not Path("/proc/net/tcp").exists():
        pytest.skip("counts the server's sockets in /proc (Linux)")
    server = QuickConsole(make_app(CollectorRegistry(), lambda: None), "127.0.0.1", free_port(),
                          certificate=pki / "gateway.pem", private_key=pki / "gateway.key").start()
    client = trust.wrap_socket(socket.create_connection(("127.0.0.1", server.port), timeout=3),
                               server_hostname="127.0.0.1")
    try:
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert b" 200 " in client.recv(4096)
        # The answer is in, the server has sent its closing alert; the client never answers it.
        assert wait_until(lambda: _held(server.port) == 1, timeout=5), _held(server.port)
    finally:
        client.close()
        server.stop()
