"""The proof record: what happened to every instance, kept durably in the spool.

One SQLite database (``spool/record.sqlite``, WAL journal) with a row per
received instance and its stages, written as each stage completes:

* **received**: time, calling and called AE titles, remote address, the
  instance's UIDs, modality, transfer syntax and size;
* **processed**: recompressed (target syntax, the encoder options it was
  written with, such as our private syntax's ``version=2``, encoded bytes,
  ratio, time) or passed through (the reason); the decoder that read the
  original and the SHA-256 of its pixel values (:func:`gateway.pipeline.pixel_hash`: the hash of
  ``pydicom.pixels.pixel_array(ds, raw=True)``, recomputable by anyone; of an original kept as
  received because it holds data above Bits Stored, the hash of the stored words whole, those bits
  included, where pydicom would clear them);
* **verified**: each decoder that decoded the output and the hash of what it
  decoded (table ``verifications``);
* **forwarded**: per destination, the syntax sent, the bytes handed over, the outcome (delivered or
  dead) with the reason, the attempts and the time (table ``deliveries``);
* **committed**: per destination with storage commitment, each state of
  its commitment (pending when asked, then committed or failed with the
  archive's reason) and the Transaction UID (table ``commitments``);
* **re-encoded**: per destination that refused the stored syntax, the syntax
  the instance was re-encoded in for it and each decoder that verified that
  encoding with the hash of what it decoded (table ``reencodings``).

No patient names or IDs are stored: the record identifies instances by their
UIDs only.  A committed write survives ``kill -9`` of any process (WAL, with
``synchronous=NORMAL``); the service, its worker processes and the command
line each open their own connection, and SQLite serialises their writes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from gateway.dicom.identity import Identity
from gateway.dicom.uids import GATEWAY_LOSSLESS_V1
from gateway.errors import SpoolError
from gateway.pipeline.policy import MALFORMED_PREFIX

__all__ = ["ProofRecord", "RECORD_FILE", "COMMITMENT_STATES"]

RECORD_FILE = "record.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY,               -- the spool id of the received instance
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    modality TEXT NOT NULL,
    received_at REAL NOT NULL,
    calling_ae TEXT NOT NULL,
    called_ae TEXT NOT NULL,
    remote TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,     -- as received
    bytes INTEGER NOT NULL,            -- the received file
    processed_at REAL,
    outcome TEXT,                      -- 'recompressed' | 'passed-through'
    reason TEXT,                       -- why it was passed through
    target_syntax TEXT,                -- the syntax stored and delivered
    original_pixel_bytes INTEGER,
    encoded_pixel_bytes INTEGER,
    encode_seconds REAL,
    verify_seconds REAL,
    source_decoder TEXT,               -- what read the original
    pixel_hash TEXT,                   -- SHA-256 of the original's pixel values
    encode_options TEXT                -- the encoder options written with, e.g. 'version=2' (gwl)
);
CREATE INDEX IF NOT EXISTS instances_sop ON instances (sop_instance_uid);
CREATE INDEX IF NOT EXISTS instances_received ON instances (received_at);
CREATE TABLE IF NOT EXISTS verifications (
    id TEXT NOT NULL,
    decoder TEXT NOT NULL,
    pixel_hash TEXT NOT NULL,
    PRIMARY KEY (id, decoder)
);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT NOT NULL,
    destination TEXT NOT NULL,
    at REAL NOT NULL,
    outcome TEXT NOT NULL,             -- 'delivered' | 'dead'
    syntax TEXT,
    attempts INTEGER NOT NULL,
    seconds REAL,
    reason TEXT,
    PRIMARY KEY (id, destination, at)
);
CREATE TABLE IF NOT EXISTS commitments (
    id TEXT NOT NULL,
    destination TEXT NOT NULL,
    at REAL NOT NULL,
    state TEXT NOT NULL,               -- 'pending' | 'committed' | 'failed'
    transaction_uid TEXT NOT NULL,
    reason TEXT,
    PRIMARY KEY (id, destination, at, state)
);
CREATE INDEX IF NOT EXISTS deliveries_at ON deliveries (at);
CREATE TABLE IF NOT EXISTS reencodings (
    id TEXT NOT NULL,
    destination TEXT NOT NULL,
    syntax TEXT NOT NULL,              -- re-encoded in this syntax for a destination that refused the stored one
    decoder TEXT NOT NULL,             -- a decoder that gave the original's pixels back from it
    pixel_hash TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (id, destination, syntax, decoder)
);
"""

