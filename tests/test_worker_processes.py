"""Several worker processes: every one takes instances, and the guarantees hold as with one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.uid import JPEGLSLossless

from gateway.spool import DEAD, DONE
from tests.conftest import build_config, make_series, send
from tests.images import enlarge


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


def test_the_private_version_reaches_the_worker_processes(tmp_path: Path, gateway_factory) -> None:
    """The configured version of our private syntax (2 by default; the codec module's own default is 1)
    is what a worker process writes: the configuration crosses into the process, no global state.
    An image enlarged by interpolation, and one enlarged by repeating each sample, are written as
    subbands there (prediction byte 11; the second with the predictor of the sample before)."""
    from pydicom.encaps import generate_frames

    from gateway.codecs import _private_subbands as sb
    from gateway.codecs import private

    config = build_config(tmp_path, compression={"transfer_syntax": "gwl", "processes": 1})
    assert config.compression.private_version == 2 != private.VERSION
    gateway = gateway_factory(config)
    series = make_series(3, rows=128, columns=128, seed=4)
    enlarged = enlarge(enlarge(series[0].pixel_array, 0), 1).astype(np.uint16)
    series[0].Rows, series[0].Columns = enlarged.shape
    series[0].PixelData = enlarged.tobytes()
    repeated = np.repeat(np.repeat(series[1].pixel_array, 2, 0), 2, 1)
    series[1].Rows, series[1].Columns = repeated.shape
    series[1].PixelData = repeated.tobytes()
    assert send(gateway.port, series) == [0] * len(series)
    assert gateway.wait_idle(180)

    assert gateway.worker is not None and sum(gateway.worker.processed_by.values()) == len(series)
    stored = {p.stem: dcmread(p) for p in (tmp_path / "archive").rglob("*.dcm")}
    assert len(stored) == len(series)
    for ds in series:
        got = stored[str(ds.SOPInstanceUID)]
        assert got.file_meta.TransferSyntaxUID == private.UID
        [stream] = generate_frames(got.PixelData, number_of_frames=1)
        assert stream[4] == 2
        assert bool(stream[11] & private.PREDICT_SUBBANDS) == (ds is not series[2])
        assert bool(stream[11] & sb.REPEAT) == (ds is series[1])
        assert np.array_equal(got.pixel_array, ds.pixel_array)
