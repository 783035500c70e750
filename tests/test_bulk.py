"""Bulk recompression on a real Dask cluster: a scheduler and two workers on loopback, started here.

Workers are killed (one mid-run: the run completes) and so is the client (a
SIGKILL'd ``dicom-gateway compress``: started again, it resumes).  Every
output is checked against its input with pydicom's own decoders, and the
manifest's pixel hashes are recomputed here with plain pydicom and hashlib.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.pixels import pixel_array
from pydicom.uid import JPEGLSLossless

from gateway.bulk import MANIFEST_NAME, BulkOptions, run
from gateway.bulk.driver import local_cores
from gateway.cli import main
from tests.conftest import REPO, free_port, make_series, pydicom_file, wait_until
from tests.corpus import CORPUS

PYTHON = sys.executable
DONE = ("recompressed", "passed", "skipped")


class Cluster:
    """A ``dask scheduler`` and ``dask worker`` processes (no nanny: killing one kills the worker)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
        self.scheduler = self._spawn("scheduler", [PYTHON, "-m", "distributed.cli.dask_scheduler", "--host",
                                                   "127.0.0.1", "--port", str(self.port), "--no-dashboard"])
        self.workers: list[subprocess.Popen] = []
        self.count = 0

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        with open(self.root / f"{name}.log", "wb") as log:  # the child keeps its own descriptor
            return subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)

    def add_worker(self) -> subprocess.Popen:
        self.count += 1
        worker = self._spawn(f"worker{self.count}", [
            PYTHON, "-m", "distributed.cli.dask_worker", self.address, "--host", "127.0.0.1", "--nthreads", "1",
            "--no-nanny", "--no-dashboard", "--name", f"w{self.count}", "--death-timeout", "60"])
        self.workers.append(worker)
        return worker

    def alive(self) -> list[subprocess.Popen]:
        return [w for w in self.workers if w.poll() is None]

    def connected(self) -> int:
        from dask.distributed import Client

        with Client(self.address, timeout="30s") as client:
            return len(client.nthreads())

    def ensure(self, workers: int) -> None:
        while len(self.alive()) < workers:
            self.add_worker()
        assert wait_until(lambda: self.connected() >= workers, timeout=120, step=0.5), "workers did not connect"

    def stop(self) -> None:
        for process in [*self.workers, self.scheduler]:
            if process.poll() is None:
                process.terminate()
        for process in [*self.workers, self.scheduler]:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    engine = Cluster(tmp_path_factory.mktemp("dask"))
    try:
        engine.ensure(2)
        yield engine
    finally:
        engine.stop()


def _noise_image():
    """An 8-bit image of noise: RLE and JPEG-LS would make it larger."""
    ds = pydicom_file("CT_small.dcm")
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            del ds[keyword]
    ds.PixelData = np.random.default_rng(3).integers(0, 256, (ds.Rows, ds.Columns), dtype=np.uint8).tobytes()
    return ds


def _archive(folder: Path, generated: int = 12, size: int = 128, corpus: int = 6) -> Path:
    """A small archive: generated series, pydicom's files, a few corpus images, noise, a note."""
    (folder / "gen" / "a").mkdir(parents=True)
    for index, ds in enumerate(make_series(generated, size, size, seed=5)):
        ds.save_as(folder / "gen" / "a" / f"{index:03d}.dcm", enforce_file_format=True)
    (folder / "bundled").mkdir()
    for name in ("MR_small.dcm", "CT_small.dcm", "SC_rgb_rle.dcm", "SC_rgb_jpeg_lossy_gdcm.dcm"):
        pydicom_file(name).save_as(folder / "bundled" / name, enforce_file_format=True)
    _noise_image().save_as(folder / "noise.dcm", enforce_file_format=True)
    (folder / "README.txt").write_text("not an image\n")
    if CORPUS is not None:
        (folder / "corpus").mkdir()
        for path in sorted((CORPUS / "CT").glob("*.dcm"))[:corpus] + sorted((CORPUS / "MR").glob("*.dcm"))[:2]:
            shutil.copy(path, folder / "corpus" / path.name)
    return folder


def _manifest(out: Path) -> dict[str, dict]:
    with contextlib.closing(sqlite3.connect(f"file:{out / MANIFEST_NAME}?mode=ro", uri=True)) as db:
        db.row_factory = sqlite3.Row
        return {row["rel"]: dict(row) for row in db.execute("SELECT * FROM files")}


