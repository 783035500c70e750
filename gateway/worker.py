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

import os
import queue
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.filewriter import dcmwrite

from gateway.config import KEEP, Config
from gateway.dicom.uids import is_explicit_little_endian
from gateway.errors import GatewayError
from gateway.filemeta import parse_file_meta, with_transfer_syntax
from gateway.logs import get_logger, stage
from gateway.spool import DEAD, UNROUTED, Job, Receipt, Spool

__all__ = ["Worker", "process_instance"]

_log = get_logger("worker")


_PIXEL_DATA = 0x7FE00010
_META_CHANGED = {0x00020000, 0x00020010}  # group length, transfer syntax
_SEQ_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # sequence delimitation item


def pixel_span(ds: Dataset) -> tuple[int, int] | None:
    """File offsets (start, end) of the still-unread Pixel Data element of explicit VR `ds`."""
    if _PIXEL_DATA not in ds:
        return None
    raw = ds.get_item(_PIXEL_DATA)
    tell, length, value = getattr(raw, "value_tell", None), getattr(raw, "length", None), getattr(raw, "value", None)
    if tell is None or length is None or not isinstance(value, bytes):
        return None
    start = tell - 12  # explicit VR OB/OW header: tag, VR, reserved, 32-bit length
    return start, (tell + length if length != 0xFFFFFFFF else tell + len(value) + 8)


def splice_write(src: Path, original: Dataset, new: Dataset, dst: Path, span: tuple[int, int] | None) -> bool:
    """Write `new` as `src`'s bytes with only the file meta and Pixel Data replaced.

    The pipeline changes nothing but the pixel data encoding, so re-encoding
    every other attribute (``dcmwrite``) is wasted work: tens of milliseconds
    for a scanner header rich in private tags.  This copies the original bytes
    around the Pixel Data element instead (`span`: its offsets, taken with
    :func:`pixel_span` before the pipeline read the element) and never reads
    the old pixel data.  It applies only when both syntaxes encode the
    dataset as explicit VR little endian and every other top-level element
    and every file meta element but the transfer syntax of `new` equals the
    original's; otherwise it returns False and writes nothing.
    """
    source = str(original.file_meta.get("TransferSyntaxUID", ""))
    target = str(new.file_meta.get("TransferSyntaxUID", ""))
    if not (is_explicit_little_endian(source) and is_explicit_little_endian(target)) or span is None:
        return False
    # The element dicts as they are: raw elements the pipeline shares with the
    # original are the same objects, so most comparisons are identity checks.
    # Tags compared as plain ints: BaseTag's own comparisons run in Python.
    before_items, after_items = original._dict, new._dict
    tags = [t for t in map(int, before_items) if t != _PIXEL_DATA]
    if tags != [t for t in map(int, after_items) if t != _PIXEL_DATA]:
        return False
    for tag in tags:
        before, after = before_items[tag], after_items[tag]
        if before is not after and original.get_item(tag) != new.get_item(tag):
            return False
    meta_before, meta_after = original.file_meta, new.file_meta
    meta_tags = list(map(int, meta_before.keys()))
    if meta_tags != list(map(int, meta_after.keys())):
        return False
    if any(meta_before[t] != meta_after[t] for t in meta_tags if t not in _META_CHANGED):
        return False
    element = new[_PIXEL_DATA]
    value = element.value
    if element.VR not in ("OB", "OW") or not isinstance(value, bytes) or len(value) % 2:
        return False
    start, end = span
    with open(src, "rb") as handle:
        head = handle.read(min(start + 8, 65_536))
        try:
            meta_end, _ = parse_file_meta(head)
            meta = with_transfer_syntax(head, target)
        except ValueError:
            return False
        handle.seek(start)
        if handle.read(4) != b"\xe0\x7f\x10\x00":
            return False
        handle.seek(meta_end)
        middle = handle.read(start - meta_end)
        handle.seek(end)
        tail = handle.read()
    if element.is_undefined_length:
        header, trailer = struct.pack("<HH2sHI", 0x7FE0, 0x0010, element.VR.encode(), 0, 0xFFFFFFFF), _SEQ_END
    else:
        header, trailer = struct.pack("<HH2sHI", 0x7FE0, 0x0010, element.VR.encode(), 0, len(value)), b""
    with open(dst, "wb") as handle:
        handle.write(meta)
        handle.write(middle)
        handle.write(header)
        handle.write(value)
        handle.write(trailer)
        handle.write(tail)
    return True


