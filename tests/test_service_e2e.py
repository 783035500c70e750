"""End to end in process and across a crash: SCU -> gateway -> DICOM peer and folder.

Every pixel array that arrives is compared with the one sent, value for
value, with pydicom's own decoders (not ours).
"""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import RLELossless, generate_uid

from gateway.pipeline import recompress
from gateway.spool import DEAD, DONE, PENDING, Spool
from tests.conftest import (
    build_config,
    free_port,
    listening,
    make_series,
    pydicom_file,
    send,
    start_serve,
    wait_until,
)
from tests.corpus import corpus_entries, corpus_params

PYDICOM_FILES = [
    "CT_small.dcm",  # 16-bit signed, explicit LE
    "MR_small_bigendian.dcm",  # explicit big endian
    "MR_small_implicit.dcm",  # implicit LE
    "SC_rgb_small_odd.dcm",  # 8-bit RGB, odd size
    "SC_rgb_rle_16bit_2frame.dcm",  # already RLE, 16-bit RGB, 2 frames
    "rtdose_rle.dcm",  # RLE 32-bit, 15 frames
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless: decoded and recompressed
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless SV1, RGB
    "JPEG2000.dcm",  # JPEG 2000
    "SC_rgb_jpeg_lossy_gdcm.dcm",  # lossy JPEG: forwarded as received
    "image_dfl.dcm",  # deflated
    "liver_1frame.dcm",  # 1-bit segmentation: forwarded as received
    "SC_ybr_full_422_uncompressed.dcm",  # native YBR_FULL_422: forwarded as received
    "examples_palette.dcm",  # palette colour
]


# The bundled files the gateway forwards as received when the target is RLE, and why.
PASSED_THROUGH = {
    "SC_rgb_small_odd.dcm": "RLE would not shrink its 28 bytes",
    "MR_small_jpeg_ls_lossless.dcm": "RLE would not shrink its JPEG-LS stream",
    "JPEG2000.dcm": "lossy-compressed source",
    "SC_rgb_jpeg_lossy_gdcm.dcm": "lossy-compressed source",
    "liver_1frame.dcm": "1-bit pixels",
    "SC_ybr_full_422_uncompressed.dcm": "subsampled native YBR",
}


def _archive_files(root: Path) -> dict[str, Path]:
    return {p.stem: p for p in root.rglob("*.dcm")}


def _assert_same_pixels(sent: Dataset, received: Dataset) -> None:
    assert received.SOPInstanceUID == sent.SOPInstanceUID
    assert np.array_equal(received.pixel_array, sent.pixel_array), f"pixels differ for {sent.SOPInstanceUID}"


def _corpus_samples(limit: int = 6) -> list[Dataset]:
    """A few small real images from the corpus, one per modality folder."""
    chosen, seen = [], set()
    for row in corpus_entries():
        if row["folder"] in seen or row["folder"] == "series" or int(row["raw_pixel_bytes"]) > 3_000_000:
            continue
        seen.add(row["folder"])
        chosen.append(dcmread(row["file"]))
        if len(chosen) == limit:
            break
    return chosen


