"""Steps of the wall clock: NTP at boot, a resumed VM, an administrator setting the date.

Durations are measured on a steady clock; wall-clock time stamps are
stored and shown, and whatever compares one with the wall clock must
survive a step without deleting data early, stalling for the step's length
or saying nonsense.  The clock is faked per module (its ``time`` replaced):
``wall`` is what ``time.time()`` says, ``steady`` what the steady clocks say;
:meth:`FakeClock.advance` is time passing, :meth:`FakeClock.step` a step of
the wall clock alone.
"""

from __future__ import annotations

import time
import types
from pathlib import Path

import pytest

from gateway import record as record_module
from gateway import service as service_module
from gateway import spool as spool_module
from gateway.dicom.identity import Identity
from gateway.service import Gateway
from tests.conftest import build_config

DAY = 86400.0
HOUR = 3600.0


class FakeClock:
    """A wall clock and a steady clock that move only when told."""

    def __init__(self) -> None:
        self.wall = time.time()
        self.steady = 10_000.0

    def advance(self, seconds: float) -> None:
        """Time passes: both clocks move."""
        self.wall += seconds
        self.steady += seconds

    def step(self, seconds: float) -> None:
        """The wall clock is set: the steady clock does not move."""
        self.wall += seconds

    def module(self) -> types.SimpleNamespace:
        """A stand-in for the ``time`` module reading this clock (the rest of ``time`` as it is)."""
        fake = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("__")})
        fake.time = lambda: self.wall
        fake.monotonic = lambda: self.steady
        fake.clock_gettime = lambda which: self.steady
        return fake


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The fake clock, read by the service's housekeeping and by the spool and record it prunes."""
    fake = FakeClock()
    for module in (service_module, spool_module, record_module):
        monkeypatch.setattr(module, "time", fake.module())
    return fake


# ---------------------------------------------------------------- certificates said again every day


def test_certificates_are_said_again_a_day_later_when_the_clock_was_set_back_a_day(tmp_path: Path,
                                                                                  clock: FakeClock) -> None:
    gateway = Gateway(build_config(tmp_path))
    gateway._read_certificates([])
    clock.step(-DAY)
    clock.advance(HOUR)
    assert not gateway.report_certificates(clock.wall)  # an hour after the last time: not yet
    clock.advance(DAY)
    assert gateway.report_certificates(clock.wall)  # a day after it, whatever the wall clock says


# ---------------------------------------------------------------- retention


def _keep_one_of_each(gateway: Gateway) -> None:
    """A copy kept after delivery, a finished job's manifest and a proof record row, all new (stamped now)."""
    (gateway.spool.kept / "0001-ab-41.dcm").write_bytes(b"kept copy")
    (gateway.spool.jobs / "done" / "0001-ab-41@local.json").write_text("{}")
    gateway.record.received("0001-ab-41", Identity(sop_instance_uid="1.2.3"), calling_ae="MOD", called_ae="GATEWAY",
                            remote="127.0.0.1:1", size=9)


def _left(gateway: Gateway) -> tuple[int, int, int]:
    return (len(list(gateway.spool.kept.iterdir())), len(list((gateway.spool.jobs / "done").iterdir())),
            len(gateway.record.find("1.2.3")))


def test_a_forward_step_of_a_day_deletes_nothing_kept_for_a_day(tmp_path: Path, clock: FakeClock) -> None:
    gateway = Gateway(build_config(tmp_path, spool={"keep_done_hours": 24, "keep_record_days": 1}))
    _keep_one_of_each(gateway)
    clock.advance(60)
    clock.step(DAY + 60)  # a clock a day behind, set right
    gateway.prune_done()
    assert _left(gateway) == (1, 1, 1)
    clock.advance(DAY + 60)  # a day has really passed since they were written
    gateway.prune_done()
    assert _left(gateway) == (0, 0, 0)


def test_a_row_stamped_while_the_clock_was_a_day_back_is_kept_a_day_after_it_is_set_right(
        tmp_path: Path, clock: FakeClock) -> None:
    gateway = Gateway(build_config(tmp_path, spool={"keep_record_days": 1}))
    clock.step(-DAY)  # set back a day by mistake...
    clock.advance(60)
    gateway.retention_clock.sample()  # (the housekeeping thread's every minute)
    gateway.record.received("0001-ab-41", Identity(sop_instance_uid="1.2.3"), calling_ae="MOD", called_ae="GATEWAY",
                            remote="127.0.0.1:1", size=9)
    clock.advance(60)
    clock.step(DAY)  # ...and set right two minutes later
    gateway.prune_done()
    assert len(gateway.record.find("1.2.3")) == 1


# ---------------------------------------------------------------- an association's idle timer (pynetdicom's)


