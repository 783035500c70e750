"""The ``dicom-gateway`` command line.

``serve``, ``check-config``, ``status`` and ``retry`` work on a configuration
file; ``codecs``, ``compress`` and ``verify`` work offline.  Exit status (see
:data:`EXIT_CODES`): 0 when everything was done (``verify``: the pixels are
identical), 1 when some of the work failed (``compress``: some files failed;
``verify``: the pixels differ), 2 for bad usage, a bad argument, an invalid
configuration, an output folder ``compress`` cannot write, or (``verify``) a
file that cannot be read or decoded; 130 when Ctrl-C stopped the command.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.errors import InvalidDicomError

from gateway.config import PRIVATE_VERSION, Config
from gateway.errors import ConfigError, GatewayError

__all__ = ["main", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a process stopped by Ctrl-C
EXIT_CODES = """exit status:
    0  everything done (verify: identical pixel data)
    1  some of the work failed (compress: some files failed; verify: pixel data
       differ; audit: no such instance on record)
    2  bad usage or argument, invalid configuration, an output folder compress
       cannot write, (verify) a file that cannot be read or decoded, or (audit)
       a spool with no proof record yet
  130  stopped by Ctrl-C (a folder compress: run it again to resume; serve
       stops cleanly on SIGINT or SIGTERM and exits 0, or 1 if a thread it
       needs has stopped)"""

STATUS_DEAD_LETTERS = 20
"""Dead letters ``status`` lists without ``--all`` (the oldest)."""

COMPILING = "compiling the codec kernels for this kind of image (first use only: cached for later runs)..."


class UsageError(Exception):
    """A bad argument found before any work was done (exit status 2)."""


def _load(path: str):
    from gateway.config import load_config

    return load_config(path)


def _cmd_check_config(args: argparse.Namespace) -> int:
    if (args.config is None) == (args.config_option is None):
        raise UsageError("check-config takes one configuration file: check-config F, or check-config --config F")
    config = _load(args.config or args.config_option)
    s = config.server
    print(f"ok: {config.source}")
    print(f"  listen  {s.ae_title}@{s.host}:{s.port}"
          + (f" (callers: {', '.join(s.allowed_callers)})" if s.allowed_callers else " (any caller)"))
    for placed in s.caller_addresses:
        print(f"  caller  {placed.ae_title} only from {', '.join(placed.networks)}")
    if s.tls is None:
        print("  tls     off (plain TCP)")
    else:
        clients = ("client certificate required" if s.tls.require_client_certificate
                   else "client certificate optional")
        chain = f", chained to {s.tls.ca_certificates}" if s.tls.ca_certificates else ""
        bound = "".join(f"; {c.ae_title} only with {', '.join(f'{k}={v}' for k, v in c.certificate_subject)}"
                        for c in s.caller_certificates)
        print(f"  tls     on: {s.tls.certificate} ({clients}{chain}){bound}")
    print(f"  limits  {s.max_associations} associations, {s.max_connections} connections "
          f"({s.max_connections_per_address} per address), PDU {s.max_pdu} bytes, "
          f"request {s.association_request_seconds:g} s, idle {s.idle_seconds:g} s")
    print(f"  spool   {config.spool.directory}")
    overrides = ", ".join(f"{m}={u}" for m, u in config.compression.modality.items())
    print(f"  target  {config.compression.transfer_syntax}" + (f"; {overrides}" if overrides else "")
          + f"; verify={'on' if config.compression.verify else 'off'}"
          + f"; private syntax version {config.compression.private_version}")
    for d in config.destinations:
        where = {"dicom": f"{d.ae_title}@{d.host}:{d.port}" + (" over TLS" if d.tls else ""),
                 "dicomweb": d.url}.get(d.kind, str(d.path))
        print(f"  dest    {d.name} ({d.kind}) {where}")
    if config.web is not None:
        w = config.web
        print(f"  web     {'https' if w.https else 'http'}://{w.host}:{w.port}"
              + (" (token required)" if w.token_file is not None else " (no token: loopback only)"))
    for i, r in enumerate(config.routes):
        filters = "; ".join(f"{k}={','.join(v)}" for k, v in
                            (("calling_ae", r.calling_ae), ("modality", r.modality), ("sop_class", r.sop_class)) if v)
        print(f"  route   {i}: {filters or 'everything'} -> {', '.join(r.destinations)}")
    _print_certificates(config)
    return 0


def _print_certificates(config: Config) -> None:
    """Each certificate of the TLS files the configuration names, when it expires, and whether it is valid yet."""
    from datetime import datetime, timezone

    from gateway.net.certificates import dates

    def utc(epoch: float) -> str:
        return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    now = time.time()
    for cert in dates(config):
        days, state = cert.days_left(now), cert.state(now)
        if cert.not_yet_valid(now):  # its days left say nothing of it: peers refuse it now
            said = f"NOT YET VALID: peers refuse it until then (valid from {utc(cert.not_before)})"
        else:
            said = {"expired": "EXPIRED: peers refuse it", "expiring": f"in {days:.0f} day(s): renew it soon",
                    "valid": f"in {days:.0f} day(s)"}[state]
        print(f"  cert    {cert.use}: {cert.subject} expires {utc(cert.not_after)}, {said}")


def _cmd_serve(args: argparse.Namespace) -> int:
    from gateway.logs import get_logger, setup_logging
    from gateway.notify import notify, reloading
    from gateway.service import Gateway

    config = _load(args.config)
    try:
        setup_logging(config.logging.level, config.logging.file, config.logging.max_bytes, config.logging.backups)
    except OSError as exc:  # checked when loaded, but the filesystem may say otherwise (read-only, /proc)
        raise ConfigError("logging.file", f"cannot open {config.logging.file}: {exc}") from exc
    gateway = Gateway(config)
    done = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        done.set()

    reload_requested = threading.Event()
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, lambda signum, frame: reload_requested.set())
    gateway.start()
    listening = f"listening on {config.server.host}:{gateway.port} as {config.server.ae_title}"
    print(f"dicom-gateway {listening}", file=sys.stderr, flush=True)
    notify("READY=1", f"STATUS={listening}", f"MAINPID={os.getpid()}")
    while not done.wait(0.5):
        stalled = gateway.stalled()
        if stalled is not None:  # only a restart mends it: stop cleanly, and let the supervisor start it again
            get_logger("service").error("stopping: %s; the gateway must be started again (exit status 1)", stalled)
            notify("STOPPING=1", f"STATUS=stopping: {stalled}")
            gateway.stop()
            return 1
        if reload_requested.is_set():
            reload_requested.clear()
            reloading("reloading the configuration")
            try:
                refused = gateway.reload()  # logs what it did, or why it refused
            except Exception as exc:  # noqa: BLE001 - a reload that fails must not stop the gateway
                get_logger("service").exception("configuration not reloaded, the running one stays")
                refused = f"unexpected {type(exc).__name__}"
            status = f"{listening}; configuration not reloaded: {refused}" if refused else listening
            notify("READY=1", f"STATUS={status}")
    notify("STOPPING=1", "STATUS=stopping: finishing the instances at hand")
    gateway.stop()
    return 0


_CSV_LIST_FIELDS = ("verified_by", "deliveries", "commitments", "reencoded")


def _cmd_audit(args: argparse.Namespace) -> int:
    import csv
    import itertools
    import json
    import textwrap
    from datetime import datetime

    from gateway.record import RECORD_FILE, ProofRecord

    config = _load(args.config)
    path = config.spool.directory / RECORD_FILE
    if not path.exists():
        print(f"error: no proof record at {path} (nothing received yet)", file=sys.stderr)
        return 2
    record = ProofRecord(path)
    entries: Iterator[dict]
    if args.sop_instance_uid:
        found = record.find(args.sop_instance_uid)
        if not found:
            print(f"no instance {args.sop_instance_uid} in the proof record", file=sys.stderr)
            return 1
        entries = iter(found)
    else:
        try:
            start = datetime.fromisoformat(args.since).timestamp() if args.since else 0.0
        except ValueError:
            print(f"error: --since: not an ISO 8601 time: {args.since!r}", file=sys.stderr)
            return 2
        entries = record.since(start)  # written as read: a period may hold millions of instances
    first = next(entries, None)
    if args.format == "json":  # the text json.dump(list, indent=2) gives, one entry at a time
        if first is None:
            print("[]")
            return 0
        sys.stdout.write("[\n")
        for index, entry in enumerate(itertools.chain([first], entries)):
            sys.stdout.write((",\n" if index else "") + textwrap.indent(json.dumps(entry, indent=2), "  "))
        sys.stdout.write("\n]\n")
        return 0
    columns = [key for key in (first or {"id": None}) if key not in _CSV_LIST_FIELDS]
    writer = csv.writer(sys.stdout)
    writer.writerow([*columns, "verified_by", "deliveries", "commitments", "reencoded"])
    for entry in itertools.chain([first] if first is not None else [], entries):
        verified = ";".join(f"{v['decoder']}={v['pixel_hash']}" for v in entry["verified_by"])
        deliveries = ";".join(f"{d['destination']}={d['outcome']}:{d['syntax'] or ''}" for d in entry["deliveries"])
        latest: dict[str, str] = {}  # each destination's latest commitment state
        for c in entry.get("commitments", []):
            latest[c["destination"]] = c["state"]
        commitments = ";".join(f"{name}={state}" for name, state in latest.items())
        reencoded = ";".join(f"{r['destination']}:{r['syntax']}:{r['decoder']}={r['pixel_hash']}"
                             for r in entry.get("reencoded", []))
        writer.writerow([*(entry[key] for key in columns), verified, deliveries, commitments, reencoded])
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from gateway.spool import DEAD, Spool

    config = _load(args.config)
    if not config.spool.directory.exists():
        print(f"spool {config.spool.directory} does not exist yet (nothing received)")
        return 0
    spool = Spool(config.spool.directory)
    counts = spool.counts()
    print(f"spool {config.spool.directory}")
    print("  " + "  ".join(f"{k}={v}" for k, v in counts.items()))
    record = None
    for dest in config.destinations:  # counted by file name: no manifest is read
        per = {s: spool.count_jobs(s, dest.name) for s in ("pending", "inflight", "dead")}
        line = f"  {dest.name}: " + "  ".join(f"{k}={v}" for k, v in per.items())
        if dest.storage_commitment:  # each instance's latest commitment state, from the proof record
            from gateway.record import RECORD_FILE, ProofRecord

            record = record or ProofRecord(config.spool.directory / RECORD_FILE)
            committed = record.commitment_counts(dest.name)
            line += "  commitment: " + "  ".join(f"{k}={v}" for k, v in committed.items())
        print(line)
        for detail in _destination_lines(spool, dest.name, per["pending"] + per["inflight"]):
            print(f"    {detail}")
    for name in sorted(spool.job_destinations() - {d.name for d in config.destinations}):
        per = {s: spool.count_jobs(s, name) for s in ("pending", "inflight", "dead")}
        print(f"  {name} (not in the configuration): " + "  ".join(f"{k}={v}" for k, v in per.items()))
    failing = spool.failing()
    if failing:
        print("processing failed, to be tried again (then forwarded as received):")
        for ident, attempts, reason in failing:
            print(f"  {ident}: attempts={attempts} reason={reason}")
    total = counts[DEAD]
    # The oldest few: after an outage there are thousands, each a manifest to read and a line to scroll past.
    dead = spool.jobs_in(DEAD) if args.all else spool.jobs_page(DEAD, 0, STATUS_DEAD_LETTERS)
    heading = False
    shown = 0
    for job in dead:
        if not heading:
            print("dead letters:" if args.all or total <= STATUS_DEAD_LETTERS else
                  f"dead letters, the {STATUS_DEAD_LETTERS} oldest of {total}:")
            heading = True
        print(f"  {job.sop} -> {job.destination}: "
              f"attempts={job.attempts} reason={job.reason}")
        shown += 1
    if not args.all and total > shown:
        print(f"  ... and {total - shown} more: 'dicom-gateway status --all' lists every one")
    return 0


def _when(epoch: float, past: bool = True) -> str:
    """A local time stamp with the distance from now, for an operator.

    A `past` event (a receipt, a failure) stamped ahead of the clock means
    the wall clock was set back since: its age is not known, and "(in 3540 s)"
    would be nonsense, so the line says how far ahead it is.
    """
    import datetime

    stamp = datetime.datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")
    delta = epoch - time.time()
    if not past:
        return f"{stamp} (in {max(0.0, delta):.0f} s)"
    if delta > 1:
        return f"{stamp} ({delta:.0f} s ahead of the clock: set back since)"
    return f"{stamp} ({max(0.0, -delta):.0f} s ago)"


def _destination_lines(spool, name: str, waiting: int) -> list[str]:
    """What the forwarders of destination `name` last saved, and its oldest waiting instance."""
    lines = []
    if waiting:
        oldest = spool.oldest_waiting(name)
        if oldest is not None:
            lines.append(f"oldest waiting: received {_when(oldest)}")
    states = spool.destination_states(name)
    failing = [s["failing_since"] for s in states if s.get("failing_since")]
    if failing:
        lines.append(f"failing since {_when(min(failing))}")
    errors = [s for s in states if s.get("last_error") and s.get("last_error_at")]
    if errors:
        last = max(errors, key=lambda s: s["last_error_at"])
        lines.append(f"last error {_when(last['last_error_at'])}: {last['last_error']}")
    upcoming = [s["next_attempt_at"] for s in states if s.get("next_attempt_at") and waiting]
    if upcoming:
        lines.append(f"next attempt {_when(min(upcoming), past=False)}")
    return lines


def _cmd_retry(args: argparse.Namespace) -> int:
    from gateway.spool import DEAD, UNROUTED, Spool

    config = _load(args.config)
    spool = Spool(config.spool.directory)
    configured = {d.name for d in config.destinations}
    moved = spool.requeue_dead(args.destination, configured=configured)
    print(f"re-queued {len(moved)} dead letter(s); " + _retry_pickup(config, moved))
    for name, count in sorted(spool.destination_counts(DEAD).items()):
        if name not in configured and name != UNROUTED and args.destination in (None, name):
            print(f"kept {count} dead letter(s) of {name}, which is not in the configuration: configure it to "
                  "send them")
    return 0


def _retry_pickup(config: Config, moved: list) -> str:
    """When a running gateway takes up re-queued dead letters, as this process cannot tell it to.

    A destination's forwarders read their queue again every ``[forwarding]
    rescan_seconds``.  An instance no route matched goes back to the worker,
    whose rescan takes a received file only once it has seen it for two of
    its intervals (the receiver may still be checking a file it has just
    seen), so up to three ``[compression] rescan_seconds`` pass.  The
    console's Retry hands both over at once.
    """
    from gateway.spool import UNROUTED

    forwarded = f"{config.forwarding.rescan_seconds:g} s"
    rerouted = sum(1 for job in moved if job.destination == UNROUTED)
    if not rerouted:
        return f"a running gateway picks them up within {forwarded}"
    routed_again = f"{3 * config.compression.rescan_seconds:g} s"
    if rerouted == len(moved):
        return f"a running gateway routes them again within {routed_again}"
    return (f"a running gateway picks them up within {forwarded}, and routes again the {rerouted} no route "
            f"matched within {routed_again}")


def _cmd_codecs(args: argparse.Namespace) -> int:
    from gateway.codecs import all_codecs

    rows = [("name", "keyword", "transfer syntax UID", "kind")]
    rows += [(c.name, c.keyword, c.uid, "private" if c.private else "standard") for c in all_codecs()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(f"{cell:<{width}}" for cell, width in zip(row, widths)) + "  " + row[-1])
    return EXIT_OK


# ------------------------------------------------------------------- compress


def compress_targets() -> dict[str, str]:
    """Transfer syntaxes ``compress`` can write: UID -> name, from the codec registry.

    Every registered codec's syntax, plus the native little endian syntaxes
    (a decode to uncompressed pixels); a codec registered later is accepted
    without a change here.
    """
    from gateway.codecs import all_codecs
    from gateway.dicom.uids import NATIVE_SYNTAXES, lookup

    targets = {c.uid: c.keyword for c in all_codecs()}
    for uid in sorted(NATIVE_SYNTAXES):
        entry = lookup(uid)
        targets[uid] = getattr(entry, "keyword", None) or uid
    return targets


def resolve_target(text: str) -> str:
    """The UID of a syntax ``compress`` can write; :class:`UsageError` naming the choices otherwise."""
    from gateway.codecs import resolve_uid

    targets = compress_targets()
    choices = ", ".join(targets.values())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about non-UID strings; we report instead
            uid = resolve_uid(text)
    except (GatewayError, ValueError) as exc:
        raise UsageError(f"--transfer-syntax: unknown transfer syntax {text!r}; available: {choices}") from exc
    if uid not in targets:
        raise UsageError(f"--transfer-syntax: no encoder for {text!r} ({uid}); available: {choices}")
    return uid


def _is_dicom(path: Path) -> bool:
    """True for a DICOM Part 10 file: 128-byte preamble then ``DICM``, as pydicom requires."""
    with open(path, "rb") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _write_private(dst: Path, source: Path) -> int:
    """Copy `source` to `dst`: owner-only (0600), complete or absent; the number of bytes written."""
    partial = dst.with_name(f".{dst.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb") as handle, open(source, "rb") as original:
            shutil.copyfileobj(original, handle, 1 << 20)
            size = handle.tell()
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)
    return size


@dataclass
class _Result:
    kind: str  # "recompressed" | "passed" | "skipped" | "failed"
    reason: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    line: str = ""


def _compress_one(src: Path, dst: Path, target: str, verify: bool, native: bool, private_version: int) -> _Result:
    """Recompress one file; never writes an output larger than `src` unless decoding to `native`.

    As a folder's files are (:mod:`gateway.bulk`) and as the live gateway
    writes them: a large image read from its file one frame at a time, its
    encoding kept in a file beside the output past a size, and the output
    written from the received bytes (group lengths kept) into a temporary
    file that is renamed into place.
    """
    import re

    from pydicom import dcmread

    from gateway.bulk.task import write_output
    from gateway.config import private_options
    from gateway.dicom.filemeta import defer_size
    from gateway.dicom.splice import pixel_span
    from gateway.pipeline import recompress
    from gateway.spool import make_dirs

    if not _is_dicom(src):
        return _Result("skipped", "not a DICOM file")
    size_in = src.stat().st_size
    ds = dcmread(src, defer_size=defer_size(src))
    span = pixel_span(ds)
    make_dirs(dst.parent)  # new folders 0700, whatever the umask
    # A run killed while it wrote left its temporary file (write_output's ".<name>.<hex>.tmp") beside `dst`,
    # up to the size of the encoded image, and nothing else removes it: a run of the same command does.
    partial = re.compile(rf"\.{re.escape(dst.name)}\.[0-9a-f]{{32}}\.tmp")
    for name in os.listdir(dst.parent):
        if partial.fullmatch(name):
            (dst.parent / name).unlink(missing_ok=True)
    outcome = recompress(ds, target, verify=verify, allow_larger=native,
                         encode_options=private_options(private_version), scratch=dst.parent)
    if not outcome.recompressed:
        return _Result("passed", outcome.reason or "not recompressed", size_in, _write_private(dst, src))
    try:
        tmp, written, _ = write_output(src, ds, outcome.dataset, span, dst)
    finally:
        outcome.close()  # a large encoded value's file goes now
    assert tmp is not None
    if not native and written >= size_in:
        tmp.unlink(missing_ok=True)
        return _Result("passed", f"recompressed file would not be smaller ({written} bytes, {size_in} in); "
                       "original copied", size_in, _write_private(dst, src))
    try:
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)  # gone once moved: left only by a failure
    ratio = outcome.original_pixel_bytes / max(1, outcome.encoded_pixel_bytes)
    line = (f"ok      {src} -> {dst} ratio={ratio:.2f} encode={outcome.encode_seconds:.3f}s "
            f"verify={outcome.verify_seconds:.3f}s")
    return _Result("recompressed", "", size_in, written, line)


def _bulk_options_given(args: argparse.Namespace) -> bool:
    """True when an option that only a folder run takes (engine, layout, dry run) was given."""
    return (args.scheduler is not None or args.workers is not None or args.layout != "relative"
            or args.dry_run or args.in_flight is not None)


def _cmd_compress_bulk(args: argparse.Namespace, target: str, src: Path, dst: Path) -> int:
    """A folder through :mod:`gateway.bulk`: every core (or Dask), the manifest in OUT, resumable."""
    from gateway.bulk import BulkOptions, ManifestMismatchError, estimate, run
    from gateway.bulk.driver import OutputError, SchedulerError
    from gateway.dicom.uids import NATIVE_SYNTAXES

    workers = None if args.workers in (None, "auto") else int(args.workers)
    if workers == 0 and args.scheduler is not None:
        raise UsageError("--workers 0 runs in this process; it takes no --scheduler")
    options = BulkOptions(source=src, output=dst, target=target, verify=not args.no_verify, layout=args.layout,
                          native=target in NATIVE_SYNTAXES, scheduler=args.scheduler, workers=workers,
                          in_flight=args.in_flight, sample=args.sample, private_version=args.private_version)
    try:
        if args.dry_run:
            for line in estimate(options).lines():
                print(line)
            return EXIT_OK
        report = run(options, note=lambda text: print(text, file=sys.stderr if text.startswith("FAILED") else
                                                      sys.stdout, flush=True), verbose=args.verbose)
    except (ManifestMismatchError, OutputError, SchedulerError) as exc:
        raise UsageError(str(exc)) from exc
    except KeyboardInterrupt:
        print("\nstopped (interrupted); run the same command again to resume where it stopped"
              if not args.dry_run else "\nstopped (interrupted)", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    for line in report.lines():
        print(line)
    return EXIT_FAILED if report.counts["failed"] else EXIT_OK


def _workers(text: str) -> str:
    if text == "auto" or (text.isdigit() and int(text) >= 0):
        return text
    raise argparse.ArgumentTypeError(f"must be 'auto' or a number >= 0, got {text!r}")


def _positive(text: str) -> int:
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")


def _check_private_version(version: int) -> None:
    """:class:`UsageError` unless our private syntax's encoder writes `version`."""
    from gateway.config import private_version_problem

    problem = private_version_problem(version)
    if problem:
        raise UsageError(f"--private-version: {problem}")


