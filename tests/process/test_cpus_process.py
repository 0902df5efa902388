"""Cores, pinning and thread counts in real processes: ``taskset``, a cgroup of the test's
own, a supervisor started as operators do, and numpy's BLAS seen through threadpoolctl."""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from procflow import Flow, QueueSpec, Supervisor
from procflow.cpus import THREAD_VARIABLES, allowed_cpus
from tests.conftest import wait_until
from tests.process.test_cli import Output

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("no_leaks")

#: what a child prints: the cores it may use, by procflow's count
REPORT = (
    "from procflow.cpus import allowed_cpus, cgroup_cpu_limit, usable_cpus; "
    "print(usable_cpus(), cgroup_cpu_limit(), allowed_cpus())"
)
#: what a worker function (or a test child) reports about numpy's BLAS
BLAS_SOURCE = """
import os

THREAD_VARIABLES = {names!r}


def blas_threads():
    import threadpoolctl

    return [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]


def report(job):
    import numpy  # loaded in the worker, unless the supervisor did it already

    numpy.ones((4, 4)) @ numpy.ones((4, 4))
    return {{
        "blas": blas_threads(),
        "env": {{name: os.environ.get(name) for name in THREAD_VARIABLES}},
        "pid": os.getpid(),
    }}
"""


def taskset() -> str:
    path = shutil.which("taskset")
    if not path:
        pytest.fail(
            "taskset is not installed (it is part of util-linux: apt-get install util-linux)"
        )
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any thread variable (a user who set none), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@pytest.fixture
def no_thread_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def write_module(directory: Path, name: str, preload_numpy: bool) -> Path:
    """A module with ``report(job)``; with ``preload_numpy`` it imports numpy when it is
    imported, and notes what OPENBLAS_NUM_THREADS was then (``AT_IMPORT``)."""
    head = ""
    if preload_numpy:
        head = (
            "import os\nAT_IMPORT = os.environ.get('OPENBLAS_NUM_THREADS')\n"
            "import numpy  # noqa: E402\n"
        )
    source = head + BLAS_SOURCE.format(names=THREAD_VARIABLES)
    if preload_numpy:
        source += textwrap.dedent(
            """
            def report_import(job):
                return {**report(job), "at_import": AT_IMPORT}
            """
        )
    path = directory / f"{name}.py"
    path.write_text(source)
    return path


def default_blas_threads() -> int:
    """The BLAS thread count numpy starts with here when nothing limits it (OpenBLAS caps
    it at the cores it sees)."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import numpy, threadpoolctl; "
            "print([p['num_threads'] for p in threadpoolctl.threadpool_info() "
            "if p['user_api'] == 'blas'][0])",
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout)


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def worker_children(pid: int) -> list[psutil.Process]:
    """The supervisor's worker processes (named by setproctitle)."""
    found = []
    for child in psutil.Process(pid).children():
        with contextlib.suppress(psutil.Error):
            if "procflow: worker" in " ".join(child.cmdline()):
                found.append(child)
    return found


# -- taskset ---------------------------------------------------------------------------------


