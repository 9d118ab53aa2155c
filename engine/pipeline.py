"""One run of ``ozbulk delete``: the stages wired together in one task group.

::

    producer ──chunks──► workers (N) ──results──► collector ──► checkpoint
    (read, normalize,    (pace, auth, DELETE,     (totals, journal,
     dedupe, chunk)       verdict, retry)          circuit breaker)

Streams are bounded, so the producer waits while the workers are busy and a 50-million-row file
never sits in memory. A graceful stop (first Ctrl-C or SIGTERM) stops the producer and lets the
requests in flight finish; a second one cancels them. Either way the collector commits last.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from engine import streams
from engine.batcher import Producer
from engine.checkpoint import (
    Checkpoint,
    fingerprint,
    fingerprint_file,
    move_aside,
    states_dir,
)
from engine.client import OzonetelClient
from engine.collector import CircuitBreaker, Collector, Tokens
from engine.errors import (
    CheckpointWriteError,
    ExitCode,
    InputError,
    InputFailedMidRun,
    OzbulkError,
)
from engine.exporters import Exporters, TelemetryOptions
from engine.guard import COUNTER_KEY as GUARD_KEY
from engine.guard import FirstContact, NotFoundGuard
from engine.numbers import Normalizer, formatter
from engine.pacing import Pacer
from engine.pass_start import PassStart
from engine.producer_process import ChunkSource, ProducerInProcess, ProducerProcess
from engine.records import Chunk, ChunkResult, InputCounts, LiveStats
from engine.report import default_report_dir, write_report
from engine.run_view import Display
from engine.selection import Selection
from engine.settings import RunSettings
from engine.summary import PassFigures, Summary
from engine.telemetry import Telemetry
from engine.workers import WorkerContext, worker

log = logging.getLogger(__name__)


@dataclass
class StopControl:
    """Counts stop requests: the first drains, the second cancels."""

    requests: int = 0
    reason: str = ""
    _on_change: list[Callable[[], None]] = field(default_factory=list)

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every stop request (the run decides what each one means)."""
        self._on_change.append(callback)

    def request(self, reason: str) -> None:
        self.requests += 1
        self.reason = self.reason or reason
        for callback in self._on_change:
            callback()


@dataclass
class RunOutcome:
    """How a run ended: its summary, its exit code, and the error that stopped it, if one did."""

    result: Summary
    exit_code: int
    error: OzbulkError | None = None

    @property
    def summary(self) -> dict[str, Any]:
        """The summary's JSON keys (those of summary.json and --summary-json), every text
        redacted."""
        return self.result.to_json()


def run_identity(settings: RunSettings) -> dict[str, Any]:
    """Everything that decides which numbers go into which chunk, and where they go."""
    inputs = settings.inputs
    files: list[dict[str, Any]] = []
    for path in inputs.paths:
        if path == "-":
            # Standard input cannot be read twice: its run can never be resumed.
            files.append({"path": "-", "run": uuid.uuid4().hex})
        else:
            files.append(fingerprint_file(path))
    return {
        "inputs": files,
        "group_id": settings.group_id,
        "user": settings.user,
        "column": inputs.column,
        "country": inputs.country,
        "number_format": inputs.number_format,
        "batch_size": inputs.batch_size,
    }


def display_settings(settings: RunSettings) -> dict[str, Any]:
    """The settings `ozbulk status` shows; no secret among them."""
    return {
        "host": settings.host,
        "base_url": settings.base_url_shown,
        "path": settings.path,
        "auth": settings.auth,
        "rate": settings.pace_text,
        "concurrency": settings.concurrency,
        "inputs": list(settings.inputs.paths),
        "group_id": settings.group_id,
        "user": settings.user,
        "checkpoint": str(settings.checkpoint),
    }


