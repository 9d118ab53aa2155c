"""What a run hands to the world while it goes: live metrics and a line per request, on request.

``--metrics-port`` serves the run's figures as Prometheus / OpenMetrics text, ``--metrics-textfile``
rewrites a file for node_exporter's textfile collector, ``--request-log`` writes one line per
request. Each is off unless asked for; ``prometheus_client`` (the ``ozbulk[metrics]`` extra) is
imported only when one of the first two is.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import UsageError

if TYPE_CHECKING:
    from engine.metrics import MetricsServer
    from engine.request_log import RequestLog
    from engine.run_view import RunView

log = logging.getLogger(__name__)

DEFAULT_METRICS_HOST = "127.0.0.1"
REFRESH_S = 0.25  # how stale a scrape may be; building the figures takes ~0.1 ms
TEXTFILE_EVERY = 20  # refreshes: the textfile is rewritten every 5 s
METRICS_INSTALL = "pip install 'ozbulk[metrics]'"


@dataclass(frozen=True, slots=True)
class TelemetryOptions:
    """The opt-in outputs of a run, checked before anything is sent."""

    metrics_port: int | None = None
    metrics_host: str = DEFAULT_METRICS_HOST
    metrics_textfile: Path | None = None
    request_log: Path | None = None
    # The input's numbers as the plan knows them (counted, or estimated from the file's size):
    # the progress ratio and ETA until the run has read its input to the end.
    numbers_expected: int | None = None

    def __post_init__(self) -> None:
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise UsageError(
                f"--metrics-port must be 0..65535 (got {self.metrics_port}); 0 picks a free port"
            )
        for flag, path in (
            ("--metrics-textfile", self.metrics_textfile),
            ("--request-log", self.request_log),
        ):
            if path is not None and not path.parent.is_dir():
                raise UsageError(
                    f"{flag} {path}: the folder {path.parent} does not exist; create it first"
                )
        if self.wants_metrics:
            _require_prometheus_client()

    @property
    def wants_metrics(self) -> bool:
        return self.metrics_port is not None or self.metrics_textfile is not None

    @property
    def loopback_only(self) -> bool:
        import ipaddress  # only when a host was given: a plain run does not need it

        try:
            return ipaddress.ip_address(self.metrics_host).is_loopback
        except ValueError:
            return self.metrics_host == "localhost"


def _require_prometheus_client() -> None:
    try:
        import prometheus_client  # noqa: F401 - asked for: checked before anything is sent
    except ImportError:
        raise UsageError(
            f"--metrics-port and --metrics-textfile need prometheus_client: {METRICS_INSTALL}"
        ) from None


class Exporters:
    """Starts what the options ask for (a bad port is a UsageError here, before any request)."""

    def __init__(self, options: TelemetryOptions, run: RunView) -> None:
        self.options = options
        self._run = run
        self.metrics: MetricsServer | None = None
        self.request_log: RequestLog | None = None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        options, run = self.options, self._run
        if options.wants_metrics:
            from engine.metrics import MetricsServer

            self.metrics = MetricsServer(run, options.numbers_expected)
            if options.metrics_port is not None:
                if not options.loopback_only:
                    log.warning(
                        "--metrics-host %s: the metrics are served beyond this machine; they "
                        "hold no secret, but anyone who can reach the port can read them",
                        options.metrics_host,
                    )
                port = self.metrics.serve(options.metrics_host, options.metrics_port)
                log.info("metrics served at http://%s:%d/metrics", options.metrics_host, port)
        if options.request_log is not None:
            from engine.request_log import RequestLog

            self.request_log = RequestLog(options.request_log, run.pacer)
            run.telemetry.listeners.append(self.request_log.record)

    async def run(self) -> None:
        """Refresh the metrics 4 times a second and the textfile every 5 s, until cancelled."""
        import anyio.to_thread  # here: `ozbulk --help` declares these options without anyio

        metrics, textfile = self.metrics, self.options.metrics_textfile
        if metrics is None:
            return
        ticks = 0
        while True:
            metrics.refresh()
            if textfile is not None and ticks % TEXTFILE_EVERY == 0:
                await anyio.to_thread.run_sync(metrics.write_textfile, textfile)
            ticks += 1
            await anyio.sleep(REFRESH_S)

    def close(self) -> None:
        """The final figures into the textfile; stop serving; flush and close the request log."""
        if self.metrics is not None:
            self.metrics.refresh()
            if self.options.metrics_textfile is not None:
                try:
                    self.metrics.write_textfile(self.options.metrics_textfile)
                except OSError as error:
                    log.error("could not write --metrics-textfile: %s", error)
            self.metrics.stop()
            self.metrics = None
        if self.request_log is not None:
            self.request_log.close()
            self.request_log = None


def add_arguments(run: argparse.ArgumentParser) -> None:
    """The flags of ``ozbulk delete`` that ask for these outputs."""
    group = run.add_argument_group("watching a run (metrics, request log)")
    group.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve live Prometheus/OpenMetrics metrics on this port (0: a free one, logged); "
        f"needs {METRICS_INSTALL}",
    )
    group.add_argument(
        "--metrics-host",
        default=DEFAULT_METRICS_HOST,
        metavar="HOST",
        help="address --metrics-port listens on (default %(default)s: this machine only)",
    )
    group.add_argument(
        "--metrics-textfile",
        type=Path,
        metavar="FILE",
        help="rewrite the metrics into FILE (name it *.prom) every few seconds, for "
        "node_exporter's textfile collector",
    )
    group.add_argument(
        "--request-log",
        type=Path,
        metavar="FILE",
        help="write one CSV line per request to FILE (gzip if it ends in .gz)",
    )


def options_from_args(args: argparse.Namespace) -> TelemetryOptions:
    return TelemetryOptions(
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        metrics_textfile=args.metrics_textfile,
        request_log=args.request_log,
    )