def _usable_object(path: Path) -> str | None:
    """Transfer syntax of a processed object that is complete on disk, else None."""
    from gateway.scp import _check_complete

    try:
        ds = dcmread(path, defer_size="64 KB")
        _check_complete(ds, path.stat().st_size)
        return str(ds.file_meta.TransferSyntaxUID)
    except Exception:  # noqa: BLE001 - anything wrong: rebuild it
        return None


def process_instance(config: Config, spool: Spool, ident: str, *, reuse_object: bool = False,
                     pass_through: str | None = None) -> list[Job]:
    """Process one received instance; return the jobs created for it.

    With `reuse_object` (recovery after a restart) a complete processed object
    is kept as it is and only missing jobs are re-created.  With
    `pass_through` (the reason: processing failed every attempt) the original
    is forwarded exactly as received, its pixel data not even read, and the
    reason is logged at ERROR and kept in the jobs.
    """
    src = spool.source_path(ident)
    ds = dcmread(src, stop_before_pixels=pass_through is not None)
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

    reused = _usable_object(spool.object_path(ident)) if reuse_object else None
    if reused is not None:
        stored_syntax = reused
    elif pass_through is not None:
        spool.store_object(ident, src)
        stage(_log, "passed-through", sop, level=40, study=receipt.study_uid, syntax=stored_syntax,
              reason=pass_through)
    elif target == KEEP or target == stored_syntax:
        reason = "configured to keep" if target == KEEP else "already in the target syntax"
        spool.store_object(ident, src)
        stage(_log, "passed-through", sop, study=receipt.study_uid, syntax=stored_syntax, reason=reason)
    else:
        outcome, span = None, None
        try:
            from gateway.pipeline import recompress

            span = pixel_span(ds)
            outcome = recompress(ds, target, verify=config.compression.verify, allow_larger=False)
        except GatewayError as exc:
            reason = f"{type(exc).__name__}: {exc}"
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - nothing is ever dropped: forward the original
            # BaseException: a Rust decoder's panic (pyo3 PanicException) is not an Exception.
            _log.exception("recompression of %s failed unexpectedly", sop)
            reason = f"unexpected {type(exc).__name__}: {exc}"
        if outcome is not None and outcome.recompressed:
            tmp = spool.temp_path()
            if not splice_write(src, ds, outcome.dataset, tmp, span):
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
    if pass_through is not None:
        info["processing_failed"] = pass_through
    destinations = config.destinations_for(receipt.calling_ae, receipt.modality, receipt.sop_class_uid)
    info["destinations"] = [d.name for d in destinations] or [UNROUTED]
    if not destinations:
        reason = (f"no route matches calling AE {receipt.calling_ae!r}, modality {receipt.modality!r}, "
                  f"SOP class {receipt.sop_class_uid}")
        spool.add_job(Job(ident, UNROUTED, state=DEAD, reason=reason, info=info))
        stage(_log, "dead", sop, level=40, reason=reason)
    created = spool.add_jobs([Job(ident, dest.name, info=info) for dest in destinations])
    spool.finish_received(ident)
    spool.collect(ident, info["destinations"])
    return created


_CHILD: tuple[Config, Spool] | None = None


def _child_init(config: Config, service_pid: int) -> None:
    """Set up a worker process: logging like the service's, its own Spool handle."""
    global _CHILD
    import signal

    from gateway.logs import setup_logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the service decides
    _die_with_parent()
    if os.getppid() != service_pid:  # the service died while this process was starting
        os._exit(0)
    threading.Thread(target=_exit_with_parent, args=(service_pid,), name="parent-watch", daemon=True).start()

    setup_logging(config.logging.level, config.logging.file)
    _CHILD = (config, Spool(config.spool.directory))
    import gateway.pipeline  # noqa: F401 - load codecs before the first instance arrives
    from gateway.warmup import configured_syntaxes, warm_up

    # The service compiled these before starting the pool: here they come from numba's cache.
    try:
        report = warm_up(configured_syntaxes(config, forwarding=False))
    except Exception:  # noqa: BLE001 - as in the service: images are verified whatever happens here
        _log.exception("worker process %d: codec kernels could not be prepared", os.getpid())
        return
    _CHILD_WARM_UP.append(report.seconds)
    _log.info("worker process %d: codec kernels ready in %.1f s (%d compiled)", os.getpid(), report.seconds,
              report.compiled)


