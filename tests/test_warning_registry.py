"""Python warnings in a process that lives for months: neither memory nor log lines grow with the values they quote.

pydicom quotes the value a warning is about ("Invalid value for VR IS: 'X000123'"), so each value is a text of
its own.  Under Python's default action each text shown is kept in the warning registry of the module that
warned, for good, and is shown once: one entry and one log line more per distinct value, in the service and in
each worker process.
"""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

import gateway.logs
from gateway.logs import setup_logging
from tests.conftest import build_config, pydicom_file, send

_COUNT = 200


def _registry_entries() -> int:
    """Warning texts Python keeps, over every module's registry (its version stamp aside) and ``once``'s."""
    kept = sum(len([key for key in (getattr(module, "__warningregistry__", None) or {}) if key != "version"])
               for module in list(sys.modules.values()))
    return kept + len(warnings.onceregistry)


def _with_invalid_is(index: int) -> Dataset:
    """A dataset whose Instance Number (IS) holds a value pydicom warns about, quoting it: a new one per index."""
    ds = Dataset()
    ds[0x00200013] = RawDataElement(Tag(0x00200013), "IS", 8, f"X{index:06d}".encode(), 0, False, True)
    return ds


def _warning_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "gateway.warnings" in line]


@pytest.fixture(autouse=True)
def _logger_put_back(gateway_logger: logging.Logger) -> None:
    """setup_logging changes the gateway's logger for the process: its handlers are put back afterwards."""


