"""The collector: verdicts merged into totals, the horizon, in-doubt chunks, the breaker."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.checkpoint import DONE, FAILED, Checkpoint
from engine.collector import (
    RESENT_AFTER_FAILURE,
    RESENT_AFTER_INTERRUPTION,
    CircuitBreaker,
    Collector,
)
from engine.errors import CircuitOpen
from engine.pass_start import PassStart
from engine.pipeline import Run, open_checkpoint
from engine.records import Chunk, ChunkResult, InputCounts, LiveStats, Reject, Verdict
from engine.settings import InputSettings, RunSettings, Secret
from tests._helpers import IDENTITY, SETTINGS
from tests._helpers import done as done_row
from tests._helpers import failed as failed_row

HORIZON_STEP = 64


def make_chunk(chunk_id: int, size: int = 100) -> Chunk:
    base = 919_800_000_000 + chunk_id * 1000
    return Chunk(
        chunk_id, [base + n for n in range(size)], [0] * size, [n + 2 for n in range(size)]
    )


def ok(chunk: Chunk, deleted: int | None = None, error: list[str] | None = None) -> ChunkResult:
    error = error or []
    count = len(chunk.numbers)
    verdict = Verdict(count - len(error), error, count - len(error) if deleted is None else deleted)
    return ChunkResult(chunk, 1, verdict)


def failure(chunk: Chunk, reason: str = "HTTP 503") -> ChunkResult:
    return ChunkResult(chunk, 3, None, reason=reason)


def collector_for(
    checkpoint: Checkpoint,
    *,
    window: int = 1000,
    ratio: float = 1.0,
    interval: float = 0.05,
    input_counts: InputCounts | None = None,
) -> Collector:
    """A collector as the pipeline builds one for a pass over ``checkpoint``."""
    return Collector(
        checkpoint,
        start=PassStart.load(checkpoint),
        stats=LiveStats(),
        breaker=CircuitBreaker(window, ratio),
        write=str,
        commit_interval=interval,
        horizon_step=HORIZON_STEP,
        input_counts=lambda: input_counts,
    )


@pytest.fixture
def checkpoint(tmp_path: Path) -> Checkpoint:
    return Checkpoint.for_run(tmp_path / "c.ckpt", IDENTITY, SETTINGS)


def totals_as_sums(collector: Collector) -> dict[str, int]:
    totals = collector.totals
    return {
        "chunks_done": totals.chunks_done, "chunks_failed": totals.chunks_failed,
        "sent": totals.sent, "success": totals.success, "error": totals.error,
        "deleted": totals.deleted, "failed_numbers": totals.failed_numbers,
        "in_doubt_chunks": totals.in_doubt_chunks,
        "probably_deleted_earlier": totals.probably_deleted_earlier,
    }  # fmt: skip


def sums_without_finished(checkpoint: Checkpoint) -> dict[str, int]:
    sums = checkpoint.sums()
    sums.pop("chunks_finished")
    return sums


# -- merging ---------------------------------------------------------------------------------


def test_done_and_failed_results_merge_into_totals_and_rows(checkpoint: Checkpoint) -> None:
    """success / error / deleted add up; a failed chunk counts all its numbers as failed."""
    collector = collector_for(checkpoint)
    first, second, third = make_chunk(0), make_chunk(1, size=40), make_chunk(2)
    collector._merge(ok(first, deleted=90))
    collector._merge(ok(second, error=[str(second.numbers[0]), f"+{second.numbers[1]}"]))
    collector._merge(failure(third))
    totals = collector.totals
    assert (totals.chunks_done, totals.chunks_failed) == (2, 1)
    assert (totals.sent, totals.success, totals.error) == (140, 138, 2)
    assert (totals.deleted, totals.failed_numbers) == (90 + 38, 100)
    assert collector.pending == 3
    assert checkpoint.sums()["chunks_finished"] == 0  # nothing durable before the commit
    collector.commit()
    assert collector.pending == 0
    assert sums_without_finished(checkpoint) == totals_as_sums(collector)


def test_numbers_in_error_are_traced_to_their_file_and_line(checkpoint: Checkpoint) -> None:
    """Each number the API lists in error, in any written form, keeps its file and line."""
    collector = collector_for(checkpoint)
    chunk = replace(make_chunk(0, size=5), files=[0, 0, 1, 1, 1], lines=[10, 11, 2, 3, 4])
    listed = [str(chunk.numbers[1]), f"+{chunk.numbers[3]}", "garbage"]
    collector._merge(ok(chunk, error=listed))
    collector.commit()
    row = next(checkpoint.chunk_rows())
    assert json.loads(row["detail"]) == [
        [listed[0], 0, 11],
        [listed[1], 1, 3],
        ["garbage", -1, 0],
    ]


def test_a_chunk_that_failed_earlier_and_is_done_now_counts_once(checkpoint: Checkpoint) -> None:
    """The earlier failure leaves the totals when the chunk is finished: no chunk counted twice."""
    first_pass = collector_for(checkpoint)
    for chunk_id in range(4):
        first_pass._merge(
            failure(make_chunk(chunk_id)) if chunk_id % 2 else ok(make_chunk(chunk_id))
        )
    first_pass.commit()
    second_pass = collector_for(checkpoint)
    assert (second_pass.totals.chunks_done, second_pass.totals.chunks_failed) == (2, 2)
    second_pass._merge(ok(make_chunk(1)))  # fixed
    second_pass._merge(failure(make_chunk(3), "timeout"))  # failed once more
    totals = second_pass.totals
    assert (totals.chunks_done, totals.chunks_failed, totals.failed_numbers) == (3, 1, 100)
    second_pass.commit()
    assert sums_without_finished(checkpoint) == totals_as_sums(second_pass)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    passes=st.lists(
        st.lists(st.sampled_from(["done", "failed", "lost"]), min_size=12, max_size=12),
        min_size=1,
        max_size=5,
    )
)
def test_totals_always_equal_the_checkpoint_after_any_sequence_of_passes(
    tmp_path_factory: pytest.TempPathFactory, passes: list[list[str]]
) -> None:
    """Passes that finish, fail or lose (crash before commit) chunks: totals == checkpoint sums."""
    path = tmp_path_factory.mktemp("passes") / "c.ckpt"
    checkpoint = Checkpoint.for_run(path, IDENTITY, SETTINGS)
    try:
        for outcomes in passes:
            collector = collector_for(checkpoint)
            finished = checkpoint.ids(DONE)
            for chunk_id, outcome in enumerate(outcomes):
                if chunk_id in finished:
                    continue
                chunk = make_chunk(chunk_id)
                collector.dispatching(chunk)
                if outcome == "done":
                    collector._merge(ok(chunk, deleted=chunk_id))
                elif outcome == "failed":
                    collector._merge(failure(chunk))
            collector.commit()
            assert sums_without_finished(checkpoint) == totals_as_sums(collector)
            rows = list(checkpoint.chunk_rows())
            assert len({row["id"] for row in rows}) == len(rows)
    finally:
        checkpoint.close()


# -- horizon and in-doubt chunks -------------------------------------------------------------


def test_the_horizon_is_committed_before_a_chunk_past_it_leaves(checkpoint: Checkpoint) -> None:
    """Dispatching chunk n >= horizon first makes "nothing at or past n + step was sent" durable."""
    collector = collector_for(checkpoint)
    reader = Checkpoint.read(checkpoint.path)
    try:
        collector.dispatching(make_chunk(0))
        assert reader.meta("horizon") == HORIZON_STEP
        collector.dispatching(make_chunk(HORIZON_STEP - 1))
        assert reader.meta("horizon") == HORIZON_STEP
        collector.dispatching(make_chunk(HORIZON_STEP))
        assert reader.meta("horizon") == 2 * HORIZON_STEP
        # A resumed pass skips ahead: the horizon jumps with it.
        collector.dispatching(make_chunk(1000))
        assert reader.meta("horizon") == 1000 + HORIZON_STEP
    finally:
        reader.close()


def test_chunks_resent_below_the_horizon_or_after_a_failure_are_in_doubt(
    checkpoint: Checkpoint,
) -> None:
    """After a kill, unrecorded chunks below the horizon, and failed ones, go out in doubt."""
    first_pass = collector_for(checkpoint)
    for chunk_id in range(10):
        first_pass.dispatching(make_chunk(chunk_id))
    first_pass._merge(ok(make_chunk(0)))
    first_pass._merge(failure(make_chunk(1)))
    first_pass.commit()  # chunks 2..9 were in flight when the process died
    second_pass = collector_for(checkpoint)
    resent = [make_chunk(chunk_id) for chunk_id in (1, 2, 9, HORIZON_STEP, HORIZON_STEP + 1)]
    for chunk in resent:
        second_pass.dispatching(chunk)
    assert [second_pass.goes_out_in_doubt(chunk.id) for chunk in resent] == [
        True, True, True, False, False,
    ]  # fmt: skip
    second_pass._merge(ok(resent[0], deleted=100))
    second_pass._merge(ok(resent[1], deleted=0))  # the dead pass had deleted them all
    second_pass._merge(ok(resent[3]))
    second_pass.commit()
    rows = {row["id"]: dict(row) for row in checkpoint.chunk_rows()}
    assert rows[1]["in_doubt"] == 1 and rows[1]["reason"] == RESENT_AFTER_FAILURE
    assert rows[2]["in_doubt"] == 1 and rows[2]["reason"] == RESENT_AFTER_INTERRUPTION
    assert rows[2]["state"] == DONE and rows[2]["deleted"] == 0  # not found, not a failure
    assert rows[HORIZON_STEP]["in_doubt"] == 0
    sums = checkpoint.sums()
    assert (sums["in_doubt_chunks"], sums["chunks_failed"], sums["failed_numbers"]) == (2, 0, 0)
    assert second_pass.totals.in_doubt_chunks == 2


def test_an_earlier_pass_is_the_reason_even_when_this_pass_doubts_too(
    checkpoint: Checkpoint,
) -> None:
    """The workers report why an attempt of this pass may have applied; the collector decides:
    a chunk an earlier pass may have applied keeps that reason, a fresh one takes this pass's."""
    killed = collector_for(checkpoint)
    for chunk_id in range(3):
        killed.dispatching(make_chunk(chunk_id))
    killed.commit()  # then kill -9: chunks below the horizon may have been applied
    resumed = collector_for(checkpoint)
    resent, fresh, clean = make_chunk(1), make_chunk(HORIZON_STEP), make_chunk(HORIZON_STEP + 1)
    for chunk in (resent, fresh, clean):
        resumed.dispatching(chunk)
    resumed._merge(replace(ok(resent, deleted=0), doubt="timed out in this pass"))
    resumed._merge(replace(ok(fresh, deleted=0), doubt="timed out in this pass"))
    resumed._merge(ok(clean))
    resumed.commit()
    rows = {row["id"]: dict(row) for row in checkpoint.chunk_rows()}
    assert (rows[1]["in_doubt"], rows[1]["reason"]) == (1, RESENT_AFTER_INTERRUPTION)
    assert (rows[HORIZON_STEP]["in_doubt"], rows[HORIZON_STEP]["reason"]) == (
        1, "timed out in this pass",
    )  # fmt: skip
    assert (rows[HORIZON_STEP + 1]["in_doubt"], rows[HORIZON_STEP + 1]["reason"]) == (0, "")
    assert resumed.totals.in_doubt_chunks == 2
    assert resumed.totals.probably_deleted_earlier == 200
    assert sums_without_finished(checkpoint) == totals_as_sums(resumed)