def _hash(ds) -> str:
    """The proof record's pixel hash, recomputed here from its definition."""
    values = pixel_array(ds, raw=True)
    return hashlib.sha256(np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes()).hexdigest()


def _partials(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*") if p.is_file() and p.name.endswith(".tmp")]


def _check_outputs(src: Path, out: Path, rows: dict[str, dict], layout: str = "relative") -> None:
    """Every DICOM input has an output whose pixels pydicom decodes to the input's, bit for bit."""
    for rel, row in rows.items():
        assert row["outcome"] in DONE, (rel, row["reason"])
        if row["outcome"] == "skipped":
            assert row["output"] is None
            continue
        source, written = dcmread(src / rel), out / row["output"]
        if layout == "relative":
            assert row["output"] == rel
        assert written.stat().st_mode & 0o777 == 0o600
        assert written.stat().st_size == row["output_size"]
        assert hashlib.sha256(written.read_bytes()).hexdigest() == row["output_sha256"]
        if row["outcome"] == "passed":
            assert written.read_bytes() == (src / rel).read_bytes()
            continue
        result = dcmread(written)
        assert result.file_meta.TransferSyntaxUID == JPEGLSLossless == row["output_syntax"]
        assert result.SOPInstanceUID == source.SOPInstanceUID
        assert np.array_equal(result.pixel_array, source.pixel_array), rel  # pydicom's decoders, not ours
        assert row["pixel_hash"] == _hash(source)
        assert row["verified"] == 1 and "charls=" in row["verified_by"]  # JPEG-LS output is read back by CharLS
    assert not _partials(out)


def test_a_cluster_run_is_bit_exact_reported_and_resumes_without_redoing(cluster: Cluster, tmp_path: Path,
                                                                         capsys) -> None:
    src, out = _archive(tmp_path / "in"), tmp_path / "out"
    options = BulkOptions(source=src, output=out, target=JPEGLSLossless, scheduler=cluster.address)
    report = run(options, progress=False, note=print)
    rows = _manifest(out)
    assert (out / MANIFEST_NAME).stat().st_mode & 0o777 == 0o600, "paths may name patients: owner only"
    assert set(rows) == {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    _check_outputs(src, out, rows)
    assert rows["README.txt"]["outcome"] == "skipped" and rows["README.txt"]["reason"] == "not a DICOM file"
    assert not (out / "README.txt").exists()
    noise = rows["noise.dcm"]  # would grow: copied unchanged, counted
    assert noise["outcome"] == "passed" and "would not shrink" in noise["reason"]
    lossy = rows["bundled/SC_rgb_jpeg_lossy_gdcm.dcm"]
    assert lossy["outcome"] == "passed" and "lossy" in lossy["reason"]
    assert report.counts["passed"] == 2 and report.counts["skipped"] == 1 and report.counts["failed"] == 0
    assert report.counts["recompressed"] == len(rows) - 3
    lines = "\n".join(report.lines())
    assert "skipped README.txt: not a DICOM file" in capsys.readouterr().out
    assert "modality" in lines and "\n  CT " in lines and "\n  MR " in lines
    assert "ExplicitVRLittleEndian" in lines and "RLELossless" in lines
    assert "passed through, original copied:" in lines
    recompressed = [r for r in rows.values() if r["outcome"] in ("recompressed", "passed")]
    assert report.bytes_in == sum(r["size"] for r in recompressed)
    assert report.bytes_out == sum((out / r["output"]).stat().st_size for r in recompressed)

    before = {rel: (row["run"], row["finished"]) for rel, row in rows.items()}
    report = run(options, progress=False, note=print)
    assert {rel: (row["run"], row["finished"]) for rel, row in _manifest(out).items()} == before
    assert report.earlier == len(rows) and report.counts["recompressed"] == len(rows) - 3

    (out / "gen" / "a" / "003.dcm").unlink()  # an output gone missing is made again, and only it
    changed = src / "gen" / "a" / "005.dcm"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))  # an input changed
    run(options, progress=False, note=print)
    after = _manifest(out)
    redone = {rel for rel, row in after.items() if row["run"] != before[rel][0]}
    assert redone == {"gen/a/003.dcm", "gen/a/005.dcm"}
    _check_outputs(src, out, after)