def test_scu_to_gateway_to_peer_and_folder(tmp_path: Path, gateway_factory, peer_factory) -> None:
    peer = peer_factory().start()
    config = build_config(tmp_path, destinations=[
        {"name": "pacs", "kind": "dicom", "ae_title": peer.ae_title, "host": "127.0.0.1", "port": peer.port},
        {"name": "local", "kind": "folder", "path": "archive"},
    ], compression={"processes": 1})  # recompression in a worker process, as shipped
    gateway = gateway_factory(config)
    datasets = [pydicom_file(name) for name in PYDICOM_FILES] + _corpus_samples()
    for ds in datasets:  # some bundled files share UIDs
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    assert send(gateway.port, datasets) == [0] * len(datasets)
    assert gateway.wait_idle(120)

    at_peer = peer.by_uid()
    in_folder = _archive_files(tmp_path / "archive")
    for ds in datasets:
        uid = str(ds.SOPInstanceUID)
        _assert_same_pixels(ds, at_peer[uid])
        _assert_same_pixels(ds, dcmread(in_folder[uid]))
        syntax = at_peer[uid].file_meta.TransferSyntaxUID
        if syntax != RLELossless:  # passed through: exactly as received
            assert syntax == ds.file_meta.TransferSyntaxUID and at_peer[uid].PixelData == ds.PixelData
    # Exactly these bundled files are carried as received (RLE sources stay RLE); every other one,
    # corpus samples included, arrives RLE compressed.
    names = PYDICOM_FILES + [f"corpus-{i}" for i in range(len(datasets) - len(PYDICOM_FILES))]
    passed = {name for name, ds in zip(names, datasets)
              if at_peer[str(ds.SOPInstanceUID)].file_meta.TransferSyntaxUID != RLELossless}
    assert passed == set(PASSED_THROUGH), passed
    counts = gateway.spool.counts()
    assert counts[DONE] == 2 * len(datasets) and counts[DEAD] == 0
    # The collector removes an object just after its held instance, which is what wait_idle watches.
    assert wait_until(lambda: list(gateway.spool.objects.iterdir()) == [], timeout=10), \
        "objects are removed once delivered everywhere"


def test_attributes_other_than_pixel_encoding_are_unchanged(tmp_path: Path, gateway_factory) -> None:
    gateway = gateway_factory(build_config(tmp_path))
    sent = pydicom_file("MR_small.dcm")
    assert send(gateway.port, [sent]) == [0]
    assert gateway.wait_idle(60)
    got = dcmread(next((tmp_path / "archive").rglob("*.dcm")))
    skip = {0x7FE00010}
    for element in sent:
        if element.tag not in skip:
            assert got[element.tag].value == element.value, element.keyword


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_corrupt_pixel_data_is_forwarded_unchanged(tmp_path: Path, gateway_factory, seed: int) -> None:
    """Garbage in RLE segments (some make pylibjpeg-rle panic): forwarded as received, server keeps going."""
    gateway = gateway_factory(build_config(tmp_path, compression={"transfer_syntax": "JPEGLSLossless"}))
    rng = np.random.default_rng(seed)
    broken_sets = []
    for _ in range(4):
        ds = pydicom_file("MR_small_RLE.dcm")
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        broken = bytearray(ds.PixelData)
        broken[100:400] = rng.integers(0, 256, 300, dtype=np.uint8).tobytes()
        ds.PixelData = bytes(broken)
        broken_sets.append(ds)
    good = pydicom_file("CT_small.dcm")
    assert send(gateway.port, [*broken_sets, good]) == [0] * 5
    assert gateway.wait_idle(60)
    files = _archive_files(tmp_path / "archive")
    for ds in broken_sets:
        forwarded = dcmread(files[str(ds.SOPInstanceUID)])
        if forwarded.file_meta.TransferSyntaxUID == RLELossless:
            assert forwarded.PixelData == ds.PixelData, "what cannot be decoded is passed through untouched"
        else:  # the damage happened to leave a decodable stream: then it must round-trip exactly
            _assert_same_pixels(ds, forwarded)
    _assert_same_pixels(good, dcmread(files[str(good.SOPInstanceUID)]))


def test_destination_down_then_back(tmp_path: Path, gateway_factory, peer_factory) -> None:
    peer = peer_factory()  # not started yet: connection refused
    config = build_config(tmp_path, destinations=[
        {"name": "pacs", "kind": "dicom", "ae_title": peer.ae_title, "host": "127.0.0.1", "port": peer.port},
        {"name": "local", "kind": "folder", "path": "archive"},
    ])
    gateway = gateway_factory(config)
    series = make_series(6)
    assert send(gateway.port, series) == [0] * 6
    # The folder destination is not held up by the absent PACS.
    assert wait_until(lambda: len(_archive_files(tmp_path / "archive")) == 6, timeout=60)
    assert wait_until(lambda: any(j.attempts >= 2 for j in gateway.spool.jobs_in(PENDING, "pacs")), timeout=30)
    assert gateway.spool.counts()[DEAD] == 0
    peer.start()
    assert gateway.wait_idle(60)
    got = peer.by_uid()
    for ds in series:
        _assert_same_pixels(ds, got[str(ds.SOPInstanceUID)])


