"""The six benchmarks. Each runs its sides alternately in one run and returns a `Result`.

Each prints what it ran, on what machine, and its figures as it goes; `benchmarks.output` turns
the results into JSON, markdown and plots.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    BARE_LOOP,
    HAND_LOOP,
    Arrivals,
    Running,
    Server,
    alternating,
    copy_checkpoint,
    fmt,
    fmt_spread,
    hand_loop,
    load_text,
    machine_line,
    ozbulk_delete,
    read_summary,
    remove_checkpoint,
    run,
    spread,
)
from benchmarks.nginx import NginxServer, find_nginx

OVERHEAD_CONCURRENCY = 16
LATENCY_MS = 50.0
LATENCY_CONCURRENCY = 64
STRICT_RATE = 50.0
BIN_S = 0.1
# "Memory flat": the dedupe bitmap needs ~2.5 bytes a number by design; a Python set would need ~70.
FLAT_BYTES_PER_NUMBER = 10
RESUME_FIRST_REQUEST_TIMEOUT_S = 600.0


@dataclass
class Result:
    """One benchmark's outcome: table rows for the README, and everything measured."""

    name: str
    title: str
    ran: str
    # (what is measured, result, target, verdict): one row of the README table each
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    work: Path
    quick: bool
    repeats: int
    machine: dict[str, Any]
    inputs: dict[int, Path] = field(default_factory=dict)
    kinds: dict[int, dict[str, int]] = field(default_factory=dict)

    def input(self, rows: int) -> Path:
        """The generated input of ``rows`` rows, written on first use."""
        if rows not in self.inputs:
            path = self.work / f"numbers-{rows}.csv"
            started = time.perf_counter()
            command = [sys.executable, "-m", "benchmarks.data", str(path), str(rows)]
            self.kinds[rows] = run(command, cwd=self.work).check().json_line()
            size = path.stat().st_size / 1e6
            say(
                f"  (generated {path.name}: {rows:,} rows, {size:,.0f} MB, "
                f"{time.perf_counter() - started:.1f} s)"
            )
            self.inputs[rows] = path
        return self.inputs[rows]

    def header(self, title: str, ran: str) -> None:
        say(f"\n== {title} ==")
        say(f"ran: {ran}")
        say(f"on:  {machine_line(self.machine)} ({load_text()})")


def say(text: str) -> None:
    print(text, flush=True)


QUICK = False  # set by __main__: a --quick run is a smoke test, its figures are not judged


def verdict(met: bool) -> str:
    if QUICK:
        return "not judged (--quick)"
    return "met" if met else "**below target**"


def sized(quick: bool, full: int, small: int) -> int:
    return small if quick else full


# -- 1. engine overhead -----------------------------------------------------------------------


