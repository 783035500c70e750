"""After an archive outage the backlog goes out at the archive's speed, not at each job's backoff.

While the archive is down the forwarder tries one job per ``[retry]
probe_seconds``, in turn; at its first success every waiting job is due at
once.  ``status`` says what is going on meanwhile.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from gateway.cli import main as cli_main
from gateway.spool import DEAD, DONE, PENDING
from tests.conftest import build_config, make_series, send, wait_until

BACKOFF = 60.0  # each job's own delay after its first failure: far longer than the test may take


def _toml(tmp_path: Path, spool: Path, port: int) -> Path:
    toml = tmp_path / "status.toml"
    toml.write_text(f'[spool]\ndirectory = "{spool}"\n'
                    f'[[destinations]]\nname = "pacs"\nkind = "dicom"\nae_title = "ARCHIVE"\n'
                    f'host = "127.0.0.1"\nport = {port}\n')
    return toml


def test_backlog_is_sent_as_soon_as_the_archive_is_back(tmp_path: Path, gateway_factory, peer_factory,
                                                         capsys) -> None:
    peer = peer_factory()  # not listening yet: connections refused
    config = build_config(
        tmp_path,
        destinations=[{"name": "pacs", "kind": "dicom", "ae_title": peer.ae_title, "host": "127.0.0.1",
                       "port": peer.port, "associations": 1}],
        retry={"base_seconds": BACKOFF, "cap_seconds": BACKOFF, "probe_seconds": 0.5},
    )
    gw = gateway_factory(config)
    series = make_series(40)
    assert send(gw.port, series) == [0] * 40

    def tried() -> list[int]:
        return [job.attempts for job in gw.spool.jobs_in(PENDING, "pacs")]

    assert wait_until(lambda: len(tried()) == 40 and sum(tried()) >= 3, timeout=60)
    counted = time.monotonic()
    before = sum(tried())
    time.sleep(1.5)
    attempts = tried()
    # One job tried per probe, in turn, each once at most (its next try is BACKOFF away): not 40 at a time.
    assert max(attempts) == 1 and sum(attempts) - before <= 2 + (time.monotonic() - counted) / 0.5, attempts
    first_due = min(job.next_retry_at for job in gw.spool.jobs_in(PENDING, "pacs") if job.attempts)

    assert cli_main(["status", "--config", str(_toml(tmp_path, config.spool.directory, peer.port))]) == 0
    out = capsys.readouterr().out
    # A probe may hold one job in flight for a moment while status counts.
    waiting = re.search(r"pacs: pending=(\d+)  inflight=(\d+)", out)
    assert waiting and int(waiting[1]) + int(waiting[2]) == 40, out
    for words in ("oldest waiting: received", "failing since", "last error", "next attempt"):
        assert words in out, out

    peer.start()
    back = time.time()
    assert wait_until(lambda: len(peer.by_uid()) == 40, timeout=BACKOFF / 2), "the backlog waited for its backoff"
    drained = time.time()
    assert drained < first_due, "delivered before any job's own retry was due"
    assert gw.wait_idle(30) and gw.spool.counts()[DEAD] == 0
    got = peer.by_uid()
    for ds in series:
        assert np.array_equal(got[str(ds.SOPInstanceUID)].pixel_array, ds.pixel_array)
    assert drained - back < BACKOFF / 2

    assert cli_main(["status", "--config", str(_toml(tmp_path, config.spool.directory, peer.port))]) == 0
    out = capsys.readouterr().out
    assert "pacs: pending=0" in out and "failing since" not in out, out


def test_a_destination_added_while_instances_wait_gets_them_too(tmp_path: Path, gateway_factory,
                                                                peer_factory) -> None:
    """Instances waiting for archive a when b is added and the gateway restarted: a's return must not
    delete them before b has them (their jobs for a name a alone)."""
    a, b = peer_factory(ae_title="ARCHIVEA"), peer_factory(ae_title="ARCHIVEB")
    retry = {"base_seconds": 0.2, "cap_seconds": 0.5, "probe_seconds": 0.2}

    def destination(peer, name):
        return {"name": name, "kind": "dicom", "ae_title": peer.ae_title, "host": "127.0.0.1", "port": peer.port}

    gw = gateway_factory(build_config(tmp_path, [destination(a, "a")], retry=retry))
    series = make_series(3, rows=32, columns=32)
    assert send(gw.port, series) == [0] * 3
    assert wait_until(lambda: gw.spool.count_jobs(PENDING, "a") == 3, timeout=30)
    gw.stop()

    a.start()  # a is back, b (new) not yet
    gw = gateway_factory(build_config(tmp_path, [destination(a, "a"), destination(b, "b")], retry=retry))
    assert wait_until(lambda: len(a.by_uid()) == 3 and gw.spool.count_jobs(DONE, "a") == 3, timeout=30)
    time.sleep(0.5)  # the spool's collector deletes what no job needs
    assert len(gw.spool.held_ids()) == 3, "instances deleted while b had yet to take them"
    b.start()
    assert wait_until(lambda: len(b.by_uid()) == 3, timeout=30)
    assert gw.wait_idle(30) and gw.spool.counts()[DEAD] == 0
    assert all(np.array_equal(b.by_uid()[str(ds.SOPInstanceUID)].pixel_array, ds.pixel_array) for ds in series)
