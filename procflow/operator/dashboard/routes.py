"""The dashboard's routes: ``create_app(operator, read_only=..., token=...)``, a Starlette app.

Every page is a Jinja template (autoescaped) carrying its first data as JSON in a
``<script type="application/json">`` block; ``static/dashboard.js`` draws it with
``textContent`` only, then polls the page's ``/api`` twin every 1.5 s. Every Operator call
(Redis) runs in the threadpool: the GET endpoints are plain functions, which Starlette runs
there, and the POST ones hand theirs to ``run_in_threadpool``.

What a request must pass first (Host, login, origin and CSRF token) is ``guards.py``; what
each page shows is ``views.py``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ...errors import (
    ConfigurationError,
    ProcflowError,
    RedisUnavailableError,
    UnknownFlowError,
    UnknownJobError,
    UnknownQueueError,
)
from ...version import __version__
from ..ops import Operator
from .guards import COOKIE, LOOPBACK_HOSTS, Guard, Guards, JSONReply, error_reply, local_path
from .views import PageData, dumps

__all__ = ["LOOPBACK_HOSTS", "create_app"]

HERE = Path(__file__).resolve().parent
POLL_MS = 1500
PAGE_SIZES = (20, 50, 100, 200)


def _status_of(exc: Exception) -> int:
    if isinstance(exc, UnknownFlowError | UnknownJobError | UnknownQueueError):
        return 404
    if isinstance(exc, RedisUnavailableError):
        return 503
    if isinstance(exc, ConfigurationError | ValueError):
        return 400
    return 500


def _int(value: str | None, default: int, low: int, high: int) -> int:
    try:
        number = int(value) if value is not None else default
    except ValueError:
        number = default
    return max(low, min(high, number))


def _search_args(request: Request) -> tuple[str, str, str]:
    q = request.query_params
    return q.get("flow", ""), q.get("attribute", ""), q.get("value", "")


def _page_args(request: Request) -> tuple[str, str, str, int, int]:
    q = request.query_params
    return (
        request.path_params["flow"],
        request.path_params["queue"],
        q.get("state", "waiting"),
        _int(q.get("start"), 0, 0, 2**62),
        _int(q.get("count"), 50, 1, PAGE_SIZES[-1]),
    )


class Dashboard:
    """The routes and what they share: the page data, the guards, the templates."""

    def __init__(
        self,
        operator: Operator,
        read_only: bool,
        token: str | None,
        allowed_hosts: Sequence[str] | None,
    ) -> None:
        self.op = operator
        self.data = PageData(operator)
        self.guards = Guards(read_only, token, allowed_hosts)
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        env.policies["json.dumps_function"] = dumps
        env.policies["json.dumps_kwargs"] = {}  # the API's key order (Jinja sorts)
        self.templates = Jinja2Templates(env=env)

    # -- pages -------------------------------------------------------------------------------

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
        g = self.guards
        context = {
            # the data pages (rendered in the threadpool) read it; the login and error
            # pages (rendered in the event loop, maybe with Redis away) do not
            "eviction": self.data.eviction() if initial is not None else [],
            "title": title,
            "page": template.removesuffix(".html"),
            "initial": initial,
            "api": api,
            "csrf": g.csrf,
            "read_only": g.read_only,
            "token": g.token is not None,
            "version": __version__,
            "poll_ms": POLL_MS,
            **extra,
        }
        return self.templates.TemplateResponse(request, template, context, status_code=status)

    def overview_page(self, request: Request) -> Response:
        return self.render(request, "overview.html", "flows", self.data.overview(), "/api/flows")

    def flow_page(self, request: Request) -> Response:
        flow = request.path_params["flow"]
        api = f"/api/flows/{quote(flow, safe='')}"
        return self.render(request, "flow.html", f"flow {flow}", self.data.flow(flow), api)

    def stage_page(self, request: Request) -> Response:
        flow, queue, state, start, count = _page_args(request)
        data = self.data.stage(flow, queue, state, start, count)
        api = f"/api/flows/{quote(flow, safe='')}/stages/{quote(queue, safe='')}"
        return self.render(request, "stage.html", f"{flow} · {queue}", data, api, sizes=PAGE_SIZES)

    def job_page(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        data = self.data.job(job_id, request.query_params.get("flow") or None)
        api = f"/api/jobs/{quote(job_id, safe='')}"
        return self.render(request, "job.html", f"job {job_id}", data, api)

    def search_page(self, request: Request) -> Response:
        data = self.data.search(*_search_args(request))
        data["options"] = self.data.search_options()
        return self.render(request, "search.html", "search", data, "/api/search")

    def login_page(self, request: Request) -> Response:
        return self.render(
            request, "login.html", "log in", next=local_path(request.query_params.get("next"))
        )

    async def login(self, request: Request) -> Response:
        g = self.guards
        form = parse_qs((await request.body()).decode(errors="replace"))
        given, target = form.get("token", [""])[0], local_path(form.get("next", ["/"])[0])
        refused = g.refusal(request, form.get("csrf", [""])[0], action=False)
        if refused is not None:
            return refused
        if g.token is None:
            return RedirectResponse(target, status_code=303)
        if not g.right_token(given):
            return self.render(
                request, "login.html", "log in", status=401, next=target, error="wrong token"
            )
        reply = RedirectResponse(target, status_code=303)
        reply.set_cookie(
            COOKIE,
            g.session,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return reply

    async def logout(self, request: Request) -> Response:
        form = parse_qs((await request.body()).decode(errors="replace"))
        refused = self.guards.refusal(request, form.get("csrf", [""])[0], action=False)
        if refused is not None:
            return refused
        reply = RedirectResponse("/login" if self.guards.token else "/", status_code=303)
        reply.delete_cookie(COOKIE)
        return reply

    # -- the JSON twins ------------------------------------------------------------------------

    def api_overview(self, request: Request) -> Response:
        return JSONReply(self.data.overview())

    def api_flow(self, request: Request) -> Response:
        return JSONReply(self.data.flow(request.path_params["flow"]))

    def api_stage(self, request: Request) -> Response:
        return JSONReply(self.data.stage(*_page_args(request)))

    def api_job(self, request: Request) -> Response:
        flow = request.query_params.get("flow") or None
        return JSONReply(self.data.job(request.path_params["job_id"], flow))

    def api_search(self, request: Request) -> Response:
        return JSONReply(self.data.search(*_search_args(request)))

    # -- actions -------------------------------------------------------------------------------

    async def _action_body(self, request: Request) -> tuple[dict[str, Any], Response | None]:
        refused = self.guards.refusal(request, request.headers.get("x-csrf-token"))
        if refused is not None:
            return {}, refused
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return {}, error_reply(400, "the body must be JSON")
        if not isinstance(body, dict):
            return {}, error_reply(400, "the body must be a JSON object")
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
            return error_reply(400, 'want {"queue": "Q"} with "ids": ["ID", …] or none (all)')
        moved = await run_in_threadpool(self.op.retry, flow, queue, ids or None)
        missing = [i for i in ids or [] if i not in set(moved)]
        message = f"put {len(moved)} job(s) back on {queue}"
        if missing:
            error = f"not failed in {queue}: {', '.join(missing)}"
            return JSONReply({"moved": moved, "error": error}, status_code=409)
        return JSONReply({"moved": moved, "message": message})

    async def pause(self, request: Request) -> Response:
        """Pause or resume a stage on every node: ``{"queue": Q, "pause": true | false}``."""
        body, refused = await self._action_body(request)
        if refused is not None:
            return refused
        flow, queue, pause = request.path_params["flow"], body.get("queue"), body.get("pause")
        if not isinstance(queue, str) or not isinstance(pause, bool):
            return error_reply(400, 'want {"queue": "Q", "pause": true or false}')
        await run_in_threadpool(self.op.pause, flow, queue, pause)
        done = "paused: its workers lease nothing" if pause else "resumed"
        return JSONReply({"paused": pause, "message": f"{queue} {done}"})

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
            return JSONReply({"outcome": outcome, "error": error}, status_code=409)
        return JSONReply({"outcome": outcome, "queue": queue, "message": messages[outcome]})

    async def delete(self, request: Request) -> Response:
        _, refused = await self._action_body(request)
        if refused is not None:
            return refused
        flow, job_id = request.path_params["flow"], request.path_params["job_id"]
        gone = await run_in_threadpool(self.op.delete, job_id, flow)
        return JSONReply({"deleted": gone, "message": "deleted" if gone else "was gone already"})

    # -- errors ------------------------------------------------------------------------------

    def failure(self, request: Request, exc: Exception) -> Response:
        status = _status_of(exc)
        if request.url.path.startswith("/api/") or request.method != "GET":
            return error_reply(status, str(exc))
        return self.render(request, "error.html", "error", status=status, message=str(exc))


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
        Route("/api/flows/{flow}/pause", d.pause, methods=["POST"]),
        Route("/api/flows/{flow}/jobs/{job_id}/cancel", d.cancel, methods=["POST"]),
        Route("/api/flows/{flow}/jobs/{job_id}/delete", d.delete, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(Guard, guards=d.guards)],
        exception_handlers={ProcflowError: d.failure, ValueError: d.failure},
    )
    app.state.dashboard = d
    return app
