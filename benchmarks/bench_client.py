"""The DICOM client, measured: the gateway's DICOM sender over each requestor, to real peers, in one run.

    python benchmarks/bench_client.py [--runs 3] [--series NAME]

Each corpus series (``series/`` in ``$GATEWAY_CORPUS`` or
``../shared/corpus``) is copied into a spool-like folder (one file per
instance, file meta included, as the spool keeps processed objects) and sent
to a real Orthanc and to DCMTK's ``storescp`` (both on loopback with
``TCP_NODELAY=1``) by:

* ``DicomSender`` over each requestor in ``CLIENTS`` (the gateway's
  ``gateway.net.scu`` and pynetdicom's, see ``pynetdicom_requestor.py``):
  what a forwarder does,
  ``prepare`` on the whole series then ``send`` per instance (file meta read,
  syntax chosen, the stored dataset sent without a parse) on one
  association, released at the end;
* pynetdicom's own ``send_c_store(path)`` with its default configuration
  (the file is parsed and encoded again), for what the public call costs;
* DCMTK's ``storescu`` as a C++ reference (its CPU is the child process's).

Rounds are interleaved (every peer and client once per round, the order
rotated each round) so the machine's drift hits all alike; the peer is
emptied before each send.  Reported per client and peer: wall seconds (best
round), instances per second, and CPU milliseconds per instance of the
sending process (all its threads; the mean over rounds).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pynetdicom import AE, build_context  # noqa: E402

from benchmarks import pynetdicom_requestor  # noqa: E402
from benchmarks.bench_e2e import Orthanc, corpus_dir, free_port  # noqa: E402
from gateway.config import Destination  # noqa: E402
from gateway.dicom.filemeta import read_file_meta  # noqa: E402
from gateway.forward.dicom import DicomSender  # noqa: E402
from gateway.net import scu  # noqa: E402
from gateway.spool import Job  # noqa: E402
from tests.tools import dcmtk  # noqa: E402

CLIENTS: dict[str, Callable[..., object]] = {
    "DicomSender over gateway.net.scu": scu.Association.request,
    "DicomSender over pynetdicom (pynetdicom_requestor.py)": pynetdicom_requestor.associate,
}
"""The requestors ``DicomSender`` is measured over: name -> ``associate`` function."""


class StoreSCP:
    """DCMTK's storescp on a free port, writing into a folder emptied between rounds."""

    def __init__(self, root: Path) -> None:
        program = dcmtk("storescp")
        if program is None:
            sys.exit("DCMTK's storescp is not installed (Debian package 'dcmtk')")
        self.port = free_port()
        self.out = root / "storescp"
        self.out.mkdir()
        self.log = open(root / "storescp.log", "wb")
        self.process = subprocess.Popen([program, "-aet", "STORESCP", "-od", str(self.out), str(self.port)],
                                        stdout=self.log, stderr=subprocess.STDOUT,
                                        env=dict(os.environ, TCP_NODELAY="1"))
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if time.monotonic() > deadline or self.process.poll() is not None:
                sys.exit("storescp did not start")
            time.sleep(0.05)

    def count(self) -> int:
        return sum(1 for _ in self.out.iterdir())

    def clear(self) -> None:
        for path in self.out.iterdir():
            path.unlink()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


def jobs_for(folder: Path) -> list[tuple[Job, Path]]:
    """One job per spool-like file, its info as the receiver records it (UIDs from the file meta)."""
    from pydicom import dcmread

    jobs = []
    for index, path in enumerate(sorted(folder.glob("*.dcm"))):
        meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
        jobs.append((Job(f"i{index}", "peer", info={
            "sop_class_uid": str(meta.MediaStorageSOPClassUID), "sop_instance_uid": str(meta.MediaStorageSOPInstanceUID),
            "transfer_syntax": str(meta.TransferSyntaxUID)}), path))
    return jobs


def send_with_sender(associate: Callable[..., object], port: int, ae_title: str,
                     jobs: list[tuple[Job, Path]]) -> None:
    sender = DicomSender(Destination("peer", "dicom", ae_title=ae_title, host="127.0.0.1", port=port,
                                     timeout_seconds=60), calling_ae="GATEWAY", associate=associate)
    sender.prepare([job for job, _ in jobs])
    try:
        for job, path in jobs:
            sender.send(job, path)
    finally:
        sender.close()


