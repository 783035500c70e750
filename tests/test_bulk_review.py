"""`compress` of a folder against a careless operator and hostile files.

Links that cannot be followed, folders that cannot be read, inputs named like
the manifest or like a temporary file, an output folder that is the input
under another name, a disk that fills up, and a dry run over an archive that
is not all DICOM.  Every run here is in this process (``--workers 0``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from pydicom import dcmread

from gateway.bulk import MANIFEST_NAME, BulkOptions, estimate, run
from gateway.bulk.driver import OutputError
from gateway.cli import main
from tests.conftest import make_series

ARGS = ["compress", "--workers", "0", "--transfer-syntax", "JPEGLSLossless"]


def _rows(out: Path) -> dict[str, dict]:
    with contextlib.closing(sqlite3.connect(f"file:{out / MANIFEST_NAME}?mode=ro", uri=True)) as db:
        db.row_factory = sqlite3.Row
        return {row["rel"]: dict(row) for row in db.execute("SELECT * FROM files")}


def _series(folder: Path, count: int, seed: int = 40, size: int = 64) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(make_series(count, size, size, seed=seed)):
        path = folder / f"{index:02d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_links_that_lead_nowhere_and_unreadable_folders_are_reported_not_a_traceback(
        tmp_path: Path, capsys, monkeypatch) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    _series(src, 2)
    _series(src / "locked", 1, seed=41)
    (src / "loop").symlink_to("loop")
    (src / "ring1").symlink_to("ring2")
    (src / "ring2").symlink_to("ring1")
    (src / "dangling").symlink_to(tmp_path / "nowhere")
    (src / "folder-link").symlink_to(src / "locked")
    real_scandir = os.scandir

    def scandir(path=".", *args):  # as a folder without read permission is to anyone but root
        if os.fspath(path).endswith("locked"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path, *args)

    monkeypatch.setattr(os, "scandir", scandir)
    assert main(ARGS + [str(src), str(out)]) == 1  # the folder that cannot be read failed
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    rows = _rows(out)
    assert {rel: (row["outcome"], row["reason"]) for rel, row in rows.items() if row["outcome"] != "recompressed"} == {
        "loop": ("skipped", "a loop of symbolic links"),
        "ring1": ("skipped", "a loop of symbolic links"),
        "ring2": ("skipped", "a loop of symbolic links"),
        "dangling": ("skipped", "a symbolic link to nothing"),
        "folder-link": ("skipped", "a symbolic link to a folder (not followed)"),
        "locked": ("failed", f"PermissionError: [Errno 13] Permission denied: '{src / 'locked'}'"),
    }
    assert sorted(rel for rel, row in rows.items() if row["outcome"] == "recompressed") == ["00.dcm", "01.dcm"]
    assert "locked" in captured.out and "1 failed" in captured.out
    monkeypatch.setattr(os, "scandir", real_scandir)  # readable again: its file is done, the rest is not redone
    assert main(ARGS + [str(src), str(out)]) == 0
    assert "; 7 done by an earlier run" in capsys.readouterr().out
    assert _rows(out)["locked/00.dcm"]["outcome"] == "recompressed"
    assert (out / "locked" / "00.dcm").is_file()


def test_an_input_named_like_the_manifest_never_replaces_it(tmp_path: Path, capsys) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    first, second = _series(src, 2)
    first.rename(src / MANIFEST_NAME)  # a DICOM file under the manifest's name
    assert main(ARGS + [str(src), str(out)]) == 1
    assert "the name of the manifest's own file" in capsys.readouterr().out
    rows = _rows(out)  # still the manifest, not a DICOM file
    assert rows[MANIFEST_NAME]["outcome"] == "failed"
    assert rows[second.name]["outcome"] == "recompressed"
    assert (out / MANIFEST_NAME).read_bytes()[:16] == b"SQLite format 3\x00"
    assert main(ARGS + [str(src), str(out)]) == 1
    assert "1 done by an earlier run" in capsys.readouterr().out


def test_an_input_named_like_a_temporary_file_keeps_its_output(tmp_path: Path, capsys) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    first, _ = _series(src / "sub", 2)
    name = f".scan.{'0123456789abcdef' * 2}.tmp"
    first.rename(first.parent / name)
    assert main(ARGS + [str(src), str(out)]) == 0
    assert "2 recompressed" in capsys.readouterr().out
    kept = out / "sub" / name
    assert kept.is_file(), "the output was deleted as if it were the debris of an interrupted write"
    assert dcmread(kept).SOPInstanceUID == dcmread(src / "sub" / name).SOPInstanceUID
    stale = out / "sub" / f".01.dcm.{'f' * 32}.tmp"  # a real leftover still goes
    stale.write_bytes(b"half")
    assert main(ARGS + [str(src), str(out)]) == 0
    assert "2 done by an earlier run" in capsys.readouterr().out
    assert kept.is_file() and not stale.exists()


def test_an_output_folder_that_holds_the_input_is_refused_whatever_its_name(tmp_path: Path) -> None:
    out = tmp_path / "out"
    src = out / "a"
    first = _series(src, 1, seed=42)[0]
    _series(src / "a", 1, seed=43)  # in/a/00.dcm would be written over in/00.dcm
    before = first.read_bytes()
    with pytest.raises(OutputError, match="contains the input folder"):
        run(BulkOptions(source=src, output=out, target="1.2.840.10008.1.2.4.80", workers=0), note=lambda _: None)
    assert first.read_bytes() == before
    assert not (out / MANIFEST_NAME).exists()


def test_an_output_folder_that_is_the_input_by_a_bind_mount_is_refused(tmp_path: Path, capsys) -> None:
    src, view = tmp_path / "in", tmp_path / "view"
    paths = _series(src, 2, seed=44)
    view.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "--bind", str(src), str(view)],
                                           capture_output=True).returncode != 0:
        pytest.skip("a bind mount needs root here")
    try:
        before = [p.read_bytes() for p in paths]
        assert main(ARGS + [str(src), str(view)]) == 2
        assert "is the input folder" in capsys.readouterr().err
        assert [p.read_bytes() for p in paths] == before
        assert sorted(os.listdir(src)) == ["00.dcm", "01.dcm"]  # not even a lock file
    finally:
        subprocess.run(["umount", "-l", str(view)], check=True)


def test_a_full_disk_stops_the_run_with_one_line_and_it_resumes(tmp_path: Path, capsys, monkeypatch) -> None:
    import gateway.bulk.task

    src, out = tmp_path / "in", tmp_path / "out"
    _series(src, 6, seed=45)
    real_place, placed = gateway.bulk.task._place, []

    def place(dst, data, digest, *args):
        if len(placed) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        placed.append(dst)
        real_place(dst, data, digest, *args)

    monkeypatch.setattr(gateway.bulk.task, "_place", place)
    assert main(ARGS + [str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {out}: ") and "No space left on device" in err
    assert err.count("FAILED") == 0, "every file after the disk filled up was tried and failed"
    rows = _rows(out)
    assert sorted(r["outcome"] or "pending" for r in rows.values()) == ["pending"] * 4 + ["recompressed"] * 2
    monkeypatch.setattr(gateway.bulk.task, "_place", real_place)
    assert main(ARGS + [str(src), str(out)]) == 0
    assert "2 done by an earlier run" in capsys.readouterr().out


def test_a_manifest_that_cannot_be_written_any_more_is_an_error_not_a_traceback(tmp_path: Path, capsys,
                                                                                 monkeypatch) -> None:
    from gateway.bulk.manifest import Manifest

    src, out = tmp_path / "in", tmp_path / "out"
    _series(src, 3, seed=46)
    real_record, recorded = Manifest.record, []

    def record(self, result, verify):
        if recorded:  # as SQLite does on a full disk: the transaction is rolled back
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        recorded.append(result["rel"])
        real_record(self, result, verify)

    monkeypatch.setattr(Manifest, "record", record)
    assert main(ARGS + [str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {out}: database or disk is full"), err
    monkeypatch.setattr(Manifest, "record", real_record)
    assert main(ARGS + [str(src), str(out)]) == 0


def test_a_real_full_disk(tmp_path: Path, capsys) -> None:
    src, small = tmp_path / "in", tmp_path / "small"
    _series(src, 12, seed=47, size=128)
    small.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(small)],
                                           capture_output=True).returncode != 0:
        pytest.skip("a small tmpfs needs root here")
    out = small / "out"
    try:
        assert main(ARGS + [str(src), str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: cannot write {out}: "), err
        assert "Traceback" not in err
        assert not [p for p in out.rglob(".*.tmp")]
    finally:
        subprocess.run(["umount", "-l", str(small)], check=True)
    assert main(ARGS + [str(src), str(tmp_path / "roomy")]) == 0


def test_a_dry_run_counts_only_what_a_run_writes(tmp_path: Path, capsys) -> None:
    src = tmp_path / "in"
    _series(src, 4, seed=48)
    for index in range(4):  # videos and reports: walked over, never written
        (src / f"video{index}.mp4").write_bytes(os.urandom(200_000))
    options = BulkOptions(source=src, output=tmp_path / "out", target="1.2.840.10008.1.2.4.80", workers=0,
                          sample=8)
    guess = estimate(options, note=lambda _: None)
    report = run(options, note=lambda _: None)
    assert report.counts["skipped"] == 4
    # the whole input was sampled: the projection is what the run did, and nothing is uncertain
    assert guess.projected_out == report.bytes_out == guess.low == guess.high
    assert guess.projected_written == report.bytes_in
    assert main(ARGS + ["--dry-run", "--sample", "8", str(src), str(tmp_path / "out2")]) == 0
    text = capsys.readouterr().out
    saved = report.bytes_in - report.bytes_out
    assert f"saving {saved} bytes ({saved / report.bytes_in:.0%})" in text, text
    shutil.rmtree(tmp_path / "out")


def test_files_already_in_the_output_folder_that_no_run_wrote_are_never_replaced(tmp_path: Path, capsys) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    first, second, third = _series(src, 3, seed=49)
    other = _series(out, 1, seed=50)[0]  # OUT is another archive: its 00.dcm is another image
    theirs = other.read_bytes()
    (out / "sub").mkdir()
    (out / "sub" / "link.dcm").symlink_to(second)  # a link into the input
    (src / "sub").mkdir()
    second.rename(src / "sub" / "link.dcm")
    second = src / "sub" / "link.dcm"
    mine = second.read_bytes()
    assert main(ARGS + [str(src), str(out)]) == 1
    text = capsys.readouterr().out
    assert "2 failed" in text and "not overwritten" in text
    assert other.read_bytes() == theirs and second.read_bytes() == mine
    assert (out / third.name).is_file()
    # an output this folder's manifest records is replaced when its input changes
    ds = dcmread(third)
    ds.SeriesDescription = "changed"
    ds.save_as(third, enforce_file_format=True)
    os.utime(third, ns=(1, 1))
    assert main(ARGS + [str(src), str(out)]) == 1
    assert dcmread(out / third.name).SeriesDescription == "changed"
    assert other.read_bytes() == theirs and second.read_bytes() == mine


def test_links_to_a_pipe_or_a_device_are_skipped_not_read(tmp_path: Path, capsys) -> None:
    import signal

    src = tmp_path / "in"
    _series(src, 1, seed=51)
    os.mkfifo(tmp_path / "fifo")
    (src / "pipe.dcm").symlink_to(tmp_path / "fifo")  # opening it would wait for a writer for ever
    (src / "zero.dcm").symlink_to("/dev/zero")

    def stuck(*_):
        raise TimeoutError("the run is reading from a pipe")

    previous = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(60)
    try:
        assert main(ARGS + [str(src), str(tmp_path / "out")]) == 0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    rows = _rows(tmp_path / "out")
    assert {rel: row["reason"] for rel, row in rows.items() if row["outcome"] == "skipped"} == {
        "pipe.dcm": "not a regular file (a pipe, a socket or a device)",
        "zero.dcm": "not a regular file (a pipe, a socket or a device)"}


def _populations(seed: int) -> dict[str, list[tuple[int, float]]]:
    """Synthetic archives as (file size, output / input): sizes spanning four orders of magnitude."""
    import math
    import random

    rng = random.Random(seed)
    lognormal = [(max(1, int(math.exp(rng.gauss(13, 1.5)))),
                  0.0 if rng.random() < 0.1 else min(1.0, max(0.2, rng.gauss(0.5, 0.15)))) for _ in range(2000)]
    heavy = [(max(1, int(math.exp(rng.gauss(12, 2.0)))), min(1.0, max(0.15, rng.gauss(0.45, 0.2))))
             for _ in range(2000)]
    mixture = []  # reports passed through, CT slices, multi-frame series, a few videos (skipped) and cine loops
    for _ in range(2000):
        u = rng.random()
        if u < 0.6:
            mixture.append((rng.randint(5_000, 50_000), 1.0))
        elif u < 0.95:
            mixture.append((rng.randint(400_000, 600_000), rng.uniform(0.35, 0.5)))
        elif u < 0.99:
            mixture.append((rng.randint(5_000_000, 50_000_000), rng.uniform(0.3, 0.6)))
        else:
            mixture.append((rng.randint(100_000_000, 400_000_000), rng.choice([0.0, 0.9])))
    rare = [(max(1, int(math.exp(rng.gauss(13, 1.0)))),  # 5% of the bytes unlike the rest
             0.0 if rng.random() < 0.05 else min(1.0, max(0.8, rng.gauss(0.95, 0.05)))) for _ in range(2000)]
    return {"lognormal": lognormal, "heavy": heavy, "mixture": mixture, "rare": rare}


def test_the_dry_runs_90_percent_interval_holds_the_true_output_at_least_85_percent_of_the_time() -> None:
    import random

    from gateway.bulk.plan import Item
    from gateway.bulk.sample import draw_by_size, project

    coverage = {}
    for name, population in _populations(1).items():
        items = [Item(str(index), size, 0) for index, (size, _) in enumerate(population)]
        ratio = {str(index): r for index, (_, r) in enumerate(population)}
        truth = sum(size * r for size, r in population)
        rng, held, trials = random.Random(7), 0, 300
        for _ in range(trials):
            draws = draw_by_size(items, 50, rng)
            assert not draws.census and len(draws.drawn) == 50
            _, low, high = project([ratio[item.rel] for item in draws.drawn], draws.total)
            held += low <= truth <= high
        coverage[name] = held / trials
    assert all(value >= 0.85 for value in coverage.values()), coverage


def test_draws_by_size_pick_a_file_as_often_as_its_share_of_the_bytes() -> None:
    import random

    from gateway.bulk.plan import Item
    from gateway.bulk.sample import draw_by_size

    items = [Item("empty", 0, 0), Item("small", 100, 0), Item("large", 900, 0), Item("medium", 500, 0)]
    counts: Counter[str] = Counter()
    rng = random.Random(3)
    for _ in range(2000):
        counts.update(item.rel for item in draw_by_size(items, 3, rng).drawn)
    total = sum(counts.values())
    assert counts["empty"] == 0
    for rel, size in (("small", 100), ("large", 900), ("medium", 500)):
        assert abs(counts[rel] / total - size / 1500) < 0.02, counts
    census = draw_by_size(items, 4, rng)
    assert census.census and [item.rel for item in census.drawn] == ["empty", "small", "large", "medium"]


def test_a_dry_run_over_identical_files_still_states_an_interval(tmp_path: Path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    ds = make_series(1, 64, 64, seed=52)[0]
    for index in range(12):  # the same image under twelve names: every draw alike
        ds.save_as(src / f"{index:02d}.dcm", enforce_file_format=True)
    options = BulkOptions(source=src, output=tmp_path / "out", target="1.2.840.10008.1.2.4.80", workers=0,
                          sample=4)
    guess = estimate(options, note=lambda _: None)
    assert guess.low < guess.projected_out < guess.high <= guess.bytes_in
    assert main(ARGS + ["--dry-run", "--sample", "4", str(src), str(tmp_path / "out2")]) == 0
    text = capsys.readouterr().out
    assert "90% interval" in text and "lies in it with 90% confidence" in text and "by size" in text, text


def _crashing_compress_file(source_root: str, output_root: str, rel: str, target: str, **kwargs) -> dict:
    """The task, run in a pool worker, as if a decoder in C crashed the process on the files named poison.

    The others take a moment first, so that they are in flight in the same pool when it breaks."""
    import resource
    import signal
    import time

    from gateway.bulk.task import compress_file

    if "poison" in rel:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
        os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(0.3)
    return compress_file(source_root, output_root, rel, target, **kwargs)


def test_a_file_that_kills_its_pool_worker_fails_alone_and_its_neighbours_are_done(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    import gateway.bulk.driver

    src, out = tmp_path / "in", tmp_path / "out"
    paths = _series(src, 6, seed=53)
    paths[0].rename(src / "00-poison.dcm")  # submitted first: its neighbours are all in flight when it crashes
    monkeypatch.setattr(gateway.bulk.driver, "compress_file", _crashing_compress_file)
    notes: list[str] = []
    report = run(BulkOptions(source=src, output=out, target="1.2.840.10008.1.2.4.80", workers=2, in_flight=8),
                 progress=False, note=notes.append)
    rows = _rows(out)
    assert {rel: row["outcome"] for rel, row in rows.items()} == {
        "00-poison.dcm": "failed", **{f"{index:02d}.dcm": "recompressed" for index in range(1, 6)}}, rows
    assert report.counts["recompressed"] == 5 and report.counts["failed"] == 1
    assert rows["00-poison.dcm"]["reason"].startswith("its worker process died processing it, alone, 3 times")
    assert any("tried again, each alone" in text for text in notes), notes
    assert not (out / "00-poison.dcm").exists()


def test_uid_layout_an_input_changed_after_its_output_was_written_is_told_so_on_every_run(tmp_path: Path,
                                                                                          capsys) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    first, _ = _series(src, 2, seed=54)
    argv = ARGS + ["--layout", "uid", str(src), str(out)]
    assert main(argv) == 0
    output = out / _rows(out)[first.name]["output"]
    written = output.read_bytes()
    ds = dcmread(first)
    ds.SeriesDescription = "changed"  # the same instance (its UIDs), other content
    ds.save_as(first, enforce_file_format=True)
    os.utime(first, ns=(1, 1))
    for _ in range(2):  # the run after the first failure too: the manifest still knows whose output it is
        assert main(argv) == 1
        capsys.readouterr()
        reason = _rows(out)[first.name]["reason"]
        assert "was written by an earlier run from this input, which has changed since" in reason, reason
        assert "move that output away" in reason and "another input" not in reason, reason
        assert output.read_bytes() == written
    output.rename(tmp_path / "old.dcm")
    assert main(argv) == 0
    assert dcmread(output).SeriesDescription == "changed"
    assert _rows(out)[first.name]["outcome"] == "recompressed"


def test_reasons_with_nested_parentheses_are_grouped_without_a_stray_parenthesis() -> None:
    from gateway.bulk.report import reason_group

    assert reason_group("recompressed file would not be smaller (1200 bytes (3 frames), 1000 in); original "
                        "copied") == "recompressed file would not be smaller; original copied"
    assert reason_group("not decodable (frame 2 (of 3) ends early (at byte 17)) in part (a)") == "not decodable in part"
    assert reason_group("Errno 5 (input/output error") == "Errno N (input/output error"  # unbalanced: kept as is
    assert reason_group("a)b (c) d") == "a)b d"


def _compress_docs() -> dict[str, str]:
    """The compress parts of the operator's docs."""
    root = Path(__file__).resolve().parent.parent / "docs"
    operations = (root / "operations.md").read_text()
    scaling = (root / "scaling.md").read_text()
    return {"operations.md": operations[operations.index("## Offline tools"):operations.index("## Performance")],
            "scaling.md": scaling[scaling.index("## Recompressing an archive"):scaling.index("## The live gateway")]}


@pytest.mark.parametrize("phrase, source", [
    ("not a regular file (a pipe, a socket or a device)", "task.py"),
    ("a symbolic link to a folder (not followed)", "task.py"),
    ("not overwritten", "task.py"),
    ("free space and run the", "driver.py"),
    ("lies in it with 90% confidence", "driver.py"),
    ("sampled 50 draw(s) by size", None),
    ("only regular files are read", None),
    ("reserved at the top of `OUT`", None),
    ("-journal", "plan.py"),
    ("PermissionError", None),
])
def test_the_compress_docs_tell_what_a_run_reads_refuses_and_says(phrase: str, source: str | None) -> None:
    """Links and unreadable folders, the manifest's reserved names, files in OUT compress did not write, a
    full disk, the dry run: each documented where an operator of compress reads, in the words it prints."""
    for name, text in _compress_docs().items():
        assert phrase.lower() in " ".join(text.split()).lower(), f"{name} does not say {phrase!r}"
    if source is not None:  # the words quoted are those the code prints
        code = (Path(__file__).resolve().parent.parent / "gateway" / "bulk" / source).read_text()
        assert phrase in code, f"{source} no longer says {phrase!r}"
