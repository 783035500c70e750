"""The dicom-gateway command line: exit codes and what it prints."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import RLELossless, generate_uid

from gateway.cli import STATUS_DEAD_LETTERS, main
from gateway.dicom.identity import Identity
from gateway.spool import DEAD, Job, Spool
from tests.conftest import REPO, pydicom_file


def test_check_config_accepts_the_shipped_file(capsys) -> None:
    assert main(["check-config", str(REPO / "config" / "gateway.toml")]) == 0
    out = capsys.readouterr().out
    assert "GATEWAY@127.0.0.1:11112" in out and "local (folder)" in out


def test_check_config_names_the_bad_key(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[destinations]]\nname = "a"\nkind = "dicom"\nae_title = "X"\nhost = "h"\nport = 70000\n')
    assert main(["check-config", str(bad)]) == 2
    assert "destinations[0].port: must be 1..65535, got 70000" in capsys.readouterr().err


def test_codecs_lists_name_uid_and_kind(capsys) -> None:
    assert main(["codecs"]) == 0
    out = capsys.readouterr().out
    rle = next(line for line in out.splitlines() if "1.2.840.10008.1.2.5 " in line)
    assert "RLELossless" in rle and rle.rstrip().endswith("standard")
    from gateway.codecs import all_codecs

    for codec in all_codecs():
        assert codec.uid in out
        if codec.private:
            assert any(codec.uid in line and line.rstrip().endswith("private") for line in out.splitlines())


def test_codecs_table_columns_are_aligned(capsys) -> None:
    from gateway.codecs import all_codecs

    assert main(["codecs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rows = lines[0], lines[1:]
    assert header.split() [:2] == ["name", "keyword"] and len(rows) == len(all_codecs())
    starts = [header.index("keyword"), header.index("transfer syntax UID"), header.index("kind")]
    for row, codec in zip(rows, all_codecs()):
        assert [row.index(codec.keyword, len(codec.name)), row.index(codec.uid),
                row.index("private" if codec.private else "standard", starts[2])] == starts, row


def test_compress_and_verify_a_file(tmp_path: Path, capsys) -> None:
    src = tmp_path / "ct.dcm"
    pydicom_file("CT_small.dcm").save_as(src, enforce_file_format=True)
    out = tmp_path / "ct_rle.dcm"
    assert main(["compress", "--transfer-syntax", "RLELossless", str(src), str(out)]) == 0
    assert "ratio=" in capsys.readouterr().out
    assert dcmread(out).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    assert main(["verify", str(src), str(out)]) == 0
    assert "identical" in capsys.readouterr().out


def _private_versions(path: Path) -> list[int]:
    """The version byte (header offset 4) of every frame's stream in a file of our private syntax."""
    from pydicom.encaps import generate_frames

    ds = dcmread(path)
    return [f[4] for f in generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1))]


def test_compress_writes_private_version_2_unless_told_1(tmp_path: Path, capsys) -> None:
    from gateway.codecs import private

    src = tmp_path / "ct.dcm"
    pydicom_file("CT_small.dcm").save_as(src, enforce_file_format=True)
    for argv, version in (([], 2), (["--private-version", "1"], 1), (["--private-version", "2"], 2)):
        out = tmp_path / f"ct_gwl{'_'.join(argv)}.dcm"
        assert main(["compress", "--transfer-syntax", "gwl", *argv, str(src), str(out)]) == 0
        assert "ratio=" in capsys.readouterr().out
        assert dcmread(out).file_meta.TransferSyntaxUID == private.UID
        assert _private_versions(out) == [version]
        assert main(["verify", str(src), str(out)]) == 0
        assert "identical" in capsys.readouterr().out
    assert main(["compress", "--transfer-syntax", "gwl", "--private-version", "3", str(src),
                 str(tmp_path / "no.dcm")]) == 2
    assert "--private-version: must be 1 or 2, got 3" in capsys.readouterr().err
    assert not (tmp_path / "no.dcm").exists()


def test_check_config_shows_the_private_version(tmp_path: Path, capsys) -> None:
    assert main(["check-config", str(REPO / "config" / "gateway.toml")]) == 0
    assert "private syntax version 2" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[compression]\nprivate_version = 3\n[[destinations]]\nname = "a"\nkind = "folder"\n'
                   'path = "a"\n')
    assert main(["check-config", str(bad)]) == 2
    assert "compression.private_version: must be 1 or 2, got 3" in capsys.readouterr().err


