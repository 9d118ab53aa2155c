"""Watching a run: a live display on a terminal, plain periodic log lines anywhere else.

Both read the run's counters on a timer (four times a second for the display); the workers never
call into it, so refreshing it costs the pipeline nothing but the redraw itself.

How far a run has come is known without counting the input first, the way ``pv`` knows it: the
producer says how many bytes of the input it has taken, and the numbers accepted so far, scaled
by the input's size over those bytes, are the total to expect. The total is exact as soon as it
is known: from a pre-scan, from an earlier pass that read the input to its end, or once the
producer has. Speeds are those of the last :data:`RATE_WINDOW_S` seconds, not averages over the
whole run, so the ETA follows the pace the run holds now; once the server's limit is learned,
the ETA follows that limit instead, pauses for a spent quota included.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from engine.pacing import SAFETY, duration_words

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult

    from engine.run_view import PacerView, RunView

log = logging.getLogger("engine.progress")

BAR_REFRESH_S = 0.25
RATE_WINDOW_S = 20.0
WAITING = "server limit reached: waiting"  # the pace while every worker waits for the server
# Below this share of the input read, an extrapolation from the bytes is noise: the plan's
# estimate from the file sizes stands in for it.
MIN_SHARE_READ = 0.005


@dataclass(frozen=True)
class Expected:
    """What is known before the run about how many numbers it will send."""

    total: int | None = None  # numbers to send, the earlier passes' included
    exact: bool = False  # from a pre-scan or a complete earlier reading, not an estimate
    input_bytes: int | None = None  # the input files' size; None for standard input
    pass_numbers: int | None = None  # --retry-failed: the numbers this pass re-sends


@dataclass(frozen=True)
class Figures:
    """One reading of a run, as every display shows it."""

    elapsed: float
    done: int  # numbers with a verdict or in a failed chunk, earlier passes included
    total: int | None
    total_exact: bool
    fraction: float | None
    eta_s: float | None
    numbers_per_s: float  # over the last RATE_WINDOW_S seconds
    requests_per_s: float
    pace: str  # what the pacer holds: "2.0/s", "unlimited", "2.0/s, slowed by the server"
    slowed: bool
    deleted: int
    not_found: int
    error: int
    failed: int
    retries: int
    rate_limited: int
    in_flight: int


def _learned_pace(pacer: PacerView) -> float:
    """Requests a second the learned limit allows and the pacer keeps to; 0 before it is known."""
    limit = pacer.limit
    if limit is None or limit.learned_at is None:
        return 0.0
    ceiling = pacer.ceiling or math.inf
    return min(limit.per_second, ceiling) * SAFETY


def pacer_view(pacer: PacerView) -> tuple[str, bool]:
    """The pace the pacer holds, in words, and whether the server's limit sets it."""
    text = pacer.pace
    slowed = pacer.forced_down
    until = pacer.waiting_until  # wall-clock time the server is expected to admit again
    if until is not None and until - time.time() >= 1.0:
        # A long wait for the server's window is shown as one, not as a stall, and first.
        at, left = time.strftime("%H:%M:%S", time.localtime(until)), until - time.time()
        text = f"{WAITING} until {at} ({duration_words(left)})"
    elif slowed:
        text += ", the server's limit"
    return text, slowed


def estimate_total(
    expected: Expected, accepted: int, finished: bool, bytes_read: int, done: int
) -> tuple[int | None, bool]:
    """The numbers the run will have sent at its end, and whether that is exact."""
    if finished:
        return accepted, True
    if expected.exact and expected.total is not None:
        return max(expected.total, accepted, done), True
    total: int | None = None
    size = expected.input_bytes
    if size and bytes_read >= size * MIN_SHARE_READ and accepted:
        total = round(accepted * size / bytes_read)
    elif expected.total is not None:
        total = expected.total
    if total is None:
        return None, False
    return max(total, accepted, done), False


