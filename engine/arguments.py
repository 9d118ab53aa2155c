"""The command line's words: every command and option, their help and examples, the table of
exit codes, and argparse made strict (no abbreviated flags; a mistake is one line naming the
nearest flag).

Kept apart from :mod:`engine.cli`, which runs the commands, so that the words can be read (by
shell completion, by ``--help``) without anything that runs.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from engine import exporters
from engine import settings as defaults
from engine.errors import exit_codes_help
from engine.producer_choice import DEFAULT_PRODUCER, PRODUCER_CHOICES
from engine.rates import parse_rate
from engine.telemetry_report import PLOT_HELP, PLOT_NAME

EXIT_CODES = exit_codes_help()  # the one table of codes: engine.errors.ExitCode

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


def rate_text(text: str) -> str:
    """--rate as its canonical text: auto, 0 (no ceiling), or a rate such as 300/min."""
    text = text.strip()
    if text in ("auto", "0"):
        return text
    try:
        return str(parse_rate(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--rate {error}; or 0 for no ceiling, or auto") from None


class Parsers(NamedTuple):
    """The command line, and the subparsers whose options may also come from the environment
    and a --config file, by the command they parse (``config`` being ``config show``)."""

    root: argparse.ArgumentParser
    layered: Mapping[str, argparse.ArgumentParser]


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
    """Every flag of every command. The parser that failed declares only its own command's, so
    the whole command line is built for the hint: only on a mistake, never on a run's path."""
    names: set[str] = set()
    pending: list[argparse.ArgumentParser] = [build_parser()]
    while pending:
        parser = pending.pop()
        names.update(parser._option_string_actions)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending.extend(action.choices.values())
    return names


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


# Each command and its line in `ozbulk --help`, in that order.
COMMAND_HELP = {
    "delete": "delete the numbers in CSV files from a block-number group (resumable)",
    "config": "show the effective settings (secrets masked)",
    "status": "show where a checkpointed run stands",
    "report": "write the report files of a checkpointed run",
    "sample": "write a realistic sample CSV of phone numbers",
    "mock-server": "run the embedded fake Ozonetel API",
    "demo": "delete the sample data from a built-in fake API, end to end",
    "completion": 'print a shell completion script: eval "$(ozbulk completion bash)"',
}
COMMANDS = tuple(COMMAND_HELP)
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
        type=rate_text,
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
    """The whole command line, every command's options declared (shell completion reads it)."""
    return build_parsers().root


def build_parsers(command: str | None = None) -> Parsers:
    """The command line. Given the ``command`` being parsed, only that command declares its
    options: the others are listed with their help, as ``ozbulk --help`` shows them, and declare
    nothing, so a run neither builds the options it never parses nor imports what they need (the
    fake API's, for mock-server). Without one, every command declares its options."""
    parser = Parser(
        prog="ozbulk",
        description="Delete phone numbers in bulk from an Ozonetel CloudAgent block-number group.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Start with: ozbulk delete --help    (or: ozbulk demo, on a built-in fake API)",
    )
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common_options()
    layered: dict[str, argparse.ArgumentParser] = {}

    def declares(name: str) -> bool:
        """True when ``name`` declares its options; otherwise it is listed, and no more."""
        if command is None or command == name:
            return True
        commands.add_parser(name, help=COMMAND_HELP[name])
        return False

    if declares("delete"):
        run = commands.add_parser(
            "delete",
            parents=[common],
            help=COMMAND_HELP["delete"],
            description="Delete every phone number in the input files from one block-number "
            "group, 100 per request, at a set rate; re-run the same command to resume.",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=DELETE_EXAMPLES + "\n" + EXIT_CODES,
        )
        _add_delete_options(run)
        layered["delete"] = run
    if declares("config"):
        config = commands.add_parser("config", help=COMMAND_HELP["config"])
        config_commands = config.add_subparsers(
            dest="config_command", metavar="ACTION", required=True
        )
        show = config_commands.add_parser(
            "show",
            parents=[common],
            help="print the settings `delete` would use with these options, and where each came "
            "from",
        )
        _add_delete_options(show)
        layered["config"] = show
    if declares("status"):
        status = commands.add_parser("status", parents=[common], help=COMMAND_HELP["status"])
        status.add_argument("checkpoint", type=Path)
        status.add_argument("--json", action="store_true", help="machine-readable output")
    if declares("report"):
        report = commands.add_parser("report", parents=[common], help=COMMAND_HELP["report"])
        report.add_argument("checkpoint", type=Path)
        report.add_argument("--out", type=Path, required=True, help="folder for the report files")
        report.add_argument(
            "--plot", action="store_true", help=f"also draw {PLOT_NAME} ({PLOT_HELP})"
        )
    if declares("sample"):
        sample = commands.add_parser("sample", parents=[common], help=COMMAND_HELP["sample"])
        sample.add_argument("out", type=Path, help="file to write")
        sample.add_argument(
            "--rows", type=int, default=1000, help="data rows (default %(default)s)"
        )
        sample.add_argument("--seed", type=int, default=7, help="random seed (default %(default)s)")
    if declares("mock-server"):
        from engine.mock import command as mock_command

        mock = commands.add_parser(
            "mock-server", parents=[common], help=COMMAND_HELP["mock-server"]
        )
        mock_command.add_arguments(mock)
    if declares("demo"):
        demo = commands.add_parser("demo", parents=[common], help=COMMAND_HELP["demo"])
        demo.add_argument(
            "--rows",
            type=int,
            default=0,
            help="generate this many rows instead of using the sample file",
        )
    if declares("completion"):
        completion = commands.add_parser(
            "completion",
            parents=[common],
            help=COMMAND_HELP["completion"],
            description="Print the completion script of ozbulk's commands and options for a "
            'shell. bash: add  eval "$(ozbulk completion bash)"  to ~/.bashrc; zsh: write it to '
            "a file named _ozbulk in a folder of $fpath.",
        )
        completion.add_argument("shell", choices=SHELLS)
    return Parsers(parser, layered)


class _Version(argparse.Action):
    """argparse's version action, with the version looked up only when ``--version`` is given:
    reading the package's metadata costs every other command some 20 ms."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"ozbulk {package_version()}")
        parser.exit()


def package_version() -> str:
    """The version in the package's metadata: pyproject.toml is the one place it is written."""
    from importlib.metadata import PackageNotFoundError

    import engine

    try:
        return engine.__version__
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
