"""Shared fixtures of the service tests: free ports, configs, peers, Orthanc.

Everything binds 127.0.0.1 on ports found free at run time.  One Orthanc is
started per test session (only when a test asks for it) and emptied between
tests.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from gateway.config import Config, parse_config
from gateway.net.scp import ACCEPTED_SYNTAXES
from gateway.service import Gateway
from tests.tools import program, require_dcmtk

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_dicom"


def pytest_configure(config: pytest.Config) -> None:
    """Drop cached codec kernels compiled from older source (see gateway.kernelcache)."""
    from gateway.kernelcache import refresh

    refresh()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port` right now."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_serve(config: Path, log: Path) -> subprocess.Popen:
    """``dicom-gateway serve --config `config``` in a child process, its output appended to `log`."""
    with open(log, "ab") as handle:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
                                stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)


def stop_process(process: subprocess.Popen, timeout: float = 60) -> int | None:
    """SIGTERM `process` (if it still runs) and wait for it; kill it if it does not stop in `timeout`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@contextlib.contextmanager
def dcmtk_storescp(folder: Path, ae_title: str, out: Path, *options: str) -> Iterator[int]:
    """DCMTK's storescp on a free port with `options` (by default ``+xa``: every syntax it knows), writing
    what it gets into `out` as received; its log is `folder`/storescp.log.  Yields the port."""
    program_path = require_dcmtk("storescp")
    port = free_port()
    with open(folder / "storescp.log", "wb") as log:
        process = subprocess.Popen([program_path, "-aet", ae_title, *(options or ("+xa",)), "-od", str(out),
                                    str(port)],
                                   stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, TCP_NODELAY="1"))
        try:
            assert wait_until(lambda: process.poll() is not None or listening(port), timeout=30), \
                "storescp did not start listening"
            assert process.poll() is None, (folder / "storescp.log").read_text()
            yield port
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def pydicom_file(name: str) -> Dataset:
    """One of pydicom's bundled test files."""
    return dcmread(get_testdata_file(name))


