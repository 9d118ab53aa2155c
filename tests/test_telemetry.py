"""The telemetry recorder: histograms, verdict kinds, the timeline, phases, storage, request log."""

from __future__ import annotations

import csv
import gzip
import io
import math
import random
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from engine.checkpoint import Checkpoint
from engine.errors import (
    AuthError,
    RateLimited,
    ServerError,
    TokenRejected,
    TransportError,
    UsageError,
)
from engine.exporters import TelemetryOptions
from engine.records import Verdict
from engine.request_log import HEADER, RequestLog
from engine.telemetry import (
    BUCKET_S,
    LogHistogram,
    Telemetry,
    kind_of,
    outcome_of,
    status_of,
    summarize,
)
from engine.telemetry_report import summary_lines


def exact_percentile(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * percent / 100)) - 1]


# -- the histogram ---------------------------------------------------------------------------
def test_percentiles_are_within_five_percent_of_the_exact_ones() -> None:
    """Eight buckets per doubling: any percentile within 4.5 % (plus rounding) of the truth."""
    generator = random.Random(3)
    values = [generator.lognormvariate(math.log(0.05), 0.8) for _ in range(20_000)]
    histogram = LogHistogram()
    for value in values:
        histogram.record(value)
    for percent in (50, 90, 95, 99):
        estimate = histogram.percentile(percent)
        assert estimate is not None
        assert estimate == pytest.approx(exact_percentile(values, percent), rel=0.05)
    assert histogram.percentile(100) == max(values)
    assert histogram.total == len(values) and histogram.sum == pytest.approx(sum(values))


def test_histograms_merge_by_adding_and_survive_json() -> None:
    """Two passes' histograms merged equal one that saw everything; JSON round-trips exactly."""
    first, second, both = LogHistogram(), LogHistogram(), LogHistogram()
    for index, value in enumerate(0.001 * 1.1**step for step in range(120)):
        (first if index % 3 else second).record(value)
        both.record(value)
    first.merge(second)
    assert first.counts == both.counts and first.total == both.total
    assert first.max == both.max and first.sum == pytest.approx(both.sum)
    again = LogHistogram.from_json(both.to_json())
    assert again.counts == both.counts and again.figures() == both.figures()


def test_a_histogram_from_garbage_is_empty() -> None:
    """A damaged stored value starts the figures afresh instead of failing the run."""
    for garbage in (None, 3, "x", {"buckets": "no"}, {"buckets": {"a": 1}}):
        assert LogHistogram.from_json(garbage).total == 0
    assert LogHistogram().percentile(50) is None


def test_cumulative_counts_at_bucket_bounds_are_exact() -> None:
    """The Prometheus buckets (every fourth bound) count exactly what is at or below them."""
    from engine.metrics import LATENCY_BOUNDS

    values = [0.0005, 0.002, 0.0021, 0.05, 0.051, 0.3, 7.0, 5000.0]
    histogram = LogHistogram()
    for value in values:
        histogram.record(value)
    counts = histogram.cumulative(LATENCY_BOUNDS)
    for bound, count in zip(LATENCY_BOUNDS, counts, strict=True):
        assert count == sum(value <= bound for value in values)


# -- what an answer was ----------------------------------------------------------------------
def timed_out() -> TransportError:
    try:
        try:
            raise TimeoutError
        except TimeoutError:
            raise TransportError("no answer in time") from None
    except TransportError as error:
        return error


@pytest.mark.parametrize(
    ("error", "kind", "outcome", "status"),
    [
        (None, "success", "admitted", "success"),
        (RateLimited("429", http_status=429), "rate_limited", "refused", "429"),
        (RateLimited("Max limit exceeded", http_status=200), "rate_limited", "refused", "200"),
        (TokenRejected("expired", generation=1, http_status=200), "token", "error", "200"),
        (ServerError("HTTP 502", http_status=502), "server_error", "error", "502"),
        (AuthError("bad key", http_status=401), "fatal", "error", "401"),
        (TransportError("reset"), "transport", "error", "none"),
        (timed_out(), "timeout", "error", "none"),
    ],
)
def test_every_answer_has_a_kind_an_outcome_and_a_status(
    error: Exception | None, kind: str, outcome: str, status: str
) -> None:
    """Read from the errors the workers already see: no change to the client needed."""
    assert kind_of(error) == kind
    assert outcome_of(kind) == outcome
    assert status_of(error) == status


