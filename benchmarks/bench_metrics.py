"""What a Prometheus scrape and the proof record's writes cost as the record grows.

For records of N instances (each received, processed and delivered once), in
the same run, side by side, several rounds, best of each:

* the scrape as the gateway makes it (``GatewayCollector.collect``), which
  reads the running totals the record's triggers keep;
* the same counters and histograms computed from every row, in one SQL pass
  per table and histogram (what a scrape would cost without the totals);
* the time of one instance's three record writes (received, processed,
  delivered), with the triggers and without them.

    python benchmarks/bench_metrics.py [--sizes 10000 100000 1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

from gateway.dicom.identity import Identity
from gateway.metrics import GatewayCollector
from gateway.record import ENCODE_BUCKETS, FORWARD_BUCKETS, ProofRecord
from gateway.spool import Spool

IDENT = Identity("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.3", "1.2.3.9", "CT", "1.2.840.10008.1.2.1")
TRIGGERS = ("totals_received", "totals_processed", "totals_delivered")


def _filled(folder: Path, count: int) -> tuple[Path, Spool]:
    """A spool whose record holds `count` instances, written in bulk (the triggers keep the totals)."""
    spool = Spool(folder / "spool")
    record = ProofRecord(folder / "spool" / "record.sqlite")
    db = sqlite3.connect(record.path)
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO instances (id, sop_instance_uid, sop_class_uid, study_uid, series_uid, modality, received_at, "
        "calling_ae, called_ae, remote, transfer_syntax, bytes) VALUES (?, ?, '1.2', '1.3', '1.4', 'CT', ?, 'M', "
        "'G', 'r', '1.2.840.10008.1.2.1', 500000)", ((f"id{i}", f"1.2.{i}", 1.7e9 + i) for i in range(count)))
    db.executemany(
        "UPDATE instances SET outcome = ?, reason = ?, encode_seconds = 0.05, original_pixel_bytes = 524288, "
        "encoded_pixel_bytes = 250000 WHERE id = ?",
        ((("passed-through", "lossy-compressed source") if i % 10 == 0 else ("recompressed", None)) + (f"id{i}",)
         for i in range(count)))
    db.executemany("INSERT INTO deliveries (id, destination, at, outcome, syntax, attempts, seconds, bytes) "
                   "VALUES (?, 'pacs', ?, 'delivered', '1.2.840.10008.1.2.5', 1, 0.02, 260000)",
                   ((f"id{i}", 1.7e9 + i) for i in range(count)))
    db.commit()
    db.close()
    return record.path, spool


def _from_rows(path: Path) -> None:
    """The scrape's counters and histograms computed from every row of the record."""
    db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    db.execute("SELECT COUNT(*), SUM(bytes), SUM(CASE WHEN outcome = 'recompressed' THEN encoded_pixel_bytes END), "
               "SUM(CASE WHEN outcome = 'recompressed' THEN original_pixel_bytes END), "
               "SUM(reason LIKE 'verification failed%'), SUM(reason LIKE 'decoding failed%') FROM instances").fetchall()
    db.execute("SELECT reason, COUNT(*) FROM instances WHERE outcome = 'passed-through' GROUP BY reason").fetchall()
    db.execute("SELECT destination, COUNT(*) FROM deliveries WHERE outcome = 'delivered' GROUP BY destination")
    for column, table, where, bounds in (("encode_seconds", "instances", "outcome = 'recompressed'", ENCODE_BUCKETS),
                                         ("seconds", "deliveries", "outcome = 'delivered'", FORWARD_BUCKETS)):
        counts = ", ".join(f"SUM({column} <= {bound!r})" for bound in bounds)
        db.execute(f"SELECT {counts}, COUNT({column}), SUM({column}) FROM {table} WHERE {where}").fetchall()
    db.close()


def _writes(folder: Path, triggers: bool, count: int = 1000) -> float:
    """Microseconds of one instance's three record writes."""
    record = ProofRecord(folder / f"writes-{triggers}.sqlite")
    if not triggers:
        db = sqlite3.connect(record.path)
        for name in TRIGGERS:
            db.execute(f"DROP TRIGGER {name}")
        db.commit()
        db.close()
    started = time.perf_counter()
    for n in range(count):
        ident = f"w{n}"
        record.received(ident, IDENT, calling_ae="CT1", called_ae="GATEWAY", remote="127.0.0.1:1", size=500000)
        record.processed(ident, IDENT, recompressed=True, reason=None, target_syntax="1.2.840.10008.1.2.5",
                         encoded_pixel_bytes=250000, original_pixel_bytes=524288, encode_seconds=0.05,
                         verified_by=(("ours/rle", "h"), ("pylibjpeg-rle", "h")))
        record.delivery(ident, "pacs", outcome="delivered", syntax="1.2.840.10008.1.2.5", attempts=1, seconds=0.02)
    return (time.perf_counter() - started) / count * 1e6


def _best(call, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("| instances on record | scrape (running totals) ms | the same from every row ms |")
    print("|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            path, spool = _filled(Path(tmp) / str(size), size)
            collector = GatewayCollector(path, spool, lambda: ["pacs"])
            scrape = rows = float("inf")
            for _ in range(args.rounds):  # interleaved: the machine's load falls on both alike
                scrape = min(scrape, _best(lambda: list(collector.collect()), 1))
                rows = min(rows, _best(lambda: _from_rows(path), 1))
            print(f"| {size:,} | {scrape * 1e3:.1f} | {rows * 1e3:.1f} |")
        with_triggers = without = float("inf")
        for _ in range(args.rounds):  # a fresh record each time, the two alternating
            with_triggers = min(with_triggers, _writes(Path(tempfile.mkdtemp(dir=tmp)), True))
            without = min(without, _writes(Path(tempfile.mkdtemp(dir=tmp)), False))
        print()
        print("| record writes of one instance (received, processed, delivered) | µs |")
        print("|---|---:|")
        print(f"| with the running totals' triggers | {with_triggers:.0f} |")
        print(f"| without them | {without:.0f} |")


if __name__ == "__main__":
    main()