def test_verify_fails_on_one_changed_pixel(tmp_path: Path, capsys) -> None:
    ds = pydicom_file("CT_small.dcm")
    a, b = tmp_path / "a.dcm", tmp_path / "b.dcm"
    ds.save_as(a, enforce_file_format=True)
    pixels = ds.pixel_array.copy()
    pixels[10, 20] += 1
    ds.PixelData = pixels.tobytes()
    ds.save_as(b, enforce_file_format=True)
    assert main(["verify", str(a), str(b)]) == 1
    assert "different" in capsys.readouterr().out


def test_verify_exits_2_when_a_file_is_not_dicom_or_cannot_be_decoded(tmp_path: Path, capsys) -> None:
    good = tmp_path / "good.dcm"
    pydicom_file("CT_small.dcm").save_as(good, enforce_file_format=True)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    assert main(["verify", str(good), str(junk)]) == 2
    assert "junk.dcm" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "missing.dcm"), str(good)]) == 2
    assert "missing.dcm" in capsys.readouterr().err
    short = pydicom_file("CT_small.dcm")
    short.PixelData = short.PixelData[:100]  # header says 128x128x2 bytes
    short.save_as(tmp_path / "short.dcm", enforce_file_format=True)
    assert main(["verify", str(good), str(tmp_path / "short.dcm")]) == 2
    err = capsys.readouterr().err
    assert "short.dcm" in err and "cannot be decoded" in err


