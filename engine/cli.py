"""The ``ozbulk`` command: a thin layer over :mod:`engine`'s public API.

Every user mistake ends in one line on stderr (what is wrong, how to fix it) and exit code 2;
tracebacks are shown only for internal bugs, and only with ``-v``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import glob
import json
import logging
import os
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from engine import exporters, interruption
from engine.arguments import (
    COMMANDS,
    Parser,
    build_parser,
    build_parsers,
    hoist_global_options,
    package_version,
    rate_text,
)
from engine.config import config_path, layer_defaults
from engine.errors import ExitCode, InputFailedMidRun, OzbulkError, UsageError
from engine.files import check_output_paths, prepare_log_file, write_private_text
from engine.logs import REDACTOR, setup_logging
from engine.numbers import Normalizer
from engine.producer_choice import choose_producer
from engine.rates import parse_rate
from engine.redact import RedactingStream
from engine.report import default_report_dir, summary_json_text
from engine.settings import InputSettings, RunSettings, Secret
from engine.source import CsvSource, check_input_path
from engine.summary import dry_run_json, print_summary, render_summary, result_line

# Each command imports what it runs when it runs: `--help`, `--version`, `status` and `config
# show` must start in a blink, without the HTTP stack (aiohttp, anyio) that only `delete` uses.
# tests/test_startup.py pins which modules each of them may load.
if TYPE_CHECKING:
    from engine.pipeline import RunOutcome
    from engine.plan import Plan
    from engine.run_view import Display

log = logging.getLogger("engine")

# Where a setting came from, strongest first: the same rule for the API key as for the rest.
_RANK = {"flag": 3, "environment": 2, "file": 1}


def api_key_source(args: argparse.Namespace, sources: dict[str, str]) -> tuple[str, str] | None:
    """Which of --api-key, --api-key-file and OZONETEL_API_KEY gives the key, and from where.

    flags > environment (OZBULK_API_KEY, OZBULK_API_KEY_FILE, OZONETEL_API_KEY) > file; at one
    level, a key given outright beats a key file.
    """
    offers: list[tuple[int, int, str, str]] = []
    if args.api_key:
        where = sources.get("api_key", "flag")
        offers.append((_RANK[where.split()[0]], 2, "api_key", where))
    if args.api_key_file is not None:
        where = sources.get("api_key_file", "flag")
        offers.append((_RANK[where.split()[0]], 1, "api_key_file", where))
    if os.environ.get("OZONETEL_API_KEY"):
        offers.append((_RANK["environment"], 0, "env", "environment OZONETEL_API_KEY"))
    if not offers:
        return None
    _, _, kind, where = max(offers)
    return kind, where


def _api_key(args: argparse.Namespace, sources: dict[str, str]) -> Secret:
    chosen = api_key_source(args, sources)
    if chosen is None:
        return Secret("")
    kind, _ = chosen
    if kind == "api_key":
        return Secret(args.api_key)
    if kind == "api_key_file":
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
            paths.append(item)
    for path in paths:
        check_input_path(path)  # a folder, a device, a pipe or a link loop: say which
    return tuple(paths)


def _producer_in_child(choice: str, inputs: InputSettings, state_rows: int) -> bool:
    decided = choose_producer(choice, inputs, state_rows)
    where = "in a child process" if decided.in_child else "inline"
    log.debug("the producer runs %s: %s", where, decided.reason)
    return decided.in_child


def settings_from_args(
    args: argparse.Namespace, sources: dict[str, str] | None = None
) -> RunSettings:
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
    try:
        pace = rate_text(str(args.rate))  # a TOML file may give a number, not a string
    except argparse.ArgumentTypeError as error:
        raise UsageError(str(error)) from None
    ceiling = None if pace in ("auto", "0") else parse_rate(pace)
    checkpoint = args.checkpoint or Path(f"ozbulk-{args.user}-{args.group_id}.ckpt")
    api_key = _api_key(args, sources or {})
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
        rate=None if ceiling is None else ceiling.per_second,
        rate_auto=pace == "auto",
        rate_per=1.0 if ceiling is None else ceiling.per,
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
        allow_not_found=args.allow_not_found,
        summary_json=args.summary_json,
        report_dir=args.report_dir,
        producer_process=_producer_in_child(args.producer, inputs, args.producer_state_rows),
        producer_state_rows=args.producer_state_rows,
        max_response_bytes=args.max_response_bytes,
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


def resume_hint(outcome: RunOutcome, argv: list[str] | None) -> str | None:
    # A bad input fails the same way on every re-run: resuming is not the advice then.
    final = UsageError | InputFailedMidRun  # their message says what to do
    if outcome.exit_code == 0 or argv is None or isinstance(outcome.error, final):
        return None
    if "-" in argv:
        return "standard input was read once and cannot be resumed: save it to a file first"
    return f"resume with: {resume_command(argv)}"


def json_event(event: str, **fields: Any) -> None:
    """One JSON line on stderr, in the shape of the JSON log lines around it."""
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
        "level": "info",
        "logger": "engine.cli",
        "event": event,
        **fields,
    }
    print(REDACTOR.scrub(json.dumps(entry, default=str)), file=sys.stderr)


def _progress(args: argparse.Namespace, plan: Plan) -> Display | None:
    from engine.progress import BarDisplay, LogDisplay, StoryOnly

    if args.quiet:
        return StoryOnly() if args.log_file is not None else None
    if args.no_progress or not sys.stderr.isatty():
        return LogDisplay(expected=plan.expected())
    return BarDisplay(plan.expected())


def cmd_delete(args: argparse.Namespace, argv: list[str], sources: dict[str, str]) -> int:
    settings = settings_from_args(args, sources)
    if settings.producer_process and not settings.inputs.from_stdin and not args.dry_run:
        from engine.producer_process import prestart

        prestart()  # before the imports below: the child starts while they run

    import anyio

    from engine.pipeline import delete, display_settings, open_checkpoint
    from engine.plan import make_plan

    start_up_over()
    as_json = args.log_format == "json"
    if settings.inputs.from_stdin:
        log.warning("reading standard input: this run cannot be resumed if interrupted")
    _check_inputs(settings)
    _check_outputs(settings, dry_run=args.dry_run)
    if args.dry_run:
        return _dry_run(settings, as_json=as_json)
    settings.require_api_key()
    observe = exporters.options_from_args(args)
    if story.isEnabledFor(logging.INFO):  # the version costs a metadata read: only if told
        story.info("ozbulk %s: delete, settings %s", package_version(),
                   json.dumps(display_settings(settings), default=str))  # fmt: skip
    with _source_logs_once():
        plan = make_plan(settings, prescan_allowed=not args.yes, restart=args.restart)
    if story.isEnabledFor(logging.INFO):
        story.info("%s", plan.render())
    _show_plan(plan, as_json=as_json, quiet=args.quiet and args.yes)
    if plan.exact and plan.numbers == 0 and plan.resume is None:
        counts = plan.counts
        assert counts is not None
        raise UsageError(
            f"nothing to send: the input holds no phone number ({counts.rows:,} rows: "
            f"{counts.rejected:,} rejected, {counts.duplicates:,} duplicates); --dry-run writes "
            "rejected.csv with the reason for each row"
        )
    _confirm(args.yes)
    checkpoint = open_checkpoint(settings, restart=args.restart)
    progress = _progress(args, plan)
    interruption.sending_begins(settings.checkpoint)
    outcome = anyio.run(
        lambda: delete(
            settings,
            checkpoint=checkpoint,
            progress=progress,
            handle_signals=True,
            telemetry=replace(observe, numbers_expected=plan.numbers),
        ),
        # uvloop: the same asyncio, its loop in C; about 10 % less CPU a request, as measured.
        backend_options={"use_uvloop": True},
    )
    summary, result = outcome.summary, result_line(outcome.result)
    to_stdout = _write_summary_json(settings.summary_json, summary)
    if as_json:
        json_event("summary", summary=summary, result=result, resume=resume_hint(outcome, argv))
    else:
        print_summary(outcome.result, resume=resume_hint(outcome, argv), quiet=args.quiet,
                      out=sys.stderr if to_stdout else sys.stdout)  # fmt: skip
    if story.isEnabledFor(logging.INFO):
        story.info("%s", render_summary(outcome.result))
    if outcome.error is not None:
        log.error("%s", outcome.error)  # in full, on stderr and in the log file
    story.info("%s", result)
    return outcome.exit_code


def _show_plan(plan: Plan, *, as_json: bool, quiet: bool) -> None:
    """The plan, always on stderr: text, or one JSON event with --log-format json."""
    if as_json:
        json_event("plan", text=plan.render().splitlines()[1:], numbers=plan.numbers,
                   exact=plan.exact, requests=plan.remaining_requests(),
                   resumes=plan.resume is not None)  # fmt: skip
    elif not quiet:
        print(plan.render(), file=sys.stderr)


def _summary_to_stdout(path: Path | None) -> bool:
    return path is not None and str(path) == "-"


def _write_summary_json(path: Path | None, summary: dict[str, Any]) -> bool:
    """--summary-json FILE, or - for standard output (the printed summary then goes to stderr);
    the one writer of a run's and a dry run's. True when it went to standard output."""
    if path is None:
        return False
    text = summary_json_text(summary)  # as summary.json in the report
    if _summary_to_stdout(path):
        sys.stdout.write(text)
        sys.stdout.flush()
        return True
    write_private_text(path, text)  # owner-only: it names the run's files
    return False


def _check_inputs(settings: RunSettings) -> None:
    """Refuse an unusable file (binary, workbook, no phone column) before any checkpoint exists."""

    looks_like_phone = Normalizer(settings.inputs.country).looks_like_phone
    for path in settings.inputs.paths:
        if path != "-":
            CsvSource(path, settings.inputs.column, looks_like_phone).inspect()


class _OnceFilter(logging.Filter):
    """Lets each distinct message through once: the check, the pre-scan and the run each open
    the input, and each opening says which column it reads."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text in self._seen:
            return False
        self._seen.add(text)
        return True