def test_destination_rejecting_our_syntax_gets_a_fallback(tmp_path: Path, gateway_factory, peer_factory) -> None:
    peer = peer_factory(syntaxes=["1.2.840.10008.1.2"]).start()  # implicit little endian only
    gateway = gateway_factory(build_config(tmp_path, destinations=[
        {"name": "pacs", "kind": "dicom", "ae_title": peer.ae_title, "host": "127.0.0.1", "port": peer.port}]))
    series = make_series(3) + [pydicom_file("SC_rgb_small_odd.dcm")]
    assert send(gateway.port, series) == [0] * 4
    assert gateway.wait_idle(60)
    got = peer.by_uid()
    for ds in series:
        assert got[str(ds.SOPInstanceUID)].file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
        _assert_same_pixels(ds, got[str(ds.SOPInstanceUID)])


def test_an_object_re_encoded_for_a_destination_has_its_proof_recorded(tmp_path: Path, gateway_factory,
                                                                       peer_factory, caplog) -> None:
    jpeg_ls = "1.2.840.10008.1.2.4.80"
    peer = peer_factory(syntaxes=[jpeg_ls]).start()  # not the RLE Lossless the gateway stores
    gateway = gateway_factory(build_config(tmp_path, destinations=[
        {"name": "pacs", "kind": "dicom", "ae_title": peer.ae_title, "host": "127.0.0.1", "port": peer.port,
         "transfer_syntaxes": ["JPEGLSLossless"]}]))
    sent = pydicom_file("CT_small.dcm")
    with caplog.at_level("INFO", logger="gateway"):
        assert send(gateway.port, [sent]) == [0]
        assert gateway.wait_idle(60)
    assert peer.by_uid()[str(sent.SOPInstanceUID)].file_meta.TransferSyntaxUID == jpeg_ls
    [entry] = gateway.record.find(str(sent.SOPInstanceUID))
    again = entry["reencoded"]
    assert {(r["destination"], r["syntax"]) for r in again} == {("pacs", jpeg_ls)}
    assert len(again) == 2 and {r["pixel_hash"] for r in again} == {entry["pixel_hash"]}, again
    [delivery] = entry["deliveries"]
    received = peer.by_uid()[str(sent.SOPInstanceUID)]
    buffer = DicomBytesIO()  # the data set alone, as C-STORE carries it
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, received)
    assert delivery["bytes"] == len(buffer.getvalue()), "the re-encoded data set sent, not the stored object"
    lines = [r.getMessage() for r in caplog.records]
    for stage_name in ("encoded", "verified"):
        assert any(line.startswith(f"{stage_name} sop={sent.SOPInstanceUID}") and "destination=pacs" in line
                   and f"syntax={jpeg_ls}" in line for line in lines), stage_name


def test_routes_and_per_modality_codecs(tmp_path: Path, gateway_factory) -> None:
    config = build_config(
        tmp_path,
        destinations=[{"name": "all", "kind": "folder", "path": "all"},
                      {"name": "mr", "kind": "folder", "path": "mr"}],
        routes=[{"destinations": ["all"]}, {"destinations": ["mr"], "modality": ["MR"], "calling_ae": ["MRI"]}],
        compression={"modality": {"MR": "JPEGLSLossless", "OT": "keep"}},
    )
    gateway = gateway_factory(config)
    ct, mr = pydicom_file("CT_small.dcm"), pydicom_file("MR_small.dcm")
    assert send(gateway.port, [ct, mr], calling="MRI") == [0, 0]
    other_mr = pydicom_file("MR_small.dcm")
    other_mr.SOPInstanceUID = generate_uid()
    assert send(gateway.port, [other_mr], calling="ELSEWHERE") == [0]
    assert gateway.wait_idle(60)
    everything = _archive_files(tmp_path / "all")
    assert set(everything) == {ct.SOPInstanceUID, mr.SOPInstanceUID, other_mr.SOPInstanceUID}
    assert set(_archive_files(tmp_path / "mr")) == {mr.SOPInstanceUID}
    assert dcmread(everything[ct.SOPInstanceUID]).file_meta.TransferSyntaxUID == RLELossless
    assert dcmread(everything[mr.SOPInstanceUID]).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"


