"""Re-encoding on the way out: an object in the syntax a destination takes, every attribute kept.

Objects stored in implicit VR, big endian or deflated syntaxes (kept as
received: SR, KO, "keep" modalities, pass-throughs) go to an archive that
wants explicit VR little endian; the archive (DCMTK's storescp) must receive
every attribute as stored.  And a syntax the object cannot be written in is
only that: the sender tries the next one, and one instance's trouble never
fails the rest of a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.tag import Tag
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, RLELossless, generate_uid)

from gateway.config import Destination, RetryConfig
from gateway.dicom.identity import Identity
from gateway.forward import DicomSender, Forwarder
from gateway.forward.transcode import encode_for
from gateway.spool import DEAD, DONE, Job, Spool
from tests.conftest import dcmtk_storescp, make_series, pydicom_file, wait_until

_PIXEL_DATA = Tag(0x7FE0, 0x0010)
_TRAILING_PADDING = Tag(0xFFFC, 0xFFFC)


def _image() -> Dataset:
    ds = make_series(1, rows=16, columns=16)[0]
    # CT_small's signed padding value beside unsigned pixels: implicit VR would read it back as unsigned.
    del ds.PixelPaddingValue
    return ds


def _report() -> Dataset:
    """A Basic Text SR with a content sequence: nested items to convert too, no pixel data."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "SR", "TEST^REPORT", "SR1"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    item = Dataset()
    item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", "no findings"
    ds.ContentSequence = [item]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    return ds


def _big_endian_image() -> Dataset:
    return pydicom_file("MR_small_bigendian.dcm")


def _report_with_words() -> Dataset:
    """The report with an overlay: a binary value of 16-bit words, whose bytes change order with the syntax."""
    ds = _report()
    ds.add_new(0x60000010, "US", 2)  # Overlay Rows
    ds.add_new(0x60000011, "US", 16)  # Overlay Columns
    ds.add_new(0x60003000, "OW", bytes(range(1, 5)))  # Overlay Data: two 16-bit words
    return ds


def _written(ds: Dataset, syntax: str, path: Path) -> Path:
    """`ds` written as a processed object in `syntax` (big endian ones are written as they were read)."""
    ds.file_meta.TransferSyntaxUID = syntax
    if syntax == ExplicitVRBigEndian:
        dcmwrite(path, ds, enforce_file_format=True)
    else:
        dcmwrite(path, ds, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True,
                 enforce_file_format=True)
    return path


SOURCES: dict[str, tuple[Callable[[], Dataset], str]] = {
    "image-implicit": (_image, ImplicitVRLittleEndian),
    "image-explicit": (_image, ExplicitVRLittleEndian),
    "image-deflated": (_image, DeflatedExplicitVRLittleEndian),
    "image-big-endian": (_big_endian_image, ExplicitVRBigEndian),
    "report-implicit": (_report, ImplicitVRLittleEndian),
    "report-deflated": (_report, DeflatedExplicitVRLittleEndian),
    "report-big-endian": (_report_with_words, ExplicitVRBigEndian),
}
_WORDS = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


