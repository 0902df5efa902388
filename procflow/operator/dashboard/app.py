"""The dashboard's Starlette app: ``create_app(operator, read_only=..., token=...)``.

Every page is a Jinja template (autoescaped) carrying its first data as JSON in a
``<script type="application/json">`` block; ``static/dashboard.js`` draws it with
``textContent`` only, then polls the page's ``/api`` twin every 1.5 s. Every Operator call
(Redis) runs in the threadpool: the GET endpoints are plain functions, which Starlette runs
there, and the POST ones hand theirs to ``run_in_threadpool``.

Actions are POSTs, refused unless they come from this origin (``Origin``, ``Referer``,
``Sec-Fetch-Site``) with this process's random CSRF token (the ``X-CSRF-Token`` header, or a
form's ``csrf`` field); never in read-only mode. With a token configured, every page but the
login form and the static files wants the login cookie or ``Authorization: Bearer TOKEN``.
Bound to loopback, a request naming any other host is refused (DNS rebinding).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp

from ...errors import (
    ConfigurationError,
    ProcflowError,
    RedisUnavailableError,
    UnknownFlowError,
    UnknownJobError,
    UnknownQueueError,
)
from ...version import __version__
from ..ops import PAGE_STATES, Operator, as_json
from .views import FlowCache, job_view, page_rows, search_rows

__all__ = ["LOOPBACK_HOSTS", "create_app"]

HERE = Path(__file__).resolve().parent
#: the Host names a dashboard bound to loopback answers to
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
COOKIE = "procflow_dashboard"
POLL_MS = 1500
#: how often (seconds) the banner re-reads the servers' maxmemory-policy
EVICTION_EVERY = 30.0
PAGE_SIZES = (20, 50, 100, 200)
_OPEN_PATHS = ("/static/", "/login")
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def _dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(as_json(value), ensure_ascii=False, default=str, **kwargs)


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return _dumps(content, separators=(",", ":")).encode()


def _error(status: int, message: str) -> _JSON:
    return _JSON({"error": message}, status_code=status)


def _status_of(exc: Exception) -> int:
    if isinstance(exc, UnknownFlowError | UnknownJobError | UnknownQueueError):
        return 404
    if isinstance(exc, RedisUnavailableError):
        return 503
    if isinstance(exc, ConfigurationError | ValueError):
        return 400
    return 500


def _netloc(url: str) -> str:
    try:
        return urlsplit(url).netloc.lower()
    except ValueError:
        return ""


def _int(value: str | None, default: int, low: int, high: int) -> int:
    try:
        number = int(value) if value is not None else default
    except ValueError:
        number = default
    return max(low, min(high, number))


def _search_args(request: Request) -> tuple[str, str, str]:
    q = request.query_params
    return q.get("flow", ""), q.get("attribute", ""), q.get("value", "")


def _local_path(target: str | None) -> str:
    """Where to go after the login: a path of this site, never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


