"""The receiver's header walk: it agrees with pydicom, and never accepts a cut or damaged file."""

from __future__ import annotations

import glob
from pathlib import Path

import pydicom.data
import pytest
from hypothesis import HealthCheck, given, settings
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from gateway.dicom.walk import Identity, walk_file
from gateway.net.scp import Receiver
from tests.conftest import pydicom_file
from tests.corpus import corpus_params
from tests.fuzzing import EDITS, apply_edits

FIELDS = ("sop_class_uid", "sop_instance_uid", "study_uid", "series_uid", "modality")
PYDICOM_FILES = sorted(Path(p).name for p in glob.glob(str(Path(pydicom.data.__file__).parent / "test_files" / "*.dcm")))
# Files with sequences, implicit VR, encapsulated fragments and private tags.
SMALL = ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm", "rtplan.dcm", "JPEG2000.dcm",
         "SC_rgb_jpeg_gdcm.dcm"]


def _pydicom_verdict(path: Path) -> tuple[str, ...] | Exception:
    """What the receiver's pydicom check says: the identifying values, or the error."""
    try:
        receipt = Receiver._check_with_pydicom(path, "?")
    except Exception as exc:  # noqa: BLE001 - any refusal counts
        return exc
    return tuple(getattr(receipt, name) for name in FIELDS)


def _agrees(path: Path) -> Identity | None:
    """Walk `path`; when the walk accepts, pydicom must accept with the same values."""
    try:
        identity = walk_file(path)
    except ValueError:
        return None
    if identity is not None:
        verdict = _pydicom_verdict(path)
        assert not isinstance(verdict, Exception), f"the walk accepts what pydicom refuses: {verdict}"
        assert tuple(getattr(identity, name) for name in FIELDS) == verdict
    return identity


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", PYDICOM_FILES)
def test_walk_agrees_with_pydicom_on_its_test_files(name: str) -> None:
    _agrees(Path(pydicom.data.__file__).parent / "test_files" / name)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("entry", corpus_params(limit_per_series=5))
def test_walk_agrees_with_pydicom_on_scanner_files(entry: dict) -> None:
    identity = _agrees(entry["file"])
    assert identity is not None, "scanner files in common encodings are decided by the walk"


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", SMALL)
def test_walk_refuses_every_truncation_pydicom_refuses(tmp_path: Path, name: str) -> None:
    """Cut after every byte of the last 600 and at 400 points before: refused unless complete.

    A cut that falls exactly between two top-level elements leaves a shorter
    but complete dataset, which no parser can tell from a whole one; every
    other cut must be refused, as pydicom's check refuses it.
    """
    source = tmp_path / "full.dcm"
    pydicom_file(name).save_as(source, enforce_file_format=True)
    data = source.read_bytes()
    assert walk_file(source) is not None
    cut = tmp_path / "cut.dcm"
    positions = set(range(max(200, len(data) - 600), len(data))) | set(range(200, len(data), max(1, len(data) // 400)))
    refused = 0
    for end in sorted(positions):
        cut.write_bytes(data[:end])
        pydicom_refuses = isinstance(_pydicom_verdict(cut), Exception)
        if pydicom_refuses:
            with pytest.raises(ValueError):
                walk_file(cut)
            refused += 1
        else:
            _agrees(cut)
    assert refused > 0.8 * len(positions)


def test_walk_leaves_big_endian_and_deflated_to_pydicom(tmp_path: Path) -> None:
    for name in ("MR_small_bigendian.dcm", "image_dfl.dcm"):
        path = tmp_path / name
        pydicom_file(name).save_as(path, enforce_file_format=True)
        assert walk_file(path) is None


def _nested(depth: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "OT"
    inner = Dataset()
    inner.CodeValue = "X"
    for _ in range(depth):
        outer = Dataset()
        outer.ContentSequence = Sequence([inner])
        inner = outer
    ds.ContentSequence = Sequence([inner])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@pytest.mark.parametrize("undefined", [True, False], ids=["undefined-lengths", "defined-lengths"])
def test_walk_reads_nested_sequences_and_limits_depth(tmp_path: Path, undefined: bool) -> None:
    """Undefined-length sequences are walked item by item (to a depth limit); defined ones skipped whole."""
    from pydicom.filewriter import dcmwrite

    for depth in (10, 80):
        ds = _nested(depth)
        for element in ds.iterall():
            if element.VR == "SQ":
                element.is_undefined_length = undefined
                for item in element.value:
                    item.is_undefined_length_sequence_item = undefined
        path = tmp_path / f"nested{depth}.dcm"
        dcmwrite(path, ds, enforce_file_format=True)
        assert (b"\xfe\xff\xdd\xe0" in path.read_bytes()) is undefined
        if undefined and depth > 64:
            with pytest.raises(ValueError, match="nested deeper"):
                walk_file(path)
            continue
        identity = walk_file(path)
        assert identity is not None and identity.sop_instance_uid == ds.SOPInstanceUID
        assert identity.modality == "OT" and identity.study_uid == ""


def test_walk_refuses_missing_or_invalid_uids(tmp_path: Path) -> None:
    ds = pydicom_file("CT_small.dcm")
    del ds.SOPClassUID
    path = tmp_path / "no_class.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ValueError, match="sop class UID"):
        walk_file(path)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("charset, accepted", [("ISO_IR\x00100", False), ("ISO\x00IR 100", True)])
def test_walk_leaves_a_character_set_holding_a_nul_to_pydicom(tmp_path: Path, charset: str, accepted: bool) -> None:
    """A Specific Character Set with a NUL byte may name no encoding pydicom can look up: the walk
    leaves such a file to the receiver's pydicom check, which refuses it, or accepts it where
    it reads the name as a misspelling of a known one."""
    ds = pydicom_file("CT_small.dcm")
    ds.SpecificCharacterSet = "ISO_IR 100"  # written, then its bytes replaced (pydicom writes no such name)
    path = tmp_path / "charset.dcm"
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    assert data.count(b"ISO_IR 100") == 1 and len(charset) == len("ISO_IR 100")
    path.write_bytes(data.replace(b"ISO_IR 100", charset.encode()))
    with pytest.raises(ValueError, match="Specific Character Set"):
        walk_file(path)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    if accepted:
        assert Receiver._check(path, syntax).sop_instance_uid == ds.SOPInstanceUID
    else:
        with pytest.raises(ValueError, match="null character"):
            Receiver._check(path, syntax)


def _valid_files(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    folder = tmp_path_factory.mktemp("walk_fuzz")
    out = []
    for name in SMALL[:4]:
        path = folder / name
        pydicom_file(name).save_as(path, enforce_file_format=True)
        out.append(path.read_bytes())
    return out


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return _valid_files(tmp_path_factory)


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(EDITS)
def test_fuzz_walk_never_accepts_what_pydicom_refuses(tmp_path: Path, valid_files: list[bytes],
                                                      edits: list[tuple[int, int, str]]) -> None:
    """Damaged files (edits after the preamble): the walk refuses, defers, or agrees with pydicom."""
    for number, data in enumerate(valid_files):
        path = tmp_path / f"fuzz{number}.dcm"
        head, body = data[:132], data[132:]
        path.write_bytes(head + apply_edits(body, edits))
        _agrees(path)
