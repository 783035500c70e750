"""The per-file task: a plain function that Dask runs on a worker (or the driver runs in process).

It reads one input, recompresses it with verification (:func:`gateway.pipeline.recompress`,
the gateway's own proof), writes the output under a temporary name in its
destination folder, fsyncs and renames it, and returns a small dict for the
manifest.  It never writes the manifest: only the client does.

The task is idempotent, so that Dask may run it again when a worker is lost
and a resumed run may redo the files that were in flight: the encoders are
deterministic, the same input gives the same bytes, and an output is only
ever replaced whole (rename).  In the ``uid`` layout two inputs may name the
same instance; an output that exists with *different* bytes is never
overwritten, the second input fails with a reason instead.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import stat as stat_mode
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from gateway.bulk.plan import RESERVED_NAMES, LayoutError, uid_relpath
from gateway.config import PRIVATE_VERSION, private_options
from gateway.dicom.filemeta import defer_size
from gateway.errors import GatewayError
from gateway.record import pairs_text
from gateway.spool import (atomic_copy, atomic_write_bytes, create_private, fsync_dir, is_out_of_space,
                           make_dirs)

__all__ = ["OUTCOMES", "DONE", "compress_file", "is_dicom"]

OUTCOMES = ("recompressed", "passed", "skipped", "failed")
"""``recompressed``: written in the target syntax, verified; ``passed``: the original copied unchanged
(with the reason); ``skipped``: not DICOM, nothing written; ``failed``: nothing written (with the reason)."""

DONE = ("recompressed", "passed", "skipped")
"""Outcomes a resumed run does not redo."""

_CHUNK = 1 << 20
_HOST = socket.gethostname()


def is_dicom(path: Path) -> bool:
    """True for a DICOM Part 10 file: 128-byte preamble then ``DICM``, as pydicom requires."""
    with open(path, "rb") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class DuplicateOutputError(GatewayError):
    """The output path already holds a different file (two inputs with one SOP Instance UID, or a file that
    compress did not write)."""


_FOREIGN = ("a file the manifest does not record writing: another tool's, or an interrupted run's before its "
            "input changed; move it away to write this one")


def _place(dst: Path, data: bytes | Path, digest: str, exclusive: bool, replace: bool = True,
           own: bool = False, move: bool = False) -> None:
    """Write `data` (bytes, or a file to copy) at `dst` atomically and durably.

    With `move`, `data` is a complete, fsync'd temporary file in `dst`'s
    folder (named as :func:`remove_debris` finds it) that becomes `dst`
    itself, not copied; it is gone afterwards whatever happens.

    With `exclusive` (the ``uid`` layout, where two inputs may name one
    output), `dst` is created only if absent (a hard link from the temporary
    file, which fails atomically when the name exists, even between workers on
    several machines); an existing `dst` with the same bytes is a task run
    again, one with other bytes is refused.  Without `replace` (the
    ``relative`` layout, whose outputs each have one input, so one writer), an
    existing `dst` with other bytes is refused too: it is no output of ours.
    `own` (``uid`` layout): the manifest records `dst` as written from this
    very input, which has changed since; it is refused all the same (another
    input may have the same output recorded), with that reason.
    """
    make_dirs(dst.parent)
    if not exclusive:
        if not replace and os.path.lexists(dst) and (not os.path.isfile(dst) or _sha256_file(dst) != digest):
            if move:
                Path(data).unlink(missing_ok=True)  # type: ignore[arg-type]
            raise DuplicateOutputError(f"{dst.name} already exists with other content ({_FOREIGN}); "
                                       "not overwritten")
        if move:
            try:
                os.replace(data, dst)  # type: ignore[arg-type]
            except BaseException:
                Path(data).unlink(missing_ok=True)  # type: ignore[arg-type]
                raise
            fsync_dir(dst.parent)
        elif isinstance(data, Path):
            atomic_copy(data, dst)
        else:
            atomic_write_bytes(dst, data)
        return
    tmp = Path(data) if move else dst.parent / f".{dst.name}.{uuid.uuid4().hex}.tmp"  # type: ignore[arg-type]
    try:
        if not move:
            with create_private(tmp) as handle:
                if isinstance(data, Path):
                    with open(data, "rb") as source:
                        shutil.copyfileobj(source, handle, _CHUNK)
                else:
                    handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        try:
            os.link(tmp, dst)
        except FileExistsError:
            if _sha256_file(dst) != digest:
                if own:
                    raise DuplicateOutputError(
                        f"{dst.name} was written by an earlier run from this input, which has changed since (its "
                        "size or modification time differ); not overwritten: move that output away (or delete it) "
                        "and run again to write this version") from None
                raise DuplicateOutputError(f"{dst.name} already exists with other content (another input with "
                                           "the same SOP Instance UID); not overwritten") from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(dst.parent)


def compress_file(source_root: str, output_root: str, rel: str, target: str, *, verify: bool = True,
                  layout: str = "relative", native: bool = False, write: bool = True,
                  private_version: int = PRIVATE_VERSION, replace: bool = True,
                  recorded_output: str | None = None) -> dict[str, Any]:
    """Recompress ``source_root/rel`` into ``output_root``; a dict of what happened, for the manifest.

    Never writes an output larger than its input unless the target is a
    `native` syntax (a decode may grow).  Our private syntax is written in
    `private_version`.  With ``write=False`` (a dry run)
    nothing is written; the sizes are those that would be.  Errors of the
    input or of writing become ``outcome="failed"`` with the reason; they
    never escape, so one bad file cannot fail a Dask task.  Without `replace`,
    a file already at the output path in the ``relative`` layout is kept unless
    it holds the same bytes (the driver allows replacing only an output that an
    earlier run recorded writing).  `recorded_output` is the output an earlier
    run recorded writing from this input (relative to `output_root`), which
    names the true reason when the ``uid`` layout refuses to write over it.
    """
    started = time.perf_counter()
    src = Path(source_root) / rel
    result: dict[str, Any] = {"rel": rel, "outcome": "failed", "reason": "", "modality": None,
                              "source_syntax": None, "pixel_hash": None, "output": None, "output_size": None,
                              "output_syntax": None, "output_sha256": None, "verified_by": None,
                              "size": None, "mtime_ns": None, "seconds": 0.0, "worker": f"{_HOST}:{os.getpid()}"}
    try:
        try:
            stat = src.stat()
        except OSError as exc:
            if not os.path.islink(src) or exc.errno not in (errno.ENOENT, errno.ELOOP):
                raise
            result.update(outcome="skipped", reason="a symbolic link to nothing" if exc.errno == errno.ENOENT
                          else "a loop of symbolic links")
            return result
        result["size"], result["mtime_ns"] = stat.st_size, stat.st_mtime_ns
        if stat_mode.S_ISDIR(stat.st_mode):
            if os.path.islink(src):
                result.update(outcome="skipped", reason="a symbolic link to a folder (not followed)")
                return result
            with os.scandir(src):  # the walk could not read it: say why, or that it can now
                pass
            result.update(reason="a folder that could not be read when the run started; run again")
            return result
        if not stat_mode.S_ISREG(stat.st_mode):  # a link to a pipe would block the read, to a device never end
            result.update(outcome="skipped", reason="not a regular file (a pipe, a socket or a device)")
            return result
        if not is_dicom(src):
            result.update(outcome="skipped", reason="not a DICOM file")
            return result
        _compress(src, Path(output_root), rel, target, verify, layout, native, write, stat.st_size, result,
                  private_version, replace, recorded_output)
    except (KeyboardInterrupt, SystemExit):
        raise
    except (GatewayError, OSError) as exc:
        result.update(outcome="failed", reason=f"{type(exc).__name__}: {exc}")
        if is_out_of_space(exc):
            result["no_space"] = True  # the driver stops the run: every further write would fail too
    except Exception as exc:  # noqa: BLE001 - a damaged file may raise anything from the parser
        result.update(outcome="failed", reason=f"unexpected {type(exc).__name__}: {exc}")
    finally:
        result["seconds"] = time.perf_counter() - started
    return result


def _compress(src: Path, out_root: Path, rel: str, target: str, verify: bool, layout: str, native: bool,
              write: bool, size_in: int, result: dict[str, Any], private_version: int, replace: bool,
              recorded_output: str | None = None) -> None:
    from pydicom import dcmread

    from gateway.dicom.splice import pixel_span
    from gateway.pipeline import recompress

    if layout == "relative" and rel in RESERVED_NAMES:
        raise LayoutError(f"{rel} is the name of the manifest's own file in the output folder; "
                          "rename the input to carry it")
    # Values of DEFER_BYTES and more stay in the file: a large multi-frame image is read one frame at a time.
    ds = dcmread(src, defer_size=defer_size(src))
    span = pixel_span(ds)
    result["modality"] = str(ds.get("Modality", "") or "") or None
    result["source_syntax"] = str(ds.file_meta.get("TransferSyntaxUID", "") or "") or None
    out_rel = uid_relpath(str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")),
                          str(ds.get("SOPInstanceUID", ""))) if layout == "uid" else rel
    # A large encoded value is kept in an anonymous file in the output folder (on disk, unlike TMPDIR may be).
    outcome = recompress(ds, target, verify=verify, allow_larger=native,
                         encode_options=private_options(private_version),
                         scratch=out_root if out_root.is_dir() else None)
    syntax, verified_by = outcome.transfer_syntax, pairs_text(outcome.verified_by)
    result["pixel_hash"] = outcome.pixel_hash
    reason = outcome.reason
    dst = out_root / out_rel
    exclusive = layout == "uid"
    own = exclusive and recorded_output == out_rel
    written: tuple[Path | None, int, str] | None = None  # the output's temporary file, size and SHA-256
    if outcome.recompressed:
        # Written straight to a file beside its destination (a dry run: an anonymous one), never held as
        # bytes: a large image's output would be a second copy of its encoded pixel data.
        try:
            written = write_output(src, ds, outcome.dataset, span, dst if write else None)
        finally:
            outcome.close()  # a large encoded value's anonymous file goes now
        del outcome
        if not native and written[1] >= size_in:
            reason = f"recompressed file would not be smaller ({written[1]} bytes, {size_in} in); original copied"
            if written[0] is not None:
                written[0].unlink(missing_ok=True)
            written = None
    del ds
    if written is None:
        digest = _sha256_file(src)
        if write:
            _place(dst, src, digest, exclusive, replace, own)
        result.update(outcome="passed", reason=reason or "not recompressed", output_size=size_in,
                      output_syntax=result["source_syntax"])
    else:
        tmp, size, digest = written
        if tmp is not None:
            try:
                _place(dst, tmp, digest, exclusive, replace, own, True)  # moved, not copied
            finally:
                tmp.unlink(missing_ok=True)  # gone when placed: left only by a failure
        result.update(outcome="recompressed", output_size=size, output_syntax=syntax,
                      verified_by=verified_by)
    result.update(output=out_rel, output_sha256=digest)




class _Hashed:
    """A file written through this: its SHA-256 and size are taken on the way."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle, self.digest, self.size = handle, hashlib.sha256(), 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.handle.write(data)


