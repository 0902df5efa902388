"""Every Redis key, hash field and channel name procflow uses, in one place.

The first group is the wire format of the TypeScript library (npm ``@guildxyz/queues``) and is
fixed; the second group is procflow's own bookkeeping, added beside it. docs/wire-format.md
mirrors this module.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ATTEMPTS_PREFIX",
    "COMPLETED_QUEUE",
    "DONE",
    "ERRORS_PREFIX",
    "FAILED",
    "FAILED_ERROR_MSG",
    "FAILED_QUEUE",
    "ID",
    "LEASE_PREFIX",
    "NEXT_QUEUE",
    "PARENT_JOB",
    "PARENT_NOTIFIED",
    "PROGRESS_PREFIX",
    "STALLS_PREFIX",
    "TRUE_VALUES",
    "WAITING_SINCE_PREFIX",
    "Holder",
    "LeaseToken",
    "StageKeys",
    "TokenSeries",
    "attempts_field",
    "child_job",
    "child_queue",
    "children_failed_field",
    "children_jobs_field",
    "children_params_field",
    "children_pending_field",
    "delayed",
    "done_channel",
    "errors_field",
    "failed",
    "failed_children",
    "field_as_given",
    "is_children_jobs_field",
    "is_reserved",
    "is_reserved_in_result",
    "is_true",
    "job",
    "job_prefix",
    "lease_field",
    "lock",
    "lock_prefix",
    "lookup",
    "monitor_leader",
    "node_id",
    "own_prefix",
    "parked",
    "partition",
    "partition_index",
    "partition_of_name",
    "partition_queue",
    "paused",
    "processing",
    "progress_channel",
    "progress_field",
    "queue_as_given",
    "queue_prefix",
    "safe_node_id",
    "split_job_key",
    "stalls_field",
    "token_at",
    "waiting",
    "waiting_since_field",
]

# --- the TypeScript library's layout (fixed) -------------------------------------------

#: reserved job fields
DONE = "done"
FAILED = "failed"
FAILED_QUEUE = "failedQueue"
FAILED_ERROR_MSG = "failedErrorMsg"
COMPLETED_QUEUE = "completed-queue"
#: result key: the queue the job goes to next instead of the stage's next queue (never stored)
NEXT_QUEUE = "nextQueue"


#: raw values of ``done`` / ``failed`` that mean true: JSON true, and the JSON string "true"
#: that the TypeScript library's FlowMonitor writes
TRUE_VALUES = (b"true", b'"true"')


def is_true(raw: bytes | None) -> bool:
    """Whether a stored ``done`` or ``failed`` field is set."""
    return raw in TRUE_VALUES


def job_prefix(flow: str) -> str:
    """``job:F:`` — a job hash's key is this prefix plus the job id."""
    return f"job:{flow}:"


def job(flow: str, job_id: str) -> str:
    """``job:F:ID`` — the job hash."""
    return f"job:{flow}:{job_id}"


def lookup(flow: str, attribute: str, text: str) -> str:
    """``job:F:ATTR:VALUE`` — list of the ids whose lookup attribute has that value."""
    return f"job:{flow}:{attribute}:{text}"


def queue_prefix(queue: str) -> str:
    """``queue:Q:`` — every list and set of stage Q starts with it."""
    return f"queue:{queue}:"


def waiting(queue: str) -> str:
    """``queue:Q:waiting`` — ids waiting for stage Q."""
    return f"queue:{queue}:waiting"


def processing(queue: str) -> str:
    """``queue:Q:processing`` — ids leased by a worker of stage Q."""
    return f"queue:{queue}:processing"


def lock_prefix(queue: str) -> str:
    """``lock:Q:`` — a lock's key is this prefix plus the job id."""
    return f"lock:{queue}:"


def lock(queue: str, job_id: str) -> str:
    """``lock:Q:ID`` — held while a worker has job ID in stage Q."""
    return f"lock:{queue}:{job_id}"


def child_queue(parent_queue: str, child: str) -> str:
    """``PARENT:CHILD`` — the name of a child queue; its jobs live under ``job:PARENT:CHILD:``."""
    return f"{parent_queue}:{child}"


def child_job(parent_queue: str, child: str, child_id: str) -> str:
    """``job:PARENT:CHILD:CHILDID`` — a child job's hash."""
    return job(child_queue(parent_queue, child), child_id)