def overhead(ctx: Context) -> Result:
    rows = sized(ctx.quick, 500_000, 20_000)
    source = ctx.input(rows)
    ran = (
        f"`ozbulk delete` (subprocess, checkpoint on, --rate 0 --no-progress --yes, concurrency "
        f"{OVERHEAD_CONCURRENCY}) vs benchmarks/hand_loop.py (plain aiohttp, same concurrency), "
        f"{rows:,}-row CSV, against benchmarks/servers.py `raw` (precomputed verdicts, zero "
        f"latency, its own process); {ctx.repeats} alternating pairs; numbers/s = numbers sent "
        "÷ wall time of the whole process (interpreter start included)"
    )
    ctx.header("engine overhead: ozbulk vs a hand-written aiohttp loop", ran)
    sides = ("ozbulk", "hand loop")
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    checkpoint = ctx.work / "overhead.ckpt"
    with Server("raw", folder=ctx.work) as server:
        for repeat, side in alternating(ctx.repeats, sides):
            cpu_before = server.cpu_s()
            if side == "ozbulk":
                remove_checkpoint(checkpoint)
                command = ozbulk_delete(
                    source, server.url, checkpoint, concurrency=OVERHEAD_CONCURRENCY
                )
                done = run(command, cwd=ctx.work).check()
                summary = read_summary(checkpoint)
                numbers, internal = summary["sent"], summary["elapsed_s"]
            else:
                command = hand_loop(source, server.url, concurrency=OVERHEAD_CONCURRENCY)
                done = run(command, cwd=ctx.work).check()
                line = done.json_line()
                if line["failed"]:
                    raise RuntimeError(f"the hand loop got {line['failed']} failed answers")
                numbers, internal = line["sent"], line["elapsed_s"]
            figures = {
                "numbers": numbers,
                "wall_s": done.wall_s,
                "cpu_s": done.cpu_s,
                "numbers_per_s": numbers / done.wall_s,
                "numbers_per_cpu_s": numbers / done.cpu_s,
                "in_process_numbers_per_s": numbers / internal,
                "max_rss_mb": done.max_rss_mb,
                "server_cpu_share": (server.cpu_s() - cpu_before) / done.wall_s,
            }
            runs[side].append(figures)
            say(
                f"  repeat {repeat + 1} {side:9}: {figures['numbers_per_s']:>9,.0f} numbers/s "
                f"wall, {figures['numbers_per_cpu_s']:>9,.0f} per CPU-s, "
                f"{figures['wall_s']:.2f} s, server busy {figures['server_cpu_share']:.0%}"
            )
    ours, theirs = runs["ozbulk"], runs["hand loop"]

    def ratio(key: str) -> dict[str, Any]:
        return spread([a[key] / b[key] for a, b in zip(ours, theirs, strict=True)])

    wall, cpu, inner = (
        ratio("numbers_per_s"),
        ratio("numbers_per_cpu_s"),
        ratio("in_process_numbers_per_s"),
    )
    ozbulk_nps = spread([item["numbers_per_s"] for item in ours])
    hand_nps = spread([item["numbers_per_s"] for item in theirs])
    say(f"  ozbulk ÷ hand loop, numbers/s (wall):     {fmt_spread(wall)}x  (target ≥ 1.0x)")
    say(f"  ozbulk ÷ hand loop, numbers per CPU-s:    {fmt_spread(cpu)}x")
    say(f"  ozbulk ÷ hand loop, after start-up:       {fmt_spread(inner)}x")
    server_busy = max(item["server_cpu_share"] for item in ours + theirs)
    say(f"  server busiest: {server_busy:.0%} of one core (it is not the bottleneck below ~90 %)")
    rows_out = [
        (
            "Engine overhead: ozbulk ÷ hand-written aiohttp loop, numbers/s (wall)",
            f"{fmt_spread(wall)}x ({fmt(ozbulk_nps['median'], 0)} vs "
            f"{fmt(hand_nps['median'], 0)} numbers/s)",
            "≥ 1.0x",
            verdict(wall["median"] >= 1.0),
        ),
        (
            "… same, numbers per CPU-second of the client",
            f"{fmt_spread(cpu)}x",
            "",
            "",
        ),
    ]
    return Result(
        "overhead",
        "Engine overhead",
        ran,
        rows_out,
        {"rows": rows, "runs": runs, "ratio_wall": wall, "ratio_cpu": cpu, "ratio_inner": inner},
    )


# -- 2. latency-bound -------------------------------------------------------------------------


def _histogram(times: Sequence[float], start: float, seconds: float) -> list[int]:
    bins = [0] * max(1, int(seconds / BIN_S) + 1)
    for moment in times:
        index = int((moment - start) / BIN_S)
        if 0 <= index < len(bins):
            bins[index] += 1
    return bins


def latency(ctx: Context) -> Result:
    rows = sized(ctx.quick, 1_000_000, 100_000)
    source = ctx.input(rows)
    ideal = LATENCY_CONCURRENCY / (LATENCY_MS / 1000)
    ran = (
        f"server latency {LATENCY_MS:.0f} ms (benchmarks/servers.py `raw --latency-ms "
        f"{LATENCY_MS:.0f}`, arrival times logged), concurrency {LATENCY_CONCURRENCY}, "
        f"--rate 0, {rows:,}-row CSV; achieved requests/s = requests ÷ (last arrival + latency "
        f"- first arrival), ideal {ideal:,.0f}/s; ozbulk, the hand loop and the floor "
        "(benchmarks/bare_loop.py: the same job on bare asyncio sockets, no HTTP library) "
        f"alternate, {ctx.repeats} each"
    )
    ctx.header("latency-bound: keeping 64 requests in flight at 50 ms", ran)
    sides = ("ozbulk", "hand loop", "bare sockets")
    efficiency: dict[str, list[float]] = {side: [] for side in sides}
    rates: dict[str, list[float]] = {side: [] for side in sides}
    plots: dict[str, list[int]] = {}
    checkpoint = ctx.work / "latency.ckpt"
    for repeat, side in alternating(ctx.repeats, sides):
        with Server("raw", "--latency-ms", str(LATENCY_MS), folder=ctx.work, log=True) as server:
            if side == "ozbulk":
                remove_checkpoint(checkpoint)
                command = ozbulk_delete(
                    source, server.url, checkpoint, concurrency=LATENCY_CONCURRENCY
                )
            else:
                script = BARE_LOOP if side == "bare sockets" else HAND_LOOP
                command = hand_loop(
                    source, server.url, concurrency=LATENCY_CONCURRENCY, script=script
                )
            run(command, cwd=ctx.work).check()
            arrivals = server.stop()
        times = arrivals.times
        span = times[-1] + LATENCY_MS / 1000 - times[0]
        achieved = len(times) / span
        efficiency[side].append(achieved / ideal)
        rates[side].append(achieved)
        if side not in plots:
            plots[side] = _histogram(times, times[0], span)
        say(
            f"  repeat {repeat + 1} {side:9}: {achieved:,.0f} requests/s over {span:.2f} s "
            f"= {achieved / ideal:.3f} of ideal"
        )
    ours = spread(efficiency["ozbulk"])
    theirs = spread(efficiency["hand loop"])
    floor = spread(efficiency["bare sockets"])
    versus = spread(
        [a / b for a, b in zip(efficiency["ozbulk"], efficiency["hand loop"], strict=True)]
    )
    say(f"  ozbulk achieved ÷ ideal:       {fmt_spread(ours, 3)}  (target ≥ 0.95)")
    say(f"  hand loop achieved ÷ ideal:    {fmt_spread(theirs, 3)}")
    say(f"  bare sockets achieved ÷ ideal: {fmt_spread(floor, 3)}  (no HTTP library: the floor)")
    rows_out = [
        (
            f"Latency-bound (50 ms, concurrency 64): achieved ÷ ideal {ideal:,.0f} req/s",
            f"{fmt_spread(ours, 3)} ({fmt(spread(rates['ozbulk'])['median'], 0)} req/s; "
            f"hand loop {fmt(theirs['median'], 3)}; bare sockets {fmt(floor['median'], 3)})",
            "≥ 0.95",
            verdict(ours["median"] >= 0.95),
        )
    ]
    return Result(
        "latency",
        "Latency-bound",
        ran,
        rows_out,
        {
            "rows": rows,
            "ideal_rps": ideal,
            "efficiency": {side: spread(values) for side, values in efficiency.items()},
            "requests_per_s": {side: spread(values) for side, values in rates.items()},
            "ozbulk_vs_hand": versus,
            "per_bin": plots,
            "bin_s": BIN_S,
        },
    )