class Dashboard:
    """The routes and what they share: the operator, the mode, the secrets."""

    def __init__(
        self,
        operator: Operator,
        read_only: bool,
        token: str | None,
        allowed_hosts: Sequence[str] | None,
    ) -> None:
        self.op = operator
        self.flows = FlowCache(operator)
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
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        env.policies["json.dumps_function"] = _dumps
        env.policies["json.dumps_kwargs"] = {}  # the API's key order (Jinja sorts)
        self.templates = Jinja2Templates(env=env)
        #: (when read, the banner's lines) about an evicting maxmemory-policy
        self._eviction: tuple[float, list[str]] | None = None

    # -- who may ask -------------------------------------------------------------------------

    def host_allowed(self, request: Request) -> bool:
        if self.allowed_hosts is None:
            return True
        host = urlsplit(f"//{request.headers.get('host', '')}").hostname or ""
        return host.lower() in self.allowed_hosts

    def authorised(self, request: Request) -> bool:
        if self.token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), self.token.encode()):
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
            return _error(403, "the dashboard is read-only")
        if not self.same_origin(request):
            return _error(403, "refused: the request does not come from this dashboard's pages")
        if not csrf or not hmac.compare_digest(csrf.encode(), self.csrf.encode()):
            return _error(403, "refused: missing or wrong CSRF token (reload the page)")
        return None

    # -- the data each page shows (run in the threadpool) ------------------------------------

    def overview_data(self) -> dict[str, Any]:
        self.flows.check_all()
        return {"flows": self.op.overview(), "at": time.time()}

    def flow_data(self, flow: str) -> dict[str, Any]:
        self.flows.check(flow)
        return {
            "flow": flow,
            "description": self.op.describe(flow),
            "stages": self.op.status(flow),
            "nodes": self.op.nodes(flow),
            "at": time.time(),
        }

    def stage_data(self, flow: str, queue: str, state: str, start: int, count: int) -> Any:
        if state not in PAGE_STATES:
            raise ValueError(f"unknown state {state!r}; choose from {', '.join(PAGE_STATES)}")
        self.flows.check(flow)
        self.op.flow(flow).stage(queue)  # an unknown stage is an error, naming the known ones
        stage = next(s for s in self.op.status(flow, minutes=60) if s.name == queue)
        page = self.op.page(flow, queue, state, start, count)
        return {
            "flow": flow,
            "queue": queue,
            "state": state,
            "states": PAGE_STATES,
            "stage": stage,
            "total": page.total,
            "start": page.start,
            "count": count,
            "rows": page_rows(page.jobs, page.scores, queue),
            "at": time.time(),
        }

    def job_data(self, job_id: str, flow: str | None) -> dict[str, Any]:
        if flow is None:
            self.flows.check_all()
        else:
            self.flows.check(flow)
        detail = self.op.job(job_id, flow)
        lookups = list(self.op.flow(detail["flow"]).lookup_attributes)
        return {**job_view(detail, lookups), "at": time.time()}

    def search_data(self, flow: str, attribute: str, value: str) -> dict[str, Any]:
        data: dict[str, Any] = {"flow": flow, "attribute": attribute, "value": value}
        if not (flow and attribute):
            return {**data, "rows": None, "at": time.time()}
        try:
            self.flows.check(flow)
            jobs = self.op.jobs_by(flow, attribute, value, limit=100)
        except ProcflowError as exc:
            return {**data, "rows": [], "error": str(exc), "at": time.time()}
        return {**data, "rows": search_rows(jobs), "limit": 100, "at": time.time()}

    # -- pages -------------------------------------------------------------------------------

    def eviction(self) -> list[str]:
        """What the banner says about servers that may evict keys (their maxmemory-policy),
        read at most every ``EVICTION_EVERY`` seconds; nothing when Redis cannot be read (the
        page says so itself)."""
        now = time.monotonic()
        if self._eviction is None or now - self._eviction[0] >= EVICTION_EVERY:
            try:
                texts = [p.message() for p in self.op.eviction() if p.unsafe]
            except ProcflowError:
                texts = []
            self._eviction = (now, texts)
        return self._eviction[1]

    def render(
        self,
        request: Request,
        template: str,
        title: str,
        initial: Any = None,
        api: str = "",
        status: int = 200,
        **extra: Any,
    ) -> Response:
        context = {
            # the data pages (rendered in the threadpool) read it; the login and error
            # pages (rendered in the event loop, maybe with Redis away) do not
            "eviction": self.eviction() if initial is not None else [],
            "title": title,
            "page": template.removesuffix(".html"),
            "initial": initial,
            "api": api,
            "csrf": self.csrf,
            "read_only": self.read_only,
            "token": self.token is not None,
            "version": __version__,
            "poll_ms": POLL_MS,
            **extra,
        }
        return self.templates.TemplateResponse(request, template, context, status_code=status)

    def overview_page(self, request: Request) -> Response:
        return self.render(request, "overview.html", "flows", self.overview_data(), "/api/flows")

    def flow_page(self, request: Request) -> Response:
        flow = request.path_params["flow"]
        api = f"/api/flows/{quote(flow, safe='')}"
        return self.render(request, "flow.html", f"flow {flow}", self.flow_data(flow), api)

    def _page_args(self, request: Request) -> tuple[str, str, str, int, int]:
        q = request.query_params
        return (
            request.path_params["flow"],
            request.path_params["queue"],
            q.get("state", "waiting"),
            _int(q.get("start"), 0, 0, 2**62),
            _int(q.get("count"), 50, 1, PAGE_SIZES[-1]),
        )

    def stage_page(self, request: Request) -> Response:
        flow, queue, state, start, count = self._page_args(request)
        data = self.stage_data(flow, queue, state, start, count)
        api = f"/api/flows/{quote(flow, safe='')}/stages/{quote(queue, safe='')}"
        return self.render(request, "stage.html", f"{flow} · {queue}", data, api, sizes=PAGE_SIZES)

    def job_page(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        data = self.job_data(job_id, request.query_params.get("flow") or None)
        api = f"/api/jobs/{quote(job_id, safe='')}"
        return self.render(request, "job.html", f"job {job_id}", data, api)

    def search_page(self, request: Request) -> Response:
        data = self.search_data(*_search_args(request))
        data["options"] = self.flows.lookup_attributes()
        return self.render(request, "search.html", "search", data, "/api/search")

    def login_page(self, request: Request) -> Response:
        return self.render(
            request, "login.html", "log in", next=_local_path(request.query_params.get("next"))
        )

    async def login(self, request: Request) -> Response:
        form = parse_qs((await request.body()).decode(errors="replace"))
        given, target = form.get("token", [""])[0], _local_path(form.get("next", ["/"])[0])
        refused = self.refusal(request, form.get("csrf", [""])[0], action=False)
        if refused is not None:
            return refused
        if self.token is None:
            return RedirectResponse(target, status_code=303)
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return self.render(
                request, "login.html", "log in", status=401, next=target, error="wrong token"
            )
        reply = RedirectResponse(target, status_code=303)
        reply.set_cookie(
            COOKIE,
            self.session,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return reply

    async def logout(self, request: Request) -> Response:
        form = parse_qs((await request.body()).decode(errors="replace"))
        refused = self.refusal(request, form.get("csrf", [""])[0], action=False)
        if refused is not None:
            return refused
        reply = RedirectResponse("/login" if self.token else "/", status_code=303)
        reply.delete_cookie(COOKIE)
        return reply

    # -- the JSON twins ------------------------------------------------------------------------

    def api_overview(self, request: Request) -> Response:
        return _JSON(self.overview_data())

    def api_flow(self, request: Request) -> Response:
        return _JSON(self.flow_data(request.path_params["flow"]))

    def api_stage(self, request: Request) -> Response:
        return _JSON(self.stage_data(*self._page_args(request)))

    def api_job(self, request: Request) -> Response:
        flow = request.query_params.get("flow") or None
        return _JSON(self.job_data(request.path_params["job_id"], flow))

    def api_search(self, request: Request) -> Response:
        return _JSON(self.search_data(*_search_args(request)))

    # -- actions -------------------------------------------------------------------------------

    async def _action_body(self, request: Request) -> tuple[dict[str, Any], Response | None]:
        refused = self.refusal(request, request.headers.get("x-csrf-token"))
        if refused is not None:
            return {}, refused
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return {}, _error(400, "the body must be JSON")
        if not isinstance(body, dict):
            return {}, _error(400, "the body must be a JSON object")
        return body, None

    async def retry(self, request: Request) -> Response:
        """Failed jobs of a stage back on its waiting list: ``{"queue": Q}`` all of them,
        ``{"queue": Q, "ids": [...]}`` only these."""
        body, refused = await self._action_body(request)
        if refused is not None:
            return refused
        flow, queue, ids = request.path_params["flow"], body.get("queue"), body.get("ids")
        if not isinstance(queue, str) or not (
            ids is None or (isinstance(ids, list) and all(isinstance(i, str) for i in ids))
        ):
            return _error(400, 'want {"queue": "Q"} with "ids": ["ID", …] or none (all)')
        moved = await run_in_threadpool(self.op.retry, flow, queue, ids or None)
        missing = [i for i in ids or [] if i not in set(moved)]
        message = f"put {len(moved)} job(s) back on {queue}"
        if missing:
            error = f"not failed in {queue}: {', '.join(missing)}"
            return _JSON({"moved": moved, "error": error}, status_code=409)
        return _JSON({"moved": moved, "message": message})

    async def cancel(self, request: Request) -> Response:
        _, refused = await self._action_body(request)
        if refused is not None:
            return refused
        flow, job_id = request.path_params["flow"], request.path_params["job_id"]
        outcome, queue = await run_in_threadpool(self.op.cancel, job_id, flow)
        messages = {
            "cancelled": f"cancelled (it was pending in {queue})",
            "running": f"running in {queue}: its node stops it within a heartbeat",
        }
        if outcome not in messages:
            error = "not pending or running (done already?)"
            return _JSON({"outcome": outcome, "error": error}, status_code=409)
        return _JSON({"outcome": outcome, "queue": queue, "message": messages[outcome]})

    async def delete(self, request: Request) -> Response:
        _, refused = await self._action_body(request)
        if refused is not None:
            return refused
        flow, job_id = request.path_params["flow"], request.path_params["job_id"]
        gone = await run_in_threadpool(self.op.delete, job_id, flow)
        return _JSON({"deleted": gone, "message": "deleted" if gone else "was gone already"})

    # -- errors ------------------------------------------------------------------------------

    def failure(self, request: Request, exc: Exception) -> Response:
        status = _status_of(exc)
        if request.url.path.startswith("/api/") or request.method != "GET":
            return _error(status, str(exc))
        return self.render(request, "error.html", "error", status=status, message=str(exc))


class _Guard(BaseHTTPMiddleware):
    """Host check and login for every request; security headers on every reply."""

    def __init__(self, app: ASGIApp, dashboard: Dashboard) -> None:
        super().__init__(app)
        self.dashboard = dashboard

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        d = self.dashboard
        path = request.url.path
        reply: Response
        if not d.host_allowed(request):
            reply = _error(400, "unexpected Host header (use 127.0.0.1 or localhost)")
        elif d.authorised(request) or path.startswith(_OPEN_PATHS):
            reply = await call_next(request)
        elif path.startswith("/api/") or request.method != "GET":
            reply = _error(401, "log in first: the dashboard wants its token")
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


def create_app(
    operator: Operator,
    *,
    read_only: bool = False,
    token: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> Starlette:
    """The dashboard over ``operator``. ``read_only`` hides and refuses every action;
    ``token`` protects every page (login form, or ``Authorization: Bearer``);
    ``allowed_hosts`` (e.g. ``LOOPBACK_HOSTS``) refuses requests naming any other host."""
    d = Dashboard(operator, read_only, token, allowed_hosts)
    routes = [
        Route("/", d.overview_page, name="overview"),
        Route("/flows/{flow}", d.flow_page, name="flow"),
        Route("/flows/{flow}/stages/{queue:path}", d.stage_page, name="stage"),
        Route("/jobs/{job_id}", d.job_page, name="job"),
        Route("/search", d.search_page, name="search"),
        Route("/login", d.login_page, methods=["GET"]),
        Route("/login", d.login, methods=["POST"]),
        Route("/logout", d.logout, methods=["POST"]),
        Route("/api/flows", d.api_overview),
        Route("/api/flows/{flow}", d.api_flow),
        Route("/api/flows/{flow}/stages/{queue:path}", d.api_stage),
        Route("/api/jobs/{job_id}", d.api_job),
        Route("/api/search", d.api_search),
        Route("/api/flows/{flow}/retry", d.retry, methods=["POST"]),
        Route("/api/flows/{flow}/jobs/{job_id}/cancel", d.cancel, methods=["POST"]),
        Route("/api/flows/{flow}/jobs/{job_id}/delete", d.delete, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_Guard, dashboard=d)],
        exception_handlers={ProcflowError: d.failure, ValueError: d.failure},
    )
    app.state.dashboard = d
    return app