class Meter:
    """Turns the run's counters into :class:`Figures`; keeps the recent samples for the rates."""

    def __init__(self, expected: Expected, clock: Callable[[], float] = time.monotonic) -> None:
        self.expected = expected
        self._clock = clock
        self._samples: deque[tuple[float, int, int]] = deque()
        self._started: float | None = None

    def read(self, run: RunView) -> Figures:
        totals, stats, source = run.collector.totals, run.stats, run.source
        counts = source.counts
        return self.figures(
            finished_this_pass=totals.numbers_finished_this_pass,
            requests=stats.requests,
            done=totals.sent + totals.failed_numbers,
            accepted=counts.accepted,
            finished=counts.finished,
            bytes_read=source.bytes_read,
            pacer=run.pacer,
            deleted=totals.deleted,
            not_found=totals.not_found,
            error=totals.error,
            failed=totals.chunks_failed,
            retries=stats.retries,
            rate_limited=stats.rate_limited,
            in_flight=stats.in_flight,
        )

    def figures(
        self,
        *,
        finished_this_pass: int,
        requests: int,
        done: int,
        accepted: int,
        finished: bool,
        bytes_read: int,
        pacer: PacerView,
        deleted: int = 0,
        not_found: int = 0,
        error: int = 0,
        failed: int = 0,
        retries: int = 0,
        rate_limited: int = 0,
        in_flight: int = 0,
    ) -> Figures:
        now = self._clock()
        if self._started is None:
            self._started = now
        numbers_per_s, requests_per_s = self._rates(now, finished_this_pass, requests)
        total, exact = estimate_total(self.expected, accepted, finished, bytes_read, done)
        fraction: float | None = None
        remaining: int | None = None
        pass_numbers = self.expected.pass_numbers
        if pass_numbers is not None:  # --retry-failed: this pass's own share
            remaining = max(0, pass_numbers - finished_this_pass)
            fraction = min(1.0, finished_this_pass / pass_numbers) if pass_numbers else 1.0
        elif total is not None:
            remaining = max(0, total - done)
            fraction = min(1.0, done / total) if total else 1.0
        eta = None
        # Once the server's limit is known, it is the pace the rest of the run goes at, pauses
        # for a spent quota included: the recent rate would say "forever" during such a pause.
        steady = _learned_pace(pacer) * (finished_this_pass / requests if requests else 0)
        speed = steady or numbers_per_s
        if remaining is not None and speed > 0:
            eta = remaining / speed
        elif remaining == 0:
            eta = 0.0
        pace, slowed = pacer_view(pacer)
        return Figures(
            elapsed=now - self._started,
            done=done,
            total=total,
            total_exact=exact,
            fraction=fraction,
            eta_s=eta,
            numbers_per_s=numbers_per_s,
            requests_per_s=requests_per_s,
            pace=pace,
            slowed=slowed,
            deleted=deleted,
            not_found=not_found,
            error=error,
            failed=failed,
            retries=retries,
            rate_limited=rate_limited,
            in_flight=in_flight,
        )

    def _rates(self, now: float, numbers: int, requests: int) -> tuple[float, float]:
        """Numbers and requests per second over the last RATE_WINDOW_S seconds."""
        samples = self._samples
        if not samples and numbers == 0:
            # The window opens with the first answer: start-up (reading, connecting, the first
            # round trip) is not the pace the run will hold.
            return 0.0, 0.0
        samples.append((now, numbers, requests))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW_S:
            samples.popleft()
        then, numbers_then, requests_then = samples[0]
        span = now - then
        if span <= 0:
            return 0.0, 0.0
        return (numbers - numbers_then) / span, (requests - requests_then) / span


# -- words and layout ------------------------------------------------------------------------


