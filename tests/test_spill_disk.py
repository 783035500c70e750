"""A large encoding kept in a file (``recompress(scratch=...)``) on a spool or output folder that fills up.

The worker keeps an encoded Pixel Data value past ``SPILL_BYTES`` in an
anonymous file in the spool's ``tmp/`` folder.  When that file cannot be
written, the recompressed copy has no room in the spool: the instance is
forwarded exactly as received with the reason ``no space in the spool for
the recompressed copy`` (docs/operations.md, "Disk pressure"), logged at
WARNING without a traceback, as when the object itself does not fit; never
as an "unexpected" failure.  One test fills a real, small filesystem (a
tmpfs mounted for it; root only); another makes the file's writes fail.

A worker process or a ``compress`` killed while it writes a large output
leaves a partial file as large as the encoded image: the next attempt at
the same instance, or the next run of the same command, removes it.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

import gateway.pipeline.policy as policy
from gateway.spool import Spool, free_bytes
from gateway.worker import process_instance
from tests.conftest import build_config, small_tmpfs
from tests.test_large_instances import noisy_frames, write_instance

_NO_ROOM = "no space in the spool for the recompressed copy"
_SPILL = 16 << 10  # the encoding (about 120 KB) moves to a file early


def _instance(folder: Path) -> tuple[Path, np.ndarray]:
    """A small multi-frame image whose JPEG-LS encoding is several times :data:`_SPILL`."""
    pixels = noisy_frames(8, 128, 128, sigma=20.0)
    return write_instance(folder / "in.dcm", pixels), pixels


def _process(spool_root: Path, work: Path, source: Path, fill_leaving: int | None, caplog) -> tuple[Spool, str]:
    """Receive `source` into a spool at `spool_root`, fill its filesystem to `fill_leaving` bytes free (None:
    leave it), and process it as the worker does."""
    config = build_config(work, spool={"directory": str(spool_root), "min_free_bytes": 0},
                          compression={"transfer_syntax": "JPEGLSLossless"})
    spool = Spool(config.spool.directory)
    ident = spool.store_received(source, "MODALITY")
    if fill_leaving is not None:
        with open(spool_root.parent / "filler", "wb") as filler:
            filler.write(bytes(free_bytes(spool_root) - fill_leaving))
    with caplog.at_level(logging.INFO, logger="gateway"):
        jobs = process_instance(config, spool, ident)
    assert [job.destination for job in jobs] == ["local"]
    return spool, ident


def _forwarded_as_received(spool: Spool, ident: str, source: Path, pixels: np.ndarray, caplog) -> None:
    """The object is the received file byte for byte, passed through for want of room, quietly."""
    stored = spool.object_path(ident)
    digest = hashlib.sha256(stored.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(source.read_bytes()).hexdigest(), "forwarded exactly as received"
    written = dcmread(stored)
    assert written.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(written.pixel_array, pixels)
    lines = [r for r in caplog.records if "passed-through" in r.getMessage()]
    assert len(lines) == 1 and f'reason="{_NO_ROOM}"' in lines[0].getMessage(), lines[0].getMessage()
    assert lines[0].levelno == logging.WARNING
    assert [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []
    assert os.listdir(spool.tmp) == [], "the kept encoding is gone"


class _FillingFile:
    """A temporary file that takes `room` bytes, then fails with ENOSPC as a full filesystem does."""

    def __init__(self, room: int, **kwargs: Any) -> None:
        self.file, self.room = tempfile.TemporaryFile(**kwargs), room

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        if size > self.room:
            del data  # as a write in C: the caller's buffer is not held by the traceback
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= size
        return self.file.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


@pytest.mark.parametrize("room", [0, 40 << 10], ids=["its first write", "a later write"])
def test_a_kept_encoding_that_does_not_fit_forwards_the_original_quietly(
        tmp_path: Path, monkeypatch, caplog, room: int) -> None:
    """The spill's ENOSPC escaped recompress as an OSError: the instance went on as received with the reason
    'unexpected OSError: [Errno 28] No space left on device' and a traceback at ERROR."""
    monkeypatch.setattr(policy, "SPILL_BYTES", _SPILL)
    opened: list[_FillingFile] = []

    def filling(**kwargs: Any) -> _FillingFile:
        opened.append(_FillingFile(room, **kwargs))
        return opened[-1]

    monkeypatch.setattr(policy, "tempfile", types.SimpleNamespace(TemporaryFile=filling))
    source, pixels = _instance(tmp_path)
    spool, ident = _process(tmp_path / "spool", tmp_path, source, None, caplog)
    assert opened, "the encoding was moved to a file"
    assert all(kept.closed for kept in opened)
    _forwarded_as_received(spool, ident, source, pixels, caplog)


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for the test (root only), unmounted afterwards."""
    with small_tmpfs(tmp_path, "4m") as mount:
        yield mount


