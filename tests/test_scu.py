"""The Upper Layer requestor (:mod:`gateway.net.scu`) against independent decoders and real or hostile peers.

Encodings are checked with pynetdicom's PDU classes and pydicom's dataset
reader; associations run against pynetdicom SCPs, DCMTK's ``storescp`` and a
scripted socket server that answers with chosen (often broken) bytes.
Everything binds 127.0.0.1 on ports found free at run time.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import Dataset, dcmread
from pydicom.filereader import read_dataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ

from gateway.dicom.filemeta import read_file_meta
from gateway.errors import AssociationAbortedError, AssociationRejectedError, NetworkError, PeerProtocolError
from gateway.net import scu
from gateway.net.scu import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, Association, Context, StoreResult
from tests.conftest import dcmtk_storescp, free_port, pydicom_file, wait_until
from tests.fuzzing import EDITS, apply_edits
from tests.tools import issue, make_ca

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
SC = "1.2.840.10008.5.1.4.1.1.7"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
RLE = "1.2.840.10008.1.2.5"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

SAMPLES = ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "SC_rgb_rle.dcm", "MR_small_implicit.dcm"]

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _write(folder: Path, ds: Dataset, name: str | None = None) -> Path:
    path = folder / (name or f"{ds.SOPInstanceUID}.dcm")
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def _sample_files(folder: Path, names: list[str] = SAMPLES) -> list[tuple[Path, Dataset]]:
    """pydicom's files `names` written to `folder`, each with a new SOP Instance UID."""
    files = []
    for name in names:
        ds = pydicom_file(name)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        files.append((_write(folder, ds), ds))
    return files


def _dataset_bytes(path: Path) -> tuple[bytes, str]:
    """The encoded dataset after the file meta (as pydicom reads the meta), and its syntax."""
    data = path.read_bytes()
    offset, syntax = read_file_meta(path)
    return data[offset:], syntax


def _large_ct(rows: int = 512, columns: int = 512) -> Dataset:
    """CT_small with a bigger, varied image and a new SOP Instance UID."""
    ds = pydicom_file("CT_small.dcm")
    rng = np.random.default_rng(7)
    ds.Rows, ds.Columns = rows, columns
    ds.PixelData = rng.integers(0, 4096, (rows, columns), dtype=np.uint16).tobytes()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            del ds[keyword]
    return ds


# ------------------------------------------------------------ encodings


def test_associate_rq_decodes_with_pynetdicom() -> None:
    contexts = [(1, VERIFICATION, IMPLICIT), (3, CT, RLE), (5, CT, EXPLICIT), (255, MR, "1.2.840.10008.1.2.4.80")]
    pdu = scu.encode_associate_rq("ARCHIVE", "GATEWAY", contexts, max_pdu=32768)
    assert pdu[0] == 0x01 and struct.unpack_from(">I", pdu, 2)[0] == len(pdu) - 6
    rq = A_ASSOCIATE_RQ()
    rq.decode(pdu)
    assert rq.protocol_version == 1
    assert (rq.called_ae_title, rq.calling_ae_title) == ("ARCHIVE", "GATEWAY")
    assert rq.application_context_name == APPLICATION_CONTEXT
    assert [(cx.context_id, cx.abstract_syntax, cx.transfer_syntax) for cx in rq.presentation_context] == [
        (ident, abstract, [transfer]) for ident, abstract, transfer in contexts]
    user = rq.user_information
    assert user.maximum_length == 32768
    assert user.implementation_class_uid == IMPLEMENTATION_CLASS_UID
    assert user.implementation_version_name == IMPLEMENTATION_VERSION_NAME
    assert 1 <= len(IMPLEMENTATION_VERSION_NAME) <= 16


def test_associate_rq_announces_default_maximum_and_pads_ae_titles() -> None:
    pdu = scu.encode_associate_rq("A", "  B  ", [(1, VERIFICATION, IMPLICIT)])
    assert pdu[10:26] == b"A".ljust(16) and pdu[26:42] == b"B".ljust(16)
    rq = A_ASSOCIATE_RQ()
    rq.decode(pdu)
    assert rq.user_information.maximum_length == scu.MAX_PDU_RECEIVED


@pytest.mark.parametrize("called, calling, uid", [
    ("", "GATEWAY", CT), ("X" * 17, "GATEWAY", CT), ("ARCHIVE", "BAD\\AE", CT), ("ARCHIVE", "é", CT),
    ("ARCHIVE", "GATEWAY", ""), ("ARCHIVE", "GATEWAY", "1.2.abc"), ("ARCHIVE", "GATEWAY", "1." * 40),
])
def test_associate_rq_refuses_bad_titles_and_uids(called: str, calling: str, uid: str) -> None:
    with pytest.raises(ValueError):
        scu.encode_associate_rq(called, calling, [(1, uid, EXPLICIT)])


def _decode_command(data: bytes) -> Dataset:
    ds = decode(BytesIO(data), True, True)
    group_length = struct.unpack_from("<I", data, 8)[0]
    assert data[:8] == b"\x00\x00\x00\x00\x04\x00\x00\x00", "Command Group Length comes first"
    assert ds.CommandGroupLength == group_length == len(data) - 12
    return ds


@pytest.mark.parametrize("message_id, priority, instance", [(1, 0, "1.2.3"), (0xFFFF, 2, "1.2.3.45"), (7, 1, "9")])
def test_store_command_decodes_with_pydicom(message_id: int, priority: int, instance: str) -> None:
    data = scu.store_command(message_id, CT, instance, priority)
    assert len(data) % 2 == 0
    ds = _decode_command(data)
    assert ds.AffectedSOPClassUID == CT
    assert ds.AffectedSOPInstanceUID == instance
    assert ds.CommandField == 0x0001
    assert ds.MessageID == message_id
    assert ds.Priority == priority
    assert ds.CommandDataSetType != 0x0101
    assert set(ds.keys()) == {0x00000000, 0x00000002, 0x00000100, 0x00000110, 0x00000700, 0x00000800, 0x00001000}


def test_echo_command_decodes_with_pydicom() -> None:
    ds = _decode_command(scu.echo_command(513))
    assert ds.AffectedSOPClassUID == VERIFICATION
    assert ds.CommandField == 0x0030
    assert ds.MessageID == 513
    assert ds.CommandDataSetType == 0x0101
    assert "Priority" not in ds and "AffectedSOPInstanceUID" not in ds


def test_store_command_refuses_bad_uids() -> None:
    with pytest.raises(ValueError, match="SOP Instance UID"):
        scu.store_command(1, CT, "1.2.x")
    with pytest.raises(ValueError, match="SOP Class UID"):
        scu.store_command(1, "", "1.2.3")


def test_parse_command_reads_what_pydicom_encodes() -> None:
    ds = Dataset()
    ds.AffectedSOPClassUID = CT
    ds.CommandField = 0x8001
    ds.MessageIDBeingRespondedTo = 42
    ds.CommandDataSetType = 0x0101
    ds.Status = 0xB000
    ds.ErrorComment = "coerced"
    elements = scu.parse_command(encode(ds, True, True))
    assert struct.unpack("<H", elements[0x0100])[0] == 0x8001
    assert struct.unpack("<H", elements[0x0120])[0] == 42
    assert struct.unpack("<H", elements[0x0900])[0] == 0xB000
    assert elements[0x0902].rstrip(b" ") == b"coerced"
    assert elements[0x0002].rstrip(b"\x00") == CT.encode()


@pytest.mark.parametrize("data, message", [
    (b"\x08\x00\x00\x01\x02\x00\x00\x00\x01\x80", "outside group 0000"),
    (b"\x00\x00\x00\x09\x10\x00\x00\x00\x01\x80", "runs past the end"),
    (b"\x00\x00\x00\x09\x02", "inside an element header"),
])
def test_parse_command_refuses_malformed_sets(data: bytes, message: str) -> None:
    with pytest.raises(PeerProtocolError, match=message):
        scu.parse_command(data)


