"""Damaged input is looked at and said: even an instance already in the target syntax is decoded.

A codestream that does not decode, a truncated one (some decoders fill the
missing values without an error), or native pixel data shorter than its
attributes say is logged at WARNING, counted, and either forwarded as
received (``[policy] malformed = "forward"``, the default) or held as a dead
letter until ``retry`` (``"hold"``).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import Dataset, dcmread
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import pixel_array
from pydicom.uid import generate_uid

from gateway.cli import main as cli_main
from gateway.errors import ConfigError
from gateway.pipeline import recompress
from gateway.spool import DEAD
from tests.conftest import build_config, pydicom_file, send, wait_until

JPEG_LS = "1.2.840.10008.1.2.4.80"


def _fresh(name: str) -> Dataset:
    ds = pydicom_file(name)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _truncated_jpeg_ls() -> Dataset:
    ds = _fresh("MR_small_jpeg_ls_lossless.dcm")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    return ds


def _bad_header_jpeg_ls() -> Dataset:
    ds = _fresh("MR_small_jpeg_ls_lossless.dcm")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:4] + b"\xff" * 8 + frame[12:]])
    return ds


def _short_native() -> Dataset:
    ds = _fresh("CT_small.dcm")
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    return ds


def _archive(root: Path) -> dict[str, Path]:
    return {p.stem: p for p in (root / "archive").rglob("*.dcm")}


def _hash(ds: Dataset) -> str:
    """The proof record's pixel hash, computed with plain pydicom and numpy."""
    values = pixel_array(ds, raw=True)
    return hashlib.sha256(np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes()).hexdigest()


@pytest.mark.parametrize("make", [_truncated_jpeg_ls, _bad_header_jpeg_ls])
def test_pipeline_finds_damage_in_the_target_syntax(make) -> None:
    outcome = recompress(make(), JPEG_LS)
    assert outcome.malformed and not outcome.recompressed and outcome.reason.startswith("decoding failed")


def test_instance_in_the_target_syntax_is_decoded_for_the_proof(tmp_path: Path, gateway_factory) -> None:
    gw = gateway_factory(build_config(tmp_path, compression={"transfer_syntax": "JPEGLSLossless"}))
    sent = _fresh("MR_small_jpeg_ls_lossless.dcm")
    assert send(gw.port, [sent]) == [0]
    assert gw.wait_idle(60)
    assert dcmread(_archive(tmp_path)[sent.SOPInstanceUID]).PixelData == sent.PixelData
    (row,) = gw.record.find(sent.SOPInstanceUID)
    assert row["reason"] == "already in target syntax"
    assert row["source_decoder"] == "pylibjpeg-libjpeg"
    assert row["pixel_hash"] == _hash(sent)


def test_malformed_instances_are_forwarded_warned_and_counted(tmp_path: Path, gateway_factory, caplog) -> None:
    gw = gateway_factory(build_config(tmp_path, compression={"transfer_syntax": "JPEGLSLossless"},
                                      web={"host": "127.0.0.1", "port": 0}))
    damaged = [_truncated_jpeg_ls(), _bad_header_jpeg_ls(), _short_native()]
    good = _fresh("CT_small.dcm")
    with caplog.at_level(logging.INFO, logger="gateway"):
        assert send(gw.port, [*damaged, good]) == [0] * 4
        assert gw.wait_idle(60)
    files = _archive(tmp_path)
    for ds in damaged:
        assert dcmread(files[ds.SOPInstanceUID]).PixelData == ds.PixelData, "forwarded exactly as received"
        warned = [r for r in caplog.records if ds.SOPInstanceUID in r.getMessage() and "passed-through" in
                  r.getMessage()]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING and "decoding failed" in warned[0].getMessage()
    assert dcmread(files[good.SOPInstanceUID]).file_meta.TransferSyntaxUID == JPEG_LS

    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{gw.web.port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    malformed = [s.value for s in families["dicom_gateway_malformed_instances"].samples if s.name.endswith("_total")]
    assert malformed == [3]


def test_hold_keeps_malformed_instances_until_retry(tmp_path: Path, gateway_factory, capsys) -> None:
    config = build_config(tmp_path, compression={"transfer_syntax": "JPEGLSLossless"}, policy={"malformed": "hold"},
                          forwarding={"rescan_seconds": 0.5})
    gw = gateway_factory(config)
    bad, good = _truncated_jpeg_ls(), _fresh("CT_small.dcm")
    assert send(gw.port, [bad, good]) == [0, 0]
    assert wait_until(lambda: gw.spool.counts()[DEAD] == 1, timeout=60)
    assert gw.wait_idle(60)
    assert set(_archive(tmp_path)) == {good.SOPInstanceUID}, "held, not forwarded"
    (held,) = list(gw.spool.jobs_in(DEAD))
    assert held.reason.startswith("held: malformed pixel data") and held.sop == bad.SOPInstanceUID

    toml = tmp_path / "gateway.toml"
    toml.write_text(f'[spool]\ndirectory = "{config.spool.directory}"\n'
                    '[[destinations]]\nname = "local"\nkind = "folder"\npath = "archive"\n')
    assert cli_main(["status", "--config", str(toml)]) == 0
    out = capsys.readouterr().out
    assert "held: malformed pixel data" in out and bad.SOPInstanceUID in out
    assert cli_main(["retry", "--config", str(toml)]) == 0
    assert wait_until(lambda: bad.SOPInstanceUID in _archive(tmp_path), timeout=60)
    assert dcmread(_archive(tmp_path)[bad.SOPInstanceUID]).PixelData == bad.PixelData


def test_malformed_policy_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"policy\.malformed"):
        build_config(tmp_path, policy={"malformed": "drop"})
