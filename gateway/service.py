"""The running gateway: receiver, worker and one forwarder per destination.

Start-up order makes a restart after a crash safe: the spool is repaired
first (damaged manifests dropped, in-flight jobs pending again), the worker
picks up received-but-unprocessed instances and the receiver accepts new
associations; meanwhile a thread re-checks every held instance (rebuilding
lost objects and jobs), and only then do the forwarders pick up pending
jobs.  A backlog of tens of thousands of held instances takes minutes to
check, which a modality must not wait for; nothing is sent before its
object was checked.  Before any of that, the kernels of every codec the
configuration may use are compiled (or loaded from numba's cache), so that
the first instance does not wait for a compiler; the log says how long it
took.  Shutdown is the reverse.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config import Config, Destination, load_config
from gateway.errors import ConfigError, GatewayError
from gateway.forward import CommitmentReports, Forwarder, make_sender
from gateway.logs import get_logger
from gateway.net import certificates
from gateway.net.scp import Receiver, start_receiver
from gateway.record import RECORD_FILE, ProofRecord
from gateway.spool import DEAD, INFLIGHT, PENDING, UNROUTED, Job, Spool, remove_partial_copies
from gateway.worker import Worker, record_dead_letter

__all__ = ["Gateway", "QueueState"]

_log = get_logger("service")


@dataclass(frozen=True, slots=True)
class QueueState:
    """One destination's queue as the console shows it (times are epoch seconds, None: not applicable)."""

    destination: str
    kind: str
    pending: int
    inflight: int
    dead: int
    oldest_waiting: float | None  # when the oldest job still waiting was received
    failing_since: float | None  # first failure since the last success
    last_error: str | None
    last_error_at: float | None
    next_attempt: float | None  # when the earliest job held by the forwarders is due

    @property
    def depth(self) -> int:
        return self.pending + self.inflight


RECEIVE_RECORD_SECONDS = 2.0
"""How long the receiver waits for a busy proof record before it answers without its row."""

CLOCK_SAMPLE_SECONDS = 60.0
"""How often the housekeeping thread compares the wall clock with the steady one (see :class:`RetentionClock`)."""


def _steady() -> float:
    """Seconds on a clock that no setting of the wall clock moves, counting a suspension where it can.

    ``CLOCK_BOOTTIME`` (Linux) goes on while the machine sleeps, as the wall
    clock does: a resume is then not taken for a step of the wall clock.
    """
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


class RetentionClock:
    """The wall time retention compares stored time stamps with, which a step of the wall clock never advances.

    Manifests, kept copies and the proof record's rows carry wall-clock time
    stamps.  When the wall clock is stepped forward (a clock a day behind set
    right by NTP), every stamp written before the step looks a day older
    than it is, and a comparison with the wall clock would delete a day's
    worth too early.  This clock runs at the steady clock's pace from the
    lowest offset to the wall clock it has seen (sampled every
    :data:`CLOCK_SAMPLE_SECONDS` and at each use): a forward step leaves it
    behind the wall clock, so what was stamped before is kept its full time
    (what is stamped after is kept the step's length longer, until the
    next start); a backward step moves it back with the wall clock, so
    nothing stamped after it looks older than it is either.  Steps made
    while the gateway was not running cannot be seen.
    """

    def __init__(self) -> None:
        self._offset = time.time() - _steady()

    def sample(self) -> None:
        """Take the wall clock's offset now into account (a backward step lowers it; a forward one is ignored)."""
        self._offset = min(self._offset, time.time() - _steady())

    def now(self) -> float:
        """Wall time as of the lowest offset seen: never ahead of the wall clock, never moved on by a step."""
        self.sample()
        return _steady() + self._offset


