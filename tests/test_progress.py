"""The live display: its layout at any width, a true total and ETA, recent rates, and what a
person sees on a real pseudo-terminal at 80, 120 and 200 columns."""

from __future__ import annotations

import ast
import fcntl
import logging
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pyte
import pytest

import engine
from engine.batcher import accepted_numbers
from engine.limits import Limit
from engine.pacing import SAFETY, Pacer
from engine.progress import (
    RATE_WINDOW_S,
    Expected,
    Figures,
    LogDisplay,
    Meter,
    clock_text,
    estimate_total,
    pacer_view,
    render_lines,
)
from engine.records import InputCounts, LiveStats, Totals
from tests._helpers import GROUP, cli_env, delete_args, ozbulk_command
from tests.virtual_time import now as virtual_now
from tests.virtual_time import run_virtual

FIGURES = Figures(
    elapsed=3723.0,
    done=12_345_600,
    total=48_000_000,
    total_exact=False,
    fraction=12_345_600 / 48_000_000,
    eta_s=35_654_400 / 980.0,
    numbers_per_s=980.0,
    requests_per_s=9.8,
    pace="10/s, slowed by the server",
    slowed=True,
    deleted=12_000_000,
    not_found=345_600,
    error=0,
    failed=0,
    retries=12,
    rate_limited=3,
    in_flight=16,
)


class _Pacer:
    pace = "10/s"
    forced_down = False
    waiting_until = None
    limit = None  # nothing learned: the ETA follows the recent rate
    ceiling = None
    rate = None


def _imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, at run time or for types only."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("module", ["progress", "metrics", "exporters", "run_view"])
def test_the_readers_of_a_run_do_not_import_the_pipeline(module: str) -> None:
    """The display and the exporters read a RunView: the pipeline imports them, never back."""
    source = Path(engine.__file__).parent / f"{module}.py"
    assert "engine.pipeline" not in _imported_modules(source)


# -- layout --------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [80, 120, 200])
def test_both_lines_fit_the_width_with_bar_count_percentage_and_eta(width: int) -> None:
    """No line is cut: the bar, count, percentage and ETA, then deleted and not found."""
    first, second = render_lines(FIGURES, width)
    assert len(first) <= width - 1 and len(second) <= width - 1
    assert first.startswith("deleting ━") and "━" in first
    assert first.endswith(" 26% 12,345,600/~48,000,000 ETA 10:06:22")
    assert second.startswith("deleted 12,000,000  not found 345,600")


def test_a_very_narrow_screen_keeps_the_bar_percentage_and_eta() -> None:
    """At 40 columns the label and the count give way; the percentage and the ETA stay."""
    first, _ = render_lines(FIGURES, 40)
    assert len(first) <= 39 and "━" in first and first.endswith(" 26% ETA 10:06:22")


def test_a_narrow_screen_drops_the_least_important_fields_first() -> None:
    """At 80 columns the speed stays and the elapsed time goes; at 200 everything shows."""
    _, narrow = render_lines(FIGURES, 80)
    _, wide = render_lines(FIGURES, 200)
    assert "num/s" in narrow and "elapsed" not in narrow
    assert "pace 10/s, slowed by the server" in wide and "elapsed 1:02:03" in wide


def test_an_unknown_total_shows_the_count_without_a_percentage() -> None:
    """Standard input: no size, no estimate; the count and an unknown ETA, never a false one."""
    figures = replace(FIGURES, total=None, fraction=None, eta_s=None)
    first, _ = render_lines(figures, 80)
    assert "12,345,600 numbers" in first and "ETA -:--:--" in first and "%" not in first


def test_clock_text_is_hours_minutes_seconds() -> None:
    """Durations read as h:mm:ss, and an unknown one as dashes."""
    assert clock_text(0) == "0:00:00"
    assert clock_text(3723.4) == "1:02:03"
    assert clock_text(None) == "-:--:--"


# -- the total, the rates, the pacer -------------------------------------------------------


def test_total_is_extrapolated_from_the_bytes_read_like_pv() -> None:
    """A tenth of the input read with 10,000 numbers accepted: 100,000 to expect."""
    expected = Expected(total=None, exact=False, input_bytes=1_000_000)
    assert estimate_total(expected, 10_000, False, 100_000, 5_000) == (100_000, False)