def test_uid_layout_files_instances_by_study_series_sop(cluster: Cluster, tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "x").mkdir(parents=True)
    series = make_series(3, seed=2)
    for index, ds in enumerate(series):
        ds.save_as(src / "x" / f"i{index}", enforce_file_format=True)
    series[0].save_as(src / "copy-of-i0", enforce_file_format=True)  # the same instance twice: the same output
    other = make_series(1, seed=4)[0]
    other.StudyInstanceUID, other.SeriesInstanceUID = series[1].StudyInstanceUID, series[1].SeriesInstanceUID
    other.SOPInstanceUID = series[1].SOPInstanceUID  # another image under a SOP UID already used
    other.save_as(src / "z-clash", enforce_file_format=True)
    report = run(BulkOptions(source=src, output=out, target=JPEGLSLossless, layout="uid",
                             scheduler=cluster.address), progress=False, note=lambda text: None)
    rows = _manifest(out)
    for index, ds in enumerate(series):
        expected = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        if index != 1:  # the clash: below
            assert rows[f"x/i{index}"]["output"] == expected
            assert np.array_equal(dcmread(out / expected).pixel_array, ds.pixel_array)
    assert rows["copy-of-i0"]["outcome"] == "recompressed" and rows["copy-of-i0"]["output"] == rows["x/i0"]["output"]
    clash = {"x/i1": series[1], "z-clash": other}  # whichever came first is kept, the other one fails
    (winner, kept), = [(rel, ds) for rel, ds in clash.items() if rows[rel]["outcome"] == "recompressed"]
    (loser,) = set(clash) - {winner}
    assert rows[loser]["outcome"] == "failed" and "same SOP Instance UID" in rows[loser]["reason"]
    assert rows[winner]["output"] == f"{kept.StudyInstanceUID}/{kept.SeriesInstanceUID}/{kept.SOPInstanceUID}.dcm"
    assert np.array_equal(dcmread(out / rows[winner]["output"]).pixel_array, kept.pixel_array)
    assert report.counts["failed"] == 1
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST_NAME, series[0].StudyInstanceUID]
                                                           + [p.name for p in out.glob(f"{MANIFEST_NAME}-*")])