class Run:
    """Holds one run's parts so that progress and the summary can read them while it goes."""

    def __init__(self, settings: RunSettings, checkpoint: Checkpoint) -> None:
        self.settings = settings
        self.checkpoint = checkpoint
        self.normalizer = Normalizer(settings.inputs.country)
        self.write = formatter(settings.inputs.number_format, self.normalizer.country_code)
        self.stats = LiveStats()
        # The checkpoint as earlier passes left it, read once; the stages take their parts.
        self.start = start = PassStart.load(checkpoint)
        self.pacer = Pacer(
            settings.rate,
            auto=settings.rate_auto and settings.rate is None,
            prior=start.server_limit,
            unit=settings.rate_per,
        )
        self.telemetry = Telemetry(
            start.telemetry,
            pass_number=start.passes + 1,
            pacer=self.pacer,
            input_finished=lambda: self.source.counts.finished,  # the source is made below
        )
        self.guard = NotFoundGuard(
            start.counters.get(GUARD_KEY),
            allow=settings.allow_not_found,
            deleted_before=start.sums["deleted"],
            group_id=settings.group_id,
            number_example=self.write(int(f"{self.normalizer.country_code}9876543210")),
        )
        # The client's auth fills them in once the session opens (see execute).
        self.tokens = Tokens(start.token_issued_at)
        self.collector = Collector(
            checkpoint,
            start=start,
            stats=self.stats,
            breaker=CircuitBreaker(settings.breaker_window, settings.breaker_ratio),
            guard=self.guard,
            write=self.write,
            commit_interval=settings.commit_interval,
            horizon_step=horizon_step(settings.concurrency),
            server_limit=lambda: self.pacer.limit,
            telemetry=self.telemetry,
            tokens=self.tokens,
            # The source is made next (it reports rejects to the collector); nothing is
            # committed before execute.
            input_counts=lambda: self.source.counts,
        )
        # The one decision of which chunks this pass sends: the producer and its state go by it.
        self.selection = Selection.build(
            done=start.done, failed=start.failed, retry_failed=settings.retry_failed
        )
        self.source = self._chunk_source()
        self.stopping = anyio.Event()
        self.started = time.monotonic()
        # Results merged but never committed (the checkpoint stopped taking writes): they are
        # not counted in the summary, and a resume sends their chunks again, in doubt.
        self.unrecorded_chunks = 0
        # An input that failed after chunks were sent: the run drains, then stops with it.
        self.input_error: InputError | None = None

    def _chunk_source(self) -> ChunkSource:
        """The producer runs in a child process (the second core) unless it reads stdin."""
        inputs = self.settings.inputs
        selection = self.selection
        if self.settings.producer_process and not inputs.from_stdin:
            return ProducerProcess(
                inputs,
                selection,
                self.collector.reject,
                start=self.checkpoint.producer_state(selection.first()),
                on_state=self.collector.producer_state,
                state_dir=states_dir(self.checkpoint.path),
                state_every=self.settings.producer_state_rows,
            )
        producer = Producer(inputs, self.normalizer, self.collector.reject)
        return ProducerInProcess(producer, selection)

    @property
    def counts(self) -> InputCounts:
        return self.source.counts

    @property
    def skipped_chunks(self) -> int:
        return self.source.skipped

    async def produce(self, chunks: MemoryObjectSendStream[Chunk]) -> None:
        # aclosing: a stop ends the producer (and kills its process) now, not at garbage time.
        async with chunks, contextlib.aclosing(self.source.chunks()) as source:
            try:
                async for chunk in source:
                    if self.stopping.is_set():
                        return
                    await self.collector.dispatch(chunk)
                    try:
                        await streams.send(chunks, chunk)
                    except anyio.BrokenResourceError:
                        return  # every worker has stopped (a graceful stop): nothing to feed
            except InputError as error:
                if not self.collector.dispatched:
                    raise  # nothing was sent: a plain bad input (exit 2)
                # Part-way: stop as after Ctrl-C, so the requests in flight finish and count.
                self.input_error = error
                self.stopping.set()

    async def execute(
        self, stop: StopControl | None, progress: Display | None
    ) -> OzbulkError | None:
        settings = self.settings
        chunks_tx, chunks_rx = anyio.create_memory_object_stream[Chunk](settings.concurrency * 2)
        results_tx, results_rx = anyio.create_memory_object_stream[ChunkResult](
            settings.concurrency * 2
        )
        error: OzbulkError | None = None
        try:
            self.guard.check_start()
        except OzbulkError as refused:
            return refused
        async with OzonetelClient.open_session(settings) as session:
            earlier = self.start.token_issued_at
            # The workers' pacer: token requests count against the same server window.
            client = OzonetelClient(settings, session, pacer=self.pacer, token_issued_at=earlier)
            self.tokens.follow(client.auth)
            context = WorkerContext(
                client=client,
                pacer=self.pacer,
                stats=self.stats,
                max_attempts=settings.max_attempts,
                backoff_base=settings.backoff_base,
                backoff_cap=settings.backoff_cap,
                write=self.write,
                stopping=self.stopping,
                on_send=self.collector.sending,
                first_contact=FirstContact(settings.url),
                telemetry=self.telemetry,
            )
            self.telemetry.queued = lambda: chunks_tx.statistics().current_buffer_used
            try:
                async with anyio.create_task_group() as group:
                    if stop is not None:
                        stop.subscribe(lambda: self._on_stop(stop, group.cancel_scope))
                    group.start_soon(self.produce, chunks_tx)
                    group.start_soon(self.telemetry.run)
                    with chunks_rx, results_tx:
                        for _ in range(settings.concurrency):
                            group.start_soon(worker, chunks_rx.clone(), results_tx.clone(), context)
                    if progress is not None:
                        group.start_soon(progress.run, self)

                    async def collect() -> None:
                        await self.collector.run(results_rx)
                        group.cancel_scope.cancel()  # the progress display ends with the run

                    group.start_soon(collect)
            except BaseExceptionGroup as group_error:
                error = _first_ozbulk_error(group_error)
                if error is None:
                    raise
            except OzbulkError as single:
                error = single
        self.telemetry.sample_now()
        self.telemetry.finished = True
        try:
            # Every task has ended: no request is in flight, so what is in doubt is exact.
            self.collector.settle()
        except CheckpointWriteError as write_error:
            error = error or write_error
        if isinstance(error, CheckpointWriteError):
            self._count_only_what_was_committed()
        if error is None and self.input_error is not None:
            error = self._input_failed_mid_run(self.input_error)
        if error is None and self._input_held_no_number(stop):
            error = no_number_error(self.counts, "rejected.csv in the report")
        return error

    def _count_only_what_was_committed(self) -> None:
        """After a failed write, the summary tells what the checkpoint holds, not what was
        merged in memory: a resume goes by the checkpoint."""
        self.unrecorded_chunks = self.collector.pending
        with contextlib.suppress(sqlite3.Error):
            self.collector.load_totals()

    def _input_failed_mid_run(self, error: InputError) -> InputFailedMidRun:
        totals = self.collector.totals
        return InputFailedMidRun(
            f"stopped on bad input after sending {totals.numbers_finished_this_pass:,} numbers "
            f"in this pass ({totals.deleted:,} numbers deleted in all, recorded in the "
            f"checkpoint): {error}. Nothing past that point was sent. Re-running the same "
            "command resumes without sending a finished chunk again, and stops at the same "
            "place; a repaired copy of the file is a new input (--restart, or another "
            "--checkpoint)",
            cause=error,
        )

    def _input_held_no_number(self, stop: StopControl | None) -> bool:
        counts = self.counts
        return counts.finished and counts.accepted == 0 and not (stop and stop.requests)

    def _on_stop(self, stop: StopControl, scope: anyio.CancelScope) -> None:
        self.stopping.set()
        if stop.requests >= 2:
            scope.cancel()

    def summary(self) -> Summary:
        """The run's totals now, this pass and earlier ones together."""
        return Summary.of_run(
            self.counts,
            self.collector.totals,
            self.collector.counters(),
            this_pass=PassFigures(
                chunks_skipped=self.skipped_chunks,
                unrecorded_chunks=self.unrecorded_chunks,
                paused_by_server_s=round(self.pacer.paused_s, 3),
                elapsed_s=round(time.monotonic() - self.started, 3),
            ),
            checkpoint=str(self.checkpoint.path),
            fingerprint=fingerprint(self.checkpoint.identity()),
            telemetry=self._telemetry_summary(),
        )

    def _telemetry_summary(self) -> dict[str, Any]:
        self.telemetry.sample_now()  # the final commit, counted as finishing
        return self.telemetry.summary()


