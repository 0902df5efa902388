"""What the dashboard's pages show, as plain data (no web framework): each page's data and its
``/api`` twin's (``PageData``), the operator's flows kept in step with the registry, a stage
page's rows, search results, one job's fields, attempts, errors and children, the banner about
evicting servers, and the JSON text all of it travels as. Values stay data: the page's script
puts them in the page as text.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from itertools import zip_longest
from typing import Any

from ... import codec
from ...errors import ProcflowError
from ...ids import created_at
from ...store import jobfields, keys
from ..ops import PAGE_STATES, Operator, as_json, flow_eta

__all__ = [
    "FlowCache",
    "PageData",
    "dumps",
    "job_view",
    "page_rows",
    "search_rows",
    "value_text",
]

#: a field's value longer than this is cut on the job page (its end replaced by a note)
VALUE_LIMIT = 20_000
PREVIEW_LIMIT = 160
_ERROR_KEYS = ("error", "kind", "at", "attempt", "exitCode", "signal", "worker", "pid")
#: how often (seconds) the banner re-reads the servers' maxmemory-policy
EVICTION_EVERY = 30.0


def dumps(value: Any, **kwargs: Any) -> str:
    """``value`` as the JSON text a page carries and its ``/api`` twin answers."""
    return json.dumps(as_json(value), ensure_ascii=False, default=str, **kwargs)


class FlowCache:
    """Keeps ``operator``'s flows as they are registered now. The Operator builds each flow once
    from its description, which suits a command; the dashboard lives on while supervisors are
    redeployed, so before each page it compares the description (one GET) with the one it
    built from, and rebuilds the flow when it changed (new stages, say)."""

    def __init__(self, operator: Operator) -> None:
        self.op = operator
        self._lock = threading.Lock()
        self._seen: dict[str, Any] = {}

    def check(self, name: str) -> None:
        """Make sure the operator knows flow ``name`` as registered (UnknownFlowError if it
        never was)."""
        raw = self.op.description(name)
        with self._lock:  # builds each flow once, whichever request comes first
            seen = self._seen.get(name)
            if raw is None or seen is None or raw == seen:
                self.op.flow(name)
                if raw is not None:
                    self._seen[name] = raw
                return
            self.op.adopt(self.op.rebuild(name, raw))  # the old one disconnected
            self._seen[name] = raw

    def check_all(self) -> None:
        for name in self.op.flows():
            self.check(name)

    def lookup_attributes(self) -> dict[str, list[str]]:
        """Each registered flow's lookup attributes (the search form's choices)."""
        out: dict[str, list[str]] = {}
        for name in self.op.flows():
            try:
                self.check(name)
                out[name] = list(self.op.flow(name).lookup_attributes)
            except ProcflowError:
                continue  # an unreadable description: no attribute to offer
        return out


def value_text(value: Any, limit: int = VALUE_LIMIT) -> str:
    """A field's value as JSON text (indented when it is a list or an object), cut at
    ``limit`` characters."""
    indent = 2 if isinstance(value, dict | list) else None
    text = json.dumps(value, ensure_ascii=False, default=str, indent=indent)
    if len(text) > limit:
        return f"{text[:limit]} … ({len(text) - limit:,} more characters)"
    return text


def _preview(job: dict[str, Any]) -> str:
    """The job's own fields (options and results, not procflow's) on one line, cut short."""
    own = jobfields.own_fields(job)
    text = json.dumps(own, ensure_ascii=False, default=str)
    return text if len(text) <= PREVIEW_LIMIT else text[: PREVIEW_LIMIT - 1] + "…"


def _outcome(job: dict[str, Any]) -> str:
    if job.get("gone"):
        return "gone"
    if job.get(keys.CANCELLED) is True:
        return "cancelled"
    if job.get(keys.DONE) is True:
        return "failed" if job.get(keys.FAILED) is True else "done"
    return "pending"


def _last_error(job: dict[str, Any], queue: str | None) -> dict[str, Any]:
    lists = [jobfields.errors(job, queue)] if queue else []
    lists += jobfields.errors_anywhere(job)
    for errors in lists:
        if errors and isinstance(errors[-1], dict):
            return errors[-1]
    return {}


def _row(job: dict[str, Any], queue: str | None) -> dict[str, Any]:
    job_id = str(job.get(keys.ID, ""))
    last = _last_error(job, queue)
    return {
        "id": job_id,
        "createdAt": created_at(job_id),
        "outcome": _outcome(job),
        "attempts": jobfields.attempts(job, queue) if queue else None,
        "lastStage": job.get(keys.COMPLETED_QUEUE) or job.get(keys.FAILED_QUEUE),
        "error": str(job.get(keys.FAILED_ERROR_MSG) or last.get("error") or ""),
        "kind": str(last.get("kind") or ""),
        "preview": _preview(job),
    }


def page_rows(jobs: Sequence[dict[str, Any]], scores: Sequence[float], queue: str) -> list[Any]:
    """A stage page's rows; ``score`` (ms) is a delayed job's due time, a parked one's since."""
    out = []
    for job, score in zip_longest(jobs, scores[: len(jobs)]):
        out.append({**_row(job, queue), "score": score})
    return out


