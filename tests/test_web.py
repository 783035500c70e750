"""Metrics and health probes over real HTTP, parsed with prometheus_client's own parser."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.errors import ConfigError
from gateway.record import RECORD_FILE, ProofRecord
from tests.conftest import build_config, free_port, pydicom_file, send, wait_until


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_agree_with_the_proof_record(tmp_path: Path, gateway_factory) -> None:
    config = build_config(tmp_path, web={"host": "127.0.0.1", "port": free_port()})
    gateway = gateway_factory(config)
    base = f"http://127.0.0.1:{gateway.web.port}"
    sent = [pydicom_file("CT_small.dcm"), pydicom_file("MR_small.dcm"), pydicom_file("liver_1frame.dcm")]
    assert send(gateway.port, sent) == [0, 0, 0]
    assert gateway.wait_idle(60)
    record = ProofRecord(config.spool.directory / RECORD_FILE)
    assert wait_until(lambda: all(record.find(str(ds.SOPInstanceUID))[0]["deliveries"] for ds in sent), 30)

    status, text = _get(f"{base}/metrics")
    assert status == 200
    values = _samples(text)
    entries = list(record.since(0))
    assert values[("dicom_gateway_received_instances_total", ())] == len(entries) == 3
    assert values[("dicom_gateway_received_bytes_total", ())] == sum(e["bytes"] for e in entries)
    assert values[("dicom_gateway_encoded_bytes_total", ())] == sum(
        e["encoded_pixel_bytes"] for e in entries if e["outcome"] == "recompressed")
    assert values[("dicom_gateway_passed_through_total", (("reason", "bit_depth"),))] == 1
    assert values[("dicom_gateway_forwarded_instances_total", (("destination", "local"),))] == 3
    assert values[("dicom_gateway_verification_failures_total", ())] == 0
    assert values[("dicom_gateway_queue_depth", (("destination", "local"),))] == 0
    assert values[("dicom_gateway_dead_letters", (("destination", "local"),))] == 0
    assert values[("dicom_gateway_encode_seconds_count", ())] == 2
    assert values[("dicom_gateway_forward_seconds_count", ())] == 3
    assert "1.2.840" not in text.split("# HELP")[0] + "".join(k[0] for k in values), "no UID as a label"
    assert _get(f"{base}/healthz") == (200, "ok\n")
    assert _get(f"{base}/readyz") == (200, "ready\n")


def test_dead_letters_of_no_route_and_held_ones_are_counted_and_recorded(tmp_path: Path, gateway_factory) -> None:
    """The gauge counts every dead letter, whatever destination it names ("-": no route); the proof
    record says where each instance went, a dead letter included."""
    config = build_config(tmp_path, web={"port": free_port()}, routes=[{"destinations": ["local"],
                                                                         "modality": ["CT"]}])
    gateway = gateway_factory(config)
    unrouted = pydicom_file("MR_small.dcm")
    assert send(gateway.port, [unrouted, pydicom_file("CT_small.dcm")]) == [0, 0]
    assert gateway.wait_idle(60)
    values = _samples(_get(f"http://127.0.0.1:{gateway.web.port}/metrics")[1])
    assert values[("dicom_gateway_dead_letters", (("destination", "-"),))] == 1
    assert values[("dicom_gateway_dead_letters", (("destination", "local"),))] == 0
    [entry] = gateway.record.find(str(unrouted.SOPInstanceUID))
    [delivery] = entry["deliveries"]
    assert (delivery["destination"], delivery["outcome"]) == ("-", "dead") and "no route" in delivery["reason"]


def test_readyz_turns_503_when_a_destination_keeps_failing(tmp_path: Path, gateway_factory) -> None:
    down = {"name": "pacs", "kind": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port(),
            "timeout_seconds": 2}
    config = build_config(tmp_path, destinations=[down], web={"port": free_port(), "unready_after_seconds": 1})
    gateway = gateway_factory(config)
    base = f"http://127.0.0.1:{gateway.web.port}"
    assert _get(f"{base}/readyz")[0] == 200
    assert send(gateway.port, [pydicom_file("CT_small.dcm")]) == [0]
    assert wait_until(lambda: _get(f"{base}/readyz")[0] == 503, timeout=60)
    status, text = _get(f"{base}/readyz")
    assert "destination pacs has been failing" in text
    assert _get(f"{base}/healthz")[0] == 200
    gateway.stop()
    time.sleep(0.2)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{base}/healthz", timeout=5)


def test_a_token_is_required_when_configured(tmp_path: Path, gateway_factory) -> None:
    (tmp_path / "web.token").write_text("s3cret-token\n")
    config = build_config(tmp_path, web={"port": free_port(), "token_file": "web.token"})
    gateway = gateway_factory(config)
    base = f"http://127.0.0.1:{gateway.web.port}"
    assert _get(f"{base}/metrics")[0] == 401
    assert _get(f"{base}/metrics", token="wrong")[0] == 401
    assert _get(f"{base}/metrics", token="s3cret-token")[0] == 200


def test_web_settings_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="web.token_file"):
        build_config(tmp_path, web={"host": "0.0.0.0"})
    with pytest.raises(ConfigError, match="web.token_file"):
        build_config(tmp_path, web={"token_file": "missing.token"})
    with pytest.raises(ConfigError, match="web.port"):
        build_config(tmp_path, web={"port": 70000})


def _toml(tmp_path: Path, web: str, spool: str = "spool") -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[server]\nport = {free_port()}\n[spool]\ndirectory = "{spool}"\n[compression]\nprocesses = 0\n'
                    f'[web]\nport = {free_port()}\n{web}\n'
                    '[[destinations]]\nname = "local"\nkind = "folder"\npath = "archive"\n')
    return path


def test_a_reload_puts_a_new_token_in_force_and_retires_the_old_one(tmp_path: Path, gateway_factory) -> None:
    from gateway.config import load_config

    token = tmp_path / "web.token"
    token.write_text("old-token\n")
    gateway = gateway_factory(load_config(_toml(tmp_path, 'token_file = "web.token"')))
    base = f"http://127.0.0.1:{gateway.web.port}"
    assert _get(f"{base}/metrics", token="old-token")[0] == 200
    token.write_text("new-token\n")
    assert gateway.reload() is None
    assert _get(f"{base}/metrics", token="old-token")[0] == 401
    assert _get(f"{base}/metrics", token="new-token")[0] == 200
    token.write_text("")  # an empty file is refused; the token in force stays
    assert "web.token_file" in (gateway.reload() or "")
    assert _get(f"{base}/metrics", token="new-token")[0] == 200


@pytest.mark.parametrize("spool", ["spool #2", "spool?x=1", "spool %41"])
def test_metrics_work_whatever_characters_the_spool_path_holds(tmp_path: Path, gateway_factory, spool: str) -> None:
    from gateway.config import load_config

    gateway = gateway_factory(load_config(_toml(tmp_path, "", spool=spool)))
    assert send(gateway.port, [pydicom_file("CT_small.dcm")]) == [0]
    assert gateway.wait_idle(60)
    status, text = _get(f"http://127.0.0.1:{gateway.web.port}/metrics")
    assert status == 200, text
    assert _samples(text)[("dicom_gateway_received_instances_total", ())] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["archive", "gateway.toml", spool]), \
        "no stray file beside the spool"
