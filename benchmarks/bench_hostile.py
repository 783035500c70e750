"""A normal sender while hostile peers hammer the receiver: storescu time, service memory and threads.

    python benchmarks/bench_hostile.py [--instances 5] [--rounds 3] [--label NAME]

Starts ``dicom-gateway serve`` (folder archive, pass-through) on loopback
from whatever ``gateway`` package ``PYTHONPATH`` gives, so the same script
measures any version.  Then, in the same run:

1. *alone*: DCMTK ``storescu`` sends ``--instances`` generated CT images
   (512 x 512, 16 bits), ``--rounds`` times; the time until it exits (every
   C-STORE answered) is taken.
2. *under attack*: while, all at once,

   * 200 connections stay silent (each one the server closes is opened again),
   * 50 connections send a valid A-ASSOCIATE-RQ at one byte per second each,
   * one association sends a P-DATA-TF announcing 0xFFFFFFFF bytes and streams
     zeros (at most ``--stream-mib`` per connection, then it stays silent; a
     closed one is opened again),
   * one connection sends an A-ASSOCIATE-RQ announcing 0xFFFFFFFF bytes and
     streams zeros likewise,

   the same storescu rounds run again.

The service's resident memory (``/proc/PID/status`` VmRSS, sampled every
0.1 s, and VmHWM at the end) and its thread count are reported for both
phases.  storescu gets ``--storescu-timeout`` seconds per round; one that
does not finish is shown as failed.  Everything is on 127.0.0.1 and stops
by itself (the attack lasts as long as its storescu rounds, plus a settling
time).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT = "1.2.840.10008.1.2"


def associate_rq(called: str, calling: str) -> bytes:
    """A minimal A-ASSOCIATE-RQ (PS3.8 9.3.2) proposing Verification in Implicit VR Little Endian."""
    def item(kind: int, payload: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(payload)) + payload

    context = struct.pack(">BBBB", 1, 0, 0, 0) + item(0x30, VERIFICATION.encode()) + item(0x40, IMPLICIT.encode())
    user = item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.826.0.1.3680043.9.7156.1")
    body = (struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16) + bytes(32)
            + item(0x10, b"1.2.840.10008.3.1.1.1") + item(0x20, context) + item(0x50, user))
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_instances(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(7)
    study, series = generate_uid(), generate_uid()
    paths = []
    for index in range(count):
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        ds.Rows = ds.Columns = 512
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = rng.integers(0, 4096, (512, 512), dtype=np.uint16).tobytes()
        for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
            if keyword in ds:
                del ds[keyword]
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.set_original_encoding(False, True, ds.original_character_set)
        path = folder / f"ct{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


class Service:
    """``dicom-gateway serve`` in a process of its own, with its /proc figures sampled."""

    def __init__(self, root: Path, port: int) -> None:
        self.port = port
        (root / "gateway.toml").write_text(f"""
[server]
ae_title = "GATEWAY"
host = "127.0.0.1"
port = {port}

[spool]
directory = "spool"

[compression]
transfer_syntax = "keep"
processes = 0

[logging]
level = "WARNING"
file = "gateway.log"

