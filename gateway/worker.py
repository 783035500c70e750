"""Worker: turn received instances into processed objects and delivery jobs.

For each instance in ``incoming/`` it picks the target syntax (per-modality
override, else the default), recompresses with verification through
:func:`gateway.pipeline.recompress`, stores the result (or the original,
byte for byte, when the pipeline passes it through) as the spool object,
creates one job per matching destination and only then drops the received
copy.  A crash anywhere in between replays the instance on restart; job
creation is idempotent, so replays never duplicate work already done.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from pydicom import dcmread
from pydicom.filewriter import dcmwrite

from gateway.config import KEEP, Config
from gateway.errors import GatewayError
from gateway.logs import get_logger, stage
from gateway.spool import DEAD, UNROUTED, Job, Receipt, Spool

__all__ = ["Worker", "process_instance"]

_log = get_logger("worker")


def process_instance(config: Config, spool: Spool, ident: str) -> list[Job]:
    """Process one received instance; return the jobs created for it."""
    src = spool.incoming_path(ident)
    ds = dcmread(src)
    receipt = Receipt(
        calling_ae=spool.calling_ae(ident),
        received_at=src.stat().st_mtime,
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        modality=str(ds.get("Modality", "")),
        transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
    )
    sop = receipt.sop_instance_uid
    stored_syntax = str(ds.file_meta.get("TransferSyntaxUID", receipt.transfer_syntax))
    target = config.compression.target_for(receipt.modality)

    if target == KEEP or target == stored_syntax:
        reason = "configured to keep" if target == KEEP else "already in the target syntax"
        spool.store_object(ident, src)
        stage(_log, "passed-through", sop, study=receipt.study_uid, syntax=stored_syntax, reason=reason)
    else:
        outcome = None
        try:
            from gateway.pipeline import recompress

            outcome = recompress(ds, target, verify=config.compression.verify)
        except GatewayError as exc:
            reason = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - nothing is ever dropped: forward the original
            _log.exception("recompression of %s failed unexpectedly", sop)
            reason = f"unexpected {type(exc).__name__}: {exc}"
        if outcome is not None and outcome.recompressed:
            tmp = spool.temp_path()
            dcmwrite(tmp, outcome.dataset, enforce_file_format=True)
            spool.store_object(ident, tmp)
            stored_syntax = str(outcome.transfer_syntax)
            ratio = outcome.original_pixel_bytes / max(1, outcome.encoded_pixel_bytes)
            stage(_log, "encoded", sop, study=receipt.study_uid, syntax=stored_syntax, ratio=ratio,
                  seconds=outcome.encode_seconds, bytes=outcome.encoded_pixel_bytes)
            if config.compression.verify:
                stage(_log, "verified", sop, syntax=stored_syntax, seconds=outcome.verify_seconds)
        else:
            if outcome is not None:
                reason = outcome.reason or "not recompressed"
            spool.store_object(ident, src)
            stage(_log, "passed-through", sop, level=30 if outcome is None else 20,
                  study=receipt.study_uid, syntax=stored_syntax, reason=reason)
    del ds

    info = {
        "sop_class_uid": receipt.sop_class_uid,
        "sop_instance_uid": sop,
        "study_uid": receipt.study_uid,
        "series_uid": receipt.series_uid,
        "modality": receipt.modality,
        "calling_ae": receipt.calling_ae,
        "transfer_syntax": stored_syntax,
        "received_at": receipt.received_at,
    }
    destinations = config.destinations_for(receipt.calling_ae, receipt.modality, receipt.sop_class_uid)
    if not destinations:
        reason = (f"no route matches calling AE {receipt.calling_ae!r}, modality {receipt.modality!r}, "
                  f"SOP class {receipt.sop_class_uid}")
        spool.add_job(Job(ident, UNROUTED, state=DEAD, reason=reason, info=info))
        stage(_log, "dead", sop, level=40, reason=reason)
    created = spool.add_jobs([Job(ident, dest.name, info=info) for dest in destinations])
    spool.finish_received(ident)
    spool.collect(ident)
    return created


class Worker(threading.Thread):
    """Processes received instances one at a time, in arrival order."""

    def __init__(self, config: Config, spool: Spool, submit: Callable[[Job], None]) -> None:
        super().__init__(name="worker", daemon=True)
        self.config = config
        self.spool = spool
        self.submit = submit
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._halt = threading.Event()
        self._seen: set[str] = set()
        self.idle = threading.Event()

    def notify(self, ident: str) -> None:
        """A new instance is in the spool (called by the receiver)."""
        self._queue.put(ident)

    def stop(self) -> None:
        self._halt.set()
        self._queue.put(None)

    def run(self) -> None:
        for ident in self.spool.received():  # work left over from before a restart
            self._queue.put(ident)
        while not self._halt.is_set():
            try:
                ident = self._queue.get(timeout=30.0)
            except queue.Empty:
                for ident in self.spool.received():  # safety net for missed notifications
                    self._queue.put(ident)
                continue
            if ident is None:
                break
            if not self.spool.incoming_path(ident).exists():
                continue  # already processed (queued twice)
            self.idle.clear()
            started = time.perf_counter()
            try:
                for job in process_instance(self.config, self.spool, ident):
                    self.submit(job)
            except Exception:  # noqa: BLE001 - keep serving; the instance stays in incoming/
                _log.exception("processing %s failed; it stays in the spool and is retried later", ident)
                time.sleep(1.0)
            _log.debug("processed %s in %.3fs", ident, time.perf_counter() - started)
            if self._queue.empty():
                self.idle.set()
