"""The telemetry's part of the report: timeline.csv, latency.csv, and ``--plot``'s picture.

``timeline.csv``   one row per 10 seconds of each pass: requests, admitted, refused, errors,
                   numbers deleted, pace held, latency p50/p99, requests in flight, paused
``latency.csv``    count, mean, p50/p90/p95/p99 and max round trip, per outcome; and the wait
                   for the pacer's turn
``timeline.png``   (``ozbulk report --plot``, needs ``ozbulk[plot]``): the rate held against
                   requests admitted and refused per second, and latency p50/p99, over time, with
                   each pass marked

Everything comes from the checkpoint, so it works on a run in progress, stopped or finished.
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any

from engine.checkpoint import Checkpoint
from engine.errors import UsageError
from engine.files import write_csv
from engine.telemetry import BUCKET_S, OUTCOMES, PHASES, TIMELINE_FIELDS, Telemetry, summarize

TELEMETRY_FILES = ("timeline.csv", "latency.csv")
PLOT_NAME = "timeline.png"
PLOT_INSTALL = "pip install 'ozbulk[plot]'"
PLOT_HELP = f"rate and latency over time; needs {PLOT_INSTALL}"
LATENCY_COLUMNS = ("count", "mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms")


def write_telemetry_files(checkpoint: Checkpoint, out: Path) -> None:
    rows = checkpoint.timeline_rows()
    write_csv(
        out / "timeline.csv",
        ["time", "pass", *TIMELINE_FIELDS],
        ([_iso(start), number, *(data.get(name) for name in TIMELINE_FIELDS)]
         for start, number, data in rows),
    )  # fmt: skip
    telemetry = Telemetry(checkpoint.meta("telemetry"))
    series = [(outcome, telemetry.latency[outcome]) for outcome in OUTCOMES]
    series.append(("pacer_wait", telemetry.pacer_wait))
    write_csv(
        out / "latency.csv",
        ["series", *LATENCY_COLUMNS],
        ([name, *(histogram.figures().get(column, "") for column in LATENCY_COLUMNS)]
         for name, histogram in series),
    )  # fmt: skip


def _iso(stamp: float) -> str:
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).isoformat(timespec="seconds")


# -- the picture ------------------------------------------------------------------------------
def plot_for(path: Path, out: Path) -> int:
    """``ozbulk report --plot``: draw the timeline of the checkpoint at ``path`` into ``out``."""
    try:
        import matplotlib  # noqa: F401 - the optional extra, only for --plot
    except ImportError:
        raise UsageError(f"--plot needs matplotlib: {PLOT_INSTALL}") from None
    checkpoint = Checkpoint.read(path)
    try:
        rows = checkpoint.timeline_rows()
        stored = Telemetry(checkpoint.meta("telemetry"))
    finally:
        checkpoint.close()
    if not rows:
        raise UsageError(f"{path} holds no timeline yet (it was written before any request)")
    starts = {
        int(item["pass"]): float(item["started_at"])
        for item in stored.passes
        if isinstance(item.get("pass"), int) and isinstance(item.get("started_at"), int | float)
    }
    target = draw(rows, out / PLOT_NAME, starts)
    print(f"plot written to {target}")
    return 0


def draw(
    rows: list[tuple[float, int, dict[str, Any]]],
    target: Path,
    starts: dict[int, float] | None = None,
) -> Path:
    """Draw the timeline into ``target``; ``starts`` are the passes' wall-clock start times."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    starts = starts or {}
    first = min(starts.values()) if starts else rows[0][0]  # the first pass's start: x = 0
    figure, (rates, latency) = plt.subplots(2, 1, sharex=True, figsize=(11, 7))
    passes = sorted({number for _, number, _ in rows})
    for order, number in enumerate(passes):
        # Each pass its own segments: a line never joins the end of one pass to the next.
        mine = [(start, data) for start, pass_number, data in rows if pass_number == number]
        x = [(_middle(start, data, starts.get(number, start)) - first) / 60 for start, data in mine]
        hide = "" if order == 0 else "_"  # matplotlib leaves "_" labels out of the legend

        def per_second(name: str, mine: list[tuple[float, dict[str, Any]]] = mine) -> list[float]:
            # Over the part of the bucket the pass covered, not all 10 s of it.
            return [float(data.get(name) or 0) / max(float(data.get("seconds") or BUCKET_S), 1.0)
                    for _, data in mine]  # fmt: skip

        def values(name: str, mine: list[tuple[float, dict[str, Any]]] = mine) -> list[float]:
            return [math.nan if data.get(name) is None else float(data[name]) for _, data in mine]

        rates.plot(
            x, values("pace"), color="black", drawstyle="steps-mid", label=hide + "pace held"
        )
        for name, text, color in (("admitted", "admitted", "tab:green"),
                                  ("refused", "refused (too fast)", "tab:orange"),
                                  ("errors", "errors", "tab:red")):  # fmt: skip
            rates.plot(x, per_second(name), color=color, marker="o", markersize=3,
                       label=hide + f"{text} per second")  # fmt: skip
        latency.plot(x, values("p50_ms"), color="tab:blue", marker="o", markersize=3,
                     label=hide + "p50")  # fmt: skip
        latency.plot(x, values("p99_ms"), color="tab:purple", marker="o", markersize=3,
                     label=hide + "p99")  # fmt: skip
    rates.set_ylabel("requests per second")
    rates.set_title("ozbulk run timeline (10-second buckets)")
    latency.set_yscale("log")
    latency.set_ylabel("round trip (ms)")
    latency.set_xlabel("minutes since the run began")
    for axes in (rates, latency):
        _mark_passes(axes, rows, first, starts)
        axes.grid(True, alpha=0.3)
        axes.legend(loc="best", fontsize="small", framealpha=0.8)
    figure.tight_layout()
    figure.savefig(target, dpi=100)
    plt.close(figure)
    return target


