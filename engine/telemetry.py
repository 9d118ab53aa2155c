"""Every run is a benchmark: what each request cost, what the server answered, where time went.

One :class:`Telemetry` per run records, on the event loop and without locks:

* every request's round trip into a :class:`LogHistogram` per outcome (admitted, refused as too
  fast, error), and separately each request's wait for its turn at the pacer;
* answers by HTTP status and by verdict kind, retries by cause, numbers and chunks by result;
* a 10-second timeline (requests, admitted, refused, errors, numbers deleted, pace held,
  latency p50/p99, requests in flight), written to the checkpoint by the collector so that a run
  stopped and resumed has one timeline;
* where the wall time went, sampled ten times a second (see :data:`PHASES`).

The histogram is our own fixed log buckets rather than ``hdrhistogram`` or ``ddsketch``: buckets
at fixed bounds merge by adding counts (across passes, from the checkpoint), serialise to a short
JSON list with no extra dependency, are exactly the cumulative buckets a Prometheus histogram
exposes, and recording is one ``log2`` and one list increment. Eight buckets per doubling keep any
percentile within 4.5 % of the true value, from 100 µs to 28 minutes, in 200 integers.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from engine.errors import (
    ApiError,
    FatalApiError,
    RateLimited,
    ServerError,
    TokenRejected,
    TransportError,
)

if TYPE_CHECKING:
    from engine.pacing import Pacer
    from engine.records import Verdict

T = TypeVar("T")

# -- the histogram ---------------------------------------------------------------------------
LOWEST_S = 1e-4  # the first bucket holds everything up to 100 µs
STEPS_PER_DOUBLING = 8
BUCKETS = 24 * STEPS_PER_DOUBLING + 1  # the last bucket holds everything above ~28 min
_SCALE = STEPS_PER_DOUBLING / math.log(2)
_LOG_LOWEST = math.log(LOWEST_S)
PERCENTILES = (50, 90, 95, 99)

OUTCOMES = ("admitted", "refused", "error")
# Verdict kinds of one answer (or non-answer): what the breakdowns and the request log show.
KINDS = (
    "success", "rate_limited", "token", "server_error", "fatal", "transport", "timeout",
)  # fmt: skip
# Where wall time goes, one phase at a time, in this order of precedence.
PHASES = (
    "start_up",  # from the run's start to its first request
    "paused_by_server",  # the pacer holds every worker until the server admits again
    "waiting_on_last_requests",  # the input is all sent: only the last answers are awaited
    "sending",  # requests in flight or waiting for their turn at the pace
    "backing_off",  # nothing in flight, a retry waits out its backoff
    "reading_input",  # nothing in flight, the workers wait for the producer's next chunk
    "finishing",  # after the last answer: the final commit and the report
)
SAMPLE_S = 0.1
BUCKET_S = 10.0  # the timeline's resolution


def bucket_of(seconds: float) -> int:
    """The index of the histogram bucket that holds ``seconds``."""
    if seconds <= LOWEST_S:
        return 0
    index = math.ceil((math.log(seconds) - _LOG_LOWEST) * _SCALE)
    return index if index < BUCKETS else BUCKETS - 1


def bucket_bound(index: int) -> float:
    """The upper bound of bucket ``index`` (infinite for the last)."""
    if index >= BUCKETS - 1:
        return math.inf
    return LOWEST_S * 2 ** (index / STEPS_PER_DOUBLING)


@dataclass(slots=True)
class LogHistogram:
    """Counts of durations in fixed log buckets: bounded, mergeable by adding, JSON-ready."""

    counts: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    total: int = 0
    sum: float = 0.0
    max: float = 0.0

    def record(self, seconds: float) -> None:
        self.counts[bucket_of(seconds)] += 1
        self.total += 1
        self.sum += seconds
        if seconds > self.max:
            self.max = seconds

    def merge(self, other: LogHistogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total
        self.sum += other.sum
        self.max = max(self.max, other.max)

    def percentile(self, percent: float) -> float | None:
        """The duration ``percent`` % of the recorded ones do not exceed; None if empty.

        The geometric middle of the bucket it falls in (within 4.5 % of the true value), never
        above the largest one seen.
        """
        if self.total == 0:
            return None
        rank = max(1, math.ceil(self.total * percent / 100))
        if rank >= self.total:
            return self.max  # known exactly
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                if index == 0:
                    return min(LOWEST_S, self.max)
                if index == BUCKETS - 1:
                    return self.max
                middle = LOWEST_S * 2 ** ((index - 0.5) / STEPS_PER_DOUBLING)
                return min(middle, self.max)
        return self.max  # pragma: no cover - the counts add up to total

    def cumulative(self, bounds: list[float]) -> list[int]:
        """How many recorded durations are <= each bound (bucket bounds, Prometheus ``le``)."""
        result, seen, index = [], 0, 0
        for bound in bounds:
            while index < BUCKETS and bucket_bound(index) <= bound * (1 + 1e-9):
                seen += self.counts[index]
                index += 1
            result.append(seen)
        return result

    def figures(self) -> dict[str, float | None]:
        """count, mean, p50/p90/p95/p99 and max, in milliseconds."""
        figures: dict[str, float | None] = {"count": self.total}
        if self.total:
            figures["mean_ms"] = _ms(self.sum / self.total)
            for percent in PERCENTILES:
                figures[f"p{percent}_ms"] = _ms(self.percentile(percent))
            figures["max_ms"] = _ms(self.max)
        return figures

    def to_json(self) -> dict[str, Any]:
        # Sparse: a run's durations fill a few dozen of the buckets.
        used = {str(index): count for index, count in enumerate(self.counts) if count}
        return {"buckets": used, "total": self.total, "sum": self.sum, "max": self.max}

    @classmethod
    def from_json(cls, data: object) -> LogHistogram:
        """A histogram read back from a checkpoint; an empty one for anything that is not one."""
        histogram = cls()
        if not isinstance(data, dict) or not isinstance(data.get("buckets"), dict):
            return histogram
        try:
            for key, count in data["buckets"].items():
                histogram.counts[min(int(key), BUCKETS - 1)] += int(count)
            histogram.total = int(data.get("total", sum(histogram.counts)))
            histogram.sum = float(data.get("sum", 0.0))
            histogram.max = float(data.get("max", 0.0))
        except (TypeError, ValueError):
            return cls()
        return histogram


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


# -- what one answer was ----------------------------------------------------------------------
def kind_of(error: BaseException | None) -> str:
    """The verdict kind of an answer: ``success`` or what the error of the error tree means."""
    if error is None:
        return "success"
    if isinstance(error, RateLimited):
        return "rate_limited"
    if isinstance(error, TokenRejected):
        return "token"
    if isinstance(error, TransportError):
        # The client raises its errors ``from None``: the timeout it translated stays the context.
        return "timeout" if isinstance(error.__context__, TimeoutError) else "transport"
    if isinstance(error, ServerError):
        return "server_error"
    if isinstance(error, FatalApiError):
        return "fatal"
    return "server_error"


def outcome_of(kind: str) -> str:
    if kind == "success":
        return "admitted"
    return "refused" if kind == "rate_limited" else "error"


def status_of(error: BaseException | None) -> str:
    """The HTTP status as a label: the answer's, ``none`` without one.

    The client hands back only the verdict of a successful answer, not its status: a success
    verdict is counted under ``success``.
    """
    if error is None:
        return "success"
    status = error.http_status if isinstance(error, ApiError) else None
    return "none" if status is None else str(status)


# -- the timeline -----------------------------------------------------------------------------
@dataclass(slots=True)
class TimelineBucket:
    """One 10-second bucket of the timeline, for one pass."""

    start: float  # wall-clock seconds, a multiple of BUCKET_S
    requests: int = 0
    admitted: int = 0
    refused: int = 0
    errors: int = 0
    deleted: int = 0
    latency: LogHistogram = field(default_factory=LogHistogram)
    pace_sum: float = 0.0  # summed over samples; None-paced (unlimited) samples are left out
    pace_samples: int = 0
    in_flight_sum: float = 0.0
    samples: int = 0
    paused_samples: int = 0

    def row(self) -> dict[str, float | None]:
        return {
            "requests": self.requests,
            "admitted": self.admitted,
            "refused": self.refused,
            "errors": self.errors,
            "deleted": self.deleted,
            "pace": round(self.pace_sum / self.pace_samples, 4) if self.pace_samples else None,
            "p50_ms": _ms(self.latency.percentile(50)),
            "p99_ms": _ms(self.latency.percentile(99)),
            "in_flight": round(self.in_flight_sum / self.samples, 2) if self.samples else 0.0,
            "paused_s": round(self.paused_samples * SAMPLE_S, 1),
            # The part of the bucket this pass covered (a pass starts and ends mid-bucket).
            "seconds": round(min(BUCKET_S, self.samples * SAMPLE_S), 1),
        }


TIMELINE_FIELDS = (
    "requests", "admitted", "refused", "errors", "deleted", "pace", "p50_ms", "p99_ms",
    "in_flight", "paused_s", "seconds",
)  # fmt: skip


# -- the recorder -----------------------------------------------------------------------------
RequestListener = Callable[[float, int, int, float, float, str, str, "float | None"], None]


class Telemetry:
    """What a run measures about itself; the workers call it, the collector stores it."""

    def __init__(
        self,
        stored: object = None,
        *,
        pass_number: int = 1,
        clock: Callable[[], float] = time.time,
        pacer: Pacer | None = None,
        input_finished: Callable[[], bool] = lambda: False,
    ) -> None:
        self.pass_number = pass_number
        self._wall = clock
        self.latency = {outcome: LogHistogram() for outcome in OUTCOMES}
        self.pacer_wait = LogHistogram()
        self.statuses: dict[str, int] = {}
        self.kinds: dict[str, int] = {}
        self.retries: dict[str, int] = {}
        self.numbers = {"deleted": 0, "not_found": 0, "error": 0, "failed": 0}
        self.chunks = {"done": 0, "failed": 0}
        self.backoff_s = 0.0
        self.phases = dict.fromkeys(PHASES, 0.0)
        self.passes: list[dict[str, Any]] = []
        self._load(stored)
        # This pass: live state read by the sampler.
        self.pacer = pacer
        self.in_flight = 0
        self.waiting_for_pace = 0
        self.backing_off = 0
        self.input_finished = input_finished
        # Chunks read and not yet taken by a worker: the run sets it once its stream exists.
        self.queued: Callable[[], int] = lambda: 0
        self.first_request: float | None = None
        self.finished = False
        self.started = self._wall()
        self._sampled_until = time.perf_counter()
        self.pass_phases = dict.fromkeys(PHASES, 0.0)
        self._bucket: TimelineBucket | None = None
        self._dirty: dict[float, TimelineBucket] = {}
        # Told of every answer (the request log): time, chunk, attempt, round trip, wait for
        # the pace, status, kind, Retry-After.
        self.listeners: list[RequestListener] = []

    def _load(self, stored: object) -> None:
        """Start from what earlier passes of the run stored: the figures cover the whole run."""
        if not isinstance(stored, dict):
            return
        latency = stored.get("latency") or {}
        if isinstance(latency, dict):
            for outcome in OUTCOMES:
                self.latency[outcome] = LogHistogram.from_json(latency.get(outcome))
        self.pacer_wait = LogHistogram.from_json(stored.get("pacer_wait"))
        for name in ("statuses", "kinds", "retries", "numbers", "chunks", "phases"):
            value = stored.get(name)
            if isinstance(value, dict):
                target = getattr(self, name)
                for key, count in value.items():
                    if isinstance(count, int | float):
                        target[str(key)] = target.get(str(key), 0) + count
        if isinstance(stored.get("backoff_s"), int | float):
            self.backoff_s = float(stored["backoff_s"])
        passes = stored.get("passes")
        if isinstance(passes, list):
            self.passes = [item for item in passes if isinstance(item, dict)]

    # -- called by the workers, on the event loop ---------------------------------------------
    async def turn(self, acquire: Awaitable[T]) -> tuple[T, float]:
        """Await a turn at the pacer; the ticket, and how long the wait took."""
        self.waiting_for_pace += 1
        start = time.perf_counter()
        try:
            ticket = await acquire
        finally:
            self.waiting_for_pace -= 1
        seconds = time.perf_counter() - start
        self.pacer_wait.record(seconds)
        return ticket, seconds

    async def request(self, answer: Awaitable[T], chunk_id: int, attempt: int, wait: float) -> T:
        """Await one request's answer, timing it and recording what it was."""
        if self.first_request is None:
            # Start-up ends here, exactly: account it now rather than at the next sample, which
            # would give a start-up shorter than a sampling interval to "sending".
            self.sample_now()
            self.first_request = time.perf_counter()
        self.in_flight += 1
        start = time.perf_counter()
        try:
            verdict = await answer
        except Exception as error:
            self.in_flight -= 1
            self._answered(time.perf_counter() - start, error, chunk_id, attempt, wait)
            raise
        except BaseException:
            self.in_flight -= 1  # cancelled: the run is ending, there was no answer
            raise
        self.in_flight -= 1
        self._answered(time.perf_counter() - start, None, chunk_id, attempt, wait)
        return verdict

    def _answered(
        self, seconds: float, error: Exception | None, chunk_id: int, attempt: int, wait: float
    ) -> None:
        kind = kind_of(error)
        outcome = outcome_of(kind)
        self.latency[outcome].record(seconds)
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        status = status_of(error)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        bucket = self._current_bucket()
        bucket.requests += 1
        if outcome == "admitted":
            bucket.admitted += 1
        elif outcome == "refused":
            bucket.refused += 1
        else:
            bucket.errors += 1
        bucket.latency.record(seconds)
        if self.listeners:
            retry_after = error.retry_after if isinstance(error, RateLimited) else None
            for listener in self.listeners:
                listener(self._wall(), chunk_id, attempt, seconds, wait, status, kind, retry_after)

    def retried(self, error: BaseException) -> None:
        cause = kind_of(error)
        self.retries[cause] = self.retries.get(cause, 0) + 1

    @contextlib.contextmanager
    def backoff(self) -> Iterator[None]:
        """Around a retry's backoff: what the phases and ``backoff_s`` count."""
        self.backing_off += 1
        start = time.perf_counter()
        try:
            yield
        finally:
            self.backing_off -= 1
            self.backoff_s += time.perf_counter() - start

    def chunk_finished(self, numbers: int, verdict: Verdict | None) -> None:
        """A chunk's result: ``verdict`` (deleted, error) or None when it failed."""
        if verdict is None:
            self.chunks["failed"] += 1
            self.numbers["failed"] += numbers
            return
        self.chunks["done"] += 1
        errors = len(verdict.error)
        self.numbers["deleted"] += verdict.deleted
        self.numbers["error"] += errors
        self.numbers["not_found"] += numbers - verdict.deleted - errors
        self._current_bucket().deleted += verdict.deleted

    # -- the timeline and the phases ---------------------------------------------------------
    def _current_bucket(self) -> TimelineBucket:
        start = self._wall() // BUCKET_S * BUCKET_S
        bucket = self._bucket
        if bucket is None or bucket.start != start:
            bucket = self._bucket = TimelineBucket(start)
            self._dirty[start] = bucket
        return bucket

    def phase(self) -> str:
        """What the run is doing now (see :data:`PHASES`)."""
        if self.finished:
            return "finishing"
        if self.first_request is None:
            return "start_up"
        pacer = self.pacer
        if pacer is not None and pacer.waiting_until is not None:
            return "paused_by_server"
        busy = self.in_flight > 0 or self.waiting_for_pace > 0
        if (
            self.in_flight > 0
            and not (self.waiting_for_pace or self.backing_off or self.queued())
            and self.input_finished()
        ):
            return "waiting_on_last_requests"
        if busy:
            return "sending"
        if self.backing_off:
            return "backing_off"
        return "reading_input"

    def sample(self, seconds: float) -> None:
        """Account ``seconds`` of wall time to the phase the run is in, and sample the gauges."""
        phase = self.phase()
        self.phases[phase] += seconds
        self.pass_phases[phase] += seconds
        bucket = self._current_bucket()
        bucket.samples += 1
        bucket.in_flight_sum += self.in_flight
        if phase == "paused_by_server":
            bucket.paused_samples += 1
        rate = None if self.pacer is None else self.pacer.rate
        if rate is not None:
            bucket.pace_sum += rate
            bucket.pace_samples += 1

    async def run(self) -> None:
        """Sample the run's phase ten times a second, until cancelled."""
        import anyio  # here: the report and `status` read this module without the event loop's

        while True:
            await anyio.sleep(SAMPLE_S)
            self.sample_now()

    def sample_now(self) -> None:
        """Account the wall time since the last sample (from the run's start, for the first)."""
        now = time.perf_counter()
        self.sample(now - self._sampled_until)
        self._sampled_until = now

    # -- what is stored, shown and exported ---------------------------------------------------
    def timeline_updates(self) -> list[tuple[float, int, dict[str, float | None]]]:
        """The buckets changed since the last call, as (start, pass, row) for the checkpoint."""
        dirty, self._dirty = self._dirty, {}
        if self._bucket is not None:
            self._dirty[self._bucket.start] = self._bucket  # still filling: written again
        return [(start, self.pass_number, bucket.row()) for start, bucket in dirty.items()]

    def this_pass(self) -> dict[str, Any]:
        figures: dict[str, Any] = {
            "pass": self.pass_number,
            "started_at": round(self.started, 3),
            "ended_at": round(self._wall(), 3),
            "time_s": {name: round(value, 2) for name, value in self.pass_phases.items()},
        }
        if self.pacer is not None:
            figures["pacer"] = pacer_figures(self.pacer)
        return figures

    def to_json(self) -> dict[str, Any]:
        """What the checkpoint keeps (meta ``telemetry``): every figure, earlier passes included."""
        return {
            "latency": {outcome: self.latency[outcome].to_json() for outcome in OUTCOMES},
            "pacer_wait": self.pacer_wait.to_json(),
            "statuses": dict(self.statuses),
            "kinds": dict(self.kinds),
            "retries": dict(self.retries),
            "numbers": dict(self.numbers),
            "chunks": dict(self.chunks),
            "backoff_s": round(self.backoff_s, 3),
            "phases": {name: round(value, 3) for name, value in self.phases.items()},
            "passes": [*self.passes, self.this_pass()],
        }

    def summary(self) -> dict[str, Any]:
        return summarize(self.to_json())


