"""What recording costs: ``python -m benchmarks.telemetry_cost [--rows N] [--repeats R]``.

Recording (engine/telemetry.py) is always on, so there is no run without it to compare with.
Instead:

1. the recorder's whole per-request path (``turn`` and ``request`` around a pacer wait and a
   request that complete at once, ``chunk_finished``) is timed in isolation, against the same
   awaits without it, and compared with the wall time per request of a real ``ozbulk delete``
   at full speed (``--rate 0``) against benchmarks/servers.py ``raw`` — the engine-overhead
   benchmark's set-up;
2. the opt-in outputs have a switch: runs with ``--request-log FILE.gz`` and with
   ``--metrics-port 0`` alternate with plain runs, and the numbers/s are compared;
   The request log's cost per line is timed in isolation too (the loop's part, and the whole
   including the writer thread, which holds the GIL while it formats);
3. memory: a simulated 10-hour run (a fake clock, 3,600 timeline buckets, 400 requests each)
   records through the recorder while the checkpoint's share is taken off every commit, as the
   collector does; the recorder's memory after the first hour and after ten is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    Server,
    machine,
    machine_line,
    ozbulk_delete,
    read_summary,
    remove_checkpoint,
    run,
)
from engine.records import Verdict
from engine.request_log import RequestLog
from engine.telemetry import Telemetry

CALLS = 200_000
VERDICT = Verdict(100, [], 40)


async def _ticket() -> float:
    return 1.0


async def _answer() -> Verdict:
    return VERDICT


async def _bare(count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        await _ticket()
        await _answer()
    return time.perf_counter() - started


async def _recorded(count: int, telemetry: Telemetry) -> float:
    started = time.perf_counter()
    for index in range(count):
        _, waited = await telemetry.turn(_ticket())
        verdict = await telemetry.request(_answer(), index, 1, waited)
        telemetry.chunk_finished(100, verdict)
    return time.perf_counter() - started


def recorder_cost_s() -> tuple[float, float]:
    """Seconds per request: the bare awaits, and the same awaits through the recorder."""
    bare, recorded = [], []
    for _ in range(5):
        bare.append(asyncio.run(_bare(CALLS)) / CALLS)
        recorded.append(asyncio.run(_recorded(CALLS, Telemetry())) / CALLS)
    return statistics.median(bare), statistics.median(recorded)


def request_log_cost_s(folder: Path) -> tuple[float, float]:
    """Seconds per line: on the event loop (record), and in all (record, format, gzip, write).

    The thread holds the GIL while it formats, so the whole of it is counted against the loop.
    """
    lines = CALLS
    log = RequestLog(folder / "cost.csv.gz")
    started = time.perf_counter()
    for index in range(lines):
        log.record(1_700_000_000.0 + index, index, 1, 0.05, 0.001, "success", "success", None)
    on_loop = time.perf_counter() - started
    log.close()
    return on_loop / lines, (time.perf_counter() - started) / lines


def memory_over_ten_hours() -> tuple[float, float]:
    """KiB the recorder holds after 1 simulated hour and after 10 (tracemalloc)."""
    now = [1_000_000.0]
    telemetry = Telemetry(clock=lambda: now[0])

    async def hour() -> None:
        for _bucket in range(360):
            for index in range(400):
                _, waited = await telemetry.turn(_ticket())
                await telemetry.request(_answer(), index, 1, waited)
                if index % 40 == 0:  # the sampler, 10 times a second
                    telemetry.sample(0.1)
            telemetry.to_json()
            telemetry.timeline_updates()  # what the collector hands to the checkpoint
            now[0] += 10.0

    tracemalloc.start()
    asyncio.run(hour())
    after_one = tracemalloc.get_traced_memory()[0]
    for _ in range(9):
        asyncio.run(hour())
    after_ten = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after_one / 1024, after_ten / 1024


def _numbers_per_s(folder: Path, source: Path, url: str, extra: list[str]) -> dict[str, Any]:
    checkpoint = folder / "cost.ckpt"
    remove_checkpoint(checkpoint)
    done = run([*ozbulk_delete(source, url, checkpoint), *extra], cwd=folder).check()
    summary = read_summary(checkpoint)
    return {
        "numbers_per_s": summary["sent"] / done.wall_s,
        # From the run's start to its summary: leaves out interpreter start-up and imports.
        "in_run_numbers_per_s": summary["sent"] / summary["elapsed_s"],
        "requests": summary["requests"],
        "elapsed_s": summary["elapsed_s"],
        "cpu_s": done.cpu_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=300_000, help="rows of each run's input")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each side")
    args = parser.parse_args()
    print(machine_line(machine()))

    bare, recorded = recorder_cost_s()
    cost = recorded - bare
    print(f"1. recorder, in isolation ({CALLS:,} requests x 5): {bare * 1e6:.2f} µs per request "
          f"bare, {recorded * 1e6:.2f} µs recorded: {cost * 1e6:.2f} µs per request")  # fmt: skip

    sides = {
        "plain": [],
        "request log": ["--request-log", "requests.csv.gz"],
        "metrics": ["--metrics-port", "0"],
    }
    figures: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="ozbulk-telemetry-") as name:
        folder = Path(name)
        source = folder / "numbers.csv"
        with source.open("w") as handle:
            handle.write("phone\n")
            handle.writelines(f"9{index:09d}\n" for index in range(args.rows))
        with Server("raw", folder=folder) as server:
            for _ in range(args.repeats):
                for side, extra in sides.items():
                    figures[side].append(_numbers_per_s(folder, source, server.url, extra))
    plain = figures["plain"]
    per_request = statistics.median(item["elapsed_s"] / item["requests"] for item in plain)
    print(f"   a full-speed ozbulk run (--rate 0, raw server, {args.rows:,} numbers): "
          f"{per_request * 1e6:.1f} µs of wall time per request")  # fmt: skip
    print(f"   recording costs {cost / per_request:.2%} of it (target ≤ 2 %)")
    with tempfile.TemporaryDirectory(prefix="ozbulk-request-log-") as name:
        on_loop, in_all = request_log_cost_s(Path(name))
    print(f"   --request-log, in isolation: {on_loop * 1e6:.2f} µs per line on the loop, "
          f"{in_all * 1e6:.2f} µs in all with the thread's formatting and gzip: "
          f"{in_all / per_request:.2%} of a request (target ≤ 5 %)")  # fmt: skip
    measures = (
        ("numbers_per_s", "whole process, wall"),
        ("in_run_numbers_per_s", "from the run's start, as summary.json"),
    )
    for key, title in measures:
        base = statistics.median(item[key] for item in plain)
        print(f"2. alternating runs, {args.repeats} each, numbers/s ({title}, median):")
        for side in sides:
            rates = [item[key] for item in figures[side]]
            median = statistics.median(rates)
            print(f"   {side:12} {median:>10,.0f}  ({median / base - 1:+.1%} vs plain; runs "
                  f"{', '.join(f'{rate:,.0f}' for rate in rates)})")  # fmt: skip

    one, ten = memory_over_ten_hours()
    print(f"3. recorder memory, simulated run at 40 requests/s: {one:,.0f} KiB after 1 h, "
          f"{ten:,.0f} KiB after 10 h")  # fmt: skip


if __name__ == "__main__":
    main()
