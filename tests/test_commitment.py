"""Storage commitment (PS3.4 Annex J) for DICOM destinations: with Orthanc as the commitment SCP (it reports
on an association of its own to our receiver), and with pynetdicom archives that report on the same
association, fail some instances, never answer, or do not offer the SOP class."""

from __future__ import annotations

import contextlib
import csv
import json
import threading
import time
from io import BytesIO, StringIO
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, build_role, evt

from gateway.cli import main
from gateway.config import ConfigError, parse_config
from gateway.errors import (
    PeerProtocolError,
    PermanentForwardError,
    TransientForwardError,
)
from gateway.forward.commitment import (
    STORAGE_COMMITMENT,
    STORAGE_COMMITMENT_INSTANCE,
    CommitmentReports,
    classify_failure,
    parse_report,
)
from gateway.forward.dicom import DicomSender
from gateway.net.scp import ACCEPTED_SYNTAXES
from gateway.record import ProofRecord
from gateway.spool import DONE
from tests.conftest import (
    UNCOMMITTABLE,
    build_config,
    free_port,
    make_series,
    send,
    wait_until,
)
from tests.test_dicomweb import _objects

# ------------------------------------------------------------------ configuration and the report itself


def test_storage_commitment_config(tmp_path: Path) -> None:
    entry = {"name": "pacs", "kind": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}
    dest = build_config(tmp_path, [entry]).destinations[0]
    assert not dest.storage_commitment and dest.commitment_timeout_seconds == 60.0
    dest = build_config(tmp_path, [{**entry, "storage_commitment": True,
                                    "commitment_timeout_seconds": 5}]).destinations[0]
    assert dest.storage_commitment and dest.commitment_timeout_seconds == 5.0
    for bad, key in (({"storage_commitment": "yes"}, "storage_commitment"),
                     ({"commitment_timeout_seconds": 0}, "commitment_timeout_seconds")):
        with pytest.raises(ConfigError) as caught:
            parse_config({"spool": {"directory": "s"}, "destinations": [{**entry, **bad}]}, tmp_path)
        assert caught.value.key == f"destinations[0].{key}"
    with pytest.raises(ConfigError) as caught:  # a folder has nothing to commit
        parse_config({"spool": {"directory": "s"}, "destinations": [
            {"name": "f", "kind": "folder", "path": "a", "storage_commitment": True}]}, tmp_path)
    assert caught.value.key == "destinations[0].storage_commitment"


