"""The dicom-gateway command line: exit codes and what it prints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from gateway.cli import main
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


def test_compress_and_verify_a_file(tmp_path: Path, capsys) -> None:
    src = tmp_path / "ct.dcm"
    pydicom_file("CT_small.dcm").save_as(src, enforce_file_format=True)
    out = tmp_path / "ct_rle.dcm"
    assert main(["compress", "--transfer-syntax", "RLELossless", str(src), str(out)]) == 0
    assert "ratio=" in capsys.readouterr().out
    assert dcmread(out).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    assert main(["verify", str(src), str(out)]) == 0
    assert "identical" in capsys.readouterr().out


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


def test_compress_a_folder_mirrors_it(tmp_path: Path, capsys) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    pydicom_file("MR_small.dcm").save_as(src / "mr.dcm", enforce_file_format=True)
    lossy = pydicom_file("SC_rgb_jpeg_lossy_gdcm.dcm")
    lossy.save_as(src / "sub" / "lossy.dcm", enforce_file_format=True)
    dst = tmp_path / "out"
    assert main(["compress", "--transfer-syntax", "1.2.840.10008.1.2.4.80", str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert "ok " in out and "kept " in out
    assert dcmread(dst / "mr.dcm").file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    assert (dst / "sub" / "lossy.dcm").read_bytes() == (src / "sub" / "lossy.dcm").read_bytes()
    assert np.array_equal(dcmread(dst / "mr.dcm").pixel_array, dcmread(src / "mr.dcm").pixel_array)


def test_compress_rejects_unknown_syntax(tmp_path: Path, capsys) -> None:
    assert main(["compress", "--transfer-syntax", "Nope", str(tmp_path), str(tmp_path / "o")]) == 2
    assert "--transfer-syntax" in capsys.readouterr().err


def test_compress_reports_unreadable_files(tmp_path: Path, capsys) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "junk.dcm").write_bytes(b"not dicom at all")
    assert main(["compress", "--transfer-syntax", "RLELossless", str(tmp_path / "in"), str(tmp_path / "o")]) == 1
    assert "FAILED" in capsys.readouterr().err


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


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve"])
    assert info.value.code == 2
