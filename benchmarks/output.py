"""Results on disk: ``results.json`` (everything), ``results.md`` (the table), one PNG per plot.

matplotlib is imported only when the plots are drawn, after every measurement: loaded in the
measuring process, it would inflate the peak RSS that Linux reports for each child it forks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.harness import load_text, machine_line
from benchmarks.suite import Result

if TYPE_CHECKING:
    from matplotlib.axes import Axes

DPI = 110


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt

    return plt


def write_json(path: Path, meta: dict[str, Any], results: Sequence[Result]) -> None:
    document = {
        **meta,
        "benchmarks": {
            result.name: {"title": result.title, "ran": result.ran, "table": result.rows,
                          "data": result.data}
            for result in results
        },
    }  # fmt: skip
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def markdown(meta: dict[str, Any], results: Sequence[Result]) -> str:
    lines = [
        "# ozbulk benchmarks",
        "",
        f"Measured {meta['date']} at commit {meta['machine']['revision']} on "
        f"{machine_line(meta['machine'])} "
        f"({load_text(meta['machine']['load_average_at_start'])} at the start), with "
        f"`{meta['command']}` ({meta['repeats']} repeats; {meta['elapsed_s'] / 60:.1f} min). "
        "Each figure is the median of the repeats, with [min-max] after it; comparisons ran "
        "both sides alternately in the same run. ozbulk ran with its bytecode compiled, as an "
        "installed copy does. Other work shared the machine, so absolute figures are noisy: the "
        "ratios are the point.",
        "",
        "| benchmark | result | target | |",
        "| --- | --- | --- | --- |",
    ]
    for result in results:
        for measure, value, target, verdict in result.rows:
            lines.append(f"| {measure} | {value} | {target} | {verdict} |")
    lines += ["", "What each ran:", ""]
    lines += [f"- **{result.title}**: {result.ran}." for result in results]
    return "\n".join(lines) + "\n"


# -- plots ------------------------------------------------------------------------------------


def _bins_axis(count: int, bin_s: float) -> list[float]:
    return [index * bin_s for index in range(count)]


def plot_overhead(result: Result, path: Path) -> None:
    runs = result.data["runs"]
    figure, axes = _pyplot().subplots(1, 2, figsize=(10, 4))
    for axis, key, label in (
        (axes[0], "numbers_per_s", "numbers/s (wall, whole process)"),
        (axes[1], "numbers_per_cpu_s", "numbers per CPU-second"),
    ):
        for offset, (side, items) in enumerate(runs.items()):
            values = [item[key] for item in items]
            positions = [index + offset * 0.4 for index in range(len(values))]
            axis.bar(positions, values, width=0.4, label=side)
        repeats = len(next(iter(runs.values())))
        axis.set_xticks([index + 0.2 for index in range(repeats)], range(1, repeats + 1))
        axis.set_xlabel("repeat")
        axis.set_ylabel(label)
        axis.legend(loc="lower right")
    figure.suptitle(f"Engine overhead, {result.data['rows']:,} rows, zero-latency local server")
    _save(figure, path)


def plot_latency(result: Result, path: Path) -> None:
    data = result.data
    figure, axis = _pyplot().subplots(figsize=(10, 4))
    for side, bins in data["per_bin"].items():
        axis.plot(_bins_axis(len(bins), data["bin_s"]), bins, label=side, linewidth=1)
    axis.axhline(data["ideal_rps"] * data["bin_s"], color="grey", linestyle="--", label="ideal")
    axis.set_xlabel("seconds since the first request")
    axis.set_ylabel(f"requests per {data['bin_s'] * 1000:.0f} ms")
    axis.set_title("Latency-bound: 50 ms server, concurrency 64 (first repeat of each)")
    axis.legend()
    _save(figure, path)


def plot_rate(result: Result, path: Path) -> None:
    data = result.data
    figure, axes = _pyplot().subplots(2, 1, figsize=(10, 6), sharex=True)
    for axis, setting in zip(axes, ("50", "100"), strict=True):
        runs = data["runs"][setting]
        if not runs:
            continue
        first = runs[0]
        _stacked(axis, first["admitted_per_bin"], first["refused_per_bin"], data["bin_s"])
        axis.axhline(
            data["rate_limit"] * data["bin_s"],
            color="grey",
            linestyle="--",
            label=f"R = {data['rate_limit']:.0f}/s",
        )
        axis.set_title(f"--rate {setting} against a strict {data['rate_limit']:.0f}/s server")
        axis.set_ylabel(f"requests per {data['bin_s'] * 1000:.0f} ms")
        axis.legend(loc="upper right")
    axes[-1].set_xlabel("seconds since the first request")
    _save(figure, path)


def _stacked(axis: Axes, admitted: list[int], refused: list[int], bin_s: float) -> None:
    moments = _bins_axis(len(admitted), bin_s)
    axis.bar(moments, admitted, width=bin_s, align="edge", label="admitted")
    axis.bar(
        moments,
        refused,
        width=bin_s,
        align="edge",
        bottom=admitted,
        label="refused (429)",
        color="tab:red",
    )


def plot_scale(result: Result, path: Path) -> None:
    data = result.data
    sizes = data["sizes"]
    figure, axes = _pyplot().subplots(1, 2, figsize=(10, 4))
    for axis, key, label in (
        (axes[0], "numbers_per_s", "numbers/s (wall)"),
        (axes[1], "max_rss_mb", "peak RSS, MB"),
    ):
        for mode in data["modes"]:
            table = data["table"][mode]
            medians = [table[str(size)][key]["median"] for size in sizes]
            axis.plot(sizes, medians, marker="o", label=mode)
        axis.set_xscale("log")
        axis.set_xlabel("input rows")
        axis.set_ylabel(label)
        axis.set_ylim(bottom=0)
        axis.legend()
    figure.suptitle("Scale: ozbulk delete --rate 0 against a zero-latency local server")
    _save(figure, path)


def plot_producer(result: Result, path: Path) -> None:
    runs = result.data["runs"]
    figure, axis = _pyplot().subplots(figsize=(7, 4))
    stages = list(runs)
    medians = [
        sorted(item["rows"] / item["wall_s"] for item in runs[stage])[len(runs[stage]) // 2]
        for stage in stages
    ]
    axis.bar(stages, medians)
    axis.set_ylabel("rows/s, one core")
    axis.set_title(f"Producer stages, {result.data['rows']:,} rows (each stage adds one step)")
    _save(figure, path)


def plot_resume(result: Result, path: Path) -> None:
    first = result.data["first_request_s"]
    figure, axis = _pyplot().subplots(figsize=(7, 4))
    sides = list(first)
    medians = [first[side]["median"] for side in sides]
    low = [first[side]["median"] - first[side]["min"] for side in sides]
    high = [first[side]["max"] - first[side]["median"] for side in sides]
    axis.bar(sides, medians, yerr=[low, high], capsize=6)
    axis.set_ylabel("seconds from start to the first request")
    axis.set_title(f"Resume at 50 % of {result.data['rows']:,} rows vs a fresh start")
    _save(figure, path)


def _save(figure: Any, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    _pyplot().close(figure)


def plot_fast_server(result: Result, path: Path) -> None:
    """Ratios to the hand loop, median with min-max whiskers, one group per server and size."""
    groups = [
        (f"{server}\n{int(rows):,} rows", side, figure)
        for server, by_rows in result.data["ratios"].items()
        for rows, by_side in by_rows.items()
        for side, figure in by_side.items()
    ]
    figure, axes = _pyplot().subplots(1, 2, figsize=(12, 4.5))
    for axis, key, label in (
        (axes[0], "speed", "numbers/s, ozbulk ÷ hand loop"),
        (axes[1], "cpu", "CPU per number, ozbulk ÷ hand loop"),
    ):
        for index, (_group, side, ratios) in enumerate(groups):
            spread = ratios[key]
            low, high = spread["median"] - spread["min"], spread["max"] - spread["median"]
            axis.bar(index, spread["median"], yerr=[[low], [high]], capsize=3,
                     color="tab:blue" if side == "ozbulk" else "tab:gray")  # fmt: skip
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.set_xticks(range(len(groups)), [f"{g}\n{s}" for g, s, _ in groups], fontsize=7)
        axis.set_ylabel(label)
    figure.suptitle("Engine overhead against nginx and the suite's Python server")
    _save(figure, path)


PLOTS: dict[str, Callable[[Result, Path], None]] = {
    "overhead": plot_overhead,
    "latency": plot_latency,
    "rate": plot_rate,
    "scale": plot_scale,
    "producer": plot_producer,
    "resume": plot_resume,
    "nginx": plot_fast_server,
}


def write_plots(out: Path, results: Sequence[Result]) -> list[Path]:
    written = []
    for result in results:
        path = out / f"{result.name}.png"
        PLOTS[result.name](result, path)
        written.append(path)
    return written