COMMITMENT_STATES = ("pending", "committed", "failed")

_INSTANCE_FIELDS = (
    "sop_instance_uid", "sop_class_uid", "study_uid", "series_uid", "modality", "received_at", "calling_ae",
    "called_ae", "remote", "transfer_syntax", "bytes", "processed_at", "outcome", "reason", "target_syntax",
    "original_pixel_bytes", "encoded_pixel_bytes", "encode_seconds", "verify_seconds", "source_decoder",
    "pixel_hash", "encode_options",
)

ENCODE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FORWARD_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# Pass-through reasons, by what they contain, to a label value: the first that matches.
REASON_CLASSES = (
    ("already in", "already_in_target_syntax"),
    ("configured to keep", "configured_to_keep"),
    ("lossy-compressed source", "lossy_source"),
    ("bits above", "data_above_bits_stored"),
    ("verification failed", "verification_failed"),
    ("would not shrink", "not_smaller"),
    ("cannot carry", "codec_cannot_carry"),
    ("processing failed", "processing_failed"),
    ("decoding failed", "undecodable"),
    ("unsupported image", "unsupported_image"),
    ("no pixel data", "no_pixel_data"),
    ("holds floating point", "float_pixels"),
    ("Bits Allocated", "bit_depth"),
    ("no space", "no_space"),
    ("malformed", "malformed"),
    ("encapsulated Pixel Data (an icon)", "encapsulated_icon"),
)


def reason_class(reason: str | None) -> str:
    """The label value of a pass-through reason (``other`` for what no rule names)."""
    text = reason or ""
    for needle, label in REASON_CLASSES:
        if needle in text:
            return label
    return "other"


def _buckets(bounds: tuple[float, ...]) -> str:
    return "(VALUES " + ", ".join(f"('{float(b)!r}', {float(b)!r})" for b in bounds) + ")"


_CLASS_SQL = ("CASE " + " ".join(f"WHEN instr(R.reason, '{needle}') > 0 THEN '{label}'"
                                 for needle, label in REASON_CLASSES) + " ELSE 'other' END")