def test_total_is_exact_once_known_and_the_plan_stands_in_before_anything_is_read() -> None:
    """Exact from the producer's end or a pre-scan; the plan's estimate before any bytes."""
    estimate = Expected(total=90_000, exact=False, input_bytes=1_000_000)
    assert estimate_total(estimate, 0, False, 0, 0) == (90_000, False)
    assert estimate_total(estimate, 97_000, True, 1_000_000, 50_000) == (97_000, True)
    prescan = Expected(total=97_000, exact=True, input_bytes=1_000_000)
    assert estimate_total(prescan, 100, False, 1_000, 0) == (97_000, True)


def test_rates_are_those_of_the_last_seconds_not_the_lifetime_average() -> None:
    """After 100 s at 10 numbers/s and 30 s at 100/s, the rate shown is 100/s."""
    now = [0.0]
    meter = Meter(Expected(total=1_000_000, exact=True), clock=lambda: now[0])
    done = 0
    figures = None
    for second in range(131):
        now[0] = float(second)
        figures = meter.figures(
            finished_this_pass=done, requests=done // 100, done=done, accepted=done,
            finished=False, bytes_read=0, pacer=_Pacer(),
        )  # fmt: skip
        done += 10 if second < 100 else 100
    assert figures is not None
    assert figures.numbers_per_s == pytest.approx(100, rel=0.01)
    assert figures.eta_s == pytest.approx((1_000_000 - figures.done) / 100, rel=0.01)
    assert RATE_WINDOW_S <= 30


def test_a_resume_counts_the_work_done_before_it() -> None:
    """A resume at 60 % shows 60 % at once, and its ETA covers only what is left."""
    now = [0.0]
    meter = Meter(Expected(total=100_000, exact=True), clock=lambda: now[0])
    figures = meter.figures(finished_this_pass=0, requests=0, done=60_000, accepted=0,
                            finished=False, bytes_read=0, pacer=_Pacer())  # fmt: skip
    assert figures.fraction == pytest.approx(0.6)
    for now[0], finished in ((1.0, 100), (11.0, 10_100)):
        figures = meter.figures(finished_this_pass=finished, requests=finished // 100,
                                done=60_000 + finished, accepted=0, finished=False, bytes_read=0,
                                pacer=_Pacer())  # fmt: skip
    assert figures.eta_s == pytest.approx(29_900 / 1_000)


def test_start_up_is_not_counted_in_the_rate() -> None:
    """The seconds before the first answer (reading, connecting) do not slow the rate shown."""
    now = [0.0]
    meter = Meter(Expected(total=100_000, exact=True), clock=lambda: now[0])
    figures = None
    for now[0], finished in ((0.0, 0), (3.0, 0), (4.0, 100), (5.0, 1_100)):
        figures = meter.figures(finished_this_pass=finished, requests=finished // 100,
                                done=finished, accepted=0, finished=False, bytes_read=0,
                                pacer=_Pacer())  # fmt: skip
    assert figures is not None and figures.numbers_per_s == pytest.approx(1_000)


def test_a_learned_limit_sets_the_eta_even_while_the_server_makes_everyone_wait() -> None:
    """120 a minute learned, 100 numbers a request: the ETA is the rest at 1.96 requests/s,
    though nothing moved for the last 20 s (a spent quota)."""
    now = [0.0]
    pacer = Pacer(None, prior=Limit(120, 60.0, False, learned_at=1_700_000_000.0))
    meter = Meter(Expected(total=100_000, exact=True), clock=lambda: now[0])
    for second, done in ((0, 0), (10, 2_000), (40, 2_000)):
        now[0] = float(second)
        figures = meter.figures(
            finished_this_pass=done, requests=done // 100, done=done, accepted=done,
            finished=False, bytes_read=0, pacer=pacer,
        )  # fmt: skip
    assert figures.numbers_per_s == 0  # the last 20 s
    assert figures.eta_s == pytest.approx(98_000 / (2 * SAFETY * 100))


def test_a_wait_for_the_server_comes_first_on_an_80_column_screen() -> None:
    """While every worker waits for the server's window, the second line says so first."""
    waiting = replace(FIGURES, pace="server limit reached: waiting until 14:02:00 (37 min)")
    _, second = render_lines(waiting, 80)
    assert second.startswith("server limit reached: waiting until 14:02:00 (37 min)  deleted ")
    _, usual = render_lines(FIGURES, 80)
    assert usual.startswith("deleted 12,000,000")


