"""One event is one log line: a value a peer sent can neither start a line of its own nor pass for a field."""

from __future__ import annotations

import re
from pathlib import Path

from pydicom.uid import generate_uid

from gateway.config import parse_config
from gateway.logs import get_logger, setup_logging, stage
from tests.conftest import free_port, pydicom_file, send, wait_until

_FORGED = "2026-01-01T00:00:00.000+00:00 INFO gateway.forward forwarded sop=9.9.9 destination=local"
_LINE_START = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d [A-Z]+ gateway")


def test_a_received_value_cannot_forge_a_line(tmp_path: Path, gateway_factory, gateway_logger) -> None:
    log = tmp_path / "gateway.log"
    setup_logging("INFO", log)
    config = parse_config({"server": {"port": free_port()}, "spool": {"directory": "spool"},
                           "compression": {"processes": 0},
                           "destinations": [{"name": "local", "kind": "folder", "path": "archive"}]}, tmp_path)
    gateway = gateway_factory(config)
    ds = pydicom_file("CT_small.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = f"CT\r\n{_FORGED}"
    assert send(gateway.port, [ds]) == [0]
    assert wait_until(lambda: f"forwarded sop={ds.SOPInstanceUID}" in log.read_text(), timeout=30)
    lines = log.read_text().splitlines()
    assert all(_LINE_START.match(line) for line in lines), [line for line in lines if not _LINE_START.match(line)]
    assert not any("sop=9.9.9" in line and line.startswith(_FORGED[:10]) and "received" not in line
                   for line in lines)
    assert any("\\x0d\\x0a" + _FORGED in line for line in lines), "the value is still there to read, escaped"


def test_a_stage_value_is_quoted_when_it_could_pass_for_another_field(gateway_logger, caplog) -> None:
    gateway_logger.propagate = True
    with caplog.at_level("INFO", logger="gateway"):
        stage(get_logger("test"), "dead", "1.2.3", destination="a", reason='refused " destination=b',
              empty="", path="C:\\archive")
    assert caplog.messages == ['dead sop=1.2.3 destination=a reason="refused \\" destination=b" empty="" '
                               'path="C:\\\\archive"']