# -------------------------------------------- a hand-built A-ASSOCIATE-AC


def _item(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(payload)) + payload


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBI", kind, 0, len(body)) + body


def associate_ac(contexts: list[tuple[int, str, str]], max_pdu: int | None = 16384,
                 results: dict[int, int] | None = None) -> bytes:
    """An A-ASSOCIATE-AC accepting `contexts` (id, abstract, transfer) unless `results` says otherwise."""
    items = _item(0x10, APPLICATION_CONTEXT.encode())
    for ident, _, transfer in contexts:
        result = (results or {}).get(ident, 0)
        items += _item(0x21, bytes((ident, 0, result, 0)) + _item(0x40, transfer.encode()))
    user = _item(0x52, b"1.2.3.4")
    if max_pdu is not None:
        user = _item(0x51, struct.pack(">I", max_pdu)) + user
    items += _item(0x50, user)
    body = struct.pack(">HH", 1, 0) + b"ARCHIVE".ljust(16) + b"GATEWAY".ljust(16) + bytes(32) + items
    return _pdu(0x02, body)


def test_hand_built_ac_decodes_with_pynetdicom_and_parses() -> None:
    contexts = [(1, VERIFICATION, IMPLICIT), (3, CT, RLE), (5, CT, EXPLICIT)]
    pdu = associate_ac(contexts, max_pdu=4096, results={3: 4})
    ac = A_ASSOCIATE_AC()
    ac.decode(pdu)
    assert [(cx.context_id, cx.result, cx.transfer_syntax) for cx in ac.presentation_context] == [
        (1, 0, IMPLICIT), (3, 4, RLE), (5, 0, EXPLICIT)]
    assert ac.user_information.maximum_length == 4096
    assert scu.parse_associate_ac(pdu[6:]) == ({1: (0, IMPLICIT), 3: (4, RLE), 5: (0, EXPLICIT)}, 4096)
    assert scu.parse_associate_ac(associate_ac(contexts, max_pdu=None)[6:])[1] == 0


@pytest.mark.parametrize("cut", [10, 67])
def test_parse_associate_ac_refuses_short_fixed_fields(cut: int) -> None:
    with pytest.raises(PeerProtocolError, match="shorter than its fixed fields"):
        scu.parse_associate_ac(associate_ac([(1, CT, EXPLICIT)])[6:6 + cut])


def test_parse_associate_ac_refuses_items_running_past_the_pdu() -> None:
    body = associate_ac([(1, CT, EXPLICIT)])[6:]
    with pytest.raises(PeerProtocolError):
        scu.parse_associate_ac(body[:-3])
    wrong_length = bytearray(body)
    wrong_length[68 + 4 + len(APPLICATION_CONTEXT) + 3] = 0x01  # presentation context item: 1 byte long
    with pytest.raises(PeerProtocolError, match="too short"):
        scu.parse_associate_ac(bytes(wrong_length))


def test_parse_associate_ac_refuses_a_maximum_length_of_wrong_size() -> None:
    user = _item(0x50, _item(0x51, b"\x00\x00\x10"))
    body = struct.pack(">HH", 1, 0) + bytes(64) + user
    with pytest.raises(PeerProtocolError, match="maximum length"):
        scu.parse_associate_ac(body)


# ------------------------------------------------------------- pynetdicom SCP


class Peer:
    """A pynetdicom storage SCP recording every request as received (bytes, syntax, message ID)."""

    def __init__(self, *, status: int | Callable[[Any], Any] = 0x0000, syntaxes: list[str] | None = None,
                 max_pdu: int = 16382, ae_title: str = "ARCHIVE", sop_classes: tuple[str, ...] = (CT, MR, SC),
                 configure: Callable[[AE], None] | None = None) -> None:
        self.port = free_port()
        self.ae_title = ae_title
        self.status = status
        self.received: list[dict[str, Any]] = []
        self.events: list[str] = []
        self.lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        ae.maximum_pdu_size = max_pdu
        ae.add_supported_context(VERIFICATION, [IMPLICIT, EXPLICIT])
        for sop in sop_classes:
            ae.add_supported_context(sop, syntaxes or [IMPLICIT, EXPLICIT, RLE])
        if configure is not None:
            configure(ae)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._on_store), (evt.EVT_RELEASED, self._on_event("released")),
            (evt.EVT_ABORTED, self._on_event("aborted")), (evt.EVT_C_ECHO, self._on_echo)])

    def _on_event(self, name: str) -> Callable[[evt.Event], None]:
        def handler(event: evt.Event) -> None:
            with self.lock:
                self.events.append(name)
        return handler

    def _on_echo(self, event: evt.Event) -> int:
        with self.lock:
            self.events.append("echo")
        return 0x0000

    def _on_store(self, event: evt.Event) -> Any:
        request = event.request
        path = getattr(event, "dataset_path", None)  # set when the gateway's receiver switched streaming on
        if path is not None:
            data = Path(path).read_bytes()[read_file_meta(Path(path))[0]:]
        else:
            data = request.DataSet.getvalue()
        with self.lock:
            self.received.append({
                "instance": str(request.AffectedSOPInstanceUID), "sop_class": str(request.AffectedSOPClassUID),
                "message_id": int(request.MessageID), "syntax": str(event.context.transfer_syntax),
                "data": data, "priority": int(request.Priority)})
        return self.status(event) if callable(self.status) else self.status

    def associate(self, contexts: list[tuple[str, str]], **kwargs: Any) -> Association:
        return Association.request("127.0.0.1", self.port, called_ae=self.ae_title, calling_ae="GATEWAY",
                                   contexts=contexts, **{"timeout": 10.0, **kwargs})

    def saw(self, name: str) -> bool:
        with self.lock:
            return name in self.events

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def _scp_servers() -> Iterator[list[Peer]]:
    """Every pynetdicom SCP of the module, shut down together at its end.

    A server's shutdown waits up to half a second for its polling loop: in
    parallel, once, rather than once per test.
    """
    peers: list[Peer] = []
    yield peers
    stoppers = [threading.Thread(target=peer.stop) for peer in peers]
    for thread in stoppers:
        thread.start()
    for thread in stoppers:
        thread.join(30)


@pytest.fixture
def scp(_scp_servers: list[Peer]) -> Callable[..., Peer]:
    """Start pynetdicom SCPs on free ports."""
    def make(**kwargs: Any) -> Peer:
        peer = Peer(**kwargs)
        _scp_servers.append(peer)
        return peer

    return make


def test_echo(scp) -> None:
    peer = scp()
    assoc = peer.associate([(VERIFICATION, IMPLICIT)])
    assert assoc.is_established
    assert assoc.contexts == [Context(1, VERIFICATION, IMPLICIT)]
    assert assoc.peer_max_pdu == 16382
    assert assoc.c_echo() == StoreResult(0x0000, "")
    assert peer.saw("echo")
    assoc.release()
    assert not assoc.is_established
    assert wait_until(lambda: peer.saw("released"), timeout=10)
    assert not peer.saw("aborted")