def test_compress_a_folder_mirrors_it(tmp_path: Path, capsys) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    pydicom_file("MR_small.dcm").save_as(src / "mr.dcm", enforce_file_format=True)
    lossy = pydicom_file("SC_rgb_jpeg_lossy_gdcm.dcm")
    lossy.save_as(src / "sub" / "lossy.dcm", enforce_file_format=True)
    dst = tmp_path / "out"
    assert main(["compress", "--transfer-syntax", "1.2.840.10008.1.2.4.80", str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert "kept    " in out and "lossy-compressed source" in out
    assert "ok      " not in out  # one line per recompressed file only with --verbose
    assert "2 file(s)" in out and "1 recompressed, 1 passed through (original copied), 0 skipped, 0 failed" in out
    assert dcmread(dst / "mr.dcm").file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    assert (dst / "sub" / "lossy.dcm").read_bytes() == (src / "sub" / "lossy.dcm").read_bytes()
    assert np.array_equal(dcmread(dst / "mr.dcm").pixel_array, dcmread(src / "mr.dcm").pixel_array)
    for written in (dst / "mr.dcm", dst / "sub" / "lossy.dcm"):
        assert written.stat().st_mode & 0o777 == 0o600, "outputs hold patient data: owner only"
    assert main(["compress", "-v", "--transfer-syntax", "JPEGLSLossless", str(src), str(tmp_path / "v")]) == 0
    assert "ok      " in capsys.readouterr().out


def test_compress_report_escapes_what_the_files_say(tmp_path: Path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    ds = pydicom_file("CT_small.dcm")
    ds.Modality = "CT\x1b]0;title\x07\x1b[2J\nforged line"  # a terminal's title, a cleared screen, a line
    ds.save_as(src / "ct.dcm", enforce_file_format=True)
    assert main(["compress", "--transfer-syntax", "rle", str(src), str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\nforged line" not in out
    assert "CT\\x1b]0;title\\x07\\x1b[2J\\x0aforged line" in out


def test_compress_skips_files_that_are_not_dicom(tmp_path: Path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    pydicom_file("CT_small.dcm").save_as(src / "ct.dcm", enforce_file_format=True)
    (src / "make_samples.py").write_text("print('a script beside the images')\n")
    (src / "notes.dcm").write_bytes(b"x" * 200)  # a .dcm name is not enough
    dst = tmp_path / "out"
    assert main(["compress", "--transfer-syntax", "RLELossless", str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped ") == 2 and "make_samples.py: not a DICOM file" in out
    assert "1 recompressed, 0 passed through (original copied), 2 skipped, 0 failed" in out
    assert "      2  not a DICOM file" in out
    assert sorted(p.name for p in dst.iterdir() if not p.name.startswith(".compress-manifest")) == ["ct.dcm"]


def test_compress_never_writes_an_output_larger_than_its_input(tmp_path: Path, capsys) -> None:
    ds = pydicom_file("CT_small.dcm")
    noise = np.random.default_rng(7).integers(0, 256, size=(ds.Rows, ds.Columns), dtype=np.uint8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            del ds[keyword]
    ds.PixelData = noise.tobytes()  # PackBits of noise grows
    src = tmp_path / "in"
    src.mkdir()
    ds.save_as(src / "noise.dcm", enforce_file_format=True)
    dst = tmp_path / "out"
    assert main(["compress", "--transfer-syntax", "RLELossless", str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert (dst / "noise.dcm").read_bytes() == (src / "noise.dcm").read_bytes()
    assert "0 recompressed, 1 passed through (original copied)" in out
    assert "rle would not shrink the pixel data" in out
    size = (src / "noise.dcm").stat().st_size
    assert size < 1e6 and f"bytes: {size} bytes in, {size} bytes out, ratio 1.00" in out


def test_compress_validates_the_target_before_touching_any_file(tmp_path: Path, capsys) -> None:
    from gateway.codecs import all_codecs

    src = tmp_path / "in"
    src.mkdir()
    pydicom_file("CT_small.dcm").save_as(src / "ct.dcm", enforce_file_format=True)
    dst = tmp_path / "out"
    assert main(["compress", "--transfer-syntax", "JPEG2000", str(src), str(dst)]) == 2
    err = capsys.readouterr().err
    assert "--transfer-syntax" in err and "no encoder for 'JPEG2000'" in err
    for codec in all_codecs():  # the choices come from the registry
        assert codec.keyword in err
    assert "ExplicitVRLittleEndian" in err
    assert not dst.exists()


def test_compress_accepts_a_codec_registered_later(tmp_path: Path, monkeypatch, capsys) -> None:
    import gateway.codecs as registry
    from gateway.cli import UsageError, resolve_target
    from dataclasses import replace

    # A stand-in: only its registration matters here.
    fake = replace(registry.get_codec("rle"), name="jpegls-near-test", uid="1.2.840.10008.1.2.4.81",
                   keyword="JPEGLSNearLossless")

    with pytest.raises(UsageError):
        resolve_target("JPEGLSNearLossless")
    registry.all_codecs()  # built-ins loaded first, so that the fake one is removed again below
    monkeypatch.setitem(registry._REGISTRY, fake.uid, fake)
    assert resolve_target("JPEGLSNearLossless") == "1.2.840.10008.1.2.4.81"
    assert resolve_target("jpegls-near-test") == "1.2.840.10008.1.2.4.81"


def test_compress_rejects_unknown_syntax(tmp_path: Path, capsys) -> None:
    assert main(["compress", "--transfer-syntax", "Nope", str(tmp_path), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--transfer-syntax" in err and "RLELossless" in err


def test_compress_argument_errors_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["compress", "--transfer-syntax", "rle", str(tmp_path / "absent"), str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    script = tmp_path / "script.py"
    script.write_text("x = 1\n")
    assert main(["compress", "--transfer-syntax", "rle", str(script), str(tmp_path / "o.dcm")]) == 2
    assert "not a DICOM file" in capsys.readouterr().err
    assert not (tmp_path / "o.dcm").exists()
    assert main(["compress", "--transfer-syntax", "rle", str(tmp_path), str(tmp_path / ".")]) == 2
    assert "is the input folder" in capsys.readouterr().err


def test_compress_never_writes_over_its_input(tmp_path: Path, capsys) -> None:
    # A folder inside the output: OUT/data/a.dcm would be both IN/a.dcm and the output of IN/data/a.dcm.
    src = tmp_path / "data"
    (src / "data").mkdir(parents=True)
    pydicom_file("CT_small.dcm").save_as(src / "a.dcm", enforce_file_format=True)
    pydicom_file("MR_small.dcm").save_as(src / "data" / "a.dcm", enforce_file_format=True)
    before = {path: path.read_bytes() for path in src.rglob("*.dcm")}
    assert main(["compress", "--transfer-syntax", "rle", str(src), str(tmp_path)]) == 2
    assert "contains the input folder" in capsys.readouterr().err
    # A single file written to itself, named or through its folder (with or without a trailing slash).
    for output in (src / "a.dcm", src, f"{src}/"):
        assert main(["compress", "--transfer-syntax", "rle", str(src / "a.dcm"), str(output)]) == 2
        assert "is the input file" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in src.rglob("*.dcm")} == before


def test_compress_a_file_into_a_new_folder_named_with_a_slash(tmp_path: Path, capsys) -> None:
    src = tmp_path / "ct.dcm"
    pydicom_file("CT_small.dcm").save_as(src, enforce_file_format=True)
    assert main(["compress", "--transfer-syntax", "rle", str(src), f"{tmp_path / 'new'}/"]) == 0
    assert dcmread(tmp_path / "new" / "ct.dcm").file_meta.TransferSyntaxUID == RLELossless


def test_compress_reports_failures_and_exits_1(tmp_path: Path, capsys) -> None:
    (tmp_path / "in").mkdir()
    for name in ("ct.dcm", "blocked.dcm"):
        pydicom_file("CT_small.dcm").save_as(tmp_path / "in" / name, enforce_file_format=True)
    (tmp_path / "o" / "blocked.dcm").mkdir(parents=True)  # the output path is taken by a folder
    assert main(["compress", "--transfer-syntax", "RLELossless", str(tmp_path / "in"), str(tmp_path / "o")]) == 1
    captured = capsys.readouterr()
    assert "FAILED  " in captured.err and "blocked.dcm" in captured.err
    assert "1 recompressed, 0 passed through (original copied), 0 skipped, 1 failed" in captured.out
    assert "failed:" in captured.out
    assert (tmp_path / "o" / "ct.dcm").is_file()
    assert not list((tmp_path / "o").glob(".*.partial"))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal(tmp_path: Path, monkeypatch, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.dcm", "b.dcm"):
        pydicom_file("CT_small.dcm").save_as(src / name, enforce_file_format=True)
    assert main(["compress", "--transfer-syntax", "RLELossless", str(src), str(tmp_path / "o1")]) == 0
    assert "2/2" not in capsys.readouterr().err  # not a terminal: no bar
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["compress", "--transfer-syntax", "RLELossless", str(src), str(tmp_path / "o2")]) == 0
    assert "2/2" in terminal.getvalue() and "file" in terminal.getvalue()


def test_help_documents_the_exit_codes(capsys) -> None:
    for argv in (["--help"], ["compress", "--help"], ["verify", "--help"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert "exit status:" in out and "0  everything done" in out and "2  bad usage" in out


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "g.toml"
    path.write_text('[spool]\ndirectory = "spool"\n[[destinations]]\nname = "pacs"\nkind = "dicom"\n'
                    'ae_title = "PACS"\nhost = "127.0.0.1"\nport = 104\n')
    return path


def test_status_lists_dead_letters_and_retry_requeues_them(tmp_path: Path, capsys) -> None:
    config = _config(tmp_path)
    spool = Spool(tmp_path / "spool")
    uid = generate_uid()
    spool.add_job(Job("i1", "pacs", identity=Identity(sop_instance_uid=uid)))
    spool.move(spool.find_job("i1", "pacs"), DEAD, attempts=3, reason="PACS answered C-STORE status 0xC000")
    assert main(["status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "dead=1" in out and uid in out and "0xC000" in out
    assert main(["retry", "--config", str(config)]) == 0
    assert "re-queued 1" in capsys.readouterr().out
    assert spool.find_job("i1", "pacs").state == "pending"
    assert main(["status", "--config", str(config)]) == 0
    assert "pending=1" in capsys.readouterr().out


def test_status_lists_the_oldest_dead_letters_and_says_how_many_more(tmp_path: Path, capsys, monkeypatch) -> None:
    """After an outage there are thousands of dead letters: `status` listed every one (5,000: 5,008 lines,
    645 kB, each manifest read); it lists the oldest and counts the rest, `--all` lists them all."""
    config = _config(tmp_path)
    spool = Spool(tmp_path / "spool")
    count = STATUS_DEAD_LETTERS + 40
    uids = [f"1.2.826.0.1.3680043.10.9.{index}" for index in range(count)]
    spool.add_jobs([Job(f"{index:020d}-{index:012x}-4d4f44", "pacs", state=DEAD, attempts=50, reason="gave up",
                        identity=Identity(sop_instance_uid=uid)) for index, uid in enumerate(uids)])
    reads: list[str] = []
    read = Spool._read
    monkeypatch.setattr(Spool, "_read", staticmethod(lambda path: (reads.append(path.name), read(path))[1]))
    assert main(["status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    listed = [line for line in out.splitlines() if " -> pacs: " in line]
    assert listed == [f"  {uid} -> pacs: attempts=50 reason=gave up" for uid in uids[:STATUS_DEAD_LETTERS]]
    assert f"the {STATUS_DEAD_LETTERS} oldest of {count}" in out and "... and 40 more" in out
    assert len(reads) == STATUS_DEAD_LETTERS
    assert main(["status", "--config", str(config), "--all"]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if " -> pacs: " in line] == [
        f"  {uid} -> pacs: attempts=50 reason=gave up" for uid in uids]
    assert "more" not in out


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve"])
    assert info.value.code == 2


def test_the_readme_pynetdicom_send_command_works_as_written(tmp_path: Path, gateway_factory) -> None:
    """The command of the README's "Try it", run from the checkout against a gateway."""
    import shlex
    import subprocess

    from tests.conftest import SAMPLES, build_config

    readme = (REPO / "README.md").read_text()
    line = next(x for x in readme.splitlines() if "-m pynetdicom storescu" in x)
    words = shlex.split(line)
    assert words[:4] == [".venv/bin/python", "-m", "pynetdicom", "storescu"] and "11112" in words
    gateway = gateway_factory(build_config(tmp_path))
    argv = [sys.executable, *words[1:]]
    argv[argv.index("11112")] = str(gateway.port)
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    sent = sorted(p for p in SAMPLES.rglob("*") if p.is_file())
    assert sent and all(p.suffix == ".dcm" for p in sent), "sample_dicom/ must hold only DICOM files"
    assert gateway.wait_idle(120)
    archived = list((tmp_path / "archive").rglob("*.dcm"))
    assert len(archived) == len(sent)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "config").glob("*.toml")))
def test_example_configs_keep_their_folders_outside_config(name: str) -> None:
    from gateway.config import load_config

    config = load_config(REPO / "config" / name)
    folders = [config.spool.directory] + [d.path for d in config.destinations if d.path is not None]
    for folder in folders:
        assert not folder.resolve().is_relative_to((REPO / "config").resolve()), f"{name}: {folder}"


def test_a_first_compress_says_it_compiles_and_the_second_loads_from_the_cache(tmp_path: Path) -> None:
    """Each run in a new process, with an empty numba cache of its own, as after an install."""
    import os
    import subprocess

    src = tmp_path / "ct.dcm"
    pydicom_file("CT_small.dcm").save_as(src, enforce_file_format=True)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    argv = [sys.executable, "-m", "gateway.cli", "compress", "--transfer-syntax", "RLELossless", str(src)]
    first = subprocess.run([*argv, str(tmp_path / "1.dcm")], capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "compiling the codec kernels" in first.stderr and "compiled " in first.stderr
    assert list((tmp_path / "numba-cache").rglob("*.nbc")), "the kernels were not cached"
    second = subprocess.run([*argv, str(tmp_path / "2.dcm")], capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "compiling" not in second.stderr and "compiled " not in second.stderr
    assert (tmp_path / "1.dcm").read_bytes() == (tmp_path / "2.dcm").read_bytes()


@pytest.mark.parametrize("command", [["codecs"], ["check-config", "config/gateway.toml"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(command: list[str]) -> None:
    """``dicom-gateway codecs | head -1``: the pipe closes under the command; no traceback, exit 1."""
    import subprocess

    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", *command], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # no reader: the first write fails with EPIPE
    with process.stderr:
        errors = process.stderr.read().decode()
    assert process.wait(timeout=60) == 1
    assert "Traceback" not in errors and "BrokenPipe" not in errors, errors