def _report(uid: str, committed: list[str], failed: list[tuple[str, int]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = uid
    if committed:
        ds.ReferencedSOPSequence = [_ref(sop) for sop in committed]
    if failed:
        items = []
        for sop, reason in failed:
            item = _ref(sop)
            item.FailureReason = reason
            items.append(item)
        ds.FailedSOPSequence = items
    return ds


def _ref(sop: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = sop
    return item


def test_reports_are_parsed_and_classified() -> None:
    result = parse_report(2, _report("1.2.9", ["1.2.3"], [("1.2.4", 0x0112), ("1.2.5", 0x0122)]))
    assert result.transaction_uid == "1.2.9" and result.committed == {"1.2.3"}
    assert result.failed == {"1.2.4": 0x0112, "1.2.5": 0x0122}
    with pytest.raises(PeerProtocolError, match="Event Type ID 3"):
        parse_report(3, _report("1.2.9", ["1.2.3"], []))
    with pytest.raises(PeerProtocolError, match="Transaction UID"):
        parse_report(1, _report("", ["1.2.3"], []))
    with pytest.raises(PeerProtocolError, match="Event Type 1 lists failures"):
        parse_report(1, _report("1.2.9", [], [("1.2.4", 0x0110)]))
    # PS3.3 C.14.1.1: what storing and asking again may cure is transient.
    assert {r: classify_failure(r) for r in (0x0110, 0x0112, 0x0213, 0x0131, 0x0122, 0x0119)} == {
        0x0110: "transient", 0x0112: "transient", 0x0213: "transient", 0x0131: "transient",
        0x0122: "permanent", 0x0119: "permanent"}


def test_reports_reaching_the_receiver_are_taken_from_the_asked_archive_only() -> None:
    reports = CommitmentReports()
    reports.expect("1.2.9", "ORTHANC")
    assert reports.deliver("IMPOSTOR", 1, _report("1.2.9", ["1.2.3"], [])) == 0x0110
    assert reports.wait("1.2.9", 0.05) is None
    assert reports.deliver("ORTHANC", 3, _report("1.2.9", ["1.2.3"], [])) == 0x0113
    assert reports.deliver("ORTHANC", 1, None) == 0x0115
    assert reports.deliver("ORTHANC", 1, _report("1.2.8", ["1.2.3"], [])) == 0x0000  # nobody waits: late
    assert reports.deliver("ORTHANC", 1, _report("1.2.9", ["1.2.3"], [])) == 0x0000
    result = reports.wait("1.2.9", 1.0)
    assert result is not None and result.committed == {"1.2.3"}
    reports.forget("1.2.9")
    assert reports.wait("1.2.9", 0.0) is None


# ------------------------------------------------------------------ pynetdicom archives


class CommitArchive:
    """A pynetdicom C-STORE and storage commitment SCP reporting on the requesting association.

    `fail` maps SOP Instance UIDs to the Failure Reason reported; `silent`
    answers the N-ACTION and never reports; `commitment=False` does not offer
    the SOP class at all.  With `report_to` (the gateway's port, asked when
    reporting) it aborts the requesting association as an idle one before it
    reports, and reports on an association of its own (PS3.4 J.3.3.1).
    """

    def __init__(self, *, fail: dict[str, int] | None = None, silent: bool = False, commitment: bool = True,
                 store_status: dict[str, int] | None = None, report_to: Callable[[], int] | None = None) -> None:
        self.port = free_port()
        self.fail = fail or {}
        self.silent = silent
        self.report_to = report_to
        self.store_status = store_status or {}
        self.stored: dict[str, Dataset] = {}
        self.requests: list[Dataset] = []
        self.answers: list[int] = []
        ae = AE(ae_title="ARCHIVE")
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, list(ACCEPTED_SYNTAXES))
        if commitment:
            ae.add_supported_context(STORAGE_COMMITMENT, [ImplicitVRLittleEndian])
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._store), (evt.EVT_N_ACTION, self._action)])

    def _store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        status = self.store_status.get(str(ds.SOPInstanceUID), 0)
        if status == 0:
            self.stored[str(ds.SOPInstanceUID)] = ds
        return status

    def _action(self, event: evt.Event) -> tuple[int, None]:
        request = event.action_information
        self.requests.append(request)
        if self.report_to is not None:
            threading.Timer(0.3, event.assoc.abort).start()
            threading.Timer(1.0, self._report_on_own_association, (request,)).start()
        elif not self.silent:
            threading.Timer(0.05, self._report, (event.assoc, request)).start()  # after the N-ACTION-RSP
        return 0x0000, None

    def _report(self, assoc: Any, request: Dataset) -> None:
        refs = [(str(i.ReferencedSOPInstanceUID)) for i in request.ReferencedSOPSequence]
        ok = [sop for sop in refs if sop in self.stored and sop not in self.fail]
        bad = [(sop, self.fail.get(sop, 0x0112)) for sop in refs if sop not in ok]
        status, _ = assoc.send_n_event_report(_report(request.TransactionUID, ok, bad), 2 if bad else 1,
                                              STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE)
        self.answers.append(int(status.Status))

    def _report_on_own_association(self, request: Dataset) -> None:
        ae = AE(ae_title="ARCHIVE")
        ae.add_requested_context(STORAGE_COMMITMENT, [ImplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", self.report_to(), ae_title="GATEWAY",
                             ext_neg=[build_role(STORAGE_COMMITMENT, scp_role=True, scu_role=False)])
        if assoc.is_established:
            self._report(assoc, request)
            assoc.release()

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def archive():
    made: list[CommitArchive] = []

    def make(**kwargs: Any) -> CommitArchive:
        server = CommitArchive(**kwargs)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


def _sender(tmp_path: Path, archive: CommitArchive, paths: dict[str, Path], **extra: Any) -> DicomSender:
    dest = build_config(tmp_path, [{"name": "pacs", "kind": "dicom", "ae_title": "ARCHIVE", "host": "127.0.0.1",
                                    "port": archive.port, "storage_commitment": True,
                                    "commitment_timeout_seconds": 10, **extra}]).destinations[0]
    return DicomSender(dest, locate=lambda job: paths[job.instance],
                       record=ProofRecord(tmp_path / "record.sqlite"))


def _outcomes(sender: DicomSender, jobs, paths, *, close: bool = True) -> list[Any]:
    sender.prepare(jobs)
    out: list[Any] = []
    for job in jobs:
        try:
            out.append(sender.send(job, paths[job.instance]))
        except (TransientForwardError, PermanentForwardError) as exc:
            out.append(exc)
    if close:
        sender.close()
    return out


def test_a_batch_is_committed_in_one_request_on_the_same_association(tmp_path: Path, archive) -> None:
    jobs, paths, originals = _objects(tmp_path, 4)
    sops = [job.identity.sop_instance_uid for job in jobs]
    server = archive(fail={sops[1]: 0x0122, sops[2]: 0x0213})
    sender = _sender(tmp_path, server, paths)
    out = _outcomes(sender, jobs, paths, close=False)
    assert out[0] == out[3] == ExplicitVRLittleEndian
    assert isinstance(out[1], PermanentForwardError) and "0x0122" in str(out[1])
    assert isinstance(out[2], TransientForwardError) and "0x0213" in str(out[2])
    assert len(server.requests) == 1, "one N-ACTION for the batch"
    assert [str(i.ReferencedSOPInstanceUID) for i in server.requests[0].ReferencedSOPSequence] == sops
    assert wait_until(lambda: server.answers == [0x0000], timeout=5), "our N-EVENT-REPORT-RSP: Success"
    for sop, original in zip(sops, originals):
        assert np.array_equal(server.stored[sop].pixel_array, original.pixel_array)
    record = sender.record
    assert record is not None and record.commitment_counts("pacs") == {"pending": 0, "committed": 2, "failed": 2}
    states = [(row["state"], row["reason"]) for row in _commitments(record, "id1")]
    assert states[0] == ("pending", None) and states[1][0] == "failed" and "0x0122" in states[1][1]
    assert sender.assoc is not None and sender.assoc.is_established, "the association stays for the next batch"
    sender.close()


def _commitments(record: ProofRecord, ident: str) -> list[dict]:
    db = record._connection()
    return [dict(row) for row in db.execute("SELECT * FROM commitments WHERE id = ? ORDER BY at, rowid", (ident,))]


def test_an_instance_the_archive_refused_to_store_is_not_asked_about(tmp_path: Path, archive) -> None:
    jobs, paths, _ = _objects(tmp_path, 3)
    sops = [job.identity.sop_instance_uid for job in jobs]
    server = archive(store_status={sops[0]: 0xA700})
    out = _outcomes(_sender(tmp_path, server, paths), jobs, paths)
    assert isinstance(out[0], TransientForwardError) and "0xA700" in str(out[0])
    assert out[1:] == [ExplicitVRLittleEndian] * 2
    assert [str(i.ReferencedSOPInstanceUID) for i in server.requests[0].ReferencedSOPSequence] == sops[1:]


def test_no_report_in_time_is_transient(tmp_path: Path, archive) -> None:
    jobs, paths, _ = _objects(tmp_path, 2)
    server = archive(silent=True)
    sender = _sender(tmp_path, server, paths, commitment_timeout_seconds=0.5)
    started = time.monotonic()
    out = _outcomes(sender, jobs, paths, close=False)
    assert time.monotonic() - started < 5
    assert all(isinstance(o, TransientForwardError) and "no storage commitment report within 0.5 s" in str(o)
               for o in out)
    assert sender.assoc is None, "the association is closed: a late report must not meet the next request"
    assert sender.record is not None and sender.record.commitment_counts("pacs")["failed"] == 2


def test_a_report_after_the_archive_closed_our_association_is_taken_from_the_receiver(
        tmp_path: Path, archive, gateway_factory) -> None:
    """Archives close an idle association (Orthanc after its DICOM timeout) and report on one of their own;
    the commitment is then still awaited until commitment_timeout_seconds."""
    gateway: list[Any] = []
    server = archive(report_to=lambda: gateway[0].port)
    gateway.append(gateway_factory(build_config(tmp_path, [
        {"name": "pacs", "kind": "dicom", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": server.port,
         "storage_commitment": True, "commitment_timeout_seconds": 10}],
        retry={"base_seconds": 60, "cap_seconds": 60})))
    [ds] = make_series(1, rows=32, columns=32)
    assert send(gateway[0].port, [ds]) == [0]
    assert wait_until(lambda: gateway[0].spool.count_jobs(DONE, "pacs") == 1, timeout=30)
    assert wait_until(lambda: server.answers == [0x0000], timeout=10), "our receiver took the report"
    assert len(server.requests) == 1, "committed at the first request"
    [job] = gateway[0].spool.jobs_in(DONE, "pacs")
    assert job.attempts == 0


def test_an_archive_without_storage_commitment_is_permanent(tmp_path: Path, archive) -> None:
    jobs, paths, _ = _objects(tmp_path, 1)
    server = archive(commitment=False)
    out = _outcomes(_sender(tmp_path, server, paths), jobs, paths)
    assert isinstance(out[0], PermanentForwardError) and "Storage Commitment" in str(out[0])


def test_an_impostors_report_to_the_receiver_is_refused(tmp_path: Path, gateway_factory) -> None:
    """The receiver takes N-EVENT-REPORTs (the archive as SCP, role selection) and hands them to the waiting
    sender only from the AE the request went to."""
    config = build_config(tmp_path)
    gateway = gateway_factory(config)
    gateway.commitment_reports.expect("1.2.9.9", "ORTHANC")
    ae = AE(ae_title="IMPOSTOR")
    from pynetdicom import build_role

    ae.add_requested_context(STORAGE_COMMITMENT, [ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", gateway.port, ae_title="GATEWAY",
                         ext_neg=[build_role(STORAGE_COMMITMENT, scp_role=True, scu_role=False)])
    assert assoc.is_established
    status, _ = assoc.send_n_event_report(_report("1.2.9.9", ["1.2.3"], []), 1, STORAGE_COMMITMENT,
                                          STORAGE_COMMITMENT_INSTANCE)
    assoc.release()
    assert int(status.Status) == 0x0110
    assert gateway.commitment_reports.wait("1.2.9.9", 0.1) is None


# ------------------------------------------------------------------ Orthanc as storage commitment SCP


def _write_config(path: Path, data: dict) -> Path:
    lines = []
    for section, values in data.items():
        if isinstance(values, list):
            for entry in values:
                lines.append(f"[[{section}]]")
                lines.extend(f"{k} = {json.dumps(v)}" for k, v in entry.items())
        else:
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {json.dumps(v)}" for k, v in values.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def test_series_committed_by_orthanc_and_one_it_cannot_commit(tmp_path: Path, orthanc_web, gateway_factory,
                                                               capsys) -> None:
    """Orthanc answers Success to every C-STORE but its filter discards one instance; its report, on an
    association it opens to our receiver, fails that one (0x0112): it is stored and asked about again, then
    dead with Orthanc's reason. The others are in Orthanc bit for bit, committed in the record and in
    ``status``."""
    orthanc_web.clear()
    data = {
        "server": {"ae_title": "GATEWAY", "host": "127.0.0.1", "port": free_port()},
        "spool": {"directory": "spool"},
        "compression": {"transfer_syntax": "RLELossless", "processes": 0},
        "retry": {"max_attempts": 2, "base_seconds": 0.2, "cap_seconds": 0.5, "probe_seconds": 0.2},
        "destinations": [{"name": "orthanc", "kind": "dicom", "ae_title": orthanc_web.aet, "host": "127.0.0.1",
                          "port": orthanc_web.dicom_port, "storage_commitment": True,
                          "commitment_timeout_seconds": 20, "associations": 1}],
    }
    path = _write_config(tmp_path / "gateway.toml", data)
    config = parse_config(data, tmp_path, path)
    # Orthanc opens its report association to the AE that asked: it must know where we listen.
    orthanc_web.request("PUT", "/modalities/gateway", json.dumps(
        {"AET": "GATEWAY", "Host": "127.0.0.1", "Port": config.server.port}).encode())
    gateway = gateway_factory(config)
    series = make_series(5, rows=64, columns=64, seed=5)
    series[3].ImageComments = UNCOMMITTABLE
    assert send(gateway.port, series) == [0] * 5
    spool = gateway.spool
    assert wait_until(lambda: spool.count_jobs("done", "orthanc") == 4 and spool.count_jobs("dead", "orthanc") == 1,
                      timeout=120), spool.counts()
    (dead,) = list(spool.jobs_in("dead", "orthanc"))
    assert dead.identity.sop_instance_uid == str(series[3].SOPInstanceUID)
    assert "0x0112" in (dead.reason or "") and dead.attempts == 2
    by_uid = {str(ds.SOPInstanceUID): ds for ds in series}
    stored = [dcmread(BytesIO(orthanc_web.file(i))) for i in orthanc_web.instances()]
    assert sorted(str(ds.SOPInstanceUID) for ds in stored) == sorted(
        str(ds.SOPInstanceUID) for i, ds in enumerate(series) if i != 3)
    for ds in stored:
        assert np.array_equal(ds.pixel_array, by_uid[str(ds.SOPInstanceUID)].pixel_array)
    for index, ds in enumerate(series):
        (row,) = gateway.record.find(str(ds.SOPInstanceUID))
        states = [c["state"] for c in row["commitments"]]
        if index == 3:
            assert states == ["pending", "failed", "pending", "failed"]
            assert "0x0112" in row["commitments"][-1]["reason"]
            assert row["deliveries"][-1]["outcome"] == "dead"
        else:
            assert states == ["pending", "committed"]
            assert row["deliveries"][-1]["outcome"] == "delivered"
    capsys.readouterr()
    assert main(["status", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "orthanc: pending=0  inflight=0  dead=1  commitment: pending=0  committed=4  failed=1" in out
    assert "0x0112" in out
    assert main(["audit", "--config", str(path), "--format", "csv"]) == 0
    rows = {row["sop_instance_uid"]: row for row in csv.DictReader(StringIO(capsys.readouterr().out))}
    assert rows[str(series[3].SOPInstanceUID)]["commitments"] == "orthanc=failed"
    assert rows[str(series[0].SOPInstanceUID)]["commitments"] == "orthanc=committed"


# ------------------------------------------------------------------ retention after delivery


def test_spool_keep_after_delivery_config(tmp_path: Path) -> None:
    assert build_config(tmp_path).spool.keep_after_delivery is True
    assert build_config(tmp_path, spool={"keep_after_delivery": False}).spool.keep_after_delivery is False
    with pytest.raises(ConfigError) as caught:
        parse_config({"spool": {"directory": "s", "keep_after_delivery": "no"}, "destinations": []}, tmp_path)
    assert caught.value.key == "spool.keep_after_delivery"


@pytest.mark.parametrize("keep", [True, False])
def test_the_received_copy_after_delivery(tmp_path: Path, gateway_factory, keep: bool) -> None:
    """Delivered everywhere: the received copy moves to kept/ (until the sweep) or is deleted."""
    config = build_config(tmp_path, spool={"keep_after_delivery": keep})
    gateway = gateway_factory(config)
    (ds,) = make_series(1, rows=32, columns=32)
    assert send(gateway.port, [ds]) == [0]
    spool = gateway.spool
    # The spool's collector deletes the held copy, then the object, after the job is done.
    assert wait_until(lambda: spool.count_jobs("done") == 1 and not spool.held_ids()
                      and not list(spool.objects.iterdir()), timeout=60)
    kept = list(spool.kept.iterdir())
    if not keep:
        assert kept == []
        return
    (copy,) = kept
    assert dcmread(copy).SOPInstanceUID == ds.SOPInstanceUID
    assert np.array_equal(dcmread(copy).pixel_array, ds.pixel_array), "the copy as received"
    assert spool.prune_kept(3600.0) == 0, "kept for keep_done_hours"
    assert spool.prune_kept(0.0, now=time.time() + 1) == 1 and list(spool.kept.iterdir()) == []


def test_an_uncommitted_instance_keeps_its_copy_in_the_spool(tmp_path: Path, archive, gateway_factory) -> None:
    """Deleting (or setting aside) the copy waits for every destination: one stored, one not committed."""
    series = make_series(1, rows=32, columns=32)
    server = archive(fail={str(series[0].SOPInstanceUID): 0x0122})
    config = build_config(tmp_path, [
        {"name": "local", "kind": "folder", "path": "archive"},
        {"name": "pacs", "kind": "dicom", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": server.port,
         "storage_commitment": True, "commitment_timeout_seconds": 10}], spool={"keep_after_delivery": False})
    gateway = gateway_factory(config)
    assert send(gateway.port, series) == [0]
    spool = gateway.spool
    assert wait_until(lambda: spool.count_jobs("done", "local") == 1 and spool.count_jobs("dead", "pacs") == 1,
                      timeout=60), spool.counts()
    assert len(spool.held_ids()) == 1, "the copy stays while an archive has not committed"
    assert server.stored, "the archive did receive it"
    (dead,) = list(spool.jobs_in("dead", "pacs"))
    assert "0x0122" in (dead.reason or "")


def test_reports_on_other_transactions_do_not_hold_the_wait_past_its_time(tmp_path: Path) -> None:
    """An archive that keeps reporting on transactions we did not ask about: a transient failure after
    commitment_timeout_seconds, not a wait for as long as it keeps talking."""
    import socket

    from pydicom.uid import generate_uid
    from pynetdicom.dsutils import encode

    from tests.test_scu import ScriptedPeer, handshake, p_data, read_message, recv_pdu, response

    stop = threading.Event()

    def report(context: int, number: int) -> bytes:
        command = Dataset()
        command.AffectedSOPClassUID = STORAGE_COMMITMENT
        command.CommandField = 0x0100
        command.MessageID = 100 + number
        command.CommandDataSetType = 0
        command.AffectedSOPInstanceUID = STORAGE_COMMITMENT_INSTANCE
        command.EventTypeID = 1
        result = Dataset()
        result.TransactionUID = generate_uid()
        result.ReferencedSOPSequence = []
        return p_data(context, encode(command, True, True)) + p_data(context, encode(result, True, True), flags=0x02)

    def script(conn: socket.socket) -> None:
        handshake(conn)
        message = read_message(conn)  # the C-STORE
        conn.sendall(p_data(message.context, response(message.context, answered=message.decoded.MessageID)))
        message = read_message(conn)  # the N-ACTION
        conn.sendall(p_data(message.context, response(message.context, field=0x8130,
                                                      answered=message.decoded.MessageID)))
        def drain() -> None:  # our answers to the reports, until the connection is closed under it
            with contextlib.suppress(OSError):
                while not stop.is_set() and recv_pdu(conn) is not None:
                    pass

        threading.Thread(target=drain, daemon=True).start()
        reports = b"".join(report(message.context, n) for n in range(50))
        deadline = time.monotonic() + 20
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline and not stop.is_set():
                conn.sendall(reports)

    peer = ScriptedPeer(script)
    jobs, paths, _ = _objects(tmp_path, 1)
    dest = build_config(tmp_path, [{"name": "pacs", "kind": "dicom", "ae_title": "ARCHIVE", "host": "127.0.0.1",
                                    "port": peer.port, "storage_commitment": True, "commitment_timeout_seconds": 1,
                                    "timeout_seconds": 5}]).destinations[0]
    sender = DicomSender(dest, locate=lambda job: paths[job.instance])
    started = time.monotonic()
    try:
        out = _outcomes(sender, jobs, paths)
    finally:
        stop.set()
        peer.close()
    assert isinstance(out[0], TransientForwardError), out
    assert time.monotonic() - started < 8, "the wait ended about commitment_timeout_seconds after the request"
