"""The run's figures as Prometheus metrics (imported only for --metrics-port / --metrics-textfile).

The figures are built on the event loop, once a second, into a list of metric families that a
scrape (in prometheus_client's server thread) or the textfile writer only reads: the loop's
counters are never read from another thread while they change. Recording stays in
:mod:`engine.telemetry`; this module only formats, so a run without metrics pays nothing here.

No label carries a secret: outcomes, results, states, HTTP statuses, verdict kinds and causes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server, write_to_textfile
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from engine.errors import UsageError
from engine.progress import Expected, Meter
from engine.telemetry import OUTCOMES, LogHistogram, bucket_bound

if TYPE_CHECKING:
    from engine.run_view import RunView

# Prometheus ``le`` bounds: every fourth bound of the telemetry's buckets (a factor of √2, from
# 0.8 ms to 3 min), so that each cumulative count is exact.
LATENCY_BOUNDS = [bucket_bound(index) for index in range(24, 170, 4)]


def _histogram(
    family: HistogramMetricFamily, labels: list[str], histogram: LogHistogram
) -> HistogramMetricFamily:
    counts = histogram.cumulative(LATENCY_BOUNDS)
    buckets = [
        (f"{bound:.6g}", float(count)) for bound, count in zip(LATENCY_BOUNDS, counts, strict=True)
    ]
    buckets.append(("+Inf", float(histogram.total)))
    family.add_metric(labels, buckets, histogram.sum)
    return family


def families(run: RunView, meter: Meter) -> list[Metric]:
    """Every metric of the run, as of now; progress and ETA as the display reckons them."""
    telemetry, pacer = run.telemetry, run.pacer
    result: list[Metric] = []

    def counter(name: str, text: str, label: str, values: Iterable[tuple[str, float]]) -> None:
        family = CounterMetricFamily(name, text, labels=[label])
        for key, value in values:
            family.add_metric([key], value)
        result.append(family)

    def gauge(name: str, text: str, value: float | None) -> None:
        if value is not None:  # unknown (no limit learned, no ETA yet): the series is absent
            result.append(GaugeMetricFamily(name, text, value=value))

    counter("ozbulk_requests", "Requests answered (or not), by outcome", "outcome",
            ((outcome, telemetry.latency[outcome].total) for outcome in OUTCOMES))  # fmt: skip
    counter("ozbulk_numbers", "Numbers with a result: deleted, not_found, error, failed",
            "result", telemetry.numbers.items())  # fmt: skip
    counter("ozbulk_chunks", "Chunks finished, by state", "state", telemetry.chunks.items())
    counter("ozbulk_responses", "Answers by HTTP status (none: no answer; success: a success "
            "verdict)", "status", telemetry.statuses.items())  # fmt: skip
    counter("ozbulk_verdicts", "Answers by verdict kind", "kind", telemetry.kinds.items())
    counter("ozbulk_retries", "Retries by cause", "cause", telemetry.retries.items())
    counter("ozbulk_time_seconds", "Wall time by what the run was doing", "phase",
            telemetry.phases.items())  # fmt: skip
    duration = HistogramMetricFamily(
        "ozbulk_request_duration_seconds", "Round trip of each request", labels=["outcome"]
    )
    for outcome in OUTCOMES:
        _histogram(duration, [outcome], telemetry.latency[outcome])
    result.append(duration)
    wait = HistogramMetricFamily(
        "ozbulk_pacer_wait_seconds", "Each request's wait for its turn at the pace", labels=[]
    )
    result.append(_histogram(wait, [], telemetry.pacer_wait))
    pauses = CounterMetricFamily("ozbulk_pacer_pauses", "Pauses a refusal began")
    pauses.add_metric([], pacer.decreases)
    result.append(pauses)
    paused = CounterMetricFamily("ozbulk_paused_seconds", "Seconds every worker waited for the "
                                 "server to admit again")  # fmt: skip
    paused.add_metric([], pacer.paused_s)
    result.append(paused)
    limit = pacer.limit
    gauge("ozbulk_pace_requests_per_second", "The pace held (absent: unlimited)", pacer.rate)
    gauge("ozbulk_server_limit_requests_per_second", "The server's limit as learned",
          None if limit is None else limit.per_second)  # fmt: skip
    gauge("ozbulk_in_flight", "Requests in flight", float(telemetry.in_flight))
    figures = meter.read(run)
    gauge("ozbulk_input_progress_ratio", "Share of the input's numbers with a result",
          figures.fraction)  # fmt: skip
    gauge("ozbulk_eta_seconds", "Seconds left, at the learned limit or the recent speed",
          figures.eta_s)  # fmt: skip
    return result


class RunCollector(Collector):
    """Hands prometheus_client the families built last on the event loop."""

    def __init__(self) -> None:
        self.latest: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        return iter(self.latest)  # the list is replaced whole, never changed: safe to read


class MetricsServer:
    """The registry, its HTTP server (if asked for) and the textfile writer."""

    def __init__(self, run: RunView, expected: int | None = None) -> None:
        self.run = run
        # The display's own reckoning of progress and ETA, so both always agree.
        self.meter = Meter(Expected(total=expected))
        self.collector = RunCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self._server: WSGIServer | None = None

    def serve(self, host: str, port: int) -> int:
        """Listen on host:port (0 = a free one); the port. UsageError if it cannot."""
        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            raise UsageError(
                f"--metrics-port {port}: cannot listen on {host}:{port} "
                f"({error.strerror or error}); choose another port"
            ) from None
        self._server = server
        return int(server.server_port)

    def refresh(self) -> None:
        self.collector.latest = families(self.run, self.meter)

    def write_textfile(self, path: Path) -> None:
        """Rewrite ``path`` for node_exporter's textfile collector (written aside, renamed in)."""
        write_to_textfile(str(path), self.registry)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