def search_rows(jobs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Search results' rows: newest first."""
    return [_row(job, None) for job in reversed(jobs)]


def _errors(stage: str, value: list[Any]) -> list[dict[str, Any]]:
    out = []
    for n, e in enumerate(value, 1):
        if not isinstance(e, dict):
            continue
        row = {k: e.get(k) for k in _ERROR_KEYS}
        row["stage"] = stage
        row["attempt"] = e.get("attempt", n)
        row["error"] = str(e.get("error", ""))
        row["traceback"] = str(e.get("traceback") or "")
        other = {k: v for k, v in e.items() if k not in (*_ERROR_KEYS, "traceback")}
        row["details"] = value_text(other, 2000) if other else ""
        out.append(row)
    return out


def _actions(detail: dict[str, Any]) -> dict[str, Any]:
    failed_in = [p["queue"] for p in detail["places"] if p["state"] == "failed"]
    pending = any(p["state"] != "failed" for p in detail["places"])
    ended = detail["state"] in ("failed", "cancelled") or detail["state"].startswith("done")
    return {"retry": failed_in[0] if failed_in else None, "cancel": pending and not ended}


def job_view(detail: dict[str, Any], lookups: Sequence[str]) -> dict[str, Any]:
    """``Operator.job``'s detail, shaped for the job page: fields as text (lookup attributes
    with the values to search for), attempts per stage, every error, the children."""
    fields: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    children: list[dict[str, Any]] = []
    for name, value in detail["fields"].items():
        what, stage = jobfields.stage_records(name) or ("", "")
        if what == "errors" and isinstance(value, list):
            errors += _errors(stage, value)
        elif what == "attempts":
            attempts.append({"stage": stage, "count": value})
        elif what == "children" and isinstance(value, list):
            children += [
                {
                    "parent": stage,
                    "queue": jobfields.stage_of_child(c, stage),
                    "id": str(c.get(keys.ID, "")),
                    "outcome": _outcome(c),
                    "error": str(c.get(keys.FAILED_ERROR_MSG) or ""),
                }
                for c in value
                if isinstance(c, dict)
            ]
        elif name != keys.ID:
            search = list(codec.lookup_texts(value)) if name in lookups else []
            fields.append({"name": name, "value": value_text(value), "search": search})
    fields.sort(key=lambda f: jobfields.is_bookkeeping(f["name"]))  # the job's own fields first
    errors.sort(key=lambda e: e["at"] if isinstance(e.get("at"), int | float) else 0)
    return {
        "flow": detail["flow"],
        "queue": detail["queue"],
        "id": detail["id"],
        "state": detail["state"],
        "places": detail["places"],
        "createdAt": detail["createdAt"],
        "parent": jobfields.parent_id(detail["fields"]),
        "fields": fields,
        "attempts": attempts,
        "errors": errors,
        "children": children,
        "actions": _actions(detail),
    }


class PageData:
    """The data each page shows, read from ``operator`` (blocking: Redis), the same for the
    page and its ``/api`` twin; every read first brings the flows it shows up to date."""

    def __init__(self, operator: Operator) -> None:
        self.op = operator
        self.flows = FlowCache(operator)
        #: (when read, the banner's lines) about an evicting maxmemory-policy
        self._eviction: tuple[float, list[str]] | None = None

    def overview(self) -> dict[str, Any]:
        self.flows.check_all()
        return {"flows": self.op.overview(), "at": time.time()}

    def flow(self, flow: str) -> dict[str, Any]:
        self.flows.check(flow)
        nodes = self.op.nodes(flow)
        stages = self.op.status(flow, nodes=nodes)
        return {
            "flow": flow,
            "description": self.op.describe(flow),
            "stages": stages,
            "eta_seconds": flow_eta(stages),
            "nodes": nodes,
            "at": time.time(),
        }

    def stage(self, flow: str, queue: str, state: str, start: int, count: int) -> Any:
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

    def job(self, job_id: str, flow: str | None) -> dict[str, Any]:
        if flow is None:
            self.flows.check_all()
        else:
            self.flows.check(flow)
        detail = self.op.job(job_id, flow)
        lookups = list(self.op.flow(detail["flow"]).lookup_attributes)
        return {**job_view(detail, lookups), "at": time.time()}

    def search(self, flow: str, attribute: str, value: str) -> dict[str, Any]:
        data: dict[str, Any] = {"flow": flow, "attribute": attribute, "value": value}
        if not (flow and attribute):
            return {**data, "rows": None, "at": time.time()}
        try:
            self.flows.check(flow)
            jobs = self.op.jobs_by(flow, attribute, value, limit=100)
        except ProcflowError as exc:
            return {**data, "rows": [], "error": str(exc), "at": time.time()}
        return {**data, "rows": search_rows(jobs), "limit": 100, "at": time.time()}

    def search_options(self) -> dict[str, list[str]]:
        """The search form's choices: each registered flow's lookup attributes."""
        return self.flows.lookup_attributes()

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