# -- 3. rate accuracy -------------------------------------------------------------------------


def _max_in_window(times: Sequence[float], window: float = 1.0) -> int:
    best, low = 0, 0
    for high, moment in enumerate(times):
        while moment - times[low] >= window:
            low += 1
        best = max(best, high - low + 1)
    return best


def _rate_figures(arrivals: Arrivals) -> dict[str, Any]:
    admitted = [t for t, s in zip(arrivals.times, arrivals.statuses, strict=True) if s != 429]
    refused = [t for t, s in zip(arrivals.times, arrivals.statuses, strict=True) if s == 429]
    span = admitted[-1] - admitted[0] if len(admitted) > 1 else 0.0
    start = arrivals.times[0]
    seconds = arrivals.times[-1] - start
    return {
        "requests": len(arrivals.times),
        "admitted": len(admitted),
        "refused": len(refused),
        "refused_share": len(refused) / len(arrivals.times),
        "admitted_per_s": (len(admitted) - 1) / span if span else 0.0,
        "max_admitted_in_1s": _max_in_window(admitted),
        "seconds": seconds,
        "admitted_per_bin": _histogram(admitted, start, seconds),
        "refused_per_bin": _histogram(refused, start, seconds),
    }


def rate(ctx: Context) -> Result:
    seconds = sized(ctx.quick, 20, 3)
    rows = int(STRICT_RATE * seconds * 100 / 0.985)  # ~98.5 % of generated rows are accepted
    source = ctx.input(rows)
    ran = (
        f"engine.mock's fake API (benchmarks/servers.py `mock --rate-limit {STRICT_RATE:.0f}`: "
        "strict sliding 1-s window, HTTP 429 + Retry-After: 1, arrivals logged) vs `ozbulk "
        f"delete --rate 50` and `--rate 100`, concurrency 16, {rows:,} rows (~{seconds} s at "
        f"R); alternating, {ctx.repeats} each; admitted/s = (admitted - 1) ÷ their span"
    )
    ctx.header(f"rate accuracy: a strict server at R = {STRICT_RATE:.0f} requests/s", ran)
    settings = ("50", "100")
    figures: dict[str, list[dict[str, Any]]] = {setting: [] for setting in settings}
    checkpoint = ctx.work / "rate.ckpt"
    for repeat, setting in alternating(ctx.repeats, settings):
        server_args = ("--rate-limit", str(STRICT_RATE))
        with Server("mock", *server_args, folder=ctx.work, log=True) as server:
            remove_checkpoint(checkpoint)
            command = ozbulk_delete(source, server.url, checkpoint, rate=setting)
            run(command, cwd=ctx.work).check()
            measured = _rate_figures(server.stop())
        figures[setting].append(measured)
        say(
            f"  repeat {repeat + 1} --rate {setting:>3}: {measured['admitted_per_s']:.2f} "
            f"admitted/s = {measured['admitted_per_s'] / STRICT_RATE:.3f} R, "
            f"{measured['refused']} refused ({measured['refused_share']:.2%}), "
            f"at most {measured['max_admitted_in_1s']} in any 1 s"
        )

    def of_r(setting: str) -> dict[str, Any]:
        return spread([item["admitted_per_s"] / STRICT_RATE for item in figures[setting]])

    def refused(setting: str) -> dict[str, Any]:
        return spread([item["refused_share"] for item in figures[setting]])

    at, above = of_r("50"), of_r("100")
    at_refused = sum(item["refused"] for item in figures["50"])
    above_refused = refused("100")
    say(
        f"  --rate 50:  {fmt_spread(at, 3)} R, {at_refused} refused in all  "
        "(target ≥ 0.98 R, 0 refused)"
    )
    say(
        f"  --rate 100: {fmt_spread(above, 3)} R, refused share "
        f"{_percent_spread(above_refused)}  (target ≥ 0.9 R, ≤ 2 %)"
    )
    rows_out = [
        (
            "Rate accuracy, strict server R = 50/s, `--rate 50`: admitted ÷ R; refused",
            f"{fmt_spread(at, 3)}; {at_refused} refused",
            "≥ 0.98; 0",
            verdict(at["median"] >= 0.98 and at_refused == 0),
        ),
        (
            "Rate accuracy, same server, `--rate 100`: admitted ÷ R; refused share",
            f"{fmt_spread(above, 3)}; {_percent_spread(above_refused)}",
            "≥ 0.9; ≤ 2 %",
            verdict(above["median"] >= 0.9 and above_refused["median"] <= 0.02),
        ),
    ]
    return Result(
        "rate",
        "Rate accuracy",
        ran,
        rows_out,
        {
            "rate_limit": STRICT_RATE,
            "rows": rows,
            "runs": figures,
            "of_r": {"50": at, "100": above},
            "refused_share_100": above_refused,
            "bin_s": BIN_S,
        },
    )