_RECOMPRESSED = "R.outcome = 'recompressed'"
_TIMED = f"{_RECOMPRESSED} AND R.encode_seconds IS NOT NULL"
# What a processed instance row R adds to the totals: (name, label, value, source, condition).
_PROCESSED_TOTALS = (
    ("encoded_bytes", "''", "COALESCE(R.encoded_pixel_bytes, 0)", "", _RECOMPRESSED),
    ("recompressed_pixel_bytes", "''", "COALESCE(R.original_pixel_bytes, 0)", "", _RECOMPRESSED),
    ("passed_through", _CLASS_SQL, "1", "", "R.outcome = 'passed-through'"),
    ("verification_failures", "''", "1", "", "R.reason LIKE 'verification failed%'"),
    ("malformed", "''", "1", "", f"R.reason LIKE '{MALFORMED_PREFIX}%'"),
    ("encode_seconds_count", "''", "1", "", _TIMED),
    ("encode_seconds_sum", "''", "R.encode_seconds", "", _TIMED),
    ("encode_seconds_bucket", "column1", "1", f", {_buckets(ENCODE_BUCKETS)}", f"{_TIMED} AND R.encode_seconds <= column2"),
    # What the console's overview shows: recompressed instances, and the pixel bytes saved per modality and
    # per syntax stored.
    ("recompressed", "''", "1", "", _RECOMPRESSED),
    ("saved_modality_instances", "R.modality", "1", "", _RECOMPRESSED),
    ("saved_modality_original", "R.modality", "COALESCE(R.original_pixel_bytes, 0)", "", _RECOMPRESSED),
    ("saved_modality_encoded", "R.modality", "COALESCE(R.encoded_pixel_bytes, 0)", "", _RECOMPRESSED),
    ("saved_target_syntax_instances", "COALESCE(R.target_syntax, '')", "1", "", _RECOMPRESSED),
    ("saved_target_syntax_original", "COALESCE(R.target_syntax, '')", "COALESCE(R.original_pixel_bytes, 0)", "",
     _RECOMPRESSED),
    ("saved_target_syntax_encoded", "COALESCE(R.target_syntax, '')", "COALESCE(R.encoded_pixel_bytes, 0)", "",
     _RECOMPRESSED),
)
_DELIVERED = "R.outcome = 'delivered'"
_DELIVERY_TOTALS = (
    ("forwarded", "R.destination", "1", "", _DELIVERED),
    ("forward_seconds_count", "''", "1", "", f"{_DELIVERED} AND R.seconds IS NOT NULL"),
    ("forward_seconds_sum", "''", "R.seconds", "", f"{_DELIVERED} AND R.seconds IS NOT NULL"),
    ("forward_seconds_bucket", "column1", "1", f", {_buckets(FORWARD_BUCKETS)}",
     f"{_DELIVERED} AND R.seconds IS NOT NULL AND R.seconds <= column2"),
    ("delivered_bytes", "''", "COALESCE(R.bytes, 0)", "", _DELIVERED),
    ("dead", "''", "1", "", "R.outcome = 'dead'"),
)
# Totals added after records with running totals were in use: counted from the rows already there when a
# record without them is opened, once (a row of value 0 under the name says it was done), and again when the
# triggers found in place do not keep them (an older release opened the record since: _renew_triggers).
_ADDED_TOTALS = ("recompressed", "saved_modality_instances", "saved_modality_original", "saved_modality_encoded",
                 "saved_target_syntax_instances", "saved_target_syntax_original", "saved_target_syntax_encoded",
                 "delivered_bytes", "dead")
_RECEIVED_TOTALS = (
    ("received", "''", "1", "", "1"),
    ("received_bytes", "''", "R.bytes", "", "1"),
)
_ADD = " ON CONFLICT (name, label) DO UPDATE SET value = value + excluded.value;"


def _in_trigger(totals: tuple[tuple[str, str, str, str, str], ...], row: str, sign: str) -> str:
    """The statements adding `sign` times what the trigger's `row` (NEW or OLD) holds to the totals."""
    return "\n".join(
        f"INSERT INTO totals (name, label, value) SELECT '{name}', {label}, {sign} * ({value}) "
        f"FROM (SELECT 1){source} WHERE {condition}{_ADD}".replace("R.", f"{row}.")
        for name, label, value, source, condition in totals)


def _seeding(totals: tuple[tuple[str, str, str, str, str], ...], table: str) -> list[str]:
    """The statements adding what every row of `table` holds to the totals."""
    return [f"INSERT INTO totals (name, label, value) SELECT '{name}', {label}, SUM({value}) "
            f"FROM {table} AS R{source} WHERE {condition} GROUP BY 2{_ADD}"
            for name, label, value, source, condition in totals]


# Running totals for the metrics, kept by triggers as rows are written: a scrape reads a few rows, not the
# whole record, and pruning (a DELETE, which no trigger follows) leaves them as they are, as counters must.
# A processed row counts with its latest outcome: processing it again takes its earlier one back.
_TOTALS_SCHEMA = (
    "CREATE TABLE totals (name TEXT NOT NULL, label TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (name, label))",
    f"""CREATE TRIGGER totals_received AFTER INSERT ON instances BEGIN
{_in_trigger(_RECEIVED_TOTALS, "NEW", "1")}
{_in_trigger(_PROCESSED_TOTALS, "NEW", "1")}
END""",
    f"""CREATE TRIGGER totals_processed AFTER UPDATE OF outcome, reason, original_pixel_bytes, encoded_pixel_bytes,
    encode_seconds, target_syntax ON instances BEGIN
{_in_trigger(_PROCESSED_TOTALS, "OLD", "-1")}
{_in_trigger(_PROCESSED_TOTALS, "NEW", "1")}
END""",
    f"""CREATE TRIGGER totals_delivered AFTER INSERT ON deliveries BEGIN
{_in_trigger(_DELIVERY_TOTALS, "NEW", "1")}
END""",
)