def clock_text(seconds: float | None) -> str:
    """h:mm:ss, as the summary and the ETA show time."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "-:--:--"
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def count_text(figures: Figures) -> str:
    if figures.total is None:
        return f"{figures.done:,} numbers"
    about = "" if figures.total_exact else "~"
    return f"{figures.done:,}/{about}{figures.total:,}"


def _speed(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def status_fields(figures: Figures) -> list[str]:
    """The second line's fields, most important first: a narrow screen drops the last ones."""
    waiting = figures.pace.startswith(WAITING)
    fields = [
        *([figures.pace] if waiting else []),  # why nothing moves comes first
        f"deleted {figures.deleted:,}",
        f"not found {figures.not_found:,}",
        f"{_speed(figures.numbers_per_s)} num/s",
        *([] if waiting else [f"pace {figures.pace}"]),
    ]
    if figures.error:
        fields.insert(2, f"error {figures.error:,}")
    if figures.failed:
        fields.insert(2, f"failed chunks {figures.failed:,}")
    fields += [
        f"{_speed(figures.requests_per_s)} req/s",
        f"retries {figures.retries:,}",
        f"in flight {figures.in_flight}",
        f"elapsed {clock_text(figures.elapsed)}",
    ]
    return fields


def fit(fields: list[str], width: int, separator: str = "  ") -> str:
    """As many of ``fields`` (in order) as fit in ``width`` columns."""
    line = ""
    for field in fields:
        candidate = field if not line else line + separator + field
        if len(candidate) > width:
            break
        line = candidate
    return line


def layout(figures: Figures, width: int) -> tuple[str, int, str]:
    """The first line for ``width`` columns: (words before the bar, bar width, words after).

    The bar takes what the words leave; when space is short the label goes first, then the
    count, so the percentage and the ETA always show."""
    width = max(20, width)
    eta = f"ETA {clock_text(figures.eta_s)}"
    if figures.fraction is None:
        tails = [f" {count_text(figures)} {eta}", f" {eta}"]
    else:
        percent = f"{figures.fraction * 100:.0f}%"
        tails = [f" {percent} {count_text(figures)} {eta}", f" {percent} {eta}"]
    head = "deleting "
    for tail in tails:
        for label in (head, ""):
            bar = width - 1 - len(label) - len(tail)
            if bar >= 10:
                return label, bar, tail
    tail = tails[-1]
    return "", max(0, width - 1 - len(tail)), tail


def render_lines(figures: Figures, width: int) -> tuple[str, str]:
    """Both lines as plain text, each at most ``width - 1`` columns (for tests and logs)."""
    head, bar, tail = layout(figures, width)
    filled = 0 if figures.fraction is None else round(bar * figures.fraction)
    first = head + "━" * filled + "╺" * (bar - filled) + tail
    return first, fit(status_fields(figures), max(20, width) - 1)


class _Screen:
    """The rich renderable: lays the two lines out for the width the console has."""

    def __init__(self) -> None:
        self.figures: Figures | None = None

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.text import Text

        if self.figures is None:
            yield Text("deleting: starting ...")
            return
        head, bar, tail = layout(self.figures, options.max_width)
        fraction = self.figures.fraction
        filled = 0 if fraction is None else round(bar * fraction)
        line = Text(no_wrap=True, overflow="crop")
        line.append(head, style="bold")
        line.append("━" * filled, style="green")
        line.append("━" * (bar - filled), style="grey23")
        line.append(tail)
        yield line
        yield Text(fit(status_fields(self.figures), options.max_width - 1), no_wrap=True)


class BarDisplay:
    """Two live lines on the terminal (stderr, so stdout stays clean for scripts).

    While it is live, log lines are printed above it through the same console, never into it.
    """

    def __init__(self, expected: Expected | None = None, console: Console | None = None) -> None:
        # rich is imported only when a bar is drawn: scripts and pipes never pay for it.
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.meter = Meter(expected or Expected())
        self.story = Story()

    async def run(self, run: RunView) -> None:
        from rich.live import Live

        screen = _Screen()
        live = Live(
            screen,
            console=self.console,
            auto_refresh=False,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=True,
        )
        with live, _logs_through(self.console):
            try:
                while True:
                    self.story.observe(run)
                    screen.figures = self.meter.read(run)
                    live.refresh()
                    await anyio.sleep(BAR_REFRESH_S)
            finally:
                screen.figures = self.meter.read(run)
                live.refresh()


