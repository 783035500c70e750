"""How long ``dicom-gateway status`` takes on a spool with many finished jobs.

Builds a spool in a temporary folder with ``--done`` finished jobs (default
10,000), ``--pending`` pending ones and ``--dead`` dead letters over two
destinations, written in the spool's own manifest format, then times
``status`` in this process (best of ``--repeat``, the command's own work)
and once as a new process (interpreter start included).  Target: under
0.5 s in process with 10,000 finished jobs::

    python benchmarks/bench_status.py
    python benchmarks/bench_status.py --done 100000 --pending 5000
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from gateway.cli import main as cli_main
from gateway.spool import DEAD, DONE, PENDING, Job, Spool

TARGET = 0.5


def build(root: Path, done: int, pending: int, dead: int) -> Path:
    """A spool under `root` and a configuration naming it; returns the configuration's path."""
    spool = Spool(root / "spool")
    destinations = ("pacs", "archive")
    now = time.time()
    for state, count in ((DONE, done), (PENDING, pending), (DEAD, dead)):
        folder = spool.jobs / state
        for n in range(count):
            ident = f"{n:020d}-{n:012x}-4354"
            dest = destinations[n % 2]
            job = Job(ident, dest, state=state, attempts=3 if state == DEAD else 0, created_at=now, updated_at=now,
                      reason="PACS answered C-STORE status 0xA700" if state == DEAD else None,
                      info={"sop_instance_uid": f"1.2.826.0.1.3680043.10.1.{n}", "destinations": list(destinations)})
            (folder / f"{job.key}.json").write_text(json.dumps(asdict(job)))
    config = root / "gateway.toml"
    config.write_text('[spool]\ndirectory = "spool"\n'
                      '[[destinations]]\nname = "pacs"\nkind = "dicom"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 104\n'
                      '[[destinations]]\nname = "archive"\nkind = "folder"\npath = "archive"\n')
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--done", type=int, default=10_000)
    parser.add_argument("--pending", type=int, default=1_000)
    parser.add_argument("--dead", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-status-"))
    try:
        config = build(root, args.done, args.pending, args.dead)
        best = float("inf")
        for _ in range(args.repeat):
            out = io.StringIO()
            start = time.perf_counter()
            with contextlib.redirect_stdout(out):
                code = cli_main(["status", "--config", str(config)])
            best = min(best, time.perf_counter() - start)
            if code != 0 or f"done={args.done}" not in out.getvalue():
                print(out.getvalue(), file=sys.stderr)
                return 1
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gateway.cli", "status", "--config", str(config)], check=True,
                       capture_output=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        process = time.perf_counter() - start
        print(f"# `dicom-gateway status` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"load average {os.getloadavg()[0]:.1f})\n")
        print("| done | pending | dead | in process s (best of %d) | new process s | in process < 0.5 s |" % args.repeat)
        print("|---:|---:|---:|---:|---:|:---:|")
        print(f"| {args.done} | {args.pending} | {args.dead} | {best:.3f} | {process:.2f} | "
              f"{'yes' if best < TARGET else 'NO'} |")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