# -- the breaker -----------------------------------------------------------------------------


def test_the_breaker_opens_only_on_a_full_window_of_mostly_failures() -> None:
    """ratio 0.8 of window 5: never before 5 results; opens on the 4th failure in the last 5."""
    early = CircuitBreaker(window=5, ratio=0.8)
    for _ in range(4):
        early.record(True)  # 4 failures, but not yet a full window
    breaker = CircuitBreaker(window=5, ratio=0.8)
    for failed in (False, False, True, True, True):
        breaker.record(failed)  # 3 of 5
    with pytest.raises(CircuitOpen, match="4 of the last 5 chunks failed"):
        breaker.record(True)  # the window slides: 4 of the last 5


def test_the_breaker_never_opens_on_successes_or_scattered_failures() -> None:
    """A long run with one failure in five keeps the breaker closed."""
    breaker = CircuitBreaker(window=20, ratio=0.8)
    rng = random.Random(2)
    for _ in range(10_000):
        breaker.record(rng.random() < 0.2)


def test_the_breaker_opens_exactly_when_a_recount_of_its_window_says_so() -> None:
    """Its running count of failures matches a recount of the last `window` results, always."""
    rng = random.Random(5)
    for window, ratio in ((1, 1.0), (7, 0.5), (20, 0.8)):
        breaker, history = CircuitBreaker(window=window, ratio=ratio), []
        for _ in range(3000):
            failed = rng.random() < ratio * 0.9 + (0.3 if rng.random() < 0.1 else 0.0)
            history.append(failed)
            last = history[-window:]
            should_open = len(last) == window and sum(last) >= ratio * window
            if should_open:
                with pytest.raises(CircuitOpen):
                    breaker.record(failed)
                breaker, history = CircuitBreaker(window=window, ratio=ratio), []
            else:
                breaker.record(failed)