def test_an_associations_idle_timer_is_not_expired_by_a_forward_step(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.net.guard  # noqa: F401 - the receiver's front door, which every association goes through
    from pynetdicom.timer import Timer

    real = time.time
    idle = Timer(60.0)  # [server] idle_seconds, as the receiver sets network_timeout
    idle.start()
    monkeypatch.setattr(time, "time", lambda: real() + DAY)
    assert not idle.expired


def test_an_associations_idle_timer_expires_after_a_backward_step(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.net.guard  # noqa: F401
    from pynetdicom.timer import Timer

    real = time.time
    idle = Timer(0.05)
    idle.start()
    monkeypatch.setattr(time, "time", lambda: real() - DAY)
    time.sleep(0.1)
    assert idle.expired


# ---------------------------------------------------------------- "N s ago" of the console and of status


@pytest.fixture
def set_back_an_hour(monkeypatch: pytest.MonkeyPatch) -> float:
    """The wall clock set back an hour, a minute after a failure; the failure's stamp."""
    import gateway.cli
    import gateway.web.console

    fake = FakeClock()
    failed_at = fake.wall
    fake.advance(60)
    fake.step(-HOUR)
    for module in (gateway.cli, gateway.web.console):
        monkeypatch.setattr(module, "time", fake.module())
    return failed_at


def test_the_console_does_not_say_a_past_failure_is_to_come(set_back_an_hour: float) -> None:
    from gateway.web.console import _age

    said = _age(set_back_an_hour)
    assert not said.startswith("in ") and "ahead of the clock" in said, said
    assert _age(set_back_an_hour - HOUR - 60) == "2 min ago"


def test_status_does_not_say_a_past_failure_is_to_come(set_back_an_hour: float) -> None:
    from gateway.cli import _when

    said = _when(set_back_an_hour)
    assert "(in " not in said and "3540 s ahead of the clock" in said, said
    assert _when(set_back_an_hour - HOUR - 60).endswith("(120 s ago)")


# ---------------------------------------------------------------- the worker's rescan for missed notifications


def _taken_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: float) -> float | None:
    """Seconds after it was written that the worker's rescan takes an instance it was not told of (None: not in
    5 s), with rescans every 0.5 s and the wall clock stepped by `step` just after it was written."""
    import gateway.worker
    from gateway.spool import Spool
    from gateway.worker import Worker

    config = build_config(tmp_path, compression={"rescan_seconds": 0.5})
    spool = Spool(config.spool.directory)
    worker = Worker(config, spool, lambda job: None, threads=1)
    taken: dict[str, float] = {}
    monkeypatch.setattr(worker, "_claim", lambda ident: bool(taken.setdefault(ident, time.monotonic())) and False)
    worker.start()
    try:
        ident = "0000001733400000000000000-0123456789ab-4d4f44"
        spool.incoming_path(ident).write_bytes(b"received, its notification lost")
        written = time.monotonic()
        stepped = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("__")})
        real = time.time
        stepped.time = lambda: real() + step  # the real clocks, but the wall clock stepped
        monkeypatch.setattr(gateway.worker, "time", stepped)
        deadline = time.monotonic() + 5.0
        while ident not in taken and time.monotonic() < deadline:
            time.sleep(0.02)
        return taken[ident] - written if ident in taken else None
    finally:
        worker.stop()
        worker.join(2.0)


def test_a_missed_instance_is_taken_after_a_backward_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _taken_after(tmp_path, monkeypatch, -HOUR) is not None


def test_a_forward_step_does_not_take_an_instance_the_receiver_may_still_be_checking(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = _taken_after(tmp_path, monkeypatch, DAY)
    assert taken is not None and taken >= 1.0  # two rescan intervals


# ---------------------------------------------------------------- /readyz: failing longer than unready_after_seconds


class _Failing:
    """A forwarder as /readyz sees it: when its destination began failing (wall clock), or None."""

    def __init__(self) -> None:
        self.failing_since: float | None = None


def _serving(tmp_path: Path) -> tuple[Gateway, _Failing]:
    """A gateway as /readyz sees it once started (unready_after_seconds = 300), with one destination's forwarder."""
    from tests.conftest import free_port

    gateway = Gateway(build_config(tmp_path, web={"port": free_port(), "unready_after_seconds": 300}))
    forwarder = _Failing()
    gateway.server = object()  # listening
    gateway.forwarders = {"local": [forwarder]}  # type: ignore[dict-item]
    return gateway, forwarder


def test_readyz_is_not_failed_by_a_forward_step(tmp_path: Path, clock: FakeClock) -> None:
    gateway, forwarder = _serving(tmp_path)
    forwarder.failing_since = clock.wall
    clock.advance(5)
    assert gateway.not_ready() is None
    clock.step(DAY)
    assert gateway.not_ready() is None  # five seconds into the failure
    clock.advance(300)
    assert gateway.not_ready() == "destination local has been failing for 305 s"


def test_readyz_fails_after_unready_after_seconds_when_the_clock_was_set_back(tmp_path: Path,
                                                                             clock: FakeClock) -> None:
    gateway, forwarder = _serving(tmp_path)
    forwarder.failing_since = clock.wall
    clock.advance(5)
    assert gateway.not_ready() is None
    clock.step(-HOUR)
    clock.advance(300)
    assert gateway.not_ready() == "destination local has been failing for 305 s"


def test_a_step_before_readyz_first_sees_a_failure_counts_no_more_than_since_the_last_look(
        tmp_path: Path, clock: FakeClock) -> None:
    gateway, forwarder = _serving(tmp_path)
    clock.advance(60)
    assert gateway.not_ready() is None  # a look: nothing failing
    clock.advance(10)
    forwarder.failing_since = clock.wall
    clock.step(DAY)
    clock.advance(10)
    assert gateway.not_ready() is None  # at most 20 s into the failure, not a day