class _logs_through:
    """Route the log handlers that write to the terminal through ``console`` (above the bar)."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._swapped: list[tuple[logging.StreamHandler[Any], Any]] = []

    def __enter__(self) -> None:
        import sys

        from rich.file_proxy import FileProxy

        terminal = getattr(sys.stderr, "rich_proxied_file", sys.stderr)
        proxy = FileProxy(self._console, terminal)
        for handler in _terminal_handlers(terminal):
            self._swapped.append((handler, handler.setStream(proxy)))

    def __exit__(self, *exc: object) -> None:
        for handler, stream in self._swapped:
            handler.flush()
            handler.setStream(stream)
        self._swapped.clear()


def _terminal_handlers(terminal: object) -> Iterator[logging.StreamHandler[Any]]:
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and handler.stream is terminal:
            yield handler


# Lines for the log file only (the command line keeps them off the terminal): the story of a
# run, told as it changes.
story_log = logging.getLogger("engine.story")
STORY_TICK_S = 1.0


class Story:
    """Tells the log file when the pace changes (by a tenth or more, or the server slows or
    pauses the run) and when a token is refreshed."""

    def __init__(self) -> None:
        self._pace: str | None = None
        self._rate: float | None = None
        self._slowed = False
        self._refreshes = 0

    def observe(self, run: RunView) -> None:
        pace, slowed = pacer_view(run.pacer)
        rate = run.pacer.rate
        moved = (rate is None) != (self._rate is None) or (
            rate is not None
            and self._rate is not None
            and abs(rate - self._rate) >= 0.1 * self._rate
        )
        if self._pace is None or slowed != self._slowed or (moved and pace != self._pace):
            story_log.info("pace: %s", pace)
            self._pace, self._rate, self._slowed = pace, rate, slowed
        refreshes = run.collector.token_refreshes()
        if isinstance(refreshes, int) and refreshes > self._refreshes:
            story_log.info("token refreshed (%d so far in this pass)", refreshes)
            self._refreshes = refreshes


class StoryOnly:
    """No display (-q), but a log file: only the story."""

    def __init__(self) -> None:
        self.story = Story()

    async def run(self, run: RunView) -> None:
        while True:
            self.story.observe(run)
            await anyio.sleep(STORY_TICK_S)


class LogDisplay:
    """One log line every ``interval`` seconds, for logs, CI and pipes."""

    def __init__(
        self,
        interval: float = 10.0,
        expected: Expected | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.meter = Meter(expected or Expected(), clock)
        self.story = Story()
        self._clock = clock

    async def run(self, run: RunView) -> None:
        next_line = self._clock() + self.interval
        while True:
            self.story.observe(run)
            await anyio.sleep(min(STORY_TICK_S, self.interval))
            # Sampled every tick, not only when a line is due: the rates (and so the ETA) need
            # two samples since the first answer, and the first line must already show them.
            figures = self.meter.read(run)
            if self._clock() >= next_line:
                next_line += self.interval
                self.emit(figures)

    @staticmethod
    def emit(figures: Figures) -> None:
        percent = "" if figures.fraction is None else f" ({figures.fraction * 100:.0f}%)"
        log.info(
            "progress: %s numbers%s, ETA %s; deleted %s, not found %s, error %s, failed chunks "
            "%s; %s num/s, %s req/s, retries %s, pace %s",
            count_text(figures),
            percent,
            clock_text(figures.eta_s),
            f"{figures.deleted:,}",
            f"{figures.not_found:,}",
            f"{figures.error:,}",
            f"{figures.failed:,}",
            _speed(figures.numbers_per_s),
            _speed(figures.requests_per_s),
            f"{figures.retries:,}",
            figures.pace,
        )