# Each trigger's statement by name, as SQLite keeps it in sqlite_master.
_TRIGGERS = {statement.split()[2]: statement for statement in _TOTALS_SCHEMA if statement.startswith("CREATE TRIGGER")}

# Columns added since the first schema: (table, column, type), added to an older record in place.
_ADDED_COLUMNS = (
    ("deliveries", "bytes", "INTEGER"),  # size handed to the sender
    ("instances", "encode_options", "TEXT"),
)
# What an added column says of the rows written before it, set when it is added: (table, column) -> statement.
# Our private syntax was written in version 1 alone until the releases that record encode_options, which
# write version 2 unless told otherwise: an empty value would read as this release's default.
_FILLED_WHEN_ADDED = {
    ("instances", "encode_options"): "UPDATE instances SET encode_options = 'version=1' "
                                     f"WHERE outcome = 'recompressed' AND target_syntax = '{GATEWAY_LOSSLESS_V1}'",
}



def pairs_text(pairs: Iterable[tuple[str, Any]]) -> str | None:
    """``name=value`` pairs joined by commas, as the record and the bulk manifest keep encoder
    options and verifying decoders (``version=2``); None for no pair."""
    return ",".join(f"{name}={value}" for name, value in pairs) or None


def _mark_added(db: sqlite3.Connection, names: Iterable[str]) -> None:
    """Say that the totals `names` count every row (a row of value 0 if none counted yet)."""
    db.executemany("INSERT OR IGNORE INTO totals (name, label, value) VALUES (?, '', 0)", [(n,) for n in names])


