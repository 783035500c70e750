"""A gateway upgraded (or downgraded) in place: the new release starts on the spool and the proof record
another release left, written here as that release wrote them."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import Config
from gateway.record import ProofRecord
from gateway.service import Gateway
from gateway.spool import DEAD, PENDING, Spool
from tests.conftest import build_config, wait_until
from tests.test_record import _toml

INSTANCE = "01796537553516011048-d6290c349fbe-4d4f44414c495459"  # received from MODALITY


# --------------------------------------------------------------------------- forwarders' states


def test_forwarder_states_of_the_last_run_are_not_shown_once_restarted(
        tmp_path: Path, gateway_factory: Callable[[Config], Gateway], capsys: pytest.CaptureFixture[str]) -> None:
    """The last run's forwarders, failing when it stopped (two associations then), saved these; the
    restarted gateway's forwarders succeed and save nothing, so status said "failing since" for good."""
    config = build_config(tmp_path)
    state = tmp_path / "spool" / "state"
    state.mkdir(parents=True)
    for partition in (0, 1):
        (state / f"local.{partition}.json").write_text(json.dumps({
            "destination": "local", "partition": partition, "failing_since": 1796537553.68,
            "last_error": "cannot write archive/1.2/1.3/1.4.dcm: [Errno 28] No space left on device",
            "last_error_at": 1796537555.7, "last_success_at": None, "next_attempt_at": 1796537558.68,
            "saved_at": 1796537555.7}))
    gateway = gateway_factory(config)
    assert wait_until(lambda: gateway.forwarding, timeout=30)
    assert gateway.spool.destination_states("local") == []
    assert main(["status", "--config", str(_toml(tmp_path, config.server.port))]) == 0
    out = capsys.readouterr().out
    assert "local: pending=0" in out
    assert "failing since" not in out and "No space left" not in out


# --------------------------------------------------------------------------- job manifests


def test_a_manifest_field_this_release_does_not_know_keeps_the_job(tmp_path: Path) -> None:
    """A newer release's dead letter (a field added), then a downgrade: the job was unreadable, so the
    start's recovery deleted it as damaged and the held instance was queued to the refusing archive
    again; status died with a TypeError."""
    spool = Spool(tmp_path / "spool")
    (spool.held / f"{INSTANCE}.dcm").write_bytes(b"the received file")
    manifest = {"instance": INSTANCE, "destination": "pacs", "state": "dead", "attempts": 1,
                "next_retry_at": 0.0, "reason": "pacs answered C-STORE status 0xC000", "created_at": 1.0,
                "updated_at": 2.0, "identity": {"sop_instance_uid": "1.2.3", "modality": "CT"},
                "calling_ae": "MODALITY", "received_at": 1.0, "destinations": ["pacs"], "processing_failed": None,
                "priority": 3, "extra": "a newer release's"}
    (spool.jobs / DEAD / f"{INSTANCE}@pacs.json").write_text(json.dumps(manifest))

    assert spool.recover()["damaged"] == 0
    [job] = spool.jobs_page(DEAD, 0, 20)
    assert (job.sop, job.destination, job.reason) == ("1.2.3", "pacs", "pacs answered C-STORE status 0xC000")

    [retried] = spool.requeue_dead("pacs")
    assert retried.state == PENDING
    written = json.loads((spool.jobs / PENDING / f"{INSTANCE}@pacs.json").read_text())
    assert written["priority"] == 3 and written["extra"] == "a newer release's"  # kept for that release
    assert written["attempts"] == 0 and written["reason"] is None
    assert not (spool.jobs / DEAD / f"{INSTANCE}@pacs.json").exists()


# --------------------------------------------------------------------------- the proof record

# The record as the first releases with one wrote it: no deliveries.bytes, no instances.encode_options, no
# commitments, reencodings or running totals.
_FIRST_SCHEMA = """
CREATE TABLE instances (
    id TEXT PRIMARY KEY, sop_instance_uid TEXT NOT NULL, sop_class_uid TEXT NOT NULL, study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL, modality TEXT NOT NULL, received_at REAL NOT NULL, calling_ae TEXT NOT NULL,
    called_ae TEXT NOT NULL, remote TEXT NOT NULL, transfer_syntax TEXT NOT NULL, bytes INTEGER NOT NULL,
    processed_at REAL, outcome TEXT, reason TEXT, target_syntax TEXT, original_pixel_bytes INTEGER,
    encoded_pixel_bytes INTEGER, encode_seconds REAL, verify_seconds REAL, source_decoder TEXT, pixel_hash TEXT
);
CREATE INDEX instances_sop ON instances (sop_instance_uid);
CREATE INDEX instances_received ON instances (received_at);
CREATE TABLE verifications (id TEXT NOT NULL, decoder TEXT NOT NULL, pixel_hash TEXT NOT NULL,
                            PRIMARY KEY (id, decoder));
CREATE TABLE deliveries (
    id TEXT NOT NULL, destination TEXT NOT NULL, at REAL NOT NULL, outcome TEXT NOT NULL, syntax TEXT,
    attempts INTEGER NOT NULL, seconds REAL, reason TEXT, PRIMARY KEY (id, destination, at)
);
"""

