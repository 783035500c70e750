"""Where a received C-STORE's dataset is written as it arrives: the spool, with a free-space floor.

pynetdicom streams each received dataset into a temporary file it opens
with :class:`tempfile.NamedTemporaryFile` in ``TMPDIR`` (when
``STORE_RECV_CHUNKED_DATASET`` is set, as the receiver sets it).  That has two
problems for a gateway: a full ``TMPDIR`` raises inside pynetdicom's reader
thread, which aborts the association instead of answering a status, and the
file lands on a filesystem that may not be the spool's, so it is copied once
more.  :func:`bind` replaces that file, for the associations of one AE, with a
:class:`SpoolSink`:

* it is created in the spool's ``tmp/`` folder, private (0600), so the
  receiver's move into ``incoming/`` is a rename;
* if the spool's filesystem has less than ``min_free_bytes`` free when the
  C-STORE request arrives, copies kept after delivery are deleted (oldest
  first) to make room; if that is not enough, nothing is written at all: the fragments that
  follow are read off the network and dropped, and the C-STORE handler
  answers 0xA700 (out of resources) so the sender retries later;
* if the space runs out while it is written (below half the floor, checked
  every few MB, or a write fails with ENOSPC) the partial file is removed
  and the answer is 0xA700 too;
* each file is known to its association until the C-STORE handler is done
  with it (:func:`finish`); when the association ends, the files of data
  sets that never reached the handler (the peer closed, aborted or went
  silent halfway) are deleted (:func:`discard`);
* a file is open only while its data set arrives: pynetdicom receives one
  message at a time, so when the next C-STORE request of the association
  opens its file, the earlier ones are whole and are closed, and data sets
  waiting for the association's service thread hold no file descriptor.

The other half of the floor is what the worker and the forwarders still have
to write processed objects, job files and the proof record, so they keep
delivering what was received while no new instance is taken in.

Associations of any other AE in the same process keep pynetdicom's own
temporary files: the replacement looks the association up and falls back.
"""

from __future__ import annotations

import tempfile
import threading
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom import dimse_messages

from gateway.spool import create_private, free_bytes, is_out_of_space

__all__ = ["SinkPolicy", "SpoolSink", "bind", "discard", "finish", "refusal"]

_RECHECK_BYTES = 8 << 20
"""Free space is looked at again after this many bytes of one dataset."""


@dataclass(frozen=True, slots=True)
class SinkPolicy:
    """Where the datasets of one AE's associations go and how much space must stay free."""

    folder: Path
    min_free_bytes: int
    make_room: Callable[[int], object] | None = None  # frees expendable files until that many bytes are free


