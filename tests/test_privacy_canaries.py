"""Patient data stays in the instances: canary values in identifying attributes never reach a log line, a
warning, the spool's own files, the proof record or the web endpoints.

Each instance here carries unique canary strings in the attributes that identify a patient (name, ID, other
IDs and names, birth date, accession number, referring physician, institution), in a private element, in a
sequence item, in a value pydicom finds malformed (an IS that is no number) and as bytes that are not valid in
the declared character set.  The tests push them along the paths where something of the instance could be
quoted: an archive's answer to a C-STORE, a change of encoding for a destination, the check for an icon in a
sequence.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import urllib.request
import warnings
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt

from gateway.logs import setup_logging
from tests.conftest import build_config, free_port, pydicom_file, send, wait_until

NAME = "CANARYNAME^7f3a"
PATIENT_ID = "CANARYID-91b2"
CANARIES = {
    "PatientName": NAME,
    "PatientID": PATIENT_ID,
    "OtherPatientIDs": "CANARYOPID-11",
    "OtherPatientNames": "CANARYOPN^22",
    "PatientBirthDate": "CANARYDOB33",
    "AccessionNumber": "CANARYACC44",
    "ReferringPhysicianName": "CANARYREF^55",
    "InstitutionName": "CANARYINST66",
    "InstitutionAddress": "CANARYADDR77",
}
_IS_PLACE, _IS_CANARY = b"31415926", b"CANARYIS"  # an IS value pydicom warns about, quoting it
_TEXT_PLACE, _TEXT_CANARY = b"CANARYCOMMENT-PLACE", b"CANARY\xff\xfe\xc3(COMMENT\xa0\xa1"  # not UTF-8


def _canary_bytes(*, icon: bool = False) -> bytes:
    """A CT instance (explicit VR little endian, file meta included) whose identifying attributes hold canaries.

    Its Specific Character Set is ISO_IR 192 (UTF-8) and Patient Comments holds bytes that are not UTF-8 with
    a canary among them.  The IS canary is Instance Number, or with `icon` that of a native icon in the Icon
    Image Sequence.
    """
    ds = pydicom_file("CT_small.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a canary birth date is not a date
        for keyword, value in CANARIES.items():
            setattr(ds, keyword, value)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientComments = _TEXT_PLACE.decode()
    item = Dataset()
    item.PatientID = "CANARYSEQID-aa"
    ds.OtherPatientIDsSequence = Sequence([item])
    ds.private_block(0x0011, "CANARYCREATOR", create=True).add_new(0x10, "LO", "CANARYPRIV99")
    target = ds
    if icon:
        target = Dataset()
        target.SamplesPerPixel, target.PhotometricInterpretation, target.Rows, target.Columns = 1, "MONOCHROME2", 2, 2
        target.BitsAllocated, target.BitsStored, target.HighBit, target.PixelRepresentation = 8, 8, 7, 0
        target.PixelData = b"\x01\x02\x03\x04"
        target["PixelData"].VR = "OB"
        ds.IconImageSequence = Sequence([target])
    target.InstanceNumber = _IS_PLACE.decode()
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    assert data.count(_IS_PLACE) == 1 and data.count(_TEXT_PLACE) == 1
    return data.replace(_IS_PLACE, _IS_CANARY).replace(_TEXT_PLACE, _TEXT_CANARY)


def _leaks(text: str | bytes) -> list[str]:
    """The lines of `text` that hold a canary."""
    lines = text.splitlines() if isinstance(text, str) else text.decode("utf-8", "replace").splitlines()
    return [line for line in lines if "CANARY" in line.upper()]


def _spool_leaks(spool: Path) -> dict[str, list[str]]:
    """Canaries in what the spool holds besides the instances themselves: job manifests, failures, forwarder
    state, the proof record."""
    found: dict[str, list[str]] = {}
    for folder, _dirs, files in os.walk(spool):
        for name in files:
            path = Path(folder) / name
            if name.endswith(".dcm"):
                continue
            if name.endswith(".sqlite"):
                with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                    tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
                    text = "\n".join(repr(row) for table in tables for row in db.execute(f"SELECT * FROM {table}"))
            else:
                text = path.read_bytes().decode("utf-8", "replace")
            if _leaks(text):
                found[str(path.relative_to(spool))] = _leaks(text)
    return found


@pytest.fixture
def recorded_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Every warning raised while the test runs, in any thread, each one shown (none folded into an earlier)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def _quoting(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "CANARY" in str(w.message).upper()]


class EchoingArchive:
    """A C-STORE SCP that refuses every instance with an Error Comment quoting its patient's name and ID, as
    archives do when they report a conflict of patient data."""

    def __init__(self) -> None:
        self.port = free_port()
        self.refused = 0
        self._lock = threading.Lock()
        ae = AE(ae_title="ARCHIVE")
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event: evt.Event) -> Dataset:
        ds = event.dataset
        status = Dataset()
        status.Status = 0xC000
        status.ErrorComment = f"patient {ds.PatientName} has ID {ds.PatientID} here"[:64]
        with self._lock:
            self.refused += 1
        return status


@pytest.fixture
def echoing_archive() -> Iterator[EchoingArchive]:
    archive = EchoingArchive()
    yield archive
    archive.server.shutdown()


def test_an_archives_error_comment_quoting_the_patient_is_not_logged(
        tmp_path: Path, gateway_factory, gateway_logger, echoing_archive: EchoingArchive,
        recorded_warnings: list[warnings.WarningMessage]) -> None:
    log = tmp_path / "gateway.log"
    setup_logging("DEBUG", log)
    web_port = free_port()
    config = build_config(tmp_path, destinations=[
        {"name": "local", "kind": "folder", "path": "archive"},
        {"name": "pacs", "kind": "dicom", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": echoing_archive.port,
         "timeout_seconds": 10}], web={"port": web_port})
    gateway = gateway_factory(config)
    ds = dcmread(BytesIO(_canary_bytes()))
    assert send(gateway.port, [ds]) == [0]
    assert wait_until(lambda: f"dead sop={ds.SOPInstanceUID} destination=pacs" in log.read_text(), timeout=30)
    assert gateway.wait_idle(30)
    assert echoing_archive.refused == 1
    text = log.read_text()
    assert "answered 0xC000" in text, "the archive's answer is still logged, without its comment"
    assert _leaks(text) == []
    assert _spool_leaks(tmp_path / "spool") == {}
    for path in ("/", "/queues", "/dead", f"/search?uid={ds.SOPInstanceUID}", "/metrics"):
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}{path}", timeout=10) as response:
            assert _leaks(response.read()) == [], path
    assert _quoting(recorded_warnings) == []


def test_a_destination_wanting_another_encoding_gets_every_value_unparsed(
        tmp_path: Path, gateway_factory, gateway_logger, peer_factory,
        recorded_warnings: list[warnings.WarningMessage]) -> None:
    """An instance kept as received (explicit VR) goes to an archive that takes implicit VR first: its values
    keep their bytes, so none is parsed (pydicom's warning about a malformed value quotes it) or altered."""
    log = tmp_path / "gateway.log"
    setup_logging("DEBUG", log)
    peer = peer_factory().start()
    config = build_config(tmp_path, destinations=[
        {"name": "pacs", "kind": "dicom", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": peer.port,
         "transfer_syntaxes": ["ImplicitVRLittleEndian"], "timeout_seconds": 10}],
        compression={"transfer_syntax": "keep"})
    gateway = gateway_factory(config)
    ds = dcmread(BytesIO(_canary_bytes()))
    assert send(gateway.port, [ds]) == [0]
    uid = str(ds.SOPInstanceUID)
    assert wait_until(lambda: uid in peer.by_uid(), timeout=30), log.read_text()[-2000:]
    got = peer.by_uid()[uid]
    assert got.original_encoding[0] is True, "sent implicit VR"
    assert got.get_item(0x00104000).value.rstrip(b" ") == _TEXT_CANARY, "Patient Comments keeps its bytes"
    assert got.get_item(0x00200013).value.rstrip(b" ") == _IS_CANARY
    assert _quoting(recorded_warnings) == []
    assert _leaks(log.read_text()) == []


def test_the_check_for_an_icon_parses_no_value_of_the_sequence(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], recorded_warnings: list[warnings.WarningMessage]) -> None:
    """A sequence that may hold Pixel Data is looked into for an encapsulated icon by its elements' tags and
    lengths, not their values: the malformed IS of the icon item is not quoted by a warning."""
    from gateway.cli import main

    src = tmp_path / "ct.dcm"
    src.write_bytes(_canary_bytes(icon=True))
    out = tmp_path / "out" / "ct.dcm"
    assert main(["compress", "--transfer-syntax", "RLELossless", "-v", str(src), str(out)]) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith("ok "), printed
    assert _leaks(printed.out + printed.err) == []
    assert _quoting(recorded_warnings) == []
    assert dcmread(out).IconImageSequence[0].get_item(0x00200013).value.rstrip(b" ") == _IS_CANARY


