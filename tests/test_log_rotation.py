"""The log file cannot fill the disk: the service rotates it by size, or follows an outside logrotate;
worker processes appending to the same file follow the service's rotations; every file stays 0600."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import MIN_LOG_BYTES, load_config
from gateway.errors import ConfigError
from gateway.logs import file_handler, setup_logging
from tests.conftest import free_port

LINE = "received sop=1.2.826.0.1.3680043.2.1125.1.{} study=1.2.3 calling=CT1 bytes=524800"


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _emit(handler: logging.Handler, text: str) -> None:
    handler.emit(logging.LogRecord("gateway", logging.INFO, __file__, 0, text, None, None))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_file_is_rotated_by_size_and_keeps_its_backups(tmp_path: Path, gateway_logger, open_umask) -> None:
    log = tmp_path / "logs" / "gateway.log"
    setup_logging("INFO", log, max_bytes=4096, backups=3)
    for n in range(400):  # some 36 KB: eight rotations
        gateway_logger.info(LINE.format(n))
    files = sorted(tmp_path.joinpath("logs").iterdir())
    assert files == [log, *(log.with_name(f"gateway.log.{i}") for i in (1, 2, 3))], files
    for path in files:
        assert path.stat().st_size <= 4096, path
        assert _mode(path) == 0o600, f"{path.name} is {_mode(path):04o}"
    assert LINE.format(399) in log.read_text()
    kept = "".join(path.read_text() for path in files)
    assert LINE.format(399 - 3 * 30) in kept and LINE.format(0) not in kept, "the oldest lines went first"


def test_without_a_size_the_file_follows_logrotate(tmp_path: Path, gateway_logger, open_umask) -> None:
    log = tmp_path / "gateway.log"
    setup_logging("INFO", log, max_bytes=0)
    gateway_logger.info(LINE.format(1))
    log.rename(tmp_path / "gateway.log.1")  # logrotate without copytruncate
    gateway_logger.info(LINE.format(2))
    assert LINE.format(1) in (tmp_path / "gateway.log.1").read_text()
    assert LINE.format(2) in log.read_text() and LINE.format(1) not in log.read_text()
    assert _mode(log) == 0o600
    log.unlink()  # deleted under the service: a new file
    gateway_logger.info(LINE.format(3))
    assert LINE.format(3) in log.read_text() and _mode(log) == 0o600


def test_a_worker_process_follows_the_services_rotation(tmp_path: Path, open_umask) -> None:
    """Only the service renames the file; a worker process's next line goes to the new file, not the
    renamed one, and the worker never rotates (two rotating processes would rename each other's files)."""
    log = tmp_path / "gateway.log"
    service = file_handler(log, 2048, 2)
    worker = file_handler(log, 2048, 2, rotate=False)
    try:
        for n in range(40):  # the worker writes far past the size: only the service rotates
            _emit(worker, LINE.format(n))
        assert not log.with_name("gateway.log.1").exists()
        _emit(service, LINE.format(100))  # past the size: renamed, then written to a new file
        assert log.with_name("gateway.log.1").exists()
        _emit(worker, LINE.format(200))
        assert LINE.format(200) in log.read_text()
        assert LINE.format(200) not in log.with_name("gateway.log.1").read_text()
    finally:
        service.close()
        worker.close()


def test_worker_processes_append_to_the_services_file(tmp_path: Path) -> None:
    """Lines of another process (as a worker process sets up its logging) land whole in the rotated file."""
    log = tmp_path / "gateway.log"
    script = textwrap.dedent(f"""
        import logging, sys
        from pathlib import Path
        from gateway.logs import setup_logging
        setup_logging("INFO", Path({str(log)!r}), 4096, 2, rotate=False)
        for n in range(200):
            logging.getLogger("gateway.worker").info("worker line %d", n)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60, stderr=subprocess.DEVNULL,
                   cwd=Path(__file__).resolve().parent.parent)
    lines = log.read_text().splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines] == [str(n) for n in range(200)]
    assert not log.with_name("gateway.log.1").exists()


def _config(tmp_path: Path, logging_table: str) -> Path:
    (tmp_path / "gateway.toml").write_text(textwrap.dedent(f"""
        [spool]
        directory = "spool"
        [logging]
        file = "gateway.log"
        {logging_table}
        [[destinations]]
        name = "local"
        kind = "folder"
        path = "archive"
    """))
    return tmp_path / "gateway.toml"


def test_rotation_keys_and_defaults(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, ""))
    assert (config.logging.max_bytes, config.logging.backups) == (64 * 1024 * 1024, 8)
    config = load_config(_config(tmp_path, "max_bytes = 0\nbackups = 2"))
    assert (config.logging.max_bytes, config.logging.backups) == (0, 2)


@pytest.mark.parametrize("table, key", [
    (f"max_bytes = {MIN_LOG_BYTES - 1}", "logging.max_bytes"),
    ("max_bytes = -1", "logging.max_bytes"),
    ("max_bytes = \"64M\"", "logging.max_bytes"),
    ("backups = 0", "logging.backups"),
    ("backups = 1001", "logging.backups"),
])
def test_bad_rotation_keys_are_named(tmp_path: Path, table: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, table))
    assert info.value.key == key, info.value


def test_a_log_file_that_cannot_be_created_is_named(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("")
    config = _config(tmp_path, "")
    config.write_text(config.read_text().replace('file = "gateway.log"', 'file = "plain/gateway.log"'))
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert info.value.key == "logging.file" and "not a folder" in str(info.value)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, where no file can be created")
def test_serve_names_the_log_file_it_cannot_open_and_exits_2(tmp_path: Path) -> None:
    # Only opening tells (root may write any folder but /proc's): a usage error, not a traceback nor exit 1,
    # so that systemd does not start it again and again.
    config = _config(tmp_path, "")
    config.write_text(config.read_text().replace('file = "gateway.log"', 'file = "/proc/dicom-gateway-test.log"')
                      + f"[server]\nport = {free_port()}\n")
    done = subprocess.run([sys.executable, "-c", "import sys; from gateway.cli import main; sys.exit(main())",
                           "serve", "--config", str(config)], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 2, done.stderr
    assert "logging.file" in done.stderr and "Traceback" not in done.stderr
