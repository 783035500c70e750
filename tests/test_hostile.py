"""Hostile and careless peers on loopback: raw sockets against the receiver's limits.

Each test runs a gateway in this process with small limits and checks, in a
few seconds, that what a peer does before and after associating stays
bounded: idle connections, an association request at one byte at a time,
PDUs announcing more than we take, too many connections from one address,
an association that goes silent.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO

import pytest
from pydicom import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid

from gateway.net.guard import (
    COMMAND_SET_LIMIT,
    DATA_SET_LIMIT,
    EVENT_REPORT_DATA_SET_LIMIT,
    QUEUED_MESSAGES_LIMIT,
)
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


# ------------------------------------------------------------------ DIMSE messages after associating


def _raw_command(elements: list[tuple[int, bytes]]) -> bytes:
    """A command set (implicit VR little endian, group length first) of `elements` (element number, value)."""
    body = b"".join(struct.pack("<HHI", 0, elem, len(value)) + value for elem, value in elements)
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def _p_data(context_id: int, control: int, fragment: bytes) -> bytes:
    pdv = struct.pack(">IBB", len(fragment) + 2, context_id, control) + fragment
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


def _echo_rq(data_set_type: int) -> bytes:
    return _raw_command([(0x0002, VERIFICATION.encode()), (0x0100, struct.pack("<H", 0x0030)),
                         (0x0110, struct.pack("<H", 1)), (0x0800, struct.pack("<H", data_set_type))])


def _store_rq(instance: str | None) -> bytes:
    elements = [(0x0002, CT.encode() + b"\0"), (0x0100, struct.pack("<H", 0x0001)), (0x0110, struct.pack("<H", 1)),
                (0x0700, struct.pack("<H", 0)), (0x0800, struct.pack("<H", 0))]
    if instance is not None:
        elements.append((0x1000, instance.encode() + b"\0" * (len(instance) % 2)))
    return _raw_command(elements)


def _associated_for(port: int, abstract: str, syntax: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(encode_associate_rq("GATEWAY", "HOSTILE", [(1, abstract, syntax)]))
    sock.settimeout(5)
    header = sock.recv(6, socket.MSG_WAITALL)
    assert header[:1] == b"\x02", header
    sock.recv(struct.unpack(">I", header[2:6])[0], socket.MSG_WAITALL)
    return sock


def _send_until_closed(sock: socket.socket, pdu: bytes, limit: int) -> int:
    sent = 0
    while sent < limit:
        try:
            sock.sendall(pdu)
        except OSError:
            break
        sent += len(pdu)
    return sent


@pytest.mark.parametrize("announced_by", ["c-echo", "nothing"])
def test_data_set_of_a_message_other_than_c_store_is_bounded(tmp_path, gateway_factory, caplog, announced_by) -> None:
    """pynetdicom keeps such a data set in memory: it is aborted once past the limit, not buffered."""
    gateway = _gateway(tmp_path, gateway_factory)
    with caplog.at_level(logging.INFO, logger="gateway"):
        sock = _associated(gateway.port)
        try:
            if announced_by == "c-echo":
                sock.sendall(_p_data(1, 0x03, _echo_rq(0x0000)))  # a C-ECHO-RQ announcing a data set
            sent = _send_until_closed(sock, _p_data(1, 0x00, bytes(16 * 1024)), 16 * 1024 * 1024)
            answer = _closed_within(sock, 3.0)
        finally:
            sock.close()
    assert answer is not None and b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06" in answer
    if announced_by == "c-echo":
        assert any(f"a data set of more than {DATA_SET_LIMIT} bytes" in r.getMessage() for r in caplog.records)
    else:
        assert any("a data set fragment with no command set before it" in r.getMessage() for r in caplog.records)
    assert sent < 16 * 1024 * 1024  # the server stopped reading and closed
    assert wait_until(lambda: gateway.server.counts()[0] == 0, timeout=5)
    assert _echo(gateway.port) < PROMPT_SECONDS


def test_storage_commitment_report_size_data_set_is_taken(tmp_path, gateway_factory) -> None:
    """An N-EVENT-REPORT data set over the small limit and within its own is read, not aborted."""
    gateway = _gateway(tmp_path, gateway_factory)
    commitment = "1.2.840.10008.1.20.1"
    sock = _associated_for(gateway.port, commitment, IMPLICIT)
    with sock:
        command = _raw_command([(0x0002, commitment.encode() + b"\0"), (0x0100, struct.pack("<H", 0x0100)),
                                (0x0110, struct.pack("<H", 1)), (0x0800, struct.pack("<H", 0)),
                                (0x1000, b"1.2.840.10008.1.20.1.1\0"), (0x1002, struct.pack("<H", 1))])
        sock.sendall(_p_data(1, 0x03, command))
        report = bytes(4 * DATA_SET_LIMIT)  # not a valid report: answered with a failure, not aborted
        for start in range(0, len(report), 16000):
            sock.sendall(_p_data(1, 0x02 if start + 16000 >= len(report) else 0x00, report[start:start + 16000]))
        header = sock.recv(6, socket.MSG_WAITALL)
        assert header[:1] == b"\x04", header  # a P-DATA-TF: the N-EVENT-REPORT-RSP
    assert 4 * DATA_SET_LIMIT < EVENT_REPORT_DATA_SET_LIMIT


def test_second_command_set_while_a_data_set_is_due_is_aborted(tmp_path, gateway_factory, caplog) -> None:
    """pynetdicom would append each one to the first and decode them all again: quadratic, and not bounded."""
    gateway = _gateway(tmp_path, gateway_factory)
    filler = struct.pack("<HHI", 0, 0x5555, 30000) + bytes(30000)
    with caplog.at_level(logging.INFO, logger="gateway"):
        sock = _associated(gateway.port)
        try:
            sock.sendall(_p_data(1, 0x03, _echo_rq(0x0000)))
            sent = _send_until_closed(sock, _p_data(1, 0x03, filler), 4 * 1024 * 1024)
            answer = _closed_within(sock, 3.0)
        finally:
            sock.close()
    assert answer is not None and b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06" in answer
    assert sent < 4 * 1024 * 1024
    assert any("a command fragment where the data set of the previous command was due" in r.getMessage()
               for r in caplog.records)


def _flood(sock: socket.socket, burst: bytes, measure, seconds: float = 2.5) -> int:
    """Send `burst` again and again for `seconds` (a send the receiver does not read times out and goes on);
    the largest `measure()` seen meanwhile."""
    most = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            sock.sendall(burst)
        except TimeoutError:
            pass
        most = max(most, measure())
    return most


def test_request_flood_is_read_no_faster_than_it_is_answered(tmp_path, gateway_factory) -> None:
    """Pipelined C-ECHO requests: what waits for the association's thread stays bounded (TCP holds the rest)."""
    gateway = _gateway(tmp_path, gateway_factory)
    sock = _associated(gateway.port)
    stop = threading.Event()

    def drain() -> None:  # the peer reads its answers: only the receiver's own queue could grow
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                if not sock.recv(65536):
                    return
            except TimeoutError:
                continue
            except OSError:
                return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    burst = _p_data(1, 0x03, _echo_rq(0x0101)) * 2000
    try:
        sock.settimeout(5)
        deepest = _flood(sock, burst, lambda: max((a.dimse.msg_queue.qsize()
                                                   for a in gateway.server.ae.active_associations), default=0))
    finally:
        stop.set()
        reader.join(2)
        sock.close()
    assert deepest <= QUEUED_MESSAGES_LIMIT + 2, deepest
    assert wait_until(lambda: gateway.server.counts()[0] == 0, timeout=10)
    assert send(gateway.port, [pydicom_file("CT_small.dcm")]) == [0]