@pytest.fixture
def fresh_table(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The recurring-warnings table as a new process starts with, whatever earlier tests logged."""
    monkeypatch.setattr(gateway.logs, "_recurring", gateway.logs._Recurring())
    yield


@pytest.fixture
def python_defaults() -> Iterator[None]:
    """Python's own warning filters, as the service runs with (the project's pytest settings ignore these)."""
    with warnings.catch_warnings():
        warnings.resetwarnings()  # no filter matches: "default", as in a process started without -W
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
        yield


def test_distinct_values_keep_no_warning_texts_in_the_service(tmp_path: Path, python_defaults: None,
                                                                fresh_table: None) -> None:
    log = tmp_path / "gateway.log"
    setup_logging("INFO", log)
    before = _registry_entries()
    for index in range(_COUNT):
        str(_with_invalid_is(index).InstanceNumber)
    grown = _registry_entries() - before
    lines = [line for line in _warning_lines(log) if "Invalid value for VR IS" in line]
    assert grown <= 2, f"{grown} warning texts kept for {_COUNT} distinct values"
    assert 1 <= len(lines) <= 2, lines[:5]
    assert "Invalid value for VR IS: '...'" in lines[0]
    assert "X000" not in log.read_text()


def test_distinct_values_keep_no_warning_texts_in_a_worker_process(tmp_path: Path) -> None:
    """A worker process sets up its logging with ``rotate=False`` and Python's own filters."""
    log = tmp_path / "gateway.log"
    code = textwrap.dedent(f"""
        import sys, warnings
        from pathlib import Path
        from pydicom.dataelem import RawDataElement
        from pydicom.dataset import Dataset
        from pydicom.tag import Tag
        from gateway.logs import setup_logging

        def kept():
            return len(warnings.onceregistry) + sum(
                len([key for key in (getattr(module, "__warningregistry__", None) or {{}}) if key != "version"])
                for module in list(sys.modules.values()))

        setup_logging("INFO", Path({str(log)!r}), 1 << 20, 2, rotate=False)
        before = kept()
        for index in range({_COUNT}):
            ds = Dataset()
            ds[0x00200013] = RawDataElement(Tag(0x00200013), "IS", 8, f"X{{index:06d}}".encode(), 0, False, True)
            str(ds.InstanceNumber)
        print(kept() - before)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    grown = int(done.stdout.split()[-1])
    lines = _warning_lines(log)
    assert grown <= 2, f"{grown} warning texts kept for {_COUNT} distinct values"
    assert 1 <= len(lines) <= 2, lines[:5]
    assert "X000" not in log.read_text()


def test_a_recurring_warning_is_logged_once_per_interval_with_the_count_of_those_left_out(
        tmp_path: Path, python_defaults: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway.logs, "_recurring", gateway.logs._Recurring(every=0.5))
    log = tmp_path / "gateway.log"
    setup_logging("INFO", log)
    for index in range(50):
        str(_with_invalid_is(index).InstanceNumber)
    assert len(_warning_lines(log)) == 1
    time.sleep(0.6)
    str(_with_invalid_is(50).InstanceNumber)
    lines = _warning_lines(log)
    assert len(lines) == 2, lines
    assert "(49 more like it in the last 1 s)" in lines[1], lines[1]
    assert "X000" not in log.read_text()


def test_the_table_of_recurring_warnings_is_bounded(tmp_path: Path, python_defaults: None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Warnings of texts that differ besides their quoted values each have a place, the least recent dropped."""
    table = gateway.logs._Recurring(size=16)
    monkeypatch.setattr(gateway.logs, "_recurring", table)
    setup_logging("INFO", tmp_path / "gateway.log")
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    for first in words:
        for second in words:
            warnings.warn(f"kind {first} {second}", UserWarning, stacklevel=1)
    assert len(table) == 16
    assert len(_warning_lines(tmp_path / "gateway.log")) == len(words) ** 2  # each kind shown once


def test_other_filters_and_warning_checks_keep_their_meaning(tmp_path: Path, python_defaults: None,
                                                             fresh_table: None) -> None:
    """Only the actions that keep texts become "always": ignore and error stay, pytest.warns and recording work,
    and setting up again (a reload) adds nothing."""
    warnings.filterwarnings("ignore", message="left alone", category=UserWarning)
    warnings.filterwarnings("error", message="an error", category=UserWarning)
    for _ in range(3):
        setup_logging("INFO", tmp_path / "gateway.log")
    assert sum(1 for f in warnings.filters if f[0] in ("default", "module", "once")) == 0
    assert warnings.filters.count(("always", None, Warning, None, 0)) == 1
    warnings.warn("left alone", UserWarning, stacklevel=1)
    with pytest.raises(UserWarning):
        warnings.warn("an error", UserWarning, stacklevel=1)
    with pytest.warns(UserWarning, match="caught"):
        warnings.warn("caught", UserWarning, stacklevel=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("recorded", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["recorded"]
    lines = _warning_lines(tmp_path / "gateway.log")
    assert not any("left alone" in line or "caught" in line or "recorded" in line for line in lines), lines


def test_c_stores_with_leading_zero_uids_are_refused_with_the_reason_and_keep_nothing(
        tmp_path: Path, gateway_factory, python_defaults: None, fresh_table: None) -> None:
    """The receiver's own check refuses such an instance (0xC210) and says why; pydicom's warning about the UID,
    as the service's logging shows it, keeps no text and writes no line per instance."""
    log = tmp_path / "gateway.log"
    setup_logging("INFO", log)
    base = pydicom_file("CT_small.dcm")
    instances = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the malformed UIDs made here
        for index in range(20):
            ds = copy.deepcopy(base)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.11.0{index}"
            instances.append(ds)
    gateway = gateway_factory(build_config(tmp_path))
    before = _registry_entries()
    statuses = send(gateway.port, instances)
    time.sleep(0.2)
    grown = _registry_entries() - before
    assert statuses == [0xC210] * len(instances)
    refused = [line for line in log.read_text().splitlines() if "status=0xC210" in line]
    assert len(refused) == len(instances)
    assert all("not a valid UID" in line for line in refused), refused[:3]
    assert grown <= 2, f"{grown} warning texts kept for {len(instances)} instances"
    assert len(_warning_lines(log)) <= 2