def children_params_field(parent_queue: str) -> str:
    """``children:PARENT:params`` — parent job field: the child parameter objects."""
    return f"children:{parent_queue}:params"


def children_jobs_field(parent_queue: str) -> str:
    """``children:PARENT:jobs`` — parent job field: the child job keys."""
    return f"children:{parent_queue}:jobs"


_CHILDREN_JOBS = re.compile(r"^children:.*:jobs$")


def is_children_jobs_field(field: str) -> bool:
    """Whether a job field is some stage's ``children:Q:jobs`` list."""
    return bool(_CHILDREN_JOBS.match(field))


def split_job_key(key: str) -> tuple[str, str] | None:
    """``job:…:ID`` → (key prefix ``job:…:``, ID); None for text that is not a job key."""
    if not key.startswith("job:") or key.count(":") < 2:
        return None
    prefix, _, job_id = key.rpartition(":")
    return prefix + ":", job_id


# --- a partitioned flow's names (procflow's: each partition is a flow of the layout above) --


def partition(base: str, index: int) -> str:
    """``{F#i}`` — the name (and Redis Cluster hash tag) of partition ``i`` of the flow
    created as ``F`` with ``partitions=K``: a complete flow of the fixed layout."""
    return f"{{{base}#{index}}}"


def partition_queue(base: str, index: int, queue: str) -> str:
    """``{F#i}.Q`` — queue ``Q``'s full name in partition ``i`` of flow ``F``."""
    return f"{partition(base, index)}.{queue}"


def partition_index(base: str, key: str, count: int) -> int | None:
    """Which of flow ``F``'s ``count`` partitions a key, queue or field name belongs to, by
    its ``{F#i}``; None for a name of no partition of ``F``."""
    start = key.find(f"{{{base}#")
    if start < 0:
        return None
    digits, sep, _ = key[start + len(base) + 2 :].partition("}")
    if not sep or not digits.isdigit() or int(digits) >= count:
        return None
    return int(digits)


def partition_of_name(name: str) -> tuple[str, int] | None:
    """``{F#i}`` → (F, i): the flow and index of a partition's name; None for other names."""
    if not (name.startswith("{") and name.endswith("}")):
        return None
    base, sep, digits = name[1:-1].rpartition("#")
    if not sep or not base or not digits.isdigit() or "{" in base or "}" in base:
        return None
    return base, int(digits)


def queue_as_given(base: str, name: str) -> str:
    """A queue's name in a partition of flow ``F`` (``{F#3}.check``, ``{F#3}.fan:child``)
    without its partition's tag (``check``, ``fan:child``); other names as they are."""
    if name.startswith(f"{{{base}#") and "}." in name:
        return name.split("}.", 1)[1]
    return name


def field_as_given(base: str, field: str) -> str:
    """A job field named by a partition's queue (``children:{F#3}.charge:jobs``) as the user
    wrote it (``children:charge:jobs``); other fields as they are."""
    if field.startswith("children:"):
        return "children:" + queue_as_given(base, field[len("children:") :])
    return field


# --- procflow's bookkeeping ------------------------------------------------------------


def delayed(queue: str) -> str:
    """``queue:Q:delayed`` — sorted set of ids waiting to be retried, score = due time (ms)."""
    return f"queue:{queue}:delayed"


def failed(queue: str) -> str:
    """``queue:Q:failed`` — list of ids that failed in stage Q after their last attempt."""
    return f"queue:{queue}:failed"


def parked(queue: str) -> str:
    """``queue:Q:parked`` — sorted set of parent ids waiting for their children, score = ms."""
    return f"queue:{queue}:parked"


def paused(queue: str) -> str:
    """``queue:Q:paused`` — present while stage Q is paused (``flow.pause``): JSON
    ``{"at": ms, "by": who}``. procflow's lease scripts lease nothing from a paused stage
    (they find the key from the waiting list's name); the TypeScript library ignores it."""
    return f"queue:{queue}:paused"


def own_prefix(flow: str) -> str:
    """``procflow:F:`` — procflow's own keys and channels of flow F start with it."""
    return f"procflow:{flow}:"


def monitor_leader(flow: str) -> str:
    """``procflow:F:monitor`` — the lock held by the one active FlowMonitor of flow F."""
    return f"procflow:{flow}:monitor"


