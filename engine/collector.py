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

- the *horizon* and the *unsettled* record, for a pass that dies. Every chunk at or past the
  horizon is recorded or was never sent: it moves ahead in steps, committed before the chunks it
  covers leave the producer. Each commit (and each move of the horizon) also stores which chunks
  were handed to the workers and not yet recorded (``pending``) and the highest id handed over
  (``dispatched_to``). Chunks are handed over in increasing id order, so after a ``kill -9`` the
  chunks that may have been sent without a record are ``pending`` plus the ids between
  ``dispatched_to`` and the horizon: those in flight or queued at the last commit and at most
  one step beyond, not everything unrecorded below the horizon.
- the exact set, for a pass that ends in order (complete, drained after Ctrl-C, or cancelled
  and stopped): once every worker has stopped, the chunks sent without a recorded verdict are
  known exactly. They are stored, and the horizon drops to 0.

A pass begins by turning what a dead pass left into the exact set (and the horizon to 0), so
the horizon and the unsettled record always describe the current pass alone.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream
from pyroaring import BitMap

from engine import streams
from engine.checkpoint import DONE, FAILED, Checkpoint, ChunkRecord
from engine.errors import CircuitOpen
from engine.guard import COUNTER_KEY as GUARD_KEY
from engine.guard import NotFoundGuard
from engine.limits import Limit
from engine.pass_start import PassStart
from engine.records import Chunk, ChunkResult, InputCounts, LiveStats, Reject, Totals
from engine.telemetry import Telemetry

log = logging.getLogger(__name__)

RESENT_AFTER_INTERRUPTION = (
    "sent again after an interruption: the interrupted run may have applied it, so numbers "
    "not found were probably deleted then"
)
RESENT_AFTER_FAILURE = (
    "sent again after failing in an earlier pass: an attempt then may have been applied, so "
    "numbers not found were probably deleted then"
)


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


def _error_detail(
    chunk: Chunk, errors: list[str], write: Callable[[int], str]
) -> list[tuple[str, int, int]]:
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


class TokenMinter(Protocol):
    """What the checkpoint keeps of the run's auth (``engine.auth.Auth`` has it)."""

    refreshes: int

    def issued_at(self) -> list[float]: ...


class Tokens:
    """The run's tokens, as the checkpoint keeps them.

    Made before the collector, with the tokens earlier passes minted; the client's auth, made
    once the session opens (before any request), takes over with :meth:`follow`.
    """

    def __init__(self, earlier: Iterable[float] = ()) -> None:
        self._earlier = list(earlier)
        self._auth: TokenMinter | None = None

    def follow(self, auth: TokenMinter) -> None:
        self._auth = auth

    def refreshes(self) -> int:
        return 0 if self._auth is None else self._auth.refreshes

    def issued_at(self) -> list[float]:
        return list(self._earlier) if self._auth is None else self._auth.issued_at()


