"""What a request to the dashboard must pass: the Host it names, the login, and for a POST the
origin and the CSRF token; and the security headers on every reply.

Bound to loopback, a request naming any other host is refused (DNS rebinding). With a token
configured, every page but the login form and the static files wants the login cookie or
``Authorization: Bearer TOKEN``. Actions are POSTs, refused unless they come from this origin
(``Origin``, ``Referer``, ``Sec-Fetch-Site``) with this process's random CSRF token (the
``X-CSRF-Token`` header, or a form's ``csrf`` field); never in read-only mode.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp

from .views import dumps

__all__ = ["COOKIE", "LOOPBACK_HOSTS", "Guard", "Guards", "JSONReply", "error_reply", "local_path"]

#: the Host names a dashboard bound to loopback answers to
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: the login cookie's name
COOKIE = "procflow_dashboard"
#: what a request may reach without the login
_OPEN_PATHS = ("/static/", "/login")
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class JSONReply(JSONResponse):
    """A JSON reply in the API's encoding (a refusal's, and the routes' too)."""

    def render(self, content: Any) -> bytes:
        return dumps(content, separators=(",", ":")).encode()


def error_reply(status: int, message: str) -> JSONReply:
    """The reply to a refused or failed request: ``{"error": message}``."""
    return JSONReply({"error": message}, status_code=status)


def _netloc(url: str) -> str:
    try:
        return urlsplit(url).netloc.lower()
    except ValueError:
        return ""


def local_path(target: str | None) -> str:
    """Where to go after the login: a path of this site, never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


class Guards:
    """The checks and the secrets they use: the mode, the allowed hosts, the token, and this
    process's CSRF token and login cookie."""

    def __init__(
        self, read_only: bool, token: str | None, allowed_hosts: Sequence[str] | None
    ) -> None:
        self.read_only = read_only
        self.token = token or None
        self.allowed_hosts = {h.lower() for h in allowed_hosts} if allowed_hosts else None
        secret = secrets.token_bytes(32)
        #: the CSRF token of this process: in every page, wanted by every POST
        self.csrf = hmac.new(secret, b"csrf", hashlib.sha256).hexdigest()
        #: the login cookie's value (a login survives only as long as this process)
        self.session = (
            hmac.new(secret, b"session:" + self.token.encode(), hashlib.sha256).hexdigest()
            if self.token
            else ""
        )

    def host_allowed(self, request: Request) -> bool:
        if self.allowed_hosts is None:
            return True
        host = urlsplit(f"//{request.headers.get('host', '')}").hostname or ""
        return host.lower() in self.allowed_hosts

    def right_token(self, given: str) -> bool:
        """Whether ``given`` is the configured token (there is one)."""
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def authorised(self, request: Request) -> bool:
        if self.token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.right_token(given):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self.session.encode())

    def same_origin(self, request: Request) -> bool:
        """A browser's request from a page of this site (a client that sends neither
        ``Origin`` nor ``Referer`` is no browser: the CSRF token is still wanted)."""
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return False
        origin = request.headers.get("origin") or request.headers.get("referer")
        if origin is None:
            return True
        return _netloc(origin) == request.headers.get("host", "").lower()

    def refusal(self, request: Request, csrf: str | None, action: bool = True) -> Response | None:
        """Why a POST is refused (a 403), or None when it may go on."""
        if action and self.read_only:
            return error_reply(403, "the dashboard is read-only")
        if not self.same_origin(request):
            return error_reply(
                403, "refused: the request does not come from this dashboard's pages"
            )
        if not csrf or not hmac.compare_digest(csrf.encode(), self.csrf.encode()):
            return error_reply(403, "refused: missing or wrong CSRF token (reload the page)")
        return None


class Guard(BaseHTTPMiddleware):
    """Host check and login for every request; security headers on every reply."""

    def __init__(self, app: ASGIApp, guards: Guards) -> None:
        super().__init__(app)
        self.guards = guards

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        g = self.guards
        path = request.url.path
        reply: Response
        if not g.host_allowed(request):
            reply = error_reply(400, "unexpected Host header (use 127.0.0.1 or localhost)")
        elif g.authorised(request) or path.startswith(_OPEN_PATHS):
            reply = await call_next(request)
        elif path.startswith("/api/") or request.method != "GET":
            reply = error_reply(401, "log in first: the dashboard wants its token")
        else:
            target = path + (f"?{request.url.query}" if request.url.query else "")
            reply = RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        reply.headers.setdefault("Content-Security-Policy", _CSP)
        reply.headers.setdefault("X-Content-Type-Options", "nosniff")
        reply.headers.setdefault("Referrer-Policy", "same-origin")
        reply.headers.setdefault("X-Frame-Options", "DENY")
        if not path.startswith("/static/"):
            reply.headers.setdefault("Cache-Control", "no-store")
        return reply