def _cmd_compress(args: argparse.Namespace) -> int:
    """A folder runs on every core through :mod:`gateway.bulk`; a single file here, in this process."""
    from gateway.dicom.uids import NATIVE_SYNTAXES
    from gateway.logs import one_line
    from gateway.warmup import CompileWatch

    target = resolve_target(args.transfer_syntax)
    _check_private_version(args.private_version)
    src, dst = Path(args.input), Path(args.output)
    if not src.exists():
        raise UsageError(f"{src} does not exist")
    if src.is_dir() and dst.exists() and not dst.is_dir():
        raise UsageError(f"{dst} is a file; the output of a folder must be a folder")
    if src.is_dir() and dst.resolve() == src.resolve():
        raise UsageError(f"the output folder {dst} is the input folder; name another one")
    if src.is_dir() and src.resolve().is_relative_to(dst.resolve()):
        # OUT's tree would overlay IN's: a file under IN could be written over another input file.
        raise UsageError(f"the output folder {dst} contains the input folder {src}; name one outside it")
    if src.is_file() and not _is_dicom(src):
        raise UsageError(f"{src} is not a DICOM file (no 'DICM' after the 128-byte preamble)")
    if src.is_dir():
        return _cmd_compress_bulk(args, target, src, dst)
    if _bulk_options_given(args):
        raise UsageError("--scheduler, --workers, --layout, --in-flight and --dry-run take a folder as input")
    if dst.is_dir() or args.output.endswith(("/", os.sep)):
        dst = dst / src.name
    if dst.resolve() == src.resolve():
        raise UsageError(f"the output {dst} is the input file; name another one")
    with CompileWatch(_announce_compiling) as watch:
        try:
            result = _compress_one(src, dst, target, not args.no_verify, target in NATIVE_SYNTAXES,
                                   args.private_version)
        except (GatewayError, InvalidDicomError, OSError) as exc:
            result = _Result("failed", f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a damaged file may raise anything from the parser
            result = _Result("failed", f"unexpected {type(exc).__name__}: {exc}")
    if watch.compiled:
        print(f"compiled {watch.compiled} kernel(s) in {watch.seconds:.1f} s", file=sys.stderr)
    if result.kind == "recompressed":
        print(one_line(result.line))
    elif result.kind == "passed":
        print(one_line(f"kept    {src} -> {dst} ({result.reason})"))
    else:
        print(one_line(f"FAILED  {src}: {result.reason}"), file=sys.stderr)
    return EXIT_FAILED if result.kind == "failed" else EXIT_OK


# --------------------------------------------------------------------- verify


def _announce_compiling() -> None:
    print(COMPILING, file=sys.stderr, flush=True)


def _cmd_verify(args: argparse.Namespace) -> int:
    from pydicom import dcmread

    from gateway.pipeline.pixels import iter_frames
    from gateway.pipeline.verify import first_difference
    from gateway.warmup import CompileWatch

    datasets = []
    for name in (args.a, args.b):
        try:
            datasets.append(dcmread(name))
        except (InvalidDicomError, OSError) as exc:
            print(f"error: {name}: cannot be read as DICOM: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except Exception as exc:  # noqa: BLE001 - a damaged file may raise anything from the parser
            print(f"error: {name}: cannot be parsed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    frames = []
    with CompileWatch(_announce_compiling) as watch:
        for name, ds in zip((args.a, args.b), datasets):
            try:
                frames.append(list(iter_frames(ds)))
            except (GatewayError, ValueError, AttributeError, KeyError) as exc:
                print(f"error: {name}: pixel data cannot be decoded: {exc}", file=sys.stderr)
                return EXIT_USAGE
    if watch.compiled:
        print(f"compiled {watch.compiled} kernel(s) in {watch.seconds:.1f} s", file=sys.stderr)
    difference = first_difference(*frames)
    if difference is None:
        print("identical pixel data")
        return EXIT_OK
    print(f"different: {difference}")
    return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicom-gateway", description="DICOM lossless recompression gateway",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=description or help, epilog=EXIT_CODES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = command("serve", "receive, recompress, verify and forward",
                "Receive, recompress, verify and forward until SIGINT/SIGTERM (exit 0); SIGHUP reads the "
                "configuration again (what only a restart can change is refused, and logged).  The codec "
                "kernels are compiled (or loaded from numba's cache) before the gateway listens.  Exit 1 when "
                "a thread it needs has stopped, after stopping cleanly: a supervisor should start it again.")
    p.add_argument("--config", required=True, help="TOML configuration file")
    p.set_defaults(func=_cmd_serve)

    p = command("check-config", "validate a configuration file and summarise it")
    p.add_argument("config", nargs="?", help="TOML configuration file")
    # As every other command names it: an operator checking the file a unit's `serve --config F` reads
    # should not have to learn a second form.
    p.add_argument("--config", dest="config_option", metavar="CONFIG", help="the same, as other commands take it")
    p.set_defaults(func=_cmd_check_config)

    p = command("status", "queue counts and dead letters with their reasons")
    p.add_argument("--config", required=True)
    p.add_argument("--all", action="store_true",
                   help=f"list every dead letter (without: the {STATUS_DEAD_LETTERS} oldest, and how many more)")
    p.set_defaults(func=_cmd_status)

    p = command("audit", "the proof record of one instance, or of every instance received since a time")
    p.add_argument("--config", required=True)
    p.add_argument("sop_instance_uid", nargs="?", help="SOP Instance UID (every reception of it)")
    p.add_argument("--since", help="ISO 8601 time, e.g. 2026-01-01T00:00 (without a UID: the period)")
    p.add_argument("--format", choices=("json", "csv"), default="json")
    p.set_defaults(func=_cmd_audit)

    p = command("retry", "re-queue dead letters")
    p.add_argument("--config", required=True)
    p.add_argument("--destination", help="only this destination's dead letters")
    p.set_defaults(func=_cmd_retry)

    p = command("codecs", "list codecs: name, keyword, transfer syntax UID, standard or private")
    p.set_defaults(func=_cmd_codecs)

    p = command("compress", "recompress files or folders offline, verified",
                "Recompress a file, or every file of a folder into a mirrored folder, verified bit for bit.  "
                "Files that are not DICOM are skipped; an image that cannot be recompressed losslessly, "
                "or whose output would not be smaller than its input, is copied unchanged (a decode to "
                "a native syntax may grow).  Output files are readable by their owner only.  A progress "
                "bar shows on a terminal; a report closes a folder run.  A folder runs on every core (one "
                "worker process per core; --workers N), or with --scheduler on a Dask cluster whose workers "
                "see IN and OUT at the same paths, and is recorded in a manifest in OUT: running the same "
                "command again resumes, skipping what is done.  A single file runs in this process.")
    p.add_argument("--transfer-syntax", required=True,
                   help="target: UID, pydicom keyword or codec name of a registered codec "
                        "(see `dicom-gateway codecs`), or a native little endian syntax")
    p.add_argument("--no-verify", action="store_true", help="skip the decode-and-compare check")
    p.add_argument("--private-version", type=int, default=PRIVATE_VERSION, metavar="N",
                   help=f"version of our private syntax (gwl) written: {PRIVATE_VERSION} (the default), or 1 for "
                        "readers that predate version 2 (as [compression] private_version)")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per recompressed file of a folder too")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="Dask scheduler, e.g. tcp://host:8786: run the folder on that cluster ('local': on a "
                        "Dask cluster started on this machine)")
    p.add_argument("--workers", type=_workers, metavar="N",
                   help="local worker processes for a folder ('auto', the default: one per core; 0: this "
                        "process only)")
    p.add_argument("--layout", choices=("relative", "uid"), default="relative",
                   help="output paths: the input's relative paths (default), or <Study>/<Series>/<SOP>.dcm")
    p.add_argument("--in-flight", type=_positive, metavar="N",
                   help="tasks submitted at a time (default: four per worker thread)")
    p.add_argument("--dry-run", action="store_true",
                   help="estimate the savings from files drawn by size (a file's chance its share of the bytes), "
                        "with a 90%% interval; write nothing")
    p.add_argument("--sample", type=_positive, default=50, metavar="N", help="draws by size a dry run makes (50); a file drawn twice is processed once")
    p.add_argument("input", help="DICOM file or folder")
    p.add_argument("output", help="output file, or folder (created; mirrors the input folder)")
    p.set_defaults(func=_cmd_compress)

    p = command("verify", "exit 0 only if two files hold identical pixel values",
                "Compare the pixel values of two DICOM files, whatever their transfer syntaxes: exit 0 "
                "identical, 1 different, 2 when a file cannot be read or decoded.")
    p.add_argument("a")
    p.add_argument("b")
    p.set_defaults(func=_cmd_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gateway.kernelcache import refresh

    refresh()  # no kernel compiled from older source is loaded
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # what is still buffered meets a closed pipe here, not at the interpreter's exit
        return code
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, as other tools do
        try:  # and nothing more is written to the pipe at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_FAILED
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("\nstopped (interrupted)", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