class Collector:
    """Merge results into totals and the checkpoint; owns every write to the checkpoint."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        start: PassStart,
        stats: LiveStats,
        breaker: CircuitBreaker,
        guard: NotFoundGuard | None = None,
        write: Callable[[int], str],
        commit_interval: float,
        horizon_step: int,
        server_limit: Callable[[], Limit | None] = lambda: None,
        telemetry: Telemetry | None = None,
        tokens: Tokens | None = None,
        input_counts: Callable[[], InputCounts | None] = lambda: None,
    ) -> None:
        self.checkpoint = checkpoint
        self.stats = stats
        self.totals = Totals()
        self._set_totals(start.sums)
        self._counters_before = dict(start.counters)
        self._breaker = breaker
        self.guard = guard
        self._write = write
        self._interval = commit_interval
        self._horizon_step = horizon_step
        self._server_limit = server_limit
        self.telemetry = telemetry
        # Chunks recorded as failed by an earlier pass: resending one replaces its old outcome.
        self._failed_before = BitMap(start.failed)
        self._failed_in_doubt = BitMap(start.failed_in_doubt)
        # In doubt from every earlier pass (see the module's docstring).
        self._in_doubt_settled = self._settle_earlier_passes(start)
        self._horizon = 0
        # This pass: chunks handed to the workers, reported sent (if the workers say), finished;
        # and handed over but not yet committed.
        self._dispatched = BitMap()
        # Of those, the chunks an earlier pass may have applied (marked when handed over).
        self._resent_in_doubt = BitMap()
        self._uncommitted = BitMap()
        self._sent = BitMap()
        self._sent_reported = False
        self._settled = False
        self._write_lock = anyio.Lock()
        self._records: list[ChunkRecord] = []
        self._rejects: list[Reject] = []
        self._producer_state: tuple[int, str] | None = None
        self._tokens = tokens or Tokens(start.token_issued_at)
        # The producer's live counts, stored so that `ozbulk status` can tell how many chunks
        # remain. A complete reading, once stored, is final.
        self._input_counts = input_counts
        self._input_stored: dict[str, Any] = dict(start.input)

    def _settle_earlier_passes(self, start: PassStart) -> BitMap:
        """What earlier passes may have sent without a record, stored as the exact set."""
        settled = BitMap(start.in_doubt)
        if not start.horizon:
            return settled  # the last pass ended in order
        settled |= left_by_a_dead_pass(start.horizon, start.unsettled)
        settled -= start.done
        self.checkpoint.settle(list(settled))
        return settled

    def _unsettled(self, pending: BitMap) -> dict[str, Any]:
        dispatched_to = self._dispatched.max() if self._dispatched else -1
        return {"pending": list(pending), "dispatched_to": dispatched_to, "horizon": self._horizon}

    def load_totals(self) -> None:
        """Read the totals again from what the checkpoint holds (after a failed write)."""
        self._set_totals(self.checkpoint.sums())

    def _set_totals(self, sums: Mapping[str, int]) -> None:
        totals = self.totals
        totals.chunks_done, totals.chunks_failed = sums["chunks_done"], sums["chunks_failed"]
        totals.sent, totals.success = sums["sent"], sums["success"]
        totals.error, totals.deleted = sums["error"], sums["deleted"]
        totals.in_doubt_chunks, totals.failed_numbers = (
            sums["in_doubt_chunks"],
            sums["failed_numbers"],
        )
        totals.probably_deleted_earlier = sums["probably_deleted_earlier"]

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
        if chunk.id in self._in_doubt_settled or chunk.id in self._failed_before:
            self._resent_in_doubt.add(chunk.id)
        self._dispatched.add(chunk.id)
        self._uncommitted.add(chunk.id)
        if self._needs_horizon(chunk):
            self._horizon = chunk.id + self._horizon_step
            self.checkpoint.set_horizon(self._horizon, self._unsettled(self._uncommitted))

    def goes_out_in_doubt(self, chunk_id: int) -> bool:
        """Whether a chunk this pass handed over may have been applied by an earlier pass."""
        return chunk_id in self._resent_in_doubt

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
            committed = BitMap(record.id for record in records)
            unsettled = self._unsettled(self._uncommitted - committed)
            try:
                await anyio.to_thread.run_sync(
                    partial(self.checkpoint.record, records, rejects, counters,
                            input_counts=input_counts, producer_state=state,
                            unsettled=unsettled, telemetry=self._telemetry_update())
                )  # fmt: skip
            except BaseException:
                self._records[:0], self._rejects[:0] = records, rejects  # not committed: keep
                self._producer_state = self._producer_state or state
                raise
            self._uncommitted -= committed

    def settle(self) -> None:
        """Commit, then store the exact set of chunks in doubt and drop the horizon to 0.

        Only for when no request can still be in flight. Killed between the two transactions,
        the horizon is still up: safe, merely less precise.
        """
        self.commit()
        checkpoint = self.checkpoint
        sent = self._sent if self._sent_reported else self._dispatched
        maybe_sent = self._in_doubt_settled | sent
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
        doubt = self._doubt(result, failed_before)
        in_doubt = bool(doubt)
        if in_doubt:
            totals.in_doubt_chunks += 1
        if verdict is None:
            totals.chunks_failed += 1
            totals.failed_numbers += len(chunk.numbers)
            detail = [
                (self._write(number), file, line)
                for number, file, line in zip(chunk.numbers, chunk.files, chunk.lines, strict=True)
            ]
            record = ChunkRecord(
                chunk.id, FAILED, len(chunk.numbers), 0, 0, 0, result.attempts, in_doubt,
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
            if in_doubt:
                totals.probably_deleted_earlier += (
                    len(chunk.numbers) - verdict.deleted - len(verdict.error)
                )
            record = ChunkRecord(
                chunk.id, DONE, len(chunk.numbers), verdict.success, len(verdict.error),
                verdict.deleted, result.attempts, in_doubt, doubt,
                _error_detail(chunk, verdict.error, self._write),
            )  # fmt: skip
        self._records.append(record)
        self._breaker.record(result.failed)
        if verdict is not None and self.guard is not None:
            self.guard.record(
                len(chunk.numbers), verdict.deleted, len(verdict.error), in_doubt=in_doubt
            )

    def _doubt(self, result: ChunkResult, failed_before: bool) -> str:
        """Why the chunk's row is in doubt, or "" if it is not.

        An earlier pass that may have applied the chunk is the reason given, even when an
        attempt of this pass may have applied it too: the earlier one deleted first.
        """
        if result.chunk.id in self._resent_in_doubt:
            return RESENT_AFTER_FAILURE if failed_before else RESENT_AFTER_INTERRUPTION
        return result.doubt

    def counters(self) -> dict[str, Any]:
        before, stats = self._counters_before, self.stats
        return {
            # Kept so that a resume within the hour still counts them against the budget.
            "token_issued_at": self._tokens.issued_at(),
            "requests": before.get("requests", 0) + stats.requests,
            "retries": before.get("retries", 0) + stats.retries,
            "rate_limited": before.get("rate_limited", 0) + stats.rate_limited,
            "token_refreshes": before.get("token_refreshes", 0) + self.token_refreshes(),
            "passes": before.get("passes", 0) + 1,
            # Kept so that a resume paces at the server's limit instead of learning it again.
            "server_limit": _learned(self._server_limit()) or before.get("server_limit"),
            **({} if self.guard is None else {GUARD_KEY: self.guard.decision}),
        }

    def commit(self) -> None:
        """One transaction for everything merged since the last commit."""
        committed = BitMap(record.id for record in self._records)
        self.checkpoint.record(
            self._records, self._rejects, self.counters(), input_counts=self._input_update(),
            producer_state=self._producer_state,
            unsettled=self._unsettled(self._uncommitted - committed),
            telemetry=self._telemetry_update(),
        )  # fmt: skip
        self._records, self._rejects, self._producer_state = [], [], None
        self._uncommitted -= committed

    def _telemetry_update(self) -> tuple[dict[str, Any], list[Any]] | None:
        telemetry = self.telemetry
        return None if telemetry is None else (telemetry.to_json(), telemetry.timeline_updates())

    def _input_update(self) -> dict[str, Any] | None:
        """What the input holds, if it says more than the checkpoint already knows."""
        counts = self._input_counts()
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

    def token_refreshes(self) -> int:
        """Tokens minted in this pass after the first."""
        return self._tokens.refreshes()

    @property
    def pending(self) -> int:
        return len(self._records)

    @property
    def dispatched(self) -> int:
        """Chunks handed to the workers in this pass: none means nothing was sent."""
        return len(self._dispatched)


def _learned(limit: Limit | None) -> dict[str, Any] | None:
    return None if limit is None or limit.learned_at is None else limit.to_json()


def left_by_a_dead_pass(horizon: int, unsettled: object) -> BitMap:
    """The chunks a pass that died with ``horizon`` up may have sent without a record.

    ``unsettled`` is that pass's last record of them (see the module's docstring). Without one
    that goes with this horizon (a checkpoint of an older ozbulk), every chunk below it.
    """
    if (
        isinstance(unsettled, dict)
        and unsettled.get("horizon") == horizon
        and isinstance(unsettled.get("dispatched_to"), int)
        and isinstance(unsettled.get("pending"), list)
        and all(isinstance(chunk, int) and chunk >= 0 for chunk in unsettled["pending"])
    ):
        beyond = range(max(unsettled["dispatched_to"] + 1, 0), horizon)
        return BitMap(unsettled["pending"]) | BitMap(beyond)
    return BitMap(range(horizon))