def test_the_chunk_that_opens_the_breaker_is_still_recorded(checkpoint: Checkpoint) -> None:
    """The breaker raises after the failing chunk is queued: the final commit keeps it."""
    collector = collector_for(checkpoint, window=3, ratio=1.0)
    collector._merge(failure(make_chunk(0)))
    collector._merge(failure(make_chunk(1)))
    with pytest.raises(CircuitOpen):
        collector._merge(failure(make_chunk(2)))
    collector.commit()
    assert list(checkpoint.ids(FAILED)) == [0, 1, 2]


# -- the task, commits, and what it stores for `ozbulk status` -----------------------------


async def test_results_are_committed_by_the_ticker_while_the_run_goes_on(
    checkpoint: Checkpoint,
) -> None:
    """Within a commit interval of a result arriving, a reader sees it; the stream stays open."""
    collector = collector_for(checkpoint, interval=0.02)
    results_tx, results_rx = anyio.create_memory_object_stream[ChunkResult](4)
    reader = Checkpoint.read(checkpoint.path)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(collector.run, results_rx)
            async with results_tx:
                await results_tx.send(ok(make_chunk(0)))
                await results_tx.send(ok(make_chunk(1)))
                with anyio.fail_after(5):
                    while reader.sums()["chunks_done"] < 2:  # noqa: ASYNC110 - another connection
                        await anyio.sleep(0.01)
                collector.reject(Reject(0, 5, "abc", "letters"))
                await results_tx.send(failure(make_chunk(2)))
        collector.commit()
        assert reader.sums()["chunks_finished"] == 3
        assert list(reader.reject_rows()) == [(0, 5, "abc", "letters")]
        assert reader.meta("counters")["passes"] == 1
    finally:
        reader.close()


