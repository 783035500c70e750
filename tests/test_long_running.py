"""What a gateway running for months must not pile up: each test repeats one cheap event many times
(a refused association, a connection reset, a reload) and checks that what it leaves stays bounded.

Found by a 15-minute soak of ``dicom-gateway serve`` under a mixed load with reloads every minute.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from pathlib import Path

from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from gateway.config import load_config
from tests.conftest import build_config, free_port, pydicom_file, send


def _echo(port: int, calling: str, source: str = "127.0.0.1") -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEWAY", bind_address=(source, 0))
    if not assoc.is_established:
        return False
    assoc.release()
    return True


def _lines(caplog, *words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if all(w in r.getMessage() for w in words)]


def test_a_refused_caller_that_keeps_trying_is_logged_once_per_address_every_10_s(tmp_path: Path, gateway_factory,
                                                                                 caplog) -> None:
    """A modality refused (a title not allowed, or allowed from another address only) retries for as long as
    nobody fixes it: one WARNING line per attempt was 43,000 lines a day at one attempt every 2 s."""
    caplog.set_level(logging.INFO, logger="gateway")
    config = build_config(tmp_path, server={"allowed_callers": ["MOD1", {"ae_title": "CT1",
                                                                         "addresses": ["127.0.0.2"]}]})
    gateway = gateway_factory(config)
    for _ in range(40):
        assert not _echo(gateway.port, "STRANGER")
        assert not _echo(gateway.port, "CT1")
    assert _echo(gateway.port, "MOD1") and _echo(gateway.port, "CT1", "127.0.0.2"), "the others still get in"
    time.sleep(0.2)
    assert len(_lines(caplog, "association rejected: calling=STRANGER")) == 1
    assert len(_lines(caplog, "association rejected: calling=CT1", "not an address")) == 1
    assert not _echo(gateway.port, "OTHER"), "another refusal from the same address has its own line"
    time.sleep(0.2)
    assert len(_lines(caplog, "association rejected: calling=OTHER")) == 1

    assert gateway.server is not None
    gateway.server.throttle.every = 0.5  # the next line says how many were left out
    time.sleep(0.6)
    assert not _echo(gateway.port, "STRANGER")
    time.sleep(0.2)
    last = _lines(caplog, "association rejected: calling=STRANGER")[-1]
    assert "(39 more like it from 127.0.0.1" in last, last


def test_connections_reset_before_their_association_request_are_logged_once_per_address_every_10_s(
        tmp_path: Path, gateway_factory, caplog) -> None:
    """A load balancer's TCP health check that connects and resets, every few seconds for months."""
    caplog.set_level(logging.INFO, logger="gateway")
    gateway = gateway_factory(build_config(tmp_path))
    for index in range(100):
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
            if index % 2:
                sock.sendall(b"\x01\x00" + struct.pack(">I", 300))  # half a request, then the reset
            time.sleep(0.005)  # in the lobby before the reset
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(0.5)
    assert len(_lines(caplog, "failed before its association request")) == 1
    assert _echo(gateway.port, "MODALITY"), "the receiver serves on"


def test_reloads_leave_no_counts_of_worker_processes_gone(tmp_path: Path, gateway_factory) -> None:
    """Each reload replaces the worker processes; their per-process counts piled up, one more per reload."""
    toml = tmp_path / "gateway.toml"
    port = free_port()

    def write(base: float) -> None:
        toml.write_text(f'[server]\nport = {port}\n[spool]\ndirectory = "spool"\n[compression]\nprocesses = 1\n'
                        f'transfer_syntax = "RLELossless"\n[retry]\nbase_seconds = {base}\n[[destinations]]\n'
                        'name = "local"\nkind = "folder"\npath = "archive"\n')

    write(1.0)
    gateway = gateway_factory(load_config(toml))
    assert gateway.worker is not None
    for round_ in range(4):
        ds = pydicom_file("CT_small.dcm")
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        assert send(gateway.port, [ds]) == [0]
        assert gateway.wait_idle(120)
        write(2.0 + round_)
        assert gateway.reload() is None
    assert len(gateway.worker.processed_by) <= 2, dict(gateway.worker.processed_by)  # the last pool retired, at most