@pytest.mark.parametrize("ending", ["close", "a-abort", "reset", "idle"])
def test_store_cut_short_leaves_no_file(tmp_path, gateway_factory, ending) -> None:
    gateway = _gateway(tmp_path, gateway_factory, idle_seconds=1.0)
    tmp = gateway.spool.tmp
    sock = _associated_for(gateway.port, CT, IMPLICIT)
    try:
        sock.sendall(_p_data(1, 0x03, _store_rq("1.2.826.0.1.3680043.2.1125.9.1")))
        for _ in range(4):
            sock.sendall(_p_data(1, 0x00, bytes(64 * 1024)))
        assert wait_until(lambda: len(list(tmp.iterdir())) == 1, timeout=5)  # being written
        if ending == "a-abort":
            sock.sendall(bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0)))
        elif ending == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif ending == "idle":
            assert _closed_within(sock, 5.0) is not None
    finally:
        sock.close()
    assert wait_until(lambda: list(tmp.iterdir()) == [], timeout=5), list(tmp.iterdir())
    assert wait_until(lambda: gateway.server.counts()[0] == 0, timeout=5)
    assert send(gateway.port, [pydicom_file("CT_small.dcm")]) == [0]


def test_store_command_without_its_instance_uid_is_aborted_and_leaves_nothing(tmp_path, gateway_factory,
                                                                               caplog) -> None:
    """pynetdicom raises in its reader thread on such a command (it names the file's meta from it)."""
    gateway = _gateway(tmp_path, gateway_factory, max_associations=2)
    with caplog.at_level(logging.INFO, logger="gateway"):
        for _ in range(3):  # more than the association slots: each one comes back
            sock = _associated_for(gateway.port, CT, IMPLICIT)
            with sock:
                sock.sendall(_p_data(1, 0x03, _store_rq(None)))
                sock.sendall(_p_data(1, 0x02, bytes(1000)))
                answer = _closed_within(sock, 3.0)
            assert answer is not None and answer[:1] == b"\x07"
    assert any("without Affected SOP Class UID (0000,0002) or Affected SOP Instance UID (0000,1000)"
               in r.getMessage() for r in caplog.records)
    assert list(gateway.spool.tmp.iterdir()) == []
    assert wait_until(lambda: gateway.server.counts()[0] == 0, timeout=5)
    assert _echo(gateway.port) < PROMPT_SECONDS