[[destinations]]
name = "local"
kind = "folder"
path = "archive"
""")
        self.log = open(root / "service.out", "wb")  # noqa: SIM115 - open while the service runs
        self.process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config",
                                         str(root / "gateway.toml")], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"the service exited: {(root / 'service.out').read_text()[-2000:]}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        else:
            self.stop()
            sys.exit("the service did not listen within 120 s")
        self.rss_peak = 0
        self.threads_peak = 0
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None

    def status(self) -> dict[str, int]:
        out = {}
        try:
            with open(f"/proc/{self.process.pid}/status") as handle:
                for line in handle:
                    name, _, value = line.partition(":")
                    if name in ("VmRSS", "VmHWM", "Threads"):
                        out[name] = int(value.split()[0])
        except OSError:
            pass
        return out

    def sample(self) -> None:
        """Sample RSS and threads every 0.1 s until :meth:`reset` or :meth:`stop`."""
        self.rss_peak = self.threads_peak = 0
        self._sampling.clear()

        def run() -> None:
            while not self._sampling.is_set():
                figures = self.status()
                self.rss_peak = max(self.rss_peak, figures.get("VmRSS", 0))
                self.threads_peak = max(self.threads_peak, figures.get("Threads", 0))
                time.sleep(0.1)

        self._sampler = threading.Thread(target=run, daemon=True)
        self._sampler.start()

    def end_sample(self) -> tuple[float, int, float]:
        """(RSS peak MB, threads peak, VmHWM MB) since :meth:`sample`."""
        self._sampling.set()
        if self._sampler is not None:
            self._sampler.join()
        return self.rss_peak / 1024, self.threads_peak, self.status().get("VmHWM", 0) / 1024

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


FAILURES: list[str] = []


def storescu(program: str, port: int, files: list[Path], timeout: float) -> tuple[float, bool]:
    started = time.monotonic()
    try:
        done = subprocess.run([program, "-aet", "MODALITY", "-aec", "GATEWAY", "-to", str(int(timeout)),
                               "127.0.0.1", str(port), *map(str, files)], capture_output=True, timeout=timeout,
                              env=dict(os.environ, TCP_NODELAY="1"), check=False)
        ok = done.returncode == 0
        if not ok:
            lines = [line for line in done.stderr.decode(errors="replace").splitlines() if line.startswith("F:")]
            FAILURES.append(" / ".join(lines[:3]) or f"exit code {done.returncode}")
    except subprocess.TimeoutExpired:
        ok = False
        FAILURES.append(f"no answer within {timeout:g} s")
    return time.monotonic() - started, ok


class Attack:
    """The hostile peers, each kind in a thread; :meth:`stop` ends them all."""

    def __init__(self, port: int, idle: int, slow: int, stream_bytes: int) -> None:
        self.port = port
        self.idle, self.slow, self.stream_bytes = idle, slow, stream_bytes
        self.stopping = threading.Event()
        self.closed_by_server = {"idle": 0, "slow": 0, "p-data": 0, "associate": 0}
        self.streamed = {"p-data": 0, "associate": 0}
        self.threads = [threading.Thread(target=self._idle, daemon=True),
                        threading.Thread(target=self._slow, daemon=True),
                        threading.Thread(target=self._stream, args=("p-data",), daemon=True),
                        threading.Thread(target=self._stream, args=("associate",), daemon=True)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(10)

    def _connect(self) -> socket.socket | None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            sock.setblocking(False)
            return sock
        except OSError:
            return None

    @staticmethod
    def _is_closed(sock: socket.socket) -> bool:
        try:
            return sock.recv(65536) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _idle(self) -> None:
        socks: list[socket.socket | None] = [self._connect() for _ in range(self.idle)]
        while not self.stopping.wait(0.5):
            for index, sock in enumerate(socks):
                if sock is None or self._is_closed(sock):
                    if sock is not None:
                        sock.close()
                        self.closed_by_server["idle"] += 1
                    socks[index] = self._connect()
        for sock in socks:
            if sock is not None:
                sock.close()

    def _slow(self) -> None:
        rq = associate_rq("GATEWAY", "SLOWLORIS")
        socks: list[list] = [[self._connect(), 0] for _ in range(self.slow)]
        while not self.stopping.wait(1.0):
            for entry in socks:
                sock, sent = entry
                if sock is None or self._is_closed(sock):
                    if sock is not None:
                        sock.close()
                        self.closed_by_server["slow"] += 1
                    entry[0], entry[1] = self._connect(), 0
                    continue
                try:
                    sock.send(rq[sent % len(rq):sent % len(rq) + 1])
                    entry[1] = sent + 1
                except OSError:
                    pass
        for sock, _ in socks:
            if sock is not None:
                sock.close()

    def _stream(self, kind: str) -> None:
        chunk = bytes(65536)
        while not self.stopping.is_set():
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            except OSError:
                self.stopping.wait(0.5)
                continue
            try:
                sock.settimeout(2)
                if kind == "p-data":
                    sock.sendall(associate_rq("GATEWAY", "STREAMER"))
                    header = sock.recv(6)
                    if header[:1] != b"\x02":
                        raise OSError("not associated")
                    length = struct.unpack(">I", header[2:6])[0]
                    while length > 0:
                        length -= len(sock.recv(length))
                    sock.sendall(struct.pack(">BBI", 0x04, 0, 0xFFFFFFFF))
                else:
                    sock.sendall(struct.pack(">BBI", 0x01, 0, 0xFFFFFFFF))
                sent = 0
                while sent < self.stream_bytes and not self.stopping.is_set():
                    try:
                        count = sock.send(chunk)
                    except TimeoutError:
                        continue
                    sent += count
                    self.streamed[kind] += count
                while not self.stopping.is_set():  # the cap reached: hold the connection, silent
                    if self._is_closed_blocking(sock):
                        break
            except OSError:
                pass
            finally:
                sock.close()
                if not self.stopping.is_set():
                    self.closed_by_server[kind] += 1
                    self.stopping.wait(0.2)

    def _is_closed_blocking(self, sock: socket.socket) -> bool:
        try:
            sock.settimeout(0.5)
            return sock.recv(65536) == b""
        except TimeoutError:
            return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--slow", type=int, default=50)
    parser.add_argument("--stream-mib", type=int, default=1536, help="cap of zeros streamed per connection")
    parser.add_argument("--storescu-timeout", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds of attack before the first round")
    parser.add_argument("--label", default="", help="name of the gateway version measured, for the table")
    args = parser.parse_args()
    program = shutil.which("storescu", path="/usr/bin:/usr/local/bin") or shutil.which("storescu")
    if program is None:
        sys.exit("DCMTK storescu is not installed (Debian package 'dcmtk')")
    import gateway

    label = args.label or str(Path(gateway.__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        files = make_instances(root / "in", args.instances)
        service = Service(root, free_port())
        rows = []
        try:
            storescu(program, service.port, files, args.storescu_timeout)  # warm-up, not counted
            service.sample()
            alone = [storescu(program, service.port, files, args.storescu_timeout) for _ in range(args.rounds)]
            rows.append(("alone", alone, *service.end_sample()))
            attack = Attack(service.port, args.idle, args.slow, args.stream_mib * 1024 * 1024)
            service.sample()
            attack.start()
            time.sleep(args.settle)
            attacked = [storescu(program, service.port, files, args.storescu_timeout) for _ in range(args.rounds)]
            rss, threads, hwm = service.end_sample()
            attack.stop()
            rows.append(("under attack", attacked, rss, threads, hwm))
        finally:
            service.stop()
    print(f"\ngateway: {label}")
    print(f"{args.instances} instances of 512x512x16 bits per storescu round, {args.rounds} rounds per phase; "
          f"attack: {args.idle} idle + {args.slow} slow (1 byte/s) connections, endless P-DATA and "
          f"4 GiB A-ASSOCIATE-RQ streams (capped at {args.stream_mib} MiB each per connection)\n")
    print("| phase | storescu s per round | median s | failed rounds | service RSS peak MB | VmHWM MB | "
          "threads peak |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for phase, results, rss, threads, hwm in rows:
        times = sorted(t for t, _ in results)
        median = times[len(times) // 2]
        failed = sum(1 for _, ok in results if not ok)
        shown = ", ".join(f"{t:.2f}{'' if ok else ' (failed)'}" for t, ok in results)
        print(f"| {phase} | {shown} | {median:.2f} | {failed} | {rss:.0f} | {hwm:.0f} | {threads} |")
    for reason in dict.fromkeys(FAILURES):
        print(f"\nstorescu failed ({FAILURES.count(reason)}x): {reason}")
    print(f"\nattack: connections the server closed: {attack.closed_by_server}; "
          f"MiB the server took of the streams: { {k: round(v / 2**20) for k, v in attack.streamed.items()} }")


if __name__ == "__main__":
    main()