_ADD = "ON CONFLICT (name, label) DO UPDATE SET value = value + excluded.value;"

# Running totals as a release before the console's overview kept them: received, encoded bytes and forwarded
# per destination, none of the names the overview reads (recompressed, saved_*, delivered_bytes, dead).
_OLDER_TRIGGERS = f"""
DROP TRIGGER totals_received;
DROP TRIGGER totals_processed;
DROP TRIGGER totals_delivered;
CREATE TRIGGER totals_received AFTER INSERT ON instances BEGIN
INSERT INTO totals (name, label, value) SELECT 'received', '', 1 * (1) FROM (SELECT 1) WHERE 1 {_ADD}
INSERT INTO totals (name, label, value) SELECT 'received_bytes', '', 1 * (NEW.bytes) FROM (SELECT 1) WHERE 1 {_ADD}
INSERT INTO totals (name, label, value) SELECT 'encoded_bytes', '', 1 * (COALESCE(NEW.encoded_pixel_bytes, 0))
    FROM (SELECT 1) WHERE NEW.outcome = 'recompressed' {_ADD}
END;
CREATE TRIGGER totals_processed AFTER UPDATE OF outcome, encoded_pixel_bytes ON instances BEGIN
INSERT INTO totals (name, label, value) SELECT 'encoded_bytes', '', -1 * (COALESCE(OLD.encoded_pixel_bytes, 0))
    FROM (SELECT 1) WHERE OLD.outcome = 'recompressed' {_ADD}
INSERT INTO totals (name, label, value) SELECT 'encoded_bytes', '', 1 * (COALESCE(NEW.encoded_pixel_bytes, 0))
    FROM (SELECT 1) WHERE NEW.outcome = 'recompressed' {_ADD}
END;
CREATE TRIGGER totals_delivered AFTER INSERT ON deliveries BEGIN
INSERT INTO totals (name, label, value) SELECT 'forwarded', NEW.destination, 1 * (1) FROM (SELECT 1)
    WHERE NEW.outcome = 'delivered' {_ADD}
END;
"""


RLE_LOSSLESS = "1.2.840.10008.1.2.5"
PRIVATE_SYNTAX = "2.25.98736700971092333592611877631001549337"  # gwl


def _instance(db: sqlite3.Connection, ident: str, modality: str, original: int, encoded: int, at: float,
              target: str = RLE_LOSSLESS, outcome: str = "recompressed") -> None:
    db.execute("INSERT INTO instances (id, sop_instance_uid, sop_class_uid, study_uid, series_uid, modality, "
               "received_at, calling_ae, called_ae, remote, transfer_syntax, bytes, processed_at, outcome, "
               "target_syntax, original_pixel_bytes, encoded_pixel_bytes, encode_seconds, source_decoder, pixel_hash) "
               "VALUES (?, ?, '1.2.840.10008.5.1.4.1.1.2', '1.2.9', '1.2.9.1', ?, ?, 'MODALITY', 'GATEWAY', "
               "'127.0.0.1:40000', '1.2.840.10008.1.2.1', ?, ?, ?, ?, ?, ?, 0.01, 'native', 'ab')",
               (ident, f"1.2.9.1.{ident}", modality, at, original + 1000, at + 1, outcome, target, original, encoded))


def test_a_record_of_the_first_schema_is_migrated_and_read(tmp_path: Path) -> None:
    """A record of months, written before the added columns, tables and running totals: audit reads its
    rows and the overview counts them."""
    path = tmp_path / "record.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(_FIRST_SCHEMA)
    _instance(db, "a", "CT", 524288, 235024, 1_780_000_000.0)
    _instance(db, "b", "MR", 131072, 12113, 1_780_000_100.0)
    db.execute("INSERT INTO verifications VALUES ('a', 'ours/rle', 'ab')")
    db.execute("INSERT INTO deliveries (id, destination, at, outcome, syntax, attempts, seconds, reason) "
               "VALUES ('a', 'pacs', 1780000002.0, 'delivered', '1.2.840.10008.1.2.5', 1, 0.02, NULL)")
    db.execute("INSERT INTO deliveries (id, destination, at, outcome, syntax, attempts, seconds, reason) "
               "VALUES ('b', 'pacs', 1780000102.0, 'dead', NULL, 1, NULL, 'pacs answered C-STORE status 0xC000')")
    db.close()

    record = ProofRecord(path)
    try:
        [entry] = record.find("1.2.9.1.a")
        assert entry["encode_options"] is None and entry["verified_by"] == [{"decoder": "ours/rle", "pixel_hash": "ab"}]
        assert [(d["destination"], d["outcome"], d["bytes"]) for d in entry["deliveries"]] == [("pacs", "delivered", None)]
        assert entry["commitments"] == [] and entry["reencoded"] == []
        assert record.totals() == {"received": 2, "received_bytes": 524288 + 131072 + 2000, "recompressed": 2,
                                   "passed_through": 0, "delivered": 1, "delivered_bytes": 0, "dead": 1}
        assert {row["key"]: row["instances"] for row in record.savings("modality")} == {"CT": 1, "MR": 1}
    finally:
        record.close()