def test_store_several_datasets_by_path_and_by_bytes(scp, tmp_path: Path) -> None:
    peer = scp()
    files = _sample_files(tmp_path)
    contexts = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for _, ds in files})
    sent: dict[str, bytes] = {}
    with peer.associate(contexts) as assoc:
        assert len(assoc.contexts) == len(contexts)
        for index, (path, ds) in enumerate(files):
            offset, syntax = read_file_meta(path)
            assert syntax == ds.file_meta.TransferSyntaxUID
            data = path.read_bytes()[offset:]
            source: Any = (path, offset) if index % 2 == 0 else data
            result = assoc.c_store(str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax, source, priority=2)
            assert result == StoreResult(0x0000, "")
            sent[str(ds.SOPInstanceUID)] = data
        # the same instance once more from a memoryview: a new message, same bytes
        path, ds = files[0]
        offset, syntax = read_file_meta(path)
        view = memoryview(path.read_bytes())[offset:]
        assert assoc.c_store(str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax, view).status == 0
    assert not assoc.is_established
    assert [r["message_id"] for r in peer.received] == list(range(1, len(files) + 2))
    assert [r["priority"] for r in peer.received] == [2] * len(files) + [0]
    for record in peer.received:
        assert record["data"] == sent[record["instance"]], record["instance"]
    for _path, original in files:
        record = next(r for r in peer.received if r["instance"] == original.SOPInstanceUID)
        assert record["syntax"] == original.file_meta.TransferSyntaxUID
        assert record["sop_class"] == original.SOPClassUID
        implicit = record["syntax"] == IMPLICIT
        got = read_dataset(BytesIO(record["data"]), implicit, True)
        assert got.PatientName == original.PatientName and got.Rows == original.Rows
        assert got.PixelData == original.PixelData
    assert wait_until(lambda: peer.saw("released"), timeout=10)


@pytest.mark.parametrize("status", [0xA700, 0xC000, 0xB000, 0x0122], ids=lambda status: f"0x{status:04X}")
def test_peer_status_comes_back_unchanged(scp, tmp_path: Path, status: int) -> None:
    peer = scp(status=status)
    (path, ds), = _sample_files(tmp_path, ["CT_small.dcm"])
    offset, syntax = read_file_meta(path)
    with peer.associate([(CT, syntax)]) as assoc:
        assert assoc.c_store(CT, str(ds.SOPInstanceUID), syntax, (path, offset)).status == status
        assert assoc.c_store(CT, str(ds.SOPInstanceUID), syntax, (path, offset)).status == status
    assert len(peer.received) == 2


def test_error_comment_is_returned(scp, tmp_path: Path) -> None:
    def refuse(event: evt.Event) -> Dataset:
        answer = Dataset()
        answer.Status = 0xC211
        answer.ErrorComment = "no room for this study"
        return answer

    peer = scp(status=refuse)
    (path, ds), = _sample_files(tmp_path, ["MR_small.dcm"])
    offset, syntax = read_file_meta(path)
    with peer.associate([(MR, syntax)]) as assoc:
        assert assoc.c_store(MR, str(ds.SOPInstanceUID), syntax, (path, offset)) == StoreResult(
            0xC211, "no room for this study")


def test_accepted_contexts_are_what_the_peer_supports(scp, tmp_path: Path) -> None:
    peer = scp(syntaxes=[EXPLICIT], sop_classes=(CT,))
    proposed = [(CT, RLE), (CT, EXPLICIT), (CT, IMPLICIT), (MR, EXPLICIT), ("1.2.3.4.5.6", EXPLICIT),
                (VERIFICATION, IMPLICIT)]
    assoc = peer.associate(proposed)
    try:
        assert assoc.contexts == [Context(3, CT, EXPLICIT), Context(11, VERIFICATION, IMPLICIT)]
        assert assoc.accepted_syntaxes(CT) == [EXPLICIT]
        assert assoc.accepted_syntaxes(MR) == []
        assert assoc.context_for(CT, RLE) is None
        assert assoc.context_for(CT, EXPLICIT) == Context(3, CT, EXPLICIT)
        (path, ds), = _sample_files(tmp_path, ["MR_small_RLE.dcm"])
        offset = read_file_meta(path)[0]
        with pytest.raises(ValueError, match="no accepted presentation context"):
            assoc.c_store(CT, str(ds.SOPInstanceUID), RLE, (path, offset))
        with pytest.raises(ValueError, match="no accepted presentation context"):
            assoc.c_store(MR, str(ds.SOPInstanceUID), EXPLICIT, b"\x08\x00\x18\x00")
        assert assoc.is_established, "refusing a call does not end the association"
        assert assoc.c_echo().status == 0
    finally:
        assoc.release()
    assert not assoc.is_established
    assert peer.received == []


def test_echo_needs_an_accepted_verification_context(scp) -> None:
    peer = scp()
    with peer.associate([(CT, EXPLICIT)]) as assoc:
        with pytest.raises(ValueError, match="Verification"):
            assoc.c_echo()
        assert assoc.is_established


@pytest.mark.parametrize("dataset", [b"", "past-the-end"])
def test_store_refuses_empty_datasets_before_sending(scp, tmp_path: Path, dataset: Any) -> None:
    peer = scp()
    (path, ds), = _sample_files(tmp_path, ["CT_small.dcm"])
    if dataset == "past-the-end":
        dataset = (path, path.stat().st_size)
    with peer.associate([(CT, EXPLICIT), (VERIFICATION, IMPLICIT)]) as assoc:
        with pytest.raises(ValueError):
            assoc.c_store(CT, str(ds.SOPInstanceUID), EXPLICIT, dataset)
        assert assoc.is_established
        assert assoc.c_echo().status == 0
    assert peer.received == []


def test_missing_file_raises_before_sending_and_keeps_the_association(scp, tmp_path: Path) -> None:
    peer = scp()
    with peer.associate([(CT, EXPLICIT), (VERIFICATION, IMPLICIT)]) as assoc:
        with pytest.raises(OSError):
            assoc.c_store(CT, "1.2.3", EXPLICIT, (tmp_path / "gone.dcm", 300))
        assert assoc.c_echo().status == 0


def test_abort_and_context_manager_on_error(scp) -> None:
    peer = scp()
    assoc = peer.associate([(VERIFICATION, IMPLICIT)])
    with pytest.raises(RuntimeError), assoc:
        assert assoc.c_echo().status == 0
        raise RuntimeError("caller failed")
    assert not assoc.is_established
    assert wait_until(lambda: peer.saw("aborted"), timeout=10)
    assert not peer.saw("released")
    with pytest.raises(NetworkError, match="closed"):
        assoc.c_echo()
    assoc.release()  # harmless once closed
    assoc.abort()


def test_request_refuses_bad_context_counts() -> None:
    port = free_port()
    with pytest.raises(ValueError):
        Association.request("127.0.0.1", port, called_ae="A", calling_ae="B", contexts=[])
    with pytest.raises(ValueError):
        Association.request("127.0.0.1", port, called_ae="A", calling_ae="B", contexts=[(CT, EXPLICIT)] * 129)


def test_many_contexts_are_numbered_odd(scp) -> None:
    peer = scp(syntaxes=[EXPLICIT], sop_classes=(CT,))
    proposed = [(CT, IMPLICIT)] * 127 + [(CT, EXPLICIT)]
    with peer.associate(proposed) as assoc:
        assert assoc.contexts == [Context(255, CT, EXPLICIT)]


# ----------------------------------------------------------- fragmentation


@pytest.mark.parametrize("max_pdu", [1024, 4096, 0])
def test_fragmented_datasets_arrive_byte_identical(scp, tmp_path: Path, max_pdu: int) -> None:
    peer = scp(max_pdu=max_pdu)
    big = _large_ct(1024 if max_pdu == 0 else 256, 1024 if max_pdu == 0 else 256)
    files = [(_write(tmp_path, big), big), *_sample_files(tmp_path, ["MR_small_RLE.dcm", "MR_small.dcm"])]
    sent = {}
    with peer.associate([(CT, EXPLICIT), (MR, RLE), (MR, EXPLICIT)]) as assoc:
        assert assoc.peer_max_pdu == max_pdu
        for path, ds in files:
            data, syntax = _dataset_bytes(path)
            sent[str(ds.SOPInstanceUID)] = data
        assert len(sent[big.SOPInstanceUID]) > 2 * ((max_pdu - 6) if max_pdu else scu._FRAGMENT_UNLIMITED)
        for path, ds in files:
            syntax = read_file_meta(path)[1]
            assert assoc.c_store(str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax, (path, read_file_meta(path)[0])
                                 ).status == 0
    assert len(peer.received) == len(files)
    for record in peer.received:
        assert record["data"] == sent[record["instance"]]
    got = read_dataset(BytesIO(peer.received[0]["data"]), False, True)
    assert got.PixelData == big.PixelData and got.Rows == big.Rows


