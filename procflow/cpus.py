"""The cores this process may really use, pinning to one of them, and thread limits.

``os.cpu_count()`` counts the machine's cores, not the ones a process gets: a CPU affinity
mask (``taskset``, a cpuset, Kubernetes' static CPU manager) or a cgroup CPU quota (a
container's ``--cpus``, a Kubernetes CPU limit) allows fewer. ``usable_cpus`` counts those.

Each worker process is set up from a ``WorkerSetup`` before the user's function arrives
(``setup_process``): pinned to one allowed core when asked, and the thread-count variables
of the native math libraries set (OpenMP, OpenBLAS, MKL, Accelerate, numexpr), which those
libraries read once, when they are loaded. A library already loaded by then — the
supervisor imported numpy before it forked — is limited at run time with threadpoolctl
where that is installed (``limit_loaded_pools``).

Every file read here is read under a ``root`` directory (``/`` by default), so the parsers
run on fixture trees in the tests; anything missing or unreadable means "no limit".
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import Any

from .settings import WorkerOptions

__all__ = [
    "THREAD_VARIABLES",
    "WorkerSetup",
    "allowed_cpus",
    "cgroup_cpu_limit",
    "limit_loaded_pools",
    "setup_process",
    "thread_environment",
    "usable_cpus",
]

#: the variables that set how many threads a native math library starts, in the order set
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
#: the variable every library above but Accelerate falls back to when its own is unset
_GENERIC = "OMP_NUM_THREADS"
#: the Python modules that load those libraries; with none of them imported, none is loaded
_POOL_MODULES = ("numpy", "scipy", "torch", "numexpr", "sklearn", "tensorflow", "jax")
#: threadpoolctl's ``internal_api`` of a loaded library → the variable whose value limits it
_POOL_VARIABLES = {
    "openblas": "OPENBLAS_NUM_THREADS",
    "mkl": "MKL_NUM_THREADS",
    "openmp": "OMP_NUM_THREADS",
    "blis": "OMP_NUM_THREADS",
}


# -- counting ------------------------------------------------------------------------------


def allowed_cpus() -> list[int]:
    """The cores this process may run on (its affinity mask), sorted. Where the platform
    has no affinity call (macOS), every core the machine has."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is not None:
        with contextlib.suppress(OSError):
            cpus = sorted(getaffinity(0))
            if cpus:
                return cpus
    return list(range(os.cpu_count() or 1))


def usable_cpus(root: str | os.PathLike[str] = "/") -> int:
    """The cores this process may really use: its affinity mask, capped by the cgroup CPU
    quota (a fractional quota rounded up: 1.5 CPUs → 2), never below 1."""
    count = len(allowed_cpus())
    limit = _cgroup_limit(Path(root))
    if limit is not None:
        count = min(count, math.ceil(limit))
    return max(1, count)


def cgroup_cpu_limit(root: str | os.PathLike[str] = "/") -> float | None:
    """The CPUs the cgroup quota allows this process (``1.5``), or None without a quota:
    the smallest ``cpu.max`` (cgroup v2) or ``cpu.cfs_quota_us / cpu.cfs_period_us``
    (cgroup v1) from the process's own cgroup up to the hierarchy's root."""
    limit = _cgroup_limit(Path(root))
    return None if limit is None else float(limit)


def _cgroup_limit(root: Path) -> Fraction | None:
    groups = _read_lines(root / "proc/self/cgroup")
    mounts = [m for m in (_mount(line) for line in _read_lines(root / "proc/self/mountinfo")) if m]
    found: list[Fraction] = []
    for line in groups:
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":  # cgroup v2
            for mount_root, point, _ in (m for m in mounts if m[2] is None):
                found += _walk(root, point, mount_root, path, _v2_limit)
        elif "cpu" in controllers.split(","):  # cgroup v1, the cpu controller's hierarchy
            for mount_root, point, _ in (m for m in mounts if m[2] and "cpu" in m[2]):
                found += _walk(root, point, mount_root, path, _v1_limit)
    return min(found, default=None)


def _mount(line: str) -> tuple[str, str, frozenset[str] | None] | None:
    """``(root, mount point, v1 controllers or None for v2)`` of a cgroup mount line of
    /proc/self/mountinfo; None for any other line."""
    head, sep, tail = line.partition(" - ")
    fields, extra = head.split(), tail.split()
    if not sep or len(fields) < 5 or len(extra) < 3:
        return None
    mount_root, point = _unescape(fields[3]), _unescape(fields[4])
    if extra[0] == "cgroup2":
        return mount_root, point, None
    if extra[0] == "cgroup":
        return mount_root, point, frozenset(extra[2].split(","))
    return None


def _unescape(text: str) -> str:
    """mountinfo writes a space, tab, newline and backslash as octal escapes (``\\040``)."""
    for code in ("040", "011", "012", "134"):
        text = text.replace(f"\\{code}", chr(int(code, 8)))
    return text


def _walk(
    root: Path, point: str, mount_root: str, path: str, read: Callable[[Path], Fraction | None]
) -> Iterator[Fraction]:
    """The limits ``read`` finds in the cgroup's directory and each one above it, up to
    the mount point."""
    group = PurePosixPath(path)
    base = PurePosixPath(mount_root)
    if ".." not in group.parts and (group == base or base in group.parents):
        relative = group.relative_to(base)
    else:  # a cgroup outside what is mounted (no cgroup namespace): the mount's own root
        relative = PurePosixPath(".")
    top = root / point.lstrip("/")
    directory = top / relative
    while True:
        limit = read(directory)
        if limit is not None:
            yield limit
        if directory == top or top not in directory.parents:
            return
        directory = directory.parent


