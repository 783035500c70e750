"""What the receiver's pydicom check may take of one data set (Big Endian, Deflated, irregular files).

The header walk of :mod:`gateway.dicom.walk` decides the common encodings in
constant memory; what it leaves to pydicom, pydicom parses into an object per
element, some 200 bytes each, so a data set of millions of empty elements
(8 bytes each on the wire) would take gigabytes.  Here such data sets are
refused within seconds and a little memory, while real images of those
encodings (few elements, large values) are still taken.
"""

from __future__ import annotations

import logging
import struct
import subprocess
import sys
import time
import zlib
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_file_meta_info

from gateway.net.scp import PARSE_READS_LIMIT, Receiver, TooLarge
from gateway.net.scu import Association
from tests.conftest import build_config, pydicom_file

CT = "1.2.840.10008.5.1.4.1.1.2"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
INSTANCE = "1.2.826.0.1.3680043.2.1125.9.5"
ELEMENTS = 2_000_000
REPO = Path(__file__).resolve().parent.parent
_LONG = {b"OB", b"OW", b"SQ", b"UN", b"UT"}


def _element(group: int, elem: int, vr: bytes, value: bytes, little: bool) -> bytes:
    order = "<" if little else ">"
    if vr in _LONG:
        return struct.pack(f"{order}HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack(f"{order}HH2sH", group, elem, vr, len(value)) + value


def _identifying(little: bool) -> bytes:
    return (_element(0x0008, 0x0016, b"UI", CT.encode() + b"\0", little)
            + _element(0x0008, 0x0018, b"UI", INSTANCE.encode(), little)
            + _element(0x0008, 0x0060, b"CS", b"CT", little))


def _many_empty_elements(count: int, little: bool) -> bytes:
    """The identifying elements, then `count` empty private LO elements (8 bytes each), in tag order."""
    pack = struct.Struct(("<" if little else ">") + "HH2sH").pack
    per_group = 0x10000 - 0x1000
    empty = b"".join(pack(0x0009 + 2 * (i // per_group), 0x1000 + i % per_group, b"LO", 0) for i in range(count))
    return _identifying(little) + empty


def _irregular(data: bytes) -> bytes:
    """`data` (explicit VR little endian) ending with an element of an unknown VR: the walk refuses it,
    pydicom reads it."""
    return data + _element(0x0061, 0x1000, b"ZZ", b"", True)


def _deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def _file(path: Path, syntax: str, data: bytes) -> Path:
    """A DICOM file of the data set `data` (already encoded in `syntax`), as the receiver writes it."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT
    meta.MediaStorageSOPInstanceUID = INSTANCE
    meta.TransferSyntaxUID = syntax
    buffer = BytesIO()
    out = DicomFileLike(buffer)
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    path.write_bytes(buffer.getvalue() + data)
    return path


def _hostile(kind: str) -> tuple[str, bytes]:
    """(transfer syntax, data set) of two million empty elements, as Big Endian, Deflated, irregular or
    plain explicit VR little endian."""
    if kind == "big-endian":
        return BIG_ENDIAN, _many_empty_elements(ELEMENTS, little=False)
    if kind == "deflated":
        return DEFLATED, _deflate(_many_empty_elements(ELEMENTS, little=True))
    if kind == "walked":  # the walk takes it in constant memory; the worker's pydicom would not
        return EXPLICIT, _many_empty_elements(ELEMENTS, little=True)
    return EXPLICIT, _irregular(_many_empty_elements(ELEMENTS, little=True))


# The peak resident memory of this process's own address space (VmHWM): ru_maxrss would start from the
# parent's, which a child made by fork or vfork inherits.
_CHILD = """
import sys
from pathlib import Path
from gateway.net.scp import Receiver, TooLarge

def peak_kb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

path, syntax = Path(sys.argv[1]), sys.argv[2]
before = peak_kb()
try:
    Receiver._check(path, syntax)
    outcome = "accepted"
except TooLarge:
    outcome = "too-large"
except Exception as exc:
    outcome = type(exc).__name__
print(outcome, (peak_kb() - before) // 1024)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM in /proc/self/status")
@pytest.mark.parametrize("kind", ["big-endian", "deflated", "irregular", "walked"])
def test_millions_of_elements_are_refused_in_little_memory(tmp_path: Path, kind: str) -> None:
    """Checked in a process of its own, whose peak memory is its own: it grows by tens of MB, not gigabytes."""
    syntax, data = _hostile(kind)
    path = _file(tmp_path / "many.dcm", syntax, data)
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-c", _CHILD, str(path), syntax], capture_output=True, text=True,
                         timeout=60, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    outcome, grown_mb = run.stdout.split()
    assert outcome == "too-large"
    assert int(grown_mb) < 150, f"peak memory grew by {grown_mb} MB"
    assert time.monotonic() - started < 15


def _big_image(little: bool, pixels: int) -> bytes:
    """A data set of a few elements and `pixels` bytes of native Pixel Data (OW)."""
    order = "<" if little else ">"
    image = (_identifying(little)
             + _element(0x0028, 0x0010, b"US", struct.pack(f"{order}H", 1024), little)
             + _element(0x0028, 0x0011, b"US", struct.pack(f"{order}H", pixels // 2048), little)
             + _element(0x0028, 0x0100, b"US", struct.pack(f"{order}H", 16), little))
    return image + _element(0x7FE0, 0x0010, b"OW", bytes(pixels), little)


@pytest.mark.parametrize("syntax", [BIG_ENDIAN, DEFLATED])
def test_large_images_of_these_encodings_are_taken(tmp_path: Path, syntax: str) -> None:
    """Their pixel data is skipped, not read: what is bounded is the elements parsed and the bytes read."""
    data = _big_image(syntax != BIG_ENDIAN, 96 << 20)
    if syntax == DEFLATED:
        data = _deflate(data)
    identity = Receiver._check(_file(tmp_path / "big.dcm", syntax, data), syntax)
    assert identity.sop_instance_uid == INSTANCE and identity.modality == "CT"


def test_a_refused_data_set_is_answered_out_of_resources(tmp_path: Path, gateway_factory, caplog) -> None:
    """Over the network: 0xA700 within seconds, one log line naming the limit, nothing left in the spool;
    a real Big Endian image is stored next."""
    gateway = gateway_factory(build_config(tmp_path))
    _, data = _hostile("big-endian")
    with caplog.at_level(logging.INFO, logger="gateway"):
        started = time.monotonic()
        with Association.request("127.0.0.1", gateway.port, called_ae="GATEWAY", calling_ae="MODALITY",
                                 contexts=[(CT, BIG_ENDIAN)], timeout=60, connect_timeout=5) as assoc:
            status = assoc.c_store(CT, INSTANCE, BIG_ENDIAN, data).status
            elapsed = time.monotonic() - started
    assert status == 0xA700
    assert elapsed < 20  # some 3 s; unbounded, pydicom parsed all two million elements, into some 600 MB
    lines = [r.getMessage() for r in caplog.records if "status=0xA700" in r.getMessage()]
    assert len(lines) == 1 and f"more than {PARSE_READS_LIMIT} elements" in lines[0], lines
    assert list(gateway.spool.tmp.iterdir()) == []  # before the worker writes there for the image below
    mr = pydicom_file("MR_small_bigendian.dcm")
    buffer = BytesIO()
    mr.save_as(buffer, enforce_file_format=True)
    raw = buffer.getvalue()
    offset = 132 + 12 + struct.unpack_from("<I", raw, 140)[0]
    with Association.request("127.0.0.1", gateway.port, called_ae="GATEWAY", calling_ae="MODALITY",
                             contexts=[(str(mr.SOPClassUID), BIG_ENDIAN)], timeout=10, connect_timeout=5) as assoc:
        assert assoc.c_store(str(mr.SOPClassUID), str(mr.SOPInstanceUID), BIG_ENDIAN, raw[offset:]).status == 0


def test_values_read_to_check_are_bounded_too(tmp_path: Path, monkeypatch) -> None:
    """Values up to 256 KiB are read to be checked, not skipped: past PARSE_BYTES_LIMIT of them, refused."""
    import gateway.net.scp

    values = b"".join(_element(0x0009, 0x1000 + n, b"OB", bytes(200 * 1024), False) for n in range(10))
    path = _file(tmp_path / "values.dcm", BIG_ENDIAN, _identifying(False) + values)
    monkeypatch.setattr(gateway.net.scp, "PARSE_BYTES_LIMIT", 1 << 20)
    with pytest.raises(TooLarge, match="bytes of values"):
        Receiver._check(path, BIG_ENDIAN)
    monkeypatch.setattr(gateway.net.scp, "PARSE_BYTES_LIMIT", 4 << 20)
    assert Receiver._check(path, BIG_ENDIAN).sop_instance_uid == INSTANCE