# --------------------------------------------------------------- DCMTK storescp


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK's storescp, writing into a folder of `tmp_path`."""
    out = tmp_path / "storescp"
    out.mkdir()
    with dcmtk_storescp(tmp_path, "STORESCP", out) as port:
        yield port, out


@pytest.mark.interop
def test_dcmtk_storescp_echo_and_store(storescp, tmp_path: Path) -> None:
    port, out = storescp
    files = [(_write(tmp_path, _large_ct()), None), *_sample_files(tmp_path, ["CT_small.dcm", "MR_small_RLE.dcm"])]
    contexts = [(VERIFICATION, IMPLICIT), (CT, EXPLICIT), (MR, RLE)]
    with Association.request("127.0.0.1", port, called_ae="STORESCP", calling_ae="GATEWAY", contexts=contexts,
                             timeout=20) as assoc:
        assert [cx.id for cx in assoc.contexts] == [1, 3, 5]
        assert assoc.c_echo().status == 0
        for path, _ in files:
            offset, syntax = read_file_meta(path)
            ds = dcmread(path)
            assert assoc.c_store(str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax, (path, offset)).status == 0
    assert not assoc.is_established
    assert wait_until(lambda: len(list(out.iterdir())) == len(files), timeout=20)
    written = {str(ds.SOPInstanceUID): ds for ds in (dcmread(p) for p in out.iterdir())}
    for path, _ in files:
        original = dcmread(path)
        got = written[str(original.SOPInstanceUID)]
        assert got.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert got.PixelData == original.PixelData
        assert got.PatientName == original.PatientName
        assert np.array_equal(got.pixel_array, original.pixel_array)


# --------------------------------------------------------------- rejection


@pytest.mark.parametrize("configure, called, reason", [
    (lambda ae: setattr(ae, "require_called_aet", True), "ELSEWHERE", 7),
    (lambda ae: setattr(ae, "require_calling_aet", ["MODALITY"]), "ARCHIVE", 3),
])
def test_rejection_carries_result_source_reason(scp, configure, called: str, reason: int) -> None:
    peer = scp(configure=configure)
    with pytest.raises(AssociationRejectedError) as caught:
        Association.request("127.0.0.1", peer.port, called_ae=called, calling_ae="GATEWAY",
                            contexts=[(VERIFICATION, IMPLICIT)], timeout=10)
    assert (caught.value.result, caught.value.source, caught.value.reason) == (1, 1, reason)
    assert "permanently" in str(caught.value)


def test_connection_refused_is_a_network_error_quickly() -> None:
    started = time.monotonic()
    with pytest.raises(NetworkError, match="cannot connect") as caught:
        Association.request("127.0.0.1", free_port(), called_ae="A", calling_ae="B", contexts=[(CT, EXPLICIT)],
                            timeout=0.5, connect_timeout=5)
    assert type(caught.value) is NetworkError
    assert time.monotonic() - started < 5


# ------------------------------------------------------ scripted hostile peers


def recv_pdu(conn: socket.socket) -> tuple[int, bytes] | None:
    """(type, variable part) of the next PDU, or None when the connection ends."""
    header = _recv(conn, 6)
    if header is None:
        return None
    kind, _, length = struct.unpack(">BBI", header)
    body = _recv(conn, length)
    if body is None:
        return None
    return kind, body


def _recv(conn: socket.socket, count: int) -> bytes | None:
    data = bytearray()
    while len(data) < count:
        try:
            chunk = conn.recv(min(count - len(data), 1 << 20))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def handshake(conn: socket.socket, max_pdu: int | None = 16384) -> list[tuple[int, str, str]]:
    """Read the A-ASSOCIATE-RQ (decoded by pynetdicom) and accept every context."""
    got = recv_pdu(conn)
    assert got is not None and got[0] == 0x01
    rq = A_ASSOCIATE_RQ()
    rq.decode(_pdu(0x01, got[1]))
    contexts = [(cx.context_id, cx.abstract_syntax, cx.transfer_syntax[0]) for cx in rq.presentation_context]
    conn.sendall(associate_ac(contexts, max_pdu))
    return contexts


class Message:
    """One DIMSE request as the scripted peer received it."""

    def __init__(self) -> None:
        self.context = -1
        self.command = b""
        self.dataset = b""
        self.pdu_lengths: list[int] = []
        self.flags: list[int] = []

    @property
    def decoded(self) -> Dataset:
        return decode(BytesIO(self.command), True, True)


def read_message(conn: socket.socket, stop_after_pdus: int | None = None) -> Message:
    """Read P-DATA until a request (command and any dataset) is complete, or `stop_after_pdus` PDUs."""
    message = Message()
    command_done = dataset_done = False
    while not (command_done and (dataset_done or message.decoded.CommandDataSetType == 0x0101)):
        if stop_after_pdus is not None and len(message.pdu_lengths) >= stop_after_pdus:
            break
        got = recv_pdu(conn)
        assert got is not None and got[0] == 0x04, got
        body = got[1]
        message.pdu_lengths.append(len(body))
        pos = 0
        while pos < len(body):
            length, context, flags = struct.unpack_from(">IBB", body, pos)
            message.context = context
            message.flags.append(flags)
            data = body[pos + 6:pos + 4 + length]
            pos += 4 + length
            if flags & 0x01:
                message.command += data
                command_done = bool(flags & 0x02)
            else:
                message.dataset += data
                dataset_done = bool(flags & 0x02)
    return message


def response(context: int, *, field: int = 0x8001, answered: int = 1, status: int | None = 0x0000,
             comment: str | None = None, data_set_type: int | None = 0x0101, group_length: bool = True,
             sop_class: str | None = None, sop_instance: str | None = None) -> bytes:
    """The command set of a DIMSE response, encoded by pydicom (about a CT image, or `sop_class`)."""
    ds = Dataset()
    ds.AffectedSOPClassUID = sop_class or (COMMITMENT if field == 0x8130 else CT)
    if sop_instance is not None:
        ds.AffectedSOPInstanceUID = sop_instance
    ds.CommandField = field
    ds.MessageIDBeingRespondedTo = answered
    if data_set_type is not None:
        ds.CommandDataSetType = data_set_type
    if status is not None:
        ds.Status = status
    if comment is not None:
        ds.ErrorComment = comment
    body = encode(ds, True, True)
    if group_length:
        body = struct.pack("<HHII", 0, 0, 4, len(body)) + body
    return body


def p_data(context: int, data: bytes, flags: int = 0x03) -> bytes:
    return _pdu(0x04, struct.pack(">IBB", len(data) + 2, context, flags) + data)


