"""End-to-end throughput: storescu -> gateway (verify on) -> folder and Orthanc, against storescu -> Orthanc.

    python benchmarks/bench_e2e.py [--series NAME] [--runs 2] [--syntax RLELossless GatewayLosslessV1 ...]
        [--streams 1 4] [--generate 500] [--memory 300] [--processes auto] [--folder]

For each real series of the corpus (``series/`` in ``$GATEWAY_CORPUS`` or
``../shared/corpus``), in the same run and against the same Orthanc:

* direct:  DCMTK ``storescu`` sends the series to Orthanc; timed until
  storescu exits (every C-STORE answered, so Orthanc has stored everything);
* gateway: storescu sends to a ``dicom-gateway serve`` process (one per
  ``--syntax``, rounds interleaved) which recompresses (verified) and
  forwards to Orthanc (offered the target syntax, then JPEG-LS and RLE: a
  syntax it refuses arrives in the best it accepts, after a verified
  re-encode), and with ``--folder`` to a folder archive as well; timed until
  the folder (if any) holds the last instance and until Orthanc has answered Success to the gateway's C-STORE of the last
  instance (the gateway's "forwarded" log lines, millisecond timestamps), i.e. delivered,
  not merely received; Orthanc's REST count then confirms every instance is
  there.  Polling that count for the timing would add up to a polling
  interval per run.  The time until storescu exits (everything acknowledged
  by the gateway) is shown too.
* bare: storescu sends to a pynetdicom SCP that keeps nothing
  (``benchmarks/bare_scp.py``): the ceiling of any receiver built on
  pynetdicom, measured in the same rounds.

With ``--streams 1 4`` each series is sent over one, then four
associations at once (four ``storescu`` processes, each a quarter of the
series), on both paths.  ``--generate 500`` adds a generated 500-slice
512 x 512 CT series (16-bit, 12 bits stored, smooth anatomy-like values
with noise) to the corpus series; ``--only-generated`` measures it alone.
"acknowledged" is the rate at which storescu got its answers (what a
modality waits for), compared with the direct path's.  The notes give the
CPU each path uses per image (direct: storescu and Orthanc; gateway: storescu,
the gateway and Orthanc) beside what the machine's cores supply per image at
the direct path's rate: a path needing more CPU than that cannot match the
direct rate on this machine, however its work is scheduled.  "pixel work
alone" is the thread CPU per image of the worker's recompression with
verification (decode the original, encode, decode with ours and with the
independent decoder), timed in the benchmark's own process on up to 24
images of the series: the floor under any gateway that verifies as ours.  ``--memory 300``
also measures, in a separate process, the peak resident memory of the
worker's processing of one generated multi-frame object of that many
megabytes (VmHWM, minus the process's size before it), as a multiple of
the object's size.

Orthanc and storescu run on loopback with ``TCP_NODELAY=1`` (DCMTK reads it
from the environment; the gateway sets it on its own sockets); Orthanc is
emptied between runs.
Best of ``--runs`` runs per path.  After the gateway runs, every instance is
fetched back over REST and its pixels compared with the file sent.
``MB/s`` counts raw pixel megabytes (10**6 bytes) from the corpus manifest.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom import dcmread

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.tools import dcmtk, program  # noqa: E402  (locating DCMTK despite pynetdicom's scripts)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def corpus_dir() -> Path:
    env = os.environ.get("GATEWAY_CORPUS")
    path = Path(env) if env else REPO.parent / "shared" / "corpus"
    if not (path / "MANIFEST.csv").is_file():
        sys.exit(f"corpus not found at {path}: set GATEWAY_CORPUS to a folder holding MANIFEST.csv")
    return path


class Orthanc:
    def __init__(self, root: Path) -> None:
        executable = program("Orthanc")
        if executable is None:
            sys.exit("Orthanc is not installed (Debian package 'orthanc')")
        self.dicom_port, self.http_port = free_port(), free_port()
        config = {"Name": "bench", "DicomAet": "ORTHANC", "DicomPort": self.dicom_port,
                  "HttpPort": self.http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
                  "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "index"),
                  "DicomCheckCalledAet": False, "StorageCompression": False, "Plugins": [], "SaveJobs": False}
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


def storescu(port: int, aec: str, folder: Path | list[Path]) -> float:
    """Send `folder` (or each of several folders over its own association, at once) with DCMTK storescu.

    Returns the wall seconds until the last storescu exited.
    """
    folders = folder if isinstance(folder, list) else [folder]
    started = time.perf_counter()
    processes = [subprocess.Popen([STORESCU, "-aet", "MODALITY", "-aec", aec, "+sd", "+r", "+sp", "*.dcm",
                                   "127.0.0.1", str(port), str(f)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, env=dict(os.environ, TCP_NODELAY="1"))
                 for f in folders]
    errors = [p.communicate()[1] for p in processes]
    elapsed = time.perf_counter() - started
    for process, error in zip(processes, errors):
        if process.returncode != 0:
            sys.exit(f"storescu failed: {error[-2000:]}")
    return elapsed


def split_streams(files: list[Path], streams: int, root: Path) -> list[Path]:
    """`files` dealt round-robin into `streams` folders of hard links (copies across filesystems)."""
    folders = [root / f"stream{i}" for i in range(streams)]
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for index, path in enumerate(files):
        target = folders[index % streams] / path.name
        try:
            os.link(path, target)
        except OSError:
            shutil.copy(path, target)
    return folders


def generate_series(folder: Path, count: int, rows: int = 512, columns: int = 512) -> int:
    """Write a CT series of `count` slices into `folder`; return its raw pixel bytes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    y, x = np.mgrid[0:rows, 0:columns]
    body = ((x - columns / 2) / (0.42 * columns)) ** 2 + ((y - rows / 2) / (0.36 * rows)) ** 2 < 1
    for index in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientName, ds.PatientID, ds.InstanceNumber = "CT", "Bench^Generated", "BENCH", index + 1
        ds.ImagePositionPatient, ds.SliceThickness = [0, 0, 0.625 * index], 0.625
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        tissue = 1024 + 60 * np.sin((x + 3 * index) / 17.0) * np.cos(y / 23.0) + rng.normal(0, 12, (rows, columns))
        pixels = np.where(body, tissue, 24 + rng.normal(0, 4, (rows, columns)))
        ds.PixelData = np.clip(pixels, 0, 4095).astype(np.uint16).tobytes()
        ds.save_as(folder / f"CT{index + 1:04d}.dcm", enforce_file_format=True)
    return count * rows * columns * 2


