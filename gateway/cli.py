"""The ``dicom-gateway`` command line.

``serve``, ``check-config``, ``status`` and ``retry`` work on a configuration
file; ``codecs``, ``compress`` and ``verify`` work offline.  Exit status is 0
on success, 1 when the work failed (e.g. pixel data differ), 2 for bad usage
or an invalid configuration.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

from pydicom.errors import InvalidDicomError

from gateway.errors import ConfigError, GatewayError

__all__ = ["main"]


def _load(path: str):
    from gateway.config import load_config

    return load_config(path)


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    s = config.server
    print(f"ok: {config.source}")
    print(f"  listen  {s.ae_title}@{s.host}:{s.port}"
          + (f" (callers: {', '.join(s.allowed_callers)})" if s.allowed_callers else " (any caller)"))
    print(f"  spool   {config.spool.directory}")
    overrides = ", ".join(f"{m}={u}" for m, u in config.compression.modality.items())
    print(f"  target  {config.compression.transfer_syntax}" + (f"; {overrides}" if overrides else "")
          + f"; verify={'on' if config.compression.verify else 'off'}")
    for d in config.destinations:
        where = f"{d.ae_title}@{d.host}:{d.port}" if d.kind == "dicom" else str(d.path)
        print(f"  dest    {d.name} ({d.kind}) {where}")
    for i, r in enumerate(config.routes):
        filters = "; ".join(f"{k}={','.join(v)}" for k, v in
                            (("calling_ae", r.calling_ae), ("modality", r.modality), ("sop_class", r.sop_class)) if v)
        print(f"  route   {i}: {filters or 'everything'} -> {', '.join(r.destinations)}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from gateway.logs import setup_logging
    from gateway.service import Gateway

    config = _load(args.config)
    setup_logging(config.logging.level, config.logging.file)
    gateway = Gateway(config)
    done = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    gateway.start()
    print(f"dicom-gateway listening on {config.server.host}:{gateway.port} as {config.server.ae_title}",
          file=sys.stderr, flush=True)
    while not done.wait(0.5):
        pass
    gateway.stop()
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
    for dest in config.destinations:
        per = {s: sum(1 for _ in spool.jobs_in(s, dest.name)) for s in ("pending", "inflight", "dead")}
        print(f"  {dest.name}: " + "  ".join(f"{k}={v}" for k, v in per.items()))
    failing = spool.failing()
    if failing:
        print("processing failed, to be tried again (then forwarded as received):")
        for ident, attempts, reason in failing:
            print(f"  {ident}: attempts={attempts} reason={reason}")
    dead = list(spool.jobs_in(DEAD))
    if dead:
        print("dead letters:")
        for job in dead:
            print(f"  {job.sop} -> {job.destination}: "
                  f"attempts={job.attempts} reason={job.reason}")
    return 0


def _cmd_retry(args: argparse.Namespace) -> int:
    from gateway.spool import Spool

    config = _load(args.config)
    spool = Spool(config.spool.directory)
    moved = spool.requeue_dead(args.destination)
    print(f"re-queued {len(moved)} dead letter(s); a running gateway picks them up within 30 s")
    return 0


def _cmd_codecs(args: argparse.Namespace) -> int:
    from gateway.codecs import all_codecs

    codecs = all_codecs()
    width = max((len(c.keyword) for c in codecs), default=8)
    for codec in codecs:
        kind = "private" if codec.private else "standard"
        print(f"{codec.name:<16} {codec.keyword:<{width}} {codec.uid:<32} {kind}")
    return 0


def _compress_pairs(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    if src.is_dir():
        return [(p, dst / p.relative_to(src)) for p in sorted(src.rglob("*")) if p.is_file()]
    if dst.is_dir():
        return [(src, dst / src.name)]
    return [(src, dst)]


def _cmd_compress(args: argparse.Namespace) -> int:
    from gateway.codecs import resolve_uid
    from gateway.pipeline import recompress_file

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about non-UID strings; we report instead
            target = resolve_uid(args.transfer_syntax)
    except (GatewayError, ValueError) as exc:
        print(f"error: --transfer-syntax: {exc}", file=sys.stderr)
        return 2
    src, dst = Path(args.input), Path(args.output)
    if not src.exists():
        print(f"error: {src} does not exist", file=sys.stderr)
        return 2
    failures = 0
    for a, b in _compress_pairs(src, dst):
        b.parent.mkdir(parents=True, exist_ok=True)
        try:
            outcome = recompress_file(a, b, target, verify=not args.no_verify)
        except (GatewayError, InvalidDicomError, OSError, ValueError) as exc:
            failures += 1
            print(f"FAILED  {a}: {exc}", file=sys.stderr)
            continue
        if outcome.recompressed:
            ratio = outcome.original_pixel_bytes / max(1, outcome.encoded_pixel_bytes)
            print(f"ok      {a} -> {b} ratio={ratio:.2f} encode={outcome.encode_seconds:.3f}s "
                  f"verify={outcome.verify_seconds:.3f}s")
        else:
            print(f"kept    {a} -> {b} ({outcome.reason})")
    return 1 if failures else 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from pydicom import dcmread

    from gateway.pipeline.verify import compare_pixels

    try:
        a, b = dcmread(args.a), dcmread(args.b)
        difference = compare_pixels(a, b)
    except (GatewayError, InvalidDicomError, OSError, ValueError, AttributeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if difference is None:
        print("identical pixel data")
        return 0
    print(f"different: {difference}")
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicom-gateway", description="DICOM lossless recompression gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="receive, recompress, verify and forward")
    p.add_argument("--config", required=True, help="TOML configuration file")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("check-config", help="validate a configuration file and summarise it")
    p.add_argument("config", help="TOML configuration file")
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser("status", help="queue counts and dead letters with their reasons")
    p.add_argument("--config", required=True)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("retry", help="re-queue dead letters")
    p.add_argument("--config", required=True)
    p.add_argument("--destination", help="only this destination's dead letters")
    p.set_defaults(func=_cmd_retry)

    p = sub.add_parser("codecs", help="list codecs: name, transfer syntax UID, standard or private")
    p.set_defaults(func=_cmd_codecs)

    p = sub.add_parser("compress", help="recompress files or folders offline, verified")
    p.add_argument("--transfer-syntax", required=True, help="UID, pydicom keyword or codec name")
    p.add_argument("--no-verify", action="store_true", help="skip the decode-and-compare check")
    p.add_argument("input")
    p.add_argument("output")
    p.set_defaults(func=_cmd_compress)

    p = sub.add_parser("verify", help="exit 0 only if two files hold identical pixel values")
    p.add_argument("a")
    p.add_argument("b")
    p.set_defaults(func=_cmd_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
