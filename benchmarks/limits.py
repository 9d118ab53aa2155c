"""``python -m benchmarks --only limits``: real runs against the limits real APIs set.

Each scenario is ``ozbulk mock-server`` with one limit shape (a quota per second, minute or hour;
a sliding window or a counter reset on the clock; refused in the body with HTTP 200 "Max limit
exceeded", as Ozonetel answers its other calls, with no Retry-After), and one ``ozbulk delete``
against it for a few minutes, stopped with Ctrl-C. The scenarios wait on the servers' windows,
not on the CPU, so they all run at once. The fake's counters are sampled every second (admitted,
refused), and ozbulk's log gives the moment it learned the limit ("server limit ≈ ...").

Figures, per scenario: admitted ÷ allowed over the whole run and after learning (allowed = the
limit's quota ÷ window, times the seconds, integrated over a limit that changes), the share refused,
refusals per window after learning, and how long learning took from the first refusal.
"""

from __future__ import annotations

import itertools
import json
import math
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.harness import API_KEY, GROUP, ROOT, USER, client_env
from benchmarks.output import _pyplot
from benchmarks.suite import Context, Result, say, verdict
from engine.rates import parse_rate

BATCH = 10  # numbers a request: requests are what is paced, and small chunks keep inputs small
SAMPLE_S = 1.0


@dataclass(frozen=True)
class Scenario:
    name: str
    limit: str  # the server's, as --rate-limit takes it
    seconds: float
    reset: bool = False
    change: tuple[float, str] | None = None  # (after seconds, new limit)
    rate: str | None = None  # ozbulk's --rate; None: the default (auto)

    def allowed(self, start: float, end: float) -> float:
        """Requests the server allows in [start, end] seconds of the run."""
        first = parse_rate(self.limit).per_second
        if self.change is None:
            return first * (end - start)
        at, then = self.change[0], parse_rate(self.change[1]).per_second
        before = max(0.0, min(end, at) - start)
        return first * before + then * max(0.0, end - max(start, at))

    @property
    def window(self) -> float:
        return parse_rate(self.change[1] if self.change else self.limit).per

    @property
    def label(self) -> str:
        shape = "reset on the clock" if self.reset else "sliding"
        change = f", {self.change[1]} from {self.change[0]:g} s" if self.change else ""
        setting = f"`--rate {self.rate}`" if self.rate else "default (auto)"
        return f"{self.limit} {shape}{change}; {setting}"


def scenarios(quick: bool) -> list[Scenario]:
    minutes = 1.0 if quick else 4.0
    run = 60 * minutes
    cases = [
        Scenario("120/min sliding", "120/min", run),
        Scenario("60/min reset on the minute", "60/min", run, reset=True),
        Scenario("2000/h sliding", "2000/h", run),
        Scenario("50/s sliding", "50/s", run / 2),
        Scenario("120/min halving", "120/min", run * 1.5, change=(run / 2, "60/min")),
    ]
    # A ceiling above each limit, as a user who guessed too high sets it.
    ceilings = {"120/min": "4", "60/min": "2", "2000/h": "20", "50/s": "100"}
    out = []
    for case in cases:
        out += [case, replace(case, rate=ceilings[case.limit])]
    out.append(Scenario("60/min sliding, ceiling at the limit", "60/min", run, rate="60/min"))
    return out