def test_event_report_flood_takes_no_more_threads_than_its_queue(tmp_path, gateway_factory) -> None:
    """pynetdicom serves each N-EVENT-REPORT request in a thread of its own, outside the message queue:
    those still being served count against the same limit, so a pipelining peer cannot start a
    thread per request."""
    gateway = _gateway(tmp_path, gateway_factory)
    release = threading.Event()
    served = []

    def slow(calling: str, event_type: int, report) -> int:  # a report that takes its time to record
        release.wait(20)
        served.append(event_type)
        return 0x0000

    gateway.receiver.event_reports = slow
    commitment = "1.2.840.10008.1.20.1"
    command = _raw_command([(0x0002, commitment.encode() + b"\0"), (0x0100, struct.pack("<H", 0x0100)),
                            (0x0110, struct.pack("<H", 1)), (0x0800, struct.pack("<H", 0x0101)),
                            (0x1000, b"1.2.840.10008.1.20.1.1\0"), (0x1002, struct.pack("<H", 1))])
    before = threading.active_count()
    sock = _associated_for(gateway.port, commitment, IMPLICIT)
    try:
        sock.settimeout(0.5)
        most = _flood(sock, _p_data(1, 0x03, command) * 50, lambda: threading.active_count() - before)
        assert most <= QUEUED_MESSAGES_LIMIT + 8, most
        release.set()
        assert wait_until(lambda: len(served) > 2 * QUEUED_MESSAGES_LIMIT, timeout=10), len(served)
    finally:
        release.set()
        sock.close()
    assert wait_until(lambda: gateway.server.counts()[0] == 0, timeout=10)


def _associated_with(port: int, contexts: list[tuple[int, str, str]]) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(encode_associate_rq("GATEWAY", "HOSTILE", contexts))
    sock.settimeout(5)
    header = sock.recv(6, socket.MSG_WAITALL)
    assert header[:1] == b"\x02", header
    sock.recv(struct.unpack(">I", header[2:6])[0], socket.MSG_WAITALL)
    return sock


def _p_data_of(*pdvs: tuple[int, int, bytes]) -> bytes:
    """One P-DATA-TF carrying several presentation data value items (context id, control header, fragment)."""
    body = b"".join(struct.pack(">IBB", len(fragment) + 2, context_id, control) + fragment
                    for context_id, control, fragment in pdvs)
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


