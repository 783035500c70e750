"""The console's HTTP server against clients that never finish asking: they must not hold it, nor the
descriptors the DICOM receiver shares with it, for as long as they like."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from gateway.web import WebServer
from tests.conftest import build_config, free_port, wait_until
from tests.test_console import request

TOKEN = "s3cret-token"


def _closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(4096) == b"" or True  # an answer (408, 400) then the close counts too
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest.fixture
def console(tmp_path: Path, gateway_factory, monkeypatch) -> int:
    monkeypatch.setattr(WebServer, "request_seconds", 1.0, raising=False)
    monkeypatch.setattr(WebServer, "max_connections", 8, raising=False)
    (tmp_path / "web.token").write_text(TOKEN + "\n")
    gateway = gateway_factory(build_config(tmp_path, web={"port": free_port(), "token_file": "web.token"}))
    return gateway.web.port


def test_a_client_that_never_finishes_its_request_is_closed_at_the_deadline(console: int) -> None:
    """Before, a silent connection or one sending its request head or body a byte at a time was held for
    ever, unauthenticated (authentication needs the whole head)."""
    silent = socket.create_connection(("127.0.0.1", console))
    head = socket.create_connection(("127.0.0.1", console))
    head.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    body = socket.create_connection(("127.0.0.1", console))
    body.sendall(b"POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + TOKEN.encode()
                 + b"\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ncsrf=")
    started = time.monotonic()
    try:
        assert wait_until(lambda: all(_closed(s) for s in (silent, head, body)), timeout=5)
        assert time.monotonic() - started < 4
    finally:
        for sock in (silent, head, body):
            sock.close()
    assert request(console, "GET", "/healthz", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200


def test_idle_connections_cannot_keep_a_real_client_out(console: int) -> None:
    """Connections are bounded; a new one takes the place of the oldest still waiting for its request."""
    idle = [socket.create_connection(("127.0.0.1", console)) for _ in range(30)]
    try:
        for sock in idle[:10]:
            sock.sendall(b"GET / HTTP/1.1\r\n")
        started = time.monotonic()
        status, _, _ = request(console, "GET", "/healthz", headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and time.monotonic() - started < 1
        assert sum(not _closed(sock) for sock in idle) <= 8
    finally:
        for sock in idle:
            sock.close()


def test_a_page_that_takes_its_time_is_not_cut_off(console: int, monkeypatch) -> None:
    """The deadline is for the client's request, not for the answer."""
    import gateway.web.console as pages

    slow_totals = pages.ProofRecord.totals

    def totals(self):  # type: ignore[no-untyped-def]
        time.sleep(1.5)
        return slow_totals(self)

    monkeypatch.setattr(pages.ProofRecord, "totals", totals)
    status, _, html = request(console, "GET", "/", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and "</html>" in html


def test_guessing_the_token_at_the_login_form_is_slowed_to_a_few_tries_a_minute(tmp_path: Path, gateway_factory,
                                                                                caplog) -> None:
    """Before, one connection could try some 1,300 tokens a second, each a log line."""
    import logging

    from tests.test_console import Page

    (tmp_path / "web.token").write_text(TOKEN + "\n")
    port = gateway_factory(build_config(tmp_path, web={"port": free_port(), "token_file": "web.token"})).web.port
    csrf = Page(request(port, "GET", "/login")[2]).field("csrf")
    with caplog.at_level(logging.INFO, logger="gateway"):
        statuses = [request(port, "POST", "/login", {"csrf": csrf, "token": f"guess{n}"})[0] for n in range(40)]
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}, statuses
    assert request(port, "POST", "/login", {"csrf": csrf, "token": TOKEN})[0] == 429  # not even compared
    assert len([r for r in caplog.records if "login refused" in r.getMessage()]) <= 5
    # scripts with the bearer token are not concerned
    assert request(port, "GET", "/healthz", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200


def test_a_token_file_other_users_can_read_is_said_at_start_reload_and_check_config(tmp_path: Path,
                                                                                   gateway_factory, caplog,
                                                                                   capsys) -> None:
    """docs/console.md asks for a token file the gateway alone reads; one every user of the machine could read
    (0644, what a plain `echo token > web.token` makes) was taken without a word, unlike a private key."""
    import logging

    from gateway.cli import main
    from gateway.config import load_config
    from tests.test_console import request

    token = tmp_path / "web.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o644)
    toml = tmp_path / "gateway.toml"
    toml.write_text(f'[server]\nport = {free_port()}\n[spool]\ndirectory = "spool"\n[compression]\nprocesses = 0\n'
                    f'[web]\nport = {free_port()}\ntoken_file = "web.token"\n'
                    '[[destinations]]\nname = "local"\nkind = "folder"\npath = "archive"\n')

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and r.getMessage().startswith("web.token_file: ")]

    with caplog.at_level(logging.INFO, logger="gateway"):
        gateway = gateway_factory(load_config(toml))
        assert said() == [f"web.token_file: {token} has mode 0644: other users of this machine can read it; make "
                          "it readable by the gateway's user only (chmod 600)"], said()
        caplog.clear()
        assert gateway.reload() is None  # said, not refused: as for a private key
        assert len(said()) == 1
        caplog.clear()
        assert main(["check-config", str(toml)]) == 0
        assert len(said()) == 1
        caplog.clear()
        token.chmod(0o640)  # a group of its own is the operator's choice
        assert gateway.reload() is None and main(["check-config", str(toml)]) == 0
        assert said() == []
    assert request(gateway.web.port, "GET", "/healthz", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