def start_gateway(root: Path, orthanc: Orthanc, syntax: str, processes: str,
                  folder: bool = False) -> tuple[subprocess.Popen, int]:
    """A ``serve`` process forwarding to Orthanc (and to a folder with `folder`).

    Orthanc is offered `syntax` first, then JPEG-LS and RLE: what it refuses
    (our private syntax) reaches it in the best of those it accepts, after the
    gateway's verified re-encode.
    """
    port = free_port()
    archive = '[[destinations]]\nname = "folder"\nkind = "folder"\npath = "archive"\n' if folder else ""
    (root / "gateway.toml").write_text(f"""
[server]
ae_title = "GATEWAY"
host = "127.0.0.1"
port = {port}
[spool]
directory = "spool"
[compression]
transfer_syntax = "{syntax}"
verify = true
processes = {processes if processes == "0" or processes.isdigit() else '"' + processes + '"'}
[logging]
level = "INFO"
file = "gateway.log"
{archive}[[destinations]]
name = "orthanc"
kind = "dicom"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = {orthanc.dicom_port}
transfer_syntaxes = ["{syntax}", "JPEGLSLossless", "RLELossless"]
""")
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(root / "gateway.toml")],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600  # the first start compiles every configured codec before it listens
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process, port
        if time.monotonic() > deadline or process.poll() is not None:
            sys.exit("the gateway did not start")
        time.sleep(0.1)