def test_a_known_element_sent_as_un_is_not_parsed_for_the_icon_check(
        recorded_warnings: list[warnings.WarningMessage]) -> None:
    """An element of the dictionary written with VR UN is read as its own VR when parsed: the icon check parses
    it only if that VR is a sequence, even when its bytes hold Pixel Data's tag."""
    from gateway.pipeline import recompress

    data = _canary_bytes()
    at = data.index(b"\x20\x00\x13\x00IS")  # Instance Number, explicit VR: a 16-bit length
    length = int.from_bytes(data[at + 6:at + 8], "little")
    value = _IS_CANARY + b"\xe0\x7f\x10\x00"
    data = (data[:at] + b"\x20\x00\x13\x00UN\x00\x00" + len(value).to_bytes(4, "little") + value
            + data[at + 8 + length:])
    outcome = recompress(dcmread(BytesIO(data)), "RLELossless")
    assert outcome.recompressed, outcome.reason
    assert _quoting(recorded_warnings) == []


def test_a_warning_quoting_a_malformed_value_reaches_the_log_without_the_value(tmp_path: Path, capsys,
                                                                             gateway_logger) -> None:
    """pydicom's warning about a malformed value quotes it, and went to stderr as it was, outside the log's
    file and format: the gateway's log now takes every warning, its quoted values left out."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    log = tmp_path / "gateway.log"
    ds = Dataset()
    ds[0x00200013] = RawDataElement(Tag(0x00200013), "IS", 12, b"CANARYIS-55 ", 0, False, True)
    ds[0x00100030] = RawDataElement(Tag(0x00100030), "DA", 12, b"O'CANARY-66 ", 0, False, True)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        setup_logging("INFO", log)
        str(ds.InstanceNumber), str(ds.PatientBirthDate)
    text = log.read_text() + capsys.readouterr().err
    assert "Invalid value for VR IS: '...'" in text and "gateway.warnings" in text
    assert "CANARY" not in text, text