def test_one_spool_serves_one_gateway(tmp_path: Path, gateway_factory) -> None:
    from gateway.errors import SpoolError
    from gateway.service import Gateway

    config = build_config(tmp_path)
    gateway_factory(config)
    with pytest.raises(SpoolError, match="in use by another gateway"):
        Gateway(build_config(tmp_path)).start()


def test_unroutable_instance_is_a_dead_letter_not_a_loss(tmp_path: Path, gateway_factory) -> None:
    config = build_config(tmp_path, routes=[{"destinations": ["local"], "modality": ["MR"]}])
    gateway = gateway_factory(config)
    assert send(gateway.port, [pydicom_file("CT_small.dcm")]) == [0]
    assert wait_until(lambda: gateway.spool.counts()[DEAD] == 1, timeout=30)
    (dead,) = gateway.spool.jobs_in(DEAD)
    assert "no route matches" in dead.reason
    assert gateway.spool.object_path(dead.instance).exists()


# ------------------------------------------------------------ crash recovery


def test_restart_rebuilds_objects_and_jobs_a_crash_lost(tmp_path: Path, peer_factory) -> None:
    """Objects and job manifests are not fsync'd: a restart rebuilds them from held/."""
    from gateway.service import Gateway

    peer = peer_factory()  # down while the first gateway runs
    config = build_config(tmp_path, destinations=[
        {"name": "pacs", "kind": "dicom", "ae_title": peer.ae_title, "host": "127.0.0.1", "port": peer.port}])
    series = make_series(4, seed=9)
    first = Gateway(config).start()
    try:
        assert send(first.port, series) == [0] * 4
        assert wait_until(lambda: first.spool.counts()["held"] == 4, timeout=30)
    finally:
        first.stop()
    spool = Spool(config.spool.directory)
    ids = spool.held_ids()
    spool.object_path(ids[0]).write_bytes(b"")  # the crash cut an object short
    spool.object_path(ids[1]).unlink()  # and lost another one entirely
    (spool.jobs / PENDING / f"{ids[2]}@pacs.json").unlink()  # and a job manifest
    (spool.jobs / PENDING / f"{ids[3]}@pacs.json").write_bytes(b"{")  # and damaged one

    peer.start()
    second = Gateway(config).start()
    try:
        assert second.wait_idle(60)
    finally:
        second.stop()
    got = peer.by_uid()
    for ds in series:
        received = got[str(ds.SOPInstanceUID)]
        assert received.file_meta.TransferSyntaxUID == RLELossless
        _assert_same_pixels(ds, received)
    assert Spool(config.spool.directory).counts()["held"] == 0


def _write_toml(path: Path, port: int) -> None:
    path.write_text(f"""
[server]
ae_title = "GATEWAY"
host = "127.0.0.1"
port = {port}

[spool]
directory = "spool"

[compression]
transfer_syntax = "RLELossless"

[retry]
base_seconds = 0.2
cap_seconds = 1.0

[[destinations]]
name = "local"
kind = "folder"
path = "archive"
""")


