"""Under a service manager (systemd ``Type=notify``) ``serve`` says when it is ready, reloading and stopping."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.notify import notify, reloading
from tests.conftest import REPO, free_port, start_serve, stop_process
from tests.test_reload import _write

SHIPPED_COMMAND = "/opt/dicom-gateway/bin/dicom-gateway"


class Manager:
    """The service manager's end: a datagram socket named in ``$NOTIFY_SOCKET``."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)

    def next(self, timeout: float) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def manager(tmp_path: Path, monkeypatch) -> Manager:
    path = str(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    found = Manager(path)
    yield found
    found.close()


def test_serve_tells_the_manager_ready_reloading_and_stopping(tmp_path: Path, manager: Manager) -> None:
    toml = tmp_path / "gateway.toml"
    port = free_port()
    _write(toml, port)
    log = tmp_path / "serve.log"
    process = start_serve(toml, log)
    try:
        ready = manager.next(180)  # after the kernels are compiled and the port listens
        assert ready["READY"] == "1" and f"127.0.0.1:{port}" in ready["STATUS"], ready
        assert int(ready["MAINPID"]) == process.pid
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # READY came once it listens, not before

        _write(toml, port, second=True)
        process.send_signal(signal.SIGHUP)
        begins = manager.next(60)
        assert begins["RELOADING"] == "1" and int(begins["MONOTONIC_USEC"]) > 0, begins
        done = manager.next(60)
        assert done["READY"] == "1" and "not reloaded" not in done["STATUS"], done

        toml.write_text(toml.read_text().replace(f"port = {port}", f"port = {free_port()}"))
        process.send_signal(signal.SIGHUP)
        assert manager.next(60)["RELOADING"] == "1"
        refused = manager.next(60)
        assert refused["READY"] == "1" and "not reloaded" in refused["STATUS"] and "server.port" in refused["STATUS"]

        process.send_signal(signal.SIGTERM)
        assert manager.next(60)["STOPPING"] == "1"
        assert process.wait(60) == 0
    finally:
        stop_process(process)


def test_an_abstract_socket_is_reached(monkeypatch) -> None:
    name = f"dicom-gateway-test-{free_port()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert reloading("a status\nwith a newline")
        fields = sock.recv(4096).decode().splitlines()
    assert fields[0] == "RELOADING=1" and fields[1].startswith("MONOTONIC_USEC=")
    assert fields[2] == "STATUS=a status with a newline"


@pytest.mark.parametrize("value", [None, "", "relative/path", "/nonexistent-folder/notify.sock"])
def test_without_a_manager_nothing_is_sent_and_nothing_fails(monkeypatch, value) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert notify("READY=1") is False


def test_the_shipped_unit_file_is_valid(tmp_path: Path) -> None:
    """``config/dicom-gateway.service`` as systemd reads it, with its command where this install put it:
    no unknown key, no bad value, and the commands it runs exist."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    command = Path(sys.executable).parent / "dicom-gateway"
    assert command.exists(), "the package's console command"
    text = (REPO / "config" / "dicom-gateway.service").read_text()
    assert "Type=notify" in text and "ExecReload=" in text and text.count(SHIPPED_COMMAND) == 1
    assert "ExecStartPre" not in text, "systemd restarts a unit whose pre-check fails, RestartPreventExitStatus or not"
    unit = tmp_path / "dicom-gateway.service"
    unit.write_text(text.replace(SHIPPED_COMMAND, str(command)))
    result = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "dicom-gateway.service" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_serve_stops_with_status_1_when_a_part_of_the_gateway_has_stopped(tmp_path: Path, monkeypatch,
                                                                         manager: Manager) -> None:
    """A forwarder thread that has ended leaves its destination's images waiting for ever: serve stops cleanly
    and exits 1, so that systemd (Restart=on-failure) or any supervisor starts it again."""
    import threading

    from gateway import cli
    from gateway.service import Gateway
    from tests.conftest import wait_until

    toml = tmp_path / "gateway.toml"
    _write(toml, free_port())
    started: list[Gateway] = []
    real_start = Gateway.start

    def start(self: Gateway) -> Gateway:
        started.append(self)
        return real_start(self)

    monkeypatch.setattr(Gateway, "start", start)

    def break_a_forwarder() -> None:
        assert wait_until(lambda: started and started[0].server is not None, timeout=120)
        gateway = started[0]
        assert gateway.stalled() is None
        (forwarder,) = gateway.forwarders["a"]
        forwarder.stop()
        forwarder.join(30)

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    breaker = threading.Thread(target=break_a_forwarder, daemon=True)
    breaker.start()
    try:
        assert cli.main(["serve", "--config", str(toml)]) == 1
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert manager.next(5)["READY"] == "1"
    stopping = manager.next(5)
    assert stopping["STOPPING"] == "1" and "destination a has stopped" in stopping["STATUS"], stopping
    assert started[0].server is not None and started[0]._stopped.is_set()


def test_each_part_that_stops_is_named(tmp_path: Path, gateway_factory) -> None:
    from tests.conftest import build_config

    gateway = gateway_factory(build_config(tmp_path, web={"port": free_port()}))
    assert gateway.stalled() is None
    gateway.server._BaseServer__shutdown_request = True  # its accept loop ends, as if it had failed
    gateway.server.accept_thread.join(10)
    assert gateway.stalled() == "the receiver's accept thread has stopped"
