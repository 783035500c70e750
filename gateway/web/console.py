"""The web console: overview, queues, dead letters, proof search, configuration.

The pages are Jinja2 templates (``templates/``) over what a
:class:`ConsoleBackend` gives: the service passes in its proof record and
small functions of its own (queue state, dead letters, retry, reload), so
the routes only read, format and hand actions on.  Every page reads a
bounded amount: the record answers with aggregates per time bucket and
``LIMIT``-ed rows through its indexes, dead letters come a page at a time.

Actions are POST forms checked by :mod:`gateway.web.access` (token, same
origin) and here (the CSRF token in the form), then answered with a
redirect to the page showing the result.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from gateway.config import Config
from gateway.dicom.uids import lookup
from gateway.logs import get_logger
from gateway.record import ProofRecord
from gateway.spool import Job
from gateway.web.access import SESSION_COOKIE, SESSION_SECONDS, Keys
from gateway.web.plots import PLOTS, throughput_svg

__all__ = ["ConsoleBackend", "console_routes", "DEAD_LETTERS_PER_PAGE", "PLOT_HOURS", "PLOT_BUCKET_SECONDS"]

_log = get_logger("web")

DEAD_LETTERS_PER_PAGE = 50
RECENT_INSTANCES = 20
PLOT_HOURS = 24
PLOT_BUCKET_SECONDS = 600.0  # 144 points over 24 hours
RATE_WINDOWS = ((60, "last minute"), (900, "last 15 minutes"), (3600, "last hour"), (86400, "last 24 hours"))
_MAX_FORM_BYTES = 16 * 1024
LOGIN_FAILURES = 5
"""Failed log-ins one client address may make in :data:`LOGIN_WINDOW_SECONDS`; then it is answered 429."""
LOGIN_WINDOW_SECONDS = 60.0
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass(frozen=True)
class ConsoleBackend:
    """What the console reads and does, handed in by the service."""

    record: ProofRecord
    queues: Callable[[], Sequence[Any]]  # objects with the fields of gateway.service.QueueState
    dead_letters: Callable[[int, int], tuple[int, list[Job]]]  # (offset, limit) -> (total, page)
    retry: Callable[[str, str], bool]  # (instance id, destination) -> moved back to the queue
    retry_all: Callable[[], int]
    reload: Callable[[], str | None]  # None when applied, else why it was refused
    reload_error: Callable[[], str | None]  # why the last reload was refused (None: applied or none tried)
    config: Callable[[], Config]
    # The TLS certificates in use and when each expires (gateway.net.certificates.CertificateDate).
    certificates: Callable[[], Sequence[Any]] = tuple


# ---------------------------------------------------------------- formatting


def _when(value: float | None) -> str:
    if value is None:
        return "—"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(value: float | None) -> str:
    """How long ago a past event (a receipt, a first failure) was stamped.

    A stamp ahead of the clock means the wall clock was set back since: the
    event's age is not known, and "in 59 min" of a failure would be
    nonsense, so the page says how far ahead it is.
    """
    if value is None:
        return ""
    seconds = time.time() - value
    if seconds < -1:
        return f"stamped {_span(-seconds)} ahead of the clock (set back since)"
    return f"{_span(max(0.0, seconds))} ago"


def _until(value: float | None) -> str:
    """How long until a future event (a next attempt)."""
    if value is None:
        return ""
    return f"in {_span(max(0.0, value - time.time()))}"


def _due(value: float) -> bool:
    """True when `value` is still ahead (a job due at time 0 or in the past is due now)."""
    return value > time.time() + 1


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _size(value: float | None) -> str:
    if value is None:
        return "—"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B"


def _rate(value: float) -> str:
    """A rate with three significant digits (0 for none)."""
    return f"{value:.3g}" if value else "0"


def _syntax(uid: str | None) -> str:
    if not uid:
        return "—"
    entry = lookup(uid)
    return f"{entry.name} ({uid})" if entry is not None else uid


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
    env = templates.env
    env.filters.update(when=_when, age=_age, until=_until, due=_due, size=_size, rate=_rate, syntax=_syntax)
    env.globals["rate_windows"] = RATE_WINDOWS
    return templates


def _savings(rows: list[dict[str, Any]], name: Callable[[str], str]) -> list[dict[str, Any]]:
    return [{**row, "name": name(row["key"] or ""), "saved": row["original"] - row["encoded"],
             "percent": 100.0 * (row["original"] - row["encoded"]) / row["original"] if row["original"] else 0.0}
            for row in rows]


# ---------------------------------------------------------------- routes


def console_routes(backend: ConsoleBackend, keys: Keys) -> list[Route]:
    """The console's routes over `backend`; `keys` gives the login check and the CSRF token."""
    templates = _templates()

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        context.update(csrf=keys.csrf, with_login=keys.token is not None, path=request.url.path)
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    async def form(request: Request) -> dict[str, str] | Response:
        """The posted form, or a refusal (too large, or without this console's CSRF token).

        A request with the bearer token needs no CSRF token: no other site's
        page can make a browser send that header.
        """
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_FORM_BYTES:
                return PlainTextResponse("form too large\n", status_code=413)
        fields = {key: values[0] for key, values in parse_qs(body.decode("utf-8", "replace")).items()}
        if not keys.bearer(request) and not keys.csrf_matches(fields.get("csrf", "")):
            return PlainTextResponse("missing or wrong CSRF token: reload the page and try again\n", status_code=403)
        return fields

    def overview(request: Request) -> Response:
        record = backend.record
        now = time.time()
        rates = []
        for seconds, label in RATE_WINDOWS:
            counts = record.window(now - seconds, now + 1)
            minutes = seconds / 60.0
            rates.append({"label": label, "seconds": seconds,
                          **{key: value / minutes for key, value in counts.items()}})
        attention = [c for c in certificates() if c["state"] != "valid"]
        return page(request, "overview.html", totals=record.totals(), rates=rates, attention=attention,
                    by_modality=_savings(record.savings("modality"), lambda key: key or "(none)"),
                    by_codec=_savings(record.savings("target_syntax"), _syntax),
                    plot_hours=PLOT_HOURS)

    def throughput(request: Request) -> Response:
        what = request.path_params["what"]
        if what not in PLOTS:
            return PlainTextResponse(f"no plot {what!r}\n", status_code=404)
        end = (time.time() // PLOT_BUCKET_SECONDS + 1) * PLOT_BUCKET_SECONDS
        buckets = backend.record.throughput(end - PLOT_HOURS * 3600, end, PLOT_BUCKET_SECONDS)
        return Response(throughput_svg(what, buckets, PLOT_BUCKET_SECONDS), media_type="image/svg+xml",
                        headers={"Cache-Control": "no-store"})

    def queues(request: Request) -> Response:
        return page(request, "queues.html", queues=backend.queues())

    def dead(request: Request) -> Response:
        try:
            number = int(request.query_params.get("page", "1"))
        except ValueError:
            number = 0
        if number < 1:
            return PlainTextResponse("page: a whole number from 1\n", status_code=400)
        total, letters = backend.dead_letters((number - 1) * DEAD_LETTERS_PER_PAGE, DEAD_LETTERS_PER_PAGE)
        pages = max(1, -(-total // DEAD_LETTERS_PER_PAGE))
        return page(request, "dead.html", total=total, letters=letters, page=number, pages=pages,
                    retried=request.query_params.get("retried"), first=(number - 1) * DEAD_LETTERS_PER_PAGE)

    async def retry(request: Request) -> Response:
        fields = await form(request)
        if isinstance(fields, Response):
            return fields
        instance, destination = fields.get("instance", ""), fields.get("destination", "")
        # In a thread: thousands of dead letters take seconds, while /metrics and /readyz must still answer.
        if fields.get("all") == "1":
            moved = await run_in_threadpool(backend.retry_all)
        else:
            moved = int(await run_in_threadpool(backend.retry, instance, destination))
        query = {"retried": str(moved)}
        if fields.get("page", "").isdigit():
            query["page"] = fields["page"]
        return RedirectResponse(f"/dead?{urlencode(query)}", status_code=303)

    def search(request: Request) -> Response:
        uid = request.query_params.get("uid", "").strip()
        if uid and (len(uid) > 64 or not _UID.match(uid)):
            return page(request, "search.html", status_code=400, uid=uid, entries=None, recent=[],
                        error="a SOP Instance UID is digits and dots, 64 characters at most")
        entries = backend.record.find(uid) if uid else None
        recent = backend.record.recent(RECENT_INSTANCES) if not uid else []
        return page(request, "search.html", uid=uid, entries=entries, recent=recent, error=None,
                    status_code=404 if entries == [] else 200)

    def certificates() -> list[dict[str, Any]]:
        now = time.time()
        rows = []
        for cert in backend.certificates():
            early = cert.not_yet_valid(now)
            rows.append({"use": cert.use, "subject": cert.subject, "path": cert.path, "not_after": cert.not_after,
                         "not_before": cert.not_before, "days": cert.days_left(now),
                         "state": "not_yet_valid" if early else cert.state(now)})
        return rows

    def configuration(request: Request) -> Response:
        return page(request, "config.html", config=backend.config(), error=backend.reload_error(),
                    result=request.query_params.get("reload"), certificates=certificates())

    async def reload(request: Request) -> Response:
        fields = await form(request)
        if isinstance(fields, Response):
            return fields
        try:
            error = await run_in_threadpool(backend.reload)  # logs what it applied, or why it refused
        except Exception:  # noqa: BLE001 - a failed reload refuses the file; the gateway and the page carry on
            _log.exception("configuration not reloaded, the running one stays")
            error = "refused"
        return RedirectResponse(f"/config?reload={'refused' if error else 'applied'}", status_code=303)

    def login_form(request: Request) -> Response:
        if keys.token is None:
            return RedirectResponse("/", status_code=303)
        return page(request, "login.html", failed=False)

    failures: dict[str, deque[float]] = {}  # client host -> times of its recent failed log-ins

    def locked_out(host: str, now: float) -> bool:
        recent = failures.get(host)
        while recent and recent[0] <= now - LOGIN_WINDOW_SECONDS:
            recent.popleft()
        if recent is not None and not recent:
            del failures[host]
            return False
        return recent is not None and len(recent) >= LOGIN_FAILURES

    async def login(request: Request) -> Response:
        fields = await form(request)
        if isinstance(fields, Response):
            return fields
        if keys.token is None:
            return RedirectResponse("/", status_code=303)
        host = request.client.host if request.client else "?"
        now = time.monotonic()
        if locked_out(host, now):  # the token is not even compared: guessing it goes no faster than this
            return PlainTextResponse(f"too many failed log-ins from {host}: try again in a minute\n", status_code=429,
                                     headers={"Retry-After": str(int(LOGIN_WINDOW_SECONDS))})
        if not keys.token_matches(fields.get("token", "").strip()):
            if len(failures) > 4096:  # many addresses: forget those whose failures are old
                for other in [h for h, times in failures.items() if not times or times[-1] <= now - LOGIN_WINDOW_SECONDS]:
                    del failures[other]
            recent = failures.setdefault(host, deque())
            recent.append(now)
            if len(recent) >= LOGIN_FAILURES:
                _log.warning("console login refused from %s: %d failures within %g s; its log-ins are refused "
                             "for a while", host, len(recent), LOGIN_WINDOW_SECONDS)
            else:
                _log.warning("console login refused from %s", host)
            return page(request, "login.html", status_code=401, failed=True)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, keys.new_session(), max_age=int(SESSION_SECONDS), httponly=True,
                            samesite="strict", path="/", secure=request.url.scheme == "https")
        return response

    async def logout(request: Request) -> Response:
        fields = await form(request)
        if isinstance(fields, Response):
            return fields
        session = request.cookies.get(SESSION_COOKIE)
        if session:  # ended here, not only in this browser: a copy of the cookie stops working too
            keys.end_session(session)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                               secure=request.url.scheme == "https")
        return response

    return [
        Route("/", overview),
        Route("/plot/{what}.svg", throughput),
        Route("/queues", queues),
        Route("/dead", dead),
        Route("/dead/retry", retry, methods=["POST"]),
        Route("/search", search),
        Route("/config", configuration),
        Route("/reload", reload, methods=["POST"]),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