def wait_count(orthanc: Orthanc, expected: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while orthanc.count() < expected:
        if time.monotonic() > deadline:
            sys.exit(f"only {orthanc.count()} of {expected} instances reached Orthanc")
        time.sleep(0.02)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by the live process `pid` and its child processes."""
    total = 0.0
    for proc in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def pixel_work_ms(files: list[Path], syntax: str, sample: int = 24) -> float:
    """Thread CPU ms per image of the worker's pixel work alone, in this process, best of three passes.

    ``recompress`` with verification: decoding the original, our encode, our
    decode and the independent decode of the result, with their hashes.  No
    network, file or record work: the least any gateway that verifies as
    ours does must spend per image.
    """
    from gateway.pipeline.policy import recompress

    step = max(1, len(files) // sample)
    datasets = [dcmread(path) for path in files[::step][:sample]]
    recompress(datasets[0], syntax, verify=True)  # warm-up: imports, kernel caches
    best = float("inf")
    for _ in range(3):
        started = time.thread_time()
        for ds in datasets:
            recompress(ds, syntax, verify=True)
        best = min(best, time.thread_time() - started)
    return 1000 * best / len(datasets)


def durable_write_ms(folder: Path, size: int = 300_000, count: int = 30) -> float:
    """Median ms to make a file of `size` bytes durable as a reception is: write, fsync, rename, fsync the folder.

    Measured in `folder` (where the gateways' spools are), so on their disk:
    a modality sending on one association waits at least this long per image
    for a gateway that answers only once the instance is on disk.
    """
    folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    times = []
    for index in range(count):
        started = time.perf_counter()
        temporary = folder / f"{index}.part"
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.rename(folder / f"{index}.dcm")
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        times.append(time.perf_counter() - started)
    shutil.rmtree(folder, ignore_errors=True)
    return 1000 * sorted(times)[count // 2]


def _peers_cpu(orthanc: Orthanc) -> float:
    """CPU seconds used so far by Orthanc and by the storescu processes this benchmark has waited for."""
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return _cpu_seconds(orthanc.process.pid) + reaped.ru_utime + reaped.ru_stime


def _children(pid: int) -> list[int]:
    """Child processes of `pid`, whichever of its threads started them."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def last_forwarded(log: Path, since: float, destination: str) -> float:
    """Wall time of the latest "forwarded" log line to `destination` at or after `since` (epoch seconds)."""
    latest = since
    for line in log.read_text(errors="replace").splitlines():
        if " forwarded sop=" not in line or f" destination={destination} " not in line:
            continue
        stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        latest = max(latest, stamp)
    return latest


def check_pixels(orthanc: Orthanc, folder: Path, syntax_uid: str) -> str:
    sent = {str(ds.SOPInstanceUID): ds for ds in (dcmread(p) for p in folder.glob("*.dcm"))}
    syntaxes = set()
    for instance in orthanc.get("/instances"):
        ds = dcmread(BytesIO(orthanc.request("GET", f"/instances/{instance}/file")))
        syntaxes.add(str(ds.file_meta.TransferSyntaxUID))
        if not np.array_equal(ds.pixel_array, sent.pop(str(ds.SOPInstanceUID)).pixel_array):
            sys.exit(f"pixel mismatch for {ds.SOPInstanceUID}")
    if sent:
        sys.exit(f"{len(sent)} instances missing from Orthanc")
    return ", ".join(sorted(syntaxes))


def measure_memory(root: Path, megabytes: int, syntaxes: list[str]) -> list[str]:
    """Peak memory of the worker's processing of one generated multi-frame object, per target syntax."""
    from tests.worker_peak import write_multiframe

    frames = max(1, megabytes * 10**6 // (512 * 512 * 2))
    source = root / "multiframe.dcm"
    write_multiframe(source, frames, seed=1)
    size = source.stat().st_size
    lines = []
    for syntax in syntaxes:
        work = root / f"memory_{syntax}"
        work.mkdir()
        (work / "gateway.toml").write_text(f"""
[spool]
directory = "spool"
[compression]
transfer_syntax = "{syntax}"
[[destinations]]
name = "folder"
kind = "folder"
path = "archive"
""")
        result = subprocess.run([sys.executable, "-m", "tests.worker_peak", str(work / "gateway.toml"),
                                 str(source)], capture_output=True, text=True, cwd=REPO)
        if result.returncode != 0:
            sys.exit(f"memory measurement failed: {result.stderr[-2000:]}")
        got = json.loads(result.stdout.strip().splitlines()[-1])
        lines.append(f"{syntax:<18} object {size / 1e6:7.1f} MB, {frames} frames; stored {got['stored'] / 1e6:7.1f} MB "
                     f"in {got['syntax']}; worker peak {got['peak'] / 1e6:7.1f} MB, {got['before'] / 1e6:5.1f} MB "
                     f"before: {(got['peak'] - got['before']) / size:.2f}x the object")
        shutil.rmtree(work, ignore_errors=True)
    source.unlink()
    return lines


def main() -> None:
    global STORESCU
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", help="only this folder of the corpus's series/")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--syntax", nargs="+", default=["RLELossless"],
                        help="gateway target syntaxes, measured side by side (one gateway each)")
    parser.add_argument("--processes", default="auto", help="[compression] processes of the gateway")
    parser.add_argument("--streams", type=int, nargs="+", default=[1], help="sending associations at once")
    parser.add_argument("--generate", type=int, default=0, help="add a generated series of this many slices")
    parser.add_argument("--only-generated", action="store_true", help="measure the generated series alone")
    parser.add_argument("--folder", action="store_true",
                        help="the gateway forwards to a folder archive as well as to Orthanc")
    parser.add_argument("--memory", type=int, default=0,
                        help="measure the worker's peak memory on a generated multi-frame object of this many MB")
    args = parser.parse_args()
    STORESCU = dcmtk("storescu")
    if STORESCU is None:
        sys.exit("DCMTK's storescu is not installed (Debian package 'dcmtk')")
    root = Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    durable = durable_write_ms(root / "durable")
    series: list[tuple[str, Path, float]] = []  # name, folder, raw pixel MB
    if not args.only_generated:
        corpus = corpus_dir()
        with open(corpus / "MANIFEST.csv", newline="") as handle:
            pixel_bytes = {row["path"]: int(row["raw_pixel_bytes"]) for row in csv.DictReader(handle)}
        for folder in sorted(p for p in (corpus / "series").iterdir() if p.is_dir()):
            if args.series and folder.name != args.series:
                continue
            mb = sum(pixel_bytes[f"series/{folder.name}/{f.name}"] for f in folder.glob("*.dcm")) / 1e6
            series.append((folder.name, folder, mb))
    if args.generate:
        folder = root / f"generated_ct_{args.generate}"
        mb = generate_series(folder, args.generate) / 1e6
        series.append((f"generated CT {args.generate} x 512x512", folder, mb))

    memory_lines: list[str] = []
    rows, notes = [], []
    orthanc = bare = None
    try:
        if args.memory:
            memory_lines = measure_memory(root, args.memory, args.syntax)
            for line in memory_lines:
                print("memory:", line, flush=True)
        orthanc = Orthanc(root)
        bare_port = free_port()
        bare = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "bare_scp.py"), str(bare_port)],
                                stdout=subprocess.PIPE, text=True)
        if bare.stdout is None or bare.stdout.readline().strip() != "ready":
            sys.exit("the bare pynetdicom SCP did not start")
        for name, folder, mb in series:
            files = sorted(folder.glob("*.dcm"))
            gateways = {}
            for index, syntax in enumerate(args.syntax):
                gw_root = root / f"gw_{len(rows)}_{index}"
                gw_root.mkdir()
                process, port = start_gateway(gw_root, orthanc, syntax, args.processes, args.folder)
                gateways[syntax] = (gw_root, process, port)
            try:
                for syntax, (gw_root, process, port) in gateways.items():
                    # Warm-up (numba caches, imports): one file, not timed.
                    warm = gw_root / "warm"
                    warm.mkdir()
                    shutil.copy(files[0], warm / files[0].name)
                    orthanc.clear()
                    storescu(port, "GATEWAY", warm)
                    wait_count(orthanc, 1)
                pixel_work: dict[str, float] = {}  # per syntax: the same for every number of streams
                for streams in args.streams:
                    parts = split_streams(files, streams, root / "streams") if streams > 1 else folder
                    direct: list[float] = []
                    bare_times: list[float] = []
                    timings = {syntax: {"ack": [], "folder": [], "orthanc": []} for syntax in args.syntax}
                    cpu = dict.fromkeys(args.syntax, 0.0)
                    path_cpu = dict.fromkeys(args.syntax, 0.0)  # storescu + gateway + Orthanc
                    direct_cpu = 0.0  # storescu + Orthanc
                    syntaxes = {}
                    for _ in range(args.runs):  # interleaved: direct, then each gateway, every round
                        orthanc.clear()
                        before = _peers_cpu(orthanc)
                        direct.append(storescu(orthanc.dicom_port, "ORTHANC", parts))
                        wait_count(orthanc, len(files))
                        direct_cpu += _peers_cpu(orthanc) - before
                        bare_times.append(storescu(bare_port, "BARE", parts))
                        for syntax, (gw_root, process, port) in gateways.items():
                            orthanc.clear()
                            shutil.rmtree(gw_root / "archive", ignore_errors=True)
                            time.sleep(0.5)  # the log's timestamps are wall clock: runs must not overlap
                            cpu_before = _cpu_seconds(process.pid)
                            peers_before = _peers_cpu(orthanc)
                            started = time.time()
                            timings[syntax]["ack"].append(storescu(port, "GATEWAY", parts))
                            wait_count(orthanc, len(files))
                            deadline = time.monotonic() + 600
                            while args.folder and len(list((gw_root / "archive").rglob("*.dcm"))) < len(files):
                                if time.monotonic() > deadline:
                                    sys.exit("the folder destination did not receive every instance")
                                time.sleep(0.02)
                            log = gw_root / "gateway.log"
                            if args.folder:
                                timings[syntax]["folder"].append(last_forwarded(log, started, "folder") - started)
                            timings[syntax]["orthanc"].append(last_forwarded(log, started, "orthanc") - started)
                            used = _cpu_seconds(process.pid) - cpu_before
                            cpu[syntax] += used
                            path_cpu[syntax] += used + _peers_cpu(orthanc) - peers_before
                            syntaxes[syntax] = check_pixels(orthanc, folder, syntax)
                    best_direct = min(direct)
                    images = args.runs * len(files)
                    notes.append(f"{name}, {streams} stream(s), direct: storescu + Orthanc use "
                                 f"{1000 * direct_cpu / images:.1f} ms of CPU per image; at the direct path's "
                                 f"best rate the machine's {os.cpu_count()} cores give "
                                 f"{1000 * os.cpu_count() * best_direct / len(files):.1f} ms per image")
                    rows.append((name, streams, len(files), mb, "", "direct storescu -> Orthanc", best_direct, None))
                    rows.append((name, streams, len(files), mb, "", "storescu -> bare pynetdicom SCP", min(bare_times),
                                 best_direct / min(bare_times)))
                    for syntax in args.syntax:
                        if syntax not in pixel_work:
                            pixel_work[syntax] = pixel_work_ms(files, syntax)
                        best = {k: min(v) for k, v in timings[syntax].items() if v}
                        paths = [("ack", "storescu -> gateway (acknowledged)"),
                                 ("folder", "storescu -> gateway -> folder"),
                                 ("orthanc", "storescu -> gateway -> Orthanc")]
                        measured = [(key, label) for key, label in paths if key in best]
                        for key, label in measured:
                            rows.append((name, streams, len(files), mb, syntax, label, best[key],
                                         best_direct / best[key]))
                        for row in rows[-len(measured):]:  # as measured, should a later series not finish
                            print("measured:", row[:2], row[4:6], f"{row[6]:.2f} s", f"x direct {row[7]:.2f}",
                                  flush=True)
                        notes.append(f"{name}, {streams} stream(s), {syntax}: gateway CPU (service + worker "
                                     f"processes) {1000 * cpu[syntax] / images:.1f} ms per image, whole path "
                                     f"(storescu + gateway + Orthanc) {1000 * path_cpu[syntax] / images:.1f} ms, "
                                     f"pixel work alone {pixel_work[syntax]:.1f} ms; "
                                     f"Orthanc received {syntaxes[syntax]}")
            finally:
                for _, process, _ in gateways.values():
                    process.terminate()
                    process.wait(30)
    finally:
        if bare is not None:
            bare.terminate()
            bare.wait(30)
        if orthanc is not None:
            orthanc.stop()
        shutil.rmtree(root, ignore_errors=True)

    print(f"\nEnd-to-end throughput, best of {args.runs} interleaved rounds; verify on, "
          f"worker processes: {args.processes}; {os.cpu_count()} CPU(s); destinations: Orthanc"
          f"{' and a folder' if args.folder else ''}")
    header = (f"{'series':<34} {'streams':>7} {'images':>6} {'MB':>6}  {'target':<16} {'path':<36} {'s':>7} "
              f"{'img/s':>7} {'MB/s':>7} {'x direct':>8}")
    print(header)
    print("-" * len(header))
    for name, streams, count, mb, syntax, path, seconds, ratio in rows:
        ratio_text = f"{ratio:.2f}" if ratio is not None else ""
        print(f"{name:<34} {streams:>7} {count:>6} {mb:>6.1f}  {syntax:<16} {path:<36} {seconds:>7.2f} "
              f"{count / seconds:>7.1f} {mb / seconds:>7.1f} {ratio_text:>8}")
    print()
    print(f"A reception made durable on this disk (write 300 KB, fsync, rename, fsync the folder): "
          f"{durable:.1f} ms, median of 30")
    for note in notes:
        print(note)
    if rows:
        print("Pixels of every instance fetched back from Orthanc equal the files sent (checked after every round).")
    if memory_lines:
        print("\nWorker memory, one multi-frame object (resident peak minus the size before processing):")
        for line in memory_lines:
            print(line)


STORESCU: str | None = None

if __name__ == "__main__":
    main()