def _percent_spread(figure: dict[str, Any]) -> str:
    scaled = dict(figure)
    for key in ("median", "min", "max"):
        if scaled[key] is not None:
            scaled[key] = scaled[key] * 100
    scaled["values"] = [value * 100 for value in figure["values"]]
    return fmt_spread(scaled, 2, " %")


# -- 4. scale ---------------------------------------------------------------------------------


def _has_dry_run(folder: Path) -> bool:
    """Whether this ozbulk has ``delete --dry-run`` (read and plan everything, send nothing)."""
    command = [sys.executable, "-m", "engine", "delete", "--help"]
    return "--dry-run" in run(command, cwd=folder, timeout=60).stdout


def scale(ctx: Context) -> Result:
    sizes = [10_000, 100_000] if ctx.quick else [100_000, 1_000_000, 10_000_000]
    largest, middle, smallest = sizes[-1], sizes[-2], sizes[0]
    once = not ctx.quick  # the 10M-row runs take minutes: once is enough to see the trend
    modes = ["delete", "dry-run"] if _has_dry_run(ctx.work) else ["delete"]
    listed = ", ".join(f"{size:,}" for size in sizes)
    ran = (
        f"`ozbulk delete` --rate 0, concurrency {OVERHEAD_CONCURRENCY}, checkpoint on, against "
        "benchmarks/servers.py `raw`"
        + (", and `ozbulk delete --dry-run` (reads and plans everything, sends nothing)"
           if "dry-run" in modes else " (this ozbulk has no --dry-run)")
        + f": {listed} rows, {ctx.repeats} runs of each size"
        + (f" but {largest:,} (once)" if once else "")
        + "; numbers/s = accepted numbers ÷ wall time of the process; peak RSS = ozbulk's "
        "process plus its producer process, summed, sampled every 20 ms from /proc"
    )  # fmt: skip
    ctx.header("scale: numbers/s and peak memory by input size", ran)
    figures: dict[str, dict[int, list[dict[str, float]]]] = {
        mode: {size: [] for size in sizes} for mode in modes
    }
    checkpoint = ctx.work / "scale.ckpt"
    failures: list[str] = []
    with Server("raw", folder=ctx.work) as server:
        for repeat in range(ctx.repeats):
            for size in sizes:
                if size == largest and repeat > 0 and once:
                    continue
                for mode in modes:
                    source = ctx.input(size)
                    remove_checkpoint(checkpoint)
                    command = ozbulk_delete(source, server.url, checkpoint)
                    if mode == "dry-run":
                        command.append("--dry-run")
                    done = run(command, cwd=ctx.work, sample_rss=True)
                    if done.returncode != 0:  # one failed size must not hide the others
                        failures.append(f"{size:,} rows, {mode}: exit {done.returncode}")
                        say(f"  {size:>10,} rows, {mode:7}: FAILED, exit {done.returncode}:")
                        say("    " + done.tail(6).replace("\n", "\n    "))
                        continue
                    summary = read_summary(checkpoint)
                    numbers = summary["accepted"]
                    measured = {
                        "numbers": numbers,
                        "wall_s": done.wall_s,
                        "cpu_s": done.cpu_s,
                        "numbers_per_s": numbers / done.wall_s,
                        "max_rss_mb": done.tree_rss_mb,
                    }
                    figures[mode][size].append(measured)
                    say(
                        f"  {size:>10,} rows, {mode:7}: {measured['numbers_per_s']:>9,.0f} "
                        f"numbers/s, {done.wall_s:7.2f} s, peak RSS {fmt(done.tree_rss_mb, 1)} MB"
                    )
    table = {
        mode: {
            size: {
                key: spread([item[key] for item in runs if item[key] is not None])
                for key in ("numbers_per_s", "wall_s", "max_rss_mb")
            }
            for size, runs in by_size.items()
        }
        for mode, by_size in figures.items()
    }

    def growth_of(mode: str, key: str, high: int, low: int) -> float | None:
        top, bottom = table[mode][high][key]["median"], table[mode][low][key]["median"]
        return None if top is None or bottom is None else float(top / bottom)

    def bytes_per_number(mode: str) -> float | None:
        """Peak RSS added per extra number, largest input over smallest."""
        top, bottom = table[mode][largest]["max_rss_mb"], table[mode][smallest]["max_rss_mb"]
        if top["median"] is None or bottom["median"] is None:
            return None
        if not figures[mode][largest] or not figures[mode][smallest]:
            return None
        extra = figures[mode][largest][0]["numbers"] - figures[mode][smallest][0]["numbers"]
        return float((top["median"] - bottom["median"]) * 2**20 / extra)

    growth = {
        mode: {
            "rss": growth_of(mode, "max_rss_mb", largest, smallest),
            "rss_bytes_per_number": bytes_per_number(mode),
            "throughput": growth_of(mode, "numbers_per_s", largest, middle),
        }
        for mode in modes
    }
    for mode in modes:
        say(
            f"  {mode}: peak RSS {_short(largest)} ÷ {_short(smallest)} "
            f"{fmt(growth[mode]['rss'])}x ({fmt(growth[mode]['rss_bytes_per_number'], 1)} bytes "
            f"per extra number); numbers/s {_short(largest)} ÷ {_short(middle)} "
            f"{fmt(growth[mode]['throughput'])}x"
        )
    rows_out = []
    for size in sizes:
        parts = [
            f"{mode} {fmt_spread(table[mode][size]['numbers_per_s'], 0)}/s, "
            f"{fmt_spread(table[mode][size]['max_rss_mb'], 0)} MB"
            for mode in modes
        ]
        rows_out.append((f"Scale, {size:,} rows: numbers/s; peak RSS", "; ".join(parts), "", ""))
    if failures:
        rows_out.append(("Scale: runs that failed", "; ".join(failures), "none", "**failed**"))
    delete = growth["delete"]
    rows_out.append(
        (
            f"Scale (delete): peak RSS added per number, {_short(smallest)} → "
            f"{_short(largest)}; numbers/s {_short(largest)} ÷ {_short(middle)}",
            f"{fmt(delete['rss_bytes_per_number'], 1)} bytes ({fmt(delete['rss'])}x); "
            f"{fmt(delete['throughput'])}x",
            f"flat (≤ {FLAT_BYTES_PER_NUMBER} bytes/number); linear (≥ 0.9x)",
            "unknown"
            if delete["rss_bytes_per_number"] is None or delete["throughput"] is None
            else verdict(
                delete["rss_bytes_per_number"] <= FLAT_BYTES_PER_NUMBER
                and delete["throughput"] >= 0.9
            ),
        )
    )
    return Result(
        "scale",
        "Scale",
        ran,
        rows_out,
        {
            "sizes": sizes,
            "modes": modes,
            "runs": {
                mode: {str(size): runs for size, runs in by_size.items()}
                for mode, by_size in figures.items()
            },
            "table": {
                mode: {str(size): value for size, value in by_size.items()}
                for mode, by_size in table.items()
            },
            "growth": growth,
            "failures": failures,
        },
    )


