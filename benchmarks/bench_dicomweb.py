"""STOW-RS against DIMSE, with and without storage commitment, to the same Orthanc, in one run.

    python benchmarks/bench_dicomweb.py [--runs 3] [--series NAME] [--batch 32]

Each corpus series (``series/`` in ``$GATEWAY_CORPUS`` or ``../shared/corpus``)
is copied into a spool-like folder (one file per instance, file meta
included) and sent to one Orthanc (with its DICOMweb plugin, Debian package
``orthanc-dicomweb``; ``TCP_NODELAY=1``) as a forwarder sends it: the
instances taken ``--batch`` at a time (the forwarders' default batch),
``prepare`` on each batch then ``send`` per instance, by

* ``DicomWebSender``, STOW-RS, ``batch_instances`` 50 (one request per batch) and 1;
* ``DicomSender`` over ``gateway.net.scu``, C-STORE on one association;
* the same with ``storage_commitment = true``: one N-ACTION per batch,
  Orthanc's N-EVENT-REPORT arriving on an association it opens to a
  receiver here;
* DCMTK's ``storescu`` (C++, C-STORE) as a reference.

Rounds are interleaved (every client once per round, the order rotated
each round; one warm-up round not counted); Orthanc is emptied before each
send and must hold every instance after it.  Reported per client: wall
seconds (best round), instances and MB per second, and the sending
process's CPU milliseconds per instance (mean over rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pydicom import dcmread  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402

from benchmarks.bench_e2e import corpus_dir, free_port  # noqa: E402
from gateway.config import Destination  # noqa: E402
from gateway.dicom.identity import Identity  # noqa: E402
from gateway.forward.commitment import STORAGE_COMMITMENT, CommitmentReports  # noqa: E402
from gateway.forward.dicom import DicomSender  # noqa: E402
from gateway.forward.dicomweb import DicomWebSender  # noqa: E402
from gateway.spool import Job  # noqa: E402
from tests.tools import dcmtk, program  # noqa: E402

PLUGINS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")


class Orthanc:
    """Orthanc with the DICOMweb plugin, knowing the report receiver as modality ``GATEWAY``."""

    def __init__(self, root: Path, report_port: int) -> None:
        executable = program("Orthanc")
        plugin = next((p for p in PLUGINS if Path(p).exists()), None)
        if executable is None or plugin is None:
            sys.exit("Orthanc and its DICOMweb plugin are needed (Debian packages 'orthanc', 'orthanc-dicomweb')")
        self.dicom_port, self.http_port = free_port(), free_port()
        config = {"Name": "bench", "DicomAet": "ORTHANC", "DicomPort": self.dicom_port,
                  "HttpPort": self.http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
                  "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "index"),
                  "DicomCheckCalledAet": False, "StorageCompression": False, "Plugins": [plugin],
                  "SaveJobs": False, "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
                  "DicomModalities": {"gateway": ["GATEWAY", "127.0.0.1", report_port]}}
        (root / "orthanc.json").write_text(json.dumps(config))
        self.log = open(root / "orthanc.log", "wb")
        self.process = subprocess.Popen([executable, str(root / "orthanc.json")], stdout=self.log,
                                        stderr=subprocess.STDOUT, env=dict(os.environ, TCP_NODELAY="1"))
        deadline = time.monotonic() + 60
        while True:
            try:
                self.get("/system")
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    sys.exit(f"Orthanc did not start; see {root / 'orthanc.log'}")
                time.sleep(0.1)

    def request(self, method: str, path: str) -> bytes:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", method=method)
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.read()

    def get(self, path: str):
        return json.loads(self.request("GET", path))

    def count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def clear(self) -> None:
        for patient in self.get("/patients"):
            self.request("DELETE", f"/patients/{patient}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


def jobs_for(folder: Path) -> list[tuple[Job, Path]]:
    jobs = []
    for index, path in enumerate(sorted(folder.glob("*.dcm"))):
        meta = dcmread(path, stop_before_pixels=True).file_meta
        identity = Identity(str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID),
                            transfer_syntax=str(meta.TransferSyntaxUID))
        jobs.append((Job(f"i{index}", "peer", identity=identity), path))
    return jobs


def forward(sender, jobs: list[tuple[Job, Path]], batch: int) -> None:
    """What a forwarder does: batches of `batch`, prepare, then send each; every instance must succeed."""
    paths = {job.instance: path for job, path in jobs}
    try:
        for start in range(0, len(jobs), batch):
            chunk = [job for job, _ in jobs[start:start + batch]]
            sender.prepare(chunk)
            for job in chunk:
                sender.send(job, paths[job.instance])
    finally:
        sender.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--series", help="only this folder of the corpus's series/")
    parser.add_argument("--batch", type=int, default=32, help="jobs a forwarder takes at once (default 32)")
    args = parser.parse_args()
    storescu = dcmtk("storescu")
    corpus = corpus_dir()
    folders = sorted(p for p in (corpus / "series").iterdir() if p.is_dir())
    if args.series:
        folders = [p for p in folders if p.name == args.series]
    root = Path(tempfile.mkdtemp(prefix="bench_dicomweb_"))
    reports = CommitmentReports()
    receiver = AE(ae_title="GATEWAY")
    receiver.add_supported_context(STORAGE_COMMITMENT, ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"],
                                   scu_role=False, scp_role=True)
    report_port = free_port()
    server = receiver.start_server(("127.0.0.1", report_port), block=False, evt_handlers=[
        (evt.EVT_N_EVENT_REPORT, lambda event: (reports.deliver(event.assoc.requestor.ae_title, event.event_type,
                                                                event.event_information), None))])
    (root / "orthanc").mkdir()
    orthanc = Orthanc(root / "orthanc", report_port)
    url = f"http://127.0.0.1:{orthanc.http_port}/dicom-web"

    def web(batch_instances: int) -> Callable[[list, Path], None]:
        def run(jobs: list, folder: Path) -> None:
            dest = Destination("web", "dicomweb", url=url, timeout_seconds=120, batch_instances=batch_instances)
            forward(DicomWebSender(dest, locate=lambda job, m={j.instance: p for j, p in jobs}: m[job.instance]),
                    jobs, args.batch)
        return run

    def dimse(commitment: bool) -> Callable[[list, Path], None]:
        def run(jobs: list, folder: Path) -> None:
            dest = Destination("pacs", "dicom", ae_title="ORTHANC", host="127.0.0.1", port=orthanc.dicom_port,
                               timeout_seconds=120, storage_commitment=commitment, commitment_timeout_seconds=120)
            paths = {j.instance: p for j, p in jobs}
            forward(DicomSender(dest, calling_ae="GATEWAY", locate=lambda job: paths[job.instance],
                                reports=reports), jobs, args.batch)
        return run

    def dcmtk_store(jobs: list, folder: Path) -> None:
        result = subprocess.run([storescu, "-aet", "GATEWAY", "-aec", "ORTHANC", "+sd", "+sp", "*.dcm",
                                 "127.0.0.1", str(orthanc.dicom_port), str(folder)], capture_output=True, text=True,
                                env=dict(os.environ, TCP_NODELAY="1"))
        if result.returncode != 0:
            sys.exit(f"storescu failed: {result.stderr[-2000:]}")

    clients: dict[str, Callable[[list, Path], None]] = {
        "STOW-RS, DicomWebSender, batch_instances 50": web(50),
        "STOW-RS, DicomWebSender, batch_instances 1": web(1),
        "C-STORE, DicomSender over gateway.net.scu": dimse(False),
        "C-STORE + storage commitment, DicomSender": dimse(True),
    }
    if storescu is not None:
        clients["C-STORE, DCMTK storescu (C++ reference)"] = dcmtk_store
    rows = []
    try:
        for series in folders:
            spool = root / "spool" / series.name
            spool.mkdir(parents=True)
            for path in sorted(series.glob("*.dcm")):
                shutil.copy(path, spool / path.name)
            jobs = jobs_for(spool)
            size = sum(path.stat().st_size for _, path in jobs) / 1e6
            wall: dict[str, list[float]] = {}
            cpu: dict[str, list[float]] = {}
            order = list(clients)
            for round_index in range(args.runs + 1):  # round 0 warms up, not counted
                for client in order:
                    orthanc.clear()
                    time.sleep(0.2)
                    before_cpu = time.process_time()
                    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
                    started = time.perf_counter()
                    clients[client](jobs, spool)
                    elapsed = time.perf_counter() - started
                    children = resource.getrusage(resource.RUSAGE_CHILDREN)
                    used = (time.process_time() - before_cpu + children.ru_utime - before_children.ru_utime
                            + children.ru_stime - before_children.ru_stime)
                    if orthanc.count() != len(jobs):
                        sys.exit(f"Orthanc holds {orthanc.count()} of {len(jobs)} after {client}")
                    if round_index:
                        wall.setdefault(client, []).append(elapsed)
                        cpu.setdefault(client, []).append(used)
                order = order[1:] + order[:1]
            for client in clients:
                best = min(wall[client])
                rows.append((series.name, len(jobs), size, client, best,
                             1000 * sum(cpu[client]) / len(cpu[client]) / len(jobs)))
    finally:
        orthanc.stop()
        server.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nSTOW-RS vs DIMSE to one Orthanc, {args.runs} interleaved rounds (after one warm-up), forwarder batch "
          f"{args.batch}; {os.cpu_count()} CPU(s); wall = best round, CPU = mean per instance of the sending process")
    print("| series | images | MB | client | wall s | img/s | MB/s | CPU ms/img |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for name, count, size, client, seconds, cpu_ms in rows:
        print(f"| {name} | {count} | {size:.1f} | {client} | {seconds:.2f} | {count / seconds:.0f} "
              f"| {size / seconds:.1f} | {cpu_ms:.2f} |")


if __name__ == "__main__":
    main()
