"""``python -m benchmarks``: run the suite, write results.json, results.md and plots."""

from __future__ import annotations

import argparse
import compileall
import datetime
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks import suite
from benchmarks.harness import ROOT, load_text, machine, machine_line
from benchmarks.limits import limits, plot_limits
from benchmarks.output import PLOTS, markdown, write_json, write_plots
from benchmarks.suite import Context, Result

BENCHMARKS = {**suite.BENCHMARKS, "limits": limits}
PLOTS["limits"] = plot_limits

DEFAULT_OUT = ROOT / "bench_results"
PUBLISHED = Path(__file__).resolve().parent / "RESULTS.md"
FULL_REPEATS = 3
QUICK_REPEATS = 1


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark ozbulk against local servers; see benchmarks/__init__.py.",
        epilog="A full run (no --quick, no --only) also rewrites benchmarks/RESULTS.md, the "
        "table for the README's Performance section.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny inputs, one repeat: a smoke run of ~1 minute"
    )
    parser.add_argument(
        "--only",
        type=_names,
        action="extend",
        metavar="NAME",
        help=f"run only these (repeatable or comma-separated): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="folder for results.json, results.md and the PNGs (default: bench_results/)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        metavar="N",
        help=f"runs of each side of each comparison (default {FULL_REPEATS}; "
        f"{QUICK_REPEATS} with --quick)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    names = args.only or list(BENCHMARKS)
    repeats = args.repeats or (QUICK_REPEATS if args.quick else FULL_REPEATS)
    if repeats < 1:
        print("python -m benchmarks: --repeats must be at least 1", file=sys.stderr)
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    command = shlex.join(["python", "-m", "benchmarks", *argv])
    print(f"{command}: {', '.join(names)}; {repeats} repeat(s); results in {out}")
    print(f"machine: {machine_line(info)} ({load_text()})")
    # ozbulk runs as an installed copy does, with its bytecode compiled (pip compiles on install,
    # and a checkout on first import unless PYTHONDONTWRITEBYTECODE is set, as on this machine):
    # otherwise each ozbulk process, parent and producer, would recompile the engine as it starts.
    compileall.compile_dir(ROOT / "engine", quiet=1)
    started = time.monotonic()
    results: list[Result] = []
    failures: dict[str, str] = {}
    suite.QUICK = args.quick
    with tempfile.TemporaryDirectory(prefix="ozbulk-bench-") as folder:
        context = Context(Path(folder), args.quick, repeats, info)
        for name in names:
            try:
                results.append(BENCHMARKS[name](context))
            except Exception:  # one broken benchmark must not hide the others' figures
                failures[name] = traceback.format_exc()
                print(f"\n!! {name} failed:\n{failures[name]}", file=sys.stderr)
    meta = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": command,
        "quick": args.quick,
        "repeats": repeats,
        "elapsed_s": time.monotonic() - started,
        "machine": info,
        "failures": failures,
    }
    write_json(out / "results.json", meta, results)
    table = markdown(meta, results)
    (out / "results.md").write_text(table)
    plots = write_plots(out, results)
    if not args.quick and not args.only and not failures:
        PUBLISHED.write_text(table)
        print(f"\nwrote {PUBLISHED.relative_to(ROOT)} (for the README's Performance section)")
    print(f"\n{table}")
    print(
        f"results: {out / 'results.json'}, {out / 'results.md'}, "
        f"{', '.join(path.name for path in plots)}"
    )
    print(f"took {meta['elapsed_s']:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
