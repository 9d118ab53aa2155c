"""The collector: the only writer of the checkpoint, and the keeper of the run's totals.

Results arrive out of order from the workers. Each is merged into the totals at once (for the
progress display) and journalled in batches: one transaction every ``commit_interval`` seconds,
so durability costs one fsync per batch. A chunk is counted from its checkpoint row, which exists
once, so no chunk is ever counted twice: a chunk that failed in an earlier pass and is finished
now replaces its old outcome in the totals, as its row replaces the old row.

In doubt: a chunk that an earlier pass may have sent without recording its verdict (it was in
flight, or its answer was not yet committed, when that pass died; or it failed after attempts that
may have reached the server) is marked *in doubt* when it is sent again. The server may have
applied it already, so its numbers can come back with ``deleted`` 0: they are counted as not
found, and the report lists the chunk in in_doubt.csv instead of calling anything a failure.

Which chunks those are is kept in two forms:

- the *horizon*, for a pass that dies: every chunk at or past it is recorded or was never sent.
  It moves ahead in steps, committed before the chunks it covers leave the producer, so after a
  ``kill -9`` every unrecorded chunk below it is in doubt (a few more than were really in flight).
- the exact set, for a pass that ends in order (complete, or drained after Ctrl-C): once every
  worker has stopped, the chunks sent without a recorded verdict are known exactly. They are
  stored, and the horizon drops to 0, so that a resume after a graceful stop marks only those.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream
from pyroaring import BitMap

from engine import streams
from engine.batcher import Chunk, InputCounts, Reject
from engine.checkpoint import DONE, FAILED, Checkpoint, ChunkRecord
from engine.errors import CircuitOpen
from engine.workers import ChunkResult, LiveStats

log = logging.getLogger(__name__)

RESENT_AFTER_INTERRUPTION = (
    "sent again after an interruption: the interrupted run may have applied it, so numbers "
    "not found were probably deleted then"
)
RESENT_AFTER_FAILURE = (
    "sent again after failing in an earlier pass: an attempt then may have been applied, so "
    "numbers not found were probably deleted then"
)


@dataclass(slots=True)
class Totals:
    """Outcomes of the chunks finished so far, this pass and earlier ones together."""

    chunks_done: int = 0
    chunks_failed: int = 0
    sent: int = 0
    success: int = 0
    error: int = 0
    deleted: int = 0
    in_doubt_chunks: int = 0
    failed_numbers: int = 0
    numbers_finished_this_pass: int = 0


@dataclass
class CircuitBreaker:
    """Opens when at least ``ratio`` of the last ``window`` chunks failed after all retries."""

    window: int
    ratio: float
    _recent: deque[bool] = field(default_factory=deque)
    _failures: int = 0  # among _recent, kept as they come and go: no sum over the window

    def record(self, failed: bool) -> None:
        recent = self._recent
        recent.append(failed)
        self._failures += failed
        if len(recent) > self.window:
            self._failures -= recent.popleft()
        failures = self._failures
        if len(recent) >= self.window and failures >= self.ratio * self.window:
            raise CircuitOpen(
                f"stopped: {failures} of the last {self.window} chunks failed after every retry; "
                "the server looks broken. Nothing is lost: re-run the same command to resume "
                "once it recovers (tune with --breaker-window / --breaker-ratio)"
            )


def _error_detail(chunk: Chunk, errors: list[str], write: Any) -> list[tuple[str, int, int]]:
    """Match the numbers the API listed in ``error`` back to their file and line."""
    if not errors:
        return []  # the common case: no lookup table to build for each chunk
    where: dict[str, tuple[int, int]] = {}
    for number, file, line in zip(chunk.numbers, chunk.files, chunk.lines, strict=True):
        origin = (file, line)
        where[write(number)] = origin
        where[f"+{number}"] = origin
        where[str(number)] = origin
    return [(text, *where.get(text, (-1, 0))) for text in errors]


class Collector:
    """Merge results into totals and the checkpoint; owns every write to the checkpoint."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        stats: LiveStats,
        counters: dict[str, Any],
        in_doubt_below: int,
        breaker: CircuitBreaker,
        write: Any,
        commit_interval: float,
        horizon_step: int,
    ) -> None:
        self.checkpoint = checkpoint
        self.stats = stats
        self.totals = Totals()
        self._counters_before = dict(counters)
        self._in_doubt_below = in_doubt_below
        self._breaker = breaker
        self._write = write
        self._interval = commit_interval
        self._horizon_step = horizon_step
        self._horizon = checkpoint.meta("horizon", 0)
        # Chunks recorded as failed by an earlier pass: resending one replaces its old outcome.
        self._failed_before = checkpoint.ids(FAILED)
        self._failed_in_doubt = checkpoint.ids(FAILED, in_doubt=True)
        # In doubt as of the last pass that ended in order (see the module's docstring).
        self._in_doubt_settled = BitMap(checkpoint.meta("in_doubt", []) or [])
        # This pass: chunks handed to the workers, reported sent (if the workers say), finished.
        self._dispatched = BitMap()
        self._sent = BitMap()
        self._sent_reported = False
        self._settled = False
        self._write_lock = anyio.Lock()
        self._records: list[ChunkRecord] = []
        self._rejects: list[Reject] = []
        self._producer_state: tuple[int, str] | None = None
        self.token_refreshes: Any = lambda: 0
        self.token_issued_at: Any = lambda: list(counters.get("token_issued_at", []))
        # The producer's live counts, set by the pipeline; stored so that `ozbulk status` can
        # tell how many chunks remain. A complete reading, once stored, is final.
        self.input_counts: InputCounts | None = None
        self._input_stored: dict[str, Any] = checkpoint.meta("input") or {}

    def load_totals(self) -> None:
        sums = self.checkpoint.sums()
        totals = self.totals
        totals.chunks_done, totals.chunks_failed = sums["chunks_done"], sums["chunks_failed"]
        totals.sent, totals.success = sums["sent"], sums["success"]
        totals.error, totals.deleted = sums["error"], sums["deleted"]
        totals.in_doubt_chunks, totals.failed_numbers = (
            sums["in_doubt_chunks"],
            sums["failed_numbers"],
        )

    # -- called synchronously by the producer, in the same event loop ----------------------
    def reject(self, reject: Reject) -> None:
        self._rejects.append(reject)

    def producer_state(self, next_chunk: int, file: str) -> None:
        """Record this producer state's file with the next commit, after the rejects before it."""
        self._producer_state = (next_chunk, file)

    def dispatching(self, chunk: Chunk) -> None:
        """Called before a chunk is handed to the workers: mark it, and move the horizon.

        The horizon is committed before the chunk leaves, so a crash an instant later still
        finds it covered.
        """
        if (
            chunk.id < self._in_doubt_below
            or chunk.id in self._in_doubt_settled
            or chunk.id in self._failed_before
        ):
            chunk.in_doubt = True
        self._dispatched.add(chunk.id)
        if self._needs_horizon(chunk):
            self._horizon = chunk.id + self._horizon_step
            self.checkpoint.set_horizon(self._horizon)

    def _needs_horizon(self, chunk: Chunk) -> bool:
        return chunk.id >= self._horizon and not self._settled

    async def dispatch(self, chunk: Chunk) -> None:
        """:meth:`dispatching` for the event loop: a horizon write waits for the writer thread."""
        if self._needs_horizon(chunk):
            async with self._write_lock:
                await anyio.to_thread.run_sync(self.dispatching, chunk)
        else:
            self.dispatching(chunk)

    def sending(self, chunk: Chunk) -> None:
        """Called by a worker just before a chunk's first request (``WorkerContext.on_send``).

        A caller that does not report sends (a unit test) gets the cautious answer instead:
        every dispatched chunk counts as maybe sent, buffered ones included.
        """
        self._sent_reported = True
        self._sent.add(chunk.id)

    # -- the task ---------------------------------------------------------------------------
    async def run(self, results: MemoryObjectReceiveStream[ChunkResult]) -> None:
        # Commits are driven by a ticker, not by a timeout around receive(): cancelling a
        # receive could drop a result that had just been handed over.
        async with results, anyio.create_task_group() as ticker:
            ticker.start_soon(self._tick)
            while True:
                try:
                    result = await streams.receive(results)
                except anyio.EndOfStream:
                    break
                self._merge(result)
            ticker.cancel_scope.cancel()
        # Every worker has closed its end of the stream: none has a request in flight, so
        # what is in doubt is now known exactly. (A cancelled run never gets here.)
        self.settle()

    async def _tick(self) -> None:
        while True:
            await anyio.sleep(self._interval)
            await self.commit_in_thread()

    async def commit_in_thread(self) -> None:
        """:meth:`commit` with its fsync in a worker thread, so requests keep flowing meanwhile.

        Results merged while it writes wait for the next commit. The thread cannot be abandoned
        half-way (anyio defers a cancellation until it returns), and the lock keeps every other
        write, the horizon's included, out of the connection until then.
        """
        async with self._write_lock:
            records, rejects, state = self._records, self._rejects, self._producer_state
            self._records, self._rejects, self._producer_state = [], [], None
            counters, input_counts = self.counters(), self._input_update()
            try:
                await anyio.to_thread.run_sync(
                    partial(self.checkpoint.record, records, rejects, counters,
                            input_counts=input_counts, producer_state=state)
                )  # fmt: skip
            except BaseException:
                self._records[:0], self._rejects[:0] = records, rejects  # not committed: keep
                self._producer_state = self._producer_state or state
                raise

    def settle(self) -> None:
        """Commit, then store the exact set of chunks in doubt and drop the horizon to 0.

        Only for when no request can still be in flight. Killed between the two transactions,
        the horizon is still up: safe, merely less precise.
        """
        self.commit()
        checkpoint = self.checkpoint
        sent = self._sent if self._sent_reported else self._dispatched
        maybe_sent = self._in_doubt_settled | sent | BitMap(range(self._in_doubt_below))
        in_doubt = maybe_sent - checkpoint.ids(DONE) - checkpoint.ids(FAILED)
        checkpoint.settle(list(in_doubt))
        self._settled = True
        self._horizon = 0

    def _merge(self, result: ChunkResult) -> None:
        chunk, verdict, totals = result.chunk, result.verdict, self.totals
        totals.numbers_finished_this_pass += len(chunk.numbers)
        failed_before = chunk.id in self._failed_before
        if failed_before:
            # The earlier failure's row is about to be replaced: take it out of the totals.
            self._failed_before.discard(chunk.id)
            totals.chunks_failed -= 1
            totals.failed_numbers -= len(chunk.numbers)
            if chunk.id in self._failed_in_doubt:
                self._failed_in_doubt.discard(chunk.id)
                totals.in_doubt_chunks -= 1
        if chunk.in_doubt:
            totals.in_doubt_chunks += 1
        if verdict is None:
            totals.chunks_failed += 1
            totals.failed_numbers += len(chunk.numbers)
            detail = [
                (self._write(number), file, line)
                for number, file, line in zip(chunk.numbers, chunk.files, chunk.lines, strict=True)
            ]
            record = ChunkRecord(
                chunk.id, FAILED, len(chunk.numbers), 0, 0, 0, result.attempts, chunk.in_doubt,
                result.reason, detail,
            )  # fmt: skip
            log.warning(
                "chunk %d failed after %d attempts: %s", chunk.id, result.attempts, result.reason
            )
        else:
            totals.chunks_done += 1
            totals.sent += len(chunk.numbers)
            totals.success += verdict.success
            totals.error += len(verdict.error)
            totals.deleted += verdict.deleted
            why = ""
            if chunk.in_doubt:
                why = RESENT_AFTER_FAILURE if failed_before else RESENT_AFTER_INTERRUPTION
            record = ChunkRecord(
                chunk.id, DONE, len(chunk.numbers), verdict.success, len(verdict.error),
                verdict.deleted, result.attempts, chunk.in_doubt, why,
                _error_detail(chunk, verdict.error, self._write),
            )  # fmt: skip
        self._records.append(record)
        self._breaker.record(result.failed)

    def counters(self) -> dict[str, Any]:
        before, stats = self._counters_before, self.stats
        return {
            # Kept so that a resume within the hour still counts them against the budget.
            "token_issued_at": self.token_issued_at(),
            "requests": before.get("requests", 0) + stats.requests,
            "retries": before.get("retries", 0) + stats.retries,
            "rate_limited": before.get("rate_limited", 0) + stats.rate_limited,
            "token_refreshes": before.get("token_refreshes", 0) + self.token_refreshes(),
            "passes": before.get("passes", 0) + 1,
        }

    def commit(self) -> None:
        """One transaction for everything merged since the last commit."""
        self.checkpoint.record(
            self._records, self._rejects, self.counters(), input_counts=self._input_update(),
            producer_state=self._producer_state,
        )  # fmt: skip
        self._records, self._rejects, self._producer_state = [], [], None

    def _input_update(self) -> dict[str, Any] | None:
        """What the input holds, if it says more than the checkpoint already knows."""
        counts = self.input_counts
        stored = self._input_stored
        if counts is None or stored.get("finished") or counts.rows < stored.get("rows", 0):
            return None
        self._input_stored = {
            "rows": counts.rows,
            "accepted": counts.accepted,
            "rejected": counts.rejected,
            "duplicates": counts.duplicates,
            "chunks": counts.chunks,
            "finished": counts.finished,
        }
        return self._input_stored

    @property
    def pending(self) -> int:
        return len(self._records)