def differences(stored: Dataset, got: Dataset, where: str = "", *, vrs: bool | None = None) -> list[str]:
    """Every attribute of `stored` and `got` that differs, items of sequences included.

    Values are compared as read, so a number keeps its value in either byte
    order; Pixel Data by its decoded pixels for the same reason.  VRs are
    compared when both objects were written with explicit VR (an implicit
    one names none: the reader takes the dictionary's, resolving ``US or
    SS`` from the Pixel Representation).  Left out: group lengths (retired,
    and not written by pydicom) and Data Set Trailing Padding, which any
    application may drop (PS3.10 7.2; storescp does).
    """
    if vrs is None:
        vrs = stored.original_encoding[0] is False and got.original_encoding[0] is False
    out: list[str] = []
    for tag in sorted(set(stored.keys()) | set(got.keys())):
        name = f"{where}{tag}"
        if tag.element == 0 or tag == _TRAILING_PADDING:
            continue
        if tag not in stored or tag not in got:
            out.append(f"{name} only in the {'stored object' if tag in stored else 'received one'}")
            continue
        a, b = stored[tag], got[tag]
        if vrs and a.VR != b.VR:
            out.append(f"{name} VR {a.VR} became {b.VR}")
        elif a.VR == "SQ":
            if len(a.value) != len(b.value):
                out.append(f"{name} has {len(b.value)} items, not {len(a.value)}")
            for index, (x, y) in enumerate(zip(a.value, b.value)):
                out.extend(differences(x, y, f"{name}[{index}].", vrs=vrs))
        elif tag == _PIXEL_DATA:
            if not np.array_equal(stored.pixel_array, got.pixel_array):
                out.append(f"{name} decodes to other pixels")
        elif a.VR in _WORDS and isinstance(a.value, bytes) and isinstance(b.value, bytes):  # as numbers
            size = _WORDS[a.VR]
            words = [np.frombuffer(x.value, ("<" if ds.original_encoding[1] else ">") + f"u{size}")
                     for x, ds in ((a, stored), (b, got))]
            if not np.array_equal(*words):
                out.append(f"{name} {words[0]} became {words[1]}")
        elif a.value != b.value:
            out.append(f"{name} {a.value!r} became {b.value!r}")
    return out


# A big endian image leaves through the pipeline, which writes the two native syntaxes.
_CHANGES = [(source, target) for source in SOURCES
            for target in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
            if not (source == "image-big-endian" and target == DeflatedExplicitVRLittleEndian)]


@pytest.mark.parametrize(("source", "target"), _CHANGES)
def test_every_attribute_survives_a_change_of_encoding(tmp_path: Path, source: str, target: str) -> None:
    make, stored = SOURCES[source]
    path = _written(make(), stored, tmp_path / "object.dcm")
    encoded = encode_for(path, stored, target)
    assert encoded is not None
    buffer = BytesIO()
    dcmwrite(buffer, encoded, enforce_file_format=True)
    got = dcmread(BytesIO(buffer.getvalue()))
    assert got.file_meta.TransferSyntaxUID == target
    assert differences(dcmread(path), got) == []
    # PS3.10 7.1: the file meta names the implementation that wrote the file, here the gateway
    assert got.file_meta.ImplementationClassUID == "2.25.53897576694086526053863854056254947965"
    assert "SourceApplicationEntityTitle" not in got.file_meta


# ------------------------------------------------------------------ to DCMTK's storescp


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK's storescp, accepting every syntax it knows, writing what it gets as received."""
    out = tmp_path / "archive"
    out.mkdir()
    with dcmtk_storescp(tmp_path, "ARCHIVE", out) as port:
        yield port, out


def _stage(spool: Spool, ds: Dataset, syntax: str) -> Job:
    ident = spool.new_id()
    spool.store_object(ident, _written(ds, syntax, spool.temp_path()))
    job = Job(ident, "archive", identity=Identity(str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                                                  str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                                                  str(ds.Modality), syntax))
    spool.add_job(job)
    return job


@pytest.mark.interop
def test_storescp_receives_every_attribute_in_the_syntax_the_destination_wants(tmp_path: Path, storescp) -> None:
    port, out = storescp
    spool = Spool(tmp_path / "spool")
    jobs = [_stage(spool, make(), stored) for make, stored in SOURCES.values()]
    stored = {job.identity.sop_instance_uid: dcmread(spool.object_path(job.instance)) for job in jobs}
    dest = Destination("archive", "dicom", ae_title="ARCHIVE", host="127.0.0.1", port=port, timeout_seconds=10,
                       transfer_syntaxes=(ExplicitVRLittleEndian,))
    retry = RetryConfig(max_attempts=2, base_seconds=0.05, cap_seconds=0.1, probe_seconds=0.05)
    forwarder = Forwarder(dest, spool, retry, DicomSender(dest))
    forwarder.start()
    try:
        assert wait_until(lambda: all(spool.find_job(j.instance, "archive").state in (DONE, DEAD) for j in jobs),
                          timeout=60)
    finally:
        forwarder.stop()
        forwarder.join(10)
    assert {spool.find_job(j.instance, "archive").reason for j in jobs} == {None}
    received = {str(ds.SOPInstanceUID): ds for ds in (dcmread(p) for p in out.iterdir())}
    assert received.keys() == stored.keys()
    for uid, ds in received.items():
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert differences(stored[uid], ds) == [], uid