def _short(rows: int) -> str:
    return f"{rows // 1_000_000}M" if rows >= 1_000_000 else f"{rows // 1000}k"


# -- 5. producer ------------------------------------------------------------------------------


def producer(ctx: Context) -> Result:
    from benchmarks.producer_run import STAGES

    rows = sized(ctx.quick, 1_000_000, 100_000)
    source = ctx.input(rows)
    cpu = max(os.sched_getaffinity(0))
    ran = (
        f"benchmarks/producer_run.py in its own process pinned to CPU {cpu}, no network: "
        "`read` = CsvSource.batches(); `normalize` = + Normalizer.normalize_batch; `full` = "
        f"Producer(InputSettings(paths=...), Normalizer(), on_reject).chunks(); {rows:,} rows; "
        f"stage order rotated, {ctx.repeats} runs each"
    )
    ctx.header("producer: read + normalize + dedupe + chunk, one core", ran)
    figures: dict[str, list[dict[str, Any]]] = {stage: [] for stage in STAGES}
    for repeat in range(ctx.repeats):
        order = STAGES[repeat % 3 :] + STAGES[: repeat % 3]
        for stage in order:
            command = [sys.executable, "-m", "benchmarks.producer_run", stage, str(source)]
            done = run(command, cwd=ctx.work, cpu=cpu).check()
            measured = done.json_line()
            measured["max_rss_mb"] = done.max_rss_mb
            figures[stage].append(measured)
            say(
                f"  repeat {repeat + 1} {stage:9}: {measured['rows'] / measured['wall_s']:>9,.0f} "
                f"rows/s, {measured['accepted'] / measured['wall_s']:>9,.0f} numbers/s "
                f"({measured['wall_s']:.2f} s wall, {measured['cpu_s']:.2f} s CPU)"
            )
    wall = {stage: spread([item["wall_s"] for item in figures[stage]]) for stage in STAGES}
    full = spread([item["accepted"] / item["wall_s"] for item in figures["full"]])
    full_rows = spread([item["rows"] / item["wall_s"] for item in figures["full"]])
    total = wall["full"]["median"]
    shares = {
        "read CSV (source.py)": wall["read"]["median"] / total,
        "normalize (numbers.py)": (wall["normalize"]["median"] - wall["read"]["median"]) / total,
        "dedupe + chunk (batcher.py)": (wall["full"]["median"] - wall["normalize"]["median"])
        / total,
    }
    say(f"  full producer: {fmt_spread(full, 0)} numbers/s ({fmt_spread(full_rows, 0)} rows/s)")
    say("  where the time goes: " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()))
    rows_out = [
        (
            "Producer (read + normalize + dedupe + chunk, no network, one core): numbers/s",
            f"{fmt_spread(full, 0)} (read {shares['read CSV (source.py)']:.0%}, normalize "
            f"{shares['normalize (numbers.py)']:.0%}, dedupe + chunk "
            f"{shares['dedupe + chunk (batcher.py)']:.0%} of the time)",
            "",
            "",
        )
    ]
    return Result(
        "producer",
        "Producer",
        ran,
        rows_out,
        {
            "rows": rows,
            "runs": figures,
            "numbers_per_s": full,
            "rows_per_s": full_rows,
            "stage_wall_s": wall,
            "shares": shares,
        },
    )