# -- the recorder ----------------------------------------------------------------------------
class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def answer(value: Any = None, error: Exception | None = None) -> Any:
    await anyio.lowlevel.checkpoint()
    if error is not None:
        raise error
    return value


async def test_requests_are_counted_per_outcome_and_leave_nothing_in_flight() -> None:
    """Each answer lands in its outcome's histogram, its status and kind; in_flight goes back."""
    telemetry = Telemetry(clock=Clock())
    verdict = Verdict(2, [], 1)
    assert await telemetry.request(answer(verdict), 0, 1, 0.0) is verdict
    for error in (RateLimited("429", http_status=429), ServerError("502", http_status=502)):
        with pytest.raises(type(error)):
            await telemetry.request(answer(error=error), 1, 1, 0.0)
    assert [telemetry.latency[o].total for o in ("admitted", "refused", "error")] == [1, 1, 1]
    assert telemetry.statuses == {"success": 1, "429": 1, "502": 1}
    assert telemetry.kinds == {"success": 1, "rate_limited": 1, "server_error": 1}
    assert telemetry.in_flight == 0


async def test_a_cancelled_request_is_not_an_answer() -> None:
    """A request cancelled by a stop records nothing, and is not left in flight."""
    telemetry = Telemetry()
    with anyio.move_on_after(0.01):
        await telemetry.request(anyio.sleep(10), 0, 1, 0.0)
    assert telemetry.in_flight == 0 and sum(telemetry.kinds.values()) == 0


async def test_start_up_is_counted_to_the_first_request_even_when_short() -> None:
    """Start-up shorter than a sampling interval still counts as start-up, not as sending."""
    telemetry = Telemetry()
    await anyio.sleep(0.03)
    await telemetry.request(anyio.lowlevel.checkpoint(), 0, 1, 0.0)
    assert telemetry.phases["start_up"] >= 0.025
    assert telemetry.phases["sending"] == 0


async def test_the_wait_for_the_pacer_is_timed_separately() -> None:
    """turn() hands back the ticket and records how long the wait took."""
    telemetry = Telemetry()

    async def ticket() -> float:
        await anyio.sleep(0.02)
        return 7.0

    got, waited = await telemetry.turn(ticket())
    assert got == 7.0 and waited >= 0.015
    assert telemetry.pacer_wait.total == 1 and telemetry.waiting_for_pace == 0


def test_numbers_and_chunks_are_counted_by_result() -> None:
    """deleted, not_found, error from a verdict; failed for a chunk out of attempts."""
    telemetry = Telemetry(clock=Clock())
    telemetry.chunk_finished(10, Verdict(8, ["1", "2"], 5))
    telemetry.chunk_finished(4, None)
    assert telemetry.numbers == {"deleted": 5, "not_found": 3, "error": 2, "failed": 4}
    assert telemetry.chunks == {"done": 1, "failed": 1}


async def test_the_timeline_has_a_row_per_ten_seconds_and_rewrites_only_what_changed() -> None:
    """Rows are keyed by bucket start and pass; a finished bucket is written once more at most."""
    clock = Clock(1_000_000.0)
    telemetry = Telemetry(clock=clock, pass_number=2)
    await telemetry.request(answer(Verdict(1, [], 1)), 0, 1, 0.0)
    telemetry.chunk_finished(1, Verdict(1, [], 1))
    first = telemetry.timeline_updates()
    assert [(start, number) for start, number, _ in first] == [(1_000_000.0, 2)]
    assert first[0][2]["requests"] == 1 and first[0][2]["deleted"] == 1
    clock.now += BUCKET_S
    with pytest.raises(RateLimited):
        await telemetry.request(answer(error=RateLimited("429", http_status=429)), 1, 1, 0.0)
    rows = telemetry.timeline_updates()
    assert [start for start, _, _ in rows] == [1_000_000.0, 1_000_010.0]
    assert rows[1][2]["refused"] == 1 and rows[1][2]["requests"] == 1
    assert [start for start, _, _ in telemetry.timeline_updates()] == [1_000_010.0]