# ------------------------------------------------------------------ a syntax that cannot be written


def _relabelled(path: Path, stored: str, target: str) -> Dataset:
    """A transcoder that only renames the encoding: raw implicit elements cannot be written as explicit."""
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = target
    ds.set_original_encoding(target == ImplicitVRLittleEndian, True, ds.original_character_set)
    return ds


def _refusing(path: Path, stored: str, target: str) -> Dataset:
    raise RuntimeError(f"no encoder for {target}")


def _dicom_destination(peer, **kwargs) -> Destination:
    return Destination("archive", "dicom", ae_title=peer.ae_title, host="127.0.0.1", port=peer.port,
                       timeout_seconds=10, **kwargs)


def test_a_syntax_the_instance_cannot_be_written_in_gives_way_to_the_next(tmp_path: Path, peer_factory) -> None:
    """Explicit VR is configured first; writing it fails; the instance goes as stored, in implicit VR."""
    peer = peer_factory(syntaxes=[ExplicitVRLittleEndian, ImplicitVRLittleEndian]).start()
    spool = Spool(tmp_path)
    original = _image()
    job = _stage(spool, original, ImplicitVRLittleEndian)
    sender = DicomSender(_dicom_destination(peer, transfer_syntaxes=(ExplicitVRLittleEndian,)),
                         transcode=_relabelled)
    sender.prepare([job])
    assert sender.send(job, spool.object_path(job.instance)) == ImplicitVRLittleEndian
    sender.close()
    got = peer.by_uid()[str(original.SOPInstanceUID)]
    assert np.array_equal(got.pixel_array, original.pixel_array)


def test_no_syntax_that_can_be_written_is_a_dead_letter_saying_why(tmp_path: Path, peer_factory) -> None:
    peer = peer_factory(syntaxes=[ExplicitVRLittleEndian]).start()  # not the stored RLE
    spool = Spool(tmp_path)
    ds = _image()
    ds.compress(RLELossless, encoding_plugin="gateway")
    job = _stage(spool, ds, RLELossless)
    forwarder = Forwarder(_dicom_destination(peer), spool, RetryConfig(max_attempts=5, base_seconds=0.05, probe_seconds=0.05),
                          DicomSender(_dicom_destination(peer), transcode=_refusing))
    forwarder.start()
    try:
        assert wait_until(lambda: spool.find_job(job.instance, "archive").state == DEAD, timeout=20)
    finally:
        forwarder.stop()
        forwarder.join(10)
    dead = spool.find_job(job.instance, "archive")
    assert dead.attempts == 1, "a permanent failure, not retried"
    assert "could not be encoded in any of them" in dead.reason
    assert "Explicit VR Little Endian: RuntimeError: no encoder for 1.2.840.10008.1.2.1" in dead.reason
    assert peer.received == []


def test_a_syntax_that_cannot_be_written_does_not_fail_a_committed_batch(tmp_path: Path) -> None:
    """Storage commitment stores a whole batch at its first instance: each goes in the syntax it can."""
    from tests.test_commitment import CommitArchive

    archive = CommitArchive()
    try:
        spool = Spool(tmp_path)
        jobs = [_stage(spool, ds, ImplicitVRLittleEndian) for ds in make_series(3, rows=16, columns=16)]
        dest = Destination("archive", "dicom", ae_title="ARCHIVE", host="127.0.0.1", port=archive.port,
                           timeout_seconds=10, storage_commitment=True, commitment_timeout_seconds=10,
                           transfer_syntaxes=(ExplicitVRLittleEndian,))
        sender = DicomSender(dest, transcode=_relabelled, locate=lambda job: spool.object_path(job.instance))
        sender.prepare(jobs)
        sent = [sender.send(job, spool.object_path(job.instance)) for job in jobs]
        sender.close()
        assert sent == [ImplicitVRLittleEndian] * 3
        assert len(archive.requests) == 1, "one N-ACTION for the batch"
        assert sorted(archive.stored) == sorted(job.identity.sop_instance_uid for job in jobs)
    finally:
        archive.stop()
