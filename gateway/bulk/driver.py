"""The driver: plans the run into the manifest, feeds the workers, records what comes back.

Three engines run the same per-file task, one at a time per worker process
(the codecs are CPU-bound Python/numba, and processes keep the GIL out of
the way):

* ``workers=0``: this process, a plain loop;
* no scheduler address: a pool of local worker processes, one per core by
  default (:class:`concurrent.futures.ProcessPoolExecutor`; measured faster
  than a local Dask cluster on one machine: no scheduler round trip per file,
  no cluster start);
* a scheduler address: that Dask cluster, whose workers must see ``IN`` and
  ``OUT`` at the same paths; ``scheduler="local"`` starts a ``LocalCluster``
  on this machine instead.

Submission is bounded: at most ``in_flight`` futures exist at a time (each
finished one is handed back and the next file submitted), so an archive of
millions of files never sits in memory, neither here nor on the scheduler.  A
task lost with its worker is run again (the task is idempotent): by Dask
(after three such losses of one file it is recorded as failed), or by the
pool, which is started again when one of its processes dies, every file it
had in flight then tried again alone in a pool of one process, where a death
is the file's own (after three, it is recorded as failed); a later run tries
a failed file again.
"""

from __future__ import annotations

import collections
import itertools
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.bulk.manifest import RESULT_COLUMNS, Manifest, printable
from gateway.bulk.plan import LAYOUTS, LOCK_NAME, MANIFEST_NAME, folder_identity, walk
from gateway.bulk.report import Report, build_report, human_bytes
from gateway.bulk.sample import draw_by_size, project
from gateway.bulk.task import DONE, compress_file, remove_debris
from gateway.config import PRIVATE_VERSION, private_options
from gateway.errors import GatewayError
from gateway.logs import one_line
from gateway.record import pairs_text

__all__ = ["BulkOptions", "Estimate", "OutputError", "SchedulerError", "run", "estimate"]


class OutputError(GatewayError):
    """``OUT`` cannot be written (no permission, read-only, full, ...), is ``IN`` or holds it (under another
    name: a bind mount, a second mount of a share), or another run is writing into it."""


class SchedulerError(GatewayError):
    """The Dask scheduler named by ``--scheduler`` cannot be reached."""


SCHEDULER_CONNECT_SECONDS = 30.0
"""How long a run tries to reach its Dask scheduler before it gives up (:class:`SchedulerError`)."""


LOCAL_SCHEDULER = "local"
"""The scheduler "address" that starts a Dask ``LocalCluster`` on this machine."""

_ATTEMPTS = 3
"""Times a file is tried when its worker process dies under it (Dask's ``allowed-failures`` default too)."""


def local_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or ``taskset`` narrows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class BulkOptions:
    """One bulk run: what to read, where to write, how and where to compute."""

    source: Path
    output: Path
    target: str  # transfer syntax UID
    verify: bool = True
    layout: str = "relative"
    native: bool = False  # the target is a native syntax: outputs may be larger than inputs
    scheduler: str | None = None  # Dask scheduler address, or "local"; None: a local process pool
    workers: int | None = None  # local worker processes; None: one per core; 0: in this process only
    in_flight: int | None = None  # futures at a time; None: four per worker thread
    sample: int = 50  # files a dry run processes
    private_version: int = PRIVATE_VERSION  # version of our private syntax written (1 for older readers)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.workers == 0 and self.scheduler is not None:
            raise ValueError("workers=0 runs in this process; it takes no scheduler")

    @property
    def encoding(self) -> str | None:
        """The target's encoder options as the manifest records them (``version=2`` for our private
        syntax); None for a target that takes none."""
        options = private_options(self.private_version).get(self.target, {})
        return pairs_text(sorted(options.items()))


Note = Callable[[str], None]
Call = tuple[tuple, dict]


def _stderr(text: str) -> None:
    print(one_line(text), file=sys.stderr, flush=True)  # reasons quote the files read