class ScriptedPeer:
    """A one-connection server on 127.0.0.1: runs `script` on the connection, then records every
    PDU type the client sends until it closes the connection."""

    def __init__(self, script: Callable[[socket.socket], Any]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.script = script
        self.result: Any = None
        self.after: list[int] = []
        self.ended = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(20)
                self.result = self.script(conn)
                while (got := recv_pdu(conn)) is not None:
                    self.after.append(got[0])
                self.ended.set()
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    def associate(self, timeout: float = 5.0, contexts: list[tuple[str, str]] | None = None) -> Association:
        return Association.request("127.0.0.1", self.port, called_ae="ARCHIVE", calling_ae="GATEWAY",
                                   contexts=contexts or [(CT, EXPLICIT), (VERIFICATION, IMPLICIT)], timeout=timeout)

    def finish(self) -> None:
        """Wait for the connection to end; fail on the script's own errors."""
        self.thread.join(20)
        assert not self.thread.is_alive(), "the client did not close the connection"
        if self.error is not None:
            raise self.error
        assert self.ended.is_set()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def scripted() -> Iterator[Callable[[Callable[[socket.socket], Any]], ScriptedPeer]]:
    servers: list[ScriptedPeer] = []

    def make(script: Callable[[socket.socket], Any]) -> ScriptedPeer:
        server = ScriptedPeer(script)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()
        server.thread.join(5)


def _read_request(conn: socket.socket) -> None:
    assert recv_pdu(conn) is not None


def _close_write(conn: socket.socket) -> None:
    """Send nothing more (the client may have closed already)."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)


def _answer(data: bytes) -> Callable[[socket.socket], None]:
    """Read the request, send `data`, send nothing more."""
    def script(conn: socket.socket) -> None:
        _read_request(conn)
        conn.sendall(data)
        _close_write(conn)
    return script


def _ac_body(max_pdu: int | None = 16384) -> bytes:
    return associate_ac([(1, CT, EXPLICIT), (3, VERIFICATION, IMPLICIT)], max_pdu)[6:]


ASSOCIATION_FAILURES = {
    "unknown PDU type": (_pdu(0x09, b"\x00" * 4), PeerProtocolError, "unknown PDU type"),
    "huge length": (struct.pack(">BBI", 0x02, 0, 0xFFFFFFF0), PeerProtocolError, "exceeds"),
    "AC shorter than its fixed fields": (_pdu(0x02, _ac_body()[:60]), PeerProtocolError, "fixed fields"),
    "AC item cut short": (_pdu(0x02, _ac_body()[:-5]), PeerProtocolError, "A-ASSOCIATE-AC"),
    "AC with tiny maximum": (_pdu(0x02, _ac_body(max_pdu=7)), PeerProtocolError, "maximum PDU length"),
    "release reply instead of AC": (bytes((0x06, 0, 0, 0, 0, 4, 0, 0, 0, 0)), PeerProtocolError, "0x06"),
    "RJ of wrong length": (_pdu(0x03, b"\x00\x01\x01"), PeerProtocolError, "A-ASSOCIATE-RJ"),
    "abort": (bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 2, 0)), AssociationAbortedError, "aborted"),
    "AC cut by closing": (associate_ac([(1, CT, EXPLICIT)])[:50], AssociationAbortedError, "closed"),
    "close": (b"", AssociationAbortedError, "closed"),
}


@pytest.mark.parametrize("name", list(ASSOCIATION_FAILURES))
def test_broken_association_answers(scripted, name: str) -> None:
    data, error, message = ASSOCIATION_FAILURES[name]
    server = scripted(_answer(data))
    started = time.monotonic()
    with pytest.raises(error, match=message):
        server.associate(timeout=5)
    assert time.monotonic() - started < 4, "no waiting for bytes that will not come"
    server.finish()
    expected_abort = error is PeerProtocolError
    assert server.after == ([0x07] if expected_abort else []), "an abort for a protocol error, nothing else"


def test_rejection_by_a_scripted_peer(scripted) -> None:
    server = scripted(_answer(_pdu(0x03, bytes((0, 2, 3, 2)))))
    with pytest.raises(AssociationRejectedError, match="transiently") as caught:
        server.associate()
    assert (caught.value.result, caught.value.source, caught.value.reason) == (2, 3, 2)
    server.finish()
    assert server.after == []


def test_silent_peer_times_out_during_association(scripted) -> None:
    server = scripted(_read_request)
    started = time.monotonic()
    with pytest.raises(NetworkError, match="timed out") as caught:
        server.associate(timeout=0.5)
    assert type(caught.value) is NetworkError
    assert time.monotonic() - started < 5
    server.finish()


def test_pdu_body_stalling_times_out(scripted) -> None:
    def script(conn: socket.socket) -> None:
        _read_request(conn)
        conn.sendall(associate_ac([(1, CT, EXPLICIT)])[:40])

    server = scripted(script)
    with pytest.raises(NetworkError, match="timed out"):
        server.associate(timeout=0.5)
    server.finish()


def _dimse_script(answer: Callable[[socket.socket, Message], Any], stop_after_pdus: int | None = None,
                  max_pdu: int | None = 16384) -> Callable[[socket.socket], Message]:
    def script(conn: socket.socket) -> Message:
        handshake(conn, max_pdu)
        message = read_message(conn, stop_after_pdus)
        answer(conn, message)
        return message
    return script


def _store(assoc: Association, dataset: bytes | None = None) -> StoreResult:
    return assoc.c_store(CT, "1.2.3.4", EXPLICIT, dataset or bytes(range(256)) * 40)


DIMSE_FAILURES: dict[str, tuple[Callable[[socket.socket, Message], Any], type[Exception], str, list[int]]] = {
    "wrong presentation context": (
        lambda conn, m: conn.sendall(p_data(m.context + 2, response(m.context))),
        PeerProtocolError, "presentation context", [0x07]),
    "wrong message ID": (
        lambda conn, m: conn.sendall(p_data(m.context, response(m.context, answered=9))),
        PeerProtocolError, "response to message 9", [0x07]),
    "wrong command field": (
        lambda conn, m: conn.sendall(p_data(m.context, response(m.context, field=0x8030))),
        PeerProtocolError, "expected response command", [0x07]),
    "missing status": (
        lambda conn, m: conn.sendall(p_data(m.context, response(m.context, status=None))),
        PeerProtocolError, "Status", [0x07]),
    "missing data set type": (
        lambda conn, m: conn.sendall(p_data(m.context, response(m.context, data_set_type=None))),
        PeerProtocolError, "Command Data Set Type", [0x07]),
    "dataset before command": (
        lambda conn, m: conn.sendall(p_data(m.context, b"\x08\x00\x18\x00", flags=0x02)),
        PeerProtocolError, "dataset fragment", [0x07]),
    "PDV longer than its PDU": (
        lambda conn, m: conn.sendall(_pdu(0x04, struct.pack(">IBB", 200, m.context, 3) + b"\x00" * 20)),
        PeerProtocolError, "PDV item length", [0x07]),
    "PDU with a cut PDV header": (
        lambda conn, m: conn.sendall(_pdu(0x04, b"\x00\x00\x00")),
        PeerProtocolError, "PDV item header", [0x07]),
    "unknown PDU type": (
        lambda conn, m: conn.sendall(_pdu(0xFE, b"")), PeerProtocolError, "unknown PDU type", [0x07]),
    "associate AC again": (
        lambda conn, m: conn.sendall(associate_ac([(1, CT, EXPLICIT)])), PeerProtocolError, "0x02", [0x07]),
    "huge length": (
        lambda conn, m: conn.sendall(struct.pack(">BBI", 0x04, 0, 1 << 30)), PeerProtocolError, "exceeds", [0x07]),
    "abort": (
        lambda conn, m: conn.sendall(scu._ABORT), AssociationAbortedError, "aborted", []),
    "release request": (
        lambda conn, m: conn.sendall(scu._RELEASE_RQ), AssociationAbortedError, "released", [0x06]),
    "close": (
        lambda conn, m: _close_write(conn), AssociationAbortedError, "closed", []),
    "response cut by closing": (
        lambda conn, m: (conn.sendall(p_data(m.context, response(m.context))[:-7]), _close_write(conn)),
        AssociationAbortedError, "closed", []),
}


@pytest.mark.parametrize("name", list(DIMSE_FAILURES))
def test_broken_store_responses(scripted, name: str) -> None:
    answer, error, message, after = DIMSE_FAILURES[name]
    server = scripted(_dimse_script(answer))
    assoc = server.associate()
    started = time.monotonic()
    with pytest.raises(error, match=message):
        _store(assoc)
    assert time.monotonic() - started < 4
    assert not assoc.is_established
    with pytest.raises(NetworkError, match="closed"):
        assoc.c_echo()
    server.finish()
    assert server.after == after
    assert server.result.decoded.CommandField == 0x0001


def test_silent_peer_times_out_during_store(scripted) -> None:
    server = scripted(_dimse_script(lambda conn, m: None))
    assoc = server.associate(timeout=0.5)
    started = time.monotonic()
    with pytest.raises(NetworkError, match="timed out") as caught:
        _store(assoc)
    assert type(caught.value) is NetworkError
    assert time.monotonic() - started < 5
    assert not assoc.is_established
    server.finish()
    assert server.after == [0x07]


def test_abort_in_the_middle_of_a_store(scripted) -> None:
    server = scripted(_dimse_script(lambda conn, m: conn.sendall(scu._ABORT), stop_after_pdus=3, max_pdu=1024))
    assoc = server.associate()
    with pytest.raises(AssociationAbortedError):
        _store(assoc, bytes(200_000))
    assert not assoc.is_established
    server.finish()
    message = server.result
    assert message.dataset and len(message.dataset) < 200_000, "the abort came while the dataset was sent"
    assert set(server.after) == {0x04}, "the rest of the dataset, then the connection closed without an abort"


def _ok(conn: socket.socket, message: Message) -> None:
    conn.sendall(p_data(message.context, response(message.context, status=0xB007, comment="coerced")))
    got = recv_pdu(conn)
    assert got is not None and got[0] == 0x05
    conn.sendall(scu._RELEASE_RP)


def test_scripted_store_sees_the_request_as_sent(scripted) -> None:
    server = scripted(_dimse_script(_ok, max_pdu=1024))
    payload = bytes(range(256)) * 41
    with server.associate() as assoc:
        assert assoc.c_store(CT, "1.2.3.4", EXPLICIT, payload, priority=1) == StoreResult(0xB007, "coerced")
    server.finish()
    message = server.result
    command = message.decoded
    assert (command.CommandField, command.MessageID, command.Priority) == (0x0001, 1, 1)
    assert command.AffectedSOPInstanceUID == "1.2.3.4"
    assert message.context == 1
    assert message.dataset == payload
    assert max(message.pdu_lengths) <= 1024
    assert message.pdu_lengths[1] == 1024, "dataset fragments fill the announced maximum"
    assert message.flags == [0x03] + [0x00] * (len(message.flags) - 2) + [0x02]
    assert server.after == []


def test_response_spread_over_pdus_with_a_discarded_dataset(scripted) -> None:
    def answer(conn: socket.socket, message: Message) -> None:
        command = response(message.context, data_set_type=0x0000, status=0x0000)
        conn.sendall(p_data(message.context, command[:10], flags=0x01))
        two_pdvs = (struct.pack(">IBB", len(command) - 10 + 2, message.context, 0x03) + command[10:]
                    + struct.pack(">IBB", 4, message.context, 0x00) + b"\x08\x00")
        conn.sendall(_pdu(0x04, two_pdvs))
        conn.sendall(p_data(message.context, b"\x10\x00", flags=0x02))

    server_messages: list[Message] = []

    def script(conn: socket.socket) -> None:
        handshake(conn)
        for _ in range(2):
            message = read_message(conn)
            server_messages.append(message)
            if len(server_messages) == 1:
                answer(conn, message)
            else:
                conn.sendall(p_data(message.context, response(message.context, answered=2, status=0xA700)))

    server = scripted(script)
    assoc = server.associate()
    assert _store(assoc) == StoreResult(0x0000, "")
    assert _store(assoc).status == 0xA700, "the discarded dataset and the stray response were consumed"
    assoc.abort()
    server.finish()


def test_release_collision_is_answered(scripted) -> None:
    def script(conn: socket.socket) -> list[int]:
        handshake(conn)
        got = recv_pdu(conn)
        assert got is not None and got[0] == 0x05
        conn.sendall(scu._RELEASE_RQ)
        return []

    server = scripted(script)
    assoc = server.associate()
    assoc.release()
    assert not assoc.is_established
    server.finish()
    assert server.after == [0x06]


def test_release_waits_only_for_the_timeout(scripted) -> None:
    server = scripted(lambda conn: (handshake(conn), recv_pdu(conn)))
    assoc = server.associate(timeout=0.5)
    started = time.monotonic()
    assoc.release()
    assert time.monotonic() - started < 5
    assert not assoc.is_established
    server.finish()


def test_echo_on_a_scripted_peer(scripted) -> None:
    def answer(conn: socket.socket, message: Message) -> None:
        assert message.decoded.CommandField == 0x0030 and message.dataset == b""
        conn.sendall(p_data(message.context, response(message.context, field=0x8030)))

    server = scripted(_dimse_script(answer))
    assoc = server.associate()
    assert assoc.c_echo() == StoreResult(0, "")
    assoc.abort()
    server.finish()
    assert server.result.context == 3
    assert server.after == [0x07]


# ------------------------------------------------------------------ fuzzing


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_parse_associate_ac(data: bytes) -> None:
    try:
        results, max_pdu = scu.parse_associate_ac(data)
    except PeerProtocolError:
        return
    assert isinstance(results, dict) and 0 <= max_pdu < 1 << 32


VALID_AC = associate_ac([(1, CT, EXPLICIT), (3, VERIFICATION, IMPLICIT), (5, MR, RLE)], 16384)[6:]


@FUZZ
@given(EDITS)
def test_fuzz_parse_associate_ac_mutations(edits: list[tuple[int, int, str]]) -> None:
    try:
        scu.parse_associate_ac(apply_edits(VALID_AC, edits))
    except PeerProtocolError:
        pass


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_parse_command(data: bytes) -> None:
    try:
        elements = scu.parse_command(data)
    except PeerProtocolError:
        return
    assert all(isinstance(value, bytes) for value in elements.values())


VALID_RESPONSE = response(1, status=0xA700, comment="out of resources")


@FUZZ
@given(EDITS)
def test_fuzz_parse_command_mutations(edits: list[tuple[int, int, str]]) -> None:
    try:
        scu.parse_command(apply_edits(VALID_RESPONSE, edits))
    except PeerProtocolError:
        pass


@pytest.mark.parametrize("farewell", [bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 2, 0)), bytes((0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0)), b""],
                         ids=["abort", "release-request", "close"])
def test_an_idle_association_the_peer_ended_is_not_established(scripted, farewell: bytes) -> None:
    """An archive that aborts, releases or drops an idle association: the next send reconnects, not fails."""
    said = threading.Event()

    def script(conn: socket.socket) -> None:
        handshake(conn)
        if farewell:
            conn.sendall(farewell)
        _close_write(conn)
        said.set()

    server = scripted(script)
    assoc = server.associate()
    assert said.wait(5)
    assert wait_until(lambda: not assoc.is_established, timeout=5)
    with pytest.raises(NetworkError, match="closed"):
        assoc.c_echo()
    server.finish()


def test_an_idle_association_stays_established_while_the_peer_is_silent(scripted) -> None:
    done = threading.Event()

    def script(conn: socket.socket) -> None:
        handshake(conn)
        done.wait(10)

    server = scripted(script)
    assoc = server.associate()
    time.sleep(0.2)
    assert assoc.is_established
    assoc.abort()
    done.set()
    server.finish()


def test_a_slow_answer_does_not_shorten_the_next_send(scripted) -> None:
    """The first response comes just inside the timeout; the next, large, send must still get all of it.

    The peer then reads the second dataset only after a pause longer than
    what was left of the first deadline: the send must wait on the full
    timeout, not on the remains of the last read's.
    """
    def script(conn: socket.socket) -> None:
        handshake(conn, max_pdu=0)
        first = read_message(conn)
        time.sleep(2.0)  # 1 s of the 3 s timeout left
        conn.sendall(p_data(first.context, response(first.context, answered=1)))
        time.sleep(1.5)  # not reading: the client's send fills the socket buffers and waits
        second = read_message(conn)
        conn.sendall(p_data(second.context, response(second.context, answered=2)))

    server = scripted(script)
    with server.associate(timeout=3.0) as assoc:
        assert _store(assoc).status == 0
        assert assoc.c_store(CT, "1.2.3.5", EXPLICIT, bytes(range(256)) * 65_536).status == 0
    server.finish()


# ------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two test CAs; `ca` signs the archive's and the gateway's certificates, `other_ca` an impostor's."""
    folder = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other_ca"):
        make_ca(folder, ca)
    issue(folder, "archive", "ca")
    issue(folder, "gateway", "ca")
    issue(folder, "impostor", "other_ca")
    return folder


def _client_context(pki: Path) -> ssl.SSLContext:
    """What a DICOM destination's TLS settings make (PS3.15 B.12): TLS 1.2 at least, the archive's CA, our certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.pem"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(pki / "gateway.pem"), str(pki / "gateway.key"))
    return context


def _server_context(pki: Path, name: str = "archive") -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    context.verify_mode = ssl.CERT_REQUIRED  # the archive wants our certificate too
    context.load_cert_chain(str(pki / f"{name}.pem"), str(pki / f"{name}.key"))
    return context


def test_tls_store_and_echo_with_certificates_both_ways(pki: Path, tmp_path: Path) -> None:
    versions: list[str] = []
    received: list[bytes] = []
    ae = AE(ae_title="ARCHIVE")
    ae.add_supported_context(VERIFICATION, [IMPLICIT])
    ae.add_supported_context(CT, [EXPLICIT, IMPLICIT])

    def opened(event: evt.Event) -> None:
        versions.append(event.assoc.dul.socket.socket.version())

    def stored(event: evt.Event) -> int:
        path = getattr(event, "dataset_path", None)  # set when the gateway's receiver switched streaming on
        if path is not None:
            received.append(Path(path).read_bytes()[read_file_meta(Path(path))[0]:])
        else:
            received.append(event.request.DataSet.getvalue())
        return 0x0000

    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, ssl_context=_server_context(pki),
                             evt_handlers=[(evt.EVT_C_STORE, stored), (evt.EVT_CONN_OPEN, opened)])
    try:
        (path, ds), = _sample_files(tmp_path, ["CT_small.dcm"])
        offset, syntax = read_file_meta(path)
        with Association.request("127.0.0.1", port, called_ae="ARCHIVE", calling_ae="GATEWAY",
                                 contexts=[(VERIFICATION, IMPLICIT), (CT, syntax)], timeout=10,
                                 tls=_client_context(pki)) as assoc:
            assert assoc.c_echo().status == 0
            time.sleep(0.3)
            assert assoc.is_established, "the TLS session tickets did not read as the peer speaking"
            assert assoc.c_store(CT, str(ds.SOPInstanceUID), syntax, (path, offset)).status == 0
        assert not assoc.is_established
        assert received == [path.read_bytes()[offset:]]
        assert versions and all(version in ("TLSv1.2", "TLSv1.3") for version in versions)
    finally:
        server.shutdown()


def test_tls_idle_association_the_peer_aborted_is_not_established(pki: Path) -> None:
    """Over TLS too, an idle association the archive ended is noticed; a silent one stays established."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = int(listener.getsockname()[1])
    context = _server_context(pki)
    go = threading.Event()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(20)
                handshake(tls)
                go.wait(20)
                tls.sendall(bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 2, 0)))
                time.sleep(0.5)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assoc = Association.request("127.0.0.1", port, called_ae="ARCHIVE", calling_ae="GATEWAY",
                                    contexts=[(CT, EXPLICIT)], timeout=5, tls=_client_context(pki))
        time.sleep(0.3)
        assert assoc.is_established
        go.set()
        assert wait_until(lambda: not assoc.is_established, timeout=5)
        with pytest.raises(NetworkError, match="closed"):
            _store(assoc)
    finally:
        go.set()
        thread.join(10)
        listener.close()
    assert not errors, errors