def write_output(src: Path, original: Any, new: Any, span: tuple[int, int] | None,
                  dst: Path | None) -> tuple[Path | None, int, str]:
    """Write the recompressed `new` as the live gateway writes it; (temporary file, size, SHA-256).

    Spliced from `src`'s bytes where :func:`gateway.dicom.splice.splice_write`
    applies (group lengths kept), else written by ``dcmwrite``.  The file is
    ``.<name>.<hex>.tmp`` in `dst`'s folder (created), fsync'd, for
    :func:`_place` to move; without `dst` (a dry run) an anonymous temporary
    file, gone once measured, and None in its place.
    """
    from gateway.dicom.splice import splice_write, write_dataset

    tmp: Path | None = None
    if dst is not None:
        make_dirs(dst.parent)
        tmp = dst.parent / f".{dst.name}.{uuid.uuid4().hex}.tmp"
    try:
        with (create_private(tmp) if tmp is not None else tempfile.TemporaryFile()) as handle:
            hashed = _Hashed(handle)
            if splice_write(src, original, new, hashed, span):  # type: ignore[arg-type]
                size, digest = hashed.size, hashed.digest.hexdigest()
            else:
                handle.seek(0)  # a refusal may have left a part behind
                handle.truncate()
                write_dataset(handle, new)
                size, digest = handle.tell(), None
            handle.flush()
            if tmp is not None:
                os.fsync(handle.fileno())
            elif digest is None:
                handle.seek(0)
                sha = hashlib.sha256()
                while chunk := handle.read(_CHUNK):
                    sha.update(chunk)
                digest = sha.hexdigest()
        if digest is None:
            assert tmp is not None
            digest = _sha256_file(tmp)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    return tmp, size, digest


_PARTIAL = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")
"""Name of a temporary file of a write (:func:`_place`, :func:`gateway.spool.atomic_copy`)."""


def remove_debris(root: Path, keep: Callable[[str], bool] | None = None) -> int:
    """Delete the temporary files of interrupted writes under `root`; return how many.

    A name of that form (``.<name>.<32 hex digits>.tmp``) may also be an
    output, that of an input so named: `keep` (given the path relative to
    `root`) is true of those, which stay.
    """
    if not os.path.isdir(root):
        return 0
    removed = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if not _PARTIAL.match(name):
                continue
            path = os.path.join(folder, name)
            if keep is not None and keep(Path(path).relative_to(root).as_posix()):
                continue
            try:
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                pass
    return removed
