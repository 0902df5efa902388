"""The cost model's rules (``procflow/cost.py``): histograms, decay, how nodes' figures
combine, backlog and ETA of a stage and of a flow, and a wait's ETA for its batch."""

from __future__ import annotations

import time

import pytest
from loguru import logger

from procflow.client.waiting import Waiting, _show
from procflow.cost import (
    DURATION_BUCKETS,
    WIDTH,
    Decayed,
    JobCost,
    StageWork,
    backlog_seconds,
    by_stage,
    eta_seconds,
    flow_eta,
    quantile,
)
from procflow.supervisor.tally import StageTally
from procflow.worker.status import (
    CPU_SAMPLE,
    Outcome,
    StatusRecord,
    StatusWriter,
    read_status,
)


def histogram(**at: float) -> list[float]:
    """Counts put in the buckets holding the given bounds: ``histogram(b0_01=3)`` puts 3 in
    the bucket whose upper bound is 0.01."""
    out = [0.0] * WIDTH
    for name, n in at.items():
        out[DURATION_BUCKETS.index(float(name[1:].replace("_", ".")))] = n
    return out


def test_a_quantile_is_read_linearly_within_its_bucket() -> None:
    hist = histogram(b0_01=10)  # ten jobs in (0.005, 0.01]
    assert quantile(hist, 0.5) == pytest.approx(0.0075)
    assert quantile(hist, 0.95) == pytest.approx(0.005 + 0.005 * 0.95)
    two = histogram(b0_001=50, b1_0=50)
    assert quantile(two, 0.5) == pytest.approx(0.001)  # the first bucket's upper bound
    assert quantile(two, 0.95) == pytest.approx(0.5 + 0.5 * 0.9)


def test_jobs_alike_in_one_bucket_read_near_their_mean() -> None:
    hist = histogram(b0_05=10)  # ten jobs in (0.025, 0.05], 31 ms on average
    assert quantile(hist, 0.5, mean=0.031) == pytest.approx(0.031)
    assert quantile(hist, 0.95, mean=0.031) == pytest.approx(0.031 + 0.006 * 0.9)
    assert quantile(hist, 0.5) == pytest.approx(0.0375)  # without the mean: the bucket
    spread = histogram(b0_05=5, b0_1=5)  # two buckets: read linearly, the mean aside
    assert quantile(spread, 0.95, mean=0.05) == quantile(spread, 0.95)
    cost = JobCost(10, 0.31, 0.05, hist, histogram(b0_005=10))
    assert cost.wall_quantile(0.5) == pytest.approx(0.031)
    assert cost.cpu_quantile(0.5) == pytest.approx(0.005)  # the mean 5 ms is the bucket's top


def test_an_empty_histogram_has_no_quantile_and_the_last_bucket_gives_its_bound() -> None:
    assert quantile([0.0] * WIDTH, 0.5) is None
    beyond = [0.0] * (WIDTH - 1) + [4.0]  # only jobs over 300 s
    assert quantile(beyond, 0.95) == DURATION_BUCKETS[-1]


def test_nodes_figures_add_up() -> None:
    a = JobCost(2, 0.02, 0.01, histogram(b0_01=2), histogram(b0_01=2))
    b = JobCost(6, 1.8, 0.6, histogram(b0_5=6), histogram(b0_25=6))
    both = JobCost.combined([a, b])
    assert (both.jobs, both.wall_sum, both.cpu_sum) == (8, pytest.approx(1.82), 0.61)
    assert both.wall_mean == pytest.approx(1.82 / 8)
    assert both.cpu_mean == pytest.approx(0.61 / 8)
    assert sum(both.wall) == 8 and both.wall[DURATION_BUCKETS.index(0.5)] == 6
    assert JobCost.combined([]).wall_mean is None


def test_a_record_round_trips_and_an_unreadable_one_reads_as_nothing() -> None:
    c = JobCost(3, 0.3, 0.15, histogram(b0_1=3), histogram(b0_05=3))
    assert JobCost.from_record(c.as_record()) == c
    for bad in (None, "x", {"jobs": "many", "wall": [1, 2]}, {"jobs": float("nan")}):
        assert JobCost.from_record(bad).jobs == 0
        assert JobCost.from_record(bad).wall == [0.0] * WIDTH


