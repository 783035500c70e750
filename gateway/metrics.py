"""Prometheus metrics, read at each scrape from the proof record and the spool.

The counters are the proof record's running totals (:mod:`gateway.record`:
triggers keep them as its rows are written, by the service and its worker
processes alike), so a scrape reads a few rows however large the record
grows, and pruning old rows leaves them as they are; the gauges are read
from the spool.  Labels stay low-cardinality: destination names and a short
pass-through reason class, never a UID.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.net.certificates import CertificateDate
from gateway.record import ENCODE_BUCKETS, FORWARD_BUCKETS, reason_class
from gateway.spool import DEAD, INFLIGHT, PENDING, Spool, free_bytes

__all__ = ["GatewayCollector", "reason_class", "ENCODE_BUCKETS", "FORWARD_BUCKETS"]


def _histogram(totals: dict[tuple[str, str], float], key: str, name: str, doc: str,
               buckets: Iterable[float]) -> Metric:
    """The histogram `key` of the running totals (its ``_bucket`` counts by upper bound, ``_count``, ``_sum``)."""
    family = HistogramMetricFamily(name, doc)
    cumulative = [(repr(float(bound)), int(totals.get((f"{key}_bucket", repr(float(bound))), 0))) for bound in buckets]
    cumulative.append(("+Inf", int(totals.get((f"{key}_count", ""), 0))))
    family.add_metric([], cumulative, sum_value=float(totals.get((f"{key}_sum", ""), 0.0)))
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
        # The running totals the record's triggers keep: a few rows, however large the record.
        totals = {(name, label): value for name, label, value in db.execute("SELECT name, label, value FROM totals")}

        def total(name: str) -> float:
            return totals.get((name, ""), 0)

        def labelled(name: str) -> list[tuple[str, float]]:
            return sorted((label, value) for (key, label), value in totals.items() if key == name)

        yield CounterMetricFamily("dicom_gateway_received_instances", "Instances received and acknowledged",
                                  value=total("received"))
        yield CounterMetricFamily("dicom_gateway_received_bytes", "Bytes of the instances received",
                                  value=total("received_bytes"))
        yield CounterMetricFamily("dicom_gateway_encoded_bytes", "Pixel data bytes written by our encoders",
                                  value=total("encoded_bytes"))
        yield CounterMetricFamily("dicom_gateway_recompressed_pixel_bytes",
                                  "Pixel data bytes of the originals that were recompressed",
                                  value=total("recompressed_pixel_bytes"))
        passed = CounterMetricFamily("dicom_gateway_passed_through", "Instances forwarded as received, by reason",
                                     labels=["reason"])
        for label, value in labelled("passed_through"):
            if value:
                passed.add_metric([label], value)
        yield passed
        yield CounterMetricFamily("dicom_gateway_verification_failures",
                                  "Encodings refused because a decoder did not give back the original",
                                  value=total("verification_failures"))
        yield CounterMetricFamily("dicom_gateway_malformed_instances",
                                  "Instances whose pixel data is damaged (does not decode, or is cut short)",
                                  value=total("malformed"))
        forwarded = CounterMetricFamily("dicom_gateway_forwarded_instances", "Instances delivered, per destination",
                                        labels=["destination"])
        for name, value in labelled("forwarded"):
            forwarded.add_metric([name], value)
        yield forwarded
        yield _histogram(totals, "encode_seconds", "dicom_gateway_encode_seconds",
                         "Decoding the original and encoding it, per instance", ENCODE_BUCKETS)
        yield _histogram(totals, "forward_seconds", "dicom_gateway_forward_seconds",
                         "Sending one instance to a destination", FORWARD_BUCKETS)

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