# -- 6. resume --------------------------------------------------------------------------------


def resume(ctx: Context) -> Result:
    rows = sized(ctx.quick, 10_000_000, 100_000)
    source = ctx.input(rows)
    chunks = ctx.kinds[rows]["unique"] // 100
    half = chunks // 2
    ran = (
        f"a {rows:,}-row run stopped at 50 %: benchmarks/servers.py `raw --fail-after {half:,}` "
        "answers 'Invalid group id' from then on, so ozbulk stops with its checkpoint "
        "committed (exit 3). Then, alternating, the same command resumes from a copy of that "
        "checkpoint, or starts afresh, against a healthy `raw` server that reports when its "
        f"first request arrives; ozbulk is killed once it has; {ctx.repeats} each"
    )
    ctx.header("resume: time from start to the first request at 50 % of a big run", ran)
    pristine = ctx.work / "resume-half.ckpt"
    remove_checkpoint(pristine)
    with Server("raw", "--fail-after", str(half), folder=ctx.work) as server:
        built = run(ozbulk_delete(source, server.url, pristine), cwd=ctx.work).check((3,))
    stopped = read_summary(pristine)
    say(
        f"  built the half-done checkpoint in {built.wall_s:.1f} s: {stopped['chunks_done']:,} "
        f"chunks done of ~{chunks:,} ({stopped['chunks_done'] / chunks:.1%})"
    )
    started = time.perf_counter()
    digest = hashlib.blake2b(digest_size=16)
    with source.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    fingerprint_s = time.perf_counter() - started
    checkpoint = ctx.work / "resume-run.ckpt"
    sides = ("resume", "fresh")
    first: dict[str, list[float]] = {side: [] for side in sides}
    for repeat, side in alternating(ctx.repeats, sides):
        if side == "resume":
            copy_checkpoint(pristine, checkpoint)
        else:
            remove_checkpoint(checkpoint)
        with Server("raw", folder=ctx.work) as server:
            client = Running(ozbulk_delete(source, server.url, checkpoint), cwd=ctx.work)
            arrived = server.first_request(RESUME_FIRST_REQUEST_TIMEOUT_S)
            client.kill()
            client.wait()
        if arrived is None:
            raise RuntimeError(f"{side}: no request within {RESUME_FIRST_REQUEST_TIMEOUT_S} s")
        first[side].append(arrived - client.started)
        say(
            f"  repeat {repeat + 1} {side:6}: first request {arrived - client.started:.2f} s "
            "after start"
        )
    resumed, fresh = spread(first["resume"]), spread(first["fresh"])
    ratio = spread([a / b for a, b in zip(first["resume"], first["fresh"], strict=True)])
    say(
        f"  resume: {fmt_spread(resumed)} s; fresh start: {fmt_spread(fresh)} s; "
        f"resume ÷ fresh {fmt_spread(ratio)}x"
    )
    say(
        f"  (of which hashing the input for the checkpoint's fingerprint: ~{fingerprint_s:.2f} s, "
        "paid by both)"
    )
    rows_out = [
        (
            f"Resume at 50 % of {_short(rows)} rows: start → first request",
            f"{fmt_spread(resumed)} s (fresh start {fmt(fresh['median'])} s)",
            "",
            "",
        )
    ]
    return Result(
        "resume",
        "Resume",
        ran,
        rows_out,
        {
            "rows": rows,
            "chunks_estimated": chunks,
            "chunks_done_at_stop": stopped["chunks_done"],
            "build_s": built.wall_s,
            "first_request_s": {"resume": resumed, "fresh": fresh},
            "resume_over_fresh": ratio,
            "fingerprint_s": fingerprint_s,
        },
    )