def build_config(root: Path, destinations: list[dict[str, Any]] | None = None, **sections: Any) -> Config:
    """A validated config rooted at `root`, listening on a free port, fast retries."""
    data: dict[str, Any] = {
        "server": {"ae_title": "GATEWAY", "host": "127.0.0.1", "port": free_port()},
        "spool": {"directory": "spool"},
        "compression": {"transfer_syntax": "RLELossless", "processes": 0},
        "retry": {"max_attempts": 20, "base_seconds": 0.2, "cap_seconds": 1.0, "probe_seconds": 0.2},
        "destinations": destinations or [{"name": "local", "kind": "folder", "path": "archive"}],
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_config(data, root)


@pytest.fixture
def gateway_factory() -> Iterator[Callable[[Config], Gateway]]:
    """Start in-process gateways; all are stopped at teardown."""
    started: list[Gateway] = []

    def start(config: Config) -> Gateway:
        gateway = Gateway(config).start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@contextlib.contextmanager
def small_tmpfs(root: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (``mount -o size=``) mounted at ``root/small`` (root only: the test skips otherwise)."""
    mount = root / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here (needs root): {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


class _LostResponses(logging.Handler):
    """Counts the responses pynetdicom's requestor thread `name` took off its own queue and dropped.

    A race in pynetdicom: ``send_c_store`` pauses the association's reactor
    and waits until it says it is paused, but the reactor says so just before
    it goes on, so now and then it takes the C-STORE response first, logs it
    as an unexpected service message and drops it, and ``send_c_store`` waits
    out its DIMSE timeout for an answer the gateway gave.
    """

    def __init__(self, name: str) -> None:
        super().__init__(logging.WARNING)
        self.name, self.count = name, 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.threadName == self.name and "unexpected C-STORE service message" in record.getMessage():
            self.count += 1


def send(port: int, datasets: list[Dataset], *, called: str = "GATEWAY", calling: str = "MODALITY",
         syntaxes: list[str] | None = None) -> list[int]:
    """C-STORE `datasets` over one association; the statuses (-1: no answer).

    A response pynetdicom itself lost (:class:`_LostResponses`) is asked for
    again on a new association: the gateway answered it, and a modality
    would send the instance again after its timeout.
    """
    ae = AE(ae_title=calling)
    pairs: list[tuple[str, str]] = []
    for ds in datasets:
        for ts in [str(ds.file_meta.TransferSyntaxUID), *(syntaxes or [])]:
            if (ds.SOPClassUID, ts) not in pairs:
                pairs.append((ds.SOPClassUID, ts))
    for sop, ts in pairs:  # one context per syntax: the peer accepts one syntax per context
        ae.add_requested_context(sop, [ts])

    def associate() -> tuple[Any, _LostResponses]:
        assoc = ae.associate("127.0.0.1", port, ae_title=called)
        assert assoc.is_established, "association with the gateway failed"
        lost = _LostResponses(assoc.name)
        logging.getLogger("pynetdicom.association").addHandler(lost)
        return assoc, lost

    assoc, lost = associate()
    statuses = []
    try:
        for ds in datasets:
            rsp = assoc.send_c_store(ds)
            if "Status" not in rsp and lost.count:
                logging.getLogger("pynetdicom.association").removeHandler(lost)
                assoc.abort()
                assoc, lost = associate()
                rsp = assoc.send_c_store(ds)
            statuses.append(int(rsp.Status) if "Status" in rsp else -1)
    finally:
        logging.getLogger("pynetdicom.association").removeHandler(lost)
        assoc.release()
    return statuses


class DicomPeer:
    """A pynetdicom C-STORE SCP keeping what it receives, startable and stoppable."""

    def __init__(self, port: int, ae_title: str = "ARCHIVE", syntaxes: list[str] | None = None,
                 status: int = 0x0000, idle_timeout: float | None = None) -> None:
        self.port = port
        self.ae_title = ae_title
        self.syntaxes = syntaxes
        self.status = status
        self.idle_timeout = idle_timeout  # seconds before the peer aborts a silent association
        self.received: list[Dataset] = []
        self.lock = threading.Lock()
        self.server = None
        self.associations = 0

    def _on_store(self, event: evt.Event) -> int:
        if self.status != 0x0000:
            return self.status
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self.lock:
            self.received.append(ds)
        return 0x0000

    def _on_open(self, event: evt.Event) -> None:
        with self.lock:
            self.associations += 1

    def start(self) -> DicomPeer:
        ae = AE(ae_title=self.ae_title)
        if self.idle_timeout is not None:
            ae.network_timeout = self.idle_timeout
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, self.syntaxes or list(ACCEPTED_SYNTAXES))
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._on_store), (evt.EVT_ACCEPTED, self._on_open)])
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def by_uid(self) -> dict[str, Dataset]:
        with self.lock:
            return {str(ds.SOPInstanceUID): ds for ds in self.received}


@pytest.fixture
def peer_factory() -> Iterator[Callable[..., DicomPeer]]:
    """Create DICOM peers on free ports (not started); all stopped at teardown."""
    peers: list[DicomPeer] = []

    def make(**kwargs: Any) -> DicomPeer:
        peer = DicomPeer(free_port(), **kwargs)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.stop()


# ------------------------------------------------------------------ Orthanc


class Orthanc:
    """A real Orthanc on loopback, driven over its REST API."""

    def __init__(self, executable: str, root: Path, extra: dict[str, Any] | None = None) -> None:
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.aet = "ORTHANC"
        self.root = root
        config = {
            "Name": "gateway-tests",
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "StorageDirectory": str(root / "storage"),
            "IndexDirectory": str(root / "index"),
            "DicomCheckCalledAet": False,
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "Plugins": [],
            "DicomTlsEnabled": False,
            # Refuse the JPEG family (JPEG, JPEG lossless) and JPEG-LS: a real
            # peer that turns syntaxes down, for the fallback tests.
            "JpegTransferSyntaxAccepted": False,
            "JpegLosslessTransferSyntaxAccepted": False,
        }
        config.update(extra or {})  # DICOM TLS, plugins, Lua scripts, modalities of a test's own Orthanc
        (root / "orthanc.json").write_text(json.dumps(config))
        self.log = open(root / "orthanc.log", "wb")
        env = dict(os.environ, TCP_NODELAY="1")
        self.process = subprocess.Popen([executable, str(root / "orthanc.json")], stdout=self.log,
                                        stderr=subprocess.STDOUT, env=env, cwd=root)
        if not wait_until(self._ready, timeout=60):
            self.stop()
            raise RuntimeError(f"Orthanc did not start; see {root / 'orthanc.log'}")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            return True  # exited: stop waiting, reported below
        try:
            self.get("/system")
            return True
        except (OSError, urllib.error.URLError):
            return False

    def request(self, method: str, path: str, data: bytes | None = None) -> bytes:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", method=method, data=data)
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.read()

    def get(self, path: str) -> Any:
        return json.loads(self.request("GET", path))

    def instances(self) -> list[str]:
        return list(self.get("/instances"))

    def file(self, instance: str) -> bytes:
        return self.request("GET", f"/instances/{instance}/file")

    def clear(self) -> None:
        for patient in self.get("/patients"):
            self.request("DELETE", f"/patients/{patient}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


@pytest.fixture(scope="session")
def orthanc_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    executable = program("Orthanc")
    if executable is None:
        pytest.skip("Orthanc is not installed (Debian package 'orthanc')")
    server = Orthanc(executable, tmp_path_factory.mktemp("orthanc"))
    if server.process.poll() is not None:
        pytest.fail(f"Orthanc exited at start: {(server.root / 'orthanc.log').read_text()[-2000:]}")
    yield server
    server.stop()


@pytest.fixture
def orthanc(orthanc_session: Orthanc) -> Iterator[Orthanc]:
    """The session's Orthanc, emptied before the test."""
    orthanc_session.clear()
    yield orthanc_session


DICOMWEB_PLUGIN = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")
UNCOMMITTABLE = "UNCOMMITTABLE"

# Orthanc answers Success to a C-STORE (or STOW-RS) of an instance its filter
# discards, then cannot commit it: the case storage commitment exists for.
_DISCARD_FILTER = f"""
function ReceivedInstanceFilter(dicom, origin, info)
   return dicom.ImageComments ~= '{UNCOMMITTABLE}'
end
"""


@pytest.fixture(scope="session")
def orthanc_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """A second Orthanc with the DICOMweb plugin (STOW-RS at ``/dicom-web``), storage commitment SCP, and a
    filter that silently discards instances whose Image Comments are :data:`UNCOMMITTABLE`."""
    executable = program("Orthanc")
    if executable is None:
        pytest.skip("Orthanc is not installed (Debian package 'orthanc')")
    plugin = next((p for p in DICOMWEB_PLUGIN if Path(p).exists()), None)
    if plugin is None:
        pytest.skip("Orthanc's DICOMweb plugin is not installed (Debian package 'orthanc-dicomweb')")
    root = tmp_path_factory.mktemp("orthanc-web")
    (root / "filter.lua").write_text(_DISCARD_FILTER)
    server = Orthanc(executable, root, extra={
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "LuaScripts": [str(root / "filter.lua")],
        "JpegTransferSyntaxAccepted": True,
        "JpegLosslessTransferSyntaxAccepted": True,
    })
    if server.process.poll() is not None:
        pytest.fail(f"Orthanc exited at start: {(server.root / 'orthanc.log').read_text()[-2000:]}")
    yield server
    server.stop()


def copy_tree_files(files: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy(path, folder / path.name)
    return folder


def make_series(count: int, rows: int = 128, columns: int = 128, seed: int = 0) -> list[Dataset]:
    """A generated CT series: CT_small's attributes, new UIDs, smooth 12-bit pixels."""
    import numpy as np
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    study, series = generate_uid(), generate_uid()
    y, x = np.mgrid[0:rows, 0:columns]
    datasets = []
    for index in range(count):
        ds = pydicom_file("CT_small.dcm")
        base = 1000 + 800 * np.sin((x + index) / 9.0) * np.cos(y / 13.0)
        pixels = np.clip(base + rng.normal(0, 20, (rows, columns)), 0, 4095).astype(np.uint16)
        ds.Rows, ds.Columns = rows, columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels.tobytes()
        for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
            if keyword in ds:
                del ds[keyword]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = index + 1
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.set_original_encoding(False, True, ds.original_character_set)
        datasets.append(ds)
    return datasets


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that reads the corpus ``corpus`` (``-m "not corpus"`` leaves them out).

    That is every test parametrised with a manifest row and every test that
    asks for the corpus with ``needs_corpus``.
    """
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        rows = any(isinstance(v, dict) and "sha256_of_pixel_array" in v for v in params.values())
        needs = any(m.name == "skipif" and "corpus" in str(m.kwargs.get("reason", "")) for m in item.iter_markers())
        if rows or needs:
            item.add_marker(pytest.mark.corpus)


@pytest.fixture
def gateway_logger() -> Iterator[logging.Logger]:
    """The gateway's logger, its handlers put back afterwards."""
    logger = logging.getLogger("gateway")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    for handler in saved[0]:
        logger.addHandler(handler)
    logger.propagate, logger.level = saved[1], saved[2]
