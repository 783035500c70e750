"""The console's HTTP server against clients that never finish asking: they must not hold it, nor the
descriptors the DICOM receiver shares with it, for as long as they like; its token file, and HTTPS."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from gateway.web import WebServer
from tests.conftest import build_config, free_port, wait_until
from tests.test_console import request
from tests.test_tls import pki  # noqa: F401 - the session's test CA

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


def _token_config(tmp_path: Path, mode: int) -> tuple[Path, Path]:
    """A token file of `mode` and a configuration naming it, for a console on a free port."""
    token = tmp_path / "web.token"
    token.write_text(TOKEN + "\n")
    token.chmod(mode)
    toml = tmp_path / "gateway.toml"
    toml.write_text(f'[server]\nport = {free_port()}\n[spool]\ndirectory = "spool"\n[compression]\nprocesses = 0\n'
                    f'[web]\nport = {free_port()}\ntoken_file = "web.token"\n'
                    '[[destinations]]\nname = "local"\nkind = "folder"\npath = "archive"\n')
    return token, toml


def test_a_token_file_other_users_can_read_is_said_at_start_reload_and_check_config(tmp_path: Path,
                                                                                   gateway_factory, caplog,
                                                                                   capsys) -> None:
    """docs/console.md asks for a token file the gateway alone reads; one every user of the machine could read
    (0644, what a plain `echo token > web.token` makes) was taken without a word, unlike a private key."""
    import logging

    from gateway.cli import main
    from gateway.config import load_config
    from tests.test_console import request

    token, toml = _token_config(tmp_path, 0o644)

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


def _https_console(pki: Path, tmp_path: Path, gateway_factory) -> int:  # noqa: F811
    (tmp_path / "web.token").write_text(TOKEN + "\n")
    (tmp_path / "web.token").chmod(0o600)
    web = {"host": "127.0.0.1", "port": free_port(), "token_file": "web.token",
           "certificate": str(pki / "gateway.pem"), "private_key": str(pki / "gateway.key")}
    return gateway_factory(build_config(tmp_path, web=web)).web.port


def test_the_console_is_served_over_https_with_a_secure_session_cookie(pki: Path, tmp_path: Path,  # noqa: F811
                                                                       gateway_factory, monkeypatch) -> None:
    """Without TLS, a console on a hospital network had its token and session cookie cross it in clear."""
    import ssl

    import httpx

    from tests.test_console import Page
    from tests.test_tls_review import _client

    monkeypatch.setattr(WebServer, "request_seconds", 1.0, raising=False)
    port = _https_console(pki, tmp_path, gateway_factory)
    base = f"https://127.0.0.1:{port}"
    trust = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with httpx.Client(base_url=base, verify=trust, timeout=10) as browser:
        page = browser.get("/login")
        assert page.status_code == 200 and page.url.scheme == "https"
        logged_in = browser.post("/login", data={"csrf": Page(page.text).field("csrf"), "token": TOKEN},
                                 headers={"Origin": base})
        assert logged_in.status_code == 303, logged_in.text
        cookie = logged_in.headers["set-cookie"].lower()
        assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie, cookie
        assert browser.get("/").status_code == 200
        assert browser.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    # TLS 1.2 at least, as on the DICOM port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, OSError)):
            _client(pki, version=ssl.TLSVersion.TLSv1_1).wrap_socket(raw, server_hostname="localhost")
    # plain HTTP to the HTTPS port gets nothing of the console
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).raise_for_status()
    # a client that connects and never starts its handshake is closed at the request deadline, not after 60 s
    silent = socket.create_connection(("127.0.0.1", port))
    try:
        started = time.monotonic()
        assert wait_until(lambda: _closed(silent), timeout=10)
        assert time.monotonic() - started < 5
    finally:
        silent.close()


def test_the_console_certificate_is_listed_and_its_key_checked(pki: Path, tmp_path: Path,  # noqa: F811
                                                               gateway_factory) -> None:
    import ssl

    import httpx

    port = _https_console(pki, tmp_path, gateway_factory)
    trust = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    metrics = httpx.get(f"https://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"},
                        verify=trust, timeout=10).text
    assert 'subject="gateway",use="web"' in metrics


def _log_in(port: int) -> tuple[str, dict[str, str]]:
    """(CSRF token, headers carrying a new session's cookie)."""
    from tests.test_console import Page

    csrf = Page(request(port, "GET", "/login")[2]).field("csrf")
    status, headers, _ = request(port, "POST", "/login", {"csrf": csrf, "token": TOKEN})
    assert status == 303, status
    return csrf, {"Cookie": headers["set-cookie"].split(";")[0]}


def test_a_copied_session_cookie_stops_working_after_logout(tmp_path: Path, gateway_factory) -> None:
    """The cookie was one value per token: logging out only cleared the browser's copy, and a copy taken from
    it (a shared machine, a proxy's log) kept the console open until the token changed."""
    (tmp_path / "web.token").write_text(TOKEN + "\n")
    port = gateway_factory(build_config(tmp_path, web={"port": free_port(), "token_file": "web.token"})).web.port
    csrf, session = _log_in(port)
    _, other = _log_in(port)
    assert session != other, "each login is a session of its own"
    copied = dict(session)
    assert request(port, "GET", "/", headers=copied)[0] == 200
    status, headers, _ = request(port, "POST", "/logout", {"csrf": csrf}, headers=session)
    assert status == 303 and "max-age=0" in headers["set-cookie"].lower()
    status, headers, _ = request(port, "GET", "/", headers=copied)
    assert status == 303 and headers["location"] == "/login"
    assert request(port, "GET", "/metrics", headers=copied)[0] == 401
    assert request(port, "POST", "/reload", {"csrf": csrf}, headers=copied)[0] == 401
    assert request(port, "GET", "/", headers=other)[0] == 200, "another session goes on"


def test_sessions_end_when_the_token_changes_on_reload_and_are_bounded(tmp_path: Path, gateway_factory,
                                                                      monkeypatch) -> None:
    from gateway.config import load_config
    from gateway.web import access

    token, toml = _token_config(tmp_path, 0o600)
    gateway = gateway_factory(load_config(toml))
    port = gateway.web.port
    _, session = _log_in(port)
    assert gateway.reload() is None  # the same token: the session goes on
    assert request(port, "GET", "/", headers=session)[0] == 200
    token.write_text("n3w-token\n")
    assert gateway.reload() is None
    assert request(port, "GET", "/", headers=session)[0] == 303
    assert request(port, "GET", "/healthz", headers={"Authorization": "Bearer n3w-token"})[0] == 200

    token.write_text(TOKEN + "\n")
    assert gateway.reload() is None
    monkeypatch.setattr(access, "MAX_SESSIONS", 3)
    first = _log_in(port)[1]
    later = [_log_in(port)[1] for _ in range(3)]
    assert gateway._web_keys.sessions == 3
    assert request(port, "GET", "/", headers=first)[0] == 303, "the oldest ended"
    assert all(request(port, "GET", "/", headers=h)[0] == 200 for h in later)
    monkeypatch.setattr(access, "SESSION_SECONDS", 0.5)
    short = _log_in(port)[1]
    assert request(port, "GET", "/", headers=short)[0] == 200
    time.sleep(0.7)
    assert request(port, "GET", "/", headers=short)[0] == 303, "expired"