def test_a_child_under_taskset_sees_one_usable_core() -> None:
    out = subprocess.run(
        [taskset(), "-c", "0", sys.executable, "-c", REPORT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    usable, _, allowed = out.stdout.split(" ", 2)
    assert (usable, allowed.strip()) == ("1", "[0]"), out.stdout
    free = subprocess.run(
        [sys.executable, "-c", REPORT], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert free.stdout.split(" ", 2)[2].strip() == str(allowed_cpus())


def test_workers_auto_under_taskset_starts_one_worker(redis_url: str, tmp_path: Path) -> None:
    app = tmp_path / "auto_app.py"
    app.write_text(
        textwrap.dedent(
            """
            from procflow import Flow, QueueSpec

            def work(job):
                return {}

            flow = Flow("cpusauto", [QueueSpec("w")])
            flow.create_workers("w", work, count=5, block_timeout=1)
            """
        )
    )
    proc = subprocess.Popen(
        [
            taskset(),
            "-c",
            "0",
            sys.executable,
            "-m",
            "procflow.supervisor",
            f"{app}:flow",
            "--workers",
            "w=auto",
            "--redis-url",
            redis_url,
        ],
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(proc)
    try:
        wait_until(lambda: output.has("supervisor running"), timeout=30, what="the start line")
        assert output.has("supervisor running 1 worker process(es)"), output.lines
        workers = worker_children(proc.pid)
        assert len(workers) == 1
        assert workers[0].cpu_affinity() == [0]  # inherited from taskset
    finally:
        code = stop(proc)
    assert code == 0, output.text()


# -- a cgroup of the test's own ----------------------------------------------------------------


def _cgroup_mounts() -> list[tuple[str, str, str]]:
    """``(mount point, fstype, super options)`` of every cgroup mount."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        head, _, tail = line.partition(" - ")
        fields, extra = head.split(), tail.split()
        if len(fields) >= 5 and len(extra) >= 3 and extra[0] in ("cgroup", "cgroup2"):
            mounts.append((fields[4], extra[0], extra[2]))
    return mounts


def _v2_parent() -> tuple[Path | None, str]:
    """Where this test may make a v2 cgroup with the cpu controller, or why not."""
    mounts = _cgroup_mounts()
    if not any(m[:2] == ("/sys/fs/cgroup", "cgroup2") for m in mounts):
        v1 = sorted({m[0] for m in mounts if m[1] == "cgroup"})
        v2 = [
            f"{m[0]} (controllers: {_read(Path(m[0]) / 'cgroup.controllers').strip() or 'none'})"
            for m in mounts
            if m[1] == "cgroup2"
        ]
        return None, (
            "cgroup v2 is not mounted at /sys/fs/cgroup; "
            f"cgroup v1 hierarchies: {', '.join(v1) or 'none'}; "
            f"cgroup v2 hierarchies: {', '.join(v2) or 'none'}"
        )
    parent = Path("/sys/fs/cgroup")
    if os.geteuid() != 0:
        return None, "not root: cannot make a cgroup"
    if not os.access(parent, os.W_OK):
        return None, f"{parent} is not writable"
    enabled = _read(parent / "cgroup.subtree_control").split()
    if "cpu" not in enabled:
        return None, (
            f"the cpu controller is not enabled in {parent}/cgroup.subtree_control "
            f"({' '.join(enabled) or 'empty'}; available: "
            f"{_read(parent / 'cgroup.controllers').strip() or 'none'})"
        )
    return parent, ""


def _v1_cpu_mount() -> tuple[Path | None, str]:
    for point, kind, options in _cgroup_mounts():
        if kind == "cgroup" and "cpu" in options.split(","):
            path = Path(point)
            if os.geteuid() != 0 or not os.access(path, os.W_OK):
                return None, f"the cgroup v1 cpu hierarchy at {path} is not writable"
            return path, ""
    return None, "no cgroup v1 cpu hierarchy is mounted"


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@contextlib.contextmanager
def own_cgroup(parent: Path, limits: dict[str, str]) -> Iterator[Path]:
    """A child cgroup of ``parent`` with ``limits`` written, removed afterwards."""
    path = parent / f"procflow-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot make a cgroup under {parent}: {exc}")
    try:
        for name, value in limits.items():
            (path / name).write_text(value)
        yield path
    finally:
        wait_until(lambda: _rmdir(path), timeout=10, what=f"removing {path}")


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:  # EBUSY while the moved process is still being reaped
        return False
    return True


def report_inside(cgroup: Path) -> str:
    """Start a child, move it into ``cgroup``, then let it report."""
    child = subprocess.Popen(
        [sys.executable, "-c", f"import sys; sys.stdin.readline(); {REPORT}"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        (cgroup / "cgroup.procs").write_text(str(child.pid))
        out, _ = child.communicate("go\n", timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return out


def test_inside_a_v2_cgroup_with_half_a_cpu_usable_cpus_is_one() -> None:
    parent, why = _v2_parent()
    if parent is None:
        print(f"cgroup v2 test skipped: {why}")
        pytest.skip(why)
    with own_cgroup(parent, {"cpu.max": "50000 100000"}) as cgroup:
        out = report_inside(cgroup)
    assert out.split(" ", 2)[:2] == ["1", "0.5"], out


def test_inside_a_v1_cpu_cgroup_with_half_a_cpu_usable_cpus_is_one() -> None:
    parent, why = _v1_cpu_mount()
    if parent is None:
        print(f"cgroup v1 test skipped: {why}")
        pytest.skip(why)
    limits = {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "50000"}
    with own_cgroup(parent, limits) as cgroup:
        out = report_inside(cgroup)
    assert out.split(" ", 2)[:2] == ["1", "0.5"], out


# -- pinning ---------------------------------------------------------------------------------


def affinity(job: dict[str, Any]) -> dict[str, Any]:
    return {"cpus": sorted(os.sched_getaffinity(0)), "pid": os.getpid()}


def test_pinned_workers_go_round_robin_over_the_allowed_cores_in_flow_order(
    redis_url: str,
) -> None:
    flow = Flow("pinned", [QueueSpec("a"), QueueSpec("b"), QueueSpec("c")], redis_url=redis_url)
    flow.create_workers("a", affinity, count=2, pin=True)
    flow.create_workers("b", affinity, count=1, pin=True)  # slot 2 of the flow, index 0 here
    flow.create_workers("c", affinity, count=1)  # not pinned
    allowed = allowed_cpus()
    with Supervisor(flow) as sup:
        expected = {h.name: [allowed[slot % len(allowed)]] for slot, h in enumerate(flow.handles)}
        expected["c#0"] = allowed
        seen = {h.name: psutil.Process(h.pid).cpu_affinity() for h in flow.handles if h.pid}
        assert seen == expected
        job = sup.wait([flow.create_job({"n": 1})], timeout=30)[0]  # the first queue: a
    assert job["cpus"] in ([allowed[0]], [allowed[1 % len(allowed)]])  # a#0 or a#1 ran it


def test_the_pin_flag_pins_every_worker(redis_url: str, tmp_path: Path) -> None:
    app = tmp_path / "pin_app.py"
    app.write_text(
        textwrap.dedent(
            """
            from procflow import Flow, QueueSpec

            def work(job):
                return {}

            flow = Flow("pinflag", [QueueSpec("w"), QueueSpec("v")])
            flow.create_workers("w", work, count=2, block_timeout=1)
            flow.create_workers("v", work, count=1, block_timeout=1)
            """
        )
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "procflow.supervisor",
            f"{app}:flow",
            "--pin",
            "--redis-url",
            redis_url,
        ],
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(proc)
    allowed = allowed_cpus()
    try:
        wait_until(lambda: output.has("supervisor running"), timeout=30, what="the start line")
        workers = worker_children(proc.pid)
        by_name = {
            next(
                w for w in ("w#0", "w#1", "v#0") if f"worker {w} " in " ".join(p.cmdline())
            ): p.cpu_affinity()
            for p in workers
        }
        assert by_name == {
            "w#0": [allowed[0]],
            "w#1": [allowed[1 % len(allowed)]],
            "v#0": [allowed[2 % len(allowed)]],
        }
    finally:
        code = stop(proc)
    assert code == 0, output.text()


# -- thread counts ---------------------------------------------------------------------------


@pytest.fixture
def blas_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Makes a module of report functions, importable here and in spawned workers."""
    names: list[str] = []
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(preload_numpy: bool) -> Any:
        name = f"blas_{uuid.uuid4().hex[:8]}"
        write_module(tmp_path, name, preload_numpy)
        names.append(name)
        return importlib.import_module(name)

    yield make
    for name in names:
        sys.modules.pop(name, None)


@pytest.mark.usefixtures("no_thread_variables")
@pytest.mark.parametrize("threads", [None, 1, 2])
def test_threads_per_worker_sets_the_variables_and_numpys_blas(
    redis_url: str, blas_module: Any, threads: int | None
) -> None:
    lazy = blas_module(preload_numpy=False)
    cap = default_blas_threads()
    flow = Flow("threads", [QueueSpec("w")], redis_url=redis_url)
    if threads is None:
        flow.create_workers("w", lazy.report, count=1)
    else:
        flow.create_workers("w", lazy.report, count=1, threads_per_worker=threads)
    with Supervisor(flow) as sup:
        job = sup.wait([flow.create_job({"n": 1})], timeout=60)[0]
    want = threads or 1  # the default is 1
    assert job["env"] == dict.fromkeys(THREAD_VARIABLES, str(want))
    assert job["blas"] == [min(want, cap)]
    assert not any(name in os.environ for name in THREAD_VARIABLES)  # the supervisor's


@pytest.mark.usefixtures("no_thread_variables")
def test_a_users_omp_num_threads_stays_and_the_others_follow_it(
    redis_url: str, blas_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    lazy = blas_module(preload_numpy=False)
    cap = default_blas_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # exported before the supervisor starts
    flow = Flow("userthreads", [QueueSpec("w")], redis_url=redis_url)
    flow.create_workers("w", lazy.report, count=1, threads_per_worker=1)
    with Supervisor(flow) as sup:
        job = sup.wait([flow.create_job({"n": 1})], timeout=60)[0]
    assert job["env"] == dict.fromkeys(THREAD_VARIABLES, "3")
    assert job["blas"] == [min(3, cap)]  # OpenBLAS caps it at the cores it sees
    assert os.environ["OMP_NUM_THREADS"] == "3"  # the supervisor's own is untouched
    assert "OPENBLAS_NUM_THREADS" not in os.environ


@pytest.mark.usefixtures("no_thread_variables")
def test_under_spawn_the_variables_are_set_before_the_users_module_is_imported(
    redis_url: str, blas_module: Any
) -> None:
    module = blas_module(preload_numpy=True)
    flow = Flow("spawnthreads", [QueueSpec("w")], redis_url=redis_url)
    flow.create_workers("w", module.report_import, count=1)
    with Supervisor(flow, start_method="spawn") as sup:
        job = sup.wait([flow.create_job({"n": 1})], timeout=60)[0]
    assert job["at_import"] == "1"  # unpickling the function imported the module: after
    assert job["blas"] == [1]


@pytest.mark.parametrize(("environment", "expected"), [({}, "1"), ({"OMP_NUM_THREADS": "3"}, "3")])
def test_a_supervisor_that_loaded_numpy_before_forking_still_limits_its_workers(
    redis_url: str, tmp_path: Path, environment: dict[str, str], expected: str
) -> None:
    # the app imports numpy at its top: the supervisor loads OpenBLAS before any fork, so
    # the variables come too late for it in the workers; threadpoolctl limits it there
    write_module(tmp_path, "numpy_app_lib", preload_numpy=True)
    app = tmp_path / "numpy_app.py"
    app.write_text(
        textwrap.dedent(
            """
            from numpy_app_lib import report
            from procflow import Flow, QueueSpec

            flow = Flow("numpyapp", [QueueSpec("w")])
            flow.create_workers("w", report, count=1, block_timeout=1)
            """
        )
    )
    cap = default_blas_threads()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "procflow.supervisor",
            f"{app}:flow",
            "--threads-per-worker",
            "1",
            "--redis-url",
            redis_url,
        ],
        cwd=ROOT,
        env=clean_env(**environment),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(proc)
    try:
        wait_until(lambda: output.has("supervisor running"), timeout=30, what="the start line")
        flow = Flow("numpyapp", [QueueSpec("w")], redis_url=redis_url)
        job = flow.wait([flow.create_job({"n": 1})], timeout=60)[0]
        flow.disconnect()
    finally:
        code = stop(proc)
    assert code == 0, output.text()
    assert job["env"] == dict.fromkeys(THREAD_VARIABLES, expected), output.text()
    assert job["blas"] == [min(int(expected), cap)], output.text()


def test_the_variables_must_be_set_before_numpy_is_imported() -> None:
    """Why the order matters: OpenBLAS reads its variable once, when numpy loads it."""
    script = (
        "import os, sys, threadpoolctl\n"
        "if sys.argv[1] == 'before': os.environ['OPENBLAS_NUM_THREADS'] = '1'\n"
        "import numpy\n"
        "if sys.argv[1] == 'after': os.environ['OPENBLAS_NUM_THREADS'] = '1'\n"
        "print([p['num_threads'] for p in threadpoolctl.threadpool_info()"
        " if p['user_api'] == 'blas'][0])\n"
    )
    cap = default_blas_threads()

    def blas(when: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", script, when],
            env=clean_env(),
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout)

    assert blas("before") == 1
    assert blas("after") == cap  # too late: what the library would use anyway
