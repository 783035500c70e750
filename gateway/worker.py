"""Worker: turn received instances into processed objects and delivery jobs.

For each instance in ``incoming/`` it picks the target syntax (per-modality
override, else the default), recompresses with verification through
:func:`gateway.pipeline.policy`, stores the result (or the original,
byte for byte, when the pipeline passes it through) as the spool object,
creates one job per matching destination and only then drops the received
copy.  A crash anywhere in between replays the instance on restart; job
creation is idempotent, so replays never duplicate work already done.
"""

from __future__ import annotations

import errno
import os
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import CancelledError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom import dcmread

from gateway.config import KEEP, Config
from gateway.dicom.filemeta import defer_size
from gateway.dicom.identity import Identity
from gateway.dicom.lean import read_lean, restore
from gateway.dicom.splice import pixel_span, splice_write, write_dataset
from gateway.dicom.walk import check_complete, walk_file
from gateway.errors import GatewayError, SpoolError
from gateway.logs import get_logger, stage
from gateway.record import ProofRecord
from gateway.spool import DEAD, UNROUTED, Job, Spool, is_out_of_space

if TYPE_CHECKING:
    from gateway.pipeline import Outcome

__all__ = ["Worker", "process_instance", "record_dead_letter"]

_log = get_logger("worker")





def _walked(path: Path) -> Identity | None:
    """The identity of a file the receiver's header walk reads as one complete dataset, else None."""
    try:
        return walk_file(path)
    except (OSError, ValueError):  # irregular, or not DICOM: pydicom decides
        return None


def _usable_object(path: Path) -> str | None:
    """Transfer syntax of a processed object that is complete on disk, else None.

    The header walk decides what it can (a fraction of a millisecond, where
    pydicom's parse takes one or two: a restart checks every held instance);
    pydicom decides the rest.
    """
    walked = _walked(path)
    if walked is not None:
        return walked.transfer_syntax
    try:
        ds = dcmread(path, defer_size="64 KB")
        check_complete(ds, path.stat().st_size)
        return str(ds.file_meta.TransferSyntaxUID)
    except Exception:  # noqa: BLE001 - anything wrong: rebuild it
        return None


def _write_object(spool: Spool, ident: str, src: Path, ds, outcome: Outcome, span, lean: bool) -> bool:
    """Store the recompressed object; False (nothing left behind) when the spool's filesystem is full.

    `lean`: `ds` holds only the elements :func:`read_lean` keeps.  When the
    output cannot be spliced, the whole received dataset is read and written
    with the outcome's changes.
    """
    tmp = spool.tmp / f"{ident}{_OBJECT_TEMP}{uuid.uuid4().hex}.dcm"  # see _remove_earlier_attempts
    try:
        if not splice_write(src, ds, outcome.dataset, tmp, span):
            whole = restore(dcmread(src), ds, outcome.dataset) if lean else outcome.dataset
            write_dataset(tmp, whole)
        spool.store_object(ident, tmp)
    except (OSError, SpoolError) as exc:
        tmp.unlink(missing_ok=True)
        if is_out_of_space(exc) or is_out_of_space(exc.__cause__ or exc):
            return False
        raise
    return True


_OBJECT_TEMP = ".object."
"""Between an instance's id and a random part, the name of the temporary file its object is written to."""


def _remove_earlier_attempts(spool: Spool, ident: str) -> None:
    """Delete the partial objects an earlier attempt at `ident` left in the spool's temp folder.

    A worker process killed while it wrote the object (a crash, a timeout)
    leaves that file, as large as the encoded image; the spool's recovery
    removes it only at the next start, and until then a busy spool holds it
    on a disk that may be filling.  An instance is processed by one attempt
    at a time, so what is named after it here is no other attempt's.
    """
    for left in spool.tmp.glob(f"{ident}{_OBJECT_TEMP}*"):
        left.unlink(missing_ok=True)


_NO_ROOM = "no space in the spool for the recompressed copy"
"""Reason an instance is forwarded as received when its recompressed copy, or the file its large encoding is
kept in meanwhile, does not fit in the spool (the other half of ``min_free_bytes`` is for these)."""