def _tell_the_story(verbose: int) -> None:
    """-v: a line per retry; -vv: a line per request. The story of a run (its settings, plan,
    pace changes, summary and exit code) goes to the log file only: the terminal shows those
    in its own way."""
    logging.getLogger("engine.retries").setLevel(logging.INFO if verbose >= 1 else logging.WARNING)
    logging.getLogger("engine.requests").setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and _not_the_story not in handler.filters:
            handler.addFilter(_not_the_story)
    # With no handler left to write it (no --log-file), the story is not even composed: its
    # first line reads the package's metadata for the version.
    told = _story_reaches_a_handler()
    logging.getLogger("engine.story").setLevel(logging.NOTSET if told else logging.CRITICAL + 1)


def _story_reaches_a_handler() -> bool:
    """True when a record of the story would pass to a handler that does not filter it out."""
    logger: logging.Logger | None = story
    while logger is not None:
        if any(_not_the_story not in handler.filters for handler in logger.handlers):
            return True
        logger = logger.parent if logger.propagate else None
    return False


def _not_the_story(record: logging.LogRecord) -> bool:
    return not record.name.startswith("engine.story")


story = logging.getLogger("engine.story.cli")


class _source_logs_once:
    """While the pre-scan reads the input, its per-file totals stay out of the log (the plan
    says them); the source's words about each file are logged once per process."""

    def __enter__(self) -> None:
        logging.getLogger("engine.batcher").setLevel(logging.WARNING)

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("engine.batcher").setLevel(logging.NOTSET)