def test_kill_9_mid_series_loses_nothing_acknowledged(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gateway.toml"
    _write_toml(config, port)
    process = start_serve(config, tmp_path / "gateway.log")
    try:
        assert wait_until(lambda: listening(port), timeout=60), (tmp_path / "gateway.log").read_text()
        series = make_series(60, rows=256, columns=256, seed=3)
        acknowledged: list[str] = []

        def sender() -> None:
            from pynetdicom import AE

            ae = AE(ae_title="MODALITY")
            ae.dimse_timeout = ae.network_timeout = 3  # notice the dead peer quickly
            ae.add_requested_context(series[0].SOPClassUID, "1.2.840.10008.1.2.1")
            assoc = ae.associate("127.0.0.1", port, ae_title="GATEWAY")
            if not assoc.is_established:
                return
            # pynetdicom skips closing a socket whose shutdown fails (the peer is gone): close it here.
            raw = assoc.dul.socket.socket
            try:
                for ds in series:
                    rsp = assoc.send_c_store(ds)
                    if "Status" in rsp and int(rsp.Status) == 0:
                        acknowledged.append(str(ds.SOPInstanceUID))
                    if not assoc.is_established:
                        return
                assoc.release()
            finally:
                raw.close()

        thread = threading.Thread(target=sender)
        thread.start()
        assert wait_until(lambda: len(acknowledged) >= 20, timeout=60)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        thread.join(30)
        assert 20 <= len(acknowledged) < len(series), "the crash should land mid-series"

        process = start_serve(config, tmp_path / "gateway.log")
        # The restarted service delivers what was acknowledged (some of it may have arrived before the crash).
        assert wait_until(lambda: listening(port), timeout=180), (tmp_path / "gateway.log").read_text()[-3000:]
        archive = tmp_path / "archive"
        assert wait_until(lambda: set(acknowledged) <= set(_archive_files(archive)), timeout=120), \
            (tmp_path / "gateway.log").read_text()[-3000:]
        files = _archive_files(archive)
        sent = {str(ds.SOPInstanceUID): ds for ds in series}
        for uid in acknowledged:
            _assert_same_pixels(sent[uid], dcmread(files[uid]))
        assert wait_until(lambda: Spool(tmp_path / "spool").counts()["pending"] == 0, timeout=30)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
    assert process.returncode == 0 or process.returncode == -signal.SIGKILL


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly(tmp_path: Path, signum: int) -> None:
    port = free_port()
    config = tmp_path / "gateway.toml"
    _write_toml(config, port)
    process = start_serve(config, tmp_path / "gateway.log")
    try:
        assert wait_until(lambda: listening(port), timeout=60)
        assert send(port, [pydicom_file("CT_small.dcm")]) == [0]
        assert wait_until(lambda: len(_archive_files(tmp_path / "archive")) == 1, timeout=30)
    finally:
        process.send_signal(signum)
        assert process.wait(30) == 0
    log = (tmp_path / "gateway.log").read_text()
    assert "gateway.service stopped" in log
    for stage in ("received", "encoded", "verified", "forwarded"):
        assert f" {stage} sop=" in log, stage
    assert "CompressedSamples" not in log and "Patient" not in log


def _check_splice(src: Path, tmp_path: Path) -> None:
    """The worker's byte splice writes exactly the bytes dcmwrite would, or declines."""
    from pydicom.filewriter import dcmwrite

    from gateway.worker import pixel_span, splice_write

    ds = dcmread(src)
    span = pixel_span(ds)
    outcome = recompress(ds, "RLELossless")
    if not outcome.recompressed:
        pytest.skip(f"passed through: {outcome.reason}")
    spliced, full = tmp_path / "spliced.dcm", tmp_path / "full.dcm"
    used = splice_write(src, ds, outcome.dataset, spliced, span)
    dcmwrite(full, outcome.dataset, enforce_file_format=True)
    if not used:
        assert not spliced.exists()
        assert ds.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.2",
                                                  "1.2.840.10008.1.2.1.99") or "PlanarConfiguration" in ds
        return
    assert spliced.read_bytes() == full.read_bytes()
    a = dcmread(spliced)
    assert a.file_meta.TransferSyntaxUID == RLELossless
    assert np.array_equal(a.pixel_array, dcmread(src).pixel_array)


@pytest.mark.parametrize("name", PYDICOM_FILES + ["MR_small.dcm", "examples_rgb_color.dcm"])
def test_spliced_object_equals_a_full_rewrite(tmp_path: Path, name: str) -> None:
    src = tmp_path / "src.dcm"
    pydicom_file(name).save_as(src, enforce_file_format=True)
    _check_splice(src, tmp_path)


@pytest.mark.parametrize("entry", corpus_params(limit_per_series=3))
def test_spliced_scanner_object_equals_a_full_rewrite(tmp_path: Path, entry: dict) -> None:
    _check_splice(entry["file"], tmp_path)