def _proven(outcome: Outcome) -> dict:
    """What the pipeline's outcome tells the proof record about the original."""
    return {"original_pixel_bytes": outcome.original_pixel_bytes, "source_decoder": outcome.source_decoder,
            "pixel_hash": outcome.pixel_hash}


def process_instance(config: Config, spool: Spool, ident: str, *, reuse_object: bool = False,
                     pass_through: str | None = None, record: ProofRecord | None = None) -> list[Job]:
    """Process one received instance; return the jobs created for it.

    With `reuse_object` (recovery after a restart) a complete processed object
    is kept as it is and only missing jobs are re-created.  With
    `pass_through` (the reason: processing failed every attempt) the original
    is forwarded exactly as received, its pixel data not even read, and the
    reason is logged at ERROR and kept in the jobs.
    """
    src = spool.source_path(ident)
    _remove_earlier_attempts(spool, ident)
    if not reuse_object and pass_through is None and any(
            spool.find_job(ident, dest.name) is not None for dest in config.destinations):
        # An earlier attempt wrote jobs before it was cut short (a crash, a full disk): one may have sent
        # its object already, so that object stays, and the proof record with it.
        reuse_object = True
    reused = _usable_object(spool.object_path(ident)) if reuse_object else None
    # Its object is kept: nothing of the dataset is used but its identity, which the header walk gives.
    walked = _walked(src) if reused is not None else None
    lean = None
    if walked is not None:
        ds = None
        identity = walked
    else:
        # Only the elements recompression reads, when the file allows it (see gateway.dicom.lean).
        lean = read_lean(src) if pass_through is None and not reuse_object else None
        if lean is not None:
            ds = lean.dataset
        else:
            # Values of DEFER_BYTES and more stay in the file: a large multi-frame image is read one frame at a time.
            ds = dcmread(src, stop_before_pixels=pass_through is not None, defer_size=defer_size(src))
        identity = Identity.of_dataset(ds, str(ds.file_meta.get("TransferSyntaxUID", "")))
    calling_ae = spool.calling_ae(ident)
    sop = identity.sop_instance_uid
    stored_syntax = identity.transfer_syntax
    target = config.compression.target_for(identity.modality)

    malformed: str | None = None  # why the original's pixel data is damaged
    proof: dict | None = None  # what the proof record learns of this stage
    if reused is not None:
        stored_syntax = reused
    elif pass_through is not None:
        proof = {"recompressed": False, "reason": pass_through}
        spool.store_object(ident, src)
        stage(_log, "passed-through", sop, level=40, study=identity.study_uid, syntax=stored_syntax,
              reason=pass_through)
    elif target == KEEP:
        reason = "configured to keep"
        proof = {"recompressed": False, "reason": reason}
        spool.store_object(ident, src)
        stage(_log, "passed-through", sop, study=identity.study_uid, syntax=stored_syntax, reason=reason)
    else:
        outcome, span = None, None
        try:
            from gateway.pipeline import recompress

            span = lean.pixel_span if lean is not None else pixel_span(ds)
            # A large encoded value is kept in the spool's temp folder, not in memory (anonymous: never left behind).
            outcome = recompress(ds, target, verify=config.compression.verify, allow_larger=False,
                                 encode_options=config.compression.encode_options, scratch=spool.tmp)
        except GatewayError as exc:
            reason = f"{type(exc).__name__}: {exc}"
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - nothing is ever dropped: forward the original
            if _out_of_space(exc):
                # A large encoding kept in the spool's temp folder (recompress's scratch) did not fit: the
                # recompressed copy has no room, as when the object itself does not fit below.
                reason = _NO_ROOM
            else:
                # BaseException: a Rust decoder's panic (pyo3 PanicException) is not an Exception.
                _log.exception("recompression of %s failed unexpectedly", sop)
                reason = f"unexpected {type(exc).__name__}: {exc}"
        try:
            written = outcome is not None and outcome.recompressed and _write_object(spool, ident, src, ds, outcome,
                                                                                      span, lean is not None)
        finally:
            if outcome is not None:
                outcome.close()  # a large encoded value's file in the spool's temp folder goes now
        if outcome is not None and outcome.recompressed and not written:
            reason = _NO_ROOM
        if written:
            stored_syntax = str(outcome.transfer_syntax)
            proof = {"recompressed": True, "reason": None, **_proven(outcome),
                     "encoded_pixel_bytes": outcome.encoded_pixel_bytes, "encode_seconds": outcome.encode_seconds,
                     "verify_seconds": outcome.verify_seconds, "verified_by": outcome.verified_by,
                     "encode_options": outcome.encode_options}
            ratio = outcome.original_pixel_bytes / max(1, outcome.encoded_pixel_bytes)
            # The encoder options after the syntax they belong to: "syntax=<gwl> version=2".
            fields = {"study": identity.study_uid, "syntax": stored_syntax, **dict(outcome.encode_options),
                      "ratio": ratio, "seconds": outcome.encode_seconds, "bytes": outcome.encoded_pixel_bytes}
            stage(_log, "encoded", sop, **fields)
            if config.compression.verify:
                stage(_log, "verified", sop, syntax=stored_syntax, seconds=outcome.verify_seconds)
        else:
            if outcome is not None and not outcome.recompressed:
                reason = outcome.reason or "not recompressed"
            proof = {"recompressed": False, "reason": reason, **(_proven(outcome) if outcome is not None else {})}
            spool.store_object(ident, src)
            if outcome is not None and outcome.malformed:
                malformed = reason
            noteworthy = outcome is None or outcome.recompressed or outcome.malformed
            stage(_log, "passed-through", sop, level=30 if noteworthy else 20,
                  study=identity.study_uid, syntax=stored_syntax, reason=reason)
    del ds
    if record is not None and proof is not None:
        try:
            record.processed(ident, identity, target_syntax=stored_syntax, calling_ae=calling_ae,
                             received_at=src.stat().st_mtime, **proof)
        except GatewayError as exc:  # the instance goes on; only its record is incomplete
            _log.error("proof record: sop=%s id=%s: %s", sop, ident, exc)

    destinations = config.destinations_for(calling_ae, identity.modality, identity.sop_class_uid)
    names = tuple(d.name for d in destinations) or (UNROUTED,)
    template = Job(ident, UNROUTED, identity=identity.with_syntax(stored_syntax), calling_ae=calling_ae,
                   received_at=src.stat().st_mtime, destinations=names, processing_failed=pass_through)
    if not destinations:
        reason = (f"no route matches calling AE {calling_ae!r}, modality {identity.modality!r}, "
                  f"SOP class {identity.sop_class_uid}")
        unrouted = replace(template, state=DEAD, reason=reason)
        if spool.add_job(unrouted):
            record_dead_letter(record, unrouted)
        stage(_log, "dead", sop, level=40, reason=reason)
    if malformed is not None and config.policy.malformed == "hold":
        reason = f"held: malformed pixel data ({malformed}); 'dicom-gateway retry' forwards it as received"
        template = replace(template, state=DEAD, reason=reason)
        stage(_log, "held", sop, level=30, study=identity.study_uid, reason=malformed)
    created = spool.add_jobs([replace(template, destination=dest.name) for dest in destinations])
    for job in created:
        if job.state == DEAD:
            record_dead_letter(record, job)
    spool.finish_received(ident)
    spool.collect(ident, list(names))
    return [job for job in created if job.state != DEAD]


