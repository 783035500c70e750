"""Planning: which files of ``IN`` to recompress, and where each one goes in ``OUT``.

The walk is a generator in a stable order (names sorted folder by folder), so
an archive of millions of files is never held in memory: the driver streams it
into the manifest.  Two output layouts exist: ``relative`` keeps the input's own
relative path (an archive's layout survives), ``uid`` files each instance under
``<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, which only the
task that reads the file can know.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.dicom.validate import is_valid_uid
from gateway.errors import GatewayError

__all__ = ["LAYOUTS", "LOCK_NAME", "MANIFEST_NAME", "RESERVED_NAMES", "Item", "LayoutError", "folder_identity",
           "walk", "uid_relpath"]

LAYOUTS = ("relative", "uid")
"""Output layouts: the input's relative paths, or ``<Study>/<Series>/<SOP>.dcm``."""

MANIFEST_NAME = ".compress-manifest.sqlite"
"""The manifest's file name in ``OUT`` (SQLite keeps ``-wal`` and ``-shm`` files beside it)."""

LOCK_NAME = MANIFEST_NAME + "-lock"
"""The file in ``OUT`` that a run holds locked (``flock``), so that no second run writes into it at once."""


RESERVED_NAMES = frozenset({MANIFEST_NAME, LOCK_NAME, *(MANIFEST_NAME + suffix for suffix in ("-wal", "-shm", "-journal"))})
"""Names at the top of ``OUT`` that belong to the manifest: no output is ever written there."""


class LayoutError(GatewayError):
    """An instance cannot be placed in the ``uid`` layout (a UID missing or not a valid UID)."""


@dataclass(frozen=True, slots=True)
class Item:
    """One input file: its path relative to ``IN`` (POSIX separators), size and modification time."""

    rel: str
    size: int
    mtime_ns: int


def folder_identity(path: Path | str | None) -> tuple[int, int] | None:
    """(device, inode) of the folder at `path`, None when there is none: one folder under every name it has
    (a symbolic link, a bind mount, a second mount of the same network share)."""
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino)


def walk(root: Path, exclude: Path | None = None) -> Iterator[Item]:
    """Every regular file under `root`, folder by folder in name order, skipping `exclude`.

    `exclude` is the output folder: should it lie inside the input folder (under
    any of its names), a run never reads its own outputs or its manifest.
    Symbolic links to files are followed (as a copy would); links to folders
    are not, so a loop of links cannot make the walk endless.  What cannot be
    walked is listed all the same, for the task to say why it was not
    recompressed: a link to a folder, a link to nothing or a loop of links, a
    folder that cannot be read (then with size and time 0).
    """
    root = Path(root)
    skip = folder_identity(exclude)
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            if skip is not None and folder_identity(folder) == skip:
                continue
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed while walking
        except OSError:  # unreadable: its files are not lost in silence, the task reports the folder
            yield Item(folder.relative_to(root).as_posix(), 0, 0)
            continue
        subfolders = []
        for entry in entries:
            rel = Path(entry.path).relative_to(root).as_posix()
            try:
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(Path(entry.path))
                elif entry.is_file():
                    stat = entry.stat()
                    yield Item(rel, stat.st_size, stat.st_mtime_ns)
                elif entry.is_symlink():  # to a folder, to nothing
                    stat = entry.stat(follow_symlinks=False)
                    yield Item(rel, stat.st_size, stat.st_mtime_ns)
            except FileNotFoundError:
                continue  # removed while walking
            except OSError:  # a loop of links, a link into a folder that cannot be read
                yield Item(rel, 0, 0)
        stack.extend(reversed(subfolders))


def uid_relpath(study: object, series: object, sop: object) -> str:
    """``<Study>/<Series>/<SOP>.dcm`` for the ``uid`` layout; :class:`LayoutError` unless all three are valid UIDs.

    A valid UID holds only digits and dots, so it can never climb out of ``OUT``.
    """
    for name, value in (("(0020,000D) Study Instance UID", study), ("(0020,000E) Series Instance UID", series),
                        ("(0008,0018) SOP Instance UID", sop)):
        if not is_valid_uid(value):
            raise LayoutError(f"{name} is missing or not a valid UID; the uid layout needs it")
    return f"{study}/{series}/{sop}.dcm"