def summarize(stored: object) -> dict[str, Any]:
    """The figures summary.json and ``ozbulk status`` show, from what the checkpoint keeps."""
    telemetry = Telemetry(stored)
    latency = {outcome: telemetry.latency[outcome].figures() for outcome in OUTCOMES}
    every = LogHistogram()
    for histogram in telemetry.latency.values():
        every.merge(histogram)
    latency["all"] = every.figures()
    result: dict[str, Any] = {
        "latency": latency,
        "pacer_wait": telemetry.pacer_wait.figures(),
        "answers_by_status": dict(sorted(telemetry.statuses.items())),
        "answers_by_kind": dict(sorted(telemetry.kinds.items())),
        "retries_by_cause": dict(sorted(telemetry.retries.items())),
        "backoff_s": round(telemetry.backoff_s, 3),
        "time_s": {name: round(value, 2) for name, value in telemetry.phases.items()},
    }
    # The pacer's decisions, pass by pass (each pass has a pacer of its own), and in all.
    passes = [item["pacer"] for item in telemetry.passes if isinstance(item.get("pacer"), dict)]
    if passes:
        result["pacer"] = {
            key: round(sum(float(item.get(key) or 0) for item in passes), 3)
            for key in ("decreases", "pauses", "probes", "paused_s")
        }
        result["pacer"].update(
            rate=passes[-1].get("rate"), limit=passes[-1].get("limit"), passes=len(passes)
        )
    return result


def pacer_figures(pacer: Pacer) -> dict[str, Any]:
    """What the pacer decided this pass: pauses after refusals, probes, the limit it learned."""
    limit = pacer.limit
    return {
        "rate": pacer.rate,
        "decreases": pacer.decreases,
        "pauses": pacer.pauses,
        "probes": pacer.probes,
        "paused_s": round(pacer.paused_s, 3),
        "limit": None if limit is None else limit.describe(),
    }
