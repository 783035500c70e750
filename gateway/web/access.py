"""Who may use the web endpoints, and how a browser proves it.

* With a token (``[web] token_file``) every request must be authenticated:
  either ``Authorization: Bearer <token>`` (Prometheus, scripts), or the
  console's session cookie, which the login form sets after checking the
  token.  The cookie holds a random session identifier, never the token;
  the server keeps the sessions (:class:`Keys`), so logging out ends one for
  every copy of its cookie, and a new token, a restart or
  :data:`SESSION_SECONDS` end them.  It is ``HttpOnly`` (no script reads it),
  ``SameSite=Strict`` (no other site's page makes the browser send it) and
  ``Secure`` over HTTPS.  A browser without it is sent to the login form;
  anything else gets 401.
* Without a token the endpoints listen on a loopback address only (the
  configuration enforces it); requests naming any other host are refused, so
  that a web page cannot reach the console through a DNS name rebound to
  127.0.0.1.
* Every POST that is not bearer-authenticated must come from a page of the
  console itself: its ``Origin`` (or, lacking one, its ``Referer``) must be
  the console's own, and the form must carry the console's CSRF token.
  Cross-site form posts are refused with 403.
* Every response forbids scripts and framing by other sites
  (``Content-Security-Policy``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from urllib.parse import urlsplit

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

__all__ = ["Access", "Keys", "SESSION_COOKIE", "SESSION_SECONDS", "MAX_SESSIONS", "LOOPBACK_HOSTS"]

SESSION_COOKIE = "gateway_session"
SESSION_SECONDS = 12 * 3600.0
"""How long a session lasts from its login; the browser is told to drop the cookie then too."""
MAX_SESSIONS = 1024
"""Sessions held at once; one more ends the oldest."""
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_MACHINE_PATHS = ("/metrics", "/healthz", "/readyz")  # answered 401, never redirected to the login form
_OPEN_PATHS = ("/login",)
_HEADERS = {
    # No script runs on the console's pages or images; they load only from the console, post only to it,
    # and no other site may frame them (a retry button in someone else's frame could be clicked by trickery).
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class Keys:
    """The per-process secrets: the token in force, the sessions logged in with it, and the CSRF token.

    A session is a random identifier the login form hands the browser; only
    a keyed hash of it is held here, with the time it ends.  At most
    :data:`MAX_SESSIONS` are held (a new one ends the oldest), each for
    :data:`SESSION_SECONDS`; logging out ends it, and a new token ends them
    all.  Used from the web server's event loop and, for a reload, from
    another thread.
    """

    def __init__(self, token: str | None) -> None:
        self._token = token
        self._key = secrets.token_bytes(32)
        self.csrf = hmac.new(self._key, b"csrf", hashlib.sha256).hexdigest()
        self._sessions: dict[bytes, float] = {}  # keyed hash of the cookie -> when it ends (monotonic), oldest first
        self._lock = threading.Lock()

    @property
    def token(self) -> str | None:
        return self._token

    @token.setter
    def token(self, value: str | None) -> None:
        """A reload's token: a new one ends every session logged in with the old one; the same one, none."""
        with self._lock:
            if value != self._token:
                self._sessions.clear()
            self._token = value

    def _digest(self, session: str) -> bytes:
        return hmac.new(self._key, b"session:" + session.encode(), hashlib.sha256).digest()

    def new_session(self) -> str:
        """A new session's cookie value (only with a token); the oldest session ends when there are too many."""
        assert self._token is not None
        session = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            for old in [d for d, ends in self._sessions.items() if ends <= now]:
                del self._sessions[old]
            while len(self._sessions) >= MAX_SESSIONS:
                del self._sessions[next(iter(self._sessions))]
            self._sessions[self._digest(session)] = now + SESSION_SECONDS
        return session

    def end_session(self, session: str) -> bool:
        """Log a session out, whoever holds a copy of its cookie; whether it was one."""
        with self._lock:
            return self._sessions.pop(self._digest(session), None) is not None

    @property
    def sessions(self) -> int:
        """Sessions held now (expired ones included until the next login sweeps them)."""
        return len(self._sessions)

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def bearer(self, request: Request) -> bool:
        given = request.headers.get("authorization", "")
        return self.token is not None and hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())

    def cookie(self, request: Request) -> bool:
        """The request carries the cookie of a session still open."""
        given = request.cookies.get(SESSION_COOKIE, "")
        if self._token is None or not given:
            return False
        digest = self._digest(given)
        with self._lock:
            ends = self._sessions.get(digest)
            if ends is not None and ends <= time.monotonic():
                del self._sessions[digest]
                ends = None
        return ends is not None

    def csrf_matches(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.csrf.encode())


def own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', '')}"


def same_origin(request: Request) -> bool:
    """The request was sent by a page of this server (Origin, or Referer when the browser sent no Origin)."""
    origin = request.headers.get("origin")
    if origin is not None:
        return origin == own_origin(request)
    referer = request.headers.get("referer")
    if referer is None:
        return False
    parts = urlsplit(referer)
    return f"{parts.scheme}://{parts.netloc}" == own_origin(request)


class Access(BaseHTTPMiddleware):
    """Authentication (token), host check (no token) and same-origin POSTs, for every route."""

    def __init__(self, app, keys: Keys, allowed_hosts: frozenset[str] | None = None) -> None:
        super().__init__(app)
        self.keys = keys
        self.allowed_hosts = allowed_hosts

    async def dispatch(self, request: Request, call_next) -> Response:
        if self.allowed_hosts is not None:
            host = urlsplit(f"//{request.headers.get('host', '')}").hostname or ""
            if host not in self.allowed_hosts:
                return PlainTextResponse("unknown host\n", status_code=400)
        bearer = self.keys.bearer(request)
        if self.keys.token is not None and not bearer and not self.keys.cookie(request) \
                and request.url.path not in _OPEN_PATHS:
            if request.method == "GET" and request.url.path not in _MACHINE_PATHS:
                return RedirectResponse("/login", status_code=303)
            return PlainTextResponse("unauthorized\n", status_code=401, headers={"WWW-Authenticate": "Bearer"})
        if request.method not in ("GET", "HEAD") and not bearer and not same_origin(request):
            return PlainTextResponse("cross-site request refused\n", status_code=403)
        response = await call_next(request)
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        return response