@pytest.mark.parametrize("case", ["archive certificate from another CA", "archive speaks plain TCP"])
def test_tls_handshake_failures_are_network_errors_quickly(scp, pki: Path, case: str) -> None:
    if case == "archive speaks plain TCP":
        peer = scp()
        port, server = peer.port, None
    else:
        ae = AE(ae_title="ARCHIVE")
        ae.add_supported_context(CT, [EXPLICIT])
        port = free_port()
        server = ae.start_server(("127.0.0.1", port), block=False, ssl_context=_server_context(pki, "impostor"))
    try:
        started = time.monotonic()
        with pytest.raises(NetworkError) as caught:
            Association.request("127.0.0.1", port, called_ae="ARCHIVE", calling_ae="GATEWAY",
                                contexts=[(CT, EXPLICIT)], timeout=5, connect_timeout=5, tls=_client_context(pki))
        assert time.monotonic() - started < 8
        if case != "archive speaks plain TCP":
            assert "TLS handshake" in str(caught.value) and "certificate" in str(caught.value).lower()
    finally:
        if server is not None:
            server.shutdown()


def test_tls_handshake_against_a_silent_peer_is_bounded() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = int(listener.getsockname()[1])
    try:
        context = ssl.create_default_context()
        started = time.monotonic()
        with pytest.raises(NetworkError, match="TLS handshake"):
            Association.request("127.0.0.1", port, called_ae="ARCHIVE", calling_ae="GATEWAY",
                                contexts=[(CT, EXPLICIT)], timeout=5, connect_timeout=0.5, tls=context)
        assert time.monotonic() - started < 4
    finally:
        listener.close()