def test_our_private_syntax_recorded_before_its_versions_is_version_1(tmp_path: Path) -> None:
    """The releases before encode_options wrote our private syntax in version 1 only; migrated, their rows
    held no options, which reads as this release's default, version 2."""
    path = tmp_path / "record.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(_FIRST_SCHEMA)
    _instance(db, "gwl", "CT", 524288, 201000, 1_780_000_000.0, target=PRIVATE_SYNTAX)
    _instance(db, "rle", "CT", 524288, 235024, 1_780_000_001.0)
    _instance(db, "kept", "CT", 524288, 0, 1_780_000_002.0, target=PRIVATE_SYNTAX, outcome="passed-through")
    db.close()

    record = ProofRecord(path)
    try:
        assert [record.find(f"1.2.9.1.{ident}")[0]["encode_options"] for ident in ("gwl", "rle", "kept")] == [
            "version=1", None, None]
    finally:
        record.close()
    db = sqlite3.connect(path, isolation_level=None)  # a row of this release is left as written
    db.execute("UPDATE instances SET encode_options = 'version=2' WHERE id = 'gwl'")
    db.close()
    record = ProofRecord(path)
    try:
        assert record.find("1.2.9.1.gwl")[0]["encode_options"] == "version=2"
    finally:
        record.close()


def test_totals_an_older_release_stopped_keeping_are_counted_again(tmp_path: Path) -> None:
    """A downgrade after an upgrade: the older release put its own triggers back, which keep none of the
    overview's totals, and received and delivered meanwhile.  Opened by this release again, the totals
    were marked counted already: recompressed, savings, delivered bytes and dead letters left those rows
    out for good."""
    path = tmp_path / "record.sqlite"
    ProofRecord(path).close()  # this release's record: its totals and their triggers
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(_OLDER_TRIGGERS)  # the older release opened it
    _instance(db, "a", "CT", 524288, 235024, 1_780_000_000.0)
    _instance(db, "b", "CT", 524288, 200000, 1_780_000_100.0)
    db.execute("INSERT INTO deliveries (id, destination, at, outcome, syntax, attempts, seconds, bytes) "
               "VALUES ('a', 'pacs', 1780000002.0, 'delivered', '1.2.840.10008.1.2.5', 1, 0.02, 236000)")
    db.execute("INSERT INTO deliveries (id, destination, at, outcome, syntax, attempts, seconds, reason) "
               "VALUES ('b', 'pacs', 1780000102.0, 'dead', NULL, 1, NULL, 'pacs answered C-STORE status 0xC000')")
    db.close()

    record = ProofRecord(path)
    try:
        assert record.totals() == {"received": 2, "received_bytes": 2 * 525288, "recompressed": 2, "passed_through": 0,
                                   "delivered": 1, "delivered_bytes": 236000, "dead": 1}
        assert record.savings("modality") == [{"key": "CT", "instances": 2, "original": 1048576,
                                               "encoded": 435024}]
        assert record.savings("target_syntax") == [{"key": "1.2.840.10008.1.2.5", "instances": 2,
                                                    "original": 1048576, "encoded": 435024}]
    finally:
        record.close()
    record = ProofRecord(path)  # counted once: opening it again adds nothing
    try:
        assert record.totals()["recompressed"] == 2 and record.totals()["delivered_bytes"] == 236000
    finally:
        record.close()


def test_totals_counted_again_never_go_below_what_they_held(tmp_path: Path) -> None:
    """Counted again from the rows after a downgrade, a total loses the instances pruned since it began:
    it keeps what it held when that is more."""
    path = tmp_path / "record.sqlite"
    ProofRecord(path).close()
    db = sqlite3.connect(path, isolation_level=None)
    _instance(db, "a", "CT", 524288, 235024, 1_700_000_000.0)  # counted by this release's triggers
    _instance(db, "b", "CT", 524288, 200000, 1_700_000_100.0)
    db.close()
    record = ProofRecord(path)
    try:
        assert record.prune(1_750_000_000.0) == 2
    finally:
        record.close()
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(_OLDER_TRIGGERS)
    _instance(db, "c", "MR", 131072, 12113, 1_780_000_000.0)  # the older release's, uncounted
    db.close()

    record = ProofRecord(path)
    try:
        assert record.totals()["received"] == 3 and record.totals()["recompressed"] == 2
        assert {row["key"]: row["instances"] for row in record.savings("modality")} == {"CT": 2, "MR": 1}
    finally:
        record.close()
