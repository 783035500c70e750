"""The manifest: one SQLite file in ``OUT`` recording, per input, what was done with it.

Only the client (the driver) writes it, so there is never more than one
writer; Dask workers return small dicts and never touch it.  It is what makes
a run resumable: a file whose row says done (recompressed, passed through, or
skipped), whose size and modification time have not changed, and whose output
is still there with the recorded size, is not processed again.  Rows are
committed in small batches, so a killed client loses at most the results of
the last fraction of a second, and those files are simply done again (the
task is idempotent).

Columns of ``files`` (one row per input, keyed by its path relative to ``IN``):
``size``, ``mtime_ns`` (as planned), ``seen_run`` (last run that planned it),
``outcome`` (recompressed / passed / skipped / failed, NULL while pending),
``reason``, ``modality``, ``source_syntax``, ``pixel_hash`` (SHA-256 of
``pydicom.pixels.pixel_array(ds, raw=True)``, the proof record's definition),
``output`` (path relative to ``OUT``), ``output_size``, ``output_syntax``,
``output_sha256`` (a failed row keeps those of the output an earlier run
wrote from the input, still in ``OUT``), ``verified`` (1 when our decoder and an independent one
reproduced the input), ``verified_by`` (``decoder=sha256`` of each), ``seconds``,
``worker`` (``host:pid`` of the process that did it), ``run`` (the run that produced the row),
``finished`` (Unix time).  ``runs`` records each run's target, layout, the
encoder options it writes with (``encoding``, e.g. ``version=2`` for our private
syntax) and ``workers``: the engine and how many processes it had.

A path (``rel``, ``output``) is stored as TEXT when it is valid UTF-8, which
is every path of every manifest written before, and otherwise as a BLOB of
its bytes (a file name in another encoding, e.g. Latin-1), so every name
comes back exactly as the file system gave it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from gateway.bulk.plan import Item
from gateway.errors import GatewayError

__all__ = ["RESULT_COLUMNS", "Manifest", "ManifestMismatchError", "stored_path", "path_of", "printable"]


def stored_path(name: str | None) -> str | bytes | None:
    """A path as the manifest keeps it: the text itself when it is UTF-8, else its bytes (losslessly)."""
    if name is None:
        return None
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a name that is not UTF-8 on disk, decoded with surrogate escapes
        return os.fsencode(name)
    return name


def path_of(value: str | bytes | None) -> str | None:
    """The path a :func:`stored_path` value stands for, as :mod:`os` functions take it."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def printable(name: str) -> str:
    """`name` for a terminal or a log: bytes that are not UTF-8 shown as ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _text(value: Any) -> Any:
    """A text column's value that SQLite can store (a reason may quote a file name that is not UTF-8)."""
    return printable(value) if isinstance(value, str) else value


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, started REAL NOT NULL, finished REAL, target TEXT NOT NULL,
    layout TEXT NOT NULL, verify INTEGER NOT NULL, scheduler TEXT, workers TEXT
);
CREATE TABLE IF NOT EXISTS files (
    rel TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, seen_run INTEGER NOT NULL,
    outcome TEXT, reason TEXT, modality TEXT, source_syntax TEXT, pixel_hash TEXT,
    output TEXT, output_size INTEGER, output_syntax TEXT, output_sha256 TEXT,
    verified INTEGER, verified_by TEXT, seconds REAL, run INTEGER, finished REAL, worker TEXT
);
CREATE INDEX IF NOT EXISTS files_seen ON files (seen_run);
"""

RESULT_COLUMNS = ("outcome", "reason", "modality", "source_syntax", "pixel_hash", "output", "output_size",
                   "output_syntax", "output_sha256", "verified", "verified_by", "seconds", "worker")

_KEPT_ON_FAILURE = ("output", "output_size", "output_syntax", "output_sha256")
"""What a failure leaves of a row: the output an earlier run wrote from the input, which is still in ``OUT``
(so that the next run knows it for this input's own)."""

_ADDED_COLUMNS = (("runs", "workers", "TEXT"), ("files", "worker", "TEXT"), ("runs", "encoding", "TEXT"))
"""Columns newer than the first manifests, added to an older manifest when it is opened."""


class ManifestMismatchError(GatewayError):
    """``OUT`` holds the manifest of a run with another target syntax, layout or encoding."""


class Manifest:
    """The manifest of one output folder; the driver's only store of progress."""

    def __init__(self, path: Path) -> None:
        from gateway.spool import create_private

        self.path = Path(path)
        if not self.path.exists():
            create_private(self.path).close()  # owner-only from the start: paths may name patients
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            for table, column, kind in _ADDED_COLUMNS:
                if column not in {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        except sqlite3.Error:
            self._db.close()  # a folder it cannot write: say so, and hold nothing open
            raise
        self.run_id = 0
        self._pending = 0
        self._last_commit = time.monotonic()
        self._in_transaction = False

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self._db.close()

    # ---------------------------------------------------------------- runs

    def previous_run(self) -> dict[str, Any] | None:
        row = self._db.execute("SELECT target, layout, encoding FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else {"target": row[0], "layout": row[1], "encoding": row[2]}

    def start_run(self, target: str, layout: str, verify: bool, scheduler: str | None,
                  encoding: str | None = None) -> int:
        """Open a run; :class:`ManifestMismatchError` when the folder was written for another target or
        layout, or with other encoder options (`encoding`, e.g. ``version=2``; a manifest older than
        this column did not record them)."""
        previous = self.previous_run()
        if previous is not None and (previous["target"], previous["layout"]) != (target, layout):
            raise ManifestMismatchError(
                f"{self.path.parent} holds the outputs of a run to {previous['target']} with layout "
                f"{previous['layout']}; resume it with the same --transfer-syntax and --layout, "
                "or name another output folder")
        if previous is not None and previous["encoding"] is not None and previous["encoding"] != encoding:
            raise ManifestMismatchError(
                f"{self.path.parent} holds the outputs of a run to {target} written with "
                f"{previous['encoding']}; resume it with the same options (--private-version), "
                "or name another output folder")
        cursor = self._db.execute(
            "INSERT INTO runs (started, target, layout, verify, scheduler, encoding) VALUES (?,?,?,?,?,?)",
            (time.time(), target, layout, int(verify), scheduler, encoding))
        self.run_id = int(cursor.lastrowid or 0)
        return self.run_id

    def set_workers(self, workers: str) -> None:
        """Record what ran this run's files, e.g. ``2 local processes`` (once the engine is up)."""
        self._db.execute("UPDATE runs SET workers=? WHERE id=?", (workers, self.run_id))

    def run_workers(self) -> str | None:
        row = self._db.execute("SELECT workers FROM runs WHERE id=?", (self.run_id,)).fetchone()
        return None if row is None else row[0]

    def finish_run(self) -> None:
        self.commit()
        self._db.execute("UPDATE runs SET finished=? WHERE id=?", (time.time(), self.run_id))

    # ------------------------------------------------------------- planning

    def plan(self, items: Iterable[Item], batch: int = 5000) -> tuple[int, int]:
        """Record the inputs of this run; a changed file (size or mtime) becomes pending again.

        Returns (files, bytes) planned.  Streams `items` in batches.
        """
        files = total = 0
        chunk: list[tuple[str, int, int, int]] = []

        def flush() -> None:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO files (rel, size, mtime_ns, seen_run) VALUES (?,?,?,?) "
                "ON CONFLICT(rel) DO UPDATE SET seen_run=excluded.seen_run, "
                "outcome=CASE WHEN files.size=excluded.size AND files.mtime_ns=excluded.mtime_ns "
                "THEN files.outcome ELSE NULL END, "
                "size=excluded.size, mtime_ns=excluded.mtime_ns", chunk)
            self._db.execute("COMMIT")
            chunk.clear()

        for item in items:
            chunk.append((stored_path(item.rel), item.size, item.mtime_ns, self.run_id))
            files += 1
            total += item.size
            if len(chunk) >= batch:
                flush()
        if chunk:
            flush()
        return files, total

    def planned(self, page: int = 2000) -> Iterator[tuple[str, int, str | None, str | None, int | None]]:
        """(rel, size, outcome, output, output_size) of every input of this run, paged by rowid."""
        last = 0
        while True:
            rows = self._db.execute(
                "SELECT rowid, rel, size, outcome, output, output_size FROM files "
                "WHERE seen_run=? AND rowid>? ORDER BY rowid LIMIT ?", (self.run_id, last, page)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            for row in rows:
                yield path_of(row[1]), row[2], row[3], path_of(row[4]), row[5]

    # -------------------------------------------------------------- results

    def record(self, result: dict[str, Any], verify: bool) -> None:
        """Store a task's result (committed in batches: see :meth:`commit`)."""
        if not self._in_transaction:
            self._db.execute("BEGIN")
            self._in_transaction = True
        values = dict(result)
        values["verified"] = int(verify and result["outcome"] == "recompressed" and bool(result["verified_by"]))
        kept = _KEPT_ON_FAILURE if result["outcome"] == "failed" else ()
        assignments = ", ".join(f"{c}=COALESCE(?, {c})" if c in kept else f"{c}=?" for c in RESULT_COLUMNS)
        params = [stored_path(values.get(c)) if c == "output" else _text(values.get(c)) for c in RESULT_COLUMNS]
        self._db.execute(f"UPDATE files SET {assignments}, run=?, finished=? WHERE rel=?",
                         (*params, self.run_id, time.time(), stored_path(result["rel"])))
        self._pending += 1
        if self._pending >= 500 or time.monotonic() - self._last_commit > 0.25:
            self.commit()

    def commit(self) -> None:
        if self._in_transaction:
            self._in_transaction = False
            if self._db.in_transaction:  # SQLite rolls back on its own after some errors (a full disk)
                self._db.execute("COMMIT")
        self._pending = 0
        self._last_commit = time.monotonic()

    def is_output(self, out_rel: str) -> bool:
        """True when `out_rel` (relative to ``OUT``) is the output of the input of the same path (the
        ``relative`` layout), as recorded."""
        return self._db.execute("SELECT 1 FROM files WHERE rel=? AND output=? LIMIT 1",
                                (stored_path(out_rel), stored_path(out_rel))).fetchone() is not None

    def forget_output(self, rel: str) -> None:
        """Mark an input pending again (its output went missing)."""
        self._db.execute("UPDATE files SET outcome=NULL WHERE rel=?", (stored_path(rel),))

    # --------------------------------------------------------------- report

    def rows(self, columns: str, where: str = "", params: tuple = ()) -> list[tuple]:
        """Rows of this run (``seen_run``): `columns` and an optional extra condition.

        ``rel`` and ``output`` come as stored (:func:`path_of` turns them into paths)."""
        sql = f"SELECT {columns} FROM files WHERE seen_run=?" + (f" AND {where}" if where else "")
        return self._db.execute(sql, (self.run_id, *params)).fetchall()
