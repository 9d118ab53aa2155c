"""The collector: the only writer of the checkpoint, and the keeper of the run's totals.

Results arrive out of order from the workers. Each is merged into the totals at once (for the
progress display) and journalled in batches: one transaction every ``commit_interval`` seconds,
so durability costs one fsync per batch. A chunk is counted from its checkpoint row, which exists
once, so no chunk is ever counted twice.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from engine.batcher import Chunk, Reject
from engine.checkpoint import DONE, FAILED, Checkpoint, ChunkRecord
from engine.errors import CircuitOpen
from engine.workers import ChunkResult, LiveStats

log = logging.getLogger(__name__)


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

    def record(self, failed: bool) -> None:
        self._recent.append(failed)
        if len(self._recent) > self.window:
            self._recent.popleft()
        failures = sum(self._recent)
        if len(self._recent) >= self.window and failures >= self.ratio * self.window:
            raise CircuitOpen(
                f"stopped: {failures} of the last {self.window} chunks failed after every retry; "
                "the server looks broken. Nothing is lost: re-run the same command to resume "
                "once it recovers (tune with --breaker-window / --breaker-ratio)"
            )


def _error_detail(chunk: Chunk, errors: list[str], write: Any) -> list[tuple[str, int, int]]:
    """Match the numbers the API listed in ``error`` back to their file and line."""
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
        counters: dict[str, int],
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
        self._records: list[ChunkRecord] = []
        self._rejects: list[Reject] = []
        self.token_refreshes: Any = lambda: 0

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

    def dispatching(self, chunk: Chunk) -> None:
        """Called before a chunk is handed to the workers.

        The checkpoint keeps a *horizon*: a promise that no chunk at or past it was ever sent.
        It is moved ahead in steps, committed before the chunks it covers leave, so after a
        crash every unfinished chunk below it is known to be *in doubt* (maybe applied).
        """
        if chunk.id < self._in_doubt_below:
            chunk.in_doubt = True
        if chunk.id >= self._horizon:
            self._horizon = chunk.id + self._horizon_step
            self.checkpoint.set_horizon(self._horizon)

    # -- the task ---------------------------------------------------------------------------
    async def run(self, results: MemoryObjectReceiveStream[ChunkResult]) -> None:
        # Commits are driven by a ticker, not by a timeout around receive(): cancelling a
        # receive could drop a result that had just been handed over.
        async with results, anyio.create_task_group() as ticker:
            ticker.start_soon(self._tick)
            async for result in results:
                self._merge(result)
            ticker.cancel_scope.cancel()

    async def _tick(self) -> None:
        while True:
            await anyio.sleep(self._interval)
            self.commit()

    def _merge(self, result: ChunkResult) -> None:
        chunk, verdict, totals = result.chunk, result.verdict, self.totals
        totals.numbers_finished_this_pass += len(chunk.numbers)
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
            record = ChunkRecord(
                chunk.id, DONE, len(chunk.numbers), verdict.success, len(verdict.error),
                verdict.deleted, result.attempts, chunk.in_doubt, "",
                _error_detail(chunk, verdict.error, self._write),
            )  # fmt: skip
        self._records.append(record)
        self._breaker.record(result.failed)

    def counters(self) -> dict[str, int]:
        before, stats = self._counters_before, self.stats
        return {
            "requests": before.get("requests", 0) + stats.requests,
            "retries": before.get("retries", 0) + stats.retries,
            "rate_limited": before.get("rate_limited", 0) + stats.rate_limited,
            "token_refreshes": before.get("token_refreshes", 0) + self.token_refreshes(),
            "passes": before.get("passes", 0) + 1,
        }

    def commit(self) -> None:
        """One transaction for everything merged since the last commit."""
        self.checkpoint.record(self._records, self._rejects, self.counters())
        self._records, self._rejects = [], []

    @property
    def pending(self) -> int:
        return len(self._records)