def record_dead_letter(record: ProofRecord | None, job: Job) -> None:
    """Tell the proof record that the dead letter `job`'s destination (``-``: no route) will not get its
    instance, and why."""
    if record is None:
        return
    try:
        record.delivery(job.instance, job.destination, outcome="dead", syntax=None, attempts=job.attempts,
                        reason=job.reason)
    except GatewayError as exc:  # the dead letter stands; only its record is missing
        _log.error("proof record: sop=%s id=%s: %s", job.sop, job.instance, exc)


_CHILD: tuple[Config, Spool, ProofRecord | None] | None = None


def _child_init(config: Config, service_pid: int, record_path: Path | None = None) -> None:
    """Set up a worker process: logging like the service's, its own Spool and proof record handles."""
    global _CHILD
    import signal

    from gateway.logs import setup_logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the service decides
    _die_with_parent()
    if os.getppid() != service_pid:  # the service died while this process was starting
        os._exit(0)
    threading.Thread(target=_exit_with_parent, args=(service_pid,), name="parent-watch", daemon=True).start()

    setup_logging(config.logging.level, config.logging.file, config.logging.max_bytes, config.logging.backups,
                  rotate=False)  # the service rotates the file; this process follows
    spool = Spool(config.spool.directory, keep_after_delivery=config.spool.keep_after_delivery)
    spool.destination_names = frozenset(d.name for d in config.destinations) | spool.job_destinations()
    _CHILD = (config, spool, ProofRecord(record_path) if record_path is not None else None)
    import gateway.pipeline  # noqa: F401 - load codecs before the first instance arrives
    from gateway.warmup import configured_syntaxes, warm_up

    # The service compiled these before starting the pool: here they come from numba's cache.
    try:
        report = warm_up(configured_syntaxes(config, forwarding=False),
                         encode_options=config.compression.encode_options)
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