# -- 7. engine overhead against a fast server, and start-up -------------------------------------

FAST_CONCURRENCY = 32
FAST_ROWS = (200_000, 2_000_000)
FAST_MIN_PAIRS = 5  # per size and server, whatever --repeats says (but --quick)
STARTUP_ROWS = 100
STARTUP_PAIRS = 9
STARTUP_TARGET_S = 0.1
# Each line's targets: ozbulk's numbers/s ÷ the hand loop's, at least; CPU per number, at most.
FAST_TARGETS = {200_000: 0.9, 2_000_000: 1.0}
CPU_TARGET = 1.3


def _one_run(side: str, source: Path, url: str, checkpoint: Path, work: Path) -> dict[str, float]:
    """One whole-process run of a side: numbers sent, wall and CPU seconds (children included)."""
    if side == "hand loop":
        done = run(hand_loop(source, url, concurrency=FAST_CONCURRENCY), cwd=work).check()
        line = done.json_line()
        if line["failed"]:
            raise RuntimeError(f"the hand loop got {line['failed']} failed answers")
        numbers = line["sent"]
    else:
        remove_checkpoint(checkpoint)
        command = ozbulk_delete(source, url, checkpoint, concurrency=FAST_CONCURRENCY)
        if side != "ozbulk":  # "ozbulk --producer inline" and the like: the flag is in the name
            command += side.split()[1:]
        done = run(command, cwd=work).check()
        numbers = read_summary(checkpoint)["sent"]
    return {"numbers": numbers, "wall_s": done.wall_s, "cpu_s": done.cpu_s}


def _pair_ratios(ours: list[dict[str, float]], theirs: list[dict[str, float]]) -> dict[str, Any]:
    """Per alternating pair: numbers/s ours ÷ theirs, and CPU per number ours ÷ theirs."""
    speed = [
        (a["numbers"] / a["wall_s"]) / (b["numbers"] / b["wall_s"])
        for a, b in zip(ours, theirs, strict=True)
    ]
    cpu = [
        (a["cpu_s"] / a["numbers"]) / (b["cpu_s"] / b["numbers"])
        for a, b in zip(ours, theirs, strict=True)
    ]
    return {"speed": spread(speed), "cpu": spread(cpu)}


