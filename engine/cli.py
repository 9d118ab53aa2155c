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
import re
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from engine import exporters, interruption
from engine import settings as defaults
from engine.config import config_path, layer_defaults
from engine.errors import InputFailedMidRun, OzbulkError, UsageError
from engine.files import check_output_paths, prepare_log_file, write_private_text
from engine.logs import REDACTOR, setup_logging
from engine.numbers import Normalizer
from engine.producer_choice import DEFAULT_PRODUCER, PRODUCER_CHOICES, choose_producer
from engine.rates import parse_rate
from engine.redact import RedactingStream
from engine.report import default_report_dir, render_summary
from engine.settings import InputSettings, RunSettings, Secret
from engine.source import CsvSource, check_input_path
from engine.status import write_report_for
from engine.telemetry_report import PLOT_HELP, PLOT_NAME, plot_for

# Each command imports what it runs when it runs: `--help`, `--version`, `status` and `config
# show` must start in a blink, without the HTTP stack (aiohttp, anyio) that only `delete` uses.
# tests/test_startup.py pins which modules each of them may load.
if TYPE_CHECKING:
    from engine.pipeline import RunOutcome
    from engine.plan import Plan

log = logging.getLogger("engine")

EXIT_CODES = """\
exit codes:
  0    complete: every number has a verdict
  1    finished, but some chunks failed after all retries (re-run to retry them)
  2    bad usage, settings, input or checkpoint (nothing was sent)
  3    stopped part-way by an answer no retry can fix (bad credentials, invalid group id),
       because none of the first 2,000 numbers sent was in the group (see --allow-not-found),
       because no API answered at --base-url, or by input unreadable past some point; what was
       sent is recorded; resumable
  4    the checkpoint could not be written (disk full, read-only); resumable once fixed
  70   internal error: a bug in ozbulk (run again with -v for the traceback, and report it)
  130  interrupted (Ctrl-C or SIGTERM); re-run the same command to resume
"""

DELETE_EXAMPLES = """\
examples:
  first run (API key from the environment; the pace learns the server's limit):
    export OZONETEL_API_KEY=...        # or --api-key-file ~/.ozonetel-key
    ozbulk delete numbers.csv --group-id 42 --user acme

  never more than 300 requests a minute (the units API documents use: 5/s, 300/min, 18000/h):
    ozbulk delete numbers.csv --group-id 42 --user acme --rate 300/min

  resume after Ctrl-C, kill -9 or a crash: run the very same command again.

  token authentication (account set to TOKEN_AUTH):
    ozbulk delete numbers.csv --group-id 42 --user acme --auth token

  several files, a named column, no prompt (for scripts):
    ozbulk delete 'exports/*.csv.gz' --column Mobile --group-id 42 --user acme --yes

  start over on purpose (the old checkpoint is kept aside):
    ozbulk delete numbers.csv --group-id 42 --user acme --restart
"""


