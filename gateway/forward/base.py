"""The sender protocol: what every destination kind implements."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from gateway.spool import Job

__all__ = ["Sender"]


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