def test_input_counts_are_stored_and_a_complete_reading_is_never_replaced(
    checkpoint: Checkpoint,
) -> None:
    """A finished reading of the input is final; a later pass's partial counts do not shrink it."""
    counts = InputCounts(rows=500, accepted=480, rejected=10, duplicates=10, chunks=5)
    collector = collector_for(checkpoint, input_counts=counts)
    collector.commit()
    assert checkpoint.meta("input")["finished"] is False
    counts.finished = True
    collector.commit()
    complete = checkpoint.meta("input")
    assert complete == {"rows": 500, "accepted": 480, "rejected": 10, "duplicates": 10,
                        "chunks": 5, "finished": True}  # fmt: skip
    next_pass = collector_for(checkpoint, input_counts=InputCounts(rows=20, accepted=20, chunks=0))
    next_pass.commit()
    assert checkpoint.meta("input") == complete


# -- settling: the exact in-doubt set when a pass ends in order -----------------------------


def test_a_pass_ending_in_order_stores_exactly_what_was_sent_unrecorded(
    checkpoint: Checkpoint,
) -> None:
    """Sends reported: in doubt = sent and unfinished; horizon 0; the next pass marks only those."""
    first_pass = collector_for(checkpoint)
    chunks = [make_chunk(chunk_id) for chunk_id in range(10)]
    for chunk in chunks:
        first_pass.dispatching(chunk)
    for chunk in chunks[:6]:
        first_pass.sending(chunk)
    for chunk in chunks[:4]:
        first_pass._merge(ok(chunk))
    first_pass.settle()  # 4 and 5 were abandoned mid-retry; 6..9 never left the buffer
    assert checkpoint.meta("in_doubt") == [4, 5]
    assert checkpoint.meta("horizon") == 0
    second_pass = collector_for(checkpoint)
    resent = [make_chunk(chunk_id) for chunk_id in range(4, 10)]
    for chunk in resent:
        second_pass.dispatching(chunk)
    assert [chunk.id for chunk in resent if second_pass.goes_out_in_doubt(chunk.id)] == [4, 5]


