"""The forwarder: one destination's jobs, in a thread of its own, with retry and dead letters.

One :class:`Forwarder` thread per destination and association (a DICOM
destination gets ``associations`` of them, each owning a fixed share of the
instances), so a slow or absent archive never blocks the others, and an
archive that stores one instance at a time per association is kept busy.
It takes due pending jobs from the spool, sends them through a
:class:`~gateway.forward.base.Sender` and records the outcome:

* success: the job is done (the object is deleted once all its jobs are);
* :class:`~gateway.errors.TransientForwardError` (connection refused,
  timeout, abort, status 0xA7xx, ...): retried after an exponential backoff
  ``min(cap, base * 2**(attempts-1))``, dead after ``max_attempts``;
* :class:`~gateway.errors.PermanentForwardError` (status 0xCxxx, SOP class
  refused, no way to encode for the destination): straight to dead letters,
  with the reason.

A transient failure makes the destination *failing* (``failing_since``,
which ``/readyz`` reads).  While it fails, the forwarder sends nothing but a
*probe* every ``[retry] probe_seconds``: one job, the one due soonest (the
rest of a batch the failure cut short goes back to the queue untried).  A
probed job that was due counts the attempt like any other (its backoff
grows, and it goes to the back of the probes); one sent early, because no
job was due, changes nothing and logs nothing.  So an outage costs the
destination one attempt per probe interval however long the queue is: a
backlog of tens of thousands neither rewrites every manifest and logs a line
per job at each backoff, nor wears every job out to a dead letter within
``max_attempts`` backoffs (about 4 hours at the defaults); each job is tried
in turn, and only a job tried ``max_attempts`` times is given up.  An
instance that fails on its own (an archive that aborts on it) is still given
up after its attempts, the others going on: a failed probe passes to the
next job.

The first answer ends the failure and makes every waiting job due at once:
the backlog goes out at the destination's speed.  All but one: when a
single job failed in the whole failure and another job's answer ended it at
once (at the first probe at the latest), the destination was never down,
that job fails on its own, and it keeps its backoff.  Made due with the
rest, it would be sent again at once, fail again and hold every other job
for a probe interval, over and over until its attempts ran out (the backlog
going out at one instance per probe interval meanwhile); it holds them up
for one probe interval per backoff of its own instead.  An answer is a success or
a permanent refusal (a destination that refuses an instance is reachable;
an instance found unsendable before the destination was asked,
:class:`~gateway.errors.UnsendableError`, is no answer).  So does a queue
left empty (its last jobs dead letters): nothing waits for the destination,
and no probe could tell whether it is back.

Due times are wall-clock times (they survive a restart in the job's
manifest), so a job whose due time lies further ahead than any backoff
(the clock was set back) is taken as due rather than left waiting for the
step's length.

What the forwarder knows of its destination (failing since, last error, next
attempt) is saved in the spool's ``state/`` folder when it changes, for
``dicom-gateway status``.
"""

from __future__ import annotations

import heapq
from dataclasses import replace
import threading
import time
import zlib

from gateway.config import Destination, RetryConfig
from gateway.errors import GatewayError, PermanentForwardError, TransientForwardError, UnsendableError
from gateway.forward.base import BatchSender, Sender
from gateway.logs import get_logger, stage
from gateway.record import ProofRecord
from gateway.spool import DEAD, INFLIGHT, PENDING, Job, Spool

__all__ = ["Forwarder"]

_log = get_logger("forward")

_CLOCK_SLACK = 60.0  # seconds beyond the backoff's cap that a due time may lie ahead before the clock is blamed