_CHILD_WARM_UP: list[float] = []


def _child_ready() -> tuple[int, float]:
    """Run in a worker process once its initialiser is done: its pid and warm-up seconds."""
    time.sleep(0.05)  # let each process of the pool take one of these
    return os.getpid(), sum(_CHILD_WARM_UP)


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this process the moment the service dies.

    A worker outliving a ``kill -9`` of the service would race the restarted
    service over the spool.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass  # elsewhere the parent watch below ends the process


def _exit_with_parent(parent: int) -> None:
    """End this worker process when the service is gone (even after ``kill -9``).

    The process pool's queues are pipes the worker holds both ends of, so it
    would otherwise wait for work forever.
    """
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _child_process(ident: str) -> list[Job]:
    assert _CHILD is not None, "worker process not initialised"
    config, spool = _CHILD
    return process_instance(config, spool, ident)


class Worker:
    """Processes received instances in arrival order.

    The decoding, encoding and verification are CPU-bound Python and numba
    work; in the service process they would compete for its interpreter lock
    with the receiver and the forwarders.  With ``[compression] processes =
    N`` (default 1) they run in N worker processes, which use other cores;
    with 0 they run in threads of the service process.  The spool on disk is
    the only state they share.  An instance is never processed twice at once.

    An instance whose processing fails (an error outside the pipeline's own
    pass-through handling, or a worker process that died) is tried again
    after ``[compression] retry_seconds``, doubled each time, and after
    ``max_attempts`` failures forwarded exactly as received
    (:func:`process_instance` with `pass_through`).  The count is kept in the
    spool, so a restart does not reset it.  It never loops in ``incoming/``.
    """

    def __init__(self, config: Config, spool: Spool, submit: Callable[[Job], None], threads: int = 2) -> None:
        self.config = config
        self.spool = spool
        self.submit = submit
        self.processes = config.compression.processes
        self._pool: ProcessPoolExecutor | None = None
        if self.processes:
            threads = 2 * self.processes  # dispatchers: keep each process busy
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._halt = threading.Event()
        self._active: set[str] = set()
        self._not_before: dict[str, float] = {}  # instances waiting out a retry delay (monotonic time)
        self._timers: set[threading.Timer] = set()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, name=f"worker-{i}", daemon=True)
                         for i in range(max(1, threads))]

    def notify(self, ident: str) -> None:
        """A new instance is in the spool (called by the receiver)."""
        self._queue.put(ident)

    def recover(self) -> int:
        """Re-check every held instance after a restart; return how many were repaired.

        Objects and job manifests are not fsync'd (see :mod:`gateway.spool`):
        rebuild what a crash may have lost before the forwarders start.
        """
        repaired = 0
        for ident in self.spool.held_ids():
            try:
                created = process_instance(self.config, self.spool, ident, reuse_object=True)
            except Exception:  # noqa: BLE001 - one bad file must not stop the start
                _log.exception("recovering held instance %s failed; it stays in the spool", ident)
                continue
            repaired += bool(created)
            for job in created:
                self.submit(job)
        return repaired

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.processes, mp_context=get_context("spawn"),
                                   initializer=_child_init, initargs=(self.config, os.getpid()))

    def _process(self, ident: str) -> list[Job]:
        if not self.processes:
            return process_instance(self.config, self.spool, ident)
        with self._lock:
            if self._pool is None:
                self._pool = self._new_pool()
            pool = self._pool
        try:
            return pool.submit(_child_process, ident).result()
        except BrokenProcessPool:
            with self._lock:  # a worker process died: start a fresh pool, the instance is retried
                if self._pool is pool:
                    self._pool = None
            raise

    def start(self) -> None:
        if self.processes:
            with self._lock:
                self._pool = self._new_pool()
            self._wait_for_processes(self._pool)
        for ident in self.spool.received():  # received before a restart, not yet processed
            self._queue.put(ident)
        for thread in self._threads:
            thread.start()

    def _wait_for_processes(self, pool: ProcessPoolExecutor, timeout: float = 600.0) -> None:
        """Start the worker processes now and wait until they have loaded their codec kernels.

        The pool starts every process at the first submission; each runs its
        initialiser (which warms the kernels up) before it takes a task.
        """
        started = time.perf_counter()
        try:
            ready = [f.result(timeout) for f in [pool.submit(_child_ready) for _ in range(self.processes)]]
        except Exception as exc:  # noqa: BLE001 - a broken pool is replaced at the first instance
            _log.warning("worker processes not ready: %s: %s", type(exc).__name__, exc)
            return
        _log.info("%d worker process(es) ready in %.1f s", len({pid for pid, _ in ready}),
                  time.perf_counter() - started)

    def stop(self) -> None:
        self._halt.set()
        with self._lock:
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()
        for _ in self._threads:
            self._queue.put(None)

    def join(self, timeout: float | None = None) -> None:
        for thread in self._threads:
            thread.join(timeout)
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _claim(self, ident: str) -> bool:
        with self._lock:
            if ident in self._active or not self.spool.incoming_path(ident).exists():
                return False  # being processed, or already done (queued twice)
            if self._not_before.get(ident, 0.0) > time.monotonic():
                return False  # waiting out its retry delay: its timer queues it again
            self._not_before.pop(ident, None)
            self._active.add(ident)
            return True

    def _retry_later(self, ident: str, delay: float) -> None:
        def due() -> None:
            with self._lock:
                self._timers.discard(timer)
            self._queue.put(ident)

        timer = threading.Timer(delay, due)
        timer.daemon = True
        with self._lock:
            if self._halt.is_set():
                return
            self._not_before[ident] = time.monotonic() + delay
            self._timers.add(timer)
        timer.start()

    def _failed(self, ident: str, exc: BaseException) -> None:
        """Count a failed attempt; retry later, or forward the original after the last one.

        The traceback is logged with the first failure only.
        """
        reason = f"{type(exc).__name__}: {exc}"
        limit = self.config.compression.max_attempts
        try:
            attempts = self.spool.record_failure(ident, reason)
        except GatewayError:
            _log.exception("processing %s failed (%s) and the failure cannot be recorded", ident, reason)
            attempts = 0
        if 0 < attempts < limit or (attempts == 0 and not self._halt.is_set()):
            delay = self.config.compression.retry_delay(max(1, attempts))
            _log.warning("processing %s failed (attempt %d of %d): %s; trying again in %.1f s",
                         ident, attempts, limit, reason, delay, exc_info=exc if attempts <= 1 else None)
            self._retry_later(ident, delay)
            return
        self._give_up(ident, f"processing failed {attempts} times, forwarded as received; last error: {reason}")

    def _give_up(self, ident: str, reason: str) -> None:
        """Forward the original unchanged; if even that fails (its header unreadable...), make it a dead letter."""
        try:
            for job in process_instance(self.config, self.spool, ident, pass_through=reason):
                self.submit(job)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - it must leave incoming/ whatever happens
            why = f"{reason}; it cannot be forwarded as received either: {type(exc).__name__}: {exc}"
            _log.error("instance %s becomes a dead letter: %s", ident, why)
            self.spool.add_job(Job(ident, UNROUTED, state=DEAD, reason=why,
                                   info={"destinations": [UNROUTED], "processing_failed": reason}))
            self.spool.finish_received(ident)

    def _run(self) -> None:
        while not self._halt.is_set():
            try:
                ident = self._queue.get(timeout=30.0)
            except queue.Empty:
                # Safety net for missed notifications; a file younger than a
                # minute may still be in the receiver's hands (being checked).
                old = time.time() - 60
                for ident in self.spool.received():
                    try:
                        if self.spool.incoming_path(ident).stat().st_mtime < old:
                            self._queue.put(ident)
                    except FileNotFoundError:
                        pass
                continue
            if ident is None:
                break
            if not self._claim(ident):
                continue
            started = time.perf_counter()
            try:
                attempts, last = self.spool.failures_of(ident)
                if attempts >= self.config.compression.max_attempts:  # the limit was reached before a restart
                    self._give_up(ident, f"processing failed {attempts} times, forwarded as received; "
                                         f"last error: {last}")
                else:
                    for job in self._process(ident):
                        self.submit(job)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - keep serving; retried, then forwarded as received
                self._failed(ident, exc)
            finally:
                with self._lock:
                    self._active.discard(ident)
            _log.debug("processed %s in %.3fs", ident, time.perf_counter() - started)