def progress_channel(flow: str) -> str:
    """``procflow:F:progress`` — pub/sub channel: progress reports of flow F's running jobs
    (JSON ``{"id", "queue", "fraction", "message"}``; ``"ended": true`` added to the last one
    when the function of a job that reported returns or raises)."""
    return f"procflow:{flow}:progress"


def done_channel(flow: str) -> str:
    """``procflow:F:done`` — pub/sub channel: the id of every job of flow F that became done."""
    return f"procflow:{flow}:done"


#: ``procflow:flows`` — set of the names of every flow whose supervisor registered it
FLOWS = "procflow:flows"


def flow_record(flow: str) -> str:
    """``procflow:F:flow`` — JSON: flow F's description (queues, next queues, children, lookup
    attributes, limits), written by each supervisor that starts it."""
    return f"procflow:{flow}:flow"


def nodes(flow: str) -> str:
    """``procflow:F:nodes`` — sorted set: the node ids running flow F, score = the time (ms)
    their heartbeat expires."""
    return f"procflow:{flow}:nodes"


def node(flow: str, node_name: str) -> str:
    """``procflow:F:node:NODE`` — JSON with a time to live: node NODE's last heartbeat (its
    supervisor and every worker)."""
    return f"procflow:{flow}:node:{node_name}"


def stats(flow: str, queue: str) -> str:
    """``procflow:F:stats:Q`` — hash: stage Q's per-minute counts ``c:MINUTE`` / ``f:MINUTE``
    (completed, failed for good; MINUTE = Unix time // 60), kept for ``STATS_MINUTES`` and then
    folded into the totals ``completed`` / ``failed``; totals ``retried``, ``crashed``,
    ``cancelled``."""
    return f"procflow:{flow}:stats:{queue}"


def finished(flow: str, queue: str) -> str:
    """``procflow:F:finished:Q`` — list: the ids of the latest jobs that left flow F in stage
    Q (newest first, at most ``FINISHED_KEPT``)."""
    return f"procflow:{flow}:finished:{queue}"


#: how many ids a ``finished`` list keeps
FINISHED_KEPT = 1000


def cancel_requests(flow: str) -> str:
    """``procflow:F:cancel`` — set: ids of running jobs an operator asked to cancel; the node
    whose worker holds one stops that worker."""
    return f"procflow:{flow}:cancel"


#: the outcome counters of a stats hash
STATS_TOTALS = ("completed", "failed", "retried", "crashed", "cancelled")
#: how long per-minute counts are kept (24 h)
STATS_MINUTES = 24 * 60
#: job field set on a job an operator cancelled (``true``)
CANCELLED = "cancelled"

ATTEMPTS_PREFIX = "attempts:"
STALLS_PREFIX = "stalls:"
PROGRESS_PREFIX = "progress:"
LEASE_PREFIX = "lease:"
ERRORS_PREFIX = "errors:"
WAITING_SINCE_PREFIX = "waiting-since:"
#: child job field: JSON string, the parent job's key
PARENT_JOB = "parentJob"
#: child job field: set once the parent has been told this child is done
PARENT_NOTIFIED = "parentNotified"


#: a job's id, as every read returns it (never stored in the hash by procflow)
ID = "id"

_RESERVED = frozenset(
    {
        ID,
        DONE,
        FAILED,
        FAILED_QUEUE,
        FAILED_ERROR_MSG,
        COMPLETED_QUEUE,
        CANCELLED,
        "parentJob",
        "parentNotified",
    }
)


def is_reserved(field: str) -> bool:
    """Whether a job field is one that a job's options may not write: ``id`` (every read
    returns the job's real id there), ``done`` and the fail fields (procflow sets them when
    the job leaves its flow), ``completed-queue``, ``cancelled``, ``attempts:Q``,
    ``errors:Q``, ``lease:Q``, ``progress:Q``, ``waiting-since:Q``, ``stalls:Q``, a
    parent's ``children:Q:jobs|pending|failed``, a child's ``parentJob`` and
    ``parentNotified``. ``children:Q:params`` is allowed (how a
    job asks for fan-out). The rule for options; results follow
    ``is_reserved_in_result``."""
    if field in _RESERVED or field.startswith(
        (
            ATTEMPTS_PREFIX,
            ERRORS_PREFIX,
            LEASE_PREFIX,
            PROGRESS_PREFIX,
            STALLS_PREFIX,
            WAITING_SINCE_PREFIX,
        )
    ):
        return True
    return field.startswith("children:") and field.endswith((":jobs", ":pending", ":failed"))


