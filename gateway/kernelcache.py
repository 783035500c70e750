"""Keeping numba's on-disk cache of the codec kernels in step with their source, and whole.

numba checks a cached kernel against the time stamp of the file that defines
it, not against the helpers it inlined from other modules: after a change to
such a helper alone (a ``git pull`` of an editable install, a developer's
edit) the old machine code would still be loaded.  Every image is verified,
so a stale kernel could only make images pass through, but it should not
happen at all.  :func:`refresh` compares a digest of every source file of
:mod:`gateway.codecs` with the one it recorded last time and, when they
differ, deletes the package's cached kernels (``__pycache__/*.nbi`` and
``*.nbc``) so that they are compiled again from the current source.

A regular install (pip writes every file anew, so every time stamp changes)
does not need it; it costs one read of the codec sources (about a megabyte).

numba also updates a function's cache index without a lock: it reads the
index, takes the first free number for the new machine code's file, writes
the index, then the file.  Two processes that compile different
specialisations of one kernel at the same time (the worker processes of the
service or of a bulk run warming up after an install) can both take number
1, and the index then names one's machine code for the other's signature.
Every later process loads the wrong kernel for that signature (a crash, or
streams that fail their checksum) until the cache is deleted.  Every codec
kernel is therefore decorated with :func:`njit`, which first makes
:func:`guard` hold an advisory lock on a file beside the index while numba
reads or writes it (``flock``: shared to load, exclusive to save).  Where
numba finds no folder to cache in at all, it would refuse to define the
kernels; :func:`njit` then caches them in a private temporary folder, or
compiles them uncached.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["guard", "njit", "refresh", "source_digest"]

_log = logging.getLogger(__name__)
_CODECS = Path(__file__).resolve().parent / "codecs"
_STAMP = "kernel-sources.sha256"


def source_digest(root: Path = _CODECS) -> str:
    """SHA-256 over the relative paths and contents of every ``.py`` file under `root`."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def refresh(root: Path = _CODECS) -> int:
    """Delete the cached kernels under `root` if its sources changed since the last call; return how many.

    Does nothing (returns 0) where the package folder is read-only: numba then
    caches elsewhere, in files of a fresh install.
    """
    stamp = root / "__pycache__" / _STAMP
    current = source_digest(root)
    try:
        if stamp.read_text().strip() == current:
            return 0
    except OSError:
        pass
    removed = 0
    try:
        for pattern in ("*.nbi", "*.nbc"):
            for path in root.rglob(f"__pycache__/{pattern}"):
                path.unlink(missing_ok=True)
                removed += 1
        stamp.parent.mkdir(exist_ok=True)
        stamp.write_text(current + "\n")
    except OSError:
        return removed
    return removed


def njit(*args, **options):
    """``numba.njit``, with numba's on-disk cache made safe to share between processes first (:func:`guard`).

    numba is imported here, on the first kernel's definition, not when this
    module is (the command line imports it for :func:`refresh`).  Where numba
    finds no folder to cache in (the package read-only and no writable home
    folder, as for a service account), the kernels are cached in a private
    folder of the temporary folder instead (:func:`_fallback_folder`), or
    not at all: compiled in every process, but the gateway still starts.
    """
    guard()
    if args and callable(args[0]):  # @njit without options
        return njit(*args[1:], **options)(args[0])
    import numba

    def decorate(function):
        if not _UNCACHED:
            try:
                return numba.njit(*args, **options)(function)
            except RuntimeError as error:
                if not options.get("cache") or "no locator available" not in str(error):
                    raise
            folder = _fallback_folder()
            if folder is not None:
                numba.config.CACHE_DIR = str(folder)  # every later kernel finds it first
                try:
                    return numba.njit(*args, **options)(function)
                except RuntimeError:
                    pass
            _log.warning("numba can cache kernels nowhere: each process compiles its own (set NUMBA_CACHE_DIR "
                         "to a writable folder)")
            _UNCACHED.append(True)
        return numba.njit(*args, **dict(options, cache=False))(function)

    return decorate


_UNCACHED: list[bool] = []  # [True] once no folder could be found to cache in


def _fallback_folder() -> Path | None:
    """A folder of the temporary folder for this user's cached kernels, or None where none is safe.

    Machine code is loaded from it, so it must be this user's own and
    writable by nobody else.
    """
    folder = Path(tempfile.gettempdir()) / f"dicom-gateway-kernels-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        status = folder.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.getuid() or status.st_mode & 0o022:
        _log.warning("not caching kernels in %s: it is not a folder of this user's that only it may write", folder)
        return None
    _log.warning("numba cannot cache kernels beside the package or in the home folder: caching them in %s "
                 "(set NUMBA_CACHE_DIR to choose)", folder)
    return folder


@functools.cache
def guard() -> bool:
    """Make numba read and write each cache index under an advisory file lock; True where it is in force.

    A cache that cannot be read or written (a full disk, a folder removed or
    made read-only while the gateway runs) is then a miss, logged, not an
    error in the kernel's first call: numba lets those escape.  Runs once.
    False where there is no ``fcntl`` (not a POSIX system) or
    where numba's cache no longer has the methods wrapped here (a numba that
    changed them: the test suite checks that this returns True).
    """
    try:
        import fcntl

        from numba.core.caching import Cache, IndexDataCacheFile
    except ImportError:
        return False
    if not (all(callable(getattr(IndexDataCacheFile, name, None)) for name in ("load", "save", "flush"))
            and callable(getattr(Cache, "_guard_against_spurious_io_errors", None))):
        return False
    load, save, flush = IndexDataCacheFile.load, IndexDataCacheFile.save, IndexDataCacheFile.flush

    def locked_load(self, key):
        with _locked(self, fcntl.LOCK_SH):
            return load(self, key)

    def locked_save(self, key, data):
        with _locked(self, fcntl.LOCK_EX):
            return save(self, key, data)

    def locked_flush(self):
        with _locked(self, fcntl.LOCK_EX):
            return flush(self)

    @contextlib.contextmanager
    def io_errors_are_misses(self):
        # numba's own place for the input/output errors a cache may meet, which it swallows (the
        # load then returns None: a miss) only for one error on Windows.
        try:
            yield
        except OSError as error:  # a full disk, a folder removed or made read-only since
            _log.warning("kernel cache not used (%s): the kernel is compiled, and runs", error)

    IndexDataCacheFile.load, IndexDataCacheFile.save, IndexDataCacheFile.flush = locked_load, locked_save, locked_flush
    Cache._guard_against_spurious_io_errors = io_errors_are_misses
    return True


@contextlib.contextmanager
def _locked(cache_file, operation: int) -> Iterator[None]:
    """Hold `operation` (``fcntl.LOCK_SH`` or ``LOCK_EX``) on the lock file beside `cache_file`'s index.

    Where the lock file cannot be opened (a cache folder this process may not
    write), numba only reads, and reading alone needs no lock.
    """
    import fcntl

    index = getattr(cache_file, "_index_path", None)
    try:
        descriptor = os.open(f"{index}.lock", os.O_RDWR | os.O_CREAT, 0o644) if index else -1
    except OSError:
        descriptor = -1
    if descriptor < 0:
        yield
        return
    try:
        fcntl.flock(descriptor, operation)
        yield
    finally:
        os.close(descriptor)  # releases the lock
