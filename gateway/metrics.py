"""Prometheus metrics, computed at each scrape from the proof record and the spool.

The counters are counts over the proof record (:mod:`gateway.record`), so
they agree with it by construction and need no sharing between the service
and its worker processes; the gauges are read from the spool.  Labels stay
low-cardinality: destination names and a short pass-through reason class,
never a UID.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.net.certificates import CertificateDate
from gateway.pipeline.policy import MALFORMED_PREFIX
from gateway.spool import DEAD, INFLIGHT, PENDING, Spool, free_bytes

__all__ = ["GatewayCollector", "reason_class", "ENCODE_BUCKETS", "FORWARD_BUCKETS"]

ENCODE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FORWARD_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# Pass-through reasons, by how they start or what they contain, to a label value.
_REASONS = (
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
)


def reason_class(reason: str | None) -> str:
    """The label value of a pass-through reason (``other`` for what no rule names)."""
    text = reason or ""
    for needle, label in _REASONS:
        if needle in text:
            return label
    return "other"


def _histogram(db: sqlite3.Connection, name: str, doc: str, column: str, table: str, where: str,
               buckets: Iterable[float]) -> Metric:
    """The histogram of `column` over the rows of `table` that `where` selects, counted by SQLite in one pass."""
    bounds = [float(bound) for bound in buckets]
    counts = ", ".join(f"COALESCE(SUM({column} <= ?), 0)" for _ in bounds)
    row = db.execute(f"SELECT {counts}, COUNT({column}), COALESCE(SUM({column}), 0) FROM {table} "
                     f"WHERE {where} AND {column} IS NOT NULL", bounds).fetchone()
    family = HistogramMetricFamily(name, doc)
    cumulative = [(repr(bound), int(count)) for bound, count in zip(bounds, row)]
    cumulative.append(("+Inf", int(row[len(bounds)])))
    family.add_metric([], cumulative, sum_value=float(row[len(bounds) + 1]))
    return family


class GatewayCollector(Collector):
    """A prometheus_client collector over one gateway's proof record and spool."""

    def __init__(self, record: Path, spool: Spool, destinations: Callable[[], list[str]],
                 certificates: Callable[[], Iterable[CertificateDate]] = list) -> None:
        self.record = record
        self.spool = spool
        self.destinations = destinations
        self.certificates = certificates

    def collect(self) -> Iterator[Metric]:
        # read-only, by a URI whose path is percent-encoded: a '#', '?' or '%' in a folder name stays part of it
        db = sqlite3.connect(f"{Path(self.record).absolute().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            yield from self._from_record(db)
        finally:
            db.close()
        yield from self._from_spool()
        expiry = GaugeMetricFamily("dicom_gateway_tls_certificate_expiry_timestamp_seconds",
                                   "When each TLS certificate the configuration names expires (notAfter)",
                                   labels=["use", "subject"])
        for cert in self.certificates():
            expiry.add_metric([cert.use, cert.subject], cert.not_after)
        yield expiry

    def _from_record(self, db: sqlite3.Connection) -> Iterator[Metric]:
        # One pass over the instances for every sum (a scrape reads the whole record: each pass counts).
        count, size, encoded, original, failures, malformed = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0), "
            "COALESCE(SUM(CASE WHEN outcome = 'recompressed' THEN encoded_pixel_bytes END), 0), "
            "COALESCE(SUM(CASE WHEN outcome = 'recompressed' THEN original_pixel_bytes END), 0), "
            "COALESCE(SUM(reason LIKE 'verification failed%'), 0), COALESCE(SUM(reason LIKE ?), 0) "
            "FROM instances", (f"{MALFORMED_PREFIX}%",)).fetchone()
        yield CounterMetricFamily("dicom_gateway_received_instances", "Instances received and acknowledged",
                                  value=count)
        yield CounterMetricFamily("dicom_gateway_received_bytes", "Bytes of the instances received", value=size)
        yield CounterMetricFamily("dicom_gateway_encoded_bytes", "Pixel data bytes written by our encoders",
                                  value=encoded)
        yield CounterMetricFamily("dicom_gateway_recompressed_pixel_bytes",
                                  "Pixel data bytes of the originals that were recompressed", value=original)
        passed = CounterMetricFamily("dicom_gateway_passed_through", "Instances forwarded as received, by reason",
                                     labels=["reason"])
        classes: dict[str, int] = {}
        for reason, times in db.execute("SELECT reason, COUNT(*) FROM instances WHERE outcome = 'passed-through' "
                                        "GROUP BY reason"):
            label = reason_class(reason)
            classes[label] = classes.get(label, 0) + times
        for label, value in sorted(classes.items()):
            passed.add_metric([label], value)
        yield passed
        yield CounterMetricFamily("dicom_gateway_verification_failures",
                                  "Encodings refused because a decoder did not give back the original", value=failures)
        yield CounterMetricFamily("dicom_gateway_malformed_instances",
                                  "Instances whose pixel data is damaged (does not decode, or is cut short)",
                                  value=malformed)
        forwarded = CounterMetricFamily("dicom_gateway_forwarded_instances", "Instances delivered, per destination",
                                        labels=["destination"])
        for name, value in db.execute("SELECT destination, COUNT(*) FROM deliveries WHERE outcome = 'delivered' "
                                      "GROUP BY destination ORDER BY destination"):
            forwarded.add_metric([name], value)
        yield forwarded
        yield _histogram(db, "dicom_gateway_encode_seconds", "Decoding the original and encoding it, per instance",
                         "encode_seconds", "instances", "outcome = 'recompressed'", ENCODE_BUCKETS)
        yield _histogram(db, "dicom_gateway_forward_seconds", "Sending one instance to a destination",
                         "seconds", "deliveries", "outcome = 'delivered'", FORWARD_BUCKETS)

    def _from_spool(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("dicom_gateway_queue_depth", "Jobs waiting or in flight, per destination",
                                  labels=["destination"])
        dead = GaugeMetricFamily("dicom_gateway_dead_letters", "Dead letters, per destination", labels=["destination"])
        letters = self.spool.destination_counts(DEAD)  # also those of no route ("-") and of removed destinations
        for name in self.destinations():
            depth.add_metric([name], self.spool.count_jobs(PENDING, name) + self.spool.count_jobs(INFLIGHT, name))
            letters.setdefault(name, 0)
        for name, count in sorted(letters.items()):
            dead.add_metric([name], count)
        yield depth
        yield dead
        yield GaugeMetricFamily("dicom_gateway_received_waiting", "Instances received and not yet processed",
                                value=len(self.spool.received()))
        try:
            free = free_bytes(self.spool.root)
        except OSError:
            return
        yield GaugeMetricFamily("dicom_gateway_spool_free_bytes",
                                "Bytes free on the spool's filesystem (C-STOREs are refused below [spool] "
                                "min_free_bytes)", value=free)
