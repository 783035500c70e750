"""Keeping numba's on-disk cache of the codec kernels in step with their source.

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
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["refresh", "source_digest"]

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