def _check_outputs(settings: RunSettings, *, dry_run: bool) -> None:
    """Every file and folder the run will write, checked before anything is sent."""
    summary = settings.summary_json
    files = [] if summary is None or _summary_to_stdout(summary) else [("--summary-json", summary)]
    folders = [] if settings.report_dir is None else [("--report-dir", settings.report_dir)]
    if settings.report_dir is None and settings.checkpoint.parent.is_dir():
        # Beside the checkpoint: a checkpoint folder that is unusable is refused on its own.
        report = _dry_run_dir(settings) if dry_run else default_report_dir(settings.checkpoint)
        folders.append(("the report folder (choose one with --report-dir)", report))
    check_output_paths(files, folders)


def _dry_run_dir(settings: RunSettings) -> Path:
    return settings.checkpoint.with_name(settings.checkpoint.name + ".dry-run")


def _dry_run(settings: RunSettings, *, as_json: bool = False) -> int:
    from engine.pipeline import no_number_error
    from engine.plan import Plan, write_rejects

    out = settings.report_dir or _dry_run_dir(settings)
    counts = write_rejects(settings, out)
    plan = Plan(settings, counts, True, None, None)
    if as_json:
        json_event("plan", dry_run=True, text=plan.render().splitlines()[1:],
                   rejected_csv=str(out / "rejected.csv"))  # fmt: skip
    else:
        text = plan.render().replace("ozbulk plan", "ozbulk plan (dry run: nothing sent)")
        print(text, file=sys.stderr)
        print(f"  rejected rows written to {out / 'rejected.csv'}", file=sys.stderr)
    _write_summary_json(settings.summary_json, dry_run_json(counts))
    if counts.accepted == 0:
        raise no_number_error(counts, str(out / "rejected.csv"))
    return 0


