"""Patient data is private: spool and archive files 0600, their folders 0700, whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.logs import setup_logging
from gateway.record import RECORD_FILE
from tests.conftest import build_config, make_series, send, wait_until


@pytest.fixture
def open_umask():
    """The most permissive umask: anything not set explicitly would be world-writable."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root: Path) -> dict[Path, int]:
    found = {root: stat.S_IMODE(root.stat().st_mode)}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            found[path] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_spool_record_and_archive_are_private(tmp_path: Path, gateway_factory, open_umask) -> None:
    gw = gateway_factory(build_config(tmp_path))
    assert send(gw.port, make_series(3)) == [0, 0, 0]
    assert gw.wait_idle(60)
    # The collector removes an object just after its held instance, which is what wait_idle watches.
    assert wait_until(lambda: not any(gw.spool.objects.iterdir()), timeout=10)
    found = {**_modes(tmp_path / "spool"), **_modes(tmp_path / "archive")}
    assert len(list((tmp_path / "archive").rglob("*.dcm"))) == 3
    assert tmp_path / "spool" / RECORD_FILE in found
    assert sum(1 for p in found if p.parent.parent == tmp_path / "spool" / "jobs") == 3, "three done jobs"
    for path, mode in found.items():
        expected = 0o700 if path.is_dir() else 0o600
        assert mode == expected, f"{path.relative_to(tmp_path)} is {mode:04o}, expected {expected:04o}"


def test_log_file_is_private(tmp_path: Path, open_umask, gateway_logger) -> None:
    setup_logging("INFO", tmp_path / "logs" / "gw" / "gateway.log")
    gateway_logger.info("a line")
    log = tmp_path / "logs" / "gw" / "gateway.log"
    assert "a line" in log.read_text()
    assert _modes(tmp_path / "logs") == {tmp_path / "logs": 0o700, tmp_path / "logs" / "gw": 0o700, log: 0o600}


def test_compress_of_one_file_makes_its_output_folders_private(tmp_path: Path, open_umask, capsys) -> None:
    from gateway.cli import main

    src = tmp_path / "ct.dcm"
    make_series(1)[0].save_as(src, enforce_file_format=True)
    out = tmp_path / "out" / "ct" / "ct.dcm"
    assert main(["compress", "--transfer-syntax", "RLELossless", str(src), str(out)]) == 0
    assert _modes(tmp_path / "out") == {tmp_path / "out": 0o700, out.parent: 0o700, out: 0o600}


def test_an_existing_spool_is_made_private(tmp_path: Path, gateway_factory) -> None:
    spool = tmp_path / "spool"
    (spool / "incoming").mkdir(parents=True, mode=0o755)
    os.chmod(spool, 0o755)
    os.chmod(spool / "incoming", 0o777)
    gateway_factory(build_config(tmp_path))
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
    assert stat.S_IMODE((spool / "incoming").stat().st_mode) == 0o700


def test_archive_modes_for_group_readers(tmp_path: Path, gateway_factory) -> None:
    old = os.umask(0o077)  # a strict umask must not take the configured group bits away
    try:
        config = build_config(tmp_path, destinations=[
            {"name": "local", "kind": "folder", "path": "archive", "file_mode": "0640", "directory_mode": 0o750}])
        gw = gateway_factory(config)
        assert send(gw.port, make_series(2)) == [0, 0]
        assert gw.wait_idle(60)
    finally:
        os.umask(old)
    modes = _modes(tmp_path / "archive")
    assert len(modes) == 5  # the root, study, series, two files
    for path, mode in modes.items():
        assert mode == (0o750 if path.is_dir() else 0o640), f"{path}: {mode:04o}"


@pytest.mark.parametrize(("key", "value"), [
    ("file_mode", "0400"),  # the gateway must be able to write
    ("file_mode", "0700"),  # no execute bits
    ("file_mode", "rw-r-----"),
    ("directory_mode", "0600"),  # the owner must be able to enter
    ("directory_mode", True),
])
def test_bad_modes_are_refused_naming_the_key(tmp_path: Path, key: str, value) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(tmp_path, destinations=[{"name": "local", "kind": "folder", "path": "archive", key: value}])
    assert f"destinations[0].{key}" in str(caught.value)