def test_figures_stored_by_an_earlier_pass_are_carried_on() -> None:
    """A resumed run's latency, answers and retries cover every pass, and its passes are listed."""
    earlier = Telemetry(pass_number=1)
    earlier.latency["admitted"].record(0.05)
    earlier.kinds["success"] = 1
    earlier.retries["timeout"] = 2
    later = Telemetry(earlier.to_json(), pass_number=2)
    later.latency["admitted"].record(0.07)
    stored = later.to_json()
    assert stored["latency"]["admitted"]["total"] == 2
    assert stored["retries"] == {"timeout": 2} and stored["kinds"] == {"success": 1}
    assert [item["pass"] for item in stored["passes"]] == [1, 2]
    figures = summarize(stored)
    assert figures["latency"]["admitted"]["count"] == 2
    assert figures["latency"]["all"]["max_ms"] == pytest.approx(70.0)


class FakePacer:
    rate: float | None = 10.0
    waiting_until: float | None = None
    limit = None
    decreases, pauses, probes, paused_s = 2, 1, 5, 3.5


def test_each_moment_of_the_run_is_given_to_one_phase() -> None:
    """start-up, sending, paused, backing off, reading input, the last requests, finishing."""
    telemetry = Telemetry()
    pacer = FakePacer()
    telemetry.pacer = pacer  # type: ignore[assignment]
    finished = False
    telemetry.input_finished = lambda: finished
    assert telemetry.phase() == "start_up"
    telemetry.first_request = 1.0
    assert telemetry.phase() == "reading_input"
    telemetry.in_flight = 2
    assert telemetry.phase() == "sending"
    pacer.waiting_until = 5.0
    assert telemetry.phase() == "paused_by_server"
    pacer.waiting_until = None
    finished = True
    assert telemetry.phase() == "waiting_on_last_requests"
    telemetry.queued = lambda: 3  # chunks still queued: still sending at the pace
    assert telemetry.phase() == "sending"
    telemetry.in_flight, telemetry.backing_off = 0, 1
    assert telemetry.phase() == "backing_off"
    telemetry.finished = True
    assert telemetry.phase() == "finishing"
    telemetry.sample(0.5)
    assert telemetry.phases["finishing"] == 0.5


# -- storage ---------------------------------------------------------------------------------
def test_the_checkpoint_keeps_the_figures_and_the_timeline(tmp_path: Path) -> None:
    """Written with the counters' transaction; read back by a read-only open; absent is []."""
    path = tmp_path / "run.ckpt"
    checkpoint = Checkpoint.for_run(path, {"inputs": []}, {})
    checkpoint.record([], [], {"passes": 1})
    checkpoint.close()
    reader = Checkpoint.read(path)
    assert reader.timeline_rows() == []  # before any telemetry: no table, no rows
    reader.close()
    checkpoint = Checkpoint.for_run(path, {"inputs": []}, {})
    telemetry = Telemetry(clock=Clock(50.0))
    telemetry.latency["admitted"].record(0.05)
    row = {"requests": 3}
    checkpoint.record([], [], {}, telemetry=(telemetry.to_json(), [(50.0, 1, row)]))
    checkpoint.record([], [], {}, telemetry=(telemetry.to_json(), [(50.0, 1, {"requests": 4})]))
    checkpoint.close()
    reader = Checkpoint.read(path)
    assert reader.timeline_rows() == [(50.0, 1, {"requests": 4})]
    assert reader.meta("telemetry")["latency"]["admitted"]["total"] == 1
    reader.close()