def fast_server(ctx: Context) -> Result:
    rows_list = (20_000, 100_000) if ctx.quick else FAST_ROWS
    pairs = ctx.repeats if ctx.quick else max(ctx.repeats, FAST_MIN_PAIRS)
    binary, missing = find_nginx()
    ran = (
        f"`ozbulk delete` (checkpoint on, --rate 0, --no-progress --yes, concurrency "
        f"{FAST_CONCURRENCY}) vs benchmarks/hand_loop.py (same concurrency) against two servers: "
        "nginx (benchmarks/nginx.py: one worker answering every DELETE with a success verdict "
        "naming its numbers, a fraction of a core) and the suite's Python `raw` server (most of "
        "a core); "
        f"{', '.join(f'{rows:,}' for rows in rows_list)}-row CSVs; against nginx also `ozbulk "
        f"--producer inline`; {pairs} alternating rounds per size and server; whole process "
        "(start-up included): numbers/s = numbers sent ÷ wall time, CPU = user + system of the "
        "process and its children (the producer process); ratios are taken within each round. "
        f"Start-up: a {STARTUP_ROWS}-row CSV, ozbulk's wall time minus the hand loop's, "
        f"{STARTUP_PAIRS} alternating pairs"
    )
    ctx.header("engine overhead against a fast server (nginx), and start-up", ran)
    servers: list[tuple[str, Callable[[], Any]]] = []
    if binary is None:
        say(f"  nginx lines skipped: {missing}")
    else:
        servers.append(("nginx", lambda: NginxServer(binary, ctx.work / "nginx")))
    servers.append(("python raw", lambda: Server("raw", folder=ctx.work)))
    checkpoint = ctx.work / "fast.ckpt"
    figures: dict[str, dict[str, dict[str, list[dict[str, float]]]]] = {}
    ratios: dict[str, dict[str, dict[str, Any]]] = {}
    startup: list[float] = []
    rows_out: list[tuple[str, str, str, str]] = []
    for server_name, start in servers:
        figures[server_name], ratios[server_name] = {}, {}
        sides = ["ozbulk", "hand loop"]
        if server_name == "nginx":
            sides.append("ozbulk --producer inline")
        with start() as server:
            for rows in rows_list:
                source = ctx.input(rows)
                runs: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
                for repeat, side in alternating(pairs, sides):
                    measured = _one_run(side, source, server.url, checkpoint, ctx.work)
                    runs[side].append(measured)
                    say(
                        f"  {server_name:10} {rows:>9,} rows, round {repeat + 1} {side:24}: "
                        f"{measured['numbers'] / measured['wall_s']:>9,.0f} numbers/s, "
                        f"{measured['wall_s']:6.2f} s wall, {measured['cpu_s']:6.2f} s CPU"
                    )
                versus = {
                    side: _pair_ratios(runs[side], runs["hand loop"])
                    for side in sides
                    if side != "hand loop"
                }
                figures[server_name][str(rows)], ratios[server_name][str(rows)] = runs, versus
                rows_out += _fast_rows(server_name, rows, versus)
            if not startup:  # against the first server: nginx where there is one
                startup = _startup(ctx, server.url)
    start_up = spread(startup)
    say(
        f"  start-up, {STARTUP_ROWS}-row run: ozbulk - hand loop = {fmt_spread(start_up, 3)} s "
        f"(target ≤ {STARTUP_TARGET_S} s)"
    )
    if binary is None:
        rows_out.insert(0, ("Against nginx", f"skipped: {missing}", "", ""))
    rows_out.append(
        (
            f"Start-up: a {STARTUP_ROWS}-number run, ozbulk's wall time - the hand loop's",
            f"{fmt_spread(start_up, 3)} s",
            f"≤ {STARTUP_TARGET_S} s",
            verdict(start_up["median"] <= STARTUP_TARGET_S),
        )
    )
    return Result(
        "nginx",
        "Engine overhead against a fast server",
        ran,
        rows_out,
        {
            "rows": list(rows_list),
            "pairs": pairs,
            "nginx": binary or missing,
            "runs": figures,
            "ratios": ratios,
            "startup_s": start_up,
        },
    )


def _fast_rows(
    server: str, rows: int, versus: dict[str, dict[str, Any]]
) -> list[tuple[str, str, str, str]]:
    """The README lines of one server and size; say() them too."""
    lines = []
    for side, figure in versus.items():
        speed, cpu = figure["speed"], figure["cpu"]
        say(
            f"  {server}, {_short(rows)}: {side} ÷ hand loop: numbers/s {fmt_spread(speed)}x, "
            f"CPU per number {fmt_spread(cpu)}x"
        )
        target = FAST_TARGETS.get(rows)
        judged = side == "ozbulk" and server == "nginx" and target is not None
        lines.append(
            (
                f"{side} ÷ hand loop vs {server}, {_short(rows)} rows: numbers/s; CPU per number",
                f"{fmt_spread(speed)}x; {fmt_spread(cpu)}x",
                f"≥ {target}x; ≤ {CPU_TARGET}x" if judged else "",
                verdict(speed["median"] >= target and cpu["median"] <= CPU_TARGET)
                if judged and target is not None
                else "",
            )
        )
    return lines


def _startup(ctx: Context, url: str) -> list[float]:
    source = ctx.input(STARTUP_ROWS)
    checkpoint = ctx.work / "startup.ckpt"
    walls: dict[str, list[float]] = {"ozbulk": [], "hand loop": []}
    for _, side in alternating(STARTUP_PAIRS, tuple(walls)):
        walls[side].append(_one_run(side, source, url, checkpoint, ctx.work)["wall_s"])
    return [a - b for a, b in zip(walls["ozbulk"], walls["hand loop"], strict=True)]


BENCHMARKS: dict[str, Callable[[Context], Result]] = {
    "overhead": overhead,
    "latency": latency,
    "rate": rate,
    "scale": scale,
    "producer": producer,
    "resume": resume,
    "nginx": fast_server,
}