class Forwarder(threading.Thread):
    """Sends one destination's jobs in a thread of its own."""

    def __init__(self, destination: Destination, spool: Spool, retry: RetryConfig, sender: Sender,
                 *, batch: int = 32, idle_seconds: float = 5.0, rescan_seconds: float = 30.0,
                 partition: tuple[int, int] = (0, 1), record: ProofRecord | None = None) -> None:
        super().__init__(name=f"forward-{destination.name}-{partition[0]}", daemon=True)
        self.record = record
        self.failing_since: float | None = None  # wall time of the first failure since the last answer
        self.partition = partition
        self.destination = destination
        self.spool = spool
        self.retry = retry
        self.sender = sender
        self.batch = batch
        self.idle_seconds = idle_seconds
        self.rescan_seconds = rescan_seconds
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_success_at: float | None = None
        self._next_probe = 0.0  # monotonic time of the next probe while failing
        self._spell: set[str] = set()  # keys of the jobs that failed since the destination began to fail
        self._spell_probes = 0  # probes sent since the destination began to fail
        self._state_dirty = False
        self._state_saved = 0.0
        self._heap: list[tuple[float, str, str]] = []  # (due, key, instance)
        self._queued: set[str] = set()
        self._cond = threading.Condition()
        self._halt = threading.Event()

    # -- feeding

    def owns(self, instance: str) -> bool:
        """True when this forwarder's partition of the destination's jobs holds `instance`."""
        index, count = self.partition
        return count == 1 or zlib.crc32(instance.encode()) % count == index

    def submit(self, job: Job) -> None:
        """Queue a pending job (called by the worker, and at start-up from disk)."""
        if not self.owns(job.instance):
            return
        with self._cond:
            if job.key in self._queued:
                return
            self._queued.add(job.key)
            heapq.heappush(self._heap, (job.next_retry_at, job.key, job.instance))
            self._cond.notify()

    def _rescan(self) -> None:
        """Queue the destination's pending jobs this forwarder does not hold yet (their manifests alone are read)."""
        for job in self.spool.jobs_in(PENDING, self.destination.name, self._held):
            self.submit(job)

    def _held(self, key: str) -> bool:
        """True when the job `key` is queued here already, or belongs to another forwarder's partition."""
        if not self.owns(key.split("@", 1)[0]):
            return True
        with self._cond:
            return key in self._queued

    def stop(self) -> None:
        self._halt.set()
        with self._cond:
            self._cond.notify()

    # -- loop

    def _due(self) -> tuple[list[str], float | None]:
        """Instance ids due now (up to `batch`; none while the destination fails) and the next due time."""
        now = time.time()
        beyond = now + self.retry.cap_seconds + _CLOCK_SLACK  # no backoff sets a job's due time this far ahead
        due: list[str] = []
        with self._cond:
            while (self.failing_since is None and self._heap and len(due) < self.batch
                   and (self._heap[0][0] <= now or self._heap[0][0] > beyond)):
                _, key, instance = heapq.heappop(self._heap)
                self._queued.discard(key)
                due.append(instance)
            nxt = self._heap[0][0] if self._heap else None
        return due, nxt

    def next_attempt(self) -> float | None:
        """Wall time of the next attempt (the soonest job's, or the next probe while failing), None if idle."""
        with self._cond:
            nxt = self._heap[0][0] if self._heap else None
        if nxt is not None and self.failing_since is not None:
            nxt = time.time() + max(0.0, self._next_probe - time.monotonic())
        return nxt

    def state(self) -> dict[str, object]:
        """What ``status`` shows of this forwarder."""
        return {"destination": self.destination.name, "partition": self.partition[0],
                "failing_since": self.failing_since, "last_error": self.last_error,
                "last_error_at": self.last_error_at, "last_success_at": self.last_success_at,
                "next_attempt_at": self.next_attempt(), "saved_at": time.time()}

    def _save_state(self, now: bool = True) -> None:
        """Save :meth:`state` now, or (`now` false) at the latest when the loop next waits."""
        self._state_dirty = True
        if now or time.monotonic() - self._state_saved > 1.0:
            self._state_dirty = False
            self._state_saved = time.monotonic()
            self.spool.save_destination_state(f"{self.destination.name}.{self.partition[0]}", self.state())

    def _probe_due(self) -> bool:
        """True when the destination is failing, a job waits, and a probe is due."""
        if self.failing_since is None or time.monotonic() < self._next_probe:
            return False
        with self._cond:
            return bool(self._heap)

    def _probe(self) -> None:
        self._next_probe = time.monotonic() + self.retry.probe_seconds
        self._spell_probes += 1
        with self._cond:
            if not self._heap:
                return
            _, key, instance = heapq.heappop(self._heap)
            self._queued.discard(key)
        self._deliver([instance], probe=True)

    def _drain(self, keep: str | None = None) -> None:
        """The destination is back: every waiting job is due now, but the job `keep`, which keeps its own."""
        with self._cond:
            if self._heap:
                self._heap = [(due if key == keep else 0.0, key, instance) for due, key, instance in self._heap]
                heapq.heapify(self._heap)
                _log.info("%s accepts again: sending its %d waiting instance(s) now", self.destination.name,
                          len(self._heap))
            self._cond.notify()

    def run(self) -> None:
        self._rescan()
        last_scan = time.monotonic()
        idle_since = time.monotonic()
        trouble = 0  # unexpected errors in a row: the pause after each grows
        try:
            while not self._halt.is_set():
                try:
                    due, nxt = self._due()
                    if due:
                        self._deliver(due)
                        idle_since = time.monotonic()
                        trouble = 0
                        continue
                    if self._probe_due():
                        self._probe()
                        continue
                except Exception:  # noqa: BLE001 - the destination's only thread: it must go on
                    trouble += 1
                    pause = self.retry.delay(trouble)
                    _log.exception("forwarding to %s failed unexpectedly; going on in %g s", self.destination.name,
                                   pause)
                    self.sender.close()
                    self._halt.wait(pause)
                    self._requeue_inflight()
                    continue
                if nxt is None and self.failing_since is not None:
                    self._recovered()  # nothing waits for the destination: it holds nothing up
                if time.monotonic() - idle_since > self.idle_seconds:
                    self.sender.close()
                if time.monotonic() - last_scan > self.rescan_seconds:
                    self._rescan()
                    last_scan = time.monotonic()
                    continue
                failing = self.failing_since is not None
                if failing and nxt is not None:  # only the probe goes, however many jobs are due
                    wait = max(0.0, self._next_probe - time.monotonic())
                else:
                    wait = self.rescan_seconds if nxt is None else max(0.0, nxt - time.time())
                wait = min(wait, self.rescan_seconds, self.idle_seconds)
                if self._state_dirty:
                    self._save_state()
                with self._cond:
                    if failing or not self._heap or self._heap[0][0] > time.time():
                        self._cond.wait(timeout=wait)
        finally:
            self.sender.close()

    def _requeue_inflight(self) -> None:
        """Put this forwarder's claimed jobs back in the queue after an unexpected error left them claimed."""
        for job in list(self.spool.jobs_in(INFLIGHT, self.destination.name)):
            if not self.owns(job.instance):
                continue
            try:
                self.submit(self.spool.move(job, PENDING))
            except (OSError, GatewayError) as exc:
                _log.error("job %s stays claimed until the next start: %s", job.key, exc)

    def _deliver(self, instances: list[str], probe: bool = False) -> None:
        jobs = []
        for instance in instances:
            job = self.spool.claim(instance, self.destination.name)
            if job is not None:
                jobs.append(job)
        if not jobs:
            return
        try:
            self.sender.prepare(jobs)
        except TransientForwardError as exc:  # the destination is unreachable: the first job was tried
            self._failed(jobs[0], exc, transient=True, probe=probe)
            self._put_back(jobs[1:], probe=probe)
            return
        for index, job in enumerate(jobs):
            if self._halt.is_set() or (index and self.failing_since is not None):
                self._put_back(jobs[index:], probe=probe)
                return
            self._send_one(job, probe=probe)

    def _put_back(self, jobs: list[Job], *, probe: bool) -> None:
        """Stopping, or the destination failing, in the middle of a batch: the jobs not sent yet wait, untried.

        Those a batch sender has already sent with an earlier one (the
        archive has answered for them) get that answer recorded instead: sent
        again, they would reach the archive twice.
        """
        held = self.sender.has_outcome if isinstance(self.sender, BatchSender) else None
        for job in jobs:
            if held is not None and held(job):
                self._send_one(job, probe=probe)
            else:
                self._move(job, PENDING, job.next_retry_at)

    def _send_one(self, job: Job, probe: bool = False) -> None:
        path = self.spool.object_path(job.instance)
        sop = job.sop
        if not path.exists():
            if self.spool.held_path(job.instance).exists():  # the cache is rebuilt at the next start
                self._failed(job, TransientForwardError(f"processed object {path.name} is missing; "
                                                        "it is rebuilt from the held instance at restart"),
                             transient=True)
            else:
                self._failed(job, PermanentForwardError(f"instance {job.instance} is gone from the spool"),
                             transient=False)
            return
        started = time.perf_counter()
        try:
            size = path.stat().st_size
            syntax = self.sender.send(job, path)
            size = self._sent_bytes(job) or size  # re-encoded for the destination: what was sent
        except TransientForwardError as exc:
            self._failed(job, exc, transient=True, probe=probe)
            return
        except PermanentForwardError as exc:
            self._failed(job, exc, transient=False)
            if not isinstance(exc, UnsendableError):  # found here, before the destination was asked
                self._recovered(job)  # a refusal is an answer: the destination is reachable
            return
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - a bug in one send must not stop the destination
            self.sender.close()
            self._failed(job, TransientForwardError(f"{type(exc).__name__}: {exc}"), transient=True, probe=probe)
            return
        seconds = time.perf_counter() - started
        # The record first: whoever sees the job done finds its delivery; a crash between the two repeats
        # the delivery, it never leaves one unrecorded.
        self._record(job, "delivered", syntax=syntax, attempts=job.attempts + 1, seconds=seconds, size=size)
        self.spool.finish(job)
        stage(_log, "forwarded", sop, study=job.identity.study_uid, destination=self.destination.name,
              syntax=syntax, seconds=seconds)
        self.last_success_at = time.time()
        self._recovered(job)

    def _recovered(self, answered: Job | None = None) -> None:
        """The destination answered (for `answered`), or nothing waits for it: not failing; whatever waits goes now.

        When one job alone failed since the destination began to fail and
        another one's answer ends it at once (at the first probe at the
        latest), that job failed on its own (an archive that aborts on it, or
        answers 0xA7xx for it alone): it keeps its backoff rather than being
        sent again at once and cutting the backlog short for another probe
        interval.  After a longer failure that job may have waited out an
        outage alone, and it goes with the rest.
        """
        if self.failing_since is not None:
            self.failing_since = None
            alone = next(iter(self._spell)) if len(self._spell) == 1 and self._spell_probes <= 1 else None
            self._spell.clear()
            self._spell_probes = 0
            self._drain(keep=alone if answered is not None and alone != answered.key else None)
            self._save_state()

    def _sent_bytes(self, job: Job) -> int | None:
        """The bytes the sender sent for `job` when they were not the stored object's (a re-encoding)."""
        sent = getattr(self.sender, "sent_bytes", None)  # a sender that never re-encodes has none
        return sent(job) if sent is not None else None

    def _record(self, job: Job, outcome: str, **details: object) -> None:
        if self.record is None:
            return
        try:
            self.record.delivery(job.instance, self.destination.name, outcome=outcome, **details)
        except GatewayError as exc:  # the delivery stands; only its record is missing
            _log.error("proof record: sop=%s id=%s: %s", job.sop, job.instance, exc)

    def _failed(self, job: Job, exc: Exception, *, transient: bool, probe: bool = False) -> None:
        self.last_error, self.last_error_at = str(exc), time.time()
        if transient and self.failing_since is None:
            self.failing_since = time.time()
            self._next_probe = time.monotonic() + self.retry.probe_seconds
            self._spell.clear()
            self._spell_probes = 0
        if transient:
            self._spell.add(job.key)
        if transient and probe and job.next_retry_at > time.time():  # sent early, and still failing: as it was
            self._move(job, PENDING, job.next_retry_at)
            self._save_state(now=False)
            return
        attempts = job.attempts + 1
        sop = job.sop
        if transient and attempts < self.retry.max_attempts:
            due = time.time() + self.retry.delay(attempts)
            self._move(job, PENDING, due, attempts=attempts, next_retry_at=due, reason=str(exc))
            stage(_log, "retry", sop, destination=self.destination.name, attempts=attempts,
                  delay=self.retry.delay(attempts), reason=str(exc))
            self._save_state(now=False)
            return
        reason = str(exc) if not transient else f"gave up after {attempts} attempts: {exc}"
        # The record first, as for a delivery; if the spool cannot mark the job dead, it is tried again and
        # its next outcome is recorded after this one.
        self._record(job, "dead", syntax=None, attempts=attempts, reason=reason)
        if not self._move(job, DEAD, time.time() + self.retry.delay(attempts), attempts=attempts, reason=reason):
            return
        stage(_log, "dead", sop, level=40, destination=self.destination.name, reason=reason)
        self._save_state(now=False)

    def _move(self, job: Job, state: str, due: float, **changes: object) -> bool:
        """Move `job` to `state` with `changes` (queued again if pending); False if only a retry could be kept.

        A spool that cannot write the new manifest (a full disk: the archive's filesystem is often the
        spool's) must not stop the destination: the job is renamed back to pending as it was, which
        needs no space, and waits until `due` in memory.
        """
        try:
            moved = self.spool.move(job, state, **changes)
        except (OSError, GatewayError) as exc:
            _log.error("the state of job %s cannot be written (%s); it is tried again", job.key, exc)
            try:
                moved = self.spool.move(job, PENDING)
            except (OSError, GatewayError) as again:
                _log.error("job %s stays claimed until the next start: %s", job.key, again)
                return False
            self.submit(replace(moved, next_retry_at=due))
            return False
        if state == PENDING:
            self.submit(moved)
        return True