def test_the_pace_says_what_the_pacer_holds_and_a_long_wait() -> None:
    """The pace in words: the rate held, unlimited, and a wait for the server's window."""
    clock = [1000.0]
    waiting = Pacer(10, clock=lambda: clock[0], wall_offset=time.time() - clock[0])
    waiting.on_rate_limited(waiting.unpaced(), 600.0)
    text, slowed = pacer_view(waiting)
    assert text.startswith("server limit reached: waiting until ") and "(10 min)" in text
    assert slowed
    assert pacer_view(Pacer(None)) == ("unlimited", False)
    assert pacer_view(Pacer(10)) == ("9.8/s", False)  # the bucket's pace: 98 % of the rate
    assert pacer_view(Pacer(1.0, unit=60.0)) == ("58.8/min", False)


# -- on a pseudo-terminal ------------------------------------------------------------------

DISPLAY = re.compile(r"deleting .*ETA \d+:\d\d:\d\d")


def _run_with_a_display(fake_api, sample_csv, *, rate: int) -> tuple[Any, Path, list[str]]:
    """A seeded fake API, 3,000 rows, and the arguments of a paced run that draws its display."""
    source = sample_csv(3000)
    server = fake_api()
    server.state.seed(GROUP, accepted_numbers((str(source),)))
    args = [a for a in delete_args(server, source, rate=rate) if a != "--no-progress"]
    return server, source, args


def _spawn(args: list[str], cwd: Path, columns: int) -> tuple[subprocess.Popen[bytes], int]:
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {key: value for key, value in cli_env().items() if key not in ("COLUMNS", "LINES")}
    process = subprocess.Popen(
        ozbulk_command(*args), cwd=cwd, env=env,
        stdin=follower, stdout=follower, stderr=follower, close_fds=True,
    )  # fmt: skip
    os.close(follower)
    return process, leader


def _watch(
    process: subprocess.Popen[bytes],
    leader: int,
    columns: int,
    *,
    answer: bytes | None = None,
    stop_at: float | None = None,
    timeout: float = 90,
) -> tuple[list[list[str]], list[str]]:
    """Feed the terminal's output to an emulated 80x24 (or wider) screen; return each distinct
    screen on which the display shows, and the final screen with its scrollback."""
    screen = pyte.HistoryScreen(columns, 24, history=2000)
    stream = pyte.ByteStream(screen)
    shots: list[list[str]] = []
    deadline = time.monotonic() + timeout
    answered = stopped = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.1)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:
                break
            if not data:
                break
            stream.feed(data)
            if select.select([leader], [], [], 0.02)[0]:
                continue  # a redraw is still arriving: look at the screen once it has
            lines = list(screen.display)
            if any(DISPLAY.search(line) for line in lines) and lines not in shots:
                shots.append(lines)
            if answer is not None and not answered and any("Type yes" in x for x in lines):
                os.write(leader, answer)
                answered = True
            if stop_at is not None and not stopped and _fraction(lines) >= stop_at:
                process.send_signal(signal.SIGINT)
                stopped = True
        elif process.poll() is not None:
            break
    history = [_line(row, columns) for row in screen.history.top]
    return shots, history + list(screen.display)


def _run_on_a_terminal(
    args: list[str], cwd: Path, columns: int, exit_code: int, **watch: Any
) -> tuple[list[list[str]], list[str]]:
    """Run ozbulk on a pseudo-terminal of ``columns`` until it exits with ``exit_code``; what
    :func:`_watch` saw (``watch``: its answer to the prompt, or when to press Ctrl-C)."""
    process, leader = _spawn(args, cwd, columns)
    try:
        shots, final = _watch(process, leader, columns, **watch)
        assert process.wait(timeout=30) == exit_code, "\n".join(final)
    finally:
        os.close(leader)
    return shots, final


def _line(row: Any, columns: int) -> str:
    return "".join(row[index].data for index in range(columns)).rstrip()


def _fraction(lines: list[str]) -> float:
    for line in lines:
        found = re.search(r" (\d+)% ", line)
        if line.startswith("deleting") and found:
            return int(found.group(1)) / 100
    return 0.0


