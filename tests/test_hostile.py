"""Hostile and careless peers on loopback: raw sockets against the receiver's limits.

Each test runs a gateway in this process with small limits and checks, in a
few seconds, that what a peer does before and after associating stays
bounded: idle connections, an association request at one byte at a time,
PDUs announcing more than we take, too many connections from one address,
an association that goes silent.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from gateway.net.guard import COMMAND_SET_LIMIT
from gateway.net.scu import Association, encode_associate_rq
from tests.conftest import build_config, pydicom_file, send, wait_until

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT = "1.2.840.10008.1.2"
CT = "1.2.840.10008.5.1.4.1.1.2"
# A C-ECHO beside (or after) the hostile peers completes within this.  A receiver held up by them would
# take the 30 s of their association request deadline, or fail at the echo's own 5 s timeout; an idle
# receiver answers in milliseconds, and the margin is for a CI machine whose cores are busy compiling.
PROMPT_SECONDS = 3.0


def _rq(calling: str = "HOSTILE") -> bytes:
    return encode_associate_rq("GATEWAY", calling, [(1, VERIFICATION, IMPLICIT)])


def _acceptor_threads() -> int:
    return sum(1 for t in threading.enumerate() if "AcceptorThread" in t.name)


def _closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing `sock`, or None if it stayed open `seconds`."""
    sock.settimeout(0.1)
    received = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    return None


@contextmanager
def _connections(port: int, count: int, source: str = "127.0.0.1") -> Iterator[list[socket.socket]]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((source, 0))
            sock.connect(("127.0.0.1", port))
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def _gateway(tmp_path, gateway_factory, **server):
    return gateway_factory(build_config(tmp_path, server=server))


def _echo(port: int, calling: str = "MODALITY", source: str | None = None) -> float:
    started = time.monotonic()
    with Association.request("127.0.0.1", port, called_ae="GATEWAY", calling_ae=calling,
                             contexts=[(VERIFICATION, IMPLICIT)], timeout=5, connect_timeout=5) as assoc:
        assert assoc.c_echo().status == 0
    return time.monotonic() - started


def test_idle_connections_do_not_block_a_real_association(tmp_path, gateway_factory, caplog) -> None:
    """More silent connections than association slots and than the per-address limit: a sender still gets in."""
    gateway = _gateway(tmp_path, gateway_factory, max_associations=4, max_connections_per_address=8,
                       association_request_seconds=30)
    with caplog.at_level(logging.INFO, logger="gateway"), _connections(gateway.port, 20) as idle:
        time.sleep(0.3)
        assert _acceptor_threads() == 0  # pynetdicom has not been given any of them
        assert gateway.server.counts()[0] <= 8
        assert send(gateway.port, [pydicom_file("CT_small.dcm")]) == [0]
        assert _echo(gateway.port) < PROMPT_SECONDS
        # the connections that were made room for were closed by the server, the newest still wait
        assert _closed_within(idle[0], 1.0) is not None
        assert _closed_within(idle[-1], 0.3) is None
    assert any("without an association request" in r.getMessage() and "max_connections_per_address" in
               r.getMessage() for r in caplog.records)


def test_slow_loris_association_request_is_closed_by_the_deadline(tmp_path, gateway_factory, caplog) -> None:
    gateway = _gateway(tmp_path, gateway_factory, association_request_seconds=1.0)
    threads_before = threading.active_count()
    rq = _rq()
    with caplog.at_level(logging.INFO, logger="gateway"), _connections(gateway.port, 20) as slow:
        started = time.monotonic()
        closed: set[int] = set()
        sent = 0
        while len(closed) < len(slow) and time.monotonic() - started < 4:
            for index, sock in enumerate(slow):
                if index in closed:
                    continue
                try:
                    sock.send(rq[sent:sent + 1])
                except OSError:
                    closed.add(index)
            sent += 1
            assert threading.active_count() <= threads_before + 1  # no thread per connection
            time.sleep(0.1)
            for index, sock in enumerate(slow):
                if index not in closed and _closed_within(sock, 0.001) is not None:
                    closed.add(index)
        elapsed = time.monotonic() - started
        assert len(closed) == len(slow), f"{len(closed)} of {len(slow)} closed"
        assert 0.9 <= elapsed < 2.5
        assert _acceptor_threads() == 0
        assert _echo(gateway.port) < PROMPT_SECONDS
    assert any("no complete association request within 1 s" in r.getMessage() for r in caplog.records)


