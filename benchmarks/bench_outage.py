"""Recovery after an archive outage: how long the backlog takes once the archive is back.

    python benchmarks/bench_outage.py [--count 224] [--outage 120] [--baseline PATH]

A generated CT series (512x512, 16-bit) is sent with DCMTK ``storescu`` to a
``dicom-gateway serve`` process whose only destination, a DCMTK ``storescp``,
is down.  After ``--outage`` seconds ``storescp --fork`` (one process per
association, as an archive serves several) starts; the figure is the
time from then until it has stored the last instance.  In the same run the
series is sent straight to a ``storescp`` (the transfer time, the best any
path can do), and with ``--baseline`` the same outage is played against
another checkout of the gateway (its package folder's parent, e.g. a ``git
worktree`` of an older commit), so the two are compared side by side.

The table also counts the gateway's ``retry`` log lines and the attempts per
job that the outage cost.  Everything runs on loopback, with
``TCP_NODELAY=1`` for the DCMTK programs, and stops by itself.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import free_port, listening, make_series, wait_until  # noqa: E402
from tests.tools import dcmtk  # noqa: E402


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def start_storescp(port: int, folder: Path) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([dcmtk("storescp"), "--fork", "-aet", "ARCHIVE", "-od", str(folder), "+xa", str(port)],
                            env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_until(lambda: listening(port), 20):
        proc.kill()
        raise SystemExit("storescp did not start")
    return proc


def stored(folder: Path) -> int:
    return sum(1 for _ in folder.iterdir()) if folder.exists() else 0


def storescu(port: int, title: str, files: Path) -> float:
    started = time.perf_counter()
    subprocess.run([dcmtk("storescu"), "-aec", title, "+sd", "+r", "-xs", "127.0.0.1", str(port), str(files)],
                   env=dcmtk_env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def direct(files: Path, count: int, work: Path) -> float:
    port = free_port()
    proc = start_storescp(port, work / "direct")
    try:
        started = time.perf_counter()
        storescu(port, "ARCHIVE", files)
        assert wait_until(lambda: stored(work / "direct") == count, 60)
        return time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(10)


def outage(label: str, pythonpath: Path, files: Path, count: int, seconds: float, work: Path) -> dict:
    here = work / label
    here.mkdir()
    gateway_port, archive_port = free_port(), free_port()
    config = here / "gateway.toml"
    config.write_text(f"""
[server]
ae_title = "GATEWAY"
host = "127.0.0.1"
port = {gateway_port}
[spool]
directory = "spool"
[compression]
transfer_syntax = "RLELossless"
[logging]
level = "INFO"
[[destinations]]
name = "pacs"
kind = "dicom"
ae_title = "ARCHIVE"
host = "127.0.0.1"
port = {archive_port}
""")
    log = here / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    with open(log, "wb") as handle:
        serve = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
                                 stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=here)
    archive = None
    try:
        if not wait_until(lambda: listening(gateway_port), 300):
            raise SystemExit(f"{label}: the gateway did not start; see {log}")
        storescu(gateway_port, "GATEWAY", files)
        time.sleep(seconds)
        back = time.perf_counter()
        archive = start_storescp(archive_port, here / "archive")
        if not wait_until(lambda: stored(here / "archive") == count, max(600.0, 4 * seconds)):
            raise SystemExit(f"{label}: only {stored(here / 'archive')} of {count} delivered")
        drain = time.perf_counter() - back
    finally:
        serve.terminate()
        serve.wait(30)
        if archive is not None:
            archive.terminate()
            archive.wait(10)
    text = log.read_text(errors="replace")
    retries = [line for line in text.splitlines() if " retry " in line]
    attempts = [int(m.group(1)) for m in re.finditer(r"forwarded .*?attempts=(\d+)", text)]
    return {"label": label, "drain": drain, "retries": len(retries),
            "max_attempts": max((int(m.group(1)) for m in re.finditer(r" retry .*?attempts=(\d+)", text)),
                                default=0),
            "tracebacks": text.count("Traceback"), "attempts": attempts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=224)
    parser.add_argument("--outage", type=float, default=120.0, help="seconds the archive is down")
    parser.add_argument("--baseline", type=Path, help="another checkout of the gateway to compare with")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs) and print its path")
    args = parser.parse_args()
    if dcmtk("storescu") is None or dcmtk("storescp") is None:
        raise SystemExit("DCMTK (storescu, storescp) is needed: apt-get install dcmtk")
    work = Path(tempfile.mkdtemp(prefix="bench-outage-"))
    try:
        files = work / "series"
        files.mkdir()
        for index, ds in enumerate(make_series(args.count, rows=512, columns=512)):
            ds.save_as(files / f"{index:04d}.dcm", enforce_file_format=True)
        transfer = direct(files, args.count, work)
        runs = []
        if args.baseline is not None:
            runs.append(outage("baseline", args.baseline.resolve(), files, args.count, args.outage, work))
        runs.append(outage("this tree", REPO, files, args.count, args.outage, work))
        print(f"\n{args.count} instances of 512x512x16 bit; archive down {args.outage:.0f} s; "
              f"direct storescu -> storescp: {transfer:.1f} s\n")
        print("| gateway | return -> last delivered (s) | minus transfer (s) | retry lines | max attempts/job |"
              " tracebacks |")
        print("|---|---:|---:|---:|---:|---:|")
        for run in runs:
            print(f"| {run['label']} | {run['drain']:.1f} | {run['drain'] - transfer:.1f} | {run['retries']} |"
                  f" {run['max_attempts']} | {run['tracebacks']} |")
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
