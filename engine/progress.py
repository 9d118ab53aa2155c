"""Watching a run: a live bar on a terminal, plain periodic log lines anywhere else.

Both read the run's counters on a timer (a few times a second for the bar); the workers never
call into the display, so refreshing it costs the pipeline nothing but the redraw itself.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import anyio

from engine.pacing import duration_words

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from engine.pipeline import Run

log = logging.getLogger("engine.progress")

BAR_REFRESH_S = 0.25


def snapshot(run: Run) -> dict[str, Any]:
    """The figures every display shows, computed in one place."""
    counts, totals, stats = run.counts, run.collector.totals, run.stats
    elapsed = max(time.monotonic() - run.started, 1e-9)
    finished = totals.numbers_finished_this_pass
    return {
        "elapsed": elapsed,
        "numbers_done": totals.sent + totals.failed_numbers,
        "numbers_total": counts.accepted if counts.finished else None,
        "accepted_so_far": counts.accepted,
        "numbers_per_s": finished / elapsed,
        "requests_per_s": stats.requests / elapsed,
        "rate": run.pacer.rate,
        "forced_down": run.pacer.forced_down,
        "waiting_until": run.pacer.waiting_until,
        "success": totals.success,
        "error": totals.error,
        "deleted": totals.deleted,
        "failed": totals.chunks_failed,
        "retries": stats.retries,
        "rate_limited": stats.rate_limited,
        "in_flight": stats.in_flight,
    }


def _rate_text(values: dict[str, Any]) -> str:
    until = values.get("waiting_until")
    if until is not None and until - time.time() >= 1.0:
        # A long wait for the server's window is shown as one, not as a stall.
        at, left = time.strftime("%H:%M:%S", time.localtime(until)), until - time.time()
        return f"server limit reached: waiting until {at} (about {duration_words(left)})"
    rate = values["rate"]
    text = "unlimited" if rate is None else f"{rate:.3g}/s"
    return text + (" (server's limit)" if values["forced_down"] else "")


class BarDisplay:
    """rich's progress bar on the terminal (stderr, so stdout stays clean for scripts)."""

    def __init__(self, console: Console | None = None, total: int | None = None) -> None:
        # rich is imported only when a bar is drawn: scripts and pipes never pay for it.
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.total = total  # from the plan's pre-scan; else it grows as the input is read

    async def run(self, run: Run) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            TextColumn("[bold]deleting"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[speed]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[detail]}"),
            console=self.console,
            auto_refresh=False,
            transient=False,
        )
        task = progress.add_task("delete", total=None, speed="", detail="")
        with progress:
            try:
                while True:
                    self._update(progress, task, snapshot(run))
                    await anyio.sleep(BAR_REFRESH_S)
            finally:
                self._update(progress, task, snapshot(run))

    def _update(self, progress: Progress, task: Any, values: dict[str, Any]) -> None:
        total = values["numbers_total"] or self.total
        total = max(total or 0, values["accepted_so_far"], values["numbers_done"])
        detail = (
            f"ok {values['success']:,} err {values['error']:,} deleted {values['deleted']:,} "
            f"failed {values['failed']:,} retries {values['retries']:,} "
            f"in flight {values['in_flight']} rate {_rate_text(values)}"
        )
        speed = f"{values['numbers_per_s']:,.0f} num/s {values['requests_per_s']:,.1f} req/s"
        progress.update(
            task, total=total, completed=values["numbers_done"], speed=speed, detail=detail
        )
        progress.refresh()


class LogDisplay:
    """One log line every ``interval`` seconds, for logs, CI and pipes."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval

    async def run(self, run: Run) -> None:
        try:
            while True:
                await anyio.sleep(self.interval)
                self.emit(snapshot(run))
        finally:
            pass

    @staticmethod
    def emit(values: dict[str, Any]) -> None:
        total = values["numbers_total"]
        of = f"/{total:,}" if total is not None else ""
        log.info(
            "progress: %s%s numbers, %.0f num/s, %.1f req/s, deleted %s, error %s, "
            "failed chunks %s, retries %s, rate %s",
            f"{values['numbers_done']:,}",
            of,
            values["numbers_per_s"],
            values["requests_per_s"],
            f"{values['deleted']:,}",
            f"{values['error']:,}",
            values["failed"],
            values["retries"],
            _rate_text(values),
        )