def test_without_send_reports_every_dispatched_unfinished_chunk_is_in_doubt(
    checkpoint: Checkpoint,
) -> None:
    """No worker reports: a dispatched chunk may have been sent, so it is in doubt if unfinished."""
    collector = collector_for(checkpoint)
    for chunk_id in range(6):
        collector.dispatching(make_chunk(chunk_id))
    collector._merge(ok(make_chunk(0)))
    collector._merge(failure(make_chunk(1)))
    collector.settle()
    assert checkpoint.meta("in_doubt") == [2, 3, 4, 5]


def test_settling_keeps_what_a_killed_earlier_pass_left_in_doubt(checkpoint: Checkpoint) -> None:
    """Chunks below a dead pass's horizon stay in doubt until finished, across later passes."""
    killed = collector_for(checkpoint)
    for chunk_id in range(12):
        killed.dispatching(make_chunk(chunk_id))
    for chunk_id in range(3):
        killed._merge(ok(make_chunk(chunk_id)))
    killed.commit()  # then kill -9: horizon HORIZON_STEP, chunks 3..11 maybe applied
    drained = collector_for(checkpoint)
    for chunk_id in range(3, 8):
        chunk = make_chunk(chunk_id)
        drained.dispatching(chunk)
        drained.sending(chunk)
        drained._merge(ok(chunk, deleted=0))
    drained.settle()
    assert checkpoint.meta("in_doubt") == list(range(8, HORIZON_STEP))
    assert checkpoint.meta("horizon") == 0


async def test_the_run_settles_when_every_worker_is_gone_but_not_when_cancelled(
    checkpoint: Checkpoint,
) -> None:
    """The collector's task settles when its stream ends; a cancelled one leaves the horizon."""
    collector = collector_for(checkpoint)
    collector.dispatching(make_chunk(0))
    collector.dispatching(make_chunk(1))
    results_tx, results_rx = anyio.create_memory_object_stream[ChunkResult](4)
    async with anyio.create_task_group() as group:
        group.start_soon(collector.run, results_rx)
        async with results_tx:
            await results_tx.send(ok(make_chunk(0)))
    assert checkpoint.meta("in_doubt") == [1]
    assert checkpoint.meta("horizon") == 0

    cancelled = collector_for(checkpoint)
    cancelled.dispatching(make_chunk(1))
    assert checkpoint.meta("horizon") == 1 + HORIZON_STEP
    results_tx, results_rx = anyio.create_memory_object_stream[ChunkResult](4)
    async with anyio.create_task_group() as group:
        group.start_soon(cancelled.run, results_rx)
        await anyio.wait_all_tasks_blocked()  # the collector is running, waiting for results
        group.cancel_scope.cancel()
    assert checkpoint.meta("horizon") == 1 + HORIZON_STEP
    results_tx.close()