def test_the_figures_decay_with_a_half_life_and_take_in_what_is_new() -> None:
    d = Decayed(half_life=60)
    first = d.update(JobCost(10, 1.0, 0.5, histogram(b0_1=10), histogram(b0_1=10)), now=100)
    assert (first.jobs, first.wall_sum) == (10, 1.0)  # the first beat: everything so far
    # a minute later, 2 more jobs of 1 s each (cumulative counts: 12 jobs, 3 s)
    later = d.update(JobCost(12, 3.0, 0.7, histogram(b0_1=10, b1_0=2), histogram(b0_1=12)), 160)
    assert later.jobs == pytest.approx(10 / 2 + 2)
    assert later.wall_sum == pytest.approx(1.0 / 2 + 2.0)
    assert later.wall[DURATION_BUCKETS.index(0.1)] == pytest.approx(5)
    assert later.wall[DURATION_BUCKETS.index(1.0)] == pytest.approx(2)
    # counts read lower (a record read twice as its worker ended) add nothing
    again = d.update(JobCost(11, 2.0, 0.6, histogram(b0_1=9), histogram(b0_1=11)), 160)
    assert again.jobs == pytest.approx(7)


def test_an_idle_stage_keeps_its_figures_at_the_weight_of_one_job() -> None:
    d = Decayed(half_life=60)
    d.update(JobCost(4, 2.0, 1.0, histogram(b0_5=4), histogram(b0_5=4)), now=0)
    idle = d.update(JobCost(4, 2.0, 1.0, histogram(b0_5=4), histogram(b0_5=4)), now=3600)
    assert idle.jobs == 1.0
    assert (idle.wall_mean, idle.cpu_mean) == (pytest.approx(0.5), pytest.approx(0.25))
    assert sum(idle.wall) == pytest.approx(1.0)
    # the next jobs soon outweigh it
    busy = d.update(JobCost(14, 3.0, 1.5, histogram(b0_5=4, b0_1=10), histogram(b0_5=14)), 3601)
    assert busy.wall_mean == pytest.approx((0.5 * 0.5 ** (1 / 60) + 1.0) / (0.5 ** (1 / 60) + 10))


def test_a_tally_gives_what_its_workers_measured() -> None:
    raw = StatusRecord()
    writer = StatusWriter(raw)
    writer.running("job-1", "tok-1", 0.0)
    writer.finished(Outcome.COMPLETED)
    writer.running("job-2", "tok-2", 0.0)
    writer.finished()  # no attempt ran (a vanished job): not measured
    view = read_status(raw)
    assert sum(view.cpu_durations) == 1 and view.cpu_sum >= 0
    tally = StageTally()
    tally.add(view)
    tally.add(view)
    c = tally.cost()
    assert c.jobs == 2 and sum(c.cpu) == 2 and c.cpu_sum == pytest.approx(2 * view.cpu_sum)
    assert c.wall_sum == pytest.approx(2 * view.duration_sum)


def test_the_cpu_time_of_very_short_jobs_is_sampled_and_of_longer_ones_measured() -> None:
    raw = StatusRecord()
    writer = StatusWriter(raw)

    def job(seconds: float) -> None:  # a job that started ``seconds`` ago
        writer.running("job", "tok", time.monotonic() - seconds)
        writer.finished(Outcome.COMPLETED)

    job(0.0)  # the first is measured; it was short, so from now on one in CPU_SAMPLE
    for _ in range(2 * CPU_SAMPLE):
        job(0.0)
    view = read_status(raw)
    assert sum(view.durations) == 1 + 2 * CPU_SAMPLE
    assert sum(view.cpu_durations) == 1 + 2
    job(0.002)  # a longer job (itself a sampled turn or not): the next one is measured
    before = sum(read_status(raw).cpu_durations)
    job(0.0)
    assert sum(read_status(raw).cpu_durations) == before + 1
    # the mean is over the jobs measured
    cost = JobCost(100, 1.0, 0.3, histogram(b0_01=100), histogram(b0_01=10))
    assert cost.cpu_mean == pytest.approx(0.03)


def test_the_backlog_is_pending_jobs_times_the_mean() -> None:
    assert backlog_seconds(10, 0.25) == 2.5
    assert backlog_seconds(0, None) == 0.0  # nothing to run: known without a mean
    assert backlog_seconds(3, None) is None  # jobs to run and none of the stage ran yet