_FULL_DISK_SECONDS = 30.0
"""How long an instance waits when the spool's filesystem is full before it is tried again."""


_FULL = tuple(f"[Errno {code}]" for code in (errno.ENOSPC, errno.EDQUOT))


def _out_of_space(exc: BaseException | None) -> bool:
    """True when `exc`, or an exception it was raised from, says the spool's filesystem is full.

    A worker process's exception reaches the service without its cause: a
    :class:`SpoolError` is then known by the error it quotes.
    """
    seen = 0
    while exc is not None and seen < 8:
        if is_out_of_space(exc) or (isinstance(exc, SpoolError) and any(code in str(exc) for code in _FULL)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this process the moment the service dies.

    A worker outliving a ``kill -9`` of the service would race the restarted
    service over the spool.  The kernel sends the signal when the *thread*
    that started this process ends: a dispatcher thread of the worker, which
    lives as long as the service and survives every failure of an instance.
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


def _child_process(ident: str) -> tuple[int, list[Job]]:
    """Process `ident` in a worker process; return this process's id and the jobs created."""
    assert _CHILD is not None, "worker process not initialised"
    config, spool, record = _CHILD
    return os.getpid(), process_instance(config, spool, ident, record=record)


class ProcessingTimeout(GatewayError):
    """An instance was still unfinished in its worker process after ``[compression] timeout_seconds``."""


class _Shared(Exception):
    """The shared pool broke or ran out of time with this instance in it: not yet shown to be its doing."""


def _kill(processes: list) -> None:
    """Kill worker `processes` now, whatever they are doing (a pool with one of them gone is broken)."""
    for process in processes:
        try:
            process.kill()
        except (OSError, ValueError, AttributeError):
            pass  # already gone
    for process in processes:
        try:
            process.join(5.0)
        except (OSError, ValueError, AssertionError):
            pass


_INTERRUPTED = ("interrupted: the service stopped while processing it (a crash of the service process, "
                "such as a decoder's, or a stop that could not wait for it)")
"""Reason of the attempt counted before it begins with ``processes = 0``, until it ends."""


class _Stopping(Exception):
    """The worker is stopping: no worker process is started any more."""


class Worker:
    """Processes received instances in arrival order.

    The decoding, encoding and verification are CPU-bound Python and numba
    work; in the service process they would compete for its interpreter lock
    with the receiver and the forwarders.  With ``[compression] processes =
    N`` (default: one per core) they run in N worker processes, side by side:
    two dispatcher threads per process keep one instance queued behind the
    one in hand, so the instances of a series flow through every core.  With
    0 they run in threads of the service process.  The spool on disk is the
    only state they share.  An instance is never processed twice at once;
    processing starts in arrival order, and each instance's jobs are handed
    to the forwarders as soon as its own processing ends.

    An instance whose processing fails (an error outside the pipeline's own
    pass-through handling, a worker process that died, or one still busy
    with it after ``[compression] timeout_seconds``, which is killed) is
    tried again after ``[compression] retry_seconds``, doubled each time,
    and after ``max_attempts`` failures forwarded exactly as received
    (:func:`process_instance` with `pass_through`).  The count is kept in the
    spool, so a restart does not reset it.  It never loops in ``incoming/``.

    A worker process that dies (or is killed at the time limit) breaks the
    whole pool: every instance in it fails, though one at most is the cause.
    None of them is blamed for that: each is processed again alone, in a pool
    of one process used by one instance at a time, where a failure is its
    own and is counted.  An instance that failed before is processed there
    from the start, so it cannot take others down again.

    With ``processes = 0`` a crash of a decoder ends the service itself, and
    nothing is left to count it: so each attempt is counted in the spool
    before it begins (and forgotten when it succeeds), and after
    ``max_attempts`` starts that ended that way the instance is forwarded as
    received.  A thread cannot be killed: there, the time limit does not
    apply.
    """

    def __init__(self, config: Config, spool: Spool, submit: Callable[[Job], None], threads: int = 2,
                 record: ProofRecord | None = None) -> None:
        self.config = config
        self.spool = spool
        self.submit = submit
        self.record = record
        self.processes = config.compression.processes
        self._pool: ProcessPoolExecutor | None = None  # shared by the instances not suspected of anything
        self._alone: ProcessPoolExecutor | None = None  # one process, one instance at a time
        self._pools: set[ProcessPoolExecutor] = set()  # every pool not yet shut down (killed at the stop)
        self._retired: dict[ProcessPoolExecutor, list] = {}  # processes of pools shut down, maybe still at work
        self._pool_lock = threading.Lock()  # making the shared pool, submitting to it
        self._alone_lock = threading.Lock()  # held while an instance is processed alone
        self.processed_by: Counter[int] = Counter()  # instances processed, per worker process id (of live pools)
        if self.processes:
            threads = 2 * self.processes  # dispatchers: keep each process busy
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._halt = threading.Event()
        self._active: set[str] = set()
        self._not_before: dict[str, float] = {}  # instances waiting out a retry delay (monotonic time)
        self._sighted: dict[str, float] = {}  # received instances the rescans found, since when (monotonic time)
        self._failures: dict[str, int] = {}  # failed attempts seen by this process, per instance
        self._timers: set[threading.Timer] = set()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, name=f"worker-{i}", daemon=True)
                         for i in range(max(1, threads))]

    def notify(self, ident: str) -> None:
        """A new instance is in the spool (called by the receiver)."""
        self._queue.put(ident)

    def recover(self, idents: list[str] | None = None, halt: threading.Event | None = None) -> int:
        """Re-check the held instances `idents` (default: all) after a restart; return how many were repaired.

        Objects and job manifests are not fsync'd (see :mod:`gateway.spool`):
        rebuild what a crash may have lost before the forwarders start.  Stops
        early once `halt` is set (the rest is checked at the next start).
        """
        repaired = 0
        for ident in self.spool.held_ids() if idents is None else idents:
            if halt is not None and halt.is_set():
                break
            if idents is not None and not self.spool.held_path(ident).exists():
                continue  # moved on since the list was taken (a dead letter sent back to routing)
            try:
                created = process_instance(self.config, self.spool, ident, reuse_object=True, record=self.record)
            except Exception:  # noqa: BLE001 - one bad file must not stop the start
                _log.exception("recovering held instance %s failed; it stays in the spool", ident)
                continue
            repaired += bool(created)
            for job in created:
                self.submit(job)
        return repaired

    def _new_pool(self, processes: int | None = None) -> ProcessPoolExecutor:
        """A pool of `processes` (default: the configured number) worker processes, started when used."""
        with self._lock:
            if self._halt.is_set():
                raise _Stopping("the worker is stopping")
            pool = ProcessPoolExecutor(max_workers=processes or self.processes, mp_context=get_context("spawn"),
                                       initializer=_child_init,
                                       initargs=(self.config, os.getpid(),
                                                 self.record.path if self.record else None))
            self._pools.add(pool)
        return pool

    def _retire(self, pool: ProcessPoolExecutor, *, kill: bool = False, cancel: bool = False) -> None:
        """Shut `pool` down without waiting; its processes finish the instance in hand, or are killed now."""
        with self._lock:
            self._pools.discard(pool)
            # The pool forgets its processes once shut down: keep them, for a time limit or the stop to kill.
            processes = self._retired.pop(pool, []) + list((getattr(pool, "_processes", None) or {}).values())
            self._retired = {p: procs for p, procs in self._retired.items() if any(x.is_alive() for x in procs)}
            if not kill:
                self._retired[pool] = processes
            # Only the counts of processes still known: each reload replaces them, one entry more per process.
            known = {x.pid for procs in self._retired.values() for x in procs}
            known.update(pid for p in self._pools for pid in (getattr(p, "_processes", None) or {}))
            for pid in [pid for pid in self.processed_by if pid not in known]:
                del self.processed_by[pid]
        if kill:
            _kill(processes)
        pool.shutdown(wait=False, cancel_futures=cancel)

    def _process(self, ident: str, alone: bool = False) -> list[Job]:
        """Process `ident`; return its jobs.  `alone`: it failed before (see the class's description)."""
        if not self.processes:
            return self._process_in_service(ident)
        if not alone:
            try:
                return self._process_shared(ident)
            except _Shared as exc:
                if self._halt.is_set():
                    raise
                _log.warning("processing %s: the worker processes failed (%s); processing it again alone, "
                             "not counted against it", ident, exc)
        return self._process_alone(ident)

    def _process_in_service(self, ident: str) -> list[Job]:
        """Process `ident` in this thread, its attempt counted before it begins (a crash here ends the service)."""
        try:
            self.spool.record_failure(ident, _INTERRUPTED)
        except GatewayError as exc:
            _log.warning("processing %s: its attempt cannot be recorded before it begins: %s", ident, exc)
        return process_instance(self.config, self.spool, ident, record=self.record)

    def _process_shared(self, ident: str) -> list[Job]:
        """Process `ident` in the shared pool; :class:`_Shared` when the pool broke or ran out of time."""
        with self._pool_lock:  # a reload replacing the pool waits for this submission
            pool = self._pool
            if pool is None:
                pool = self._new_pool()
                # Its processes load their kernels before the first instance's time starts.
                self._wait_for_processes(pool)
                self._pool = pool
            try:
                future = pool.submit(_child_process, ident)
            except (BrokenProcessPool, RuntimeError) as exc:  # RuntimeError: shut down by the stop
                if self._pool is pool:
                    self._pool = None
                raise _Shared(f"{type(exc).__name__}: {exc}") from exc
        try:
            return self._result(future)
        except (BrokenProcessPool, CancelledError, ProcessingTimeout) as exc:
            with self._pool_lock:  # a fresh pool for the next instances
                if self._pool is pool:
                    self._pool = None
            # Past the time limit: its process is killed, so is the pool; the others in it are tried alone.
            self._retire(pool, kill=isinstance(exc, ProcessingTimeout))
            raise _Shared(f"{type(exc).__name__}: {exc}") from exc

    def _process_alone(self, ident: str) -> list[Job]:
        """Process `ident` in the pool of one process, nothing else beside it: whatever fails is its own."""
        with self._alone_lock:
            for tries_left in (1, 0):
                pool = self._alone
                if pool is None:
                    pool = self._new_pool(1)
                    self._wait_for_processes(pool, processes=1)  # its start is not counted in the instance's time
                    self._alone = pool
                try:
                    future = pool.submit(_child_process, ident)
                    break
                except RuntimeError as exc:  # broken, or shut down by a reload meanwhile (by the stop: no new one)
                    if self._alone is pool:
                        self._alone = None
                    self._retire(pool)
                    if isinstance(exc, BrokenProcessPool) or not tries_left:
                        raise
            try:
                return self._result(future)
            except (BrokenProcessPool, ProcessingTimeout) as exc:
                if self._alone is pool:
                    self._alone = None
                self._retire(pool, kill=isinstance(exc, ProcessingTimeout))
                raise

    def _result(self, future) -> list[Job]:
        """The jobs `future` gives, waited for no longer than ``[compression] timeout_seconds``."""
        limit = self.config.compression.timeout_seconds
        try:
            pid, jobs = future.result(timeout=limit)
        except TimeoutError:
            if future.done():  # raised by the processing itself
                raise
            raise ProcessingTimeout(f"still processing after {limit:g} s ([compression] timeout_seconds): "
                                    "its worker process was killed") from None
        with self._lock:
            self.processed_by[pid] += 1
        return jobs

    def reconfigure(self, config: Config) -> None:
        """Process instances from now on with `config` (routes, codec choices); the pool size stays.

        Worker processes hold the configuration they were started with, so
        they are replaced (new ones start with the next instance): those
        running finish the instance in hand.
        """
        self.config = config
        if self.processes:
            with self._pool_lock:
                old, self._pool = self._pool, None
            alone, self._alone = self._alone, None  # one in use stays its user's until the instance ends
            for pool in (old, alone):
                if pool is not None:
                    self._retire(pool)

    def start(self) -> None:
        if self.processes:
            with self._pool_lock:
                self._pool = self._new_pool()
                self._wait_for_processes(self._pool)
        for ident in self.spool.received():  # received before a restart, not yet processed
            self._queue.put(ident)
        for thread in self._threads:
            thread.start()

    def stalled(self) -> str | None:
        """None while every worker thread runs (once started), else how many have stopped."""
        dead = sum(1 for thread in self._threads if thread.ident is not None and not thread.is_alive())
        return f"{dead} of {len(self._threads)} worker thread(s) have stopped" if dead else None

    def _wait_for_processes(self, pool: ProcessPoolExecutor, timeout: float = 600.0,
                            processes: int | None = None) -> None:
        """Start the worker processes now and wait until they have loaded their codec kernels.

        Each process runs its initialiser (which warms the kernels up) before
        it takes a task, and one that is ready first may take every task
        submitted while the others still compile: tasks are submitted again
        until each process has answered one, so that "ready" (and systemd's
        READY=1 after it) means every process.
        """
        started = time.perf_counter()
        count = processes or self.processes
        deadline = time.monotonic() + timeout
        answered: set[int] = set()
        try:
            while len(answered) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(answered)} of {count} answered in {timeout:g} s")
                for future in [pool.submit(_child_ready) for _ in range(count - len(answered))]:
                    answered.add(future.result(left)[0])
        except Exception as exc:  # noqa: BLE001 - a broken pool is replaced at the first instance
            _log.warning("worker processes not ready: %s: %s", type(exc).__name__, exc)
            return
        _log.info("%d worker process(es) ready in %.1f s", len(answered), time.perf_counter() - started)

    def stop(self) -> None:
        self._halt.set()
        with self._lock:
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()
        for _ in self._threads:
            self._queue.put(None)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the instances in hand, at most `timeout` seconds in all; then kill the worker processes.

        A worker process stuck in a decoder would otherwise hold the stop
        forever.  What was interrupted is processed again at the next start.
        """
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        for thread in self._threads:
            thread.join(left())
        self._pool = self._alone = None
        with self._lock:
            pools = list(self._pools)
        for pool in pools:
            self._retire(pool, cancel=True)
        with self._lock:
            processes = [p for procs in self._retired.values() for p in procs]
            self._retired = {}
        for process in processes:
            process.join(left())
        stuck = [p for p in processes if p.is_alive()]
        if stuck:
            _log.warning("stopping: %d worker process(es) still busy after %s s: killed", len(stuck), timeout)
            _kill(stuck)

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
        if self._halt.is_set():  # stopping (its worker processes too): processed again at the next start
            _log.info("processing %s interrupted by the stop: %s", ident, reason)
            return
        if _out_of_space(exc):  # the spool's trouble, not the instance's: no attempt counted, none given up
            if not self.processes:  # this one was counted before it began
                try:
                    self.spool.uncount_attempt(ident)
                except (OSError, GatewayError):
                    pass  # the disk is full: most likely it could not be counted either
            _log.warning("processing %s waits: the spool's filesystem is full (%s); trying again in %.0f s",
                         ident, reason, _FULL_DISK_SECONDS)
            self._retry_later(ident, _FULL_DISK_SECONDS)
            return
        limit = self.config.compression.max_attempts
        with self._lock:  # counted here too: the spool may be unable to record it (a full disk)
            counted = self._failures[ident] = self._failures.get(ident, 0) + 1
        try:  # with processes = 0 this attempt was counted before it began: only its reason is written here
            record = self.spool.record_failure if self.processes else self.spool.record_failure_reason
            attempts = max(counted, record(ident, reason))
        except GatewayError as problem:
            _log.warning("processing %s failed (%s) and the failure cannot be recorded: %s", ident, reason, problem)
            attempts = counted
        if attempts < limit:
            delay = self.config.compression.retry_delay(max(1, attempts))
            _log.warning("processing %s failed (attempt %d of %d): %s; trying again in %.1f s",
                         ident, attempts, limit, reason, delay, exc_info=exc if attempts <= 1 else None)
            self._retry_later(ident, delay)
            return
        with self._lock:
            self._failures.pop(ident, None)
        self._give_up(ident, f"processing failed {attempts} times, forwarded as received; last error: {reason}")

    def _give_up(self, ident: str, reason: str) -> None:
        """Forward the original unchanged; if even that fails (its header unreadable...), make it a dead letter."""
        try:
            for job in process_instance(self.config, self.spool, ident, pass_through=reason, record=self.record):
                self.submit(job)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - it must leave incoming/ whatever happens
            why = f"{reason}; it cannot be forwarded as received either: {type(exc).__name__}: {exc}"
            if _out_of_space(exc):  # nor can a dead letter be written: the instance waits in incoming/
                _log.warning("instance %s waits: the spool's filesystem is full (%s); trying again in %.0f s",
                             ident, why, _FULL_DISK_SECONDS)
                self._retry_later(ident, _FULL_DISK_SECONDS)
                return
            try:
                dead = Job(ident, UNROUTED, state=DEAD, reason=why, destinations=(UNROUTED,),
                           processing_failed=reason)
                if self.spool.add_job(dead):
                    record_dead_letter(self.record, dead)
                self.spool.finish_received(ident)
            except (OSError, GatewayError) as problem:  # it stays in incoming/, tried again
                _log.error("instance %s cannot be made a dead letter (%s); trying again in %.0f s: %s", ident,
                           problem, _FULL_DISK_SECONDS, why)
                self._retry_later(ident, _FULL_DISK_SECONDS)
                return
            _log.error("instance %s becomes a dead letter: %s", ident, why)

    def _run(self) -> None:
        while not self._halt.is_set():
            try:
                ident = self._queue.get(timeout=self.config.compression.rescan_seconds)
            except queue.Empty:
                # Safety net for missed notifications; a file found less than two
                # rescan intervals ago may still be in the receiver's hands (being
                # checked).  Counted on the steady clock: a file's mtime against the
                # wall clock would wait out a step back, and take at once after a
                # step forward a file the receiver is still checking (and may delete).
                try:
                    received = self.spool.received()
                except OSError as exc:
                    _log.error("the spool's incoming folder cannot be listed: %s", exc)
                    continue
                now = time.monotonic()
                with self._lock:
                    self._sighted = {ident: self._sighted.get(ident, now) for ident in received}
                    overdue = [ident for ident, since in self._sighted.items()
                               if now - since >= 2 * self.config.compression.rescan_seconds]
                for ident in overdue:
                    self._queue.put(ident)
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
                    with self._lock:
                        failed_before = attempts > 0 or ident in self._failures
                    for job in self._process(ident, alone=failed_before):
                        self.submit(job)
                    with self._lock:
                        self._failures.pop(ident, None)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - keep serving; retried, then forwarded as received
                try:
                    self._failed(ident, exc)
                except Exception:  # noqa: BLE001 - this thread serves every instance after this one
                    _log.exception("processing %s failed and so did handling that; trying again in %.0f s",
                                   ident, _FULL_DISK_SECONDS)
                    self._retry_later(ident, _FULL_DISK_SECONDS)
            finally:
                with self._lock:
                    self._active.discard(ident)
            _log.debug("processed %s in %.3fs", ident, time.perf_counter() - started)