def test_the_manifest_refuses_another_target_in_the_same_folder(tmp_path: Path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    make_series(1)[0].save_as(src / "a.dcm", enforce_file_format=True)
    argv = ["compress", "--workers", "0", "--transfer-syntax", "JPEGLSLossless", str(src), str(tmp_path / "o")]
    assert main(argv) == 0
    assert "1 recompressed" in capsys.readouterr().out
    argv[4] = "RLELossless"
    assert main(argv) == 2
    assert "--transfer-syntax" in capsys.readouterr().err


def test_the_manifest_refuses_another_private_version_in_the_same_folder(tmp_path: Path, capsys) -> None:
    """A folder written with version 1 of our private syntax is not resumed with version 2 (the folder
    would hold both); the same version resumes."""
    src = tmp_path / "in"
    src.mkdir()
    make_series(1)[0].save_as(src / "a.dcm", enforce_file_format=True)
    out = tmp_path / "o"
    argv = ["compress", "--workers", "0", "--transfer-syntax", "gwl", "--private-version", "1", str(src), str(out)]
    assert main(argv) == 0
    assert "1 recompressed" in capsys.readouterr().out
    assert main(argv[:5] + argv[7:]) == 2  # the default, version 2
    assert "--private-version" in capsys.readouterr().err
    assert main(argv) == 0
    assert [run["encoding"] for run in _runs(out)] == ["version=1", "version=1"]


def test_dry_run_estimates_from_a_sample_and_writes_nothing(tmp_path: Path, capsys) -> None:
    src = _archive(tmp_path / "in", generated=8, corpus=0)
    out = tmp_path / "out"
    assert main(["compress", "--workers", "0", "--dry-run", "--sample", "5", "--transfer-syntax", "JPEGLSLossless",
                 str(src), str(out)]) == 0
    text = capsys.readouterr().out
    files = sum(1 for p in src.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    assert f"dry run: {files} file(s)" in text and "sampled 5" in text
    assert "estimated output" in text and "saving" in text and "core-hour" in text
    assert (f"{total / 1e6:.2f} MB" if total >= 1e6 else f"{total} bytes") in text
    assert not out.exists()


def _kill_mid_run(argv: list[str], env: dict[str, str], out: Path, files: int) -> tuple[dict[str, dict], int]:
    """Start `argv` on a folder of `files` files, SIGKILL it once the manifest in `out` records 8 of
    them: what it had recorded, its pid."""

    def recorded() -> dict[str, dict]:
        try:
            return {k: v for k, v in _manifest(out).items() if v["outcome"] is not None}
        except sqlite3.Error:
            return {}

    client = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: len(recorded()) >= 8, timeout=180, step=0.05), "the first run made no progress"
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait()
    first = recorded()
    assert 8 <= len(first) < files, "the client was to be killed mid-run"
    return first, client.pid


def _resume_after_kill(argv: list[str], env: dict[str, str], src: Path, out: Path, reference: Path,
                       first: dict[str, dict]) -> None:
    """Run `argv` again after a killed first run that recorded `first`: it redoes none of those,
    finishes the rest, and writes what an uninterrupted in-process run writes."""
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"{len(first)} done by an earlier run" in done.stdout
    rows = _manifest(out)
    for rel, row in first.items():  # nothing recorded before the kill was processed again
        assert (rows[rel]["run"], rows[rel]["output_sha256"]) == (row["run"], row["output_sha256"])
    assert {row["run"] for rel, row in rows.items() if rel not in first} == {2}
    _check_outputs(src, out, rows)
    run(BulkOptions(source=src, output=reference, target=JPEGLSLossless, workers=0), progress=False,
        note=lambda text: None)  # the same job without interruption, in process
    for rel in rows:
        assert (out / rel).read_bytes() == (reference / rel).read_bytes(), rel


def test_a_worker_killed_mid_run_costs_nothing(cluster: Cluster, tmp_path: Path) -> None:
    cluster.ensure(2)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for index, ds in enumerate(make_series(48, 256, 256, seed=9)):
        ds.save_as(src / f"{index:03d}.dcm", enforce_file_format=True)
    victim = cluster.alive()[0]
    seen = []

    def on_result(result: dict) -> None:
        seen.append(result["rel"])
        if len(seen) == 6:
            victim.send_signal(signal.SIGKILL)
            victim.wait()

    report = run(BulkOptions(source=src, output=out, target=JPEGLSLossless, scheduler=cluster.address,
                             in_flight=6), progress=False, note=lambda text: None, on_result=on_result)
    assert victim.poll() is not None and len(seen) >= 48
    assert report.counts["recompressed"] == 48 and report.counts["failed"] == 0
    _check_outputs(src, out, _manifest(out))


def test_a_client_killed_mid_run_resumes_where_it_stopped(cluster: Cluster, tmp_path: Path) -> None:
    cluster.ensure(2)
    src, out, reference = tmp_path / "in", tmp_path / "out", tmp_path / "reference"
    src.mkdir()
    for index, ds in enumerate(make_series(60, 256, 256, seed=11)):
        ds.save_as(src / f"{index:03d}.dcm", enforce_file_format=True)
    argv = [PYTHON, "-m", "gateway.cli", "compress", "--scheduler", cluster.address, "--in-flight", "2",
            "--transfer-syntax", "JPEGLSLossless", str(src), str(out)]
    first, _ = _kill_mid_run(argv, cluster.env, out, 60)
    time.sleep(1.0)  # tasks the dead client left running finish (or are cancelled) on the workers
    _resume_after_kill(argv, cluster.env, src, out, reference, first)


def test_a_local_dask_cluster_runs_from_the_command_line(tmp_path: Path, capsys) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for index, ds in enumerate(make_series(3, seed=6)):
        ds.save_as(src / f"{index}.dcm", enforce_file_format=True)
    argv = ["compress", "--scheduler", "local", "--workers", "1", "--transfer-syntax", "JPEGLSLossless",
            str(src), str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "Dask dashboard: http://127.0.0.1:" in captured.out and "1 worker(s), 1 thread(s)" in captured.out
    assert "3 file(s)" in captured.out and "3 recompressed" in captured.out
    _check_outputs(src, out, _manifest(out))
    assert _runs(out)[-1]["workers"].startswith("Dask tcp://127.0.0.1:")
    assert main(argv) == 0
    captured = capsys.readouterr()  # all done: no cluster is started for nothing
    assert "3 done by an earlier run" in captured.out and "Dask" not in captured.out


def _runs(out: Path) -> list[dict]:
    with contextlib.closing(sqlite3.connect(f"file:{out / MANIFEST_NAME}?mode=ro", uri=True)) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT * FROM runs ORDER BY id")]


def _pids(rows: dict[str, dict]) -> set[int]:
    return {int(row["worker"].rsplit(":", 1)[1]) for row in rows.values() if row["worker"]}


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (exited, waiting for its parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


many_cores = pytest.mark.skipif(local_cores() < 2, reason="the default uses every core: this machine has one")


@many_cores
def test_plain_compress_of_a_folder_uses_every_core_bit_exact_and_resumable(tmp_path: Path, capsys) -> None:
    src, out, reference = tmp_path / "in", tmp_path / "out", tmp_path / "reference"
    src.mkdir()
    for index, ds in enumerate(make_series(40, 256, 256, seed=12)):
        ds.save_as(src / f"{index:03d}.dcm", enforce_file_format=True)
    cores = local_cores()
    assert main(["compress", "--transfer-syntax", "JPEGLSLossless", str(src), str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{cores} local worker process(es)" in text and f"run on {cores} local process(es)" in text
    assert "40 recompressed" in text
    rows = _manifest(out)
    workers = _pids(rows)
    assert len(workers) >= 2 and os.getpid() not in workers, "the files were not spread over processes"
    assert _runs(out)[-1]["workers"] == f"{cores} local process(es)"
    _check_outputs(src, out, rows)
    assert wait_until(lambda: not any(_alive(pid) for pid in workers), timeout=10), "the pool outlived its run"

    before = {rel: (row["run"], row["finished"]) for rel, row in rows.items()}
    assert main(["compress", "--transfer-syntax", "JPEGLSLossless", str(src), str(out)]) == 0
    text = capsys.readouterr().out
    assert "40 done by an earlier run" in text and "local worker" not in text  # nothing to do: no pool
    assert {rel: (row["run"], row["finished"]) for rel, row in _manifest(out).items()} == before
    assert main(["compress", "--workers", "0", "--transfer-syntax", "JPEGLSLossless", str(src),
                 str(reference)]) == 0
    assert "run on this process" in capsys.readouterr().out
    assert _pids(_manifest(reference)) == {os.getpid()}
    for rel in rows:
        assert (out / rel).read_bytes() == (reference / rel).read_bytes(), rel


@many_cores
def test_a_pool_worker_killed_mid_run_costs_nothing(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for index, ds in enumerate(make_series(48, 256, 256, seed=9)):
        ds.save_as(src / f"{index:03d}.dcm", enforce_file_format=True)
    killed: list[int] = []
    notes: list[str] = []

    def on_result(result: dict) -> None:
        if result.get("worker") and not killed:
            pid = int(result["worker"].rsplit(":", 1)[1])
            if pid != os.getpid():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    report = run(BulkOptions(source=src, output=out, target=JPEGLSLossless, workers=2, in_flight=6),
                 progress=False, note=notes.append, on_result=on_result)
    assert killed and not _alive(killed[0])
    assert any("a worker process died" in text for text in notes), notes
    assert report.counts["recompressed"] == 48 and report.counts["failed"] == 0
    rows = _manifest(out)
    assert killed[0] in _pids(rows) and len(_pids(rows)) >= 3, "a new pool took over"
    _check_outputs(src, out, rows)


@many_cores
def test_plain_compress_killed_mid_run_resumes_and_leaves_no_worker_behind(tmp_path: Path) -> None:
    src, out, reference = tmp_path / "in", tmp_path / "out", tmp_path / "reference"
    src.mkdir()
    # Enough work that the manifest commits (every quarter second) several times before the end: with
    # 60 small files an idle machine recorded the first and then all the others in one commit.
    for index, ds in enumerate(make_series(120, 512, 512, seed=13)):
        ds.save_as(src / f"{index:03d}.dcm", enforce_file_format=True)
    argv = [PYTHON, "-m", "gateway.cli", "compress", "--transfer-syntax", "JPEGLSLossless", str(src), str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first, client_pid = _kill_mid_run(argv, env, out, 120)
    workers = _pids(first)
    assert len(workers) >= 2 and client_pid not in workers
    assert wait_until(lambda: not any(_alive(pid) for pid in workers), timeout=30, step=0.2), \
        "worker processes outlived their client"
    _resume_after_kill(argv, env, src, out, reference, first)


def test_a_folder_run_writes_the_private_version_asked_for(tmp_path: Path, capsys) -> None:
    """Version 2 of our private syntax unless `--private-version 1`; in a worker process of the pool as here."""
    from pydicom.encaps import generate_frames

    from gateway.codecs import private

    src = tmp_path / "in"
    src.mkdir()
    series = make_series(3, seed=6)
    for index, ds in enumerate(series):
        ds.save_as(src / f"{index}.dcm", enforce_file_format=True)
    for argv, version in (([], 2), (["--private-version", "1"], 1)):
        out = tmp_path / f"out{version}"
        assert main(["compress", "--workers", "1", "--transfer-syntax", "gwl", *argv, str(src), str(out)]) == 0
        assert "3 recompressed" in capsys.readouterr().out
        rows = _manifest(out)
        assert os.getpid() not in _pids(rows), "the files were to be done in a worker process"
        for index, ds in enumerate(series):
            got = dcmread(out / f"{index}.dcm")
            assert got.file_meta.TransferSyntaxUID == private.UID
            assert [f[4] for f in generate_frames(got.PixelData, number_of_frames=1)] == [version]
            assert np.array_equal(got.pixel_array, ds.pixel_array)


def test_progress_shows_files_bytes_and_savings(tmp_path: Path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for index, ds in enumerate(make_series(2, seed=8)):
        ds.save_as(src / f"{index}.dcm", enforce_file_format=True)
    run(BulkOptions(source=src, output=tmp_path / "out", target=JPEGLSLossless, workers=0), progress=True,
        note=lambda text: None)
    err = capsys.readouterr().err
    assert "2/2 files" in err and "saved" in err and "B/s" in err


def test_bulk_options_need_a_folder(tmp_path: Path, capsys) -> None:
    single = tmp_path / "a.dcm"
    make_series(1)[0].save_as(single, enforce_file_format=True)
    assert main(["compress", "--workers", "0", "--transfer-syntax", "rle", str(single), str(tmp_path / "o")]) == 2
    assert "take a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # argparse: a bad --workers is a usage error
        main(["compress", "--workers", "many", "--transfer-syntax", "rle", str(tmp_path), str(tmp_path / "o")])
    assert info.value.code == 2 and "--workers" in capsys.readouterr().err


def _strict_env() -> dict[str, str]:
    """A child's environment whose standard streams refuse what is not UTF-8, as a UTF-8 terminal's do."""
    return {**os.environ, "PYTHONPATH": str(REPO), "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8:strict",
            "PYTHONUTF8": "0"}


def test_file_names_that_are_not_utf8_are_all_processed_and_kept_exactly(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "Fran\u00e7ois").mkdir(parents=True)  # UTF-8: kept as text in the manifest, as always
    series = make_series(4, seed=21)
    series[0].save_as(src / "ok.dcm", enforce_file_format=True)
    series[1].save_as(src / "Fran\u00e7ois" / "b.dcm", enforce_file_format=True)
    latin1 = os.fsdecode(os.fsencode(src) + b"/M\xfcller.dcm")  # a name saved by a Latin-1 system
    series[2].save_as(latin1, enforce_file_format=True)
    series[3].save_as(os.fsdecode(os.fsencode(src) + b"/d\xe9faut.dcm"), enforce_file_format=True)
    os.makedirs(os.fsencode(out) + b"/d\xe9faut.dcm")  # its output path is taken by a folder: it fails
    argv = [PYTHON, "-m", "gateway.cli", "compress", "--workers", "0", "--transfer-syntax", "JPEGLSLossless",
            str(src), str(out)]
    done = subprocess.run(argv, env=_strict_env(), capture_output=True, timeout=600)
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 1, stderr  # the blocked file failed; every other one was done
    assert "Traceback" not in stderr
    assert "3 recompressed" in stdout and "1 failed" in stdout
    assert "d\\xe9faut.dcm" in stderr and "d\\xe9faut.dcm" in stdout  # its FAILED line, and the report's list
    assert sorted(os.listdir(os.fsencode(out / "Fran\u00e7ois"))) == [b"b.dcm"]
    assert b"M\xfcller.dcm" in os.listdir(os.fsencode(out))
    assert dcmread(os.fsdecode(os.fsencode(out) + b"/M\xfcller.dcm")).SOPInstanceUID == series[2].SOPInstanceUID
    with contextlib.closing(sqlite3.connect(out / MANIFEST_NAME)) as db:
        kinds = dict(db.execute("SELECT rel, typeof(rel) FROM files"))
    assert kinds == {"ok.dcm": "text", "Fran\u00e7ois/b.dcm": "text", b"M\xfcller.dcm": "blob",
                     b"d\xe9faut.dcm": "blob"}
    again = subprocess.run(argv, env=_strict_env(), capture_output=True, timeout=600)
    assert again.returncode == 1, again.stderr.decode()
    assert "3 done by an earlier run" in again.stdout.decode()  # resumed: the failed one alone is tried again


def test_an_output_folder_that_cannot_be_written_is_an_error_not_a_traceback(tmp_path: Path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    make_series(1)[0].save_as(src / "a.dcm", enforce_file_format=True)
    (tmp_path / "file").write_text("a file, not a folder\n")
    assert main(["compress", "--workers", "0", "--transfer-syntax", "rle", str(src),
                 str(tmp_path / "file" / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot write {tmp_path / 'file' / 'out'}: ")
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    if os.geteuid() != 0:  # a folder without write permission stops anyone but root
        frozen.chmod(0o500)
    elif shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(frozen)]).returncode != 0:
        pytest.skip("running as root, and chattr cannot make a folder immutable here")
    try:
        for out in (frozen, frozen / "out"):
            assert main(["compress", "--workers", "0", "--transfer-syntax", "rle", str(src), str(out)]) == 2
            assert capsys.readouterr().err.startswith(f"error: cannot write {out}: ")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(frozen)], check=True)
        else:
            frozen.chmod(0o700)


def test_a_second_run_into_an_output_folder_in_use_is_refused(tmp_path: Path, capsys) -> None:
    import fcntl

    from gateway.bulk.plan import LOCK_NAME

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    make_series(1)[0].save_as(src / "a.dcm", enforce_file_format=True)
    argv = ["compress", "--workers", "0", "--transfer-syntax", "rle", str(src), str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    partial = out / f".b.dcm.{'0' * 32}.tmp"  # a file the first run is writing
    partial.write_bytes(b"half")
    with open(out / LOCK_NAME, "rb") as held:  # the first run holds the lock as long as it runs
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(argv) == 2
        assert "another compress is writing into" in capsys.readouterr().err
        assert partial.exists(), "the refused run deleted the first one's temporary file"
    assert main(argv) == 0
    assert not partial.exists()
    assert (out / LOCK_NAME).stat().st_mode & 0o777 == 0o600


def test_an_unreachable_scheduler_is_an_error_not_a_traceback(tmp_path: Path, capsys, monkeypatch) -> None:
    import gateway.bulk.driver

    monkeypatch.setattr(gateway.bulk.driver, "SCHEDULER_CONNECT_SECONDS", 3.0)
    src = tmp_path / "in"
    src.mkdir()
    make_series(1)[0].save_as(src / "a.dcm", enforce_file_format=True)
    started = time.monotonic()
    assert main(["compress", "--scheduler", f"tcp://127.0.0.1:{free_port()}", "--transfer-syntax", "rle",
                 str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the Dask scheduler tcp://127.0.0.1:"), err
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("workers", ["0", "2"])
def test_ctrl_c_stops_a_folder_run_with_one_line_and_it_resumes(tmp_path: Path, workers: str) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for index, ds in enumerate(make_series(60, 384, 384, seed=22)):
        ds.save_as(src / f"{index:03d}.dcm", enforce_file_format=True)
    argv = [PYTHON, "-m", "gateway.cli", "compress", "--workers", workers, "--transfer-syntax", "JPEGLSLossless",
            str(src), str(out)]

    def recorded() -> int:
        try:
            return sum(1 for row in _manifest(out).values() if row["outcome"] is not None)
        except sqlite3.Error:
            return 0

    # Its own process group, as a terminal's foreground job: Ctrl-C reaches the client and its workers.
    # SIGINT as a terminal leaves it, whatever this test runs under (a shell's background job ignores it,
    # and an ignored signal stays ignored in the processes started from there).
    client = subprocess.Popen(argv, env=_strict_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert wait_until(lambda: recorded() >= 2, timeout=180, step=0.05), "the run made no progress"
        os.killpg(client.pid, signal.SIGINT)
        _, stderr = client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            os.killpg(client.pid, signal.SIGKILL)
            client.wait()
    text = stderr.decode()
    assert client.returncode == 130, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert text.strip().splitlines()[-1] == \
        "stopped (interrupted); run the same command again to resume where it stopped"
    first = recorded()
    assert first < 60, "the run was to be stopped before its end"
    done = subprocess.run(argv, env=_strict_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"{first} done by an earlier run" in done.stdout and "60 recompressed" in done.stdout