def _response_status(sock: socket.socket) -> int:
    """The Status (0000,0900) of the next DIMSE response, its command set in one P-DATA-TF."""
    header = sock.recv(6, socket.MSG_WAITALL)
    assert header[:1] == b"\x04", header
    body = sock.recv(struct.unpack(">I", header[2:6])[0], socket.MSG_WAITALL)
    at = body.index(struct.pack("<HHI", 0, 0x0900, 2))
    return struct.unpack_from("<H", body, at + 8)[0]


def test_presentation_data_after_a_whole_message_in_the_same_p_data_is_aborted(tmp_path, gateway_factory,
                                                                               caplog) -> None:
    """pynetdicom decodes a P-DATA-TF only up to the item that completes a message and drops the rest: a
    C-STORE command behind a whole C-ECHO would leave it keeping the data set that follows in memory."""
    gateway = _gateway(tmp_path, gateway_factory)
    with caplog.at_level(logging.INFO, logger="gateway"):
        sock = _associated_with(gateway.port, [(1, VERIFICATION, IMPLICIT), (3, CT, IMPLICIT)])
        try:
            sock.sendall(_p_data_of((1, 0x03, _echo_rq(0x0101)),
                                    (3, 0x03, _store_rq("1.2.826.0.1.3680043.2.1125.9.2"))))
            sent = _send_until_closed(sock, _p_data(3, 0x00, bytes(64 * 1024)), 16 * 1024 * 1024)
            answer = _closed_within(sock, 3.0)
        finally:
            sock.close()
    assert answer is not None and b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06" in answer
    assert sent < 16 * 1024 * 1024
    assert any("after the one that completes a message" in r.getMessage() for r in caplog.records)
    assert wait_until(lambda: gateway.server.counts()[0] == 0, timeout=5)
    assert _echo(gateway.port) < PROMPT_SECONDS


def _implicit(ds: Dataset) -> bytes:
    """`ds` encoded in implicit VR little endian, without file meta: a C-STORE's data set."""
    buffer = BytesIO()
    out = DicomFileLike(buffer)
    out.is_little_endian, out.is_implicit_VR = True, True
    write_dataset(out, ds)
    return buffer.getvalue()


def test_a_whole_c_store_in_one_p_data_is_taken(tmp_path, gateway_factory) -> None:
    """A command and its data set in the same P-DATA-TF (as dcm4che packs them) are one message: stored."""
    gateway = _gateway(tmp_path, gateway_factory)
    ds = pydicom_file("CT_small.dcm")
    data = _implicit(ds)
    half = len(data) // 2
    sock = _associated_with(gateway.port, [(1, CT, IMPLICIT)])
    with sock:
        sock.sendall(_p_data_of((1, 0x03, _store_rq(str(ds.SOPInstanceUID))), (1, 0x00, data[:half]),
                                (1, 0x02, data[half:])))
        assert _response_status(sock) == 0x0000
        sock.sendall(_p_data_of((1, 0x03, _echo_rq(0x0101))))  # and the association goes on
        assert _response_status(sock) == 0x0000


def _store_rq_without(missing: int) -> bytes:
    """A C-STORE request naming its instance, less the command element `missing`."""
    elements = [(0x0002, CT.encode() + b"\0"), (0x0100, struct.pack("<H", 0x0001)), (0x0110, struct.pack("<H", 1)),
                (0x0700, struct.pack("<H", 0)), (0x0800, struct.pack("<H", 0)),
                (0x1000, b"1.2.826.0.1.3680043.2.1125.9.3\0")]
    return _raw_command([(elem, value) for elem, value in elements if elem != missing])