def is_reserved_in_result(field: str) -> bool:
    """Whether a worker result's key is one a worker function may not return: every field
    ``is_reserved`` refuses in options but ``done``. A result may carry ``done`` (the
    TypeScript library's child and last stages return ``done: true``): it is read as the
    function saying the job is done, and is never written by the result, since ``done`` is
    procflow's own flag, set to ``true`` exactly when the job leaves its flow (a completion
    with no next stage, or a final failure), whatever value the result gave. The rule for
    results; ``nextQueue`` is read, not stored, too."""
    return field != DONE and is_reserved(field)


def attempts_field(queue: str) -> str:
    """``attempts:Q`` — job field: how many times stage Q leased the job."""
    return f"{ATTEMPTS_PREFIX}{queue}"


def stalls_field(queue: str) -> str:
    """``stalls:Q`` — job field: how many times the job lost its worker in stage Q to a dead
    node or supervisor (a stall: put back without costing an attempt, up to a limit)."""
    return f"{STALLS_PREFIX}{queue}"


def errors_field(queue: str) -> str:
    """``errors:Q`` — job field: JSON list of every failure in stage Q, oldest first."""
    return f"{ERRORS_PREFIX}{queue}"


def progress_field(queue: str) -> str:
    """``progress:Q`` — job field: JSON ``{"fraction", "message", "at"}``, the last progress
    its function reported in stage Q."""
    return f"{PROGRESS_PREFIX}{queue}"


def lease_field(queue: str) -> str:
    """``lease:Q`` — job field: JSON string, the lock token of the lease holding it in stage Q
    (absent when no lease holds it)."""
    return f"{LEASE_PREFIX}{queue}"


def waiting_since_field(queue: str) -> str:
    """``waiting-since:Q`` — job field: JSON number, the server's time (Unix ms) when the job
    last entered stage Q's waiting list (every procflow script that pushes it there writes
    it; completing stage Q removes it). Absent for a job created on Q (its UUIDv7 id's time
    is when it entered) and for one the TypeScript library pushed."""
    return f"{WAITING_SINCE_PREFIX}{queue}"


def children_pending_field(parent_queue: str) -> str:
    """``children:PARENT:pending`` — parent job field: children not yet done."""
    return f"children:{parent_queue}:pending"


def children_failed_field(parent_queue: str) -> str:
    """``children:PARENT:failed`` — parent job field: keys of the children that failed."""
    return f"children:{parent_queue}:failed"


def failed_children(job: Mapping[str, Any]) -> list[str]:
    """The keys of a decoded job's failed children, from every ``children:P:failed`` field
    (empty for a job whose children all succeeded, or that has none)."""
    return [
        key
        for field, value in job.items()
        if field.startswith("children:") and field.endswith(":failed") and isinstance(value, list)
        for key in value
        if isinstance(key, str)
    ]