def no_number_error(counts: InputCounts, rejected_csv: str) -> InputError:
    """The error for an input read to its end without one number to send."""
    if counts.rows == 0:
        return InputError("the input holds no data rows: nothing to delete")
    return InputError(
        f"the input holds no phone number to send: {counts.rows:,} rows read, "
        f"{counts.rejected:,} rejected, {counts.duplicates:,} duplicates; {rejected_csv} says "
        "why each row was rejected (a wrong --column or --country?)"
    )


def horizon_step(concurrency: int) -> int:
    """Chunks one move of the horizon covers (see :mod:`engine.collector`).

    Each move is one committed write on the producer's path, so the step must outlast an fsync
    at full speed; after a ``kill -9`` at most a step of chunks never sent is marked in doubt,
    beyond what was in flight or queued. Twice the queue between producer and workers (itself
    twice the concurrency) keeps the workers fed while a move commits.
    """
    return max(32, 4 * concurrency)


def _first_ozbulk_error(group: BaseExceptionGroup[Any]) -> OzbulkError | None:
    for exception in group.exceptions:
        if isinstance(exception, OzbulkError):
            return exception
        if isinstance(exception, BaseExceptionGroup):
            found = _first_ozbulk_error(exception)
            if found is not None:
                return found
    return None


def exit_code_for(summary: Summary, error: OzbulkError | None, stop: StopControl | None) -> int:
    """How the pass ended: its error's code, interrupted, complete, or with failed chunks."""
    if error is not None:
        return error.exit_code
    if stop is not None and stop.requests:
        return ExitCode.INTERRUPTED
    return ExitCode.OK if summary.complete else ExitCode.FAILED_CHUNKS