@pytest.mark.interop
def test_tls_to_dcmtk_storescp(pki: Path, tmp_path: Path) -> None:
    """Gateway -> DCMTK storescp +tls, the archive requiring our certificate."""
    out = tmp_path / "storescp"
    out.mkdir()
    with dcmtk_storescp(tmp_path, "STORESCP", out, "+tls", str(pki / "archive.key"), str(pki / "archive.pem"),
                        "+cf", str(pki / "ca.pem"), "--require-peer-cert") as port:
        (path, ds), = _sample_files(tmp_path, ["CT_small.dcm"])
        offset, syntax = read_file_meta(path)
        with Association.request("127.0.0.1", port, called_ae="STORESCP", calling_ae="GATEWAY",
                                 contexts=[(VERIFICATION, IMPLICIT), (CT, syntax)], timeout=20,
                                 tls=_client_context(pki)) as assoc:
            assert assoc.c_echo().status == 0
            assert assoc.c_store(CT, str(ds.SOPInstanceUID), syntax, (path, offset)).status == 0
        assert wait_until(lambda: len(list(out.iterdir())) == 1, timeout=20)
        got = dcmread(next(out.iterdir()))
        assert got.SOPInstanceUID == ds.SOPInstanceUID and got.PixelData == ds.PixelData


# ------------------------------------------------------ storage commitment

COMMITMENT = "1.2.840.10008.1.20.1"
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"