# -- the request log -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["requests.csv", "requests.csv.gz"])
def test_the_request_log_has_a_line_per_request(tmp_path: Path, name: str) -> None:
    """Written by a thread; gzip when the name ends in .gz; every queued line is written."""
    path = tmp_path / name
    pacer = FakePacer()
    log = RequestLog(path, pacer)  # type: ignore[arg-type]
    for index in range(500):
        log.record(1_700_000_000.0 + index, index, 1, 0.05, 0.001, "success", "success", None)
    log.record(1_700_000_600.0, 9, 2, 0.01, 0.0, "429", "rate_limited", 1.5)
    log.close()
    raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    rows = list(csv.reader(io.StringIO(raw.decode())))
    assert rows[0] == list(HEADER)
    assert len(rows) == 502 and log.written == 501 and log.dropped == 0
    assert rows[1][:8] == ["2023-11-14T22:13:20.000+00:00", "0", "1", "50.000", "1.000",
                           "success", "admitted", "success"]  # fmt: skip
    assert rows[-1][5:] == ["429", "refused", "rate_limited", "1.5", "10"]


async def test_memory_stays_flat_over_a_long_run() -> None:
    """Only the bucket being filled is kept once the collector has taken the timeline's rows."""
    clock = Clock()
    telemetry = Telemetry(clock=clock)
    for _ in range(500):  # 500 buckets: about 83 minutes of run
        await telemetry.request(answer(Verdict(1, [], 1)), 0, 1, 0.0)
        telemetry.sample(0.1)
        telemetry.timeline_updates()
        clock.now += BUCKET_S
    assert len(telemetry._dirty) <= 1
    assert len(telemetry.to_json()["passes"]) == 1
    assert all(len(h.counts) == len(LogHistogram().counts) for h in telemetry.latency.values())


def test_the_pacers_decisions_are_kept_per_pass_and_added_up() -> None:
    """Each pass has a pacer of its own: pauses, probes and seconds paused add up across them."""
    first = Telemetry(pass_number=1)
    first.pacer = FakePacer()  # type: ignore[assignment]
    second = Telemetry(first.to_json(), pass_number=2)
    second.pacer = FakePacer()  # type: ignore[assignment]
    second.pacer.rate = 4.0
    pacer = second.summary()["pacer"]
    assert pacer == {"decreases": 4, "pauses": 2, "probes": 10, "paused_s": 7.0, "rate": 4.0,
                     "limit": None, "passes": 2}  # fmt: skip
    lines = summary_lines(second.summary())
    assert any("pauses after a refusal 4 (2 with Retry-After)" in line for line in lines)


def test_telemetry_options_are_checked_before_anything_is_sent(tmp_path: Path) -> None:
    """A port out of range or a folder that does not exist: UsageError saying the fix."""
    with pytest.raises(UsageError, match=r"--metrics-port must be 0\.\.65535"):
        TelemetryOptions(metrics_port=70000)
    with pytest.raises(UsageError, match="does not exist; create it first"):
        TelemetryOptions(request_log=tmp_path / "no" / "log.csv")
    with pytest.raises(UsageError, match="--metrics-textfile"):
        TelemetryOptions(metrics_textfile=tmp_path / "no" / "m.prom")
    hosts = {"127.0.0.1": True, "::1": True, "localhost": True, "0.0.0.0": False,
             "10.1.2.3": False, "example.org": False}  # fmt: skip
    for host, loopback in hosts.items():
        assert TelemetryOptions(metrics_host=host).loopback_only is loopback


def test_a_request_log_on_a_full_disk_stops_writing_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """/dev/full refuses every write: the log stops, close() reports it, nothing raises."""
    log = RequestLog(Path("/dev/full"))
    for index in range(20_000):  # more than one buffered write's worth
        log.record(1_700_000_000.0, index, 1, 0.05, 0.0, "success", "success", None)
    log.close()
    assert log.error is not None
    assert "--request-log /dev/full: writing failed" in caplog.text
