"""The core budget's policy: allocation by work at hand, hysteresis, dwell time."""

from __future__ import annotations

from procflow.supervisor.budget import Balancer, StageLoad, allocate, describe


def load(name: str, waiting: int, mean: float | None = 0.01, running: int = 0, **kw) -> StageLoad:
    return StageLoad(name, waiting, running, mean, **kw)


def test_cores_go_where_the_work_is() -> None:
    counts = allocate([load("a", 10, 0.002), load("kids", 600, 0.02), load("c", 100, 0.02)], 8)
    assert counts == {"a": 0, "kids": 7, "c": 1}


def test_a_stage_with_little_work_waits_while_a_backed_up_one_has_the_cores() -> None:
    counts = allocate([load("a", 1), load("b", 1000), load("c", 1)], 3)
    assert counts == {"a": 0, "b": 3, "c": 0}


def test_work_shares_decide_between_busy_stages() -> None:
    counts = allocate([load("a", 100, 0.01), load("b", 100, 0.03)], 4)
    assert counts == {"a": 1, "b": 3}


def test_no_more_processes_than_jobs_and_never_over_max() -> None:
    counts = allocate([load("a", 2, 1.0), load("b", 100, 1.0, max=3)], 16)
    assert counts == {"a": 2, "b": 3}


def test_a_stage_keeps_its_min_even_when_idle() -> None:
    counts = allocate([load("a", 0, min=1), load("b", 100)], 4)
    assert counts == {"a": 1, "b": 3}


def test_idle_stages_get_nothing() -> None:
    assert allocate([load("a", 0), load("b", 0)], 4) == {"a": 0, "b": 0}


def test_a_new_stage_is_taken_to_be_as_quick_as_the_quickest_known() -> None:
    balancer = Balancer(cores=4)
    balancer.mean_time.update({"slow": 1.0, "quick": 0.01})
    got = balancer.decide(
        [load("slow", 10, None), load("quick", 0, None), load("new", 10, None)],
        {"slow": 0, "quick": 0, "new": 0},
        now=0.0,
    )
    assert got == {"slow": 4, "quick": 0, "new": 0}  # new: 10 x 0.01 s, next to 10 x 1 s


def test_the_mean_job_time_is_measured_and_decays() -> None:
    balancer = Balancer(cores=2)
    balancer.observe("a", 0.0, 0)
    balancer.observe("a", 1.0, 10)  # 0.1 s per job
    assert abs(balancer.mean_time["a"] - 0.1) < 1e-9
    balancer.observe("a", 2.0, 20)  # still 0.1
    balancer.observe("a", 12.0, 30)  # 1.0 s per job now: the mean moves toward it
    assert 0.1 < balancer.mean_time["a"] < 1.0
    balancer.observe("a", 12.0, 30)  # no new jobs: nothing to learn
    balancer.observe("a", 0.0, 0)  # a restart of the counters is not a sample
    assert 0.1 < balancer.mean_time["a"] < 1.0


def test_a_small_gain_keeps_the_current_counts() -> None:
    balancer = Balancer(cores=4)
    loads = [load("a", 100, 0.01), load("b", 110, 0.01)]
    assert balancer.decide(loads, {"a": 2, "b": 2}, now=0.0) is None


def test_a_large_gain_moves_processes_and_then_the_stage_dwells() -> None:
    balancer = Balancer(cores=4, dwell=2.0)
    loads = [load("a", 100, 0.01), load("b", 1000, 0.01)]
    moved = balancer.decide(loads, {"a": 3, "b": 1}, now=0.0)
    assert moved == {"a": 0, "b": 4}
    flipped = [load("a", 1000, 0.01), load("b", 100, 0.01)]
    holding = {"a": 1, "b": 3}  # a has a process, so it does not starve
    assert balancer.decide(flipped, holding, now=1.0) is None  # within the dwell time
    assert balancer.decide(flipped, holding, now=3.0) == {"a": 4, "b": 0}


def test_a_stage_left_waiting_too_long_gets_a_process_whatever_moved_lately() -> None:
    balancer = Balancer(cores=2, dwell=60.0, max_wait=1.0)
    loads = [load("big", 1000, 0.02), load("small", 5, 0.005)]
    assert balancer.decide(loads, {"big": 2, "small": 0}, now=0.0) is None  # small waits
    got = balancer.decide(loads, {"big": 2, "small": 0}, now=1.5)  # for too long now
    assert got == {"big": 1, "small": 1}


def test_an_idle_stage_gives_its_processes_up_at_once() -> None:
    balancer = Balancer(cores=2, dwell=60.0)
    balancer.decide([load("a", 100), load("b", 0)], {"a": 0, "b": 2}, now=0.0)
    got = balancer.decide([load("a", 100), load("b", 0)], {"a": 0, "b": 2}, now=1.0)
    assert got in (None, {"a": 2, "b": 0})
    # b has nothing at hand: it gives its process up at once, dwell or not (a, which moved
    # lately, keeps its count until its dwell time is over)
    assert balancer.decide([load("a", 100), load("b", 0)], {"a": 1, "b": 1}, now=2.0) == {
        "a": 1,
        "b": 0,
    }


def test_a_decision_is_described_in_one_line() -> None:
    line = describe(
        {"analyze": 1, "report": 2},
        {"analyze": 3, "report": 0},
        [load("analyze", 120), load("report", 0)],
    )
    assert line == "analyze 1→3, report 2→0 (waiting analyze=120 report=0)"