@dataclass
class Outcome:
    scenario: Scenario
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (s, requests, refused)
    learned_s: float | None = None
    learned: str | None = None  # the limit as ozbulk logged it
    log: list[tuple[float, str]] = field(default_factory=list)
    returncode: int | None = None
    wall_origin: float = 0.0  # wall-clock time of the samples' second 0

    def admitted(self, at: float) -> int:
        """Admitted requests by ``at`` seconds (the last sample before it)."""
        before = [sample for sample in self.samples if sample[0] <= at]
        return before[-1][1] - before[-1][2] if before else 0

    def refused(self, at: float) -> int:
        before = [sample for sample in self.samples if sample[0] <= at]
        return before[-1][2] if before else 0

    def refusal_times(self) -> list[float]:
        """When each refusal was seen (to the sample), oldest first."""
        times: list[float] = []
        seen = 0
        for at, _, refused in self.samples:
            times += [at] * (refused - seen)
            seen = refused
        return times

    def first_refusal(self, after: float = 0.0) -> float | None:
        """When the first refusal at or after ``after`` seconds was seen (sampled)."""
        already = self.refused(after)
        return next((at for at, _, refused in self.samples if refused > already), None)

    def figures(self) -> dict[str, Any]:
        """The run's figures, timed from the first request the server saw (not process start)."""
        case = self.scenario
        first = next((at for at, requests, _ in self.samples if requests), None)
        if first is not None:
            start = max(0.0, first - SAMPLE_S / 2)
            self.wall_origin += start
            self.samples = [
                (at - start, requests, refused) for at, requests, refused in self.samples
            ]
            self.samples = [sample for sample in self.samples if sample[0] >= 0]
            if self.learned_s is not None:
                self.learned_s -= start
        end = self.samples[-1][0] if self.samples else 0.0
        requests = self.samples[-1][1] if self.samples else 0
        refused = self.refused(end)
        figures: dict[str, Any] = {
            "seconds": end,
            "requests": requests,
            "refused": refused,
            "refused_share": refused / requests if requests else 0.0,
            "of_allowed": self.admitted(end) / case.allowed(0, end) if end else 0.0,
            "learned_s": self.learned_s,
            "learned": self.learned,
        }
        # From the first refusal of the current limit (after a change, of the new one).
        refused_first = self.first_refusal(case.change[0] if case.change else 0.0)
        if self.learned_s is not None and refused_first is not None:
            figures["learning_s"] = max(0.0, self.learned_s - refused_first)
        if refused_first is not None:
            # After a minute of refusals no window of a minute or less can be the limit: from
            # then on, at most a probe a minute (times to the second the counters were sampled).
            later = [at for at in self.refusal_times() if at >= refused_first + 60]
            gaps = [b - a for a, b in itertools.pairwise(later)]
            figures["probes_after_first_minute"] = len(later)
            figures["closest_probes_s"] = min(gaps) if gaps else None
        learned = self.learned_s
        if learned is not None and case.reset:
            # A counter reset on the clock may be spent when its limit is learned: what it
            # allows after that starts at its next reset.
            wall = self.wall_origin + learned
            learned += math.ceil(wall / case.window) * case.window - wall
        if learned is not None and end > learned:
            admitted_after = self.admitted(end) - self.admitted(learned)
            figures["of_allowed_after"] = admitted_after / case.allowed(learned, end)
            windows = max(1, math.ceil((end - learned) / case.window))
            figures["refused_per_window_after"] = (refused - self.refused(learned)) / windows
        return figures


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as answer:  # loopback only
        value: dict[str, Any] = json.load(answer)
        return value