def _v2_limit(directory: Path) -> Fraction | None:
    """``cpu.max``: ``QUOTA PERIOD`` in microseconds, ``max`` meaning no limit."""
    words = _read_text(directory / "cpu.max").split()
    if len(words) != 2 or words[0] == "max":
        return None
    return _ratio(words[0], words[1])


def _v1_limit(directory: Path) -> Fraction | None:
    """``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, a quota of -1 meaning no limit."""
    quota = _read_text(directory / "cpu.cfs_quota_us").strip()
    if not quota or quota.startswith("-"):
        return None
    return _ratio(quota, _read_text(directory / "cpu.cfs_period_us").strip())


def _ratio(quota: str, period: str) -> Fraction | None:
    """``quota / period`` of two whole numbers of microseconds, None for anything else."""
    if not (quota.isascii() and quota.isdigit() and period.isascii() and period.isdigit()):
        return None
    try:
        whole, per = int(quota), int(period)
    except ValueError:  # more digits than int() takes
        return None
    return Fraction(whole, per) if whole > 0 and per > 0 else None


def _read_text(path: Path) -> str:
    """The file's text; empty when it is missing or cannot be read."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except (OSError, ValueError):
        return ""


def _read_lines(path: Path) -> list[str]:
    return _read_text(path).splitlines()


# -- setting up a worker process --------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker process sets up before the user's function arrives: ``threads`` for
    the thread variables, ``pin`` to one allowed core chosen by ``slot`` (the worker's index
    among all of the flow's workers, round-robin over ``allowed_cpus()``)."""

    threads: int = 1
    pin: bool = False
    slot: int = 0

    @classmethod
    def of(cls, options: WorkerOptions, slot: int) -> WorkerSetup:
        return cls(threads=options.threads_per_worker, pin=options.pin, slot=slot)


def thread_environment(threads: int, environ: Mapping[str, str]) -> dict[str, str]:
    """The thread variables to set: every one of THREAD_VARIABLES that ``environ`` does
    not set (a variable set to an empty value counts as unset). An unset one gets
    ``threads`` — or, when ``OMP_NUM_THREADS`` is set, its value, since the libraries fall
    back to that variable and procflow's own number must not outrank the user's."""
    generic = environ.get(_GENERIC, "").strip()
    first = generic.split(",")[0].strip()
    value = first if first.isdigit() and int(first) > 0 else str(threads)
    return {name: value for name in THREAD_VARIABLES if not environ.get(name, "").strip()}


def setup_process(
    setup: WorkerSetup, environ: MutableMapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """Pin this process (if asked) and set the thread variables in ``environ`` (the
    process's own by default). Returns ``(level, message)`` notes for the log."""
    env = os.environ if environ is None else environ
    notes: list[tuple[str, str]] = []
    if setup.pin:
        notes.append(_pin(setup.slot))
    values = thread_environment(setup.threads, env)
    env.update(values)
    if values:
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        notes.append(("DEBUG", f"thread variables set: {shown}"))
    return notes


def _pin(slot: int) -> tuple[str, str]:
    setaffinity = getattr(os, "sched_setaffinity", None)
    if setaffinity is None:
        return "WARNING", f"pin: {sys.platform} cannot pin a process; running unpinned"
    cpus = allowed_cpus()
    cpu = cpus[slot % len(cpus)]
    try:
        setaffinity(0, {cpu})
    except OSError as exc:
        return "WARNING", f"pin: could not pin to core {cpu}: {exc}; running unpinned"
    return "DEBUG", f"pinned to core {cpu}"


def limit_loaded_pools(environ: Mapping[str, str] | None = None) -> str | None:
    """Limit the thread pools of native libraries that were loaded before the thread
    variables were set (inherited from the supervisor through ``fork``) to the values those
    variables now hold, never raising a pool above its size. Uses threadpoolctl, an
    optional dependency; without it, returns a note when numpy is loaded already (its pool
    keeps the size it was loaded with)."""
    if not any(name in sys.modules for name in _POOL_MODULES):
        return None  # no such library is loaded: the variables are in time for all of them
    env = os.environ if environ is None else environ
    limits: dict[str, int] = {}
    for api, name in _POOL_VARIABLES.items():
        value = env.get(name, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            limits[api] = int(value)
    try:
        # optional: imported only where installed, and only in a worker process
        threadpoolctl: Any = importlib.import_module("threadpoolctl")
    except ImportError:
        return (
            "numpy (or another math library) was loaded before this worker set its thread "
            "variables (the supervisor imported it): it keeps the thread count it was "
            "loaded with; install threadpoolctl so procflow can limit it, or set "
            "OMP_NUM_THREADS before starting the supervisor"
        )
    wanted = [  # lowered only, as a library caps its variable at the cores when it loads
        {
            "filepath": lib["filepath"],
            "prefix": lib["prefix"],
            "num_threads": min(limits[api], lib.get("num_threads") or limits[api]),
        }
        for lib in threadpoolctl.threadpool_info()
        if (api := lib.get("internal_api")) in limits
    ]
    if wanted:
        threadpoolctl.threadpool_limits(limits=wanted)
    return None
