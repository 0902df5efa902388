"""How many jobs a worker's lease call takes (``worker.batch.BatchSize``): a fixed prefetch,
or ``"auto"`` sized from the measured job time."""

from __future__ import annotations

import pytest

from procflow import ConfigurationError, QueueSpec
from procflow.definition import MAX_PREFETCH, FlowDefinition
from procflow.worker.batch import AUTO_BATCH_SECONDS, AUTO_OVERDUE_SECONDS, BatchSize


def test_a_fixed_prefetch_is_the_count_whatever_the_jobs_take() -> None:
    size = BatchSize(16)
    for took in (0.00001, 5.0, 0.00001):
        size.observe(took)
        assert size.count == 16
    assert not size.overdue(0.0, 100.0)


def test_auto_starts_at_one_and_batches_tiny_jobs_up_to_the_cap() -> None:
    size = BatchSize("auto")
    assert size.count == 1  # nothing measured yet
    size.observe(0.000_01)
    assert size.count == MAX_PREFETCH


@pytest.mark.parametrize(
    ("took", "count"),
    [(0.000_4, 32), (0.001, 16), (0.002, 8), (0.005, 4), (0.01, 2), (0.02, 1), (3.0, 1)],
)
def test_a_batch_holds_at_most_twenty_milliseconds_of_work(took: float, count: int) -> None:
    size = BatchSize("auto")
    size.observe(took)
    assert size.count == count
    assert count * took <= AUTO_BATCH_SECONDS or count == 1


def test_auto_follows_a_change_of_job_time_within_a_few_jobs() -> None:
    size = BatchSize("auto")
    for _ in range(20):
        size.observe(0.000_02)
    assert size.count == MAX_PREFETCH
    size.observe(0.02)  # one odd job: the count drops, the batch held is kept
    assert 1 < size.count < MAX_PREFETCH
    assert not size.overdue(10.0, 10.0 + AUTO_OVERDUE_SECONDS / 2)
    for _ in range(3):  # the jobs turned slow: the next lease takes one
        size.observe(0.05)
    assert size.count == 1
    assert size.overdue(10.0, 10.0 + AUTO_OVERDUE_SECONDS * 1.01)  # a held batch goes back
    jobs = 0
    while size.count == 1 and jobs < 10:  # fast again
        size.observe(0.000_02)
        jobs += 1
    assert size.count > 1 and jobs <= 4


def test_prefetch_is_auto_by_default_and_described_as_it_is() -> None:
    spec = QueueSpec("q")
    assert spec.prefetch == "auto"
    d = FlowDefinition.build("F", [QueueSpec("a", prefetch=8), QueueSpec("b")], [], 60)
    back = FlowDefinition.from_description(d.describe())
    assert [q.prefetch for q in back.queues] == [8, "auto"]
    parent = FlowDefinition.build("P", [QueueSpec("p", children=[QueueSpec("c")])], [], 60)
    assert parent.first_stage.prefetch == 1  # a parent stage takes one at a time
    for bad in (0, 65, "fast", True, 2.5):
        with pytest.raises(ConfigurationError, match="prefetch must be 'auto' or an int"):
            QueueSpec("q", prefetch=bad)  # type: ignore[arg-type]