@pytest.mark.parametrize("missing", [0x0110, 0x0700], ids=["message-id", "priority"])
def test_store_command_pynetdicom_would_drop_is_aborted_and_leaves_nothing(tmp_path, gateway_factory, caplog,
                                                                           missing: int) -> None:
    """pynetdicom opens the data set's file, then drops such a request unanswered: the file would stay open."""
    gateway = _gateway(tmp_path, gateway_factory)
    with caplog.at_level(logging.INFO, logger="gateway"):
        sock = _associated_for(gateway.port, CT, IMPLICIT)
        with sock:
            sock.sendall(_p_data(1, 0x03, _store_rq_without(missing)) + _p_data(1, 0x02, bytes(1000)))
            answer = _closed_within(sock, 3.0)
    assert answer is not None and b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06" in answer
    name = {0x0110: "Message ID (0000,0110)", 0x0700: "Priority (0000,0700)"}[missing]
    assert any(f"a C-STORE request without {name}" in r.getMessage() for r in caplog.records)
    assert list(gateway.spool.tmp.iterdir()) == []
    assert wait_until(lambda: gateway.server.counts()[0] == 0, timeout=5)


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc/self/fd")
def test_store_request_served_by_another_service_leaves_no_file_open(tmp_path, gateway_factory) -> None:
    """A C-STORE request naming the Verification SOP Class is answered by pynetdicom's verification service,
    never by the C-STORE handler: its data set's file is deleted all the same, not kept open until the end."""
    gateway = _gateway(tmp_path, gateway_factory)
    command = _raw_command([(0x0002, VERIFICATION.encode()), (0x0100, struct.pack("<H", 0x0001)),
                            (0x0110, struct.pack("<H", 1)), (0x0700, struct.pack("<H", 0)),
                            (0x0800, struct.pack("<H", 0)), (0x1000, b"1.2.826.0.1.3680043.2.1125.9.4\0")])
    before = _open_descriptors()
    sock = _associated_for(gateway.port, CT, IMPLICIT)
    with sock:
        for _ in range(20):
            sock.sendall(_p_data(1, 0x03, command) + _p_data(1, 0x02, bytes(512)))
            _response_status(sock)
        assert wait_until(lambda: list(gateway.spool.tmp.iterdir()) == [], timeout=2), list(gateway.spool.tmp.iterdir())
        assert _open_descriptors() - before < 5


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc/self/fd")
def test_data_sets_waiting_for_the_handler_hold_no_file_open(tmp_path, gateway_factory) -> None:
    """Requests sent without waiting for their answers queue up whole; their files are closed meanwhile, so
    a few associations pipelining requests cannot take every descriptor the process may open."""
    gateway = _gateway(tmp_path, gateway_factory)
    release = threading.Event()
    handle_store = gateway.receiver.handle_store

    def held(event):  # type: ignore[no-untyped-def]
        release.wait(20)
        return handle_store(event)

    gateway.receiver.handle_store = held
    ds = pydicom_file("CT_small.dcm")
    count = 40
    before = _open_descriptors()
    sock = _associated_for(gateway.port, CT, IMPLICIT)
    try:
        for _ in range(count):
            ds.SOPInstanceUID = generate_uid()
            sock.sendall(_p_data(1, 0x03, _store_rq(str(ds.SOPInstanceUID))) + _p_data(1, 0x02, _implicit(ds)))
        assert wait_until(lambda: len(list(gateway.spool.tmp.iterdir())) == count, timeout=5)
        opened = _open_descriptors() - before  # the two ends of the connection, the file being received
        release.set()
        statuses = [_response_status(sock) for _ in range(count)]
    finally:
        release.set()
        sock.close()
    assert opened <= 4, opened
    assert statuses == [0x0000] * count


def test_associations_work_with_descriptors_past_1024(tmp_path, gateway_factory) -> None:
    """select() cannot watch a descriptor of 1024 or more: a receiver holding that many (idle connections
    under a large max_connections, data sets received) must still serve the next association."""
    from gateway.net.scu import Association as Client

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 1400
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    filler: list[int] = []
    try:
        gateway = _gateway(tmp_path, gateway_factory)
        filler.append(os.open(os.devnull, os.O_RDONLY))
        while filler[-1] < 1100:  # every lower descriptor taken: the next ones are past 1100
            filler.append(os.dup(filler[0]))
        assert _echo(gateway.port) < PROMPT_SECONDS
        ds = pydicom_file("CT_small.dcm")
        with Client.request("127.0.0.1", gateway.port, called_ae="GATEWAY", calling_ae="MODALITY",
                            contexts=[(CT, IMPLICIT)], timeout=5, connect_timeout=5) as assoc:
            assert assoc.c_store(CT, str(ds.SOPInstanceUID), IMPLICIT, _implicit(ds)).status == 0x0000
    finally:
        for fd in filler:
            os.close(fd)
        if soft < need:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