@dataclass(frozen=True)
class StageKeys:
    """Every name one stage (queue) touches, computed once."""

    queue: str
    flow: str
    waiting: str
    processing: str
    delayed: str
    failed: str
    parked: str
    paused: str
    lock_prefix: str
    job_prefix: str
    attempts_field: str
    stalls_field: str
    errors_field: str
    lease_field: str
    progress_field: str
    waiting_since_field: str
    #: a parent stage's fields of its jobs: ``children:Q:params``, ``children:Q:jobs``,
    #: ``children:Q:failed`` (named for every stage; only a parent's jobs have them)
    children_params_field: str
    children_jobs_field: str
    children_failed_field: str
    queue_json: str
    done_channel: str
    progress_channel: str
    stats: str
    finished: str
    #: for a child queue: its parent stage's waiting list, parked set and pending field
    parent_waiting: str = ""
    parent_parked: str = ""
    parent_pending_field: str = ""

    @classmethod
    def build(cls, flow: str, queue: str, parent_queue: str | None = None) -> StageKeys:
        """Names for stage ``queue`` of flow ``flow``; a child queue (``PARENT:CHILD``) keeps
        its jobs under ``job:PARENT:CHILD:`` as the TypeScript library does."""
        extra = {}
        if parent_queue is not None:
            extra = {
                "parent_waiting": waiting(parent_queue),
                "parent_parked": parked(parent_queue),
                "parent_pending_field": children_pending_field(parent_queue),
            }
        return cls(
            queue=queue,
            flow=flow,
            waiting=waiting(queue),
            processing=processing(queue),
            delayed=delayed(queue),
            failed=failed(queue),
            parked=parked(queue),
            paused=paused(queue),
            lock_prefix=lock_prefix(queue),
            job_prefix=job_prefix(queue if parent_queue is not None else flow),
            attempts_field=attempts_field(queue),
            stalls_field=stalls_field(queue),
            errors_field=errors_field(queue),
            lease_field=lease_field(queue),
            progress_field=progress_field(queue),
            waiting_since_field=waiting_since_field(queue),
            children_params_field=children_params_field(queue),
            children_jobs_field=children_jobs_field(queue),
            children_failed_field=children_failed_field(queue),
            queue_json=json.dumps(queue, ensure_ascii=False),
            done_channel=done_channel(flow),
            progress_channel=progress_channel(flow),
            stats=stats(flow, queue),
            finished=finished(flow, queue),
            **extra,
        )

    def job(self, job_id: str) -> str:
        return self.job_prefix + job_id

    def lock(self, job_id: str) -> str:
        return self.lock_prefix + job_id


# --- lock values: who holds a lease ---------------------------------------------------

_NODE_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def node_id(value: str | None = None) -> str:
    """This machine's name in lock values: ``value``, else ``$PROCFLOW_NODE_ID``, else the
    host name, made safe (``safe_node_id``)."""
    return safe_node_id(value or os.environ.get("PROCFLOW_NODE_ID") or socket.gethostname() or "")


def safe_node_id(value: str) -> str:
    """A node's name as lock values carry it: letters, digits, ``.``, ``_`` and ``-``
    (anything else becomes ``_``), at most 60 characters."""
    return _NODE_CHARS.sub("_", value)[:60] or "node"


@dataclass(frozen=True)
class Holder:
    """A supervisor, as named in lock values: ``NODE|PID|START`` (START: the process's
    creation time, so a reused pid is told apart)."""

    node: str
    pid: int
    started: float

    def __str__(self) -> str:
        return f"{self.node}|{self.pid}|{self.started:.2f}"

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        parts = text.split("|")
        if len(parts) != 3:
            return None
        try:
            return cls(parts[0], int(parts[1]), float(parts[2]))
        except ValueError:
            return None


@dataclass(frozen=True)
class LeaseToken:
    """The value of ``lock:Q:ID``: ``NODE|SUPERVISOR_PID|START|WORKER_PID|N``, N counting the
    leases of that worker process."""

    holder: Holder
    worker_pid: int
    n: int

    def __str__(self) -> str:
        return f"{self.holder}|{self.worker_pid}|{self.n}"

    @classmethod
    def parse(cls, text: str) -> LeaseToken | None:
        """The token in a lock value, or None for a value procflow did not write (the
        TypeScript library's, or another format)."""
        head, sep, tail = text.rpartition("|")
        holder_text, sep2, worker = head.rpartition("|")
        holder = Holder.parse(holder_text) if sep and sep2 else None
        if holder is None:
            return None
        try:
            return cls(holder, int(worker), int(tail))
        except ValueError:
            return None


def token_at(token: str, offset: int) -> str:
    """The lease token ``offset`` places after ``token`` in its worker's series (a token ends
    with the number of the worker's lease): how one lease call for several jobs names them."""
    prefix, _, n = token.rpartition("|")
    return f"{prefix}|{int(n) + offset}"


class TokenSeries:
    """A worker process's lease tokens, made on the hot path: one string format per job."""

    __slots__ = ("count", "prefix")

    def __init__(self, holder: str, worker_pid: int) -> None:
        self.prefix = f"{holder}|{worker_pid}|"
        self.count = 0

    def next(self, count: int = 1) -> str:
        """A new token; ``count`` > 1 reserves that many (the first is returned, the others
        are ``token_at(first, i)``)."""
        self.count += count
        return f"{self.prefix}{self.count - count + 1}"