def send_with_pynetdicom_path(port: int, ae_title: str, jobs: list[tuple[Job, Path]]) -> None:
    ae = AE(ae_title="GATEWAY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    pairs = sorted({(job.info["sop_class_uid"], read_file_meta(path)[1]) for job, path in jobs})
    assoc = ae.associate("127.0.0.1", port, contexts=[build_context(sop, [ts]) for sop, ts in pairs],
                         ae_title=ae_title)
    if not assoc.is_established:
        sys.exit("pynetdicom could not associate")
    try:
        for index, (_, path) in enumerate(jobs):
            status = assoc.send_c_store(path, msg_id=index % 0xFFFF + 1)
            if int(status.get("Status", -1)) != 0:
                sys.exit(f"pynetdicom send_c_store: status {status}")
    finally:
        assoc.release()


def send_with_storescu(port: int, ae_title: str, folder: Path) -> None:
    result = subprocess.run([STORESCU, "-aet", "GATEWAY", "-aec", ae_title, "+sd", "+sp", "*.dcm", "127.0.0.1",
                             str(port), str(folder)], capture_output=True, text=True,
                            env=dict(os.environ, TCP_NODELAY="1"))
    if result.returncode != 0:
        sys.exit(f"storescu failed: {result.stderr[-2000:]}")


def main() -> None:
    global STORESCU
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--series", help="only this folder of the corpus's series/")
    args = parser.parse_args()
    STORESCU = dcmtk("storescu")
    if STORESCU is None:
        sys.exit("DCMTK's storescu is not installed (Debian package 'dcmtk')")
    corpus = corpus_dir()
    folders = sorted(p for p in (corpus / "series").iterdir() if p.is_dir())
    if args.series:
        folders = [p for p in folders if p.name == args.series]
    root = Path(tempfile.mkdtemp(prefix="bench_client_"))
    (root / "orthanc").mkdir()
    orthanc = Orthanc(root / "orthanc")
    scp = StoreSCP(root)
    peers = {"Orthanc": (orthanc.dicom_port, "ORTHANC", orthanc.count, orthanc.clear),
             "storescp": (scp.port, "STORESCP", scp.count, scp.clear)}
    clients: dict[str, Callable[[int, str, list[tuple[Job, Path]], Path], None]] = {
        name: (lambda port, aet, jobs, folder, a=associate: send_with_sender(a, port, aet, jobs))
        for name, associate in CLIENTS.items()}
    clients["pynetdicom send_c_store(path), default config (parses)"] = (
        lambda port, aet, jobs, folder: send_with_pynetdicom_path(port, aet, jobs))
    clients["DCMTK storescu (C++ reference)"] = lambda port, aet, jobs, folder: send_with_storescu(port, aet, folder)
    rows = []
    try:
        for series in folders:
            spool = root / "spool" / series.name
            spool.mkdir(parents=True)
            for path in sorted(series.glob("*.dcm")):
                shutil.copy(path, spool / path.name)
            jobs = jobs_for(spool)
            size = sum(path.stat().st_size for _, path in jobs) / 1e6
            wall: dict[tuple[str, str], list[float]] = {}
            cpu: dict[tuple[str, str], list[float]] = {}
            order = list(clients)
            for round_index in range(args.runs + 1):  # round 0 warms up (imports, caches), not counted
                for peer_name, (port, aet, count, clear) in peers.items():
                    for client in order:
                        clear()
                        time.sleep(0.2)
                        before_cpu = time.process_time()
                        before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
                        started = time.perf_counter()
                        clients[client](port, aet, jobs, spool)
                        elapsed = time.perf_counter() - started
                        children = resource.getrusage(resource.RUSAGE_CHILDREN)
                        used = (time.process_time() - before_cpu
                                + children.ru_utime - before_children.ru_utime
                                + children.ru_stime - before_children.ru_stime)
                        deadline = time.monotonic() + 60
                        while count() < len(jobs):
                            if time.monotonic() > deadline:
                                sys.exit(f"{peer_name} holds {count()} of {len(jobs)} after {client}")
                            time.sleep(0.05)
                        if round_index:
                            wall.setdefault((peer_name, client), []).append(elapsed)
                            cpu.setdefault((peer_name, client), []).append(used)
                order = order[1:] + order[:1]
            for (peer_name, client), times in wall.items():
                mean_cpu = sum(cpu[(peer_name, client)]) / len(cpu[(peer_name, client)])
                rows.append((series.name, len(jobs), size, peer_name, client, min(times),
                             1000 * mean_cpu / len(jobs)))
    finally:
        orthanc.stop()
        scp.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nDICOM client, {args.runs} interleaved rounds (after one warm-up); {os.cpu_count()} CPU(s); "
          "wall = best round, CPU = mean per instance of the sending process")
    header = "| series | images | MB | peer | client | wall s | img/s | CPU ms/img |"
    print(header)
    print("|---|---:|---:|---|---|---:|---:|---:|")
    for name, count, size, peer_name, client, seconds, cpu_ms in rows:
        print(f"| {name} | {count} | {size:.1f} | {peer_name} | {client} | {seconds:.2f} | {count / seconds:.0f} "
              f"| {cpu_ms:.2f} |")


STORESCU: str | None = None

if __name__ == "__main__":
    main()