def _display(lines: list[str]) -> tuple[str, str]:
    for index, line in enumerate(lines):
        if DISPLAY.search(line):
            return line, lines[index + 1] if index + 1 < len(lines) else ""
    raise AssertionError("no display on this screen:\n" + "\n".join(lines))


def _accepted(source: Path) -> int:
    return sum(1 for _ in accepted_numbers((str(source),)))


def _check_screens(shots: list[list[str]], columns: int, *, exact: bool, total: int) -> None:
    """Every drawn screen: two lines within the width, the display's fields, a total within 5 %
    of the truth (exact from the first screen when ``exact``), counts that only grow."""
    assert len(shots) >= 3, f"the display was drawn {len(shots)} times"
    counts = []
    for lines in shots:
        bar, status = _display(lines)
        assert len(bar.rstrip()) < columns and len(status.rstrip()) < columns
        assert "━" in bar and "%" in bar, bar
        assert status.startswith("deleted ") and "not found " in status, status
        found = re.search(r"([\d,]+)/(~?)([\d,]+)", bar)
        assert found is not None, bar
        shown = int(found.group(3).replace(",", ""))
        assert abs(shown - total) <= 0.05 * total, bar
        if exact:
            assert found.group(2) == "" and shown == total, bar
        counts.append(int(found.group(1).replace(",", "")))
        # no log line is ever glued onto the display
        assert not re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", bar + status), lines
    assert counts == sorted(counts) and counts[-1] > counts[0]


@pytest.mark.parametrize("columns", [80, 120, 200])
@pytest.mark.parametrize("confirm", [False, True], ids=["yes", "prompt"])
def test_display_on_a_pseudo_terminal(fake_api, sample_csv, tmp_path, columns, confirm):
    """A paced run shows two lines that fit the terminal: bar, count, percentage, ETA, deleted
    and not found; the total is estimated with --yes and exact after the pre-scan."""
    _, source, args = _run_with_a_display(fake_api, sample_csv, rate=20)
    if confirm:
        args.remove("--yes")
    answer = b"yes\n" if confirm else None
    shots, final = _run_on_a_terminal(args, tmp_path, columns, 0, answer=answer)
    _check_screens(shots, columns, exact=confirm, total=_accepted(source))
    text = "\n".join(final)
    squashed = re.sub(r"\s+", "", "".join(line.ljust(columns) for line in final))
    assert squashed.count("phonenumbersfromcolumn") == 1, text  # logged once, however wrapped
    assert "exit 0" in text


@pytest.mark.parametrize(
    ("columns", "confirm"), [(80, False), (120, False), (200, False), (80, True)]
)
def test_a_resume_on_a_pseudo_terminal_starts_from_the_work_done(
    fake_api, sample_csv, tmp_path, columns, confirm
):
    """Stopped at 30 % and resumed (with --yes, or confirmed at the prompt after a plan that
    says it resumes): the first display of the resume already shows at least that share, and
    the total is exact (the stop came after the input was read)."""
    # 10 requests a second: the resume's 70 % takes about 2 s, enough screens on a busy machine.
    server, source, args = _run_with_a_display(fake_api, sample_csv, rate=10)
    _run_on_a_terminal(args, tmp_path, columns, 130, stop_at=0.3)
    done_before = server.stats()["numbers_deleted"]
    assert 0 < done_before < 2900
    if confirm:
        args.remove("--yes")
    answer = b"yes\n" if confirm else None
    shots, final = _run_on_a_terminal(args, tmp_path, columns, 0, answer=answer)
    if confirm:
        assert any(line.startswith("  resumes ") for line in final), "\n".join(final)
    _check_screens(shots, columns, exact=True, total=_accepted(source))
    first, _ = _display(shots[0])
    found = re.search(r"([\d,]+)/([\d,]+)", first)
    assert found is not None
    assert int(found.group(1).replace(",", "")) >= done_before - 16 * 100  # in flight then


def test_logs_go_above_the_display_not_into_it(caplog: pytest.LogCaptureFixture) -> None:
    """While the display is live, the terminal's log handler writes through its console."""
    import io
    import sys

    from rich.console import Console

    from engine.progress import _logs_through

    terminal = io.StringIO()
    handler = logging.StreamHandler(terminal)
    root = logging.getLogger()
    root.addHandler(handler)
    saved = sys.stderr
    sys.stderr = terminal  # the handler writes to "the terminal"
    try:
        console = Console(file=terminal, force_terminal=True, width=80)
        with _logs_through(console):
            assert handler.stream is not terminal
            logging.getLogger("engine.test").warning("a line above the bar")
        assert handler.stream is terminal
    finally:
        sys.stderr = saved
        root.removeHandler(handler)
    assert "a line above the bar\n" in terminal.getvalue()