def _middle(start: float, data: dict[str, Any], pass_started: float) -> float:
    """The middle of the part of a bucket a pass covered: a pass starts and ends mid-bucket."""
    covered = float(data.get("seconds") or BUCKET_S)
    return max(start, min(pass_started, start + BUCKET_S - covered)) + covered / 2


def _mark_passes(
    axes: Any, rows: list[tuple[float, int, dict[str, Any]]], first: float, starts: dict[int, float]
) -> None:
    """A dashed line and a label where each pass starts; the seconds paused by the server shaded."""
    seen: set[int] = set()
    shaded = False
    for start, number, data in rows:
        left = (start - first) / 60
        if number not in seen:
            seen.add(number)
            # The pass's own start when known; else its first bucket's.
            at = max(left, (starts.get(number, start) - first) / 60)
            axes.axvline(at, color="grey", linestyle="--", linewidth=1)
            if axes.get_subplotspec().is_first_row():
                axes.annotate(
                    f"pass {number}", (at, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, -12), textcoords="offset points", fontsize="small",
                )  # fmt: skip
        paused = float(data.get("paused_s") or 0)
        if paused:
            # As wide as the time paused, centred in the bucket: where in it is not kept.
            middle = (_middle(start, data, starts.get(number, start)) - first) / 60
            axes.axvspan(middle - paused / 120, middle + paused / 120, color="tab:orange",
                         alpha=0.2, linewidth=0,
                         label="_" if shaded else "paused by the server")  # fmt: skip
            shaded = True


# -- lines for the summary and `ozbulk status` ----------------------------------------------
def summary_lines(summary: dict[str, Any]) -> list[str]:
    """Latency per outcome, answers, retries and where the time went, a line each."""
    latency = summary.get("latency")
    if not isinstance(latency, dict):
        return []
    lines = []
    for outcome in (*OUTCOMES, "all"):
        figures = latency.get(outcome) or {}
        if figures.get("count"):
            lines.append(
                f"latency {outcome:<9} n={figures['count']:,} p50 {figures['p50_ms']} ms, "
                f"p90 {figures['p90_ms']}, p95 {figures['p95_ms']}, p99 {figures['p99_ms']}, "
                f"max {figures['max_ms']}"
            )
    wait = summary.get("pacer_wait") or {}
    if wait.get("count"):
        lines.append(f"pacer wait        p50 {wait['p50_ms']} ms, p99 {wait['p99_ms']} ms")
    pacer = summary.get("pacer") or {}
    if pacer.get("decreases") or pacer.get("probes"):
        lines.append(
            f"pacer             pauses after a refusal {pacer['decreases']:g} "
            f"({pacer['pauses']:g} with Retry-After), {pacer['paused_s']:g} s paused, "
            f"probes {pacer['probes']:g}"
        )
    for key, title in (
        ("answers_by_status", "answers (HTTP)"),
        ("answers_by_kind", "answers (kind)"),
        ("retries_by_cause", "retries"),
    ):
        counts = summary.get(key) or {}
        if counts:
            lines.append(f"{title:<17} " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    spent = summary.get("time_s") or {}
    total = sum(spent.values())
    if total > 0:
        parts = [
            f"{name.replace('_', ' ')} {spent[name]:.1f} s ({spent[name] / total:.0%})"
            for name in PHASES
            if spent.get(name, 0) >= 0.05
        ]
        lines.append("time went to      " + ", ".join(parts))
    return lines


def summarize_checkpoint(checkpoint: Checkpoint) -> dict[str, Any]:
    return summarize(checkpoint.meta("telemetry"))