class _Held:
    """A thread's connection, closed when the thread ends (its thread-local value is dropped) or
    the record is: SQLite would close it too, but Python warns of a connection left to the
    garbage collector."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __del__(self) -> None:
        self.db.close()


class ProofRecord:
    """The record database of one spool; one connection per thread, opened on first use."""

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._local = threading.local()
        with self._connection() as db:
            db.executescript(_SCHEMA)
        self._migrate()
        self._keep_totals()

    # ---------------------------------------------------------------- plumbing

    def _connection(self) -> sqlite3.Connection:
        held = getattr(self._local, "db", None)
        if held is None:
            db = None
            try:
                fresh = not self.path.exists()
                # Used by its own thread only; closed by whichever thread drops it (_Held).
                db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
                if fresh:
                    self.path.chmod(0o600)  # UIDs and times: private like the spool
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            except (sqlite3.Error, OSError) as exc:
                if db is not None:
                    db.close()
                raise SpoolError(f"cannot open the proof record {self.path}: {exc}") from exc
            db.row_factory = sqlite3.Row
            held = self._local.db = _Held(db)
        return held.db

    def _write(self, sql: str, *params: Any) -> None:
        try:
            with self._connection() as db:
                db.execute(sql, params)
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot write the proof record {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close this thread's connection (another thread's closes when that thread ends)."""
        held = getattr(self._local, "db", None)
        if held is not None:
            held.db.close()
            self._local.db = None

    # ---------------------------------------------------------------- stages

    def received(self, ident: str, identity: Identity, *, calling_ae: str, called_ae: str, remote: str,
                 size: int, at: float | None = None) -> None:
        """An instance was acknowledged to its sender."""
        self._write(
            "INSERT OR REPLACE INTO instances (id, sop_instance_uid, sop_class_uid, study_uid, series_uid, "
            "modality, received_at, calling_ae, called_ae, remote, transfer_syntax, bytes) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ident, identity.sop_instance_uid, identity.sop_class_uid, identity.study_uid, identity.series_uid,
            identity.modality, time.time() if at is None else at, calling_ae, called_ae, remote,
            identity.transfer_syntax, size)

    def processed(self, ident: str, identity: Identity, *, recompressed: bool, reason: str | None,
                  target_syntax: str, original_pixel_bytes: int | None = None,
                  encoded_pixel_bytes: int | None = None, encode_seconds: float | None = None,
                  verify_seconds: float | None = None, source_decoder: str | None = None,
                  pixel_hash: str | None = None, verified_by: tuple[tuple[str, str], ...] = (),
                  calling_ae: str = "", received_at: float | None = None,
                  encode_options: tuple[tuple[str, Any], ...] = ()) -> None:
        """The worker stored the instance's processed form (recompressed or passed through).

        `encode_options` are the encoder options the recompressed form was
        written with (kept as ``name=value`` pairs, e.g. ``version=2``).  An
        instance received before the record existed (or whose receive row was
        lost) gets its row here, from the values the worker knows.
        """
        options = pairs_text(encode_options)
        try:
            with self._connection() as db:
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "INSERT OR IGNORE INTO instances (id, sop_instance_uid, sop_class_uid, study_uid, series_uid, "
                    "modality, received_at, calling_ae, called_ae, remote, transfer_syntax, bytes) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, '', '', ?, 0)",
                    (ident, identity.sop_instance_uid, identity.sop_class_uid, identity.study_uid,
                     identity.series_uid, identity.modality, time.time() if received_at is None else received_at,
                     calling_ae, identity.transfer_syntax))
                db.execute(
                    "UPDATE instances SET processed_at = ?, outcome = ?, reason = ?, target_syntax = ?, "
                    "original_pixel_bytes = ?, encoded_pixel_bytes = ?, encode_seconds = ?, verify_seconds = ?, "
                    "source_decoder = ?, pixel_hash = ?, encode_options = ? WHERE id = ?",
                    (time.time(), "recompressed" if recompressed else "passed-through", reason, target_syntax,
                     original_pixel_bytes, encoded_pixel_bytes, encode_seconds, verify_seconds, source_decoder,
                     pixel_hash, options, ident))
                db.execute("DELETE FROM verifications WHERE id = ?", (ident,))
                db.executemany("INSERT INTO verifications (id, decoder, pixel_hash) VALUES (?, ?, ?)",
                               [(ident, decoder, digest) for decoder, digest in verified_by])
                db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot write the proof record {self.path}: {exc}") from exc

    def delivery(self, ident: str, destination: str, *, outcome: str, syntax: str | None, attempts: int,
                 seconds: float | None = None, reason: str | None = None, size: int | None = None,
                 at: float | None = None) -> None:
        """A destination has the instance (``delivered``, `size` bytes handed over) or gave up on it (``dead``)."""
        self._write(
            "INSERT OR REPLACE INTO deliveries (id, destination, at, outcome, syntax, attempts, seconds, reason, "
            "bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ident, destination, time.time() if at is None else at, outcome, syntax, attempts, seconds, reason,
            size)

    def reencoded(self, ident: str, destination: str, *, syntax: str,
                  verified_by: tuple[tuple[str, str], ...]) -> None:
        """The instance was re-encoded in `syntax` for `destination`, and each of these decoders verified it."""
        at = time.time()
        try:
            with self._connection() as db:
                db.executemany("INSERT OR REPLACE INTO reencodings (id, destination, syntax, decoder, pixel_hash, at) "
                               "VALUES (?, ?, ?, ?, ?, ?)",
                               [(ident, destination, syntax, decoder, digest, at) for decoder, digest in verified_by])
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot write the proof record {self.path}: {exc}") from exc

    def commitment(self, ident: str, destination: str, *, state: str, transaction_uid: str,
                   reason: str | None = None) -> None:
        """A storage commitment was asked for (``pending``), granted (``committed``) or refused (``failed``)."""
        if state not in COMMITMENT_STATES:
            raise ValueError(f"unknown commitment state {state!r}")
        self._write(
            "INSERT OR REPLACE INTO commitments (id, destination, at, state, transaction_uid, reason) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            ident, destination, time.time(), state, transaction_uid, reason)

    # ---------------------------------------------------------------- reading

    def commitment_counts(self, destination: str) -> dict[str, int]:
        """How many instances' latest commitment at `destination` is in each state."""
        counts = dict.fromkeys(COMMITMENT_STATES, 0)
        db = self._connection()
        rows = db.execute(
            "SELECT c.state, COUNT(*) FROM commitments c JOIN ("
            "  SELECT id, MAX(at) AS at FROM commitments WHERE destination = ? GROUP BY id) latest "
            "ON c.id = latest.id AND c.at = latest.at WHERE c.destination = ? GROUP BY c.state",
            (destination, destination)).fetchall()
        for state, count in rows:
            counts[state] = counts.get(state, 0) + count
        return counts

    def _assemble(self, db: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
        ident = row["id"]
        entry: dict[str, Any] = {"id": ident, **{name: row[name] for name in _INSTANCE_FIELDS}}
        entry["verified_by"] = [
            {"decoder": v["decoder"], "pixel_hash": v["pixel_hash"]}
            for v in db.execute("SELECT decoder, pixel_hash FROM verifications WHERE id = ? ORDER BY rowid", (ident,))
        ]
        entry["deliveries"] = [
            {key: d[key] for key in ("destination", "at", "outcome", "syntax", "attempts", "seconds", "reason",
                                     "bytes")}
            for d in db.execute("SELECT * FROM deliveries WHERE id = ? ORDER BY at", (ident,))
        ]
        entry["commitments"] = [
            {key: c[key] for key in ("destination", "at", "state", "transaction_uid", "reason")}
            for c in db.execute("SELECT * FROM commitments WHERE id = ? ORDER BY at, rowid", (ident,))
        ]
        entry["reencoded"] = [
            {key: r[key] for key in ("destination", "syntax", "decoder", "pixel_hash", "at")}
            for r in db.execute("SELECT * FROM reencodings WHERE id = ? ORDER BY at, rowid", (ident,))
        ]
        return entry

    def find(self, sop_instance_uid: str) -> list[dict[str, Any]]:
        """Every reception of the instance (a modality may send one twice), oldest first."""
        db = self._connection()
        rows = db.execute("SELECT * FROM instances WHERE sop_instance_uid = ? ORDER BY received_at",
                          (sop_instance_uid,)).fetchall()
        return [self._assemble(db, row) for row in rows]

    def since(self, start: float) -> Iterator[dict[str, Any]]:
        """Every instance received at or after `start` (epoch seconds), oldest first."""
        db = self._connection()
        for row in db.execute("SELECT * FROM instances WHERE received_at >= ? ORDER BY received_at", (start,)):
            yield self._assemble(db, row)

    def prune(self, older_than: float) -> int:
        """Forget instances received before `older_than` (epoch seconds); return how many."""
        try:
            with self._connection() as db:
                db.execute("BEGIN IMMEDIATE")
                old = "SELECT id FROM instances WHERE received_at < ?"
                db.execute(f"DELETE FROM verifications WHERE id IN ({old})", (older_than,))
                db.execute(f"DELETE FROM deliveries WHERE id IN ({old})", (older_than,))
                db.execute(f"DELETE FROM commitments WHERE id IN ({old})", (older_than,))
                db.execute(f"DELETE FROM reencodings WHERE id IN ({old})", (older_than,))
                count = db.execute("DELETE FROM instances WHERE received_at < ?", (older_than,)).rowcount
                db.execute("COMMIT")
                return count
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot prune the proof record {self.path}: {exc}") from exc

    # ---------------------------------------------------------------- schema

    def _keep_totals(self) -> None:
        """Create the running totals and their triggers, counting the rows already there, once.

        Triggers written by another release (reasons classed otherwise) are
        replaced by this one's: the totals they kept stay, and count on.
        """
        try:
            db = self._connection()
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'totals'").fetchone():
                self._renew_triggers(db)
                return
            db.execute("BEGIN IMMEDIATE")
            try:
                if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'totals'").fetchone():
                    for statement in _TOTALS_SCHEMA:
                        db.execute(statement)
                    for statement in (_seeding(_RECEIVED_TOTALS, "instances") + _seeding(_PROCESSED_TOTALS, "instances")
                                      + _seeding(_DELIVERY_TOTALS, "deliveries")):
                        db.execute(statement)
                    _mark_added(db, _ADDED_TOTALS)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot set up the proof record's totals in {self.path}: {exc}") from exc

    @staticmethod
    def _renew_triggers(db: sqlite3.Connection) -> None:
        """Put this release's triggers in place of another release's, and count what those did not.

        A total is counted from the rows there when it is new to the record,
        and also when the triggers found in place do not keep it: an older
        release opened the record after this one (a downgrade) and put its
        own triggers back, so every row written meanwhile went uncounted.
        Such a total is counted again from the rows there, as a new total
        is, but never lowered: the rows of instances pruned since it began
        are gone, and it counted them.
        """
        def stored() -> dict[str, str]:
            return dict(db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall())

        def stale() -> list[tuple[str, str]]:
            found = stored()
            return [(name, sql) for name, sql in _TRIGGERS.items() if found.get(name) != sql]

        def unseeded() -> list[str]:
            return [name for name in _ADDED_TOTALS
                    if not db.execute("SELECT 1 FROM totals WHERE name = ? LIMIT 1", (name,)).fetchone()]

        if not stale() and not unseeded():
            return  # as this release writes them: nothing written
        db.execute("BEGIN IMMEDIATE")  # another process may be opening the same record
        try:
            found = stored()
            counted: list[tuple[str, str, float]] = []  # what the totals counted again held before
            if stale():
                kept = " ".join(found.get(name) or "" for name in _TRIGGERS)
                for name in _ADDED_TOTALS:
                    if f"SELECT '{name}'," not in kept:
                        counted += db.execute("SELECT name, label, value FROM totals WHERE name = ?",
                                              (name,)).fetchall()
                        db.execute("DELETE FROM totals WHERE name = ?", (name,))
            for name, sql in stale():
                db.execute(f"DROP TRIGGER IF EXISTS {name}")
                db.execute(sql)
            missing = unseeded()  # counted by the new triggers from now on, and from the rows there now
            for totals, table in ((_PROCESSED_TOTALS, "instances"), (_DELIVERY_TOTALS, "deliveries")):
                for statement in _seeding(tuple(t for t in totals if t[0] in missing), table):
                    db.execute(statement)
            _mark_added(db, missing)
            # Instances pruned since are no longer rows to count: a total never goes below what it held.
            db.executemany("INSERT INTO totals (name, label, value) VALUES (?, ?, ?) ON CONFLICT (name, label) "
                           "DO UPDATE SET value = MAX(value, excluded.value)", counted)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def running_totals(self) -> dict[tuple[str, str], float]:
        """The running totals the metrics are read from: (name, label) -> value."""
        return {(row["name"], row["label"]): row["value"]
                for row in self._connection().execute("SELECT name, label, value FROM totals")}

    def _migrate(self) -> None:
        """Bring a record written by an older version up to this schema (columns added, never removed).

        An added column is set for the rows already there where what it
        says of them is known (:data:`_FILLED_WHEN_ADDED`), in the same
        transaction: left empty, it would say of them what it says of a
        row of this release.
        """
        def missing(db: sqlite3.Connection) -> list[tuple[str, str, str]]:
            present = {table: {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
                       for table in {table for table, _, _ in _ADDED_COLUMNS}}
            return [added for added in _ADDED_COLUMNS if added[1] not in present[added[0]]]

        try:
            db = self._connection()
            if not missing(db):
                return  # up to date: nothing written
            with db:
                db.execute("BEGIN IMMEDIATE")  # another process may be migrating the same file
                for table, column, kind in missing(db):
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                    if (table, column) in _FILLED_WHEN_ADDED:
                        db.execute(_FILLED_WHEN_ADDED[table, column])
                db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot update the proof record {self.path}: {exc}") from exc

    # ---------------------------------------------------------------- summaries (the console)
    #
    # Each reads a bounded number of rows whatever the size of the record:
    # counts over all of it come from the running totals, time ranges go
    # through the indexes on received_at and at, aggregated by SQLite per
    # time bucket.

    def totals(self) -> dict[str, int]:
        """Counts since the record began, as the metrics count them (instances forgotten by pruning included):
        received (instances, bytes), outcomes, deliveries (instances, bytes), dead letters."""
        totals = self.running_totals()

        def total(name: str) -> int:
            return int(totals.get((name, ""), 0))

        def labelled(name: str) -> int:
            return int(sum(value for (key, _), value in totals.items() if key == name))

        return {"received": total("received"), "received_bytes": total("received_bytes"),
                "recompressed": total("recompressed"), "passed_through": labelled("passed_through"),
                "delivered": labelled("forwarded"), "delivered_bytes": total("delivered_bytes"),
                "dead": total("dead")}

    def window(self, start: float, end: float) -> dict[str, int]:
        """Instances and bytes received, and delivered, in [start, end) (epoch seconds)."""
        db = self._connection()
        received, size = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM instances WHERE received_at >= ? AND received_at < ?",
            (start, end)).fetchone()
        delivered, sent = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM deliveries "
            "WHERE at >= ? AND at < ? AND outcome = 'delivered'", (start, end)).fetchone()
        return {"received": received, "received_bytes": size, "delivered": delivered, "delivered_bytes": sent}

    def throughput(self, start: float, end: float, bucket_seconds: float) -> list[dict[str, float]]:
        """Per time bucket from `start` to `end`: instances and bytes received and delivered.

        One entry per bucket, empty buckets included, so at most
        ``(end - start) / bucket_seconds`` entries.
        """
        db = self._connection()
        count = max(1, int(-(-(end - start) // bucket_seconds)))
        buckets = [{"start": start + i * bucket_seconds, "received": 0, "received_bytes": 0, "delivered": 0,
                    "delivered_bytes": 0} for i in range(count)]
        for index, instances, size in db.execute(
                "SELECT CAST((received_at - ?) / ? AS INTEGER) AS b, COUNT(*), COALESCE(SUM(bytes), 0) "
                "FROM instances WHERE received_at >= ? AND received_at < ? GROUP BY b",
                (start, bucket_seconds, start, end)):
            if 0 <= index < count:
                buckets[index]["received"], buckets[index]["received_bytes"] = instances, size
        for index, instances, size in db.execute(
                "SELECT CAST((at - ?) / ? AS INTEGER) AS b, COUNT(*), COALESCE(SUM(bytes), 0) "
                "FROM deliveries WHERE at >= ? AND at < ? AND outcome = 'delivered' GROUP BY b",
                (start, bucket_seconds, start, end)):
            if 0 <= index < count:
                buckets[index]["delivered"], buckets[index]["delivered_bytes"] = instances, size
        return buckets

    def savings(self, by: str) -> list[dict[str, Any]]:
        """Pixel bytes before and after recompression since the record began, grouped by ``modality`` or
        ``target_syntax`` (codec), the 100 that saved most."""
        if by not in ("modality", "target_syntax"):
            raise ValueError(f"savings by {by!r}: only by modality or target_syntax")
        rows: dict[str, dict[str, Any]] = {}
        for name, label, value in self._connection().execute(
                "SELECT name, label, value FROM totals WHERE name IN (?, ?, ?)",
                tuple(f"saved_{by}_{part}" for part in ("instances", "original", "encoded"))):
            rows.setdefault(label, {"key": label, "instances": 0, "original": 0, "encoded": 0})[
                name.rsplit("_", 1)[1]] = int(value)
        kept = [row for row in rows.values() if row["instances"] > 0]
        return sorted(kept, key=lambda row: row["encoded"] - row["original"])[:100]

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        """The last `limit` instances received (newest first): UIDs, modality, outcome, sizes."""
        db = self._connection()
        return [dict(row) for row in db.execute(
            "SELECT id, sop_instance_uid, modality, received_at, calling_ae, outcome, bytes, "
            "original_pixel_bytes, encoded_pixel_bytes FROM instances ORDER BY received_at DESC LIMIT ?",
            (max(0, int(limit)),))]