@pytest.mark.slow
def test_an_unattended_run_shows_a_true_eta_at_80_by_24(fake_api, sample_csv, tmp_path):
    """--yes at 80x24 against a server that admits 20 requests a second: from the second second
    the screen shows a bar, a count, a percentage and an ETA, and once a tenth is done every
    ETA shown is within 20 % (plus the one second it is rounded to) of the time that was left."""
    source = sample_csv(30_000)
    server = fake_api(rate_limit=20)
    server.state.seed(GROUP, accepted_numbers((str(source),)))
    args = [a for a in delete_args(server, source, rate=20) if a != "--no-progress"]
    started = time.monotonic()
    process, leader = _spawn(args, tmp_path, 80)
    screen = pyte.Screen(80, 24)
    stream = pyte.ByteStream(screen)
    seen: list[tuple[float, float, float]] = []  # (when, fraction, ETA in s)
    first_display = first_eta = None
    try:
        while process.poll() is None or select.select([leader], [], [], 0)[0]:
            if not select.select([leader], [], [], 0.1)[0]:
                continue
            try:
                data = os.read(leader, 65536)
            except OSError:
                break
            if not data:
                break
            stream.feed(data)
            for line in screen.display:
                now = time.monotonic() - started
                if line.startswith("deleting") and first_display is None:
                    first_display = now
                found = re.search(r"━+ (\d+)% [\d,]+/~?[\d,]+ ETA (\d+):(\d\d):(\d\d)", line)
                if line.startswith("deleting") and found:
                    first_eta = first_eta if first_eta is not None else now
                    h, m, s = (int(found.group(i)) for i in (2, 3, 4))
                    seen.append((now, int(found.group(1)) / 100, h * 3600 + m * 60 + s))
        assert process.wait(timeout=30) == 0
    finally:
        os.close(leader)
    ended = time.monotonic() - started
    assert first_display is not None and first_eta is not None
    assert first_eta - first_display < 1.5, (first_display, first_eta)
    checked = [(when, eta) for when, fraction, eta in seen if 0.1 <= fraction < 0.95]
    assert len(checked) >= 5, seen
    for when, eta in checked:
        left = ended - when
        assert abs(eta - left) <= 0.2 * left + 1.5, (when, eta, left)


def test_an_unattended_runs_first_log_line_has_a_rate_and_an_eta(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A run answering 1,000 numbers a second from its first second: the first progress line of
    the log (at 10 s) says about 1,000 num/s and an ETA, not 0.0 num/s and -:--:--."""
    totals, stats, counts = Totals(), LiveStats(), InputCounts(accepted=50_000, finished=True)
    run = SimpleNamespace(
        collector=SimpleNamespace(totals=totals, token_refreshes=lambda: 0),
        stats=stats, source=SimpleNamespace(counts=counts, bytes_read=0), pacer=_Pacer(),
    )  # fmt: skip
    display = LogDisplay(expected=Expected(total=50_000, exact=True), clock=virtual_now)

    async def answers() -> None:
        while True:
            await anyio.sleep(0.1)
            totals.sent += 100
            totals.numbers_finished_this_pass += 100
            stats.requests += 1

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(answers)
            group.start_soon(display.run, run)
            await anyio.sleep(10.5)
            group.cancel_scope.cancel()

    with caplog.at_level(logging.INFO, logger="engine.progress"):
        run_virtual(main)
    lines = [record.getMessage() for record in caplog.records if "progress:" in record.getMessage()]
    assert len(lines) == 1, lines
    found = re.search(r"ETA (\d+):(\d\d):(\d\d);.*; ([\d,.]+) num/s", lines[0])
    assert found is not None, lines[0]
    assert float(found.group(4).replace(",", "")) == pytest.approx(1_000, rel=0.05)
    eta = int(found.group(1)) * 3600 + int(found.group(2)) * 60 + int(found.group(3))
    assert eta == pytest.approx(40, abs=2)  # 40,000 numbers left at 1,000 a second