def test_oversized_association_request_is_refused_unread(tmp_path, gateway_factory, caplog) -> None:
    gateway = _gateway(tmp_path, gateway_factory, max_pdu=16384)
    with caplog.at_level(logging.INFO, logger="gateway"), socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        tracemalloc.start()
        try:
            sock.sendall(struct.pack(">BBI", 0x01, 0, 0xFFFFFFFF) + bytes(65536))
            answer = _closed_within(sock, 2.0)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert answer is not None and answer[:1] == b"\x07" and answer[8:10] == b"\x02\x06"  # A-ABORT, provider, invalid
    assert peak < 2_000_000
    assert any("A-ASSOCIATE-RQ of 4294967295 bytes" in r.getMessage() for r in caplog.records)
    assert _acceptor_threads() == 0


def test_first_pdu_other_than_an_association_request_is_aborted(tmp_path, gateway_factory) -> None:
    gateway = _gateway(tmp_path, gateway_factory)
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(struct.pack(">BBI", 0x04, 0, 100) + bytes(100))
        answer = _closed_within(sock, 2.0)
    assert answer is not None and answer[:1] == b"\x07"


def _associated(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(_rq())
    sock.settimeout(5)
    header = sock.recv(6, socket.MSG_WAITALL)
    assert header[:1] == b"\x02", header  # A-ASSOCIATE-AC
    body_length = struct.unpack(">I", header[2:6])[0]
    sock.recv(body_length, socket.MSG_WAITALL)
    return sock


def test_never_ending_p_data_is_aborted_before_it_is_buffered(tmp_path, gateway_factory, caplog) -> None:
    gateway = _gateway(tmp_path, gateway_factory, max_pdu=65536)
    with caplog.at_level(logging.INFO, logger="gateway"):
        sock = _associated(gateway.port)
        tracemalloc.start()
        sent = 0
        try:
            sock.sendall(struct.pack(">BBI", 0x04, 0, 0xFFFFFFF0))
            chunk = bytes(65536)
            started = time.monotonic()
            while sent < 64 * 1024 * 1024 and time.monotonic() - started < 5:
                try:
                    sent += sock.send(chunk)
                except OSError:
                    break
            answer = _closed_within(sock, 3.0)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            sock.close()
    assert answer is not None and b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06" in answer
    assert sent < 64 * 1024 * 1024  # the server stopped reading and closed
    assert peak < 4_000_000, peak
    assert any("announces 4294967280 bytes, more than the limit of 65536" in r.getMessage() for r in caplog.records)
    assert wait_until(lambda: gateway.server.counts()[0] == 0, timeout=5)


def test_endless_command_set_is_aborted(tmp_path, gateway_factory, caplog) -> None:
    """Small P-DATA-TF PDUs, each under max_pdu, whose command fragments never say "last"."""
    gateway = _gateway(tmp_path, gateway_factory)
    fragment = bytes(8190)
    pdv = struct.pack(">IBB", len(fragment) + 2, 1, 0x01) + fragment  # context 1, command, not last
    pdu = struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv
    with caplog.at_level(logging.INFO, logger="gateway"):
        sock = _associated(gateway.port)
        sent = 0
        try:
            while sent < 1024 * 1024:
                try:
                    sock.sendall(pdu)
                except OSError:
                    break
                sent += len(pdu)
            answer = _closed_within(sock, 3.0)
        finally:
            sock.close()
    assert answer is not None and b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06" in answer
    assert any(f"a command set of more than {COMMAND_SET_LIMIT} bytes" in r.getMessage() for r in caplog.records)
    assert wait_until(lambda: gateway.server.counts()[0] == 0, timeout=5)


def test_p_data_within_the_limit_still_works_and_the_limit_is_advertised(tmp_path, gateway_factory) -> None:
    gateway = _gateway(tmp_path, gateway_factory, max_pdu=16384)
    with Association.request("127.0.0.1", gateway.port, called_ae="GATEWAY", calling_ae="MODALITY",
                             contexts=[(VERIFICATION, IMPLICIT)], timeout=5) as assoc:
        assert assoc.peer_max_pdu == 16384
        assert assoc.c_echo().status == 0
    assert send(gateway.port, [pydicom_file("CT_small.dcm")]) == [0]  # 39 kB in 16 kB PDUs


def test_per_address_limit(tmp_path, gateway_factory, caplog) -> None:
    gateway = _gateway(tmp_path, gateway_factory, max_connections_per_address=3, max_associations=10)
    with caplog.at_level(logging.INFO, logger="gateway"):
        held = [_associated(gateway.port) for _ in range(3)]
        try:
            assert wait_until(lambda: gateway.server.counts()[1].get("127.0.0.1") == 3, timeout=5)
            with socket.create_connection(("127.0.0.1", gateway.port)) as extra:
                assert _closed_within(extra, 2.0) == b""  # refused: every connection of that address associated
            # another address is not affected
            other = socket.socket()
            other.bind(("127.0.0.2", 0))
            other.connect(("127.0.0.1", gateway.port))
            with other:
                other.sendall(_rq())
                other.settimeout(5)
                assert other.recv(1) == b"\x02"
        finally:
            for sock in held:
                sock.close()
        assert wait_until(lambda: gateway.server.counts()[0] == 0, timeout=5)
        assert _echo(gateway.port) < PROMPT_SECONDS  # slots come back when the associations end
    assert any("refused: max_connections_per_address (3) reached" in r.getMessage() for r in caplog.records)


def test_total_connection_limit_makes_room_from_pending_connections(tmp_path, gateway_factory) -> None:
    gateway = _gateway(tmp_path, gateway_factory, max_connections=4, max_associations=2,
                       max_connections_per_address=100, association_request_seconds=30)
    with _connections(gateway.port, 4, "127.0.0.3"):
        assert wait_until(lambda: gateway.server.counts()[0] == 4, timeout=10)
        assert _echo(gateway.port) < PROMPT_SECONDS
        assert gateway.server.counts()[0] <= 4


def test_silent_association_is_ended_after_idle_seconds(tmp_path, gateway_factory) -> None:
    gateway = _gateway(tmp_path, gateway_factory, idle_seconds=1.0)
    sock = _associated(gateway.port)
    with sock:
        started = time.monotonic()
        answer = _closed_within(sock, 5.0)
        assert answer is not None, "the silent association was not ended"
        assert 0.9 <= time.monotonic() - started < 4
    # a PDU stalled half way is ended too
    sock = _associated(gateway.port)
    with sock:
        sock.sendall(struct.pack(">BBI", 0x04, 0, 1000) + bytes(10))
        started = time.monotonic()
        assert _closed_within(sock, 5.0) is not None
        assert time.monotonic() - started < 4
    assert wait_until(lambda: gateway.server.counts()[0] == 0, timeout=5)


# ------------------------------------------------------------------ configuration of the bounds


@pytest.mark.parametrize("key,value,message", [
    ("max_pdu", 0, "must be 4096..67108864"),
    ("max_pdu", 2**32 - 1, "must be 4096..67108864"),
    ("association_request_seconds", 0, "must be 0.1..600"),
    ("idle_seconds", -1, "must be 0.5..86400"),
    ("max_connections", 0, "must be 1..10000"),
    ("max_connections_per_address", "8", "must be an integer"),
])
def test_bounds_are_validated_naming_the_key(tmp_path, key: str, value: object, message: str) -> None:
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        build_config(tmp_path, server={key: value})
    assert str(caught.value).startswith(f"server.{key}: {message}"), str(caught.value)


def test_bounds_default_to_finite_values_and_fit_together(tmp_path) -> None:
    from gateway.errors import ConfigError

    server = build_config(tmp_path).server
    assert 0 < server.max_pdu <= 64 * 1024 * 1024
    assert 0 < server.association_request_seconds <= 60 and 0 < server.idle_seconds <= 600
    assert server.max_associations <= server.max_connections
    assert 0 < server.max_connections_per_address <= server.max_connections
    with pytest.raises(ConfigError, match=r"^server\.max_connections: must be at least max_associations \(20\)"):
        build_config(tmp_path, server={"max_associations": 20, "max_connections": 10})


def test_changing_a_bound_needs_a_restart(tmp_path, gateway_factory) -> None:
    path = tmp_path / "gateway.toml"
    port = __import__("tests.conftest", fromlist=["free_port"]).free_port()
    text = f'[server]\nport = {port}\nidle_seconds = 30\n[spool]\ndirectory = "spool"\n' \
           '[[destinations]]\nname = "local"\nkind = "folder"\npath = "archive"\n'
    path.write_text(text)
    from gateway.config import load_config

    gateway = gateway_factory(load_config(path))
    path.write_text(text.replace("idle_seconds = 30", "idle_seconds = 5"))
    assert "server.idle_seconds" in (gateway.reload() or "")
    assert gateway.server.limits.idle_seconds == 30