async def watch_signals(stop: StopControl) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if stop.requests == 0:
                log.warning(
                    "%s: finishing the requests in flight, then stopping (again to cancel them)",
                    name,
                )
            else:
                log.warning("%s again: cancelling the requests in flight", name)
            stop.request(name)


def open_checkpoint(settings: RunSettings, *, restart: bool = False) -> Checkpoint:
    """Open (or create) the run's checkpoint; ``restart`` first moves an old one aside."""
    if restart and settings.checkpoint.exists():
        aside = move_aside(settings.checkpoint)
        log.warning("--restart: the old checkpoint was moved to %s", aside)
    return Checkpoint.for_run(
        settings.checkpoint, run_identity(settings), display_settings(settings)
    )


async def delete(
    settings: RunSettings,
    *,
    checkpoint: Checkpoint | None = None,
    stop: StopControl | None = None,
    progress: Display | None = None,
    handle_signals: bool = False,
    telemetry: TelemetryOptions | None = None,
) -> RunOutcome:
    """Run (or resume) a whole deletion; the public entry point behind ``ozbulk delete``."""
    settings.require_api_key()
    checkpoint = checkpoint or open_checkpoint(settings)
    try:
        run = Run(settings, checkpoint)
        stop = stop or StopControl()
        exporters = Exporters(telemetry or TelemetryOptions(), run)  # before anything is sent
        try:
            async with anyio.create_task_group() as outer:
                if handle_signals:
                    outer.start_soon(watch_signals, stop)
                outer.start_soon(exporters.run)
                error = await run.execute(stop, progress)
                outer.cancel_scope.cancel()
        finally:
            exporters.close()
        summary = run.summary()
        exit_code = exit_code_for(summary, error, stop)
        stopped_by = str(error) if error is not None else stop.reason if stop.requests else None
        summary = summary.ended(exit_code, stopped_by)
        report_dir = settings.report_dir or default_report_dir(settings.checkpoint)
        try:
            write_report(checkpoint, summary.to_json(), report_dir)
            summary = summary.with_report(str(report_dir))
        except OSError as report_error:
            log.error("could not write the report to %s: %s", report_dir, report_error)
        return RunOutcome(summary, exit_code, error)
    finally:
        checkpoint.close()