def _lost(call: Call, exc: BaseException) -> dict[str, Any]:
    return {"rel": call[0][2], "outcome": "failed", "reason": f"{type(exc).__name__}: {exc}"}


class _Engine:
    """Runs :func:`compress_file` calls in this process, on a local process pool or on Dask.

    :meth:`map` yields the results as they finish; :attr:`threads` is how many
    run at once (worker processes, or the Dask cluster's worker threads).
    """

    def __init__(self, options: BulkOptions, note: Note, start: bool = True) -> None:
        self.options = options
        self.note = note
        self.client: Any = None
        self.cluster: Any = None
        self.pool: Any = None
        self.alone: Any = None  # the pool of one process where the files of a broken pool are tried alone
        self.dashboard: str | None = None
        self.threads = 1
        self.started = False
        if start:
            self.start()

    def describe(self) -> str:
        """What runs the files, for the manifest and the report: ``2 local processes``, ``Dask ...``."""
        if self.client is not None:
            return (f"Dask {self.client.scheduler.address}: {len(self.client.nthreads())} worker(s), "
                    f"{self.threads} thread(s)")
        if self.pool is not None:
            return f"{self.threads} local process(es)"
        return "this process"

    def start(self) -> None:
        options, note = self.options, self.note
        self.started = True
        if options.scheduler is None:
            workers = local_cores() if options.workers is None else options.workers
            if workers > 0:
                self.threads = workers
                self.pool = self._new_pool()
                note(f"{workers} local worker process(es)")
            return
        from dask.distributed import Client, LocalCluster

        if options.scheduler != LOCAL_SCHEDULER:
            try:
                self.client = Client(options.scheduler, timeout=f"{SCHEDULER_CONNECT_SECONDS:g}s")
            except (OSError, ValueError, TypeError) as exc:  # TimeoutError is an OSError; ValueError: an address
                raise SchedulerError(f"cannot reach the Dask scheduler {options.scheduler}: {exc}") from exc
        else:
            self.cluster = LocalCluster(n_workers=options.workers or local_cores(), threads_per_worker=1,
                                        processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0")
            self.client = Client(self.cluster)
        self.threads = max(1, sum(self.client.nthreads().values()))
        services = self.client.scheduler_info().get("services", {})
        if "dashboard" in services:
            self.dashboard = self.client.dashboard_link
            note(f"Dask dashboard: {self.dashboard}")
        note(f"Dask scheduler {self.client.scheduler.address}: {len(self.client.nthreads())} worker(s), "
             f"{self.threads} thread(s)")

    def _new_pool(self, processes: int | None = None) -> Any:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from gateway.bulk.preload import SYNTAXES_ENV, pool_worker

        # forkserver: workers are forked from a clean server process, never from this one with
        # its threads and open manifest; the server loads the task's modules and kernels once for
        # all of them (it starts with the first pool of this process and serves the later ones)
        context = multiprocessing.get_context("forkserver")
        if SYNTAXES_ENV not in os.environ:
            os.environ[SYNTAXES_ENV] = self.options.target
        context.set_forkserver_preload(["gateway.bulk.preload"])
        return ProcessPoolExecutor(max_workers=processes or self.threads, mp_context=context,
                                   initializer=pool_worker)

    def close(self) -> None:
        for pool in (self.pool, self.alone):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def map(self, calls: Iterator[Call]) -> Iterator[dict[str, Any]]:
        """Results of ``compress_file(*args, **kwargs)`` for each call, in completion order."""
        calls = iter(calls)
        first = next(calls, None)
        if first is None:
            return
        if not self.started:
            self.start()
        calls = itertools.chain([first], calls)
        limit = self.options.in_flight or max(4, 4 * self.threads)
        if self.client is not None:
            yield from self._map_dask(calls, limit)
        elif self.pool is not None:
            yield from self._map_pool(calls, limit)
        else:
            for args, kwargs in calls:
                yield compress_file(*args, **kwargs)

    def _map_pool(self, calls: Iterator[Call], limit: int) -> Iterator[dict[str, Any]]:
        """The pool: a worker process that dies breaks it, and every file in flight in it fails at once,
        though one at most is the cause.  None of them is blamed: the pool is started again, and each of
        those files is tried again alone, one at a time in a pool of one process beside it, where a death
        is the file's own; after :data:`_ATTEMPTS` of those it is recorded as failed."""
        from concurrent.futures import FIRST_COMPLETED, Future, wait
        from concurrent.futures.process import BrokenProcessPool

        pending: dict[Future, Call] = {}  # in the shared pool
        waiting: collections.deque[Call] = collections.deque()  # refused by a broken pool: submitted again
        suspects: collections.deque[tuple[Call, int]] = collections.deque()  # to try alone, deaths alone so far
        alone: tuple[Future, Call, int] | None = None
        exhausted = False
        while True:
            broken = False
            while len(pending) < limit and len(suspects) < limit and not broken:
                if waiting:
                    call = waiting.popleft()
                elif exhausted or (call := next(calls, None)) is None:  # type: ignore[assignment]
                    exhausted = True
                    break
                try:
                    pending[self.pool.submit(compress_file, *call[0], **call[1])] = call
                except BrokenProcessPool:
                    waiting.appendleft(call)
                    broken = True
            if alone is None and suspects:
                call, deaths = suspects.popleft()
                for fresh in (False, True):
                    if self.alone is None:
                        self.alone = self._new_pool(1)
                    try:
                        alone = (self.alone.submit(compress_file, *call[0], **call[1]), call, deaths)
                        break
                    except BrokenProcessPool:  # its process died idle (killed from outside): no one's fault
                        self.alone.shutdown(wait=True)
                        self.alone = None
                        if fresh:
                            raise
            if not pending and alone is None and not waiting and not suspects:
                return
            futures = list(pending) + ([alone[0]] if alone is not None else [])
            done = wait(futures, return_when=FIRST_COMPLETED)[0] if not broken else set()
            results = []
            if alone is not None and alone[0] in done:
                future, call, deaths = alone
                alone = None
                exc = future.exception()
                if exc is None:
                    results.append(future.result())
                elif isinstance(exc, BrokenProcessPool):  # its own death: nothing else ran beside it
                    self.alone.shutdown(wait=True)
                    self.alone = None
                    if deaths + 1 < _ATTEMPTS:
                        suspects.appendleft((call, deaths + 1))
                    else:
                        results.append({"rel": call[0][2], "outcome": "failed",
                                        "reason": f"its worker process died processing it, alone, {_ATTEMPTS} "
                                                  "times (a crash in a decoder, or the process killed: out of "
                                                  "memory?); a later run tries it again"})
                else:
                    results.append(_lost(call, exc))
            shared = [f for f in done if f in pending]
            if broken or any(isinstance(f.exception(), BrokenProcessPool) for f in shared):
                shared = list(wait(pending)[0])  # every other future of a broken pool fails at once
                broken = True
            blamed = 0
            for future in shared:
                call = pending.pop(future)
                exc = future.exception()
                if exc is None:
                    results.append(future.result())
                elif isinstance(exc, BrokenProcessPool):
                    suspects.append((call, 0))
                    blamed += 1
                else:
                    results.append(_lost(call, exc))
            if broken:
                self.pool.shutdown(wait=True)
                self.pool = self._new_pool()
                self.note(f"a worker process died; the {blamed} file(s) in flight beside it are tried again, "
                          "each alone")
            yield from results

    def _map_dask(self, calls: Iterator[Call], limit: int) -> Iterator[dict[str, Any]]:
        from dask.distributed import as_completed

        pending = as_completed()
        rels: dict[Any, Call] = {}

        def finished(future: Any) -> dict[str, Any]:
            call = rels.pop(future)
            try:
                return future.result()
            except Exception as exc:  # noqa: BLE001 - a lost worker (KilledWorker), a cancelled task, ...
                return _lost(call, exc)
            finally:
                future.release()

        for call in calls:
            while pending.count() >= limit:
                yield finished(next(pending))
            future = self.client.submit(compress_file, *call[0], pure=False, **call[1])
            rels[future] = call
            pending.add(future)
        for future in pending:
            yield finished(future)


def _progress_bar(total_bytes: int, done_bytes: int, files: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total_bytes, initial=done_bytes, unit="B", unit_scale=True, unit_divisor=1000,
                file=sys.stderr, dynamic_ncols=True, disable=not enabled,
                desc=f"compress {files} files", smoothing=0.05)


def run(options: BulkOptions, *, progress: bool | None = None, note: Note = _stderr, verbose: bool = False,
        on_result: Callable[[dict[str, Any]], None] | None = None) -> Report:
    """Recompress every file of ``options.source`` into ``options.output``; the closing report.

    Resumes what the manifest in the output folder says is not done.  `note`
    receives the lines worth printing (passed-through and failed files, the
    dashboard link); `on_result` sees every task result as it arrives.
    """
    started = time.perf_counter()
    _check_apart(Path(options.source), Path(options.output))  # before anything is written into OUT
    lock = _lock_output(Path(options.output))  # one run at a time writes into OUT
    try:
        return _run(options, started, progress, note, verbose, on_result)
    finally:
        lock.close()


def _run(options: BulkOptions, started: float, progress: bool | None, note: Note, verbose: bool,
         on_result: Callable[[dict[str, Any]], None] | None) -> Report:
    import sqlite3

    output = Path(options.output)
    try:
        manifest = Manifest(output / MANIFEST_NAME)
    except (OSError, sqlite3.Error) as exc:
        raise OutputError(f"cannot write {output}: {exc}") from exc
    try:
        return _run_recorded(options, manifest, started, progress, note, verbose, on_result)
    except sqlite3.Error as exc:  # the manifest cannot be written any more: a full disk, a lost mount
        raise OutputError(f"cannot write {output}: {exc}; run the same command again to resume") from exc
    finally:
        try:
            manifest.close()
        except sqlite3.Error as exc:
            raise OutputError(f"cannot write {output}: {exc}; run the same command again to resume") from exc


def _run_recorded(options: BulkOptions, manifest: Manifest, started: float, progress: bool | None, note: Note,
                  verbose: bool, on_result: Callable[[dict[str, Any]], None] | None) -> Report:
    source, output = Path(options.source), Path(options.output)
    manifest.start_run(options.target, options.layout, options.verify, options.scheduler, options.encoding)
    removed = remove_debris(output, manifest.is_output)
    if removed:
        note(f"removed {removed} partial file(s) of an interrupted run")
    files, total = manifest.plan(walk(source, output))  # OUT inside IN is left out
    done_files, done_bytes = manifest.rows("COUNT(*), COALESCE(SUM(size), 0)",
                                           "outcome IN ('recompressed', 'passed', 'skipped')")[0]
    show = sys.stderr.isatty() if progress is None else progress
    engine = _Engine(options, note, start=False)  # started by the first file to do: a finished run needs no cluster
    try:

        def calls() -> Iterator[tuple[tuple, dict]]:
            for rel, _size, outcome, out_rel, out_size in manifest.planned():
                if outcome in DONE and _output_intact(output, out_rel, out_size):
                    continue
                # a file already at the output path is replaced only when it is one this manifest recorded
                yield ((str(source), str(output), rel, options.target),
                       {"verify": options.verify, "layout": options.layout, "native": options.native,
                        "private_version": options.private_version, "replace": out_rel is not None,
                        "recorded_output": out_rel})

        saved, count = 0, done_files
        with _progress_bar(total, done_bytes, files, show) as bar:
            bar.set_postfix_str(f"{done_files} done earlier", refresh=False)
            for result in engine.map(calls()):
                if result.get("no_space"):  # left pending: the next run does it
                    raise OutputError(f"cannot write {output}: {result['reason']}; free space and run the "
                                      "same command again to resume")
                manifest.record(_complete(result), options.verify)
                count += 1
                size = result.get("size") or 0
                if result["outcome"] in ("recompressed", "passed"):
                    saved += size - (result.get("output_size") or size)
                _announce(result, note, verbose)
                if on_result is not None:
                    on_result(result)
                bar.update(size)
                bar.set_postfix_str(f"{count}/{files} files, saved {human_bytes(saved)}", refresh=False)
    finally:
        if engine.started:
            manifest.set_workers(engine.describe())
        engine.close()
    manifest.finish_run()
    remove_debris(output, manifest.is_output)  # what a worker killed mid-write left
    return build_report(manifest, time.perf_counter() - started)


def _check_apart(source: Path, output: Path) -> None:
    """:class:`OutputError` when `output` is `source` or a folder `source` lies in, under whatever name.

    The command line compares the paths; this compares the folders
    themselves (device and inode), which a bind mount or a second mount of
    the same share cannot hide: writing there would replace the inputs.
    """
    out = folder_identity(output)
    if out is None:
        return  # not there yet: it holds nothing
    folder = os.path.realpath(source)
    while True:
        if folder_identity(folder) == out:
            relation = "is" if folder == os.path.realpath(source) else "contains"
            raise OutputError(f"the output folder {output} {relation} the input folder {source} (under another "
                              "name); name one outside it")
        parent = os.path.dirname(folder)
        if parent == folder:
            return
        folder = parent


def _lock_output(output: Path) -> Any:
    """Create `output` (0700) and take its lock file; :class:`OutputError` if it cannot, or another run has it.

    Two runs into one folder would delete each other's temporary files.  The
    lock is an advisory ``flock`` on ``OUT/.compress-manifest.sqlite-lock``, released when the
    run ends, however it ends.
    """
    import fcntl

    from gateway.spool import FILE_MODE, make_dirs

    try:
        make_dirs(output)
        handle = os.fdopen(os.open(output / LOCK_NAME, os.O_RDWR | os.O_CREAT, FILE_MODE), "r+b")
    except OSError as exc:
        raise OutputError(f"cannot write {output}: {exc}") from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise OutputError(f"another compress is writing into {output} (it holds {output / LOCK_NAME}); "
                          "let it finish, or name another output folder") from exc
    return handle


def _complete(result: dict[str, Any]) -> dict[str, Any]:
    """A result with every manifest column (a task Dask gave up on carries only rel, outcome, reason)."""
    return {**{column: None for column in RESULT_COLUMNS}, **result}


def _output_intact(output: Path, out_rel: str | None, out_size: int | None) -> bool:
    if out_rel is None:
        return True  # skipped: nothing was written
    try:
        return os.stat(output / out_rel).st_size == out_size
    except OSError:
        return False


def _announce(result: dict[str, Any], note: Note, verbose: bool) -> None:
    outcome, rel = result["outcome"], printable(result["rel"])
    if outcome == "failed":
        note(f"FAILED  {rel}: {result['reason']}")
    elif outcome == "passed":
        note(f"kept    {rel} ({result['reason']})")
    elif outcome == "skipped":
        note(f"skipped {rel}: {result['reason']}")
    elif verbose:
        note(f"ok      {rel} -> {printable(result['output'])} {result['size']} -> {result['output_size']} bytes")


# ------------------------------------------------------------------ dry run


@dataclass(frozen=True)
class Estimate:
    """What a dry run found: the input's size and the output projected from a sample drawn by size.

    Only what a run writes counts: the DICOM files recompressed or copied.  A
    file skipped (not DICOM) or failed is walked over and written nowhere,
    so its bytes are neither output nor saved.  The sample and the interval
    are those of :mod:`gateway.bulk.sample`: `draws` files drawn with a
    probability proportional to their size, `low` .. `high` an interval that
    holds the output of a real run of the whole input with 90% confidence.
    When the input has no more files than the sample, every file is
    processed (`census`) and the projection is exact.
    """

    files: int
    bytes_in: int
    sampled: int  # files processed (distinct)
    draws: int  # draws by size (a file drawn twice counts twice)
    projected_out: float  # bytes a run writes
    projected_written: float  # bytes of the input that a run writes (recompressed or copied)
    low: float  # the 90% interval of projected_out
    high: float
    core_seconds: float  # projected compute for the whole input, one core
    outcomes: dict[str, int]  # outcome -> files processed
    census: bool = False

    def lines(self) -> list[str]:
        written = self.projected_written
        saved = written - self.projected_out
        share = saved / written if written else 0.0
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(self.outcomes.items()))
        if self.census:
            how = f"processed all of them ({kinds}); the figures are exact"
            interval = ""
        else:
            how = (f"sampled {self.draws} draw(s) by size, {self.sampled} distinct file(s) ({kinds}); "
                   f"a file's chance of being drawn is its share of the bytes")
            interval = (f" (90% interval {human_bytes(self.low)} .. {human_bytes(self.high)}: the output of a "
                        "real run lies in it with 90% confidence)")
        return [f"dry run: {self.files} file(s), {human_bytes(self.bytes_in)}; {how}",
                f"estimated output {human_bytes(self.projected_out)}{interval} from {human_bytes(written)} of "
                f"DICOM input, saving {human_bytes(saved)} ({share:.0%})",
                f"estimated compute: {self.core_seconds / 3600:.2f} core-hour(s)"]