class SpoolSink:
    """A received dataset's file in the spool, or a refusal; the file interface pynetdicom uses."""

    def __init__(self, policy: SinkPolicy) -> None:
        self.refused: str | None = None
        self.name = str(policy.folder / f"{uuid.uuid4().hex}.dcm")
        self.file = self  # pynetdicom flushes through ``.file``
        self._reserve = policy.min_free_bytes // 2
        self._handle: Any = None
        self._deleted = False
        self._unchecked = 0
        try:
            free = free_bytes(policy.folder)
            if free < policy.min_free_bytes and policy.make_room is not None:
                policy.make_room(2 * policy.min_free_bytes)  # copies kept after delivery go first
                free = free_bytes(policy.folder)
            if free < policy.min_free_bytes:
                self.refused = (f"the spool's filesystem has {free} bytes free, below the floor of "
                                f"{policy.min_free_bytes} ([spool] min_free_bytes)")
                return
            self._handle = create_private(Path(self.name))
        except OSError as exc:
            self.refused = f"cannot write to the spool: {exc}"

    def _refuse(self, why: str) -> None:
        self.refused = why
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                handle.close()
            except OSError:
                pass
        Path(self.name).unlink(missing_ok=True)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.refused is not None or self._deleted:
            return len(data)  # refused: the rest of the dataset is read off the wire and dropped
        try:
            if self._handle is None:  # closed early (see close())
                self._handle = open(self.name, "ab")
            written = self._handle.write(data)
        except OSError as exc:
            self._refuse("the spool's filesystem is full" if is_out_of_space(exc)
                         else f"cannot write to the spool: {exc}")
            return len(data)
        self._unchecked += written
        if self._unchecked >= _RECHECK_BYTES:
            self._unchecked = 0
            try:
                free = free_bytes(Path(self.name).parent)
            except OSError:
                free = self._reserve  # cannot tell: the writes themselves will say
            if free < self._reserve:
                self._refuse(f"the spool's filesystem fell to {free} bytes free while receiving, "
                             f"below half the floor ([spool] min_free_bytes)")
        return written

    def flush(self) -> None:
        if self._handle is None:
            return
        try:
            self._handle.flush()
        except OSError as exc:
            self._refuse(f"cannot write to the spool: {exc}")

    def close(self) -> None:
        """Close the file, keeping it; a later write opens it again, appending."""
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        try:
            handle.close()
        except OSError as exc:
            self._refuse(f"cannot write to the spool: {exc}")

    def delete(self) -> None:
        """Close the file and remove it, if it is still where it was written."""
        self._deleted = True
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                handle.close()
            except OSError:
                pass  # removed next: what it failed to write does not matter
        Path(self.name).unlink(missing_ok=True)


_POLICIES: weakref.WeakKeyDictionary[Any, SinkPolicy] = weakref.WeakKeyDictionary()
_install_lock = threading.Lock()
# Per association, the files written for data sets the C-STORE handler has not yet been given.
_LIVE: weakref.WeakKeyDictionary[Any, set[SpoolSink]] = weakref.WeakKeyDictionary()
_live_lock = threading.Lock()


def _temporary_file(**kwargs: Any) -> Any:
    """Stands in for ``NamedTemporaryFile`` in pynetdicom's DIMSE reader (which runs in the association's thread)."""
    assoc = getattr(threading.current_thread(), "assoc", None)
    policy = _POLICIES.get(getattr(assoc, "ae", None)) if assoc is not None else None
    if policy is None:
        return tempfile.NamedTemporaryFile(**kwargs)
    made = SpoolSink(policy)
    with _live_lock:
        live = _LIVE.setdefault(assoc, set())
        earlier = list(live)
        live.add(made)
    for whole in earlier:  # the association's earlier data sets are whole, waiting for the handler
        whole.close()
    return made


def bind(ae: Any, folder: Path, min_free_bytes: int, make_room: Callable[[int], object] | None = None) -> None:
    """Write the datasets received by `ae`'s associations into `folder`, with a free-space floor.

    Below the floor `make_room` (if given) is asked to free space first.
    """
    with _install_lock:
        _POLICIES[ae] = SinkPolicy(Path(folder), int(min_free_bytes), make_room)
        dimse_messages.NamedTemporaryFile = _temporary_file  # type: ignore[attr-defined]


def refusal(request: Any) -> str | None:
    """Why the dataset of this C-STORE request was not kept, or None if it was."""
    sink = getattr(request, "_dataset_file", None)
    return sink.refused if isinstance(sink, SpoolSink) else None


def finish(request: Any) -> None:
    """The C-STORE handler is done with `request`'s data set: delete what is left of its file.

    The handler moves the file it keeps into the spool; what remains at the
    file's name is a refused or failed one.
    """
    made = getattr(request, "_dataset_file", None)
    if not isinstance(made, SpoolSink):
        return
    with _live_lock:
        for sinks in _LIVE.values():
            sinks.discard(made)
    made.delete()


def discard(assoc: Any) -> int:
    """Delete the files of `assoc`'s data sets that never reached the C-STORE handler; return how many.

    For when the association is over (its service thread has ended): nothing writes to them any more.
    """
    with _live_lock:
        sinks = _LIVE.pop(assoc, set())
    for made in sinks:
        made.delete()
    return len(sinks)