class Gateway:
    """All parts of the gateway for one configuration."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.spool = Spool(config.spool.directory, keep_after_delivery=config.spool.keep_after_delivery)
        self.spool.destination_names = frozenset(d.name for d in config.destinations)
        self.record = ProofRecord(self.spool.root / RECORD_FILE)
        self.commitment_reports = CommitmentReports()  # storage commitment results reaching our receiver
        self.forwarders: dict[str, list[Forwarder]] = {}
        self.worker: Worker | None = None
        self.server = None
        self._stopped = threading.Event()
        self._housekeeping: list[threading.Thread] = []
        self.web = None
        self.receiver: Receiver | None = None
        self.certificates: list[certificates.CertificateDate] = []  # of the TLS files in use, and their dates
        self._certificates_reported = 0.0  # wall time of the last report (the days left are counted from it)
        self._certificates_reported_steady = 0.0  # and the steady clock then: a day is a day whatever the clock
        self.retention_clock = RetentionClock()  # what retention compares stored wall-clock stamps with
        self._web_keys = None  # the console's secrets: the token in force is replaced on reload
        self.reload_error: str | None = None  # why the last reload was refused (None: applied, or none tried)
        self._reload_lock = threading.Lock()
        self._recovery: threading.Thread | None = None  # checks the held instances at start, then starts forwarding
        self._forwarding = False
        # Each failing forwarder: its failing_since, and when that failure began on the steady clock
        self._failing: dict[Forwarder, tuple[float, float]] = {}
        self._failing_looked = time.monotonic()  # when the forwarders' failures were last looked at
        self._failing_lock = threading.Lock()

    @property
    def port(self) -> int:
        """The port actually listened on (useful when configured as a free port)."""
        if self.server is None:
            return self.config.server.port
        return int(self.server.server_address[1])

    def start(self) -> Gateway:
        self.spool.lock()
        self._read_certificates()
        self._warm_up()
        repaired = self.spool.recover()
        self.spool.forget_destination_states()  # the last run's forwarders': this run's save their own
        self._retire_removed_destinations()  # before the held instances are checked against the routes
        for dest in self.config.destinations:
            self.forwarders[dest.name] = self._forwarders_for(dest, self.config)
        self.worker = Worker(self.config, self.spool, self._submit, record=self.record)
        held = self.spool.held_ids()  # before the worker moves newly processed instances there
        self.worker.start()
        self._start_housekeeping()
        # Checking every held instance reads each one: minutes for a large backlog.  The receiver does not wait
        # for it (new instances are received and processed meanwhile); the forwarders do, so that nothing is
        # sent from an object a crash cut short.
        self._recovery = threading.Thread(target=self._recover_held, args=(held, repaired), name="recover-held",
                                          daemon=True)
        self._recovery.start()
        # Its own connections, which wait briefly for a busy record: the sender waits for the answer, and the
        # worker's row stands in for one not written.
        receiver = Receiver(self.spool, on_received=self.worker.notify,
                            record=ProofRecord(self.record.path, timeout=RECEIVE_RECORD_SECONDS),
                            min_free_bytes=self.config.spool.min_free_bytes)
        receiver.event_reports = self.commitment_reports.deliver
        self.server = start_receiver(self.config.server, receiver)
        self.receiver = receiver
        if self.config.web is not None:
            self._start_web()
        _log.info("listening on %s:%d as %s; spool %s; destinations %s", self.config.server.host, self.port,
                  self.config.server.ae_title, self.spool.root,
                  ", ".join(f"{d.name} ({d.kind})" for d in self.config.destinations))
        return self

    def _recover_held(self, held: list[str], repaired: dict[str, int]) -> None:
        """Re-check the held instances (objects and jobs a crash may have lost), then start the forwarders."""
        started = time.monotonic()
        if held:
            _log.info("checking %d held instance(s) for objects and jobs a crash may have lost; forwarding starts "
                      "once done", len(held))
        try:
            assert self.worker is not None
            repaired["held_rebuilt"] = self.worker.recover(held, halt=self._stopped)
        except Exception:  # noqa: BLE001 - what could not be checked is checked at the next start
            _log.exception("checking the held instances failed; forwarding starts anyway")
        if held:
            _log.info("%d held instance(s) checked in %.1f s", len(held), time.monotonic() - started)
        if any(repaired.values()):
            _log.info("spool recovered: %s", repaired)
        with self._reload_lock:  # a reload meanwhile replaced forwarders without starting them
            self._forwarding = not self._stopped.is_set()
            if self._forwarding:
                for forwarder in self._all_forwarders():
                    if forwarder.ident is None:
                        forwarder.start()

    @property
    def forwarding(self) -> bool:
        """True once the forwarders run (after the held instances were checked at start)."""
        return self._forwarding

    def _warm_up(self) -> None:
        """Compile the kernels of every configured codec before anything is taken in."""
        from gateway.warmup import configured_syntaxes, warm_up

        syntaxes = configured_syntaxes(self.config)
        if not syntaxes:
            return
        _log.info("preparing codec kernels (compiled on first use after an install, then loaded from "
                  "numba's cache) for %s", ", ".join(syntaxes))
        try:
            report = warm_up(syntaxes, encode_options=self.config.compression.encode_options)
        except Exception:  # noqa: BLE001 - every image is still verified: a broken codec means pass-throughs
            _log.exception("codec kernels could not be prepared; every image is still verified, and one "
                           "that fails is forwarded as received")
            return
        _log.info("codec kernels ready in %.1f s: %s; %d compiled (%.1f s), the rest from the cache",
                  report.seconds, ", ".join(report.codecs) or "none", report.compiled, report.compile_seconds)

    def _read_certificates(self, found: list[certificates.CertificateDate] | None = None) -> None:
        """The dates of the certificates in use (read at start and at each reload), what is near or past logged."""
        self.certificates = certificates.dates(self.config) if found is None else found
        self._certificates_reported = time.time()
        self._certificates_reported_steady = time.monotonic()
        certificates.report(self.certificates, self._certificates_reported)

    def _start_housekeeping(self) -> None:
        """Background work that nothing waits for.

        Each folder archive is swept once for the temporary files of copies
        a crash interrupted (a walk of the whole tree, hence off the start-up
        path); finished job manifests older than ``[spool] keep_done_hours``
        are deleted now and then every hour.
        """
        started = time.time()

        def sweep(name: str, root) -> None:
            try:
                removed = remove_partial_copies(root, before=started)
            except OSError as exc:
                _log.warning("folder archive %s: cannot sweep %s for partial copies: %s", name, root, exc)
                return
            _log.info("folder archive %s: %d partial cop%s left by an interrupted write removed", name, removed,
                      "y" if removed == 1 else "ies")

        for dest in self.config.destinations:
            if dest.kind == "folder" and dest.path is not None and dest.path.exists():
                thread = threading.Thread(target=sweep, args=(dest.name, dest.path),
                                          name=f"sweep-{dest.name}", daemon=True)
                self._housekeeping.append(thread)
                thread.start()
        thread = threading.Thread(target=self._prune_loop, name="prune-done", daemon=True)
        self._housekeeping.append(thread)
        thread.start()

    def prune_done(self) -> int:
        """Delete finished job manifests and proof records older than their retention; return how many jobs.

        Their ages are counted on :attr:`retention_clock`, not the wall clock,
        so that a forward step of the wall clock deletes nothing early.
        """
        now = self.retention_clock.now()
        removed = self.spool.prune_done(self.config.spool.keep_done_hours * 3600.0, now=now)
        if removed:
            _log.info("deleted %d finished job manifest(s) older than %g h", removed,
                      self.config.spool.keep_done_hours)
        kept = self.spool.prune_kept(self.config.spool.keep_done_hours * 3600.0, now=now)
        if kept:
            _log.info("deleted %d copies kept after delivery for more than %g h", kept,
                      self.config.spool.keep_done_hours)
        days = self.config.spool.keep_record_days
        try:
            forgotten = self.record.prune(now - days * 86400.0)
        except GatewayError as exc:
            _log.warning("cannot prune the proof record: %s", exc)
        else:
            if forgotten:
                _log.info("proof record: forgot %d instance(s) received more than %g days ago", forgotten, days)
        return removed

    def _prune_loop(self) -> None:
        """Prune every hour (on the steady clock); meanwhile sample the wall clock for the retention clock."""
        due = time.monotonic()
        while not self._stopped.is_set():
            self.retention_clock.sample()
            self.failing_seconds()  # a look at the failures: a step between two counts for no more than this wait
            if time.monotonic() >= due:
                due = time.monotonic() + 3600.0
                try:
                    self.prune_done()
                except OSError as exc:
                    _log.warning("cannot prune finished jobs: %s", exc)
                self.report_certificates(time.time())
            self._stopped.wait(CLOCK_SAMPLE_SECONDS)

    def report_certificates(self, now: float) -> bool:
        """Log again the certificates near or past expiry when a day has passed since they were last; whether it did.

        A day on the steady clock, or on the wall clock (`now`): the wall
        clock set back a day would otherwise silence them for two days, and
        set forward, their days left have changed, which is worth saying.
        """
        steady = time.monotonic() - self._certificates_reported_steady
        if now - self._certificates_reported < 86400.0 and steady < 86400.0:
            return False
        self._certificates_reported = now
        self._certificates_reported_steady = time.monotonic()
        certificates.report(self.certificates, now)
        return True

    def _start_web(self) -> None:
        from prometheus_client import CollectorRegistry

        from gateway.metrics import GatewayCollector
        from gateway.web import WebServer, make_app
        from gateway.web.console import ConsoleBackend

        web = self.config.web
        assert web is not None
        registry = CollectorRegistry()
        registry.register(GatewayCollector(self.record.path, self.spool,
                                           lambda: [d.name for d in self.config.destinations],
                                           lambda: self.certificates))
        console = ConsoleBackend(record=self.record, queues=self.queue_states, dead_letters=self.dead_letters,
                                 retry=self.retry_dead, retry_all=self.retry_all_dead, reload=self.reload,
                                 reload_error=lambda: self.reload_error, config=lambda: self.config,
                                 certificates=lambda: self.certificates)
        app = make_app(registry, self.not_ready, web.token(), console=console, host=web.host)
        self._web_keys = app.state.keys
        self.web = WebServer(app, web.host, web.port, certificate=web.certificate,
                             private_key=web.private_key).start()
        _log.info("web console and endpoints on %s://%s:%d (/metrics, /healthz, /readyz)", self.web.scheme,
                  web.host, self.web.port)
        if not web.https and web.host not in ("127.0.0.1", "::1", "localhost"):
            _log.warning("web console on %s over plain HTTP: the token and the session cookie cross the network "
                         "in clear; set [web] certificate and private_key to serve it over HTTPS", web.host)

    def failing_seconds(self) -> dict[str, float]:
        """How long each failing destination has been failing (its longest-failing forwarder), on the steady clock.

        A forwarder stamps its first failure with the wall clock, and the wall
        clock stepped forward a day made ``/readyz`` say "failing for 86405 s"
        five seconds into a failure, set back an hour kept it ready an hour
        past ``unready_after_seconds``.  A failure is timed here from when it
        was first seen (by the housekeeping thread every
        :data:`CLOCK_SAMPLE_SECONDS`, and at each ``/readyz``), back-dated by
        its wall-clock age but never to before the previous look, which did
        not see it: a step counts for at most the time between two looks.
        """
        with self._failing_lock:
            steady, wall = time.monotonic(), time.time()
            gap = steady - self._failing_looked
            self._failing_looked = steady
            seen: dict[Forwarder, tuple[float, float]] = {}
            seconds: dict[str, float] = {}
            for name, group in list(self.forwarders.items()):  # a reload from the console may change it
                for forwarder in group:
                    since = forwarder.failing_since
                    if since is None:
                        continue
                    began = self._failing.get(forwarder)
                    if began is None or began[0] != since:  # a failure not seen before
                        began = (since, steady - min(max(0.0, wall - since), gap))
                    seen[forwarder] = began
                    seconds[name] = max(seconds.get(name, 0.0), steady - began[1])
            self._failing = seen
            return seconds

    def not_ready(self) -> str | None:
        """None while the gateway can take instances and deliver them, else why not (``/readyz``)."""
        if self.server is None or self._stopped.is_set():
            return "the receiver is not listening"
        now = time.time()
        for cert in self.certificates:
            if cert.use == "server" and cert.not_yet_valid(now):
                return (f"the receiver's TLS certificate {cert.subject!r} is not valid before "
                        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(cert.not_before))}: callers refuse it")
            if cert.use == "server" and cert.state(now) == "expired":
                return f"the receiver's TLS certificate {cert.subject!r} has expired: callers refuse it"
        probe = self.spool.temp_path(".ready")
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            return f"the spool is not writable: {exc}"
        limit = self.config.web.unready_after_seconds if self.config.web is not None else 300.0
        for name, seconds in self.failing_seconds().items():
            if seconds > limit:
                return f"destination {name} has been failing for {seconds:.0f} s"
        return None

    def stalled(self) -> str | None:
        """None while every thread the gateway needs runs, else which has stopped (``serve`` then exits 1).

        Each part survives its own errors; a thread that has ended anyway
        leaves the gateway unable to take, process or deliver images, which
        only a restart mends.
        """
        if self._stopped.is_set() or self.server is None:
            return None
        reason = self.server.stalled() or (self.worker.stalled() if self.worker is not None else None)
        if reason is not None:
            return reason
        for name, group in list(self.forwarders.items()):  # a reload from the console may change it
            if any(f.ident is not None and not f.is_alive() for f in group):
                return f"the forwarder of destination {name} has stopped"
        if self.web is not None and not self.web.running:
            return "the web server has stopped"
        return None

    # ------------------------------------------------------------ what the console shows and does

    def queue_states(self) -> list[QueueState]:
        """Each configured destination's queue: counts by folder listing, one manifest read, forwarder state."""
        states = []
        for dest in self.config.destinations:
            waiting = [job for job in (self.spool.oldest_job(PENDING, dest.name),
                                       self.spool.oldest_job(INFLIGHT, dest.name)) if job is not None]
            oldest = min(waiting, key=lambda job: job.instance, default=None)
            group = self.forwarders.get(dest.name, [])
            errors = [(f.last_error_at, f.last_error) for f in group if f.last_error_at is not None]
            latest = max(errors, default=None)
            states.append(QueueState(
                destination=dest.name, kind=dest.kind,
                pending=self.spool.count_jobs(PENDING, dest.name), inflight=self.spool.count_jobs(INFLIGHT, dest.name),
                dead=self.spool.count_jobs(DEAD, dest.name),
                oldest_waiting=(oldest.received_at or oldest.created_at) if oldest is not None else None,
                failing_since=min((f.failing_since for f in group if f.failing_since is not None), default=None),
                last_error=latest[1] if latest else None, last_error_at=latest[0] if latest else None,
                next_attempt=min((due for due in (f.next_attempt() for f in group) if due is not None), default=None)))
        return states

    def dead_letters(self, offset: int, limit: int) -> tuple[int, list[Job]]:
        """How many dead letters there are, and one page of them, oldest first."""
        return self.spool.count_jobs(DEAD), self.spool.jobs_page(DEAD, offset, limit)

    def retry_dead(self, instance: str, destination: str) -> bool:
        """Put one dead letter back in its queue (as ``dicom-gateway retry`` does); False if it is no dead letter."""
        if not re.fullmatch(r"[0-9a-f-]+", instance) or not re.fullmatch(r"[\w.-]+", destination, re.ASCII):
            return False  # not the name of a job: never a path into or out of the spool
        if destination != UNROUTED and destination not in {d.name for d in self.config.destinations}:
            return False  # no forwarder would take it: it stays a dead letter, listed
        job = self.spool.find_job(instance, destination)
        if job is None or job.state != DEAD:
            return False
        self._requeued(self.spool.requeue(job))
        return True

    def retry_all_dead(self) -> int:
        """Put every dead letter back in its queue; return how many."""
        moved = self.spool.requeue_dead(configured={d.name for d in self.config.destinations})
        for job in moved:
            self._requeued(job)
        return len(moved)

    def _requeued(self, job: Job) -> None:
        _log.info("dead letter %s -> %s re-queued", job.sop, job.destination)
        if job.destination == UNROUTED:
            if self.worker is not None:
                self.worker.notify(job.instance)  # routed again, by the routes in force
        else:
            self._submit(job)  # the forwarder takes it now rather than at its next rescan

    def _forwarders_for(self, dest: Destination, config: Config) -> list[Forwarder]:
        count = dest.associations if dest.kind == "dicom" else 1
        forwarding = config.forwarding
        return [
            Forwarder(dest, self.spool, config.retry,
                      make_sender(dest, config.server.ae_title, config.compression.verify,
                                  spool=self.spool, record=self.record, reports=self.commitment_reports,
                                  encode_options=config.compression.encode_options),
                      batch=forwarding.batch, idle_seconds=forwarding.idle_release_seconds,
                      rescan_seconds=forwarding.rescan_seconds, partition=(index, count), record=self.record)
            for index in range(count)
        ]

    # What a reload cannot change: the listening socket, the spool, the worker pool's size, the web server.
    _RESTART_ONLY = (("server", "host"), ("server", "port"), ("server", "ae_title"), ("server", "max_pdu"),
                     ("server", "max_associations"), ("server", "association_request_seconds"),
                     ("server", "idle_seconds"), ("server", "max_connections"),
                     ("server", "max_connections_per_address"), ("spool", "directory"), ("spool", "keep_after_delivery"), ("compression", "processes"),
                     ("web", None), ("logging", None))

    def reload(self) -> str | None:
        """Read the configuration file again and apply it; None when applied, else why not.

        Routes, destinations, codec choices, retry and forwarding settings,
        the spool's free-space floor, the allowed callers and the web token
        change in place; associations in progress carry on.  A file that
        fails validation, that changes what only a restart can change (the
        listening address, the spool, the number of worker processes, the web
        endpoints, logging), or whose receiver certificate callers would refuse
        (expired, or not yet valid; unless it is the one already in use) is
        refused and the running configuration stays.
        Nothing raised while reloading escapes: it is logged, and refuses the
        reload.
        """
        try:
            return self._reload()
        except Exception as exc:  # noqa: BLE001 - a reload must never stop the running gateway
            message = f"unexpected {type(exc).__name__}: {exc}"
            _log.exception("configuration not reloaded, the running one stays: %s", message)
            self.reload_error = message
            return message

    def _reload(self) -> str | None:
        source = self.config.source
        if source is None:
            return "the running configuration was not read from a file"
        try:
            new = load_config(source)
            # What can still fail is done before anything changes: the token file, new TLS files.
            token = new.web.token() if new.web is not None else None
            tls = new.server.tls.context() if new.server.tls is not None else None
            found = certificates.dates(new)
            refused = certificates.refused_server_certificate(found, self.certificates, time.time())
            if refused is not None:  # callers would refuse it: the one in use serves them better
                raise refused
        except ConfigError as exc:
            _log.error("configuration not reloaded, the running one stays: %s", exc)
            self.reload_error = str(exc)
            return str(exc)
        changed = [f"{section}.{key}" if key else section for section, key in self._RESTART_ONLY
                   if (getattr(getattr(self.config, section), key) if key else getattr(self.config, section))
                   != (getattr(getattr(new, section), key) if key else getattr(new, section))]
        if (self.config.server.tls is None) != (new.server.tls is None):
            changed.append("server.tls")  # TLS on or off changes what the port speaks; new files apply live
        if changed:
            message = f"{', '.join(changed)}: changing this needs a restart; the running configuration stays"
            _log.error("configuration not reloaded: %s", message)
            self.reload_error = message
            return message
        with self._reload_lock:
            old, self.config = self.config, new
            # A removed destination's jobs keep their instances until they are delivered or dead letters.
            self.spool.destination_names = frozenset(d.name for d in new.destinations) | self.spool.job_destinations()
            if self.server is not None:
                self.server.ae.require_calling_aet = list(new.server.allowed_callers)
                self.server.set_caller_certificates(new.server.caller_certificates)
                self.server.set_caller_addresses(new.server.caller_addresses)
                if tls is not None:  # renewed certificates: the next handshakes use them
                    self.server.tls = tls
                if old.spool.min_free_bytes != new.spool.min_free_bytes:  # the next C-STOREs use the floor
                    from gateway.net import sink

                    sink.bind(self.server.ae, self.spool.tmp, new.spool.min_free_bytes, self.spool.make_room)
                    if self.receiver is not None:
                        self.receiver.min_free_bytes = new.spool.min_free_bytes
            if self._web_keys is not None:  # a replaced token: the old one and its sessions stop working
                self._web_keys.token = token
            if self.worker is not None:
                self.worker.reconfigure(new)
            before = {d.name: d for d in old.destinations}
            # How a sender re-encodes for a destination that refuses the stored syntax.
            transcoding = [(c.verify, c.encode_options) for c in (old.compression, new.compression)]
            for dest in new.destinations:
                # A destination with TLS files gets new forwarders even when its settings are the same: its
                # files are read again, so that certificates renewed in place apply to the next association.
                renewable = dest.tls is not None or dest.ca_certificates is not None
                if (before.get(dest.name) == dest and not renewable and old.retry == new.retry
                        and old.forwarding == new.forwarding and transcoding[0] == transcoding[1]):
                    continue
                retired = self.forwarders.get(dest.name, [])
                self.forwarders[dest.name] = self._forwarders_for(dest, new)
                for forwarder in retired:  # each finishes the instance in hand; the rest stays pending
                    forwarder.stop()
                keep = len(self.forwarders[dest.name])
                dropped = [forwarder for forwarder in retired if forwarder.partition[0] >= keep]
                if dropped:  # fewer associations: the dropped ones' states would be shown by status for good
                    threading.Thread(target=self._forget_states, args=(dest.name, keep, dropped),
                                     name="forget-states", daemon=True).start()
                if self._forwarding:  # else they start once the held instances are checked
                    for forwarder in self.forwarders[dest.name]:
                        forwarder.start()
            removed = [forwarder for name in set(before) - {d.name for d in new.destinations}
                       for forwarder in self.forwarders.pop(name, [])]
            for forwarder in removed:
                forwarder.stop()
            if removed:  # once they finished the instances in hand, their queues become dead letters
                threading.Thread(target=self._retire_removed_destinations, args=(removed,),
                                 name="retire-destinations", daemon=True).start()
        self.reload_error = None
        _log.info("configuration reloaded from %s: destinations %s", source,
                  ", ".join(f"{d.name} ({d.kind})" for d in new.destinations))
        self._read_certificates(found)
        return None

    def _forget_states(self, destination: str, keep: int, stopping: Sequence[Forwarder]) -> None:
        """Delete the saved states of `destination`'s associations from `keep` on, once `stopping` ended."""
        for forwarder in stopping:
            forwarder.join(forwarder.destination.timeout_seconds * 4 + 30)  # it saves its state until it ends
        self.spool.forget_destination_states(destination, keep=keep)

    def _retire_removed_destinations(self, stopping: Sequence[Forwarder] = ()) -> None:
        """Make the queued jobs of destinations no longer configured dead letters, after `stopping` ended."""
        for forwarder in stopping:
            forwarder.join(forwarder.destination.timeout_seconds * 4 + 30)  # a send it is in may take a while
        for name in {forwarder.destination.name for forwarder in stopping}:  # its states, shown by status
            self.spool.forget_destination_states(name)
        try:
            with self._reload_lock:  # against the configuration in force then: a reload may add one back
                retired = self.spool.retire_destinations({d.name for d in self.config.destinations})
                self.spool.destination_names = (frozenset(d.name for d in self.config.destinations)
                                                | self.spool.job_destinations())
        except (OSError, GatewayError) as exc:
            _log.error("the queues of destinations no longer configured stay as they are: %s", exc)
            return
        counts = Counter(job.destination for job in retired)
        for name, count in sorted(counts.items()):
            _log.warning("destination %s is no longer in the configuration: its %d queued instance(s) are dead "
                         "letters now; configure it again and run 'dicom-gateway retry' to send them", name, count)
        for job in retired:
            record_dead_letter(self.record, job)

    def _all_forwarders(self) -> list[Forwarder]:
        return [f for group in self.forwarders.values() for f in group]

    def _submit(self, job: Job) -> None:
        for forwarder in self.forwarders.get(job.destination, []):
            forwarder.submit(job)  # only the owner of the instance's partition takes it

    def stop(self, timeout: float = 10.0) -> None:
        """Stop receiving, then let the worker and forwarders finish their current item."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.web is not None:
            self.web.stop()
        if self.server is not None:
            self.server.shutdown()
        if self.worker is not None:
            self.worker.stop()
            self.worker.join(timeout)
        deadline = time.monotonic() + timeout
        if self._recovery is not None:  # it stops after the instance at hand, and starts no forwarder
            self._recovery.join(max(0.1, deadline - time.monotonic()))
        with self._reload_lock:
            forwarders = self._all_forwarders()
        for forwarder in forwarders:
            forwarder.stop()
        for forwarder in forwarders:
            if forwarder.ident is not None:
                forwarder.join(max(0.1, deadline - time.monotonic()))
        for thread in self._housekeeping:
            thread.join(max(0.1, deadline - time.monotonic()))
        self.spool.unlock()
        _log.info("stopped")

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until nothing is received, pending or in flight (for tests and tools)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = self.spool.counts()
            if counts["received"] == 0 and counts["pending"] == 0 and counts["inflight"] == 0 \
                    and counts["held"] == len({j.instance for j in self.spool.jobs_in("dead")}):
                return True
            time.sleep(0.05)
        return False

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