@pytest.mark.parametrize("leaving", [4 << 10, 48 << 10], ids=["no room at all", "room for a part"])
def test_a_really_full_spool_forwards_the_original_of_a_kept_encoding(
        tmp_path: Path, small_filesystem: Path, monkeypatch, caplog, leaving: int) -> None:
    monkeypatch.setattr(policy, "SPILL_BYTES", _SPILL)
    source, pixels = _instance(tmp_path)
    spool, ident = _process(small_filesystem / "spool", tmp_path, source, leaving, caplog)
    _forwarded_as_received(spool, ident, source, pixels, caplog)
    assert free_bytes(small_filesystem) >= leaving - (16 << 10), "the kept encoding's space is free again"


def test_a_partial_object_of_an_attempt_cut_short_is_removed_by_the_next(tmp_path: Path, monkeypatch) -> None:
    """A worker process killed while it wrote a large object (a crash, a timeout) left the partial file in the
    spool's temp folder, as large as the encoded image, until the service's next start, while the instance's
    next attempt wrote another one beside it: on a filling disk each such crash held that space."""
    import gateway.worker as worker

    monkeypatch.setattr(policy, "SPILL_BYTES", _SPILL)
    source, pixels = _instance(tmp_path)
    config = build_config(tmp_path, compression={"transfer_syntax": "JPEGLSLossless"})
    spool = Spool(config.spool.directory)
    ident = spool.store_received(source, "MODALITY")
    splice = worker.splice_write

    def cut_short(src: Path, original: Any, new: Any, dst: Path, span: Any) -> bool:
        with open(dst, "wb") as partial:
            partial.write(bytes(64 << 10))
        raise KeyboardInterrupt  # the process ends here: nothing of it runs any more

    monkeypatch.setattr(worker, "splice_write", cut_short)
    with pytest.raises(KeyboardInterrupt):
        process_instance(config, spool, ident)
    assert len(os.listdir(spool.tmp)) == 1, "the attempt left its partial object"
    monkeypatch.setattr(worker, "splice_write", splice)
    (job,) = process_instance(config, spool, ident)
    assert job.identity.transfer_syntax == JPEGLSLossless
    assert os.listdir(spool.tmp) == [], "nothing of the first attempt is left"
    assert np.array_equal(dcmread(spool.object_path(ident)).pixel_array, pixels)


def test_compress_of_one_file_killed_while_writing_leaves_nothing_once_run_again(tmp_path: Path) -> None:
    """``dicom-gateway compress IN.dcm OUT.dcm`` killed while it wrote left its temporary output beside OUT.dcm
    (up to the size of the encoded image) and no later run removed it; a folder's run does remove its own."""
    import subprocess
    import sys

    from gateway.cli import main

    source, pixels = _instance(tmp_path)
    output = tmp_path / "out" / "in.dcm"
    killed = f"""
import os, signal
import gateway.dicom.splice as splice
import gateway.pipeline.policy as policy
policy.SPILL_BYTES = {_SPILL}
write = splice._write
def write_then_die(out, part):
    write(out, part)
    out.handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)
splice._write = write_then_die
from gateway.cli import main
main(["compress", {str(source)!r}, {str(output)!r}, "--transfer-syntax", "JPEGLSLossless"])
"""
    run = subprocess.run([sys.executable, "-c", killed], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent, timeout=120)
    assert run.returncode == -9, run.stderr
    assert len(os.listdir(output.parent)) == 1 and not output.exists(), "the killed run left its partial output"
    assert main(["compress", str(source), str(output), "--transfer-syntax", "JPEGLSLossless"]) == 0
    assert os.listdir(output.parent) == ["in.dcm"]
    written = dcmread(output)
    assert written.file_meta.TransferSyntaxUID == JPEGLSLossless and np.array_equal(written.pixel_array, pixels)
