"""The proof record: every stage of every instance, durable, readable with `audit`, without patient data."""

from __future__ import annotations

import contextlib
import csv
import gc
import hashlib
import io
import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.pixels import pixel_array

from gateway.cli import main as cli_main
from gateway.dicom.identity import Identity
from gateway.record import RECORD_FILE, ProofRecord
from tests.conftest import build_config, free_port, listening, pydicom_file, send, start_serve, wait_until

IDENT = Identity("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.3", "1.2.3.9", "CT", "1.2.840.10008.1.2.1")


def _toml(root: Path, port: int) -> Path:
    path = root / "gateway.toml"
    path.write_text(f'[server]\nport = {port}\n[spool]\ndirectory = "spool"\n'
                    '[compression]\ntransfer_syntax = "RLELossless"\n'
                    '[[destinations]]\nname = "local"\nkind = "folder"\npath = "archive"\n')
    return path


def test_stages_are_recorded_and_read_back(tmp_path: Path) -> None:
    record = ProofRecord(tmp_path / RECORD_FILE)
    record.received("i1", IDENT, calling_ae="CT1", called_ae="GATEWAY", remote="127.0.0.1:5000", size=1000, at=10.0)
    record.processed("i1", IDENT, recompressed=True, reason=None, target_syntax="1.2.840.10008.1.2.5",
                     original_pixel_bytes=800, encoded_pixel_bytes=300, encode_seconds=0.01, verify_seconds=0.002,
                     source_decoder="native", pixel_hash="ab" * 32,
                     verified_by=(("ours/rle", "ab" * 32), ("pylibjpeg-rle", "ab" * 32)))
    record.delivery("i1", "pacs", outcome="delivered", syntax="1.2.840.10008.1.2.5", attempts=1, seconds=0.01)
    [entry] = record.find("1.2.3.4")
    assert entry["calling_ae"] == "CT1" and entry["remote"] == "127.0.0.1:5000" and entry["bytes"] == 1000
    assert entry["outcome"] == "recompressed" and entry["encoded_pixel_bytes"] == 300
    assert entry["verified_by"] == [{"decoder": "ours/rle", "pixel_hash": "ab" * 32},
                                    {"decoder": "pylibjpeg-rle", "pixel_hash": "ab" * 32}]
    assert [(d["destination"], d["outcome"]) for d in entry["deliveries"]] == [("pacs", "delivered")]
    assert [e["id"] for e in record.since(10.0)] == ["i1"] and list(record.since(11.0)) == []
    assert record.prune(11.0) == 1 and record.find("1.2.3.4") == []
    assert oct((tmp_path / RECORD_FILE).stat().st_mode & 0o777) == "0o600"


def test_a_threads_connection_is_closed_when_the_thread_ends(tmp_path: Path) -> None:
    record = ProofRecord(tmp_path / RECORD_FILE)
    used: list[sqlite3.Connection] = []

    def receive() -> None:
        record.received("i1", IDENT, calling_ae="CT1", called_ae="GATEWAY", remote="", size=1)
        used.append(record._connection())

    thread = threading.Thread(target=receive)
    thread.start()
    thread.join()
    gc.collect()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        used[0].execute("SELECT 1")
    assert record.find("1.2.3.4")[0]["calling_ae"] == "CT1"  # this thread opens its own
    own = record._connection()
    record.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        own.execute("SELECT 1")


def test_the_worker_stands_in_for_a_missing_receive_row(tmp_path: Path) -> None:
    record = ProofRecord(tmp_path / RECORD_FILE)
    record.processed("i2", IDENT, recompressed=False, reason="already in the target syntax",
                     target_syntax=IDENT.transfer_syntax, calling_ae="CT1", received_at=5.0)
    [entry] = record.find(IDENT.sop_instance_uid)
    assert entry["outcome"] == "passed-through" and entry["received_at"] == 5.0 and entry["calling_ae"] == "CT1"