def test_a_stage_eta_is_its_backlog_over_its_workers() -> None:
    assert eta_seconds(10.0, 4) == 2.5
    assert eta_seconds(0.0, 0) == 0.0
    assert eta_seconds(None, 4) is None
    assert eta_seconds(10.0, 0) is None  # nobody runs it


def test_the_fleet_is_added_up_per_stage_with_its_serving_workers() -> None:
    cost = {"cost": JobCost(2, 1.0, 0.5, histogram(b0_5=2), histogram(b0_25=2)).as_record()}
    nodes = [
        {
            "stages": {"{f#0}.a": cost},
            "workers": [
                {"stage": "{f#0}.a", "state": "running"},
                {"stage": "{f#0}.a", "state": "paused"},
                {"stage": "{f#0}.b", "state": "idle"},
            ],
        },
        {"stages": {"{f#0}.a": cost}, "workers": [{"stage": "{f#0}.a", "state": "starting"}]},
        {"node": "an old node without figures"},
    ]
    fleet = by_stage(nodes, lambda name: name.split(".", 1)[1])
    (a_cost, a_workers), (b_cost, b_workers) = fleet["a"], fleet["b"]
    assert (a_cost.jobs, a_cost.wall_mean, a_workers) == (4, 0.5, 2)
    assert (b_cost.jobs, b_workers) == (0, 1)


def test_a_flow_eta_walks_the_pipeline() -> None:
    # a: 10 jobs of 1 s on 2 workers (5 s); b: its own 4 and a's 10, 0.1 s each on 1 (1.4 s),
    # but not before a is done and one job of b ran: 5.1 s
    stages = [StageWork("a", None, 10, 1.0, 2), StageWork("b", None, 4, 0.1, 1)]
    assert flow_eta(stages) == pytest.approx(5.1)
    # b slower than a: its own and the incoming work, 14 jobs of 1 s on 1 worker
    slow = [StageWork("a", None, 10, 0.1, 2), StageWork("b", None, 4, 1.0, 1)]
    assert flow_eta(slow) == pytest.approx(14.0)
    # a parent's children run beside it: the slowest one counts
    fan = [
        StageWork("p", None, 0, 0.01, 1),
        StageWork("p:x", "p", 6, 1.0, 2),
        StageWork("p:y", "p", 1, 1.0, 1),
        StageWork("q", None, 0, None, 0),  # nothing will come: no figures needed
    ]
    assert flow_eta(fan) == pytest.approx(3.0)


def test_a_flow_eta_is_none_when_a_stage_with_work_has_no_figures() -> None:
    assert flow_eta([StageWork("a", None, 0, None, 0)]) == 0.0
    assert flow_eta([StageWork("a", None, 3, None, 1)]) is None  # nothing ran yet
    assert flow_eta([StageWork("a", None, 3, 1.0, 0)]) is None  # no worker
    # b has no figures and a's jobs will come to it
    assert flow_eta([StageWork("a", None, 3, 1.0, 1), StageWork("b", None, 0, None, 1)]) is None


def test_a_wait_reckons_its_batch_eta_from_the_jobs_done_during_it() -> None:
    w = Waiting("f", ["f"], [f"id-{n}" for n in range(10)], None, True, logger)
    w.placed_at, w.placed_done = 100.0, 2  # two were done before the wait began
    w.pending = {f"id-{n}" for n in range(2, 10)}
    assert w.eta(now=110.0) is None  # none finished during the wait yet
    w.pending = {f"id-{n}" for n in range(6, 10)}  # four finished in 10 s
    assert w.rate(now=110.0) == pytest.approx(0.4)
    assert w.eta(now=110.0) == pytest.approx(4 * 10 / 4)
    w.pending = set()
    assert w.eta(now=120.0) == 0.0


def test_the_progress_line_shows_the_batch_eta(capsys: pytest.CaptureFixture[str]) -> None:
    _show(3, 10, 2.0, eta=150.0, rate=0.04)
    _show(0, 10, 2.0)
    _show(10, 10, 2.0, rate=0.0, final=True)  # every job was done before the wait
    first, second, third = capsys.readouterr().err.splitlines()
    assert first == "procflow: 3/10 jobs done (0.04/s), ETA 2 min"
    assert second == "procflow: 0/10 jobs done, ETA -"
    assert third == "procflow: 10/10 jobs done"
