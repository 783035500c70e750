"""Reload without restart: a new destination gets the next instance, a bad file changes nothing."""

from __future__ import annotations

import signal
from pathlib import Path

from pydicom.uid import generate_uid

from gateway.config import load_config
from tests.conftest import free_port, listening, pydicom_file, send, start_serve, wait_until
from tests.test_tls import pki  # noqa: F401 - the session's test CA

_BASE = """
[server]
ae_title = "GATEWAY"
host = "127.0.0.1"
port = {port}
{callers}
[spool]
directory = "spool"
[compression]
transfer_syntax = "RLELossless"
processes = {processes}
[retry]
base_seconds = 0.2
cap_seconds = 1.0
[[destinations]]
name = "a"
kind = "folder"
path = "archive_a"
"""
_SECOND = """
[[destinations]]
name = "b"
kind = "folder"
path = "archive_b"
"""


def _write(path: Path, port: int, *, second: bool = False, callers: str = "", processes: int = 0,
           extra: str = "") -> None:
    path.write_text(_BASE.format(port=port, callers=callers, processes=processes) + (_SECOND if second else "")
                    + extra)


def _one() -> object:
    ds = pydicom_file("CT_small.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def _stored(root: Path, folder: str) -> set[str]:
    return {p.stem for p in (root / folder).rglob("*.dcm")}


def test_reload_adds_a_destination_and_a_bad_file_changes_nothing(tmp_path: Path, gateway_factory) -> None:
    toml = tmp_path / "gateway.toml"
    port = free_port()
    _write(toml, port)
    gateway = gateway_factory(load_config(toml))
    first, second, third = _one(), _one(), _one()
    assert send(gateway.port, [first]) == [0]
    assert wait_until(lambda: str(first.SOPInstanceUID) in _stored(tmp_path, "archive_a"), timeout=30)

    _write(toml, port, second=True)
    assert gateway.reload() is None
    assert send(gateway.port, [second]) == [0]
    assert wait_until(lambda: str(second.SOPInstanceUID) in _stored(tmp_path, "archive_b"), timeout=30)
    assert wait_until(lambda: str(second.SOPInstanceUID) in _stored(tmp_path, "archive_a"), timeout=30)
    assert str(first.SOPInstanceUID) not in _stored(tmp_path, "archive_b")

    toml.write_text(toml.read_text() + "\n[retry]\nunknown_knob = 1\n")
    error = gateway.reload()
    assert error is not None and gateway.reload_error == error
    _write(toml, port, second=True, extra="\n[surprise]\nkey = 1\n")
    assert "surprise" in (gateway.reload() or "")
    _write(toml, free_port(), second=True)  # a new port needs a restart
    assert "server.port" in (gateway.reload() or "")
    assert [d.name for d in gateway.config.destinations] == ["a", "b"], "the running configuration stays"
    assert send(gateway.port, [third]) == [0]
    assert wait_until(lambda: str(third.SOPInstanceUID) in _stored(tmp_path, "archive_b"), timeout=30)


def test_reload_changes_the_private_version_of_the_next_instance(tmp_path: Path, gateway_factory) -> None:
    from pydicom import dcmread
    from pydicom.encaps import generate_frames

    toml = tmp_path / "gateway.toml"
    port = free_port()
    base = _BASE.format(port=port, callers="", processes=0).replace('"RLELossless"', '"gwl"')
    toml.write_text(base)
    gateway = gateway_factory(load_config(toml))
    first, second = _one(), _one()

    def version(ds) -> int:
        path = next((tmp_path / "archive_a").rglob(f"{ds.SOPInstanceUID}.dcm"))
        [stream] = generate_frames(dcmread(path).PixelData, number_of_frames=1)
        return stream[4]

    assert send(gateway.port, [first]) == [0]
    assert wait_until(lambda: str(first.SOPInstanceUID) in _stored(tmp_path, "archive_a"), timeout=30)
    assert version(first) == 2
    toml.write_text(base.replace("processes = 0", "processes = 0\nprivate_version = 1"))
    assert gateway.reload() is None and gateway.config.compression.private_version == 1
    assert send(gateway.port, [second]) == [0]
    assert wait_until(lambda: str(second.SOPInstanceUID) in _stored(tmp_path, "archive_a"), timeout=30)
    assert version(second) == 1


def test_reload_applies_allowed_callers_to_the_next_association(tmp_path: Path, gateway_factory) -> None:
    toml = tmp_path / "gateway.toml"
    port = free_port()
    _write(toml, port)
    gateway = gateway_factory(load_config(toml))
    assert send(gateway.port, [_one()], calling="MODALITY") == [0]
    _write(toml, port, callers='allowed_callers = ["CT_SCANNER"]')
    assert gateway.reload() is None
    from pynetdicom import AE

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", gateway.port, ae_title="GATEWAY")
    assert assoc.is_rejected
    assert send(gateway.port, [_one()], calling="CT_SCANNER") == [0]


def test_sighup_reloads_a_running_service_with_worker_processes(tmp_path: Path) -> None:
    toml = tmp_path / "gateway.toml"
    port = free_port()
    _write(toml, port, processes=1)
    log = tmp_path / "gateway.log"
    process = start_serve(toml, log)
    try:
        assert wait_until(lambda: listening(port), timeout=180), log.read_text()[-2000:]
        _write(toml, port, second=True, processes=1)
        process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "configuration reloaded" in log.read_text(), timeout=60), log.read_text()[-2000:]
        ds = _one()
        assert send(port, [ds]) == [0]
        assert wait_until(lambda: str(ds.SOPInstanceUID) in _stored(tmp_path, "archive_b"), timeout=60), \
            log.read_text()[-3000:]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0