def _run(case: Scenario, source: Path, folder: Path, outcome: Outcome) -> None:
    env = client_env()
    server_command = [
        sys.executable, "-m", "engine", "mock-server", "--port", "0", "--user", USER,
        "--api-key", API_KEY, "--group-id", str(GROUP), "--seed-csv", str(source),
        "--rate-limit", case.limit, "--rate-limit-style", "body",
    ]  # fmt: skip
    if case.reset:
        server_command.append("--rate-limit-reset")
    if case.change is not None:
        server_command += ["--rate-limit-change", f"{case.change[0]:g}:{case.change[1]}"]
    server = subprocess.Popen(
        server_command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        # Log lines (the seed file's column) come first; the banner names the URL.
        banner = next(line for line in server.stdout if "listening on" in line)
        url = next(word for word in banner.split() if word.startswith("http://"))
        checkpoint = folder / f"limits-{abs(hash(case))}.ckpt"
        client_command = [
            sys.executable, "-m", "engine", "delete", str(source), "--group-id", str(GROUP),
            "--user", USER, "--base-url", url, "--batch-size", str(BATCH), "--concurrency", "16",
            "--checkpoint", str(checkpoint), "--no-progress", "--yes",
        ]  # fmt: skip
        if case.rate is not None:
            client_command += ["--rate", case.rate]
        started = time.monotonic()
        outcome.wall_origin = time.time()
        client = subprocess.Popen(
            client_command, cwd=folder, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

        def read_log() -> None:
            assert client.stderr is not None
            for line in client.stderr:
                moment = time.monotonic() - started
                outcome.log.append((moment, line.rstrip()))
                if "server limit ≈" in line:
                    # The last one: a changed limit is learned anew.
                    outcome.learned_s = moment
                    outcome.learned = line.split("server limit ≈", 1)[1].split(";")[0].strip()

        reader = threading.Thread(target=read_log, daemon=True)
        reader.start()
        while (elapsed := time.monotonic() - started) < case.seconds and client.poll() is None:
            stats = _get_json(url + "/mock/stats")
            outcome.samples.append((elapsed, stats["delete_requests"], stats["rate_limited"]))
            time.sleep(SAMPLE_S)
        stats = _get_json(url + "/mock/stats")
        outcome.samples.append(
            (time.monotonic() - started, stats["delete_requests"], stats["rate_limited"])
        )
        client.send_signal(signal.SIGINT)
        outcome.returncode = client.wait(timeout=60)
        reader.join(timeout=5)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def limits(ctx: Context) -> Result:
    cases = scenarios(ctx.quick)
    longest = max(case.seconds for case in cases)
    ran = (
        f"{len(cases)} scenarios at once, each `ozbulk mock-server --rate-limit SHAPE "
        '--rate-limit-style body` (HTTP 200 "Max limit exceeded", no Retry-After) and '
        f"`ozbulk delete --batch-size {BATCH} --concurrency 16` against it, for "
        f"{longest / 60:g} min at most, stopped with Ctrl-C; the fake's counters sampled every "
        'second; learned = ozbulk\'s "server limit ≈" log line; allowed = quota ÷ window, '
        "times the seconds"
    )
    ctx.header("rate limits as real APIs set them", ran)
    outcomes = [Outcome(case) for case in cases]
    threads = []
    for outcome in outcomes:
        case = outcome.scenario
        # Enough to keep sending the whole time, and to spend a whole window's quota (an hour's).
        quota = parse_rate(case.limit).count
        requests = max(case.allowed(0, case.seconds) * 1.5, quota * 1.3) + 200
        source = ctx.input(int(requests * BATCH / 0.985) // 1000 * 1000 + 1000)
        thread = threading.Thread(target=_run, args=(case, source, ctx.work, outcome))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    rows = []
    figures = []
    for outcome in outcomes:
        case, measured = outcome.scenario, outcome.figures()
        figures.append({"scenario": case.label, **measured, "samples": outcome.samples,
                        "allowed_per_s": case.allowed(0, 1)})  # fmt: skip
        after = measured.get("of_allowed_after")
        per_window = measured.get("refused_per_window_after")
        learning = measured.get("learning_s")
        say(
            f"  {case.label}: admitted {measured['of_allowed']:.3f} of allowed"
            + (f" ({after:.3f} after learning)" if after is not None else "")
            + f", refused {measured['refused']} of {measured['requests']} "
            f"({measured['refused_share']:.1%})"
            + (f", {per_window:.2f} refusals a window after" if per_window is not None else "")
            + (f", learned {learning:.0f} s after the first refusal" if learning else "")
            + (f": {measured['learned']}" if measured["learned"] else "")
        )
        if case.limit == "2000/h":
            used = outcome.admitted(measured["seconds"])
            closest = measured.get("closest_probes_s")
            result = (
                f"{used:,} of 2,000 used; {measured.get('probes_after_first_minute', 0)} probes "
                "after the first minute of refusals"
                + ("" if closest is None else f", at least {closest:.0f} s apart")
            )
            target = "all used; a probe a minute at most"
            # Sampled each second: two probes a minute apart may read as 59 s.
            met = used >= 2000 and (closest is None or closest >= 58)
        elif case.rate == "60/min":
            result = f"{measured['of_allowed']:.3f}; {measured['refused']} refused"
            target = "≥ 0.97; 0"
            met = measured["of_allowed"] >= 0.97 and measured["refused"] == 0
        else:
            result = (
                f"{measured['of_allowed']:.3f}; "
                + (f"{after:.3f}" if after is not None else "n/a")
                + f"; {measured['refused_share']:.1%}"
                + (f"; {per_window:.2f}" if per_window is not None else "")
                + (f"; {learning:.0f} s" if learning is not None else "")
            )
            after_ok = (after or 0) >= 0.95 and (per_window or 0) <= 1
            if case.change is not None:
                # A limit that drops: learned anew within two of its windows, then kept.
                target = "(whole run); ≥ 0.95; ≤ 5 %; ≤ 1; ≤ 2 windows"
                in_time = learning is not None and learning <= 2 * case.window
                met = after_ok and measured["refused_share"] <= 0.05 and in_time
            elif case.window == 1.0:
                # Per second, the whole run includes --rate auto's climb from 5/s.
                target = "(whole run); ≥ 0.95; ≤ 5 %; ≤ 1"
                met = after_ok and measured["refused_share"] <= 0.05
            else:
                target = "≥ 0.90; ≥ 0.95; ≤ 5 %; ≤ 1"
                met = after_ok and measured["of_allowed"] >= 0.90
                met = met and measured["refused_share"] <= 0.05
        rows.append(
            (f"Limits, {case.label}: admitted ÷ allowed; after learning; refused; refusals a "
             "window after; learning", result, target, verdict(met))
        )  # fmt: skip
    return Result("limits", "Rate limits as real APIs set them", ran, rows, {"runs": figures})


def plot_limits(result: Result, path: Path) -> None:
    """Admitted over time against what each server allowed, one panel per scenario."""
    runs = result.data["runs"]
    pyplot = _pyplot()
    columns = 3
    rows = math.ceil(len(runs) / columns)
    figure, axes = pyplot.subplots(rows, columns, figsize=(5 * columns, 3 * rows), squeeze=False)
    for axis, run in zip(axes.flat, runs, strict=False):
        times = [sample[0] for sample in run["samples"]]
        axis.plot(times, [s[1] - s[2] for s in run["samples"]], label="admitted")
        axis.plot(times, [s[2] for s in run["samples"]], label="refused")
        axis.plot(times, [t * run["allowed_per_s"] for t in times], "--", label="limit (initial)")
        if run.get("learned_s") is not None:
            axis.axvline(run["learned_s"], color="grey", linewidth=0.8, label="learned")
        axis.set_title(run["scenario"], fontsize=8)
        axis.set_xlabel("seconds")
        axis.set_ylabel("requests")
    axes.flat[0].legend(fontsize=7)
    for axis in list(axes.flat)[len(runs) :]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    pyplot.close(figure)