def cmd_config(args: argparse.Namespace, sources: dict[str, str]) -> int:
    settings = settings_from_args(args, sources)
    key_source = api_key_source(args, sources)
    print(f"{'setting':<22} {'value':<48}  source")
    for name, value in vars(args).items():
        if name in NOT_SHOWN:
            continue
        if name == "api_key":
            value = "***" if settings.api_key else "(not set)"
        if name == "rate":
            value = settings.pace_shown
        source = sources.get(name, "default")
        if name == "api_key" and key_source is not None:
            kind, where = key_source
            source = f"--api-key-file ({where})" if kind == "api_key_file" else where
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
        return cmd_delete(args, argv, sources)  # once it has loaded the pipeline
    start_up_over()
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
    if command == "completion":
        # shtab writes the script from the parser itself, so it never falls behind an option.
        import shtab

        print(shtab.complete(build_parser(), shell=args.shell))
        return 0
    if command == "report":
        from engine.status import write_report_for
        from engine.telemetry_report import plot_for

        code = write_report_for(args.checkpoint, args.out)
        return plot_for(args.checkpoint, args.out) if args.plot else code
    raise AssertionError(f"unhandled command {command}")


def main(argv: list[str] | None = None) -> int:
    interruption.install()
    # Everything printed passes the one redactor too, whatever code printed it.
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)
    # The story is muted for this command alone (see _tell_the_story): a caller that goes on
    # logs it as before.
    story_level = logging.getLogger("engine.story").level
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = streams
        logging.getLogger("engine.story").setLevel(story_level)


def _main(argv: list[str] | None = None) -> int:
    argv = hoist_global_options(list(sys.argv[1:] if argv is None else argv))
    Parser.command = argv[0] if argv and argv[0] in COMMANDS else None
    # Only the command given declares its options (every one when none is, as for --help).
    parser, layered = build_parsers(Parser.command)
    verbose = "-v" in argv or "--verbose" in argv or "-vv" in argv
    try:
        sources: dict[str, str] = {}
        if argv and argv[0] in layered:
            sources = layer_defaults(layered[argv[0]], argv, file=config_path(argv))
        args = parser.parse_args(argv)
        if args.log_file is not None:
            prepare_log_file(args.log_file)  # owner-only, and refused now if unwritable
        setup_logging(verbose=args.verbose, quiet=args.quiet, log_file=args.log_file,
                      fmt=args.log_format)  # fmt: skip
        _tell_the_story(args.verbose)
        # Once per command, not per process: a program (or a test) may run several.
        source_log, once = logging.getLogger("engine.source"), _OnceFilter()
        source_log.addFilter(once)
        try:
            return _dispatch(args, argv, sources)
        finally:
            source_log.removeFilter(once)
    except OzbulkError as error:
        print(f"ozbulk: error: {REDACTOR.scrub(str(error))}", file=sys.stderr)
        story.error("ozbulk: error: %s; exit %d", error, error.exit_code)
        return error.exit_code
    except KeyboardInterrupt as interrupt:
        print(f"ozbulk: {interruption.describe(interrupt)}", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except Exception as error:  # an internal bug: say so plainly, trace it only on request
        if verbose:
            raise
        print(
            f"ozbulk: internal error: {error.__class__.__name__}: {REDACTOR.scrub(str(error))} "
            "(run again with -v for the traceback, and please report it)",
            file=sys.stderr,
        )
        return ExitCode.INTERNAL


class _StartUp:
    """Whether :func:`run` paused the cyclic garbage collector while the modules load."""

    collector_paused = False


def start_up_over() -> None:
    """The command has loaded its modules: the cyclic garbage collector resumes, if :func:`run`
    paused it, and never again walks what start-up made.

    Start-up makes some 70,000 objects (modules, classes, functions) that live as long as the
    process, and frees almost nothing: each collection while they load walks them all and finds
    nothing, some 15 ms of a small run's CPU. ``gc.freeze`` then sets them aside for good, so the
    run's own collections look only at what the run makes.
    """
    if _StartUp.collector_paused:
        _StartUp.collector_paused = False
        gc.freeze()
        gc.enable()


def run() -> NoReturn:
    """The ``ozbulk`` command: :func:`main`, then an exit that skips the interpreter's teardown.

    Freeing every module and object at exit costs 50-130 ms of CPU once aiohttp, anyio and SQLite
    are loaded (a third of a small run's start-up) and does nothing a finished run needs. What
    must reach a file or the terminal is flushed first, and the atexit handlers run (logging's
    included, which flushes --log-file); the checkpoint and the producer process were closed by
    the run itself. ``main`` stays an ordinary function for callers that go on afterwards.

    The garbage collector is paused until the command has loaded its modules (see
    :func:`start_up_over`; ``python -m engine`` pauses it before this module loads).
    """
    _StartUp.collector_paused = True
    gc.disable()
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