def test_a_reload_that_cannot_read_the_file_keeps_the_gateway_running(tmp_path: Path, gateway_factory,
                                                                      monkeypatch) -> None:
    toml = tmp_path / "gateway.toml"
    port = free_port()
    _write(toml, port)
    gateway = gateway_factory(load_config(toml))
    good = toml.read_text()

    toml.write_bytes(good.encode() + "# Hôpital Saint-André\n".encode("latin-1"))  # saved in Latin-1
    assert "not valid UTF-8" in (gateway.reload() or "")
    toml.write_text(good.replace('"archive_a"', '"~no-such-user-here/archive_a"'))
    assert "destinations[0].path" in (gateway.reload() or "")
    toml.write_text(good + '[[destinations]]\nname = "web"\nkind = "dicomweb"\nurl = "http://[fe80::1/dicom-web"\n')
    assert "destinations[1].url" in (gateway.reload() or "")
    toml.unlink()
    toml.mkdir()  # the config path became a folder
    assert "is a folder" in (gateway.reload() or "")
    toml.rmdir()
    toml.write_text(good)

    def broken(path: object) -> None:
        raise KeyError("a bug of ours")

    monkeypatch.setattr("gateway.service.load_config", broken)
    error = gateway.reload()  # whatever is raised, the reload is refused and nothing escapes
    assert error is not None and "KeyError" in error and gateway.reload_error == error
    monkeypatch.undo()
    assert [d.name for d in gateway.config.destinations] == ["a"], "the running configuration stays"
    ds = _one()
    assert send(gateway.port, [ds]) == [0]
    assert wait_until(lambda: str(ds.SOPInstanceUID) in _stored(tmp_path, "archive_a"), timeout=30)
    assert gateway.reload() is None


