"""Counting usable cores from fixture trees (cgroup v1 and v2), the thread variables, and
the options and flags that carry pinning and thread counts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from procflow import ConfigurationError, Flow, QueueSpec, WorkerOptions, cpus
from procflow.cpus import (
    THREAD_VARIABLES,
    WorkerSetup,
    allowed_cpus,
    cgroup_cpu_limit,
    limit_loaded_pools,
    setup_process,
    thread_environment,
    usable_cpus,
)
from procflow.supervisor import __main__ as supervisor_cli

V2_MOUNT = (
    "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 "
    "rw,nsdelegate"
)
V1_CPU_MOUNT = (
    "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct"
)
V1_CPUSET_MOUNT = "34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset"
ROOT_MOUNT = "23 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw"


def write(root: Path, relative: str, content: str | bytes) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


@pytest.fixture
def eight_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """An affinity mask of 8 cores, so a quota is what limits."""
    monkeypatch.setattr(cpus, "allowed_cpus", lambda: list(range(8)))


def v2(tmp_path: Path, path: str = "/app") -> Path:
    write(tmp_path, "proc/self/cgroup", f"0::{path}\n")
    write(tmp_path, "proc/self/mountinfo", f"{ROOT_MOUNT}\n{V2_MOUNT}\n")
    return tmp_path


def v1(tmp_path: Path, path: str = "/job", mount: str = V1_CPU_MOUNT) -> Path:
    write(
        tmp_path,
        "proc/self/cgroup",
        f"12:cpuset:/\n4:cpu,cpuacct:{path}\n3:memory:{path}\n1:name=systemd:/\n",
    )
    write(tmp_path, "proc/self/mountinfo", f"{ROOT_MOUNT}\n{V1_CPUSET_MOUNT}\n{mount}\n")
    return tmp_path


# -- cgroup v2 ---------------------------------------------------------------------------


@pytest.mark.usefixtures("eight_cores")
def test_v2_quota_is_the_limit_and_a_fraction_rounds_up(tmp_path: Path) -> None:
    root = v2(tmp_path)
    write(root, "sys/fs/cgroup/app/cpu.max", "150000 100000\n")
    assert cgroup_cpu_limit(root) == 1.5
    assert usable_cpus(root) == 2


@pytest.mark.usefixtures("eight_cores")
def test_v2_whole_quota_is_not_rounded_past_itself(tmp_path: Path) -> None:
    root = v2(tmp_path)
    write(root, "sys/fs/cgroup/app/cpu.max", "300000 100000\n")
    assert usable_cpus(root) == 3


@pytest.mark.usefixtures("eight_cores")
def test_v2_max_means_no_limit(tmp_path: Path) -> None:
    root = v2(tmp_path)
    write(root, "sys/fs/cgroup/app/cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(root) is None
    assert usable_cpus(root) == 8


@pytest.mark.usefixtures("eight_cores")
def test_v2_nested_limits_the_smallest_wins_wherever_it_is(tmp_path: Path) -> None:
    root = v2(tmp_path, "/outer/middle/inner")
    write(root, "sys/fs/cgroup/cpu.max", "max 100000\n")  # the root has none; ignored anyway
    write(root, "sys/fs/cgroup/outer/cpu.max", "250000 100000\n")  # 2.5, the smallest
    write(root, "sys/fs/cgroup/outer/middle/cpu.max", "max 100000\n")
    write(root, "sys/fs/cgroup/outer/middle/inner/cpu.max", "600000 100000\n")
    assert cgroup_cpu_limit(root) == 2.5
    assert usable_cpus(root) == 3
    write(root, "sys/fs/cgroup/outer/middle/inner/cpu.max", "50000 100000\n")  # now this one
    assert cgroup_cpu_limit(root) == 0.5
    assert usable_cpus(root) == 1


@pytest.mark.usefixtures("eight_cores")
def test_v2_a_tiny_quota_still_gives_one_core(tmp_path: Path) -> None:
    root = v2(tmp_path)
    write(root, "sys/fs/cgroup/app/cpu.max", "1000 100000\n")
    assert cgroup_cpu_limit(root) == 0.01
    assert usable_cpus(root) == 1


@pytest.mark.usefixtures("eight_cores")
def test_v2_in_a_cgroup_namespace_the_mount_is_the_cgroup(tmp_path: Path) -> None:
    # a container: /proc/self/cgroup says "/", the mount shows the container's own cgroup
    root = v2(tmp_path, "/")
    write(root, "sys/fs/cgroup/cpu.max", "200000 100000\n")
    assert usable_cpus(root) == 2


@pytest.mark.usefixtures("eight_cores")
def test_v2_a_path_outside_the_mount_never_escapes_it(tmp_path: Path) -> None:
    root = v2(tmp_path, "/../../etc")
    write(root, "sys/fs/cgroup/cpu.max", "400000 100000\n")
    write(root, "etc/cpu.max", "100000 100000\n")  # must not be read
    assert usable_cpus(root) == 4


@pytest.mark.usefixtures("eight_cores")
def test_v2_mount_point_with_an_escaped_space(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/a\n")
    write(
        tmp_path,
        "proc/self/mountinfo",
        "30 23 0:26 / /my\\040cgroups rw - cgroup2 cgroup2 rw\n",
    )
    write(tmp_path, "my cgroups/a/cpu.max", "100000 100000\n")
    assert usable_cpus(tmp_path) == 1


# -- cgroup v1 ---------------------------------------------------------------------------


@pytest.mark.usefixtures("eight_cores")
def test_v1_quota_over_period(tmp_path: Path) -> None:
    root = v1(tmp_path)
    write(root, "sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_quota_us", "350000\n")
    write(root, "sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(root) == 3.5
    assert usable_cpus(root) == 4


@pytest.mark.usefixtures("eight_cores")
def test_v1_quota_minus_one_means_no_limit(tmp_path: Path) -> None:
    root = v1(tmp_path)
    write(root, "sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_quota_us", "-1\n")
    write(root, "sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(root) is None
    assert usable_cpus(root) == 8


@pytest.mark.usefixtures("eight_cores")
def test_v1_a_parent_quota_counts_too(tmp_path: Path) -> None:
    root = v1(tmp_path, "/pod/job")
    base = "sys/fs/cgroup/cpu,cpuacct"
    write(root, f"{base}/pod/cpu.cfs_quota_us", "200000")
    write(root, f"{base}/pod/cpu.cfs_period_us", "100000")
    write(root, f"{base}/pod/job/cpu.cfs_quota_us", "-1")
    write(root, f"{base}/pod/job/cpu.cfs_period_us", "100000")
    assert usable_cpus(root) == 2


@pytest.mark.usefixtures("eight_cores")
def test_v1_container_view_mount_root_is_the_cgroup(tmp_path: Path) -> None:
    # docker without a cgroup namespace: the path is /docker/ID and so is the mount's root
    mount = "32 31 0:29 /docker/abc /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu"
    root = v1(tmp_path, "/docker/abc", mount=mount)
    write(root, "sys/fs/cgroup/cpu/cpu.cfs_quota_us", "100000")
    write(root, "sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000")
    assert usable_cpus(root) == 1


@pytest.mark.usefixtures("eight_cores")
def test_hybrid_a_v2_line_without_cpu_max_and_a_v1_quota(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "4:cpu:/\n0::/\n")
    write(
        tmp_path,
        "proc/self/mountinfo",
        "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
    )
    write(tmp_path, "sys/fs/cgroup/unified/cgroup.procs", "1\n")
    write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_quota_us", "150000")
    write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000")
    assert usable_cpus(tmp_path) == 2


# -- missing and garbage -------------------------------------------------------------------


@pytest.mark.usefixtures("eight_cores")
def test_nothing_there_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path) is None
    assert usable_cpus(tmp_path) == 8
    assert usable_cpus(tmp_path / "does-not-exist") == 8


@pytest.mark.usefixtures("eight_cores")
def test_missing_files_mean_no_limit(tmp_path: Path) -> None:
    root = v2(tmp_path)  # no cpu.max anywhere
    assert cgroup_cpu_limit(root) is None
    root = v1(tmp_path)  # no cfs files
    assert cgroup_cpu_limit(root) is None
    write(root, "sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_quota_us", "50000")  # no period
    assert cgroup_cpu_limit(root) is None
    (root / "proc/self/mountinfo").unlink()  # no mount table: nothing to find it by
    write(root, "sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_period_us", "100000")
    assert cgroup_cpu_limit(root) is None


@pytest.mark.usefixtures("eight_cores")
@pytest.mark.parametrize(
    "content",
    [
        "",
        "\n",
        "garbage",
        "max",
        "150000",
        "abc 100000",
        "150000 abc",
        "150000 0",
        "0 100000",
        "-5 100000",
        "1.5 1",
        "150000 100000 7",
        b"\xff\xfe\x00\x01 \x80",
        "9" * 5000 + " 1",  # absurd: 10**4999 CPUs is no limit below the affinity
    ],
)
def test_garbage_cpu_max_is_no_limit_never_a_crash(tmp_path: Path, content: str | bytes) -> None:
    root = v2(tmp_path)
    write(root, "sys/fs/cgroup/app/cpu.max", content)
    assert usable_cpus(root) == 8


@pytest.mark.usefixtures("eight_cores")
@pytest.mark.parametrize(
    ("quota", "period"),
    [("garbage", "100000"), ("50000", "garbage"), ("50000", "0"), ("", ""), ("-2", "100000")],
)
def test_garbage_v1_files_are_no_limit(tmp_path: Path, quota: str, period: str) -> None:
    root = v1(tmp_path)
    write(root, "sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_quota_us", quota)
    write(root, "sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_period_us", period)
    assert cgroup_cpu_limit(root) is None
    assert usable_cpus(root) == 8


@pytest.mark.usefixtures("eight_cores")
@pytest.mark.parametrize(
    ("cgroup", "mountinfo"),
    [
        ("nonsense", V2_MOUNT),
        ("0::relative/path", V2_MOUNT),
        ("::::", V2_MOUNT),
        ("0::/app", "nonsense"),
        ("0::/app", "1 2 3 - cgroup2"),
        ("0::/app", " - - - "),
        ("\x00\x01", "\x00 - \x00"),
    ],
)
def test_garbage_proc_files_are_no_limit(tmp_path: Path, cgroup: str, mountinfo: str) -> None:
    write(tmp_path, "proc/self/cgroup", cgroup)
    write(tmp_path, "proc/self/mountinfo", mountinfo)
    write(tmp_path, "sys/fs/cgroup/app/cpu.max", "100000 100000")
    assert usable_cpus(tmp_path) == 8


@pytest.mark.usefixtures("eight_cores")
def test_a_directory_where_a_file_should_be_is_no_limit(tmp_path: Path) -> None:
    root = v2(tmp_path)
    (root / "sys/fs/cgroup/app/cpu.max").mkdir(parents=True)
    assert usable_cpus(root) == 8


def test_the_affinity_caps_a_larger_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus, "allowed_cpus", lambda: [3])
    root = v2(tmp_path)
    write(root, "sys/fs/cgroup/app/cpu.max", "400000 100000")
    assert usable_cpus(root) == 1


# -- this machine ---------------------------------------------------------------------------


def test_allowed_cpus_is_the_sorted_affinity_mask() -> None:
    if hasattr(os, "sched_getaffinity"):
        assert allowed_cpus() == sorted(os.sched_getaffinity(0))
    else:
        assert allowed_cpus() == list(range(os.cpu_count() or 1))


def test_usable_cpus_here_is_between_one_and_the_affinity() -> None:
    assert 1 <= usable_cpus() <= len(allowed_cpus()) <= (os.cpu_count() or 1)


# -- thread variables ----------------------------------------------------------------------


def test_every_unset_variable_gets_the_count() -> None:
    assert thread_environment(2, {}) == dict.fromkeys(THREAD_VARIABLES, "2")
    assert set(THREAD_VARIABLES) == {
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
        "NUMEXPR_NUM_THREADS",
    }


def test_a_variable_the_user_set_is_left_alone() -> None:
    got = thread_environment(1, {"MKL_NUM_THREADS": "4", "PATH": "/bin"})
    assert "MKL_NUM_THREADS" not in got
    assert got == dict.fromkeys(set(THREAD_VARIABLES) - {"MKL_NUM_THREADS"}, "1")


def test_the_users_omp_num_threads_is_what_the_unset_ones_get() -> None:
    got = thread_environment(1, {"OMP_NUM_THREADS": "3"})
    assert "OMP_NUM_THREADS" not in got
    assert got == dict.fromkeys(set(THREAD_VARIABLES) - {"OMP_NUM_THREADS"}, "3")
    assert thread_environment(1, {"OMP_NUM_THREADS": "4,2"})["OPENBLAS_NUM_THREADS"] == "4"


def test_an_empty_or_unusable_omp_value() -> None:
    assert thread_environment(2, {"OMP_NUM_THREADS": ""}) == dict.fromkeys(THREAD_VARIABLES, "2")
    got = thread_environment(2, {"OMP_NUM_THREADS": "lots"})
    assert "OMP_NUM_THREADS" not in got  # the user's value stays, whatever it is
    assert got["OPENBLAS_NUM_THREADS"] == "2"
    assert thread_environment(2, {"OMP_NUM_THREADS": "0"})["MKL_NUM_THREADS"] == "2"


def test_setup_process_sets_the_variables_and_does_not_pin_unless_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("pinned without being asked")

    monkeypatch.setattr(os, "sched_setaffinity", refuse, raising=False)
    env = {"NUMEXPR_NUM_THREADS": "7"}
    notes = setup_process(WorkerSetup(threads=2), env)
    assert env == {**dict.fromkeys(THREAD_VARIABLES, "2"), "NUMEXPR_NUM_THREADS": "7"}
    assert [level for level, _ in notes] == ["DEBUG"]
    assert setup_process(WorkerSetup(threads=2), env) == []  # all set now: nothing to do


def test_pinning_picks_round_robin_over_the_allowed_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pinned: list[set[int]] = []
    monkeypatch.setattr(cpus, "allowed_cpus", lambda: [2, 5, 7])
    monkeypatch.setattr(
        os, "sched_setaffinity", lambda pid, s: pinned.append(set(s)), raising=False
    )
    for slot in range(5):
        setup_process(WorkerSetup(pin=True, slot=slot), {})
    assert pinned == [{2}, {5}, {7}, {2}, {5}]


def test_pinning_that_fails_is_a_warning_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(pid: int, cpus: set[int]) -> None:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "sched_setaffinity", fail, raising=False)
    notes = setup_process(WorkerSetup(pin=True), {})
    assert notes[0][0] == "WARNING" and "unpinned" in notes[0][1]
    monkeypatch.delattr(os, "sched_setaffinity")
    notes = setup_process(WorkerSetup(pin=True), {})
    assert notes[0][0] == "WARNING" and "cannot pin" in notes[0][1]


def test_without_threadpoolctl_a_loaded_numpy_is_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # importing it raises ImportError
    for name in cpus._POOL_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert limit_loaded_pools({}) is None
    monkeypatch.setitem(sys.modules, "numpy", sys)  # any module object: "numpy is loaded"
    note = limit_loaded_pools({})
    assert note is not None and "threadpoolctl" in note and "OMP_NUM_THREADS" in note


def test_with_threadpoolctl_the_loaded_pools_are_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    loaded: list[dict[str, object]] = [
        {"internal_api": "openblas", "filepath": "/x/libopenblas.so", "prefix": "libopenblas"},
        {"internal_api": "openmp", "filepath": "/x/libgomp.so", "prefix": "libgomp"},
        {"internal_api": "mkl", "filepath": "/x/libmkl_rt.so", "prefix": "libmkl_rt"},
        {"internal_api": "other", "filepath": "/x/libother.so", "prefix": "libother"},
    ]
    for lib in loaded:
        lib["num_threads"] = 8

    class Fake:
        @staticmethod
        def threadpool_info() -> list[dict[str, object]]:
            return loaded

        @staticmethod
        def threadpool_limits(limits: object) -> None:
            calls.append(limits)

    monkeypatch.setitem(sys.modules, "threadpoolctl", Fake)
    monkeypatch.setitem(sys.modules, "numpy", sys)  # any module object: "numpy is loaded"
    env = {"OMP_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "x"}
    assert limit_loaded_pools(env) is None
    assert calls == [
        [
            {"filepath": "/x/libopenblas.so", "prefix": "libopenblas", "num_threads": 2},
            {"filepath": "/x/libgomp.so", "prefix": "libgomp", "num_threads": 3},
        ]
    ]
    calls.clear()
    loaded[0]["num_threads"] = 1  # a pool is never made larger than it is
    limit_loaded_pools(env)
    assert calls[0][0]["num_threads"] == 1  # type: ignore[index]
    calls.clear()
    loaded[:] = []  # nothing loaded: nothing to limit
    assert limit_loaded_pools(env) is None
    assert calls == []
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # not even imported when no
    monkeypatch.delitem(sys.modules, "numpy")  # math module is loaded
    assert limit_loaded_pools(env) is None


# -- options and flags ---------------------------------------------------------------------


def test_options_defaults_and_the_setup_made_from_them() -> None:
    options = WorkerOptions()
    assert (options.pin, options.threads_per_worker) == (False, 1)
    built = WorkerOptions.build("w", pin=True, threads_per_worker=4)
    assert WorkerSetup.of(built, 6) == WorkerSetup(threads=4, pin=True, slot=6)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"threads_per_worker": 0}, "threads_per_worker must be an int >= 1"),
        ({"threads_per_worker": -1}, "threads_per_worker"),
        ({"threads_per_worker": True}, "threads_per_worker"),
        ({"threads_per_worker": 1.5}, "threads_per_worker"),
        ({"threads_per_worker": "2"}, "threads_per_worker"),
        ({"pin": 1}, "pin must be True or False"),
        ({"pin": "yes"}, "pin"),
    ],
)
def test_bad_cpu_options_are_configuration_errors(options: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        WorkerOptions.build("workers for 'w'", **options)


def test_an_unknown_option_lists_the_new_ones() -> None:
    with pytest.raises(ConfigurationError, match="pin, threads_per_worker"):
        WorkerOptions.build("w", pinned=True)


def test_workers_auto_uses_usable_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_cli, "usable_cpus", lambda: 3)
    assert supervisor_cli._worker_counts(["a=auto", "b=2"]) == {"a": 3, "b": 2}


def test_pin_and_threads_per_worker_flags_parse() -> None:
    parser = supervisor_cli.build_parser()
    args = parser.parse_args(["app:flow"])
    assert (args.pin, args.threads_per_worker) == (False, None)
    args = parser.parse_args(["app:flow", "--pin", "--threads-per-worker", "3"])
    assert (args.pin, args.threads_per_worker) == (True, 3)


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", ""])
def test_a_bad_threads_per_worker_flag_exits_2(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        supervisor_cli.build_parser().parse_args(["app:flow", "--threads-per-worker", value])
    assert exc.value.code == 2
    assert "--threads-per-worker" in capsys.readouterr().err


def test_the_flags_apply_to_every_group() -> None:
    flow = Flow("f", [QueueSpec("a"), QueueSpec("b")], redis_url="redis://127.0.0.1:1/0")
    flow.create_workers("a", lambda j: {}, count=1, threads_per_worker=4)
    flow.create_workers("b", lambda j: {}, count=2, pin=True)
    supervisor_cli._set_cpu_options(flow, pin=False, threads=None)
    assert [(g.options.pin, g.options.threads_per_worker) for g in flow.groups] == [
        (False, 4),
        (True, 1),
    ]
    supervisor_cli._set_cpu_options(flow, pin=True, threads=2)
    assert [(g.options.pin, g.options.threads_per_worker) for g in flow.groups] == [
        (True, 2),
        (True, 2),
    ]
