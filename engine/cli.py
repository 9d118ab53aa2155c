"""The ``ozbulk`` command: a thin layer over :mod:`engine`'s public API.

Every user mistake ends in one line on stderr (what is wrong, how to fix it) and exit code 2;
tracebacks are shown only for internal bugs, and only with ``-v``.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import anyio

from engine import settings as defaults
from engine.errors import OzbulkError, UsageError
from engine.pipeline import RunOutcome, delete, open_checkpoint
from engine.progress import BarDisplay, LogDisplay
from engine.settings import InputSettings, RunSettings, Secret

log = logging.getLogger("engine")

EXIT_CODES = """\
exit codes:
  0    complete: every number has a verdict
  1    finished, but some chunks failed after all retries (re-run to retry them)
  2    bad usage, settings, input or checkpoint (nothing was sent)
  3    stopped by an answer no retry can fix (bad credentials, invalid group id); resumable
  4    the checkpoint could not be written (disk full, read-only); resumable once fixed
  130  interrupted (Ctrl-C or SIGTERM); re-run the same command to resume
"""

DELETE_EXAMPLES = """\
examples:
  first run (API key from the environment, 5 requests/s):
    export OZONETEL_API_KEY=...        # or --api-key-file ~/.ozonetel-key
    ozbulk delete numbers.csv --group-id 42 --user acme --rate 5

  resume after Ctrl-C, kill -9 or a crash: run the very same command again.

  token authentication (account set to TOKEN_AUTH):
    ozbulk delete numbers.csv --group-id 42 --user acme --auth token

  several files, a named column, no prompt (for scripts):
    ozbulk delete 'exports/*.csv.gz' --column Mobile --group-id 42 --user acme --yes

  start over on purpose (the old checkpoint is kept aside):
    ozbulk delete numbers.csv --group-id 42 --user acme --restart
