"""Folders only their owner may enter: what every part of the gateway that writes patient data creates.

The spool, the folder archive, the bulk output and the log folder all hold
UIDs or pixels; the umask is no guarantee, so the mode is set on each new
folder itself.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DIRECTORY_MODE", "make_dirs"]

DIRECTORY_MODE = 0o700
"""Mode of every folder the gateway creates: owner only, whatever the umask."""


def make_dirs(path: Path, mode: int = DIRECTORY_MODE) -> None:
    """Create `path` and its missing parents, each new one with exactly `mode`."""
    missing = []
    current = Path(path)
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=mode)
        except FileExistsError:
            continue  # made meanwhile by another thread: keep its mode
        os.chmod(folder, mode)
