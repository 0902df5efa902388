"""The shared-memory status record a worker writes and its supervisor reads. A plain
``StatusRecord()`` behaves as the shared one does, within one process."""

from __future__ import annotations

import pytest

from procflow.worker.status import (
    JOB_BYTES,
    TOKEN_BYTES,
    Activity,
    StatusRecord,
    StatusWriter,
    clear_status,
    read_status,
)


def test_a_new_record_reads_as_idle_and_empty() -> None:
    view = read_status(StatusRecord())
    assert view.activity is Activity.IDLE
    assert (view.job, view.token, view.next_token, view.jobs, view.started) == ("", "", "", 0, 0)


def test_the_record_follows_a_worker_through_one_job() -> None:
    raw = StatusRecord()
    writer = StatusWriter(raw)

    writer.waiting()
    view = read_status(raw)
    assert view.activity is Activity.WAITING
    assert (view.job, view.token, view.next_token) == ("", "", "")

    writer.leasing("tok-1", "job-1")
    view = read_status(raw)
    assert view.activity is Activity.LEASING
    assert (view.job, view.token, view.next_token) == ("job-1", "tok-1", "")

    writer.running("job-1", "tok-1", 123.5)
    view = read_status(raw)
    assert view.activity is Activity.RUNNING
    assert (view.job, view.token, view.next_token) == ("job-1", "tok-1", "")
    assert view.started == 123.5
    assert view.jobs == 0

    writer.completing("tok-2")
    view = read_status(raw)
    assert view.activity is Activity.COMPLETING
    assert (view.job, view.token, view.next_token) == ("job-1", "tok-1", "tok-2")

    writer.finished()
    view = read_status(raw)
    assert view.activity is Activity.IDLE
    assert (view.job, view.token, view.next_token) == ("", "", "")
    assert view.jobs == 1

    writer.stopped()
    view = read_status(raw)
    assert view.activity is Activity.STOPPED
    assert view.jobs == 1


def test_every_transition_leaves_the_sequence_number_even() -> None:
    raw = StatusRecord()
    writer = StatusWriter(raw)
    steps = [
        writer.waiting,
        lambda: writer.leasing("t", "j"),
        lambda: writer.running("j", "t", 1.0),
        lambda: writer.completing("t2"),
        writer.finished,
        writer.stopped,
    ]
    for n, step in enumerate(steps, start=1):
        step()
        assert raw.seq == 2 * n


def test_the_jobs_counter_counts_each_finished_job() -> None:
    raw = StatusRecord()
    writer = StatusWriter(raw)
    for n in range(1, 4):
        writer.running(f"job-{n}", f"tok-{n}", float(n))
        writer.finished()
        assert read_status(raw).jobs == n


def test_leasing_and_running_drop_a_stale_next_token() -> None:
    raw = StatusRecord()
    writer = StatusWriter(raw)
    writer.running("job-1", "tok-1", 1.0)
    writer.completing("tok-2")
    writer.running("job-2", "tok-2", 2.0)
    assert read_status(raw).next_token == ""
    writer.completing("tok-3")
    writer.leasing("tok-3")
    view = read_status(raw)
    assert (view.activity, view.token, view.next_token, view.job) == (
        Activity.LEASING,
        "tok-3",
        "",
        "",
    )


@pytest.mark.parametrize(
    ("activity", "holds"),
    [
        (Activity.IDLE, False),
        (Activity.WAITING, False),
        (Activity.LEASING, True),
        (Activity.RUNNING, True),
        (Activity.COMPLETING, True),
        (Activity.STOPPED, False),
        (Activity.PAUSED, False),
    ],
)
def test_only_leasing_running_and_completing_may_hold_a_job(
    activity: Activity, holds: bool
) -> None:
    assert activity.holds_job is holds


def test_every_activity_is_covered_by_the_holds_job_table() -> None:
    assert {a.name for a in Activity} == {
        "IDLE",
        "WAITING",
        "LEASING",
        "RUNNING",
        "COMPLETING",
        "STOPPED",
        "PAUSED",
    }


def test_a_torn_write_is_read_as_it_stands_without_hanging() -> None:
    raw = StatusRecord()
    writer = StatusWriter(raw)
    writer.running("job-1", "tok-1", 5.0)
    # a writer that died in completing(): seq bumped to odd, some fields written
    raw.seq += 1
    raw.state = Activity.COMPLETING
    raw.next_token = b"tok-2"
    assert raw.seq % 2 == 1

    view = read_status(raw)
    assert view.activity is Activity.COMPLETING
    assert (view.job, view.token, view.next_token) == ("job-1", "tok-1", "tok-2")
    assert view.started == 5.0


@pytest.mark.parametrize("state", [7, 99, -1, 2**31 - 1])
def test_an_unknown_state_value_reads_as_leasing_so_recovery_checks_the_token(
    state: int,
) -> None:
    raw = StatusRecord()
    StatusWriter(raw).running("job-1", "tok-1", 1.0)
    raw.state = state
    view = read_status(raw)
    assert view.activity is Activity.LEASING
    assert view.activity.holds_job
    assert view.token == "tok-1"