def _rate(text: str) -> str:
    """--rate as its canonical text: auto, 0 (no ceiling), or a rate such as 300/min."""
    text = text.strip()
    if text in ("auto", "0"):
        return text
    try:
        return str(parse_rate(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--rate {error}; or 0 for no ceiling, or auto") from None


# The subparsers whose options may also come from the environment and a --config file.
LAYERED: list[argparse.ArgumentParser] = []


class Parser(argparse.ArgumentParser):
    """argparse without its surprises: no abbreviated flags (``--rat 3`` is not ``--rate``),
    and a mistake is one line that names the nearest flag, not a usage dump."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    # The command being parsed: argparse reports a subcommand's unknown flags from the top.
    command: str | None = None

    def error(self, message: str) -> NoReturn:
        hint = _nearest(message)
        about = f"ozbulk {self.command}" if self.prog == "ozbulk" and self.command else self.prog
        help_hint = f"; see {about} --help"
        self.exit(2, f"{self.prog}: error: {message}{hint}{help_hint}\n")


def _all_options() -> set[str]:
    names: set[str] = set()
    for parser in [*ALL_PARSERS]:
        names.update(parser._option_string_actions)
    return names


ALL_PARSERS: list[argparse.ArgumentParser] = []


def _nearest(message: str) -> str:
    """ " (did you mean --rate?)" for an unknown flag or command close to a known one."""
    import difflib

    unknown = re.findall(r"(?:unrecognized arguments: |invalid choice: ')(\S+?)'?(?:\s|$)", message)
    words = re.findall(r"(?<![\w-])(--?[\w-]+)", message) if "unrecognized" in message else []
    candidates = [*unknown, *words]
    if not candidates:
        return ""
    word = candidates[0].split("=", 1)[0]
    known = _all_options() if word.startswith("-") else set(COMMANDS)
    match = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    if not match and word.startswith("--"):
        match = sorted(name for name in known if name.startswith(word))[:1]
    return f" (did you mean {match[0]}?)" if match else ""


COMMANDS = ("delete", "config", "status", "report", "sample", "mock-server", "demo", "completion")
SHELLS = ("bash", "zsh")
GLOBAL_SWITCHES = frozenset({"-v", "-vv", "-vvv", "--verbose", "-q", "--quiet"})
GLOBAL_WITH_VALUE = frozenset({"--log-file", "--log-format"})


def _common_options() -> Parser:
    common = Parser(add_help=False)
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
        help="the most requests to send, per second (5 or 5/s), minute (300/min) or hour "
        "(18000/h): a ceiling never exceeded, under which ozbulk learns the server's own limit "
        "when it refuses; 0 = no ceiling; auto = no ceiling, starting at 5/s and growing until "
        "the server refuses (default %(default)s)",
    )
    speed.add_argument(
        "--concurrency",
        type=int,
        default=defaults.DEFAULT_CONCURRENCY,
        help="requests in flight at once (default %(default)s)",
    )
    speed.add_argument(
        "--producer",
        choices=PRODUCER_CHOICES,
        default=DEFAULT_PRODUCER,
        help="read and normalize the input in a child process, on another core, or inline in "
        "the main process; auto (default) takes the child for an input large enough for "
        "producer states (see --producer-state-rows) or gzip, or of 1 MB or more on two cores or "
        "more, and reads inline otherwise: small inputs start faster (-vv says which)",
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
        ("--max-response-bytes", int, defaults.DEFAULT_MAX_RESPONSE_BYTES,
         "largest answer read; a larger one is a server error for its chunk"),
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
    state.add_argument(
        "--allow-not-found",
        action="store_true",
        help="go on even when none of the first 2,000 numbers sent was in the group (a "
        "deliberate second clean-up); without it such a run stops with exit 3",
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
    exporters.add_arguments(run)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ozbulk",
        description="Delete phone numbers in bulk from an Ozonetel CloudAgent block-number group.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Start with: ozbulk delete --help    (or: ozbulk demo, on a built-in fake API)",
    )
    parser.add_argument("--version", action="version", version=f"ozbulk {package_version()}")
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
    report.add_argument("--plot", action="store_true", help=f"also draw {PLOT_NAME} ({PLOT_HELP})")
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
    completion = commands.add_parser(
        "completion",
        parents=[common],
        help='print a shell completion script: eval "$(ozbulk completion bash)"',
        description="Print the completion script of ozbulk's commands and options for a shell. "
        'bash: add  eval "$(ozbulk completion bash)"  to ~/.bashrc; zsh: write it to a file '
        "named _ozbulk in a folder of $fpath.",
    )
    completion.add_argument("shell", choices=SHELLS)
    ALL_PARSERS[:] = [parser, run, config, show, status, report, sample, mock, demo, completion]
    return parser


def package_version() -> str:
    """The version in the package's metadata: pyproject.toml is the one place it is written."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ozbulk")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def hoist_global_options(argv: list[str]) -> list[str]:
    """``ozbulk -q status X`` works: output options given before the command move after it
    (after ``config show`` for that command), where argparse looks for them."""
    moved: list[str] = []
    index = 0
    while index < len(argv) and argv[index].startswith("-"):
        word = argv[index]
        name = word.split("=", 1)[0]
        if word in GLOBAL_SWITCHES:
            moved.append(word)
        elif name in GLOBAL_WITH_VALUE:
            moved.append(word)
            if "=" not in word and index + 1 < len(argv):
                index += 1
                moved.append(argv[index])
        else:
            return argv  # --help, --version, or a mistake argparse will name
        index += 1
    if not moved or index >= len(argv):
        return argv
    rest = argv[index:]
    depth = 2 if rest[0] == "config" and len(rest) > 1 and not rest[1].startswith("-") else 1
    return rest[:depth] + moved + rest[depth:]


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
        pace = _rate(str(args.rate))  # a TOML file may give a number, not a string
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


def result_line(outcome: RunOutcome) -> str:
    """The one-line result: the exit code and what it means."""
    stopped_by = _gist(str(outcome.summary.get("stopped_by", "")))
    if outcome.exit_code == 0 and not outcome.summary.get("accepted"):
        return "exit 0: complete, but the input held no phone number to send"
    meaning = {
        0: "complete: every number has a verdict",
        1: "finished with failed chunks: re-run the same command to retry them",
        130: "interrupted: re-run the same command to resume",
    }.get(outcome.exit_code, f"stopped: {stopped_by}")
    return f"exit {outcome.exit_code}: {meaning}"


def _gist(reason: str) -> str:
    """The first clause of a stop's reason, for the one-line result; the error itself is
    logged in full (on stderr), so the long text is not said twice."""
    reason = reason.removeprefix("stopped: ").removeprefix("stopped by ")
    gist = re.split(r"(?<=[^.\d])[.;](?:\s|$)| \(", reason, maxsplit=1)[0]
    return gist if len(gist) <= 100 else gist[:99] + "…"


def resume_hint(outcome: RunOutcome, argv: list[str] | None) -> str | None:
    # A bad input fails the same way on every re-run: resuming is not the advice then.
    final = UsageError | InputFailedMidRun  # their message says what to do
    if outcome.exit_code == 0 or argv is None or isinstance(outcome.error, final):
        return None
    if "-" in argv:
        return "standard input was read once and cannot be resumed: save it to a file first"
    return f"resume with: {resume_command(argv)}"


def print_summary(
    outcome: RunOutcome,
    argv: list[str] | None = None,
    *,
    paths: bool = True,
    quiet: bool = False,
    out: Any = None,
) -> None:
    """The summary in words (unless quiet), then the one-line result and how to resume."""
    out = out or sys.stdout
    if not quiet:
        print(render_summary(outcome.summary, paths=paths), file=out)
    print(result_line(outcome), file=out)
    hint = resume_hint(outcome, argv)
    if hint:
        print(hint, file=out)


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


def _progress(args: argparse.Namespace, plan: Plan) -> Any:
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

    as_json = args.log_format == "json"
    if settings.inputs.from_stdin:
        log.warning("reading standard input: this run cannot be resumed if interrupted")
    _check_inputs(settings)
    _check_outputs(settings, dry_run=args.dry_run)
    if args.dry_run:
        return _dry_run(settings, as_json=as_json)
    settings.require_api_key()
    observe = exporters.options_from_args(args)
    story.info("ozbulk %s: delete, settings %s", package_version(),
               json.dumps(display_settings(settings), default=str))  # fmt: skip
    with _source_logs_once():
        plan = make_plan(settings, prescan_allowed=not args.yes, restart=args.restart)
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
        )
    )
    _write_summary_json(settings.summary_json, outcome.summary)
    to_stdout = settings.summary_json is not None and str(settings.summary_json) == "-"
    if as_json:
        json_event(
            "summary", summary=outcome.summary, result=result_line(outcome),
            resume=resume_hint(outcome, argv),
        )  # fmt: skip
    else:
        print_summary(outcome, argv, quiet=args.quiet, out=sys.stderr if to_stdout else sys.stdout)
    story.info("%s", render_summary(outcome.summary))
    if outcome.error is not None:
        log.error("%s", outcome.error)  # in full, on stderr and in the log file
    story.info("%s", result_line(outcome))
    return outcome.exit_code


