"""Real peers: DCMTK storescu -> gateway -> Orthanc, checked over Orthanc's REST API.

Skipped with the package to install when DCMTK or Orthanc is absent, or with
the corpus variable to set when the corpus is absent.
"""

from __future__ import annotations

import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import RLELossless

from gateway.spool import DEAD
from tests.conftest import build_config, pydicom_file, send, wait_until
from tests.corpus import needs_corpus, series_folders
from tests.tools import require_dcmtk

pytestmark = pytest.mark.interop


def _storescu(port: int, folder: Path, calling: str = "MODALITY") -> subprocess.CompletedProcess:
    storescu = require_dcmtk("storescu")
    return subprocess.run(
        [storescu, "-aet", calling, "-aec", "GATEWAY", "+sd", "+r", "-R", "127.0.0.1", str(port), str(folder)],
        capture_output=True, text=True, timeout=300)


def _orthanc_destination(orthanc, **extra) -> dict:
    return {"name": "orthanc", "kind": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1",
            "port": orthanc.dicom_port, **extra}


def _fetch_all(orthanc) -> dict[str, object]:
    datasets = {}
    for instance in orthanc.instances():
        ds = dcmread(BytesIO(orthanc.file(instance)))
        datasets[str(ds.SOPInstanceUID)] = ds
    return datasets


@needs_corpus
def test_storescu_series_through_gateway_into_orthanc(tmp_path: Path, gateway_factory, orthanc) -> None:
    folder = series_folders()[0]
    sent = {str(ds.SOPInstanceUID): ds for ds in (dcmread(p) for p in sorted(folder.glob("*.dcm")))}
    gateway = gateway_factory(build_config(tmp_path, destinations=[_orthanc_destination(orthanc)]))

    result = _storescu(gateway.port, folder)
    assert result.returncode == 0, result.stderr[-2000:]
    assert gateway.wait_idle(300)
    assert gateway.spool.counts()[DEAD] == 0, list(gateway.spool.jobs_in(DEAD))

    assert wait_until(lambda: len(orthanc.instances()) == len(sent), timeout=60)
    received = _fetch_all(orthanc)
    assert set(received) == set(sent)
    for uid, original in sent.items():
        got = received[uid]
        assert got.file_meta.TransferSyntaxUID == RLELossless, "Orthanc accepts RLE: our first choice"
        assert np.array_equal(got.pixel_array, original.pixel_array), uid


def test_orthanc_refusing_the_first_choice_gets_the_next(tmp_path: Path, gateway_factory, orthanc) -> None:
    """The ladder puts JPEG-LS first; this Orthanc refuses it, so RLE (what we stored) goes instead."""
    dest = _orthanc_destination(orthanc, transfer_syntaxes=["JPEGLSLossless"])
    gateway = gateway_factory(build_config(tmp_path, destinations=[dest]))
    datasets = [pydicom_file("CT_small.dcm"), pydicom_file("MR_small.dcm")]
    assert send(gateway.port, datasets) == [0, 0]
    assert gateway.wait_idle(120)
    assert wait_until(lambda: len(orthanc.instances()) == 2, timeout=30)
    received = _fetch_all(orthanc)
    for ds in datasets:
        got = received[str(ds.SOPInstanceUID)]
        assert got.file_meta.TransferSyntaxUID == RLELossless, "the next rung of the ladder"
        assert np.array_equal(got.pixel_array, ds.pixel_array)


def test_orthanc_refusing_everything_compressed_gets_explicit_little_endian(
        tmp_path: Path, gateway_factory, orthanc) -> None:
    """Stored as JPEG lossless SV1, which this Orthanc refuses: re-encoded (verified) to explicit LE."""
    dest = _orthanc_destination(orthanc)
    gateway = gateway_factory(build_config(tmp_path, destinations=[dest],
                                           compression={"transfer_syntax": "JPEGLosslessSV1"}))
    ds = pydicom_file("CT_small.dcm")
    assert send(gateway.port, [ds]) == [0]
    assert gateway.wait_idle(120)
    assert wait_until(lambda: len(orthanc.instances()) == 1, timeout=30)
    got = _fetch_all(orthanc)[str(ds.SOPInstanceUID)]
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert np.array_equal(got.pixel_array, ds.pixel_array)


@needs_corpus
def test_storescu_to_gateway_with_unknown_caller_is_rejected(tmp_path: Path, gateway_factory) -> None:
    gateway = gateway_factory(build_config(tmp_path, server={"allowed_callers": ["CT_SCANNER"]}))
    folder = series_folders()[0]
    one = tmp_path / "one"
    one.mkdir()
    first = sorted(folder.glob("*.dcm"))[0]
    (one / first.name).write_bytes(first.read_bytes())
    result = _storescu(gateway.port, one, calling="INTRUDER")
    assert result.returncode != 0
    assert "reject" in (result.stdout + result.stderr).lower()
    assert gateway.spool.counts()["received"] == 0
    result = _storescu(gateway.port, one, calling="CT_SCANNER")
    assert result.returncode == 0, result.stderr[-2000:]
    assert gateway.wait_idle(60)
    assert len(list((tmp_path / "archive").rglob("*.dcm"))) == 1