def test_clear_status_zeroes_every_field() -> None:
    raw = StatusRecord()
    writer = StatusWriter(raw)
    writer.running("job-1", "tok-1", 9.0)
    writer.completing("tok-2")
    writer.finished()
    writer.running("job-2", "tok-2", 10.0)
    raw.stop = 1

    clear_status(raw)

    assert raw.seq == 0
    assert raw.state == 0
    assert raw.stop == 0
    assert raw.started == 0.0
    assert raw.jobs == 0
    assert (raw.token, raw.next_token, raw.job) == (b"", b"", b"")
    assert read_status(raw).activity is Activity.IDLE


def test_stop_requested_reflects_the_field_the_supervisor_writes() -> None:
    raw = StatusRecord()
    writer = StatusWriter(raw)
    assert writer.stop_requested is False
    raw.stop = 1
    assert writer.stop_requested is True
    raw.stop = 0
    assert writer.stop_requested is False


def test_a_token_filling_the_field_exactly_reads_back_whole() -> None:
    raw = StatusRecord()
    token = "t" * TOKEN_BYTES
    StatusWriter(raw).leasing(token, "job-1")
    assert read_status(raw).token == token


def test_a_token_longer_than_the_field_is_refused() -> None:
    writer = StatusWriter(StatusRecord())
    with pytest.raises(ValueError, match="too long"):
        writer.leasing("t" * (TOKEN_BYTES + 1))
    with pytest.raises(ValueError, match="too long"):
        writer.completing("t" * (TOKEN_BYTES + 1))


def test_a_job_id_longer_than_the_field_is_refused() -> None:
    writer = StatusWriter(StatusRecord())
    writer.running("j" * JOB_BYTES, "tok", 1.0)
    with pytest.raises(ValueError, match="too long"):
        writer.running("j" * (JOB_BYTES + 1), "tok", 1.0)


def test_non_ascii_job_ids_round_trip() -> None:
    raw = StatusRecord()
    StatusWriter(raw).running("jöb-✓", "tök", 1.0)
    view = read_status(raw)
    assert (view.job, view.token) == ("jöb-✓", "tök")


def test_a_pause_is_asked_for_and_shown() -> None:
    raw = StatusRecord()
    writer = StatusWriter(raw)
    assert not writer.pause_requested
    raw.pause = 1
    assert writer.pause_requested
    writer.paused()
    assert read_status(raw).activity is Activity.PAUSED


def test_a_prefetched_batch_is_held_until_each_entry_is_written() -> None:
    raw = StatusRecord()
    w = StatusWriter(raw)
    ids = ["01a23190-0000-7000-8000-00000000000a", "01a23190-0000-7000-8000-00000000000b", "c"]
    w.hold(ids, "node|1|2.00|3|41")
    w.running(ids[0], "node|1|2.00|3|41", 1.0)
    view = read_status(raw)
    assert view.activity is Activity.RUNNING and view.job == ids[0]
    # the one in hand is settled as the crash; the others go back uncounted
    assert view.pending == ((ids[1], "node|1|2.00|3|42"), ("c", "node|1|2.00|3|43"))
    w.finished()  # ran; its completion waits for the batch's
    w.running(ids[1], "node|1|2.00|3|42", 2.0)
    assert read_status(raw).pending == ((ids[0], "node|1|2.00|3|41"), ("c", "node|1|2.00|3|43"))
    w.release(2)  # its failure was written
    w.finished()
    w.written([0, 1])
    assert read_status(raw).pending == ()


def test_the_tokens_of_a_lease_call_for_several_jobs_are_all_given_back() -> None:
    raw = StatusRecord()
    w = StatusWriter(raw)
    w.leasing("node|1|2.00|3|7", count=3)
    assert read_status(raw).lost_tokens() == [
        "node|1|2.00|3|7",
        "node|1|2.00|3|8",
        "node|1|2.00|3|9",
    ]
    w.leasing("node|1|2.00|3|10", "job-known")  # a claim of a job BLMOVE moved: one token
    assert read_status(raw).lost_tokens() == ["node|1|2.00|3|10"]


def test_a_completion_that_leased_the_next_job_hands_it_over_in_one_write() -> None:
    raw = StatusRecord()
    w = StatusWriter(raw)
    w.running("j1", "node|1|2.00|3|1", 1.0)
    w.completing("node|1|2.00|3|2")
    w.finished(next_job="j2", next_token="node|1|2.00|3|2")
    view = read_status(raw)  # what the supervisor reads if the worker dies right here
    assert (view.activity, view.job, view.token) == (Activity.LEASING, "j2", "node|1|2.00|3|2")
    assert view.jobs == 1 and view.lost_tokens() == ["node|1|2.00|3|2"]
