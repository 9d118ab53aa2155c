"""The ``ozbulk`` command: a thin layer over :mod:`engine`'s public API.

Every user mistake ends in one line on stderr (what is wrong, how to fix it) and exit code 2;
tracebacks are shown only for internal bugs, and only with ``-v``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import glob
import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from engine import settings as defaults
from engine.config import config_path, layer_defaults
from engine.errors import InputError, OzbulkError, UsageError
from engine.logs import REDACTOR, setup_logging
from engine.settings import InputSettings, RunSettings, Secret

# Each command imports what it runs when it runs: `--help`, `--version`, `status` and `config
# show` must start in a blink, without the HTTP stack (aiohttp, anyio) that only `delete` uses.
# tests/test_startup.py pins which modules each of them may load.
if TYPE_CHECKING:
    from engine.pipeline import RunOutcome

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


AUTO_RATE = -1.0


def _rate(text: str) -> float:
    if text == "auto":
        return AUTO_RATE
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--rate takes a number of requests per second, 0 for no limit, or auto (got {text!r})"
        ) from None


# The subparsers whose options may also come from the environment and a --config file.
LAYERED: list[argparse.ArgumentParser] = []


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    output = common.add_argument_group("output")
    output.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more detail (-vv: debug; internal errors show a traceback)",
    )
    output.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    output.add_argument("--log-file", type=Path, help="also write the log to this file")
    output.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log line format (default %(default)s)",
    )
    return common


def _add_delete_options(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="CSV files (.gz too), globs, or - for standard input",
    )
    run.add_argument(
        "--config",
        type=Path,
        help="TOML file of settings (flags > OZBULK_* environment > file > defaults)",
    )
    target = run.add_argument_group("target")
    target.add_argument("--group-id", type=int, help="the block-number group's id (required)")
    target.add_argument("--user", help="the CloudAgent account user name (required)")
    target.add_argument(
        "--api-key",
        help="the API key; prefer OZONETEL_API_KEY or --api-key-file (a flag "
        "shows in the process list)",
    )
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
        help="requests per second: a ceiling the pacer adapts under when the "
        "server says too fast; 0 = no limit; auto = find the server's limit "
        "(default %(default)s)",
    )
    speed.add_argument(
        "--concurrency",
        type=int,
        default=defaults.DEFAULT_CONCURRENCY,
        help="requests in flight at once (default %(default)s)",
    )
    speed.add_argument(
        "--producer",
        choices=("process", "inline"),
        default="process",
        help="read and normalize the input in a child process, on another core (default), or "
        "inline in the main process",
    )
    speed.add_argument(
        "--producer-state-rows",
        type=int,
        default=defaults.STATE_EVERY_ROWS,
        metavar="ROWS",
        help="rows read between the producer states the checkpoint keeps, so that a resume "
        "continues reading from the last one instead of re-reading the input from its start "
        "(default %(default)s; the gap then grows with the input, up to 4 times this)",
    )
    speed.add_argument(
        "--batch-size",
        type=int,
        default=defaults.MAX_BATCH,
        help="numbers per request, 1 to 100 (default %(default)s)",
    )
    retry = run.add_argument_group("retries and timeouts")
    for flag, kind, default, text in (
        ("--max-attempts", int, defaults.DEFAULT_MAX_ATTEMPTS,
         "attempts per chunk before it is recorded as failed"),
        ("--backoff-base", float, defaults.DEFAULT_BACKOFF_BASE,
         "the first retry waits up to this many seconds, doubling each time"),
        ("--backoff-cap", float, defaults.DEFAULT_BACKOFF_CAP, "longest wait between attempts"),
        ("--connect-timeout", float, defaults.DEFAULT_CONNECT_TIMEOUT,
         "seconds to open a connection"),
        ("--read-timeout", float, defaults.DEFAULT_READ_TIMEOUT, "seconds to wait for an answer"),
        ("--token-ttl", float, defaults.DEFAULT_TOKEN_TTL, "token lifetime in seconds"),
        ("--token-budget", int, defaults.DEFAULT_TOKEN_BUDGET,
         "tokens the account may generate in an hour"),
        ("--breaker-window", int, defaults.DEFAULT_BREAKER_WINDOW,
         "circuit breaker: how many recent chunks it looks at"),
        ("--breaker-ratio", float, defaults.DEFAULT_BREAKER_RATIO,
         "circuit breaker: the share of those failed that stops the run"),
    ):  # fmt: skip
        retry.add_argument(flag, type=kind, default=default, help=f"{text} (default %(default)s)")
    data = run.add_argument_group("input")
    data.add_argument(
        "--column", help="phone column: header name or 1-based index (default: detected)"
    )
    data.add_argument(
        "--country",
        default=defaults.DEFAULT_COUNTRY,
        help="region of numbers written without a country code (default %(default)s)",
    )
    data.add_argument(
        "--number-format",
        choices=defaults.NUMBER_FORMATS,
        default="digits",
        help="form sent to the API: digits 919876543210 (default), e164 "
        "+919876543210, national 9876543210",
    )
    state = run.add_argument_group("checkpoint, results and confirmation")
    state.add_argument(
        "--checkpoint",
        type=Path,
        help="checkpoint file (default ozbulk-USER-GROUP.ckpt in this folder)",
    )
    state.add_argument(
        "--restart",
        action="store_true",
        help="start over: move the old checkpoint aside (it is never deleted)",
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
    state.add_argument(
        "--dry-run",
        action="store_true",
        help="read everything, show the plan and write rejected.csv; send nothing",
    )
    state.add_argument(
        "--yes",
        "-y",
        action="store_true",
        help="do not ask for confirmation (needed without a terminal)",
    )
    state.add_argument(
        "--no-progress",
        action="store_true",
        help="no live bar: a progress log line every 10 s instead",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ozbulk",
        description="Delete phone numbers in bulk from an Ozonetel CloudAgent block-number group.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Start with: ozbulk delete --help    (or: ozbulk demo, on a built-in fake API)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common_options()
    LAYERED.clear()
    run = commands.add_parser(
        "delete",
        parents=[common],
        help="delete the numbers in CSV files from a block-number group (resumable)",
        description="Delete every phone number in the input files from one block-number group, "
        "100 per request, at a set rate; re-run the same command to resume.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=DELETE_EXAMPLES + "\n" + EXIT_CODES,
    )
    _add_delete_options(run)
    config = commands.add_parser("config", help="show the effective settings (secrets masked)")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = config_commands.add_parser(
        "show",
        parents=[common],
        help="print the settings `delete` would use with these options, and where each came from",
    )
    _add_delete_options(show)
    LAYERED.extend((run, show))

    status = commands.add_parser(
        "status", parents=[common], help="show where a checkpointed run stands"
    )
    status.add_argument("checkpoint", type=Path)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    report = commands.add_parser(
        "report", parents=[common], help="write the report files of a checkpointed run"
    )
    report.add_argument("checkpoint", type=Path)
    report.add_argument("--out", type=Path, required=True, help="folder for the report files")
    sample = commands.add_parser(
        "sample", parents=[common], help="write a realistic sample CSV of phone numbers"
    )
    sample.add_argument("out", type=Path, help="file to write")
    sample.add_argument("--rows", type=int, default=1000, help="data rows (default %(default)s)")
    sample.add_argument("--seed", type=int, default=7, help="random seed (default %(default)s)")

    from engine.mock import command as mock_command

    mock = commands.add_parser(
        "mock-server", parents=[common], help="run the embedded fake Ozonetel API"
    )
    mock_command.add_arguments(mock)
    demo = commands.add_parser(
        "demo", parents=[common], help="delete the sample data from a built-in fake API, end to end"
    )
    demo.add_argument(
        "--rows",
        type=int,
        default=0,
        help="generate this many rows instead of using the sample file",
    )
    return parser


def _api_key(args: argparse.Namespace) -> Secret:
    """--api-key, then --api-key-file, then OZBULK_API_KEY / OZONETEL_API_KEY."""
    if args.api_key:
        return Secret(args.api_key)
    if args.api_key_file is not None:
        try:
            return Secret(args.api_key_file.expanduser().read_text().strip())
        except OSError as error:
            raise UsageError(f"--api-key-file {args.api_key_file}: {error.strerror}") from None
    return Secret(os.environ.get("OZONETEL_API_KEY", ""))


def _expand(inputs: list[str]) -> tuple[str, ...]:
    """Expand globs the shell left alone (quoted, or on Windows); a missing file is an error."""
    if not inputs:
        raise UsageError("no input: give one or more CSV files, globs, or - for standard input")
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
    for flag, value in (("--group-id", args.group_id), ("--user", args.user)):
        if value is None:
            env = "OZBULK_" + flag[2:].replace("-", "_").upper()
            raise UsageError(f"{flag} is required (or set {env}, or put it in a --config file)")
    inputs = InputSettings(
        paths=_expand(args.inputs),
        column=args.column,
        country=args.country.upper(),
        number_format=args.number_format,
        batch_size=args.batch_size,
    )
    auto = args.rate == AUTO_RATE
    checkpoint = args.checkpoint or Path(f"ozbulk-{args.user}-{args.group_id}.ckpt")
    api_key = _api_key(args)
    REDACTOR.add(api_key.reveal())
    return RunSettings(
        inputs=inputs,
        group_id=args.group_id,
        user=args.user,
        api_key=api_key,
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
        producer_process=args.producer == "process",
        producer_state_rows=args.producer_state_rows,
    )


def _confirm(assume_yes: bool) -> None:
    if assume_yes:
        return
    if not sys.stdin.isatty():
        raise UsageError("no terminal to confirm on: pass --yes to delete without a prompt")
    sys.stderr.write("Go ahead and delete these numbers? Type yes to confirm: ")
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise UsageError("not confirmed; nothing was sent")


def resume_command(argv: list[str]) -> str:
    """The command that resumes this run: the same one, less --restart and any literal key."""
    words, skip = ["ozbulk"], False
    for index, word in enumerate(argv):
        if skip:
            skip = False
            continue
        if word == "--restart" or word.startswith("--api-key="):
            continue
        if word == "--api-key":
            skip = index + 1 < len(argv)
            continue
        words.append(word)
    return shlex.join(words)


def print_summary(outcome: RunOutcome, argv: list[str] | None = None) -> None:
    summary = outcome.summary
    keys = (
        "rows", "accepted", "rejected", "duplicates", "chunks_total", "chunks_done",
        "chunks_failed", "sent", "deleted", "not_found", "error", "failed_numbers",
        "in_doubt_chunks", "requests", "retries", "rate_limited", "elapsed_s", "complete",
    )  # fmt: skip
    width = max(len(key) for key in keys)
    lines = [f"  {key:<{width}}  {summary.get(key)}" for key in keys]
    meaning = {
        0: "complete: every number has a verdict",
        1: "finished with failed chunks: re-run the same command to retry them",
        130: "interrupted: re-run the same command to resume",
    }.get(outcome.exit_code, f"stopped: {summary.get('stopped_by', '')}")
    print("ozbulk summary\n" + "\n".join(lines))
    if summary.get("report"):
        print(
            f"  report       {summary['report']}/ (summary.json, errors.csv, rejected.csv, "
            "failed_chunks.csv, in_doubt.csv)"
        )
    print(f"  checkpoint   {summary['checkpoint']}")
    print(f"exit {outcome.exit_code}: {meaning}")
    # A bad input fails the same way on every re-run: resuming is not the advice then.
    if outcome.exit_code != 0 and argv is not None and not isinstance(outcome.error, InputError):
        if "-" in argv:
            print("standard input was read once and cannot be resumed: save it to a file first")
        else:
            print(f"resume with: {resume_command(argv)}")


def _progress(args: argparse.Namespace, total: int | None) -> Any:
    from engine.progress import BarDisplay, LogDisplay

    if args.quiet:
        return None
    if args.no_progress or not sys.stderr.isatty():
        return LogDisplay()
    return BarDisplay(total=total)


def cmd_delete(args: argparse.Namespace, argv: list[str]) -> int:
    settings = settings_from_args(args)
    if settings.producer_process and not settings.inputs.from_stdin and not args.dry_run:
        from engine.producer_process import prestart

        prestart()  # before the imports below: the child starts while they run

    import anyio

    from engine.pipeline import delete, open_checkpoint
    from engine.plan import make_plan

    if settings.inputs.from_stdin:
        log.warning("reading standard input: this run cannot be resumed if interrupted")
    _check_inputs(settings)
    if args.dry_run:
        return _dry_run(settings)
    settings.require_api_key()
    plan = make_plan(settings, prescan_allowed=not args.yes)
    print(plan.render(), file=sys.stderr)
    _confirm(args.yes)
    checkpoint = open_checkpoint(settings, restart=args.restart)
    progress = _progress(args, plan.numbers if plan.exact else None)
    outcome = anyio.run(
        lambda: delete(settings, checkpoint=checkpoint, progress=progress, handle_signals=True)
    )
    if settings.summary_json is not None:
        settings.summary_json.write_text(
            json.dumps(outcome.summary, indent=2, sort_keys=True) + "\n"
        )
    print_summary(outcome, argv)
    if outcome.error is not None:
        log.error("%s", outcome.error)
    return outcome.exit_code


def _check_inputs(settings: RunSettings) -> None:
    """Refuse an unusable file (binary, workbook, no phone column) before any checkpoint exists."""
    from engine.numbers import Normalizer
    from engine.source import CsvSource

    looks_like_phone = Normalizer(settings.inputs.country).looks_like_phone
    for path in settings.inputs.paths:
        if path != "-":
            CsvSource(path, settings.inputs.column, looks_like_phone).inspect()


def _dry_run(settings: RunSettings) -> int:
    from engine.plan import Plan, write_rejects

    out = settings.report_dir or settings.checkpoint.with_name(
        settings.checkpoint.name + ".dry-run"
    )
    counts = write_rejects(settings, out)
    plan = Plan(settings, counts, True, None, None)
    print(plan.render().replace("ozbulk plan", "ozbulk plan (dry run: nothing sent)"))
    print(f"  rejected rows written to {out / 'rejected.csv'}")
    if settings.summary_json is not None:
        totals = {key: getattr(counts, key) for key in ("rows", "accepted", "rejected",
                                                          "duplicates", "chunks")}  # fmt: skip
        settings.summary_json.write_text(json.dumps({**totals, "dry_run": True}, indent=2) + "\n")
    return 0


def cmd_config(args: argparse.Namespace, sources: dict[str, str]) -> int:
    settings = settings_from_args(args)
    print(f"{'setting':<22} {'value':<48}  source")
    for name, value in vars(args).items():
        if name in NOT_SHOWN:
            continue
        if name == "api_key":
            value = "***" if settings.api_key else "(not set)"
        if name == "rate":
            value = "auto" if value == AUTO_RATE else "0 (no limit)" if value == 0 else value
        source = sources.get(name, "default")
        if name == "api_key" and name not in sources and settings.api_key:
            source = "file" if args.api_key_file else "environment OZONETEL_API_KEY"
        if name == "inputs" and name not in sources and value:
            source = "argument"
        print(f"{name.replace('_', '-'):<22} {value!s:<48}  {source}")
    return 0


NOT_SHOWN = frozenset({"command", "config_command", "verbose", "quiet", "log_file", "log_format"})


def cmd_sample(args: argparse.Namespace) -> int:
    from engine.sample import write_sample_file

    if args.rows < 0:
        raise UsageError(f"--rows must be >= 0 (got {args.rows})")
    kinds = write_sample_file(args.out, args.rows, args.seed)
    extra = f"{kinds['duplicate']} duplicates, {kinds['bad']} bad"
    print(f"wrote {args.rows} rows to {args.out} ({extra})")
    return 0


def _dispatch(args: argparse.Namespace, argv: list[str], sources: dict[str, str]) -> int:
    command = args.command
    if command == "delete":
        return cmd_delete(args, argv)
    if command == "config":
        return cmd_config(args, sources)
    if command == "sample":
        return cmd_sample(args)
    if command == "mock-server":
        from engine.mock import command as mock_command

        return mock_command.run(args)
    if command == "demo":
        from engine.demo import run_demo

        return run_demo(rows=args.rows)
    if command == "status":
        from engine.status import show_status

        return show_status(args.checkpoint, as_json=args.json)
    if command == "report":
        from engine.status import write_report_for

        return write_report_for(args.checkpoint, args.out)
    raise AssertionError(f"unhandled command {command}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    verbose = "-v" in argv or "--verbose" in argv or "-vv" in argv
    try:
        sources: dict[str, str] = {}
        if argv and argv[0] in ("delete", "config"):
            layered = LAYERED[0] if argv[0] == "delete" else LAYERED[1]
            sources = layer_defaults(layered, argv, file=config_path(argv))
        args = parser.parse_args(argv)
        setup_logging(verbose=args.verbose, quiet=args.quiet, log_file=args.log_file,
                      fmt=args.log_format)  # fmt: skip
        return _dispatch(args, argv, sources)
    except OzbulkError as error:
        print(f"ozbulk: error: {REDACTOR.scrub(str(error))}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("ozbulk: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # an internal bug: say so plainly, trace it only on request
        if verbose:
            raise
        print(
            f"ozbulk: internal error: {error.__class__.__name__}: {REDACTOR.scrub(str(error))} "
            "(run again with -v for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 70


def run() -> NoReturn:
    """The ``ozbulk`` command: :func:`main`, then an exit that skips the interpreter's teardown.

    Freeing every module and object at exit costs 50-130 ms of CPU once aiohttp, anyio and SQLite
    are loaded (a third of a small run's start-up) and does nothing a finished run needs. What
    must reach a file or the terminal is flushed first, and the atexit handlers run (logging's
    included, which flushes --log-file); the checkpoint and the producer process were closed by
    the run itself. ``main`` stays an ordinary function for callers that go on afterwards.
    """
    code = main()
    try:
        atexit._run_exitfuncs()  # logging.shutdown among them: every handler flushed and closed
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe (ozbulk ... | head)
                stream.flush()
    finally:
        os._exit(code)


if __name__ == "__main__":
    run()