def _show_plan(plan: Plan, *, as_json: bool, quiet: bool) -> None:
    """The plan, always on stderr: text, or one JSON event with --log-format json."""
    if as_json:
        json_event("plan", text=plan.render().splitlines()[1:], numbers=plan.numbers,
                   exact=plan.exact, requests=plan.remaining_requests(),
                   resumes=plan.resume is not None)  # fmt: skip
    elif not quiet:
        print(plan.render(), file=sys.stderr)


def _write_summary_json(path: Path | None, summary: dict[str, Any]) -> None:
    """--summary-json FILE, or - for standard output (the printed summary then goes to stderr)."""
    if path is None:
        return
    text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_private_text(path, text)  # owner-only: it names the run's files


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
    files = [] if summary is None or str(summary) == "-" else [("--summary-json", summary)]
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
    totals = {key: getattr(counts, key) for key in ("rows", "accepted", "rejected",
                                                      "duplicates", "chunks")}  # fmt: skip
    _write_summary_json(settings.summary_json, {**totals, "dry_run": True})
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
        return cmd_delete(args, argv, sources)
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
        code = write_report_for(args.checkpoint, args.out)
        return plot_for(args.checkpoint, args.out) if args.plot else code
    raise AssertionError(f"unhandled command {command}")


def main(argv: list[str] | None = None) -> int:
    interruption.install()
    # Everything printed passes the one redactor too, whatever code printed it.
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = streams


def _main(argv: list[str] | None = None) -> int:
    argv = hoist_global_options(list(sys.argv[1:] if argv is None else argv))
    Parser.command = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser()
    verbose = "-v" in argv or "--verbose" in argv or "-vv" in argv
    try:
        sources: dict[str, str] = {}
        if argv and argv[0] in ("delete", "config"):
            layered = LAYERED[0] if argv[0] == "delete" else LAYERED[1]
            sources = layer_defaults(layered, argv, file=config_path(argv))
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
