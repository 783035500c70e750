"""The durable queue on disk between receiving and forwarding.

Layout under the spool directory::

    tmp/                      partial writes; anything here after a crash is garbage
    incoming/<id>.dcm         received, acknowledged to the sender, not yet processed;
                              the id ends with the calling AE title in hex (routing input)
    held/<id>.dcm             the same file once processed: kept until every
                              destination has it, it is what makes delivery durable
    objects/<id>.dcm          processed form to forward (recompressed, or a link to
                              the original): a cache, rebuilt from held/ if lost
    jobs/<state>/<id>@<dest>.json   one delivery job per instance and destination
                              state = pending | inflight | done | dead
    failures/<id>.json        failed processing attempts of a received instance
                              (count and last reason), written durably; removed when
                              the instance leaves ``incoming/``

fsync costs milliseconds per call and the receive path pays it per image, so
it is spent only where a lost write could lose an instance:

* the received file is written to ``tmp/``, renamed into ``incoming/``, and
  both it and the folder are fsync'd before Success is answered (receptions
  at the same time share the folder's fsync: :class:`FolderSync`).  From then
  on its bytes never change; it only moves (``incoming/`` -> ``held/``) by an
  atomic rename until it is deleted after the last delivery;
* everything else derived from it (processed object, job manifests, the move
  to ``held/``, state changes pending -> inflight -> done) is written
  atomically (temporary file + rename) but not fsync'd.  After a crash,
  :meth:`Spool.recover` drops manifests that did not reach the disk whole, and
  the worker re-processes every instance in ``incoming/`` and ``held/``:
  a missing or damaged object is rebuilt, missing jobs are re-created
  (idempotently), so at worst an instance is sent twice (delivery is at least
  once);
* before the held file and the object of an instance are deleted (all its
  jobs done), the ``done`` folder is fsync'd, so a finished job cannot come
  back to life without its source;
* a failure (attempts, next retry, reason) rewrites the manifest durably.

A job changes state with new content by writing its manifest into the new
state folder and then removing the old one.  A crash in between leaves two
copies; :meth:`Spool.recover` keeps the most advanced (done > dead > inflight
> pending) and turns in-flight jobs back into pending ones.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, TypeVar

from gateway.dicom.identity import Identity
from gateway.errors import SpoolError
from gateway.files import DIRECTORY_MODE, make_dirs
from gateway.logs import get_logger

__all__ = ["Spool", "Job", "STATES", "fsync_dir", "FolderSync",
           "atomic_write_bytes", "atomic_copy", "remove_partial_copies",
           "FILE_MODE", "DIRECTORY_MODE", "create_private", "make_dirs", "free_bytes", "is_out_of_space"]

T = TypeVar("T")

_log = get_logger("spool")

PENDING, INFLIGHT, DONE, DEAD = "pending", "inflight", "done", "dead"
STATES = (PENDING, INFLIGHT, DONE, DEAD)
_RANK = {PENDING: 0, INFLIGHT: 1, DEAD: 2, DONE: 3}
UNROUTED = "-"
"""Destination name of a dead job recording that no route matched."""


FILE_MODE = 0o600
"""Mode of every file the gateway writes (patient data): owner only, whatever the umask."""


def create_private(path: Path, mode: int = FILE_MODE):
    """Open a new file for writing (truncating one that exists) with exactly `mode`.

    The mode is set on the open descriptor, so the umask cannot widen or
    narrow it and no other user can open the file in between.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def free_bytes(path: Path) -> int:
    """Bytes available to this (unprivileged) process on `path`'s filesystem."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def is_out_of_space(exc: BaseException) -> bool:
    """True when `exc` says the filesystem (or the quota) is full."""
    import errno

    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FolderSync:
    """fsync of one folder, shared by every caller waiting for it (group commit).

    A rename or unlink in the folder is durable once an fsync of the folder
    has *started* after it.  :meth:`sync` returns only then; a caller who
    arrives while an fsync runs waits for it to end, then the next one covers
    it and every other caller that arrived meanwhile.  So N receptions at
    once pay about two folder fsyncs instead of N, and none is answered
    before its own rename is on disk.  A failed fsync raises in the caller
    that ran it; the others run one again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._requested = 0  # tickets handed out, one per call
        self._covered = 0  # every ticket up to this one is covered by a finished fsync
        self._running = False
        self.count = 0  # fsyncs done (for tests and tools)

    def sync(self) -> None:
        """Return once a successful fsync of the folder started after this call."""
        with self._cond:
            self._requested += 1
            ticket = self._requested
            while self._covered < ticket:
                if self._running:
                    self._cond.wait()
                    continue
                self._running, upto = True, self._requested
                self._cond.release()
                try:
                    fsync_dir(self.path)
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._cond.notify_all()
                self._covered = max(self._covered, upto)
                self.count += 1


