"""Outages met by the batch paths of the forwarder: storage commitment against an archive that stops storing.

Without commitment, a transient failure in the middle of a batch puts the
rest of it back untried; the storage commitment sender, which stores a whole
batch at its first ``send``, must do the same rather than try every instance
in turn against an archive that is gone, hung or full.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pynetdicom import evt

from gateway.config import Destination, RetryConfig
from gateway.forward import DicomSender, Forwarder
from gateway.spool import PENDING, Spool
from tests.conftest import DicomPeer, free_port, make_series, wait_until
from tests.test_forward import _stage


class FullArchive(DicomPeer):
    """A real C-STORE SCP that answers every C-STORE 0xA700 (out of resources), counting them."""

    def __init__(self) -> None:
        super().__init__(free_port(), status=0xA700)
        self.stores = 0
        self._count = threading.Lock()

    def _on_store(self, event: evt.Event) -> int:
        with self._count:
            self.stores += 1
        return super()._on_store(event)


def test_a_commitment_batch_stops_at_the_first_transient_store_failure(tmp_path: Path) -> None:
    """The commitment sender tried every instance of a batch after the archive had answered 0xA700 (or timed
    out, or refused the connection) for the first: 12 C-STOREs and 12 attempts counted for one failure, and an
    archive whose storage hangs held the forwarder for a timeout per instance of the batch (9 s of 1 s
    timeouts for a batch of 12; 15 min at the default 30 s and a batch of 32).  Now the failure ends the
    storing: one C-STORE, one attempt, the rest back in the queue untried until the next probe."""
    archive = FullArchive().start()
    try:
        spool = Spool(tmp_path)
        jobs = [_stage(spool, ds, "x", target=None) for ds in make_series(12, rows=16, columns=16)]
        dest = Destination("x", "dicom", archive.ae_title, "127.0.0.1", archive.port, timeout_seconds=5.0,
                           storage_commitment=True, commitment_timeout_seconds=2.0)
        retry = RetryConfig(max_attempts=50, base_seconds=60.0, cap_seconds=60.0, probe_seconds=60.0)
        forwarder = Forwarder(dest, spool, retry, DicomSender(dest, locate=lambda job: spool.object_path(job.instance)),
                              batch=12)
        forwarder.start()
        try:
            assert wait_until(lambda: forwarder.failing_since is not None, timeout=20)
            assert wait_until(lambda: spool.count_jobs(PENDING, "x") == len(jobs), timeout=10)
            time.sleep(0.3)  # anything the batch still did would show now; the next probe is 60 s away
            attempts = [spool.find_job(job.instance, "x").attempts for job in jobs]
            stores = archive.stores
        finally:
            forwarder.stop()
            forwarder.join(10)
    finally:
        archive.stop()
    assert stores == 1, stores
    assert sorted(attempts) == [0] * (len(jobs) - 1) + [1], attempts