def test_reload_applies_a_new_free_space_floor_to_the_next_c_store(tmp_path: Path, gateway_factory) -> None:
    toml = tmp_path / "gateway.toml"
    port = free_port()
    _write(toml, port)
    toml.write_text(toml.read_text().replace('directory = "spool"', 'directory = "spool"\nmin_free_bytes = 0'))
    gateway = gateway_factory(load_config(toml))
    assert send(gateway.port, [_one()]) == [0]
    toml.write_text(toml.read_text().replace("min_free_bytes = 0", f"min_free_bytes = {1 << 50}"))  # 1 PiB
    assert gateway.reload() is None and gateway.config.spool.min_free_bytes == 1 << 50
    assert send(gateway.port, [_one()]) == [0xA700], "the new floor refuses what the disk cannot hold"
    toml.write_text(toml.read_text().replace(f"min_free_bytes = {1 << 50}", "min_free_bytes = 0"))
    assert gateway.reload() is None
    assert send(gateway.port, [_one()]) == [0]


def test_sighup_with_a_file_that_is_not_utf8_leaves_the_service_running(tmp_path: Path) -> None:
    toml = tmp_path / "gateway.toml"
    port = free_port()
    _write(toml, port)
    log = tmp_path / "gateway.log"
    process = start_serve(toml, log)
    try:
        assert wait_until(lambda: listening(port), timeout=180), log.read_text()[-2000:]
        toml.write_bytes(toml.read_bytes() + "# Hôpital Saint-André\n".encode("latin-1"))
        process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "configuration not reloaded" in log.read_text(), timeout=60), \
            log.read_text()[-2000:]
        assert "ERROR" in log.read_text() and "not valid UTF-8" in log.read_text()
        assert process.poll() is None, log.read_text()[-2000:]
        assert send(port, [_one()]) == [0]
        assert "Traceback" not in log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0


_UNREACHABLE = """
[[destinations]]
name = "pacs"
kind = "dicom"
ae_title = "PACS"
host = "127.0.0.1"
port = {port}
timeout_seconds = 1
"""
_PACS_AS_FOLDER = """
[[destinations]]
name = "pacs"
kind = "folder"
path = "archive_pacs"
"""


def test_a_removed_destinations_queue_becomes_dead_letters_that_wait_for_it(tmp_path: Path, gateway_factory,
                                                                            capsys) -> None:
    from gateway.cli import main
    from gateway.spool import DEAD, PENDING

    toml = tmp_path / "gateway.toml"
    port = free_port()
    _write(toml, port, extra=_UNREACHABLE.format(port=free_port()))
    gateway = gateway_factory(load_config(toml))
    first, second = _one(), _one()
    assert send(gateway.port, [first]) == [0]
    assert wait_until(lambda: gateway.spool.count_jobs(PENDING, "pacs") == 1, timeout=30)

    _write(toml, port)  # the archive is retired
    assert gateway.reload() is None
    assert wait_until(lambda: gateway.spool.count_jobs(DEAD, "pacs") == 1, timeout=60)
    job = next(gateway.spool.jobs_in(DEAD, "pacs"))
    assert "no longer in the configuration" in job.reason
    assert str(first.SOPInstanceUID) in _stored(tmp_path, "archive_a")
    assert gateway.spool.held_path(job.instance).exists(), "its instance is kept for it"
    [entry] = gateway.record.find(str(first.SOPInstanceUID))
    assert {(d["destination"], d["outcome"]) for d in entry["deliveries"]} == {("a", "delivered"), ("pacs", "dead")}
    assert not gateway.retry_all_dead() and not gateway.retry_dead(job.instance, "pacs")
    gateway.stop()

    # Stopped with a queue for a destination then removed: the start makes it dead letters.
    _write(toml, port, extra=_UNREACHABLE.format(port=free_port()))
    gateway = gateway_factory(load_config(toml))
    assert send(gateway.port, [second]) == [0]
    assert wait_until(lambda: gateway.spool.count_jobs(PENDING, "pacs") == 1, timeout=30)
    assert gateway.spool.count_jobs(DEAD, "pacs") == 1, "the first stays a dead letter until retried"
    gateway.stop()
    _write(toml, port)
    gateway = gateway_factory(load_config(toml))
    assert gateway.spool.count_jobs(DEAD, "pacs") == 2 and gateway.spool.count_jobs(PENDING, "pacs") == 0
    assert gateway.spool.counts()["held"] == 2
    gateway.stop()
    assert main(["status", "--config", str(toml)]) == 0
    assert "pacs (not in the configuration): pending=0  inflight=0  dead=2" in capsys.readouterr().out
    assert main(["retry", "--config", str(toml)]) == 0
    out = capsys.readouterr().out
    assert "re-queued 0" in out and "kept 2 dead letter(s) of pacs" in out

    # Configured again, retried: both go out and their instances leave the spool.
    _write(toml, port, extra=_PACS_AS_FOLDER)
    assert main(["retry", "--config", str(toml)]) == 0
    assert "re-queued 2" in capsys.readouterr().out
    gateway = gateway_factory(load_config(toml))
    assert wait_until(lambda: _stored(tmp_path, "archive_pacs") == {str(first.SOPInstanceUID),
                                                                     str(second.SOPInstanceUID)}, timeout=30)
    assert wait_until(lambda: gateway.spool.counts()["held"] == 0, timeout=30)


