"""Several worker processes: every one takes instances, and the guarantees hold as with one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.uid import JPEGLSLossless

from gateway.spool import DEAD, DONE
from tests.conftest import build_config, make_series, send


def test_two_worker_processes_share_a_series(tmp_path: Path, gateway_factory) -> None:
    config = build_config(tmp_path, compression={"transfer_syntax": "JPEGLSLossless", "processes": 2})
    gateway = gateway_factory(config)
    series = make_series(24, rows=256, columns=256)
    assert send(gateway.port, series) == [0] * len(series)
    assert gateway.wait_idle(180)

    assert gateway.worker is not None
    by_process = gateway.worker.processed_by
    assert len(by_process) == 2, f"instances per worker process: {dict(by_process)}"
    assert sum(by_process.values()) == len(series)
    stored = {p.stem: dcmread(p) for p in (tmp_path / "archive").rglob("*.dcm")}
    assert len(stored) == len(series)
    for ds in series:
        got = stored[str(ds.SOPInstanceUID)]
        assert got.file_meta.TransferSyntaxUID == JPEGLSLossless
        assert np.array_equal(got.pixel_array, ds.pixel_array)
    counts = gateway.spool.counts()
    assert counts[DONE] == len(series) and counts[DEAD] == 0
    assert counts["received"] == 0
