"""The web console over real HTTP: pages on a record of 100,000 instances, paging, retry, access control.

The browser tests (``test_console_browser.py``) use it as a person does;
these check what a browser cannot see: that every page reads a bounded
amount of the record (the query plans use the indexes, the rows returned are
capped), the schema migration of an older record, and the refusals of the
access checks.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import sqlite3
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlencode

import pytest
from pydicom.uid import generate_uid

from gateway.dicom.identity import Identity
from gateway.record import RECORD_FILE, ProofRecord
from gateway.spool import DEAD, Job, Spool
from gateway.web.console import DEAD_LETTERS_PER_PAGE, PLOT_BUCKET_SECONDS, PLOT_HOURS, RECENT_INSTANCES
from tests.conftest import build_config, free_port, pydicom_file, send, wait_until

RECORDS = 100_000
RLE, JPEG_LS = "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80"


class Page(HTMLParser):
    """Text by element id, rows per table id, hidden form fields: what the tests read of a page."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.rows: dict[str, int] = {}
        self.inputs: list[dict[str, str]] = []
        self._open: list[tuple[str, str | None]] = []
        self._table: list[str | None] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "input":
            self.inputs.append(values)
            return
        if tag == "table":
            self._table.append(values.get("id"))
        if tag == "tr" and self._table and self._table[-1]:
            self.rows[self._table[-1]] = self.rows.get(self._table[-1], 0) + 1
        self._open.append((tag, values.get("id")))
        if values.get("id"):
            self.text.setdefault(values["id"], "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self._table:
            self._table.pop()
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, ident in self._open:
            if ident:
                self.text[ident] += data

    def field(self, name: str) -> str:
        return next(i["value"] for i in self.inputs if i.get("name") == name)


def request(port: int, method: str, path: str, form: dict[str, str] | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    """One request without following redirects: status, headers (lower-case names), body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = urlencode(form).encode() if form is not None else None
    sent = dict(headers or {})
    if body is not None:
        sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
        sent.setdefault("Origin", f"http://127.0.0.1:{port}")
    try:
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        answer = {k.lower(): v for k, v in response.getheaders()}
        return response.status, answer, response.read().decode()
    finally:
        connection.close()


# ---------------------------------------------------------------- 100,000 records


def _fill(path: Path, now: float) -> list[tuple]:
    """Write RECORDS instances (one delivery each) received over the last 48 hours; return the rows written."""
    ProofRecord(path).close()  # the schema
    rng = random.Random(7)
    rows, deliveries, verifications = [], [], []
    for index in range(RECORDS):
        received = now - rng.uniform(0, 48 * 3600)
        modality = ("CT", "MR", "CR", "US")[index % 4]
        recompressed = index % 5 != 0
        original = 500_000 + index % 1000
        encoded = original // (2 + index % 3) if recompressed else None
        ident = f"{int(received * 1e9):020d}-{index:012x}-4d4f44"
        rows.append((ident, f"1.2.826.0.1.3680043.10.1.{index}", "1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.3.4",
                     modality, received, "MODALITY", "GATEWAY", "127.0.0.1:4000", "1.2.840.10008.1.2.1",
                     original + 1200, received + 1, "recompressed" if recompressed else "passed-through",
                     None if recompressed else "already in the target syntax", RLE if index % 2 else JPEG_LS,
                     original if recompressed else None, encoded, 0.01 if recompressed else None, "numpy", "ab" * 32))
        deliveries.append((ident, "archive", received + 2, "delivered", RLE, 1, 0.002, None,
                           (encoded or original) + 1200))
        if recompressed:
            verifications.append((ident, "gateway", "ab" * 32))
    db = sqlite3.connect(path)
    with db:
        db.executemany(
            "INSERT INTO instances (id, sop_instance_uid, sop_class_uid, study_uid, series_uid, modality, "
            "received_at, calling_ae, called_ae, remote, transfer_syntax, bytes, processed_at, outcome, reason, "
            "target_syntax, original_pixel_bytes, encoded_pixel_bytes, encode_seconds, source_decoder, pixel_hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.executemany("INSERT INTO deliveries (id, destination, at, outcome, syntax, attempts, seconds, reason, "
                       "bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", deliveries)
        db.executemany("INSERT INTO verifications (id, decoder, pixel_hash) VALUES (?, ?, ?)", verifications)
    db.close()
    return rows


def _plans(record: ProofRecord, call) -> list[tuple[str, list[str]]]:
    """Each SELECT that `call` makes on `record`'s connection, with the steps of its query plan."""
    db = record._connection()
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    try:
        call()
    finally:
        db.set_trace_callback(None)
    return [(sql, [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}")])
            for sql in statements if sql.lstrip().upper().startswith("SELECT")]


def test_every_console_page_reads_a_bounded_part_of_a_large_record(tmp_path: Path, gateway_factory) -> None:
    now = time.time()
    config = build_config(tmp_path, web={"port": free_port()})
    spool = Spool(config.spool.directory)
    rows = _fill(config.spool.directory / RECORD_FILE, now)
    record = ProofRecord(config.spool.directory / RECORD_FILE)

    # No read scans a table of the record: time ranges go through an index, the counts over all of it come
    # from the running totals (a few rows per name, whatever the size of the record).
    for call in (lambda: record.window(now - 3600, now), lambda: record.throughput(now - 86400, now, 600),
                 lambda: record.recent(20), lambda: record.find(rows[123][1]), record.totals,
                 lambda: record.savings("modality"), lambda: record.savings("target_syntax")):
        for sql, steps in _plans(record, call):
            assert steps, sql
            assert not any(step.startswith("SCAN") and "INDEX" not in step and step != "SCAN totals"
                           for step in steps), (sql, steps)

    # Bounded answers, with the values the generated rows give.
    hour = [r for r in rows if now - 3600 <= r[6] < now]
    assert record.window(now - 3600, now)["received"] == len(hour)
    assert record.window(now - 3600, now)["received_bytes"] == sum(r[11] for r in hour)
    buckets = record.throughput(now - PLOT_HOURS * 3600, now, PLOT_BUCKET_SECONDS)
    assert len(buckets) == PLOT_HOURS * 3600 / PLOT_BUCKET_SECONDS
    assert sum(b["received"] for b in buckets) == sum(1 for r in rows if r[6] >= now - PLOT_HOURS * 3600)
    by_modality = {row["key"]: row for row in record.savings("modality")}
    assert set(by_modality) == {"CT", "MR", "CR", "US"}
    assert by_modality["CT"]["encoded"] == sum(r[17] for r in rows if r[5] == "CT" and r[13] == "recompressed")
    by_codec = {row["key"]: row["instances"] for row in record.savings("target_syntax")}
    assert by_codec == {uid: sum(1 for r in rows if r[15] == uid and r[13] == "recompressed")
                        for uid in (RLE, JPEG_LS)}
    newest = sorted(rows, key=lambda r: r[6], reverse=True)[:RECENT_INSTANCES]
    assert [r["sop_instance_uid"] for r in record.recent(RECENT_INSTANCES)] == [r[1] for r in newest]

    # Dead letters come a page at a time.
    spool.add_jobs([Job(instance=f"{index:020d}-{index:012x}-4d4f44", destination="archive", state=DEAD,
                        attempts=3, reason=f"refused {index}",
                        identity=Identity(sop_instance_uid=f"1.2.826.0.1.3680043.10.2.{index}"))
                    for index in range(2 * DEAD_LETTERS_PER_PAGE + 7)])

    gateway = gateway_factory(config)
    port = gateway.web.port
    status, _, html = request(port, "GET", "/")
    assert status == 200
    overview = Page(html)
    assert int(overview.text["total-received"]) == RECORDS
    assert int(overview.text["total-delivered"]) == RECORDS
    assert int(overview.text["total-passed-through"]) == sum(1 for r in rows if r[13] == "passed-through")
    assert overview.rows["saved-by-modality"] == 1 + 4 and overview.rows["saved-by-codec"] == 1 + 2
    for what in ("instances", "bytes"):
        status, headers, svg = request(port, "GET", f"/plot/{what}.svg")
        assert status == 200 and headers["content-type"].startswith("image/svg+xml"), what
        assert "script-src" not in headers["content-security-policy"]  # default-src 'none': no script runs
        assert "<svg" in svg and " src=" not in svg and "href=" not in svg, "nothing loaded from elsewhere"
    assert request(port, "GET", "/plot/other.svg")[0] == 404

    status, _, html = request(port, "GET", "/search")
    assert status == 200 and Page(html).rows["recent"] == 1 + RECENT_INSTANCES
    status, _, html = request(port, "GET", f"/search?uid={rows[4242][1]}")
    assert status == 200 and rows[4242][0] in html and "same as the original" in html
    assert request(port, "GET", "/search?uid=1.2.999")[0] == 404
    assert request(port, "GET", "/search?uid=not-a-uid")[0] == 400

    first, last = (Page(request(port, "GET", f"/dead?page={n}")[2]) for n in (1, 3))
    assert first.rows["dead-letters"] == 1 + DEAD_LETTERS_PER_PAGE
    assert last.rows["dead-letters"] == 1 + 7
    assert first.text["dead-total"].startswith(str(2 * DEAD_LETTERS_PER_PAGE + 7))
    assert request(port, "GET", "/dead?page=0")[0] == 400
    assert request(port, "GET", "/dead?page=x")[0] == 400


def test_an_older_record_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / RECORD_FILE
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE instances (id TEXT PRIMARY KEY, sop_instance_uid TEXT NOT NULL, sop_class_uid TEXT NOT NULL,
            study_uid TEXT NOT NULL, series_uid TEXT NOT NULL, modality TEXT NOT NULL, received_at REAL NOT NULL,
            calling_ae TEXT NOT NULL, called_ae TEXT NOT NULL, remote TEXT NOT NULL, transfer_syntax TEXT NOT NULL,
            bytes INTEGER NOT NULL, processed_at REAL, outcome TEXT, reason TEXT, target_syntax TEXT,
            original_pixel_bytes INTEGER, encoded_pixel_bytes INTEGER, encode_seconds REAL, verify_seconds REAL,
            source_decoder TEXT, pixel_hash TEXT);
        CREATE TABLE verifications (id TEXT NOT NULL, decoder TEXT NOT NULL, pixel_hash TEXT NOT NULL,
            PRIMARY KEY (id, decoder));
        CREATE TABLE deliveries (id TEXT NOT NULL, destination TEXT NOT NULL, at REAL NOT NULL,
            outcome TEXT NOT NULL, syntax TEXT, attempts INTEGER NOT NULL, seconds REAL, reason TEXT,
            PRIMARY KEY (id, destination, at));
        INSERT INTO instances (id, sop_instance_uid, sop_class_uid, study_uid, series_uid, modality, received_at,
            calling_ae, called_ae, remote, transfer_syntax, bytes) VALUES ('old', '1.2.3', '1.2', '1.3', '1.4',
            'CT', 1000.0, 'A', 'B', '', '1.2.840.10008.1.2.1', 10);
        INSERT INTO deliveries VALUES ('old', 'archive', 1001.0, 'delivered', '1.2.840.10008.1.2.5', 1, 0.1, NULL);
    """)
    db.close()
    record = ProofRecord(path)
    assert record.find("1.2.3")[0]["deliveries"][0]["bytes"] is None  # kept, size unknown
    assert record.find("1.2.3")[0]["encode_options"] is None  # written before encoder options were recorded
    record.delivery("old", "second", outcome="delivered", syntax=RLE, attempts=1, size=1234)
    assert [d["bytes"] for d in record.find("1.2.3")[0]["deliveries"]] == [None, 1234]
    assert record.totals()["delivered_bytes"] == 1234
    with contextlib.closing(sqlite3.connect(path)) as db:
        indexes = {row[1] for row in db.execute("SELECT type, name FROM sqlite_master WHERE type = 'index'")}
    assert {"deliveries_at", "instances_received", "instances_sop"} <= indexes
    ProofRecord(path)  # a second opening finds nothing to do


def test_config_page_says_where_each_destination_is(tmp_path: Path, gateway_factory) -> None:
    web_port = free_port()
    destinations = [{"name": "local", "kind": "folder", "path": "archive"},
                    {"name": "pacs", "kind": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": 104},
                    {"name": "cloud", "kind": "dicomweb", "url": f"http://127.0.0.1:{free_port()}/dicom-web"}]
    gateway = gateway_factory(build_config(tmp_path, destinations=destinations, web={"port": web_port}))
    status, _, html = request(gateway.web.port, "GET", "/config")
    rows = "".join(Page(html).text["destinations"].split())  # each row's cells, run together
    assert status == 200
    assert f"localfolder{tmp_path / 'archive'}" in rows
    assert "pacsdicomPACS@127.0.0.1:104" in rows
    assert f"clouddicomweb{destinations[2]['url']}" in rows


# ---------------------------------------------------------------- queues and retry, over HTTP


def _instance() -> object:
    ds = pydicom_file("CT_small.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def test_queue_page_shows_depth_age_error_and_next_attempt(tmp_path: Path, gateway_factory) -> None:
    down = {"name": "pacs", "kind": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port(),
            "timeout_seconds": 2}
    config = build_config(tmp_path, destinations=[down], web={"port": free_port()},
                          retry={"max_attempts": 50, "base_seconds": 30.0, "cap_seconds": 60.0,
                                 "probe_seconds": 25.0})
    gateway = gateway_factory(config)
    sent_at = time.time()
    assert send(gateway.port, [_instance(), _instance()]) == [0, 0]
    assert wait_until(lambda: gateway.queue_states()[0].pending == 2
                      and (gateway.queue_states()[0].next_attempt or 0) > time.time() + 10, 60)
    # (a job may be between two state folders while they are counted, once as pending and once in
    # flight: read again until every job is in one)
    states = []
    assert wait_until(lambda: states.append(gateway.queue_states()[0]) or states[-1].depth == 2, 20)
    state = states[-1]
    assert (state.destination, state.depth, state.dead) == ("pacs", 2, 0)
    assert sent_at - 1 <= state.oldest_waiting <= time.time()
    assert state.next_attempt <= time.time() + 25  # the destination fails: its next probe
    assert state.failing_since is not None and "refused" in (state.last_error or "")
    status, _, html = request(gateway.web.port, "GET", "/queues")
    assert status == 200 and Page(html).rows["queues"] == 2
    # (a job may be between two state folders while they are counted: read again until it is in one)
    assert wait_until(lambda: Page(request(gateway.web.port, "GET", "/queues")[2]).text["queue-pacs"].split()[:4]
                      == ["pacs", "dicom", "2", "2"], 20)
    assert state.last_error in html.replace("&#39;", "'").replace("&quot;", '"')


def test_retry_button_moves_a_dead_letter_back_to_its_queue(tmp_path: Path, gateway_factory,
                                                            peer_factory) -> None:
    peer = peer_factory(ae_title="PACS", status=0xC001).start()
    pacs = {"name": "pacs", "kind": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": peer.port}
    config = build_config(tmp_path, destinations=[pacs], web={"port": free_port()})
    gateway = gateway_factory(config)
    ds = _instance()
    assert send(gateway.port, [ds]) == [0]
    assert wait_until(lambda: gateway.spool.count_jobs(DEAD, "pacs") == 1, 60)
    port = gateway.web.port
    page = Page(request(port, "GET", "/dead")[2])
    assert page.rows["dead-letters"] == 2 and "C001" in page.text["dead-letters"].upper()
    form = {"csrf": page.field("csrf"), "instance": page.field("instance"), "destination": "pacs"}

    assert request(port, "POST", "/dead/retry", {**form, "csrf": "forged"})[0] == 403
    assert request(port, "POST", "/dead/retry", form, headers={"Origin": "http://evil.example"})[0] == 403
    assert gateway.spool.count_jobs(DEAD, "pacs") == 1

    for instance, destination in (("../../jobs/dead/" + form["instance"], "pacs"),
                                  (form["instance"], "pacs/../../x")):
        status, headers, _ = request(port, "POST", "/dead/retry",
                                     {**form, "instance": instance, "destination": destination})
        assert status == 303 and headers["location"] == "/dead?retried=0"
    assert gateway.spool.count_jobs(DEAD, "pacs") == 1

    peer.status = 0x0000
    status, headers, _ = request(port, "POST", "/dead/retry", form)
    assert status == 303 and headers["location"] == "/dead?retried=1"
    assert wait_until(lambda: str(ds.SOPInstanceUID) in peer.by_uid(), 30)  # before the 30 s rescan
    assert gateway.spool.count_jobs(DEAD, "pacs") == 0
    record = ProofRecord(config.spool.directory / RECORD_FILE)
    assert wait_until(lambda: [d["outcome"] for d in record.find(str(ds.SOPInstanceUID))[0]["deliveries"]]
                      == ["dead", "delivered"], 10)
    status, headers, _ = request(port, "POST", "/dead/retry", form)  # no longer a dead letter
    assert status == 303 and headers["location"] == "/dead?retried=0"
    assert Page(request(port, "GET", "/dead?retried=0")[2]).text["retried"].startswith("0 dead letter")


# ---------------------------------------------------------------- access


def test_with_a_token_the_browser_logs_in_and_cross_site_posts_are_refused(tmp_path: Path,
                                                                          gateway_factory) -> None:
    (tmp_path / "web.token").write_text("s3cret-token\n")
    config = build_config(tmp_path, web={"port": free_port(), "token_file": "web.token"})
    gateway = gateway_factory(config)
    port = gateway.web.port
    status, headers, _ = request(port, "GET", "/")
    assert status == 303 and headers["location"] == "/login"
    assert request(port, "GET", "/metrics")[0] == 401
    assert request(port, "POST", "/reload", {"csrf": "x"})[0] == 401

    status, _, html = request(port, "GET", "/login")
    csrf = Page(html).field("csrf")
    assert request(port, "POST", "/login", {"csrf": csrf, "token": "wrong"})[0] == 401
    assert request(port, "POST", "/login", {"csrf": "x", "token": "s3cret-token"})[0] == 403
    assert request(port, "POST", "/login", {"csrf": csrf, "token": "s3cret-token"},
                   headers={"Origin": "http://evil.example"})[0] == 403
    status, headers, _ = request(port, "POST", "/login", {"csrf": csrf, "token": "s3cret-token"})
    assert status == 303
    cookie = headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert "s3cret-token" not in cookie
    session = {"Cookie": cookie.split(";")[0]}
    assert request(port, "GET", "/", headers=session)[0] == 200
    assert request(port, "GET", "/metrics", headers=session)[0] == 200

    # A reload through the console: the same-origin form is accepted, a cross-site one or one without the
    # CSRF token is not; a script with the bearer token needs neither.
    assert request(port, "POST", "/reload", {"csrf": csrf}, headers={**session, "Origin": "null"})[0] == 403
    assert request(port, "POST", "/reload", {"csrf": ""}, headers=session)[0] == 403
    status, headers, _ = request(port, "POST", "/reload", {"csrf": csrf}, headers=session)
    assert status == 303 and headers["location"] == "/config?reload=refused"  # built in the test, no file
    status, headers, _ = request(port, "POST", "/dead/retry", {"all": "1"},
                                 headers={"Authorization": "Bearer s3cret-token", "Origin": ""})
    assert status == 303 and headers["location"] == "/dead?retried=0"

    status, headers, _ = request(port, "POST", "/logout", {"csrf": csrf}, headers=session)
    assert status == 303 and "max-age=0" in headers["set-cookie"].lower()


def test_without_a_token_only_loopback_host_names_are_answered(tmp_path: Path, gateway_factory) -> None:
    config = build_config(tmp_path, web={"port": free_port()})
    gateway = gateway_factory(config)
    port = gateway.web.port
    assert request(port, "GET", "/", headers={"Host": f"localhost:{port}"})[0] == 200
    assert request(port, "GET", "/", headers={"Host": f"rebound.example:{port}"})[0] == 400
    assert request(port, "GET", "/login")[0] == 303  # nothing to log in to
    csrf = Page(request(port, "GET", "/config")[2]).field("csrf")
    assert request(port, "POST", "/reload", {"csrf": csrf}, headers={"Origin": "http://evil.example"})[0] == 403
    assert request(port, "POST", "/reload", {"csrf": csrf}, headers={"Origin": ""})[0] == 403


def test_the_reload_button_refuses_a_file_it_cannot_read_and_the_gateway_carries_on(tmp_path: Path,
                                                                                   gateway_factory,
                                                                                   monkeypatch) -> None:
    from gateway.config import load_config

    toml = tmp_path / "gateway.toml"
    good = (f'[server]\nport = {free_port()}\n[compression]\nprocesses = 0\n[web]\nport = {free_port()}\n'
            '[[destinations]]\nname = "local"\nkind = "folder"\npath = "archive"\n')
    toml.write_text(good)
    gateway = gateway_factory(load_config(toml))
    port = gateway.web.port
    csrf = Page(request(port, "GET", "/config")[2]).field("csrf")

    toml.write_bytes(good.encode() + "# Hôpital Saint-André\n".encode("latin-1"))
    status, headers, _ = request(port, "POST", "/reload", {"csrf": csrf})
    assert status == 303 and headers["location"] == "/config?reload=refused"
    assert "not valid UTF-8" in request(port, "GET", "/config?reload=refused")[2]

    def broken(path: object) -> None:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr("gateway.service.load_config", broken)
    status, headers, _ = request(port, "POST", "/reload", {"csrf": csrf})
    assert status == 303 and headers["location"] == "/config?reload=refused"
    assert "a bug of ours" in request(port, "GET", "/config?reload=refused")[2]
    monkeypatch.undo()
    toml.write_text(good)
    status, headers, _ = request(port, "POST", "/reload", {"csrf": csrf})
    assert status == 303 and headers["location"] == "/config?reload=applied"
    assert send(gateway.port, [pydicom_file("CT_small.dcm")]) == [0]


@pytest.mark.parametrize("action, path, slow", [("retry all", "/dead/retry", "retry_all_dead"),
                                                ("reload", "/reload", "reload")])
def test_a_long_action_leaves_the_server_answering(tmp_path: Path, gateway_factory, monkeypatch, action: str,
                                                   path: str, slow: str) -> None:
    """Retry all takes seconds per thousand dead letters (5,000: 10 s), and a reload waits for the retirement of
    a removed destination's queue: meanwhile /healthz, /readyz and /metrics still answer."""
    from gateway.service import Gateway

    entered, release = threading.Event(), threading.Event()

    def waits(self) -> int | None:
        entered.set()
        release.wait(30)
        return 0 if slow == "retry_all_dead" else None

    monkeypatch.setattr(Gateway, slow, waits)
    config = build_config(tmp_path, web={"port": free_port()})
    Spool(config.spool.directory).add_jobs([Job("00000000000000000001-000000000001-4d4f44", "local", state=DEAD,
                                                attempts=3, reason="refused")])
    gateway = gateway_factory(config)
    port = gateway.web.port
    csrf = Page(request(port, "GET", "/dead")[2]).field("csrf")
    answers: list[int] = []
    poster = threading.Thread(target=lambda: answers.append(request(port, "POST", path, {"csrf": csrf, "all": "1"})[0]))
    poster.start()
    try:
        assert entered.wait(10), action
        began = time.monotonic()
        assert request(port, "GET", "/healthz")[0] == 200
        assert request(port, "GET", "/metrics")[0] == 200
        assert time.monotonic() - began < 5, f"the server waited for {action}"
    finally:
        release.set()
        poster.join(30)
    assert answers == [303]