def fsync_file(path: Path) -> None:
    """Flush a written file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(dst: Path, data: bytes, tmp_dir: Path | None = None, mode: int = FILE_MODE, *,
                       sync_folder: bool = True) -> None:
    """Write `data` to `dst` (created with `mode`) so that `dst` is either complete or absent.

    Without `sync_folder` the caller makes the rename durable (an fsync of `dst`'s folder), once for many.
    """
    tmp_dir = tmp_dir or dst.parent
    tmp = tmp_dir / f".{dst.name}.{uuid.uuid4().hex}.tmp"
    try:
        with create_private(tmp, mode) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_folder:
        fsync_dir(dst.parent)


def atomic_copy(src: Path, dst: Path, tmp_dir: Path | None = None, mode: int = FILE_MODE) -> None:
    """Copy `src` to `dst` (created with `mode`) atomically and durably (temp file, fsync, rename)."""
    tmp_dir = tmp_dir or dst.parent
    tmp = tmp_dir / f".{dst.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(src, "rb") as source, create_private(tmp, mode) as handle:
            shutil.copyfileobj(source, handle, 1 << 20)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dst.parent)


_MOVE_BATCH = 256
"""Jobs :meth:`Spool._move_all` moves between two fsyncs of their folders."""

_PARTIAL = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")
"""Name of a temporary file of :func:`atomic_write_bytes` / :func:`atomic_copy`."""


def _count_entries(folder: Path, suffix: str = ".json", prefix: str = "", contains: str = "") -> int:
    """Number of names in `folder` with `suffix` (and `prefix` / `contains`), without reading any file."""
    with os.scandir(folder) as entries:
        return sum(1 for e in entries if e.name.endswith(suffix) and e.name.startswith(prefix)
                   and contains in e.name)


def _remove_changed_before(folder: Path, limit: float, suffix: str = "",
                           keep: Callable[[str], bool] | None = None) -> int:
    """Delete the files in `folder` (named ``*suffix``) whose ``st_ctime`` is before `limit`, but those whose
    name `keep` is true of; return how many."""
    removed = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.endswith(suffix) or keep is not None and keep(entry.name):
                continue
            try:
                if entry.stat().st_ctime < limit:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                pass
    return removed


def remove_partial_copies(root: Path, before: float | None = None) -> int:
    """Delete the temporary files an interrupted :func:`atomic_copy` left under `root`; return how many.

    Only names of exactly that form (``.<name>.<32 hex digits>.tmp``) are
    touched, and with `before` (a time stamp) only those last written before
    it, so that a copy in progress in this process is left alone.  The folder archive writes each instance that way, so a crash
    in the middle of a copy leaves one; the copy itself is redone from the
    spool.  Walks the whole tree: call it off the start-up path for large
    archives.
    """
    removed = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if _PARTIAL.match(name):
                path = os.path.join(folder, name)
                try:
                    if before is None or os.stat(path).st_mtime < before:
                        os.unlink(path)
                        removed += 1
                except FileNotFoundError:
                    pass
    return removed


@dataclass(frozen=True, slots=True)
class Job:
    """Delivery of one processed instance to one destination."""

    instance: str
    destination: str
    state: str = PENDING
    attempts: int = 0
    next_retry_at: float = 0.0
    reason: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    identity: Identity = Identity()  # transfer_syntax: that of the processed object delivered
    calling_ae: str = ""
    received_at: float = 0.0
    destinations: tuple[str, ...] = ()  # every destination of the instance (its jobs' names)
    processing_failed: str | None = None  # why the original goes unprocessed, after failed attempts
    # Fields of the manifest this release does not know (another release wrote them): written back as read.
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> str:
        return f"{self.instance}@{self.destination}"

    @property
    def sop(self) -> str:
        """The SOP Instance UID for logs, or the spool id when unknown."""
        return self.identity.sop_instance_uid or self.instance

    def to_json(self) -> bytes:
        data = asdict(self)
        extra = data.pop("extra")
        data["destinations"] = list(self.destinations)
        return json.dumps({**extra, **data}).encode()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        """A manifest as :meth:`to_json` writes it (or as written before jobs had a typed identity).

        A field this release does not know (a newer release wrote the
        manifest, and the gateway was downgraded) is kept aside and written
        back with the job: refused, it would make the job unreadable, and the
        start's recovery would delete it as damaged, so that a dead letter
        or a finished delivery of a held instance became a job to send again.
        """
        data = dict(data)
        old = data.pop("info", None)
        if isinstance(old, dict):
            data.setdefault("identity", old)
            for key in ("calling_ae", "received_at", "destinations", "processing_failed"):
                if key in old:
                    data.setdefault(key, old[key])
        data["extra"] = {key: data.pop(key) for key in list(data) if key not in _JOB_FIELDS}
        data["identity"] = Identity.from_dict(data.get("identity") or {})
        data["destinations"] = tuple(data.get("destinations") or ())
        return cls(**data)


_JOB_FIELDS = frozenset(Job.__dataclass_fields__) - {"extra"}


def _destination_of(job_file: str) -> str:
    """The destination of a job by its file's name, ``<instance>@<destination>.json``."""
    return job_file[job_file.rindex("@") + 1:-5] if "@" in job_file else UNROUTED


class Spool:
    """Durable instance store and job queue rooted at one directory."""

    def __init__(self, root: str | Path, *, keep_after_delivery: bool = False) -> None:
        self.root = Path(root)
        # Keep the received copy (moved to kept/) once every job is done, until prune_kept removes it.
        self.keep_after_delivery = keep_after_delivery
        self.kept = self.root / "kept"
        self.tmp = self.root / "tmp"
        self.incoming = self.root / "incoming"
        self.held = self.root / "held"
        self.objects = self.root / "objects"
        self.jobs = self.root / "jobs"
        self.failures = self.root / "failures"
        self.state = self.root / "state"
        self._jobs_dir, self._incoming_dir = str(self.jobs), str(self.incoming)
        self._lock = threading.RLock()
        self._syncer: ThreadPoolExecutor | None = None
        self._finished: list[tuple[str, list[str] | None]] = []  # (instance, destinations) for the collector
        self._finished_cond = threading.Condition()
        self._collector: threading.Thread | None = None
        self.incoming_sync = FolderSync(self.incoming)  # receptions at once share the folder's fsync
        self.done_sync = FolderSync(self.jobs / DONE)
        self._lock_handle: Any = None
        # Names of the configured destinations (set by the service): an instance is not deleted while any of
        # them has a job for it, whatever its other jobs list (a destination added since they were made).
        self.destination_names: frozenset[str] = frozenset()
        try:
            make_dirs(self.root)
            os.chmod(self.root, DIRECTORY_MODE)  # also an existing spool: patient data, owner only
            for folder in (self.tmp, self.incoming, self.held, self.objects, self.failures, self.kept, self.state,
                           self.jobs,
                           *(self.jobs / s for s in STATES)):
                make_dirs(folder)
                os.chmod(folder, DIRECTORY_MODE)
        except OSError as exc:
            raise SpoolError(f"cannot create the spool at {self.root}: {exc}") from exc

    # ------------------------------------------------------------------ receive

    @staticmethod
    def new_id() -> str:
        """A sortable unique instance id: receive time then randomness."""
        return f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"

    def temp_path(self, suffix: str = ".dcm") -> Path:
        """A fresh path in the spool's temp folder (same filesystem as the queue)."""
        return self.tmp / f"{uuid.uuid4().hex}{suffix}"

    def store_received(self, source: Path | bytes, calling_ae: str, *, synced: bool = False) -> str:
        """Durably add a received instance; return its id.

        `source` is either the encoded file bytes or a file already in
        :meth:`temp_path` (moved, not copied) or elsewhere (copied).  When this
        returns, the instance survives a crash; only then may the sender be
        told Success.  The calling AE title is kept in the id (everything else
        is in the dataset itself).  `synced` says a file in
        :meth:`temp_path` was fsync'd already.
        """
        ident = f"{self.new_id()}-{calling_ae.encode('ascii', 'replace').hex()}"
        final = self.incoming / f"{ident}.dcm"
        try:
            if isinstance(source, (bytes, bytearray, memoryview)):
                atomic_write_bytes(final, bytes(source), self.tmp)
            else:
                source = Path(source)
                if source.parent == self.tmp:
                    if not synced:
                        fsync_file(source)
                    os.replace(source, final)
                    self.incoming_sync.sync()
                else:
                    atomic_copy(source, final, self.tmp)
        except OSError as exc:
            raise SpoolError(f"cannot store instance in {self.incoming}: {exc}") from exc
        return ident

    def admit(self, tmp: Path, calling_ae: str, check: Callable[[Path], T]) -> tuple[str, T]:
        """Durably add the received file `tmp` (in :meth:`temp_path`) after `check` accepts it.

        The file is renamed into ``incoming/`` at once; its fsync, the
        folder's fsync and `check` (parsing, typically) then run at the same
        time, which roughly halves the wait of a sender for its answer.  If
        `check` raises, the file is removed and the exception propagates;
        nothing is announced before this returns, so no one sees it meanwhile.
        """
        ident = f"{self.new_id()}-{calling_ae.encode('ascii', 'replace').hex()}"
        final = self.incoming_path(ident)
        try:
            os.replace(tmp, final)
        except OSError as exc:
            raise SpoolError(f"cannot store instance in {self.incoming}: {exc}") from exc
        with self._lock:
            if self._syncer is None:
                self._syncer = ThreadPoolExecutor(max_workers=4, thread_name_prefix="spool-fsync")
        syncs = [self._syncer.submit(fsync_file, final), self._syncer.submit(self.incoming_sync.sync)]
        try:
            result = check(final)
        except BaseException:
            wait(syncs)
            final.unlink(missing_ok=True)
            raise
        try:
            for sync in syncs:
                sync.result()
        except OSError as exc:
            final.unlink(missing_ok=True)
            raise SpoolError(f"cannot make instance durable in {self.incoming}: {exc}") from exc
        return ident, result

    def received(self) -> list[str]:
        """Ids of received instances not yet processed, oldest first."""
        return sorted(p.stem for p in self.incoming.glob("*.dcm"))

    def incoming_path(self, ident: str) -> Path:
        return self.incoming / f"{ident}.dcm"

    @staticmethod
    def calling_ae(ident: str) -> str:
        """The calling AE title recorded in a received instance's id ("" if none)."""
        parts = ident.split("-")
        if len(parts) < 3:
            return ""
        try:
            return bytes.fromhex(parts[2]).decode("ascii", "replace")
        except ValueError:
            return ""

    # ---------------------------------------------------------------- processed

    def object_path(self, ident: str) -> Path:
        return self.objects / f"{ident}.dcm"

    def held_path(self, ident: str) -> Path:
        return self.held / f"{ident}.dcm"

    def held_ids(self) -> list[str]:
        """Processed instances still awaiting a delivery, oldest first."""
        return sorted(p.stem for p in self.held.glob("*.dcm"))

    def source_path(self, ident: str) -> Path:
        """The durable received file of `ident`, wherever it is now."""
        incoming = self.incoming_path(ident)
        return incoming if incoming.exists() else self.held_path(ident)

    def store_object(self, ident: str, data: bytes | Path) -> Path:
        """Store the processed form of instance `ident` (atomically, not fsync'd).

        `data` is the encoded file, or a path: a file in :meth:`temp_path` is
        moved, the instance's own received file is hard-linked, anything else
        is copied.
        """
        dst = self.object_path(ident)
        try:
            if isinstance(data, Path) and data.parent == self.tmp:
                os.chmod(data, FILE_MODE)  # written by a library that opened it with the umask's mode
                os.replace(data, dst)
            elif isinstance(data, Path) and data.parent in (self.incoming, self.held):
                tmp = self.temp_path()
                os.link(data, tmp)
                os.replace(tmp, dst)
            else:
                tmp = self.temp_path()
                with create_private(tmp) as handle:
                    if isinstance(data, Path):
                        with open(data, "rb") as source:
                            shutil.copyfileobj(source, handle, 1 << 20)
                    else:
                        handle.write(data)
                os.replace(tmp, dst)
        except OSError as exc:
            raise SpoolError(f"cannot store processed instance {ident}: {exc}") from exc
        return dst

    def finish_received(self, ident: str) -> None:
        """Mark `ident` processed: move its received file to ``held/`` (atomic rename)."""
        source = self.incoming_path(ident)
        if source.exists():
            os.replace(source, self.held_path(ident))
        self.clear_failures(ident)

    # ----------------------------------------------------------------- failures

    def record_failure(self, ident: str, reason: str) -> int:
        """Count one more failed processing attempt of `ident` (durably); return the count."""
        attempts, _ = self.failures_of(ident)
        return self._write_failure(ident, attempts + 1, reason)

    def record_failure_reason(self, ident: str, reason: str) -> int:
        """Write why the last attempt of `ident` failed, an attempt counted before it began; return the count.

        :class:`gateway.worker.Worker` counts each attempt before it begins
        when it processes in the service process (``processes = 0``), where a
        crash leaves nothing to count it afterwards.  If none is recorded (it
        could not be written then), this one is counted now.
        """
        attempts, _ = self.failures_of(ident)
        return self._write_failure(ident, max(1, attempts), reason)

    def _write_failure(self, ident: str, attempts: int, reason: str) -> int:
        record = {"attempts": attempts, "reason": reason, "at": time.time()}
        try:
            atomic_write_bytes(self.failures / f"{ident}.json", json.dumps(record).encode(), self.tmp)
        except OSError as exc:
            raise SpoolError(f"cannot record the failure of instance {ident}: {exc}") from exc
        return attempts

    def failures_of(self, ident: str) -> tuple[int, str | None]:
        """Failed processing attempts of `ident` so far and the last reason."""
        try:
            record = json.loads((self.failures / f"{ident}.json").read_text())
            return int(record["attempts"]), str(record["reason"])
        except FileNotFoundError:
            return 0, None
        except (OSError, ValueError, KeyError, TypeError):
            return 0, None  # cut short by a crash: counting starts again

    def failing(self) -> list[tuple[str, int, str | None]]:
        """Received instances whose processing failed at least once: (id, attempts, last reason)."""
        idents = sorted(p.stem for p in self.failures.glob("*.json"))
        return [(ident, *self.failures_of(ident)) for ident in idents]

    def clear_failures(self, ident: str) -> None:
        (self.failures / f"{ident}.json").unlink(missing_ok=True)

    def uncount_attempt(self, ident: str) -> None:
        """Take back the attempt counted before it began (:meth:`record_failure_reason`): it did not fail."""
        attempts, reason = self.failures_of(ident)
        if attempts <= 1:
            self.clear_failures(ident)
        else:
            self._write_failure(ident, attempts - 1, reason or "")

    # --------------------------------------------------------------------- jobs

    def _job_path(self, state: str, key: str) -> Path:
        return self.jobs / state / f"{key}.json"

    def _job_file(self, state: str, key: str) -> str:
        """:meth:`_job_path` as a string: the forwarders' per-instance path, without pathlib's cost."""
        return f"{self._jobs_dir}/{state}/{key}.json"

    def claim(self, instance: str, destination: str) -> Job | None:
        """Move the job of `instance` for `destination` from pending to in flight; None if it is not pending.

        One rename decides, under the spool's lock: a job that is not pending
        (already sent, dead, or gone) is left as it is.
        """
        key = f"{instance}@{destination}"
        path = self._job_file(INFLIGHT, key)
        with self._lock:
            try:
                os.replace(self._job_file(PENDING, key), path)
            except FileNotFoundError:
                return None
            return self._read(Path(path))

    def _write_job(self, job: Job, *, sync_folder: bool = True) -> None:
        atomic_write_bytes(self._job_path(job.state, job.key), job.to_json(), self.tmp, sync_folder=sync_folder)

    def _move_all(self, jobs: list[Job], state: str, **changes: Any) -> list[Job]:
        """:meth:`move` with `changes` of many jobs (not into done), the state folders fsync'd once per batch.

        Each new manifest is written durably and its folder fsync'd before
        the old manifests are removed, as :meth:`move` does one by one: a
        crash leaves a job in its old state or in both (the most advanced
        is kept), never in neither.  Per job that is one fsync where
        :meth:`move` makes three.
        """
        if state not in (PENDING, INFLIGHT, DEAD):
            raise ValueError(f"cannot move jobs to {state!r} in a batch")
        moved = []
        for start in range(0, len(jobs), _MOVE_BATCH):
            with self._lock:
                batch = [(job, replace(job, state=state, updated_at=time.time(), **changes))
                         for job in jobs[start:start + _MOVE_BATCH]]
                for _, new in batch:
                    self._write_job(new, sync_folder=False)
                fsync_dir(self.jobs / state)
                left = {job.state for job, _ in batch if job.state != state}
                for job, _ in batch:
                    if job.state != state:
                        self._job_path(job.state, job.key).unlink(missing_ok=True)
                for folder in sorted(left):
                    fsync_dir(self.jobs / folder)
            moved.extend(new for _, new in batch)
        return moved

    def find_job(self, instance: str, destination: str) -> Job | None:
        """The job's current manifest, whatever its state.

        Taken under the spool's lock: a job renamed from one state folder to
        another between two reads would otherwise be seen in neither.
        """
        key = f"{instance}@{destination}"
        with self._lock:
            for state in reversed(STATES):
                job = self._read(self._job_path(state, key))
                if job is not None:
                    return job
        return None

    def add_job(self, job: Job) -> bool:
        """Create a job unless one exists already (idempotent on replay)."""
        return bool(self.add_jobs([job]))

    def add_jobs(self, jobs: list[Job]) -> list[Job]:
        """Create the jobs that do not exist yet; return those created.

        Atomic but not fsync'd: jobs lost in a crash are re-created from the
        held instance at the next start.
        """
        created = []
        with self._lock:
            now = time.time()
            for job in jobs:
                if self.find_job(job.instance, job.destination) is not None:
                    continue
                new = replace(job, created_at=now, updated_at=now)
                path = self._job_path(new.state, new.key)
                tmp = self.tmp / f"{new.key}.{uuid.uuid4().hex}.tmp"
                with create_private(tmp) as handle:
                    handle.write(new.to_json())
                os.replace(tmp, path)
                created.append(new)
        return created

    def move(self, job: Job, state: str, **changes: Any) -> Job:
        """Move `job` to `state` with `changes`.

        With changes the new manifest is durable before this returns.  Without
        (pending -> inflight -> done) the manifest is renamed: atomic, not
        fsync'd, see the module docstring.
        """
        if state not in STATES:
            raise ValueError(f"unknown job state {state!r}")
        with self._lock:
            if not changes and job.state != state:
                os.replace(self._job_path(job.state, job.key), self._job_path(state, job.key))
                new = replace(job, state=state)
                if state == DONE:
                    self.collect(job.instance, list(job.destinations) or None)
                return new
            new = replace(job, state=state, updated_at=time.time(), **changes)
            self._write_job(new)
            if job.state != state:
                self._job_path(job.state, job.key).unlink(missing_ok=True)
                fsync_dir(self.jobs / job.state)
            if state == DONE:
                self.collect(job.instance, list(job.destinations) or None)
            return new

    def finish(self, job: Job) -> Job:
        """Move `job` to done, as :meth:`move` does, and leave the deletions to the collector thread.

        Deleting the instance's files once every job is done waits for an
        fsync of ``done/`` (:meth:`collect`); a forwarder would pay it for
        every instance before sending the next one.  The collector takes the
        finished instances as they come and covers each batch with one fsync.
        Held instances whose deletion a crash interrupted are collected at
        the next start (the worker's recovery).
        """
        with self._lock:
            os.replace(self._job_file(job.state, job.key), self._job_file(DONE, job.key))
        with self._finished_cond:
            self._finished.append((job.instance, list(job.destinations) or None))
            if self._collector is None or not self._collector.is_alive():
                self._collector = threading.Thread(target=self._collect_finished, name="spool-collector",
                                                   daemon=True)
                self._collector.start()
            self._finished_cond.notify()
        return replace(job, state=DONE)

    def _collect_finished(self) -> None:
        while True:
            with self._finished_cond:
                while not self._finished:
                    if not self._finished_cond.wait(timeout=60.0):
                        self._collector = None  # idle: a later finish starts a new one
                        return
                batch, self._finished = self._finished, []
            try:
                self.done_sync.sync()  # started after every rename of the batch into done/
            except OSError as exc:  # nothing is deleted: the held copies are collected at the next start
                _log.error("fsync of %s failed, %d delivered instance(s) kept until the next start: %s",
                           self.done_sync.path, len(batch), exc)
                continue
            for instance, destinations in batch:
                try:
                    with self._lock:
                        self.collect(instance, destinations, synced=True)
                except Exception:  # noqa: BLE001 - one failed deletion must not keep the others
                    _log.exception("deleting delivered instance %s failed; retried at the next start", instance)

    def collect(self, instance: str, destinations: list[str] | None = None, *, synced: bool = False) -> None:
        """Delete the object once every job of the instance is done.

        While the received copy still exists the worker may be adding jobs,
        so nothing is deleted then.  `destinations`, when given, names the
        instance's jobs, which spares a scan of the job folders; with the
        configured destinations (:attr:`destination_names`) they name all of
        them.
        `synced`: an fsync of ``done/`` started after the instance's last job
        moved there.
        """
        if os.path.exists(f"{self._incoming_dir}/{instance}.dcm"):
            return
        if destinations is not None:
            destinations = list(self.destination_names.union(destinations))
        for state in (PENDING, INFLIGHT, DEAD):
            if destinations is not None:  # known job names: no directory scan
                if any(os.path.exists(self._job_file(state, f"{instance}@{d}")) for d in destinations):
                    return
            elif any((self.jobs / state).glob(f"{instance}@*.json")):
                return
        held = self.held_path(instance)
        if held.exists():
            if not synced:
                self.done_sync.sync()  # no finished job may come back to life without its source
            if self.keep_after_delivery:  # out of held/: nothing processes or sends it again
                os.replace(held, self.kept / held.name)
            else:
                held.unlink(missing_ok=True)
        self.object_path(instance).unlink(missing_ok=True)

    @staticmethod
    def _read(path: Path) -> Job | None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise SpoolError(f"job manifest {path} is unreadable: {exc}") from exc
        data["state"] = path.parent.name  # the folder is the truth: renames do not rewrite the manifest
        return Job.from_json(data)

    def jobs_in(self, state: str, destination: str | None = None,
                skip: Callable[[str], bool] | None = None) -> Iterator[Job]:
        """Jobs in `state` (optionally of one destination), oldest first, but those whose key `skip` is true of.

        The folder's names are listed and only the manifests of the jobs
        not skipped are read: a forwarder's rescan of a queue of tens of
        thousands, nearly all of them already in its memory, reads a few.
        """
        for name in sorted(self._job_names(state, destination)):
            if skip is not None and skip(name[:-5]):
                continue
            job = self._read(self.jobs / state / name)
            if job is not None:  # moved on meanwhile
                yield job

    def counts(self) -> dict[str, int]:
        """Number of received instances and of jobs per state.

        Counted from the folders' entries: no manifest is read, so the cost
        is one directory listing per state however many jobs are done.
        """
        result = {"received": _count_entries(self.incoming, ".dcm"), "held": _count_entries(self.held, ".dcm")}
        for state in STATES:
            result[state] = self.count_jobs(state)
        return result

    def count_jobs(self, state: str, destination: str | None = None) -> int:
        """Jobs in `state` (optionally of one destination), counted by name without reading them."""
        if destination is None:
            return _count_entries(self.jobs / state)
        return _count_entries(self.jobs / state, f"@{destination}.json")

    def prune_done(self, older_than_seconds: float, now: float | None = None) -> int:
        """Delete the manifests of jobs finished more than `older_than_seconds` ago; return how many.

        A finished job is a record only once its instance was deleted, when
        its last job finished; until then it stays.  When it finished is the manifest's ``st_ctime``
        (a rename into ``done/`` sets it; the content may be older).
        """
        limit = (time.time() if now is None else now) - older_than_seconds
        held = {name[:-4] for name in os.listdir(self.held) if name.endswith(".dcm")}
        # The record of a delivery whose instance is still held (another destination has yet to take it) is
        # what keeps the next start's recovery from delivering it again: kept until the instance goes.
        return _remove_changed_before(self.jobs / DONE, limit, ".json", lambda name: name.split("@", 1)[0] in held)

    def oldest_waiting(self, destination: str) -> float | None:
        """Receive time (epoch seconds) of the oldest instance waiting for `destination`, or None.

        Read from the file names (an instance id starts with its receive time
        in nanoseconds): no manifest is opened.
        """
        oldest: str | None = None
        suffix = f"@{destination}.json"
        for state in (PENDING, INFLIGHT):
            with os.scandir(self.jobs / state) as entries:
                for entry in entries:
                    if entry.name.endswith(suffix) and (oldest is None or entry.name < oldest):
                        oldest = entry.name
        if oldest is None:
            return None
        try:
            return int(oldest.split("-", 1)[0]) / 1e9
        except ValueError:
            return None

    def save_destination_state(self, name: str, state: dict[str, Any]) -> None:
        """Keep what a forwarder knows of its destination (last error, next attempt) for ``status``."""
        tmp = self.temp_path(".json")
        try:  # not fsync'd: a view for the operator, written again at the next change
            with create_private(tmp) as handle:
                handle.write(json.dumps(state).encode())
            os.replace(tmp, self.state / f"{name}.json")
        except OSError:
            tmp.unlink(missing_ok=True)

    def forget_destination_states(self, destination: str | None = None, *, keep: int = 0) -> int:
        """Delete the states the forwarders of an earlier run saved; return how many.

        Each describes a forwarder of the process that wrote it, and no
        forwarder of this one reads it: kept, it would be shown by ``status``
        as long as the destination answers (a forwarder saves its state when
        that changes), a destination failing before a restart or an upgrade
        "failing since" then, and an association dropped from the
        configuration forever.  Called at start, with the spool locked; and
        with `destination` after a reload, once the forwarders it retired have
        ended: its associations from `keep` on (all of a destination removed).
        """
        removed = 0
        for path in self.state.glob("*.json" if destination is None else f"{glob_escape(destination)}.*.json"):
            if destination is not None:
                index = path.name[len(destination) + 1:-5]
                if not index.isdigit() or int(index) < keep:
                    continue  # another destination whose name continues with a dot, or one still running
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    def destination_states(self, destination: str) -> list[dict[str, Any]]:
        """The states saved by the forwarders of `destination` (one per association)."""
        states = []
        for path in sorted(self.state.glob(f"{glob_escape(destination)}.*.json")):
            if not path.name[len(destination) + 1:-5].isdigit():
                continue  # another destination whose name continues with a dot
            try:
                states.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return states
    def make_room(self, wanted_free: int) -> int:
        """Delete copies kept after delivery, oldest first, until `wanted_free` bytes are free; return how many.

        They are expendable (every destination has the instance): when the
        disk fills, they go before a modality is told to wait.
        """
        try:
            with os.scandir(self.kept) as entries:
                kept = sorted((entry.stat().st_ctime, entry.path) for entry in entries if entry.is_file())
        except OSError:
            return 0
        removed = 0
        for _, path in kept:
            try:
                if free_bytes(self.root) >= wanted_free:
                    break
                os.unlink(path)
                removed += 1
            except OSError:
                continue
        return removed

    def prune_kept(self, older_than_seconds: float, now: float | None = None) -> int:
        """Delete copies kept after delivery more than `older_than_seconds` ago (``st_ctime``: the move
        into ``kept/``); return how many."""
        limit = (time.time() if now is None else now) - older_than_seconds
        return _remove_changed_before(self.kept, limit)

    # ------------------------------------------------------------ recovery/ops

    def lock(self) -> None:
        """Take the spool for this process; raise SpoolError if another gateway has it.

        Two services on one spool would deliver and delete each other's work.
        The lock is an advisory ``flock`` on ``spool/lock``, released when the
        process ends, however it ends.
        """
        import fcntl

        handle = os.fdopen(os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, FILE_MODE), "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            raise SpoolError(f"the spool {self.root} is in use by another gateway process") from exc
        self._lock_handle = handle

    def unlock(self) -> None:
        """Release :meth:`lock`."""
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    def recover(self) -> dict[str, int]:
        """Repair the spool after a crash; return what was done.

        Removes partial files, removes processed objects whose instance is
        gone (neither received nor held: a crash between the two deletions
        of :meth:`collect`), resolves jobs present in two states (keeping the
        most advanced) and makes in-flight jobs pending again.
        """
        fixed = {"temp_removed": 0, "duplicates": 0, "requeued": 0, "damaged": 0, "orphans_removed": 0}
        with self._lock:
            for path in self.tmp.iterdir():
                if path.is_file():
                    path.unlink(missing_ok=True)
                    fixed["temp_removed"] += 1
            for path in self.incoming.glob(".*.tmp"):
                path.unlink(missing_ok=True)
            for path in self.held.glob(".*.tmp"):
                path.unlink(missing_ok=True)
            for path in self.objects.iterdir():
                ident = path.name[:-4] if path.name.endswith(".dcm") else None
                if ident is None or path.name.startswith("."):
                    if path.is_file():  # a partial write of store_object
                        path.unlink(missing_ok=True)
                        fixed["temp_removed"] += 1
                    continue
                if not self.incoming_path(ident).exists() and not self.held_path(ident).exists():
                    path.unlink(missing_ok=True)
                    fixed["orphans_removed"] += 1
            # A finished job is read again only while its instance is (a record of a delivery, kept for
            # keep_done_hours, is never read): a week of them would otherwise be read at every start.
            waiting = {name[:-4] for folder in (self.incoming, self.held) for name in os.listdir(folder)
                       if name.endswith(".dcm")}
            where: dict[str, list[str]] = {}
            for state in STATES:
                for name in self._job_names(state, None):
                    if name.startswith("."):
                        continue
                    path = self.jobs / state / name
                    if state != DONE or name.split("@", 1)[0] in waiting:
                        try:
                            self._read(path)
                        except (SpoolError, TypeError):  # cut short by the crash: re-created from held/
                            path.unlink(missing_ok=True)
                            fixed["damaged"] += 1
                            continue
                    where.setdefault(name[:-5], []).append(state)
            for key, states in where.items():
                best = max(states, key=_RANK.__getitem__)
                for state in states:
                    if state != best:
                        self._job_path(state, key).unlink(missing_ok=True)
                        fixed["duplicates"] += 1
                if best == INFLIGHT:
                    try:
                        job = self._read(self._job_path(INFLIGHT, key))
                        if job is not None:
                            self.move(job, PENDING)
                            fixed["requeued"] += 1
                    except (OSError, SpoolError):
                        pass  # gone meanwhile: nothing to requeue
            for state in STATES:
                fsync_dir(self.jobs / state)
        return fixed

    def requeue_dead(self, destination: str | None = None, *,
                     configured: Collection[str] | None = None) -> list[Job]:
        """Make dead jobs pending again with a fresh attempt count.

        With `configured`, the dead letters of other destinations (removed from the configuration) stay: no
        forwarder would take them.
        """
        chosen = [job for job in self.jobs_in(DEAD, destination)
                  if configured is None or job.destination in configured or job.destination == UNROUTED]
        rerouted = [self._reroute(job) for job in chosen if job.destination == UNROUTED]
        return rerouted + self._move_all([job for job in chosen if job.destination != UNROUTED], PENDING,
                                         attempts=0, next_retry_at=0.0, reason=None)

    def destination_counts(self, state: str) -> Counter[str]:
        """Jobs in `state` per destination, counted by the job files' names (no manifest is read)."""
        return Counter(_destination_of(name) for name in self._job_names(state, None))

    def job_destinations(self) -> set[str]:
        """The destinations that have a job still waiting, in flight or dead."""
        names = {name for state in (PENDING, INFLIGHT, DEAD) for name in self.destination_counts(state)}
        names.discard(UNROUTED)
        return names

    def retire_destinations(self, configured: Collection[str]) -> list[Job]:
        """Make the waiting jobs of destinations not in `configured` dead letters; return them, dead.

        A destination removed from the configuration has no forwarder: its queue would wait forever,
        unseen.  As dead letters they are listed and counted, their instances are kept, and once the
        destination is configured again ``dicom-gateway retry`` sends them.
        """
        queues: dict[str, list[Job]] = {}
        for name in sorted(self._job_names(PENDING, None)):  # by name: the other queues' manifests stay unread
            destination = _destination_of(name)
            if destination in configured or destination == UNROUTED:
                continue
            job = self._read(self.jobs / PENDING / name)
            if job is not None:  # None: taken meanwhile
                queues.setdefault(destination, []).append(job)
        retired = []
        for destination, jobs in queues.items():
            reason = (f"destination {destination!r} is no longer in the configuration; "
                      "configure it again and retry to send")
            retired += self._move_all(jobs, DEAD, reason=reason)
        return retired

    def _reroute(self, job: Job) -> Job:
        """Send an unrouted instance back through the worker (routes may have changed)."""
        with self._lock:
            held = self.held_path(job.instance)
            if held.exists():  # same id: it still carries the calling AE title
                os.replace(held, self.incoming_path(job.instance))
            self.clear_failures(job.instance)
            self.object_path(job.instance).unlink(missing_ok=True)
            self._job_path(DEAD, job.key).unlink(missing_ok=True)
            fsync_dir(self.jobs / DEAD)
            return replace(job, state=PENDING)

    # ------------------------------------------------------------ reading, paged

    def requeue(self, job: Job) -> Job:
        """Make one dead job pending again with a fresh attempt count (an unrouted one goes back to routing)."""
        if job.destination == UNROUTED:
            return self._reroute(job)
        return self.move(job, PENDING, attempts=0, next_retry_at=0.0, reason=None)

    def _job_names(self, state: str, destination: str | None) -> list[str]:
        suffix = f"@{destination}.json" if destination else ".json"
        with os.scandir(self.jobs / state) as entries:
            return [e.name for e in entries if e.name.endswith(suffix)]

    def jobs_page(self, state: str, offset: int, limit: int, destination: str | None = None) -> list[Job]:
        """Jobs in `state`, oldest first, from `offset`, at most `limit`.

        Only the names of the folder are listed; no more than `limit`
        manifests are read however many jobs there are.
        """
        names = sorted(self._job_names(state, destination))[max(0, offset):max(0, offset) + max(0, limit)]
        jobs = []
        for name in names:
            job = self._read(self.jobs / state / name)
            if job is not None:  # moved on meanwhile
                jobs.append(job)
        return jobs

    def oldest_job(self, state: str, destination: str | None = None) -> Job | None:
        """The oldest job in `state` (ids sort by receive time), reading one manifest."""
        for name in sorted(self._job_names(state, destination)):
            job = self._read(self.jobs / state / name)
            if job is not None:
                return job
        return None
