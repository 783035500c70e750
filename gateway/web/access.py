"""Who may use the web endpoints, and how a browser proves it.

* With a token (``[web] token_file``) every request must be authenticated:
  either ``Authorization: Bearer <token>`` (Prometheus, scripts), or the
  console's session cookie, which the login form sets after checking the
  token.  The cookie holds an HMAC of the token under a key drawn at start
  (so it is worthless after a restart, and never the token itself); it is
  ``HttpOnly`` (no script reads it) and ``SameSite=Strict`` (no other site's
  page makes the browser send it).  A browser without it is sent to the
  login form; anything else gets 401.
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
from urllib.parse import urlsplit

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

__all__ = ["Access", "SESSION_COOKIE", "LOOPBACK_HOSTS"]

SESSION_COOKIE = "gateway_session"
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
    """The per-process secrets: session cookie value and CSRF token."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self._key = secrets.token_bytes(32)
        self.csrf = hmac.new(self._key, b"csrf", hashlib.sha256).hexdigest()

    def session(self) -> str:
        """The cookie value proving the token was given (only with a token)."""
        assert self.token is not None
        return hmac.new(self._key, b"session:" + self.token.encode(), hashlib.sha256).hexdigest()

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def bearer(self, request: Request) -> bool:
        given = request.headers.get("authorization", "")
        return self.token is not None and hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())

    def cookie(self, request: Request) -> bool:
        given = request.cookies.get(SESSION_COOKIE, "")
        return self.token is not None and bool(given) and hmac.compare_digest(given.encode(),
                                                                            self.session().encode())

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