"""


def _rate(text: str) -> float:
    if text == "auto":
        return -1.0
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--rate takes a number of requests per second, 0 for no limit, or auto (got {text!r})"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ozbulk",
        description="Delete phone numbers in bulk from an Ozonetel CloudAgent block-number group.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Start with: ozbulk delete --help    (or: ozbulk demo, on a built-in fake API)",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more detail (-vv: debug)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("--log-file", type=Path, help="also write the log to this file")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "delete",
        help="delete the numbers in CSV files from a block-number group (resumable)",
        description="Delete every phone number in the input files from one block-number group, "
        "100 per request, at a set rate; re-run the same command to resume.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=DELETE_EXAMPLES + "\n" + EXIT_CODES,
    )
    run.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="CSV files (.gz too), globs, or - for stdin"
    )
    target = run.add_argument_group("target")
    target.add_argument("--group-id", type=int, required=True, help="the block-number group's id")
    target.add_argument("--user", required=True, help="the CloudAgent account user name")
    target.add_argument("--api-key", help="the API key (prefer OZONETEL_API_KEY or --api-key-file)")
    target.add_argument("--api-key-file", type=Path, help="read the API key from this file")
    target.add_argument(
        "--auth",
        choices=defaults.AUTH_MODES,
        default="apikey",
        help="apikey: apiKey header on every call (BASIC_AUTH accounts); token: "
        "one token from Generate Token, refreshed before it expires (TOKEN_AUTH)",
    )
    target.add_argument(
        "--base-url",
        default=defaults.DEFAULT_BASE_URL,
        help="API host (default %(default)s; international: https://api.ccaas.ozonetel.com)",
    )
    target.add_argument(
        "--path", default=defaults.DEFAULT_PATH, help="delete endpoint (default %(default)s)"
    )
    target.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="allow plain http:// to a host that is not this machine",
    )
    speed = run.add_argument_group("speed")
    speed.add_argument(
        "--rate",
        type=_rate,
        default=defaults.DEFAULT_RATE,
        help="requests per second, a ceiling the pacer adapts under; 0 = no limit; "
        "auto = find the server's limit (default %(default)s)",
    )
    speed.add_argument(
        "--concurrency",
        type=int,
        default=defaults.DEFAULT_CONCURRENCY,
        help="requests in flight at once (default %(default)s)",
    )
    speed.add_argument(
        "--batch-size",
        type=int,
        default=defaults.MAX_BATCH,
        help="numbers per request, 1 to 100 (default %(default)s)",
    )
    retry = run.add_argument_group("retries and timeouts")
    retry.add_argument(
        "--max-attempts",
        type=int,
        default=defaults.DEFAULT_MAX_ATTEMPTS,
        help="attempts per chunk before it is recorded as failed (default %(default)s)",
    )
    retry.add_argument(
        "--backoff-base",
        type=float,
        default=defaults.DEFAULT_BACKOFF_BASE,
        help="first retry waits up to this many seconds, doubling (default %(default)s)",
    )
    retry.add_argument(
        "--backoff-cap",
        type=float,
        default=defaults.DEFAULT_BACKOFF_CAP,
        help="longest wait between attempts, seconds (default %(default)s)",
    )
    retry.add_argument(
        "--connect-timeout",
        type=float,
        default=defaults.DEFAULT_CONNECT_TIMEOUT,
        help="seconds to open a connection (default %(default)s)",
    )
    retry.add_argument(
        "--read-timeout",
        type=float,
        default=defaults.DEFAULT_READ_TIMEOUT,
        help="seconds to wait for an answer (default %(default)s)",
    )
    retry.add_argument(
        "--token-ttl",
        type=float,
        default=defaults.DEFAULT_TOKEN_TTL,
        help="token lifetime in seconds (default %(default)s)",
    )
    retry.add_argument(
        "--token-budget",
        type=int,
        default=defaults.DEFAULT_TOKEN_BUDGET,
        help="tokens the account may generate an hour (default %(default)s)",
    )
    retry.add_argument(
        "--breaker-window",
        type=int,
        default=defaults.DEFAULT_BREAKER_WINDOW,
        help="circuit breaker: chunks looked at (default %(default)s)",
    )
    retry.add_argument(
        "--breaker-ratio",
        type=float,
        default=defaults.DEFAULT_BREAKER_RATIO,
        help="circuit breaker: share of them failed that stops the run (default %(default)s)",
    )
    data = run.add_argument_group("input")
    data.add_argument(
        "--column", help="phone column: header name or 1-based index (default: detected)"
    )
    data.add_argument(
        "--country",
        default=defaults.DEFAULT_COUNTRY,
        help="region for numbers written without a country code (default %(default)s)",
    )
    data.add_argument(
        "--number-format",
        choices=defaults.NUMBER_FORMATS,
        default="digits",
        help="form sent to the API: digits 919876543210 (default), e164 "
        "+919876543210, national 9876543210",
    )
    state = run.add_argument_group("checkpoint and results")
    state.add_argument(
        "--checkpoint",
        type=Path,
        help="checkpoint file (default ozbulk-USER-GROUP.ckpt in this folder)",
    )
    state.add_argument(
        "--restart",
        action="store_true",
        help="start over: move the old checkpoint aside (never deleted)",
    )
    state.add_argument(
        "--retry-failed",
        action="store_true",
        help="re-send only the chunks that failed in an earlier pass",
    )
    state.add_argument("--summary-json", type=Path, help="write the run's totals to this file")
    state.add_argument(
        "--report-dir", type=Path, help="report folder (default: the checkpoint's name + .report)"
    )
    state.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    state.add_argument("--no-progress", action="store_true", help="no live progress bar")

    status = commands.add_parser("status", help="show where a checkpointed run stands")
    status.add_argument("checkpoint", type=Path)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    report = commands.add_parser("report", help="write the report files of a checkpointed run")
    report.add_argument("checkpoint", type=Path)
    report.add_argument("--out", type=Path, required=True, help="folder for the report files")

    sample = commands.add_parser("sample", help="write a realistic sample CSV of phone numbers")
    sample.add_argument("out", type=Path, help="file to write")
    sample.add_argument("--rows", type=int, default=1000, help="data rows (default %(default)s)")
    sample.add_argument("--seed", type=int, default=7, help="random seed (default %(default)s)")

    from engine.mock import command as mock_command

    mock = commands.add_parser("mock-server", help="run the embedded fake Ozonetel API")
    mock_command.add_arguments(mock)

    demo = commands.add_parser(
        "demo", help="delete the sample data from a built-in fake API, end to end"
    )
    demo.add_argument(
        "--rows", type=int, default=0, help="generate this many rows instead of the sample"
    )
    return parser


def _api_key(args: argparse.Namespace) -> Secret:
    if args.api_key_file is not None:
        try:
            return Secret(args.api_key_file.read_text().strip())
        except OSError as error:
            raise UsageError(f"--api-key-file {args.api_key_file}: {error.strerror}") from None
    return Secret(args.api_key or os.environ.get("OZONETEL_API_KEY", ""))


def _expand(inputs: list[str]) -> tuple[str, ...]:
    """Expand globs the shell left alone (quoted, or on Windows); a missing file is an error."""
    paths: list[str] = []
    for item in inputs:
        if item != "-" and glob.has_magic(item):
            matches = sorted(glob.glob(item))
            if not matches:
                raise UsageError(f"{item}: no file matches this pattern")
            paths.extend(matches)
        else:
            if item != "-" and not os.path.isfile(item):
                raise UsageError(f"{item}: no such file")
            paths.append(item)
    return tuple(paths)


def settings_from_args(args: argparse.Namespace) -> RunSettings:
    inputs = InputSettings(
        paths=_expand(args.inputs),
        column=args.column,
        country=args.country.upper(),
        number_format=args.number_format,
        batch_size=args.batch_size,
    )
    auto = args.rate == -1.0
    checkpoint = args.checkpoint or Path(f"ozbulk-{args.user}-{args.group_id}.ckpt")
    return RunSettings(
        inputs=inputs,
        group_id=args.group_id,
        user=args.user,
        api_key=_api_key(args),
        checkpoint=checkpoint,
        auth=args.auth,
        base_url=args.base_url,
        path=args.path,
        rate=None if auto or args.rate == 0 else args.rate,
        rate_auto=auto,
        concurrency=args.concurrency,
        connect_timeout=args.connect_timeout,
        read_timeout=args.read_timeout,
        max_attempts=args.max_attempts,
        backoff_base=args.backoff_base,
        backoff_cap=args.backoff_cap,
        token_ttl=args.token_ttl,
        token_budget=args.token_budget,
        breaker_window=args.breaker_window,
        breaker_ratio=args.breaker_ratio,
        allow_insecure_http=args.allow_insecure_http,
        retry_failed=args.retry_failed,
        summary_json=args.summary_json,
        report_dir=args.report_dir,
    )


def _confirm(settings: RunSettings, assume_yes: bool) -> None:
    if assume_yes:
        return
    if not sys.stdin.isatty():
        raise UsageError("no terminal to confirm on: pass --yes to delete without a prompt")
    sys.stderr.write(
        f"Delete the numbers in {len(settings.inputs.paths)} file(s) from group "
        f"{settings.group_id} of user {settings.user} at {settings.host}? [y/N] "
    )
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise UsageError("not confirmed; nothing was sent")


def print_summary(outcome: RunOutcome) -> None:
    summary = outcome.summary
    keys = (
        "rows", "accepted", "rejected", "duplicates", "chunks_total", "chunks_done",
        "chunks_failed", "sent", "deleted", "not_found", "error", "failed_numbers",
        "in_doubt_chunks", "requests", "retries", "rate_limited", "elapsed_s", "complete",
    )  # fmt: skip
    width = max(len(key) for key in keys)
    lines = [f"  {key:<{width}}  {summary.get(key)}" for key in keys]
    state = {
        0: "complete: every number has a verdict",
        1: "finished with failed chunks: re-run the same command to retry them",
        130: "interrupted: re-run the same command to resume",
    }.get(outcome.exit_code, f"stopped: {summary.get('stopped_by', '')}; re-run to resume")
    print("ozbulk summary\n" + "\n".join(lines))
    if summary.get("report"):
        print(f"  report: {summary['report']}")
    print(f"  checkpoint: {summary['checkpoint']}")
    print(f"exit {outcome.exit_code}: {state}")


def cmd_delete(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if settings.inputs.from_stdin:
        log.warning("reading standard input: this run cannot be resumed if interrupted")
    _confirm(settings, args.yes)
    checkpoint = open_checkpoint(settings, restart=args.restart)
    progress: Any
    if args.no_progress or args.quiet:
        progress = LogDisplay() if not args.quiet else None
    else:
        progress = BarDisplay() if sys.stderr.isatty() else LogDisplay()
    outcome = anyio.run(
        lambda: delete(settings, checkpoint=checkpoint, progress=progress, handle_signals=True)
    )
    if settings.summary_json is not None:
        settings.summary_json.write_text(
            json.dumps(outcome.summary, indent=2, sort_keys=True) + "\n"
        )
    print_summary(outcome)
    if outcome.error is not None:
        log.error("%s", outcome.error)
    return outcome.exit_code


def cmd_sample(args: argparse.Namespace) -> int:
    from engine.sample import write_sample_file

    if args.rows < 0:
        raise UsageError(f"--rows must be >= 0 (got {args.rows})")
    kinds = write_sample_file(args.out, args.rows, args.seed)
    extra = f"{kinds['duplicate']} duplicates, {kinds['bad']} bad"
    print(f"wrote {args.rows} rows to {args.out} ({extra})")
    return 0


def cmd_mock_server(args: argparse.Namespace) -> int:
    from engine.mock import command as mock_command

    return mock_command.run(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from engine.demo import run_demo

    return run_demo(rows=args.rows)


def cmd_status(args: argparse.Namespace) -> int:
    from engine.status import show_status

    return show_status(args.checkpoint, as_json=args.json)


def cmd_report(args: argparse.Namespace) -> int:
    from engine.status import write_report_for

    return write_report_for(args.checkpoint, args.out)


COMMANDS = {
    "delete": cmd_delete,
    "sample": cmd_sample,
    "mock-server": cmd_mock_server,
    "demo": cmd_demo,
    "status": cmd_status,
    "report": cmd_report,
}


def setup_logging(verbose: int, quiet: bool, log_file: Path | None) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose >= 2 else logging.INFO
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(message)s", handlers=handlers
    )
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet, args.log_file)
    try:
        return COMMANDS[args.command](args)
    except OzbulkError as error:
        print(f"ozbulk: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("ozbulk: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # an internal bug: say so plainly, trace it only on request
        if args.verbose:
            raise
        print(
            f"ozbulk: internal error: {error.__class__.__name__}: {error} "
            "(run again with -v for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 70


if __name__ == "__main__":
    sys.exit(main())