def test_the_console_certificate_is_changed_by_a_restart_only(tmp_path: Path, gateway_factory,
                                                              pki: Path) -> None:  # noqa: F811
    """Like the rest of [web]: switching HTTPS on, or naming other files, is refused and the console goes on."""
    import ssl

    import httpx

    toml = tmp_path / "gateway.toml"
    port, web = free_port(), free_port()
    https = f'[web]\nport = {web}\ncertificate = "{pki / "gateway.pem"}"\nprivate_key = "{pki / "gateway.key"}"\n'
    _write(toml, port, extra=https)
    gateway = gateway_factory(load_config(toml))
    _write(toml, port, extra=https.replace("gateway.pem", "archive.pem").replace("gateway.key", "archive.key"))
    assert (gateway.reload() or "").startswith("web: changing this needs a restart")
    _write(toml, port, extra=f"[web]\nport = {web}\n")
    assert (gateway.reload() or "").startswith("web: changing this needs a restart")
    trust = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    assert httpx.get(f"https://127.0.0.1:{web}/healthz", verify=trust, timeout=10).text == "ok\n"


def test_states_of_associations_a_reload_drops_are_not_shown_for_good(tmp_path: Path, gateway_factory,
                                                                     capsys) -> None:
    """A forwarder saves what it knows of its destination when that changes, for ``status``; the states of
    associations a reload dropped (fewer ``associations``, the destination removed) stayed until the next
    restart, "failing since" the reload however well the destination did afterwards."""
    from gateway.cli import main

    toml = tmp_path / "gateway.toml"
    port, down = free_port(), free_port()
    _write(toml, port, extra=_UNREACHABLE.format(port=down) + "associations = 2\n")
    gateway = gateway_factory(load_config(toml))
    for _ in range(30):  # instances until each association holds one and has failed
        assert send(gateway.port, [_one()]) == [0]
        if wait_until(lambda: len([s for s in gateway.spool.destination_states("pacs") if s["failing_since"]]) == 2,
                      timeout=3):
            break
    assert [s["partition"] for s in gateway.spool.destination_states("pacs")] == [0, 1]

    _write(toml, port, extra=_UNREACHABLE.format(port=down) + "associations = 1\n")
    assert gateway.reload() is None
    assert wait_until(lambda: [s["partition"] for s in gateway.spool.destination_states("pacs")] == [0], timeout=30)

    _write(toml, port)  # the archive is retired
    assert gateway.reload() is None
    assert wait_until(lambda: gateway.spool.destination_states("pacs") == [], timeout=30)
    assert main(["status", "--config", str(toml)]) == 0
    assert "failing since" not in capsys.readouterr().out