def _commitment_request(instances: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = generate_uid()
    ds.ReferencedSOPSequence = []
    for sop_class, sop_instance in instances:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        ds.ReferencedSOPSequence.append(item)
    return ds


def test_storage_commitment_on_the_same_association(tmp_path: Path) -> None:
    """N-ACTION to a pynetdicom storage commitment SCP, its N-EVENT-REPORT read and answered on the same association."""
    requests: list[Dataset] = []
    answers: list[int] = []
    ae = AE(ae_title="ARCHIVE")
    ae.add_supported_context(COMMITMENT, [IMPLICIT])
    ae.add_supported_context(CT, [EXPLICIT])

    def report(assoc: Any, request: Dataset) -> None:
        result = Dataset()
        result.TransactionUID = request.TransactionUID
        result.ReferencedSOPSequence = request.ReferencedSOPSequence[:1]
        failed = request.ReferencedSOPSequence[1]
        failed.FailureReason = 0x0110
        result.FailedSOPSequence = [failed]
        status, _ = assoc.send_n_event_report(result, 2, COMMITMENT, COMMITMENT_INSTANCE)
        answers.append(int(status.Status))

    def action(event: evt.Event) -> tuple[int, None]:
        request = event.action_information
        requests.append(request)
        threading.Timer(0.2, report, (event.assoc, request)).start()  # after the N-ACTION-RSP
        return 0x0000, None

    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_ACTION, action)])
    try:
        stored = [(CT, generate_uid()), (CT, generate_uid())]
        request = _commitment_request(stored)
        with Association.request("127.0.0.1", port, called_ae="ARCHIVE", calling_ae="GATEWAY",
                                 contexts=[(CT, EXPLICIT), (COMMITMENT, IMPLICIT)], timeout=10) as assoc:
            assert assoc.n_action(COMMITMENT, COMMITMENT_INSTANCE, 1, encode(request, True, True)) == StoreResult(0)
            got = assoc.event_report(COMMITMENT, timeout=10)
            assert (got.sop_class, got.sop_instance, got.event_type) == (COMMITMENT, COMMITMENT_INSTANCE, 2)
            result = decode(BytesIO(got.dataset), True, True)
            assert result.TransactionUID == request.TransactionUID
            assert [i.ReferencedSOPInstanceUID for i in result.ReferencedSOPSequence] == [stored[0][1]]
            assert [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in result.FailedSOPSequence] == [
                (stored[1][1], 0x0110)]
            assert assoc.is_established
        assert wait_until(lambda: answers == [0x0000], timeout=10), "the archive got our N-EVENT-REPORT-RSP: Success"
        assert [r.TransactionUID for r in requests] == [request.TransactionUID]
        assert [i.ReferencedSOPInstanceUID for i in requests[0].ReferencedSOPSequence] == [uid for _, uid in stored]
    finally:
        server.shutdown()


def test_waiting_for_a_commitment_that_never_comes_is_bounded(scripted) -> None:
    def script(conn: socket.socket) -> None:
        handshake(conn)
        message = read_message(conn)
        assert message.decoded.CommandField == 0x0130 and message.dataset
        answer = response(message.context, field=0x8130)
        conn.sendall(p_data(message.context, answer))

    server = scripted(script)
    assoc = server.associate(contexts=[(COMMITMENT, IMPLICIT)])
    assert assoc.n_action(COMMITMENT, COMMITMENT_INSTANCE, 1, encode(_commitment_request([(CT, "1.2.3")]), True,
                                                                     True)).status == 0
    started = time.monotonic()
    with pytest.raises(NetworkError, match="timed out"):
        assoc.event_report(COMMITMENT, timeout=0.5)
    assert time.monotonic() - started < 4
    assert not assoc.is_established
    server.finish()
    assert server.after == [0x07]


def test_a_store_response_instead_of_the_event_report_is_a_protocol_error(scripted) -> None:
    def script(conn: socket.socket) -> None:
        handshake(conn)
        message = read_message(conn)
        conn.sendall(p_data(message.context, response(message.context, field=0x8130)))
        conn.sendall(p_data(message.context, response(message.context, field=0x8001, answered=7)))

    server = scripted(script)
    assoc = server.associate(contexts=[(COMMITMENT, IMPLICIT)])
    assoc.n_action(COMMITMENT, COMMITMENT_INSTANCE, 1, encode(_commitment_request([(CT, "1.2.3")]), True, True))
    with pytest.raises(PeerProtocolError, match="expected N-EVENT-REPORT-RQ"):
        assoc.event_report(COMMITMENT, timeout=5)
    assert not assoc.is_established
    server.finish()
    assert server.after == [0x07]


# ----------------------------------------------------------- what an archive's answers may make us hold


def test_a_response_command_that_never_ends_is_a_protocol_error(scripted) -> None:
    """Command fragments never marked last: refused past 64 KiB, not kept until the time-out."""
    def script(conn: socket.socket) -> None:
        handshake(conn)
        message = read_message(conn)
        piece = p_data(message.context, b"\0" * 60_000, flags=0x01)  # a command fragment, not the last
        with contextlib.suppress(OSError):
            for _ in range(200):
                conn.sendall(piece)

    server = scripted(script)
    assoc = server.associate()
    with pytest.raises(PeerProtocolError, match="command set of more than 65536 bytes"):
        assoc.c_store(CT, "1.2.3", EXPLICIT, b"\x08\x00\x18\x00UI\x06\x001.2.3\0")
    assert not assoc.is_established


def test_a_report_dataset_that_never_ends_is_a_protocol_error(scripted) -> None:
    """A storage commitment report is kept in memory: refused past 16 MiB."""
    def script(conn: socket.socket) -> None:
        handshake(conn)
        message = read_message(conn)
        conn.sendall(p_data(message.context, response(message.context, field=0x8130)))
        command = Dataset()
        command.AffectedSOPClassUID = COMMITMENT
        command.CommandField = 0x0100
        command.MessageID = 9
        command.CommandDataSetType = 0
        command.AffectedSOPInstanceUID = COMMITMENT_INSTANCE
        command.EventTypeID = 1
        conn.sendall(p_data(message.context, encode(command, True, True)))
        piece = p_data(message.context, b"\0" * (1 << 20), flags=0x00)  # dataset fragments, none the last
        with contextlib.suppress(OSError):
            for _ in range(40):
                conn.sendall(piece)

    server = scripted(script)
    assoc = server.associate(contexts=[(COMMITMENT, IMPLICIT)])
    assoc.n_action(COMMITMENT, COMMITMENT_INSTANCE, 1, encode(_commitment_request([(CT, "1.2.3")]), True, True))
    with pytest.raises(PeerProtocolError, match="dataset of more than 16777216 bytes"):
        assoc.event_report(COMMITMENT, timeout=20)


def test_a_store_response_about_another_instance_is_no_answer_about_ours(scripted) -> None:
    """Affected SOP Class / Instance UID of a response, when given, must be the request's (PS3.7 9.3.1.2)."""
    def script(conn: socket.socket) -> None:
        handshake(conn)
        message = read_message(conn)
        conn.sendall(p_data(message.context, response(message.context, sop_instance="9.9.9")))

    server = scripted(script)
    assoc = server.associate()
    with pytest.raises(PeerProtocolError, match="Affected SOP Instance UID '9.9.9', not 1.2.3"):
        assoc.c_store(CT, "1.2.3", EXPLICIT, b"\x08\x00\x18\x00UI\x06\x001.2.3\0")
    assert not assoc.is_established


@pytest.mark.parametrize("max_pdu", [0, 0xFFFFFFFF])
def test_a_peer_announcing_huge_pdus_still_gets_its_dataset_in_fragments_read_as_they_go(
        scripted, tmp_path: Path, max_pdu: int) -> None:
    """A maximum of 4 GiB (or none) is a limit, not a size to read from the file at once."""
    got: list[int] = []

    def script(conn: socket.socket) -> None:
        handshake(conn, max_pdu=max_pdu)
        message = read_message(conn)
        got.extend(message.pdu_lengths)
        conn.sendall(p_data(message.context, response(message.context)))

    path = tmp_path / "big.bin"
    path.write_bytes(b"\x08\x00\x18\x00UI\x06\x001.2.3\0" + b"\0" * (5 << 20))
    server = scripted(script)
    with server.associate() as assoc:
        assert assoc.c_store(CT, "1.2.3", EXPLICIT, (path, 0)).status == 0
    assert max(got) <= scu._FRAGMENT_UNLIMITED + 6 and len(got) >= 6
