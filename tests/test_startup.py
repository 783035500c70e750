"""A first run without surprises: kernels compiled before the service listens, start-up housekeeping."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from gateway.warmup import CompileWatch, configured_syntaxes, warm_up
from tests.conftest import build_config


def test_compile_watch_announces_once_and_counts_compilations() -> None:
    from numba import njit

    @njit(cache=False)
    def inner(x):
        return x * 3

    @njit(cache=False)
    def outer(a):
        total = 0
        for v in a:
            total += inner(v)
        return total

    calls = []
    with CompileWatch(lambda: calls.append(1)) as watch:
        assert outer(np.arange(4)) == 18
        assert outer(np.arange(4.0)) == 18.0  # a second specialisation
        assert outer(np.arange(4)) == 18  # compiled already
    assert calls == [1]
    assert watch.compiled == 2 and watch.seconds > 0  # nested compilations count with their caller
    with CompileWatch(lambda: calls.append(2)) as quiet:
        outer(np.arange(3))
    assert calls == [1] and quiet.compiled == 0


def test_configured_syntaxes_cover_targets_modalities_and_destination_ladders(tmp_path: Path) -> None:
    config = build_config(
        tmp_path,
        destinations=[{"name": "pacs", "kind": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": 104,
                       "transfer_syntaxes": ["JPEGLSLossless", "RLELossless"]},
                      {"name": "local", "kind": "folder", "path": "archive"}],
        compression={"transfer_syntax": "RLELossless", "modality": {"US": "gwl", "MG": "keep"}},
    )
    uids = configured_syntaxes(config)
    assert uids == ["1.2.840.10008.1.2.5", "2.25.98736700971092333592611877631001549337", "1.2.840.10008.1.2.4.80"]
    assert configured_syntaxes(config, forwarding=False) == uids[:2]


def test_warm_up_runs_each_codec_over_every_image_kind_it_supports() -> None:
    report = warm_up(["RLELossless", "keep", "1.2.840.10008.1.2.1", "rle"])
    assert report.codecs == ["rle"]  # native syntaxes and keep need no kernels; duplicates once
    again = warm_up(["RLELossless"])
    assert again.compiled == 0 and again.compile_seconds == 0.0  # everything is compiled in this process now


def test_gateway_warms_up_before_listening_and_sweeps_the_archive(tmp_path: Path, gateway_factory, caplog) -> None:
    archive = tmp_path / "archive" / "1.2" / "1.2.3"
    archive.mkdir(parents=True)
    stale = archive / f".1.2.3.4.dcm.{'d' * 32}.tmp"
    stale.write_bytes(b"half a copy")
    os.utime(stale, (time.time() - 60, time.time() - 60))
    config = build_config(tmp_path, spool={"keep_done_hours": 1})
    with caplog.at_level(logging.INFO, logger="gateway"):
        gateway = gateway_factory(config)
        for thread in gateway._housekeeping:
            if thread.name.startswith("sweep-"):
                thread.join(30)
    messages = [r.getMessage() for r in caplog.records]
    ready = next(i for i, m in enumerate(messages) if m.startswith("codec kernels ready in"))
    listening = next(i for i, m in enumerate(messages) if m.startswith("listening on"))
    assert ready < listening and "rle" in messages[ready]
    assert not stale.exists()
    assert any("folder archive local: 1 partial copy left by an interrupted write removed" in m for m in messages)


def test_worker_processes_are_ready_before_the_gateway_listens(tmp_path: Path, gateway_factory, caplog) -> None:
    config = build_config(tmp_path, compression={"processes": 1})
    with caplog.at_level(logging.INFO, logger="gateway"):
        gateway_factory(config)
    messages = [r.getMessage() for r in caplog.records]
    ready = next(i for i, m in enumerate(messages) if m.startswith("1 worker process(es) ready in"))
    listening = next(i for i, m in enumerate(messages) if m.startswith("listening on"))
    assert ready < listening


def test_a_codec_failing_its_warm_up_does_not_stop_the_gateway(tmp_path: Path, gateway_factory, caplog,
                                                               monkeypatch) -> None:
    import gateway.warmup

    def broken(syntaxes, **_):
        raise AssertionError("rle: warm-up round trip is not lossless")

    monkeypatch.setattr(gateway.warmup, "warm_up", broken)
    with caplog.at_level(logging.INFO, logger="gateway"):
        gateway = gateway_factory(build_config(tmp_path))
    assert gateway.server is not None
    failed = [r for r in caplog.records if r.getMessage().startswith("codec kernels could not be prepared")]
    assert failed and failed[0].levelno == logging.ERROR and "not lossless" in failed[0].exc_text