def estimate(options: BulkOptions, *, note: Note = _stderr, seed: int | None = 0) -> Estimate:
    """Process a sample of the input drawn by size, without writing anything; project the output.

    `seed` makes the draws repeatable (the same input, the same draws; None: fresh ones each time)."""
    source = Path(options.source)
    rng = random.Random(seed)
    draws = draw_by_size(walk(source, Path(options.output)), options.sample, rng)
    distinct = list(dict.fromkeys(item.rel for item in draws.drawn))
    engine = _Engine(options, note, start=False)  # started by the first file: an empty input needs no workers
    try:
        results = {r["rel"]: r for r in engine.map(
            ((str(source), str(options.output), rel, options.target),
             {"verify": options.verify, "layout": options.layout, "native": options.native,
              "private_version": options.private_version, "write": False}) for rel in distinct)}
    finally:
        engine.close()
    outcomes: dict[str, int] = {}
    for r in results.values():
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1

    def written(r: dict[str, Any]) -> bool:  # skipped and failed ones write nothing
        return r["outcome"] in ("recompressed", "passed")

    def output(r: dict[str, Any]) -> int:
        return (r.get("output_size") or r.get("size") or 0) if written(r) else 0

    seconds = sum(r.get("seconds") or 0.0 for r in results.values())
    if draws.census:  # the whole input was processed: nothing is uncertain
        out = float(sum(output(r) for r in results.values()))
        bytes_written = float(sum(r.get("size") or 0 for r in results.values() if written(r)))
        return Estimate(draws.files, draws.total, len(results), len(results), out, bytes_written, out, out,
                        seconds, outcomes, census=True)
    # each draw's ratios are per byte of the file as walked (its chance of being drawn came from that size)
    sizes = {item.rel: item.size for item in draws.drawn}
    chosen = [results[item.rel] for item in draws.drawn]
    out, low, high = project([output(r) / sizes[r["rel"]] for r in chosen], draws.total, bounded=not options.native)
    bytes_written = project([float(written(r)) for r in chosen], draws.total)[0]
    core = project([(r.get("seconds") or 0.0) / sizes[r["rel"]] for r in chosen], draws.total, bounded=False)[0]
    return Estimate(draws.files, draws.total, len(results), len(chosen), out, bytes_written, low, high, core,
                    outcomes)