def test_after_a_kill_only_pending_chunks_and_one_step_past_the_last_commit_are_in_doubt(
    checkpoint: Checkpoint,
) -> None:
    """A killed pass leaves pending plus (dispatched_to, horizon): not every unrecorded chunk
    below the horizon, which after a long pass is most of the input."""
    killed = collector_for(checkpoint)
    for chunk_id in range(40):
        killed.dispatching(make_chunk(chunk_id))
        if chunk_id >= 5:
            killed._merge(ok(make_chunk(chunk_id - 5)))  # five in flight all along
    killed.commit()  # 0..34 recorded; 35..39 pending
    for chunk_id in range(40, 44):
        killed.dispatching(make_chunk(chunk_id))  # handed over after the last commit
    killed._merge(ok(make_chunk(35)))  # finished, never committed: then kill -9
    assert checkpoint.meta("horizon") == HORIZON_STEP
    resumed = collector_for(checkpoint)
    expected = list(range(35, HORIZON_STEP))  # 35..39 pending, 40..63 up to the horizon
    assert checkpoint.meta("in_doubt") == expected
    assert checkpoint.meta("horizon") == 0  # the dead pass is settled before this one sends
    resent = [make_chunk(chunk_id) for chunk_id in (35, 39, 63, HORIZON_STEP)]
    for chunk in resent:
        resumed.dispatching(chunk)
    assert [resumed.goes_out_in_doubt(chunk.id) for chunk in resent] == [True, True, True, False]


def test_a_checkpoint_of_an_older_ozbulk_keeps_every_chunk_below_the_horizon_in_doubt(
    checkpoint: Checkpoint,
) -> None:
    """Without a record of what was pending (an older ozbulk died), the horizon alone decides."""
    checkpoint.set_horizon(10)
    collector_for(checkpoint)
    assert checkpoint.meta("in_doubt") == list(range(10))


# -- what a pass starts from ----------------------------------------------------------------


async def test_a_pass_reads_what_it_starts_from_once_and_hands_it_to_the_stages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each part of the checkpoint a pass starts from is read once (PassStart), not once per
    stage; the selection, the collector, the pacer and telemetry start from it."""
    numbers = tmp_path / "numbers.csv"
    numbers.write_text("phone\n" + "".join(f"98765{n:05d}\n" for n in range(300)))
    settings = RunSettings(
        inputs=InputSettings(paths=(str(numbers),)), group_id=1, user="demo",
        api_key=Secret("demo-key"), checkpoint=tmp_path / "c.ckpt",
        base_url="http://127.0.0.1:9", producer_process=False,
    )  # fmt: skip
    checkpoint = open_checkpoint(settings)
    limit = {"quota": 50, "window": 60.0, "kind": "sliding", "learned_at": 1.0}
    counters = {"passes": 2, "requests": 7, "token_issued_at": [123.0], "server_limit": limit}
    checkpoint.record([done_row(0, deleted=60), failed_row(2)], [], counters)
    checkpoint.set_horizon(3, {"pending": [1], "dispatched_to": 2, "horizon": 3})
    reads: Counter[tuple[Any, ...]] = Counter()
    for name in ("meta", "ids", "sums"):
        read = getattr(Checkpoint, name)

        def counted(self: Checkpoint, *args: Any, _read: Any = read, _name: str = name,
                    **kwargs: Any) -> Any:  # fmt: skip
            reads[(_name, *args[:1], *sorted(kwargs.items()))] += 1
            return _read(self, *args, **kwargs)

        monkeypatch.setattr(Checkpoint, name, counted)
    try:
        run = Run(settings, checkpoint)
        assert len(reads) == 10 and max(reads.values()) == 1, reads
        start = run.start
        assert (list(start.done), list(start.failed)) == ([0], [2])
        assert [run.selection.wants(chunk) for chunk in range(4)] == [False, True, True, True]
        assert start.token_issued_at == (123.0,) and start.passes == 2
        assert run.telemetry.pass_number == 3
        assert run.pacer.limit == start.server_limit is not None
        assert (run.collector.totals.chunks_done, run.collector.totals.deleted) == (1, 60)
        assert run.collector.counters()["token_issued_at"] == [123.0]
        assert run.collector.goes_out_in_doubt(1) is False  # nothing dispatched yet
        run.collector.dispatching(make_chunk(1))
        assert run.collector.goes_out_in_doubt(1)  # left by the dead pass
    finally:
        checkpoint.close()
