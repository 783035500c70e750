"""What a gateway running for months must not pile up: each test repeats one cheap event many times
(a refused association, a connection reset, a reload) and checks that what it leaves stays bounded.

Found by a 15-minute soak of ``dicom-gateway serve`` under a mixed load with reloads every minute.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import struct
import subprocess
import time
import warnings
from pathlib import Path

from pydicom.uid import generate_uid

from gateway.config import load_config
from tests.conftest import build_config, free_port, pydicom_file, send
from tests.test_caller_addresses import _echo as _echo_from
from tests.tools import require_dcmtk


def _echo(port: int, calling: str, source: str = "127.0.0.1") -> bool:
    """A C-ECHO as `calling` from `source`: True when associated and answered."""
    return _echo_from(port, calling, source)


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


def _registry() -> int:
    """Distinct warning texts Python keeps for pydicom's value checks (entries of its warning registry)."""
    import pydicom.valuerep

    return len(getattr(pydicom.valuerep, "__warningregistry__", None) or {})


def _with_uids(count: int, sop: str | None = None, study: str | None = None) -> list:
    """CT instances whose SOP Instance (or Study and Series) UID has a leading zero in a component, each its own."""
    base = pydicom_file("CT_small.dcm")
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the malformed UIDs made here
        for index in range(count):
            ds = copy.deepcopy(base)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = (
                f"{sop}.0{index}" if sop else generate_uid())
            if study:
                ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{study}.0{index}", f"{study}.0{index}.1"
            out.append(ds)
    return out


def test_new_studies_with_malformed_uids_leave_nothing_behind_in_the_worker(tmp_path: Path) -> None:
    """A modality writing UIDs with leading zeros (1.2.3.04): the worker read each new study's and series' UIDs
    through pydicom, which warned quoting them, and Python kept every text for good: one registry entry more
    per study and per series (and a log line) in a process that lives for months."""
    from io import BytesIO

    from gateway.spool import Spool
    from gateway.worker import process_instance

    config = build_config(tmp_path)
    spool = Spool(config.spool.directory)
    instances = _with_uids(40, study="1.2.826.0.1.3680043.8.498.7")
    received = []
    for ds in instances:
        data = BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.save_as(data, enforce_file_format=True)
        received.append(spool.store_received(data.getvalue(), "MODALITY"))
    with warnings.catch_warnings():  # a change of the filters empties the registries: none in the loop
        warnings.resetwarnings()
        warnings.simplefilter("default")  # Python's own: the project's pytest settings ignore these warnings
        before = _registry()
        for ds, ident in zip(instances, received):
            [job] = process_instance(config, spool, ident)
            assert job.identity.study_uid == str(ds.StudyInstanceUID)  # as the file holds it
            assert job.identity.series_uid == str(ds.SeriesInstanceUID)
        grown = _registry() - before
    assert grown <= 2, f"{grown} warning texts kept for {len(instances)} instances"


def test_c_stores_with_malformed_sop_instance_uids_leave_nothing_behind_in_the_receiver(tmp_path: Path,
                                                                                       gateway_factory,
                                                                                       caplog) -> None:
    """Each C-STORE of an instance whose SOP Instance UID has a leading zero is refused (0xC210), and pydicom,
    converting the request's UID, warned quoting it: one registry entry more per instance in the service."""
    storescu = require_dcmtk("storescu")
    caplog.set_level(logging.INFO, logger="gateway")
    folder = tmp_path / "sent"
    folder.mkdir()
    files = []
    for index, ds in enumerate(_with_uids(40, sop="1.2.826.0.1.3680043.8.498.9")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.save_as(folder / f"{index:03d}.dcm", enforce_file_format=True)
        files.append(str(folder / f"{index:03d}.dcm"))
    with warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.simplefilter("default")
        gateway = gateway_factory(build_config(tmp_path))
        before = _registry()
        subprocess.run([storescu, "-nh", "-aec", "GATEWAY", "127.0.0.1", str(gateway.port), *files],
                       check=False, capture_output=True, timeout=120, env=dict(os.environ, TCP_NODELAY="1"))
        time.sleep(0.2)
        grown = _registry() - before
    assert len(_lines(caplog, "status=0xC210")) == len(files), "each refused, as before"
    assert grown <= 2, f"{grown} warning texts kept for {len(files)} instances"
