"""The sender protocol: what every destination kind implements."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from gateway.spool import Job

__all__ = ["Sender", "BatchSender"]


class Sender(Protocol):
    """Delivers one job's object; returns the transfer syntax it was sent in.

    A sender only moves bytes and reports the outcome: success by returning,
    :class:`~gateway.errors.TransientForwardError` (try again later) or
    :class:`~gateway.errors.PermanentForwardError` (a dead letter).  Retry
    policy lives in :class:`~gateway.forward.loop.Forwarder`.
    """

    def prepare(self, jobs: list[Job]) -> None:
        """Hint: these jobs are about to be sent (lets a sender open one association)."""

    def send(self, job: Job, path: Path) -> str:
        """Deliver; raise Transient/PermanentForwardError on failure."""

    def close(self) -> None:
        """Release connections; called when idle and at shutdown."""


@runtime_checkable
class BatchSender(Sender, Protocol):
    """A sender that may deliver several jobs of a batch at one :meth:`send` (DICOMweb, storage commitment).

    The archive's answer for the others is then held until their own
    ``send``, which only returns it.  A forwarder that stops in the middle
    of a batch still collects those answers, so that nothing the archive
    has stored is sent to it again.
    """

    def has_outcome(self, job: Job) -> bool:
        """True when :meth:`send` of `job` would return an outcome already known, without sending."""