def test_a_send_through_the_gateway_is_on_record_with_an_independent_hash(
        tmp_path: Path, gateway_factory, capsys) -> None:
    config = build_config(tmp_path)
    gateway = gateway_factory(config)
    ds = pydicom_file("CT_small.dcm")
    assert send(gateway.port, [ds], calling="CT_SCANNER") == [0]
    assert gateway.wait_idle(60)
    toml = tmp_path / "gateway.toml"
    toml.write_text(f'[spool]\ndirectory = "{config.spool.directory}"\n'
                    '[[destinations]]\nname = "local"\nkind = "folder"\npath = "archive"\n')
    assert wait_until(lambda: ProofRecord(config.spool.directory / RECORD_FILE).find(str(ds.SOPInstanceUID))
                      and ProofRecord(config.spool.directory / RECORD_FILE)
                      .find(str(ds.SOPInstanceUID))[0]["deliveries"], timeout=30)
    capsys.readouterr()
    assert cli_main(["audit", "--config", str(toml), str(ds.SOPInstanceUID)]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    # The hash anyone can recompute with plain pydicom, from the file as it was sent.
    truth = hashlib.sha256(np.ascontiguousarray(pixel_array(ds, raw=True)).tobytes()).hexdigest()
    assert entry["pixel_hash"] == truth and entry["source_decoder"] == "native"
    assert entry["calling_ae"] == "CT_SCANNER" and entry["called_ae"] == "GATEWAY"
    assert entry["remote"].startswith("127.0.0.1:")
    assert entry["outcome"] == "recompressed" and entry["target_syntax"] == "1.2.840.10008.1.2.5"
    assert [v["decoder"] for v in entry["verified_by"]] == ["ours/rle", "pylibjpeg-rle"]
    assert {v["pixel_hash"] for v in entry["verified_by"]} == {truth}
    [delivery] = entry["deliveries"]
    assert delivery["destination"] == "local" and delivery["outcome"] == "delivered"
    stored = dcmread(next((tmp_path / "archive").rglob("*.dcm")))
    assert hashlib.sha256(np.ascontiguousarray(pixel_array(stored, raw=True)).tobytes()).hexdigest() == truth
    # Nothing identifying the patient is kept.
    with contextlib.closing(sqlite3.connect(config.spool.directory / RECORD_FILE)) as db:
        dump = "\n".join(db.iterdump())
    assert str(ds.PatientName) not in dump and str(ds.PatientID) not in dump

    capsys.readouterr()
    assert cli_main(["audit", "--config", str(toml), "--since", "2000-01-01T00:00", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [row["sop_instance_uid"] for row in rows] == [str(ds.SOPInstanceUID)]
    assert rows[0]["deliveries"] == "local=delivered:1.2.840.10008.1.2.5"
    assert cli_main(["audit", "--config", str(toml), "1.2.3.999"]) == 1
    assert cli_main(["audit", "--config", str(toml), "--since", "yesterday"]) == 2


def test_the_record_survives_kill_9(tmp_path: Path) -> None:
    port = free_port()
    config = _toml(tmp_path, port)
    process = start_serve(config, tmp_path / "gateway.log")
    try:
        assert wait_until(lambda: listening(port), timeout=180), (tmp_path / "gateway.log").read_text()[-2000:]
        ds = pydicom_file("CT_small.dcm")
        assert send(port, [ds]) == [0]
        record = ProofRecord(tmp_path / "spool" / RECORD_FILE)
        assert wait_until(lambda: bool(record.find(str(ds.SOPInstanceUID))
                                       and record.find(str(ds.SOPInstanceUID))[0]["deliveries"]), timeout=60)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
    time.sleep(0.1)
    [entry] = ProofRecord(tmp_path / "spool" / RECORD_FILE).find(str(ds.SOPInstanceUID))
    assert entry["outcome"] == "recompressed" and entry["deliveries"][0]["outcome"] == "delivered"


def test_a_dead_letter_is_on_record_with_its_reason(tmp_path: Path, gateway_factory) -> None:
    config = build_config(tmp_path, destinations=[{"name": "nowhere", "kind": "dicom", "ae_title": "PACS",
                                                   "host": "127.0.0.1", "port": free_port(),
                                                   "timeout_seconds": 2}],
                          retry={"max_attempts": 1})
    gateway = gateway_factory(config)
    ds = pydicom_file("CT_small.dcm")
    assert send(gateway.port, [ds]) == [0]
    record = ProofRecord(config.spool.directory / RECORD_FILE)
    assert wait_until(lambda: bool(record.find(str(ds.SOPInstanceUID))
                                   and record.find(str(ds.SOPInstanceUID))[0]["deliveries"]), timeout=60)
    [delivery] = record.find(str(ds.SOPInstanceUID))[0]["deliveries"]
    assert delivery["outcome"] == "dead" and "gave up after 1 attempts" in delivery["reason"]


@pytest.mark.parametrize("bad", ["0", "-1"])
def test_record_retention_is_validated(tmp_path: Path, bad: str) -> None:
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError, match="spool.keep_record_days"):
        build_config(tmp_path, spool={"directory": "spool", "keep_record_days": float(bad)})


# ---------------------------------------------------------------- running totals (what /metrics reads)

_OUTCOMES = [
    dict(recompressed=True, reason=None, encoded_pixel_bytes=1000, original_pixel_bytes=4000, encode_seconds=0.02),
    dict(recompressed=True, reason=None, encoded_pixel_bytes=700, original_pixel_bytes=2000, encode_seconds=3.0),
    dict(recompressed=False, reason="lossy-compressed source (JPEG Baseline)"),
    dict(recompressed=False, reason="verification failed: frame 1 differs"),
    dict(recompressed=False, reason="decoding failed: frame 2 is cut short"),
    dict(recompressed=False, reason="something nobody named"),
]


def _recomputed(path: Path) -> dict[tuple[str, str], float]:
    """The totals as the rows give them now, counted here in Python from every row."""
    from gateway.record import ENCODE_BUCKETS, FORWARD_BUCKETS, reason_class

    db = sqlite3.connect(path)
    out: dict[tuple[str, str], float] = {}

    def add(name: str, label: str = "", value: float = 1) -> None:
        out[(name, label)] = out.get((name, label), 0) + value

    def timed(name: str, seconds: float, bounds: tuple[float, ...]) -> None:
        add(f"{name}_count")
        add(f"{name}_sum", value=seconds)
        for bound in bounds:
            if seconds <= bound:
                add(f"{name}_bucket", repr(bound))

    for size, outcome, reason, encoded, original, seconds, modality, syntax in db.execute(
            "SELECT bytes, outcome, reason, encoded_pixel_bytes, original_pixel_bytes, encode_seconds, modality, "
            "target_syntax FROM instances"):
        add("received")
        add("received_bytes", value=size)
        if outcome == "recompressed":
            add("encoded_bytes", value=encoded or 0)
            add("recompressed_pixel_bytes", value=original or 0)
            if seconds is not None:
                timed("encode_seconds", seconds, ENCODE_BUCKETS)
            add("recompressed")
            for by, key in (("modality", modality), ("target_syntax", syntax or "")):
                add(f"saved_{by}_instances", key)
                for part, value in (("original", original), ("encoded", encoded)):
                    if value:
                        add(f"saved_{by}_{part}", key, value)
        if outcome == "passed-through":
            add("passed_through", reason_class(reason))
        if (reason or "").startswith("verification failed"):
            add("verification_failures")
        if (reason or "").startswith("decoding failed"):
            add("malformed")
    for destination, outcome, seconds, size in db.execute("SELECT destination, outcome, seconds, bytes FROM deliveries"):
        if outcome == "delivered":
            add("forwarded", destination)
            if seconds is not None:
                timed("forward_seconds", seconds, FORWARD_BUCKETS)
            if size:
                add("delivered_bytes", value=size)
        if outcome == "dead":
            add("dead")
    db.close()
    return out


def _fill(record: ProofRecord, count: int, seed: int, *, at: float | None = None) -> None:
    rng = np.random.default_rng(seed)
    for n in range(count):
        ident = f"{seed}-{n}"
        record.received(ident, IDENT, calling_ae="CT1", called_ae="GATEWAY", remote="127.0.0.1:1", size=500 + n,
                        at=at)
        for outcome in rng.choice(len(_OUTCOMES), size=int(rng.integers(0, 3))):  # processed 0, 1 or 2 times
            record.processed(ident, IDENT, target_syntax="1.2.840.10008.1.2.5", **_OUTCOMES[outcome])
        for destination in ("local", "pacs")[:int(rng.integers(0, 3))]:
            record.delivery(ident, destination, outcome=str(rng.choice(["delivered", "dead"])), syntax=None,
                            attempts=1, seconds=float(rng.choice([0.003, 0.2, 7.0])))


def _nonzero(totals: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    return {key: value for key, value in totals.items() if abs(value) > 1e-9}


def test_the_running_totals_follow_every_row_and_an_instance_processed_again_counts_once(tmp_path: Path) -> None:
    record = ProofRecord(tmp_path / RECORD_FILE)
    _fill(record, 200, seed=1)
    expected = _recomputed(record.path)
    assert expected[("received", "")] == 200 and ("passed_through", "other") in expected
    got = _nonzero(record.running_totals())
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


def test_pruning_leaves_the_totals_as_they_are(tmp_path: Path) -> None:
    record = ProofRecord(tmp_path / RECORD_FILE)
    _fill(record, 50, seed=2, at=1000.0)
    before = record.running_totals()
    assert record.prune(older_than=2000.0) == 50
    assert record.running_totals() == before, "counters never go down"


def test_a_record_written_before_the_totals_is_counted_once_when_opened(tmp_path: Path) -> None:
    path = tmp_path / RECORD_FILE
    _fill(ProofRecord(path), 80, seed=3)
    db = sqlite3.connect(path)  # as an older release left it: rows, and no totals
    for name in ("totals_received", "totals_processed", "totals_delivered"):
        db.execute(f"DROP TRIGGER {name}")
    db.execute("DROP TABLE totals")
    db.commit()
    db.close()
    gc.collect()
    expected = _recomputed(path)
    for _ in range(2):  # a second opening adds nothing
        got = _nonzero(ProofRecord(path).running_totals())
        assert got.keys() == expected.keys()
        assert all(got[key] == pytest.approx(value) for key, value in expected.items())


def test_triggers_of_another_release_are_replaced_and_the_totals_count_on(tmp_path: Path) -> None:
    """A release that classes reasons otherwise: its triggers give way to this one's when the record is
    opened, and what the totals held stays."""
    path = tmp_path / RECORD_FILE
    _fill(ProofRecord(path), 40, seed=4)
    db = sqlite3.connect(path)  # as an older release left it: a class it did not know is "other"
    (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'totals_processed'").fetchone()
    assert "encapsulated_icon" in sql
    db.execute("DROP TRIGGER totals_processed")
    db.execute(sql.replace("encapsulated_icon", "other"))
    db.commit()
    db.close()
    gc.collect()
    record = ProofRecord(path)
    before = record.running_totals()
    record.received("icon", IDENT, calling_ae="CT1", called_ae="GATEWAY", remote="127.0.0.1:1", size=10)
    record.processed("icon", IDENT, target_syntax="1.2.840.10008.1.2.5", recompressed=False,
                     reason="'IconImageSequence' holds encapsulated Pixel Data (an icon), unreadable in a file of "
                            "another transfer syntax than its own (PS3.5 A.4); kept as received")
    after = record.running_totals()
    assert after[("passed_through", "encapsulated_icon")] - before.get(("passed_through", "encapsulated_icon"), 0) == 1
    assert after.get(("passed_through", "other"), 0) == before.get(("passed_through", "other"), 0)
    assert after[("received", "")] == before[("received", "")] + 1


def test_totals_added_since_are_counted_once_from_the_rows_already_there(tmp_path: Path) -> None:
    """A record whose running totals predate those the console's overview reads (recompressed, the savings,
    delivered bytes, dead letters): they are counted from its rows when it is opened, once, and the overview's
    counts and savings are the running totals, never an aggregate over every row."""
    from gateway.record import _ADDED_TOTALS

    path = tmp_path / RECORD_FILE
    record = ProofRecord(path)
    _fill(record, 60, seed=5)
    record.delivery("5-0", "pacs", outcome="delivered", syntax=None, attempts=1, size=4321)
    record.close()
    db = sqlite3.connect(path)  # as the release before them left it
    db.execute(f"DELETE FROM totals WHERE name IN ({', '.join('?' * len(_ADDED_TOTALS))})", _ADDED_TOTALS)
    db.commit()
    db.close()
    gc.collect()
    expected = _recomputed(path)
    assert expected[("delivered_bytes", "")] == 4321 and expected[("recompressed", "")] > 0
    for _ in range(2):  # a second opening adds nothing
        reopened = ProofRecord(path)
        got = _nonzero(reopened.running_totals())
        assert got.keys() == expected.keys()
        assert all(got[key] == pytest.approx(value) for key, value in expected.items())
    totals = reopened.totals()
    assert totals["recompressed"] == expected[("recompressed", "")]
    assert totals["dead"] == expected.get(("dead", ""), 0) and totals["delivered_bytes"] == 4321
    (saved,) = reopened.savings("modality")
    assert (saved["key"], saved["instances"]) == (IDENT.modality, expected[("saved_modality_instances", IDENT.modality)])


@pytest.mark.parametrize("form", ["json", "csv"])
def test_audit_of_a_period_writes_each_instance_as_it_is_read(tmp_path: Path, monkeypatch, form: str) -> None:
    """`audit --since` held the whole period in memory before writing a line (210,000 instances: 752 MB; a
    record of millions would not fit); it writes each instance once read, the same text as before."""
    spool = tmp_path / "spool"
    record = ProofRecord(_spool_dir(spool) / RECORD_FILE)
    _fill(record, 30, seed=6, at=1e6)
    toml = tmp_path / "g.toml"
    toml.write_text(f'[spool]\ndirectory = "{spool}"\n[[destinations]]\nname = "local"\nkind = "folder"\n'
                    'path = "archive"\n')
    whole = [entry for entry in record.since(0.0)]
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    since = ProofRecord.since
    late: list[str] = []

    def watched(self, start):
        for index, entry in enumerate(since(self, start)):
            if index >= 2 and whole[index - 2]["id"] not in out.getvalue():
                late.append(whole[index - 2]["id"])
            yield entry

    monkeypatch.setattr(ProofRecord, "since", watched)
    assert cli_main(["audit", "--config", str(toml), "--since", "1970-01-02T00:00", "--format", form]) == 0
    assert not late, "nothing was written before the whole period was read"
    if form == "json":
        assert out.getvalue() == json.dumps(whole, indent=2) + "\n"
    else:
        assert [row["id"] for row in csv.DictReader(io.StringIO(out.getvalue()))] == [e["id"] for e in whole]
    out.truncate(0)
    out.seek(0)
    assert cli_main(["audit", "--config", str(toml), "--since", "2999-01-01T00:00", "--format", form]) == 0
    assert out.getvalue() == ("[]\n" if form == "json" else "id,verified_by,deliveries,commitments,reencoded\r\n")


def _spool_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
